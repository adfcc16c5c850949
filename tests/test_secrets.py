"""Secret detectors: what they find, what they leave alone, and what they cost."""

from __future__ import annotations

import importlib
import itertools
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpdesk_milter import secrets as secrets_module
from helpdesk_milter.secrets import KINDS, Finding, SecretScanner, redact_spans

# The regular expression parser, to read patterns (CPython 3.11+).
sre_constants: Any = importlib.import_module("re._constants")
sre_parser: Any = importlib.import_module("re._parser")

SCANNER = SecretScanner()


def found(text: str) -> list[tuple[str, str]]:
    """(kind, value) of every finding."""
    return [(f.kind, text[f.start:f.end]) for f in SCANNER.scan(text)]


# ---------------------------------------------------------------------------- positives

@pytest.mark.parametrize(("text", "kind", "value"), [
    # passwords in French prose
    ("le mdp c'est Soleil2024!", "password", "Soleil2024!"),
    ("Identifiant : jdupont / Mot de passe : Azerty123", "password", "Azerty123"),
    ("Le mot de passe est Soleil2024.", "password", "Soleil2024"),
    ("MDP : chaton", "password", "chaton"),
    ("mdp wifi Soleil2024!", "password", "Soleil2024!"),
    ("code wifi : 8F3A2B1C9D", "password", "8F3A2B1C9D"),
    ("La clé WiFi est Livebox-A1B2", "password", "Livebox-A1B2"),
    ("Le mot de passe du wifi est : papillon", "password", "papillon"),
    ("login/mdp : jdupont / Soleil2024", "password", "Soleil2024"),
    ("Vos identifiants : jdupont / Azerty123", "password", "Azerty123"),
    ("Mot de passe :\n  K9#mPq2v\n", "password", "K9#mPq2v"),
    ("Le nouveau mot de passe est « Lavande 2024 »", "password", "Lavande 2024"),
    ("Le mot de passe a été réinitialisé à Bienvenue!2024", "password", "Bienvenue!2024"),
    ("Clé de sécurité réseau : 4F8A9C2D1E", "password", "4F8A9C2D1E"),
    ("Code d'accès au portail : 482913", "password", "482913"),
    # English
    ("login: admin password: hunter22", "password", "hunter22"),
    ("The password for the admin account is Azerty123", "password", "Azerty123"),
    ("My password is Tr0ub4dor&3, thanks", "password", "Tr0ub4dor&3"),
    ("pwd = hunter2hunter", "password", "hunter2hunter"),
    ("PIN: 7391", "password", "7391"),
    ("passphrase: correct horse battery staple", "password", "correct horse battery staple"),
    ("user=admin pass=W3bm4ster", "password", "W3bm4ster"),
    # config snippets
    ("DB_PASSWORD=s3cr3tP4ss", "password", "s3cr3tP4ss"),
    ("export PGPASSWORD='hunter2hunter'", "password", "hunter2hunter"),
    ('{"user": "api", "password": "Js0nP@ss"}', "password", "Js0nP@ss"),
    ("define('DB_PASSWORD', 'WpDefine2024');", "password", "WpDefine2024"),
    ("<password>XmlS3cret!</password>", "password", "XmlS3cret!"),
    ("  MYSQL_ROOT_PASSWORD: Rt00t!pass", "password", "Rt00t!pass"),
    # URLs and connection strings
    ("postgres://app:Sup3rS3cret@db.example.org:5432/prod", "connection-string", "Sup3rS3cret"),
    ("mongodb+srv://admin:p@ss@cluster0.mongodb.net/test", "connection-string", "p@ss"),
    ("redis://:redispass123@cache:6379/0", "connection-string", "redispass123"),
    ("amqp://guest:Rabbit2024@rabbitmq:5672/", "connection-string", "Rabbit2024"),
    ("ftp://webmaster:Ftp-2023!@ftp.example.fr/www", "connection-string", "Ftp-2023!"),
    ("smtp://noreply@asso.fr:SmtpP4ss@mail.asso.fr:587", "connection-string", "SmtpP4ss"),
    ("mysql://root:R00tMysql@127.0.0.1:3306/wp", "connection-string", "R00tMysql"),
    ("Server=db;Database=x;User Id=sa;Password=Passw0rd!;", "connection-string", "Passw0rd!"),
    ("jdbc:mysql://db:3306/app?user=root&password=r00tpass", "connection-string", "r00tpass"),
    ("host=db user=app password=G3stion! dbname=x", "connection-string", "G3stion!"),
    ("https://jdupont:Soleil2024@cloud.example.org/dav", "url-credentials", "Soleil2024"),
    ("https://x.example/login?user=j&password=Extranet2024", "url-credentials", "Extranet2024"),
    # provider tokens
    ("AKIA4HQ2JX7KZP3MW6RT", "aws-access-key", "AKIA4HQ2JX7KZP3MW6RT"),
    ("aws_secret_access_key = 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", "aws-secret-key",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Hd3Lw2T"),
    ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a here", "github-token",
     "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("github_pat_11ABCDEFG0123456789abc_" + "x1" * 30, "github-token",
     "github_pat_11ABCDEFG0123456789abc_" + "x1" * 30),
    ("glpat-xxxxxxxxxxxxxxxxxxxx1234", "gitlab-token", "glpat-xxxxxxxxxxxxxxxxxxxx1234"),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack-token",
     "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("https://hooks.slack.com/services/T0ABCDEFG/B0ABCDEFGHI/abcdefghijklmnopqrstuvwx",
     "slack-token", "abcdefghijklmnopqrstuvwx"),
    ("sk_live_51H8abcdEFGHijklMNOPqrst", "stripe-key", "sk_live_51H8abcdEFGHijklMNOPqrst"),
    ("key=AIzaSyA1234567890abcdefghijklmnopqrstuv", "google-api-key",
     "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9",
     "jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9"),
    ("OPENAI_API_KEY=sk-proj-abcDEF1234567890abcdefGHIJ", "openai-key",
     "sk-proj-abcDEF1234567890abcdefGHIJ"),
])
def test_finds_secret_value(text: str, kind: str, value: str) -> None:
    assert (kind, value) in found(text)


