"""Mechanisms added in the fourth round of issue 12 (generalisation), one test group each:
the value a mechanism must find, in mail text written here (not taken from a labelled
set), and the near-misses of the same shape that must stay untouched.

- login/password pairs: written in one piece after a login label ("accès : x/Y"), a
  common login with a spaced slash and nothing around it ("« admin / Xy2…»"), a portal's
  account area as the label ("Espace adhérent : …");
- a value a verb gives in a text about logging in ("je tape bien X", "c'est X", "was
  changed to X", 'tried admin with "X"'): a capitalised word with digits only;
- keypad codes by their shape ("1234#", "9876*") in a sentence about a door or a gate;
- key passphrases: lower-case words joined by hyphens with a number, after a key or
  Wi-Fi label and a giving verb or a colon.
"""

from __future__ import annotations

import pytest

from support.secret_text import SCANNER, check

# -- login/password pairs ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    # in one piece, after a login label and a colon
    ("Bonjour, voici l'accès de la tablette du hall : accueil-tab2/Mouette#Grise51\n"
     "Elle est rangée dans le placard du secrétariat.",
     ["Mouette#Grise51"], ["accueil-tab2"]),
    ("The login for the kiosk PC: kiosk.user4/Harbour@Light28 (local account).",
     ["Harbour@Light28"], ["kiosk.user4"]),
    # a common login, a spaced slash, a value of three classes: no other word needed
    ("Sur l'étiquette collée sous le routeur on lit « admin / Marmotte2016rt ». "
     "C'est encore valable ?",
     ["Marmotte2016rt"], ["« admin /"]),
    # a portal's account area names the pair
    ("Je n'arrive plus à me connecter au site de la ligue.\n"
     "Espace adhérent de la fédération : club-voile22 / Spinnaker-Bleu-09\n"
     "Merci de mettre à jour la licence.",
     ["Spinnaker-Bleu-09"], ["club-voile22"]),
    ("Impossible de me connecter à l'extranet.\n"
     "Extranet fournisseur : mairie.exemple / Facture!Verte77",
     ["Facture!Verte77"], ["mairie.exemple"]),
])
def test_login_pairs_round4(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # paths, URLs and dates hold a slash between letters and digits: no label before them
    "Le fichier est dans partage/Compta2024 sur le serveur, à côté de archives/Bilan2023.",
    "Les accès au dossier : voir https://cloud.example.org/s/Xk29Lm0pQ7 pour la suite.",
    "Accès : bâtiment B/Salle12, au fond du couloir.",
    # a common login then a plain word or a version: not a value of three classes
    "Le compte admin / utilisateurs se gère dans le menu Réglages.",
    "Installer la version root / v2.4.1 du paquet.",
    # an account area then a route, not a pair
    "Espace client : suivi des commandes / historique des factures 2024.",
])
def test_login_pairs_round4_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- a value a verb gives, in a text about logging in ----------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    ("Je n'arrive plus à me connecter au logiciel de paie alors que je tape bien "
     "Chardon_2231 comme tous les matins.",
     ["Chardon_2231"], []),
    ("Pour les accès de la boîte de l'accueil, c'est Mimosa1987, et celle du maire "
     "ne change pas.",
     ["Mimosa1987"], []),
    ("> Do you remember the admin login of the switch?\n"
     "Yes, the factory one was changed to Copper-Wire-31 by the installer.",
     ["Copper-Wire-31"], []),
    ('Bob, on the NAS login page I tried admin with "Coulisse2020" and nothing.',
     ["Coulisse2020"], []),
    ("Pour se connecter au NAS, le mot de passe du NAS c'est Archives2019 depuis mars.",
     ["Archives2019"], []),
])
def test_given_values(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # what the words before the verb name: a login, a network, a server, a version
    "Pour se connecter, le compte local admin est Secretariat2 avec le mot de passe habituel.",
    "Le réseau wifi c'est Mairie2024 mais la connexion est lente.",
    "Connexion impossible : la version installée est Nextcloud28 depuis hier.",
    "Login page is slow; the server is Webhost01 in the rack.",
    # "with" without a verb of trying, and no capital or no digit
    "I can log in with Office365 but not with the intranet.",
    "Je me connecte avec Firefox, c'est Thunderbird qui bloque.",
    # a product's model, a device's
    "La connexion wifi ne tient pas, l'imprimante est une HP4200dn.",
    "Impossible de me connecter au NAS, mon NAS est Synology-DS220 je crois.",
])
def test_given_values_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- keypad codes ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    ("Pour la livraison de vendredi, le portail de la cour s'ouvre avec 7315# "
     "(le gardien est prévenu).",
     ["7315#"], []),
    ("Reminder: the shed behind the gym is now 4096*, please don't share it.",
     ["4096*"], []),
])
def test_keypad_codes(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # a phone service, a footnote, a number with no door around it
    "Pour le solde de la carte SIM, composez *123# depuis le téléphone.",
    "Tarif réduit 2024* pour les adhérents (*voir conditions), entrée libre le dimanche.",
    "Ticket 58213# reçu, nous revenons vers vous.",
    "La porte du local est au n° 1205# du plan.",
    # a price's footnote, a number with no verb giving it
    "Parking de la salle : à partir de 1500* par an.\n(*hors taxes, voir conditions)",
    "Door 3, storage room 1204# on the floor plan.",
])
def test_keypad_codes_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- key passphrases ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    ("Hi, the wifi in the hall is BARN-GUEST and the key is 3hens-and-a-goat-9, "
     "visitors ask for it all the time.",
     ["3hens-and-a-goat-9"], ["BARN-GUEST"]),
    ("Pour la salle polyvalente, la clé du wifi c'est la devise du comité en minuscules, "
     "soit vivre-ensemble-depuis-1975.",
     ["vivre-ensemble-depuis-1975"], []),
    ("The guest wifi key we hand out is printed on the menu: olive-3312-harbour",
     ["olive-3312-harbour"], []),
])
def test_key_phrases(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # a setting's name before the colon, a host name, a licence key, no number
    "DD_API_KEY is set.\nDD_HOSTNAME: web-mairie-01\nDD_ENV: prod",
    "La clé de licence est valable jusqu'au 31/12, le serveur est srv-backup-02.",
    "La clé du local est chez la gardienne : rez-de-chaussée, porte 2.",
    "The key pod is api-6d9f7c5b8-x2kq4 in the cluster.",
    # a door's key, where no network is named
    "La clé du local vélos est dans la boîte, son numéro : tiroir-accueil-12.",
])
def test_key_phrases_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- layout as a separator: a column gap, a line wrap --------------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    # aligned columns: spaces where a tab would be
    ("Visitor wifi for the fair:\nssid      FAIR-Visitors\npassword  cobalt-meadow\n"
     "(changes every Monday)",
     ["cobalt-meadow"], ["FAIR-Visitors"]),
    # a mail program's line wrap right after the label, in a sentence
    ("Bonjour, je n'arrive plus à ouvrir la caisse. Mon identifiant est caisse2 et le "
     "mot de passe\nbuvette-dimanche, ça marchait samedi.",
     ["buvette-dimanche"], ["caisse2"]),
])
def test_layout_separators(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # the label at the end of a line, then a sentence that goes on
    "Pouvez-vous réinitialiser le mot de passe\nMerci de me prévenir quand c'est fait.",
    "Il faudrait changer le mot de passe\npeut-être, avant la rentrée.",
    "I forgot my password\nagain, sorry about that.",
    # a heading, not a wrapped sentence
    "Mot de passe\nrez-de-chaussée, bureau 3",
    # a column gap after a label that is no secret's
    "password  policy: 12 characters minimum",
    "Password  ********\nLogin     j.martin",
    "Mot de passe   voir avec Paul\nPoste          bureau 12",
])
def test_layout_separators_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- a column of access codes, by its title ---------------------------------------------

