"""The secret scanner's literal pre-filters say exactly what the searches they replace said.

The scanner decides which detectors run from literal searches on the text's bytes
(secrets.py: ``_provider_triggered``, ``_literals_in``).  They were rewritten for speed
(one pass instead of a dozen; a rare byte first); the findings must not change, so each
is checked here against the plain definition (``literal in text``) on texts built to
hold the literals, pieces of them and near misses.  ``scripts/secrets-findings.py``
checks the findings themselves over the labelled sets, the corpora and the bench mix.
"""

from __future__ import annotations

import random
import re

from helpdesk_milter import secrets as s

# What _provider_triggered replaced: one alternation of gitleaks' prefixes (the literals
# every provider token holds).
OLD_PROVIDER_TRIGGER = re.compile(b"|".join(
    (rb"(?<![A-Za-z0-9_.\-])" if w in s._PROVIDER_WORD_START else b"") + re.escape(w)
    for w in s._PROVIDER_LITERALS))

WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")


def texts(literals: list[bytes], alphabet: bytes, n: int, seed: int) -> list[bytes]:
    """Random texts around the literals: whole, cut, with one byte changed, glued."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 4)):
            parts.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 5))))
            w = rng.choice(literals)
            r = rng.random()
            if r < 0.3:
                i = rng.randrange(len(w))
                w = w[:i] + bytes([rng.choice(alphabet)]) + w[i + 1:]
            elif r < 0.45:
                w = w[rng.randrange(len(w)):]
            elif r < 0.6:
                w = w + rng.choice(literals)
            parts.append(w)
        out.append(b"".join(parts))
    return out


def test_provider_trigger_is_the_old_alternation() -> None:
    alphabet = b"abcdefghijklmnopqrstuvwxyzSKAEPMJCGTHRUNIxy_.-:~0 13\n"
    cases = texts(list(s._PROVIDER_LITERALS), alphabet, 20000, seed=1)
    cases += [b"", b"SK", b"xSKx", b"eyJrIjoi", b"_v1_", b"dt0c01", b"sq0", b"hvs.", b"x:AA",
              b"lin_api_", b"xlive_", b"live_", b" ck_", b"stack_", b"sha256~", b"tk-us-",
              b"NRAK-", b"ATATT3", b"Mexico-", b"ico-"]
    for text in cases:
        assert s._provider_triggered(text) == (OLD_PROVIDER_TRIGGER.search(text) is not None), \
            text


def test_literal_pass_is_plain_membership() -> None:
    literals = sorted(s._ALL_LITERALS)
    alphabet = b"abcdefgiklmnoprstuwy_-/:%\\=. \t\n\xc3\xa8\xa9"
    cases = texts(literals, alphabet, 6000, seed=2)
    cases += [b"", b"sshpasswords", b"mysqldump", b"-u", b"x-u", b"\xc3\xa9mysql -p"]
    for text in cases:
        present, at_start = s._literals_in(text)
        assert present == {w for w in literals if w in text}, text
        expected_starts = {w for w in literals
                           if any(i == 0 or text[i - 1] not in WORD
                                  for i in _positions(text, w))}
        assert at_start == expected_starts, text


def _positions(text: bytes, word: bytes) -> list[int]:
    out, i = [], text.find(word)
    while i >= 0:
        out.append(i)
        i = text.find(word, i + 1)
    return out


def test_every_detector_literal_is_in_the_pass() -> None:
    for group in (s._GENERIC_SET, s._CLI_SET, s._COMMAND_SET, s._PAIR_SET, s._PAIR_ONLY_SET,
                  s._LIST_SET, s._WEBHOOK_SET, s._APP_SET, s._RECOVERY_SET,
                  s._CONNECT_WORDS, s._COOKIE_WORDS, frozenset(s._SQL_WORDS)):
        assert group <= s._ALL_LITERALS


def test_stem_positions_skip_only_absent_stems() -> None:
    """_stem_positions passes over a stem whose literal the text's bytes lack
    (_known_literals); it finds what the plain search finds, in the lower-cased text as
    the scan reads it (CRs and quote marks blanked), whatever characters it holds."""
    stems = sorted({*s._STEMS, *s._CODE_WORDS, *s._LIST_STEMS})
    words = [w.encode() for w in stems] + [
        b"KEY", b"\xe2\x84\xaaey", b"\xe2\x84\xaaEYS", b"P\xc4\xb0N", b"acc\xc3\xa8s",
        b"ACC\xc3\x88S", b"cl\xc3\xa9", b"CL\xc3\x89", b"key\rbox", b"mots\r\nde passe"]
    alphabet = b"abcdeiklmnoprstuyPKS \t\r\n>:=-_"
    cases = texts(words, alphabet, 6000, seed=3)
    cases += [b"", b"\xe2\x84\xaaey", b"\xe2\x84\xa2 key", b"\xc4\x85 pin", b"P\xc4\xb0N code",
              b"key\r\nbox", b"x\n> key box"]
    for raw in cases:
        text = raw.decode("utf-8", "replace")
        hay = s._Haystack(text)
        read = text.replace("\r", " ") if "\r\n" in text else text
        if "\n>" in read:
            read = s._unquoted(read)
        lower = read.lower()
        if len(lower) != len(read):
            lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in read)
        known = s._known_literals(hay.cased, hay.literals()[0])
        for group in (s._STEMS, s._CODE_WORDS, s._LIST_STEMS):
            assert s._stem_positions(lower, group, known) == s._stem_positions(lower, group), \
                (raw, group)
