"""Secret detectors: text in, spans out.

What this module promises:

- :meth:`SecretScanner.scan` returns the spans of the secret *values* found in a text
  (for a private key, the whole block), sorted and non-overlapping; when detectors
  disagree, the most specific kind wins (a GitHub token after ``password:`` is a
  ``github-token``), then the longest span.
- It is pure, thread-safe once built, and linear in the size of the text: every
  pattern starts at a run boundary (look-behind) and has bounded repetitions, and
  every context look-up reads a bounded window, so a 100,000-character line of
  hostile input costs about as much as ordinary prose of the same size.
- Clean text is cheap: one gate (``_GATE``: the trigger words at word starts, and their
  camelCase forms) says whether any detector may find anything, about 200 µs for 10 KB
  of prose with none of them; then a few literal searches on the text's bytes (see
  ``_TRIGGERS``) decide which detectors run, and one pass finds which of the generic
  detectors' words the text holds (``_literals_in``; ``tests/test_secrets_triggers.py``
  checks these pre-filters against plain ``in`` tests).
- It never logs, and never puts a secret value in an exception message.

Passwords are the hard part: people write them in prose ("le mdp c'est Soleil2024!"),
in "login / password" pairs, in tables and in config snippets, in French and English.
The value is the token that follows the keyword (after optional qualifiers such as
"du wifi" and a separator such as ``:``, ``=``, "est", "is"); words that say that *no*
value follows ("oublié", "expired", "ne fonctionne pas", "reset link") stop the
detector.  Letters-only values are accepted only where they end a clause
("Mot de passe : soleil") so that "the password is too short" stays untouched.

Beyond the value right after the label, a bounded window after it (to the end of the
paragraph, or the next line after a paragraph that ends with a colon) takes a value that
looks generated (letters and digits, not a reference, date, hash, file or host name, not
named by the words just before it: "numéro de série X"); a quoted passphrase after a
separator (« chat noir 1975 »); alternatives ("soit « A » soit « B »").  Ambiguous labels
(clé, key, code) need a value that looks generated on its own (both cases and a digit
or a symbol) and a label that is not a public key's, a licence's or an error's; token
labels (jeton, token) a long generated value.  Access codes, lists announced by a line
ending with a colon ("here are the backup codes:"), table columns (text, and HTML source
in a text part), application-password and recovery-key shapes, Bearer tokens, .pgpass
lines and connect() arguments are found by shape and context; so is a value written
before its label ("Biscotte38, c'est le mot de passe", "X » : voilà, c'est le nouveau
mot de passe", "X comme mdp"); a value that "the new one" names after a password label
earlier in its paragraph ("Le nouveau est : X"); one value alone in brackets; the text of
a Wi-Fi QR code ("WIFI:S:...;P:X;;"); after "clé secrète", "secret key", "API key" a long
generated value or a UUID.

Tools and formats that carry a password in a known place are read by families, not
phrasings: the password options of common command-line tools (one table,
``_CLI_PASSWORD_FLAGS``: ``redis-cli -a``, ``ldapsearch -w``, ``mysqldump -p'…'``…), SQL
credential clauses (``IDENTIFIED BY``, ``PASSWORD('…')``, ``WITH PASSWORD =``), login
calls (``imap_open``, ``ldap_bind``), delimited tables whose column title names a
password (CSV with ``,`` or ``;``, Markdown, aligned columns; a bare "clé" beside an SSID
column), login/password pairs joined by ``/ , ; et and –`` after a login label or under a
list introduced by one, values cut by a line wrap (two pieces glued by a symbol), session
cookies, name/value pairs whose name names a secret (Postman, Kubernetes ``env``), and
base64 JSON that holds credentials (``.dockerconfigjson``).

Near any password or Wi-Fi label, before or after it (a reply above a quoted question, a
correction), a value strong on its own (upper and lower case, a digit and a symbol) is
taken unless the words before it name it (``_strong_values``); Wi-Fi keys of words joined
by hyphens, passphrases with a number, codes before their label, lists of codes under a
sentence or a heading, tables rendered with a blank line between rows and HTML source
(``<b>mot de passe</b> : <code>X</code>``) are read too.  Keys and codes whose label, or
whose list's heading, says what they are for (``_NOT_SECRET_QUALIFIER``: a licence, a
booking, a course, a parcel, a coupon...) are left alone, and so are fragments ("se
termine par 42"), a network's or user's name right before the value, a product's model
in a window ("un Synology DS220+") and object ids with a lower-case prefix.

Also read by shape times context (see each detector's comment): a login/password pair
written in one piece after a login label ("accès : x/Y"), after a common login and a spaced
slash ("« admin / X »") or a portal's account area ("Espace client : x / Y"); a capitalised
word with digits that a verb gives where the text speaks of logging in ("je tape bien X",
"c'est X", "was changed to X"); a keypad code ("5829#") in a sentence about a door or a
gate; lower-case words joined by hyphens with a number after a key or Wi-Fi label; a
column gap or a mail program's line wrap as the separator after a label; a column titled
for access codes ("Code admin", "Code porte"); a device's six-capital verification code;
a row of accounts with no header (an address, and a value strong on its own).

Also by shape and context: a code after qualifying words and a verb, across a line wrap
("le digicode de la porte de\nservice est 4B7296"); a PIN in two pairs; lockboxes and a
padlock's three digits; a value someone "tried" or "reset it to"; recovery codes under a
paragraph and a blank line; a reply above a history whose question names the password; a
form's dot leaders as a separator; a pass phrase alone on its line after "est :" and a
blank line; a password dictated in words then written "tout attaché, donc X".

And: a part decoded with the wrong charset is read with its undecoded bytes as
windows-1252 letters ("Cl\ufffd WPA : X"); Markdown code spans in a password column; an
XML element named for a password with attributes (FileZilla's ``<Pass
encoding="base64">``); the string values of a JSON object under a key that names a
secret; a bracketed aside after a label across a line wrap; a spaced dash ends a field
of a line; the value a correction sets aside ("c'est Y, pas X") when it is a near-copy
of the right one; an old value still in use or put back.

Precision comes last, from the words around a value whatever detector found it
(``_live``): masked, elided and filler values ("sk_live_...9kQa", "changeme", "XXXXXX")
are never secrets; nor is a password-like value right after an example cue ("ex.",
"par exemple"), after "l'ancien"/"the old" (a changed value; unless a verb gives it or
the text says it still works), a hex digest named as such, or a value named by an
identity word across a verb ("my login is jsmith42", "l'ID de clé 4F3A2B1C"); nor a value
in forwarded or quoted history that a note above says was changed; nor the login of a
"login / password" pair; an ambiguous label ("code", "clé") reads no further than the end
of its sentence's line, and a setting's name ("MYSQL_PASSWORD:") opens no prose window.
Nor is a value that says what it is whatever found it: a password's hash in a known format
(crypt, argon2, Django, LDAP), a value encrypted in place (SOPS, Ansible Vault), AWS's
documented example keys, a placeholder ("<ask Daniel>", "XXXXX-XXXXX"), a question, or a
value the words right after it call shareable, an example or crossed out; nor examples
after a plural label and "like" ("passwords like X or Y"), a payment provider's object id
("cus_..."), a user's name before a known hash (".htpasswd"), the key of a "key X / secret
Y" pair, a table cell under a login column, a PuTTY key's public lines, a value read
after a label inside brackets past the closing bracket ("(using password: YES)").
"""

from __future__ import annotations

import base64
import bisect
import html
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

KINDS: tuple[str, ...] = (
    "password", "api-token", "private-key", "aws-access-key", "aws-secret-key", "github-token",
    "gitlab-token", "slack-token", "stripe-key", "google-api-key", "jwt", "openai-key",
    "url-credentials", "connection-string",
)

# Which kind wins when two detectors claim overlapping text: the more specific one.
_PRIORITY: dict[str, int] = {
    "private-key": 100,
    "aws-access-key": 90, "aws-secret-key": 90, "github-token": 90, "gitlab-token": 90,
    "slack-token": 90, "stripe-key": 90, "google-api-key": 90, "openai-key": 85, "jwt": 80,
    "connection-string": 70, "url-credentials": 60, "api-token": 50,
    "password": 10,
}

DEFAULT_MARKER = "[secret removed: {kind}]"


def _words(block: str) -> frozenset[str]:
    return frozenset(block.split())


@dataclass(frozen=True)
class Finding:
    """One secret: its kind and the span ``text[start:end]`` of the secret value."""

    kind: str
    start: int
    end: int


# --------------------------------------------------------------------------------------
# Provider tokens with fixed shapes.  Each pattern starts with a look-behind that forbids
# starting in the middle of a run of the characters it consumes, and has bounded
# repetitions: together they keep the search linear on hostile input.

_TOKEN_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "aws-access-key": (
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    ),
    "github-token": (
        re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,251}(?![A-Za-z0-9_])"),
        re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{30,240}(?![A-Za-z0-9_])"),
    ),
    "gitlab-token": (
        re.compile(r"(?<![A-Za-z0-9_\-])gl(?:pat|ptt|dt|rt|cbt|ft|imt|agent|soat|oas)-"
                   r"[A-Za-z0-9_\-]{20,200}(?:\.[A-Za-z0-9_\-]{2,100}){0,3}"
                   r"(?![A-Za-z0-9_\-])"),
        re.compile(r"(?<![A-Za-z0-9])GR1348941[A-Za-z0-9_\-]{20,100}(?![A-Za-z0-9_\-])"),
    ),
    "slack-token": (
        re.compile(r"(?<![A-Za-z0-9_\-])xox[abposre]-[A-Za-z0-9\-]{10,250}(?![A-Za-z0-9\-])"),
        re.compile(r"(?<![A-Za-z0-9_\-])xapp-\d-[A-Za-z0-9\-]{10,250}(?![A-Za-z0-9\-])"),
        # the secret part of an incoming-webhook URL: its last segment (the workspace
        # and channel ids before it, T... and B..., are no secret; group "v")
        re.compile(r"(?<=hooks\.slack\.com/services/)T[A-Za-z0-9_]{6,20}/B[A-Za-z0-9_]{6,20}"
                   r"/(?P<v>[A-Za-z0-9_]{16,64})"),
    ),
    "stripe-key": (
        re.compile(r"(?<![A-Za-z0-9_])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}"
                   r"(?![A-Za-z0-9_])"),
    ),
    "google-api-key": (
        re.compile(r"(?<![A-Za-z0-9_\-])AIza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])"),
        re.compile(r"(?<![A-Za-z0-9_\-])GOCSPX-[A-Za-z0-9_\-]{24,40}(?![A-Za-z0-9_\-])"),
    ),
    "jwt": (
        re.compile(r"(?<![A-Za-z0-9_\-.])eyJ[A-Za-z0-9_\-]{8,4000}\.[A-Za-z0-9_\-]{8,8000}"
                   r"\.[A-Za-z0-9_\-]{8,4000}(?![A-Za-z0-9_\-.])"),
    ),
    "openai-key": (
        re.compile(r"(?<![A-Za-z0-9_\-])sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d\d-)?"
                   r"[A-Za-z0-9_\-]{20,250}(?![A-Za-z0-9_\-])"),
    ),
}

# Cheap pre-filter.  A trigger is (gate, pattern, cased): the pattern is searched in the
# text's UTF-8 bytes (as is when ``cased``, else ASCII-lower-cased) only if the gate byte
# occurs at all (a memchr).  Every pattern starts with a literal, which the regex engine
# searches for as fast as ``bytes.find``; together they cost a few microseconds per 10 KB.
_Trigger = tuple[bytes | None, "re.Pattern[bytes]", bool]


def _trigger(gate: bytes | None, pattern: bytes, *, cased: bool = False) -> _Trigger:
    return (gate, re.compile(pattern), cased)


# Upper-case prefixes share one search each ("A..." and "G..."): a hit means "maybe".
_A_PREFIXES = _trigger(b"A", rb"A(?:KIA|SIA|BIA|CCA|Iza)", cased=True)
_G_PREFIXES = _trigger(b"G", rb"G(?:R1348941|OCSPX-)", cased=True)
_TRIGGERS: dict[str, tuple[_Trigger, ...]] = {
    "aws-access-key": (_A_PREFIXES,),
    "github-token": (_trigger(b"_", rb"gh[pousr]_"), _trigger(b"_", rb"github_pat_")),
    "gitlab-token": (_trigger(b"-", rb"gl(?:pat|ptt|dt|rt|cbt|ft|imt|agent|soat|oas)-"),
                     _G_PREFIXES),
    "slack-token": (_trigger(b"x", rb"x(?:ox[a-z]-|app-)"), _trigger(b"k", rb"slack\.com")),
    "stripe-key": (_trigger(b"_", rb"_(?:live|test)_"),),
    "google-api-key": (_A_PREFIXES, _G_PREFIXES),
    "jwt": (_trigger(b"J", rb"eyJ", cased=True),),
    "openai-key": (_trigger(b"k", rb"sk-"),),
}
_PRIVATE_KEY_TRIGGERS = (_trigger(b"-", rb"-----begin"), _trigger(b"k", rb"putty-user-key"))
_AWS_SECRET_TRIGGERS = (_trigger(None, rb"secret"), *_TRIGGERS["aws-access-key"])
_URL_TRIGGERS = (_trigger(b":", rb"://"),)

# Password keywords are found from anchors: each trigger below enables the anchors next to
# it, which are then looked for in the lower-cased text; a keyword match is looked for in
# a small window around each anchor found.  (anchor, must start a word)
_ANCHOR_TRIGGERS: tuple[tuple[_Trigger, tuple[tuple[str, bool], ...]], ...] = (
    (_trigger(None, rb"pass"), (("pass", False),)),
    (_trigger(None, rb"mdp"), (("mdp", True),)),
    (_trigger(None, rb"de pase\b"), (("pase", False),)),          # "mot de pase"
    (_trigger(None, rb"secr(?:et|\xc3[\xa8\x88]te)"),        # (phrase) secrète
     (("secret", False), ("secr\u00e8te", False))),
    (_trigger(None, rb"identifiant"), (("identifiant", False),)),
    (_trigger(None, rb"curit"), (("curit", False),)),          # sécurité, security
    (_trigger(None, rb"pin"), (("pin", True),)),
    (_trigger(None, rb"code"), (("code", True),)),
    (_trigger(None, rb"cl(?:\xc3[\xa9\x89]|ef|e[\t ;,|:])"),
     (("cl\u00e9", True), ("clef", True), ("cle", True))),
    (_trigger(b"k", rb"key"), (("key", True),)),
    # (two literal gates: "t" alone is in every other word)
    (_trigger(b"jeton", rb"jetons?\b"), (("jeton", True), ("token", True))),
    (_trigger(b"token", rb"tokens?\b"), (("jeton", True), ("token", True))),
    (_trigger(None, rb"s(?:\xc3[\xa9\x89]|e)same"), (("s\u00e9same", True), ("sesame", True))),
    (_trigger(None, rb"cred"), (("credential", False), ("creds", True))),
    (_trigger(None, rb"acc(?:e|\xc3[\xa8\x88])s"), (("acc\u00e8s", True), ("acces", True))),
    (_trigger(b"w", rb"w(?:pa|lan|ep|ifi|i-fi)"),
     (("wifi", False), ("wi-fi", False), ("wpa", True), ("wlan", True), ("wep", True))),
    (_trigger(b"w", rb"ps?w"), (("pw", True), ("psw", True))),
    # a bank's "memorable word", "mot mémorable"
    (_trigger(None, rb"morable"), (("memorable", True), ("m\u00e9morable", True))),
)


# For short texts (subjects, small parts) one combined search beats ~25 separate ones.
_SHORT = 512
_ANY_TRIGGER = re.compile(b"|".join(sorted({
    (p.pattern.lower() if cased else p.pattern)
    for _, p, cased in (*[t for ts in _TRIGGERS.values() for t in ts], *_PRIVATE_KEY_TRIGGERS,
                        *_AWS_SECRET_TRIGGERS, *_URL_TRIGGERS,
                        *[t for t, _ in _ANCHOR_TRIGGERS])})))


# The gate in front of everything: one pass of two searches over the text's bytes that
# says whether any detector may find anything at all.  Every trigger below is a word
# start (after a byte that is not a letter or a digit, so "DB_PASSWORD", "x-api-key" and
# "https://" count), looked for in one regex whose first step is that separator byte:
# the regex engine then skips from separator to separator in C and tries the words only
# there, instead of trying some fifty alternatives at every byte.  Words that start in
# the middle of an identifier are found in their camelCase or upper-case forms
# ("clientSecret", "SMTPPASS") by a second search that starts on capital letters, which
# are rare in prose.  ``tests/test_secrets.py`` checks that every detector's trigger
# word is covered here.
_GATE_WORDS = (
    # passwords in prose, tables, pairs and lists
    "pass", "pw", "psw", "psk", "mdp", "motdepasse", "phrase", "secret", "secr\u00e8te", "pase",
    "secr\u00c8te", "secur",
    "s\u00e9cur", "token", "jeton", "key", "cl\u00e9", "clef", "s\u00e9same", "sesame",
    "memorable", "m\u00e9morable", "m\u00c9morable",
    # "cle" unaccented as a word only (a CSV title): "client", "clear" are not triggers
    "cle ", "cle\t", "cle;", "cle,", "cle|", "cle:",
    "code", "digicode", "pin", "puk", "combin", "lockbox", "cadenas", "padlock", "alarm",
    "auth", "cred",
    "salt", "sess", "sig", "compte", "account", "identifiant", "login", "user",
    "utilisateur", "admin", "acc\u00e8s", "acces", "wifi", "wi-fi", "wpa", "wlan", "wep",
    "recovery", "backup", "secours", "r\u00e9cup", "recup",
    # upper-case accented forms (the gate lower-cases ASCII only): "CLÉ WIFI", "ACCÈS"
    "cl\u00c9", "acc\u00c8s", "s\u00c9same", "s\u00c9cur", "r\u00c9cup",
    # commands, calls, encoded URLs, webhooks, key blocks
    "bearer", "connect", "pdo", "mysql", "lftp", "snmp", "net use", "sshpass", "pgpass",
    "sqlplus", "rman", "expdp", "impdp", "sqlldr", "dgmgrl",
    "-u", "--user", "//", "\\/\\/", "3a%2f%2f", "----begin", "putty", "hooks", "api/",
    "webhookb2", "bot", "convertto",
    # the password options of _CLI_PASSWORD_FLAGS (after a space: "Jean-Pierre" is not
    # "-p"; cheaper for prose than the tools' names), SQL credentials, login calls
    "-p", "--p", "-a", "-w", "-k", "--http", "--ftp", "--admin", "-storepass", "-keypass",
    "-srcstorepass", "-deststorepass", "add_user", "/p:", "--requirepass", "--masterauth",
    "identified", "imap_open", "ldap_bind", "ftp_login", "ssh2_auth",
    # provider prefixes (gitleaks' list, see _PROVIDER_TOKEN and _TOKEN_PATTERNS)
    "github_pat", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat", "glptt", "gldt", "glrt",
    "glcbt", "glft", "glimt", "glagent", "glsoat", "gloas", "glsa_", "glc_", "gr1348941",
    "xox", "xapp", "sk", "rk_", "aiza", "akia", "asia", "abia", "acca", "akcp", "gocspx",
    "eyj", "sg.", "xkeysib", "xsmtpsib", "hf_", "api_org", "npm_", "pypi", "hvs.", "hvb.",
    "ops_", "a3-", "dckr_", "doo_", "dop_", "dor_", "shp", "age-", "dp.pt", "dp.st", "dp.sa",
    "dp.ct", "dt0c01",
    "pmak", "pul-", "pscale", "pnu_", "rubygems", "sntry", "pplx", "sq0", "eaa", "fo1_",
    "ntn_", "aa", "sk.", "atatt3", "lin_api", "hrku-", "nrak-", "nrii-", "nrjs-",
    "rdme_", "tk-us-", "ico-", "sha256~", "fio-u-", "duffel_", "shippo_", "sgp_", "live_",
    "ck_", "cs_", "pat-eu1-", "pat-na1-", "atlasv1.",
    # cookies and session ids, name/value pairs (Postman, Kubernetes env)
    "cookie", "set-cookie", "logged_in", "value",
)
_CAMEL_WORDS = ("Pass", "PASS", "Pwd", "PWD", "Psk", "PSK", "Secret", "SECRET", "Token",
                "TOKEN", "Key", "KEY", "Auth", "AUTH", "Cred", "CRED", "Salt", "SALT",
                "Sess", "SESS", "Sig", "SIG")


def _alternation(words: Iterable[bytes]) -> bytes:
    """A regex alternation of literal words, factored by first byte (a trie)."""
    heads: dict[bytes, list[bytes]] = {}
    for w in sorted(set(words)):
        heads.setdefault(w[:1], []).append(w[1:])
    parts = []
    for head, tails in heads.items():
        if b"" in tails:
            parts.append(re.escape(head))
        elif len(tails) == 1:
            parts.append(re.escape(head + tails[0]))
        else:
            parts.append(re.escape(head) + b"(?:" + _alternation(tails) + b")")
    return b"|".join(parts)


_GATE = re.compile(rb"[\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f](?:"
                   + _alternation(w.encode() for w in _GATE_WORDS) + b")")
_GATE_AT_START = re.compile(_alternation(w.encode() for w in _GATE_WORDS))
# one search per capital letter: a pattern that starts with one literal byte is searched
# for with a memchr-like loop, several times faster than one that starts with a class
_CAMEL_GATES = tuple(
    re.compile(re.escape(head.encode()) + b"(?:" + _alternation(
        w[1:].encode() for w in _CAMEL_WORDS if w[0] == head) + b")")
    for head in sorted({w[0] for w in _CAMEL_WORDS}))


class _Haystack:
    """The text as UTF-8 bytes, as is and with ASCII letters lower-cased (no Unicode case
    mapping: fast), for the trigger tests."""

    __slots__ = ("_keypad", "_literals", "_lower", "_lower_of", "_provider", "_seen", "cased",
                 "folded")

    def __init__(self, text: str) -> None:
        self.cased = text.encode("utf-8", "surrogatepass")
        self.folded = self.cased.lower()
        self._seen: dict[object, bool] = {}      # memo: gate byte or pattern -> found
        self._provider: bool | None = None
        self._literals: tuple[frozenset[bytes], frozenset[bytes]] | None = None
        self._keypad: bool | None = None
        self._lower_of: str | None = None
        self._lower = ""

    def lower(self, text: str) -> str:
        """``text.lower()``, memoised for the last ``text`` asked (by identity): the scan
        reads one text (this one, or its copy with CRs and quote marks blanked), and
        several detectors read it lower-cased; a text that is not ASCII costs some 6 ns a
        character to lower-case."""
        if self._lower_of is not text:
            self._lower = text.lower()
            self._lower_of = text
        return self._lower

    def literals(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """The generic detectors' literals present, and present at a word start
        (see _literals_in); memoised."""
        if self._literals is None:
            self._literals = _literals_in(self.folded)
        return self._literals

    def provider(self) -> bool:
        """Whether a provider token's literal occurs (see _PROVIDER_LITERALS); memoised."""
        if self._provider is None:
            self._provider = _provider_triggered(self.cased)
        return self._provider

    def gated(self) -> bool:
        """False when no detector can find anything in the text (see _GATE)."""
        # a gate word at the very start has no byte before it: matched there apart,
        # rather than searching a copy of the text with a space in front
        folded = self.folded
        return (_GATE.search(folded) is not None or _GATE_AT_START.match(folded) is not None
                or any(g.search(self.cased) is not None for g in _CAMEL_GATES)
                or self.keypad())

    def keypad(self) -> bool:
        """Whether a keypad code's shape ("4096#", "2468*") may be there (_keypad_codes);
        memoised."""
        if self._keypad is None:
            cased = self.cased
            self._keypad = (b"#" in cased or b"*" in cased) \
                and _KEYPAD_GATE.search(cased) is not None
        return self._keypad

    def quiet(self) -> bool:
        """True when a short text holds no trigger at all (then nothing can be found)."""
        return len(self.folded) <= _SHORT and _ANY_TRIGGER.search(self.folded) is None

    def test(self, triggers: Iterable[_Trigger]) -> bool:
        seen = self._seen
        for gate, pattern, cased in triggers:
            haystack = self.cased if cased else self.folded
            if gate is not None:
                key = (gate, cased)
                present = seen.get(key)
                if present is None:
                    present = seen[key] = gate in haystack
                if not present:
                    continue
            found = seen.get(pattern)
            if found is None:
                found = seen[pattern] = pattern.search(haystack) is not None
            if found:
                return True
        return False

    def anchors(self) -> list[tuple[str, bool]]:
        # (the test of each trigger inlined: this runs on every gated text, and no other
        # test shares these patterns, so nothing is memoised)
        out: list[tuple[str, bool]] = []
        for (gate, pattern, cased), anchors in _ANCHOR_TRIGGERS:
            haystack = self.cased if cased else self.folded
            if (gate is None or gate in haystack) and pattern.search(haystack) is not None:
                out.extend(anchors)
        return out


_KEYPAD_GATE = re.compile(rb"[#*](?<=[0-9][#*])")
_ANCHOR_REACH = 45      # how far before/after an anchor a keyword may extend

# --------------------------------------------------------------------------------------
# Private keys: PEM / OpenSSH / PGP blocks, and PuTTY key files.

_PEM_BEGIN = re.compile(
    r"-----BEGIN (?P<label>(?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?|"
    r"OpenVPN Static key V\d)-----")
_PUTTY_BEGIN = re.compile(r"(?m)^PuTTY-User-Key-File-\d: ")
_PUTTY_PRIVATE = re.compile(r"(?m)^Private-Lines: \d{1,4}$")
_PUTTY_END = re.compile(r"Private-MAC: [0-9a-fA-F]{20,128}")
_B64_LINE = re.compile(r"[ \t]*[A-Za-z0-9+/=:\-, ]{0,200}\r?\n")
_MAX_KEY_BLOCK = 64 * 1024

# --------------------------------------------------------------------------------------
# Credentials in URLs and connection strings.

# After "://": userinfo "user:password@" then something that starts a host.  The password
# may contain an unencoded "@"; the greedy, bounded class backtracks to the last one.
_URL_USERINFO = re.compile(
    r"://(?P<user>[^\s:/?#\[\]\"'<>()]{0,128}):(?P<pw>[^\s/\"'<>]{1,256})@"
    r"(?=[A-Za-z0-9\[_\-])")
_PORT_QUERY = re.compile(r"\d{1,5}(?:[?#].*)?")
# A token as the user part, with no password or a dummy one: Sentry's DSN
# ("https://<key>@o1.ingest.sentry.io/2"), push monitors ("https://<token>:x@host"),
# a forge token as the user of a clone URL.
_URL_TOKEN_USER = re.compile(
    r"://(?P<user>[A-Za-z0-9_\-]{16,128})(?::(?P<pw>[^\s/\"'<>@:]{0,64}))?@"
    r"(?=[A-Za-z0-9\[_\-])")
_SCHEME_BEFORE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,30})\Z")
_CONNECTION_SCHEMES = frozenset({
    "postgres", "postgresql", "mysql", "mysqlx", "mariadb", "mongodb", "mongodb+srv",
    "redis", "rediss", "amqp", "amqps", "ftp", "ftps", "sftp", "smtp", "smtps",
    "submission", "imap", "imaps", "pop3", "pop3s", "ldap", "ldaps", "mssql",
    "sqlserver", "oracle", "cockroachdb", "clickhouse", "nats", "kafka", "couchdb",
    "memcached", "cassandra", "neo4j", "bolt", "influxdb", "mqtt", "mqtts", "stomp",
    "sqlalchemy", "postgresql+psycopg2", "mysql+pymysql", "db2", "sybase",
})
_CONN_CONTEXT = re.compile(
    r"(?i)(?:jdbc:|odbc|(?<![^\W_])(?:server|data\s+source|host|hostname|database|"
    r"initial\s+catalog|uid|user\s+id|dbname|driver|port|sslmode)\s*=)")
_URL_SCHEME_BEFORE_QUERY = re.compile(r"(?i)(?:[a-z][a-z0-9+.\-]{0,30})://\S*\Z")

# --------------------------------------------------------------------------------------
# Passwords.

_SP = r"[\s_\-]{0,6}"          # between the words of a multi-word keyword
_MDP = rf"mots?{_SP}(?:de|d['’]){_SP}pas?se|motdepasse|mots?-?passe"
_WIFI = r"wi-?fi|wlan|wpa2?|wpa3|wep"

_PW_KEYWORD = re.compile(rf"""
(?<![^\W_])
(?:
   (?P<pair>(?:identifiant|login|user(?:name)?|utilisateur|id|compte|e-?mail|courriel|
              account|nom\s+d['’]utilisateur){_SP}
            (?:/|&|\+|,|\bet\b|\band\b|\bou\b){_SP}
            (?:{_MDP}|mdp|pass(?:word|wd|e)?|pwd|pw|code))
 | (?P<creds>identifiants|credentials|creds|codes\s+d['’]acc[eè]s|acc[eè]s)
 | (?P<wifi>(?:code|cl[ée]f?|key|{_MDP}|mdp|password|pass(?:word|phrase)?){_SP}
             (?:(?:du|de\s+la|de|d['’]|for\s+the|for|of\s+the|of)\s{{1,3}})?
             (?:{_WIFI}|r[ée]seau|network|box|livebox|freebox|bbox)
         | (?:{_WIFI}){_SP}(?:key|password|pass(?:word|phrase)?|code|cl[ée]f?|mdp|{_MDP})
         | cl[ée]f?\s+de\s+s[ée]curit[ée](?:\s+(?:du\s+)?r[ée]seau)?
         | (?:network\s+)?security\s+key)
 | (?P<kw>{_MDP}|mdp|(?:pg|db|my)?pass(?:word|wd|wort|phrase|code)?s?|pwd|pw|psw
         |secret(?:\s+(?:word|(?:question\s+)?answer|question))?
               (?!\s+(?:access\s+)?key(?![^\W_]))
               (?!\s+(?:d['’]|de\s+l['’]|du\s+)\s?(?:application|appli|app|api|client)(?![^\W_]))
         |code\s+(?:d['’]acc[èe]s|secret|pin|de\s+connexion|d['’]activation|
                        de\s+d[ée]verrouillage)
         |pin(?:\s+code)?|s[ée]same|phrase\s+(?:de\s+passe|secr[èe]te)
         |memorable\s+word|mot\s+(?:m[ée]morable|secret)
         |(?:r[ée]ponse|answer|question)\s+(?:secr[èe]te|de\s+s[ée]curit[ée]|secret|security)
         |security\s+(?:question\s+)?(?:answer|question))
 | (?P<skey>cl[ée]f?s?\s+(?:secr[èe]tes?|priv[ée]es?|d['’]api|api)|secret\s+(?:access\s+)?key
          |api\s+(?:secret|key)|(?:client|app|application|consumer|shared|signing)\s+secret
          |secret\s+(?:d['’]|de\s+l['’]|du\s+)\s?(?:application|appli|app|api|client))
 | (?P<key>cl[ée]f?|key|code)
 | (?P<tok>jetons?|tokens?)
)
(?![^\W_])
""", re.X)                     # matched against lower-cased text
_PW_KEYWORD_ANYCASE = re.compile(_PW_KEYWORD.pattern, re.I | re.X)
# The first two characters of every alternative of _PW_KEYWORD, after its look-behind
# (tests/test_secrets.py derives them from the pattern and checks this list).  Looking
# for these first lets _keyword_matches skip most word starts ("de", "le", "un", "the")
# without trying the whole alternation there, which is most of the keyword search's cost.
_KEYWORD_START = re.compile(
    r"(?<![^\W_])(?:ac|an|ap|cl|co|cr|db|e-|em|id|je|ke|lo|md|me|mo|my|ne|no|pa|pg|ph|pi|ps|pw|qu"
    r"|re|ré|se|sé|sh|si|to|us|ut|we|wi|wl|wp)")

# Keywords that need a strong value or a login context: common words in other senses.
_WEAK_KEYWORDS = frozenset({"pass", "passe", "pw", "psw", "secret", "passes"})
# one word after "secret" that names whose it is, before its value ("secret paypal")
_SECRET_QUALIFIER = re.compile(r"[^\S\r\n]+[^\W\d_]{2,16}(?=[^\S\r\n]+\S)")

# The separator between the keyword (plus qualifiers) and the value.
_SEP = re.compile(r"""
(?P<ws>["']?[^\S\r\n]*(?:,[^\S\r\n]*(?=[cCiIeE]))?)
(?:
   (?P<punct>:=|=>|->|→|:|=|\|(?=[^\S\r\n])|[-–—](?=[^\S\r\n])|(?<=["'])[^\S\r\n]*,
     |\.{4,}[^\S\r\n]*:?(?=[^\S\r\n]))     # a form's dot leaders: "Clé de sécurité ..... X"

 | (?P<changed>(?:a\s+[ée]t[ée]|has\s+been|was|is|est)\s+
      (?:chang[ée]e?|modifi[ée]e?|r[ée]initialis[ée]e?|remis|mis|d[ée]fini|reset|changed|
         set|updated|fix[ée]e?)\s+(?:en|à|a|sur|to|as|par)(?![^\W_])\s*:?)
 | (?P<verb>(?:est|c['’\s]?est|ce\s+sera|sera|reste|devient|vaut|sont|soit|is|are|was|
             will\s+be|remains|
             'll\s+be|'s)(?![^\W_])
      (?:[^\S\r\n]+(?:le\s+suivant|la\s+suivante|celui-ci|celui\s+ci|toujours|maintenant|
          d[ée]sormais|bien|actuellement|tout\s+simplement|simplement|now|still|the\s+following|
          currently|simply|just|set\s+to)(?![^\W_]))?
      [^\S\r\n]*:?)
)
""", re.I | re.X)

_PHRASE_END = re.compile(r"[.;!?](?:\s|$)|,\s|\s[-–—]\s|[\r\n]")
_COLON = re.compile(r"[^\S\r\n]*[:=]")
_WORD = re.compile(r"[^\S\r\n]+(?P<w>[^\s:=|]{1,40})")
_QUOTES = {'"': '"', "'": "'", "«": "»", "“": "”", "‘": "’", "`": "`", "„": "“"}
_CLOSERS = {")": "(", "]": "[", "}": "{", "»": "«", "”": "“", "’": "‘", ">": "<"}

# Words after the keyword meaning that no value follows (reset links, expiry, failures).
_NEGATIVE_QUALIFIERS = _words("""
oublié oublie oubliée oubli perdu perdue reset réinitialisation reinitialisation réinitialiser
reinitialiser réinitialisé reinitialise expiré expire expirée expiré. expired expires expiry
expiration incorrect incorrecte invalide invalid wrong faux fausse erroné erronée erroné
lien link links policy politique règles regles rules requirements exigences manager managers
gestionnaire changement change changer changed modifier modification recovery récupération
recuperation forgotten forgot requis required longueur length strength force complexité
complexity ne n' n’ not pas jamais never doesn't don't isn't wasn't won't can't cannot
didn't doit must should needs need requires contient contains comporte hint indice
bloqué bloque bloquée locked verrouillé expirera expiring renouvellement renewal update
mise sécurisé securise protected protégé protege hash hashé hashed chiffré encrypted
field champ prompt invite saisi saisie entered typed tapé tape oublier forget lost
visible caché cache hidden affiché shown temporairement oubliés perdus ne- n'est n’est
vérification verification validation confirmation confirm confirmer
""")

# Values that are ordinary words (or form labels), not passwords.
_STOP_VALUES = _words("""
le la les l' un une des de du d' est sont était a à au aux et ou mais ne n' pas plus que qui
quoi dont il elle on je j' tu vous nous ils elles mon ma mes ton ta tes son sa ses votre vos
notre nos leur leurs ce cet cette ces c' ça ca cela celui celle en y sur sous dans par pour
avec sans chez si oui non voir ci-dessous ci-dessus ci-joint ci-jointe joint jointe idem
identique même meme habituel habituelle inchangé inchange changé change modifié modifie
oublié oublie perdu incorrect incorrecte invalide expiré expire bloqué bloque erroné errone
faux fausse vide aucun aucune rien envoyé envoye reçu recu demandé demande nécessaire
necessaire obligatoire requis merci svp cordialement bonjour bonsoir s'il temporaire
provisoire fourni fournie communiqué communique transmis cliquez cliquer clique saisir
entrer taper indiquer renseigner trop très tres assez bien toujours encore également
egalement aussi correct correcte bon bonne mauvais mauvaise valide valable ok urgent
important problème probleme problème. question demande aide sécurité securite nouveau
nouvelle ancien ancienne actuel actuelle précédent precedent même. suivant suivante
the a an is are was were be been has have had not no yes none n/a na see below above
attached same unchanged changed expired incorrect wrong invalid reset forgotten forgot
required optional here there it this that these those for to of on in at by with and or
but please thanks thank sent provided click enter type should must will would can could
does doesn't did didn't isn't won't can't field protected manager policy hint your my his
her their our its too very case-sensitive sensitive short long weak strong good fine valid
saved stored encrypted hashed hidden displayed noted still also now new old current
previous following usual default missing empty blank mandatory needed unknown inconnu
inconnue secret secrète secrete confidentiel confidential masqué masque caché cache
redacted removed supprimé supprime retiré retire min max minimum maximum moins least
caractères caracteres characters chars digits chiffres lettres letters
nextcloud messagerie webmail windows outlook thunderbird gmail office wifi wi-fi
identifiant identifiants login user username utilisateur password passwords mdp pwd
passwd pass motdepasse mot_de_passe mot-de-passe xxx
refusé refusée refuse refused rejeté rejetée rejete rejected accepté acceptée accepte
accepted denied ouvert ouverte open fermé fermée ferme closed libre désactivé désactivée
desactive disabled activé activée active enabled
""")

_PLACEHOLDER = re.compile(r"""(?x)
  [*xX•●·._\-#?~…]+                         # ****, xxxx, ...
| <[^<>]*> | \[[^\[\]]*\] | \{[^{}]*\} | \$\{[^{}]*\}? | \$\(?[A-Za-z_][A-Za-z0-9_]*\)?
| \((?:[^\W\d_]|[\s'’])+\)                 # (masquée), (hidden)
| %[A-Za-z_(]\S*%?s? | %s | \{\{.*\}\} | !vault | null | none | nil | true | false
| (?i:votre|your|mon|my|ton)[-_].* | (?i:xxx|changez?moi|yourpassword|votremotdepasse)
""")

_LOGIN_CONTEXT = re.compile(
    r"(?i)(?<![^\W_])(?:login|user(?:name)?|utilisateur|identifiant|uid|compte|account|"
    r"e-?mail|user\s*id)(?![^\W_])[^\S\r\n]*[:=]")
_IDENT_SUFFIX = re.compile(r"(?P<suffix>(?:[_.\-][A-Za-z0-9]{1,20}){1,4})(?=[^\S\r\n]*[:=])")
_BAD_IDENT_SUFFIX = frozenset({
    "file", "path", "hash", "length", "len", "min", "max", "reset", "expire", "expiry",
    "expires", "policy", "url", "uri", "changed", "age", "hint", "field", "label",
    "prompt", "required", "rules", "strength", "regex", "pattern", "enabled", "command",
    "cmd", "mode", "type", "auth", "authentication", "salt", "algorithm", "algo",
    "rounds", "iterations", "cost", "timeout", "ttl", "name", "id", "format", "manager",
    "store", "storage", "dir", "location", "env", "variable", "var", "lifetime",
    "history", "complexity", "minlength", "maxlength", "sent", "updated", "validation",
    "ref", "refs", "from", "source", "selector", "secretref", "template",
    "mgmt", "mgt", "management",        # "wpa_key_mgmt=WPA-PSK": the key's type
    "maps", "map",                      # Postfix's "smtp_sasl_password_maps = hash:/..."
})

_CODE_USE = (r"admin|administrateur|administrator|acc[eè]s|access|alarme|alarm|porte|door|"
             r"portail|gate|digicode|d[ée]verrouillage|unlock|cadenas|padlock|coffre|safe")
_TABLE_HEADER_CELL = re.compile(
    rf"(?i)[\W_]*(?:[^\W\d_]{{2,15}}[\s_\-]+){{0,2}}"
    rf"(?:{_MDP}|mdp|password|passwd|pwd|pass|pw|passphrase|secret|pin|totp|otp|2fa|"
    rf"token|jeton|api[\s_\-]+key|cl[ée]f?[\s_\-]+api|"
    rf"(?:code|cl[ée]f?|key)[\s_\-]+(?:{_WIFI})|(?:{_WIFI})[\s_\-]+(?:key|password|code)|"
    # a column of access codes: "Code admin", "Code d'accès", "Door code", "Code alarme"
    # ("Code de déverrouillage", "Code du portail", "Code for the door": joined by a
    # preposition)
    rf"code[\s_\-]+(?:d['’]|(?:de|du|of|for)[\s_\-]+(?:(?:la|the)[\s_\-]+)?)?"
    rf"(?:{_CODE_USE})|(?:{_CODE_USE})[\s_\-]+code)"
    r"(?:\s*/\s*(?:jeton|token|cl[ée]f?|key|code|pin))?"
    r"(?:[\s_\-]+[^\W\d_]{2,15}){0,2}(?:\s*\(.{0,40}\))?[\W_]*")
# Words in a column title that say its cells are not the secret ("Password changed",
# "date mdp", "mot de passe oublié ?", "PIN length").
_HEADER_NOT_SECRET = _words("""
date changed change changé modifié reset oublié forgot forgotten expiry expires expire
expiré expiration last dernier dernière policy politique hint indice length longueur
status statut état etat set défini ok valid valide strength force age âge hash hashed
manager gestionnaire required requis via type
""")
# Bare "clé"/"key"/"code" titles a secret column only beside a network column, or a
# column of doors, gates, rooms or buildings (a table of access codes)
_KEY_HEADER = re.compile(r"(?i)[\W_]*(?:cl[ée]f?|key|code|psk)[\W_]*")
_ACCESS_HEADER = re.compile(r"(?i)[\W_]*(?:ssid|r[ée]seau|network|wi-?fi|wlan|porte|portail|"
                             r"b[âa]timent|salle|local|door|gate|building|room|entr[ée]e|"
                             r"entrance|acc[èe]s|access)[\W_]*")


def _header_cell(cell: str, *, network: bool = False) -> bool:
    """Whether a table cell titles a column of secrets."""
    if network and _KEY_HEADER.fullmatch(cell):
        return True
    if not _TABLE_HEADER_CELL.fullmatch(cell):
        return False
    return not any(w in _HEADER_NOT_SECRET
                   for w in re.split(r"[\W_]+", cell.lower()) if w)


_HEADER_WORDS = _words("""
login identifiant identifiants utilisateur user username nom name prénom prenom compte
account email e-mail mail courriel url site service application serveur server host
commentaire comment comments notes note description poste id adresse address
""")
_MARKDOWN_RULE = re.compile(r"[\s|:\-+=]*")
_TWO_SPACES = re.compile(r"[ \t]{2,}|\t")
_EMAIL = re.compile(r"[^\s@]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_URLISH = re.compile(r"(?i)(?:https?://|www\.)")

_WINDOW = 300           # context window (characters) read around a keyword
_MAX_TABLE_ROWS = 200
_MAX_TABLE_LINE = 500

_AWS_SECRET_CONTEXT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:aws[\s_\-.]?secret(?:[\s_\-.]?access)?(?:[\s_\-.]?key)?|"
    r"secret[\s_\-.]?access[\s_\-.]?key|secretaccesskey)"
    r"[^A-Za-z0-9/+\r\n]{1,20}(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")
_AWS_SECRET_BARE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


_CELL_TAG = re.compile(rb"<t[dh][\s>]")
_MARKUP_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]{0,20})(?:\s[^<>]{0,500})?/?>")


def _mask_markup(text: str) -> str:
    """``text`` with its HTML tags blanked out, same length (positions still map): a cell
    opener becomes a tab, so that an HTML table reads as a tab-separated one."""
    def blank(m: re.Match[str]) -> str:
        cell = not m.group(1) and m.group(2).lower() in ("td", "th")
        return ("\t" if cell else " ") + " " * (m.end() - m.start() - 1)
    return _MARKUP_TAG.sub(blank, text)


def _unlabelled_passwords(text: str, hay: _Haystack) -> list[Finding]:
    """The password detectors that need no label's window, which both of ``scan``'s
    paths (a text with a gate word and a quiet one) run alike: values given by a verb,
    keypad codes, codes before their key in words, rows of accounts, SMTP AUTH
    transcripts and SASL password map lines; each behind its own cheap literal test."""
    out = _given_values(text, hay)
    if hay.keypad():
        out.extend(_keypad_codes(text))
    out.extend(_keypad_then_codes(text))
    if b"@" in hay.cased and not _ROW_WORDS.isdisjoint(hay.literals()[0]):
        out.extend(_account_rows(text, hay.folded))
    if b"auth" in hay.folded or b"334" in hay.cased:
        out.extend(_sasl_transcripts(text, hay.folded))
    if b"sasl" in hay.folded or b"]:" in hay.cased:
        out.extend(_sasl_map_lines(text))
    return out


class SecretScanner:
    """Finds secrets in text.  Build once (from the config) and share between threads."""

    def __init__(self, *, disabled_kinds: Iterable[str] = ()) -> None:
        disabled = frozenset(disabled_kinds)
        unknown = sorted(disabled - set(KINDS))
        if unknown:
            raise ValueError(f"unknown secret kind(s): {', '.join(unknown)}; "
                             f"known kinds: {', '.join(KINDS)}")
        self.enabled: frozenset[str] = frozenset(KINDS) - disabled
        self._tokens = [(kind, pats, _TRIGGERS[kind]) for kind, pats in _TOKEN_PATTERNS.items()
                        if kind in self.enabled]

    # ------------------------------------------------------------------ public API

    def could_match(self, text: str) -> bool:
        """Cheap pre-check: False means :meth:`scan` would certainly find nothing.

        Used to skip costly preparation (such as extracting the text of HTML) for the
        vast majority of parts, which hold no secret.
        """
        if not text:
            return False
        text, hay = _misdecoded_read(text, _Haystack(text))
        if not hay.gated():
            return _named_possible(hay)
        # The tests are or-ed: the one that says yes most often (prose that mentions a
        # password or an "accès") goes first, so that a yes costs fewer searches; the
        # generic detectors' words come next (a search of some 130 words that, when
        # none is there, reads the whole text at ~40 ns a byte).  ("quiet" only says
        # early that none of the tests after it can say yes.)
        anchors = hay.anchors()
        if anchors and _keyword_windows(text, hay.lower(text), anchors):
            return True
        if _generic_triggered(hay) or hay.keypad():
            return True
        if hay.quiet():
            return False
        if any(hay.test(triggers) for _, _, triggers in self._tokens):
            return True
        if hay.test(_PRIVATE_KEY_TRIGGERS + _AWS_SECRET_TRIGGERS):
            return True
        # Links are everywhere in HTML: ask for "://user:password@", not just "://".
        return bool(hay.test(_URL_TRIGGERS) and (
            _URL_USERINFO.search(text) or _URL_TOKEN_USER.search(text)))

    def scan(self, text: str) -> list[Finding]:
        """Secrets in ``text``: sorted by position, non-overlapping.

        Each finding spans the secret value only (the password, not the keyword before
        it; the password of a URL, not the user or host); a private key spans its whole
        block.  Cost is linear in ``len(text)``.
        """
        if not text:
            return []
        text, hay = _misdecoded_read(text, _Haystack(text))
        if not hay.gated():
            # (a keypad's code before its key in words needs no gate word: "taper 0412
            # puis la touche cloche"; a find of four words, most texts have none)
            then = _keypad_then_codes(text) if "password" in self.enabled else []
            return _resolve(self._named_ungated(hay, text) + then) if then else \
                self._named_ungated(hay, text)
        if "\r" in text and "\r\n" in text:     # (one byte first: a memchr)
            # mail's CRLF line ends read as LF ones (the same length: offsets unchanged);
            # the detectors are written for "\n" and would otherwise see "\r" as part of
            # a line's last cell or value
            # (every CR: a one-character replace is five times cheaper, and a lone CR in
            # a CRLF text is stray)
            text = text.replace("\r", " ")
        marked = text
        if ">" in text and "\n>" in text:
            # quoted history read as the text it quotes: the "> " marks become spaces (the
            # same length); what needs to know a line was quoted is given ``marked``
            text = _unquoted(text)
        if hay.quiet():
            quiet = [f for f in self._generic(hay, text) if f.kind in self.enabled]
            if "password" in self.enabled:
                quiet.extend(_account_values(text, hay))
                quiet.extend(_unlabelled_passwords(text, hay))
            return _resolve(_by_shape(text, _live(text, quiet) + self._named(hay, text)))
        found: list[Finding] = []
        enabled = self.enabled
        for kind, patterns, triggers in self._tokens:
            if hay.test(triggers):
                for pattern in patterns:
                    found.extend(self._token_findings(kind, pattern, text))
        if "private-key" in enabled and hay.test(_PRIVATE_KEY_TRIGGERS):
            found.extend(_private_keys(text))
        if "aws-secret-key" in enabled and hay.test(_AWS_SECRET_TRIGGERS):
            found.extend(_aws_secrets(text, hay.lower(text)))
        if {"url-credentials", "connection-string"} & enabled and hay.test(_URL_TRIGGERS):
            found.extend(f for f in _url_credentials(text) if f.kind in enabled)
        anchors = hay.anchors()
        labelled = False
        if anchors:
            lower = hay.lower(text)
            windows = _keyword_windows(text, lower, anchors)
            if windows:
                labelled = True
                found.extend(f for f in _passwords(text, lower, windows, marked)
                             if f.kind in enabled)
                if "password" in enabled and len(lower) == len(text):
                    found.extend(_key_phrases(text, lower, anchors))
            if "password" in enabled and _CELL_TAG.search(hay.folded):
                # HTML source in a text part: read its table cells as a table
                masked = _mask_markup(text)
                lower = masked.lower()
                windows = _keyword_windows(masked, lower, anchors)
                if windows:
                    found.extend(_passwords(masked, lower, windows))
        found.extend(f for f in self._generic(hay, text) if f.kind in enabled)
        if "password" in enabled:
            found.extend(_unlabelled_passwords(text, hay))
        if "api-token" in enabled and (b"secret" in hay.folded or b"priv" in hay.folded):
            lower = hay.lower(text)
            if len(lower) == len(text):
                found.extend(_secret_named_values(text, lower))
        if "password" in enabled and not labelled:
            found.extend(_account_values(text, hay))
        if "password" in enabled and b"wifi:" in hay.folded:
            found.extend(_wifi_qr(text))
        if "password" in enabled and (b"appli" in hay.folded or b"app pass" in hay.folded
                                      or b"app-pass" in hay.folded):
            found.extend(_app_passwords(text))
        live = _live(text, _join_wrapped(text, _drop_stale_history(
            text, _drop_pair_logins(text, found))))
        if live and any(f.kind == "password" for f in live):
            lower = hay.lower(text)
            if len(lower) == len(text):
                live.extend(_corrected_values(text, lower, live))
        return _resolve(_by_shape(text, live + self._named(hay, text)))

    @staticmethod
    def _generic(hay: _Haystack, text: str) -> list[Finding]:
        present, _ = hay.literals()
        if present.isdisjoint(_GENERIC_SET) and not hay.provider():
            # "les accès : marc.dubois / Epicea-77": only the login pairs may be there
            if not present.isdisjoint(_PAIR_ONLY_SET) and any(
                    sep in text for sep in _PAIR_SEPARATORS):
                return _login_pairs(text)
            return []
        return _generic_findings(hay, text)

    def _named(self, hay: _Haystack, text: str) -> list[Finding]:
        """Provider tokens named by their provider (_named_provider_tokens): a shape of
        the provider's own judged as prefixed tokens are (_own_shape_alive), the others
        by their context as every api-token is (_live: an old value, an example, the
        key half of a key/secret pair...)."""
        if "api-token" not in self.enabled or hay.literals()[0].isdisjoint(_PROVIDER_NAME_SET):
            return []
        found = _named_provider_tokens(text)
        return [f for f in found if _own_shape(text, f) and _own_shape_alive(text, f)] + \
            _live(text, [f for f in found if not _own_shape(text, f)])

    def _named_ungated(self, hay: _Haystack, text: str) -> list[Finding]:
        """The same, in a text that no other detector reads (no gate word): only a shape
        that needs no label may be there (see _PROVIDER_UNLABELLED)."""
        return _resolve(self._named(hay, text)) if _named_possible(hay) else []

    def scan_subject(self, text: str) -> list[Finding]:
        """Secrets in a Subject line (decoded, unfolded): as :meth:`scan`."""
        return self.scan(text)

    @staticmethod
    def _token_findings(kind: str, pattern: re.Pattern[str], text: str) -> list[Finding]:
        out = []
        part = "v" in pattern.groupindex     # the secret is that group, not the match
        for m in pattern.finditer(text):
            value = m.group(0)
            if kind == "openai-key" and not _mixed(value[3:]):
                continue
            if kind == "gitlab-token" and value.endswith("."):
                continue
            if part and _provider_filler(text, Finding(kind, m.start(), m.end())):
                continue            # filler in the whole ("T00000000/B00000000/XXXX...")
            out.append(Finding(kind, *(m.span("v") if part else m.span())))
        return out


# A part whose declared charset is wrong (UTF-8 declared, windows-1252 sent) reaches the
# scan with its accented letters as the bytes it could not decode: lone surrogates
# (U+DC80-U+DCFF, Python's "surrogateescape", as the milter decodes) or U+FFFD (a
# "replace" decoding).  "Cl\udce9 WPA", "R\ufffdseau" are labels all the same.
# (built with chr(): mypyc compiles no surrogate code point in a string literal)
_UNDECODED = re.compile(f"[{chr(0xDC80)}-{chr(0xDCFF)}{chr(0xFFFD)}]")


def _undecoded_table() -> dict[int, str]:
    table = {0xFFFD: "é"}
    for b in range(0x80, 0x100):
        letter = bytes([b]).decode("cp1252", "replace")
        # (cp1252's five holes: read as latin-1)
        table[0xDC00 + b] = letter if letter != "\ufffd" else chr(b)
    return table


_UNDECODED_READ = _undecoded_table()


def _misdecoded_read(text: str, hay: _Haystack) -> tuple[str, _Haystack]:
    """``text`` with its undecoded bytes read as windows-1252 letters (and U+FFFD, whose
    byte is lost, as "é": French's commonest accented letter, the one the labels hold),
    and its haystack; one code point for one, so offsets are unchanged, and a value is
    redacted by its span whatever it holds.  (b"\xed" also starts some Hangul: then
    nothing is undecoded and ``text`` is returned as it is.)  Most texts are passed back
    after a byte search: an undecoded byte is UTF-8 \\xed... (a surrogate) or \\xef\\xbf\\xbd."""
    cased = hay.cased
    if b"\xed" not in cased and (b"\xef" not in cased or b"\xef\xbf\xbd" not in cased):
        return text, hay                    # (one byte first: a memchr)
    if _UNDECODED.search(text) is None:
        return text, hay
    read = text.translate(_UNDECODED_READ)
    return read, _Haystack(read)


_QUOTE_MARKS = re.compile(r"(?m)^(?:>[ \t]?)+")


def _blank(m: re.Match[str]) -> str:
    return " " * (m.end() - m.start())


def _unquoted(text: str) -> str:
    """``text`` with the quote marks at its line starts (``_QUOTE_MARKS``) blanked; the
    usual "> " by a plain replace (a regex callback per line costs five times more)."""
    if "\n> >" in text or text.startswith("> >"):
        return _QUOTE_MARKS.sub(_blank, text)
    text = text.replace("\n> ", "\n  ")
    if text.startswith("> "):
        text = "  " + text[2:]
    if "\n>" in text or text.startswith(">"):
        text = _QUOTE_MARKS.sub(_blank, text)
    return text


def redact_spans(text: str, findings: Sequence[Finding],
                 marker: str = DEFAULT_MARKER) -> str:
    """``text`` with each finding's span replaced by ``marker`` (``{kind}`` filled in).

    ``findings`` must be sorted and non-overlapping, as :meth:`SecretScanner.scan`
    returns them; otherwise ``ValueError`` (naming positions, never values).
    """
    out: list[str] = []
    pos = 0
    for f in findings:
        if f.start < pos or f.end < f.start or f.end > len(text):
            raise ValueError(f"findings must be sorted, non-overlapping and inside the text "
                             f"(bad span {f.start}-{f.end})")
        out.append(text[pos:f.start])
        out.append(marker.format(kind=f.kind))
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------
# Overlap resolution.

def _resolve(found: list[Finding]) -> list[Finding]:
    """Keep the most specific, then longest, of overlapping findings; sort by position."""
    if len(found) <= 1:
        return found
    ranked = sorted(set(found), key=lambda f: (-_PRIORITY[f.kind], -(f.end - f.start),
                                               f.start))
    starts: list[int] = []
    kept: list[Finding] = []
    for f in ranked:
        i = bisect.bisect_right(starts, f.start)
        if i > 0 and kept[i - 1].end > f.start:
            continue
        if i < len(kept) and kept[i].start < f.end:
            continue
        starts.insert(i, f.start)
        kept.insert(i, f)
    return kept


# --------------------------------------------------------------------------------------
# Value shape helpers.

def _classes(value: str) -> int:
    lower = upper = digit = symbol = 0
    for ch in value:
        if ch.isdigit():
            digit = 1
        elif ch.isalpha():
            if ch.isupper():
                upper = 1
            else:
                lower = 1
        else:
            symbol = 1
    return lower + upper + digit + symbol


def _mixed(value: str) -> bool:
    """Letters and digits both present: what generated tokens look like."""
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _strong(value: str) -> bool:
    """Looks like a password on its own: 6+ characters, letters and digits or symbols."""
    if len(value) < 6 or len(value) > 128:
        return False
    if not any(c.isalpha() for c in value):
        return False
    return _classes(value) >= 3 or (_mixed(value) and _classes(value) >= 2 and
                                    not value.isalpha())


def _has_non_letter(value: str) -> bool:
    return any(not (c.isalpha() or c in "'’-") for c in value)


# --------------------------------------------------------------------------------------
# Private keys.

def _private_keys(text: str) -> list[Finding]:
    out: list[Finding] = []
    pos = 0
    # where each label's next END marker is: one search per label, however many BEGINs
    ends: dict[str, int] = {}
    for m in _PEM_BEGIN.finditer(text):
        if m.start() < pos:
            continue
        end_marker = f"-----END {m.group('label')}-----"
        end = ends.get(end_marker, -2)
        if end == -2 or (0 <= end < m.end()):
            end = text.find(end_marker, m.end())
            ends[end_marker] = end
        if end - m.end() > _MAX_KEY_BLOCK:
            end = -1
        if end >= 0:
            stop = end + len(end_marker)
        else:
            # Truncated paste: the block runs as long as lines look like key material.
            stop = m.end()
            nl = text.find("\n", stop, stop + 3)
            if nl >= 0:
                stop = nl + 1
                limit = min(len(text), m.end() + _MAX_KEY_BLOCK)
                while stop < limit:
                    lm = _B64_LINE.match(text, stop)
                    if not lm or lm.end() - stop < 3:
                        break
                    stop = lm.end()
                stop = len(text[:stop].rstrip())
        out.append(Finding("private-key", m.start(), stop))
        pos = stop
    for m in _PUTTY_BEGIN.finditer(text):
        em = _PUTTY_END.search(text, m.end(), m.end() + _MAX_KEY_BLOCK)
        if em:
            # a .ppk's header, comment and public lines are its public key: only the
            # private lines (and their MAC) are secret
            pm = _PUTTY_PRIVATE.search(text, m.end(), em.start())
            out.append(Finding("private-key", pm.start() if pm else m.start(), em.end()))
    return out


# --------------------------------------------------------------------------------------
# AWS secret access keys: 40 base64 characters named as such, or right next to an
# access key id.

def _aws_secrets(text: str, lower: str) -> list[Finding]:
    """(``lower``: ``text.lower()``)"""
    out = []
    if len(lower) != len(text):
        lower = ""                     # positions would not map: search everywhere
        windows = [(0, len(text))]
    else:
        windows = []
        i = lower.find("secret")
        while i >= 0:
            windows.append((max(0, i - 8), min(len(text), i + 100)))
            i = lower.find("secret", i + 6)
    last = -1
    for lo, hi in windows:
        for m in _AWS_SECRET_CONTEXT.finditer(text, max(lo, last), hi):
            last = m.end()
            if _mixed(m.group("v")):
                out.append(Finding("aws-secret-key", m.start("v"), m.end("v")))
    for m in _TOKEN_PATTERNS["aws-access-key"][0].finditer(text):
        lo, hi = max(0, m.start() - _WINDOW), min(len(text), m.end() + _WINDOW)
        for c in _AWS_SECRET_BARE.finditer(text, lo, hi):
            value = c.group(0)
            if (any(ch.isdigit() for ch in value) and any(ch.isupper() for ch in value)
                    and any(ch.islower() for ch in value)):
                out.append(Finding("aws-secret-key", c.start(), c.end()))
    return out


# --------------------------------------------------------------------------------------
# URLs with a password.

_ALNUM_RUN = re.compile(r"[A-Za-z0-9]{20,}")
_OWNED_WORD = re.compile(r"(?i)(?:votre|your|mon|my|ton)[-_]")


def _is_placeholder(value: str) -> bool:
    v = value.strip()
    if not v:
        return True
    if _PLACEHOLDER.fullmatch(v):
        # "mon_mot_de_passe", "your-token" are words; a service's key that starts with
        # such a word holds a generated run ("mon_live_7Qz2Lx9Vw4Rt8Np3Kc6Yb1Hs5Fd0JgEa")
        return not (_OWNED_WORD.match(v) is not None
                    and any(_classes(run) >= 3 for run in _ALNUM_RUN.findall(v)))
    return v.lower().strip("'\"") in {"password", "pass", "passwd", "pwd", "mdp", "secret",
                                      "motdepasse", "mot_de_passe", "mot-de-passe",
                                      "your_password", "yourpassword", "xxxxxx", "pw"}


def _url_credentials(text: str) -> list[Finding]:
    out = []
    for m in _URL_USERINFO.finditer(text):
        pw = m.group("pw")
        if _is_placeholder(pw) or _PORT_QUERY.fullmatch(pw):
            continue                      # "host:8080?next=a@b" is a port, not a password
        sm = _SCHEME_BEFORE.search(text, max(0, m.start() - 32), m.start())
        if not sm:
            continue
        scheme = sm.group("scheme").lower()
        kind = "connection-string" if scheme in _CONNECTION_SCHEMES else "url-credentials"
        if scheme.startswith("jdbc"):
            kind = "connection-string"
        out.append(Finding(kind, m.start("pw"), m.end("pw")))
    for m in _URL_TOKEN_USER.finditer(text):
        pw = m.group("pw")
        if pw and not _is_placeholder(pw) and len(pw) > 2:
            continue                      # a real password: found above
        if _entropic(m.group("user"), min_len=16) and _SCHEME_BEFORE.search(
                text, max(0, m.start() - 32), m.start()):
            out.append(Finding("url-credentials", m.start("user"), m.end("user")))
    return out


# --------------------------------------------------------------------------------------
# Passwords in prose, pairs, config lines and tables.

def _line_bounds(text: str, pos: int, limit: int) -> tuple[int, int] | None:
    """The line around ``pos`` if it is at most ``limit`` characters long, else None."""
    start = text.rfind("\n", max(0, pos - limit), pos)
    if start < 0:
        if pos > limit:
            return None
        start = -1
    end = text.find("\n", pos, pos + limit)
    if end < 0:
        if len(text) - pos > limit:
            return None
        end = len(text)
    if end - start - 1 > limit:
        return None
    return start + 1, end


def _split_cells(line: str) -> tuple[str, list[tuple[int, int]]] | None:
    """Split a table line into cell spans (relative to the line), trying usual separators."""
    for sep in ("|", "\t", ";", ","):
        if sep in line:
            spans = _cells_with(line, sep)
            if len(spans) >= 2:
                return sep, spans
    spans = _cells_with(line, "  ")
    return ("  ", spans) if len(spans) >= 2 else None


def _cells_with(line: str, sep: str) -> list[tuple[int, int]]:
    if sep == "  ":
        spans = []
        pos = 0
        for m in _TWO_SPACES.finditer(line):
            spans.append((pos, m.start()))
            pos = m.end()
        spans.append((pos, len(line)))
        return [s for s in spans if line[s[0]:s[1]].strip()]
    spans = []
    pos = 0
    for piece in line.split(sep):
        spans.append((pos, pos + len(piece)))
        pos += len(piece) + 1
    if sep == "\t":
        # aligned with several tabs: a run of tabs is one separator
        return [sp for sp in spans if sp[1] > sp[0]]
    if sep == "|":
        # markdown-style "| a | b |": drop the empty outer cells
        if spans and not line[spans[0][0]:spans[0][1]].strip():
            spans = spans[1:]
        if spans and not line[spans[-1][0]:spans[-1][1]].strip():
            spans = spans[:-1]
    return spans


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _table(text: str, kw_start: int) -> tuple[tuple[int, int], list[Finding]] | None:
    """If the keyword is a column title of a table, the header line and the column's values."""
    bounds = _line_bounds(text, kw_start, _MAX_TABLE_LINE)
    if bounds is None:
        return None
    ls, le = bounds
    line = text[ls:le].rstrip("\r")
    split = _split_cells(line)
    if split is None:
        return None
    sep, spans = split
    if sep in (",", ";") and any(len(line[a:b].split()) > 4 for a, b in spans):
        return None             # "Le mot de passe, comme je vous l'ai dit, c'est ...": a
                                # sentence with commas, not a CSV header of short titles
    network = any(_ACCESS_HEADER.fullmatch(line[a:b].strip()) for a, b in spans)
    # a column titled "key" alone ("service,account,key,created"): its cells are secrets
    # when they look generated (a long random token or a UUID), whatever the row
    keyish = {i for i, (a, b) in enumerate(spans)
              if len(spans) >= 3 and not network and _KEY_HEADER.fullmatch(line[a:b].strip())
              and not _header_cell(line[a:b].strip())}
    col = -1
    for i, (a, b) in enumerate(spans):
        if ls + a <= kw_start < ls + b and (
                _header_cell(line[a:b].strip(), network=network) or i in keyish):
            col = i
            break
    if col < 0:
        return None
    # every secret column of the header ("password" and "totp" in an export)
    cols = [i for i, (a, b) in enumerate(spans)
            if i == col or i in keyish or _header_cell(line[a:b].strip(), network=network)]
    # (empty cells aside: an indented row of HTML read as text, "| Mot de passe | X |")
    filled = [i for i, (a, b) in enumerate(spans) if line[a:b].strip()]
    if len(filled) == 2 and col == filled[0]:
        other = line[spans[filled[1]][0]:spans[filled[1]][1]].strip().lower().strip("*:# ")
        if other not in _HEADER_WORDS:
            return None          # "Mot de passe | Soleil2024": a key/value row, not a header
    findings: list[Finding] = []
    pos = le + 1
    rows = 0
    while pos < len(text) and rows < _MAX_TABLE_ROWS:
        nl = text.find("\n", pos, pos + _MAX_TABLE_LINE + 1)
        end = nl if nl >= 0 else min(len(text), pos + _MAX_TABLE_LINE + 1)
        if nl < 0 and end < len(text):
            break
        row = text[pos:end].rstrip("\r")
        if not row.strip():
            # a mail program's plain rendering of an HTML table (Outlook) puts a blank
            # line between rows: one blank line is skipped when a row follows it
            if end + 1 < len(text) and text[end + 1:end + 2] not in ("\n", "\r") and \
                    _table_row(text, end + 1, sep, col, len(spans)):
                pos = end + 1
                continue
            break
        if _MARKDOWN_RULE.fullmatch(row):
            pos = end + 1
            continue
        cells = _cells_with(row, sep)
        if len(cells) < 2 or len(cells) <= col or abs(len(cells) - len(spans)) > 1:
            break
        aligned = sep == "  " and len(cells) != len(spans)
        for c in cols:
            if aligned:
                # columns aligned with spaces: a cell that overflows its column ("Firewall
                # OPNsense 10.50.0.1", one space short of the gap) shifts the count of the
                # cells after it, not where they start: the column's cell starts where
                # its title does
                cell = next((x for x in cells if abs(x[0] - spans[c][0]) <= 1), None)
                if cell is None:
                    continue
            elif c >= len(cells):
                continue
            else:
                cell = cells[c]
            a, b = _strip_span(row, *cell)
            if b - a > 2 and row[a] in "`\"'" and row[b - 1] == row[a]:
                a, b = a + 1, b - 1         # Markdown's code span: "| `X` |"
            value = row[a:b]
            if c in keyish and not (_entropic(value, min_len=16) or _UUID.fullmatch(value)):
                continue
            if len(value) >= 3 and not _is_placeholder(value) and not any(
                    ch.isspace() for ch in value) and value[0] not in "(-" \
                    and value.lower().strip(".,;") not in _STOP_VALUES:
                findings.append(Finding("password", pos + a, pos + b))
        rows += 1
        pos = end + 1
    if rows == 0:
        return None
    return (ls, le), findings


def _table_row(text: str, pos: int, sep: str, col: int, width: int) -> bool:
    """Whether the line at ``pos`` reads as a row of a table of ``width`` columns."""
    nl = text.find("\n", pos, pos + _MAX_TABLE_LINE + 1)
    if nl < 0:
        nl = min(len(text), pos + _MAX_TABLE_LINE + 1)
    cells = _cells_with(text[pos:nl].rstrip("\r"), sep)
    return len(cells) >= 2 and len(cells) > col and abs(len(cells) - width) <= 1


def _trim_value(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop sentence punctuation and unbalanced closing brackets/quotes from a token."""
    while end > start:
        ch = text[end - 1]
        if (ch in ".,;:"
                or (ch in _CLOSERS and _CLOSERS[ch] not in text[start:end - 1])
                or (ch in "\"'" and text.count(ch, start, end) % 2 == 1)):
            end -= 1
        else:
            break
    while start < end and text[start] in "([{«“\"'" and (
            text[start] not in "([{" or ")]}"["([{".index(text[start])] not in
            text[start + 1:end]):
        start += 1
    return start, end


_CLAUSE_END = re.compile(r"[^\S\r\n]*(?:$|[\r\n.,;!?)\]»\"'/|(]|[-–—][^\S\r\n]|"
                         r"(?:mais|but|or|ou|so|donc|car|because|parce|sinon|otherwise)"
                         r"(?![^\W_])|"
                         r"(?:et|and|&|puis|then)(?![^\W_]))", re.I)
_TOKEN = re.compile(r"[^\s]{1,200}")
_TOKEN_IDENT = re.compile(r"[^\s;&]{1,200}")


# "os.environ[...]", "getenv(...)", "config.get(...)": code that reads a secret elsewhere.
_CODE_EXPRESSION = re.compile(r"[A-Za-z_][\w.]*(?:\[[\"']|\()")


# A file's path, where a setting's value would be: "hash:/etc/postfix/sasl_passwd",
# "/run/secrets/db_password", "~/.pgpass" (the file holds the secret; its name is none).
_PATH_VALUE = re.compile(r"(?:[A-Za-z]{2,10}:)?(?:~|\.{1,2})?/(?:[\w.\-]+/)*[\w.\-]+/?")


def _value_ok(value: str, *, clause_end: bool, strict: bool) -> bool:
    """Whether ``value`` is plausibly a password (not a stop word, form label, placeholder)."""
    if len(value) < 3 or len(value) > 128:
        return False
    low = value.lower()
    core = low.strip("()[]«»\"'!?")
    if (low in _STOP_VALUES or core in _STOP_VALUES or core in _NEGATIVE_QUALIFIERS
            or _is_placeholder(value)):
        return False
    if _URLISH.match(value) or _EMAIL.fullmatch(value) or _CODE_EXPRESSION.match(value) \
            or _PATH_VALUE.fullmatch(value) or ("=" in value and _QP_ESCAPES.fullmatch(value)):
        return False
    if strict:
        return _strong(value)
    if _strong(value):
        return True
    if _has_non_letter(value):
        return len(value) >= 4 or clause_end
    return clause_end


def _take_value(text: str, pos: int, limit: int, *, ident: bool) -> tuple[int, int] | None:
    """The token (or quoted string) starting at ``pos`` (after horizontal space)."""
    while pos < limit and text[pos] in " \t\xa0":
        pos += 1
    if pos >= limit:
        return None
    ch = text[pos]
    if ch in _QUOTES:
        close = text.find(_QUOTES[ch], pos + 1, min(limit, pos + 130))
        if close > pos + 1 and "\n" not in text[pos + 1:close]:
            a, b = _strip_span(text, pos + 1, close)
            return (a, b) if b > a else None
    m = (_TOKEN_IDENT if ident else _TOKEN).match(text, pos, limit)
    if not m:
        return None
    om = _NEXT_OPTION.search(text, m.start(), m.end())
    if om is not None and om.start() > m.start():
        return _trim_value(text, m.start(), om.start())  # "password=X,vers=3.0,uid=1001"
    return _trim_value(text, m.start(), m.end())


# The next option of a comma-separated list of settings (a mount's options, a DSN's
# parameters): "...,vers=3.0", ",uid=1001".
_NEXT_OPTION = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_.\-]{0,30}=)")


def _kind_for_assignment(text: str, kw_start: int) -> str:
    """password, or connection-string / url-credentials when the line is one of those."""
    lo = max(0, kw_start - _WINDOW)
    nl = text.rfind("\n", lo, kw_start)
    before = text[(nl + 1 if nl >= 0 else lo):kw_start]
    if not before:
        return "password"
    prev = before[-1]
    if prev in "?&" and _URL_SCHEME_BEFORE_QUERY.search(before):
        sm = re.search(r"(?i)(?:jdbc:)?([a-z][a-z0-9+.\-]{0,30})://", before)
        if sm and (sm.group(0).lower().startswith("jdbc:")
                   or sm.group(1).lower() in _CONNECTION_SCHEMES):
            return "connection-string"
        return "url-credentials"
    if _CONN_CONTEXT.search(before):
        return "connection-string"
    return "password"


# The alphanumeric run ending at the search's end position (the first start position
# from which one reaches it), and the one starting at a position.
_ALNUM_BEFORE = re.compile(r"[^\W_]*\Z")
_ALNUM_RUN = re.compile(r"[^\W_]*")


def _keyword_windows(text: str, lower: str,
                     anchors: list[tuple[str, bool]]) -> list[tuple[int, int]]:
    """Merged ranges of ``text`` that may hold a password keyword (found via anchors)."""
    n = len(text)
    if len(lower) != n:          # lower-casing changed lengths: positions don't map
        return [(0, n)]
    positions: list[int] = []
    for anchor, at_word in set(anchors):
        i = lower.find(anchor)
        while i >= 0:
            if (not at_word or i == 0 or not lower[i - 1].isalnum()) \
                    and _anchor_ok(lower, i, anchor):
                positions.append(i)
            i = lower.find(anchor, i + 1)
    if not positions:
        return []
    positions.sort()
    windows: list[tuple[int, int]] = []
    for p in positions:
        lo, hi = max(0, p - _ANCHOR_REACH), min(n, p + _ANCHOR_REACH)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(hi, windows[-1][1]))
        else:
            windows.append((lo, hi))
    out = []
    for lo, hi in windows:
        # widen to word boundaries so that no keyword is cut in two (by at most 20
        # characters; [^\W_] is str.isalnum: both are Unicode "alphanumeric")
        before = _ALNUM_BEFORE.search(text, max(0, lo - 20), lo)
        after = _ALNUM_RUN.match(text, hi, min(n, hi + 20))
        # both always match (the empty run at least)
        out.append((before.start() if before else lo, after.end() if after else hi))
    return out


# What may follow an anchor inside the same word ("pass" -> "password", not "passage").
_ANCHOR_TAILS: dict[str, frozenset[str]] = {
    "pass": frozenset({"", "s", "e", "es", "word", "words", "wd", "phrase", "code", "wort"}),
    "secret": frozenset({"", "s"}),
    "identifiant": frozenset({"", "s"}),
    "credential": frozenset({"", "s"}),
    "mdp": frozenset({"", "s"}),
    "pw": frozenset({"", "d", "ds"}),
    "psw": frozenset({"", "d"}),
    "pin": frozenset({""}),
    "acc\u00e8s": frozenset({""}),
    "acces": frozenset({""}),
    "creds": frozenset({""}),
    "wpa": frozenset({"", "2", "3"}),
    "wep": frozenset({""}),
    "wlan": frozenset({""}),
    "code": frozenset({""}),
    "cl\u00e9": frozenset({""}),
    "cle": frozenset({""}),
    "clef": frozenset({""}),
    "key": frozenset({""}),
    "jeton": frozenset({"", "s"}),
    "token": frozenset({"", "s"}),
    "s\u00e9same": frozenset({""}),
    "sesame": frozenset({""}),
}
_ALPHA_RUN = re.compile(r"[^\W_]{0,12}")


def _anchor_ok(lower: str, i: int, anchor: str) -> bool:
    tails = _ANCHOR_TAILS.get(anchor)
    if tails is None:
        return True
    m = _ALPHA_RUN.match(lower, i + len(anchor))
    return m is not None and m.group(0) in tails


def _keyword_matches(text: str, windows: list[tuple[int, int]], *,
                     lowered: bool) -> Iterable[re.Match[str]]:
    """The non-overlapping keyword matches in the windows, in order."""
    last = -1
    if not lowered:
        for lo, hi in windows:
            for m in _PW_KEYWORD_ANYCASE.finditer(text, max(lo, last), hi):
                last = m.end()
                yield m
        return
    # What finditer(text, lo, hi) would yield: a match can only start where
    # _KEYWORD_START does, so trying those positions in order finds the same matches.
    for lo, hi in windows:
        for start in _KEYWORD_START.finditer(text, max(lo, last), hi):
            if start.start() < last:
                continue                    # inside the previous keyword
            keyword = _PW_KEYWORD.match(text, start.start(), hi)
            if keyword is not None:
                last = keyword.end()
                yield keyword


# "Le mot de passe a été changé ... Le nouveau est : X", "the new one is X": a value
# named by "the new one" after a password label earlier in the same paragraph.
# "Je l'ai changé en Tilleul_58", "I've reset it to Winter#2025": in a text that speaks
# of a password, a value it was changed to (the label may be sentences away); it must
# look generated on its own (three classes of characters).
# (read from the literal "l'a"/"l’a" or the pronoun " it "/" them ", found by str.find:
# a regex that starts with an alternation is tried at every character)
_CHANGED_TO = re.compile(
    r"(?:l['’](?:ai|a|avons|avez|ont)[^\S\r\n]+(?:[ée]t[ée][^\S\r\n]+)?(?:chang[ée]e?s?|"
    r"modifi[ée]e?s?|remplac[ée]e?s?|r[ée]initialis[ée]e?s?|mis|remis)[^\S\r\n]+"
    r"(?:en|par|pour|à|a)"
    r"|[ ](?:it|them)(?:" + "|".join(f"(?<={verb} {pronoun})" for verb in (
        "set", "changed", "updated", "change", "put") for pronoun in ("it", "them")) +
    r")[^\S\r\n]+(?:to|as|into))"
    r"[^\S\r\n]*:?[^\S\r\n]*[«“\"']?[^\S\r\n]*(?P<v>[^\s«»“”\"']{6,64})")
_CHANGED_TO_CUES = ("l'ai ", "l\u2019ai ", "l'a ", "l\u2019a ", "l'avons ", "l'ont ", " it to ",
                    " it as ", " it into ", " them to ", " them as ")


def _changed_to_values(text: str, lower: str) -> list[Finding]:
    out: list[Finding] = []
    if len(lower) != len(text):
        return out
    for cue in _CHANGED_TO_CUES:
        i = lower.find(cue)
        while i >= 0:
            m = _CHANGED_TO.match(lower, i)
            if m is not None and (cue[0] == " " or i == 0 or not lower[i - 1].isalnum()):
                a, b = _trim_value(text, m.start("v"), m.end("v"))
                value = text[a:b]
                if _classes(value) >= 3 and _looks_secret(value) \
                        and not _MODEL_NUMBER.fullmatch(value):
                    out.append(Finding("password", a, b))
            i = lower.find(cue, i + 1)
    return out


_NEW_ONE = re.compile(
    r"(?i)(?<![^\W_])(?:le|la|l['’]|the|un|une|a|mon|ma|notre|votre|my|your|our)"
    r"[^\S\r\n]+(?:nouveau|nouvelle|new)(?:[^\S\r\n]+one)?(?![^\W_])")
_NEW_ONE_REACH = 400        # from the label, within its paragraph


def _new_one_values(text: str, lower: str, label_ends: list[int]) -> list[Finding]:
    out: list[Finding] = []
    if "nouve" not in lower and "new" not in lower:
        return out
    until = -1                      # each character read by one window at most
    for nm in _NEW_ONE.finditer(text, label_ends[0]):
        i = bisect.bisect_right(label_ends, nm.start()) - 1
        if nm.start() < until or i < 0 or nm.start() - label_ends[i] > _NEW_ONE_REACH or \
                _WINDOW_STOP.search(text, label_ends[i], nm.start()):
            continue
        out.extend(_window_values(text, nm.end(), first_only=True))
        until = nm.end() + _WINDOW_REACH
    return out


# An authentication log's phrase, not a label: "Failed password for invalid user admin",
# "Accepted password for bob" (sshd, and the programs that copy its wording).
_LOG_PHRASE_BEFORE = re.compile(r"(?i)(?<![^\W_])(?:failed|accepted|invalid|bad)[^\S\r\n]+\Z")
_LOG_PHRASE_AFTER = re.compile(r"[^\S\r\n]+for[^\S\r\n]")


# A label, an aside, then the colon that announces the value: "Passphrase, as agreed on
# the phone: …", "La phrase secrète qu'on a mise sur la borne hier soir, c'est : …".
_ASIDE_TO_COLON = re.compile(r"[^\n:.;!?]{3,120}?[^\S\n]*:(?![/\\])")
_PROSE_ASIDE = re.compile(r"[,(]?(?:[^\W_]|[^\S\n]|['’«»\"(),\-])*[^\S\n][^\W_]"
                          r"(?:[^\W_]|[^\S\n]|['’«»\"(),\-])*")     # words, no code


# After a security question's label, its answer: "j'ai mis « nom de votre premier animal »
# et la réponse c'est Caramel-Bijou", "the answer is: Ridgeway".
_ANSWER = re.compile(r"(?i)(?<![^\W_])(?:r[ée]ponse|answer)(?:[^\S\n]+[^\s:=]{1,12}){0,2}?[^\S\n]*"
                     r"(?:c['’]est|est|is|was|[:=]|->|→)[^\S\n]*:?[^\S\n]*")
_ANSWER_REACH = 200


def _security_answer(text: str, pos: int) -> Finding | None:
    limit = _window_limit(text, pos, _ANSWER_REACH)
    am = _ANSWER.search(text, pos, limit)
    if am is None:
        return None
    span = _take_value(text, am.end(), limit, ident=False)
    if span is None:
        return None
    a, b = _strip_quotes(text, *span)
    value = text[a:b]
    if not _value_ok(value, clause_end=True, strict=False) or _filler_words(value) \
            or value.lower() in _NOT_PASSPHRASE:
        return None
    return Finding("password", a, b)


def _after_aside(text: str, pos: int, keyword: str, *, verb: bool = False) -> Finding | None:
    """The value after the colon that ends an aside following a label (at ``pos``), read
    as if the label stood right before that colon (``verb``: as if a verb stood there,
    which an ambiguous label, "code", needs to take a value of letters and digits)."""
    am = _ASIDE_TO_COLON.match(text, pos)
    if am is None:
        return None
    aside = text[pos:am.end() - 1]
    if not _PROSE_ASIDE.fullmatch(aside) or _PW_KEYWORD_ANYCASE.search(aside) or any(
            w.strip("(),'’").lower() in _NEGATIVE_QUALIFIERS and w.lower() != "mise"
            for w in aside.split()):            # ("qu'on a mise sur la borne": no "mise à jour")
        return None                 # another label, an address, "oublié", "ne … pas"
    colon = am.end() - 1
    if verb and not _key_label_ok(text, max(0, pos - len(keyword)), colon):
        return None                 # "Code d'erreur : 017-B09", "code client : 00472"
    line_end = text.find("\n", colon)
    if not text[colon + 1:line_end if line_end >= 0 else len(text)].strip():
        # the value on the next line: a passphrase of words read here ("La phrase secrète
        # qu'on a mise sur la borne, c'est :" then "les coulisses sentent la poussière
        # 42"), a blank line between them as after a label; a token, the label's window
        # reads it
        nl2 = text.find("\n", line_end + 1, line_end + 201) if line_end >= 0 else -1
        nxt = text[line_end + 1:nl2 if nl2 >= 0 else min(len(text), line_end + 201)]
        if not nxt.strip() and nl2 >= 0:
            nl3 = text.find("\n", nl2 + 1, nl2 + 201)
            nxt = text[nl2 + 1:nl3 if nl3 >= 0 else min(len(text), nl2 + 201)]
        if line_end < 0 or not (_word_passphrase(nxt.strip()) or (
                keyword.startswith(("passphrase", "phrase")) and _phrase_line(nxt.strip()))):
            return None
    head = keyword + (" est" if verb else "")
    synthetic = head + text[colon + verb:min(len(text), colon + 300)]
    m2 = _PW_KEYWORD_ANYCASE.match(synthetic)
    if m2 is None or m2.end() != len(keyword):
        return None
    found = _password_after(synthetic, m2, m2.lastgroup or "kw", keyword, len(synthetic))
    if found is None:
        return None
    shift = colon + verb - len(head)
    return Finding(found.kind, found.start + shift, found.end + shift)


def _passwords(text: str, lower: str, windows: list[tuple[int, int]],
               marked: str | None = None) -> list[Finding]:
    """Password values after (or before) their labels; ``marked`` is ``text`` with its
    quote marks ("> ") when the scan blanked them."""
    out: list[Finding] = []
    label_ends: list[int] = []      # of the password labels, for _new_one_values
    open_ends: list[int] = []       # ... of those no value followed, for _joined_values
    labels: list[tuple[int, int]] = []      # where keywords are, for _strong_values
    header_lines: list[tuple[int, int]] = []
    table_until = -1
    window_until = -1
    skey_until = -1                 # "clé secrète" windows: their own, one at a time
    n = len(text)
    lowered = len(lower) == n
    for m in _keyword_matches(lower if lowered else text, windows, lowered=lowered):
        start = m.start()
        if start < table_until:
            continue
        if header_lines and header_lines[-1][0] <= start < header_lines[-1][1]:
            continue
        if _binary_line(text, start):
            continue                    # "-PW_...:" inside uuencoded data is no label
        group = m.lastgroup or "kw"
        keyword = m.group(0).lower()
        if group == "kw" and keyword.startswith("code") and _code_for_product(text, start,
                                                                            m.end()):
            continue                    # "Code d'activation de la licence : ..."
        if not labels or labels[-1][1] + _STRONG_REACH < start:
            labels.append((start, m.end()))
        else:
            labels[-1] = (labels[-1][0], m.end())
        if group in ("kw", "wifi", "pair") and keyword not in _WEAK_KEYWORDS:
            label_ends.append(m.end())
        if group in ("kw", "wifi", "pair", "key"):
            # in "login,mot de passe" (a pair) the column title is the last word
            table = _table(text, m.end() - 1 if group == "pair" else start)
            if table is not None:
                (hs, he), rows = table
                header_lines.append((hs, he))
                out.extend(rows)
                table_until = rows[-1].end if rows else he
                continue
        if group == "skey" and "secr" not in keyword and not _key_label_ok(text, start, m.end()):
            group = "key"               # "API key (client id):" is no secret's label
        if group in ("tok", "skey"):
            # "le jeton que j'ai créé c'est X": a generated value, hex included; after
            # "clé secrète", "secret key", "API key" a UUID too (Scaleway's are), and
            # even inside the window of a label before it ("Clé d'accès : ...")
            if m.end() >= window_until or (group == "skey" and m.end() >= skey_until):
                pos = m.end() + (group == "skey"       # «"API key" of X»
                                 and text[m.end():m.end() + 1] in ("\"", "'", "»", "”"))
                values = _window_values(text, pos, first_only=False, token=True,
                                        uuid=group == "skey")
                if group == "skey":
                    skey_until = min(n, pos + _WINDOW_REACH)
                out.extend(values)
                window_until = max(window_until, values[-1].end if values else
                                   min(n, m.end() + _WINDOW_REACH))
            continue
        if keyword == "code" and start >= 12 and text[start - 1] in " \t":
            otp = _one_time_code_before(text, start)    # "G-123456 is your ... code"
            if otp is not None:
                out.append(otp)
                continue
        if group in ("kw", "wifi", "key") and not (
                header_lines and header_lines[-1][1] > start) and (
                group != "key" or _key_label_ok(text, start, m.end())):
            # "Biscotte38, c'est le nouveau mot de passe": the value before its label
            before = _value_before(text, start)
            if before is not None:
                out.append(before)
        if _LOG_PHRASE_BEFORE.search(text, max(0, start - 12), start) and \
                _LOG_PHRASE_AFTER.match(text, m.end()):
            continue                    # sshd: "Failed password for root from ..."
        finding = _password_after(text, m, group, keyword, n)
        if finding is None and "question" in keyword:
            finding = _security_answer(text, m.end())
        if finding is None and group in ("kw", "wifi") and keyword not in _WEAK_KEYWORDS:
            finding = _after_aside(text, m.end(), keyword)
        elif finding is None and group == "key" and keyword == "code":
            finding = _after_aside(text, m.end(), keyword, verb=True)
        if finding is None and group in ("kw", "wifi") and keyword not in _WEAK_KEYWORDS:
            finding = _wide_framed_value(text, m.end())
        if finding is None and group in ("kw", "wifi") and keyword not in _WEAK_KEYWORDS:
            open_ends.append(m.end())
        if finding is not None:
            out.append(finding)
            out.extend(_alternatives(text, finding.end))
            window_until = max(window_until, out[-1].end)
        elif group in ("kw", "wifi", "pair", "key") and m.end() >= window_until and (
                group != "key" or _key_label_ok(text, start, m.end())) and not (
                _config_key(text, start, m.end())):
            # each character is read by one window at most: linear on keyword floods
            first_only = group == "kw" and keyword in _WEAK_KEYWORDS
            values = _window_values(text, m.end(), first_only=first_only,
                                    strict=group == "key")
            if first_only and not values and keyword == "secret":
                # "le secret paypal X", "the secret admin X": a word that says whose
                # secret it is, then a generated value (a token's shape, nothing less)
                qm = _SECRET_QUALIFIER.match(text, m.end())
                if qm is not None:
                    values = _window_values(text, qm.end(), first_only=True, token=True)
            out.extend(values)
            # (a weak label's window stops at its first word: a label after it is read)
            window_until = (values[-1].end if values else m.end()) if first_only else \
                min(n, m.end() + _WINDOW_REACH)
    if label_ends:
        out.extend(_new_one_values(text, lower, label_ends))
        out.extend(_changed_to_values(text, lower))
        if open_ends:
            out.extend(_joined_values(text, lower, open_ends))
    if lowered:
        # a network's key may stand near "Wi-Fi" alone: "Wi-Fi for Thursday (GH-Event /
        # Radish-Rain-12)"
        for word in ("wifi", "wi-fi"):
            i = lower.find(word)
            while i >= 0 and len(labels) < 64:
                labels.append((i, i + len(word)))
                i = lower.find(word, i + 1)
        labels.sort()
    quoted = marked if marked is not None else text
    if labels and "\n>" in quoted:
        labels = _quoted_labels_reach_reply(quoted, labels)
    if labels and ("-----" in text or "crit" in text or "wrote" in text):
        labels = _history_labels_reach_reply(text, labels)
    if labels:
        out.extend(_strong_values(text, labels))
    return out


# A value framed by wide spaces after its label and a separator ("c'est :  X  sans les
# espaces", "is   X   (with the spaces)"): whoever fears that the reader takes a word
# around it, or a space in it, for part of it or not, sets it apart with two spaces or
# more on each side (or the line's end).  The frame, not the words, says where it starts
# and ends, so it may hold spaces; it must still read as a password on its own (a digit
# or a symbol among several words, or a strong value).
_WIDE_FRAMED = re.compile(r"[ \t]{2,}(?P<v>[^\s(«\"'](?:\S| (?=\S)){1,60})"
                          r"(?=[ \t]{2,}|[ \t]*(?:\n|\Z))")
_WIDE_LEAD = re.compile(r"(?i)(?:[:=→]|(?<![^\W_])(?:c['’\s]?est|est|is|sont|are))\Z")


def _wide_framed_value(text: str, pos: int) -> Finding | None:
    limit = min(len(text), pos + 160)
    nl = text.find("\n", pos, limit)
    line_end = nl if nl >= 0 else limit
    fm = _WIDE_FRAMED.search(text, pos, line_end)
    if fm is None or fm.start() - pos > 60:
        return None
    if not _WIDE_LEAD.search(text, pos, fm.start()) or "  " in text[pos:fm.start()]:
        return None                     # the separator right before the frame, one frame
    a, b = fm.span("v")
    value = text[a:b]
    words = value.split()
    if _is_placeholder(value) or _DECOY_SHAPE.fullmatch(value.replace(" ", "")) or any(
            w.lower() in _NEGATIVE_QUALIFIERS for w in words):
        return None
    if len(words) > 1 and (any(w.lower() in _NOT_PASSPHRASE for w in words)
                           or _REFERENCE_PHRASE.match(value) is not None):
        return None                     # "voir avec Paul", "see ticket 4521"
    if len(words) > 1 and _named_by([w.lower() for w in words[:-1]]):
        return None                     # "ticket 4521", "dossier n° 88"
    if _passphrase(value) or (len(words) == 1 and _strong(value)):
        return Finding("password", a, b)
    return None


# Where the history of a reply starts: Outlook's "-----Original Message-----" (and its
# French form), a forward's banner, a quote's "On ... wrote:" / "Le ... a écrit :" line.
_REPLY_HISTORY = re.compile(
    r"(?i)[^\S\n]*(?:-{3,}[^\S\n]*(?:original[^\S\n]+message|message[^\S\n]+d['’]origine|"
    r"(?:forwarded|transf[ée]r[ée])[^\S\n]+message|message[^\S\n]+transf[ée]r[ée])|"
    r"(?:le|on)[^\S\n][^\n]{5,160}?(?:a[^\S\n]+[ée]crit|wrote)[^\S\n]*:)")
# (looked for from these literals, then matched at their line's start)
_REPLY_HISTORY_CUES = ("-----", "crit", "wrote")


def _reply_history_start(text: str, end: int) -> int:
    """Where the first reply history before ``end`` starts (see above), or -1."""
    first = -1
    for cue in _REPLY_HISTORY_CUES:
        i = text.find(cue, 0, end)
        while i >= 0 and (first < 0 or i < first):
            bol = text.rfind("\n", 0, i) + 1
            if _REPLY_HISTORY.match(text, bol, min(len(text), bol + 200)) is not None:
                first = bol
                break
            i = text.find(cue, i + len(cue), end)
    return first


# A password dictated in words, then written as it is typed: "c'est vélo rouge 44 tout
# attaché, donc velorouge44", "it's blue harbour 7, all one word: blueharbour7".  The
# cue "written together" names the token after it, within reach of a password label.
_JOINED_CUE = re.compile(
    r"(?i)(?<![^\W_])(?:tout[^\S\n]+attach[ée]e?s?|tout[^\S\n]+coll[ée]e?s?|attach[ée]e?s?|"
    r"en[^\S\n]+un[^\S\n]+(?:seul[^\S\n]+)?mot|sans[^\S\n]+(?:les[^\S\n]+)?espaces?|"
    r"all[^\S\n]+(?:in[^\S\n]+)?one[^\S\n]+word|(?:with[^\S\n]+)?no[^\S\n]+spaces?|"
    r"without[^\S\n]+(?:the[^\S\n]+)?spaces?)(?![^\W_])[^\S\n]*[,:(]?[^\S\n]*"
    r"(?:(?:donc|so|soit|i\.e\.|c['’]est-[àa]-dire|that[^\S\n]+is|ce[^\S\n]+qui[^\S\n]+donne|"
    r"which[^\S\n]+gives)(?![^\W_]))?[^\S\n]*[:,]?[^\S\n]*[«“\"']?[^\S\n]*"
    r"(?P<v>[^\s«»“”\"'.,;:()]{4,64})")
_JOINED_REACH = 160


def _joined_values(text: str, lower: str, label_ends: list[int]) -> list[Finding]:
    out: list[Finding] = []
    until = -1
    n = len(text)
    for end in label_ends:
        lo = max(end, until)
        cue_end = min(n, end + _JOINED_REACH - 30)
        if lo >= cue_end or len(lower) != n or (
                lower.find("attach", lo, cue_end) < 0 and lower.find("space", lo, cue_end) < 0
                and lower.find(" mot", lo, cue_end) < 0 and lower.find("word", lo, cue_end) < 0
                and lower.find("tout coll", lo, cue_end) < 0):
            continue                    # (most windows hold no cue: literal finds first)
        hi = _window_limit(text, end, _JOINED_REACH)
        if lo >= hi:
            continue
        until = hi
        for m in _JOINED_CUE.finditer(text, lo, hi):
            a, b = _trim_value(text, m.start("v"), m.end("v"))
            value = text[a:b]
            if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) \
                    and _value_ok(value, clause_end=True, strict=False) \
                    and not _DECOY_SHAPE.fullmatch(value):
                out.append(Finding("password", a, b))
    return out


def _history_labels_reach_reply(text: str,
                                labels: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A label in the history below a reply ("What's the new password?" under
    "-----Original Message-----") also reaches the reply's last lines above it ("New one
    is X"): a window is added where the history starts, as for a quoted question."""
    start = _reply_history_start(text, labels[-1][0])
    if start <= 0 or all(lo < start for lo, _ in labels):
        return labels
    return sorted({*labels, (start, start)})


def _quoted_labels_reach_reply(text: str, labels: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A label in a quoted question ("> Avez-vous changé le mot de passe ?") also reaches
    the reply written above the quote ("Oui, le nouveau est X"): a window is added where
    the quoted block starts."""
    extra = []
    for lo, _ in labels:
        ls = text.rfind("\n", 0, lo) + 1
        if not text[ls:lo].lstrip(" \t").startswith(">"):
            continue
        qs = ls
        for _ in range(40):             # up to the first line of the quoted block
            prev = text.rfind("\n", 0, max(0, qs - 1)) + 1
            if qs == 0 or not text[prev:qs].lstrip(" \t").startswith(">"):
                break
            qs = prev
        extra.append((qs, qs))
    return sorted(set(labels + extra)) if extra else labels


_GLUE = "_-#!@$%&*+.=~^"
_TIME_LIKE = re.compile(r"\d{1,2}[hH:]\d{2}(?:[:hH]\d{2})?[.,;]?")
_NEXT_TOKEN = re.compile(r"\r?\n[ \t>]*(?P<t>[^\s]{2,64})")


def _wrapped_value(text: str, a: int, b: int, line_end: int) -> tuple[int, int]:
    """A value the mail program cut at the end of a line ("le mdp c est Mimosa\n_Jaune_58
    tout attaché", "VeloClub#\nPrintemps9"): when the value ends its line and the two
    pieces are glued by a symbol (the first ends with one, the next starts with one), the
    value goes on to the end of the next line's first token."""
    if b != line_end and text[b:line_end].strip():
        return a, b
    nm = _NEXT_TOKEN.match(text, line_end)
    if nm is None or b <= a:
        return a, b
    token = nm.group("t")
    if token[0] in "-.>" or _URLISH.match(token) or not _mixed(token) or any(
            c in token for c in "@=:/"):        # an address, a setting, a path
        return a, b
    if _DECOY_SHAPE.fullmatch(token.rstrip(".,;")) or _TIME_LIKE.fullmatch(token):
        return a, b                             # "10h30", "v2.1" on the next line

    if token[0] not in _GLUE:
        # "VeloClub#" then "Printemps9": the first piece ends with a symbol and the
        # second stands alone on its line
        eol = text.find("\n", nm.end(), nm.end() + 200)
        if text[b - 1] not in _GLUE or text[nm.end():eol if eol >= 0 else len(text)].strip():
            return a, b
    ta, tb = _trim_value(text, nm.start("t"), nm.end("t"))
    return (a, tb) if tb > ta else (a, b)


def _join_wrapped(text: str, found: list[Finding]) -> list[Finding]:
    """A password found at the start of a line whose previous line is one token glued to
    it by a symbol ("VeloClub#" then "Printemps9"), under a line ending with a colon: the
    token is the first half of the same value."""
    out = []
    for f in found:
        if f.kind == "password" and f.start > 2 and text[f.start - 1] == "\n":
            ps = text.rfind("\n", max(0, f.start - 66), f.start - 1)
            prev = text[ps + 1:f.start - 1].rstrip("\r ")
            if ps > 0 and prev and " " not in prev.strip() and prev[-1] in _GLUE \
                    and any(c.isalpha() for c in prev) and \
                    text[:ps].rstrip(" \t\r").endswith(":"):
                f = Finding(f.kind, ps + 1 + len(prev) - len(prev.lstrip()), f.end)
        out.append(f)
    return out


def _config_key(text: str, start: int, end: int) -> bool:
    """Whether the label is (part of) a setting's name ("MYSQL_PASSWORD:", "db.pass="):
    its value is right after it or nowhere; a prose window would read the next settings."""
    if start > 0 and text[start - 1] in "_.-" and text[start - 2:start - 1].isalnum():
        return True
    return bool(end < len(text) and text[end] in "_.-" and text[end + 1:end + 2].isalnum())


# "X, c'est le mot de passe", "X is the new password", "X = mdp du wifi": a copula then a
# determiner (and an adjective) between the value and its label.
_VALUE_BEFORE = re.compile(r"""(?ix)
(?<![^\s(«"'“])(?P<v>[^\s,;:()«»"'“”<]{4,64})[^\S\r\n]?["'»”]?[^\S\r\n]*,?[^\S\r\n]*
(?:(?:<-|<=|←|<)[^\S\r\n]*)?
# a separator and a presentative before the verb: "X » : voilà, c'est le", "X → c'est le",
# "X -- that's the"
(?:(?:[:→—–]|->|--|-)[^\S\r\n]*(?:(?:voil[àa]|voici|donc|alors|bref|ok|okay|so|yes|oui)
   [^\S\r\n]*,?[^\S\r\n]*)?(?=c|ç|t|i|e|w))?
(?:(?:ça|ca|ce|this|that|it)[^\S\r\n]*)?
(?:c(?:['’]\s?|\s)est|est|is|['’]s|was|will\s+be|sera|ce\s+sera|[:=]|->|→|comme|as)[^\S\r\n]+
(?:(?:le|la|l['’]|the|my|mon|ma|notre|our|votre|your|son|sa|his|her|their|leur|ton|ta)
   [^\S\r\n]*)?
(?:(?:nouveau|nouvelle|new|actuel|actuelle|current|bon|bonne|vrai|right|temporary|
   temporaire|provisoire|fameux|fameuse)[^\S\r\n]+)?\Z""")


# ... or between the verb and the label: "on m'a dit que c'est Ecole44 le mot de passe"
_VALUE_BETWEEN = re.compile(r"(?i)(?<![^\W_])(?:c['’]est|it['’]s)[^\S\r\n]+"
                            r"(?P<v>[^\s,;:()«»\"'“”<]{4,64})[^\S\r\n]+"
                            r"(?:le|la|l['’]|the|mon|ma|my|notre|our)[^\S\r\n]*\Z")


# the last word _VALUE_BEFORE lets stand right before a label (checked first: cheap)
_BEFORE_LABEL_WORDS = _words("""
le la l' l’ the my mon ma notre our votre your son sa his her their leur ton ta nouveau
nouvelle new actuel actuelle current bon bonne vrai right temporary temporaire provisoire
fameux fameuse c'est c’est est is was be sera : = -> → comme as
""")


# Where a password is kept, not what it is: "the DB password from 1Password", "le mot de
# passe dans KeePass".
_SOURCE_WORDS = _words("from in into inside within via using dans depuis avec with")


# A one-time code's message, as a provider's SMS words it: "G-482913 is your Google
# verification code", "731902 is your Acme sign-in code" (the code before "is your", a
# provider's name or two and what the code is for before "code").  Not "FR-2231 is your
# order code", "A12 is your seat code": the word before "code" must name a login.
_ONE_TIME_CODE_BEFORE = re.compile(
    r"(?i)(?<![^\s\"'«“(])(?P<v>(?:[A-Z]-)?\d{4,8}|\d{3}[- ]\d{3})[^\S\n]+(?:is|are)"
    r"[^\S\n]+your[^\S\n]+(?:[A-Z][\w.\-]{1,20}[^\S\n]+){0,2}(?:account[^\S\n]+)?"
    r"(?:verification|security|login|log-in|sign-in|signin|one-time|authentication|2fa|"
    r"confirmation|access)[^\S\n]+\Z")


def _one_time_code_before(text: str, kw_start: int) -> Finding | None:
    lo = max(0, kw_start - 90, text.rfind("\n", max(0, kw_start - 90), kw_start) + 1)
    vm = _ONE_TIME_CODE_BEFORE.search(text, lo, kw_start)
    return None if vm is None else Finding("password", vm.start("v"), vm.end("v"))


def _value_before(text: str, kw_start: int) -> Finding | None:
    lo = max(0, kw_start - 100, text.rfind("\n", max(0, kw_start - 100), kw_start) + 1)
    last = text[max(lo, kw_start - 24):kw_start].split()
    word = last[-1].lower() if last else ""
    if not (word in _BEFORE_LABEL_WORDS or word.endswith(("'s", "’s", ":", "=", "'", "’"))):
        return None
    vm = _VALUE_BEFORE.search(text, lo, kw_start) or _VALUE_BETWEEN.search(text, lo, kw_start)
    if vm is None:
        return None
    a, b = _trim_value(text, vm.start("v"), vm.end("v"))
    value = text[a:b]
    if not (_mixed(value) and _looks_secret(value)) or _HEX_RUN.fullmatch(value):
        return None
    words = [_recent_word(w) for w in text[lo:a].split()[-4:]]
    return None if _named_by(words) else Finding("password", a, b)


_CLOSE_INLINE_TAG = re.compile(r"(?i)</(?:b|strong|em|i|span|u|font|label|th|td)>")
_INLINE_TAG = re.compile(r"(?i)<(?:code|b|strong|em|i|span|tt|kbd|samp|font)(?:\s[^<>]{0,200})?>")


_TAG_ATTRIBUTES = re.compile(r"""(?:[ \t]+[A-Za-z_:][\w:.\-]{0,40}[ \t]*=[ \t]*"""
                             r"""(?:"[^"<>\n]{0,200}"|'[^'<>\n]{0,200}')){1,8}[ \t]*(?=>)""")


# A state that, after "for the", "du", "of the" in a label's qualifiers, describes the
# thing the password opens ("the passphrase for the encrypted drive is:", « le mot de
# passe du volume chiffré : »), not the password ("mot de passe chiffré", "password
# encrypted with bcrypt" still say no value follows).
_OBJECT_STATE = _words("""
encrypted chiffré chiffrée chiffrés chiffrées protected protégé protégée protégés
protégées sécurisé sécurisée securise
""")
_OBJECT_OF = _words("for of du de des pour to")


def _password_after(text: str, m: re.Match[str], group: str, keyword: str,
                    n: int) -> Finding | None:
    start, pos = m.start(), m.end()
    opened = text.rfind("${", max(0, start - 64), start)
    if opened >= 0 and text.rfind("}", opened, start) < 0:
        return None                         # inside "${NAME:-default}": a reference
    limit = min(n, pos + _WINDOW)
    nl = text.find("\n", pos, limit)
    line_end = nl if nl >= 0 else limit
    weak = (group == "kw" and keyword in _WEAK_KEYWORDS) or group == "key"
    pin = group == "kw" and keyword.startswith("pin")
    if group == "key" and not _key_label_ok(text, start, pos):
        return None
    if group == "creds" and keyword.startswith("acc") and not _COLON.match(text, pos, limit):
        return None                         # "accès" alone is ordinary prose

    # <password>value</password> (not HTML's <code> element: it holds any code or name),
    # with attributes too: FileZilla's <Pass encoding="base64">, whose base64 is the
    # password all the same (anyone decodes it)
    tag_end = -1
    if start > 0 and text[start - 1] == "<":
        if text.startswith(">", pos):
            tag_end = pos
        elif text[pos:pos + 1] in (" ", "\t"):
            am = _TAG_ATTRIBUTES.match(text, pos, line_end)
            tag_end = am.end() if am is not None else -1
    if tag_end >= 0:
        if keyword == "code":
            return None
        close = text.find("<", tag_end + 1, line_end)
        if close > tag_end + 1:
            a, b = _strip_span(text, tag_end + 1, close)
            if group == "key" and not _keylike(text[a:b]):
                return None         # KeePass's and a plist's <Key>Title</Key>: a field's name
            if _value_ok(text[a:b], clause_end=True, strict=False):
                return Finding(_kind_for_assignment(text, start - 1), a, b)
        return None

    # "DB_PASSWORD=...", "spring.datasource.password: ..." — identifier forms
    ident = (start > 0 and text[start - 1] in "_.-") or bool(
        pos < n and text[pos] in "_.-")
    if pos < n and text[pos] in "_.-":
        sm = _IDENT_SUFFIX.match(text, pos, line_end)
        if not sm:
            return None
        parts = re.split(r"[_.\-]", sm.group("suffix").lower())
        if any(p in _BAD_IDENT_SUFFIX for p in parts if p):
            return None
        pos = sm.end()

    if text.startswith("</", pos):
        cm = _CLOSE_INLINE_TAG.match(text, pos, line_end)
        if cm is not None:
            pos = cm.end()                  # HTML source: "<b>mot de passe</b> : X"
    # qualifiers between the keyword and the separator ("du wifi", "de mon compte")
    qualifiers = 0
    prev = ""
    sep: re.Match[str] | None = None
    wrapped_at = wrap_end = -1
    plain = True
    quals: list[str] = []           # the qualifiers read, as _named_by reads words
    while True:
        sep = _SEP.match(text, pos, line_end)
        if sep and (sep.group("punct") or sep.group("verb") or sep.group("changed")):
            break
        if sep and "\t" in sep.group("ws") and sep.end() < line_end:
            break                                   # "Mot de passe<TAB>value"
        if sep is None and qualifiers == 0 and group in ("kw", "wifi") and not weak \
                and not ident and _LINE_START.search(text, max(0, start - 8), start):
            # aligned columns, spaces for a tab: "passcode  sunflower-lattice" under
            # "network   GH-Guest" (the label starts its line, a gap of 2+ spaces)
            sep = _GAP_SEP.match(text, pos, line_end)
            if sep is not None:
                break
        sep = None
        if ident:
            return None
        wm = (_WORD_WRAPPED if pos == wrapped_at else _WORD).match(text, pos, line_end)
        if not wm:
            if not text[pos:line_end].strip():
                if qualifiers and wrapped_at < 0 and plain and \
                        _soft_wrap(text, start, line_end):
                    # "la phrase de passe du coffre\nKeePass du service : X": the words
                    # that qualify the label go on after the mail program's line wrap
                    # (words only: a value must then come after a separator)
                    wrap_end = line_end
                    wrapped_at = pos = line_end + 1
                    nl = text.find("\n", pos, pos + _WINDOW)
                    line_end = nl if nl >= 0 else min(n, pos + _WINDOW)
                    continue
                return _wrapped_after_label(text, start, line_end, group, weak, qualifiers)
            return None
        word = wm.group("w")
        if not word.strip(".,;()«»\"'’").replace("'", "").replace("’", "").replace(
                "-", "").isalpha():
            if wrapped_at >= 0:
                return _wrapped_after_label(text, start, wrap_end, group, weak, qualifiers)
            plain = False           # (a label qualified by a value-like word is not
                                    # continued after a line break)
        if word.startswith("(") and qualifiers and group in ("kw", "wifi"):
            close = text.find(")", wm.start("w"), min(line_end, wm.start("w") + 80))
            if close < 0 and text.startswith("\n", line_end):
                # the aside goes on after a line wrap: "(à donner à l'opérateur\nau
                # téléphone) : X" (one wrap; no other bracket opened in it)
                nl = text.find("\n", line_end + 1, line_end + 81)
                next_end = nl if nl >= 0 else min(n, line_end + 81)
                close = text.find(")", line_end + 1, next_end)
                if close > 0 and "(" not in text[line_end + 1:close] \
                        and text[line_end + 1:close].strip():
                    line_end = next_end
                else:
                    close = -1
            if close > 0:           # "la clé wifi du local (box Orange, SSID X) : value"
                qualifiers += 1
                pos = close + 1
                continue
        low = word.lower().strip("().,;!?\"'«»")
        if (low in _NEGATIVE_QUALIFIERS and not (low in _OBJECT_STATE and quals
                                                 and not _OBJECT_OF.isdisjoint(quals))) \
                or low.split("'")[0] in ("n", "ne"):
            return None
        if (group != "creds" and qualifiers <= 3 and not weak and not pin
                and prev not in _SOURCE_WORDS and _ACCOUNT_NAMED.isdisjoint(quals[-2:])
                and _strong(word.rstrip(".,;")) and not _URLISH.match(word)
                and word[0] not in "([{" and _looks_secret(word.rstrip(".,;!?"))):
            a, b = _trim_value(text, wm.start("w"), wm.end("w"))
            if _value_ok(text[a:b], clause_end=False, strict=True):
                return Finding("password", a, b)    # "mdp wifi Soleil2024!"
            return None
        if group == "key" and qualifiers == 0:
            a, b = _trim_value(text, wm.start("w"), wm.end("w"))
            return Finding("password", a, b) if _keylike(text[a:b]) else None
        if word[-1:] == "," and len(word) > 1 and qualifiers < 8 and not weak:
            vm = _SEP.match(text, wm.end() - 1, line_end)
            if vm is not None and vm.group("verb") and "," in vm.group("ws"):
                # "le sésame pour la porte côté parking, c'est le 4829B": the comma
                # before the verb ends the qualifiers
                qualifiers += 1
                prev = low
                quals.append(_recent_word(word))
                pos = wm.end() - 1
                continue
        if word[-1:] in ".,;!?" or qualifiers >= 8 or wm.end() - m.end() > 80:
            return None
        if group in ("pair", "creds") and qualifiers >= 3:
            return None
        if group == "wifi" and qualifiers >= 5:
            return None
        if weak:
            return None
        qualifiers += 1
        prev = low
        quals.append(_recent_word(word))
        pos = wm.end()

    vpos = sep.end()
    tag = vpos
    while tag < line_end and text[tag] in " \t":
        tag += 1
    if text.startswith("<", tag):
        im = _INLINE_TAG.match(text, tag, line_end)
        if im is not None:                  # HTML source: "mot de passe</b> : <code>X"
            vpos = im.end()
            close = text.find("</", vpos, line_end)
            if close > vpos:
                line_end = close
    if text.startswith("//", vpos) and sep.group("punct") == ":":
        return None                         # "sur le site https://…": a link's scheme
    # (a setting's name then a verb is prose about the setting, read as prose: "DB_PASSWORD
    # is read from the keyring", "SMTP_PASSWORD is kept in the vault" name no value;
    # "DB_PASSWORD is Tq7-Wm2x" still gives one)
    ident_assign = (ident and not sep.group("verb")) or (
        sep.group("punct") in ("=", ":=") and not sep.group("ws")
        and start > 0 and not text[start - 1].isspace())
    # value on the next line: "Mot de passe :\n  Soleil2024"
    rest = text[vpos:line_end]
    if not rest.strip():
        if not sep.group("punct") and not sep.group("verb"):
            return None
        if ident_assign or text.startswith(("=", ":="), sep.start("punct") or vpos):
            return None                 # "MAIL_PASSWORD=" left empty: the next line is
                                        # another setting, not its value
        nxt = line_end + 1
        if nxt >= n:
            return None
        nl2 = text.find("\n", nxt, nxt + 200)
        nxt_end = nl2 if nl2 >= 0 else min(n, nxt + 200)
        line = text[nxt:nxt_end]
        blank = not line.strip() and nl2 >= 0 and sep.group(0).rstrip().endswith(":")
        if blank:
            # "... est :" then a blank line, then the value alone on its line: a pass
            # phrase, or a value strong on its own (not "Enter your password:" over a
            # blank line and a signature)
            nxt = nl2 + 1
            nl2 = text.find("\n", nxt, nxt + 200)
            nxt_end = nl2 if nl2 >= 0 else min(n, nxt + 200)
            line = text[nxt:nxt_end]
        if group in ("kw", "wifi") and not weak and (_word_passphrase(line.strip()) or (
                keyword.startswith(("passphrase", "phrase")) and _phrase_line(line.strip()))):
            return Finding("password", *_strip_span(text, nxt, nxt_end))
        if not line.strip():
            return None
        if len(line.split()) == 1:
            if line.count(":") >= 2:
                return None             # (two colons: a record, "host:port:db:user:pw")
            a, b = _strip_span(text, nxt, nxt_end)
            a, b = _trim_value(text, a, b)
            value = text[a:b]
            if _value_ok(value, clause_end=True,
                         strict=blank or (weak and not _login_context(text, start))):
                return Finding("password", a, b)
            return None
        if blank or not _wrapped_after_sep(text, start, line_end, sep):
            return None
        # a sentence that the mail program wrapped after its verb or colon ("la clé
        # c'est\ntournesol2025 (tout en minuscules)"): its next line goes on as the
        # label's own line would
        vpos = nxt + len(line) - len(line.lstrip(" \t>"))
        line_end = nxt_end
        wrapped_at = nxt

    span = _take_value(text, vpos, line_end, ident=ident_assign)
    if span is None:
        return None
    a, b = _wrapped_value(text, *span, line_end)
    if ")" in text[a:b]:
        b = _paren_close(text, start, a, b)
    if sep.group("verb") and text[a:b].lower() in ("le", "la", "the"):
        # "le sésame pour la porte, c'est le 4829B": an article before a code
        cm = _ARTICLE_CODE.match(text, b, line_end)
        if cm is not None and not _code_decoy(cm.group("v")):
            return Finding("password", cm.start("v"), cm.end("v"))
    # "« chat noir 1975 »": the quotes may stand apart from the value
    qa, qb = len(text[:a].rstrip(" \xa0")), b
    while qb < n and text[qb] in " \xa0":
        qb += 1
    quoted = qa > vpos and text[qa - 1] in _QUOTES and qb < n and text[qb] in _QUOTES.values()

    if group in ("pair", "creds"):
        return _pair_value(text, a, b, line_end, group, keyword)
    if group in ("kw", "wifi") and not weak and (sep.group("punct") == ":" or (
            sep.group("verb") and sep.group(0).rstrip().endswith(":"))):
        # "the password is: lighthouse harbour seven gulls": words to the end of the line
        # (or of its field: "X — contrat n° 12" goes on with another field)
        dash = _FIELD_DASH.search(text, a, line_end)
        phrase_end = dash.start() if dash is not None else line_end
        pa, pb = _strip_span(text, a, phrase_end)
        if _word_passphrase(text[pa:pb]):
            return Finding("password", pa, pb)
        cm = _WORDS_WITH_DIGIT.match(text, a, phrase_end)    # "clé WPA2 : Marée haute 1987 ("
        if cm is not None and cm.end("v") > b and _spoken_passphrase(cm.group("v")) \
                and not _value_ok(text[a:b], clause_end=False, strict=True):
            return Finding("password", a, cm.end("v"))
    if keyword.startswith(("passphrase", "phrase")) and not quoted:
        # a pass *phrase* has spaces: take the rest of the clause
        stop = _PHRASE_END.search(text, a, line_end)
        b2 = stop.start() if stop else line_end
        pa, pb = _strip_span(text, a, b2)
        words = text[pa:pb].lower().split()
        if len(words) > 1 and (len(words) > 10 or "://" in text[pa:pb] or "@" in text[pa:pb]):
            # "... is tidal-Mercury-fennel-482 and the repo lives at ssh://...": a sentence
            # goes on after the value; the value is the first token (judged below)
            if not _looks_secret(text[a:b]) and not _dashed_words(text[a:b]):
                return None
        elif pb - pa >= 8 and any(w not in _STOP_VALUES for w in words) and (
                quoted or not _REFERENCE_PHRASE.match(text, pa, pb)):
            return Finding("password", pa, pb)
        else:
            return None

    value = text[a:b]
    if group == "key":
        # "la clé c'est tournesol2025": a verb makes the label explicit enough
        ok = _keylike(value) or (sep.group("verb") is not None and _mixed(value)
                                 and _looks_secret(value)
                                 and not _WORD_NUMBER.fullmatch(value)) or (
            _mixed(value) and _WIFI_ON_LINE.search(text, text.rfind("\n", 0, start) + 1, start)
            is not None and _value_ok(value, clause_end=True, strict=True))
        return Finding("password", a, b) if ok else None
    if pin:
        return Finding("password", a, b) if re.fullmatch(r"\d{4,8}", value) else None
    if ident_assign:
        if text.startswith(":", b) and (b + 1 == n or text[b + 1] in " \t\r\n"):
            return None                     # "secret_key_ref:\n  name: x": a YAML key
        kind = _kind_for_assignment(text, start)
        if _value_ok(value, clause_end=True, strict=False):
            return Finding(kind, a, b)
        return None
    strict = weak and not _login_context(text, start)
    if weak and not strict and not _mixed(value) and not value.isdigit():
        strict = not _clause_end(text, b, line_end)
    clause_end = quoted or _clause_end(text, b, line_end)
    if wrapped_at >= 0 and not quoted:
        strict = True               # read across a line wrap: a word of the sentence that
                                    # goes on ("the passwords the\nrepos are unreadable")
                                    # is no value; a password-like one is
    if _value_ok(value, clause_end=clause_end, strict=strict):
        kind = _kind_for_assignment(text, start) if sep.group("punct") == "=" else "password"
        return Finding(kind, a, b)
    return None


# A key's bare label on a line that a Wi-Fi label opens ("Wi-Fi 2,4 GHz : Box-4F2A
# Clé : X") is the network's key: its value is read as one after "clé WPA" is.
_WIFI_ON_LINE = re.compile(r"(?i)(?<![^\W_])(?:wi-?fi|wlan|ssid)(?![^\W_])")


_ARTICLE_CODE = re.compile(r"[^\S\n]+(?P<v>[A-Z]?\d{4,8}[A-Z#*]?)(?![\w/+\-]|[.,:]\d)")


def _paren_close(text: str, start: int, a: int, b: int) -> int:
    """Where a value read after a label inside brackets ends: at the bracket that closes
    the label's ("(using password: YES)", a log's "(mot de passe : oui)"), not at the next
    space, which may be far into the JSON or the log line that holds the bracket."""
    bol = text.rfind("\n", max(0, start - 200), start) + 1
    opened = text.rfind("(", bol, start)
    if opened < 0 or text.find(")", opened, start) >= 0:
        return b
    close = text.find(")", a, b)
    return close if close > a else b


_GAP_SEP = re.compile(r"(?P<ws>[^\S\r\n]{2,})(?=\S)(?:(?P<punct>:)|(?P<changed>:)|(?P<verb>:))?")
_LINE_START = re.compile(r"(?:^|\n)[ \t>*•\-]*\Z")
# a sentence's words before a label that its mail program wrapped: "et le mot de passe"
_WRAP_BEFORE = re.compile(r"(?i)(?<![^\W_])(?:le|la|mon|ma|son|sa|notre|votre|leur|the|my|"
                          r"his|her|our|your|their)[^\S\n]+\Z")


def _wrapped_after_label(text: str, start: int, line_end: int, group: str, weak: bool,
                         qualifiers: int) -> Finding | None:
    """A label that a mail program's line wrap left at the end of its line, in a sentence
    ("... et le mot de passe\nticket-samedi, ca marchait"; an article before the label
    says it is a sentence's): the first word of the next line, when it is not letters
    alone (a digit, a symbol or a hyphen in it) and ends its clause (a word of the
    sentence that goes on, "Merci de", "peut-être, avant", is no value)."""
    if group not in ("kw", "wifi") or weak or qualifiers \
            or not _WRAP_BEFORE.search(text, max(0, start - 12), start):
        return None
    nxt = line_end + 1
    if not text.startswith("\n", line_end) or nxt >= len(text):
        return None
    nl = text.find("\n", nxt, nxt + 200)
    nxt_end = nl if nl >= 0 else min(len(text), nxt + 200)
    span = _take_value(text, nxt, nxt_end, ident=False)
    if span is None or span[0] != nxt:
        return None                 # (an indented or quoted line is no wrap)
    a, b = span
    value = text[a:b]
    if value.isalpha() or value.lower() in _DASHED_COMMON or len(value) < 6 \
            or not _clause_end(text, b, nxt_end) \
            or value.lower().split("'")[0] in ("n", "ne") \
            or not _value_ok(value, clause_end=True, strict=False):
        return None
    return Finding("password", a, b)


_WORD_WRAPPED = re.compile(r"[^\S\r\n]*(?P<w>[^\s:=|]{1,40})")


def _soft_wrap(text: str, start: int, line_end: int) -> bool:
    """Whether the line break at ``line_end`` (the label at ``start`` on its line) is a mail
    program's wrap inside a sentence: a long line of prose, then a line of text (not
    blank, not a list item, not quoted)."""
    ls = text.rfind("\n", 0, start) + 1
    if line_end - ls < 50 or text.count(" ", ls, line_end) < 6 or "\t" in text[ls:line_end]:
        return False
    nxt = text[line_end + 1:line_end + 3]
    return bool(nxt) and not nxt[0].isspace() and _LIST_START.match(nxt) is None


def _wrapped_after_sep(text: str, start: int, line_end: int, sep: re.Match[str]) -> bool:
    """Whether the line break after a label's separator is a wrap inside a sentence: after
    a verb ("c'est", "is"), or after a colon that ends a long line of prose (the next
    line then starts a value, not a new paragraph's sentence)."""
    if sep.group("verb") and not sep.group(0).rstrip().endswith(":"):
        return True
    ls = text.rfind("\n", 0, start) + 1
    return line_end - ls >= 60 and text.count(" ", ls, line_end) >= 6


_LIST_START = re.compile(r"[ \t]*(?:[-*•·>|#]|\d{1,2}[.)][ \t])")


# A phrase that points elsewhere ("the one from the envelope", "celle du coffre", "le même
# que l'an dernier", "written on the box"): no value is given.
_REFERENCE_PHRASE = re.compile(
    r"(?i)(?:the\s+(?:one|same|usual|old|new)|same|that|this|those|it|celui|celle|ceux|"
    r"le\s+m[êe]me|la\s+m[êe]me|les\s+m[êe]mes|identique|idem|comme|like|as|in|on|at|"
    r"dans|sur|sous|chez|[ée]crite?s?|not[ée]e?s?|written|noted|sent|envoy[ée]e?s?|ask|"
    r"demande[rz]?|see|voir|cf|stored|kept|rang[ée]e?|gard[ée]e?|in\s+the|from)(?![^\W_])")


# "soit « A » soit « B »", "A, or maybe B", "A et aussi B": more values of the same label.
_ALTERNATIVE = re.compile(
    r"[^\S\r\n]*[»”\"'’]?[^\S\r\n]*,?[^\S\r\n]*(?:soit|ou(?:\s+bien)?|or|et(?:\s+aussi)?|and(?:\s+also)?|"
    r"puis|then|voire)[^\S\r\n]+(?:(?:peut-être|peut-etre|maybe|perhaps|aussi|also|sinon|"
    r"encore)[^\S\r\n]+)?", re.I)


# "mdp X\net pour le BIOS c'est Y", "password X, and for the NAS it's Y": a clause that
# gives the same label's value for another thing
_PARALLEL = re.compile(
    r"[^\S\r\n]*[,;]?[^\S\r\n]*(?:\r?\n[^\S\r\n]*)?(?:et|and)[^\S\r\n]+(?:pour|for|sur|on)"
    r"[^\S\r\n]+(?:[^\s:,.;!?]{1,20}[^\S\r\n]+){0,3}?(?:c['’][^\S\r\n]?est|est|is|it['’]s|:)"
    r"[^\S\r\n]+", re.I)


def _alternatives(text: str, pos: int) -> list[Finding]:
    out: list[Finding] = []
    n = len(text)
    for _ in range(3):
        am = _ALTERNATIVE.match(text, pos, min(n, pos + 40))
        if am is None:
            pm = _PARALLEL.match(text, pos, min(n, pos + 80))
            if pm is not None:
                line_end = text.find("\n", pm.end(), pm.end() + 200)
                line_end = line_end if line_end >= 0 else min(n, pm.end() + 200)
                span = _take_value(text, pm.end(), line_end, ident=False)
                if span is not None and _mixed(text[span[0]:span[1]]) \
                        and _looks_secret(text[span[0]:span[1]]):
                    out.append(Finding("password", *span))
            break
        line_end = text.find("\n", am.end(), am.end() + 200)
        line_end = line_end if line_end >= 0 else min(n, am.end() + 200)
        span = _take_value(text, am.end(), line_end, ident=False)
        if span is None:
            break
        a, b = span
        value = text[a:b]
        quoted = text[am.end()] in _QUOTES
        if not (_value_ok(value, clause_end=True, strict=False) if quoted
                else _strong(value) and _looks_secret(value)):
            break
        out.append(Finding("password", a, b))
        pos = b
    return out


def _clause_end(text: str, pos: int, line_end: int) -> bool:
    return bool(_CLAUSE_END.match(text, pos, line_end))


def _login_context(text: str, kw_start: int) -> bool:
    """A login is named on the keyword's line or the line before ("user : x\npass : y")."""
    lo = max(0, kw_start - 160)
    nl = text.rfind("\n", lo, kw_start)
    if nl > lo:
        nl2 = text.rfind("\n", lo, nl)
        lo = nl2 + 1 if nl2 >= 0 else lo
    return bool(_LOGIN_CONTEXT.search(text, lo, kw_start))


_PAIR_SEP = re.compile(r"[^\S\r\n]*(?:[/|;,]|[-–—](?=\s)|(?:et|and)(?![^\W_]))[^\S\r\n]*", re.I)


def _pair_value(text: str, a: int, b: int, line_end: int, group: str,
                keyword: str) -> Finding | None:
    """"login/mdp : jdupont / Soleil2024" — the second token of the pair is the secret."""
    first = text[a:b]
    # "admin/Soleil2024" or "admin:Soleil2024" in one token
    for ch in ("/", ":"):
        i = first.find(ch)
        if 0 < i < len(first) - 1 and "://" not in first:
            va, vb = a + i + 1, b
            value = text[va:vb]
            strict = group == "creds" and keyword.startswith("acc")
            if _value_ok(value, clause_end=_clause_end(text, vb, line_end), strict=strict):
                return Finding("password", va, vb)
            return None
    # token 1 ends at the first pair separator
    tm = re.compile(r"[^\s/|;,]{1,200}").match(text, a, line_end)
    if not tm:
        return None
    psm = _PAIR_SEP.match(text, tm.end(), line_end)
    if psm is None or psm.end() == tm.end():
        if group == "creds":
            return None
        # "login/mdp : jdupont Soleil2024" (space only)
        psm = re.compile(r"[^\S\r\n]+").match(text, tm.end(), line_end)
        if psm is None:
            return None
    span = _take_value(text, psm.end(), line_end, ident=False)
    if span is None:
        return None
    va, vb = span
    value = text[va:vb]
    strict = group == "creds" and keyword.startswith(("acc", "code"))
    if _value_ok(value, clause_end=_clause_end(text, vb, line_end), strict=strict):
        return Finding("password", va, vb)
    return None


# --------------------------------------------------------------------------------------
# Generic detectors: what does not depend on one provider's format or one phrasing.
#
# Provider tokens whose prefix says what they are.  The prefixes and shapes are carried
# over from gitleaks' rule set (config/gitleaks.toml: sendgrid, sendinblue, huggingface,
# npm, pypi, grafana, vault, 1password, docker, digitalocean, shopify, mailgun, telegram,
# discord, twilio, age, doppler, dynatrace, postman, pulumi, planetscale, prefect, ...),
# widened a little where people paste shortened or test values.
_PROVIDER_TOKEN = re.compile(r"""
(?<![A-Za-z0-9_\-.])
(?:
   SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{20,64}              # sendgrid
 | xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}                           # brevo / sendinblue
 | xsmtpsib-[a-f0-9]{64}-[A-Za-z0-9]{16}
 | hf_[A-Za-z0-9]{30,40}                                          # huggingface
 | api_org_[A-Za-z0-9]{30,40}
 | npm_[A-Za-z0-9]{30,40}                                         # npm
 | pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{40,1000}                    # pypi
 | gl(?:sa|c)_[A-Za-z0-9_+/]{32,400}={0,3}                        # grafana
 | eyJrIjoi[A-Za-z0-9_=\-]{20,400}(?:\.[A-Za-z0-9_=\-]{16,400})?  # grafana (old)
 | hv[sb]\.[A-Za-z0-9_\-]{24,300}                                 # vault
 | ops_eyJ[A-Za-z0-9+/_\-]{60,2000}={0,3}                         # 1password
 | A3-[A-Z0-9]{6}-[A-Z0-9]{6,11}(?:-[A-Z0-9]{5}){3,4}
 | dckr_pat_[A-Za-z0-9_\-]{20,60}                                 # docker hub
 | do[opr]_v1_[a-f0-9]{64,72}                                      # digitalocean
 | shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}                             # shopify
 | key-[a-f0-9]{32}                                               # mailgun
 | SK[0-9a-f]{32}                                                 # twilio api key
 | AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}
 | dp\.(?:pt|st|sa|ct)\.(?:[a-z0-9_\-]{2,35}\.)?[A-Za-z0-9]{36,48}  # doppler
 | dt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}                       # dynatrace
 | PMAK-[a-f0-9]{24}-[a-f0-9]{34}                                 # postman
 | pul-[a-f0-9]{40}                                               # pulumi
 | pscale_(?:tkn|oauth|pw)_[A-Za-z0-9_=.\-]{32,64}                # planetscale
 | pnu_[A-Za-z0-9]{30,40}                                         # prefect
 | rubygems_[a-f0-9]{48}
 | sntry[us]_[A-Za-z0-9+/_=]{40,400}                              # sentry
 | pplx-[A-Za-z0-9]{48}
 | glrt-[A-Za-z0-9_\-]{20,300}
 | sq0(?:atp|csp)-[A-Za-z0-9_\-]{22,60}                           # square
 | EAA[MC][A-Za-z0-9]{100,400}                                    # facebook
 | AKCp[A-Za-z0-9]{69}                                            # artifactory
 | fo1_[A-Za-z0-9_\-]{43}                                         # fly.io
 | ntn_(?=[A-Za-z]{0,47}\d)[A-Za-z0-9]{44,48}  # notion (digits first or mixed in)
 | secret_(?=[A-Za-z0-9]{0,42}[0-9])(?=[A-Za-z0-9]{0,42}[A-Z])[A-Za-z0-9]{43}  # notion
                                                # (before 2024: an integration's token)
 | \d{8,10}:AA[A-Za-z0-9_\-]{31,34}                               # telegram bot
 | sk\.eyJ[A-Za-z0-9_\-]{20,400}\.[A-Za-z0-9_\-]{16,100}           # mapbox (secret)
 | ATATT3[A-Za-z0-9_\-=]{60,250}                                  # atlassian
 | lin_api_[A-Za-z0-9]{32,48}                                     # linear
 | HRKU-AA[0-9a-zA-Z_\-]{58}                                      # heroku
 | NRAK-[A-Za-z0-9]{27} | NRII-[A-Za-z0-9\-]{32} | NRJS-[a-f0-9]{19}   # new relic
 | rdme_[a-z0-9]{70}                                              # readme
 | tk-us-[A-Za-z0-9_\-]{48}                                       # scalingo
 | ico-[A-Za-z0-9]{32}                                            # infracost
 | sha256~[A-Za-z0-9_\-]{43}                                      # openshift
 | fio-u-[A-Za-z0-9_\-=]{64}                                      # frame.io
 | duffel_(?:test|live)_[A-Za-z0-9_\-=]{43}
 | shippo_(?:live|test)_[a-fA-F0-9]{40}
 | sgp_(?:[a-fA-F0-9]{16}_|local_)?[a-fA-F0-9]{40}                 # sourcegraph
 | live_[A-Za-z0-9]{24,40}                  # mollie, gocardless (generated: see below)
 # a service's live key after its short name, as Stripe made the shape ("rk_live_",
 # "mon_live_"); not Stripe's publishable "pk_live_"
 | (?!pk_)[a-z]{2,12}_live_[A-Za-z0-9]{24,64}
 | 1//0[A-Za-z0-9_\-]{40,300}                                     # google refresh token
 | pat-(?:eu|na)1-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}  # hubspot
 | c[ks]_[a-f0-9]{40}                                             # woocommerce
 | [A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{60,70}                # terraform cloud
)
(?![A-Za-z0-9_\-])
""", re.X)
# The literals one of which every token above holds (gitleaks' prefixes), looked for
# from a byte that prose rarely has ("_", ".", "-", ":", "0", "K", "J", "x") with the
# rest of the literal checked behind and after it: the regex engine then skips in C from
# one such byte to the next.  (As one alternation of the literals this was the costliest
# search of a scan: they start with letters that prose is made of, so the engine tried
# it at almost every byte.)  The five left have no such byte.
_PROVIDER_LITERALS = (
    b"SG.", b"sib-", b"hf_", b"api_org_", b"npm_", b"pypi-", b"glsa_",
    b"glc_", b"eyJrIjoi", b"hvs.", b"hvb.", b"ops_", b"A3-", b"dckr_", b"_v1_",
    b"shpat_", b"shpca_", b"shppa_", b"shpss_",
    b"key-", b"SK", b"AGE-", b"dp.pt", b"dp.st", b"dp.sa", b"dp.ct", b"dt0c01", b"PMAK",
    b"pul-", b"pscale_tkn_", b"pscale_oauth_", b"pscale_pw_", b"pnu_",
    b"rubygems_", b"sntryu_", b"sntrys_", b"pplx", b"glrt-", b"sq0", b"EAA", b"AKCp",
    b"fo1_", b"ntn_", b"secret_",
    b":AA", b"sk.eyJ", b"ATATT3", b"lin_api_", b"HRKU-", b"NRAK-", b"NRII-", b"NRJS-",
    b"rdme_", b"tk-us-", b"ico-", b"sha256~", b"fio-u-", b"duffel_", b"shippo_", b"sgp_",
    b"live_", b"ck_", b"cs_", b"pat-eu1-", b"pat-na1-", b".atlasv1.", b"_live_", b"1//0")
# ... of which these end words too ("olive_", "stack_", "Mexico-"): looked for at a word's
# start only, as the token pattern starts (a false hit costs a scan of the whole text)
_PROVIDER_WORD_START = (b"live_", b"ck_", b"cs_", b"ico-")
_PROVIDER_PIVOTS = re.compile(
    rb"_(?:(?<=hf_)|(?<=api_org_)|(?<=npm_)|(?<=glsa_)|(?<=glc_)|(?<=ops_)|(?<=dckr_)"
    rb"|(?<=pnu_)|(?<=rubygems_)|(?<=fo1_)|(?<=ntn_)|(?<=secret_)|v1_|(?<=lin_api_)|(?<=rdme_)"
    rb"|(?<=duffel_)|(?<=shippo_)|(?<=sgp_)|(?<=live_)(?<![A-Za-z0-9_.\-]live_)"
    rb"|(?<=_live_)"
    rb"|(?<=shpat_)|(?<=shpca_)|(?<=shppa_)|(?<=shpss_)|(?<=pscale_tkn_)"
    rb"|(?<=pscale_oauth_)|(?<=pscale_pw_)|(?<=sntryu_)|(?<=sntrys_)"
    rb"|(?<=c[ks]_)(?<![A-Za-z0-9_.\-]c[ks]_))"
    rb"|\.(?:(?<=SG\.)|(?<=hvs\.)|(?<=hvb\.)|(?<=dp\.)(?:pt|st|sa|ct)|(?<=sk\.)eyJ|atlasv1\.)"
    rb"|-(?:(?<=sib-)|(?<=pypi-)|(?<=A3-)|(?<=key-)|(?<=AGE-)|(?<=pul-)|(?<=HRKU-)|(?<=NRAK-)"
    rb"|(?<=NRII-)|(?<=NRJS-)|(?<=tk-us-)|(?<=ico-)(?<![A-Za-z0-9_.\-]ico-)|(?<=fio-u-)"
    rb"|(?<=pat-eu1-)|(?<=pat-na1-)|(?<=glrt-))"
    rb"|~(?<=sha256~)|/(?<=1//)0"
    rb"|:AA|0(?:(?<=dt0)c01|(?<=sq0))|K(?:(?<=SK)|(?<=AK)Cp|(?<=PMAK))"
    rb"|J(?<=eyJ)rIjoi|x(?<=pplx)")
_PROVIDER_REST = (b"EAA", b"ATATT3")       # (no pivot byte: looked for as they are)


def _provider_triggered(cased: bytes) -> bool:
    """Whether the text's bytes hold one of _PROVIDER_LITERALS (then _PROVIDER_TOKEN may
    match; otherwise it cannot)."""
    return _PROVIDER_PIVOTS.search(cased) is not None or any(w in cased for w in _PROVIDER_REST)


# The secret part of webhook and push URLs (the path is the credential).
_WEBHOOK_PATH = re.compile(r"""(?x)
   /api/webhooks/\d{6,25}/(?P<a>[A-Za-z0-9_\-]{40,100})               # discord
 | /hooks/(?P<b>[a-z0-9]{26})(?![A-Za-z0-9])                          # mattermost
 | /api/push/(?P<c>[A-Za-z0-9]{8,40})(?![A-Za-z0-9])                  # uptime kuma
 | \.webhook\.office\.com/webhookb2/(?P<d>[A-Za-z0-9@\-]{40,200}/IncomingWebhook/
   [A-Za-z0-9]{32})
 | /bot(?P<e>\d{6,12}:[A-Za-z0-9_\-]{30,40})                           # telegram, in a URL
""")
_WEBHOOK_TRIGGER = re.compile(rb"/api/webhooks/|/hooks/|/api/push/|webhookb2/|/bot\d")

# A name that says its value is a secret ("DB_PASSWORD", "AccountKey", "_authToken",
# "roundcube_sessid", "psk"), as gitleaks' generic rule does: found from these stems,
# then widened to the whole identifier.
_SECRET_STEM = re.compile(
    r"(?i)pass|pwd|psk|secret|token|key|auth|cred|salt|sess|sig(?![a-z])")
_SECRET_STEM_BYTES = re.compile(rb"pass|pwd|psk|secret|token|key|auth|cred|salt|sess|sig")
_IDENT_CHARS = re.compile(r"[A-Za-z0-9_.\-]{0,48}")
_IDENT_SET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_IDENT_PART = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# Parts of a name meaning its value is *not* the secret (a key's id, a token's URL...).
_NOT_SECRET_PART = frozenset({
    "id", "ids", "name", "names", "user", "username", "login", "file", "path", "dir", "url",
    "uri", "type", "types", "mode", "length", "len", "size", "host", "hostname", "port",
    "public", "pub", "fingerprint", "version", "format", "enabled", "disabled", "required",
    "hash", "hashed", "checksum", "sha", "sha1", "sha256", "md5", "mgmt", "management",
    "license", "licence", "serial", "product", "expires", "expiry", "expire", "ttl",
    "timeout", "lifetime", "policy", "reset", "min", "max", "hint", "field", "label",
    "prompt", "rules", "strength", "pattern", "regex", "algorithm", "algo", "cmd",
    "command", "store", "storage", "location", "env", "header", "endpoint", "issuer",
    "scope", "scopes", "method", "methods", "provider", "backend", "realm", "count",
    "author", "authors", "authority", "authorship", "keyboard", "keys", "keyring", "keyid",
    "keyserver", "passage", "bypass", "compass", "signal", "signed",
    "signature", "sigma", "saltstack", "tokenizer", "cache", "level", "protocol", "class",
    "manager", "agent", "option", "options", "default", "example", "placeholder", "changed",
    "autocomplete", "keygen", "keytab", "keystore", "strategy", "handler", "service",
    "fingerprints", "map", "index", "limit", "rate", "publishable", "site",
    "search",               # a search-only key (Algolia's) is made to be public
})
_PASSWORD_PARTS = frozenset({"password", "passwd", "pass", "pwd", "passphrase"})
_OWNER_PARTS = frozenset({"user", "username", "login"})
_ASSIGN_SEP = re.compile(
    r"""["'\]}]{0,2}[^\S\r\n]{0,12}(?:=>|:=|\?=|=|:(?!//)|,(?=[^\S\r\n]*["']))[^\S\r\n]{0,12}"""
    r"""|[^\S\r\n]{1,20}(?=["'])""")     # nginx: proxy_set_header X-Token "value"
_AUTH_SCHEME = re.compile(r"(?i)(?:Bearer|Basic|Token|Digest|Bot|apikey|key)[^\S\r\n]+")
_VALUE_TOKEN = re.compile(r"""[^\s"'`<>,;&)\]}]{1,400}""")


# A setting's name, then words saying whom or what it is for, then a colon:
# "token_auth de l'utilisateur « stats-mairie » : ", "DOLAPIKEY for user api : ".
_QUALIFIED_SEP = re.compile(r"[^\S\r\n]+(?:de|du|des|pour|for|of)[^\S\r\n]"
                            r"[^\r\n:=;]{1,40}?[^\S\r\n]?:[^\S\r\n]+")
# ... a name written as code: with "_", in capitals, or in camelCase
_SETTING_NAME = re.compile(r"[A-Za-z0-9]+(?:[_.\-][A-Za-z0-9]+)+|[A-Z][A-Z0-9]{3,}|"
                           r"[a-z]+[A-Z][A-Za-z0-9]*")


def _secret_name(name: str) -> bool:
    """Whether an identifier names a secret (and not, say, a key's id or a token's URL)."""
    parts = [p.lower() for p in _IDENT_PART.findall(name)]
    if "salt" in parts:
        # Drupal's "hash_salt" signs one-time links and sessions: the salt of hashes
        parts = [p for p in parts if p not in ("hash", "hashed")]
    if parts and parts[-1] in _PASSWORD_PARTS:
        # "userPassword" (LDIF), "user_pass", "login_pwd": the user's password; a
        # leading identity word names whose it is, not what the value is
        parts = [p for p in parts[:-1] if p not in _OWNER_PARTS] + parts[-1:]
    if not parts or any(p in _NOT_SECRET_PART for p in parts):
        return False
    low = name.lower()
    return low.startswith("authoriz") or not low.startswith(
        ("author", "session", "signal", "signature", "keyboard"))


def _entropic(value: str, *, min_len: int) -> bool:
    """A generated token: long enough, letters and digits, not a word, date or path."""
    n = len(value)
    if n < min_len or n > 400:
        return False
    if _is_placeholder(value) or value[0] in "$%{<" or value.startswith(
            ("http", "www.", "pk_live_", "pk_test_", "ssh-", "sha256:", "sha1:", "md5:")):
        return False
    if _DECOY_SHAPE.fullmatch(value):
        return False
    letters = sum(c.isalpha() for c in value)
    digits = sum(c.isdigit() for c in value)
    if not letters or not digits:
        return n >= 24 and _classes(value) >= 3 and letters > 0
    return value.count("/") < 2 or value.endswith("=")     # else a path


# Shapes that are never secrets however they are named: dates, versions, IP and MAC
# addresses, UUIDs, host names, phone numbers, references such as "F2025-0917".
_DECOY_SHAPE = re.compile(r"""(?x)
  \d{1,4}(?:[-/.:]\d{1,4}){1,3}(?:[T\s]\d\d:\d\d(?::\d\d)?(?:\.\d+)?Z?)?   # dates, IPs, times
| v?\d+(?:\.\d+){1,4}(?:[-+][A-Za-z0-9.]+)?                               # versions
| [0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}                                    # MAC
| [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}  # UUID
| [a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,12}                              # host names
| \+?\d[\d\s.\-]{7,16}\d                                                  # phone numbers
| [A-Z]{1,12}\d{0,3}(?:[-_/][A-Z0-9]{1,10}){1,4}                          # references
| [A-Z]{1,4}\d{5,12}                                                      # KB5034441, INC0012345
| 0[xX][0-9A-Fa-f]{2,16}                                                  # error codes
| [a-z0-9][a-z0-9._/\-]{0,60}:v?\d+(?:\.\d+){1,3}(?:-[a-z0-9.]{1,20})?     # image:tag
| \#\d+
| [A-Z0-9]{5}(?:-[A-Z0-9]{5}){4}                                          # product keys
""")


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _stem_positions(lower: str, stems: tuple[str, ...],
                    known: frozenset[bytes] | None = None) -> list[tuple[int, int]]:
    """(start, end) of every occurrence of the stems in ``lower``, sorted.  ``known``: the
    text's literals (see _known_literals); a stem that holds one it lacks is not looked
    for (each look is a pass over the text)."""
    out = []
    for stem in stems:
        if known is not None:
            need = _STEM_NEEDS.get(stem)
            if need is not None and need not in known:
                continue
        i = lower.find(stem)
        while i >= 0:
            out.append((i, i + len(stem)))
            i = lower.find(stem, i + 1)
    out.sort()
    return out


# The identifier half of a key/secret pair: "Application Key" beside "Application
# Secret" (OVH), "access_key" beside "secret_key" (S3, MinIO), "consumer_key" beside
# "consumer_secret" (OAuth 1).  The provider's own documents call the key the
# application's or the user's *identifier* and the secret the credential; the secret goes,
# and the key stays, as a user name does: it is what the admin looks the pair up by to
# revoke it.  A key with no secret of the same name beside it ("Consumer Key" of OVH,
# Datadog's "app key", "API key") is a credential.
_PAIR_REACH = 400
_PAIR_LABEL = re.compile(r"(?m)(?:^|>)[^\S\n]*(?:export[^\S\n]+|set[^\S\n]+)?"
                         r"(?P<label>[A-Za-z][A-Za-z0-9_.\- ]{0,48}?)[\"'\]]{0,2}[^\S\n]*[:=]")
_PAIR_KEY = frozenset({"key", "cle", "clef"})
_PAIR_DROP = _PAIR_KEY | {"secret", "access", "d", "de", "the", "export", "set"}
_PAIR_SECRETISH = frozenset({"secret", "private", "priv", "pass", "password", "pwd", "token",
                             "passphrase", "signing"})
_KEY_WORD = re.compile(r"(?i)key|cl[ée]")


def _label_parts(label: str) -> list[str]:
    return [p.lower() for p in _IDENT_PART.findall(label.replace("é", "e"))]


def _identifier_half(text: str, a: int, lo: int) -> bool:
    """Whether the value at ``a`` follows a key's label (``text[lo:a]``, on its line) and a
    secret of the same name is within reach: then the value is the pair's identifier."""
    lo = max(lo, text.rfind(">", lo, a) + 1)     # "<br>Application Key : …"
    label = text[lo:a]
    if not _KEY_WORD.search(label) or not _COLON.search(label):
        return False
    parts = _label_parts(label)
    if _PAIR_KEY.isdisjoint(parts) or not _PAIR_SECRETISH.isdisjoint(parts):
        return False
    core = set(parts) - _PAIR_DROP
    for m in _PAIR_LABEL.finditer(text, max(0, lo - _PAIR_REACH),
                                  min(len(text), a + _PAIR_REACH)):
        other = _label_parts(m.group("label"))
        if "secret" in other and set(other) - _PAIR_DROP == core:
            return True
    return False


# "API key 7c2e... / secret 1a6f...", "clé 4F2A... et secret 9C1B...": a key then its
# secret in one phrase; the key is the pair's identifier (Mailjet's API key, the user
# name of its Basic auth; OVH's application key), the secret is the secret.
_KEY_LABEL_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:api[^\S\n]+|public[^\S\n]+|publique[^\S\n]+)?(?:key|cl[ée]f?)"
    r"(?:[^\S\n]+(?:api|publique|public))?[^\S\n]*[:=]?[^\S\n]*\Z")
_SECRET_LABEL_NEXT = re.compile(
    r"(?i)[^\S\n]*(?:/|,|;|&|\+|and|et|with|avec)[^\S\n]*(?:(?:the|its|le|la|sa|son)"
    r"[^\S\n]+)?(?:(?:api|private)[^\S\n]+)?(?:secret(?:[^\S\n]+key)?|cl[ée]f?[^\S\n]+"
    r"(?:secr[èe]te|priv[ée]e))(?![^\W_])[^\S\n]*[:=]?[^\S\n]*\S")


def _key_before_secret(text: str, a: int, b: int, lo: int) -> bool:
    """Whether ``text[a:b]`` is a key named right before it whose secret is named right
    after it, on the same line (see above)."""
    return (_KEY_LABEL_BEFORE.search(text, max(lo, a - 24), a) is not None
            and _SECRET_LABEL_NEXT.match(text, b, min(len(text), b + 40)) is not None)


def _named_assignments(text: str, lower: str,
                       known: frozenset[bytes] | None = None) -> list[Finding]:
    """``NAME = value`` (``:``, ``=>``, ``,`` in PHP's define) where NAME names a secret and
    the value looks generated; ``Authorization: Bearer value``."""
    out: list[Finding] = []
    n = len(text)
    last = -1
    for m_start, m_end in _stem_positions(lower, _STEMS, known):
        if m_start < last:
            continue
        if lower.startswith("sig", m_start) and lower[m_end:m_end + 1].isalpha():
            continue
        if _binary_line(text, m_start):
            continue
        # the identifier around the stem: a separator must follow it soon
        after = _IDENT_CHARS.match(text, m_end)
        end = after.end() if after else m_end
        if text.startswith(">", end) and end - m_end <= 40:
            # an XML element named for a secret: "<pre-shared-key>X</pre-shared-key>"
            # (pfSense), "<api_token>X</api_token>"
            xml = _xml_element_value(text, m_start, end)
            last = end
            if xml is not None:
                out.append(xml)
                last = xml.end
            continue
        qualified = None
        if not _ASSIGN_SEP.match(text, end) or end - m_end > 40:
            qualified = _QUALIFIED_SEP.match(text, end) if end - m_end <= 40 else None
            if qualified is None:
                last = end
                continue
        start = m_start
        while start > 0 and m_start - start < 48 and text[start - 1] in _IDENT_SET:
            start -= 1
        last = end
        name = text[start:end].rstrip(".-")
        end = start + len(name)
        if not _secret_name(name):
            continue
        if text.startswith("}", end) and not text.startswith("{$", start - 2):
            continue                    # a brace closes only a Zabbix macro's name:
                                        # "{$PVE.TOKEN.SECRET} = ..."
        if qualified is not None:
            # "token_auth de l'utilisateur « stats » : <value>": a setting's name, who or
            # what it is for, then the value; only a generated one (it is prose)
            if not _SETTING_NAME.fullmatch(name):
                continue
            vm = _VALUE_TOKEN.match(text, qualified.end())
            if vm is not None:
                a, b = _trim_value(text, vm.start(), vm.end())
                if _entropic(text[a:b], min_len=16):
                    out.append(Finding("api-token", a, b))
                    last = b
            continue
        sep = _ASSIGN_SEP.match(text, end)
        if sep is None or sep.end() == end:
            continue
        pos = sep.end()
        lowname = name.lower()
        if lowname == "key" and not _key_label_ok(text, start, end):
            continue                    # "License key: 7XQ4-…", "clé USB / key: …"
        wordy = lowname in ("pass", "key", "token", "secret", "auth", "password", "sig")
        scheme = _AUTH_SCHEME.match(text, pos)
        if scheme and ("auth" in lowname or "header" in lowname or wordy):
            pos = scheme.end()
        quote = text[pos] if pos < n and text[pos] in "\"'`" else ""
        if quote:
            close = text.find(quote, pos + 1, min(n, pos + 402))
            if close < 0 or "\n" in text[pos + 1:close]:
                continue
            a, b = pos + 1, close
            sm = _AUTH_SCHEME.match(text, a, b)
            if " " in text[sm.end() if sm else a:b] and not any(
                    w in lowname for w in ("pass", "pwd", "psk")):
                continue                # a phrase (nginx 'auth_basic "Preprod v3"')
        else:
            vm = _VALUE_TOKEN.match(text, pos)
            if vm is None:
                continue
            a, b = _trim_value(text, vm.start(), vm.end())
        last = max(last, b)
        value = text[a:b]
        if value.lower().startswith("base64:"):
            a += 7
            value = value[7:]

        pw_name = any(w in lowname for w in ("pass", "pwd", "psk"))
        min_len = 8 if pw_name else (16 if wordy else 10)
        if "salt" in lowname and not pw_name:
            min_len = 24        # a signing salt is long; a short hex one salts one hash
        # a UUID is a reference, unless the name says it is the key ("HEROKU_API_KEY:
        # 6f2d9b41-…": Heroku's API keys are UUIDs; "HEROKU_APP_ID" is not a secret name)
        uuid_key = bool(_UUID.fullmatch(value)) and any(
            w in lowname for w in ("api_key", "apikey", "api-key", "token", "secret"))
        if _entropic(value, min_len=min_len) or uuid_key or (
                pw_name and quote and _strong(value) and " " not in value):
            eq = value.rfind("=")
            if value.count("=") >= 2 and eq > 0 and len(value) - eq > 16:
                # "PVEAPIToken=user@pve!tokenid=<uuid>": a scheme and a token id,
                # then the secret: only the part after the last "=" is
                a += eq + 1
            out.append(Finding("api-token" if not pw_name else
                               _kind_for_assignment(text, start), a, b))
            last = b
    return out


def _xml_element_value(text: str, m_start: int, end: int) -> Finding | None:
    """The value of ``<NAME>value</NAME>`` when NAME (around the stem at ``m_start``,
    ending at ``end``, just before ">") names a secret and the value looks generated."""
    start = m_start
    while start > 0 and m_start - start < 48 and text[start - 1] in _IDENT_SET:
        start -= 1
    if start == 0 or text[start - 1] != "<":
        return None
    name = text[start:end]
    if not _secret_name(name):
        return None
    close = text.find("</", end + 1, min(len(text), end + 402))
    if close < 0 or not text.startswith(name + ">", close + 2):
        return None
    a, b = _strip_span(text, end + 1, close)
    value = text[a:b]
    if not value or any(c in value for c in "\n<>") or value.startswith(("{{", "${", "$(")):
        return None
    low = name.lower()
    pw = any(w in low for w in ("pass", "pwd", "psk"))
    if _entropic(value, min_len=8 if pw else 16) or (pw and _strong(value)):
        return Finding("password" if pw else "api-token", a, b)
    return None


# Credentials given to well-known commands: ``curl -u user:pass``, ``sshpass -p pass``,
# ``lftp -u user,pass``, ``mysql -ppass``, ``net use ... /user:NAME pass``,
# ``ConvertTo-SecureString 'pass'``, ``snmpwalk -c community``.
_COMMAND_CREDENTIAL = re.compile(r"""(?x)
  (?:\s|^)(?:-u|--user)(?:[^\S\r\n]+|=)["']?[^\s:"']{1,64}:(?P<a>[^\s"']{3,200})
| \bsshpass[^\S\r\n]+-p[^\S\r\n]*["']?(?P<b>[^\s"']{3,200})
| \blftp\b[^\r\n]{0,80}?[^\S\r\n]-u[^\S\r\n]+[^\s,]{1,64},["']?(?P<c>[^\s"']{3,200})
| \bmysql(?:dump|admin)?\b[^\r\n]{0,80}?[^\S\r\n]-p(?P<d>[^\s"'-][^\s"']{2,200})
| \bnet[^\S\r\n]+use\b[^\r\n]{0,120}?/user:[^\s]{1,64}[^\S\r\n]+(?P<e>[^\s/"'][^\s"']{2,200})
| ConvertTo-SecureString[^\S\r\n]+(?:-String[^\S\r\n]+)?["'](?P<f>[^"'\r\n]{3,200})["']
| \bsnmp(?:walk|get|bulkwalk|set)\b[^\r\n]{0,40}?[^\S\r\n]-c[^\S\r\n]+(?P<g>[^\s"']{3,100})
| \b(?:sqlplus|rman|expdp|impdp|sqlldr|dgmgrl)\b[^\r\n]{0,40}?[^\S\r\n]["']?[A-Za-z][\w$\#]{0,63}/
    (?P<h>[^\s@/"']{3,200})@
""")
_COMMAND_TRIGGER = re.compile(
    rb"-u|--user|sshpass|lftp|mysql|net use|securestring|snmp|sqlplus|rman|expdp|impdp|sqlldr"
    rb"|dgmgrl")

# The password options of common command-line tools, one row per tool family: the
# command's name, then the options whose argument is a password.  An option written
# "-pVALUE" (attached) is listed with a trailing "+"; "--opt=VALUE" and "--opt VALUE"
# are both read.  (From the tools' manuals: mysql(1), redis-cli, ldapsearch(1),
# mosquitto_pub(1), smbclient(1), wget(1), openssl(1), zip(1), 7z, docker login,
# ipmitool(1), keytool, mongosh, xfreerdp, htpasswd(1), nmcli(1), wp-cli.)
_CLI_PASSWORD_FLAGS: dict[str, tuple[str, ...]] = {
    "mysql mysqldump mysqladmin mysqlcheck mysqlimport mysqlshow mysqlpump mariadb "
    "mariadb-dump mariadb-admin": ("-p+", "--password"),
    "redis-cli valkey-cli keydb-cli": ("-a", "--pass", "--user-pass"),
    "redis-server valkey-server keydb-server": ("--requirepass", "--masterauth"),
    "ldapsearch ldapmodify ldapadd ldapdelete ldapwhoami ldappasswd ldapcompare "
    "ldapmodrdn ldapexop": ("-w",),
    "mosquitto_pub mosquitto_sub mosquitto_rr": ("-P", "--pw"),
    "wget": ("--password", "--http-password", "--ftp-password", "--proxy-password"),
    "zip unzip": ("-P",),
    "7z 7za": ("-p+",),
    "docker podman nerdctl": ("-p", "--password"),
    "ipmitool": ("-P",),
    "keytool": ("-storepass", "-keypass", "-srcstorepass", "-deststorepass"),
    "mongo mongosh mongodump mongorestore mongoexport mongoimport": ("-p", "--password"),
    "rabbitmqctl": ("add_user",),
    "sshpass": ("-p+",),
    "xfreerdp wlfreerdp": ("/p:+",),
    "rdesktop": ("-p",),
    "influx": ("-password", "--password"),
    "psql pg_dump": ("--password=+",),
    "sqlcmd bcp": ("-P",),
    "wp": ("--user_pass", "--admin_password"),
    "openssl": ("-passin pass:+", "-passout pass:+", "-k", "-pass pass:+"),
}
_CLI_TABLE = {cmd: flags for cmds, flags in _CLI_PASSWORD_FLAGS.items()
              for cmd in cmds.split()}
_CLI_COMMAND = re.compile(
    r"(?<![\w./\-])(?:[\w./\-]{0,60}/)?(?P<cmd>"
    + "|".join(sorted((re.escape(c) for c in _CLI_TABLE), key=len, reverse=True))
    + r")(?:\.exe)?(?=[^\S\r\n])")
_CLI_VALUE = re.compile(r"""'([^'\r\n]{1,200})'|"([^"\r\n]{1,200})"|([^\s'"`;|&)]{1,200})""")


def _cli_flag_pattern(flags: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for flag in flags:
        if flag.endswith("+"):              # value attached: -pSECRET, /p:SECRET
            parts.append(re.escape(flag[:-1]) + r"(?=[^\s-])")
        elif flag.startswith("--") or (flag.startswith("-") and len(flag) > 2):
            parts.append(re.escape(flag) + r"(?:=|[^\S\r\n]+)")
        elif flag.startswith("-"):
            parts.append(re.escape(flag) + r"(?:[^\S\r\n]+|(?=['\"]))")
        else:                               # a sub-command: "add_user NAME PASSWORD"
            parts.append(re.escape(flag) + r"[^\S\r\n]+[^\s]{1,64}[^\S\r\n]+")
    return re.compile(r"(?<![^\s])(?:" + "|".join(parts) + ")")


_CLI_FLAG_PATTERNS = {flags: _cli_flag_pattern(flags) for flags in _CLI_PASSWORD_FLAGS.values()}
_CLI_WORDS = tuple(c.encode() for c in _CLI_TABLE)


def _command_line_end(text: str, pos: int) -> int:
    """End of the command line starting at ``pos``: its first newline not escaped by a
    backslash continuation (at most 3 continuations, 600 characters)."""
    limit = min(len(text), pos + 600)
    end = pos
    for _ in range(4):
        nl = text.find("\n", end, limit)
        if nl < 0:
            return limit
        if text[max(pos, nl - 2):nl].rstrip("\r ").endswith(("\\", "`", "^")):
            end = nl + 1
            continue
        return nl
    return end


def _cli_passwords(text: str) -> list[Finding]:
    """The argument of a password option of a known command ("redis-cli -a X",
    "ldapsearch ... -w 'X'", "mysqldump -p'X'", "mosquitto_pub ... -P X")."""
    out = []
    for m in _CLI_COMMAND.finditer(text):
        flags = _CLI_TABLE[m.group("cmd")]
        end = _command_line_end(text, m.end())
        for fm in _CLI_FLAG_PATTERNS[flags].finditer(text, m.end(), end):
            vm = _CLI_VALUE.match(text, fm.end(), end)
            if vm is None:
                continue
            g = next(i for i in (1, 2, 3) if vm.group(i) is not None)
            a, b = vm.start(g), vm.end(g)
            if g == 3:
                a, b = _trim_value(text, a, b)
            value = text[a:b]
            if b > a and not _is_placeholder(value) and value[0] not in "$%<{[" and (
                    _strong(value) or _entropic(value, min_len=8)):
                out.append(Finding("password", a, b))
    return out


def _command_credentials(text: str, folded: bytes) -> list[Finding]:
    out = []
    for m in _COMMAND_CREDENTIAL.finditer(text):
        group = m.lastgroup
        if group is None:
            continue
        a, b = _trim_value(text, m.start(group), m.end(group))
        value = text[a:b]
        if b > a and not _is_placeholder(value) and value[0] not in "$%" and (
                _strong(value) or _entropic(value, min_len=8)):
            out.append(Finding("password", a, b))
    return out


# URLs written JSON-escaped ("https:\/\/user:pw@host") or URL-encoded inside another URL
# or a log line ("https%3A%2F%2Fuser%3Apw%40host"; the user escaped too, an address as
# a login: "smtp%3A%2F%2Fcontact%40x.org%3Apw%40host", but no path or query in it).
_ESCAPED_USERINFO = re.compile(r"""(?x)
  :\\/\\/[^\s:/\\"'@]{0,128}:(?P<a>[^\s/\\"'<>@]{1,256})@(?=[A-Za-z0-9\[_\-])
| %3[Aa]%2[Ff]%2[Ff](?:[^\s:/%@&?"']|%(?!3[AaFf]|2[Ff])[0-9A-Fa-f]{2}){0,128}
  (?:%3[Aa]|:)(?P<b>(?:[^\s/"'<>@&?%]|%(?!2[Ff]|3[Ff])[0-9A-Fa-f]{2}){1,256}?)(?:%40|@)
  (?=[A-Za-z0-9\[_\-])
""")
_ESCAPED_TRIGGER = re.compile(rb":\\/\\/|%3a%2f%2f")


def _escaped_url_credentials(text: str) -> list[Finding]:
    out = []
    for m in _ESCAPED_USERINFO.finditer(text):
        group = m.lastgroup
        if group is None:
            continue
        value = m.group(group)
        if _is_placeholder(value) or _PORT_QUERY.fullmatch(value):
            continue
        out.append(Finding("url-credentials", m.start(group), m.end(group)))
    return out


# --------------------------------------------------------------------------------------
# Prose: a value that looks like a password within a bounded window after a password
# label, whatever the words between them ("le mot de passe provisoire qu'on lui a donné
# est X", "the password will be\nX"), across a line wrap and quoting ("> ").

_WINDOW_REACH = 170
_WINDOW_TOKEN = re.compile(r"[^\s>]+")
_WINDOW_STOP = re.compile(r"\n[ \t>]*\n")
# A token right after one of these words is what that word names, not a password.
_NAMING_WORDS = _words("""
identifiant identifiants login logins user username utilisateur compte account ssid réseau
reseau network serial série serie n° no ref réf référence reference facture invoice ticket
commande order numéro numero number tel tél téléphone phone adresse address email e-mail
mail courriel nom name id asset tag dossier folder fichier file version modèle modele model
salle room bureau poste extension ext lien link url site domaine domain serveur server host
sur on at from de chez boîte boite box session appareil device imprimante printer groupe
group projet project utilisateur: login: user: ssid: réseau: network: compte: account:
appelle s'appelle s’appelle nommé nommée called named commit hash sha sha1 sha256 md5
empreinte fingerprint checksum erreur error organisation organization org tenant po
""")


_NAMED_BEFORE = _words("""
série serie serial numéro numero number n° no ref réf référence reference facture invoice
ticket commande order tel tél téléphone telephone phone version modèle modele model asset
tag ssid réseau reseau network imei siret siren iban fingerprint empreinte hash commit
checksum sha1 sha256 md5
""")
# Words that say what the value after them *is*, even across a verb or a preposition
# ("my login is jsmith42", "l'ID de clé 4F3A2B1C", "the error id was 7f3a9c2e"): an
# identity, a number or a reference, never the password the label before announced.
_IDENTITY_WORDS = _words("""
identifiant login logins username id ssid nom name serial série serie s/n sn numéro numero
number n° no ref réf référence reference version modèle modele model erreur error ticket
commit hash checksum empreinte fingerprint iban siret siren imei matricule badge
utilisateur user
""")
# Qualifiers of a password label after which a word is the account's name, not its
# password ("le mot de passe du compte partagé classe.ce2 ... : X").
_ACCOUNT_NAMED = _IDENTITY_WORDS | _words("compte account comptes accounts")


_LINKING_WORDS = _words("""
is est c'est c’est was sera will be :  = - → de du des d' d’ of the le la l' l’ it's it’s
sont are était mon ma my his her son sa un une a an
""")


def _named_by(recent: list[str]) -> bool:
    """Whether the words before a value (``recent``, lower-cased, newest last) name it."""
    if recent and recent[-1] in _NAMING_WORDS:
        return True
    if any(w in _NAMED_BEFORE for w in recent[-3:]):
        return True
    return _identity_named(recent)


def _identity_named(recent: list[str]) -> bool:
    """"my login is", "l'ID de clé", "error id:", "mon numéro de badge c'est le": an
    identity word, then only linking words or one complement after a linking word."""
    tail = recent[-4:]
    for k, w in enumerate(tail):
        if w.split("'")[-1].split("’")[-1] not in _IDENTITY_WORDS:
            continue
        j = len(recent) - len(tail) + k
        if j and recent[j - 1] in _LABEL_WORDS:
            continue                # "code utilisateur 3308": it qualifies the label
        after = tail[k + 1:]
        if all(x in _LINKING_WORDS or (i > 0 and after[i - 1] in _LINKING_WORDS)
               for i, x in enumerate(after)):
            return True
    return False


# A value right after these is an example (a password policy, a how-to), not a secret.
_EXAMPLE_BEFORE = re.compile(
    r"(?i)(?<![\w\-.@/])(?:ex\.|ex\s*:|e\.g\.?|par\s+ex|exemples?|examples?|such\s+as|"
    r"comme\s+par\s+exemple|format)(?![\w\-@/]|\.\w)[^\n\w]{0,4}(?:\w+[^\n\w]{1,3}){0,1}\Z")
# A plural label then "like", "such as", "comme": the values after it, however many, are
# examples of a kind ("passwords like "Password123!" or "Summer2026" are refused", "des
# mots de passe comme « azerty1 » ou « Marseille13 »"), never one account's secret.
_EXAMPLES_OF = re.compile(
    r"(?i)(?<![^\W_])(?:passwords|passphrases|mots\s+de\s+passe|mdps?|codes|pins|keys|cl[ée]s)"
    r"\s+(?:like|such\s+as|comme|tels?\s+que|telles?\s+que|du\s+genre|du\s+type)"
    r"(?![^\W_])[^\n.;:?]{0,40}\Z")
# ... and a hex value after these is a digest (a hash of the password, a file checksum).
_HASH_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:hash|hashes|hashé|hashed|haché|hachage|digest|checksum|empreinte|"
    r"fingerprint|md5|sha-?(?:1|224|256|384|512)?|bcrypt|ntlm|sha256sum|md5sum)(?![^\W_])")
_HEX_VALUE = re.compile(r"[0-9a-fA-F]{8,128}|(?:[0-9a-fA-F]{2}[: ]){7,63}[0-9a-fA-F]{2}")


# "l'ancien (1966A) ne marche plus", "the old code 7781": a value named old right before
# it is one that was changed (a value after "l'ancien c'était" is still told as a secret:
# people say so when the old one is put back or still works somewhere).
_OLD_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:ancien(?:ne)?s?|old|previous|former|pr[ée]c[ée]dente?)"
    r"(?P<between>(?:[^\S\r\n]+[^\s(«\"“]{1,20}){0,6}?)"
    r"[^\S\r\n]*[,(:«\"“]?[^\S\r\n]*\Z")
# ... and only when it is the value that is old: "l'ancien code X", "the old password:
# X", "(l'ancien, X", not "le régisseur précédent nous a laissé X" or "l'accès de
# l'ancien presta : login / X" (an old person or provider, a live value)
_OLD_SECRET_WORDS = _words("""
code codes digicode mot mots passe mdp password passwords pass pw pwd pin clé cle clef key
keys one un une value valeur wifi wi-fi sésame sesame secret token jeton identifiants
""")


def _old_names_secret(between: str) -> bool:
    words = [w.strip("(),:;«»\"'“”").lower() for w in between.split()]
    words = [w.split("'")[-1].split("’")[-1] for w in words if w]
    return not words or any(w in _OLD_SECRET_WORDS for w in words)


# ... unless a verb gives it: "l'ancien c'était X", "the old one was X"
_OLD_VERB = re.compile(r"(?i)(?<![^\W_])(?:c['’\s]?[ée]tait|[ée]tait|est|c['’\s]est|was|is|"
                       r"remis|remettre|restored|back)(?![^\W_])")
# ... or the words after it say it still works: "l'ancien code 5509 reste actif jusqu'au 31"
_STILL_AFTER = re.compile(
    r"(?i)[^\n]{0,20}?(?<![^\W_])(?:reste|restera|encore|still|toujours|jusqu['’]|until)"
    r"(?![^\W_])")

# ... or before it: "là c'est resté l'ancien : X", "it still has the old one: X", and
# an old value put back ("j'ai remis l'ancien mdp : X", "I restored the old one: X")
_STILL_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:rest[ée]e?s?|reste|encore|toujours|still|remis|remise|remet|remettre|"
    r"r[ée]tabli|restored|reverted|put[^\S\n]+back)(?![^\W_])[^\n.;!?]{0,14}\Z")


# A value right after these is a fragment of a secret, not the secret: "se termine par
# 42", "ending in ***8Kq", "les 4 derniers chiffres 4417", "commence par Ma".
_FRAGMENT_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:(?:se\s+)?termin\w*\s+par|finit\s+par|finissant\s+par|"
    r"commen[cç]\w*\s+par|d[ée]but\w*\s+par|(?:ending|ends|starting|starts|beginning|"
    r"begins)\s+(?:in|with|by)|last\s+(?:\w+\s+)?(?:digits|characters|chars)|"
    r"derni[èe]r\w*\s+(?:\w+\s+)?(?:chiffres|caract[èe]res)|premi[èe]r\w*\s+"
    r"(?:\w+\s+)?(?:chiffres|caract[èe]res|lettres))[^\w\n]{0,4}(?:\w+[^\w\n]{1,3}){0,1}\Z")
# A value right after these words (nothing but a space, a bracket or a quote between)
# is what they name: a network's name, a serial, a model, a user, a file, a reference.
_NAMES_NEXT = _words("""
ssid réseau reseau network serial série serie s/n sn n° no. model modèle modele version
username user utilisateur identifiant login imei iban ref réf référence reference ticket
commande order facture invoice colis parcel tracking suivi mac plaque immatriculation
immatriculée immatriculé badge matricule build sku host hostname serveur server fichier
file nommé nommée appelé appelée called named dossier folder
""")


def _named_next(text: str, a: int) -> bool:
    """Whether the word right before ``text[a:]`` (a space, a bracket or a quote apart,
    on the same line) names the value: "(réseau Mairie_Guest)", "SSID Livebox-A3F2"."""
    i = a
    while i > 0 and a - i < 4 and text[i - 1] in " \t(«\"“'":
        i -= 1
    if i == a or i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "°."):
        return False
    j = i
    while j > 0 and i - j < 16 and not text[j - 1].isspace() and text[j - 1] not in "(«\"“:":
        j -= 1
    if _recent_word(text[j:i]) not in _NAMES_NEXT:
        return False
    # ... unless that word qualifies a secret's label: "code utilisateur 3308", "clé
    # réseau X", "mot de passe user X"
    k = j
    while k > 0 and j - k < 3 and text[k - 1] in " \t":
        k -= 1
    return _LABEL_BEFORE.search(text, max(0, k - 16), k) is None


_LABEL_WORDS = _words("""
code codes clé clef cle key pin passe mdp password pwd pass passcode psk
""")
_LABEL_BEFORE = re.compile(r"(?i)(?<![^\W_])(?:code|cl[ée]f?|key|pin|passe|mdp|password|pwd|"
                           r"pass|passcode|psk)\Z")


_WORD_SPLIT = re.compile(r"[\s'’]+")


def _filler_words(value: str) -> bool:
    """« l'habituel », "the usual", "le même": a value of ordinary words only (no digit)
    says where the password is, not what it is."""
    if len(value) > 40 or any(c.isdigit() for c in value):
        return False
    words = [w for w in _WORD_SPLIT.split(value.lower().strip(".,;:!?")) if w]
    return bool(words) and all(len(w) == 1 or w in _STOP_VALUES or w in _NOT_PASSPHRASE
                               for w in words)


def _context_veto(text: str, a: int, b: int, kind: str) -> bool:
    """Whether the words just before ``text[a:b]`` (on its line) say it is no live
    secret: an example, a fragment, an old value, a name of something else, or (for a
    password) a hex digest named as such."""
    lo = max(0, a - 60, text.rfind("\n", max(0, a - 60), a) + 1)
    if _EXAMPLE_BEFORE.search(text, max(lo, a - 30), a) or _EXAMPLES_OF.search(
            text, max(lo, a - 60), a) or _FRAGMENT_BEFORE.search(
            text, max(lo, a - 40), a) or _identifier_half(text, a, lo) \
            or _key_before_secret(text, a, b, lo):
        return True
    if _not_secret_value(text, a, b, lo) or _PUBLIC_LABEL.search(text, max(lo, a - 30), a):
        return True
    if kind != "password":
        return False
    if _named_next(text, a) or _filler_words(text[a:b]) or _code_like(text, a, b) \
            or _PUBLIC_NUMBER_AFTER.match(text, b, min(len(text), b + 40)) \
            or _network_before_key(text, a, b) or _schedule_or_phone(text, a, b) \
            or _error_code(text, a, b, lo) or _name_given(text, a, lo) \
            or _numbered_sibling(text, a, b, lo) \
            or (text[a] in "WwOo" and _SECURITY_MODE.fullmatch(text, a, b) is not None):
        return True
    om = _OLD_BEFORE.search(text, max(lo, a - 60), a)
    if om is not None and not _OLD_VERB.search(om.group("between")) \
            and _old_names_secret(om.group("between")) \
            and not _STILL_AFTER.match(text, b, min(len(text), b + 40)) \
            and not _STILL_BEFORE.search(text, max(lo, om.start() - 24), om.start()):
        return True
    return bool(_HEX_VALUE.fullmatch(text, a, b) and _HASH_BEFORE.search(text, lo, a))


# A label that ends on a bracket holding only the word public ("Identifiant marchand
# (public) :", "Key [public]:"): the value is the public half of a pair, as after it
# (_SHAREABLE_AFTER).  Not "Wi-Fi public :", "clé (pas publique) :".
_PUBLIC_LABEL = re.compile(r"(?i)[(\[][^\S\n]*(?:public|publique|publiable|publishable)"
                           r"[^\S\n]*[)\]][^\S\n]*[:=][^\S\n]*\Z")


# A Wi-Fi network's security mode, as a router's page or a table of access names it
# ("WPA3-Personal", "WPA2-PSK (AES)", "WPA2/WPA3 Personnel", "Open"): the standard's
# vocabulary under a Wi-Fi heading, never its key ("Wpa2-Lavoir-83" is one).
_SECURITY_MODE = re.compile(
    r"(?i)(?:wpa[23]?|wep|owe|open|ouvert)(?:[^\S\n]*[-/+ ][^\S\n]*(?:wpa[23]?|personal|"
    r"personnel|enterprise|entreprise|psk|sae|aes|tkip|ccmp|mixed|mixte|transition|owe|"
    r"\((?:aes|tkip|ccmp|sae|psk)\)))*")


# A value the words right after it say is (like) a number anyone knows ("c 31470 comme
# le code postal", "75011 (code postal)", "same as the zip code"): redacting it would
# hide nothing that those words do not tell.
_PUBLIC_NUMBER_AFTER = re.compile(
    r"(?i)[^\S\n]*[,(]?[^\S\n]*(?:(?:comme|soit|like|same[^\S\n]+as|i\.e\.|c['’]est|is|=)"
    r"[^\S\n]*)?(?:(?:le|la|l['’]|notre|votre|mon|ma|son|sa|our|your|my|the|its|their)"
    r"[^\S\n]*)?(?:code[^\S\n]+postal|zip(?:[^\S\n]+code)?|post[^\S\n]?code|"
    r"postal[^\S\n]+code|num[ée]ro[^\S\n]+de[^\S\n]+t[ée]l[ée]phone|phone[^\S\n]+number)"
    r"(?![^\W_])")


# Values of a shape that is no password, whatever label is near: a cron schedule
# ("0 23 * * *", five fields with a "*"), and the head of a phone number ("06 71 39"
# out of "06 71 39 84 22", "+33 6 71 39 84 22"): a code is never the start of one.
_CRON = re.compile(r"(?:[\d*/,\-]{1,12}[^\S\n]+){4}[\d*/,\-]{1,12}")
_PHONE_AT = re.compile(r"(?:\+\d{2,3}[^\S\n]?(?:\(0\)[^\S\n]?)?[1-9]|0[1-9])"
                       r"(?:[ .]?\d\d){4}(?!\d)")


def _schedule_or_phone(text: str, a: int, b: int) -> bool:
    if "*" in text[a:b] and _CRON.fullmatch(text, a, b):
        return True
    c = text[a]
    if c != "0" and c != "+":
        return False
    m = _PHONE_AT.match(text, a, min(len(text), a + 24))
    return m is not None and m.end() >= b and (a == 0 or not text[a - 1].isalnum())


# An error's code: digits right after "(code" or "(error" on a line that says
# something failed ("Login failed for user 'x' (code 18456)", "échec (erreur 0x80070005)").
_ERROR_CODE_BEFORE = re.compile(
    r"(?i)\([^\S\n]*(?:code|err(?:eu)?r?|errno|status)[^\S\n]*[:=#]?[^\S\n]*\Z")
_FAILED_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:failed|failure|error|erreur|[ée]chec|[ée]choue|refus[ée]e?|denied|"
    r"rejected|rejet[ée]e?|invalid|invalide)(?![^\W_])")
_ERROR_CODE_VALUE = re.compile(r"\d[0-9A-Za-z]{1,9}")


def _error_code(text: str, a: int, b: int, lo: int) -> bool:
    if not _ERROR_CODE_VALUE.fullmatch(text, a, b):
        return False
    m = _ERROR_CODE_BEFORE.search(text, max(lo, a - 16), a)
    return m is not None and _FAILED_BEFORE.search(text, lo, m.start()) is not None


# A name given to something, after the password it names ("Le nom que je lui ai donné
# c'est « Tablette accueil »", "I named it Office Laptop"): a name word before the value
# on its line with no password label after it.
_NAME_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:nom|name|named|nomm[ée]e?|appel[ée]e?|intitul[ée]e?|libell[ée]|"
    r"label)(?![^\W_])(?![^\S\n]*(?:d['’]|de[^\S\n]|du[^\S\n]|of[^\S\n]))")


def _name_given(text: str, a: int, lo: int) -> bool:
    last: re.Match[str] | None = None
    for m in _NAME_BEFORE.finditer(text, lo, a):
        last = m
    return last is not None and _PW_KEYWORD_ANYCASE.search(text, last.end(), a) is None


# One of a list of numbered identifiers ("Serial numbers: BK3000-FR-004812,
# BK3000-FR-004813", "postes PC-ACC-07 / PC-ACC-08"): a value that the item before it
# in the list copies but for its last digits is the list's next item, not a password;
# so is the end of a range ("numéros de série : MJ0GK2P1 à MJ0GK2P7", "PC-07 to PC-12").
_SIBLING_BEFORE = re.compile(
    r"(?<![^\s(\[:])(?P<s>[^\s,;/]{4,64})(?:[^\S\n]*[,;/–][^\S\n]*|\.\.|[^\S\n]+"
    r"(?:à|au|to|through|thru|jusqu['’]à|-)[^\S\n]+)\Z")
_TRAILING_DIGITS = re.compile(r"\d{1,8}\Z")


def _numbered_sibling(text: str, a: int, b: int, lo: int) -> bool:
    m = _SIBLING_BEFORE.search(text, max(lo, a - 72), a)
    if m is None:
        return False
    sibling, value = m.group("s"), text[a:b]
    if len(sibling) != len(value) or sibling == value:
        return False
    d = _TRAILING_DIGITS.search(value)
    if d is None:
        return False
    head = len(value) - len(d.group())
    return head >= 3 and sibling[:head] == value[:head] and sibling[head:].isdigit()


# Values that say what they are, whatever found them: a key public by its provider's
# design (Stripe's publishable "pk_live_", Mapbox's public "pk.eyJ"), a JWT's header
# alone (no payload, no signature: '{"alg":"RS256","typ":"JWT"}'), a commit id after a
# git command, a value whose own name says it is something else ("RECAPTCHA_SITE_KEY=",
# "VersionId:").
_PUBLIC_PREFIX = ("pk_live_", "pk_test_", "pk.eyJ")
_JWT_HEADER = re.compile(r"eyJ[A-Za-z0-9_\-]{10,200}={0,2}")
_JWT_HEADER_KEYS = frozenset({"alg", "typ", "kid", "cty", "x5t", "x5u", "jku", "enc", "zip",
                              "crit", "x5t#S256"})
_GIT_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:git[^\S\n]+(?:checkout|show|revert|cherry-pick|reset(?:[^\S\n]+--hard)?"
    r"|rebase|merge|log|diff|branch[^\S\n]+\S+|tag[^\S\n]+\S+)|head is now at|commit|"
    r"etag|integrity)[\"':=\s]{1,4}\Z")
# A commit id that its own clause names, further than right after the word: "Commit that
# added the connector: 9f3c2e7...", "le commit qui corrige le bug : 4e1d...", "fixed in
# revision 8a2f...".  A lower-case hex of a commit's length after "commit" (or
# "revision", "changeset") in the same sentence, no secret's word in between, is what
# the sentence names, whatever label opened a window before it.
_COMMIT_ID = re.compile(r"[0-9a-f]{7,40}")
_COMMIT_CLAUSE = re.compile(
    r"(?i)(?<![^\W_])(?:commit|r[ée]vision|changeset)(?![^\W_])"
    r"(?:(?!token|secret|key|cl[ée]|pass|mdp|pwd)[^.!?;\n]){0,60}\Z")
_OWN_NAME = re.compile(
    r"(?P<name>[A-Za-z][A-Za-z0-9_.\-]{1,60})[\"'\]]{0,2}[^\S\n]*(?:=>|:=|=|:)[^\S\n]*[\"'`]?\Z")
_ID_NAME = re.compile(r"(?:[a-z0-9](?:Id|ID)|[_\-.](?:id|Id|ID))\Z")


def _not_secret_value(text: str, a: int, b: int, lo: int) -> bool:
    value = text[a:b]
    if value.startswith(_PUBLIC_PREFIX):
        return True
    if value.startswith("eyJ") and _JWT_HEADER.fullmatch(value) and _jwt_header(value):
        return True
    if _HEX_VALUE.fullmatch(value) and _GIT_BEFORE.search(text, max(lo, a - 40), a):
        return True
    if _COMMIT_ID.fullmatch(value) and _COMMIT_CLAUSE.search(text, max(lo, a - 70), a):
        return True
    if a and text[a - 1] == ">":
        em = _ELEMENT_BEFORE.search(text, max(lo, a - 120), a)
        if em is not None and _IDENTITY_PARTS.intersection(
                p.lower() for p in _IDENT_PART.findall(em.group("tag"))):
            return True             # "<UUID>q0v9mPZ3RRi0eJ6w8cL2Vg==</UUID>", "<UserName>"
    nm = _OWN_NAME.search(text, lo, a)
    if nm is None:
        return False
    name = nm.group("name")
    if _ID_NAME.search(name) and "sess" not in name.lower():
        return True                 # "VersionId:", "request_id=", "X-Trace-ID:" (a
                                    # session's id is its key: "nc_session_id=")
    last = _IDENT_PART.findall(name)
    if len(last) > 1 and last[-1].lower() in _IDENTITY_LAST:
        return True                 # "psk_identity:", "SMTP_USER=", "token_name": the
                                    # last word says whose or which, a secret's word before
                                    # it says of what
    # "RECAPTCHA_SITE_KEY=", "ALGOLIA_SEARCH_KEY": a key or token the name says is public
    # (never a password or a secret: "REDIS_HOST_PASSWORD", "SESSION_SECRET")
    if not any(c in name for c in "_.-"):
        return False
    parts = {p.lower() for p in _IDENT_PART.findall(name)}
    return bool(parts & {"key", "token", "apikey"}) and not parts & _STRONG_NAME_PART \
        and bool(parts & _PUBLIC_NAME_PART)


# The text of an XML element whose name names an identity (KeePass's <UUID>, <UserName>,
# <Title>; a <Serial>, a <Guid>, an <EntryId>) is that identity, not a secret, whatever
# password label came before it.
_ELEMENT_BEFORE = re.compile(r"<(?P<tag>[A-Za-z][\w.\-:]{0,40})(?:[^\S\n][^<>\n]{0,80})?>\Z")
_IDENTITY_PARTS = frozenset({"uuid", "guid", "id", "name", "username", "user", "login",
                             "title", "url", "uri", "serial", "host", "hostname", "email"})
_IDENTITY_LAST = frozenset({"identity", "user", "username", "login", "name", "uid"})
_STRONG_NAME_PART = frozenset({"pass", "password", "passwd", "pwd", "psk", "secret", "private",
                               "priv", "passphrase"})
_PUBLIC_NAME_PART = frozenset({"site", "public", "pub", "publishable", "search", "sid",
                               "username", "user", "login", "fingerprint", "hash", "url",
                               "uri", "endpoint", "version", "serial", "license", "licence"})


def _jwt_header(value: str) -> bool:
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        header = json.loads(decoded)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and bool(header) and set(header) <= _JWT_HEADER_KEYS


# Code where prose would hold a value: a variable's name ("DEPLOY_TOKEN" in a table of CI
# variables), a substitution ("$(op read ...)", "${DB_PASS}", a template), a command
# given an argument ("ConvertTo-SecureString '...'"), the path of a link ("https:" then
# "//host/..." cut at the colon).
_CONSTANT_NAME = re.compile(r"[A-Z][A-Z]*(?:_[A-Z]+)+")
_COMMAND_NAME = re.compile(r"[A-Z][a-z]+[A-Za-z]*-[A-Z][a-z]+[A-Za-z]*")   # Verb-Noun
_ARGUMENT_AFTER = re.compile(r"[^\S\r\n]+(?:['\"]|-[A-Za-z])")
_SCHEME_END = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{1,20}:/?\Z")


def _code_like(text: str, a: int, b: int) -> bool:
    value = text[a:b]
    # (an interpolation reads the value from elsewhere: shell's "$(...)", "${...}",
    # templates' "{{ }}", "{% %}", "<% %>", Puppet's Hiera "%{lookup('...')}", Ruby's and
    # Logstash's "#{...}", Python's ini "%(name)s")
    return (value.startswith(("$(", "${", "`", "{{", "{%", "<%", "%{", "#{", "%("))
            or _CONSTANT_NAME.fullmatch(value) is not None
            or (_COMMAND_NAME.fullmatch(value) is not None
                and _ARGUMENT_AFTER.match(text, b) is not None)
            or (value.startswith("/") and "@" not in value
                and _SCHEME_END.search(text, max(0, a - 22), a) is not None))


# Masked, elided and filler values: "sk_live_...9kQa", "T00000000/B00000000/XXXXXXXX",
# "SG.xxxxxxxx.yyyyyyyy", "changeme" — documentation and dashboards, never a secret.
_MASKED = re.compile(r"(?i)\.\.\.|…|([xyz*•])\1{5}|0{8}|[*•●]{3}")
# A provider-shaped token is filler when elided or made of several filler runs
# ("T00000000/B00000000/XXXXXXXX"); one run may be a test value ("ghp_000...0").
_FILLER_RUN = re.compile(r"([xX0*•])\1{5,}")
_FILLER_VALUES = frozenset({"changeme", "change-me", "change_me", "changeit", "replaceme",
                            "replace-me", "replace_me", "redacted", "todo", "tbd"})


def _provider_filler(text: str, f: Finding) -> bool:
    value = text[f.start:f.end]
    # filler runs in two parts of the token ("T00000000/B00000000/XXXXXXXX"); two runs in
    # one generated part ("ghp_0000…1000000") are a test value, still redacted
    return "..." in value or "…" in value or sum(
        1 for part in _TOKEN_PARTS.split(value) if _FILLER_RUN.search(part)) >= 2


_TOKEN_PARTS = re.compile(r"[/.:]")


_SLASH = re.compile(r"[^\S\r\n]+/(?:[^\S\r\n]*\n[ \t]*(?=\S)|[^\S\r\n]+)")   # (or a wrap)


def _drop_pair_logins(text: str, found: list[Finding]) -> list[Finding]:
    """"code de connexion : 0452871T / DIRPINS45": of two values joined by a spaced
    slash, the first is the login of a pair when it has no symbol and the second has
    letters; only the second is the secret."""
    if not found:
        return found
    starts = {f.start: f for f in found if f.kind == "password"}
    drop = set()
    add = []
    for f in found:
        if f.kind != "password":
            continue
        sm = _SLASH.match(text, f.end, f.end + 8)
        if sm is None:
            continue
        first = text[f.start:f.end]
        if sm.end() in starts:
            second_end = starts[sm.end()].end
        else:
            # the second value was not taken on its own: take it if it looks secret
            eol = text.find("\n", sm.end(), sm.end() + 200)
            span = _take_value(text, sm.end(), eol if eol >= 0 else
                               min(len(text), sm.end() + 200), ident=False)
            if span is None:
                continue
            a, second_end = _strip_quotes(text, *span)
            value = text[a:second_end]
            if a != sm.end() or not (_looks_secret(value) or _at_password(value)):
                continue
        second = text[sm.end():second_end]
        if all(c.isalnum() or c in "._-" for c in first) and any(
                c.isalpha() for c in second) and not second.isdigit():
            drop.add(f)
            if sm.end() not in starts:
                add.append(Finding("password", sm.end(), second_end))
    return [f for f in found if f not in drop] + add if drop else found


# Forwarded or quoted history, and a note above it saying the password it holds was
# changed since ("le mot de passe qu'il donne plus bas a été changé depuis", "the
# password in the mail below has been reset"): the values down there are dead.
_HISTORY_MARK = re.compile(
    r"(?im)^[^\S\n]*(?:-{2,}[^\S\n]*(?:forwarded|original|message\s+(?:transf[ée]r[ée]|"
    r"d['’]origine))|begin\s+forwarded|d[ée]but\s+du\s+message|de\s*:|from:|>)")
_STALE_NOTE = re.compile(
    r"(?is)(?<![^\W_])(?:mot\s+de\s+passe|mdp|password|code|identifiants?|credentials)"
    r"(?:(?![.!?\n]).){0,80}?(?<![^\W_])(?:a\s+[ée]t[ée]|ont\s+[ée]t[ée]|has\s+been|"
    r"have\s+been|was|were)\s+(?:chang[ée]e?s?|modifi[ée]e?s?|r[ée]initialis[ée]e?s?|"
    r"changed|reset|updated|revoked|r[ée]voqu[ée]e?s?)")


def _drop_stale_history(text: str, found: list[Finding]) -> list[Finding]:
    """Password findings in forwarded/quoted history below a note that says the password
    given there was changed."""
    if not found:
        return found
    hm = _HISTORY_MARK.search(text, 0, min(len(text), 20_000))
    if hm is None or not any(f.kind == "password" and f.start > hm.start() for f in found):
        return found
    if not _STALE_NOTE.search(text, max(0, hm.start() - 2000), hm.start()):
        return found
    return [f for f in found if f.kind != "password" or f.start < hm.start()]


# A correction in one sentence: "ce n'est pas X c'est Y", "c'est Y, pas X", "Y, not X",
# "not X but Y".  When Y was found as a password, X is the value given wrongly, and a
# near-copy of Y (a typo, two digits swapped, last year's version) tells the real one
# but for a character or two: it goes too.  (An old value that the text says no longer
# works, with no correction beside it, is judged by _context_veto.)
_CORRECTED_AFTER = re.compile(
    r"[^\S\n]*[,;(]?[^\S\n]*(?:et[^\S\n]+|and[^\S\n]+)?(?:pas|non|not|instead[^\S\n]+of|"
    r"au[^\S\n]+lieu[^\S\n]+de)[^\S\n]+(?:le[^\S\n]+|la[^\S\n]+|the[^\S\n]+)?"
    r"(?P<v>[^\s,;.()«»\"]{4,40})(?=[\s,;.)»\"]|\Z)", re.I)
_CORRECTED_BEFORE = re.compile(
    r"(?<![^\W_])(?:pas|not|non)[^\S\n]+(?P<v>[^\s,;.()«»\"]{4,40})[^\S\n]*[,;]?\s{0,3}"
    r"(?:mais[^\S\n]+|but[^\S\n]+)?(?:c['’]est|it['’]s|it[^\S\n]+is|mais|but)[^\S\n]*:?\s{0,3}\Z",
    re.I)


def _near_copy(wrong: str, right: str) -> bool:
    """Whether ``wrong`` looks like a mistyped ``right``: a password's shape (a letter
    or a digit and a symbol or a digit; not a date, a time, a reference), and the same
    first or last two characters."""
    if not _has_non_letter(wrong) or _DECOY_SHAPE.fullmatch(wrong) or _TIME_LIKE.fullmatch(wrong):
        return False
    w, r = wrong.lower(), right.lower()
    return w != r and (w[:2] == r[:2] or w[-2:] == r[-2:])


def _corrected_values(text: str, lower: str, found: list[Finding]) -> list[Finding]:
    """The values a correction sets aside beside a password found (see above);
    ``lower`` is ``text`` lower-cased."""
    out: list[Finding] = []
    for f in found:
        if f.kind != "password":
            continue
        lo, hi = max(0, f.start - 70), f.end + 60
        if lower.find("pas", lo, hi) < 0 and lower.find("no", lo, hi) < 0 \
                and lower.find("lieu", lo, hi) < 0 and lower.find("instead", lo, hi) < 0:
            continue                # (no word of a correction near: the common case)
        right = text[f.start:f.end]
        after = _CORRECTED_AFTER.match(text, f.end, min(len(text), f.end + 60))
        if after is not None and _near_copy(after.group("v"), right):
            out.append(Finding("password", after.start("v"), after.end("v")))
        before = _CORRECTED_BEFORE.search(text, max(0, f.start - 70), f.start)
        if before is not None and _near_copy(before.group("v"), right):
            out.append(Finding("password", before.start("v"), before.end("v")))
    return out


def _live(text: str, found: list[Finding]) -> list[Finding]:
    """``found`` without the values that are masked or filler (any kind but a key block),
    or that their context says are no live secret (the detectors that read prose and
    names: password and generic api-token findings; any kind that the words right after
    it say may be shared)."""
    return [f for f in found if f.kind == "private-key" or _alive(text, f)]


def _alive(text: str, f: Finding) -> bool:
    a, b = f.start, f.end
    value = text[a:b]
    if (_provider_filler(text, f) if _PRIORITY[f.kind] >= 80 else _MASKED.search(value)) \
            or value.lower() in _FILLER_VALUES or "EXAMPLE" in value \
            or _is_placeholder(value):                  # "XXXXX-XXXXX-XXXXX"
        return False
    # (cheap tests on the value's characters first: each look-up below is rare)
    if ("$" in value or value[:1] in "{*" or (a and text[a - 1] in "$}")) \
            and _in_password_hash(text, a, b):
        return False
    if value[:1] in "E$<[" and _ENCRYPTED_OR_PHRASE.match(text, a):
        return False
    if "?" in value and " " in value and _QUESTION.fullmatch(value):
        return False
    if f.kind in ("password", "api-token") and _context_veto(text, a, b, f.kind):
        return False
    after = _AFTER_CUE.search(text, b, min(len(text), b + 60))
    return after is None or not (_CROSSED_OUT.match(text, b)
                                 or _SHAREABLE_AFTER.match(text, b, min(len(text), b + 60)))


# Words that the cues after a value need (_CROSSED_OUT, _SHAREABLE_AFTER): one search
# says whether either may match.
_AFTER_CUE = re.compile(r"(?i)barr|ray[ée]|crossed|struck|share|secret|sensi|confiden|"
                        r"publi|exampl|exempl|sample|dummy|fake|factice|fictiv|placeholder")


# A password's hash in a known format (crypt's "$2y$10$...", "$6$salt$...", "$argon2id$...",
# Django's "pbkdf2_sha256$...", LDAP's "{SSHA}...", MySQL's "*6BB4..."), as a database
# dump or a shadow file holds it: it is what the server keeps instead of the password,
# never the password itself.
_PASSWORD_HASH = re.compile(r"""(?x)
  (?:\d\|)?\$argon2(?:id|i|d)\$v=\d{1,3}\$m=\d{1,9},t=\d{1,4},p=\d{1,4}\$[^\s'"`,;|]{8,400}
| (?:\d\|)?\$(?:2[abxy]?|1|5|6|md5|y|7|gy|sha1|apr1|scrypt|pbkdf2[\w\-]*)
    \$[^\s'"`,;|]{8,400}
| (?:pbkdf2_sha256|pbkdf2_sha1|bcrypt_sha256|bcrypt|argon2|scrypt)\$[^\s'"`,;|]{8,400}
| \{(?:S?SHA\d*|CRYPT|S?MD5|PBKDF2[\w\-]*|ARGON2|BCRYPT)\}[^\s'"`,;|]{8,400}
| \*[0-9A-F]{40}
""")
# A value encrypted in place (SOPS' "ENC[AES256_GCM,...]", Ansible Vault's "$ANSIBLE_VAULT"),
# useless without its key; a placeholder phrase in brackets ("<ask Daniel>", "[à remplir]").
_ENCRYPTED_OR_PHRASE = re.compile(r"ENC\[[A-Z0-9_]{3,20},|\$ANSIBLE_VAULT;|"
                                  r"<[^<>\n]{1,40}\s[^<>\n]{1,40}>|\[[^\[\]\n]{1,40}\s[^\[\]\n]{1,40}\]")
# A value the words right after it say is crossed out: "PIN 0000 barré et à côté 5172".
_CROSSED_OUT = re.compile(r"(?i)[^\S\n]*[(,]?[^\S\n]*(?:barr[ée]e?s?|ray[ée]e?s?|crossed\s+out|"
                          r"struck\s+(?:out|through))(?![^\W_])")
# A question is no value: "La question secrète est « Quel est le nom de votre chien ? »".
_QUESTION = re.compile(r"(?is)[^\s?]+(?:\s+[^\s?]+)+\s*\?[\s»”\"']*")
_HASH_TOKEN_STOP = frozenset(" \t\r\n'\"`,;|()<>")
_HASH_END_STOP = _HASH_TOKEN_STOP - {","}          # argon2's parameters hold commas


def _in_password_hash(text: str, a: int, b: int) -> bool:
    """Whether ``text[a:b]`` lies inside a password hash (see above)."""
    lo = a
    while lo > 0 and a - lo < 120 and text[lo - 1] not in _HASH_TOKEN_STOP:
        lo -= 1
    hi = b
    while hi < len(text) and hi - b < 400 and text[hi] not in _HASH_END_STOP:
        hi += 1
    if "$" not in text[lo:hi] and not text.startswith(("{", "*"), lo):
        return False
    m = _PASSWORD_HASH.search(text, lo, hi)
    if m is None or m.end() < b:
        return False
    # a user's name before its hash ("preview:$apr1$...", an .htpasswd or a shadow line)
    return m.start() <= a or _HASH_OWNER.fullmatch(text, a, m.start()) is not None


_HASH_OWNER = re.compile(r"[\w.@\-]{1,64}:")


# The words right after a value that say it may be shared: "(that's the user, fine to
# share)", "— c'est public", "(not a secret)", or that it is an example.  (Documentation
# values say so in their own letters: AWS's example keys "AKIAIOSFODNN7EXAMPLE",
# "...EXAMPLEKEY", which gitleaks' AWS rule allows; a generated secret never spells
# EXAMPLE.)
_SHAREABLE_AFTER = re.compile(
    r"(?i)[\"'»”’`]?[^\S\n]*[(\[,;:\-–—][^\n()]{0,30}?(?<![^\W_])(?:"
    r"(?:fine|safe|ok|okay)\s+to\s+(?:share|publish|post)|not\s+(?:a\s+|really\s+)?"
    r"(?:secret|sensitive|confidential)|no\s+secret|pas\s+(?:un\s+|vraiment\s+)?"
    r"(?:secret|sensible|confidentiel)|(?:c['’]est|it['’]s|is|est)\s+public(?:que)?"
    r"(?![^\W_])|public(?:que)?\s+(?:by\s+design|par\s+nature))"
    # "(the example salt from the docs)", "(valeur d'exemple)": documentation; the
    # bracket opens on it, a small word apart (not "(ticket [example #4821])", not a
    # domain: "api.example.org")
    r"|[\"'»”’`]?[^\S\n]*[(\[][^\S\n]*(?:(?:the|an?|un|une|just|only|juste|valeur|value)"
    r"[^\S\n]+|d['’])?(?:example|exemple|sample|dummy|fake|factice|fictive?|placeholder)s?"
    r"(?![\w@/\-]|\.\w|[^\S\n]*[#\d])"
    # "X (publique)", "X [public key]": a bracket that holds only the word public says the
    # value is the public half (not "(wifi public)", "(pas public)")
    r"|[^\S\n]*[(\[][^\S\n]*(?:(?:cl[ée]f?|key)[^\S\n]+)?(?:public|publique|publiable|"
    r"publishable)(?:[^\S\n]+key)?[^\S\n]*[)\]]", re.I)


def _looks_secret(value: str) -> bool:
    """A password-like token: strong, and not an address, date, version or reference."""
    return (_strong(value) and not _DECOY_SHAPE.fullmatch(value)
            and not _URLISH.match(value) and not _EMAIL.fullmatch(value)
            and ("@" not in value or _at_symbol(value)) and "/" not in value
            and "\\" not in value
            and value.lower() not in _STOP_VALUES and not _is_placeholder(value)
            and not _FINGERPRINT_PREFIX.match(value) and not _FILE_NAME.fullmatch(value))


def _at_symbol(value: str) -> bool:
    """"Qv8#mZ2!rL5@tK9", "Rustine!Chambre@Air9": an "@" as one symbol among others of a
    generated or composed password, not an address's: once, inside, no host after it,
    and the value has capitals, small letters, digits and another symbol without it."""
    i = value.find("@")
    rest = value[:i] + value[i + 1:]
    return (0 < i < len(value) - 1 and "@" not in rest and "." not in value[i + 1:]
            and _classes(rest) >= 4)


def _leet_at(value: str) -> bool:
    """"Cr@yon-Bleu-19": an "@" for an "a" between two letters of a password-like value
    (in a window after a password label; an address has a dot after its "@")."""
    i = value.find("@")
    return (0 < i < len(value) - 1 and value.count("@") == 1 and value[i - 1].isalpha()
            and value[i + 1].isalpha() and _at_password(value))


def _at_password(value: str) -> bool:
    """"Cl3m@tite", "Recre@Soleil44", "M@irie.Exemple.1789": an "@" inside a password,
    not an address (an address ends with a dot and letters)."""
    return ("@" in value and not _EMAIL_TLD.fullmatch(value)
            and _looks_secret(value.replace("@", "a")))


_EMAIL_TLD = re.compile(r"[^\s@]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}")


_FILE_NAME = re.compile(
    r"(?i).+\.(?:exe|msi|zip|pdf|docx?|xlsx?|odt|ods|png|jpe?g|gif|txt|csv|tar|gz|tgz|dmg|"
    r"pkg|deb|rpm|iso|apk|kdbx|ovpn|conf|log|sql|bak|eml|html?|php|js|py|sh)")
_FINGERPRINT_PREFIX = re.compile(r"(?i)(?:sha\d{0,3}|md5|blake2\w*)[:=]")


_HEX_RUN = re.compile(r"[0-9a-fA-F]{12,}")     # a hash or a commit id, in prose


def _window_limit(text: str, pos: int, reach: int) -> int:
    """Where a window opened at ``pos`` ends: ``reach`` characters on, or at the end of
    the paragraph, unless the paragraph ends with a colon ("It's:" then an empty line
    and the value), in which case the first line of the next paragraph is included."""
    n = len(text)
    limit = min(n, pos + reach)
    stop = _WINDOW_STOP.search(text, pos, limit)
    if stop is None:
        # (A token the reach cuts in two is judged as its piece.  Leaving it out, which
        # spared a UUID's piece in secrets-tune-r, made the held-out set fall by one
        # secret, and was reverted: a long password near the window's end is likelier.)
        return limit
    if text[pos:stop.start()].rstrip(" \t>").endswith(":"):
        nxt = stop.end()
        while nxt < limit and text[nxt] in " \t>\n":
            nxt += 1
        eol = text.find("\n", nxt, limit)
        return eol if eol >= 0 else limit
    return stop.start()


_SENTENCE_END = re.compile(r"[.!?][^\S\n]*\n")


# A quoted passphrase right after a separator: « chat noir 1975 », "correct horse 7".
_QUOTED_PHRASE = re.compile(
    r"(?P<q>[«“\"'])[^\S\r\n]*(?P<v>[^\s«»“”\"']{1,30}(?:[^\S\r\n][^\s«»“”\"']{1,30}){1,9})"
    r"[^\S\r\n]*[»”\"']")
_SEP_BEFORE = re.compile(
    r"(?:[:=]|(?<![^\W_])(?:est|c['’\s]est|is|it['’]s|soit|sera|will\s+be)"
    r"(?:[^\S\r\n]+(?:d[ée]sormais|maintenant|toujours|actuellement|now|still|currently))?)"
    r"[^\S\r\n]*(?:\r?\n[ \t>]*)?\Z", re.I)
# A word that names a phrase stands for the verb, the label's own or after it: 'uses the
# passphrase "..."', "est la phrase « ... »", "la phrase secrète « ... »"; the words in
# quotes are then the phrase's, whatever they say (but a password's own words)
_PHRASE_BEFORE = re.compile(
    r"(?<![^\W_])(?:pass)?phrase(?:[^\S\r\n]+(?:secr[eè]te|de[^\S\r\n]+passe))?"
    r"[^\S\r\n]*(?:\r?\n[ \t>]*)?\Z", re.I)
_SEP_BEFORE_REACH = 28


def _quoted_word(text: str, q: int, a: int, b: int) -> bool:
    """A single word in quotes right after a verb or a colon, in a password label's
    window ('Ours is "marigold"', « le mien c'est "soleil" »): quoted, a word is given as
    a value; not an ordinary word of a sentence, an address or a form's button."""
    value = text[a:b]
    close = _QUOTES.get(text[q])
    return (close is not None and a == q + 1 and text.startswith(close, b)
            and 4 <= len(value) <= 40 and not any(c.isspace() for c in value)
            and value.lower() not in _STOP_VALUES and value.lower() not in _NOT_PASSPHRASE
            and value.lower() not in _NEGATIVE_QUALIFIERS and not _is_placeholder(value)
            and not _DECOY_SHAPE.fullmatch(value) and not _EMAIL.fullmatch(value)
            and not _URLISH.match(value) and not _FILE_NAME.fullmatch(value)
            and not _QP_ESCAPES.fullmatch(text[max(0, a - 1):b]))


# Quoted-printable escapes only ("=C3=A8": an encoded letter quoted in prose)
_QP_ESCAPES = re.compile(r"=?[0-9A-F]{2}(?:=[0-9A-F]{2})+")


# Cheap tests that let _window_values skip a window, or a token, that cannot give a value:
# a password needs letters and digits both (``_mixed``), a token value 16 characters, a
# passphrase an opening quote.  They read ``\d`` for ``isdigit``, which holds unless the
# window has a digit that is no decimal one ("²": ``_odd_digits``).
# no digit, no quote, no words joined by hyphens ("maple-ferry-"): no value
# (one class first: the engine skips to its characters fast; a hyphen then must join
# two words of letters)
_HOPE_CHARS = re.compile(r"[\d«“\"'\-](?:(?<=-)(?<=[^\W\d_]{2}-)(?=[^\W\d_]{2,}-)|(?<!-))")
_LONG_OR_QUOTED = re.compile(r"[«“\"']|[^\s>]{16}")
_MIXED_TOKEN = re.compile(r"(?=[^\s>]*?\d)[^\s>]*?[^\W\d_]")   # a digit and a letter
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _odd_digits(text: str, pos: int, limit: int) -> bool:
    """Whether ``text[pos:limit]`` holds an ``isdigit`` character that ``\\d`` misses."""
    return _NON_ASCII.search(text, pos, limit) is not None and any(
        c.isdigit() and not c.isdecimal() for c in _NON_ASCII.findall(text, pos, limit))


def _window_values(text: str, pos: int, *, first_only: bool,
                   strict: bool = False, token: bool = False,
                   uuid: bool = False) -> list[Finding]:
    """Password-like tokens in the window after a label ending at ``pos``: letters and
    digits both (a word or a name is never taken from prose), not named by the words
    just before it ("numéro de série est X", "compte X").  Words that say no value
    follows ("oublié", "ne marche plus") do not close the window: people go on ("...
    ne marche plus, j'ai essayé X"), and the value must look generated anyway."""
    n = len(text)
    if pos < n and (text[pos] in "_-=[]{}()\"'$%" or (
            text[pos] == "." and text[pos + 1:pos + 2].isalnum())):
        return []                         # part of an identifier or an expression
    limit = _window_limit(text, pos, _WINDOW_REACH)
    if strict:
        # an ambiguous label ("code", "clé", "key") names a value in its own sentence:
        # "the door code in person. ... Printer is an HP LaserJet M404dn" gives none
        end = _SENTENCE_END.search(text, pos, limit)
        if end is not None:
            limit = end.start()
    # most windows hold no candidate at all: no quote, and no token long enough (token
    # values) or with letters and digits both (passwords)
    if token:
        if _LONG_OR_QUOTED.search(text, pos, limit) is None:
            return []
        skip_plain = False
    else:
        plain = not _odd_digits(text, pos, limit)     # \d finds every digit
        if plain and _HOPE_CHARS.search(text, pos, limit) is None:
            return []
        skip_plain = plain and not first_only
    out: list[Finding] = []
    pem = _pem_block(text, pos, limit)
    tokens = _hopeful_tokens(text, pos, limit) if skip_plain else \
        _WINDOW_TOKEN.finditer(text, pos, limit)
    for tm in tokens:
        word = tm.group(0)
        if word[0] not in "«“\"'" and (
                (token and len(word) < 16)
                or (skip_plain and _MIXED_TOKEN.match(word) is None and "-" not in word)):
            continue                    # no value can come from this token
        a, b = _trim_value(text, tm.start(), tm.end())
        a, b = _strip_quotes(text, a, b)
        bracketed = word.startswith(("(", "[")) and _bracketed_secret(word)
        if bracketed:
            a = tm.start() + 1
            b = text.find(")" if word[0] == "(" else "]", a, tm.end())
        value = text[a:b]
        wrapped = (word.startswith(("(", "[", "{")) and not bracketed) \
            or word.count(":") >= 2 or pem[0] < a < pem[1]
        phrase = word[0] in "«“\"'" and _PHRASE_BEFORE.search(
            text, max(0, tm.start() - _SEP_BEFORE_REACH), tm.start()) is not None
        if word[0] in "«“\"'" and not _named_by(_recent(text, pos, tm.start())) \
                and (phrase or _SEP_BEFORE.search(
                    text, max(pos, tm.start() - _SEP_BEFORE_REACH), tm.start())):
            qm = _QUOTED_PHRASE.match(text, tm.start(), limit)
            if qm is not None and _quoted_passphrase(qm.group("v"), phrase=phrase):
                out.append(Finding("password", qm.start("v"), qm.end("v")))
                if first_only:
                    break
                continue
            if not token and not strict and _quoted_word(text, tm.start(), a, b):
                out.append(Finding("password", a, b))       # 'Ours is "marigold"'
                if first_only:
                    break
                continue
        if token:
            if "<" in value:            # HTML source: "X<br>"
                b = text.find("<", a, b)
                value = text[a:b]
            if not wrapped and (_entropic(value, min_len=16)
                                or ((uuid or tm.start() - pos <= 3)     # "server token <uuid>"
                                    and _UUID.fullmatch(value) is not None)) \
                    and not any(c in value for c in "/@=") and "." not in value.strip(".") \
                    and not _named_by(_recent(text, pos, tm.start())):
                out.append(Finding("api-token", a, b))
                break
        elif not wrapped and not strict and _dashed_words(value) \
                and not _named_by(_recent(text, pos, tm.start())):
            out.append(Finding("password", a, b))       # "correct-maple-ferry-lantern"
        elif not wrapped and _mixed(_as_read(value)) \
                and (_looks_secret(value) or _leet_at(value)) \
                and not _identity_label(text, pos, tm.start()) \
                and _ACCOUNT_NAMED.isdisjoint(_recent(text, pos, tm.start())[-2:]) \
                and not _HEX_RUN.fullmatch(value) and not _MODEL_NUMBER.fullmatch(value) \
                and not _PUBLIC_OBJECT_ID.fullmatch(value) \
                and not any(c in value for c in "()[]{}=\"<>") \
                and value[0] != "$" and "${" not in value and "$(" not in value \
                and (not strict or _keylike(value)) \
                and not _named_by(_recent(text, pos, tm.start())):
            out.append(Finding("password", a, b))
        elif first_only and not (_skippable(value) or _skippable(word)):
            break                       # (a lone ":" trims to nothing: still skippable)
        if first_only and out:
            break
    return out


# Words joined by hyphens, as Wi-Fi keys and passphrases are made ("correct-maple-ferry-
# lantern", "ACCUEIL-SOCIAL-DU-PORT"): three words or more, a number at one end at most;
# not a name (capitalised words: "Saint-Jean-de-Luz"), not a common compound
# ("rez-de-chaussée").
_DASHED_COMMON = frozenset({
    "rez-de-chaussée", "rez-de-chaussee", "rez-de-jardin", "arc-en-ciel", "vis-à-vis",
    "tête-à-tête", "pot-au-feu", "au-dessus", "au-dessous", "là-dessus", "là-dessous",
    "c'est-à-dire", "peut-être", "porte-monnaie", "après-midi", "sur-le-champ",
    "plug-and-play", "up-to-date", "out-of-the-box", "step-by-step", "end-to-end",
    "face-to-face", "day-to-day", "one-to-one", "peer-to-peer", "pay-as-you-go",
    "work-in-progress", "state-of-the-art", "do-it-yourself", "mother-in-law",
})


def _dashed_words(value: str) -> bool:
    """Whether ``value`` is words joined by hyphens as described above."""
    parts = value.split("-")
    if not 2 <= len(parts) <= 8 or not 10 <= len(value) <= 60 \
            or value.lower() in _DASHED_COMMON:
        return False
    words = parts[1:] if parts[0].isdigit() else parts
    words = words[:-1] if words and words[-1].isdigit() else words
    if len(words) < 2 or not all(w.isalpha() for w in words):
        return False
    if any(w[0].isupper() and not w.isupper() for w in words):
        return False                        # names of places and people
    # (two words are too often a term: "quoted-printable", "internet-drafts")
    return len(words) >= 3 and all(len(w) >= 2 for w in words) and max(map(len, words)) >= 4


# A product's model in the window ("un Synology DS920+", "HP M404dn", "RT-AX58U"): a few
# capitals, digits and a short suffix; a password after its own label is still taken.
_MODEL_NUMBER = re.compile(r"[A-Z]{1,5}[-]?[A-Z]{0,3}\d{2,5}[A-Za-z+]{0,3}")


# One value alone in brackets: "Le nouveau [Cr@yon-19]", "celui de la fiche
# (Velo*Rouge58)" (what is around it still decides, as for any window value).
_BRACKETED = re.compile(r"\((?P<a>[^\s()\[\]{}]{4,64})\)[.,;:!?]*"
                        r"|\[(?P<b>[^\s()\[\]{}]{4,64})\][.,;:!?]*")


def _identity_label(text: str, pos: int, start: int) -> bool:
    """Whether the value at ``start`` follows its own label that names an identity, a few
    words ending with a colon ("Serial on the back:", "N° de série au dos :"), rather
    than the password label whose window it is in."""
    words = _WINDOW_TOKEN.findall(text, max(pos, start - 48), start)[-5:]
    if not words or (not words[-1].endswith(":") and not (
            words[-1] == ":" and len(words) > 1)):
        return False
    recent = [_recent_word(w) for w in words]
    return any(w in _IDENTITY_WORDS or w in _NAMED_BEFORE for w in recent) \
        and not any(w in _LABEL_WORDS for w in recent)


def _bracketed_secret(word: str) -> bool:
    """A bracketed window token that may be the value: one token, with capitals, small
    letters and digits (a login or a name in brackets, "(elus-2026)", is an aside)."""
    m = _BRACKETED.fullmatch(word)
    if m is None:
        return False
    inner = m.group("a") or m.group("b") or ""
    return (any(c.isupper() for c in inner) and any(c.islower() for c in inner)
            and any(c.isdigit() for c in inner))


def _pem_block(text: str, pos: int, limit: int) -> tuple[int, int]:
    """The part of ``text[pos:limit]`` inside a "-----BEGIN ...-----" block that starts at
    most 4 KiB before ``pos`` (a certificate's base64 is no password, whatever label came
    before the block), as (start, end); (0, 0) when there is none.  Bounded reads: one per
    window, not one per token."""
    begin = text.rfind("-----BEGIN ", max(0, pos - 4096), limit)
    if begin < 0:
        return 0, 0
    end = text.find("-----END ", begin, limit)
    return begin, end if end >= 0 else limit


def _hopeful_tokens(text: str, pos: int, limit: int) -> Iterator[re.Match[str]]:
    """The window tokens (as ``_WINDOW_TOKEN`` cuts ``text[pos:limit]``) that hold a
    digit, a quote or words joined by hyphens, found from those characters
    (``_HOPE_CHARS``): most tokens of prose hold none."""
    hit = _HOPE_CHARS.search(text, pos, limit)
    while hit is not None:
        start = hit.start()
        while start > pos and not (text[start - 1].isspace() or text[start - 1] == ">"):
            start -= 1
        tm = _WINDOW_TOKEN.match(text, start, limit)
        if tm is None:                  # not reached: the hit itself is a token character
            return
        yield tm
        hit = _HOPE_CHARS.search(text, tm.end(), limit)


def _recent(text: str, pos: int, start: int) -> list[str]:
    """The window tokens before ``start`` as _named_by reads them (the last four: it
    reads no more)."""
    return [_recent_word(w) for w in _WINDOW_TOKEN.findall(text, pos, start)[-4:]]


def _recent_word(word: str) -> str:
    """A window token as _named_by compares it: lower-cased, without brackets and
    trailing punctuation ("(S/N" -> "s/n", "login:" -> "login")."""
    word = word.lower().strip("()[]«»\"“”").rstrip(":,;.") or word
    # "l'utilisateur", "d’identifiant": the word without its elided article
    return word[2:] if word[1:2] in ("'", "’") and word[0] in "ldnsc" and len(word) > 3 \
        else word


class _Lexicon:
    """Words (and two-word phrases) looked for as whole words, case-insensitively: the
    ``search`` of a regex alternation at the cost of one set look-up per word of the
    window (a long alternation behind a look-behind tries every word at every position).
    """

    __slots__ = ("phrases", "words")

    def __init__(self, words: str, phrases: tuple[str, ...] = ()) -> None:
        self.words = frozenset(words.split())
        self.phrases = phrases

    def search(self, text: str, lo: int = 0, hi: int | None = None) -> bool:
        n = len(text)
        hi = n if hi is None else min(hi, n)
        # a word cut by the window's edges is not that word ("... que" -> "ue")
        while 0 < lo < hi and text[lo - 1].isalnum() and text[lo].isalnum():
            lo += 1
        while lo < hi < n and text[hi].isalnum() and text[hi - 1].isalnum():
            hi -= 1
        chunk = text[lo:hi].lower()
        for word in _LEXICON_WORD.findall(chunk):
            if word in self.words:
                return True
        return any(p in chunk for p in self.phrases) if self.phrases else False


_LEXICON_WORD = re.compile(r"[^\W_]+°?")
# "clé", "key" and "code" name many things besides secrets: a value after them must look
# generated on its own (both cases, and a digit or a symbol), and the label must not be
# one of a kind that opens nothing.  One lexicon for the key and the code labels (and a
# bare "key:" setting, and the heading of a list of codes): the words near the label that
# say what kind of key or code it is: a public key's, a licence's, a product's or a USB
# stick's, a booking's, a course's, a postcode, an error, a colour, a reference of an
# order, a parcel or a bank transfer, copy counting.
_NOT_SECRET_QUALIFIER = _Lexicon("""
public publique pub publishable ssh gpg pgp licence license product produit usb fingerprint
empreinte primary foreign host hôte hote id n° no numéro numero réservation reservation
booking confirmation commande order suivi tracking erreur error postal postaux source promo
couleur color status statut exit retour html python qr barre barres barcode client customer
article naf ape iban bic swift ticket dossier facture invoice colis parcel série serie
serial insee siret siren comptable http zip pays country langue tva département
departement commune réduction reduction remise discount coupon parrainage référence
reference ref projet analytique budget chantier cpv nace rome douane customs hs sku ean isbn
item tarif cotisation adhérent adherent member membre bank banque bancaire guichet sort
routing agence branch transaction établissement etablissement uai rne cours course ue
module formation training stage voucher gift cadeau comptage counting fidélité fidelite
loyalty billet vol flight matière matiere journal virement transfer mandat mandate rum ics
""", ("de voiture", "account number"))
# ... and a key of activation is a product key (a code of activation opens a device)
_KEY_NOT_SECRET = _Lexicon(" ".join(_NOT_SECRET_QUALIFIER.words) + " activation",
                           _NOT_SECRET_QUALIFIER.phrases)
_WORD_NUMBER = re.compile(r"[A-Z]?[a-z]{2,}[-_ .]?\d{1,3}|0[xX][0-9A-Fa-f]+")

# A code's label (code d'activation, d'accès, secret...) that its own words say is for
# a product or a sale ("Code d'activation de la licence :", "licence activation code:",
# "code de réduction") gives a product key or a coupon: what was bought, not an
# account's secret (a code of activation of an account, of a card, of a device is one).
_CODE_FOR_PRODUCT = _Lexicon("""
licence license licences licenses produit product série serie serial coupon promo
réduction reduction remise discount cadeau gift voucher parrainage commande order suivi
tracking colis parcel réservation reservation booking billet
""")


def _code_for_product(text: str, start: int, end: int) -> bool:
    """Whether the words of a code's label (``text[start:end]`` and its line: up to 30
    characters before it, to the colon after it) name a product or a sale."""
    lo = max(0, start - 30, text.rfind("\n", max(0, start - 30), start) + 1)
    # a column's title is its own cell: the title beside it ("| Série | Code de
    # déverrouillage |", HTML cells read as tab-separated) does not qualify it
    lo = max(lo, text.rfind("|", lo, start) + 1, text.rfind("\t", lo, start) + 1)
    cm = _LABEL_COLON.match(text, end, min(len(text), end + 80))
    return _CODE_FOR_PRODUCT.search(text, _qualifier_start(text, lo, start),
                                    cm.end() if cm is not None else end)


# A label's words up to its colon, on its line ("de la licence (à saisir) :").
_LABEL_COLON = re.compile(r"[^:\n]{0,80}(?=:)")


# The end of a sentence after a label: the words that qualify a label are in its own
# sentence ("le code 914377.\nSIRET du cabinet : ..." names no SIRET code).
_QUALIFIER_STOP = re.compile(r"[.!?][^\S\n]*(?:\n|[^\S\n](?=[A-ZÀ-Ý«\"“]))")


def _qualifier_end(text: str, end: int, hi: int) -> int:
    """``hi``, or the end of the label's sentence when it comes first."""
    stop = _QUALIFIER_STOP.search(text, end, hi)
    return stop.start() if stop is not None else hi


def _qualifier_start(text: str, lo: int, start: int) -> int:
    """``lo``, or the start of the label's sentence when it comes later."""
    last = lo
    for stop in _QUALIFIER_STOP.finditer(text, lo, start):
        last = stop.end()
    return last


def _key_label_ok(text: str, start: int, end: int) -> bool:
    """Whether the words around a "clé"/"key"/"code" label (on its line and in its
    sentence) allow a secret."""
    lo = max(0, start - 25, text.rfind("\n", max(0, start - 25), start) + 1)
    lo = _qualifier_start(text, lo, start)
    # a spaced dash ends a field of a line: "Wi-Fi lecteurs – BIBLIO-PUBLIC – clé : X"
    # (the network's name is not the key's qualifier)
    before = text[lo:start]
    if "–" in before or "—" in before or "|" in before:
        for dash in _FIELD_DASH.finditer(text, lo, start):
            lo = dash.end()
    hi = text.find("\n", end, end + 25)
    hi = _qualifier_end(text, end, hi if hi >= 0 else min(len(text), end + 25))
    if "site" in text[lo:hi].lower() and _SITE_KEY.search(text, lo, hi) is not None:
        return False
    return not _KEY_NOT_SECRET.search(text, lo, hi)


# A captcha's site key (reCAPTCHA, hCaptcha, Turnstile) is the public half of its pair:
# it is in every page's source; its secret key is not.
_SITE_KEY = re.compile(r"(?i)(?<![^\W_])(?:site[^\S\n]?key|cl[ée]f?[^\S\n]+(?:du|de)[^\S\n]+site)"
                       r"(?![^\W_])")
_FIELD_DASH = re.compile(r"[^\S\n][–—|][^\S\n]")


def _keylike(value: str) -> bool:
    """A value that looks generated with no help from its label: "8Marionnettes&Cie"."""
    return (6 <= len(value) <= 64 and any(c.islower() for c in value)
            and any(c.isupper() for c in value) and not value.isalpha()
            and not _WORD_NUMBER.fullmatch(value) and _looks_secret(value)
            and not value.startswith(("pk_", "ssh-")))


def _passphrase(value: str) -> bool:
    """Several words with a digit or a symbol in them: "chat noir 1975"."""
    words = value.split()
    return (len(value) >= 8 and len(words) >= 2
            and any(not c.isalpha() and not c.isspace() for c in value)
            and not _DECOY_SHAPE.fullmatch(value.replace(" ", ""))
            and sum(w.lower() in _STOP_VALUES for w in words) < len(words) - 1)


# Words that make a line after a password label a sentence, not a passphrase ("je vous le
# donnerai par téléphone", "the same as before", "see with Paul").
_NOT_PASSPHRASE = _words("""
je j' tu il elle nous vous ils elles on me te se lui leur i you he she we they it him us
them my your our his her their mon ton son ma ta sa mes tes ses notre votre nos vos not
ne pas no none aucun aucune same même usual habituel habituelle voir see ask demande
demander demandez envoie envoyer envoyé envoyée sent send give donne donner donnerai given
phone téléphone sms call appel appelle later tard soon bientôt in dans on sur by par
is est was été will sera have has avez avons ai a be être please merci svp thanks with
avec for pour to à au aux that this ce cette ces que qui what which where when how
""")


def _word_passphrase(value: str) -> bool:
    """Three to eight lower-case words, none of which makes the line a sentence:
    "lighthouse harbour seven gulls", "la roue tourne toujours deux fois"."""
    words = value.split()
    if not 3 <= len(words) <= 8 or len(value) > 80:
        return False
    if words[-1].isdigit() and len(words[-1]) <= 4 and len(words) >= 4:
        words = words[:-1]          # "les coulisses sentent la poussière 42"
    return all(w.isalpha() and w.islower() and w not in _NOT_PASSPHRASE
               and w not in _NEGATIVE_QUALIFIERS for w in words) and \
        _REFERENCE_PHRASE.match(value) is None


# Words that make a quoted run of words a sentence (what someone says, asks or sends),
# not a passphrase given in quotes: pronouns, negations, giving and sending.
_QUOTED_SENTENCE = _NOT_PASSPHRASE - _words("""
in dans on sur by par to à au aux for pour with avec a that this ce cette ces que qui
""")


def _phrase_line(value: str) -> bool:
    """A pass *phrase* alone on its line after its label: three to ten lower-case words
    (a name among them capitalised), one number among them at most ("la girafe mange 3
    croissants sous la pluie"), none of which makes it a sentence (as for a quoted one,
    _QUOTED_SENTENCE)."""
    words = value.split()
    if not 3 <= len(words) <= 10 or len(value) > 80:
        return False
    numbers = [w for w in words if w.isdigit() and len(w) <= 4]
    letters = [w for w in words if w not in numbers]
    # (a place's or a person's name among them keeps its capital: "... la Garonne")
    return len(numbers) <= 1 and sum(w.islower() for w in letters) >= 3 and all(
        w.isalpha() and (w.islower() or w.istitle()) and w.lower() not in _QUOTED_SENTENCE
        for w in letters) and _REFERENCE_PHRASE.match(value) is None


# A quoted message (an SMS, a notice pasted in quotes) that names a code or a password
# with the words of a sentence ("Your login code is 4471.", « Votre code est 5521 »): it
# carries its own label, whose value the label's window finds; the message is no
# passphrase.
_MESSAGE_LABEL = re.compile(r"(?i)(?<![^\W_])(?:code|codes|password|passcode|pin|mdp|"
                            r"mot[^\S\n]+de[^\S\n]+passe)(?![^\W_])")


def _quoted_message(value: str) -> bool:
    return _MESSAGE_LABEL.search(value) is not None and any(
        w.lower() in _QUOTED_SENTENCE for w in _WORD_SPLIT.split(value))


def _quoted_passphrase(value: str, *, phrase: bool = False) -> bool:
    """A passphrase given in quotes after a separator: a few words with a digit or a symbol
    (``_passphrase``), or three to ten words of letters none of which makes it a sentence
    ("correct horse staple margarine", « le chat du maire dort sur le registre »).  After
    a label that names a phrase (``phrase``: 'the passphrase "..."') a word of a
    forgotten or wrong password is one of its words ("amber kettle forgot seventeen"),
    but a password's own words are not ("Mot de passe oublié").  Not a quoted message
    that names its own code ("Your login code is 4471.")."""
    if _quoted_message(value):
        return False
    if _passphrase(value):
        return True
    words = value.split()
    if not 3 <= len(words) <= 10 or len(value) > 80:
        return False
    if words[-1].isdigit() and len(words[-1]) <= 4:
        words = words[:-1]
    if phrase and not any(w.lower() in _PHRASE_NOT for w in words):
        return all(w.isalpha() and w.lower() not in _QUOTED_SENTENCE for w in words) \
            and _REFERENCE_PHRASE.match(value) is None
    return all(w.isalpha() and w.lower() not in _QUOTED_SENTENCE
               and w.lower() not in _NEGATIVE_QUALIFIERS for w in words) \
        and _REFERENCE_PHRASE.match(value) is None


_PHRASE_NOT = _words("mot passe password passwords mdp passphrase phrase lien link")


# Two to five words, one of them with a digit, up to a bracket, a clause's end or the
# line's: "Marée haute 1987 (avec les espaces)".
_WORDS_WITH_DIGIT = re.compile(r"(?P<v>[^\s()\[\],;:.!?]+(?:[^\S\r\n]+[^\s()\[\],;:.!?]+){1,4})"
                               r"[^\S\r\n]*(?:$|[(\[,;]|[.!?](?:\s|$))", re.M)


def _spoken_passphrase(value: str) -> bool:
    """Words that read as a passphrase, not a sentence: a digit in one of them, none a
    word of a sentence ("pour", "le", "is", "the") or a stop value."""
    words = value.split()
    return (any(c.isdigit() for c in value) and not any(c.isdigit() for c in words[0][:1])
            and all(w.lower() not in _NOT_PASSPHRASE and w.lower() not in _STOP_VALUES
                    and w.lower() not in _NEGATIVE_QUALIFIERS for w in words)
            and not _DECOY_SHAPE.fullmatch(value.replace(" ", "")))


def _skippable(value: str) -> bool:
    """A word a weak label may be followed by before its value ("pw is X")."""
    return value.lower() in ("is", "est", "c'est", "c’est", "c", ":", "=", "-", "was", "it's")


def _strip_quotes(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a] in "\"'«“‘`(":
        a += 1
    while b > a and text[b - 1] in "\"'»”’`),.;:!?":
        b -= 1
    return a, b


# A value strong on its own (upper and lower case, a digit, a symbol: "Mistral-42",
# "Cantine#2026", "Harbour!Light77") near a password label, wherever it stands: before
# the label, in the reply above a quoted question, in a correction, on a line of its own.
# People write such values for little else; what else has that shape (a network's or a
# device's name, a user name, a reference) is named by the words before it or has the
# shape of a device name ("Livebox-7C3A").
# (French letters too: "Goéland_42", "Fête2026-Salle!", "Marée-Haute-2026" are one token)
# (and the symbols of a French keyboard's top row: "Registre§1789", "Vélo°2024")
_STRONG_CHARS = (r"[A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff\u0152\u0153"
                 r"!#$%&*+?@_.\-\u00a3\u00a7\u00b0\u00b5\u20ac]")
_STRONG_TOKEN = re.compile(
    rf"""(?<![^\s(«"“'>])(?![-_.])(?={_STRONG_CHARS}*?\d)(?={_STRONG_CHARS}*?[a-z])"""
    rf"""(?={_STRONG_CHARS}*?[A-Z])(?={_STRONG_CHARS}*?[!#$%&*+?@_.\-\u00a3\u00a7\u00b0\u00b5\u20ac])"""
    rf"""{_STRONG_CHARS}{{8,25}}(?!{_STRONG_CHARS}|[/@:=])""")
_STRONG_REACH = 200         # from a label, either side
# (a digit first: the regex engine skips to digits fast; then what stands beside it)
_FR_SYMBOLS = r"\u00a3\u00a7\u00b0\u00b5\u20ac"      # £ § ° µ €
_STRONG_SEED = re.compile(r"[0-9](?:(?<=[A-Za-z\u00c0-\u00ff\u0152\u0153!#$%&*+?@_\-"
                          rf"{_FR_SYMBOLS}][0-9])"
                          r"|(?<=[A-Za-z]\.[0-9])|(?=[A-Za-z!#$%&*+?@_\-"
                          rf"{_FR_SYMBOLS}]))")
_STRONG_BACK = re.compile(rf"{_STRONG_CHARS}{{1,26}}\Z")
_STRONG_RUN = re.compile(rf"{_STRONG_CHARS}{{1,26}}")
_WHITESPACE = re.compile(r"\s")
# A payment provider's object ids, that name a customer, a payment or an event and open
# nothing ("cus_PqR7sT2uV9wX", "pi_3Nq...", "evt_..."; Stripe's secrets are "sk_", "rk_",
# "whsec_", which gitleaks' Stripe rule reads): in a window after a password label they
# are no value.
_PUBLIC_OBJECT_ID = re.compile(
    r"(?:cus|sub|pi|ch|in|ii|prod|price|acct|evt|txn|pm|seti|po|re|src|card|ba|py|si|plink|"
    r"promo|inv|ord)_[A-Za-z0-9]{8,40}"
    r"|org-[A-Za-z0-9]{12,40}")     # OpenAI's organisation id (OpenAI-Organization:)
_OBJECT_ID = re.compile(r"[a-z]{2,8}_[A-Za-z0-9]{8,}\Z")    # cus_RkQ2mV7xLp9T, evt_…
# S3-compatible, MP3-player, IPv6-ready (not a capitalised word: "Pins24-tableau" is a
# password's shape)
_TERM = re.compile(r"(?:[A-Z]{1,4}|[a-z]{1,4}|IPv)\d{1,3}-[a-z]{3,}\Z")
_DEVICE_NAME = re.compile(r"[-_](?=[0-9A-F]*[A-F])(?=[0-9A-F]*\d)[0-9A-F]{4,6}\Z")


def _as_read(value: str) -> str:
    """``value`` with its HTML character references decoded (HTML source pasted in a
    text part): "Ben&#8217;s" reads "Ben’s" (no digit), "Velo&amp;Co-318" "Velo&Co-318"."""
    return html.unescape(value) if "&" in value else value


# "Wi-Fi: GH-Annex2, key X", "réseau Mairie-Wifi5 / clé : X": a value right after a
# network's label and right before a key's or a password's label is the network's name.
# ("Wi-Fi billetterie : TDP-Billet, clé WPA2 : X": the label may name which network)
_NETWORK_LABEL_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:wi-?fi|wlan|ssid|r[ée]seau|network)"
    r"(?:[^\S\n]+[^\W\d_][\w\-]{0,20})?[^\S\n]*[:=]?[^\S\n]*\Z")
_KEY_LABEL_AFTER = re.compile(
    r"(?i)[^\S\n]*[,;/|–—-]?[^\S\n]*(?:(?:la|the)[^\S\n]+)?(?:cl[ée]f?|key|password|passphrase|"
    r"mot[^\S\n]+de[^\S\n]+passe|mdp|pwd|psk)(?![^\W_])")


def _network_before_key(text: str, a: int, b: int) -> bool:
    return _KEY_LABEL_AFTER.match(text, b) is not None and \
        _NETWORK_LABEL_BEFORE.search(text, max(0, a - 48), a) is not None


def _strong_values(text: str, windows: list[tuple[int, int]]) -> list[Finding]:
    """Strong values within _STRONG_REACH of a password label's window; see above."""
    n = len(text)
    out: list[Finding] = []
    end = 0
    for lo, hi in windows:
        # windows are sorted: each character is searched once
        lo, hi = max(end, lo - _STRONG_REACH), min(n, hi + _STRONG_REACH)
        if lo >= hi:
            continue
        ws = _WHITESPACE.search(text, hi, min(n, hi + 32))
        hi = ws.start() if ws else min(n, hi + 32)     # no token cut at the end
        end = hi
        # a strong value has a digit next to a letter or a symbol: look there only
        # (a cheap scan), then read the whole token
        last = lo
        for sm in _STRONG_SEED.finditer(text, lo, hi):
            i = sm.start()
            if i < last:
                continue
            bm = _STRONG_BACK.search(text, max(lo, i - 26), i)
            a = bm.start() if bm else i
            fm = _STRONG_RUN.match(text, i, hi)
            b = fm.end() if fm else i + 1
            last = b
            if b - a < 8:
                continue
            m = _STRONG_TOKEN.match(text, a, hi)
            if m is None:
                continue
            a, b = _trim_value(text, m.start(), m.end())
            value = text[a:b]
            if not 8 <= len(value) <= 24 or _classes(_as_read(value)) < 4 \
                    or _DEVICE_NAME.search(value) or _OBJECT_ID.match(value) \
                    or _PUBLIC_OBJECT_ID.fullmatch(value) or _TERM.match(value):
                continue
            if not _looks_secret(value) or _binary_line(text, a) or _named_next(text, a) \
                    or _named_by(_recent(text, max(0, a - 60), a)) or _dotted_name(value) \
                    or _login_cell(text, a):
                continue
            out.append(Finding("password", a, b))
    return out


_LOGIN_HEADER = _words("""
user users username login logins identifiant identifiants utilisateur utilisateurs compte
account uid
""")


def _login_cell(text: str, a: int) -> bool:
    """Whether ``a`` starts a cell of a table (Markdown pipes or a tab) whose column's
    title names a login ("| User | Password |": a generated-looking user id is no
    password)."""
    bounds = _line_bounds(text, a, _MAX_TABLE_LINE)
    if bounds is None:
        return False
    bol, eol = bounds
    sep = "|" if "|" in text[bol:eol] else "\t" if "\t" in text[bol:eol] else None
    if sep is None:
        return False
    cells = _cells_with(text[bol:eol], sep)
    col = next((k for k, (x, y) in enumerate(cells) if bol + x <= a < bol + y), -1)
    if col < 0:
        return False
    header = None
    for _ in range(_MAX_TABLE_ROWS):
        if bol == 0:
            break
        prev = text.rfind("\n", max(0, bol - 1 - _MAX_TABLE_LINE), bol - 1) + 1
        line = text[prev:bol - 1]
        if sep not in line:
            break
        if not _MARKDOWN_RULE.fullmatch(line):
            header = line
        bol = prev
    if header is None:
        return False
    hcells = _cells_with(header, sep)
    if len(hcells) != len(cells):
        return False
    x, y = hcells[col]
    words = {w for w in re.split(r"[\W_]+", header[x:y].lower()) if w}
    return bool(words) and words <= _LOGIN_HEADER | {"name", "nom", "id", "d"} \
        and not words.isdisjoint(_LOGIN_HEADER)


def _dotted_name(value: str) -> bool:
    """"Assist.Sociale3", "Srv01.Mairie": a login, a host or a file's name, when a dot is
    the only symbol; a password has only digits after its dot ("Tournesol.48")."""
    if any(c in value for c in "!#$%&*+?@_-"):
        return False
    return not all(part.isdigit() for part in value.split(".")[1:])


# With no password label at all, a strong value near a login or account word, when it
# holds a symbol of a password ("Hunter9!Moss -- that's the shared Figma login", "reset
# his account to something temporary... Suggest Handover!2026").
# (words of _PAIR_WORDS: the literal search already says whether the text holds them)
_ACCOUNT_WORDS = frozenset((b"login", b"account", b"compte", b"connexion"))
_PASSWORD_SYMBOL = re.compile(r"[!#$%&*+?@]")


def _account_values(text: str, hay: _Haystack) -> list[Finding]:
    present = _ACCOUNT_WORDS.intersection(hay.literals()[0])
    if not present:
        return []
    lower = hay.lower(text)
    if len(lower) != len(text):
        return []
    labels: list[tuple[int, int]] = []
    for word in present:
        w = word.decode()
        i = lower.find(w)
        while i >= 0 and len(labels) < 64:
            labels.append((i, i + len(w)))
            i = lower.find(w, i + 1)
    labels.sort()
    return [f for f in _strong_values(text, labels)
            if _PASSWORD_SYMBOL.search(text, f.start, f.end)]


# A value a verb gives in a text about logging in, with no label right before it ("je
# tape bien Platane_4410", "pour la boîte de Marie c'est Hortensia1962", "the default was
# changed to Printy-Label-55", 'I tried admin with "Regie2019"'): the shape of the value
# (a capitalised word with digits: upper and lower case, a digit, 8 to 30 characters, a
# run of three lower-case letters) times the strength of its context (a giving verb right
# before it, and a word about passwords, logins or access within _GIVEN_REACH before it
# or a little after).  Weaker shapes (letters only, digits only, no capital) stay with
# the labelled detectors; what the words before name ("le réseau c'est ...") is no value.
_GIVEN_WORDS = frozenset((b"mot de passe", b"mdp", b"password", b"passwd", b"login",
                          b"connect", b"connexion", b"acc\xc3\xa8s", b"acces", b"admin",
                          b"identifiant"))
_LOCKED_WORDS = (b"locked out", b"bloqu")
_GIVEN_CONTEXT = re.compile(
    r"(?i)mots?[^\S\n]de[^\S\n]passe|(?<![^\W_])(?:mdp|passwords?|passwd|logins?|"
    r"identifiants?|acc[eè]s|access|admin|connect\w*|connexion|locked[^\S\n]+out|"
    r"bloqu[ée]e?s?)(?![^\W_])")
# ... and a device before the verb names its model, unless a password label is there too
# ("mon NAS est Synology-DS220", not "le mot de passe du NAS c'est Regie2019!")
_GIVEN_DEVICES = _words("""
nas pc imprimante printer appareil device tablette tablet ordinateur computer laptop portable
routeur router box switch caméra camera téléphone phone smartphone logiciel software app
application appli système system os firmware modèle model version
""")
_GIVEN_LABELS = _words("passe mdp password pwd pass code clé cle clef key pin sésame sesame")
_GIVEN_REACH = 400          # context before the value (after: a quarter of it)
# a candidate: a capital first, a digit in it (the engine skips to capitals in C)
_GIVEN_VALUE = re.compile(r"[A-Z](?:(?<=[\s«“\"'‘][A-Z])|(?<=^[A-Z]))"
                          r"(?=[A-Za-z0-9_!#$%&*+?@.\-]{0,29}?\d)[A-Za-z0-9_!#$%&*+?@.\-]{7,29}"
                          r"(?![A-Za-z0-9_!#$%&*+?@\-]|\.\w|[/:=])")
_GIVEN_SHAPE = re.compile(r"(?=.*?[a-z]{3})[A-Z][A-Za-z0-9_!#$%&*+?@.\-]{7,29}")
_GIVEN_CUE = re.compile(
    r"(?i)(?<![^\W_])(?P<cue>c['’][^\S\n]?est|est|is|was|tape[sz]?|tap[ée]e?|saisi[st]?|"
    r"typed?|entered|enter|changed[^\S\n]+to|chang[ée][^\S\n]+en|with|avec|"
    # "tried X", "j'ai essayé X"; "I reset it myself to X", "I set it back to X"
    r"tried|essay[ée]e?s?|(?:re)?set[^\S\n]+(?:it|them)(?:\s+(?:myself|ourselves|"
    r"again|back))?\s+to|"
    # a login then its password, both given by one verb ("j'utilise jdupont avec X", "I
    # log in with jdupont and X", "je tape jdupont / X")
    r"(?:utilis[eé]\w{0,3}|use[sd]?|using|tap[eé]\w{0,2}|saisi[st]?|typed?|entered|"
    r"enter|tried|essay[eé]\w{0,2}|connect\w{0,4}|log(?:ged|ging)?[^\S\n]+in|"
    r"sign(?:ed|ing)?[^\S\n]+in)(?:[^\S\n]+(?:avec|with))?[^\S\n]+"
    r"(?!(?:the|le|la|les|un|une|an|mon|ma|mes|my|it|this|that|ce|cet|cette|[cç]a|son|sa|"
    r"his|her|their|your|votre|vos|ton|ta|me|moi)(?![^\W_]))"
    r"(?P<login>[a-z][a-z0-9._@\-]{2,40})[^\S\n]*(?:avec|with|et|and|/))"
    r"[^\S\n]*\n?[^\S\n]*(?:(?:bien|toujours|encore|juste|still|just|always|actually|"
    r"now|maintenant|d[ée]sormais)[^\S\n]+)?(?P<q>[«“\"'‘][^\S\n]?)?\Z")
# "with"/"avec" gives a value only after a verb of trying ("tried admin with X")
_TRIED_BEFORE = re.compile(r"(?i)(?<![^\W_])(?:tried|try|essay[ée]e?s?|test[ée]e?s?)"
                           r"(?![^\W_])[^.!?\n]{0,80}\Z")
_PAIR_SYMBOL = re.compile(r"[_!#$%&*+?@]")
# words before the verb that make the value a login, a network or a host, not a password
_GIVEN_NAMED = _IDENTITY_WORDS | _words("compte account réseau reseau network serveur server "
                                        "host hostname")


def _given_values(text: str, hay: _Haystack) -> list[Finding]:
    present = _GIVEN_WORDS.intersection(hay.literals()[0])
    if not present:
        # a user who says what they tried on a locked-out account, with no login word
        # ("locked out again. tried X and Y ... user kmorris"): byte searches only where
        # a user is named (not more literals for every text)
        folded = hay.folded
        if b"user" not in hay.literals()[0] or not (b"tried" in folded or b"essay" in folded):
            return []
        present = frozenset(w for w in _LOCKED_WORDS if w in folded)
        if not present:
            return []
    # where a context word stands (found as literals, in C): the value is read in
    # windows around them only (_GIVEN_REACH before the value, a quarter after)
    n = len(text)
    positions: list[int] = []
    if len(hay.folded) == n:            # ASCII: byte and character offsets agree
        for bw in present:
            i = hay.folded.find(bw)
            while i >= 0 and len(positions) < 64:
                positions.append(i)
                i = hay.folded.find(bw, i + 1)
    else:
        low = hay.lower(text)
        if len(low) != n:
            return []
        for sw in (w.decode() for w in present):
            i = low.find(sw)
            while i >= 0 and len(positions) < 64:
                positions.append(i)
                i = low.find(sw, i + 1)
    spans = [(max(0, i - _GIVEN_REACH // 4), min(n, i + _GIVEN_REACH)) for i in positions]
    spans.sort()
    out: list[Finding] = []
    end = 0
    for lo, hi in spans:
        lo = max(lo, end)               # each character read once
        if lo < hi:
            ws = _WHITESPACE.search(text, hi, min(n, hi + 40))
            end = hi = ws.start() if ws else min(n, hi + 40)    # no token cut at the end
            out.extend(_given_in(text, lo, hi))
    return out


def _given_in(text: str, lo: int, hi: int) -> list[Finding]:
    out: list[Finding] = []
    # the candidates first (a capital, then a digit within the token), then the verb
    # before each, then the context around it
    for m in _GIVEN_VALUE.finditer(text, lo, hi):
        cm = _GIVEN_CUE.search(text, max(0, m.start() - 48), m.start())
        if cm is None:
            continue
        a, b = _trim_value(text, m.start(), m.end())
        value = text[a:b]
        if not _GIVEN_SHAPE.fullmatch(value) or not _looks_secret(value) \
                or _MODEL_NUMBER.fullmatch(value) or _DEVICE_NAME.search(value) \
                or _OBJECT_ID.match(value) or _TERM.match(value) or _dotted_name(value):
            continue
        if cm.group("cue").lower() in ("with", "avec") and not (
                cm.group("q") and _TRIED_BEFORE.search(text, max(0, cm.start() - 80),
                                                       cm.start())):
            continue
        if cm.group("login") is not None and not cm.group("q") \
                and _PAIR_SYMBOL.search(value) is None:
            continue            # after a login, quoted or with a symbol: "... et
                                # Windows11" names a product as often
        if not _GIVEN_CONTEXT.search(text, max(0, a - _GIVEN_REACH),
                                     min(len(text), b + _GIVEN_REACH // 4)):
            continue
        # (the words before a login given with the value are read up to the login, as
        # they are before "with" alone: "on the NAS login page I tried admin with 'X'")
        before = _recent(text, max(0, a - 60),
                         cm.start() if cm.group("login") is None else cm.end("login"))
        if _binary_line(text, a) or _named_next(text, a) or _named_by(before) \
                or not _GIVEN_NAMED.isdisjoint(before) or (
                    not _GIVEN_DEVICES.isdisjoint(before)
                    and _GIVEN_LABELS.isdisjoint(before)):
            continue            # "le compte local admin est Direction2": a login;
                                # "mon NAS est Synology-DS220": a device's model
        out.append(Finding("password", a, b))
        # "tried X and Y", "c'est X ou Y": a second value of the same shape, joined
        am = _GIVEN_ALSO.match(text, b, hi)
        if am is not None and _GIVEN_SHAPE.fullmatch(am.group("v")) \
                and _looks_secret(am.group("v")) and not _MODEL_NUMBER.fullmatch(am.group("v")):
            out.append(Finding("password", *_trim_value(text, am.start("v"), am.end("v"))))
    return out


_GIVEN_ALSO = re.compile(r"[^\S\n]*,?[^\S\n]+(?:and|or|et|ou|then|puis|,)[^\S\n]+[«“\"']?"
                         r"(?P<v>[A-Z][A-Za-z0-9_!#$%&*+?@.\-]{7,29})(?![A-Za-z0-9_!#$%&*+?@\-])")


# A keypad code by its shape, with no "code" label: three to eight digits closed by the
# keypad's "#" or "*" ("5829#", "2468*"), where the words before it in its sentence name a
# door, a gate or a place that one enters ("door to the bike storage: 5829#", "celui de la
# porte du garage qui est toujours 2468*").  A star or a hash before the digits (a phone
# service: "*123#") or after them in a run ("12**") is no keypad code.
_KEYPAD_KEY = re.compile(r"[#*](?<=\d[#*])(?![\w#*])")      # (the key first: a fast scan)
_KEYPAD_DIGITS = re.compile(r"(?<![\w#*.,/:+\-])\d{3,8}\Z")
_KEYPAD_PLACE = re.compile(
    r"(?i)(?<![^\W_])(?:portes?|portails?|portillon|garage|parking|entr[ée]es?|entrance|"
    r"doors?|gates?|locals?|storage|shed|cave|remise|b[âa]timent|building|digicode|"
    r"interphone|cadenas|padlock|casier|locker|armoire|coffre|barri[èe]res?|barriers?|"
    r"keypad|clavier)(?![^\W_])")
# the value is given: a verb, a colon or "avec"/"with" right before it
_KEYPAD_CUE = re.compile(
    r"(?i)(?:(?<![^\W_])(?:est|c['’]est|is|now|avec|with|tape[sz]?|tapez|taper|tapant|faites|"
    r"faire|composant|entering|typing|keying[^\S\n]+in|"
    r"composez|composer|compose|saisi[rs]|saisissez|entrez|entrer|enter|type|key[^\S\n]+in|"
    r"punch[^\S\n]+in|dial|sera|be|devient|becomes)|[:=])[^\S\n]*(?:(?:toujours|bien|still|"
    r"now|maintenant|d[ée]sormais|le|the|code)[^\S\n]+)?[«\"']?\Z")
_FOOTNOTE = re.compile(r"(?:^|\n|\()[ \t]*\*[^\s*]")
_KEYPAD_REACH = 100         # from the value back to the place, within its sentence


# An application password (WordPress: six groups of four letters and digits; Google,
# Apple, Microsoft: four groups of four lower-case letters) after its label, across a
# line or an aside: "mot de passe d'application", "app password", "application-specific
# password".  The groups are the value; what else is made so (four words of four
# letters) is no value unless it stands alone, after a colon or on its own line.
_APP_PASSWORD_LABEL = re.compile(
    r"(?i)(?:mots?[^\S\n]+de[^\S\n]+passe|mdp)[^\S\n]+"
    r"(?:d['’][^\S\n]?|pour[^\S\n]+(?:l['’]|une?[^\S\n]+)?)"
    r"appli(?:cation)?s?|(?<![^\W_])app(?:lication)?(?:[^\S\n]*-[^\S\n]*specific)?"
    r"[^\S\n-]*-?[^\S\n]*passwords?")
_APP_PASSWORD = re.compile(r"(?<![\w\-])[A-Za-z0-9]{4}(?:[^\S\n][A-Za-z0-9]{4}){3,5}(?![\w\-])")
_APP_PASSWORD_REACH = 240


def _app_passwords(text: str) -> list[Finding]:
    out: list[Finding] = []
    end = 0
    for lm in _APP_PASSWORD_LABEL.finditer(text):
        if lm.end() < end:
            continue
        for vm in _APP_PASSWORD.finditer(text, lm.end(), min(len(text), lm.end()
                                                            + _APP_PASSWORD_REACH)):
            value = vm.group(0)
            groups = value.split()
            if len(groups) == 6 and _classes(value.replace(" ", "")) >= 2 and \
                    not value.replace(" ", "").isdigit():
                pass                            # WordPress's
            elif len(groups) == 4 and all(g.isalpha() and g.islower() for g in groups) \
                    and _APP_PASSWORD_ALONE.search(text, max(0, vm.start() - 3), vm.start()) \
                    and _APP_PASSWORD_END.match(text, vm.end()):
                pass                            # Google's, Apple's, alone on its line
            else:
                continue
            out.append(Finding("password", vm.start(), vm.end()))
            end = vm.end()
            break
    return out


_APP_PASSWORD_ALONE = re.compile(r"(?:^|[:«\"“]|\n)[^\S\n]*\Z")
_APP_PASSWORD_END = re.compile(r"[^\S\n]*(?:$|[»\"”.,;)]|\n)", re.M)


def _keypad_codes(text: str) -> list[Finding]:
    out: list[Finding] = []
    for km in _KEYPAD_KEY.finditer(text):
        m = _KEYPAD_DIGITS.search(text, max(0, km.start() - 9), km.start())
        if m is not None and _keypad_given(text, m, km.start()):
            out.append(Finding("password", m.start(), km.end()))
    return out


# ... and a code followed by the key in words: "tapez 4471 puis la touche OK", "key in
# 5580 then press the bell", "composer 0412 puis valider"
_KEYPAD_THEN = re.compile(r"(?<![\w#*.,/:+\-])\d{3,8}[^\S\n]+\Z")
_KEYPAD_THEN_WORDS = ("puis", "then")      # (each find costs: the two common ones)
_KEYPAD_THEN_KEY = re.compile(
    r"(?i)(?:puis|then|et|and|suivi[es]{0,2}[^\S\n]+de|followed[^\S\n]+by)[^\S\n]+"
    r"(?:(?:appuy(?:er|ez)|press(?:ez)?|push|hit|sur)[^\S\n]+(?:sur[^\S\n]+)?)?"
    r"(?:la[^\S\n]+(?:touche|cloche|sonnette)|le[^\S\n]+bouton|"
    r"the[^\S\n]+(?:[\w-]+[^\S\n]+)?(?:key|button|bell)|"
    r"[#*](?!\w)|ok(?![^\W_])|(?:valider|validez|entr[ée]e|enter)(?![^\W_]))")


def _keypad_then_codes(text: str) -> list[Finding]:
    out: list[Finding] = []
    for word in _KEYPAD_THEN_WORDS:
        i = text.find(word)
        while i >= 0 and len(out) < 64:
            # (most "then" follow a word: one look at the characters before it first)
            j = i
            while j > 0 and i - j < 4 and text[j - 1] in " \t":
                j -= 1
            m = _KEYPAD_THEN.search(text, max(0, i - 12), i) \
                if j < i and text[j - 1:j].isdigit() else None
            if m is not None and _KEYPAD_THEN_KEY.match(text, i):
                d = _KEYPAD_DIGITS.search(text, m.start(),
                                          m.start() + len(m.group(0).rstrip()))
                if d is not None and _keypad_given(text, d, d.end()):
                    out.append(Finding("password", d.start(), d.end()))
            i = text.find(word, i + 1)
    return out


def _keypad_given(text: str, m: re.Match[str], key: int) -> bool:
    """Whether the digits ``m`` before a keypad's key (at ``key``) are a code given for a
    door or a gate in their sentence."""
    lo = max(0, m.start() - _KEYPAD_REACH)
    # the sentence the value ends: from the last full stop or blank line before it
    cut = max(text.rfind(". ", lo, m.start()), text.rfind("\n\n", lo, m.start()),
              text.rfind("? ", lo, m.start()))
    lo = max(lo, cut + 1)
    if not _KEYPAD_PLACE.search(text, lo, m.start()) or _code_decoy(m.group(0)) \
            or not _KEYPAD_CUE.search(text, max(lo, m.start() - 40), m.start()):
        return False
    if text[key:key + 1] == "*" and _FOOTNOTE.search(text):
        return False            # "à partir de 1500* ... (*hors taxes)": a footnote
    words = [_recent_word(w) for w in text[lo:m.start()].split()[-3:]]
    # ("badge 0457#", "n° 2204*")
    return not (set(words[-1:]) & _CODE_NAMING_FIRST or _named_by(words))


# A row of accounts with no header (HTML source or a plain list): one cell holds an
# e-mail address, another, alone in its cell, a value strong on its own (upper and lower
# case, a digit and a symbol, 8 to 40 characters; "&lt;" and "&gt;" read as written),
# where the row or the text above it speaks of passwords, logins or access:
# "<tr><td>Shopify admin</td><td>ops@x.example</td><td>Cactus!Bloom-64</td></tr>",
# "  Aiko Tanaka  - aiko.tanaka@x.example   - Moss<Rock>17" under "their initial passwords".
_ROW_TR = re.compile(r"(?is)<tr\b[^<>]{0,300}>(?P<body>.{0,3000}?)</tr\s*>")
_ROW_CELL = re.compile(r"(?is)<t[dh]\b[^<>]{0,300}>(?P<c>.{0,1000}?)</t[dh]\s*>")
_ROW_TAG = re.compile(r"<[^<>]{0,500}>")
_ROW_TEXT_SEP = re.compile(r"[ \t]+[-–|;][ \t]+|\t+|[ ]{2,}")
_ROW_REACH = 400            # the context above the row
# ... or an item of a list that gives an address then its value after a colon or an arrow
# ("- compta@x.example : Tilleul;Vent;42" under "les comptes ont été recréés"): the value
# alone to the end of its line
_ROW_PAIR = re.compile(r"[ \t]*(?:[-*•·][ \t]+)?(?P<e>[^\s@:]{1,64}@[A-Za-z0-9\-]+"
                       r"(?:\.[A-Za-z0-9\-]+)+)[ \t]*(?::|→|->|=>|=)[ \t]*(?P<v>\S{8,40})[ \t]*")
_ROW_WORDS = _GIVEN_WORDS | frozenset((b"compte", b"account", b"mots de passe",
                        b"credential"))
_ROW_VALUE = re.compile(r"[A-Za-z0-9!#$%&*+?@_.;<>\-]{8,40}")


def _row_value(value: str) -> bool:
    return bool(_ROW_VALUE.fullmatch(value)) and _classes(value) >= 4 and not (
        value[0] in "<>" or value[-1] in "<>") and _looks_secret(value.replace("<", "(")
                                                                 .replace(">", ")"))


_ROW_CONTEXT = re.compile(
    r"(?i)mots?[^\S\n]de[^\S\n]passe|(?<![^\W_])(?:mdp|passwords?|passwd|logins?|"
    r"identifiants?|acc[eè]s|access|accounts?|comptes?|admin|credentials?)(?![^\W_])")


def _row_context(text: str, lo: int, hi: int) -> bool:
    return _ROW_CONTEXT.search(text, max(0, lo - _ROW_REACH), hi) is not None


def _account_rows(text: str, folded: bytes) -> list[Finding]:
    out: list[Finding] = []
    if _CELL_TAG.search(folded):
        for rm in _ROW_TR.finditer(text):
            cells = []
            for cm in _ROW_CELL.finditer(text, rm.start("body"), rm.end("body")):
                inner = html.unescape(_ROW_TAG.sub("", cm.group("c"))).strip()
                cells.append((cm, inner))
            if len(cells) < 2 or not any(_EMAIL.fullmatch(c) for _, c in cells) \
                    or not _row_context(text, rm.start(), rm.end()):
                continue
            for cm, inner in cells:
                raw = cm.group("c")
                if "<" in raw or not _row_value(inner):
                    continue                # (a value inside more markup: not read)
                out.append(Finding("password", *_strip_span(text, cm.start("c"), cm.end("c"))))
    # plain lists: lines of three cells or more, the value last
    i = text.find("@")
    last_line = -1
    while i >= 0:
        ls = text.rfind("\n", max(0, i - 300), i) + 1
        le = text.find("\n", i, i + 300)
        le = le if le >= 0 else min(len(text), i + 300)
        if ls > last_line:
            last_line = ls
            line = text[ls:le].rstrip("\r")
            pieces = _ROW_TEXT_SEP.split(line.strip())
            if len(pieces) >= 3 and any(_EMAIL.fullmatch(p) for p in pieces[:-1]) \
                    and _row_value(pieces[-1]) and _row_context(text, ls, le):
                b = ls + len(line.rstrip())
                out.append(Finding("password", b - len(pieces[-1]), b))
            else:
                pm = _ROW_PAIR.fullmatch(line)
                if pm is not None and _row_value(pm.group("v")) \
                        and _row_context(text, ls, le):
                    out.append(Finding("password", ls + pm.start("v"), ls + pm.end("v")))
        i = text.find("@", le)
    return out


# A generated value that only a secret's name introduces: the name ends with "secret" or
# "private"/"privée" (a setting, "jwt_secret"; a qualifier, "clés Mailjet : publique X,
# privée Y"), then at most a separator or an arrow and one line break, then a long
# generated value ("occ config:app:get onlyoffice jwt_secret\n→ 4rK9vQ2m..."; "privée
# 9d3e7a1c...").  Letters and digits, 20 characters or more; "publique", "public" or a
# name that goes on ("secret_key_ref", "private-7c2e..." as one token) introduce nothing.
_SECRET_NAME_STEMS = ("secret", "priv")
_SECRET_NAME = re.compile(r"(?i)(?:secret|priv(?:ate|[ée]e?s?)?|secr[èe]te)(?![\w.\-])")
_IDENT_BACK = re.compile(r"[A-Za-z0-9_.\-]{0,40}\Z")
_SECRET_VALUE_AFTER = re.compile(
    r"[\"']?[^\S\n]*(?:[:=]|→|->|=>)?[^\S\n]*(?:\r?\n[^\S\n]*(?:→|->|=>|>)?[^\S\n]*)?[\"']?"
    r"(?P<v>[A-Za-z0-9+/_\-]{20,128}={0,2})(?![A-Za-z0-9+/_\-=@:]|\.\w)")


# ... or a secret's name qualified by a few words, then a colon: "Secret de signature
# webhook : whsec_...", "secret of the OAuth client: ...".
_SECRET_QUALIFIED_AFTER = re.compile(
    r"(?:[^\S\n]+(?:(?:de|du|des|d['’]|of|for|the|la|le|l['’]|du|pour)[^\S\n]*)?"
    r"[^\W\d_]{2,20}){1,3}[^\S\n]*[:=][^\S\n]*"
    r"(?P<v>[A-Za-z0-9+/_\-]{20,128}={0,2})(?![A-Za-z0-9+/_\-=@:]|\.\w)")


# A JSON (or JavaScript) object under a key that names a secret: its string values are
# the secrets, however deep and whatever their own keys ("secret": { "inbox": {
# "string": "X" } }, OnlyOffice's local.json; "secrets": {"smtp": "X"}).  Generated
# values only (a name such as "my-secret" is a reference), in a bounded object.
_SECRET_OBJECT = re.compile(r"""(?i)["'][\w.\-]{0,30}secrets?["'][^\S\n]*:[^\S\n]*\{""")
_OBJECT_STRING = re.compile(r"""["'](?P<k>[\w.\-]{1,40})["'][^\S\n]*:[^\S\n]*"""
                            r"""["'](?P<v>[^"'\s\\]{16,200})["']""")
_OBJECT_REACH = 600
_OBJECT_ID_KEYS = frozenset({"id", "name", "kid", "key_id", "keyid", "type", "url", "uri",
                             "host", "ref", "path", "file", "user", "username", "login"})


def _secret_object_values(text: str) -> list[Finding]:
    out: list[Finding] = []
    last = 0
    for om in _SECRET_OBJECT.finditer(text):
        if om.start() < last:
            continue                        # inside an object already read: linear
        depth, i, end = 1, om.end(), min(len(text), om.end() + _OBJECT_REACH)
        while i < end and depth:            # the object's end (brackets in strings aside)
            c = text[i]
            depth += (c == "{") - (c == "}")
            i += 1
        last = i
        for vm in _OBJECT_STRING.finditer(text, om.end(), i):
            value = vm.group("v")
            if vm.group("k").lower() not in _OBJECT_ID_KEYS and _mixed(value) \
                    and _entropic(value, min_len=16):
                out.append(Finding("api-token", vm.start("v"), vm.end("v")))
    return out


def _secret_named_values(text: str, lower: str) -> list[Finding]:
    out: list[Finding] = []
    if "secret\"" in lower or "secrets\"" in lower or "secret'" in lower:
        out.extend(_secret_object_values(text))
    for stem in _SECRET_NAME_STEMS:
        i = lower.find(stem)
        while i >= 0 and len(out) < 64:
            nm = _SECRET_NAME.match(text, i)
            if nm is not None and (i == 0 or text[i - 1] in "_.-" or not text[i - 1].isalnum()):
                vm = _SECRET_VALUE_AFTER.match(text, nm.end()) \
                    or _SECRET_QUALIFIED_AFTER.match(text, nm.end())
                if vm is not None:
                    value = vm.group("v")
                    name_start = _IDENT_BACK.search(text, max(0, i - 40), i)
                    if _mixed(value) and _entropic(value, min_len=20) \
                            and not _binary_line(text, vm.start("v")) and not (
                            name_start and text[name_start.start():i].lower().endswith(
                                ("pub_", "public_", "public-"))):
                        out.append(Finding("api-token", vm.start("v"), vm.end("v")))
            i = lower.find(stem, i + 1)
    return out


# A device's verification code (the six capitals printed on a camera's or a video
# recorder's label, that link it to an account in the maker's app: Hikvision, EZVIZ):
# after "code de vérification" / "verification code", within its sentence, six capital
# letters that read as no word (two vowels at most): "Code de vérification (appli
# mobile) : KPLMXH", "c'est un code de vérification 6 lettres ABCXYZ".
_VERIFICATION_CODE = re.compile(
    r"(?i:code[^\S\n]+de[^\S\n]+v[ée]rification|verification[^\S\n]+code)"
    r"(?P<gap>[^\n.!?]{0,40}?)(?<![A-Za-z0-9\-])(?P<v>[A-Z]{6})(?![A-Za-z0-9\-])")


def _verification_codes(text: str) -> list[Finding]:
    out: list[Finding] = []
    for m in _VERIFICATION_CODE.finditer(text):
        value = m.group("v")
        if sum(c in "AEIOU" for c in value) > 2 or len(set(value)) < 4 \
                or _named_by(_recent(text, max(0, m.start("v") - 60), m.start("v"))):
            continue
        out.append(Finding("password", m.start("v"), m.end("v")))
    return out


# A Wi-Fi key or a key made of lower-case words joined by hyphens, with a number among
# them ("the key we use is 7cafe-du-port-7", "the key we give to visitors is written on the
# whiteboard: sunflower-4410-river", "la clé c'est la devise du club ..., soit
# on-roule-ensemble-depuis-1982"): after a key or Wi-Fi label, in its paragraph and within
# _KEY_PHRASE_REACH, right after a giving verb or a colon.  Three to eight parts, each
# lower-case letters, digits, or digits glued to letters ("7cafe"); two words of three
# letters or more; a digit somewhere (a pod's or a host's name mixes letters and digits
# inside its parts: "api-6d9f7c5b8-x2kq4" is no phrase).
_KEY_PHRASE_LABELS = ("key", "cl\u00e9", "clef", "wifi", "wi-fi", "passphrase")
_KEY_PHRASE_REACH = 200
_JOINED = re.compile(r"-(?<=[a-z0-9]-)(?=[a-z0-9])")
_NETWORK_NEAR = re.compile(r"(?<![^\W_])(?:wi-?fi|wpa\d?|wlan|r[ée]seau|network|ssid)(?![^\W_])")
_KEY_PHRASE = re.compile(
    r"(?i)(?:(?<![^\W_])(?:is|est|c['’][^\S\n]?est|soit|was|sera)|(?<=[^\W_]):)"
    r"[^\S\n]*\n?[^\S\n]*"
    r"[«“\"']?[^\S\n]?(?P<v>[a-z0-9]+(?:-[a-z0-9]+){2,7})(?![\w\-]|\.\w)")
_SETTING_BEFORE = re.compile(r"(?:[A-Za-z0-9]+[_.][A-Za-z0-9_.]+|[A-Z]{2,}[A-Z0-9]*)\Z")
_PHRASE_PART = re.compile(r"[a-z]+|\d+|\d{1,4}[a-z]{2,}|[a-z]{2,}\d{1,4}")


def _hyphen_phrase(value: str) -> bool:
    parts = value.split("-")
    return (10 <= len(value) <= 60 and value.lower() not in _DASHED_COMMON
            and all(_PHRASE_PART.fullmatch(p) for p in parts)
            and sum(sum(c.isalpha() for c in p) >= 3 for p in parts) >= 2
            and any(c.isdigit() for c in value))


def _key_phrases(text: str, lower: str, anchors: list[tuple[str, bool]]) -> list[Finding]:
    out: list[Finding] = []
    n = len(text)
    until = -1
    names = {a for a, _ in anchors}
    for w in _KEY_PHRASE_LABELS:
        if w not in names and not (w == "passphrase" and "pass" in names):
            continue
        i = lower.find(w)
        while i >= 0:
            end = i + len(w)
            # ("clé"/"key" alone may be a door's: a network must be named near it)
            if i >= until and (i == 0 or not lower[i - 1].isalnum()) \
                    and not lower[end:end + 1].isalnum() and _key_label_ok(text, i, end) \
                    and (w not in ("key", "cl\u00e9", "clef") or _NETWORK_NEAR.search(
                        lower, max(0, i - _KEY_PHRASE_REACH), end + _KEY_PHRASE_REACH)):
                hi = min(n, end + _KEY_PHRASE_REACH)
                stop = _WINDOW_STOP.search(text, end, hi)
                hi = stop.start() if stop else hi
                # (most windows hold no word joined by a hyphen: a literal-first search)
                phrases = _KEY_PHRASE.finditer(text, end, hi) \
                    if _JOINED.search(lower, end, hi) else ()
                for m in phrases:
                    value = m.group("v")
                    # (a colon after a setting's name, "DD_HOSTNAME:", gives no key)
                    if value.islower() and _hyphen_phrase(value) and not (
                            text[m.start()] == ":" and _SETTING_BEFORE.search(
                                text, max(0, m.start() - 40), m.start())) \
                            and not _named_by(_recent(text, max(0, m.start() - 60),
                                                      m.start("v"))):
                        out.append(Finding("password", m.start("v"), m.end("v")))
                until = hi
            i = lower.find(w, i + 1)
    return out


# Access codes: door, alarm, padlock, SIM (PIN, PUK), keypad, lockbox; digits with an
# optional letter or # / *, also spaced or dashed ("8 3 5 1", "7-3-9-1").
_CODE_LABEL = re.compile(
    r"(?i)(?<![^\W_])(?:digicode|codes?|pin|puk|passcode|combinaison|combination|"
    r"keypad|lockbox|key[^\S\r\n]?box|cadenas|alarme|alarm|padlock|key[^\S\r\n]safe|"
    r"bo[îi]te[^\S\r\n]+[àa][^\S\r\n]+cl[ée]f?s?)(?![^\W_])")
# Labels of a lock whose combination may have three digits ("le cadenas ... avec 227"),
# given by a verb or "avec"/"with" right before it.
_PADLOCK_LABELS = frozenset({"cadenas", "padlock", "combinaison", "combination"})
_PADLOCK_VALUE = re.compile(r"(?i)(?<![^\W_])(?:avec|with|est|is|c['’]est|:)(?:[^\S\n]+le)?"
                            r"[^\S\n]+(?P<v>\d{3})(?![\w/+\-]|[.,:]\d)")
# Labels that name a device, not its code: the value must follow closely ("alarme : 7391").
_DEVICE_CODE_LABELS = frozenset({"alarme", "alarm"})
# "l'alarme se désactive avec le 7319", "the alarm is disarmed with 1 9 7 3"
_ARMING = re.compile(r"(?i)(?<![^\W_])(?:d[ée]sactiv|activ|d[ée]sarm|disarm|arm|unset|"
                     r"coupe|couper|[ée]teindre|turn\s+off|switch\s+off)\w*")
_CODE_VALUE = re.compile(
    r"(?<![\w/+\-.,:#°])(?<!\d[ .\-])(?:"
    r"[A-Z]?\d{4,8}[A-Z#*]?"                            # 4096#, 0312A
    r"|\d{2,4}[#*]\d{2,6}[#*]?"                          # 41#907: a keypad's key inside
    r"|\d(?:[ \-]\d){3,7}[#*]?"                          # 8 3 5 1
    r"|\d{3}(?:[ \-]\d{3}){1,2}"                        # 482 917, 663 901 448
    r"|\d\d(?: \d\d){2,3}"                               # 27 14 93
    r"|\d{4} \d{4}"                                      # 4829 1057 (backup codes)
    r"|\d{2,6}(?:-\d{2,6}){1,7}[#*]?"                    # 7734-2291, 28-14-61
    r"|(?=[A-Z]{0,7}\d)(?=\d{0,7}[A-Z])[0-9A-Z]{5,8}"    # 4B1793
    # 3B41, 19B7: one letter inside digits, not a group of a hex fingerprint
    r"|(?<![0-9A-Fa-f]{2}[ :])(?:\d[A-Z]\d\d|\d\d[A-Z]\d)(?![ :][0-9A-Fa-f]{2})"
    r"|(?=[A-Z]{0,5}\d)[0-9A-Z]{3,6}(?:-[0-9A-Z]{3,6}){1,3}"   # 4F7K-Q2WX (backup codes)
    r")(?![\w/+\-]|[.,:]\d|[ \-]\d)")
# A PIN written in two pairs of digits right after its label ("PIN 73 91", "PIN : 05 18")
_PIN_IN_PAIRS = re.compile(r"[^\S\n]*[:=]?[^\S\n]*(?P<v>\d\d \d\d)(?![\w/+\-]|[ .,:]\d)")
# Between a code's label and its value, a separator or a verb and nothing else ("code is",
# "code : ", "code c'est le") ...
_CODE_COPULA = re.compile(
    r"(?i)[^\S\n]*(?:[:=]|(?<![^\W_])(?:is|est|c['’]est)(?![^\W_]))"
    r"(?:[^\S\n]+(?:le|the))?[^\S\n]*:?[^\S\n]*")
# ... or words that qualify the label (a line wrap may cut them), then that separator or
# verb: "de la porte de\nservice est", "pour la porte du local, c'est le".
_CODE_QUALIFIED = re.compile(
    r"(?i)(?:(?:[^\S\n]*\n[^\S\n]*|[^\S\n]+|['’])[^\W\d_]{1,20}){1,8}[^\S\n]*,?"
    r"[^\S\n]*(?:[:=]|(?<![^\W_])(?:is|est|c['’]est|was|sera)(?![^\W_]))"
    r"(?:[^\S\n]+(?:le|the))?[^\S\n]*:?[^\S\n]*")
_CODE_NAMING_FIRST = _words("""
extension extension: poste poste: ext ext. badge badge: n° no no. numéro numero number tel
tél téléphone phone fax room room: salle
""")
_CODE_NAMING = _NAMING_WORDS | {"badge", "badge:", "extension:", "poste:", "ext.", "room:"}
_DIGIT_CODE = re.compile(r"[A-Z]?\d{4,8}[A-Z#*]?|\d{2,4}[#*]\d{2,6}[#*]?|\d(?:[ \-]\d){3,7}[#*]?|"
                         r"\d{3}(?:[ \-]\d{3}){1,2}|"
                         r"\d\d(?: \d\d){2,3}|\d{4} \d{4}|"
                         r"\d{2,6}(?:-\d{2,6}){1,7}[#*]?")
_DATE_LIKE = re.compile(r"(\d{1,4})[-/.](\d{1,2})[-/.](\d{1,4})")
_PHONE_LIKE = re.compile(r"0\d(?:[ .\-]?\d\d){4}|\+.*")


# A combination in the shape of a date, "21-08-63": pairs of digits joined by hyphens
# (dates in prose take slashes or a four-digit year), not after a word that introduces a
# date ("le", "du", "until", "expire") and with no other number between label and value.
_COMBINATION = re.compile(r"\d\d-\d\d-\d\d")
_DATE_BEFORE = _words("""
le du au aux depuis jusqu jusqu'au jusqu’au avant après apres dès des à partir on since
until till before after from by expire expires expiré expiration valable valid date daté
""")


def _combination(text: str, label_end: int, start: int, value: str) -> bool:
    if not _COMBINATION.fullmatch(value):
        return False
    between = text[label_end:start]
    words = [w.strip("(),:;«»\"'").lower() for w in between.split()]
    return not any(c.isdigit() for c in between) and not (
        words and (words[-1] in _DATE_BEFORE or words[-1].split("'")[-1] in _DATE_BEFORE))


def _code_decoy(value: str) -> bool:
    """A date, a year or a phone number in the shape of a code."""
    if _YEAR.fullmatch(value) or _PHONE_LIKE.fullmatch(value):
        return True
    if len(value) == 9 and value[4] == " " and _YEAR.fullmatch(value[:4]) \
            and _YEAR.fullmatch(value[5:]):
        return True                     # "2024 2025": two years, a span or a list
    dm = _DATE_LIKE.fullmatch(value)
    if dm is None:
        return False
    a, b, c = (int(g) for g in dm.groups())
    if len(dm.group(1)) == 4:
        return 1 <= b <= 12 and 1 <= c <= 31
    return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
_NOT_ACCESS_CODE = _NOT_SECRET_QUALIFIER
_CODE_TRIGGER = re.compile(rb"code|pin|puk|combin|keypad|lockbox|key ?box|cadenas|alarm|"
                           rb"padlock|key safe|bo(?:\xc3\xae|i)te (?:\xc3\xa0|a) cl")
# Literal searches (bytes.find is a memchr loop; an alternation in a regex is not).
_GENERIC_WORDS = (b"pass", b"pwd", b"psk", b"secret", b"token", b"key", b"auth", b"cred",
                  b"salt", b"sess", b"sig", b"code", b"pin", b"puk", b"combin", b"lockbox",
                  b"cadenas", b"padlock", b"bo\xc3\xaete \xc3\xa0 cl\xc3\xa9",
                  b"boite \xc3\xa0 cl\xc3\xa9", b"boite a cle", b"alarm", b"compte", b"account",
                  b"identifiant", b"login", b"user",
                  b"mdp", b"pw", b"sshpass", b"lftp", b"mysql", b"net use", b"snmp",
                  b"securestring", b"-u", b":\\/\\/", b"%3a%2f%2f", b"/hooks/", b"/api/",
                  b"webhookb2/", b"/bot", b"bearer", b"pgpass", b"connect", b"new pdo",
                  b"identified", b"imap_open", b"ldap_bind", b"ftp_login", b"ssh2_auth",
                  b"cookie", b"logged_in", b"value", b"sid=", b"remember", b"sqlplus", b"rman",
                  b"expdp", b"impdp", b"sqlldr", b"dgmgrl")
_STEMS = ("pass", "pwd", "psk", "secret", "token", "key", "auth", "cred", "salt", "sess",
          "sig")
_CODE_WORDS = ("code", "pin", "puk", "combin", "keypad", "lockbox", "cadenas", "alarm",
               "key box", "keybox", "padlock", "key safe", "bo\u00eete \u00e0 cl\u00e9",
               "boite \u00e0 cl\u00e9", "boite a cle")
# a portal's account area names the pair after it ("Espace client : theatre-port / X");
# (no gate word of its own: "e" starts too many words for the gate's cost)
_ACCOUNT_AREAS = (b"espace client", b"espace adh", b"espace membre", b"espace pro", b"extranet")
_PAIR_WORDS = (b"compte", b"account", b"identifiant", b"login", b"acc", b"user", b"admin",
               b"utilisateur", b"credential", b"mdp", b"password", b"mot de passe", b"pw",
               b"connexion", b"session", b"passwd", *_ACCOUNT_AREAS)
# pair words that _GENERIC_WORDS does not already cover ("pass", "user", "compte"...)
_PAIR_ONLY = (b"acc\xc3\xa8s", b"acc\xc3\x88s", b"acces", b"admin", b"utilisateur")
_COMMAND_WORDS = (b"-u", b"--user", b"sshpass", b"lftp", b"mysql", b"net use",
                  b"securestring", b"snmp", b"sqlplus", b"rman", b"expdp", b"impdp", b"sqlldr",
                  b"dgmgrl")
_LIST_WORDS = (b"code", b"pin", b"mots de passe", b"passwords", b"cl\xc3\xa9s", b"keys",
               b"recovery", b"backup", b"secours", b"cup\xc3\xa9ration", b"recuperation",
               b"acc\xc3\xa8s", b"acces", b"logins", b"identifiants", b"credentials")
_YEAR = re.compile(r"(?:19[5-9]\d|20[0-2]\d|203[0-5])")     # (2048 is a code, not a year)


def _list_intro_line(text: str, pos: int) -> tuple[int, int] | None:
    """The line that announces the list whose row (indented or marked) holds ``pos``:
    the nearest line above, within six lines with no blank one between, that ends with
    a colon."""
    start = text.rfind("\n", max(0, pos - 200), pos) + 1
    if (start == 0 and pos > 200) or not (
            text.startswith((" ", "\t"), start) or _LIST_MARKER.match(text, start)):
        return None                     # the label's line is no row of a list
    for _ in range(6):
        if start == 0:
            return None
        prev = text.rfind("\n", max(0, start - 301), start - 1) + 1
        if prev == 0 and start > 301:
            return None
        line = text[prev:start - 1].rstrip()
        if not line:
            return None
        if line.endswith(":"):
            return _wrapped_start(text, prev), start - 1
        start = prev
    return None


def _wrapped_start(text: str, start: int) -> int:
    """Where the sentence ending on the line at ``start`` begins, when a mail program
    wrapped it over up to two lines above ("Chaque service a un code pour le comptage
    des copies\nsur le Canon :"): the earliest of those lines that goes on, unbroken by
    a blank line, a sentence's end, a colon or a list row."""
    for _ in range(2):
        if start == 0:
            break
        prev = text.rfind("\n", max(0, start - 301), start - 1) + 1
        line = text[prev:start - 1].rstrip()
        if not line or line[-1] in ".!?:;" or text.startswith((" ", "\t", ">"), prev) \
                or _LIST_MARKER.match(text, prev):
            break
        start = prev
    return start


def _last_sentence(text: str, lo: int, hi: int) -> int:
    """Where the last sentence of ``text[lo:hi]`` starts ("Dear customer, ... Please keep
    the following safe:": the heading is the last sentence)."""
    end = max(text.rfind(". ", lo, hi), text.rfind("! ", lo, hi), text.rfind("? ", lo, hi))
    return end + 2 if end >= 0 else lo


def _code_before(text: str, label: int) -> Finding | None:
    """A code written before its label, as _value_before reads a password's."""
    lo = max(0, label - 60, text.rfind("\n", max(0, label - 60), label) + 1)
    last = text[max(lo, label - 24):label].split()
    if not last or last[-1].lower() not in _BEFORE_LABEL_WORDS:
        return None
    vm = _VALUE_BEFORE.search(text, lo, label)
    if vm is None:
        return None
    a, b = _trim_value(text, vm.start("v"), vm.end("v"))
    value = text[a:b]
    if not _DIGIT_CODE.fullmatch(value) or _code_decoy(value) or _identity_named(
            [_recent_word(w) for w in text[lo:a].split()[-4:]]):
        return None
    return Finding("password", a, b)


# A code's own label that says it opens an account: what the heading of its list says
# (a bank's letter) does not make it a reference.
_OWN_ACCESS_LABEL = re.compile(
    r"(?i)[^\S\n]*(?:d['’][^\S\n]?acc[eè]s|secret|de[^\S\n]+connexion|"
    r"d['’][^\S\n]?identification|access|login|de[^\S\n]+d[ée]verrouillage|unlock)(?![^\W_])")


# A password announced right after a code: the code was the login of the pair.
_PASSWORD_NEXT = re.compile(
    r"(?i)[^\S\n]*[,;]?[^\S\n]*(?:et|and|&|\+|with|avec|puis|then)\s+(?:(?:le|la|l['’]|"
    r"mon|ma|son|sa|votre|the|my|his|her|its|your|un|a)\s*)?(?:mot\s+de\s+passe|"
    r"mdp|password|passwort|passe|pwd|pass)(?![^\W_])")


# "celui de Lucas 2048", "the one of Paul 7731": another person's code in a list
_WHOSE = frozenset({"celui", "celle", "ceux", "one", "that"})


def _access_codes(text: str, lower: str, known: frozenset[bytes] | None = None) -> list[Finding]:
    out: list[Finding] = []
    n = len(text)
    last = -1
    for s0, _ in _stem_positions(lower, _CODE_WORDS, known):
        w0 = s0
        while w0 > 0 and s0 - w0 < 8 and lower[w0 - 1].isalpha():
            w0 -= 1
        m = _CODE_LABEL.match(text, w0)
        if m is None or m.start() < last:
            continue
        last = m.end()
        lo = _qualifier_start(text, max(0, m.start() - 14), m.start())
        hi = _qualifier_end(text, m.end(), min(n, m.end() + 20))
        if _NOT_ACCESS_CODE.search(text, lo, hi) or _code_for_product(text, m.start(), m.end()):
            continue
        intro = _list_intro_line(text, m.start())
        if intro is not None and _NOT_ACCESS_CODE.search(text, _last_sentence(text, *intro),
                                                         intro[1]) \
                and _OWN_ACCESS_LABEL.match(text, m.end()) is None:
            continue                    # under "un code pour le comptage des copies :"
                                        # (but "Code d'accès" under a bank's letter)
        before = _code_before(text, w0)
        if before is not None:
            out.append(before)          # "8841, c'est le code de l'alarme"
        if m.group(0).lower() in ("pin", "puk"):
            pm = _PIN_IN_PAIRS.match(text, m.end())
            if pm is not None:          # "nouveau PIN 73 91": two pairs of digits
                out.append(Finding("password", pm.start("v"), pm.end("v")))
                last = pm.end()
                continue
        device = m.group(0).lower() in _DEVICE_CODE_LABELS
        limit = _window_limit(text, m.end(), 130 if not device else 60 if _ARMING.search(
            text, m.end(), min(n, m.end() + 40)) else 25)
        plural = True       # "le digicode c'est X et l'alarme Y": every code
        first = True
        for v in _CODE_VALUE.finditer(text, m.end(), limit):
            value = v.group(0)
            # a year is a code only right after its label ("alarme 1966", "the disarm
            # code is 1966")
            told = v.start() - m.end() <= 3 or _CODE_COPULA.fullmatch(
                text, m.end(), v.start()) is not None
            if (_code_decoy(value) and not (told and _YEAR.fullmatch(value))
                    and not _combination(text, m.end(), v.start(), value)) \
                    or _NOT_ACCESS_CODE.search(
                    text, max(m.end(), v.start() - 20), v.start()):
                continue
            if not _DIGIT_CODE.fullmatch(value) and (
                    v.start() - m.end() > 30 or "\n" in text[m.end():v.start()]) and not (
                    v.start() - m.end() <= 60 and _CODE_QUALIFIED.fullmatch(
                        text, m.end(), v.start())):
                continue        # letters in a code: only right after its label, or after
                                # words that qualify it and a verb ("le digicode de la
                                # porte de\nservice est 4B7296")
            words = [w.strip("()[]«»\"'") for w in
                     text[max(m.end(), v.start() - 30):v.start()].lower().split()]
            if set(words[-1:]) & _CODE_NAMING_FIRST or (
                    not first and set(words[-2:]) & _CODE_NAMING
                    and not set(words[-4:-1]) & _WHOSE) or _identity_named(
                    # (the label first: "code utilisateur = 3864" qualifies the code)
                    ["code", *(_recent_word(w) for w in
                               text[max(m.end(), v.start() - 40):v.start()].split())]):
                continue        # "extension 2204", "badge 0457", "mon badge c'est le 0457"
            if _PASSWORD_NEXT.match(text, v.end(), min(n, v.end() + 40)):
                continue        # "mon code vendeur c'est le 0417 et le mot de passe X":
                                # the login half of a pair, as "identifiant X et mdp Y"
            out.append(Finding("password", v.start(), v.end()))
            first = False
            last = v.end()
            if not plural:
                break
        if first and m.group(0).lower() in _PADLOCK_LABELS:
            pm = _PADLOCK_VALUE.search(text, m.end(), limit)
            if pm is not None and _PHRASE_END.search(text, m.end(), pm.start()) is None:
                out.append(Finding("password", pm.start("v"), pm.end("v")))
                last = pm.end()
    return out


# Lists announced by a line that names secrets and ends with a colon ("here are the backup
# codes:", "Voici les codes des salles :"): one value per line, alone or after a label and
# a separator (dot leaders, a colon, a tab, spaces).
_LIST_STEMS = ("code", "pin", "mots de passe", "password", "cl\u00e9", "keys", "recovery",
               "backup", "secours", "cup\u00e9ration", "recuperation", "acc\u00e8s", "acces",
               "login", "identifiant", "credential")
_LIST_INTRO = re.compile(
    r"(?i)[^\n]{0,400}?(?<![^\W_])(?:codes|digicodes|pins|mots\s+de\s+passe|passwords|"
    r"passcodes|cl[ée]s|keys|recovery|backup|secours|r[ée]cup[ée]ration|acc[eè]s|logins|"
    r"identifiants|credentials)(?![^\W_])[^\n]{0,400}:[ \t]*\r?$")
_LIST_ITEM = re.compile(
    r"[ \t>]*(?:(?:[-*•·]|\d{1,2}[.)])[ \t]+)?(?:(?P<label>[^\n:\t]{1,60}?)"
    r"(?:[ \t]*\.{3,}[ \t]*|[ \t]*:[ \t]+|\t+|[ \t]{2,}))?"
    r"(?P<v>\d{4} \d{4}|[^\s]{3,64})[ \t]*$")


def _list_intros(text: str, lower: str, known: frozenset[bytes] | None = None) -> list[int]:
    """Ends of the lines that name secrets and end with a colon (see _LIST_INTRO)."""
    ends: list[int] = []
    if len(lower) != len(text):
        return [m.end() for m in _LIST_INTRO.finditer(text)]
    for i, _ in _stem_positions(lower, _LIST_STEMS, known):
        if ends and i < ends[-1]:
            continue
        eol = text.find("\n", i, i + 400)
        eol = eol if eol >= 0 else min(len(text), i + 400)
        if not text[i:eol].rstrip(" \t\r").endswith(":"):
            end = _intro_goes_on(text, i, eol)
            if end is not None:
                ends.append(end)
            continue
        bol = text.rfind("\n", max(0, i - 400), i) + 1
        im = _LIST_INTRO.match(text, bol, eol)
        if im is not None and not _NOT_ACCESS_CODE.search(im.group(0)):
            ends.append(im.end())
    return ends


_LIST_WORD = re.compile(
    r"(?i)(?<![^\W_])(?:codes|digicodes|pins|mots\s+de\s+passe|passwords|passcodes|"
    r"cl[ée]s|keys|identifiants|credentials)(?![^\W_])")
_HEADING_WORD = re.compile(r"(?i)(?<![^\W_])(?:recovery|backup|secours|r[ée]cup[ée]ration)"
                           r"\s+codes?|codes?\s+(?:de\s+)?(?:secours|r[ée]cup[ée]ration)")
_HEADING_LITERALS = ("recovery", "backup", "secours", "cup\u00e9ration", "cuperation")
_INDENTED_ITEM = re.compile(r"\n(?:[ \t]{2,}|[ \t]*[-*•·][ \t]+)[^\s]")


def _paragraph_end(text: str, eol: int) -> int | None:
    """The end of the paragraph whose line ends at ``eol`` when a blank line follows it
    within three lines (the position of the newline before the blank line)."""
    n = len(text)
    end = eol
    for _ in range(3):
        if end >= n:
            return None
        nl = text.find("\n", end + 1, end + 400)
        if nl < 0:
            return None
        if not text[end + 1:nl].strip(" \t\r>"):
            return end
        end = nl
    return None


def _intro_goes_on(text: str, i: int, eol: int) -> int | None:
    """Where the announcement that names secrets at ``i`` ends when its own line does not
    end with a colon: a sentence that goes on for a line or two to a colon ("These are
    the 2FA recovery codes … — she'll store / them in our vault …:"), or a heading of
    recovery codes over an indented list ("GitHub recovery codes for gh-ops-bot")."""
    n = len(text)
    # the cheap tests first (most labels end no list): a colon ends one of the next two
    # lines, or an indented item follows
    end = eol
    found = None
    for _ in range(2):
        if end >= n:
            break
        nl = text.find("\n", end + 1, end + 400)
        nl = nl if nl >= 0 else min(n, end + 400)
        line = text[end + 1:nl].rstrip(" \t\r")
        if not line.lstrip(" \t>")[:1].islower():
            break                       # the sentence goes on in lower case (no header)
        if line.endswith(":"):
            found = nl
            break
        end = nl
    heading = found is None and _INDENTED_ITEM.match(text, eol) is not None
    if found is None and not heading:
        # a paragraph that names recovery codes, then a blank line and the indented
        # codes ("I saved these 2FA recovery codes ... which ones I already used.")
        # (the heading's words on the stem's own line first, literals before the
        # pattern: most stems end no list)
        seg = text[max(0, i - 24):eol].lower()
        if not any(w in seg for w in _HEADING_LITERALS) or "code" not in seg \
                or not _HEADING_WORD.search(seg):
            return None
        para_end = _paragraph_end(text, eol)
        if para_end is None or _INDENTED_ITEM.match(text, para_end + 1) is None:
            return None
        heading = True
        eol = para_end
    bol = max(i - 400, text.rfind("\n", max(0, i - 400), i) + 1, 0)
    if _LIST_WORD.search(text, max(bol, i - 20), min(eol, i + 40)) is None:
        return None
    if found is not None:
        return None if _NOT_ACCESS_CODE.search(text, bol, found) else found
    if _HEADING_WORD.search(text, bol, eol) and not _NOT_ACCESS_CODE.search(text, bol, eol):
        return eol
    return None


# An item's own label that names what opens nothing, whatever the heading above it said
# ("Keys in use:" then "publishable: pk_…", "Invoice that failed: in_…").
_LIST_LABEL_NOT_SECRET = _Lexicon("""
publishable public invoice facture order commande ticket customer client tracking suivi
iban bic siret siren
""")


# A heading that announces a login and its password ("les identifiants ENT de la classe :",
# "Login details:") rather than secrets alone: its first bare item is the login.
_PAIR_INTRO = re.compile(r"(?i)(?<![^\W_])(?:identifiants?|credentials|logins?|acc[eè]s|access|"
                         r"login\s+(?:details|info))(?![^\W_])")
_SECRET_INTRO = re.compile(r"(?i)(?<![^\W_])(?:codes?|pins?|passe|mdp|passwords?|passcodes?|"
                           r"cl[ée]s?|keys?|recovery|backup|secours)(?![^\W_])")


def _pair_intro(text: str, intro_end: int) -> bool:
    bol = _wrapped_start(text, text.rfind("\n", max(0, intro_end - 400), intro_end) + 1)
    return _PAIR_INTRO.search(text, bol, intro_end) is not None \
        and _SECRET_INTRO.search(text, bol, intro_end) is None


def _listed_values(text: str, lower: str,
                   known: frozenset[bytes] | None = None) -> list[Finding]:
    out: list[Finding] = []
    n = len(text)
    for intro_end in _list_intros(text, lower, known):
        pos = intro_end + 1
        blank = 0
        items = 0
        bare: list[int] = []            # where the items with no label of their own are
        first_out = len(out)
        while pos < n and items < 30:
            eol = text.find("\n", pos, pos + 300)
            eol = eol if eol >= 0 else min(n, pos + 300)
            line = text[pos:eol]
            if not line.strip(" \t>\r"):
                if items or blank:
                    break
                blank += 1
                pos = eol + 1
                continue
            im = _LIST_ITEM.fullmatch(text, pos, len(line.rstrip("\r")) + pos)
            if im is None:
                break
            value = im.group("v")
            label = im.group("label")
            if (label is not None and (any(
                    _recent_word(w).rstrip(":") in _IDENTITY_WORDS for w in label.split())
                    or _LIST_LABEL_NOT_SECRET.search(label)
                    or _SITE_KEY.search(label))) or "=" in value[1:]:
                # "Key ID: 3F2A91C4", "Login : jdupont", "publishable: pk_…", "Invoice:
                # in_…", a captcha's "site key"; "NAME=value" is an assignment, judged
                # by its name elsewhere
                items += 1              # "Key ID: 3F2A91C4", "Login : jdupont"
                pos = eol + 1
                continue
            if label is None:
                bare.append(im.start("v"))
            code = _CODE_VALUE.fullmatch(value) is not None and not _code_decoy(value)
            if code or (_strong(value) and _looks_secret(value) and not _HEX_RUN.fullmatch(value)):
                out.append(Finding("password", im.start("v"), im.end("v")))
            elif im.group("label") is None and not (
                    items == 0 and _pair_intro(text, intro_end)):
                break                   # (a credentials heading's first line: the login)
            items += 1
            pos = eol + 1
        if len(bare) == 2 and items == 2 and _pair_intro(text, intro_end):
            # "identifiants :" then two bare lines: the login, then its password
            out[first_out:] = [f for f in out[first_out:] if f.start != bare[0]]
    return out


# "k.benali / Soleil.Bleu48", "leroy.marie, Pivoine*1964": a login, a slash or a comma,
# then a password-like value, where the text speaks of accounts.
_LOGIN_PAIR = re.compile(
    r"(?<![^\s(:«\"'])(?P<login>[A-Za-z][\w.\-]{1,40}(?:@[\w\-]+(?:\.[\w\-]+)+)?)"
    r"(?:[^\S\r\n]+/[^\S\r\n]*|[^\S\r\n]*/[^\S\r\n]+|[^\S\r\n]*,[^\S\r\n]+)"
    r"(?P<v>(?:[^\s,;/?&=]|&(?!\w{1,20}=)){6,64})(?![^\s,;])")
_PAIR_CONTEXT = re.compile(
    r"(?i)compte|account|identifiant|login|acc[eè]s|user|utilisateur|credential|mdp|"
    r"password|passwd|mot de passe|\bpw\b|\bpwd\b|connexion|\badmin\b|\bsession\b|\bcodes\b|"
    r"espace (?:client|adh[ée]rent|membre|pro)|extranet")
_COMMON_LOGINS = frozenset({"admin", "root", "administrateur", "administrator", "user",
                            "guest", "invite", "invité", "support", "operator"})


# ("&" is a password character unless a query parameter follows: "&page=2")
_PAIR_VALUE = re.compile(r"(?=(?:[^\s,;/?&=]|&(?!\w{1,20}=)){0,63}\d)"
                         r"(?:[^\s,;/?&=]|&(?!\w{1,20}=)){6,64}(?![^\s,;])")
_LOGIN_BEFORE = re.compile(
    r"(?<![^\s(:«\"'])(?P<login>[A-Za-z][\w.\-]{1,40}(?:@[\w\-]+(?:\.[\w\-]+)+)?|\d{5,12})"
    r"[^\S\r\n]*\Z")


_LOGIN_LABEL_BEFORE = re.compile(
    r"(?i)(?<![^\W_])(?:login|logins|identifiants?|credentials|creds|user(?:name)?|"
    r"utilisateur|compte|account|acc[eè]s|session|extranet|"
    # a portal's account area: "Espace client pro billetterie : theatre-port / X"
    r"espace[^\S\n]+(?:client|adh[ée]rent|membre|pro))(?![^\W_])"
    # what the access is to, in a few words: "l'accès au Dolibarr avec", "identifiants
    # Dolibarr asso (", "l'accès à l'admin de la boutique c'est"
    r"(?:(?:[^\n:;.!?]{0,60}(?=:))|(?:[^\S\n]+[^\s:;.!?/()«»\"]{1,20}){1,6}?)?[^\n\w]{0,12}"
    r"(?:(?:sont|are|is|c['’\s]?est|:)[^\n\w]{0,4})?\Z")


# a login label and a colon on the line, right before the login ("les accès du PC : ")
_LOGIN_LINE_LABEL = re.compile(r"[^\S\n]*:[^\S\n]*\Z")
_COLON_PAIR = re.compile(r":(?<=[A-Za-z]:)(?=[A-Za-z])(?!//)")


_LIST_MARKER = re.compile(r"[ \t]*(?:[-*•→>·]|\d{1,2}[.)])[ \t]")
_LOGIN_INTRO = re.compile(
    r"(?i)(?<![^\W_])(?:logins?|identifiants?|credentials|creds|comptes?|accounts?|"
    r"acc[eè]s|sessions?)(?![^\W_])[^\n]{0,80}:[ \t]*\r?\n")


def _listed_under_login_intro(text: str, pos: int) -> bool:
    """Whether ``pos`` is on a list item ("- Dolibarr : jdupont / X") of a list that a
    line naming logins introduces ("Les accès :", "Logins:"), up to 8 items above."""
    ls = text.rfind("\n", max(0, pos - 300), pos) + 1
    if not _LIST_MARKER.match(text, ls, pos):
        return False
    for _ in range(8):
        if ls <= 1:
            return False
        prev = text.rfind("\n", max(0, ls - 300), ls - 1) + 1
        if _LOGIN_INTRO.search(text, prev, ls):
            return True
        if not _LIST_MARKER.match(text, prev, ls):
            return False
        ls = prev
    return False


def _find_all(text: str, sep: str) -> Iterable[int]:
    i = text.find(sep)
    while i >= 0:
        yield i
        i = text.find(sep, i + 1)


_PAIR_SEPARATORS = (" /", "/ ", ", ", ",\t", "/\t", ":", " et ", " and ", " – ", " - ", "; ",
                    " puis ", " then ", "/")


# Each separator followed by what _PAIR_VALUE needs (a digit in the token after it): the
# positions where a value can follow, found in C (", " is in every sentence; most are
# followed by words).
_PAIR_SEP_VALUE = {sep: re.compile(re.escape(sep) + r"[ \t]*(?=(?:[^\s,;/?&=]|&(?!\w{1,20}=))"
                                   r"{0,63}\d)") for sep in _PAIR_SEPARATORS if sep != ":"}
# "login/password" written in one piece ("les accès du PC : biblio-pret3/Roman@Noir77"):
# one slash between a letter or digit and the value, in a token that holds no other
# slash (a path, a date or a URL holds several, or a scheme); only after a login label.
_PAIR_SEP_VALUE["/"] = re.compile(r"/(?<=[A-Za-z0-9]/)(?=[^\s/:]{0,63}\d)(?=[^\s/:]{6,64}"
                                  r"(?:[\s,;]|\Z))")


def _find_valued(text: str, pattern: re.Pattern[str]) -> Iterator[int]:
    """Where ``pattern`` matches, overlapping matches included (as _find_all's)."""
    m = pattern.search(text)
    while m is not None:
        yield m.start()
        m = pattern.search(text, m.start() + 1)


def _login_pairs(text: str) -> list[Finding]:
    out = []
    seen: set[int] = set()
    for sep in _PAIR_SEPARATORS:
        # "login:password" is written in one piece, between letters
        positions = (m.start() for m in _COLON_PAIR.finditer(text)) if sep == ":" \
            else _find_valued(text, _PAIR_SEP_VALUE[sep])
        for i in positions:
            j = i + len(sep)
            while j < len(text) and text[j] in " \t":
                j += 1
            vm = _PAIR_VALUE.match(text, j)
            if vm is None or j in seen:
                continue
            k = i
            while k > 0 and text[k - 1] in " \t" and i - k < 4:
                k -= 1
            lm = _LOGIN_BEFORE.search(text, max(0, k - 100), k)
            if lm is None:
                continue
            login = lm.group("login")
            # a plain name ("jwalsh") is a login only right after a word that says so
            named = _LOGIN_LABEL_BEFORE.search(text, max(0, lm.start() - 100), lm.start()) \
                or _listed_under_login_intro(text, lm.start())
            # a plain name ("tlemoine / Soleil_du_Sud88") with a password of all four
            # classes after it: the pair says what it is where the text speaks of accounts
            plain_pair = sep.strip() in ("/", ",") and login.isalpha() and login.islower() \
                and 4 <= len(login) <= 20 and _classes(text[vm.start():vm.end()]) >= 4
            if not (any(c in login for c in "._@-") or any(c.isdigit() for c in login)
                    or login.lower() in _COMMON_LOGINS or named or plain_pair) \
                    or login[-1] in ".-":
                continue
            if (login.isdigit() or sep.strip() in ("et", "and", "–", "-", ";", "puis", "then")) \
                    and not named and not (sep.strip() in ("puis", "then")
                                           and login.lower() in _COMMON_LOGINS):
                continue            # "12345, Abc123" or "x et Y7!": only after a login label
            if sep == ":" and (not any(c in login for c in "._@")
                               or ":" in text[vm.start():vm.end()]):
                continue            # ("host:5432:db:user:password" is a record)
            a, b = _trim_value(text, vm.start(), vm.end())
            a, b = _strip_quotes(text, a, b)
            value = text[a:b]
            if not (_looks_secret(value) or _at_password(value)) or (
                    sep in (":", "/") and _classes(value) < 3):
                continue
            if sep == "/" and not (named and _LOGIN_LINE_LABEL.search(
                    text, max(0, lm.start() - 100), lm.start())):
                continue            # "x/Y7-z" in one piece: only after "accès ... :"
            # "« admin / Pins2017box »": a common login, a spaced slash and a value of
            # three classes say what they are without a word about accounts around
            common_pair = sep.strip() == "/" and sep != "/" \
                and login.lower() in _COMMON_LOGINS and _classes(value) >= 3
            if not _PAIR_CONTEXT.search(text, max(0, lm.start() - 400), lm.start()) and not (
                    plain_pair and _PAIR_CONTEXT.search(text, b, min(len(text), b + 200))) \
                    and not common_pair:
                continue
            seen.add(j)
            out.append(Finding("password", a, b))
    return out


# Lines that are binary data in disguise: uuencode ("M" + 60 characters from " " to "`"),
# base64, or quoted-printable-looking runs with no space.
_UU_LINE = re.compile(r"M[ -`]{60}")
_B64_RUN = re.compile(r"[A-Za-z0-9+/=]{40,}")
_QP_RUN = re.compile(r"(?:[^\s=]{0,8}=[0-9A-F]{2}){6,}")


_INNER_SPACE = re.compile(r" (?!\n)")


def _binary_line(text: str, pos: int) -> bool:
    """Whether the line holding ``pos`` is encoded binary data, never prose."""
    near = text[max(0, pos - 20):pos + 20]
    if " " in near and _INNER_SPACE.search(near):
        return False                    # encoded lines have no spaces: the common case
                                        # (a space before a line end was a CRLF's "\r")
    lo = text.rfind("\n", max(0, pos - 200), pos) + 1
    if lo == 0 and pos > 200:
        return False
    hi = text.find("\n", pos, pos + 200)
    if hi < 0:
        hi = min(len(text), pos + 200)
    line = text[lo:hi].rstrip("\r ")
    if len(line) < 40 or " " in line.strip():
        return False
    return bool(_UU_LINE.fullmatch(line) or _B64_RUN.fullmatch(line)
                or _QP_RUN.match(line))


# "Authorization: Bearer X" anywhere (curl -H, nginx, a pasted request).
_BEARER = re.compile(r"[^\S\r\n]+([A-Za-z0-9._~+/\-]{16,2000}=*)")      # after "bearer"
# A ~/.pgpass line: host:port:database:user:password.
_PGPASS_LINE = re.compile(
    r"(?m)^[ \t]*[A-Za-z0-9*][\w.\-*]{0,100}:(?:\d{1,5}|\*):[^\s:]{1,100}:[^\s:]{1,100}:"
    r"(?P<v>\S{3,128})[ \t]*\r?$")
# mysqli_connect('host', 'user', 'password', 'db'), new PDO($dsn, 'user', 'password'): the
# third string argument (also in a PHP stack trace).
_CONNECT_CALL = re.compile(
    r"(?i)(?:mysqli?_(?:real_)?connect|new\s+mysqli|new\s+PDO|pg_pconnect|PDO->__construct|"
    r"mysqli->__construct|(?P<login>imap_open|ldap_bind|ftp_login|ssh2_auth_password))\s*\(")
# for these calls the password is the last string argument of (mailbox,) user, password
_LOGIN_CALL_ARG = {"imap_open": 2, "ldap_bind": 1, "ftp_login": 1, "ssh2_auth_password": 1}

# SQL: CREATE/ALTER USER ... IDENTIFIED [WITH plugin] BY 'x', SET PASSWORD ... =
# PASSWORD('x'), CREATE LOGIN ... WITH PASSWORD = 'x' (MySQL, MariaDB, Oracle, SQL Server;
# PostgreSQL's "PASSWORD 'x'" is read by the password label).
_SQL_CREDENTIAL = re.compile(r"""(?ix)
(?<![\w])(?:identified(?:[^\S\r\n]+with[^\S\r\n]+['"`]?\w{1,40}['"`]?)?[^\S\r\n]+by
           (?:[^\S\r\n]+password)?
         | password[^\S\r\n]*(?:=[^\S\r\n]*)?(?:password[^\S\r\n]*)?\(
         | with[^\S\r\n]+password[^\S\r\n]*=)
[^\S\r\n]*(?:'(?P<a>[^'\r\n]{1,128})'|"(?P<b>[^"\r\n]{1,128})"|(?P<c>[^\s'";)]{3,128}))
""")


def _sql_credentials(text: str) -> list[Finding]:
    out = []
    for m in _SQL_CREDENTIAL.finditer(text):
        g = m.lastgroup
        if g is None:
            continue
        value = m.group(g)
        if _is_placeholder(value) or value[0] in "$%:@?{<" or len(value) < 3 or (
                g == "c" and not (_strong(value)
                                  and m.group(0).lower().startswith("identified"))):
            continue                # "bad password (EAP-PEAP)": SQL quotes its strings
        out.append(Finding("password", m.start(g), m.end(g)))
    return out
_STRING_ARG = re.compile(r"'((?:[^'\\\n]|\\.){0,200})'|" + r'"((?:[^"\\\n]|\\.){0,200})"')
# Application passwords: WordPress "abcd EFGH 1234 ..." (six groups of four), Nextcloud
# "xxxxx-xxxxx-xxxxx-xxxxx-xxxxx"; mixed case and digits (product keys are upper-case).
_APP_PASSWORD = re.compile(
    r"(?<![\w\-])(?:[A-Za-z0-9]{4}(?: [A-Za-z0-9]{4}){5}|[A-Za-z0-9]{5}(?:-[A-Za-z0-9]{5}){4})"
    r"(?![\w\-])")
# Google's app passwords: four groups of four lower-case letters, on a line of their own
# after the words that name one ("Gmail made me create an app password, it gave me").
_GOOGLE_APP_PASSWORD = re.compile(r"(?m)^[ \t>]*(?P<v>[a-z]{4}(?: [a-z]{4}){3})[ \t]*\r?$")
_APP_PASSWORD_CUE = re.compile(r"(?i)app(?:lication)?[ _\-]?passwords?|mots? de passe "
                               r"(?:d['’]|pour )(?:une )?appli")
# A BitLocker recovery key: eight groups of six digits.
_BITLOCKER_KEY = re.compile(r"(?<![\w\-])\d{6}(?:-\d{6}){7}(?![\w\-])")


def _app_password(value: str) -> bool:
    groups = value.replace("-", " ").split()
    return (any(c.isupper() for c in value) and any(c.islower() for c in value)
            and sum(_mixed(g) for g in groups) >= len(groups) // 2)


def _connect_arguments(text: str, lower: str) -> list[Finding]:
    out = []
    calls = []
    last = -1
    for i, _ in _stem_positions(lower, ("connect", "pdo", "mysqli->", "imap_open", "ldap_bind",
                                         "ftp_login", "ssh2_auth")):
        if i < last:
            continue
        cm = _CONNECT_CALL.search(text, max(0, i - 16), min(len(text), i + 30))
        if cm is not None and cm.end() > last:
            calls.append(cm)
            last = cm.end()
    for m in calls:
        eol = text.find("\n", m.end(), m.end() + 400)
        args = list(_STRING_ARG.finditer(text, m.end(), eol if eol >= 0 else m.end() + 400))
        login = m.group("login")
        k = _LOGIN_CALL_ARG[login.lower()] if login else 2
        if len(args) <= k:
            continue
        if not text[m.end():args[k].start()].rstrip().endswith(","):
            continue                # "getenv('DB_PASSWORD')": not the call's own argument
        g = 1 if args[k].group(1) is not None else 2
        a, b = args[k].start(g), args[k].end(g)
        if _value_ok(text[a:b], clause_end=True, strict=False):
            out.append(Finding("password", a, b))
    return out


# --------------------------------------------------------------------------------------
# Provider tokens with no prefix of their own, named by the provider before them
# (``_named_provider_tokens``).  As gitleaks' rules for such providers do
# (config/gitleaks.toml, e.g. "mailchimp-api-key": the keyword "mailchimp", a few
# characters, then 32 hex digits, "-us" and two digits), the provider's name opens a
# short reach (its paragraph, at most _NAMED_REACH characters on) in which a value of
# that provider's documented shape is taken.  A shape that other things share (a UUID;
# a long generated run of letters and digits) needs besides a word that names a secret
# before it on its line, or ending the line above ("secret key", "client_secret",
# "jeton serveur", "privée"), with no word after that one saying it is an identifier or
# public ("client_id", "(ID …)", "publique").  The shapes, from the providers' documents:
#   Scaleway: access key "SCW" and 17 upper-case letters or digits; secret key a UUID.
#   Mailchimp: 32 hex digits, then the data centre: "-us" and one or two digits.
#   Postmark: server and account tokens are UUIDs (X-Postmark-Server-Token).
#   Bitwarden (and Vaultwarden): an API key's client_secret, 30 letters and digits (its
#     client_id, "user." or "organization." and a UUID, is an identifier).
#   Mollie: "live_" or "test_" and 30 letters and digits; OAuth "access_" and 40.
#   HelloAsso: an OAuth client_secret; Mailjet: a private (secret) key of 32 hex digits.
#   New Relic: a licence (ingest) key, region and "xx", 30 hex digits, then "NRAL".
#   Airtable: a personal access token, "pat" and 14 letters or digits, ".", 64 hex
#     digits (gitleaks' "airtable-personnal-access-token"; "pat" alone starts too many
#     words to be a prefix; a digit more or less, as a hand copy has it, is taken).
_PROVIDER_NAMES = (b"scaleway", b"scw", b"mailchimp", b"postmark", b"bitwarden",
                   b"vaultwarden", b"mollie", b"helloasso", b"mailjet", b"new_relic",
                   b"newrelic", b"new relic", b"airtable")
_PROVIDER_NAME_SET = frozenset(_PROVIDER_NAMES)
_PROVIDER_NAME = re.compile(r"(?i)(?<![^\W_])(?:scaleway|scw|mailchimp|postmark|bitwarden|"
                            r"vaultwarden|mollie|helloasso|mailjet|new[_ ]?relic|airtable)"
                            r"(?![^\W_])")
_PROVIDER_ALIAS = {"scw": "scaleway", "vaultwarden": "bitwarden", "new_relic": "newrelic",
                   "new relic": "newrelic"}
# What a value of a shape that needs no label holds, as written ("SCW", "-us", "NRAL"):
# a text that no gate word opens is read for those only (a Mollie key's "live_" opens it).
_PROVIDER_UNLABELLED = (b"SCW", b"-us", b"NRAL")
_NAMED_REACH = 300
_PARAGRAPH_END = re.compile(r"\n[ \t>]*\r?\n")
# A value is a whole token: after a space, a quote, a separator or a bracket, and before
# a space, a quote, a closing bracket or a sentence's end ("Vw7!hQ2z…" is one token).
_B = r"(?<![^\s\"'`:=,;(\[{<>])"
_E = r"(?=[\s\"'`,;)\]}<>]|[.:](?!\w)|\Z)"
_NAMED_UUID = re.compile(_B + _UUID.pattern + _E)
_NAMED_GENERATED = re.compile(_B + r"[A-Za-z0-9][A-Za-z0-9_\-+/]{15,199}={0,2}" + _E)
# Each provider's shapes: (pattern, whether a word naming a secret must come before it).
# Every provider also takes a generated value after such a word (_NAMED_GENERATED).
_PROVIDER_SHAPES: dict[str, tuple[tuple[re.Pattern[str], bool], ...]] = {
    "scaleway": ((re.compile(_B + r"SCW(?=[A-Z]*\d)[A-Z0-9]{17}" + _E), False),
                 (_NAMED_UUID, True)),
    "mailchimp": ((re.compile(_B + r"[0-9a-f]{32}-us\d{1,2}" + _E), False),),
    "postmark": ((_NAMED_UUID, True),),
    "bitwarden": (),
    "mollie": ((re.compile(_B + r"(?:live|test)_[A-Za-z0-9]{30,40}" + _E), False),
               (re.compile(_B + r"access_[A-Za-z0-9]{40}" + _E), False)),
    "helloasso": (),
    "mailjet": (),
    "newrelic": ((re.compile(_B + r"[a-z]{2}\d{2}xx[0-9a-f]{30}NRAL" + _E), False),),
    "airtable": ((re.compile(_B + r"pat[A-Za-z0-9]{13,15}\.[0-9a-f]{60,70}" + _E), False),),
}
# A shape of the provider's own (a suffix "-us21" or "NRAL", a prefix "live_") is judged
# as prefixed tokens are (_own_shape_alive); the others by their context, as every
# api-token is (_live), so that Scaleway's "SCW…" access key beside its secret key stays
# as the pair's identifier, as OVH's application key and S3's access key do
# (_identifier_half).
_OWN_SHAPE = re.compile(r"[0-9a-f]{32}-us\d{1,2}|(?:live|test)_[A-Za-z0-9]{30,40}|"
                        r"access_[A-Za-z0-9]{40}|[a-z]{2}\d{2}xx[0-9a-f]{30}NRAL|"
                        r"pat[A-Za-z0-9]{13,15}\.[0-9a-f]{60,70}")
_SECRET_WORD = re.compile(
    r"(?i)(?<![^\W_])(?:secrets?|secr[eè]te|tokens?|jetons?|priv[ée]e?|private|"
    r"api[\s_\-]?key|cl[ée]f?[\s_\-]+(?:d['’]\s?)?api)(?![^\W_])")
_NOT_SECRET_WORD = re.compile(
    r"(?i)(?<![^\W_])(?:ids?|identifiant|identifier|projet|project|organi[sz]ation|"
    r"public|publique|publishable|user|username|login|url|endpoint|licen[cs]e|"
    r"fingerprint|empreinte|hash|ssh|gpg|pgp|exemple|example)(?![^\W_])")


def _named_possible(hay: _Haystack) -> bool:
    """Whether a text that no gate word opens may hold a named provider token."""
    return any(w in hay.cased for w in _PROVIDER_UNLABELLED) and any(
        w in hay.folded for w in _PROVIDER_NAMES)


def _own_shape(text: str, f: Finding) -> bool:
    return _OWN_SHAPE.fullmatch(text, f.start, f.end) is not None


def _own_shape_alive(text: str, f: Finding) -> bool:
    """A token whose shape names its provider: no filler, no example, and not called
    shareable or crossed out by the words right after it (as _alive for prefixes)."""
    value = text[f.start:f.end]
    if _provider_filler(text, f) or _MASKED.search(value) or "EXAMPLE" in value:
        return False
    b = f.end
    return _AFTER_CUE.search(text, b, min(len(text), b + 60)) is None or not (
        _CROSSED_OUT.match(text, b) or _SHAREABLE_AFTER.match(text, b, min(len(text), b + 60)))


def _secret_named_before(text: str, a: int) -> bool:
    """Whether a word naming a secret stands before ``a`` on its line (within 80
    characters), with no identifier's or public word between it and ``a``; or, when the
    value opens its line, ends the line above ("…, privée" / "9d3e…": a wrapped line)."""
    ls = text.rfind("\n", max(0, a - 80), a) + 1
    if text[ls:a].strip(" \t>"):
        lo, hi = max(ls, a - 80), a
    elif ls > 0:
        hi = ls - 1
        lo = max(text.rfind("\n", max(0, hi - 80), hi) + 1, hi - 80)
    else:
        return False
    last = None
    for m in _SECRET_WORD.finditer(text, lo, hi):
        last = m
    if last is None or _NOT_SECRET_WORD.search(text, last.end(), hi) is not None:
        return False
    return hi == a or not text[last.end():hi].strip(" \t\r:=,")


def _named_provider_tokens(text: str) -> list[Finding]:
    """Values of a provider's shapes within reach after its name (see above)."""
    out: list[Finding] = []
    n = len(text)
    done: dict[str, int] = {}           # how far each provider's reach was read (linear)
    for nm in _PROVIDER_NAME.finditer(text):
        name = nm.group(0).lower()
        name = _PROVIDER_ALIAS.get(name, name)
        start = max(nm.end(), done.get(name, 0))
        limit = min(n, nm.end() + _NAMED_REACH)
        pm = _PARAGRAPH_END.search(text, nm.end(), limit)
        if pm is not None:
            limit = pm.start()
        if limit <= start:
            continue
        done[name] = limit
        for shape, labelled in _PROVIDER_SHAPES[name] + ((_NAMED_GENERATED, True),):
            for m in shape.finditer(text, start, limit):
                value = m.group(0)
                if labelled and not _secret_named_before(text, m.start()):
                    continue
                if shape is _NAMED_GENERATED and not _entropic(value, min_len=16):
                    continue
                if _MASKED.search(value) or _is_placeholder(value) or "EXAMPLE" in value:
                    continue
                out.append(Finding("api-token", m.start(), m.end()))
    return out


# The literal lists above as one search each: a regex alternation of literals (factored
# by first byte) costs less than a Python loop of ``bytes.find`` on texts of any size.
def _literals(words: Iterable[bytes]) -> re.Pattern[bytes]:
    return re.compile(_alternation(words))


# (with the words of the app-password and BitLocker detectors, which start from them)
_GENERIC_RE = _literals((*_GENERIC_WORDS, *(w.lower() for w in _CLI_WORDS), b"bitlocker",
                         b"recovery", b"cup\xc3\xa9ration", b"recuperation", b"appli",
                         b"app pass", b"app-pass", b"app_pass", *_PROVIDER_NAMES))
_CLI_LOWER = tuple(w.lower() for w in _CLI_WORDS)


# Which of the generic detectors' literals a text holds, found in one pass.  Each
# detector used to search its own list over the whole text (a dozen passes: on prose
# that mentions a password they cost more than the detectors themselves).  One search
# of all the literals, resumed one byte after each hit, visits every position where
# one starts; there the pattern (a trie, longer branches first) gives the longest, and
# the literals that are prefixes of it are present too.  So "present" below is exactly
# "``literal in folded``".  A command and a tool's name start a word (_CLI_COMMAND,
# _COMMAND_CREDENTIAL: a look-behind or \b), so those detectors ask for their words "at
# a word start": after a byte that is no ASCII letter, digit or "_", or at the start.
def _longest_first(words: Iterable[bytes]) -> bytes:
    """A regex alternation of literal words (a trie) that matches the longest one."""
    heads: dict[bytes, list[bytes]] = {}
    for w in sorted(set(words)):
        heads.setdefault(w[:1], []).append(w[1:])
    parts = []
    for head, tails in heads.items():
        longer = [t for t in tails if t]
        part = re.escape(head)
        if longer:
            part += b"(?:" + _longest_first(longer) + b")" + (b"?" if b"" in tails else b"")
        parts.append(part)
    return b"|".join(parts)


_GENERIC_SET = frozenset((*_GENERIC_WORDS, *_CLI_LOWER, b"bitlocker", b"recovery",
                          b"cup\xc3\xa9ration", b"recuperation", b"appli", b"app pass",
                          b"app-pass", b"app_pass"))
_CLI_SET = frozenset(_CLI_LOWER)
_COMMAND_SET = frozenset(_COMMAND_WORDS)
_PAIR_SET = frozenset(_PAIR_WORDS)
_PAIR_ONLY_SET = frozenset(_PAIR_ONLY)
_LIST_SET = frozenset(_LIST_WORDS)
_WEBHOOK_SET = frozenset((b"/hooks/", b"/api/", b"webhookb2/", b"/bot"))
_APP_SET = frozenset((b"appli", b"app pass", b"app-pass", b"app_pass"))
_RECOVERY_SET = frozenset((b"bitlocker", b"recovery", b"cup\xc3\xa9ration", b"recuperation"))
_SQL_WORDS = (b"identified", b"password", b"dentif", b"word")
_CONNECT_WORDS = frozenset((b"connect", b"pdo", b"__construct", b"imap_open", b"ldap_bind",
                            b"ftp_login", b"ssh2_auth"))
_COOKIE_WORDS = frozenset((b"cookie", b"sess", b"sid=", b"logged_in", b"remember", b"auth"))
_OTHER_LITERALS = (b":\\/\\/", b"%3a%2f%2f", b"bearer", b"pgpass", b"coo", b"value",

                   *_SQL_WORDS, *_CONNECT_WORDS, *_COOKIE_WORDS)
_ALL_LITERALS = frozenset().union(
    _GENERIC_SET, _CLI_SET, _COMMAND_SET, _PAIR_SET, _PAIR_ONLY_SET, _LIST_SET, _WEBHOOK_SET,
    _APP_SET, _RECOVERY_SET, _OTHER_LITERALS, _PROVIDER_NAME_SET)
_LITERAL_SEARCH = re.compile(_longest_first(_ALL_LITERALS))
_LITERAL_PREFIXES = {w: tuple(p for p in _ALL_LITERALS if w.startswith(p))
                     for w in _ALL_LITERALS}
_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")


# Words that _stem_positions looks for in a lower-cased text, each with a literal of
# _ALL_LITERALS that it holds (ASCII, no blank: the longest).  An ASCII run in
# ``text.lower()`` without blanks is one in the text's folded bytes, for a text without
# the two characters whose lower-case form holds an ASCII letter (U+0130 "İ", U+212A
# KELVIN SIGN), even after the scan blanked its CRs and quote marks (they become
# blanks): there, a literal that ``folded`` lacks says that the word is not there.
def _stem_need(stem: str) -> bytes | None:
    held = [w for w in _ALL_LITERALS if w.isascii() and b" " not in w and w.decode() in stem]
    return max(held, key=len) if held else None


_STEM_NEEDS: dict[str, bytes] = {
    stem: need for stem in (*_STEMS, *_CODE_WORDS, *_LIST_STEMS)
    if (need := _stem_need(stem)) is not None}
# the lockbox's stems hold no ASCII literal of their own: they need their whole UTF-8
# form (lower case; "BOÎTE À CLÉ" in capitals is not read as a lockbox)
_STEM_NEEDS.update({stem: stem.encode() for stem in _CODE_WORDS
                    if stem.startswith("bo") and stem.encode() in _ALL_LITERALS})


def _known_literals(cased: bytes, present: frozenset[bytes]) -> frozenset[bytes] | None:
    """``present`` (the literals of _ALL_LITERALS in the text's folded bytes) when it also
    tells which stems the lower-cased text lacks (see _STEM_NEEDS); None when the text
    holds U+0130 or U+212A (UTF-8 C4 B0, E2 84 AA: one memchr each first)."""
    if (b"\xc4" in cased and b"\xc4\xb0" in cased) or (
            b"\x84" in cased and b"\xe2\x84\xaa" in cased):
        return None
    return present


def _literals_in(folded: bytes) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The literals of _ALL_LITERALS that ``folded`` holds, and those of them that it
    holds at a word start (see above)."""
    found: set[bytes] = set()
    starts: set[bytes] = set()
    search = _LITERAL_SEARCH.search
    prefixes = _LITERAL_PREFIXES
    word = _WORD_BYTES
    m = search(folded)
    while m is not None:
        i = m.start()
        these = prefixes[m.group()]
        found.update(these)
        if i == 0 or folded[i - 1] not in word:
            starts.update(these)
        m = search(folded, i + 1)
    return frozenset(found), frozenset(starts)


# Session cookies: the value of a cookie whose name says it is a session or a login
# (PHPSESSID, JSESSIONID, laravel_session, wordpress_logged_in_*, remember_web_*), and in
# a "Cookie:"/"Set-Cookie:" header line any generated-looking value (Nextcloud names its
# session cookie after the instance id: "oc1a2b3c4d=...").
_SESSION_COOKIE = re.compile(r"""(?ix)
(?<![\w.\-])(?P<name>[a-z0-9_.\-]{0,40}(?:sess(?:ion)?(?:[_\-]?id)?|sid|logged_in[a-z0-9_]{0,40}|
   remember[a-z0-9_\-]{0,60}|auth[_\-]?token|wordpress_sec[a-z0-9_]{0,40}))
=(?P<v>[^\s;,"'<>]{16,800})""")
_COOKIE_HEADER = re.compile(r"(?im)^[ \t>]*(?:set-)?cookie[ \t]*:[ \t]*(?P<line>[^\r\n]{1,4000})")
_COOKIE_PAIR = re.compile(r"(?:^|;)[ \t]*(?P<name>[^=;\s]{1,80})=(?P<v>[^;\s]{1,800})")
_COOKIE_NOT_SECRET = re.compile(r"(?i)lang|locale|theme|consent|sametime|samesite|_ga|_gid|"
                                r"utm|tz|timezone|username|user_?name|login_?name|email|"
                                r"account_?sid")     # Twilio's account identifier


def _cookies(text: str, folded: bytes, present: frozenset[bytes]) -> list[Finding]:
    out = []
    # each search only where it can match: a "=" after the name; "coo" of "cookie"
    # (its "k" and "i" have other case forms under re.I: "K", "ı")
    for m in _SESSION_COOKIE.finditer(text) if b"=" in folded else ():
        value = m.group("v")
        if _COOKIE_NOT_SECRET.search(m.group("name")):
            continue
        if len(value) >= 16 and _classes(value) >= 2 and not _is_placeholder(value) \
                and not _DECOY_SHAPE.fullmatch(value) and any(c.isdigit() for c in value):
            out.append(Finding("api-token", m.start("v"), m.end("v")))
    for hm in _COOKIE_HEADER.finditer(text) if b"coo" in present else ():
        base = hm.start("line")
        for cm in _COOKIE_PAIR.finditer(hm.group("line")):
            if _COOKIE_NOT_SECRET.search(cm.group("name")):
                continue
            value = cm.group("v")
            if _entropic(value, min_len=20) and value.isascii() and (
                    sum(c.isalpha() for c in value) * 3 >= len(value)):
                out.append(Finding("api-token", base + cm.start("v"), base + cm.end("v")))
    return out


# Name/value pairs: {"key": "token", "value": "X"} (Postman, Insomnia), Kubernetes
# "- name: DB_PASSWORD\n  value: X", AWS "Name=...,Value=...": the value is the secret
# when the name names one.
_NAME_VALUE = re.compile(r"""(?ix)
(?<![\w\-])["']?(?:key|name)["']?[^\S\r\n]*[:=][^\S\r\n]*["']?(?P<name>[A-Za-z_][\w.\-]{1,60})["']?
[^\S\r\n]*,?[^\S\r\n]*(?:\r?\n[ \t\-]{0,40})?
["']?value["']?[^\S\r\n]*[:=][^\S\r\n]*(?:"(?P<a>[^"\r\n]{1,400})"|'(?P<b>[^'\r\n]{1,400})'|
(?P<c>[^\s"',}]{1,400}))""")


# The same pairs in XML: KeePass's export ("<Key>Password</Key><Value
# ProtectInMemory="True">X</Value>"), Apple's property lists ("<key>Password</key>
# <string>X</string>"), .NET's appSettings ('<add key="SmtpPassword" value="X" />').
_XML_NAME_VALUE = re.compile(r"""(?x)
<(?P<t>[Kk]ey|KEY|[Nn]ame|NAME)>[^\S\r\n]*(?P<name>[A-Za-z_][\w.\-]{1,60})[^\S\r\n]*</(?P=t)>
[^\S\r\n]{0,8}(?:\r?\n[ \t]{0,40})?
<(?P<vt>[Vv]alue|VALUE|string)(?:[^\S\r\n][^<>\r\n]{0,200})?>(?P<a>[^<>\r\n]{1,400})</(?P=vt)>
| <add[^\S\r\n]+key="(?P<name2>[A-Za-z_][\w.\-]{1,60})"[^\S\r\n]+value="(?P<b>[^"\r\n]{1,400})"
""")


def _xml_name_values(text: str) -> list[Finding]:
    # (only names that hold a secret's stem: "Title", "Notes", "URL" are no secret's)
    return _name_values(text, _XML_NAME_VALUE, stem=True)


def _name_values(text: str, pattern: re.Pattern[str] = _NAME_VALUE, *,
                 stem: bool = False) -> list[Finding]:
    out = []
    for m in pattern.finditer(text):
        g = m.lastgroup
        if g is None:
            continue
        raw_name = m.group("name2") if stem and g == "b" else m.group("name")
        if not _secret_name(raw_name) or (stem and _SECRET_STEM.search(raw_name) is None):
            continue
        name = raw_name.lower()
        value = m.group(g)
        if value.startswith(("{{", "${", "$(", "<")) or _is_placeholder(value):
            continue
        pw = any(w in name for w in ("pass", "pwd", "psk"))
        if _entropic(value, min_len=8 if pw else 12) or (pw and _strong(value)):
            out.append(Finding("password" if pw else "api-token", m.start(g), m.end(g)))
    return out


# Base64 of JSON holding credentials (a Kubernetes .dockerconfigjson, a registry auth):
# "eyJ" is '{"' encoded; a JWT has dots and is found elsewhere.
_B64_JSON = re.compile(r"(?<![A-Za-z0-9+/=_\-.])eyJ[A-Za-z0-9+/]{16,8000}={0,2}"
                       r"(?![A-Za-z0-9+/=_\-.])")
_B64_JSON_KEYS = re.compile(r'"(?:auths?|password|passwd|secret|token|identitytoken|'
                            r'client_secret|private_key)"\s*:')


# The signature of a pre-signed link (S3's, Google Cloud Storage's): whoever holds the
# link holds the object until it expires.  Its other parameters (algorithm, date,
# expiry, the key id in X-Amz-Credential) stay.
_SIGNED_QUERY = re.compile(r"[?&](?:X-Amz-Signature|X-Goog-Signature|Signature)="
                           r"(?P<v>[A-Za-z0-9%+/_\-]{16,1024}={0,2})")


def _encoded_credentials(text: str) -> list[Finding]:
    out = []
    for m in _B64_JSON.finditer(text):
        blob = m.group(0)
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        if _B64_JSON_KEYS.search(decoded):
            out.append(Finding("api-token", m.start(), m.end()))
    return out


# An SMTP or IMAP session's transcript (a log pasted to show a failed login): "AUTH PLAIN
# <base64>" carries the login and the password, NUL-separated (RFC 4616), and after the
# server's "334 UGFzc3dvcmQ6" ("Password:" in base64) of AUTH LOGIN the client's next line
# is the password in base64.  Anyone decodes either; the encoded whole is the secret.
_SASL_PLAIN = re.compile(r"(?i)(?<![^\W_])AUTH(?:ENTICATE)?[ \t]+PLAIN[ \t]+"
                         r"(?P<v>[A-Za-z0-9+/]{8,400}={0,2})(?![A-Za-z0-9+/=])")
_SASL_LOGIN_PASSWORD = re.compile(r"334[ \t]+UGFzc3dvcmQ6[ \t]*\r?\n[^\S\r\n]*"
                                  r"(?:[>C]:?[ \t]*)?"
                                  r"(?P<v>[A-Za-z0-9+/]{4,400}={0,2})[ \t]*(?:\r?\n|\Z)")


def _sasl_transcripts(text: str, folded: bytes) -> list[Finding]:
    out = []
    if b"plain" in folded:
        for m in _SASL_PLAIN.finditer(text):
            blob = m.group("v")
            try:
                decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
            except ValueError:
                continue
            if decoded.count(b"\x00") == 2 and not decoded.endswith(b"\x00"):
                out.append(Finding("password", *m.span("v")))
    if b"ugfzc3dvcmq6" in folded:
        out.extend(Finding("password", *m.span("v"))
                   for m in _SASL_LOGIN_PASSWORD.finditer(text))
    return out


# The Wi-Fi QR code's text (ZXing's format, which phones and routers print):
# "WIFI:S:<ssid>;T:WPA;P:<password>;;", fields in any order, "\" escaping ";,:\".
_WIFI_QR = re.compile(r"(?i)WIFI:(?:[^;\r\n]{0,100};){0,6}?P:(?P<v>(?:\\.|[^;\\\r\n]){1,64});")


# A line of Postfix's SASL password map (smtp_sasl_password_maps: "sasl_passwd"): the
# relay ("[smtp.example.net]:587", "smtp.example.net", or a sender's "@domain") then
# "user:password", alone on its line.  The user stays (as a URL's).  A relay without
# brackets only where the text names the map ("sasl").
_SASL_MAP_LINE = re.compile(
    r"(?m)^[ \t>]*(?:\[[\w.\-:]*\.[\w.\-:]*\](?::\d{1,5})?|"
    r"[a-z0-9][\w\-]*(?:\.[\w\-]+)+(?::\d{1,5})?|@[\w\-]+(?:\.[\w\-]+)+)"
    r"[ \t]+[^\s:\[\]]{1,64}:(?P<v>\S{1,128}?)[ \t]*$")


def _sasl_map_lines(text: str) -> list[Finding]:
    out: list[Finding] = []
    named = "sasl" in text.lower()
    for m in _SASL_MAP_LINE.finditer(text):
        value = m.group("v")
        if (named or "[" in m.group(0)) and not _is_placeholder(value) \
                and not value.startswith("/"):
            out.append(Finding("password", m.start("v"), m.end("v")))
    return out


def _wifi_qr(text: str) -> list[Finding]:
    return [Finding("password", m.start("v"), m.end("v")) for m in _WIFI_QR.finditer(text)
            if not _is_placeholder(m.group("v"))]


def _generic_triggered(hay: _Haystack) -> bool:
    """Whether any generic detector may find something (literal searches only)."""
    if hay._literals is not None:
        return not hay._literals[0].isdisjoint(_GENERIC_SET | _PROVIDER_NAME_SET) \
            or hay.provider()
    # one search that stops at the first hit: cheaper when that is all one asks
    return bool(_GENERIC_RE.search(hay.folded)) or hay.provider()


def _generic_findings(hay: _Haystack, text: str) -> list[Finding]:
    """The detectors that do not depend on one provider or one phrasing."""
    found: list[Finding] = []
    cased, folded = hay.cased, hay.folded
    present, at_start = hay.literals()
    lower = hay.lower(text)
    if len(lower) != len(text):
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    known = _known_literals(cased, present)
    if hay.provider():
        found.extend(Finding("api-token", m.start(), m.end())
                     for m in _PROVIDER_TOKEN.finditer(text)
                     # "live_" alone is a prefix of many words: the rest must be generated
                     if not m.group(0).startswith("live_") or _classes(m.group(0)[5:]) >= 3)
    if not present.isdisjoint(_WEBHOOK_SET):
        found.extend(Finding("api-token", m.start(g), m.end(g))
                     for m in _WEBHOOK_PATH.finditer(text) if (g := m.lastgroup))
    found.extend(_named_assignments(text, lower, known))
    if not at_start.isdisjoint(_COMMAND_SET):
        found.extend(_command_credentials(text, folded))
    if not at_start.isdisjoint(_CLI_SET):
        found.extend(_cli_passwords(text))
    if b":\\/\\/" in present or b"%3a%2f%2f" in present:
        found.extend(_escaped_url_credentials(text))
    found.extend(_access_codes(text, lower, known))
    if b"code" in present and b"rification" in folded:
        found.extend(_verification_codes(text))
    if b"bearer" in present:
        for i, _ in _stem_positions(lower, ("bearer",)):
            bm = _BEARER.match(text, i + 6)
            if bm is not None and (i == 0 or not lower[i - 1].isalnum()) \
                    and _entropic(bm.group(1), min_len=16):
                found.append(Finding("api-token", bm.start(1), bm.end(1)))
    if b"pgpass" in present:
        found.extend(Finding("password", m.start("v"), m.end("v"))
                     for m in _PGPASS_LINE.finditer(text)
                     if not _is_placeholder(m.group("v")))
    if (b"identified" in present or b"password" in present) and (
            # what _SQL_CREDENTIAL needs whatever its case folding ("ı" is an "i"
            # there): "identified ... by", or "password" then "(" or "="
            b"dentif" in present or (b"word" in present and (b"(" in folded or b"=" in folded))):
        found.extend(_sql_credentials(text))
    if not present.isdisjoint(_CONNECT_WORDS):
        found.extend(_connect_arguments(text, lower))
    if not present.isdisjoint(_APP_SET):
        found.extend(Finding("api-token", m.start(), m.end())
                     for m in _APP_PASSWORD.finditer(text) if _app_password(m.group(0)))
        found.extend(Finding("password", m.start("v"), m.end("v"))
                     for m in _GOOGLE_APP_PASSWORD.finditer(text)
                     if _APP_PASSWORD_CUE.search(text, max(0, m.start() - 300), m.start()))
    if not present.isdisjoint(_RECOVERY_SET) and folded.count(b"-") >= 7:
        found.extend(Finding("password", m.start(), m.end())
                     for m in _BITLOCKER_KEY.finditer(text))
    if not present.isdisjoint(_LIST_SET):
        found.extend(_listed_values(text, lower, known))
    if not present.isdisjoint(_COOKIE_WORDS):
        found.extend(_cookies(text, folded, present))
    if b"value" in present:
        found.extend(_name_values(text))
    if b"</key>" in folded or b"</name>" in folded or b"<add " in folded:
        found.extend(_xml_name_values(text))
    if b"eyJ" in cased:
        found.extend(_encoded_credentials(text))
    if b"signature=" in folded:
        found.extend(Finding("api-token", m.start("v"), m.end("v"))
                     for m in _SIGNED_QUERY.finditer(text))
    if not present.isdisjoint(_PAIR_SET):
        found.extend(_login_pairs(text))
    return found


# --------------------------------------------------------------------------------------
# Precision by shape, after every detector (``_by_shape``): a value whose own shape, or
# the cell or line it sits in, says it is no secret, whatever detector took it.  Each
# rule reads the value and at most its line and the line above.

# A reference numbered within a year, its number zero-padded ("2026-0193", "2025/00417":
# a member's or an invoice's number), or a structure's code of capitals between two
# numbers ("89-CCAS-0412": a department, an organisation, a sequence): a filing system's
# shape, never a password's or a door code's.  (The year comes first and the number is
# padded: "7842-1936" is a recovery code, "1984-2468" may be a door's.)
_REFERENCE = re.compile(rf"""(?x)
  {_YEAR.pattern}[-/]0\d{{2,5}}                       # 2026-0193
| \d{{2,5}}-[A-Z]{{3,8}}-\d{{3,6}}                    # 89-CCAS-0412
""")

# A placeholder or a "none" word, bare or in Markdown emphasis, quotes or brackets
# ("*aucun*", "_none_", "(néant)", "`n/a`"): a table cell or a form's answer saying that
# there is no password.
_EMPHASIS = "*_~`\"'()[]«» \t"
_NONE_WORDS = _words("""
aucun aucune none néant neant nil null vide empty n/a na rien nothing sans - – —
""")

# A public key's line ("ssh-ed25519 AAAAC3Nz… backup-job", an authorized_keys entry):
# public by design, never a secret, nor any piece of it.
_PUBLIC_KEY_LINE = re.compile(
    r"(?<![\w\-])(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)|"
    r"sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)[ \t]+AAAA[A-Za-z0-9+/]{16,16000}"
    r"={0,3}(?:[ \t]+[^\s]{1,200}(?=[ \t]*\r?$))?", re.M)

# The user name before a spaced slash ("admin / Mk7-qsZ2-rtP9"), taken with the password
# by a detector that reads several words: the finding keeps what follows the slash when
# what precedes it is one word shaped as a login (letters, maybe digits and "._-@"; at
# most two classes of characters: "1234 / 5678" are two codes, "Kx7!a / …" a password).
_SPACED_SLASH = re.compile(r"[^\S\r\n]+/(?:[^\S\r\n]*\n[ \t]*(?=\S)|[^\S\r\n]+)")   # (or a wrap)
_LOGIN_SHAPE = re.compile(r"[^\W\d_][\w.@\-]{0,63}")

# A value that a label on its line names as an identity ("Nic-handle : mp48213-ovh",
# "User ID = …", "Identifiant : …"): a handle, a login or an id says whom, not how.
_IDENTITY_LABEL = re.compile(
    r"(?i)(?<![^\W_])(?:nic[\s_\-]?handle|handle|login|username|user[\s_\-]?id|"
    r"identifiant|utilisateur)[^\S\n]{0,3}[:=][^\S\n]{0,3}\Z")
# ... unless that word only says whose the password named before it on the line is
# ("Mot de passe utilisateur : X", "mdp login : X"), with no other field between them
_PASSWORD_OF = re.compile(
    r"(?i)(?<![^\W_])(?:mot[^\S\n]+de[^\S\n]+passe|mdp|password|passwd|pwd)"
    r"[^\S\n]+(?:(?:du|de|of|the|for|d['’]un|de[^\S\n]+l['’])[^\S\n]*){0,2}\Z")

# ... and a line that an account's label opens ("Compte : mx41127-ovh", "- Account:
# ops-team"): the account's name or number.  (At the line's start only: "le mot de
# passe du compte : X" names a password; nor a provider's token, "Account: glsa_...".)
_ACCOUNT_LABEL = re.compile(
    r"(?im)^[^\S\n]*(?:[-*•>][^\S\n]*)?(?:compte|account)[^\S\n]{0,3}[:=][^\S\n]{0,3}\Z")

# A line's label whose head is an identity or a number, then what it belongs to
# ("Identifiant de la clé chez le partenaire :", "Numéro de série du NAS :", "ID du
# projet :", "Nom de l'appareil :"): French puts the head first, and the head says the
# value is an identifier, whatever secret's word its complement names ("de la clé").
# Not a pair ("Identifiant et mot de passe :", "Nom d'utilisateur / mdp :") nor a label
# that names a password besides.
_IDENTITY_HEAD = re.compile(
    r"(?im)^[^\S\n]*(?:[-*•>][^\S\n]*)?(?:identifiant|id|num[ée]ro|n°|r[ée]f[ée]rence|nom)"
    r"[^\S\n]+(?:(?:de|du|des)(?![^\W_])|d['’])[^:=\n]{0,60}?[^\S\n]*[:=][^\S\n]{0,3}\Z")
_IDENTITY_HEAD_NOT = re.compile(
    r"(?i)(?<![^\W_])(?:et|ou|and|or|passe|mdp|password|pwd|pin|secret|secrète|secrete)"
    r"(?![^\W_])|[/&+]")


_LABEL_END = re.compile(r"[:=][^\S\n]{0,3}\Z")


def _identity_head(text: str, a: int, ls: int) -> bool:
    m = _IDENTITY_HEAD.search(text, ls, a)
    return m is not None and _IDENTITY_HEAD_NOT.search(text, m.start(), m.end()) is None


# The user option of a command ("curl -u USER:SECRET", "--user"), whose value is a
# user:secret pair: when a secret is taken after the colon, what stands before it is the
# pair's identifier (Twilio's key SID, Mailjet's API key), whatever its shape.  (A
# token alone, "-u sk_live_...:" with nothing after the colon, is the secret.)
_USER_OPTION = re.compile(r"(?<![^\s\\])(?:-u|--user)(?:[^\S\n]+|=)[\"']?\Z")

# A link with no credential in it, made of words ("https://stats.example.com/share/dash"
# in a table's password column, for a service one reaches by a link): where something
# is, not a secret.  A link that carries a token (a webhook's, a share's: a run of mixed
# case, or of letters and digits, or a long number) is not plain.
_LINK_RUN = re.compile(r"[A-Za-z0-9]+")


def _plain_link(value: str) -> bool:
    if "@" in value or any(c.isspace() for c in value):
        return False
    for run in _LINK_RUN.findall(value, value.find("//") + 2):
        if run.isdigit():
            if len(run) > 6:
                return False
        elif not run.isalpha() or not (run.islower() or run.istitle()
                                       or (run.isupper() and len(run) <= 5)):
            return False
    return True


# An API token's id before its secret: "backup@pve!nightly=" (user@realm!tokenid=).
_TOKEN_ID = re.compile(r"(?:PVEAPIToken[= ])?[\w.\-]{1,64}@[\w.\-]{1,64}![\w.\-]{1,64}=")


def _by_shape(text: str, found: list[Finding]) -> list[Finding]:
    """``found`` without the values whose shape says they are no secret, and with a
    password taken together with its user name cut down to the password."""
    if not found:
        return found
    keys = [m.span() for m in _PUBLIC_KEY_LINE.finditer(text)] if "AAAA" in text else []
    key_starts = [a for a, _ in keys]
    starts = {f.start for f in found}
    out: list[Finding] = []
    for f in found:
        if f.kind == "private-key":
            out.append(f)
            continue
        if f.end + 1 in starts and text.startswith(":", f.end) \
                and _USER_OPTION.search(text, max(0, f.start - 12), f.start):
            continue                    # "-u SKxxxx:secret": the user half of the pair
        k = bisect.bisect_right(key_starts, f.start) - 1
        if k >= 0 and f.end <= keys[k][1]:
            continue                    # inside a public key's line
        if f.kind not in ("password", "api-token"):
            out.append(f)
            continue
        value = text[f.start:f.end]
        inner = value.strip(_EMPHASIS).lower()
        if value.startswith(("http://", "https://")) and _plain_link(value):
            continue
        if _REFERENCE.fullmatch(value) or inner in _NONE_WORDS or (
                inner != value.lower() and (inner in _STOP_VALUES or _is_placeholder(inner))):
            continue
        tm = _TOKEN_ID.match(value) if "!" in value else None
        if tm is not None:
            # "user@realm!tokenid=<secret>" (Proxmox's API tokens): the id stays; an id
            # with no secret after it ("PVEAPIToken=user@pve!id=<secret>", a placeholder
            # that ended the value) is all id
            if tm.end() == len(value):
                continue
            f = Finding(f.kind, f.start + tm.end(), f.end)
            value = value[tm.end():]
        sm = _SPACED_SLASH.search(value) if f.kind == "password" else None
        if sm is not None and _LOGIN_SHAPE.fullmatch(value, 0, sm.start()) \
                and _classes(value[:sm.start()]) <= 2 and sm.end() < len(value):
            f = Finding(f.kind, f.start + sm.end(), f.end)
        ls = text.rfind("\n", max(0, f.start - 40), f.start) + 1
        im = _IDENTITY_LABEL.search(text, max(ls, f.start - 40), f.start)
        if (im is not None and not (f.kind == "password" and _PASSWORD_OF.search(
                text, max(ls, im.start() - 40), im.start()))) or (
                f.kind == "password" and _ACCOUNT_LABEL.search(text, ls, f.start)) or (
                _LABEL_END.search(text, max(0, f.start - 4), f.start) and _identity_head(
                    text, f.start, max(ls, f.start - 90))):
            continue
        out.append(f)
    return out