def test_code_column() -> None:
    text = ("Inventaire des salles :\n\n"
            "| Salle        | Code postal | Code porte | Clé n° |\n"
            "|--------------|-------------|------------|--------|\n"
            "| Salle Rameau | 21000       | 4471       | C-12   |\n"
            "| Salle Dufay  | 21000       | 9035B      | C-14   |\n")
    check(text, ["4471", "9035B"], ["21000", "C-12", "C-14", "Salle Rameau"])


@pytest.mark.parametrize("text", [
    # codes that are no access's: a product's, a postcode, an error's
    "| Article | Code article | Prix |\n|---|---|---|\n| Toner | TN-2420 | 54,90 |\n",
    "Commune;Code postal;Code INSEE\nDijon;21000;21231\n",
    "| Erreur | Code erreur |\n|---|---|\n| Disque plein | 0x80070070 |\n",
])
def test_code_column_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- a device's verification code ---------------------------------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    ("Caméra du préau : modèle DS-2CD1043, code de vérification QWZTRP (étiquette "
     "sous la caméra), à saisir dans l'appli.",
     ["QWZTRP"], ["DS-2CD1043"]),
    ("The recorder's verification code is HBXKLN, printed on the sticker.",
     ["HBXKLN"], []),
])
def test_verification_codes(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # a word in capitals, a code in digits (another detector's), no such label
    "Le code de vérification affiche ERREUR depuis ce matin.",
    "Verification code: see the SMS sent to the MAIRIE phone.",
    "La référence du dossier est KPLMXH, merci de la rappeler.",
])
def test_verification_codes_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- rows of accounts with no header ------------------------------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    ('<tr><td>Webmail (compte admin)</td><td>accueil@mairie-exemple.fr</td>'
     '<td style="font-family:monospace">Tilleul#Vert-42</td></tr>',
     ["Tilleul#Vert-42"], ["accueil@mairie-exemple.fr", "font-family:monospace"]),
    ("Voici les comptes créés pour les bénévoles (mots de passe provisoires) :\n\n"
     "  Léa Martin   - lea.martin@asso-velo.org   - Rayon&Roue-2026\n"
     "  Paul Roy     - paul.roy@asso-velo.org     - Selle<Cuir>88\n",
     ["Rayon&Roue-2026", "Selle<Cuir>88"], ["lea.martin@asso-velo.org", "paul.roy@asso-velo.org"]),
])
def test_account_rows(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # a directory of contacts: no value strong on its own, or no word about accounts
    "Liste des comptes :\n  Léa Martin  - lea.martin@asso-velo.org  - 06 12 34 56 78\n",
    "Contacts du salon :\n  Paul Roy  - paul.roy@asso-velo.org  - Stand-B12#Nord\n",
    '<tr><td>Support</td><td>support@example.org</td><td>INC-2024-0042</td></tr>'
    '<tr><td>Login page</td><td>https://cloud.example.org/login</td></tr>',
])
def test_account_rows_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []


