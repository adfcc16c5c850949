"""Kinds of context the secret scanner reads, each with a look-alike it must leave alone.

One case per *kind* of context (not per sentence): the examples are invented here, in
the shapes the blind sets showed (tests/blind/secrets-tune-*), so that a change that
loses a kind fails here with a readable name.
"""

from __future__ import annotations

import pytest

from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner, redact_spans

SCANNER = SecretScanner()


def values(text: str) -> list[str]:
    return [text[f.start:f.end] for f in SCANNER.scan(text)]


@pytest.mark.parametrize(("text", "secret"), [
    # "the new one" names the value after a password label earlier in the paragraph
    ("Le mot de passe du standard a été changé ce matin, l'ancien ne marche plus.\n"
     "Le nouveau est : Tilleul@Gare-61\n", "Tilleul@Gare-61"),
    ("We reset the password of the shared inbox after Tom left. The new one is "
     "Heron7-Quay-Blue, please update the phones.", "Heron7-Quay-Blue"),
    # the value before its label, across a separator and a presentative
    ("« Pivoine.Atelier.42 » : voilà, c'est le nouveau mot de passe du poste.",
     "Pivoine.Atelier.42"),
    ("Marron8&Glace → c'est le mot de passe de la boîte de l'accueil.", "Marron8&Glace"),
    ("Tu peux remettre Zx81!tulipe comme mdp sur le compte de Paul ?", "Zx81!tulipe"),
    # a login label, a few words, then "login / password"
    ("l'accès à l'intranet de la crèche c'est direction / Berceau-Lune-7 depuis lundi.",
     "Berceau-Lune-7"),
    # "@" for an "a" inside a password
    ("Le mot de passe a été réinitialisé. Le nouveau est Cr@yon-Bleu-19 pour la salle.",
     "Cr@yon-Bleu-19"),
    # one value alone in brackets
    ("J'ai tapé le mot de passe noté sur la fiche (Velo*Rouge58) mais il est refusé.",
     "Velo*Rouge58"),
    # "c est" typed without its apostrophe
    ("> pour le poste de la mediatheque la session c est biblio / Livre#Ouvert3",
     "Livre#Ouvert3"),
    # access codes: a letter among digits, pairs of digits, backup codes in a list
    ("Le code du local vélos est 27C4, merci de refermer.", "27C4"),
    ("Passcode: 38 21 90 (three digits of it are asked)", "38 21 90"),
    ("Voici les codes de secours du compte de la trésorerie :\n5120 8834\n3307 1946\n",
     "3307 1946"),
    # the text of a Wi-Fi QR code
    ("Au dos du routeur : WIFI:S:Salle-Polyvalente;T:WPA;P:Ballon#Rouge88;;",
     "Ballon#Rouge88"),
    # "clé secrète", "API key": a long generated value, a UUID included
    ("Stockage objet :\nClé d'accès : SCWA1B2C3D4E5F6G7H8J\n"
     "Clé secrète : 7d2c9a41-5e8b-4f06-b3a1-9c0d2e7f4b18\n",
     "7d2c9a41-5e8b-4f06-b3a1-9c0d2e7f4b18"),
    ('They asked me the "API key". In my profile I find : q8Rt2VmZ5xLw9NcB3pKj7HdY1sFa4GeU.',
     "q8Rt2VmZ5xLw9NcB3pKj7HdY1sFa4GeU"),
])
def test_finds_the_secret(text: str, secret: str) -> None:
    assert secret in values(text)
    assert secret not in redact_spans(text, SCANNER.scan(text))


@pytest.mark.parametrize(("text", "decoy"), [
    # a login in brackets is an aside
    ("Le mot de passe du compte des élus (elus-2027) a été changé hier.", "elus-2027"),
    # an identity named across a verb, a code of an establishment
    ("Le digicode est le 4410B. Mon numéro de badge c'est le 000731 si on vous le demande.",
     "000731"),
    ("Mot de passe : « Prairie 2026 ». Code établissement 0351234X.", "0351234X"),
    # "Key ID" in a list of recovery values names an identifier
    ("BitLocker recovery, from the Microsoft account:\nKey ID: 7C1E42B9\n"
     "Recovery key: 104577-228931-507716-340092-681254-119873-462610-993305\n", "7C1E42B9"),
    # a Slack webhook's workspace and channel ids; a token id before its secret
    ("curl -d '{}' https://hooks.slack.com/services/T07ABCD12/B08EFGH34IJ/"
     "Qw3rTy7UiOp2AsDf6GhJk9Lz", "T07ABCD12"),
    ("Authorization: PVEAPIToken=sauvegarde@pve!nightly=0b7e4c2a-93f1-4d68-a5c0-7e2b9d14f3a6",
     "sauvegarde@pve!nightly"),
    # a public "API key" (client id)
    ("Admin API access token: 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\n"
     "API key (client id): 5c0e9a7b1d3f48e2a6c4b8d0f2e1a3c5\n",
     "5c0e9a7b1d3f48e2a6c4b8d0f2e1a3c5"),
    # a time on the line after a value that ends with a symbol is not its second half
    ("mot de passe : Bbbb11%\n10h30 devant la mairie\n", "10h30"),
    # a certificate's base64 after "clé privée" is no password
    ("Le certificat et la clé privée du site :\n-----BEGIN CERTIFICATE-----\n"
     "MIIDSLmAqfVFZ+IolPszTqvZm0nOEtSr/2ZmP6JMnNI9/LL9QkB6u/yfIeN0F5OS\n"
     "-----END CERTIFICATE-----\n", "MIIDSLmAqfVFZ+IolPszTqvZm0nOEtSr/2ZmP6JMnNI9/LL9QkB6u"),
])
def test_leaves_the_look_alike(text: str, decoy: str) -> None:
    assert decoy in redact_spans(text, SCANNER.scan(text))


def test_utf8_body_labelled_latin1_is_read_as_utf8() -> None:
    """A webmail sends UTF-8 bytes with "charset=ISO-8859-1": read as Latin-1 the text is
    mojibake ("donnÃ©") and the detectors see garbage; read as UTF-8 the password is
    found, and the part keeps its bytes apart from the marker."""
    body = ("Bonjour, j'ai remis le mot de passe que vous m'aviez donné en décembre, "
            "Ecluse4-Brume-Nord, mais il est refusé. Merci d'avance.\r\n").encode()
    raw = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: acces\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
    r = redact_message(raw, SCANNER)
    assert r.count == 1 and r.body is not None
    assert b"Ecluse4-Brume-Nord" not in r.body
    assert r.body == body.replace(b"Ecluse4-Brume-Nord", b"[secret removed: password]")


def test_latin1_body_stays_latin1() -> None:
    body = "Le mot de passe de la boîte est Fenêtre-Ouest-58, merci.\r\n".encode("latin-1")
    raw = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: acces\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
    r = redact_message(raw, SCANNER)
    assert r.body == "Le mot de passe de la boîte est [secret removed: password], merci.\r\n" \
        .encode("latin-1")
