"""Recall mechanisms generalised in the eleventh round of issue 12 (the secrets-tune-x,
-y and -z sets): each case is invented here, not a labelled set's sentence, with the
look-alike that must stay.

- a setting whose name ends with a password word keeps its secret name when an identity
  word opens it ("userPassword", "user_pass", "login_pwd": the user's password), while
  a name that says what else it is ("user_password_reset") and the user's own setting
  stay;
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
