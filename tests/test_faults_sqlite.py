"""The state database breaks while mail flows, through Postfix: mail never waits on it.

SQLite locked by another writer, the database made read-only (``chattr +i``: even for
root), the file deleted, the file system full (a small tmpfs). In each case, while the fault lasts:

- every message is accepted and delivered to all its recipients (counts in = out),
  still inspected and routed (the decision does not need the database), promptly;
- what degrades is the record (decision rows may be lost) and duplicate detection
  across transactions, never the mail;
- the milter says so in its log, naming the database and the error;

and once the fault ends, decisions are recorded again without a restart.

With the body spool (TMPDIR) on the full file system too, a message bigger than
``spool_memory`` cannot be spooled: it goes through unchanged (``on_error = accept``)
with a clear log line, and is redacted again once there is space.

The lock is held for as long as it takes the milter's writer to give up (its busy
timeout, 5 s), not for a fixed time; ``tests/soak/run.py --scenario lock`` holds it 30 s.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from support.faults import Tmpfs, hold_write_lock, immutable
from support.load import account, index_deliveries, send_many, support_messages
from support.net import wait_until
from support.world import example_sections

# A decision never waits on the database: a message's whole SMTP transaction through
# Postfix stays well under this while the database is broken.
PROMPT = 3.0


@pytest.fixture
def tmpfs():
    with Tmpfs("2m") as fs:
        yield fs


def rows(database: Path, queue_ids: set[str] | None = None) -> int:
    """Decision rows (for these queue ids); 0 while the file cannot be read."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as conn:
            if queue_ids is None:
                return conn.execute("select count(*) from decisions").fetchone()[0]
            marks = ",".join("?" * len(queue_ids))
            return conn.execute(f"select count(*) from decisions where queue_id in ({marks})",
                                sorted(queue_ids)).fetchone()[0]
    except sqlite3.Error:
        return 0


def flow(lab, sink, tag: str, count: int = 12):
    """Send ``count`` messages (4 sessions) and check they all arrive, inspected, fast.
    Returns the queue ids."""
    sink.clear()
    messages = support_messages(count, tag=tag, secret_every=3)
    report = send_many(lab.smtp_port, messages, connections=4, deadline=60)
    lab.wait_queue_empty(60)
    counts = account(messages, report, index_deliveries(sink.deliveries))
    summary = report.summary()
    assert counts["in"] == counts["out"] == count and not counts["lost"], (counts, summary)
    assert not report.retries, f"temporary failures while the database is broken: {summary}"
    assert summary["latency_max"] < PROMPT, summary
    watched = [d for d in sink.deliveries if any(r.endswith("example.org") for r in d.rcpt_tos)]
    assert watched and all(b"\r\nX-Helpdesk-Request:" in d.raw for d in watched)
    # secrets.scope = "helpdesk": the helpdesk's mail is redacted, other mail untouched
    assert not any(b"Marmotte" in d.raw for d in watched), "a secret was not redacted"
    # the helpdesk's mail leaves a decision row; mail stepped out of leaves none
    helpdesk = {m.message_id for m in messages
                if any(r.endswith("example.org") for r in m.rcpts)}
    return {a.queue_id for a in report.attempts.values()
            if a.queue_id and a.message_id in helpdesk}, summary


def recorded(database: Path, queue_ids: set[str], what: str) -> None:
    # The writer commits in batches as rows come: a few seconds at most.
    wait_until(lambda: rows(database, queue_ids) == len(queue_ids), 8,
               f"the decisions of {what} in {database}")


def test_database_locked_by_another_writer(lab, sink, milters, tmp_path):
    database = tmp_path / "state.db"
    milter = milters.helpdesk(example_sections(milter={"database": str(database)}))
    recorded(database, flow(lab, sink, "lock-before", 4)[0], "the first messages")
    offset = milter.log_offset()
    with hold_write_lock(database):
        started = time.monotonic()
        _, summary = flow(lab, sink, "lock-during")
        # keep the lock until the writer has given up on it at least once
        milter.wait_log(r"state database .*: cannot write \d+ row\(s\): "
                        r"OperationalError: database is locked", since=offset, timeout=30)
        held = time.monotonic() - started
    print(f"\nlocked {held:.1f}s: {summary}")
    after, _ = flow(lab, sink, "lock-after", 4)
    recorded(database, after, "the messages sent after the lock")


