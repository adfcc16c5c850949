#!/usr/bin/env python3
"""Paired CPU time of the decision: a base version of some modules against the
working tree's, message by message, in one process.

    .venv/bin/python scripts/decision-cpu-paired.py BASE_DIR [--messages 1000] [--passes 3]

``BASE_DIR`` holds the base version of some modules of ``helpdesk_milter`` (for
example ``dedup.py`` and ``policy.py`` copied before a change), and optionally of its
data files in ``BASE_DIR/models/`` and ``BASE_DIR/rules/`` (a model before retraining).
The package is copied into a temporary directory as ``helpdesk_milter_base``, those
files replaced by ``BASE_DIR``'s; both packages are imported side by side, each with its own engine
and fresh SQLite file on the example configuration.  Every message of the bench mix
(``generate(N)``) goes through both engines, the order alternating from one message
to the next, under each package's ``stages.recording()`` (``time.thread_time``), as
bench section 3 does; the log line goes to /dev/null at INFO level.  Passes repeat
with fresh engines; per message the median over passes is kept.

Prints, for 5 KB messages (4000-6000 bytes, bench section 3's line) and for the whole
mix: the median per-message total of base and new, the median of the paired
differences, and each stage's median (when run).  A noisy machine moves both sides
alike; the paired difference is the figure to read.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from bench.mix import generate  # noqa: E402
from support.milterproc import dump_toml  # noqa: E402
from support.world import example_sections  # noqa: E402

UNSTAGED = "(unstaged)"


def load_base(base_dir: Path, workdir: Path, name: str = "helpdesk_milter_base") -> str:
    """Copy the package as ``name`` with ``base_dir``'s files over it."""
    target = workdir / "pkgs" / name
    shutil.copytree(ROOT / "milter" / "helpdesk_milter", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for f in base_dir.glob("*.py"):
        shutil.copy(f, target / f.name)
    # a model or rules file to compare (BASE_DIR/models/request.json...): data files
    # in a sub-folder named as the package's own
    for sub in ("models", "rules"):
        for f in (base_dir / sub).glob("*") if (base_dir / sub).is_dir() else ():
            shutil.copy(f, target / sub / f.name)
    sys.path.insert(0, str(target.parent))
    return name


class Side:
    """One package's engine over a fresh database."""

    def __init__(self, package: str, database: Path):
        self.engine_mod = importlib.import_module(f"{package}.engine")
        config_mod = importlib.import_module(f"{package}.config")
        self.message_mod = importlib.import_module(f"{package}.message")
        self.stages: ModuleType = importlib.import_module(f"{package}.stages")
        store_mod = importlib.import_module(f"{package}.store")
        data = example_sections()
        data["milter"]["database"] = str(database)
        config = config_mod.parse_config(dump_toml(data))
        self.store = store_mod.SQLiteStore(database, window=config.dedup.window,
                                           similarity=config.dedup.similarity)
        self.engine = self.engine_mod.Engine(config, store=self.store,
                                             dnsfunc=lambda *a, **k: None)

    def run(self, m: Any) -> tuple[float, dict[str, float], Any]:
        env = self.message_mod.Envelope(mail_from=m.mail_from, rcpts=m.rcpts,
                                        queue_id=f"B{m.index:09X}", client_addr="192.0.2.10")
        with self.stages.recording() as times:
            t0 = time.thread_time()
            outcome = self.engine.process_raw(env, m.raw)
            total = time.thread_time() - t0
        return total, dict(times), outcome.decision

    def close(self) -> None:
        self.store.flush(timeout=120)
        self.store.close()


def _values(name: str, totals: list[float], stages: list[dict[str, float]]) -> list[float]:
    """Per message, the CPU seconds of stage ``name`` (UNSTAGED: the rest)."""
    if name == UNSTAGED:
        return [max(0.0, t - sum(d.values())) for t, d in zip(totals, stages, strict=True)]
    return [d.get(name, 0.0) for d in stages]


def summary(label: str, base: list[float], new: list[float],
            base_stages: list[dict[str, float]], new_stages: list[dict[str, float]]) -> None:
    diffs = [n - b for b, n in zip(base, new, strict=True)]
    mb, mn = statistics.median(base) * 1e6, statistics.median(new) * 1e6
    print(f"{label}: {len(base)} messages  base {mb:7.1f} us  new {mn:7.1f} us  "
          f"paired diff median {statistics.median(diffs) * 1e6:+7.1f} us "
          f"({(mn / mb - 1) * 100:+.1f} %)")
    names = sorted({k for d in base_stages + new_stages for k in d})
    for name in [*names, UNSTAGED]:
        vb, vn = _values(name, base, base_stages), _values(name, new, new_stages)
        rb, rn = [x for x in vb if x > 0], [x for x in vn if x > 0]
        pairs = [n - b for b, n in zip(vb, vn, strict=True) if b > 0 or n > 0]
        if not rb and not rn:
            continue
        print(f"    {name:14s} base {statistics.median(rb) * 1e6 if rb else 0:7.1f}  "
              f"new {statistics.median(rn) * 1e6 if rn else 0:7.1f}  "
              f"paired {statistics.median(pairs) * 1e6 if pairs else 0:+7.1f} us (when run)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="folder of base module files")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--by-pass", action="store_true",
                        help="alternate whole passes (one engine at a time) instead of "
                             "messages: no cache shared between the two engines in a pass")
    parser.add_argument("--new", type=Path, default=None,
                        help="folder of module files for the new side (default: the tree's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, force=True,
                        stream=open(os.devnull, "w"),  # noqa: SIM115 (process lifetime)
                        format="%(asctime)s %(levelname)s %(message)s")
    mix = generate(args.messages, seed=1)
    warm = generate(20, seed=1001)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base_pkg = load_base(args.base, workdir)
        new_pkg = "helpdesk_milter" if args.new is None else load_base(
            args.new, workdir, "helpdesk_milter_new")
        totals: dict[str, list[list[float]]] = {"base": [], "new": []}
        stages: dict[str, list[list[dict[str, float]]]] = {"base": [], "new": []}
        differ = 0
        for p in range(-1, args.passes):
            sides = {"base": Side(base_pkg, workdir / f"base-{p}.db"),
                     "new": Side(new_pkg, workdir / f"new-{p}.db")}
            run_t: dict[str, list[float]] = {"base": [], "new": []}
            run_s: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
            messages = warm if p < 0 else mix
            decided: dict[str, list[str]] = {"base": [], "new": []}
            if args.by_pass:
                steps = [(name, m) for name in (("base", "new") if p % 2 == 0
                                                else ("new", "base")) for m in messages]
            else:
                steps = [(name, m) for i, m in enumerate(messages)
                         for name in (("base", "new") if (i + max(p, 0)) % 2 == 0
                                      else ("new", "base"))]
            for name, m in steps:
                t, s, d = sides[name].run(m)
                run_t[name].append(t)
                run_s[name].append(s)
                decided[name].append(repr(d))
            differ += sum(a != b for a, b in zip(decided["base"], decided["new"], strict=True))
            for side in sides.values():
                side.close()
            if p >= 0:
                for name in ("base", "new"):
                    totals[name].append(run_t[name])
                    stages[name].append(run_s[name])
    n = len(mix)
    med_t = {k: [statistics.median(v[r][i] for r in range(args.passes)) for i in range(n)]
             for k, v in totals.items()}
    med_s = {k: [{s: statistics.median(v[r][i].get(s, 0.0) for r in range(args.passes))
                  for s in {s for r in range(args.passes) for s in v[r][i]}}
                 for i in range(n)] for k, v in stages.items()}
    five = [i for i, m in enumerate(mix) if 4000 <= m.size <= 6000]
    print(f"decisions that differ between base and new: {differ}")
    for label, idx in (("5 KB messages", five), ("whole mix", list(range(n)))):
        summary(label, [med_t["base"][i] for i in idx], [med_t["new"][i] for i in idx],
                [med_s["base"][i] for i in idx], [med_s["new"][i] for i in idx])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
