"""A password label qualified by whose password it is ("Mot de passe utilisateur : X",
"mdp login : X", "Password of the user: X"): the word after it names the account, not a
field of its own, so the value goes.  Found by reading the detector (an identity word
right before the colon, "utilisateur :", was taken for a user-name label whatever came
before it), not from a labelled set: no set held this phrasing.  The look-alikes: an
identity label alone, and a user name on its own line above a password, stay."""

from __future__ import annotations

import pytest

from support.secret_text import check


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Bonjour,\nMot de passe utilisateur : Gx7!pluie22\nBonne journée\n",
     ["Gx7!pluie22"], []),
    ("mdp utilisateur: Verger-84kt\n", ["Verger-84kt"], []),
    ("Mot de passe login : Tq5mouette31\n", ["Tq5mouette31"], []),
    ("Mot de passe de l'utilisateur : Rn8#falaise\n", ["Rn8#falaise"], []),
    ("Password for the login: Kd4-harbour-77\n", ["Kd4-harbour-77"], []),
    # the look-alikes: identity labels alone
    ("Utilisateur : jdupont2024\nMot de passe : Hw3!marne\n", ["Hw3!marne"], ["jdupont2024"]),
    ("Login : mairie-compta-02\n", [], ["mairie-compta-02"]),
    ("identifiant : Jdupont-2024 (le mot de passe suit par SMS)\n", [], ["Jdupont-2024"]),
])
def test_password_label_qualified_by_its_account(text: str, gone: list[str],
                                                 kept: list[str]) -> None:
    check(text, gone, kept)