def test_private_key_block_is_one_finding() -> None:
    key = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7Mhgw\n"
           "aGVsbG8gd29ybGQ=\n-----END RSA PRIVATE KEY-----")
    text = f"la clé :\n{key}\nmerci"
    assert found(text) == [("private-key", key)]


def test_openssh_and_truncated_keys() -> None:
    openssh = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
               "-----END OPENSSH PRIVATE KEY-----")
    assert found(openssh) == [("private-key", openssh)]
    truncated = ("-----BEGIN EC PRIVATE KEY-----\n"
                 "MHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY\n")
    kinds = found(truncated + "\nthe rest was cut")
    assert kinds == [("private-key", truncated.rstrip())]


def test_aws_secret_next_to_access_key() -> None:
    text = "clé AKIAQ3EGRTYUIOPASDF2 et secret 9xVb+2kLmNpQrStUvWxYz0123456789AbCdEfGh/"
    assert [k for k, _ in found(text)] == ["aws-access-key", "aws-secret-key"]


def test_table_with_password_column() -> None:
    text = ("Nom | Identifiant | Mot de passe\n"
            "Dupont | jdupont | Soleil2024\n"
            "Martin | pmartin | Printemps!88\n\nMerci")
    assert found(text) == [("password", "Soleil2024"), ("password", "Printemps!88")]


@pytest.mark.parametrize("sep", ["\t", ";", ","])
def test_separated_tables(sep: str) -> None:
    text = f"login{sep}mot de passe\naccueil{sep}Accueil2024\ncompta{sep}Compta#99\n"
    assert found(text) == [("password", "Accueil2024"), ("password", "Compta#99")]


def test_specific_kind_wins_over_password() -> None:
    text = "password: ghp_16C7e42F292c6912E7710c838347Ae178B4a"
    assert found(text) == [("github-token", "ghp_16C7e42F292c6912E7710c838347Ae178B4a")]


# ---------------------------------------------------------------------------- negatives

