"""Recall mechanisms generalised in the eleventh round of issue 12 (the secrets-tune-x,
-y and -z sets): each case is invented here, not a labelled set's sentence, with the
look-alike that must stay.

- a setting whose name ends with a password word keeps its secret name when an identity
  word opens it ("userPassword", "user_pass", "login_pwd": the user's password), while
  a name that says what else it is ("user_password_reset") and the user's own setting
  stay;
- XML: an element named for a secret ("<pre-shared-key>X</pre-shared-key>") and the
  name/value pairs of exports and configs written in XML (KeePass's "<Key>Password</Key>
  <Value>X</Value>", a property list's "<key>…</key><string>…</string>", .NET's
  '<add key="…" value="…"/>'); the other pairs of the same entry (title, notes, user)
  and an element named for a key's id or a token's expiry stay;
- a value framed by wide spaces after a password label and its separator ("c'est :  X
  Y 12  sans les espaces"): the frame says where it starts and ends, spaces inside
  included; a framed aside ("voir avec Paul") or reference ("ticket 4521") stays;
- an SMTP/IMAP session pasted from a log: "AUTH PLAIN <base64>" when it decodes to
  "\\0login\\0password", and AUTH LOGIN's line after "334 UGFzc3dvcmQ6" (the server's
  "Password:"); the login's line, the server's prompts, an AUTH PLAIN that decodes to
  something else and the EHLO's list of mechanisms stay;
"""

from __future__ import annotations

import pytest

from support.secret_text import check


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # an LDIF entry: the user's id and mail stay, its clear password goes
    ("dn: uid=mgarnier,ou=people,dc=asso-exemple,dc=org\nuid: mgarnier\n"
     "mail: m.garnier@asso-exemple.org\nuserPassword: Tilleul-Brume-615\n",
     ["Tilleul-Brume-615"], ["mgarnier", "m.garnier@asso-exemple.org"]),
    ("db:\n  user_name: svc_compta\n  user_pass: \"Kq7!vLm2Rw\"\n",
     ["Kq7!vLm2Rw"], ["svc_compta"]),
    ("LOGIN_PWD=Hx4#pTz9Wq\nLOGIN_USER=relais\n", ["Hx4#pTz9Wq"], ["relais"]),
    # a password's reset date and its policy are not the password
    ("user_password_reset: 2025-03-14\nuser_password_policy: strong-12\n", [],
     ["2025-03-14", "strong-12"]),
])
def test_owner_word_before_password_setting(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("<tunnel>\n  <remote>203.0.113.7</remote>\n  <psk-secret>W4nTq8Lz2Rx7Vm3Kp9Yd</psk-secret>\n"
     "  <key-id>7F3A9C21B4E8D605</key-id>\n</tunnel>\n",
     ["W4nTq8Lz2Rx7Vm3Kp9Yd"], ["203.0.113.7", "7F3A9C21B4E8D605"]),
    ("<server><host>files.asso-exemple.org</host>"
     "<api_token>c81Xq2Vw7ZkR4pLm9Tn3Hs6Yd0Fb</api_token></server>\n",
     ["c81Xq2Vw7ZkR4pLm9Tn3Hs6Yd0Fb"], ["files.asso-exemple.org"]),
    ("<token_expiry>20260131T000000Z</token_expiry>\n", [], ["20260131T000000Z"]),
    # a password manager's XML export: only the password's value goes
    ("<Entry>\n\t<String><Key>Title</Key><Value>NAS compta</Value></String>\n"
     "\t<String><Key>UserName</Key><Value>compta-adm</Value></String>\n"
     "\t<String><Key>Password</Key><Value ProtectInMemory=\"True\">Saule%Riviere%48</Value>"
     "</String>\n\t<String><Key>Notes</Key><Value>baie B, SN QX7K2209LM</Value></String>\n"
     "</Entry>\n", ["Saule%Riviere%48"], ["NAS compta", "compta-adm", "SN QX7K2209LM"]),
    # a property list and an appSettings block
    ("<dict>\n  <key>Password</key>\n  <string>Vr7!pKw2mQ</string>\n"
     "  <key>Server</key>\n  <string>mail.asso-exemple.org</string>\n</dict>\n",
     ["Vr7!pKw2mQ"], ["mail.asso-exemple.org"]),
    ('<appSettings>\n  <add key="SmtpUser" value="relais@asso-exemple.org" />\n'
     '  <add key="SmtpPassword" value="Hq4#tZm8Lw" />\n'
     '  <add key="SmtpHost" value="smtp.asso-exemple.org" />\n</appSettings>\n',
     ["Hq4#tZm8Lw"], ["relais@asso-exemple.org", "smtp.asso-exemple.org"]),
    # the same shapes with nothing secret named
    ("<dict><key>BuildNumber</key><string>A7f3Kq92LmZx</string></dict>\n", [],
     ["A7f3Kq92LmZx"]),
])
def test_xml_secret_elements_and_pairs(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("bonjour le mot de passe de la tablette c'est :  hibou gris 1987  je crois qu'il "
     "faut les espaces\nMerci\n", ["hibou gris 1987"], ["Merci"]),
    ("The laptop password is   Q4 7M 2X KP   as printed on the sticker, room B12.\n",
     ["Q4 7M 2X KP"], ["room B12"]),
    ("Mot de passe du poste accueil :  Pivoine!Rue8\nPoste 12, bureau du rez-de-chaussée\n",
     ["Pivoine!Rue8"], ["Poste 12"]),
    # a framed aside or reference where a value would be
    ("Mot de passe :  voir avec Paul  merci de le rappeler\n", [], ["voir avec Paul"]),
    ("Mot de passe :  ticket 4521  merci de relancer l'éditeur\n", [], ["ticket 4521"]),
    ("Password:  see ticket 7810  thanks\n", [], ["ticket 7810"]),
])
def test_value_framed_by_wide_spaces(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


_PLAIN = "AGNvbXB0YUBhc3NvLWV4ZW1wbGUub3JnAEZpY3VzLVZlcnJlLTI3"
_USER = "Y29tcHRhQGFzc28tZXhlbXBsZS5vcmc="
_PASSWORD = "RmljdXMtVmVycmUtMjc="
_NOT_PLAIN = "anVzdCBzb21lIGJ5dGVzIGhlcmU="


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Voici le journal du copieur :\n< 250-AUTH PLAIN LOGIN\n> AUTH PLAIN " + _PLAIN +
     "\n< 535 5.7.8 Error: authentication failed\n", [_PLAIN],
     ["250-AUTH PLAIN LOGIN", "535 5.7.8"]),
    ("a1 AUTHENTICATE PLAIN " + _PLAIN + "\na1 NO [AUTHENTICATIONFAILED]\n", [_PLAIN], ["a1 NO"]),
    ("C: AUTH LOGIN\nS: 334 VXNlcm5hbWU6\nC: " + _USER + "\nS: 334 UGFzc3dvcmQ6\nC: " + _PASSWORD +
     "\nS: 535 5.7.8 failed\n", [_PASSWORD], [_USER, "334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]),
    # an AUTH PLAIN whose base64 is no login and password, and a mechanism list
    ("> AUTH PLAIN " + _NOT_PLAIN + "\n< 501 5.5.2 bad\n", [], [_NOT_PLAIN]),
    ("250-AUTH PLAIN LOGIN CRAM-MD5\n250 AUTH=PLAIN LOGIN\n", [], ["AUTH PLAIN LOGIN CRAM-MD5"]),
])
def test_sasl_transcript(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)
