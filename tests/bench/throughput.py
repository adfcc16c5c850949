"""Section 1: throughput through a private real Postfix, side by side.

One Postfix lab (``support.postfix.PostfixLab``) relays everything to one capture
sink (``support.sink.Sink``, in memory). Three modes share them:

- ``none``: no milter;
- ``noop``: the no-op pymilter milter (``support/noop_milter.py --noreply``): the
  same callbacks and no-reply steps as helpdesk-milter, no work: the floor of any
  pymilter milter;
- ``replay``: ``support/replay_milter.py``: decides nothing, applies to each message
  the actions helpdesk-milter decided for it (computed in-process beforehand,
  ``bench/effects.py``): what the changes themselves cost Postfix;
- ``helpdesk``: ``helpdesk-milter run`` on the example configuration (plus the
  bench's local DNS resolver for DKIM keys), a unix socket,
  a fresh state database each repetition (the mix repeats from one repetition to
  the next; a fresh state keeps every repetition equal instead of turning the
  later ones into duplicates).

Each repetition runs every mode once, in a rotated order (drift on a shared machine
then hits all modes alike). Each run: switch the milter (``set_milter`` returns once
new SMTP sessions use it), send a warm-up batch (messages from another seed) and
wait for it, then send the N messages of the mix over C concurrent connections and
time from the common start until the sink holds all N. Counts in = counts out: every
message must be accepted and delivered exactly once (else ``BenchError``).
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from bench import effects, inproc, sysstat, workers
from bench.mix import MixMessage
from support.milterproc import MilterLauncher, MilterProcess
from support.postfix import PostfixLab
from support.sink import Delivery, Sink, normalize_message_id

MODES = ("none", "noop", "replay", "helpdesk")
REPLAY_MILTER = Path(__file__).parent.parent / "support" / "replay_milter.py"


class BenchError(RuntimeError):
    """A run broke the benchmark's invariants (a message lost, refused or doubled)."""


def rotated(items: Sequence[str], k: int) -> list[str]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def _smtp_batch(messages: Sequence[MixMessage]) -> list[workers.SmtpMessage]:
    return [(m.mail_from, m.rcpts, workers.stuff(m.raw)) for m in messages]


def send(pool: Pool, port: int, batch: Sequence[workers.SmtpMessage], concurrency: int,
         per_connection: int, timeout: float) -> tuple[float, dict[str, Any]]:
    """Send ``batch`` over ``concurrency`` worker processes; returns (start, summary)."""
    slices = [list(batch[k::concurrency]) for k in range(concurrency)]
    start_at = time.time() + 0.3
    pending = [pool.apply_async(workers.smtp_job, (port, s, per_connection, start_at))
               for s in slices if s]
    results = [p.get(timeout) for p in pending]
    summary = {"accepted": sum(r["accepted"] for r in results),
               "errors": sum(r["errors"] for r in results),
               "first_errors": [e for r in results for e in r["first_errors"]][:5],
               "send_end": max(r["end"] for r in results)}
    return start_at, summary


def _check(mode: str, messages: Sequence[MixMessage], summary: dict[str, Any],
           got: Sequence[Delivery]) -> None:
    """Counts in = counts out, by Message-ID (duplicates in the mix share one)."""
    if summary["errors"] or summary["accepted"] != len(messages):
        raise BenchError(f"{mode}: {summary['accepted']} of {len(messages)} messages "
                         f"accepted, {summary['errors']} refused: {summary['first_errors']}")
    sent: dict[str, int] = {}
    for m in messages:
        sent[m.message_id] = sent.get(m.message_id, 0) + 1
    seen: dict[str, int] = {}
    for d in got:
        mid = d.message_id or "(none)"
        seen[mid] = seen.get(mid, 0) + 1
    if len(got) != len(messages) or seen != {normalize_message_id(k): v
                                             for k, v in sent.items()}:
        missing = sum(max(0, v - seen.get(k, 0)) for k, v in sent.items())
        extra = sum(max(0, v - sent.get(k, 0)) for k, v in seen.items())
        raise BenchError(f"{mode}: sent {len(messages)} messages, the sink got {len(got)} "
                         f"deliveries ({missing} missing, {extra} unexpected)")


def _milter_marks(got: Sequence[Delivery]) -> dict[str, int]:
    """How many deliveries carry each X-Helpdesk-* header (is the milter working?)."""
    marks: dict[str, int] = {}
    for d in got:
        head = d.raw.split(b"\r\n\r\n", 1)[0].lower()
        for name in (b"x-helpdesk-request", b"x-helpdesk-routed", b"x-helpdesk-duplicate",
                     b"x-helpdesk-redacted", b"authentication-results"):
            if b"\n" + name + b":" in head:
                marks[name.decode()] = marks.get(name.decode(), 0) + 1
    return marks


