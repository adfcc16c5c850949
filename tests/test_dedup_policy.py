"""Duplicates across transactions, through the Engine with a real SQLite store.

Every labelled pair of ``tests/dedup_pairs`` is replayed as two SMTP
transactions a moment apart: the first goes through the decision and is
remembered, the second must be recognised as its duplicate (with the expected
``match=`` kind) or, for a near miss, must not.  The safety rules are checked
on every decision: nothing is removed unless assistance has the request.
The recall, expiry and drop tests run against both state backends (SQLite, and
Redis on a private redis-server): the same decisions either way.
"""

from __future__ import annotations

import functools
import tomllib
from email.utils import getaddresses
from pathlib import Path

import pytest

from helpdesk_milter.config import Config, parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope, ParsedMessage
from helpdesk_milter.policy import Policy
from helpdesk_milter.store import SQLiteStore
from support.milterproc import dump_toml
from support.redis import StateBackend, redis_server, state_backend  # noqa: F401
from support.world import EXAMPLE_CONFIG

PAIRS_DIR = Path(__file__).resolve().parent / "dedup_pairs"
PAIRS = tomllib.loads((PAIRS_DIR / "pairs.toml").read_text())


def config_text(**dedup: str) -> str:
    """The example config with the pairs' clients and ``[dedup]`` overrides."""
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    data["clients"].update(PAIRS["clients"])
    data["dedup"].update(dedup)
    return dump_toml(data)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


SQLITE = StateBackend("sqlite")


@functools.cache
def configured(text: str) -> tuple[Config, Policy]:
    """The config and its Policy, built once per config text: a Policy is an immutable
    view of the config (policy.py) and costs more to build (the rules, the model) than
    a pair costs to replay.  Each engine still gets a fresh store: the memory."""
    config = parse_config(text, base_dir=EXAMPLE_CONFIG.parent)
    return config, Policy(config)


def make_engine(tmp_path: Path, clock: Clock, backend: StateBackend = SQLITE,
                **dedup: str) -> Engine:
    config, policy = configured(config_text(**dedup))
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = backend.make(tmp_path / "state.db", window=config.dedup.window,
                         similarity=config.dedup.similarity, clock=clock)
    # replay() flushes after the first message: that waits for the commit, which a
    # writer lingering for more rows (0.1 s) only delays.
    (store if isinstance(store, SQLiteStore) else store.local).LINGER = 0.0
    return Engine(config, store=store, clock=clock, dnsfunc=lambda *a, **k: None,
                  policy=policy)


def envelope_of(raw: bytes, queue_id: str, *, second: bool = False) -> Envelope:
    """The To and Cc addresses; for the second copy, only its assistance ones if any
    (the pairs replay the copy that reaches assistance in a transaction of its own)."""
    msg = ParsedMessage(raw)
    rcpts = [a for _, a in getaddresses(msg.msg.get_all("To", []) + msg.msg.get_all("Cc", []))]
    assistance = [a for a in rcpts if "@assistance." in a]
    if second and assistance:
        rcpts = assistance
    return Envelope(mail_from=msg.from_addr, rcpts=tuple(rcpts), queue_id=queue_id)


def send(engine: Engine, name: str, queue_id: str, *, second: bool = False):
    raw = (PAIRS_DIR / name).read_bytes()
    env = envelope_of(raw, queue_id, second=second)
    d = engine.process_raw(env, raw).decision
    if d.del_rcpts:     # never lose a request: assistance has it, in this or an earlier copy
        assert d.duplicate or d.add_rcpts, d
    return d


@pytest.mark.parametrize("pair", PAIRS["pair"], ids=[p["second"] for p in PAIRS["pair"]])
def test_pair(tmp_path, pair):
    first, second = replay(tmp_path, pair)
    if expected(pair, first) is None:
        assert second.duplicate is None, (first, second)
    else:
        assert second.duplicate == pair["expect"], (first, second)
        header = dict(second.add_headers)["X-Helpdesk-Duplicate"]
        assert header.endswith(f"; match={pair['expect']}; action=tag")
        assert not second.add_rcpts           # never rerouted a second time


def replay(tmp_path: Path, pair: dict, backend: StateBackend = SQLITE):
    """The first message, an hour passes, the second; returns both decisions."""
    clock = Clock()
    engine = make_engine(tmp_path, clock, backend)
    first = send(engine, pair["first"], "Q1")
    clock.now += 3600
    engine.store.flush()
    second = send(engine, pair["second"], "Q2", second=True)
    engine.store.close()
    return first, second


def expected(pair: dict, first) -> str | None:
    """The pair's label, unless the first message was no request (then nothing was
    remembered: a billing question routed nowhere has no duplicates to catch)."""
    if first.verdict == "other" and first.action != "duplicate" and not first.assistance:
        return None
    return None if pair["expect"] == "none" else pair["expect"]


def test_recall_and_false_duplicates(tmp_path, capsys, state_backend):  # noqa: F811
    found = missed = false = clean = skipped = 0
    for n, pair in enumerate(PAIRS["pair"]):
        first, second = replay(tmp_path / str(n), pair, state_backend)
        if pair["expect"] != "none" and expected(pair, first) is None:
            skipped += 1
            continue
        if pair["expect"] == "none":
            false += second.duplicate is not None
            clean += second.duplicate is None
        else:
            found += second.duplicate == pair["expect"]
            missed += second.duplicate != pair["expect"]
    with capsys.disabled():
        print(f"\ndedup through the engine ({state_backend.name}): "
              f"recall {found}/{found + missed}, "
              f"false duplicates {false}/{false + clean} ({skipped} pair(s) whose first "
              "message is no request)")
    assert missed == 0 and false == 0


def test_window_expiry(tmp_path, state_backend):  # noqa: F811
    clock = Clock()
    engine = make_engine(tmp_path, clock, state_backend, window="2h")
    send(engine, "o01-imprimante-toner.eml", "Q1")
    clock.now += 3 * 3600
    assert send(engine, "d01-toner-resent-same-id.eml", "Q2").duplicate is None
    engine.store.close()


def test_drop_removes_assistance_only_when_it_provably_has_it(tmp_path,
                                                             state_backend):  # noqa: F811
    clock = Clock()
    engine = make_engine(tmp_path, clock, state_backend, action="drop")
    first = send(engine, "o01-imprimante-toner.eml", "Q1")
    clock.now += 60
    second = send(engine, "d01-toner-resent-same-id.eml", "Q2")
    engine.store.close()
    if first.add_rcpts:           # routed: the same assistance address has it
        assert second.del_rcpts and second.duplicate == "message-id"
        assert {a.lower() for a in second.del_rcpts} <= {a.lower() for a in first.add_rcpts} \
            | {first.assistance.lower()}
