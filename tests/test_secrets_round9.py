"""Mechanisms generalised in the ninth round of issue 12 (the secrets-tune-t and -u
sets): each case is invented here, not a labelled set's sentence, with the look-alike
that must stay.

- reading: a part decoded with the wrong charset (its accented letters as lone
  surrogates or U+FFFD) still has its labels; Markdown code spans in a password column;
  an XML element named for a password, with attributes;
- labels: "secret key" is a secret key's label (a UUID after it), not the weak "secret";
  a parenthetical aside after a label may go on across a line wrap; a spaced dash ends
  a field of a line (a network's name before "clé" does not qualify it); an access
  code's own label outweighs the heading of its list; a network's name between a Wi-Fi
  label and a key's label; a keypad code with "#" inside;
- tools and providers: redis-server's password options, Terraform Cloud's tokens,
  Airtable's personal access tokens; an object under a key that names a secret
  (OnlyOffice's local.json);
- what is no secret: a captcha's site key, an OpenAI organisation id, a purchase order's
  number;
- corrections: the value a correction sets aside beside the right one, when it is a
  near-copy of it; an old value that the text says is still in use somewhere or was
  put back.
"""

from __future__ import annotations

import pytest

from support.secret_text import SCANNER, check


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # wrong charset: "Clé" with its "é" undecoded (surrogateescape, as the milter reads)
    ("Mod\udce8le : routeur TP-Link AX55\nCl\udce9 WPA2 : Hq4Tz8Lm2Rv6\n"
     "Firmware 1.3.8 Build 20240115\n", ["Hq4Tz8Lm2Rv6"], ["AX55", "1.3.8", "20240115"]),
    # ... and U+FFFD (an email library's "replace")
    ("S\ufffdcurit\ufffd : WPA2\nCl\ufffd de s\ufffdcurit\ufffd : Wd7Pn3Ks9Ja2\n"
     "Adresse IP : 192.168.0.1\n", ["Wd7Pn3Ks9Ja2"], ["192.168.0.1"]),
    # a Markdown table whose cells are code spans
    ("| Service | Compte | Mot de passe |\n|---|---|---|\n"
     "| Extranet | tresorerie | `Pommier&Cidre51` |\n| Webmail | secretariat | `Vx2-Lq8-Nz4` |\n",
     ["Pommier&Cidre51", "Vx2-Lq8-Nz4"], ["tresorerie", "secretariat"]),
    # an XML element named for a password, with attributes (a client's export)
    ('<Account>\n  <Host>sftp.asso-exemple.fr</Host>\n  <User>asso</User>\n'
     '  <Password encoding="base64" version="2">Q2VyaXNpZXIjNzc=</Password>\n</Account>\n',
     ["Q2VyaXNpZXIjNzc="], ["sftp.asso-exemple.fr", "<User>asso</User>"]),
])
def test_round9_reading(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # "Secret key" then a UUID; the access key and the project id beside it stay
    ("Object storage for the backups:\nAccess key   : SCWB4N7QX2M8KD5RT9VZ\n"
     "Secret key   : 3b9e71c4-5a2d-4f86-b0e3-97d12c6a48f5\n"
     "Project ID   : 72c1e8a9-0d4b-4e37-95f6-1a8b3c2d7e40\n",
     ["3b9e71c4-5a2d-4f86-b0e3-97d12c6a48f5"],
     ["SCWB4N7QX2M8KD5RT9VZ", "72c1e8a9-0d4b-4e37-95f6-1a8b3c2d7e40"]),
    # an aside in brackets across a line wrap, then the value
    ("Le mot de passe de la console de secours (celui que demande le\ntechnicien au "
     "téléphone) : CORBEAU — contrat n° MX-20-3381.", ["CORBEAU"], ["MX-20-3381"]),
    # a spaced dash ends a field: "PUBLIC" in the network's name is no qualifier
    ("Wi-Fi visiteurs – MAIRIE-PUBLIC – clé : Accueil2027visite\n", ["Accueil2027visite"],
     ["MAIRIE-PUBLIC"]),
    # ... while a public key's own label stays one
    ("Clé publique du serveur : Hx7Lq2Vz9Nm4Kw8Rt3\n", [], ["Hx7Lq2Vz9Nm4Kw8Rt3"]),
    # a network's name between a Wi-Fi label and a key's label is no key
    ("- Guest Wi-Fi: ASSO-Hall2, key Tilia-Quartz-Moon-31\n- Alarm panel code: 52#7719\n",
     ["Tilia-Quartz-Moon-31", "52#7719"], ["ASSO-Hall2"]),
    ("Wi-Fi : Hx4!Pz9qLw2m\n", ["Hx4!Pz9qLw2m"], []),
    # an access code's own label, under a list headed by a bank's letter
    ("La lettre de la banque pour l'espace en ligne dit :\n  N° client : 55102947\n"
     "  Code secret : 8 1 4 6 3 0\n", ["8 1 4 6 3 0"], ["55102947"]),
    # ... but a bank's codes under such a heading are still references
    ("Les codes de la banque pour le virement :\n  code guichet : 00412\n", [], ["00412"]),
])
def test_round9_labels(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("    entrypoint: redis-server --appendonly yes --requirepass Kq7Zm2Wx9Lp4\n"
     "    image: redis:7.4\n", ["Kq7Zm2Wx9Lp4"], ["redis:7.4", "--appendonly yes"]),
    ("TF_TOKEN_app_terraform_io=Zq4Lm8Xv2Nw6Rt.atlasv1.Kp3Hd9Fs1Gy7Ju5Bc2Vn8Mx4Lq6Wz0Rt3Ys9Ea1"
     "Dk7Hf5Jg2Pm8Nc4Xb6Vq0\nworkspace: mairie-prod\n",
     ["Zq4Lm8Xv2Nw6Rt.atlasv1.Kp3Hd9Fs1Gy7Ju5Bc2Vn8Mx4Lq6Wz0Rt3Ys9Ea1Dk7Hf5Jg2Pm8Nc4Xb6Vq0"],
     ["mairie-prod"]),
    # Airtable's personal access token, named by its provider; the base's id stays
    ("Jeton Airtable (CRM des adhérents) :\npatQm4Lx8Vz2Rt6Kw.0e7d2c9b4a1f8e3d6c5b0a9f2e7d4c1b8a3"
     "f6e9d2c5b8a1f4e7d0c3b6a9f2e5d8c7\n\nLa base : appR7kLm2Qz9Xv4Tn\n",
     ["patQm4Lx8Vz2Rt6Kw.0e7d2c9b4a1f8e3d6c5b0a9f2e7d4c1b8a3f6e9d2c5b8a1f4e7d0c3b6a9f2e5d8c7"],
     ["appR7kLm2Qz9Xv4Tn"]),
    # ... and a word that starts with "pat" is no token
    ("Le patrimoine de l'association est sur Airtable, patience pour l'export.\n", [],
     ["patrimoine", "patience"]),
    # string values of an object under a key that names a secret, however deep
    ('{"mail": {"secrets": {"smtp": {"value": "Lk4Zq9Xw2Rt7Vm3Np8Hc5Jd1"}, '
     '"name": "relay-secret-01"}}, "version": "2.4.1"}',
     ["Lk4Zq9Xw2Rt7Vm3Np8Hc5Jd1"], ["relay-secret-01", "2.4.1"]),
])
def test_round9_tools_and_providers(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # a captcha's site key is public; its secret key is not
    ("Clés hCaptcha du formulaire d'adhésion :\nclé du site : 10000000-ffff-ffff-ffff-"
     "000000000001x7Q\nclé secrète : 0x4Fb2Kd9Lm7Qz3Xw8Rt1Vn6Hs5Jc\n",
     ["0x4Fb2Kd9Lm7Qz3Xw8Rt1Vn6Hs5Jc"], ["10000000-ffff-ffff-ffff-000000000001x7Q"]),
    ("Turnstile site key: 0x4AAAAAAAB7kQm2Lz9Xv4Rt\n", [], ["0x4AAAAAAAB7kQm2Lz9Xv4Rt"]),
    # an OpenAI organisation id beside a key
    ("La clé : sk-proj-Tq8Lm2Xv7Rk4Wz9Nc3Bd6Fs1Gy5Hj0Ku2Pm8Qa4Ve7Lc1Xr6Zt3Ny9Jd5\n"
     "(organisation org-Lp4Xz8Qm2Vt7Rk9Nw3Bc6Dd)", [
         "sk-proj-Tq8Lm2Xv7Rk4Wz9Nc3Bd6Fs1Gy5Hj0Ku2Pm8Qa4Ve7Lc1Xr6Zt3Ny9Jd5"],
     ["org-Lp4Xz8Qm2Vt7Rk9Nw3Bc6Dd"]),
    # a purchase order's number after a credential
    ("Deploy app password ........ Wm8!Kq3Zr7Lx\nTo be rotated after sign-off (PO 2027-AB-118).",
     ["Wm8!Kq3Zr7Lx"], ["2027-AB-118"]),
])
def test_round9_not_secret(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # a near-copy set aside by a correction goes with the right value
    ("Erreur de ma part : le digicode du local c'est 7A3958, pas 7A3985. Le livreur "
     "passe à 14h30.", ["7A3958", "7A3985"], ["14h30"]),
    ("Sorry, the VPN password is not Heron-2025 it's\nHeron-Grey#2026 since March.",
     ["Heron-Grey#2026", "Heron-2025"], []),
    # ... not a time, a date or a reference the sentence sets aside
    ("Le code de la salle c'est 4471B, pas 18h30 comme prévu.", ["4471B"], ["18h30"]),
    ("Le code du portail c'est 9C2247, pas 2024-11-05 : l'ancien courrier se trompait.",
     ["9C2247"], ["2024-11-05"]),
    # an old value still in use somewhere is no old value
    ("Le mot de passe des postes c'est Marelle2026, sauf sur le portable du bureau où\n"
     "c'est resté l'ancien : Marelle-25x.", ["Marelle2026", "Marelle-25x"], []),
    # ... a capitalised word, digits and a word joined by a hyphen is a password's shape,
    # a term such as "S3-compatible" is not
    ("Le mot de passe du NAS c'est Ruche2026miel, sauf le vieux disque S3-compatible où\n"
     "c'est resté l'ancien : Ruche25-miel.", ["Ruche2026miel", "Ruche25-miel"],
     ["S3-compatible"]),
    # ... nor one put back
    ("Pour la tablette de l'accueil j'ai remis l'ancien code : Loutre*Rive19, le nouveau "
     "bloquait l'appli.", ["Loutre*Rive19"], []),
])
def test_round9_corrections(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


def test_old_value_that_no_longer_works_stays() -> None:
    """The decision the round keeps: an old value that the text says stopped working,
    with no correction beside it, is left (secrets-tune-d's decoys)."""
    check("Le code du local a changé ce matin, l'ancien (5R8814) ne marche plus ; "
          "le nouveau vous sera donné par téléphone.", [], ["5R8814"])


def test_surrogates_keep_offsets() -> None:
    text = "R\udce9seau : ASSO-LIBRE\nCl\udce9 : Tz8Qm3Lw6Xk1\n"
    found = SCANNER.scan(text)
    assert [text[f.start:f.end] for f in found] == ["Tz8Qm3Lw6Xk1"]
