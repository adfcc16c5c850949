"""Section 2 (and the milter half of section 4): the milter alone, over its socket.

No Postfix: worker processes play the MTA side of the protocol
(``workers.milter_job``) against the no-op milter and helpdesk-milter, each on a unix
socket, at 1 and at C concurrent connections, one milter connection per message.
Reported: messages/s, and the latency the milter adds to a message, from sending
end-of-message to its final reply (p50, p95, p99).

helpdesk-milter gets a fresh state database for every run (as in section 1). Each
figure is the median over the repetitions; the modes and connection counts are
interleaved within each repetition.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from bench import mix as mixmod
from bench import sysstat, workers
from bench.inproc import SHAPES, percentile, runs_for
from bench.mix import MixMessage
from bench.throughput import BenchError, rotated
from support.milterproc import MilterLauncher, MilterProcess

MODES = ("noop", "helpdesk")
PACED_MAX = 1000


def milter_batch(messages: Sequence[MixMessage]) -> list[workers.MilterMessage]:
    out: list[workers.MilterMessage] = []
    for m in messages:
        headers, body = mixmod.split(m.raw)
        out.append((m.mail_from, m.rcpts, headers, body))
    return out


def drive(pool: Pool, socket_path: Path, batch: Sequence[workers.MilterMessage],
          concurrency: int, timeout: float, rate: float | None = None) -> dict[str, Any]:
    """Run ``batch`` over ``concurrency`` worker processes; latencies in seconds.

    Without ``rate`` each worker sends its next message as soon as the previous one
    is answered (the milter's capacity, and the latency when it is saturated); with
    ``rate`` (messages/s in all) the messages leave on a fixed schedule, worker k
    offset by k/rate: the latency under a steady load below capacity."""
    slices = [list(batch[k::concurrency]) for k in range(concurrency)]
    start_at = time.time() + 0.3
    interval = concurrency / rate if rate else 0.0
    pending = [pool.apply_async(workers.milter_job,
                                (str(socket_path), s, start_at + (k / rate if rate else 0.0),
                                 120.0, interval))
               for k, s in enumerate(slices) if s]
    results = [p.get(timeout) for p in pending]
    errors = sum(r["errors"] for r in results)
    replies: dict[str, int] = {}
    for r in results:
        for k, v in r["replies"].items():
            replies[k] = replies.get(k, 0) + v
    bad = {k: v for k, v in replies.items() if k not in ("accept", "continue")}
    if errors or bad:
        first = [e for r in results for e in r["first_errors"]][:3]
        raise BenchError(f"milter on {socket_path}: {errors} protocol errors, "
                         f"replies {replies}: {first}")
    latencies = sorted(x for r in results for x in r["latencies"])
    elapsed = max(r["end"] for r in results) - start_at
    return {"messages": len(latencies), "elapsed_s": elapsed,
            "msgs_per_s": len(latencies) / elapsed, "latencies": latencies,
            "actions": sum(r["actions"] for r in results)}


def _pcts(latencies: Sequence[float]) -> dict[str, float]:
    ms = [x * 1e3 for x in latencies]
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99), "max_ms": ms[-1] if ms else float("nan")}


class _Milters:
    """The no-op milter (started once) and a fresh helpdesk-milter per run."""

    def __init__(self, stack: ExitStack, workdir: Path, sections: Mapping[str, Any]):
        self.launcher = stack.enter_context(MilterLauncher(workdir / "alone"))
        self.noop = self.launcher.noop(noreply=True, attach=False)
        self.sections = sections
        self.count = 0

    def fresh_helpdesk(self) -> MilterProcess:
        self.count += 1
        return self.launcher.helpdesk(self.sections, name=f"alone-{self.count}",
                                      attach=False)


def run(pool: Pool, workdir: Path, messages: Sequence[MixMessage],
        warmup: Sequence[MixMessage], *, sections: Mapping[str, Any], concurrency: int,
        repeats: int, log: Callable[[str], None],
        rates: Sequence[float] = ()) -> dict[str, Any]:
    batch = milter_batch(messages)
    warm = milter_batch(warmup[:20])
    timeout = 120 + len(messages) / 10 + (PACED_MAX / min(rates) if rates else 0)
    # (connections, paced rate or None): saturated at 1 and C, then C at steady rates
    levels: list[tuple[int, float | None]] = [(c, None) for c in sorted({1, concurrency})]
    levels += [(concurrency, r) for r in sorted(set(rates))]
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        milters = _Milters(stack, workdir, sections)
        # A warm-up through each milter: imports, regex compilation, page cache.
        drive(pool, milters.noop.socket_path, warm, 1, timeout)
        for rep in range(repeats):
            for conc, paced in levels:
                for mode in rotated(MODES, rep):
                    milter = milters.noop if mode == "noop" else milters.fresh_helpdesk()
                    try:
                        drive(pool, milter.socket_path, warm, 1, timeout)   # warm-up
                        cpu0 = sysstat.process_cpu(milter.pid or 0)
                        # paced runs take 1000 messages at most: 10 s at 100/s
                        r = drive(pool, milter.socket_path, batch[:PACED_MAX] if paced else batch,
                                  conc, timeout, paced)
                        cpu1 = sysstat.process_cpu(milter.pid or 0)
                    finally:
                        if mode == "helpdesk":
                            milter.stop()
                    runs.append({"mode": mode, "concurrency": conc, "rate": paced, "rep": rep,
                                 "msgs_per_s": r["msgs_per_s"], **_pcts(r["latencies"]),
                                 "milter_cpu_us_per_msg": (cpu1 - cpu0) / r["messages"] * 1e6
                                 if cpu0 is not None and cpu1 is not None else None,
                                 "latencies": r["latencies"]})
                    log(f"  rep {rep + 1}/{repeats} {mode:8} c={conc:<3}"
                        + (f" at {paced:g}/s" if paced else "")
                        + f" {r['msgs_per_s']:7.1f} msg/s  p50 {runs[-1]['p50_ms']:.2f} ms"
                        f"  p99 {runs[-1]['p99_ms']:.2f} ms")
    return summarize(runs, len(messages))


def level_name(r: Mapping[str, Any]) -> str:
    """``helpdesk@10`` (saturated) or ``helpdesk@10/100`` (paced at 100 msg/s)."""
    return f"{r['mode']}@{r['concurrency']}" + (f"/{r['rate']:g}" if r.get("rate") else "")


def summarize(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    table = []
    levels = sorted({(r["concurrency"], r.get("rate") or 0.0) for r in runs})
    for mode in MODES:
        for conc, paced in levels:
            rs = [r for r in runs if r["mode"] == mode and r["concurrency"] == conc
                  and (r.get("rate") or 0.0) == paced]
            if not rs:
                continue
            cpu = [r["milter_cpu_us_per_msg"] for r in rs
                   if r["milter_cpu_us_per_msg"] is not None]
            table.append({
                "mode": mode, "concurrency": conc, "rate": paced or None,
                "runs": [round(r["msgs_per_s"], 1) for r in rs],
                "msgs_per_s": statistics.median(r["msgs_per_s"] for r in rs),
                **{k: statistics.median(r[k] for r in rs)
                   for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
                "milter_cpu_us_per_msg": statistics.median(cpu) if cpu else None,
            })
    # Pooled latencies (all repetitions) for the chart.
    pooled: dict[str, list[float]] = {level_name(r): [] for r in runs}
    for r in runs:
        pooled[level_name(r)].extend(r["latencies"])
    return {"messages": n, "table": table,
            "runs": [{k: v for k, v in r.items() if k != "latencies"} for r in runs],
            "latencies_ms": {k: sorted(x * 1e3 for x in v) for k, v in pooled.items()}}


def size_latency(pool: Pool, workdir: Path, sizes: Sequence[int], repeats: int, *,
                 sections: Mapping[str, Any], signer: mixmod.Signer | None,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Section 4, milter half: EOM -> reply latency for one message of each size, one
    connection, no-op milter and helpdesk-milter. Each measured message differs (its
    own seed), so none is a duplicate of the previous one."""
    out = []
    with ExitStack() as stack:
        milters = _Milters(stack, Path(tempfile.mkdtemp(dir=workdir)), sections)
        helpdesk = milters.fresh_helpdesk()
        stack.callback(helpdesk.stop)
        warm = milter_batch([mixmod.sized(5_000, "text", seed="warm-up", signer=signer)])
        for milter in (milters.noop, helpdesk):
            drive(pool, milter.socket_path, warm, 1, 600)
        for shape in SHAPES:
            for size in sizes:
                runs = runs_for(size, repeats)
                messages = [mixmod.sized(size, shape, seed=f"{shape}-{size}-{k}", signer=signer)
                            for k in range(runs)]
                batch = milter_batch(messages)
                row: dict[str, Any] = {"shape": shape, "nominal": size,
                                       "size": messages[0].size, "runs": runs}
                for mode, milter in (("noop", milters.noop), ("helpdesk", helpdesk)):
                    r = drive(pool, milter.socket_path, batch, 1, 600)
                    row[f"{mode}_ms"] = statistics.median(r["latencies"]) * 1e3
                out.append(row)
                log(f"  {shape:10} {size:>9} B  noop {row['noop_ms']:8.2f} ms"
                    f"  helpdesk {row['helpdesk_ms']:8.2f} ms")
    return out
