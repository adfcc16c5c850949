"""The same messages in the same order give the same decisions, whatever the
state writer thread does.

The bench mix (requests, resends, forwards, near-duplicate templates, both
addresses at once) goes through the engine three times with a fresh state
database: with a writer that holds every row in memory until the end, with
one that has written everything before each next message, and with the
writer left to its own timing.  The decisions must be equal, one by one:
the duplicate lookup must not depend on which rows have reached the file.
"""

from __future__ import annotations

import itertools

import pytest

from bench.mix import generate
from helpdesk_milter.config import parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from helpdesk_milter.store import SQLiteStore
from support.milterproc import dump_toml
from support.world import example_sections

MIX = generate(200, seed=1)


def decisions(tmp_path, name: str, writer: str) -> list[object]:
    path = tmp_path / f"{name}.db"
    data = example_sections()
    data["milter"]["database"] = str(path)
    ticks = itertools.count(1_800_000_000, 7)
    clock = lambda: float(next(ticks))   # noqa: E731  the same times in every pass
    store = SQLiteStore(path, clock=clock)
    if writer == "stalled":
        store.LINGER, store.BATCH = 3600.0, 1_000_000     # nothing on disk until close
    elif writer == "eager":
        # flush() below waits for the commit; a writer lingering for more rows would
        # only make each of those waits 0.1 s longer (20 s for the mix).
        store.LINGER = 0.0
    engine = Engine(parse_config(dump_toml(data)), store=store, clock=clock,
                    dnsfunc=lambda *a, **k: None)
    out = []
    try:
        for m in MIX:
            env = Envelope(mail_from=m.mail_from, rcpts=m.rcpts, queue_id=f"Q{m.index:05d}")
            out.append(engine.process_raw(env, m.raw).decision)
            if writer == "eager":
                store.flush()                 # every row on disk before the next message
    finally:
        store.close()
    return out


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    return decisions(tmp_path_factory.mktemp("determinism"), "eager", "eager")


def test_the_mix_has_duplicates_to_decide():
    kinds = {m.kind for m in MIX}
    assert {"resend", "support-both", "support-watched"} <= kinds


@pytest.mark.parametrize("writer", ["stalled", "free"])
def test_same_decisions_whatever_the_writer_does(tmp_path, eager, writer):
    other = decisions(tmp_path, writer, writer)
    assert sum(d.duplicate is not None for d in eager) > 20
    differ = [(MIX[n].index, MIX[n].kind, a.duplicate, b.duplicate, a.action, b.action)
              for n, (a, b) in enumerate(zip(eager, other, strict=True)) if a != b]
    assert not differ, differ[:10]
