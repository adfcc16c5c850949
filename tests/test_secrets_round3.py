"""Kinds of context added in the third round of issue 12 (generalisation): each case is
one *kind*, invented here (not taken from a labelled set), with the look-alike of the
same kind that must stay.

- values that say they are no live secret: a password's hash in a known format (crypt,
  argon2, Django, LDAP, MySQL), AWS's documented example keys, a placeholder of X's, a
  value the words after it call shareable or an example;
- settings: an empty ``NAME=`` does not take the next line, a file's path is no
  password, a setting's name with words before its colon ("token_auth de l'utilisateur
  X : value");
- prose: a code that is the login half of a "code ... et le mot de passe ..." pair, a
  passphrase on the line after "c'est :", a quoted single word after a password label,
  the answer to a security question, the value a password was changed to, a UUID right
  after "token";
- provider prefixes carried over from gitleaks' rules (Atlassian, Linear, Heroku, New
  Relic, ...), Mollie/GoCardless "live_" keys and WooCommerce's "ck_"/"cs_";
- then, once the blind sets l and m were used: values encrypted in place or bracketed
  placeholder phrases, option lists, colon records, crossed-out values, logins with a dot,
  a reply above its quoted question, the answer after a security question, Google's app
  passwords, key boxes, another person's code in a list, Oracle's user/password@db, a
  client secret in prose, an old word that names a person rather than the value.
"""

from __future__ import annotations

import pytest

from support.secret_text import SCANNER, redacted


@pytest.mark.parametrize(("text", "keep"), [
    # a password's hash: what the server keeps, never the password
    ("Le hash du mot de passe en base : "
     "$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
     "$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"),
    ("| id | login | password |\n|----|-------|----------|\n| 1 | admin | "
     "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG |",
     "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"),
    ("password = pbkdf2_sha256$600000$Qm9vbGVhbnM$u3Rk9vLm2Xq8Wz7Tn4Yp1Bc6Df0Gh5Jk",
     "pbkdf2_sha256$600000$Qm9vbGVhbnM$u3Rk9vLm2Xq8Wz7Tn4Yp1Bc6Df0Gh5Jk"),
    ("userPassword: {SSHA}Wm9vbGVhbnNhbHRlZGhhc2g0Mg==", "{SSHA}Wm9vbGVhbnNhbHRlZGhhc2g0Mg=="),
    # AWS's documented example keys (gitleaks allows them too)
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
     "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    # a placeholder of X's where a code would be
    ("code d'activation Office : XXXXX-XXXXX-XXXXX-XXXXX-XXXXX", "XXXXX-XXXXX-XXXXX"),
    # the words after a value say it may be shared, or that it is an example
    ("- pushover user key uKz8mVx2LwT7rK9pN4cBf1sYd3hJa6 (it's the user id, fine to share)",
     "uKz8mVx2LwT7rK9pN4cBf1sYd3hJa6"),
    ('salt: "c29tZXNhbHQ" (the example salt from the docs)', "c29tZXNhbHQ"),
    # an empty setting does not take the next line; a file's path is no password
    ("MAIL_PASSWORD=\nREDIS_PASSWORD=null\n", "REDIS_PASSWORD=null"),
    ("DB_PASS=\nDB_NAME=crm_prod\n", "DB_NAME=crm_prod"),
    ("smtp_sasl_password_maps = hash:/etc/postfix/sasl_passwd",
     "hash:/etc/postfix/sasl_passwd"),
    # a code that is the login half of a pair: the password follows
    ("Mon code vendeur c'est le 0512 et le mot de passe Rideau!Vert8", "0512"),
    ("my member code is 7730 and the password is Quill-Stone-44", "7730"),
    # values encrypted in place, a placeholder phrase in brackets
    ("db:\n  password: ENC[AES256_GCM,data:Zk3vLm8TzR2w,iv:Yn5YbP7c=,type:str]\n",
     "ENC[AES256_GCM,data:Zk3vLm8TzR2w,iv:Yn5YbP7c=,type:str]"),
    ("aws_secret_access_key = <ask Martine>\n", "<ask Martine>"),
    # an option list: the password ends at the next option
    ("//10.0.0.5/compta /mnt/compta cifs username=svc,password=Gr4nd-Livre-7,vers=3.0,uid=1001",
     "vers=3.0,uid=1001"),
    # a colon-separated record is no "login:password" (.pgpass: host:port:db:user:password)
    ("db.interne:5432:paie:lect_seule:Bulletin#2025\n", "lect_seule"),
    # a value the text says is crossed out
    ("Sur la carte il y a écrit PIN 1111 barré et à côté 4826.", "1111"),
    # a login with a dot in a user column is no password ("." alone is no password's symbol)
    ("<tr><td>Utilisateur</td><td>Mot de passe</td></tr>\n"
     "<tr><td>Secr.Mairie4</td><td>Lavoir#Pont22</td></tr>", "Secr.Mairie4"),
    # an intro line's other sentences do not qualify its list ("Dear customer")
    ("Dear customer, here is your parcel. Order 4471:\n\tcode promo\tSPRING24\n", "SPRING24"),
])
def test_decoy_is_kept(text: str, keep: str) -> None:
    assert keep in redacted(text)


