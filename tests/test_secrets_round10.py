"""Mechanisms generalised in the tenth round of issue 12 (the secrets-tune-v and -w
sets): each case is invented here, not a labelled set's sentence, with the look-alike
that must stay.

- a Wi-Fi label that says which network ("Wi-Fi accueil : NAME, clé : X"): the name
  between it and the key's label is the network's, not the key;
- shapes that are no password whatever label is near: a cron schedule in a config
  beside a password's setting; the first groups of a phone number after a code;
- an error's code in parentheses on a line that says something failed;
- a name given to something after its password ("the name I gave it is X");
- the next item of a list of numbered identifiers ("PC-ACC-0412, PC-ACC-0413");
- Airtable's personal access token copied with a character less before its dot;
- a strong value with French letters ("Goéland_42") is one token, as its ASCII twin;
- a key's bare label on a line that a Wi-Fi label opens is the network's key;
- Notion's integration token with a digit more in its numeric head;
"""

from __future__ import annotations

import pytest

from helpdesk_milter.secrets import _numbered_sibling
from support.secret_text import check


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # a qualified Wi-Fi label, the network's name, then the key's own label
    ("Wi-Fi invités : Mediatheque-Hall, clé WPA : lilas-Perche-77\nMerci\n",
     ["lilas-Perche-77"], ["Mediatheque-Hall"]),
    ("WLAN staff: Annex-Office2 / key: Tq8-rowan-Vessel\n",
     ["Tq8-rowan-Vessel"], ["Annex-Office2"]),
    # a cron schedule on the line after a password setting and its comment
    ("backup:\n  passphrase: \"Orme-Borg-Cave-2031\"  # key of the repository\n"
     "  cron: \"30 2 * * 1-5\"\n", ["Orme-Borg-Cave-2031"], ["30 2 * * 1-5"]),
    # a one-time code, then the phone number that received it
    ("Le code de vérification est 417 208 (envoyé au 07 62 18 45 93 ce matin).\n",
     ["417 208"], ["07 62 18 45 93"]),
    ("Verification code: 638 114, texted to +33 6 12 48 90 37 at 9am.\n",
     ["638 114"], ["+33 6 12 48 90 37"]),
    # the error a failed login gave, after the connection string's password
    ("Host=pg01;Username=compta;Password=Vq4!rT8mZx2w\n"
     "Result: authentication failed for user compta (code 28P01)\n",
     ["Vq4!rT8mZx2w"], ["28P01"]),
    ("Le PIN de la carte : 4471. Le terminal affiche « échec de connexion » (erreur 1034).\n",
     ["4471"], ["1034"]),
    # the name an app password was given, on the line after the password
    ("J'ai créé un « mot de passe d'application » pour la tablette. Le voici : "
     "Rk8mW-2pTzq-Lx7Vn-c4Hs9\nLe nom que je lui ai mis c'est « Galaxy Tab Paul ». "
     "Par contre rien ne marche.\n", ["Rk8mW-2pTzq-Lx7Vn-c4Hs9"], ["Galaxy Tab Paul"]),
    # an Airtable token whose id part lost a character in the copy; its base id stays
    ("Airtable base appX7kQ2mW9pLt4Vz, token patR8vK2mQ7xT4wL."
     "3c5e7a9b1d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c\n",
     ["patR8vK2mQ7xT4wL.3c5e7a9b"], ["appX7kQ2mW9pLt4Vz"]),
    # a Wi-Fi label, the network's name, then its key with an accented letter
    ("Wi-Fi gymnase = Gym-Public / Héron_Cendré71\n", ["Héron_Cendré71"], ["Gym-Public"]),
    ("Wi-Fi salle polyvalente = Salle-Poly / Forêt2027-Nord!\n", ["Forêt2027-Nord!"],
     ["Salle-Poly"]),
    # a box's admin page copied: the band's network, then "Clé" alone, then the key
    ("Wi-Fi 5 GHz : Bbox-9C41E2    Clé : sorbet4-lanterne-acier-pluvial\n"
     "Adresse IPv4 : 192.168.1.254\n", ["sorbet4-lanterne-acier-pluvial"],
     ["Bbox-9C41E2", "192.168.1.254"]),
    # a key's bare label with no Wi-Fi on its line stays a weak label
    ("Clé : armoire-2 du bureau 14, à rendre vendredi\n", [], ["armoire-2"]),
    # Notion, twelve digits in the head; the workspace id beside it stays
    ("* Notion integration: ntn_529173648019Xq8Lz2Vm7Pt4Wk9Rb3Yc6Hd1Fs5Gn0Ja8Eu\n"
     "* workspace 1f7a2d9b-5c30-4e2a-8c6e-7c4f19b3d405\n",
     ["ntn_529173648019Xq8Lz2Vm7Pt4Wk9Rb3Yc6Hd1Fs5Gn0Ja8Eu"],
     ["1f7a2d9b-5c30-4e2a-8c6e-7c4f19b3d405"]),
])
def test_round10(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


def test_numbered_sibling() -> None:
    # the next item of a list that the item before it copies but for its last digits
    text = "Serial numbers: HX200-EU-771203, HX200-EU-771204.\nPassword: Saule!Brume-64\n"
    a = text.index("HX200-EU-771204")
    assert _numbered_sibling(text, a, a + len("HX200-EU-771204"), 0)
    a = text.index("Saule!Brume-64")
    assert not _numbered_sibling(text, a, a + len("Saule!Brume-64"), text.rfind("\n", 0, a) + 1)
    check(text, ["Saule!Brume-64"], ["HX200-EU-771203", "HX200-EU-771204"])
