"""own_text, strip_subject_prefixes and normalise: what is the sender's own text."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpdesk_milter.text import normalise, own_text, strip_subject_prefixes

# --- replies: the quoted history goes ----------------------------------------------


def test_gmail_french_reply_header_wrapped_on_two_lines() -> None:
    text = (
        "Bonjour,\n\nToujours le même problème ce matin.\n\nNathalie\n\n"
        "Le lun. 3 mars 2025 à 10:12, Bob Lefèvre <bob@example.org> a\n"
        "écrit :\n\n"
        "> Bonjour,\n> pouvez-vous vider le cache ?\n>\n"
        "> Bob\n"
    )
    assert own_text(text) == "Bonjour,\n\nToujours le même problème ce matin.\n\nNathalie"


def test_reply_header_without_quote_marks_cuts_the_rest() -> None:
    # HTML replies converted to text keep the history unquoted under the header
    text = (
        "Merci, c'est réglé.\n\n"
        "Le 10/03/2025 à 17:45, Assistance <asso-velo@assistance.example.org> a écrit :\n"
        "Bonjour, la correction est en place.\n"
    )
    assert own_text(text) == "Merci, c'est réglé."


def test_english_reply_header() -> None:
    text = (
        "Works again for everyone, thanks!\n\n"
        "On Fri, 21 Mar 2025 at 11:30, Assistance <greenhouse@assistance.example.org>\n"
        "wrote:\n\n"
        "> Hello Tom,\n> The VPN gateway has been restarted.\n"
    )
    assert own_text(text) == "Works again for everyone, thanks!"


def test_bottom_posted_and_interleaved_answers_are_kept() -> None:
    text = (
        "Le 10/03/2025 à 17:45, Assistance a écrit :\n"
        "> la correction est en place, pouvez-vous réessayer ?\n\n"
        "C'est bon, les factures se valident.\n\n"
        "> Autre chose ?\n"
        "Oui : l'imprimante n'imprime plus.\n"
    )
    assert own_text(text) == (
        "C'est bon, les factures se valident.\n\nOui : l'imprimante n'imprime plus.")


def test_a_sentence_ending_in_a_ecrit_is_not_a_reply_header() -> None:
    # no date or time in it: a reply header always has one
    text = "Le technicien nous a écrit :\nil faut redémarrer le serveur.\n"
    assert own_text(text) == "Le technicien nous a écrit :\nil faut redémarrer le serveur."


def test_outlook_reply_block_cuts_the_history() -> None:
    text = (
        "Bonjour Bob,\n\nL'imprimante du premier étage n'imprime plus en recto-verso.\n\n"
        "Cordialement\nMarc Petit\n\n"
        "De : Bob Lefèvre <bob@example.org>\n"
        "Envoyé : mardi 22 avril 2025 17:05\n"
        "À : Marc Petit <m.petit@ccas-exemple.fr>\n"
        "Objet : Intervention de mardi\n\n"
        "Bonjour Marc, je suis passé ce matin.\n"
    )
    assert own_text(text) == (
        "Bonjour Bob,\n\nL'imprimante du premier étage n'imprime plus en recto-verso.\n\n"
        "Cordialement\nMarc Petit")


@pytest.mark.parametrize("banner", [
    "-----Original Message-----",
    "-----Message d'origine-----",
    "----- Mail original -----",
    "-------- Message original --------",
])
def test_original_message_banners_in_a_reply(banner: str) -> None:
    text = f"Merci, la sauvegarde est passée.\n\nMarc\n\n{banner}\nDe : Assistance\n" \
           "Envoyé : lundi 7 avril 2025 16:02\nObjet : Sauvegarde\n\nNous avons libéré " \
           "de l'espace.\n"
    assert own_text(text) == "Merci, la sauvegarde est passée.\n\nMarc"


def test_outlook_block_from_html_with_no_break_spaces() -> None:
    text = ("Toujours rien.\n\nDe\u00a0: Assistance <ccas@assistance.example.org>\n"
            "Envoyé\u00a0: lundi 7 avril 2025 16:02\nÀ\u00a0: Marc Petit\n"
            "Objet\u00a0: Sauvegarde\n\nNous avons libéré de l'espace.\n")
    assert own_text(text) == "Toujours rien."


def test_english_outlook_block_with_bold_labels() -> None:
    text = ("Please see below.\n\n*From:* Emma Wilson <emma@greenhouse.example.com>\n"
            "*Sent:* Monday, 3 March 2025 10:00\n*To:* Tom\n*Subject:* Printer\n\nOld text\n")
    assert own_text(text) == "Please see below."


# --- signatures, footers, disclaimers -----------------------------------------------


def test_signature_after_dash_dash_space() -> None:
    text = "Le site affiche une erreur 500.\n\nLucie\n\n-- \nLucie Fabre\nThéâtre du Port\n"
    assert own_text(text) == "Le site affiche une erreur 500.\n\nLucie"


@pytest.mark.parametrize("footer", [
    "Envoyé de mon iPhone",
    "Envoyé depuis mon appareil Galaxy",
    "Envoyé depuis mon appareil Android",
    "Sent from my iPhone",
    "Sent from my Android device",
    "Provenance : Courrier pour Windows",
    "Obtenir Outlook pour iOS",
    "Get Outlook for Android",
])
def test_mobile_footers(footer: str) -> None:
    text = f"Outlook me redemande mon mot de passe.\nMarie\n\n{footer}\n"
    assert own_text(text) == "Outlook me redemande mon mot de passe.\nMarie"


@pytest.mark.parametrize("disclaimer", [
    "Ce message et toutes les pièces jointes sont confidentiels et établis à l'intention "
    "exclusive de ses destinataires.",
    "This e-mail and any attachments are confidential and intended solely for the "
    "addressee.",
    "Pensez à l'environnement avant d'imprimer ce courriel.",
])
def test_disclaimers(disclaimer: str) -> None:
    text = f"Le VPN ne se connecte plus.\n\nIsabelle Roux\n\n{disclaimer}\n"
    assert own_text(text) == "Le VPN ne se connecte plus.\n\nIsabelle Roux"


# --- forwards: the forwarded content stays ------------------------------------------


def test_gmail_forward_keeps_content_drops_banner_and_headers() -> None:
    text = (
        "Bonjour,\n\nOn vient de recevoir ça. Est-il possible d'augmenter notre espace ?\n\n"
        "Nathalie\n\n"
        "---------- Forwarded message ---------\n"
        "De : Nextcloud <noreply@cloud.example.org>\n"
        "Date: ven. 4 avr. 2025 à 08:00\n"
        "Subject: Votre espace de stockage est presque plein\n"
        "To: <n.girard@mairie-exemple.fr>\n\n\n"
        "Vous utilisez 9,6 Go sur 10 Go.\n"
    )
    assert own_text(text) == (
        "Bonjour,\n\nOn vient de recevoir ça. Est-il possible d'augmenter notre espace ?\n\n"
        "Nathalie\n\nVous utilisez 9,6 Go sur 10 Go.")


def test_thunderbird_forward_with_french_labels() -> None:
    text = (
        "Pour toi, Claire.\n\n"
        "-------- Message transféré --------\n"
        "Sujet : Imprimante\nDate : Tue, 23 Sep 2025 14:12:06 +0200\n"
        "De : Sylvie <s.moreau@mairie-exemple.fr>\nPour : contact@example.org\n\n"
        "L'imprimante est en panne.\n"
    )
    assert own_text(text) == "Pour toi, Claire.\n\nL'imprimante est en panne."


def test_apple_mail_forward() -> None:
    text = ("\nBegin forwarded message:\n\nFrom: Julie <j@cabinet-martin.fr>\n"
            "Subject: Synchro\nDate: 15 April 2025 at 09:41:00 CEST\nTo: Pierre\n\n"
            "Plus rien ne se synchronise.\n")
    assert own_text(text) == "Plus rien ne se synchronise."


OUTLOOK_FORWARD = (
    "Alice,\n\nPeux-tu voir le problème de Julie ci-dessous ?\n\nMerci\nPierre\n\n"
    "________________________________\n"
    "De : Julie Caron <j.caron@cabinet-martin.fr>\n"
    "Envoyé : mardi 15 avril 2025 09:41\n"
    "À : Pierre Martin <p.martin@cabinet-martin.fr>\n"
    "Objet : Erreur synchronisation Nextcloud\n\n"
    "Le client Nextcloud affiche une erreur de synchronisation.\n\nJulie\n"
)


def test_outlook_forward_is_kept_when_the_subject_says_forward() -> None:
    assert own_text(OUTLOOK_FORWARD, forwarded=True) == (
        "Alice,\n\nPeux-tu voir le problème de Julie ci-dessous ?\n\nMerci\nPierre\n\n"
        "Le client Nextcloud affiche une erreur de synchronisation.\n\nJulie")


def test_same_outlook_block_in_a_reply_is_history() -> None:
    assert own_text(OUTLOOK_FORWARD) == (
        "Alice,\n\nPeux-tu voir le problème de Julie ci-dessous ?\n\nMerci\nPierre")


def test_ambiguous_banner_with_nothing_before_is_a_forward() -> None:
    text = ("-----Original Message-----\nFrom: Emma\nSent: Monday\nSubject: Printer\n\n"
            "The printer shows a paper jam error.\n")
    assert own_text(text) == "The printer shows a paper jam error."


def test_forwarders_signature_does_not_hide_the_forward() -> None:
    text = ("Voir ci-dessous.\n-- \nPierre Martin\nCabinet Martin\n\n"
            "---------- Forwarded message ---------\nFrom: Julie\nSubject: Erreur\n\n"
            "Le logiciel affiche une erreur.\n")
    assert own_text(text) == "Voir ci-dessous.\n\nLe logiciel affiche une erreur."


def test_history_inside_a_forward_is_cut() -> None:
    text = (
        "FYI\n\n---------- Forwarded message ---------\nFrom: Julie\nSubject: Re: VPN\n\n"
        "Le VPN ne marche toujours pas.\n\n"
        "-----Original Message-----\nFrom: Bob\nSent: Monday\n\nAvez-vous redémarré ?\n"
    )
    assert own_text(text) == "FYI\n\nLe VPN ne marche toujours pas."


# --- robustness ----------------------------------------------------------------------


def test_empty_and_blank() -> None:
    assert own_text("") == ""
    assert own_text("\n\n  \n") == ""
    assert own_text("> only a quote\n> nothing else\n") == ""


def test_long_lines_and_many_marker_lookalikes_stay_fast() -> None:
    # a 100,000-character line, lines that start like reply headers, endless dashes
    text = "\n".join([
        "x" * 100_000,
        *(("Le " + "mot " * 99) for _ in range(2_000)),
        "-" * 100_000,
        "De : " + "a" * 100_000,
        "Le 3 mars " + "é" * 100_000 + " a écrit :",
    ])
    started = time.perf_counter()
    own_text(text)
    strip_subject_prefixes("RE: " * 50_000 + "[EXT]" * 10_000)
    normalise(text)
    assert time.perf_counter() - started < 2.0  # linear: well under 0.2 s on this machine


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "> quoted", "-- ", "Le 3 mars 2025 à 10:12, X a écrit :", "On Mon, 3 Mar 2025, X wrote:",
        "-----Original Message-----", "---------- Forwarded message ---------",
        "De : X", "Envoyé : lundi", "Objet : Y", "From: X", "Sent: Monday", "",
        "Envoyé de mon iPhone", "________________________________", "Begin forwarded message:",
    ])), max_size=30), st.booleans())
def test_own_text_only_keeps_input_lines(lines: list[str], forwarded: bool) -> None:
    text = "\n".join(lines)
    result = own_text(text, forwarded=forwarded)
    kept = {line.strip() for line in text.split("\n")}
    assert all(not line.strip() or line.strip() in kept for line in result.split("\n"))


# --- subjects ----------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "expected"), [
    ("RE: Imprimante", "Imprimante"),
    ("Re : Imprimante", "Imprimante"),
    ("RE: RE: TR: Imprimante", "Imprimante"),
    ("RE[2]: Imprimante", "Imprimante"),
    ("Re^3: Imprimante", "Imprimante"),
    ("Fwd: Votre espace de stockage", "Votre espace de stockage"),
    ("FW: Printer", "Printer"),
    ("Fw:Printer", "Printer"),
    ("Réf: Nos mails arrivent en spam", "Nos mails arrivent en spam"),
    ("REF : Devis", "Devis"),
    ("AW: WG: Rechnung", "Rechnung"),
    ("RV: Consulta", "Consulta"),
    ("[EXT] RE: VPN", "VPN"),
    ("RE: [EXTERNAL] [SPAM] Fwd: VPN", "VPN"),
    ("RE: [example #1234] Nextcloud inaccessible", "[example #1234] Nextcloud inaccessible"),
    ("TR: RE: [example #1240] Imprimante", "[example #1240] Imprimante"),
    ("Retour sur la réunion", "Retour sur la réunion"),
    ("Trop lent", "Trop lent"),
    ("Reset password", "Reset password"),
    ("RE: ", ""),
    ("", ""),
])
def test_strip_subject_prefixes(subject: str, expected: str) -> None:
    assert strip_subject_prefixes(subject) == expected


@given(st.text(max_size=200))
def test_strip_subject_prefixes_is_total_and_idempotent(subject: str) -> None:
    once = strip_subject_prefixes(subject)
    assert strip_subject_prefixes(once) == once


# --- normalise ------------------------------------------------------------------------


def test_normalise() -> None:
    assert normalise("  Bonjour,\r\n\tle  SITE\u00a0ne  marche plus ") == \
        "bonjour, le site ne marche plus"
    assert normalise("ﬁchier Ｎｅｘｔｃｌｏｕｄ") == "fichier nextcloud"   # NFKC
    assert normalise("Cafe\u0301") == normalise("Café")
    assert normalise("") == ""


@given(st.text(max_size=300))
def test_normalise_is_total_and_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