def test_database_made_read_only(lab, sink, milters, tmp_path):
    """chattr +i on the database, its WAL, its shared memory and their directory: even
    root (the milter here) cannot write them any more."""
    home = tmp_path / "db"
    home.mkdir()
    database = home / "state.db"
    milter = milters.helpdesk(example_sections(milter={"database": str(database)}))
    recorded(database, flow(lab, sink, "ro-before", 4)[0], "the first messages")
    offset = milter.log_offset()
    with immutable(database, f"{database}-wal", f"{database}-shm", home) as frozen:
        assert database in frozen
        _, summary = flow(lab, sink, "ro-during")
        milter.wait_log(r"state database .*: cannot write .*(readonly|read-only|disk I/O|"
                        r"not permitted)", since=offset, timeout=15)
    print(f"\nread-only: {summary}")
    after, _ = flow(lab, sink, "ro-after", 4)
    recorded(database, after, "the messages sent once writable again")


def test_database_deleted_while_running(lab, sink, milters, tmp_path):
    database = tmp_path / "state.db"
    milter = milters.helpdesk(example_sections(milter={"database": str(database)}))
    recorded(database, flow(lab, sink, "del-before", 4)[0], "the first messages")
    offset = milter.log_offset()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    _, summary = flow(lab, sink, "del-during")
    print(f"\ndeleted: {summary}")
    # The milter must notice that its database is gone, say so, and start a new one
    # (an admin's cleanup, a restored backup): decisions must not vanish into an
    # unlinked file until the next restart.
    milter.wait_log(r"state database .*(deleted|removed|missing|recreat|does not exist)",
                    since=offset, timeout=15)
    after, _ = flow(lab, sink, "del-after", 4)
    recorded(database, after, "the messages sent after the deletion")


def test_full_file_system(lab, sink, milters, tmpfs):
    database = tmpfs.path / "state.db"
    with Tmpfs("1m") as spool:               # the body spool's file system, full too
        milter = milters.helpdesk(
            example_sections(milter={"database": str(database), "spool_memory": "16KB"}),
            env={"TMPDIR": str(spool.path)})
        recorded(database, flow(lab, sink, "full-before", 4)[0], "the first messages")
        # One body spooled to disk first: Python settles on TMPDIR for good (at first
        # use it would skip a full TMPDIR and fall back to /tmp).
        warm = support_messages(1, tag="full-warm", size=64 * 1024)[0]
        lab.deliver(sink, warm.raw, warm.mail_from, warm.rcpts, normalize_eol=False)
        big = support_messages(1, tag="full-big", size=64 * 1024, secret_every=1)[0]
        offset = milter.log_offset()
        tmpfs.fill()
        spool.fill()
        try:
            _, summary = flow(lab, sink, "full-during")
            milter.wait_log(r"state database .*: cannot write .*(full|No space)",
                            since=offset, timeout=15)
            # A body past spool_memory cannot be spooled: delivered unchanged, logged.
            sink.clear()
            got = lab.deliver(sink, big.raw, big.mail_from, big.rcpts, normalize_eol=False)
            assert b"Marmotte00000" in got[0].raw          # not redacted: not inspected
            milter.wait_log(r"internal error in body \(OSError at [\w.]+:\d+\); the "
                            r"message will be accepted unchanged", since=offset)
        finally:
            tmpfs.drain()
            spool.drain()
        print(f"\nfull: {summary}")
        after, _ = flow(lab, sink, "full-after", 4)
        recorded(database, after, "the messages sent once there is space again")
        sink.clear()
        again = support_messages(1, tag="full-big2", size=64 * 1024, secret_every=1)[0]
        got = lab.deliver(sink, again.raw, again.mail_from, again.rcpts, normalize_eol=False)
        assert b"Marmotte00000" not in got[0].raw
        milters.close()                      # before the spool file system goes away
