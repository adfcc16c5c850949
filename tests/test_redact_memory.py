"""Large text parts: the windowed scan finds exactly what a whole-text scan finds, the
rewritten parts are what redacting the whole text gives, and memory stays bounded.

``redact._scan_text`` scans a long text in overlapping windows (redact.py, "Long
texts").  Here the windows and the overlap are made small, the overlap still longer
than anything the placed secrets need read (the shipped overlap covers the longest
table the scanner reads), so that many secrets straddle a window boundary in a text of
a hundred KB.  ``tests/bench/memory.py`` measures every message shape; the bound below keeps one
from regressing.
"""

from __future__ import annotations

import base64
import binascii
import gc
import random
import tomllib
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpdesk_milter import redact
from helpdesk_milter.message import ParsedMessage
from helpdesk_milter.redact import Redaction, redact_message
from helpdesk_milter.secrets import DEFAULT_MARKER, Finding, SecretScanner, redact_spans

SNIPPETS = [s["text"].strip("\n") for s in tomllib.loads(
    (Path(__file__).parent / "secrets_corpus" / "snippets.toml").read_text("utf-8"))["snippet"]]
SCANNER = SecretScanner()
CORE = 16 * 1024          # small windows for the tests ...
OVERLAP = 24 * 1024       # ... and an overlap longer than the snippets below reach

# Secrets whose detection reads far: a table whose rows run across a boundary, a key
# block, HTML table source in a text part, a lower-casing that changes the length.
_ROWS = "".join(f"Mairie {i}\tcompta{i}\tXk7#pQ{i:03d}vL\n" for i in range(120))
LONG_REACH = [
    "Voici les accès :\n\nNom\tIdentifiant\tMot de passe\n" + _ROWS,
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "".join(base64.b64encode(random.Random(i).randbytes(48)).decode() + "\n"
              for i in range(80))
    + "-----END RSA PRIVATE KEY-----\n",
    "<table><tr><td>login</td><td>mot de passe</td></tr>\n"
    "<tr><td>jdupont</td><td>Soleil2024!</td></tr></table>\n",
    "Le mot de passe : <b>Soleil</b>2024! (tableau plus bas)\n",
    # (not AWS's documented EXAMPLEKEY: the scanner knows it for a placeholder)
    "İSTANBUL ofisi: secret_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Hd3Lw2Tk\n",
]


def _filler(rng: random.Random, size: int, *, accent: bool) -> list[str]:
    lines = []
    total = 0
    while total < size:
        line = (f"2024-05-{rng.randint(1, 28):02d} INFO [worker-{rng.randint(1, 8)}] GET "
                f"/login?id={rng.randint(1, 99999)} 200 user=compta session="
                f"{rng.getrandbits(40):010x}{' réponse lente' if accent else ''}\n")
        if rng.random() < 0.05:
            line = "Le code d'accès du portail a été changé, voir le ticket #" \
                   f"{rng.randint(1000, 9999)}.\n"
        lines.append(line)
        total += len(line)
    return lines


def _long_text(rng: random.Random, placed: list[tuple[str, int]], *, size: int,
               accent: bool) -> str:
    """Filler of about ``size`` characters with each (snippet, offset) put so that it
    starts ``offset`` characters before a nominal window boundary."""
    lines = _filler(rng, size, accent=accent)
    text = "".join(lines)
    core = CORE if text.isascii() else CORE // 3    # as redact._core
    inserts = []
    for k, (snippet, offset) in enumerate(placed):
        boundary = core * (k % max(1, size // core - 1) + 1)
        pos = text.rfind("\n", 0, max(0, boundary - offset)) + 1
        inserts.append((pos, snippet + "\n"))
    out, last = [], 0
    for pos, snippet in sorted(inserts, key=lambda p: p[0]):
        out.append(text[last:pos])
        out.append(snippet)
        last = pos
    out.append(text[last:])
    return "".join(out)


def _spans(findings: list[Finding]) -> list[tuple[int, int, str]]:
    return [(f.start, f.end, f.kind) for f in findings]


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "_SCAN_CORE", CORE)
    monkeypatch.setattr(redact, "_SCAN_OVERLAP", OVERLAP)


@pytest.mark.usefixtures("small_windows")
@pytest.mark.parametrize("accent", [False, True], ids=["ascii", "latin"])
@pytest.mark.parametrize("index", range(len(LONG_REACH)))
def test_long_reach_secret_across_each_boundary(index: int, accent: bool) -> None:
    assert max(map(len, LONG_REACH)) < OVERLAP // 2
    snippet = LONG_REACH[index]
    rng = random.Random(index)
    for offset in (len(snippet) // 2, len(snippet) - 3, 40, 0, -200):
        placed = [(snippet, offset)] * 4
        text = _long_text(rng, placed, size=6 * CORE, accent=accent)
        whole = SCANNER.scan(text)
        assert whole, "the snippet must hold a secret for the test to mean anything"
        assert list(redact._scan_text(SCANNER, text)) == _spans(whole)


@pytest.mark.usefixtures("small_windows")
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), accent=st.booleans(),
       picks=st.lists(st.tuples(st.sampled_from(SNIPPETS + LONG_REACH),
                                st.integers(-300, 300)), min_size=4, max_size=20))
