"""Precision by shape, and provider tokens named by their provider (secrets.py:
``_by_shape``, ``_named_provider_tokens``).

Each case is mail text of the kind people send a helpdesk, written for this file: the
values that must go (``gone``) and the decoys that must stay byte for byte (``kept``).
"""

from __future__ import annotations

import pytest

from helpdesk_milter import secrets as s
from helpdesk_milter.secrets import Finding
from support.secret_text import SCANNER, check

# ------------------------------------------------------------------ precision by shape

PRECISION = {
    # a reference numbered within a year, after "c'est"
    "member-number-after-cest": (
        "Bonjour,\n"
        "L'appli d'adhésion plante quand je valide, voici la trace :\n"
        '{"status":"error","url":"https:\\/\\/tresorier:Selle%21Rouge7@api.asso-cyclo.example'
        '\\/v2\\/adh","code":"E_AUTH"}\n'
        "Et le numéro d'adhérent concerné c'est le 2025-0347.\n"
        "Merci, Gaëlle\n",
        ["Selle%21Rouge7"], ["2025-0347", "tresorier", "E_AUTH"]),
    # a structure's code of capitals between two numbers, after a password
    "structure-code": (
        "Bonjour Madame,\n"
        "Vos accès au portail ont été créés.\n"
        "Identifiant : mjc-vallee-dir\n"
        "Mot de passe provisoire : Bruyère-Vent-5512\n"
        "À changer dès la première connexion. Code structure : 77-MJC-0815\n"
        "Le service des subventions\n",
        ["Bruyère-Vent-5512"], ["77-MJC-0815", "mjc-vallee-dir"]),
    # "none" words in a password column, in Markdown emphasis or brackets
    "markdown-table-none-cells": (
        "Voici l'état des postes de la salle informatique :\n\n"
        "| Poste        | Session   | Mot de passe   |\n"
        "|--------------|-----------|----------------|\n"
        "| PC entrée    | accueil   | Noisette-2026! |\n"
        "| PC fond      | atelier   | Gland&Chene44  |\n"
        "| Tablette     | invite    | *aucun*        |\n"
        "| Borne photos | borne     | _néant_        |\n",
        ["Noisette-2026!", "Gland&Chene44"], ["*aucun*", "_néant_", "accueil", "invite"]),
    # a public key's line near a password label
    "ssh-public-key-line": (
        "Hi Alice,\n"
        "the backup box now accepts this key (the public half, already in authorized_keys):\n\n"
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM2pQ7vXk9LrT4wYb8Hc1Ns6Fd0Ge5JaUi3Ko8Lp2Mq "
        "nightly-rsync\n\n"
        "and the password of the old account is no longer needed.\n"
        "Tom\n",
        [], ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM2pQ7vXk9LrT4wYb8Hc1Ns6Fd0Ge5JaUi3Ko8Lp2Mq "
             "nightly-rsync"]),
    # the user name before a spaced slash stays
    "user-slash-password": (
        "Cher Bob,\n"
        "le sésame pour l'interface du routeur de la salle des fêtes : admin / Tq4-wsX8-pLm2\n"
        "(l'adresse du routeur est 192.168.0.1).\n"
        "Bien à vous, Odile\n",
        ["Tq4-wsX8-pLm2"], ["admin", "192.168.0.1"]),
    # a handle named by its label, in a list of keys
    "nic-handle": (
        "Bonjour,\n"
        "Pour gérer la zone DNS de la commune chez le registrar, voici les clés créées :\n"
        "Application Secret : 7gJr2QxW9mKp4Lt8Vn3Bc6Yd1Fs0He5Z\n"
        "Consumer Key : 3Lp9Wq7Xm2Kt8Vn4Bc6Yd1Fs0He5ZgJr\n"
        "Nic-handle : ab90412-ovh\n"
        "Cordialement, Patrick\n",
        ["7gJr2QxW9mKp4Lt8Vn3Bc6Yd1Fs0He5Z", "3Lp9Wq7Xm2Kt8Vn4Bc6Yd1Fs0He5ZgJr"],
        ["ab90412-ovh"]),
}


@pytest.mark.parametrize("case", sorted(PRECISION))
def test_precision(case: str) -> None:
    text, gone, kept = PRECISION[case]
    check(text, gone, kept)


def test_two_passwords_under_a_password_heading_both_go() -> None:
    # "mots de passe" announces values that are all secret: no line is a login
    check("Les mots de passe des deux postes de l'accueil :\nKx9!mPq2wL\nZt4#wLp8Rv\n",
          ["Kx9!mPq2wL", "Zt4#wLp8Rv"], [])