def run(pool: Pool, workdir: Path, messages: Sequence[MixMessage],
        warmup: Sequence[MixMessage], *, sections: Mapping[str, Any], concurrency: int,
        per_connection: int, repeats: int, log: Callable[[str], None],
        modes: Sequence[str] = MODES,
        variants: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Every mode of ``modes``, ``repeats`` times, interleaved.  A mode named in
    ``variants`` is helpdesk-milter run with those config sections instead of
    ``sections`` (``helpdesk-all``: the same with ``secrets.scope = "all"``, say)."""
    helpdesks = {"helpdesk": sections, **(variants or {})}
    batch = _smtp_batch(messages)
    warm_batch = _smtp_batch(warmup)
    timeout = 120 + len(messages) / 20
    runs: list[dict[str, Any]] = []
    # aiosmtpd logs every session at info level: not in the sink's hot path.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    with ExitStack() as stack:
        sink = stack.enter_context(Sink(workdir / "sink", write_files=False))
        lab = stack.enter_context(PostfixLab(sink.port))
        launcher = stack.enter_context(MilterLauncher(workdir / "milters", lab))
        noop = launcher.noop(noreply=True, attach=False)
        negotiation = {"noop": workers.negotiated(str(noop.socket_path))}
        actions = workdir / "replay-actions.json"
        if "replay" in modes:
            factory = inproc.EngineFactory(inproc.write_config_file(
                workdir / "replay.toml", workdir / "replay.db", workdir / "replay.sock",
                sections))
            counts = effects.write_actions(factory, messages, actions)
            log(f"helpdesk's actions on the mix, for the replay milter: {counts}")
        log(f"postfix lab on 127.0.0.1:{lab.smtp_port}, sink on :{sink.port}")
        for rep in range(repeats):
            for mode in rotated(modes, rep):
                fresh: MilterProcess | None = None      # helpdesk, replay: one per run
                if mode in helpdesks:
                    fresh = launcher.helpdesk(helpdesks[mode], name=f"{mode}-{rep}",
                                              attach=False)
                    negotiation.setdefault(mode, workers.negotiated(
                        str(fresh.socket_path)))
                    launcher.attach(fresh)
                elif mode == "replay":
                    fresh = _replay(launcher, actions, f"replay-{rep}")
                    launcher.attach(fresh)
                else:
                    launcher.attach(noop if mode == "noop" else None)
                try:
                    result = _one_run(pool, lab, sink, mode, messages, batch, warmup,
                                      warm_batch, concurrency, per_connection, timeout,
                                      fresh or (noop if mode == "noop" else None))
                finally:
                    if fresh is not None:
                        launcher.attach(None)
                        fresh.stop()
                result["rep"] = rep
                runs.append(result)
                log(f"  rep {rep + 1}/{repeats} {mode:8} {result['msgs_per_s']:7.1f} msg/s"
                    f"  cpu {result['cpu_busy_pct']:.0f}%"
                    + (f"  milter {result['milter_cpu_us_per_msg']:.0f} µs/msg"
                       if result.get("milter_cpu_us_per_msg") is not None else ""))
    return summarize(runs, negotiation, len(messages), concurrency, per_connection,
                     modes=modes)


def _replay(launcher: MilterLauncher, actions: Path, name: str) -> MilterProcess:
    """A fresh replay milter (each run replays the decisions from the first)."""
    socket_path = launcher.socket_path(name)
    milter = MilterProcess([sys.executable, str(REPLAY_MILTER), "--socket",
                            f"unix:{socket_path}", "--actions", str(actions), "--quiet"],
                           socket_path, launcher.workdir / f"{name}.log", name="replay-milter")
    launcher.started.append(milter)
    milter.start()
    return milter


def _one_run(pool: Pool, lab: PostfixLab, sink: Sink, mode: str,
             messages: Sequence[MixMessage], batch: Sequence[workers.SmtpMessage],
             warmup: Sequence[MixMessage], warm_batch: Sequence[workers.SmtpMessage],
             concurrency: int, per_connection: int, timeout: float,
             milter: MilterProcess | None) -> dict[str, Any]:
    # Warm-up: fresh smtpd processes with the new setting, the milter's first imports.
    sink.clear()
    _, summary = send(pool, lab.smtp_port, warm_batch, concurrency, per_connection, timeout)
    sink.wait_count(len(warmup), timeout)
    lab.wait_queue_empty(timeout)
    _check(f"{mode} (warm-up)", warmup, summary, sink.deliveries)
    sink.clear()

    cpu0 = sysstat.cpu_times()
    milter0 = sysstat.process_cpu(milter.pid) if milter and milter.pid else None
    start, summary = send(pool, lab.smtp_port, batch, concurrency, per_connection, timeout)
    got = sink.wait_count(len(messages), timeout)
    last = max(d.received_at for d in got)
    cpu1 = sysstat.cpu_times()
    milter1 = sysstat.process_cpu(milter.pid) if milter and milter.pid else None
    lab.wait_queue_empty(timeout)
    time.sleep(0.2)                       # anything extra (a bounce) would show now
    got = sink.deliveries
    _check(mode, messages, summary, got)
    elapsed = last - start
    result: dict[str, Any] = {
        "mode": mode, "messages": len(messages), "elapsed_s": round(elapsed, 3),
        "msgs_per_s": len(messages) / elapsed,
        "smtp_accept_s": round(summary["send_end"] - start, 3),
        "cpu_busy_pct": sysstat.busy_pct(cpu0, cpu1),
        # every process on the machine: Postfix, sink, load generator, milter
        "machine_cpu_us_per_msg": (cpu1[0] - cpu0[0]) / sysstat.CLK_TCK / len(messages) * 1e6
        if cpu0 is not None and cpu1 is not None else None,
        "milter_cpu_us_per_msg": (milter1 - milter0) / len(messages) * 1e6
        if milter0 is not None and milter1 is not None else None,
        "marks": _milter_marks(got),
    }
    if mode.startswith("helpdesk") and milter is not None:
        log_text = milter.log_text()
        result["milter_internal_errors"] = log_text.count("internal error")
    sink.clear()
    return result


def summarize(runs: list[dict[str, Any]], negotiation: dict[str, tuple[int, int]],
              n: int, concurrency: int, per_connection: int,
              modes: Sequence[str] = MODES) -> dict[str, Any]:
    by_mode: dict[str, dict[str, Any]] = {}
    for mode in modes:
        rs = [r for r in runs if r["mode"] == mode]
        if not rs:
            continue
        cpu = [r["milter_cpu_us_per_msg"] for r in rs if r["milter_cpu_us_per_msg"] is not None]
        machine = [r["machine_cpu_us_per_msg"] for r in rs
                   if r.get("machine_cpu_us_per_msg") is not None]
        by_mode[mode] = {
            "runs": [round(r["msgs_per_s"], 1) for r in rs],
            "median": statistics.median(r["msgs_per_s"] for r in rs),
            "cpu_busy_pct": statistics.median(r["cpu_busy_pct"] for r in rs),
            "milter_cpu_us_per_msg": statistics.median(cpu) if cpu else None,
            "machine_cpu_us_per_msg": statistics.median(machine) if machine else None,
            "marks": rs[-1]["marks"],
            "milter_internal_errors": sum(r.get("milter_internal_errors", 0) for r in rs),
        }
    ratios = {}
    if "helpdesk" in by_mode and "noop" in by_mode:
        ratios["helpdesk/noop"] = by_mode["helpdesk"]["median"] / by_mode["noop"]["median"]
    if "helpdesk" in by_mode and "none" in by_mode:
        ratios["helpdesk/none"] = by_mode["helpdesk"]["median"] / by_mode["none"]["median"]
    if "noop" in by_mode and "none" in by_mode:
        ratios["noop/none"] = by_mode["noop"]["median"] / by_mode["none"]["median"]
    if "replay" in by_mode and "noop" in by_mode:
        ratios["replay/noop"] = by_mode["replay"]["median"] / by_mode["noop"]["median"]
    if "helpdesk" in by_mode and "replay" in by_mode:
        ratios["helpdesk/replay"] = by_mode["helpdesk"]["median"] / by_mode["replay"]["median"]
    for mode in by_mode:
        if mode.startswith("helpdesk-") and "noop" in by_mode:
            ratios[f"{mode}/noop"] = by_mode[mode]["median"] / by_mode["noop"]["median"]
    return {"messages": n, "concurrency": concurrency, "per_connection": per_connection,
            "modes": by_mode, "ratios": ratios, "runs": runs,
            "negotiated": {k: {"actions": f"0x{a:x}", "protocol": f"0x{p:x}",
                               "flags": workers.protocol_flags(p)}
                           for k, (a, p) in negotiation.items()}}