def test_windowed_scan_finds_what_the_whole_text_scan_finds(
        seed: int, accent: bool, picks: list[tuple[str, int]]) -> None:
    placed = [(s, len(s) // 2 + off) for s, off in picks]
    text = _long_text(random.Random(seed), placed, size=8 * CORE, accent=accent)
    assert list(redact._scan_text(SCANNER, text)) == _spans(SCANNER.scan(text))


_PEM_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
            + "".join(base64.b64encode(random.Random(7 + i).randbytes(51)).decode() + "\n"
                      for i in range(8))
            + "-----END OPENSSH PRIVATE KEY-----\n")
_PUTTY_KEY = ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n"
              "Comment: eddsa-key-20240501\nPublic-Lines: 2\n"
              "AAAAC3NzaC1lZDI1NTE5AAAAIOuF2r1QWQ6Kp5HbMmL1Zc2qGf1d3Q9rX0aYvK7eN3Tn\n"
              "Private-Lines: 1\nAAAAIFk2n6oUq8ZbX1xC7wL3vT9yR4dA0eM5pH2sJ6kN8qBz\n"
              "Private-MAC: 5e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7\n")


@pytest.mark.usefixtures("small_windows")
@pytest.mark.parametrize(("key", "accent", "cut"), [
    (_PEM_KEY, True, 40), (_PEM_KEY, False, 200), (_PUTTY_KEY, True, 120),
    (_PUTTY_KEY, False, 40)], ids=["pem-latin", "pem-ascii", "putty-latin", "putty-ascii"])
