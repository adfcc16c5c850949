"""Kinds generalised in the twelfth round of issue 12 on the secrets-tune-aa and -ab
sets (an ordinary week of the inbox; the helpdesk's side): each case is invented here,
not a labelled set's sentence, with the look-alike that must go the other way.

- a commit id that its own clause names ("the commit that fixed it: 4e1d..."), further
  than right after the word, after an API key's or a password's label;
- a setting's name then a verb is prose about the setting ("DB_PASSWORD is read from
  the keyring"), not an assignment: its next word is judged as prose's would be;
- a URL written URL-encoded inside another URL or a log line, whose user is an e-mail
  address escaped too ("imap%3A%2F%2Fjo%40x.org%3APW%40host"): its password;
- a list of accounts, each item an address then its value after a colon or an arrow,
  where the text speaks of accounts or passwords: the value when strong on its own;
- a login then its password, both given by one verb in a text about logging in ("j'utilise
  jdupont avec X", "I sign in with jdupont and X"): the second, quoted or with a symbol;
- Notion's integration tokens of before 2024 ("secret_" and 43 letters and digits).
"""

from __future__ import annotations

import pytest

from support.secret_text import check


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # a commit id named by its sentence, after a token's label
    ("The API token is in the vault. Commit that wired the sync job: "
     "4e1d9a7c2b6f80e3d5a1c9b7e2f4d6a8c0b1e3f5.\n", [],
     ["4e1d9a7c2b6f80e3d5a1c9b7e2f4d6a8c0b1e3f5"]),
    ("Mot de passe du compte de service : Lq7#Vt2pZw9k. Le commit qui a corrigé "
     "l'import : 7b2e9f1a4c.\n", ["Lq7#Vt2pZw9k"], ["7b2e9f1a4c"]),
    ("Deployed revision 9c4a1e7b3d2f in prod; the password stays Mx4!rTq9Lw.\n",
     ["Mx4!rTq9Lw"], ["9c4a1e7b3d2f"]),
    # look-alike: a commit word, then a secret's label before the value: the value is
    # the secret's
    ("Commit the new API key to the vault, not the repo: "
     "a93f0c7e2d5b41f8e6c2a9d7b3f1e0c4.\n", ["a93f0c7e2d5b41f8e6c2a9d7b3f1e0c4"], []),
    ("API key for the connector: 3f8a1c9e7b2d4f6a0c5e8b1d9f7a2c4e (see commit history "
     "for the rest).\n", ["3f8a1c9e7b2d4f6a0c5e8b1d9f7a2c4e"], []),
])
def test_commit_named_by_its_clause(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # a setting's name, then a verb: prose about the setting
    ("For the nightly export:\nEXPORT_TOKEN=Zr8kQ2mWx7Lp4Tn9Vb3Hc6Jd\n"
     "SMTP_PASSWORD is taken from the vault, never from the file.\n",
     ["Zr8kQ2mWx7Lp4Tn9Vb3Hc6Jd"], ["SMTP_PASSWORD is taken from the vault"]),
    ("Pour info, DB_PASSWORD est lue dans le coffre au démarrage.\n", [],
     ["DB_PASSWORD est lue dans le coffre"]),
    # look-alikes: the verb gives a value all the same
    ("Heads-up: MAIL_PASSWORD is Tq7-Wm2x on staging until Friday.\n", ["Tq7-Wm2x"], []),
    ("Sur la préprod, DB_PASSWORD est Corail84 pour l'instant.\n", ["Corail84"], []),
    ("REDIS_PASSWORD: readonly42\n", ["readonly42"], []),
])
def test_setting_name_then_verb(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # an encoded URL whose login is an address
    ("Le formulaire envoie ça au serveur :\nPOST /relay?dsn=imaps%3A%2F%2Fsecretariat%40"
     "club-voile.fr%3AGrand%2BLargue%2188%40mail.example.net%3A993\n",
     ["Grand%2BLargue%2188"], ["secretariat%40club-voile.fr", "mail.example.net"]),
    ("Webhook config dump: target=ftp%3A%2F%2Fbackup%2Bnas%40files.example.com%3AQz7%23mP2v"
     "%40ftp.example.com%2Fdrop\n", ["Qz7%23mP2v"], ["ftp.example.com%2Fdrop"]),
    # look-alikes: an encoded link with a port, a path and an address in its query
    ("Redirect after login: https%3A%2F%2Fcloud.example.org%3A8443%2Fapps%3Fmail%3D"
     "jo%40example.org\n", [], ["8443%2Fapps%3Fmail%3Djo"]),
    ("Lien de retour : https%3A%2F%2Fportail.mairie.fr%2Fcompte%3Fid%3Dadmin%3Aouvert"
     "%40mairie.fr\n", [], ["admin%3Aouvert%40mairie.fr"]),
])
def test_encoded_url_with_escaped_user(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Hello Mr Okafor,\n\nBoth accounts were reset this morning:\n"
     "* frontdesk@harbour-club.example : Lantern-Quay-19\n"
     "* bookings@harbour-club.example → Gull!Tide!40\n"
     "Please pass them on by phone.\n",
     ["Lantern-Quay-19", "Gull!Tide!40"],
     ["frontdesk@harbour-club.example", "bookings@harbour-club.example"]),
    ("Les comptes de messagerie sont recréés :\n"
     "- tresorerie@amicale-pecheurs.fr : Brochet;Gardon;61\n", ["Brochet;Gardon;61"],
     ["tresorerie@amicale-pecheurs.fr"]),
    # look-alikes: no account or password word near the list; a weak value; a sentence
    ("Qui contacter pour quoi :\n- agenda@amicale-pecheurs.fr : Planning-Sorties-2025\n"
     "- presse@amicale-pecheurs.fr : Relations-Presse\n", [],
     ["Planning-Sorties-2025", "Relations-Presse"]),
    ("Les comptes suivants sont à supprimer :\n- stagiaire@amicale-pecheurs.fr : "
     "parti en juin\n- benevole@amicale-pecheurs.fr : inactif\n", [],
     ["parti en juin", "inactif"]),
])
def test_list_of_addresses_and_values(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Je n'arrive plus à me connecter au portail. J'utilise mleroux avec\n"
     "Cerisier_41 depuis toujours.\n", ["Cerisier_41"], ["mleroux"]),
    ("Connection refused again this morning: I sign in with tnguyen and Harbor#2023 "
     "as always.\n", ["Harbor#2023"], ["tnguyen"]),
    ("Je ne peux plus me connecter : j'ai tapé mleroux et Cerisier_41 comme d'habitude.\n",
     ["Cerisier_41"], ["mleroux"]),
    # look-alikes: a product's name after the login; an article, not a login
    ("Je me connecte avec jdupont et Windows11 est à jour, mais la connexion échoue.\n",
     [], ["jdupont", "Windows11"]),
    ("Can't connect: I use the laptop with Office2021 and Firefox.\n", [],
     ["Office2021"]),
])
def test_login_then_value_after_one_verb(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Intégration Notion pour le planning : secret_Tq4Lm9Xw2Rz7Kp3Vb8Nc1Hd6Jf5Gs0Ya2Ue7Io4Pw8r\n",
     ["secret_Tq4Lm9Xw2Rz7Kp3Vb8Nc1Hd6Jf5Gs0Ya2Ue7Io4Pw8r"], []),
    # look-alikes: a setting's name, a reference to where the token is kept
    ("Set secret_key_base in credentials.yml and secret_token_rotation_days to 30.\n", [],
     ["secret_key_base", "secret_token_rotation_days"]),
    ("Les anciens jetons Notion commencent par secret_ et les nouveaux par ntn_ : "
     "voir NOTION_TOKEN_V2 dans le .env.\n", [], ["secret_ et", "NOTION_TOKEN_V2"]),
])
def test_notion_integration_token(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)