def test_a_password_alone_under_its_heading_is_not_a_login() -> None:
    text = "Le mot de passe de l'utilisateur admin :\nKx9!mPq2wL\nZt4#wLp8Rv\n"
    a = text.index("Kx9!")
    found = [Finding("password", a, a + 10)]
    assert s._by_shape(text, found) == found


def test_slash_trim_keeps_two_codes_and_passwords() -> None:
    # "4812 / 9930": two codes, not a login and a password; "Kx7!a / ...": a password
    for text in ("codes porte / alarme : 4812 / 9930\n", "mdp : Kx7!a / Zt4#wLp8\n"):
        a = text.rindex(": ") + 2
        found = [Finding("password", a, len(text) - 1)]
        assert s._by_shape(text, found) == found, text


def test_pieces_of_a_public_key_line_are_dropped() -> None:
    text = ("the key the job uses: the public half is in authorized_keys:\n\n"
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM2pQ7vXk9LrT4wYb8Hc1Ns6Fd0Ge5JaUi3Ko8Lp2Mq job\n"
            "mot de passe du compte : Kx9!mPq2wL\n")
    a = text.index("AAAAC3")
    b = text.index("Kx9!")
    blob = Finding("password", a, a + 40)
    comment = Finding("password", text.index(" job\n") + 1, text.index(" job\n") + 4)
    password = Finding("password", b, b + 10)
    assert s._by_shape(text, [blob, comment, password]) == [password]


def test_a_value_named_as_an_identity_by_its_label_is_dropped() -> None:
    text = "Consumer Key : 3Lp9Wq7Xm2Kt8Vn4Bc6Yd1Fs0He5ZgJr\nNic-handle : ab90412-ovh\n"
    key = Finding("api-token", 15, 47)
    handle = Finding("password", text.index("ab90412"), text.index("ab90412") + 11)
    assert text[key.start:key.end] == "3Lp9Wq7Xm2Kt8Vn4Bc6Yd1Fs0He5ZgJr"
    assert s._by_shape(text, [key, handle]) == [key]


def test_year_last_is_no_reference() -> None:
    # a recovery code whose second group reads as a year, an unpadded number
    for value in ("7842-1936", "1984-2468", "2019-4471"):
        assert s._REFERENCE.fullmatch(value) is None, value
    for value in ("2026-0193", "2025/00417", "89-CCAS-0412"):
        assert s._REFERENCE.fullmatch(value) is not None, value


# ------------------------------------------------------------------ provider tokens

