"""Recall by kind of context, twelfth round of issue 12 (the secrets-tune-x, -y and -z
sets): each case is invented here, not a labelled set's sentence, and each kind has its
look-alike that must stay.

- a text file attached under a program's own ``application/x-...`` type (an OpenVPN
  profile, a PEM file) is read as text, as ``application/octet-stream`` named like one
  was; a binary attachment of such a type is left byte for byte;
- a strong value holding a symbol of a French keyboard's top row (§ ° £ µ €) is as
  strong as one holding "!" or "#"; a temperature, a numbered badge or an amount stay;
- a label that names a phrase ("the passphrase", "est la phrase", "phrase secrète")
  before words in quotes gives them as the phrase, whatever word is among them, but a
  password's own words (a link's text); alone on its line after a long aside and a blank
  line, with a place's name in capitals, as after the label itself;
- provider tokens by their shape: Google's OAuth refresh token ("1//0" and a generated
  run, which a path check read as a path), Notion's "ntn_" with its digits mixed in, a
  service's live key after its short name ("xyz_live_...", as Stripe made the shape,
  even when the name is a word like "mon" or "my"); Stripe's publishable "pk_live_", a
  placeholder ("your_live_key_here") and a short "ntn_" word stay;
- "secret" then one word that says whose it is ("le secret paypal", "the secret admin")
  then a generated value; "secret professionnel" and a reference, a secret santa's link
  stay;
- a Zabbix user macro's name ("{$NAS.API.SECRET} = ...") names its value as a setting's
  name does; a template's "{{api_key}}" is no name;
- a keypad's code followed by its key in words ("taper X puis la touche ...", "key in X
  then press the bell", "composer X puis valider") for a door, a gate or a barrier; a
  phone service's number or a year before a key in words, no place named, stay;
- an application password after its label, across a line or an aside (WordPress: six
  groups of four letters and digits; Google's four groups of four letters alone on their
  line); four short words of a sentence and a reference's digit groups stay;
- a line of Postfix's SASL password map ("[relay]:587  user:password", "@domain
  user:password"): the password goes, the user and the relay stay, as do main.cf's
  lines and a log's "[10:42]: erreur:timeout";
"""

from __future__ import annotations

import pytest

from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner
from support.mail import as_bytes, make_message
from support.secret_text import check

SCANNER = SecretScanner()

VPN_PROFILE = b"""client
dev tun
remote vpn.example.net 1194 udp
<key>
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQx3Lm8v2Rk1Tz7Yp
Wq4Nb9Fh2Jd6Ks0Xc5Vr8Ue3Ma1hRANCAAR4nJ2kP7wQz0sLd6fT1yVb3mX8cE5hU
-----END PRIVATE KEY-----
</key>
"""


@pytest.mark.parametrize(("subtype", "filename"), [
    ("x-openvpn-profile", "poste-accueil.ovpn"),
    ("x-pem-file", "cle-serveur.pem"),
    # a program's type the walk does not know, named like a text file
    ("x-config", "acces.conf"),
])
def test_text_file_under_a_program_type_is_scanned(subtype: str, filename: str) -> None:
    msg = make_message(body="Voici le profil du poste.\n")
    msg.add_attachment(VPN_PROFILE, maintype="application", subtype=subtype,
                       filename=filename)
    raw = as_bytes(msg)
    r = redact_message(raw, SCANNER)
    assert [kind for _, kind in r.where] == ["private-key"]


