"""Mechanisms generalised in the thirteenth round of issue 12 (the secrets-tune-ac and
-ad sets), precision first: each case is invented here, not a labelled set's sentence,
with the look-alike the other way (a decoy that must stay, a secret that must go).

- a value the writer marks as public, in a bracket that holds only that word, right
  after it ("X (publique)") or ending its label ("identifiant (public) : X"): the public
  half of a pair; not a network called public, nor "(pas public)";
- a Wi-Fi network's security mode ("WPA3-Personal", "WPA2-PSK (AES)") in the cell or
  field a key's label reaches: the standard's name, never the key ("Wpa2-Lavoir-83" is);
- a quoted message that names its own code in a sentence ("Your login code is 4471.",
  an SMS pasted in quotes) is no quoted passphrase: its code goes, its other words (a
  reference, a name) stay; a quoted passphrase of plain words still goes;
- a label/value row of a two-column table (HTML source read as text, indented; a
  Markdown row with its outer bars) is no column title: its value is the cell to its
  right, not the cell under it in the next row; a real header still names its column;
- a state word after "for the", "du", "of the" in a label's qualifiers describes the
  thing the password opens ("the passphrase for the encrypted drive is:"), not the
  password: the value after it goes; "password encrypted with ..." and a label that
  points elsewhere still give none;
- a column of codes is titled by its own cell: a "Série" or "Serial" column beside
  "Code de déverrouillage" does not make it a product's code, and a code's use may be
  joined by a preposition ("Code du portail", "Code for the door"); a column titled
  "Code de commande" or "Code de licence" is still no secret's;
- a one-time code before a provider's "is your ... verification / sign-in code" (an SMS
  forwarded as text) is the code; before "is your order / tracking / seat code" it is
  not.
"""

from __future__ import annotations

import pytest

