"""Hostile input through the pure core: ``Engine`` in-process, no MTA, no pymilter.

Every case of ``support.hostile.catalogue()`` (broken MIME, 100-deep nesting, undeclared
8-bit, invalid UTF-8, unknown and lying charsets, encoded-word abuse, 1,000- and
100,000-character lines, NUL bytes, 5,000 headers, empty and header-only messages, fake
.eml attachments, HTML bombs, forged headers, bare CRs) goes through
``Engine.process_raw`` with the example config and a real state database, then through
``rewrite_raw`` (what Postfix would deliver). For each one:

- a decision comes back, fast (no hang), and nothing raises;
- the rewritten message parses, with the same MIME structure;
- no original recipient is lost (a redirect group's recipient only with assistance added);
- every header field we did not remove or change is still there, byte for byte, and the
  body is untouched unless the decision replaced it; no forged header of ours survives;
- the secret is gone wherever a mail client would show it -- or, where the milter cannot
  read the part, the body is unchanged and a header and the log line say it was not
  inspected;
- exactly one log line names the queue id.

The oversized (50 MB) and 10,000-recipient inputs are checked here the way the adapter
hands them over (headers only and ``too_large``; a long envelope).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import tracemalloc
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from helpdesk_milter.auth import is_own_authentication_results
from helpdesk_milter.config import load_config
from helpdesk_milter.engine import Engine, rewrite_raw
from helpdesk_milter.message import Envelope
from helpdesk_milter.store import SQLiteStore
from support.hostile import (
    SECRET,
    Hostile,
    big_message,
    body_of,
    catalogue,
    check_expectation,
    expected_recipients_ok,
    is_redirect_watched,
    many_recipients,
    says_not_inspected,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = load_config(ROOT / "config" / "helpdesk-milter.toml")
CASES = catalogue()
DECISION_BUDGET = 5.0        # seconds: far above the real cost, well below a hang


def no_dns(name: bytes, timeout: float = 5) -> bytes | None:
    return None


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    store = SQLiteStore(tmp_path_factory.mktemp("hostile-core") / "state.db")
    try:
        yield Engine(CONFIG, store=store, dnsfunc=no_dns)
    finally:
        store.close()


def fields(raw: bytes) -> list[bytes]:
    """The header fields of ``raw`` as physical bytes (continuation lines included)."""
    head, sep, _ = raw.partition(b"\r\n\r\n")
    if not sep:
        head = raw.rstrip(b"\r\n")
    out: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b"\r\n" + line
        else:
            out.append(line)
    return out


def structure(raw: bytes) -> list[str]:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    return [part.get_content_type() for part in msg.walk()]


def final_rcpts(rcpts: tuple[str, ...], decision) -> list[str]:
    removed = {r.lower() for r in decision.del_rcpts}
    return [r for r in rcpts if r.lower() not in removed] + list(decision.add_rcpts)


def run(engine: Engine, case: Hostile, qid: str, caplog: pytest.LogCaptureFixture):
    env = Envelope(mail_from=case.mail_from, rcpts=case.rcpts, queue_id=qid)
    caplog.clear()
    started = time.monotonic()
    outcome = engine.process_raw(env, case.raw)
    elapsed = time.monotonic() - started
    assert elapsed < DECISION_BUDGET, f"{case.name}: decision took {elapsed:.1f}s"
    lines = [r.getMessage() for r in caplog.records if qid in r.getMessage()]
    return outcome.decision, lines


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_message_gets_a_safe_decision(engine, case, caplog):
    caplog.set_level(logging.INFO, logger="helpdesk_milter")
    qid = "CORE" + re.sub(r"[^A-Z0-9]", "", case.name.upper())[:10]
    decision, lines = run(engine, case, qid, caplog)
    out = rewrite_raw(case.raw, decision)

    # parses, same MIME tree
    assert structure(out) == structure(case.raw), case.note
    # nobody lost
    lost = expected_recipients_ok(list(case.rcpts), final_rcpts(case.rcpts, decision),
                                  is_redirect_watched)
    assert not lost, f"recipients lost: {lost}"
    # every header we did not remove or change is still there, byte for byte
    touched = {(n.lower(), i) for n, i in decision.strip_headers} | {
        (n.lower(), i) for n, i, _ in decision.change_headers}
    kept = set(fields(out))
    counts: dict[str, int] = {}
    for field in fields(case.raw):
        name = field.split(b":", 1)[0].decode("ascii", "replace").strip().lower()
        counts[name] = counts.get(name, 0) + 1
        if (name, counts[name]) not in touched:
            assert field in kept, f"header lost or altered: {field[:80]!r}"
    if decision.new_body is None:
        assert body_of(out) == case.body
    # nothing of ours arrives forged: X-Helpdesk-* and our Authentication-Results are
    # exactly the ones the decision adds
    added = {(n.lower(), v) for n, v in (*decision.add_headers, *decision.prepend_headers)}
    for field in fields(out):
        name, _, value = field.partition(b":")
        key = name.strip().decode("ascii", "replace").lower()
        text = value.strip().decode("utf-8", "replace")
        if key.startswith("x-helpdesk-") or (
                key == "authentication-results"
                and is_own_authentication_results(text, CONFIG.milter.authserv_id)):
            assert (key, text) in added, f"forged header delivered: {field[:100]!r}"
    # one clear log line
    assert len(lines) == 1, lines
    check_expectation(case, out, [v for n, v in decision.add_headers], lines[0])


def test_forged_headers_all_go_and_others_stay(engine, caplog):
    case = next(c for c in CASES if c.name == "forged-headers")
    decision, _ = run(engine, case, "COREFORGED2", caplog)
    out = BytesParser(policy=policy.compat32).parsebytes(rewrite_raw(case.raw, decision))
    ours = [(n, v) for n, v in out.items() if n.lower().startswith("x-helpdesk-")]
    assert {n for n, _ in ours} <= {"X-Helpdesk-Request", "X-Helpdesk-Routed",
                                    "X-Helpdesk-Redacted", "X-Helpdesk-Duplicate",
                                    "X-Helpdesk-Hints"}
    assert not any("evil" in v or "8-bit" in v or v == "count=0" for _, v in ours), ours
    results = [str(v) for v in out.get_all("Authentication-Results", [])]
    assert [r for r in results if "other.example" in r] == [
        "other.example; dkim=pass header.d=kept.example"]
    assert not any("forged" in r or "evil.example" in r for r in results), results


def test_oversized_message_passes_tagged_without_its_body(engine, caplog):
    """What the adapter hands over past max_scan_size: the headers, no body, too_large."""
    caplog.set_level(logging.INFO, logger="helpdesk_milter")
    raw = big_message(50 * 1024 * 1024, tag="core50m")
    head = raw[:raw.index(b"\r\n\r\n")]
    headers = []
    for field in fields(head + b"\r\n\r\n"):
        name, _, value = field.partition(b":")
        headers.append((name.decode(), value.lstrip(b" ")))
    del raw
    env = Envelope(mail_from="secretariat@mairie-exemple.fr", rcpts=("contact@example.org",),
                   queue_id="CORETOOLARGE")
    started = time.monotonic()
    outcome = engine.process(env, headers, b"", size=50 * 1024 * 1024, too_large=True)
    assert time.monotonic() - started < 1.0
    d = outcome.decision
    assert d.action == "skip" and d.skip_reason == "too-large"
    assert d.new_body is None and not d.changes_envelope
    assert says_not_inspected([v for n, v in d.add_headers if n == "X-Helpdesk-Request"])
    line = next(r.getMessage() for r in caplog.records if "CORETOOLARGE" in r.getMessage())
    assert "skipped=too-large" in line and f"size={50 * 1024 * 1024}" in line


def test_ten_thousand_recipients_in_the_core(engine, caplog):
    raw, rcpts = many_recipients(10_000)
    env = Envelope(mail_from="secretariat@mairie-exemple.fr", rcpts=tuple(rcpts),
                   queue_id="CORERCPT10K")
    started = time.monotonic()
    d = engine.process_raw(env, raw).decision
    assert time.monotonic() - started < DECISION_BUDGET
    # redirected, or tagged as a duplicate of an earlier case (same text): never more
    assert d.action in ("redirect", "duplicate"), d.action
    assert set(d.del_rcpts) <= {"contact@example.org"}
    assert len(d.add_rcpts) <= 1
    assert not expected_recipients_ok(rcpts, final_rcpts(tuple(rcpts), d),
                                      is_redirect_watched)


def test_memory_for_a_message_just_under_the_scan_cap_is_bounded(engine):
    """Below max_scan_size the whole message is decided in memory: that cost is a fixed
    multiple of the message, so the cap bounds the milter's memory per message."""
    size = CONFIG.milter.max_scan_size - 64 * 1024
    raw = big_message(size, tag="corecap")
    env = Envelope(mail_from="secretariat@mairie-exemple.fr", rcpts=("alice@example.org",),
                   queue_id="COREUNDERCAP")
    tracemalloc.start()
    try:
        started, cpu_started = time.monotonic(), time.thread_time()
        d = engine.process_raw(env, raw).decision
        elapsed = time.monotonic() - started
        # The decision runs in this thread: its CPU time is its cost whatever else the
        # machine runs (the wall time of this traced decision, 4.6 s alone, took 13-18 s
        # on a loaded 2-core machine).
        cpu = time.thread_time() - cpu_started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{size / 2**20:.1f} MiB message decided in {elapsed:.2f}s ({cpu:.2f}s CPU), "
          f"peak Python allocations {peak / 2**20:.0f} MiB ({peak / size:.1f}x)")
    assert d.secrets == 1 and SECRET.encode() not in rewrite_raw(raw, d)
    assert cpu < 2 * DECISION_BUDGET
    # A regression guard, not a target: 17x measured when this was written (the MIME
    # walk and the redaction each hold per-line copies of the text).
    assert peak < 24 * size, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB message"


