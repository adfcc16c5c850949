"""Section ``redis``: what the shared state costs a decision, Redis on loopback.

The same mix is decided in-process by two engines built as ``helpdesk-milter
run`` builds them: one on the SQLite store alone (``[state] backend =
"sqlite"``), one on the Redis store (``backend = "redis"``, a private
``redis-server`` on 127.0.0.1 started here).  Passes alternate between the two
(each pass a fresh memory: a new SQLite file, a new key prefix) so that machine
noise hits both alike.  Measured per message, as wall time (Redis work is
waiting on a socket, not CPU): the time spent in the store's methods (the
duplicate lookup and remember, guidance limits, commit) and the whole decision.
Each is the median over passes; the *added* cost is the per-message difference
Redis − SQLite of the store time, reported as p50 and p99 (target: p50 < 0.3
ms; the whole decision's difference is shown too, noisier: it is 2-3 ms of
parsing and classifying around a 0.1 ms difference).  Round trips per message
are counted on the wire: the commands the deciding thread sends, except on the
store's stream-reader connection (a lookup may take in what arrived there and ask
for what comes next, which it does not wait for).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import redis

from bench.inproc import EngineFactory, percentile
from bench.mix import MixMessage
from bench.report import _table
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from helpdesk_milter.policy import Policy
from helpdesk_milter.redis_store import RedisStore
from helpdesk_milter.store import SQLiteStore
from support.redis import RedisServer

TARGET_P50_MS = 0.3


class _Counting(redis.Connection):
    """Counts the commands the deciding thread sends: what a message waits for (the
    writer thread's batched filing of earlier messages' rows is off its path, and so
    are the commands a lookup sends on the stream reader's connection)."""
    sent = 0
    thread: int | None = None
    stores: ClassVar[list[Any]] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == _Counting.thread and not any(
                self is getattr(s, "_reader_conn", None) for s in _Counting.stores):
            _Counting.sent += 1
        super().send_packed_command(command, check_health)


class _Timed:
    """The store, with the wall time spent in its methods added up in ``spent``."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.spent = 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if not callable(method):
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0
        return timed


def _engine(factory: EngineFactory, database: Path, server: RedisServer | None
            ) -> tuple[Engine, _Timed]:
    config = replace(factory.config, milter=replace(factory.config.milter,
                                                    database=str(database)))
    local = SQLiteStore(database, window=config.dedup.window,
                        similarity=config.dedup.similarity)
    store: SQLiteStore | RedisStore = local
    if server is not None:
        client = redis.Redis(connection_pool=redis.BlockingConnectionPool(
            host="127.0.0.1", port=server.port, connection_class=_Counting,
            socket_timeout=0.5, socket_connect_timeout=0.5, timeout=0.5))
        store = RedisStore(server.url, local=local, window=config.dedup.window,
                           similarity=config.dedup.similarity,
                           key_prefix=f"bench{uuid.uuid4().hex[:8]}:", client=client)
        _Counting.stores[:] = [store]
    timed = _Timed(store)
    engine = Engine(config, store=timed,  # type: ignore[arg-type]
                    policy=Policy(config, rules=factory.rules))
    return engine, timed


def _pass(factory: EngineFactory, database: Path, server: RedisServer | None,
          messages: Sequence[MixMessage], skip: int
          ) -> tuple[list[float], list[float], list[int]]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    engine, store = _engine(factory, database, server)
    _Counting.thread = threading.get_ident()
    walls: list[float] = []
    in_store: list[float] = []
    trips: list[int] = []
    try:
        for n, m in enumerate(messages):
            env = Envelope(mail_from=m.mail_from, rcpts=m.rcpts, queue_id=f"R{m.index:09X}",
                           client_addr="192.0.2.10")
            before, spent = _Counting.sent, store.spent
            t0 = time.perf_counter()
            engine.process_raw(env, m.raw)
            wall = time.perf_counter() - t0
            if n >= skip:
                walls.append(wall)
                in_store.append(store.spent - spent)
                trips.append(_Counting.sent - before)
        store.flush(timeout=60)
    finally:
        store.close()
    return walls, in_store, trips


def redis_costs(factory: EngineFactory, workdir: Path, messages: Sequence[MixMessage],
                warmup: Sequence[MixMessage], repeats: int) -> dict[str, Any]:
    run = [*warmup, *messages]
    passes: dict[str, list[tuple[list[float], list[float], list[int]]]] = {
        "sqlite": [], "redis": []}
    with RedisServer(workdir / "redis") as server:
        # the machine's floor: one loopback round trip to this server
        client = redis.Redis(host="127.0.0.1", port=server.port)
        pings = []
        for _ in range(2000):
            t0 = time.perf_counter()
            client.ping()
            pings.append(time.perf_counter() - t0)
        client.close()
        for r in range(max(1, repeats)):
            for name, srv in (("sqlite", None), ("redis", server)):
                passes[name].append(_pass(factory, workdir / f"redis-bench-{r}-{name}.db",
                                          srv, run, len(warmup)))
    n = len(messages)

    def per_message(name: str, field: int) -> list[float]:
        return [statistics.median(p[field][i] for p in passes[name]) for i in range(n)]

    base, shared = per_message("sqlite", 1), per_message("redis", 1)
    added = sorted((s - b) * 1e3 for s, b in zip(shared, base, strict=True))
    whole = sorted((s - b) * 1e3 for s, b in zip(per_message("redis", 0),
                                                 per_message("sqlite", 0), strict=True))
    trips = passes["redis"][-1][2]

    def dist(values: list[float]) -> dict[str, float]:
        v = sorted(x * 1e3 for x in values)
        return {"p50_ms": statistics.median(v), "p99_ms": percentile(v, 99)}

    try:
        import hiredis  # noqa: F401
        parser = "hiredis"
    except ImportError:
        parser = "python"
    return {
        "messages": n, "repeats": max(1, repeats), "parser": parser,
        "sqlite_store": dist(base), "redis_store": dist(shared),
        "sqlite_decision": dist(per_message("sqlite", 0)),
        "redis_decision": dist(per_message("redis", 0)),
        "added_p50_ms": statistics.median(added), "added_p99_ms": percentile(added, 99),
        "added_decision_p50_ms": statistics.median(whole),
        "added_decision_p99_ms": percentile(whole, 99),
        "ping": dist(pings[200:]),
        "round_trips_max": max(trips) if trips else 0,
        "round_trips_mean": statistics.fmean(trips) if trips else 0.0,
        "target_p50_ms": TARGET_P50_MS,
    }


def report_lines(r: dict[str, Any]) -> list[str]:
    ok = r["added_p50_ms"] < r["target_p50_ms"]
    return [
        f"5. Shared state on Redis (loopback, {r['parser']} parser): wall time per message, "
        f"{r['messages']} messages x {r['repeats']} pass(es) per backend (ms)",
        *_table(["", "store p50", "store p99", "decision p50", "decision p99"], [
            ["sqlite", *(f"{r['sqlite_store'][k]:.3f}" for k in ("p50_ms", "p99_ms")),
             *(f"{r['sqlite_decision'][k]:.3f}" for k in ("p50_ms", "p99_ms"))],
            ["redis", *(f"{r['redis_store'][k]:.3f}" for k in ("p50_ms", "p99_ms")),
             *(f"{r['redis_decision'][k]:.3f}" for k in ("p50_ms", "p99_ms"))],
            ["added", f"{r['added_p50_ms']:.3f}", f"{r['added_p99_ms']:.3f}",
             f"{r['added_decision_p50_ms']:.3f}", f"{r['added_decision_p99_ms']:.3f}"]]),
        f"added by Redis, p50 {r['added_p50_ms']:.3f} ms (target < {r['target_p50_ms']} ms: "
        f"{'OK' if ok else 'MISSED'}), p99 {r['added_p99_ms']:.3f} ms; round trips per "
        f"message: mean {r['round_trips_mean']:.2f}, max {r['round_trips_max']}; one "
        f"round trip (PING) p50 {r['ping']['p50_ms']:.3f} ms, p99 {r['ping']['p99_ms']:.3f} ms",
    ]
