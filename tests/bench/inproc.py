"""In-process measurements: the decision's CPU time, with no socket and no Postfix.

``Engine.process_raw`` is run in this thread under ``stages.recording()``, which adds
each stage's CPU time (``time.thread_time``) to a dict; whatever stage names the code
marks today ("parse", "classify", "store", later "dedup", "secrets", ...) are
reported. The rest of the decision (policy glue, headers, the log line) is reported
as "(unstaged)". The store's writer thread runs beside the decision: its CPU is the
process's CPU minus this thread's, over a pass that ends with ``store.flush()``.

Every pass uses a fresh engine and a fresh state database, so that repeating the mix
does not turn every message into a duplicate of the previous pass.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import mix as mixmod
from bench import state
from bench.mix import MixMessage
from helpdesk_milter import stages
from helpdesk_milter.classify import RuleSet
from helpdesk_milter.config import Config, load_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from helpdesk_milter.policy import Policy
from helpdesk_milter.store import SQLiteStore
from support.milterproc import write_config

UNSTAGED = "(unstaged)"


def write_config_file(path: Path, database: Path, socket_path: Path,
                      sections: Mapping[str, Any]) -> Path:
    """A config file with these sections (run.py: the example configuration, plus the
    bench's DNS resolver), our socket and database: what the milters also get."""
    return write_config(path, socket_path=socket_path, database=database, sections=sections)


def quiet_info_logging() -> None:
    """Log at info level, as the daemon does, but into /dev/null: the log line's
    formatting cost is part of the decision, the terminal is not."""
    logging.basicConfig(level=logging.INFO, force=True,
                        stream=open(os.devnull, "w"),  # noqa: SIM115 (process lifetime)
                        format="%(asctime)s %(levelname)s %(message)s")


class EngineFactory:
    """Builds engines the way ``helpdesk-milter run`` does (cli.cmd_run): config,
    rules, SQLiteStore on the config's database, Policy. Keep this in step with
    cmd_run when it learns new components (DNS resolver, dedup index...)."""

    def __init__(self, config_path: Path):
        self.config: Config = load_config(config_path)
        self.rules = RuleSet.load(self.config.classifier.rules_file or None,
                                  self.config.classifier.weights)

    def make(self, database: Path) -> tuple[Engine, SQLiteStore]:
        config = replace(self.config, milter=replace(self.config.milter,
                                                     database=str(database)))
        store = SQLiteStore(database, window=config.dedup.window,
                            similarity=config.dedup.similarity)
        engine = Engine(config, store=store, policy=Policy(config, rules=self.rules))
        return engine, store


@dataclass
class Pass:
    """One pass of the engine over a list of messages."""

    totals: list[float]                  # CPU seconds per message (this thread)
    stages: list[dict[str, float]]       # CPU seconds per stage per message
    writer_cpu: float                    # store writer thread, whole pass
    flush_wall: float                    # seconds store.flush() waited at the end
    outcomes: Counter[str]


def run_pass(factory: EngineFactory, database: Path, messages: Sequence[MixMessage], *,
             fresh: bool = True, skip: int = 0) -> Pass:
    """Decide on every message with a new engine; measure CPU.

    ``fresh`` starts from an empty database (else the file is used as it is: a
    pre-filled state). The first ``skip`` messages are a warm-up: left out of the
    per-message figures (the writer's CPU is prorated).
    """
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    engine, store = factory.make(database)
    totals: list[float] = []
    per_stage: list[dict[str, float]] = []
    outcomes: Counter[str] = Counter()
    try:
        proc0, thread0 = time.process_time(), time.thread_time()
        for n, m in enumerate(messages):
            env = Envelope(mail_from=m.mail_from, rcpts=m.rcpts, queue_id=f"B{m.index:09X}",
                           client_addr="192.0.2.10")
            with stages.recording() as times:
                t0 = time.thread_time()
                outcome = engine.process_raw(env, m.raw)
                total = time.thread_time() - t0
            if n < skip:
                continue
            totals.append(total)
            per_stage.append(dict(times))
            d = outcome.decision
            outcomes[f"action={d.action}"] += 1
            outcomes[f"verdict={d.verdict}"] += 1
            for name, _ in d.add_headers:
                outcomes[f"header={name}"] += 1
            if d.new_body is not None:
                outcomes["body-replaced"] += 1
            dkim_result = getattr(d, "dkim", None)      # the DKIM results, when verified
            if dkim_result:
                outcomes[f"dkim={dkim_result}"] += 1
        flush0 = time.monotonic()
        store.flush(timeout=120)
        flush_wall = time.monotonic() - flush0
        writer = (time.process_time() - proc0) - (time.thread_time() - thread0)
    finally:
        store.close()
    share = (len(messages) - skip) / max(1, len(messages))
    return Pass(totals, per_stage, max(0.0, writer) * share, flush_wall, outcomes)


def _median_over_passes(passes: Sequence[Pass]) -> tuple[list[float], list[dict[str, float]]]:
    """Per message: the median over passes of its total and of each stage."""
    n = len(passes[0].totals)
    names = sorted({k for p in passes for d in p.stages for k in d})
    totals = [statistics.median(p.totals[i] for p in passes) for i in range(n)]
    per_stage = [{k: statistics.median(p.stages[i].get(k, 0.0) for p in passes)
                  for k in names} for i in range(n)]
    return totals, per_stage


def _dist(values_s: Iterable[float]) -> dict[str, float]:
    """mean/median/p95/p99/max of seconds, in µs."""
    v = sorted(values_s)
    if not v:
        return {}
    us = [x * 1e6 for x in v]
    return {"mean_us": statistics.fmean(us), "median_us": statistics.median(us),
            "p95_us": percentile(us, 95), "p99_us": percentile(us, 99), "max_us": us[-1]}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def stage_costs(factory: EngineFactory, workdir: Path, messages: Sequence[MixMessage],
                warmup: Sequence[MixMessage], repeats: int) -> dict[str, Any]:
    """Section 3: CPU per message by stage over the mix (median of ``repeats`` passes
    per message, after a warm-up pass)."""
    run_pass(factory, workdir / "warmup.db", warmup)
    passes = [run_pass(factory, workdir / f"stages-{r}.db", messages)
              for r in range(repeats)]
    totals, per_stage = _median_over_passes(passes)
    names = sorted({k for d in per_stage for k in d})
    unstaged = [max(0.0, t - sum(d.values())) for t, d in zip(totals, per_stage, strict=True)]
    nested = sum(1 for t, d in zip(totals, per_stage, strict=True) if sum(d.values()) > t * 1.02)
    rows: dict[str, dict[str, float]] = {}
    for name in [*names, UNSTAGED]:
        values = unstaged if name == UNSTAGED else [d.get(name, 0.0) for d in per_stage]
        ran = [x for x in values if x > 0]
        rows[name] = {"mean_us": statistics.fmean(values) * 1e6,
                      "median_when_run_us": statistics.median(ran) * 1e6 if ran else 0.0,
                      "share_run": len(ran) / len(values)}
    five_kb = [t for t, m in zip(totals, messages, strict=True) if 4000 <= m.size <= 6000]
    sizes = [m.size for m in messages]
    n = len(messages)
    writer = statistics.median(p.writer_cpu for p in passes) / n
    return {
        "messages": n, "repeats": repeats, "stages": rows,
        "total": _dist(totals),
        "total_per_kb_us": statistics.fmean(totals) * 1e6 / (statistics.fmean(sizes) / 1000),
        "five_kb": {"messages": len(five_kb), **_dist(five_kb)},
        "store_writer_us_per_msg": writer * 1e6,
        "store_flush_wall_s": statistics.median(p.flush_wall for p in passes),
        "stages_nest": nested > 0,
        "outcomes": dict(sorted(passes[0].outcomes.items())),
    }


SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
SHAPES = ("text", "attachment")


def runs_for(size: int, repeats: int) -> int:
    """How many runs per size: many for small messages, a few for the big ones."""
    if size <= 100_000:
        return max(3, 5 * repeats)
    if size <= 1_000_000:
        return max(2, repeats + 1)
    return max(1, repeats)


def size_costs(factory: EngineFactory, workdir: Path, sizes: Sequence[int],
               repeats: int, signer: mixmod.Signer | None = None) -> list[dict[str, Any]]:
    """Section 4a: decision CPU for one support request of each size and shape."""
    out = []
    warm = mixmod.sized(5_000, "text", signer=signer)
    for shape in SHAPES:
        for size in sizes:
            m = mixmod.sized(size, shape, signer=signer)
            run_pass(factory, workdir / "size-warm.db", [warm])
            runs = [run_pass(factory, workdir / "size.db", [m])
                    for _ in range(runs_for(size, repeats))]
            totals = [r.totals[0] for r in runs]
            names = sorted({k for r in runs for k in r.stages[0]})
            out.append({
                "shape": shape, "size": m.size, "nominal": size, "runs": len(runs),
                "cpu_us": statistics.median(totals) * 1e6,
                "stages_us": {k: statistics.median(r.stages[0].get(k, 0.0) for r in runs)
                              * 1e6 for k in names},
                "action": next(iter(runs[0].outcomes)).removeprefix("action="),
            })
    return out


def state_costs(factory: EngineFactory, workdir: Path, db_rows: Sequence[int],
                messages: Sequence[MixMessage], warmup: Sequence[MixMessage],
                repeats: int) -> list[dict[str, Any]]:
    """Section 4b: per-message cost with a state database of each size.

    For each size: a database is pre-filled (``bench.state``), then the engine runs
    the mix with its store *on that file* (so its writes and any lookups hit the big
    tables and indexes), and each registered lookup is timed.
    """
    out = []
    for rows in db_rows:
        path = workdir / f"state-{rows}.db"
        info = state.prefill(path, rows)
        lookups = state.time_lookups(path)
        passes = [run_pass(factory, path, [*warmup, *messages], fresh=False,
                           skip=len(warmup)) for _ in range(max(1, repeats))]
        totals, per_stage = _median_over_passes(passes)
        store_stage = [d.get("store", 0.0) for d in per_stage]
        out.append({
            "rows": rows, "file_mb": info["file_mb"], "prefill_s": info["seconds"],
            "tables": info["tables"], "lookups_us": lookups,
            "decision_cpu": _dist(totals),
            "store_stage_mean_us": statistics.fmean(store_stage) * 1e6,
            "store_writer_us_per_msg": statistics.median(p.writer_cpu for p in passes)
            / len(messages) * 1e6,
        })
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return out