@pytest.mark.parametrize("text", [
    "mot de passe oublié",
    "J'ai oublié mon mot de passe, pouvez-vous le réinitialiser ?",
    "Je voudrais changer mon mot de passe.",
    "le mot de passe ne fonctionne pas",
    "Le mot de passe est incorrect.",
    "Here is the password reset link: https://example.com/reset?token=abc",
    "your password has expired",
    "Your password will expire in 5 days.",
    "Mot de passe : voir ci-dessous",
    "mot de passe: (le même que d'habitude)",
    "the password is too short",
    "Password: ********",
    "Password: 8 characters minimum",
    "Le mot de passe doit contenir au moins 12 caractères.",
    "Le mot de passe vous sera envoyé par SMS.",
    "pass sanitaire : valide",
    "I'll pass this to the team.",
    "PASSWORD_MIN_LENGTH=12",
    "DB_PASSWORD=${DB_PASSWORD}",
    "postgres://user:password@localhost/db",
    "Re: Mot de passe Nextcloud",
    "mot de passe : (vide)",
    "Enter your password: ",
])
def test_negative_contexts(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize("text", [
    "Ticket 123e4567-e89b-12d3-a456-426614174000",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "Message-ID: <20240301093000.12345-1-jdupont@mairie-exemple.fr>",
    "UPS 1Z999AA10123456784, Colissimo 6A12345678901",
    "IBAN FR76 3000 6000 0112 3456 7890 189, SIRET 732 829 320 00074",
    "+33 1 23 45 67 89 / 06 12 34 56 78",
    "Nextcloud 28.0.4, build 2024.03.01-rc2",
    "colours #1a2b3c #FFAA00",
    "https://example.org/?utm_source=newsletter&utm_medium=email&utm_campaign=printemps2024",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDw",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 jdupont@laptop",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    "pk_live_51H8abcdEFGHijklMNOPqrst",
    "ssh://git@github.com:22/org/repo.git and https://jdupont@cloud.example.org/",
    "http://localhost:8080/admin",
    "sk-learn and scikit-learn",
])
def test_look_alikes_survive(text: str) -> None:
    assert found(text) == []


# ---------------------------------------------------------------------------- API

def test_disabled_kinds() -> None:
    scanner = SecretScanner(disabled_kinds=["jwt", "password"])
    text = ("mdp : Soleil2024 eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmN "
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a")
    assert [f.kind for f in scanner.scan(text)] == ["github-token"]


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match="no-such-kind"):
        SecretScanner(disabled_kinds=["password", "no-such-kind"])


def test_findings_sorted_and_disjoint() -> None:
    text = ("mdp : Soleil2024 et postgres://a:Pg2024x@db/x, "
            "AKIA4HQ2JX7KZP3MW6RT, password: ghp_16C7e42F292c6912E7710c838347Ae178B4a")
    findings = SCANNER.scan(text)
    assert len(findings) == 4
    for a, b in itertools.pairwise(findings):
        assert a.end <= b.start
    assert all(f.kind in KINDS for f in findings)


def test_redact_spans() -> None:
    text = "Identifiant : jdupont / Mot de passe : Azerty123 merci"
    out = redact_spans(text, SCANNER.scan(text))
    assert out == "Identifiant : jdupont / Mot de passe : [secret removed: password] merci"
    assert redact_spans(text, SCANNER.scan(text), "<{kind}>").endswith("<password> merci")


def test_redact_spans_rejects_overlap_without_leaking() -> None:
    text = "mdp : Soleil2024"
    bad = [Finding("password", 6, 16), Finding("password", 8, 12)]
    with pytest.raises(ValueError) as info:
        redact_spans(text, bad)
    assert "Soleil" not in str(info.value)


def test_could_match_is_a_safe_prefilter() -> None:
    assert not SCANNER.could_match("Bonjour, l'imprimante ne marche plus. Merci !")
    for text in ("mdp : Soleil2024", "postgres://a:b@c", "AKIA4HQ2JX7KZP3MW6RT"):
        assert SCANNER.could_match(text)


def _prefixes(items: Any, size: int) -> set[str]:
    """The strings of up to ``size`` characters a match of the parsed pattern ``items``
    can start with ("\0" stands for a character class that is not a short list)."""
    results = {""}
    for op, av in items:
        grown: set[str] = set()
        for done in results:
            if len(done) >= size:
                grown.add(done)
                continue
            grown.update(done + more for more in _element(op, av, size - len(done)))
        results = grown
    return results


def _element(op: Any, av: Any, size: int) -> set[str]:
    c = sre_constants
    if op is c.LITERAL:
        return {chr(av)}
    if op is c.IN:
        chars: set[str] = set()
        for kind, value in av:
            if kind is c.LITERAL:
                chars.add(chr(value))
            elif kind is c.RANGE and value[1] - value[0] < 30:
                chars.update(chr(x) for x in range(value[0], value[1] + 1))
            else:
                chars.add("\0")
        return chars
    if op is c.BRANCH:
        return set().union(*(_prefixes(branch, size) for branch in av[1]))
    if op is c.SUBPATTERN:
        return _prefixes(av[-1], size)
    if op in (c.MAX_REPEAT, c.MIN_REPEAT):
        low, high, item = av
        out: set[str] = set()
        current = {""}
        for count in range(min(high, max(low, size)) + 1):
            if count >= low:
                out |= current
            current = {done + more if len(done) < size else done
                       for done in current for more in _prefixes(item, size - len(done))}
        return out
    if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
        return {""}                                 # zero width
    return {"\0"}


def test_keyword_start_lists_where_every_keyword_starts() -> None:
    """_keyword_matches only tries _PW_KEYWORD where _KEYWORD_START matches: the two must
    agree on the first two characters of every keyword, and on the look-behind."""
    def starts(pattern: re.Pattern[str]) -> set[str]:
        return _prefixes(sre_parser.parse(pattern.pattern, pattern.flags), 2)

    keyword = starts(secrets_module._PW_KEYWORD)
    assert all(len(s) == 2 and "\0" not in s for s in keyword)
    assert starts(secrets_module._KEYWORD_START) == keyword
    lookbehind = "(?<![^\\W_])"
    assert secrets_module._KEYWORD_START.pattern.startswith(lookbehind)
    assert secrets_module._PW_KEYWORD.pattern.strip().startswith(lookbehind)


def test_empty_and_odd_text() -> None:
    assert SCANNER.scan("") == []
    assert SCANNER.scan("\x00" * 100) == []
    # lower-casing that changes the length must not shift positions
    text = "İİİ mot de passe : Soleil2024"
    assert found(text) == [("password", "Soleil2024")]


# ---------------------------------------------------------------------------- cost

PATHOLOGICAL = {
    "letters": "a" * 100_000,
    "pass-words": "pass " * 20_000,
    "password-colons": "password: " * 10_000,
    "mot-de-passe": "mot de passe : " * 7_000,
    "mdp-est": "le mdp est " * 9_000,
    "jwt-prefix": "eyJ" * 33_000,
    "jwt-dots": "eyJaaaaaaaaaa." * 7_000,
    "github": "ghp_" + "a" * 100_000,
    "schemes": "://" * 33_000,
    "userinfo": "http://a:" + "b" * 100_000 + "@",
    "at-signs": "x://u:" + "@" * 100_000,
    "pem-unterminated": "-----BEGIN RSA PRIVATE KEY-----\n" + "QUFB\n" * 20_000,
    "pem-many": "-----BEGIN PRIVATE KEY-----" * 3_000,
    "akia": "AKIA" * 25_000,
    "aws-near": "AKIA4HQ2JX7KZP3MW6RT " + ("x" * 40 + " ") * 2_400,
    "sk-dashes": "sk-" * 33_000,
    "table": "Identifiant | Mot de passe\n" + "a | b\n" * 16_000,
    "pipes": "Mot de passe | " * 6_000,
    "tabs": "\t" * 100_000,
    "colons": ":" * 100_000,
    "equals": "password=" + "=" * 100_000,
    "quotes": 'mdp : "' + "x" * 100_000,
    "identifiants": "identifiants : a / " * 5_000,
    "wifi": "code wifi de la " * 6_000,
    "newlines": "mot de passe :\n" * 6_000,
    # near-label strong values, code lists and their announcements, bracketed asides
    "strong-near-label": "mdp Ab1-cd2-Ef3 " * 5_100,
    "wifi-strong": "Wi-Fi (Net-1 / Key#2026x) " * 3_100,
    "code-rows": "  Service code 1203\n" * 4_100,
    "code-no-newline": "  code 1203 " * 6_700,
    "recovery-heading": "recovery codes for x\n  a7f3c-92e1d\n" * 3_000,
    "intro-goes-on": "backup codes here\nand more:\n" * 4_000,
    "aside": "clé wifi du local (box, SSID X) " * 3_000,
    "alarm-verbs": "alarme se désactive avec " * 4_000,
    "code-before": "1234, c'est le code " * 4_100,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_input_is_linear(name: str) -> None:
    text = PATHOLOGICAL[name]
    assert len(text) >= 80_000
    start = time.thread_time()
    SCANNER.scan(text)
    elapsed = time.thread_time() - start
    # Linear code scans these 100,000 characters in 0.1 to 1.4 s of CPU (each is dense
    # with what the detectors look at; half the text takes half the time); a quadratic
    # path would take minutes.  CPU time of this thread, with a loose bound, so that a
    # busy machine (the suite runs on two workers) cannot flake it.
    assert elapsed < 5.0, f"{name}: {elapsed:.2f}s of CPU"


# ---------------------------------------------------------------------------- properties

FRAGMENTS = ["mot de passe", "mdp", "password", " : ", " = ", "est ", "Soleil2024", "\n",
             " | ", "\t", "://", "u:p@h", "AKIA", "ghp_", "eyJ", "-----BEGIN ", "PRIVATE KEY",
             "-----", "identifiant", " / ", "wifi", "code", "é", "İ", "'", '"', "<", ">"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40))
def test_scan_contract_on_arbitrary_text(pieces: list[str]) -> None:
    text = "".join(pieces)
    findings = SCANNER.scan(text)
    for a, b in itertools.pairwise(findings):
        assert a.end <= b.start
    for f in findings:
        assert 0 <= f.start < f.end <= len(text) and f.kind in KINDS
    if not SCANNER.could_match(text):
        assert findings == []
    redact_spans(text, findings)


# ---------------------------------------------------------------------------- families
# One block per detector family: short realistic cases, then look-alikes it must leave.

FAMILIES: dict[str, tuple[list[tuple[str, list[str]]], list[str]]] = {
    "lists": ([
        ("Voici les codes de secours :\n4F7K-Q2WX\n9HJ3-MN8P\n", ["4F7K-Q2WX", "9HJ3-MN8P"]),
        ("Here are the passwords:\n- Printer ...... Kx7!mPq2\n- Scanner: Lz9#aB4c\n",
         ["Kx7!mPq2", "Lz9#aB4c"]),
    ], [
        "Voici les codes postaux :\n69003\n69007\n",
        "Here are the passwords rules:\n- 12 characters\n- one digit\n",
    ]),
    "passphrases": ([
        ("passphrase: correct horse battery staple", ["correct horse battery staple"]),
        ("La phrase de passe est « chat noir 1975 ».", ["chat noir 1975"]),
    ], [
        "the passphrase is the one from the paper envelope in the safe",
        "La phrase de passe est celle du coffre, demandez à Paul.",
    ]),
    "alternatives": ([
        ("Le mot de passe est soit « Lavande42 » soit « Lavande43 ».",
         ["Lavande42", "Lavande43"]),
        ("password: Hunter22!, or maybe Hunter23!", ["Hunter22!", "Hunter23!"]),
        ("Le mot de passe est Lavande42, ou alors demandez à Paul.", ["Lavande42"]),
    ], [
        "Le mot de passe est celui de l'an dernier, ou alors demandez à Paul.",
    ]),
    "app passwords": ([
        ("Mot de passe d'application WordPress : xK3p 9LmQ 2rTz W8vN c4Ys Hq7e",
         ["xK3p 9LmQ 2rTz W8vN c4Ys Hq7e"]),
        ("Nextcloud app password: Xk2Pq-9LmWz-R4tYb-7NcVs-Q8hJe",
         ["Xk2Pq-9LmWz-R4tYb-7NcVs-Q8hJe"]),
    ], [
        "Clé de licence de l'application : VK7JG-NPHTM-C97JM-9MPGT-3V66T",
    ]),
    "BitLocker keys": ([
        ("Clé de récupération BitLocker : 123456-234567-345678-456789-567890-678901-789012-"
         "890123", ["123456-234567-345678-456789-567890-678901-789012-890123"]),
    ], [
        "BitLocker key ID: 4F3A2B1C-9D8E-4F7A-B6C5-D4E3F2A1B0C9",
    ]),
    ".pgpass": ([
        ("mon ~/.pgpass :\ndb.example.org:5432:compta:compta_app:Pg-Compta!2024\n",
         ["Pg-Compta!2024"]),
    ], [
        "mon ~/.pgpass contient localhost:5432:*:postgres:*",
    ]),
    "connect calls": ([
        ("$db = mysqli_connect('localhost', 'wp_user', 'Wp!Conn3ct', 'wordpress');",
         ["Wp!Conn3ct"]),
        ("new PDO('mysql:host=localhost;dbname=app', 'app', 'PdoS3cret!');", ["PdoS3cret!"]),
    ], [
        "mysqli_connect('localhost', 'wp_user', getenv('DB_PASSWORD'))",
    ]),
    "values before their label": ([
        ("Biscotte38, c'est le nouveau mot de passe de la session de Claire.", ["Biscotte38"]),
        ("Tulipe-77 <- ça c'est le code de la session élève.", ["Tulipe-77"]),
        ("Lighthouse42 is the password for the shared mailbox.", ["Lighthouse42"]),
    ], [
        "Utilisateur jdupont42 : le mot de passe a expiré ce matin.",
        "Poste PC-ACC-03 : le mot de passe Windows ne marche plus.",
        "Ticket 45872 : mot de passe oublié pour le compte compta.",
    ]),
    "device codes": ([
        ("l'alarme : 7391 puis la touche OFF", ["7391"]),
    ], [
        "l'alarme a sonné trois fois, le technicien passe le 12/03.",
        "digicode: ask the caretaker (ext. 2204)",
    ]),
    "login pairs": ([
        ("Voici les accès pour Marc :\n- messagerie : marc.dubois / Epicea-77", ["Epicea-77"]),
        ("identifiants du site (admin WordPress) : mairie_admin / Cl0cher&Eglise",
         ["Cl0cher&Eglise"]),
    ], [
        "Voici les accès pour Marc : marc.dubois / bureau 2.14",
    ]),
    # pairs joined by "et", a comma after a numeric login, list items under a login intro
    "login pairs, other separators": ([
        ("Pour sa session : sophie.l et Marmotte!7 merci", ["Marmotte!7"]),
        ("Mes identifiants pour l'espace client banque : 40213877, Cl3m@tite. Merci",
         ["Cl3m@tite"]),
        ("Logins:\n- Dolibarr : jdupont / Soleil2024x, Nextcloud : jdupont2 / Lune-2025x",
         ["Soleil2024x", "Lune-2025x"]),
        ("code de connexion du rectorat : 0452871T / DIRPINS45. merci", ["DIRPINS45"]),
    ], [
        "Réunion lundi et mardi : salle B2 et Bureau-12 pour la session de formation.",
        "Appelez le 40213877, Cl3m@tite est le nom du modèle.",
        "- Dolibarr : jdupont / bureau 2.14",
    ]),
    "command-line password options": ([
        ("$ redis-cli -h 10.42.0.9 -p 6380 --tls -a 'Orchid-Basalt-3391' info stats",
         ["Orchid-Basalt-3391"]),
        ('ldapsearch -x -H ldaps://ldap.example.fr -D "cn=svc" -w \'Annu@ire-Sv7c!\' -b x',
         ["Annu@ire-Sv7c!"]),
        ("mosquitto_pub -h mqtt.example.com -p 8883 \\\n  -u gw-07 -P 'fern3-Moss-Relay' -t t",
         ["fern3-Moss-Relay"]),
        ("mysqldump -u bkp -p'Compt@ble-2026!x' --single-transaction db > x.sql",
         ["Compt@ble-2026!x"]),
        ("wget --password=Gh7-Tulip-Run https://example.org/file", ["Gh7-Tulip-Run"]),
        ("docker login -u ci -p Dk9-Harbor-Key registry.example.org", ["Dk9-Harbor-Key"]),
    ], [
        "redis-cli -a $REDIS_PASSWORD ping",
        "mysql -u root -p ma_base",
        "ldapsearch -x -w '<password>' -b dc=example",
        "docker run -p 8080:80 nginx",
        "zip -r archive.zip dossier/",
    ]),
    "SQL credential clauses": ([
        ("CREATE USER 'stats_ro'@'10.8.0.%' IDENTIFIED BY 'Gu1chet-Aide-Sociale';",
         ["Gu1chet-Aide-Sociale"]),
        ("ALTER USER app IDENTIFIED WITH mysql_native_password BY 'Np4-Forest!'",
         ["Np4-Forest!"]),
        ("SET PASSWORD FOR 'bob'@'%' = PASSWORD('Old-Stone-77');", ["Old-Stone-77"]),
        ("CREATE LOGIN compta WITH PASSWORD = 'Ledger#2026x';", ["Ledger#2026x"]),
    ], [
        "RADIUS: Access-Reject for user j.martin, reason: bad password (EAP-PEAP/MSCHAPv2)",
        "The user is identified by his badge number B-2231.",
        "CREATE USER 'app'@'%' IDENTIFIED BY '${DB_PASS}';",
    ]),
    "login calls": ([
        ('$m = imap_open("{imap.example.org:993/imap/ssl}INBOX", "ec@mairie.fr", '
         '"Naiss@nce-Acte-903")', ["Naiss@nce-Acte-903"]),
        ('ldap_bind($ds, "cn=admin,dc=ex", "Ldap-Bind-44x");', ["Ldap-Bind-44x"]),
    ], [
        'imap_open($mailbox, $user, getenv("IMAP_PASSWORD"))',
    ]),
    "delimited tables": ([
        ("name,email,temp_password,start_date\nRavi Patel,ravi@ex.com,Welcome-Ravi-0326,"
         "2026-03-02\n", ["Welcome-Ravi-0326"]),
        ("identifiant;nom;mot_de_passe_provisoire;date\nc.petit;Petit;Craie-Tableau-71;"
         "2026-02-02\n", ["Craie-Tableau-71"]),
        ("lieu;ssid;cle;remarque\nsalle;TDP-SCENE;Projecteur-Lumiere-12;regie\n",
         ["Projecteur-Lumiere-12"]),
        ("| Name | Laptop login | Laptop password | Badge |\n|---|---|---|---|\n"
         "| Sara | slind | Greenhouse#Sara1 | B-2231 |\n", ["Greenhouse#Sara1"]),
    ], [
        "user;password_changed;last_login\njdupont;yes;2026-01-02\n",
        "| Name | Password expiry |\n|---|---|\n| Sara | 2026-03-02 |\n",
        "article;cle;prix\nvis;M6-20;0,12\n",
    ]),
    "values cut by a line wrap": ([
        ("le mdp c est Mimosa\n_Jaune_58 tout attaché. Merci", ["Mimosa\n_Jaune_58"]),
        ("Voici le mot de passe de la boîte partagée pour le portable de Jean :\nVeloClub#\n"
         "Printemps9\n\n(en deux morceaux)", ["VeloClub#\nPrintemps9"]),
        # a setting on the next line is no second half
        ("mot de passe : Aaaa00%\nDB_PASSWORD=Aaaa00", ["Aaaa00%", "Aaaa00"]),
    ], [
        "mot de passe : je vous le donne demain.\n#2 Merci",
    ]),
    "session cookies": ([
        ("Cookie: nc_sameSiteCookielax=true; ocm3k8q2v7zp=d2f8k1lq9v7c3n0r5m4x6b8t2a; "
         "nc_username=m.leroy", ["d2f8k1lq9v7c3n0r5m4x6b8t2a"]),
        ("wordpress_logged_in_5d41402abc=admin%7C1739404800%7CqX7kR2vLm9TzW4pNc8YbH3jD6f",
         ["admin%7C1739404800%7CqX7kR2vLm9TzW4pNc8YbH3jD6f"]),
        ("PHPSESSID=9k2j4h5g6f7d8s9a0q1w2e3r4t", ["9k2j4h5g6f7d8s9a0q1w2e3r4t"]),
    ], [
        "Cookie: lang=fr; theme=dark; _ga=GA1.2.1234567890.1700000000",
        "the session will end at 12:00, see session-2026-03-02",
    ]),
    "UUID keys named as keys": ([
        ("HEROKU_API_KEY:     6f2d9b41-8e3c-4a70-b5d1-c9e82f4a7b03",
         ["6f2d9b41-8e3c-4a70-b5d1-c9e82f4a7b03"]),
    ], [
        "HEROKU_APP_ID:      1a7c3e95-2d8b-4f61-9e04-b7a5c3d2e810",
        "entryUUID: 9d4b2e71-3c8f-4a06-b5e1-f7c2a9d03e58",
        "api_key_id = 9d4b2e71-3c8f-4a06-b5e1-f7c2a9d03e58",
    ]),
    "name/value pairs": ([
        ('{ "key": "token", "value": "gh_api_live_Wk8Zq3RvLx7Nm2Tb9Pc4YhJ6", "type": "s" }',
         ["gh_api_live_Wk8Zq3RvLx7Nm2Tb9Pc4YhJ6"]),
        ("env:\n  - name: DB_PASSWORD\n    value: Kube-Pass-2026x\n", ["Kube-Pass-2026x"]),
    ], [
        '{ "key": "api_key", "value": "{{api_key}}" }',
        "  - name: DB_HOST\n    value: db.internal.example.org",
    ]),
    "encoded credentials": ([
        ("  .dockerconfigjson: eyJhdXRocyI6eyJyZWdpc3RyeS5leGFtcGxlLm9yZyI6eyJhdXRoIjoiWjNKbFpX"
         "NW9iM1Z6WlRwTGNtVnRjMEp2ZDJ3dE56a3lJUT09In19fQ==",
         ["eyJhdXRocyI6eyJyZWdpc3RyeS5leGFtcGxlLm9yZyI6eyJhdXRoIjoiWjNKbFpXNW9iM1Z6WlRwTGNt"
          "VnRjMEp2ZDJ3dE56a3lJUT09In19fQ=="]),
        ("MAPBOX_TOKEN sk.eyJ1IjoiZ3JlZW5ob3VzZSIsImEiOiJjbHg3cTJ4YjkwMWtxMmtzZjR5ZGxuM3JsIn0"
         ".Wq4mZ8vKr2LpT9xBn7Yc3H",
         ["sk.eyJ1IjoiZ3JlZW5ob3VzZSIsImEiOiJjbHg3cTJ4YjkwMWtxMmtzZjR5ZGxuM3JsIn0"
          ".Wq4mZ8vKr2LpT9xBn7Yc3H"]),
    ], [
        # base64 JSON with no credential in it (a Grafana panel, a JWT header alone)
        "state=eyJwYW5lbCI6IjEyIiwidGltZSI6Im5vdyJ9",
    ]),
    "word passphrases": ([
        ("The folder is protected; the password is: lighthouse harbour seven gulls\n",
         ["lighthouse harbour seven gulls"]),
    ], [
        "Le mot de passe : je vous le donnerai par téléphone\n",
        "the password is: the same as the old one\n",
    ]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detector_family(family: str) -> None:
    positives, look_alikes = FAMILIES[family]
    for text, values in positives:
        got = [v for _, v in found(text)]
        assert got == values, text
    for text in look_alikes:
        assert found(text) == [], text


@pytest.mark.parametrize("text", [
    # a brand and model on the line after an ambiguous label's sentence
    "I'll give you the door code in person when you get here.\n"
    "Printer is an HP LaserJet M404dn, serial PHBBK31920.",
    # a container image tag after a setting that names a password
    "    environment:\n      MYSQL_PASSWORD: ${NC_DB_PASSWORD}\n  app:\n"
    "    image: nextcloud:29.0.4-apache\n",
    # forwarded history below a note saying the password in it was changed
    "le mot de passe qu'il donne plus bas a été changé depuis par Emma.\n\n"
    "---------- Forwarded message ---------\nDe : x\n\n"
    "Voici les accès FTP : utilisateur mairie_web, mot de passe Ftp-Loiret-2019.",
    # what the words before a value say it is: a login, an id, a reference
    "password: the usual one. My login is jsmith42.",
    "my password stopped working after the upgrade, the error id is 7f3a9c2e",
    "La phrase de passe de BitLocker a été demandée, ID de clé 4F3A2B1C",
    "Clé WPA : voir l'autocollant sous la box (modèle Livebox 6, S/N LK2239AB1178)",
    # an example in a policy or a how-to
    "Votre mot de passe doit contenir 12 caractères dont 1 chiffre (ex. Exemple1!)",
    "Le mot de passe doit être long, par exemple Cheval-Batterie-Agrafe-9 n'est pas accepté ?",
    # a digest named as such
    "Voici le hash du mot de passe dans la base : 5f4dcc3b5aa765d61d8327deb882cf99",
    # shapes of references and names, not values
    "J'ai oublié mon mot de passe depuis la mise à jour KB5034441 de Windows 11.",
    "WARN [auth] token validation failed for kid=2024-07-rotation-a",
    "secret_key_ref:\n  name: app-secrets\n  key: DB_PASSWORD",
    "RADIUS: Access-Reject for user j.martin, reason: bad password (EAP-PEAP/MSCHAPv2)",
    "Facture n° FA2025-1187 : paiement par carte, code de transaction 8F3K2L.",
])
def test_context_says_no_live_secret(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(("text", "values"), [
    ("LE CODE DU PORTAIL A CHANGE. L'ANCIEN (1966A) NE MARCHE PLUS.\nLE NOUVEAU C'EST 7302C.",
     ["7302C"]),
    ("le code de l'alarme est désormais 5263 (l'ancien 7781 a été supprimé)", ["5263"]),
    ("the old alarm code you have on file (2207) was deleted. The new code is 9158.",
     ["9158"]),
    # an old value that still works, or that was put back, is still a secret
    ("L'ancien code 5509 reste actif jusqu'au 31 mars.", ["5509"]),
    ("Mot de passe du webmail : on lui a remis l'ancien, qui était MaireDuVal#58.",
     ["MaireDuVal#58"]),
])
def test_old_values_are_not_live(text: str, values: list[str]) -> None:
    assert [v for _, v in found(text)] == values


@pytest.mark.parametrize("text", [
    "the dashboard shows the live secret key: sk_live_...9kQa (rolled last week)",
    "webhook: https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "SENDGRID_API_KEY=SG.xxxxxxxx.yyyyyyyy",
    'the sample file ships with password = "changeme"',
    "DB_PASSWORD=changeme",
])
def test_masked_and_filler_values(text: str) -> None:
    assert found(text) == []


def test_example_cue_is_a_word_not_a_domain() -> None:
    text = "user\tpassword\nn.okafor@greenhouse.example.com\tKite-Marble-3841\n"
    assert found(text) == [("password", "Kite-Marble-3841")]


@pytest.mark.parametrize("text", [
    "CLÉ WIFI : MAIRIE-Invites-2024", "ACCÈS : jdupont / Soleil2024!",
    "SÉSAME DU PORTAIL : Ouvre-Toi-77",
])
def test_upper_case_accented_labels(text: str) -> None:
    assert len(found(text)) == 1


def test_literal_gate_covers_every_label() -> None:
    """The gate (``_GATE`` and its camelCase searches) must let through every word that a
    detector starts from, in lower, upper and title case: a word it misses is a detector
    that never runs."""
    s = secrets_module
    words = [*s._CODE_WORDS, *s._STEMS, *(a for _, an in s._ANCHOR_TRIGGERS for a, _ in an),
             *(w.decode() for w in (*s._COMMAND_WORDS, *s._PAIR_ONLY)),
             *(w for w in s._LIST_STEMS if w.isascii() and " " not in w)]
    # stems that only occur inside words ("récupération", "sécurité")
    words = [w for w in words if w not in ("curit", "cup\u00e9ration")]
    missed = [form for w in words for form in (w, w.upper(), w.title())
              if not s._Haystack("x " + form + " y").gated()]
    assert missed == []
    # a command's password options open the gate on their own
    options = [f.split()[0].rstrip("+") for flags in s._CLI_PASSWORD_FLAGS.values()
               for f in flags]
    cli = [o for o in options if not s._Haystack("$ tool " + o + " x").gated()]
    assert cli == []
    assert not s._Haystack("Jean-Pierre et Marie-Anne, peut-être jeudi").gated()
    for camel in ("clientSecret", "SMTPPASS", "apiToken", "X-Api-Key"):
        assert s._Haystack(camel).gated(), camel
    assert not s._Haystack("Bonjour, le serveur ne répond plus depuis ce matin.").gated()