from support.secret_text import check


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # public, after the value, beside its secret
    ("Paiement en ligne : clé Vt8Qm2Kx7Lp4Rz9W (publique), clé secrète "
     "Hd3Nf8Wq2Zr7Kp5Ty9Bm4Lc6\n", ["Hd3Nf8Wq2Zr7Kp5Ty9Bm4Lc6"], ["Vt8Qm2Kx7Lp4Rz9W"]),
    ("Widget key: pw_pub_4Tk9Lm2Qx7Rv [public]\nWidget secret: pw_sec_8Hn3Zq6Wd1Kc5Fy2\n",
     ["pw_sec_8Hn3Zq6Wd1Kc5Fy2"], ["pw_pub_4Tk9Lm2Qx7Rv"]),
    # public, ending the label
    ("Identifiant boutique (public) : shop_pk_7Rw2Mx9Kq4Tz\n"
     "Clé d'API (secrète) : shop_sk_3Lp8Vn5Qz2Wx7Hc4\n",
     ["shop_sk_3Lp8Vn5Qz2Wx7Hc4"], ["shop_pk_7Rw2Mx9Kq4Tz"]),
    # the look-alikes: a public network's password, a bracket that says it is not public
    ("Wi-Fi public de la médiathèque : mot de passe Lecture!2026\n", ["Lecture!2026"], []),
    ("Le mot de passe (pas public) : Grenier-Tx84\n", ["Grenier-Tx84"], []),
    ("guest network password: Orchard#77b (public hall)\n", ["Orchard#77b"], []),
])
def test_public_half(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("<table>\n<tr><td><b>Réseau</b></td><td>Atelier</td></tr>\n"
     "<tr><td><b>Sécurité</b></td><td>WPA2-Personnel</td></tr>\n"
     "<tr><td><b>Clé Wi-Fi</b></td><td>ruche-lanterne-orage-31</td></tr>\n</table>\n",
     ["ruche-lanterne-orage-31"], ["WPA2-Personnel"]),
    ("Wi-Fi settings\nMode: WPA2-PSK (AES)\nKey: Tb6!harbour!Mq\n",
     ["Tb6!harbour!Mq"], ["WPA2-PSK (AES)"]),
    # the look-alike: a key that starts like a mode's name
    ("Sécurité : WPA2\nClé WPA2 : Wpa2-Lavoir-83\n", ["Wpa2-Lavoir-83"], []),
])
def test_security_mode(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ('Voici le premier SMS : "Gamma-553201 est votre code de validation."\n'
     'Et le deuxième : "Votre code de connexion est 7264. Dossier 2025-QX."\n',
     ["7264"], ["Dossier 2025-QX"]),
    ('Forwarded text: "Your parcel locker code is 3391. Locker B-12, Station Road."\n'
     'Earlier one: "Your sign-in code is 9042."\n', ["9042"], ["Station Road"]),
    # the look-alike: a passphrase given in quotes after its label
    ('The new Wi-Fi passphrase is: "Seven Lanterns Over Brighton 88"\n',
     ["Seven Lanterns Over Brighton 88"], []),
    ('Le mot de passe du coffre : « trois pommes sous le préau 42 »\n',
     ["trois pommes sous le préau 42"], []),
])
def test_quoted_message(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("<table>\n  <tr><td><b>Nom du réseau</b></td><td>Grange-Wifi</td></tr>\n"
     "  <tr><td><b>Mot de passe</b></td><td>Ortie-Caillou-Vent-52</td></tr>\n"
     "  <tr><td><b>Canal</b></td><td>Auto</td></tr>\n</table>\n",
     ["Ortie-Caillou-Vent-52"], ["Canal", "Grange-Wifi"]),
    ("| Passphrase | ember-otter-slate-64 |\n| Guest portal | Enabled |\n",
     ["ember-otter-slate-64"], ["Guest portal", "Enabled"]),
    # the look-alike: a header row over rows of accounts still names its column
    ("| Compte | Mot de passe |\n| compta | Rv8!Lune-Ocre |\n| accueil | Tq5#Bois-Sel |\n",
     ["Rv8!Lune-Ocre", "Tq5#Bois-Sel"], ["compta", "accueil"]),
])
def test_key_value_row(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Hi,\nthe passphrase for the encrypted laptop of the front desk is:\n\n"
     "   lemon harbour quilt sixty\n\nThanks, Dana\n", ["lemon harbour quilt sixty"], []),
    ("La phrase de passe du volume chiffré de la compta : Merle-Brique-Osier-19\n",
     ["Merle-Brique-Osier-19"], []),
    # the look-alikes: a password said to be encrypted, a label that points elsewhere
    ("Le mot de passe chiffré est dans le fichier config.php, ligne 12.\n", [],
     ["config.php"]),
    ("The password for the encrypted share is in the team vault, entry NAS-Compta.\n", [],
     ["NAS-Compta"]),
])
def test_state_of_the_object(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("<table>\n<tr><th>Salle</th><th>N° de série</th><th>Code du cadenas</th></tr>\n"
     "<tr><td>Atelier</td><td>KL-44310</td><td>3817</td></tr>\n"
     "<tr><td>Réserve</td><td>KL-44311</td><td>6092</td></tr>\n</table>\n",
     ["3817", "6092"], ["KL-44310", "KL-44311"]),
    ("| Kiosk | Serial | Unlock code |\n|---|---|---|\n| Hall | QX-5520-A | 418806 |\n"
     "| Café | QX-5520-B | 772915 |\n", ["418806", "772915"], ["QX-5520-A", "QX-5520-B"]),
    # the look-alikes: the column's own title names a sale or a licence
    ("| Poste | Série | Code de commande |\n| P4 | MN-7781 | 559310 |\n"
     "| P5 | MN-7782 | 559311 |\n", [], ["559310", "559311"]),
    ("| Poste | Code de licence |\n| P4 | 88213-55120 |\n| P5 | 88213-55121 |\n", [],
     ["88213-55120"]),
])
def test_code_column(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ('Copie du SMS reçu à 9h12 : "N-415207 is your Nimbus verification code."\n',
     ["N-415207"], ["9h12"]),
    ("Text from the bank: 602 118 is your Harbour Bank sign-in code. Never share it.\n",
     ["602 118"], []),
    # the look-alikes: what the code is for is no login
    ("Reminder: 4471023 is your parcel tracking code, and 88 is your seat code.\n", [],
     ["4471023", "88 is"]),
    ("FR-30917 is your order code for the new badge printer.\n", [], ["FR-30917"]),
])
def test_one_time_code_message(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)