PROVIDERS = {
    "scaleway-secret-key-uuid": (
        "Bonjour Alice,\n"
        "Pour le stockage objet chez Scaleway de l'association :\n"
        "Clé secrète : 5d2a9c7e-41fb-4e08-b3d6-a8c1f7e2094b\n"
        "Projet : asso-archives (ID 9b3e7d10-22c4-4f8a-a1e5-3c6d8f0b7a29)\n"
        "Merci, Julien\n",
        ["5d2a9c7e-41fb-4e08-b3d6-a8c1f7e2094b"],
        ["9b3e7d10-22c4-4f8a-a1e5-3c6d8f0b7a29", "asso-archives"]),
    "scaleway-access-key-alone": (
        "Hi, the Scaleway CLI on the NAS was set up with this access key: "
        "SCWK7R2QX9M4TZ8PL3VB\nand it fails since Monday.\n",
        ["SCWK7R2QX9M4TZ8PL3VB"], []),
    "mailchimp-no-other-word": (
        "Pour la lettre du club on utilise Mailchimp 3c7e1a9f5b2d8e4c6a0f1b9d7e3c5a28-us14\n"
        "Est-ce que vous pouvez brancher le formulaire du site dessus ?\n",
        ["3c7e1a9f5b2d8e4c6a0f1b9d7e3c5a28-us14"], []),
    "postmark-server-token": (
        "Bonjour,\n"
        "le jeton serveur Postmark pour les alertes du site : "
        "7a41c9e2-5d3b-4f86-b0c2-e9d1a7b53f68\n"
        "Le Message-ID du dernier envoi raté : 1c8e4b2a-9f7d-4e31-8a65-d2b0c3f9e714\n"
        "Hugo\n",
        ["7a41c9e2-5d3b-4f86-b0c2-e9d1a7b53f68"], ["1c8e4b2a-9f7d-4e31-8a65-d2b0c3f9e714"]),
    "bitwarden-client-secret": (
        "Hello Alice, for the nightly vault export to Bitwarden: client_id "
        "organization.8e1f3c7a-2b94-4d05-a6e3-1f7b9c2d4e80, client_secret "
        "Wm4Xq9Lp2Zr7Tk3Vn8Bc5Yd1Fs6HjA\nThanks, Hugo\n",
        ["Wm4Xq9Lp2Zr7Tk3Vn8Bc5Yd1Fs6HjA"],
        ["organization.8e1f3c7a-2b94-4d05-a6e3-1f7b9c2d4e80"]),
    "helloasso-client-secret": (
        "Pour l'import des adhésions HelloAsso : client_id 7c2e9a4b1f6d38e0, "
        "client_secret Tn5Kq8Xm3Lz7Rw2Vb9Yc4Df1Gs6Hj0Pa\n"
        "Numéro RNA : W751234567\nSophie\n",
        ["Tn5Kq8Xm3Lz7Rw2Vb9Yc4Df1Gs6Hj0Pa"], ["7c2e9a4b1f6d38e0", "W751234567"]),
    "mollie-test-key": (
        "On teste la billetterie avec Mollie, clé de test test_Hk4Zm8Xv2Lq7Wt9Rn3Kb6Yc1Fs0Dj5\n"
        "Ticket DEV-2026-051.\n",
        ["test_Hk4Zm8Xv2Lq7Wt9Rn3Kb6Yc1Fs0Dj5"], ["DEV-2026-051"]),
    "mailjet-private-key-wrapped": (
        "On quitte Mailjet : clé publique 5e1b8d3f9a2c7e04b6d1f8a3c5e9b207, privée\n"
        "a7c3e9f1b5d2084c6e1a9f3b7d5c2e80. Merci de les supprimer du site.\n",
        ["a7c3e9f1b5d2084c6e1a9f3b7d5c2e80"], ["5e1b8d3f9a2c7e04b6d1f8a3c5e9b207"]),
    "newrelic-licence-key": (
        "env on the worker:\nNEW_RELIC_APP_NAME=asso-site\n"
        "NEW_RELIC_LICENSE_KEY=eu01xx3f9c2a7e1b4d8065f2a9c7e3b1d480NRAL\n",
        ["eu01xx3f9c2a7e1b4d8065f2a9c7e3b1d480NRAL"], ["asso-site"]),
    "provider-names-no-token": (
        "Nous utilisons Mailchimp pour la lettre (liste a1b2c3d4e5), Postmark pour les "
        "notifications et Scaleway pour l'hébergement (projet ID "
        "4f8a2c6e-1b3d-4e5f-a7c9-0d2e4f6a8b1c).\n",
        [], ["a1b2c3d4e5", "4f8a2c6e-1b3d-4e5f-a7c9-0d2e4f6a8b1c"]),
}


@pytest.mark.parametrize("case", sorted(PROVIDERS))
def test_provider_tokens(case: str) -> None:
    text, gone, kept = PROVIDERS[case]
    check(text, gone, kept)


def test_ungated_provider_token_passes_the_pre_check() -> None:
    text = PROVIDERS["mailchimp-no-other-word"][0]
    assert not s._Haystack(text).gated()       # no other detector's word in it
    assert SCANNER.could_match(text)
    assert [f.kind for f in SCANNER.scan(text)] == ["api-token"]


def test_scaleway_access_key_beside_its_secret_key_is_the_identifier() -> None:
    # as OVH's application key and S3's access key: the secret goes, the key stays
    check("Scaleway, stockage du cabinet :\nAccess key : SCWP4T8QK2Z7MXV9RL3N\n"
          "Secret key : 0e6b2d9a-73c1-4f58-9b2e-c4a1d8f7e305\n",
          ["0e6b2d9a-73c1-4f58-9b2e-c4a1d8f7e305"], ["SCWP4T8QK2Z7MXV9RL3N"])


def test_named_token_is_a_whole_token() -> None:
    # a password that holds a token-shaped run is taken whole, never cut by the named one
    check("Le jeton admin du Vaultwarden noté sur la fiche : Xq8!hT3zK9-mWp4Rt8LnB6\n",
          ["Xq8!hT3zK9-mWp4Rt8LnB6"], [])
    text = "Vaultwarden jeton : Xq8!hT3zK9-mWp4Rt8LnB6\n"
    assert not s._named_provider_tokens(text)


def test_masked_and_example_provider_values_stay() -> None:
    check("Mailchimp API key: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-us21 (masquée dans le tableau)\n"
          "Postmark server token: <votre-jeton-serveur>\n",
          [], ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-us21", "<votre-jeton-serveur>"])