# -- a generated value that only a secret's name introduces ----------------------------------

@pytest.mark.parametrize(("text", "secrets", "keep"), [
    ("Voilà ce que renvoie la commande :\n\n$ occ config:app:get richdocuments wopi_secret\n"
     "→ Zq7Lm2Xp9RtV4nWb8cYs1dFh6gJk3\n",
     ["Zq7Lm2Xp9RtV4nWb8cYs1dFh6gJk3"], ["occ config:app:get richdocuments wopi_secret"]),
    ("Les clés de l'ancien prestataire SMS : publique 7a1e4f8c4f2a9c1e7b3d8a6f0e5c2b9d, "
     "privée\nc5f2b8e4a6c0d7f3b1e9a5c2d9d3e7a1.",
     ["c5f2b8e4a6c0d7f3b1e9a5c2d9d3e7a1"], ["7a1e4f8c4f2a9c1e7b3d8a6f0e5c2b9d"]),
])
def test_secret_named_values(text: str, secrets: list[str], keep: list[str]) -> None:
    check(text, secrets, keep)


@pytest.mark.parametrize("text", [
    # a public key, a name that goes on, a word value, a private link's whole token
    "La clé publique 7a1e4f8c4f2a9c1e7b3d8a6f0e5c2b9d est sur le site.",
    "Les fichiers sont sous /etc/ssl/private/mairie-exemple-2024-wildcard.pem depuis hier.",
    "Le secret médical s'applique : dossier MED-2024-00817-ARCHIVES-CCAS transmis.",
    "Le dépôt privé est archivé depuis hier, voir le ticket 48213.",
    "Private browsing mode was on: nothing was saved in the history.",
])
def test_secret_named_values_decoys(text: str) -> None:
    assert SCANNER.scan(text) == []
