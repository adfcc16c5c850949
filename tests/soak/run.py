#!/usr/bin/env python3
"""Long runs through a real Postfix (``make soak``): soak, crash, lock, big inputs.

    tests/soak/run.py [--scenario soak|kill|lock|big|all] [--messages N] [--connections 10]
                      [--json FILE]

Each scenario starts its own private Postfix, capture sink and helpdesk-milter (the
example configuration, ``milter_default_action = tempfail``), drives it with a load
generator that behaves like a sending MTA (parallel sessions, retries on 4xx), and
checks counts in = counts out (every accepted message reached every original recipient;
a redirect group's recipient replaced by assistance). Everything it starts is stopped,
also on failure or Ctrl-C.

- ``soak`` (default 20,000 messages): samples the milter's RSS, file descriptors and
  threads every second; reports them over time (start, end, max, and the growth over
  the second half of the run).
- ``kill`` (default 1,000): SIGKILLs the milter three times during the run and restarts
  it; reports retries, temporary failures and the delay they cost.
- ``lock`` (default 30 s): another process holds the state database's write lock for
  ``--lock-seconds`` while mail flows; reports latencies during the lock and whether
  decisions are recorded again afterwards.
- ``big``: a 50 MB message (and one just under ``max_scan_size``) with the milter's
  peak RSS (VmHWM) before and after; one message to 10,000 recipients.

Exit status 0 when every check held; the last line printed is a JSON report (also
written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from support.faults import hold_write_lock  # noqa: E402
from support.hostile import (  # noqa: E402
    big_message,
    expected_recipients_ok,
    is_redirect_watched,
    many_recipients,
)
from support.load import (  # noqa: E402
    CountingSink,
    ProcSampler,
    account,
    proc_status,
    send_many,
    send_pipelined,
    support_messages,
)
from support.milterproc import MilterLauncher, MilterProcess  # noqa: E402
from support.net import wait_until  # noqa: E402
from support.postfix import PostfixLab  # noqa: E402
from support.world import CLIENT, example_sections  # noqa: E402

MiB = 1024 * 1024


class World:
    """Sink + Postfix + helpdesk-milter, all stopped when the ExitStack closes."""

    def __init__(self, stack: ExitStack, workdir: Path, sections: dict[str, Any] | None = None):
        self.sink = stack.enter_context(CountingSink(workdir / "sink"))
        self.lab = stack.enter_context(PostfixLab(self.sink.port))
        self.launcher = stack.enter_context(MilterLauncher(workdir / "milters", self.lab))
        self.milter: MilterProcess = self.launcher.helpdesk(sections or example_sections(),
                                                            default_action="tempfail")

    @property
    def database(self) -> str:
        return self.milter.argv[self.milter.argv.index("--config") + 1].replace(".toml", ".db")

    def drain(self, timeout: float = 300) -> None:
        self.lab.wait_queue_empty(timeout)

    def log_errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.milter.log_text().splitlines():
            if " ERROR " in line or " WARNING " in line:
                key = re.sub(r"^\S+ \S+ (\w+) (?:\w+: )?", r"\1 ", line)
                key = re.sub(r"/\S+", "PATH", re.sub(r"\d+", "N", key))[:120]
                counts[key] = counts.get(key, 0) + 1
        return counts


def mb(n: int) -> float:
    return round(n / MiB, 1)


def scenario_soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        w = World(stack, workdir)
        messages = support_messages(args.messages, tag="soak", size=5000)
        sampler = stack.enter_context(ProcSampler(lambda: w.milter.pid, interval=1.0))
        progress = [0]

        def on_accept(n: int) -> None:
            progress[0] = n
            if n % 2000 == 0:
                s = sampler.samples[-1] if sampler.samples else {}
                print(f"  {n} accepted, RSS {mb(s.get('VmRSS', 0))} MiB, fds {s.get('fds')}, "
                      f"threads {s.get('Threads')}", file=sys.stderr, flush=True)

        report = send_many(w.lab.smtp_port, messages, connections=args.connections,
                           deadline=args.messages / 5 + 300, on_accept=on_accept)
        w.drain()
        sampler.sample()
        counts = account(messages, report, w.sink.rcpts_of)
        samples = [s for s in sampler.samples if s["pid"] == w.milter.pid]
        half = samples[len(samples) // 2:]
        first = samples[min(len(samples) - 1, max(1, len(samples) // 10))]
        series = [{"t": s["t"], "rss_mib": mb(s["VmRSS"]), "fds": s["fds"],
                   "threads": s["Threads"]} for s in samples]
        result = {
            "scenario": "soak", "load": report.summary(), "counts": counts,
            "rss_mib": {"start": mb(samples[0]["VmRSS"]), "after_10pct": mb(first["VmRSS"]),
                        "end": mb(samples[-1]["VmRSS"]),
                        "max": mb(max(s["VmRSS"] for s in samples)),
                        "growth_second_half": mb(half[-1]["VmRSS"] - half[0]["VmRSS"])},
            "fds": {"start": samples[0]["fds"], "end": samples[-1]["fds"],
                    "max": max(s["fds"] for s in samples)},
            "threads": {"start": samples[0]["Threads"], "end": samples[-1]["Threads"],
                        "max": max(s["Threads"] for s in samples)},
            "milter_log_problems": w.log_errors(),
            "series_every_10s": series[::10],
        }
        first_half = samples[:len(samples) // 2] or samples
        result["fds"]["max_first_half"] = max(s["fds"] for s in first_half)
        result["fds"]["max_second_half"] = max(s["fds"] for s in half)
        # No growth: memory flat over the second half (the in-memory dedup index of the
        # last 15 minutes still fills during a short run: allow for it), descriptors
        # not climbing from one half to the other.
        result["ok"] = (counts["in"] == counts["out"] == args.messages
                        and counts["lost"] == 0
                        and result["rss_mib"]["growth_second_half"] < 20
                        and result["fds"]["max_second_half"]
                        <= 1.5 * result["fds"]["max_first_half"] + 10)
        return result


def scenario_kill(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    count = args.messages
    with ExitStack() as stack:
        w = World(stack, workdir)
        messages = support_messages(count, tag="kill", size=5000)
        at = {count * k // 4 for k in (1, 2, 3)}
        kills: list[dict[str, float]] = []
        lock = threading.Lock()
        threads: list[threading.Thread] = []

        def restart(n: int) -> None:
            with lock:
                t0 = time.monotonic()
                w.milter.kill()
                w.milter.start()
                kills.append({"at_accepted": n, "down_s": round(time.monotonic() - t0, 2)})

        def on_accept(n: int) -> None:
            if n in at:
                t = threading.Thread(target=restart, args=(n,), daemon=True)
                threads.append(t)
                t.start()

        report = send_many(w.lab.smtp_port, messages, connections=args.connections,
                           deadline=600, on_accept=on_accept)
        for t in threads:
            t.join(60)
        w.drain()
        counts = account(messages, report, w.sink.rcpts_of)
        result = {"scenario": "kill", "kills": kills, "load": report.summary(),
                  "counts": counts, "milter_log_problems": w.log_errors()}
        result["ok"] = (counts["in"] == counts["out"] == count and counts["lost"] == 0
                        and len(kills) == 3)
        return result


def decision_rows(database: str) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("select count(*) from decisions").fetchone()[0]
    except sqlite3.Error:
        return -1


def scenario_lock(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        w = World(stack, workdir)
        before = support_messages(50, tag="lockb")
        send_many(w.lab.smtp_port, before, connections=4, deadline=60)
        w.drain()
        wait_until(lambda: decision_rows(w.database) >= 40, 30, "the first rows")
        rows_before = decision_rows(w.database)
        during_msgs = support_messages(args.messages, tag="lockd")
        stop = time.monotonic() + args.lock_seconds
        with hold_write_lock(w.database):
            report = send_many(w.lab.smtp_port, during_msgs, connections=args.connections,
                               deadline=args.lock_seconds + 120)
            w.drain()
            remaining = stop - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)     # the fault's duration itself, not a wait
        rows_locked = decision_rows(w.database)
        after = support_messages(50, tag="locka")
        after_report = send_many(w.lab.smtp_port, after, connections=4, deadline=60)
        w.drain()
        # A row is kept for every message to a watched address (all of example.org in
        # the example config) or carrying a secret.
        expected = len(after_report.accepted) - sum(
            1 for m in after if not any(r.endswith("@example.org") for r in m.rcpts)
            and b"Marmotte" not in m.raw)
        recovered = True
        try:
            wait_until(lambda: decision_rows(w.database) >= rows_locked + expected, 30,
                       "rows after the lock")
        except AssertionError:
            recovered = False
        counts = account(during_msgs, report, w.sink.rcpts_of)
        result = {"scenario": "lock", "lock_seconds": args.lock_seconds,
                  "load_during_lock": report.summary(), "counts": counts,
                  "rows": {"before": rows_before, "after_lock": rows_locked,
                           "end": decision_rows(w.database)},
                  "recorded_again_after_lock": recovered,
                  "milter_log_problems": w.log_errors()}
        result["ok"] = (counts["in"] == counts["out"] == args.messages
                        and counts["lost"] == 0 and recovered
                        and report.summary()["latency_max"] < 5)
        return result


def scenario_big(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": "big"}
    with ExitStack() as stack:
        w = World(stack, workdir)
        w.lab.postconf({"smtpd_recipient_limit": "20000"})
        pid = w.milter.pid
        assert pid is not None
        warm = support_messages(20, tag="warm", size=64 * 1024)
        send_many(w.lab.smtp_port, warm, connections=2, deadline=60)
        w.drain()
        for label, size in (("50MB", 50 * MiB), ("under_cap", 10 * MiB - 64 * 1024)):
            before = proc_status(pid)
            raw = big_message(size, tag=f"big{label}")
            t0 = time.monotonic()
            reply = send_pipelined(w.lab.smtp_port, raw, CLIENT, ["contact@example.org"])
            w.drain()
            after = proc_status(pid)
            mid = re.search(rb"Message-ID: <([^>]+)>", raw).group(1).decode()  # type: ignore[union-attr]
            out[label] = {"size_mib": mb(size), "smtp": reply.code,
                          "seconds": round(time.monotonic() - t0, 1),
                          "delivered_to": w.sink.rcpts_of(mid),
                          "vmhwm_before_mib": mb(before["VmHWM"]),
                          "vmhwm_after_mib": mb(after["VmHWM"]),
                          "vmhwm_growth_mib": mb(after["VmHWM"] - before["VmHWM"])}
        raw, rcpts = many_recipients(10_000)
        t0 = time.monotonic()
        reply = send_pipelined(w.lab.smtp_port, raw, CLIENT, rcpts)
        w.drain()
        mid = re.search(rb"Message-ID: <([^>]+)>", raw).group(1).decode()  # type: ignore[union-attr]
        got = w.sink.rcpts_of(mid)
        lost = expected_recipients_ok(rcpts, got, is_redirect_watched)
        out["rcpt_10000"] = {"smtp": reply.code, "seconds": round(time.monotonic() - t0, 1),
                             "delivered": len(got), "distinct": len(set(got)),
                             "lost": len(lost)}
        out["ok"] = (out["50MB"]["vmhwm_growth_mib"] < 16 and not lost
                     and out["50MB"]["delivered_to"] == ["contact@example.org"])
        return out


SCENARIOS = {"soak": scenario_soak, "kill": scenario_kill, "lock": scenario_lock,
             "big": scenario_big}
DEFAULT_MESSAGES = {"soak": 20_000, "kill": 1_000, "lock": 300, "big": 0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="soak")
    p.add_argument("--messages", type=int, help="messages to send (per scenario default)")
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--lock-seconds", type=float, default=30.0)
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        ns = argparse.Namespace(**vars(args))
        ns.messages = args.messages or DEFAULT_MESSAGES[name]
        print(f"== {name} ==", file=sys.stderr, flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"hdm-soak-{name}-") as tmp:
            result = SCENARIOS[name](ns, Path(tmp))
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps({k: v for k, v in result.items() if k != "series_every_10s"},
                         indent=1), file=sys.stderr, flush=True)
        results.append(result)
    report = {"ok": all(r["ok"] for r in results), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
