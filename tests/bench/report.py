"""The printed table and the PNG chart of a benchmark result (the dict run.py builds).

The goals are the SPEC's "Quality bars"; each line that checks one ends with
``ok`` or ``MISSED`` (a noisy machine can miss them: the lead reruns on a quiet one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GOAL_RATIO_NOOP = 0.80        # helpdesk/noop throughput through Postfix, all-watched mix
GOAL_RATIO_MX = 1.0           # the same on a realistic MX mix (80 % unwatched)
GOAL_DECISION_US = 400.0      # decision CPU per 5 KB message
GOAL_P50_MS = 2.0             # added latency at 10 connections
GOAL_P99_MS = 10.0
SCAN_CAP = 10 * 1024 * 1024   # the example config's max_scan_size, for the chart


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _f(value: float | None, fmt: str = ".1f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}"
                     for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    out = [line, "-" * len(line)]
    for row in rows:
        out.append("  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return out


def _kb(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} KB"


def text(result: dict[str, Any]) -> str:
    """The whole report as text."""
    m = result["machine"]
    a = result["args"]
    mix = result["mix"]
    n = mix["messages"]
    out = [
        f"helpdesk-milter benchmark  {result['started']}  ({result['elapsed_s']:.0f} s"
        f"{', quick' if a['quick'] else ''})",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, "
        f"Linux {m['kernel']}",
        f"software: Postfix {m['postfix']}, Python {m['python']}, pymilter "
        f"{m['pymilter'] or '?'}, commit {m['commit']}, decision core "
        f"{m.get('core', '?')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'] or ())}",
        f"mix: {n} messages (seed {a['seed']}), mean {_kb(mix['mean_bytes'])}, median "
        f"{_kb(mix['median_bytes'])}, max {_kb(mix['max_bytes'])}; "
        f"{mix['french'] * 100 // max(1, n)}% French, {mix['html'] * 100 // max(1, n)}% HTML, "
        f"{mix['attachments'] * 100 // max(1, n)}% attachments, "
        f"{mix['secrets'] * 100 // max(1, n)}% secrets, "
        f"{mix.get('dkim_signed', 0) * 100 // max(1, n)}% DKIM-signed, "
        f"{mix['duplicates'] * 100 // max(1, n)}% duplicates",
        "      kinds: " + ", ".join(f"{k} {v}" for k, v in mix["kinds"].items()),
    ]
    if "postfix" in result:
        out += ["", *_postfix(result["postfix"], a)]
    if "mx" in result:
        out += ["", *_postfix(result["mx"], a, mx=result.get("mx_mix"))]
    if "postfix" in result and "mx" in result:
        out += ["", *_side_by_side(result["postfix"], result["mx"])]
    if "milter" in result:
        out += ["", *_milter(result["milter"], a)]
    if "stages" in result:
        out += ["", *_stages(result["stages"])]
    if "sizes" in result:
        out += ["", *_sizes(result["sizes"], result.get("size_latency"))]
    if "state" in result:
        out += ["", *_state(result["state"])]
    if "redis" in result:
        from bench.redis_cost import report_lines
        out += ["", *report_lines(result["redis"])]
    secs = result.get("section_seconds", {})
    if secs:
        out += ["", "seconds per section: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())]
    files = result.get("files", {})
    if files:
        out += ["", "written: " + ", ".join(str(v) for v in files.values())]
    return "\n".join(out)


def _side_by_side(p: dict[str, Any], mx: dict[str, Any]) -> list[str]:
    rows = []
    for name, q in (("all-watched mix", p), ("realistic MX mix", mx)):
        m = q["modes"]
        rows.append([name, *(_f(m[k]["median"]) if k in m else "-"
                             for k in ("none", "noop", "helpdesk")),
                     _f(q["ratios"].get("helpdesk/noop"), ".3f"),
                     _f(q["ratios"].get("noop/none"), ".3f")])
    out = ["Side by side (msg/s, medians)",
           *_table(["mix", "none", "noop", "helpdesk", "helpdesk/noop", "noop/none"], rows)]
    r = p["ratios"].get("helpdesk/noop")
    if r is not None:
        out.append(f"all-watched: helpdesk/noop {r:.3f} (goal >= {GOAL_RATIO_NOOP}) "
                   f"{_verdict(r >= GOAL_RATIO_NOOP)}")
    r = mx["ratios"].get("helpdesk/noop")
    if r is not None:
        out.append(f"realistic MX: helpdesk/noop {r:.3f} (goal >= {GOAL_RATIO_MX}) "
                   f"{_verdict(r >= GOAL_RATIO_MX)}")
    return out


def _postfix(p: dict[str, Any], a: dict[str, Any],
             mx: dict[str, Any] | None = None) -> list[str]:
    modes = p["modes"]
    base = modes.get("none", {}).get("median")
    rows = []
    for mode, r in modes.items():
        machine, milter = r.get("machine_cpu_us_per_msg"), r["milter_cpu_us_per_msg"]
        rows.append([mode, _f(r["median"]), " ".join(_f(x) for x in r["runs"]),
                     _f(r["median"] / base, ".2f") if base else "-",
                     _f(r["cpu_busy_pct"], ".0f") + "%", _f(machine, ".0f"),
                     _f(milter, ".0f"),
                     _f(machine - (milter or 0), ".0f") if machine is not None else "-"])
    title = "1. Through Postfix, all-watched mix" if mx is None else (
        f"1b. Through Postfix, realistic MX mix ({mx['kinds'].get('unwatched', 0)} of "
        f"{mx['messages']} messages for unwatched mailboxes; helpdesk-all: "
        "secrets.scope = \"all\", no step-out)")
    goal = GOAL_RATIO_NOOP if mx is None else GOAL_RATIO_MX
    out = [f"{title}: {p['messages']} messages, {p['concurrency']} SMTP connections, "
           f"{p['per_connection']} message(s) per connection; median of {a['repeats']} "
           "interleaved runs; CPU µs per message: of the whole machine, of the milter, and "
           "of everything else (Postfix, sink, load generator)",
           *_table(["mode", "msg/s", "runs", "vs none", "CPU busy", "machine", "milter",
                    "rest"], rows)]
    ratios = p["ratios"]
    if "helpdesk/noop" in ratios:
        r = ratios["helpdesk/noop"]
        out.append(f"helpdesk/noop = {r:.3f}   (goal >= {goal})  {_verdict(r >= goal)}")
    for name, r in ratios.items():
        if name.startswith("helpdesk-"):
            out.append(f"{name} = {r:.3f}")
    if "helpdesk/none" in ratios:
        out.append(f"helpdesk/none = {ratios['helpdesk/none']:.3f}   noop/none = "
                   f"{ratios.get('noop/none', float('nan')):.3f}")
    if "replay/noop" in ratios:
        out.append(f"replay/noop = {ratios['replay/noop']:.3f} (Postfix applying helpdesk's "
                   f"changes, nothing decided)   helpdesk/replay = "
                   f"{ratios.get('helpdesk/replay', float('nan')):.3f} (the deciding)")
    hd = modes.get("helpdesk")
    if hd:
        marks = hd["marks"]
        out.append("helpdesk headers on the delivered mail (last run): " + ", ".join(
            f"{k} {v}" for k, v in sorted(marks.items())) + f"; of {p['messages']}")
        if hd["milter_internal_errors"]:
            out.append(f"WARNING: the milter logged {hd['milter_internal_errors']} internal "
                       "errors (fail-open): see its log")
    neg = p.get("negotiated", {})
    if "noop" in neg and "helpdesk" in neg:
        # Each round trip costs both Postfix and the milter; the comparison is fair
        # when helpdesk-milter waits for no reply the no-op milter is spared.  Skipping
        # a step it does not use (NO*) is its own saving; HDR_LEADSPC changes no trip.
        noop_f, hd_f = set(neg["noop"]["flags"]), set(neg["helpdesk"]["flags"])
        extra = [f"helpdesk +{f}" for f in sorted(hd_f - noop_f)] + [
            f"noop +{f}" for f in sorted(noop_f - hd_f)]
        replied = {m: {s for s, (nr, no) in _STEPS.items() if nr not in f and no not in f}
                   for m, f in (("noop", noop_f), ("helpdesk", hd_f))}
        verdict = ("the same replies as" if replied["helpdesk"] == replied["noop"]
                   else "fewer replies than" if replied["helpdesk"] < replied["noop"]
                   else "MORE REPLIES (" + ", ".join(
                       sorted(replied["helpdesk"] - replied["noop"])) + ") than")
        out.append(f"negotiated: helpdesk waits for {verdict} the no-op milter (replied: "
                   f"{', '.join(sorted(replied['helpdesk'])) or 'none'})"
                   + (f"; {', '.join(extra)}" if extra else "")
                   + f"; actions noop {neg['noop']['actions']}, helpdesk "
                   f"{neg['helpdesk']['actions']}")
    return out


def _load(t: dict[str, Any]) -> str:
    """How a row of the milter-alone table was driven: "10" or "10 at 100/s"."""
    return str(t["concurrency"]) + (f" at {t['rate']:g}/s" if t.get("rate") else "")


# milter protocol steps before end of message: (no-reply flag, not-sent flag)
_STEPS = {"connect": ("NR_CONN", "NOCONNECT"), "helo": ("NR_HELO", "NOHELO"),
          "mail": ("NR_MAIL", "NOMAIL"), "rcpt": ("NR_RCPT", "NORCPT"),
          "data": ("NR_DATA", "NODATA"), "unknown": ("NR_UNKN", "NOUNKNOWN"),
          "header": ("NR_HDR", "NOHDRS"), "eoh": ("NR_EOH", "NOEOH"),
          "body": ("NR_BODY", "NOBODY")}


def _milter(r: dict[str, Any], a: dict[str, Any]) -> list[str]:
    noop = {_load(t): t for t in r["table"] if t["mode"] == "noop"}
    rows = []
    for t in r["table"]:
        floor = noop.get(_load(t)) if t["mode"] != "noop" else None
        rows.append([t["mode"], _load(t), _f(t["msgs_per_s"]),
                     _f(t["p50_ms"], ".2f"), _f(t["p95_ms"], ".2f"), _f(t["p99_ms"], ".2f"),
                     _f(t["max_ms"], ".1f"),
                     _f(t["p50_ms"] - floor["p50_ms"], "+.2f") if floor else "",
                     _f(t["p99_ms"] - floor["p99_ms"], "+.2f") if floor else "",
                     _f(t["milter_cpu_us_per_msg"], ".0f")])
    out = [f"2. The milter alone over its unix socket: {r['messages']} messages, one milter "
           f"connection each; latency = EOM sent -> final reply; median of {a['repeats']} runs;"
           " 'at N/s': messages sent on a steady schedule instead of as fast as answered",
           *_table(["milter", "load", "msg/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                    "p50 vs noop", "p99 vs noop", "milter CPU µs/msg"], rows)]
    conc = max(t["concurrency"] for t in r["table"])
    for hd in (t for t in r["table"] if t["mode"] == "helpdesk" and t["concurrency"] == conc):
        how = f"at a steady {hd['rate']:g} msg/s" if hd.get("rate") else "saturated"
        out.append(f"helpdesk at {conc} connections, {how}: p50 {hd['p50_ms']:.2f} ms (goal < "
                   f"{GOAL_P50_MS:g}) {_verdict(hd['p50_ms'] < GOAL_P50_MS)}, p99 "
                   f"{hd['p99_ms']:.2f} ms (goal < {GOAL_P99_MS:g}) "
                   f"{_verdict(hd['p99_ms'] < GOAL_P99_MS)}")
    return out


def _stages(s: dict[str, Any]) -> list[str]:
    rows = [[name, _f(v["mean_us"], ".0f"), _f(v["median_when_run_us"], ".0f"),
             f"{v['share_run'] * 100:.0f}%"] for name, v in s["stages"].items()]
    t = s["total"]
    rows.append(["total", _f(t["mean_us"], ".0f"), _f(t["median_us"], ".0f"), "100%"])
    five = s["five_kb"]
    out = [f"3. Decision CPU by stage, in-process (Engine.process_raw, {s['messages']} messages,"
           f" median of {s['repeats']} passes per message; µs of CPU)",
           *_table(["stage", "mean/msg", "median when run", "run for"], rows),
           f"total per message: p95 {t['p95_us']:.0f} µs, p99 {t['p99_us']:.0f} µs, max "
           f"{t['max_us']:.0f} µs; {s['total_per_kb_us']:.0f} µs per KB of mail",
           f"store writer thread (beside the decision): {s['store_writer_us_per_msg']:.0f} "
           "µs/msg"]
    if five["messages"]:
        out.append(f"5 KB messages (4-6 KB, n={five['messages']}): median "
                   f"{five['median_us']:.0f} µs, mean {five['mean_us']:.0f} µs (goal < "
                   f"{GOAL_DECISION_US:.0f} µs) {_verdict(five['median_us'] < GOAL_DECISION_US)}")
    if s["stages_nest"]:
        out.append("note: stage times add up to more than the total for some messages: "
                   "some stages are nested")
    out.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()))
    return out


def _sizes(sizes: list[dict[str, Any]], latency: list[dict[str, Any]] | None) -> list[str]:
    lat = {(r["shape"], r["nominal"]): r for r in latency or []}
    names = sorted({k for r in sizes for k in r["stages_us"]})
    rows = []
    for r in sizes:
        line = [r["shape"], _kb(r["size"]), _f(r["cpu_us"] / 1e3, ".2f"),
                _f(r["cpu_us"] / (r["size"] / 1e3), ".1f")]
        line += [_f(r["stages_us"].get(k, 0) / 1e3, ".2f") for k in names]
        m = lat.get((r["shape"], r["nominal"]))
        line += [_f(m["noop_ms"], ".2f"), _f(m["helpdesk_ms"], ".2f"),
                 _f(m["helpdesk_ms"] - m["noop_ms"], ".2f")] if m else ["-", "-", "-"]
        rows.append(line)
    out = ["4a. Cost by message size (one support request; in-process decision CPU, and "
           "milter-alone EOM latency at 1 connection)",
           *_table(["shape", "size", "CPU ms", "µs/KB", *[f"{k} ms" for k in names],
                    "noop lat ms", "helpdesk lat ms", "added ms"], rows)]
    for shape in {r["shape"] for r in sizes}:
        rs = sorted((r for r in sizes if r["shape"] == shape), key=lambda r: r["size"])
        if len(rs) >= 2 and rs[-2]["cpu_us"] > 0:
            growth = (rs[-1]["cpu_us"] / rs[-2]["cpu_us"]) / (rs[-1]["size"] / rs[-2]["size"])
            out.append(f"{shape}: from {_kb(rs[-2]['size'])} to {_kb(rs[-1]['size'])} the CPU "
                       f"grows {growth:.2f}x as fast as the size (1.00 = linear)")
    return out


def _state(state: list[dict[str, Any]]) -> list[str]:
    lookups = sorted({k for r in state for k in r["lookups_us"]})
    rows = []
    for r in state:
        rows.append([f"{r['rows']:,}", _f(r["file_mb"]), _f(r["decision_cpu"]["mean_us"], ".0f"),
                     _f(r["decision_cpu"]["p99_us"], ".0f"), _f(r["store_stage_mean_us"], ".0f"),
                     _f(r["store_writer_us_per_msg"], ".0f"),
                     *[_f(r["lookups_us"].get(k), ".1f") for k in lookups]])
    out = ["4b. Cost by state database size (pre-filled, then the mix decided on it; µs)",
           *_table(["rows", "file MB", "decision mean", "decision p99", "store stage",
                    "writer/msg", *[f"lookup {k}" for k in lookups]], rows)]
    generic = sorted({f"{t} ({how})" for r in state for t, how in r["tables"].items()
                      if how != "registered"})
    if generic:
        out.append(f"note: filled with generic values: {'; '.join(generic)}; register a "
                   "realistic row generator in tests/bench/state.py (ROWS)")
    if lookups:
        out.append("lookups: per-message queries registered in tests/bench/state.py (LOOKUPS);"
                   " sender-recent is an example (autoreply rate limit), not yet on the hot path")
    return out


def markdown(result: dict[str, Any]) -> str:
    """The headline figures as Markdown, for the README's "Last results"."""
    m = result["machine"]
    out = [f"Measured {result['started']} on {m['cpu']} ({m['cores']} cores, "
           f"{m['memory_gb']} GB), {m['os']}, Postfix {m['postfix']}, Python {m['python']}, "
           f"pymilter {m['pymilter'] or '?'}, commit `{m['commit']}`, decision core "
           f"{m.get('core', '?')}; `{result['command']}`.", ""]
    for key, what, goal in (("postfix", "all-watched mix", GOAL_RATIO_NOOP),
                            ("mx", "realistic MX mix, 80 % unwatched", GOAL_RATIO_MX)):
        p = result.get(key)
        if not p:
            continue
        base = p["modes"].get("none", {}).get("median")
        out += [f"| through Postfix, {what} ({p['messages']} messages, {p['concurrency']} "
                "connections) | msg/s | vs no milter | CPU per message: milter "
                "| everything else |",
                "| --- | ---: | ---: | ---: | ---: |"]
        names = {"none": "no milter", "noop": "no-op pymilter milter",
                 "replay": "replay of helpdesk's actions, nothing decided",
                 "helpdesk": "helpdesk-milter",
                 "helpdesk-all": "helpdesk-milter, secrets.scope = \"all\" (no step-out)"}
        for mode, r in p["modes"].items():
            machine, milter = r.get("machine_cpu_us_per_msg"), r["milter_cpu_us_per_msg"]
            rest = f"{(machine - (milter or 0)) / 1e3:.2f} ms" if machine is not None else "-"
            out.append(f"| {names.get(mode, mode)} | {r['median']:.0f} | "
                       + (f"{r['median'] / base:.2f}" if base else "-")
                       + f" | {f'{milter / 1e3:.2f} ms' if milter else '-'} | {rest} |")
        if "helpdesk/noop" in p["ratios"]:
            out.append(f"| **helpdesk / no-op** (goal ≥ {goal}) | | "
                       f"**{p['ratios']['helpdesk/noop']:.2f}** | | |")
        out.append("")
    ma = result.get("milter")
    if ma:
        out += ["| milter alone (EOM → reply) | msg/s | p50 | p95 | p99 |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for t in ma["table"]:
            out.append(f"| {t['mode']}, {t['concurrency']} connection"
                       f"{'s' if t['concurrency'] > 1 else ''}"
                       + (f", steady {t['rate']:g} msg/s" if t.get("rate") else "")
                       + f" | {t['msgs_per_s']:.0f} | "
                       f"{t['p50_ms']:.2f} ms | {t['p95_ms']:.2f} ms | {t['p99_ms']:.2f} ms |")
        out.append("")
    st = result.get("stages")
    if st:
        stages = ", ".join(f"{k} {v['mean_us']:.0f}" for k, v in st["stages"].items())
        five = st["five_kb"]
        out.append(f"Decision CPU per message of the mix: mean {st['total']['mean_us']:.0f} µs "
                   f"({stages}); per 5 KB message (goal ≤ {GOAL_DECISION_US:.0f} µs): median "
                   f"{five.get('median_us', float('nan')):.0f} µs.")
    return "\n".join(out) + "\n"


def chart(result: dict[str, Any], path: Path) -> Path | None:
    """Latency distribution, size scaling and stage costs as one PNG; None (and a
    note) if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    latencies = result.get("milter", {}).get("latencies_ms", {})
    levels = sorted({k.split("@")[1] for k in latencies})
    for key, values in sorted(latencies.items()):
        if values:
            mode, level = key.split("@")
            conns, _, rate = level.partition("/")
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot(values, ys, label=f"{mode}, {conns} conn." + (f" at {rate}/s" if rate else ""),
                    color=f"C{levels.index(level)}",
                    linestyle="-" if mode == "helpdesk" else "--")
    ax.set_xscale("log")
    ax.set_xlabel("EOM -> final reply (ms)")
    ax.set_ylabel("share of messages")
    ax.set_title("Milter alone: latency added per message (CDF)")
    ax.axvline(GOAL_P50_MS, color="grey", linestyle=":", linewidth=1)
    ax.axvline(GOAL_P99_MS, color="grey", linestyle="--", linewidth=1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1]
    sizes = result.get("sizes", [])
    for shape in sorted({r["shape"] for r in sizes}):
        rs = sorted((r for r in sizes if r["shape"] == shape), key=lambda r: r["size"])
        ax.plot([r["size"] for r in rs], [r["cpu_us"] / 1e3 for r in rs], marker="o",
                label=f"decision CPU, {shape}")
    for shape in sorted({r["shape"] for r in result.get("size_latency", [])}):
        rs = sorted((r for r in result["size_latency"] if r["shape"] == shape),
                    key=lambda r: r["size"])
        ax.plot([r["size"] for r in rs], [r["helpdesk_ms"] for r in rs], marker="s",
                linestyle="--", label=f"milter latency, {shape}")
    if sizes:
        # Proportional cost through the biggest message: a curve that bends up to
        # this line from the left is linear in the size.
        top = max(sizes, key=lambda r: (r["size"], r["cpu_us"]))
        xs = [min(r["size"] for r in sizes), top["size"]]
        ax.plot(xs, [top["cpu_us"] / 1e3 * x / top["size"] for x in xs], color="grey",
                linestyle=":", label="proportional to size")
        ax.axvline(SCAN_CAP, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("ms")
    ax.set_title("Cost by message size (dashed: the example scan cap)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[2]
    st = result.get("stages", {}).get("stages", {})
    names = list(st)
    ax.barh(names, [st[k]["mean_us"] for k in names])
    ax.axvline(GOAL_DECISION_US, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("mean µs of CPU per message (mix)")
    ax.set_title(f"Decision CPU by stage (dashed: the {GOAL_DECISION_US:.0f} µs goal)")
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    m = result["machine"]
    fig.suptitle(f"helpdesk-milter bench {result['started']}, commit {m['commit']}, "
                 f"{m['cpu']} x{m['cores']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