def test_binary_attachment_under_a_program_type_stays() -> None:
    msg = make_message(body="Voici l'archive.\n")
    blob = b"PK\x03\x04" + bytes(range(256)) * 8 + b"mot de passe : Binaire2024!"
    msg.add_attachment(blob, maintype="application", subtype="x-zip-compressed",
                       filename="profil.zip")
    raw = as_bytes(msg)
    r = redact_message(raw, SCANNER)
    assert r.count == 0


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Accès du poste de la régie\nMessagerie : regie@mairie.example / Cerisier§2031\n"
     "Compta : COMPTA1 / Noyer°Vert58\n",
     ["Cerisier§2031", "Noyer°Vert58"], ["regie@mairie.example", "COMPTA1"]),
    ("Mot de passe du portail : Hêtre£Roux77\n", ["Hêtre£Roux77"], []),
    ("Accès salle serveur : la clim est réglée à 19°C, le badge N°A2031-bx est à "
     "l'accueil\n", [], ["19°C", "N°A2031-bx"]),
    ("Le compte de la régie : montant 1250€TTC, facture N°2031Ab-x\n", [],
     ["1250€TTC", "N°2031Ab-x"]),
])
def test_french_keyboard_symbols(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ('The old NAS is locked with the passphrase "copper lantern missed eleven", sorry.\n',
     ["copper lantern missed eleven"], ["old NAS"]),
    ("Le mot de passe du coffre est la phrase\n« trois hiboux dorment sous le pont », "
     "sans les guillemets.\n", ["trois hiboux dorment sous le pont"], []),
    ("La page affiche la phrase « mot de passe oublié ou expiré » en rouge.\n", [],
     ["mot de passe oublié ou expiré"]),
    ('The passphrase field says "forgot your password again" under it.\n', [],
     ["forgot your password again"]),
    ("La phrase secrète de la sauvegarde, celle que le prestataire avait notée dans le "
     "classeur bleu du bureau :\n\nle vieux phare regarde Ouessant\n\nMerci\n",
     ["le vieux phare regarde Ouessant"], []),
    ("La phrase secrète de la sauvegarde, celle que le prestataire avait notée dans le "
     "classeur bleu du bureau :\n\nDemandez-la à Martine Dubois\n\nMerci\n",
     [], ["Demandez-la à Martine Dubois"]),
])
def test_phrase_labels(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ('{\n  "refresh_token": "1//0gKx7Qw2Rt9Lm4Zp-CgYIARAAGBASNwF-L9IrVb3nT8sKq1Yw6",\n'
     '  "expires_in": 3599\n}\n',
     ["1//0gKx7Qw2Rt9Lm4Zp-CgYIARAAGBASNwF-L9IrVb3nT8sKq1Yw6"], ["3599"]),
    ("In the sheet the ratio is 1//0 for now.\n", [], ["1//0"]),
    ("Notion (base Travaux): ntn_7Hq2Lm9Xv4Kc1Rt8Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik4Qo1Tm3Pv\n",
     ["ntn_7Hq2Lm9Xv4Kc1Rt8Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik4Qo1Tm3Pv"], []),
    ("The cron job is called ntn_sync_daily.\n", [], ["ntn_sync_daily"]),
    ("All the probes push with the tenant key abc_live_Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik4Qo1Tm.\n",
     ["abc_live_Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik4Qo1Tm"], []),
    ("Clé du service de stats : my_live_Hq2Lm9Xv4Kc1Rt8Zp3Wb6Ny0Fd5G\n",
     ["my_live_Hq2Lm9Xv4Kc1Rt8Zp3Wb6Ny0Fd5G"], []),
    ("Front-end key (public): pk_live_Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik4Qo1Tm\n", [],
     ["pk_live_Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik4Qo1Tm"]),
    ("Dans le modèle : INGEST_KEY=your_live_key_here\n", [], ["your_live_key_here"]),
])
def test_provider_token_shapes(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Pour la caisse en ligne, le secret stripe Zq8Lw3Nx7Vb2Km9Rt4Yp6Hd1Fs5Gc0Ja3Ue8Io2Ws\n",
     ["Zq8Lw3Nx7Vb2Km9Rt4Yp6Hd1Fs5Gc0Ja3Ue8Io2Ws"], []),
    ("and the secret admin Hq2Lm9Xv4Kc1Rt8Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik is in the vault\n",
     ["Hq2Lm9Xv4Kc1Rt8Zp3Wb6Ny0Fd5Gs2Je7Ua9Ik"], []),
    ("Le secret professionnel couvre le dossier 2024-AB-7781 et la note.\n", [],
     ["2024-AB-7781"]),
    ("It was a secret santa draw, list at https://drive.example.org/d/Q7rT4pLm9XvK2\n", [],
     ["https://drive.example.org/d/Q7rT4pLm9XvK2"]),
])
def test_secret_then_whose(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Macros du modèle :\n  {$NAS.API.SECRET} = 3f9c1e2a-7b4d-4e8f-a1c2-9d0e5b6f7a8c\n"
     "  {$NAS.API.USER} = supervision\n",
     ["3f9c1e2a-7b4d-4e8f-a1c2-9d0e5b6f7a8c"], ["supervision"]),
    ("  {$MSSQL.PASSWORD} = Rv7kQ2pLx9\n", ["Rv7kQ2pLx9"], []),
    ("Template: {{api_key}} = Kx7mQ2vL9Kx7mQ2vL9Kx7\n", [], ["Kx7mQ2vL9Kx7mQ2vL9Kx7"]),
])
def test_zabbix_macro_names(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Pour la cour, le portail s'ouvre en tapant 7730 puis la touche verte.\n",
     ["7730"], []),
    ("At the service gate, key in 5581 then press the bell.\n", ["5581"], []),
    ("Le garage : composer 2468 puis valider.\n", ["2468"], []),
    # no door or gate: a number before a key in words is no code
    ("Appelez le 3615 puis la touche étoile pour le standard.\n", [], ["3615"]),
    ("Portail famille : l'année 2024 puis la touche suivante affichent le bilan.\n", [],
     ["2024"]),
])
def test_keypad_code_then_key_in_words(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("J'ai généré un mot de passe d'application pour l'appli mobile, compte redaction :\n"
     "Ab3d Qr7T mN2p Xy9Z kL4w Pq8s\nÀ supprimer après.\n",
     ["Ab3d Qr7T mN2p Xy9Z kL4w Pq8s"], ["redaction"]),
    ("Google app password for the scanner:\nwxyz mnop qrst hjkl\n",
     ["wxyz mnop qrst hjkl"], []),
    ("The app password page says that they have been told that this will work.\n", [],
     ["that they have been"]),
    ("Mot de passe d'application révoqué, ticket 2024 0012 3344 5566 7788 9900.\n", [],
     ["2024 0012 3344 5566 7788 9900"]),
])
def test_application_passwords(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Le fichier /etc/postfix/sasl_passwd contient :\n\n[mail.fai.example]:465   "
     "copieur-rdc:Tz4.Nord.Est\n\nLe relais refuse.\n",
     ["Tz4.Nord.Est"], ["copieur-rdc", "[mail.fai.example]:465"]),
    ("sasl_passwd, one relay per sender:\n@asso.example   tresorier:Gk8-wQ2z\n",
     ["Gk8-wQ2z"], ["tresorier"]),
    ("relayhost = [mail.fai.example]:465\nsmtp_sasl_password_maps = hash:/etc/postfix/"
     "sasl_passwd\n", [], ["[mail.fai.example]:465", "hash:/etc/postfix/sasl_passwd"]),
    ("Log du 12/03 [10:42]: erreur:timeout sur le relais\n", [], ["erreur:timeout"]),
])
def test_sasl_password_map_lines(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)