def test_undecodable_bytes_in_an_attached_message_id_cost_no_record(tmp_path, caplog):
    """Found by fuzzing: an attached original whose Message-ID holds raw 8-bit bytes.
    Its id must be stored (readably) like any other; a row the database cannot take
    must not cost the rows of the other messages written in the same batch."""
    caplog.set_level(logging.INFO, logger="helpdesk_milter")
    store = SQLiteStore(tmp_path / "state.db")
    engine = Engine(CONFIG, store=store, dnsfunc=no_dns)
    attached = (b"From: jean@ecole-des-pins.fr\r\nTo: contact@example.org\r\n"
                b"Message-ID: 5d1e0f4c-8a7b@ecole-des-pins.fr\xc2\xf5\xaa\x90er\r\n"
                b"Subject: Imprimante en panne\r\n\r\n"
                b"Bonjour, l'imprimante ne fonctionne plus depuis ce matin.\r\n")
    raw = (b"From: direction@ecole-des-pins.fr\r\nTo: contact@example.org\r\n"
           b"Message-ID: <fwd-8bit@ecole-des-pins.fr>\r\nSubject: TR: Imprimante en panne\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"f\"\r\n\r\n"
           b"--f\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           b"Bonjour, je vous transf\xc3\xa8re la demande ci-jointe, impossible d'imprimer."
           b"\r\n--f\r\nContent-Type: message/rfc822\r\n\r\n" + attached + b"--f--\r\n")
    try:
        for n, message in enumerate([raw, big_message(4096, tag="neighbour")]):
            engine.process_raw(Envelope(mail_from="direction@ecole-des-pins.fr",
                                        rcpts=("contact@example.org",),
                                        queue_id=f"CORE8BIT{n}"), message)
        store.flush()
    finally:
        store.close()
    errors = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert not errors, errors
    with sqlite3.connect(tmp_path / "state.db") as conn:
        rows = {q for (q,) in conn.execute("select queue_id from decisions")}
    assert rows == {"CORE8BIT0", "CORE8BIT1"}