@pytest.mark.parametrize(("text", "secret"), [
    # the password half of the pair above is still found
    ("Mon code vendeur c'est le 0512 et le mot de passe Rideau!Vert8", "Rideau!Vert8"),
    # a passphrase on the line after "c'est :" (an aside between label and colon)
    ("La phrase secrète qu'on a mise sur la borne hier soir, c'est :\n"
     "les mouettes crient toute la nuit 31\n(tout en minuscules)",
     "les mouettes crient toute la nuit 31"),
    ("Le mot de passe c'est :\nles pommes tombent en automne 88\n",
     "les pommes tombent en automne 88"),
    # a single word in quotes after a password label and a verb
    ('The bank asks for a memorable word as a second factor. Ours is "hollyhock", '
     "in case", "hollyhock"),
    # the answer to a security question
    ("Security question answer: Biscuit", "Biscuit"),
    ('The answer to my security question is "Ridgeway"', "Ridgeway"),
    # the value a password was changed to, sentences after the label
    ("Bonjour, mon mot de passe de la messagerie ne marchait plus depuis lundi. J'ai "
     "appelé le numéro que vous m'aviez donné, on m'a expliqué comment faire et j'ai suivi "
     "la procédure sur le site, ça a pris un temps fou parce que le site plantait tout le "
     "temps. Je l'ai changé en Marronnier_47 hier soir.", "Marronnier_47"),
    ("Hi, about the password of the shared mailbox: I called your hotline on Monday and "
     "they explained what to do, then I followed the procedure on the website which took "
     "ages because it kept timing out. Anyway, I've reset it to Harbour#2031 as you asked.",
     "Harbour#2031"),
    # a UUID right after "token" (Postmark's server tokens, Heroku's API keys)
    ("FW: new Postmark server token 7c2e9f04-a1b8-4d65-9e0f-2c7a94b1d38e for the shop",
     "7c2e9f04-a1b8-4d65-9e0f-2c7a94b1d38e"),
    # a setting's name, whom it is for, then the colon and the value
    ("- Matomo, token_auth de l'utilisateur « stats » : 7d1e4a9c2f6b8e03a5c7d9f1b2e4a6c8",
     "7d1e4a9c2f6b8e03a5c7d9f1b2e4a6c8"),
    ("- Dolibarr, DOLAPIKEY for user api-board : Tq7Lw2mRz8WnB1cYp3sDf9HjA4gEu6oX",
     "Tq7Lw2mRz8WnB1cYp3sDf9HjA4gEu6oX"),
    # provider prefixes (gitleaks' rules) and a "live_" key of Mollie or GoCardless
    ("Jira API token: ATATT3xFfGF0Lq7vT2mRz8WnB1cYp3sDf9HjA4gEu6oQiK5lLtRwXcZq4mV8tLx2Rp9"
     "wKcHs6Jd0GaB3nF5yUe7iO1pQrT9=1A2B3C4D", "ATATT3xFfGF0Lq7vT2mRz8WnB1cYp3sDf9HjA4gEu6oQ"),
    ("LINEAR_KEY=lin_api_Zq7Lm2Xp9RtZ4VnWb8Kc3Yd6Fh1Gj5Ps0Ae2Ui4O",
     "lin_api_Zq7Lm2Xp9RtZ4VnWb8Kc3Yd6Fh1Gj5Ps0Ae2Ui4O"),
    ("new relic user key NRAK-7QX2M9LPZ4T8WKC3NB6RJ1DV5HF", "NRAK-7QX2M9LPZ4T8WKC3NB6RJ1DV5HF"),
    ("Mollie (dons) : live_Rk3Xq9LwT2zR7vNb1YcA8sD4fHj0gE", "live_Rk3Xq9LwT2zR7vNb1YcA8sD4fHj0gE"),
    ("consumer key ck_3c9e1a7f5b2d8e4a6c0f9b7d1e3a5c2f8b4d6e0a",
     "ck_3c9e1a7f5b2d8e4a6c0f9b7d1e3a5c2f8b4d6e0a"),
    # a reply above the quoted question that names the password
    ("Oui, le nouveau est Compta%Mars26 depuis hier.\n\nCordialement,\nJ. Petit\n\n"
     "> Le 3 mars, support a écrit :\n> Avez-vous bien changé le mot de passe de la\n"
     "> boîte de la comptabilité ?\n", "Compta%Mars26"),
    # "." with digits after it is a password's symbol
    ("> Quel mot de passe utilisez-vous pour le portail ?\n\nC'est Bibliotheque.9, je crois.",
     "Bibliotheque.9"),
    # a code's label, an aside, the colon: "comme code celui qui est sur le papier : X"
    ("comme identifiant marc.d et comme code celui qui est sur le papier vert : vert4417 .",
     "vert4417"),
    # the answer after a security question's label
    ("ils demandent une question secrète, j'ai mis « ville de naissance » et la réponse "
     "c'est Quimper-Nord.", "Quimper-Nord"),
    # Google's app password on its own line
    ("Gmail made me create an app password, it gave me\nwxyz kqpt mnbv rtsd\n(4 groups)",
     "wxyz kqpt mnbv rtsd"),
    # a key box's code; another person's code in a list; 2036-2049 are codes, not years
    ("the key box next to the door opens with 7-2-9-4, ask Sam", "7-2-9-4"),
    ("Chaque agent a son code : le mien est 4410, celui de Paul 2047.", "2047"),
    # a common login, "puis", its password, under "les codes"
    ("L'installateur nous a laissé les codes : admin puis Camera2019xy, merci", "Camera2019xy"),
    # "secret word", "mot de pase" (a typo) then the value it was changed to
    ("user is jo@example.org and the secret word is Harbor&Willow", "Harbor&Willow"),
    ("j'ai change mon mot de pase, je l'ai change en Saule&Riviere12 ce matin",
     "Saule&Riviere12"),
    # settings: Drupal's hash_salt, a client secret in prose, Oracle's user/password@db
    ("$settings['hash_salt'] = 'Vb7Nq2Lx9Tz4Kc8Wm1Rp5Yd3Hf6Gs0Aj_Eo2Iu7';",
     "Vb7Nq2Lx9Tz4Kc8Wm1Rp5Yd3Hf6Gs0Aj_Eo2Iu7"),
    ("Realm is shop, client id web, client secret Pq7Lm2Xz9Rt4Vw8Nb1Yc3Hd6Fs0Ga.",
     "Pq7Lm2Xz9Rt4Vw8Nb1Yc3Hd6Fs0Ga"),
    ("sqlplus PAIE_APP/Bulletin_Mars9@//ora.example.org:1521/PAIE", "Bulletin_Mars9"),
    # the old word names a person, not the value: "l'accès de l'ancien presta"
    ("Pour l'accès SFTP de l'ancien presta : sftp-web / Etagere_58\n", "Etagere_58"),
    ("le régisseur précédent nous a laissé le code de déverrouillage 8830 sur un scotch",
     "8830"),
])
def test_secret_is_found(text: str, secret: str) -> None:
    assert secret not in redacted(text)


@pytest.mark.parametrize("text", [
    # "live_" starts words too: only a generated rest is a key
    "see the live_streaming_settings_of_the_town_hall page",
    # a passphrase-looking line that is a sentence
    "Le mot de passe c'est :\nje vous le donne par téléphone demain\n",
    # a quoted word that a sentence gives, not a value
    'The password field is "required" on that form',
    # "changed it to" a value that does not look generated
    "I changed it to something easier, see the password manager",
    # the question, not its answer
    "La question secrète est « Quel est le nom de votre premier animal ? »",
    # "_ck" and "live_" ending a word are no key's prefix
    "stack_3c9e1a7f5b2d8e4a6c0f9b7d1e3a5c2f8b4d6e0a and olive_Rk3Xq9LwT2zR7vNb1YcA8sD4fHj0gE",
    # four lower-case words on a line, no app password named
    "Hello,\nthis that with from\nregards",
    # a short hex salt of one hash
    "hashSalt: 0b6c39e2f84a17d5",
])
def test_nothing_found(text: str) -> None:
    assert SCANNER.scan(text) == []
