#!/usr/bin/env python3
"""``make bench``: how fast helpdesk-milter is, side by side with a no-op milter.

    .venv/bin/python tests/bench/run.py [--quick] [--messages N] [--concurrency C]
                                        [--repeats R] [--out DIR] [--sections ...]

Sections (all by default; ``--sections stages,milter`` picks some):

  postfix  through a private real Postfix and a capture sink: msg/s with no milter,
           the no-op pymilter milter and helpdesk-milter (example config, unix socket);
           N messages over C SMTP connections; ratios helpdesk/noop and helpdesk/none
  mx       the same on a realistic MX mix: 80 % of the messages for mailboxes nobody
           watches, 20 % the helpdesk's (the mix above); helpdesk-milter also with
           secrets.scope = "all" (every message read: no step-out at the envelope)
  milter   the milter alone over its socket (no Postfix): msg/s at 1 and C connections,
           latency added per message (EOM sent -> final reply), p50/p95/p99; then the
           latency at C connections under steady loads (--paced-rates)
  stages   CPU per message inside the decision, by stage (in-process)
  sizes    cost by message size, 1 KB to 10 MB (in-process CPU and milter latency)
  state    cost by state database size (10k, 100k, 1M decisions, pre-filled)
  redis    the decision's added wall time with [state] backend = "redis" (a private
           redis-server on loopback) against the SQLite store: p50/p99, round trips

Every run uses the same seeded message mix (``bench/mix.py``), mostly DKIM-signed,
with the keys on a local dnsmasq that the milter uses as its resolver. The table goes
to stdout, progress to stderr; the results to DIR/bench-<time>.json, the headline
figures as Markdown to DIR/bench-<time>.md (for the README), and a chart to
DIR/bench-<time>.png (needs matplotlib: ``pip install -e '.[bench]'``).

Must run as root for the ``postfix`` section (a private Postfix instance on
127.0.0.1, as in ``make test``). Everything it starts (Postfix, sink, milters,
worker processes) is stopped on exit, Ctrl-C and errors included. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE.parent) not in sys.path:          # tests/: the bench and support packages
    sys.path.insert(0, str(HERE.parent))

if TYPE_CHECKING:
    from bench.mix import Signer

SECTIONS = ("stages", "sizes", "state", "redis", "milter", "postfix", "mx")
QUICK = {"messages": 200, "repeats": 1, "warmup": 20, "db_rows": [1_000, 10_000],
         "sizes": [1_000, 10_000, 100_000, 1_000_000]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tests/bench/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("--messages", "-n", type=int, default=2000, metavar="N",
                    help="messages per run (default 2000; --quick: 200)")
    ap.add_argument("--concurrency", "-c", type=int, default=10, metavar="C",
                    help="concurrent SMTP / milter connections (default 10)")
    ap.add_argument("--paced-rates", default="100,200,300", metavar="LIST",
                    help="the milter alone also at C connections sending R msg/s in all on "
                         "a steady schedule, for each R: latency under a load below its "
                         "capacity (default 100,200,300; empty: not measured)")
    ap.add_argument("--repeats", "-r", type=int, default=3, metavar="R",
                    help="interleaved repetitions; figures are medians (default 3; --quick: 1)")
    ap.add_argument("--per-connection", type=int, default=1, metavar="K",
                    help="messages per SMTP connection (default 1)")
    ap.add_argument("--warmup", type=int, default=100, metavar="W",
                    help="warm-up messages before each Postfix run (default 100; --quick: 20)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the message mix (default 1)")
    ap.add_argument("--no-dkim", action="store_true",
                    help="no DKIM signatures in the mix (default: most mail is signed, and "
                         "the keys are served by a local dnsmasq)")
    ap.add_argument("--db-rows", default="10000,100000,1000000", metavar="LIST",
                    help="state database sizes (default 10000,100000,1000000; "
                         "--quick: 1000,10000)")
    ap.add_argument("--sizes", default="1000,10000,100000,1000000,10000000", metavar="LIST",
                    help="message sizes in bytes (default 1 KB to 10 MB; --quick: to 1 MB)")
    ap.add_argument("--sections", default=",".join(SECTIONS), metavar="LIST",
                    help=f"which sections to run (default: {','.join(SECTIONS)})")
    ap.add_argument("--quick", action="store_true",
                    help="small N, one repetition: checks that the tool works (< 1 min)")
    ap.add_argument("--out", default=str(ROOT / "bench-results"), metavar="DIR",
                    help="where to write the JSON and PNG (default: bench-results/)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (milter logs, configs, databases)")
    args = ap.parse_args(argv)
    explicit = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
    if args.quick:
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in explicit:
                setattr(args, key, value)
    if isinstance(args.db_rows, str):
        args.db_rows = [int(x) for x in args.db_rows.split(",") if x]
    if isinstance(args.sizes, str):
        args.sizes = [int(x) for x in args.sizes.split(",") if x]
    if isinstance(args.paced_rates, str):
        try:
            args.paced_rates = [float(x) for x in args.paced_rates.split(",") if x]
        except ValueError:
            ap.error("--paced-rates: a comma-separated list of messages/s")
        if any(r <= 0 for r in args.paced_rates):
            ap.error("--paced-rates: rates must be positive")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.messages < 1 or args.concurrency < 1 or args.repeats < 1:
        ap.error("--messages, --concurrency and --repeats must be at least 1")
    if args.messages > 100_000:
        ap.error("--messages: at most 100000")
    return args


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_dkim(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack
               ) -> tuple[Signer | None, dict[str, Any]]:
    """The signer for the mix and the config sections the milter runs with: the example
    configuration, plus (unless --no-dkim) a local dnsmasq serving the mix's DKIM keys
    as ``[dns] resolver``. Without dnsmasq or openssl the mix goes unsigned (said)."""
    from bench import mix as mixmod
    from support.world import example_sections
    if args.no_dkim:
        return None, example_sections()
    from support.dkimfixtures import generate_rsa_key
    from support.dns import DnsServer
    try:
        key = generate_rsa_key(2048)
        server = DnsServer(workdir / "dns", records={
            f"{mixmod.DKIM_SELECTOR}._domainkey.{domain}": key.txt
            for domain in sorted(mixmod.SIGNING_DOMAINS)})
        stack.callback(server.stop)
        server.start()
    except Exception as exc:
        log(f"bench: WARNING: no DKIM signatures in the mix ({exc}); "
            "install dnsmasq-base and openssl, or pass --no-dkim")
        return None, example_sections()
    return mixmod.dkim_signer(key.private_pem), example_sections(
        dns={"resolver": server.resolver})


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        return run_sections(args, workdir, stack)


def run_sections(args: argparse.Namespace, workdir: Path,
                 stack: contextlib.ExitStack) -> dict[str, Any]:
    from bench import inproc, milteralone, sysstat, throughput, workers
    from bench import mix as mixmod

    started = time.monotonic()
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def section(name: str, title: str) -> Iterator[None]:
        log(title)
        t0 = time.monotonic()
        yield
        seconds[name] = round(time.monotonic() - t0, 1)

    result: dict[str, Any] = {
        "started": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["tests/bench/run.py", *sys.argv[1:]]),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
        "machine": sysstat.machine(ROOT),
    }
    signer, sections = start_dkim(args, workdir, stack)
    log(f"generating the mix: {args.messages} messages, seed {args.seed}"
        + (", DKIM-signed" if signer else ""))
    mix = mixmod.generate(args.messages, args.seed, signer)
    warm = mixmod.generate(max(args.warmup, 20), args.seed + 1000, signer)
    result["mix"] = mixmod.describe(mix)
    result["dns_resolver"] = sections["dns"]["resolver"]
    inproc.quiet_info_logging()
    # as `helpdesk-milter run` does (app.serve): the in-process sections run the
    # engine and the store's threads in this process
    from helpdesk_milter.app import switch_interval
    sys.setswitchinterval(switch_interval())

    if {"stages", "sizes", "state", "redis"} & set(args.sections):
        config = inproc.write_config_file(workdir / "inproc.toml", workdir / "inproc.db",
                                          workdir / "inproc.sock", sections)
        factory = inproc.EngineFactory(config)
        if "stages" in args.sections:
            with section("stages", "3. decision CPU by stage (in-process)"):
                result["stages"] = inproc.stage_costs(factory, workdir, mix, warm,
                                                      args.repeats)
        if "sizes" in args.sections:
            with section("sizes", "4a. decision CPU by message size (in-process)"):
                result["sizes"] = inproc.size_costs(factory, workdir, args.sizes,
                                                    args.repeats, signer)
        if "state" in args.sections:
            with section("state", f"4b. state database sizes {args.db_rows}"):
                result["state"] = inproc.state_costs(factory, workdir, args.db_rows,
                                                     mix[:min(len(mix), 1000)], warm,
                                                     args.repeats)
        if "redis" in args.sections:
            from bench import redis_cost
            with section("redis", "5. shared state on Redis (in-process, loopback)"):
                result["redis"] = redis_cost.redis_costs(factory, workdir,
                                                         mix[:min(len(mix), 1000)], warm,
                                                         args.repeats)

    if {"milter", "sizes", "postfix", "mx"} & set(args.sections):
        # Worker processes for the clients; spawned (not forked: the sink's thread).
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(max(args.concurrency, 1), initializer=workers.init_worker) as pool:
            if "milter" in args.sections:
                with section("milter", f"2. the milter alone, 1 and {args.concurrency} "
                             "connections"):
                    result["milter"] = milteralone.run(pool, workdir, mix, warm,
                                                       sections=sections,
                                                       concurrency=args.concurrency,
                                                       repeats=args.repeats, log=log,
                                                       rates=args.paced_rates)
            if "sizes" in args.sections:
                with section("size_latency", "4a. milter latency by message size"):
                    result["size_latency"] = milteralone.size_latency(
                        pool, workdir, args.sizes, args.repeats, sections=sections,
                        signer=signer, log=log)
            if "postfix" in args.sections:
                with section("postfix", f"1. through Postfix: {args.messages} messages x "
                             f"{args.repeats} repeats, {args.concurrency} connections"):
                    result["postfix"] = throughput.run(
                        pool, workdir, mix, warm[:args.warmup], sections=sections,
                        concurrency=args.concurrency, per_connection=args.per_connection,
                        repeats=args.repeats, log=log)
            if "mx" in args.sections:
                mx = mixmod.mx_mix(args.messages, args.seed, signer)
                result["mx_mix"] = mixmod.describe(mx)
                with section("mx", f"1b. through Postfix, realistic MX mix: {args.messages} "
                             f"messages ({mixmod.MX_HELPDESK_SHARE:.0%} the helpdesk's) x "
                             f"{args.repeats} repeats, {args.concurrency} connections"):
                    scope_all = {**sections, "secrets": {**sections.get("secrets", {}),
                                                         "scope": "all"}}
                    # its own directory: a fresh state database, not section 1's
                    (workdir / "mx").mkdir(exist_ok=True)
                    result["mx"] = throughput.run(
                        pool, workdir / "mx", mx, warm[:args.warmup], sections=sections,
                        concurrency=args.concurrency, per_connection=args.per_connection,
                        repeats=args.repeats, log=log,
                        modes=("none", "noop", "helpdesk", "helpdesk-all"),
                        variants={"helpdesk-all": scope_all})
    result["elapsed_s"] = time.monotonic() - started
    result["section_seconds"] = seconds
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if {"postfix", "mx"} & set(args.sections):
        from support.postfix import PostfixLabError, check_requirements
        try:
            check_requirements()
        except PostfixLabError as exc:
            log(f"bench: the postfix section cannot run: {exc}\n"
                "(run as root after `make test`'s setup, or leave it out: --sections "
                "stages,sizes,state,milter)")
            return 1
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hdm-bench-"))
    os.chmod(workdir, 0o755)
    try:
        result = run(args, workdir)
    except KeyboardInterrupt:
        log("bench: interrupted; everything it started has been stopped")
        return 130
    except Exception as exc:
        from bench.throughput import BenchError
        if isinstance(exc, BenchError):
            log(f"bench: FAILED: {exc}")
            return 1
        raise
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    from bench import report
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"bench-{stamp}.json"
    png_path = out_dir / f"bench-{stamp}.png"
    md_path = out_dir / f"bench-{stamp}.md"
    result["files"] = {"json": str(json_path), "markdown": str(md_path)}
    md_path.write_text(report.markdown(result))
    if report.chart(result, png_path):
        result["files"]["png"] = str(png_path)
    else:
        log("bench: matplotlib is not installed, no chart (pip install -e '.[bench]')")
    json_path.write_text(json.dumps(result, indent=1, default=str))
    print(report.text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