def test_a_key_cut_by_the_head_does_not_take_a_later_keys_end(key: str, accent: bool,
                                                               cut: int) -> None:
    # Every window after the first is read after the text's first _SCAN_HEAD
    # characters.  A key block that the head's cut leaves open (found by hypothesis:
    # its BEGIN line took the END line of the next key, in the window, for its own,
    # and that key was lost) must be closed there.
    rng = random.Random(cut)
    lines = _filler(rng, redact._SCAN_HEAD - cut, accent=accent)
    first = "".join(lines)
    first = first[:first.rfind("\n", 0, redact._SCAN_HEAD - cut) + 1]
    later = "".join(_filler(rng, redact._SCAN_HEAD + 3 * OVERLAP, accent=accent))
    text = first + key + later + key + "".join(_filler(rng, CORE // 2, accent=accent))
    assert len(first) < redact._SCAN_HEAD < len(first) + len(key)
    whole = SCANNER.scan(text)
    assert sum(f.kind == "private-key" for f in whole) == 2
    assert list(redact._scan_text(SCANNER, text)) == _spans(whole)

@pytest.mark.usefixtures("small_windows")
@pytest.mark.parametrize("accent", [False, True], ids=["ascii", "latin"])
def test_whole_text_switches_reach_every_window(accent: bool) -> None:
    """HTML table cells or a dotted capital I anywhere change how the scanner reads the
    whole text: windows that lack them must read as if they had them."""
    rng = random.Random(11)
    for first, far in ((LONG_REACH[2], LONG_REACH[3]), (LONG_REACH[4], LONG_REACH[4]),
                       ("İ\n", "mot de passe : <b>Soleil</b>2024!\n")):
        for offset in (0, len(far) // 2):
            text = _long_text(rng, [(first, 5000), (far, offset), (far, offset)],
                              size=6 * CORE, accent=accent)
            assert list(redact._scan_text(SCANNER, text)) == _spans(SCANNER.scan(text))


def test_short_texts_are_scanned_whole() -> None:
    text = "mot de passe : Soleil2024!\n" * 10
    assert list(redact._scan_text(SCANNER, text)) == _spans(SCANNER.scan(text))


# --------------------------------------------------------------------------------------
# Rewriting large parts: the new part is the whole text with its secrets replaced.

def _message(body: bytes, cte: str) -> bytes:
    return (b"From: a@mairie-exemple.fr\r\nTo: contact@example.org\r\nSubject: logs\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n" + body)


def _encode(text: str, cte: str) -> bytes:
    data = text.replace("\n", "\r\n").encode("utf-8")
    if cte == "base64":
        return b"".join(binascii.b2a_base64(data[i:i + 57]).replace(b"\n", b"\r\n")
                        for i in range(0, len(data), 57))
    if cte == "quoted-printable":
        return binascii.b2a_qp(text.encode("utf-8")).replace(b"\n", b"\r\n")
    return data


def _decode(body: bytes, cte: str) -> str:
    if cte == "base64":
        data = binascii.a2b_base64(body)
    elif cte == "quoted-printable":
        data = binascii.a2b_qp(body)
    else:
        data = body
    return data.decode("utf-8")


@pytest.mark.usefixtures("small_windows")
@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
def test_large_part_rewritten_as_the_whole_text_redacted(cte: str) -> None:
    rng = random.Random(7)
    placed = [(s, len(s) // 2) for s in (*SNIPPETS[:12], *LONG_REACH)]
    text = _long_text(rng, placed, size=10 * CORE, accent=True)
    raw = _message(_encode(text, cte), cte)
    found = redact_message(raw, SCANNER)
    assert found.body is not None and not found.defects
    crlf = text.replace("\n", "\r\n")
    expected = redact_spans(crlf, SCANNER.scan(crlf), DEFAULT_MARKER)
    assert _decode(found.body, cte) == expected
    assert found.count == len(SCANNER.scan(crlf))


@pytest.mark.parametrize("tail", [b"", b"\xff\xfe caf\xe9 \xe2\x82"])
def test_texts_of_a_long_part_read_as_the_whole_parse(tail: bytes) -> None:
    text = "".join(_filler(random.Random(3), 1_200_000, accent=bool(tail)))
    body = b"mot de passe : Soleil2024!\r\n" + tail + text.encode("utf-8")
    raw = _message(body, "8bit")
    walked = redact_message(raw, SCANNER, change=False)
    assert walked.texts is not None and len(walked.texts[0][2]) < len(body)
    whole = body.decode("utf-8", "surrogateescape")
    whole = redact_spans(whole, SCANNER.scan(whole), DEFAULT_MARKER)
    expected, adopted = ParsedMessage(raw), ParsedMessage(raw)
    expected.adopt_texts([("text/plain", False, whole)])
    adopted.adopt_texts(walked.texts)
    assert adopted.text == expected.text


# --------------------------------------------------------------------------------------
# The bound.

def _redacted_with_peak(raw: bytes) -> tuple[Redaction, int]:
    """``redact_message(raw)`` and the peak of Python allocations while it ran."""
    gc.collect()
    tracemalloc.start()
    try:
        found = redact_message(raw, SCANNER)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return found, peak


def test_peak_allocations_of_a_6mb_text_message_stay_under_5x() -> None:
    """Was 18x (a 9.5 MiB log: the scanner's lower-cased copy of the whole text).  Now
    4.75x: the text, and the scan's working copies of one window (about 23 MB when the
    text is not ASCII, whatever its size: 2.4x a message near the 10 MB scan cap)."""
    lines = _filler(random.Random(5), 6_000_000, accent=True)
    lines.insert(len(lines) - 20, "Le mot de passe admin est : Xk7#pQ2vLm9z ; merci\n")
    raw = _message("".join(lines).replace("\n", "\r\n").encode("utf-8"), "8bit")
    del lines
    found, peak = _redacted_with_peak(raw)
    assert found.count >= 1 and found.body is not None
    assert peak < 5 * len(raw), f"peak {peak / len(raw):.1f}x the message size"


def _log_full_of_findings(size: int) -> str:
    """A log whose every line holds a finding (its session id is taken for a token), as
    in tests/bench/memory.py: the rewrite's worst case."""
    rng = random.Random(9)
    lines = []
    total = 0
    while total < size:
        line = (f"2024-05-{rng.randint(1, 28):02d} INFO [worker-{rng.randint(1, 8)}] GET "
                f"/login?id={rng.randint(1, 99999)} 200 user=compta "
                f"session={rng.getrandbits(64):016x}\n")
        lines.append(line)
        total += len(line)
    return "".join(lines)


@pytest.mark.parametrize("cte", ["8bit"])    # quoted-printable: 6.4x before, 3.6x now
def test_rewriting_a_log_full_of_findings_stays_under_4x(monkeypatch: pytest.MonkeyPatch,
                                                          cte: str) -> None:
    """What the rewrite holds besides the scan: the text, its edits (24 bytes each), one
    (location, kind) per kind, the new body written as it goes.  3.3x (8bit) here; 7.0x
    before (a tuple per finding and per run of edited lines, the part's new bytes, then
    the new body joined from them).  Windows of 256 KiB so that the scan's working copies
    (a fixed cost, see above) weigh on a 2 MB message what they weigh on 10 MB."""
    monkeypatch.setattr(redact, "_SCAN_CORE", 256 * 1024)
    monkeypatch.setattr(redact, "_SCAN_OVERLAP", OVERLAP)
    text = _log_full_of_findings(2_000_000)
    raw = _message(_encode(text, cte), cte)
    findings = text.count("\n")
    del text
    found, peak = _redacted_with_peak(raw)
    assert found.count >= findings * 0.9 and found.body is not None
    assert peak < 4 * len(raw), f"peak {peak / len(raw):.1f}x the message size"
