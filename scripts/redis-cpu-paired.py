#!/usr/bin/env python3
"""Paired cost of the Redis store's duplicate lookup: a base ``redis_store.py``
against the working tree's, message by message, in one process.

    .venv/bin/python scripts/redis-cpu-paired.py BASE_REDIS_STORE_PY [--messages 1000]
        [--passes 3]

Two engines on the example configuration, each with a ``RedisStore`` over one
private ``redis-server`` (its own key prefix) and its own SQLite file, decide
every message of the bench mix (``generate(N)``), the order alternating from one
message to the next.  Per message that reached the store's ``check_and_remember``
(after the first 200 of a pass): its wall time and the CPU time of the deciding
thread.  Prints each side's medians and the median of the paired differences,
the figure to read on a noisy machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

import helpdesk_milter.redis_store as new_module  # noqa: E402
from bench.mix import generate  # noqa: E402
from helpdesk_milter.config import parse_config  # noqa: E402
from helpdesk_milter.engine import Engine  # noqa: E402
from helpdesk_milter.message import Envelope  # noqa: E402
from helpdesk_milter.store import SQLiteStore  # noqa: E402
from support.milterproc import dump_toml  # noqa: E402
from support.redis import RedisServer  # noqa: E402
from support.world import example_sections  # noqa: E402

SKIP = 200


class Timed:
    """The store, with the wall and CPU time of ``check_and_remember`` added up."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.wall = 0.0
        self.cpu = 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name != "check_and_remember":
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - w
                self.cpu += time.thread_time() - c
        return timed


def load_base(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("helpdesk_milter.redis_store_base", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the base version of redis_store.py")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    sys.setswitchinterval(0.0005)          # as `helpdesk-milter run` sets it
    logging.basicConfig(level=logging.INFO, force=True,
                        stream=open(os.devnull, "w"))  # noqa: SIM115 (process lifetime)
    modules = {"base": load_base(args.base), "new": new_module}
    mix = generate(args.messages, seed=1)
    walls: dict[str, list[float]] = {"base": [], "new": []}
    cpus: dict[str, list[float]] = {"base": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        for p in range(args.passes):
            sides: dict[str, tuple[Engine, Timed, Any]] = {}
            for name, module in modules.items():
                data = example_sections()
                database = Path(tmp) / f"{name}-{p}.db"
                data["milter"]["database"] = str(database)
                config = parse_config(dump_toml(data))
                local = SQLiteStore(database, window=config.dedup.window,
                                    similarity=config.dedup.similarity)
                client = redis.Redis(connection_pool=redis.BlockingConnectionPool(
                    host="127.0.0.1", port=server.port, socket_timeout=0.5, timeout=0.5))
                store = module.RedisStore(server.url, local=local, window=config.dedup.window,
                                          similarity=config.dedup.similarity,
                                          key_prefix=f"{name}{p}:", client=client)
                timed = Timed(store)
                sides[name] = (Engine(config, store=timed,  # type: ignore[arg-type]
                                      dnsfunc=lambda *a, **k: None), timed, store)
            for i, m in enumerate(mix):
                for name in (("base", "new") if (i + p) % 2 == 0 else ("new", "base")):
                    engine, timed, _ = sides[name]
                    wall, cpu = timed.wall, timed.cpu
                    env = Envelope(mail_from=m.mail_from, rcpts=m.rcpts,
                                   queue_id=f"P{m.index:09X}", client_addr="192.0.2.10")
                    engine.process_raw(env, m.raw)
                    if i >= SKIP and timed.cpu > cpu:
                        walls[name].append(timed.wall - wall)
                        cpus[name].append(timed.cpu - cpu)
            for _, _, store in sides.values():
                store.flush(timeout=60)
                store.close()
    for name in ("base", "new"):
        print(f"{name}: {len(walls[name])} lookups  wall median "
              f"{statistics.median(walls[name]) * 1e6:.0f} us  CPU median "
              f"{statistics.median(cpus[name]) * 1e6:.0f} us")
    for label, values in (("CPU", cpus), ("wall", walls)):
        diffs = [n - b for b, n in zip(values["base"], values["new"], strict=True)]
        print(f"paired {label} difference, median: {statistics.median(diffs) * 1e6:+.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
