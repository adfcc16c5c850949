"""Mechanisms generalised in the fifth round of issue 12: each case is invented here (not
a labelled set's sentence), one per mechanism, with the look-alike that must stay.

- how a value's shape is judged: an "@" among other symbols of a four-class value is a
  password character, not an address's; a run of plain words in quotes after a verb or
  a colon is a passphrase unless a word makes it a sentence; provider tokens by prefix
  and a random tail of a plausible length; a combination in the shape of a date;
  quoted-printable escapes are never a value;
- how a label's window is bounded: the words that qualify a code label are read in its
  own sentence; a label's sentence goes on across a mail program's line wrap; up to
  eight words may qualify a label;
- how text reaches the detectors: CRLF line ends read as LF, quoted history ("> ") read
  as the text it quotes;
- how tables, lists and pairs are read: a sentence with commas is no CSV header, a
  numbered list under a heading that names secrets, a credentials heading over two bare
  lines (login, then password), a token id before its secret, an identity's own label in
  a password label's window, a login and password joined by a comma.
"""

from __future__ import annotations

import pytest

from support.secret_text import SCANNER, check, redacted


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # an "@" among other symbols
    ("Le mot de passe du routeur est : Tz4!kq9@Wm2#Lp", ["Tz4!kq9@Wm2#Lp"], []),
    ("Le mot de passe est envoyé à j.martin@mairie-exemple.fr demain.", [],
     ["j.martin@mairie-exemple.fr"]),
    # a quoted passphrase after a verb, across a wrap and an adverb
    ('The recovery passphrase for the archive disk is now\n  "amber river quietly sleeps"\n'
     "(lower case).", ["amber river quietly sleeps"], []),
    ("La phrase de passe reste « je vous la donne au téléphone » pour l'instant.", [],
     ["je vous la donne au téléphone"]),
    # qualifiers of a code label stay in its sentence
    ("Pour l'alarme du garage le code est 583920.\nSIRET de l'entreprise : 812 345 678 00021",
     ["583920"], ["812 345 678 00021"]),
    ("Votre code client 583920 figure sur la facture.", [], ["583920"]),
    # a sentence with commas is no CSV header
    ("Le mot de passe, comme convenu hier soir avec vous, c'est « Marée » puis 88 :\n"
     "soulignement, rien d'autre, merci de confirmer", [],
     ["soulignement"]),
    # a credentials heading over two bare lines
    ("Les identifiants du poste d'accueil (session partagée) :\naccueil-rdc\nBanc.Public.31\n",
     ["Banc.Public.31"], ["accueil-rdc"]),
    # a combination in the shape of a date, and a date after a date word
    ("Le cadenas du local a la combinaison 17-42-05, tourner à droite d'abord.",
     ["17-42-05"], []),
    ("Le code d'accès est valable jusqu'au 12-03-26 inclus.", [], ["12-03-26"]),
    # an identity's own label in a password label's window
    ("The kiosk asks for a passphrase at start-up, it's \"orange lantern drifts west\" "
     "on the note. Asset tag on the side: 7QX2041KLM.", ["orange lantern drifts west"],
     ["7QX2041KLM"]),
    # a token id before its secret
    ("curl -H 'Authorization: PVEAPIToken=sync@pam!backup2=4d1e7c90-2b3a-4f58-9e61-"
     "a7c0d3b2e418' https://pve.example.org:8006/api2/json/nodes",
     ["4d1e7c90-2b3a-4f58-9e61-a7c0d3b2e418"], ["sync@pam!backup2"]),
    # numbered items under a heading that names secrets
    ("Codes de secours du compte, à garder au coffre :\n  1. 7hq2-k4wd\n  2. m9zt-3rxe\n",
     ["7hq2-k4wd", "m9zt-3rxe"], []),
    # quoted-printable escapes quoted in prose
    ("Les parents recopient le mot de passe avec le « =C3=A9 » au milieu.", [], ["=C3=A9"]),
    # a login and a four-class password joined by a comma
    ("J'ai créé l'utilisateur du nouveau bénévole : rlefebvre, Pignon7&Roue ; merci.",
     ["Pignon7&Roue"], ["rlefebvre"]),
    # the French order of an application secret's label
    ("Et le secret d'application : Hq7Lm2Xv9Rt4Wb1Nk8Yc3Pd6Sf0Gj5Ua", [
        "Hq7Lm2Xv9Rt4Wb1Nk8Yc3Pd6Sf0Gj5Ua"], []),
    # a long label phrase
    ("La phrase de passe de la clé de signature du service compta est : "
     "la mer monte doucement sur la digue", ["la mer monte doucement sur la digue"], []),
    # provider tokens with a tail of another length than gitleaks' exact one
    ("Linear: lin_api_Zq8Xm3Lk9Rt2Wb7Np4Yv1Hc6Sd0Fg5Ja", [
        "lin_api_Zq8Xm3Lk9Rt2Wb7Np4Yv1Hc6Sd0Fg5Ja"], []),
    ("Doppler token dp.st.dev.Lq7Xz2Rm9Tb4Wk8Np1Yv6Hc3Sd0Fg5Ja2Ue7Io3Km still valid", [
        "dp.st.dev.Lq7Xz2Rm9Tb4Wk8Np1Yv6Hc3Sd0Fg5Ja2Ue7Io3Km"], []),
    ("HubSpot: pat-na1-0b8e4c2a-7f31-4d95-a6c0-e2b9d4f1a873", [
        "pat-na1-0b8e4c2a-7f31-4d95-a6c0-e2b9d4f1a873"], []),
    # a session's id is its key, a request's id is a reference
    ("Cookie: app_session_id=q8w2e7r4t1y9u3i6o0p5a2s8; request_id=Rq7Lm2Xv9Tb4Wk8Np1Yc",
     ["q8w2e7r4t1y9u3i6o0p5a2s8"], ["request_id=Rq7Lm2Xv9Tb4Wk8Np1Yc"]),
    # a parallel clause after a password
    ("mdp du poste : Accueil#Rdc5\net pour le NAS c'est nasrdc2031 (merci)",
     ["Accueil#Rdc5", "nasrdc2031"], []),
    # a column titled "key" alone: generated cells only
    ("tool,owner,key,since\nBrevo,news,0f3b9a7c-2d41-4e86-b5c0-9a7e1d3f2b64,2025-04-01\n"
     "Matomo,web,none,2025-05-02\n", ["0f3b9a7c-2d41-4e86-b5c0-9a7e1d3f2b64"],
     ["2025-04-01", "none"]),
    # a login, a slash, and the password after the mail program's wrap
    ("Bonjour, les accès à l'interface d'administration de la box du local sont admin /\n"
     "Xr7-kqP2-wm9T (merci de ne pas diffuser)", ["Xr7-kqP2-wm9T"], ["admin /"]),
])
def test_round5_mechanisms(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


def test_label_sentence_across_a_wrap() -> None:
    """The value after a verb on the next line, and a label's qualifiers that go on
    after a wrap; a word of the sentence that goes on is no value."""
    check("Bonjour, pour la salle polyvalente de la mairie annexe, la clé du wifi c'est\n"
          "marguerite2031 (tout en minuscules).", ["marguerite2031"], [])
    check("Bonjour Paul, comme promis hier au téléphone voici la phrase de passe du coffre\n"
          "KeePass de l'accueil : les hérons pêchent au lever du jour\nBonne journée",
          ["les hérons pêchent au lever du jour"], [])
    out = redacted("We changed the server last week and without the passwords the\n"
                   "archives are unreadable, so please keep them safe.")
    assert "unreadable" in out


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_crlf_reads_as_lf(eol: str) -> None:
    text = eol.join(["Device      | Serial    | PIN", "Laptop Ana  | PF3K9XQ2  | 551902",
                     "Laptop Tom  | PF3K9XR7  | 880215", ""])
    check(text, ["551902", "880215"], ["PF3K9XQ2", "PF3K9XR7"])
    assert [(f.start, f.end) for f in SCANNER.scan(text)] == [
        (text.index("551902"), text.index("551902") + 6),
        (text.index("880215"), text.index("880215") + 6)]


def test_quoted_history_reads_as_its_text() -> None:
    plain = ("Bonjour, pour la salle polyvalente de la mairie annexe, la clé du wifi c'est\n"
             "marguerite2031 (tout en minuscules).\n")
    quoted = "Merci !\n\n" + "".join("> " + line + "\n" for line in plain.splitlines())
    check(quoted, ["marguerite2031"], ["> "])
    assert redacted(quoted).count("\n> ") == 2          # the marks themselves stay
