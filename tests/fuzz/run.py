#!/usr/bin/env python3
"""Long fuzzing runs of parse -> decide -> rewrite (``make fuzz``).

    tests/fuzz/run.py [--engine auto|atheris|hypothesis] [--seconds 600] [--jobs 1]

Both engines drive the oracle of ``tests/support/fuzzing.py`` (``check_one``) with the
example configuration, a real state database and no DNS:

- **atheris** (coverage-guided, libFuzzer; ``pip install atheris``): the fuzzer's bytes
  are the raw message (its first two bytes pick the envelope). The seed corpus is every
  message the test suite holds (hostile catalogue, classifier, dedup and secrets
  corpora), written to ``--corpus`` (default ``tests/fuzz/corpus``, kept between runs so
  coverage accumulates). A crash or a broken property leaves the input in ``--artifacts``
  (default ``tests/fuzz/artifacts``); replay it with ``--replay FILE``.
- **hypothesis** (structure-aware, ``support.fuzzing.messages``): rounds of 1,000
  examples with fresh seeds until ``--seconds`` have passed; a failure is shrunk, printed
  and saved to ``--artifacts``.

``auto`` (the default) uses atheris when it can be imported, else hypothesis. Exit status
0 when nothing was found, 1 on a finding. The last line is a JSON summary (engine, cases,
seconds, findings).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(ROOT / "milter"))

_STATE: dict[str, object] = {"cases": 0, "started": time.monotonic()}


class _ErrorCount(logging.Handler):
    """Counts and prints the milter's ERROR log records: the state database's failures
    show there only (its writer thread is asynchronous, out of the oracle's sight)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        print(f"logged error: {record.getMessage()[:200]}", file=sys.stderr, flush=True)


ERRORS = _ErrorCount()


def make_engine(workdir: Path):
    from helpdesk_milter.config import load_config
    from helpdesk_milter.engine import Engine
    from helpdesk_milter.store import SQLiteStore

    store = SQLiteStore(workdir / "state.db")
    atexit.register(store.close)
    logging.getLogger("helpdesk_milter").addHandler(ERRORS)
    return Engine(load_config(ROOT / "config" / "helpdesk-milter.toml"), store=store,
                  dnsfunc=lambda name, timeout=5: None)


def envelope_for(selector: bytes):
    """Two bytes -> an envelope (recipients bit mask, sender index)."""
    from helpdesk_milter.message import Envelope
    from support.fuzzing import RCPTS, SENDERS

    mask = selector[0] if selector else 1
    rcpts = tuple(r for i, r in enumerate(RCPTS) if mask & (1 << i)) or (RCPTS[0],)
    sender = SENDERS[(selector[1] if len(selector) > 1 else 0) % len(SENDERS)]
    return Envelope(mail_from=sender, rcpts=rcpts, queue_id="FUZZ")


def seed_corpus(directory: Path) -> int:
    """Write every message the suite knows as a seed (2 envelope bytes + raw)."""
    from support.hostile import big_message, catalogue, many_recipients

    directory.mkdir(parents=True, exist_ok=True)
    seeds: list[bytes] = [c.raw for c in catalogue()]
    seeds.append(big_message(200_000, tag="seed"))
    seeds.append(many_recipients(3)[0])
    for folder in ("corpus", "dedup_pairs", "secrets_corpus"):
        for path in sorted((TESTS / folder).rglob("*.eml")):
            seeds.append(path.read_bytes())
    for n, raw in enumerate(seeds):
        (directory / f"seed-{n:04d}").write_bytes(bytes([0b0000011 | (n % 128), n % 6]) + raw)
    return len(seeds)


def save_finding(artifacts: Path, data: bytes, what: str) -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"finding-{int(time.time())}-{os.getpid()}.bin"
    path.write_bytes(data)
    (path.with_suffix(".txt")).write_text(what + "\n")
    return path


def summary(engine: str, findings: int, **extra: object) -> None:
    elapsed = time.monotonic() - float(_STATE["started"])  # type: ignore[arg-type]
    print(json.dumps({"engine": engine, "cases": _STATE["cases"],
                      "seconds": round(elapsed, 1), "findings": findings, **extra}),
          flush=True)


def run_atheris(args: argparse.Namespace) -> int:
    """Run libFuzzer in a child process (it ends with exit(), past Python's atexit) and
    report from its output: runs, coverage, findings."""
    import re
    import subprocess

    argv = [sys.executable, __file__, "--atheris-child", "--seconds", str(args.seconds),
            "--corpus", args.corpus, "--artifacts", args.artifacts, "--jobs", str(args.jobs)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    assert proc.stdout is not None
    runs, cov, findings = 0, "", []
    logged_errors = 0
    for line in proc.stdout:
        sys.stderr.write(line)
        if line.startswith("logged error: "):
            logged_errors += 1
        if m := re.match(r"#(\d+)\s", line):          # libFuzzer's progress lines
            runs = max(runs, int(m.group(1)))
        if m := re.search(r"Done (\d+) runs", line):
            runs = max(runs, int(m.group(1)))
        if m := re.search(r"cov: (\d+)", line):
            cov = m.group(1)
        if m := re.search(r"Test unit written to (\S+)", line):
            findings.append(m.group(1))
    status = proc.wait()
    _STATE["cases"] = runs
    summary("atheris", len(findings), coverage=cov, artifacts=findings, status=status,
            logged_errors=logged_errors)
    return 1 if findings or status else 0


def atheris_child(args: argparse.Namespace) -> int:
    import atheris

    with atheris.instrument_imports(include=["helpdesk_milter"]):
        import helpdesk_milter.engine
        import helpdesk_milter.message
        import helpdesk_milter.policy
        import helpdesk_milter.redact  # noqa: F401
    from support.fuzzing import check_one

    engine = make_engine(Path(tempfile.mkdtemp(prefix="hdm-fuzz-")))
    corpus = Path(args.corpus)
    print(f"seed corpus: {seed_corpus(corpus)} messages in {corpus}", flush=True)

    def one_input(data: bytes) -> None:
        check_one(engine, data[2:], envelope_for(data[:2]))

    Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}",
            "-max_len=300000", "-timeout=20", "-rss_limit_mb=3072",
            f"-artifact_prefix={Path(args.artifacts).resolve()}/", "-print_final_stats=1"]
    if args.jobs > 1:
        argv += [f"-jobs={args.jobs}", f"-workers={args.jobs}"]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


def run_hypothesis(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck, given, settings

    from support.fuzzing import check_one, messages

    workdir = Path(tempfile.mkdtemp(prefix="hdm-fuzz-"))
    engine = make_engine(workdir)
    deadline = time.monotonic() + args.seconds
    last: list[bytes] = []

    @settings(max_examples=args.round, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=messages())
    def round_(case):
        raw, env = case
        last[:] = [raw]
        _STATE["cases"] = int(_STATE["cases"]) + 1  # type: ignore[call-overload]
        check_one(engine, raw, env)

    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        try:
            round_()
        except Exception as exc:
            path = save_finding(Path(args.artifacts), b"\x03\x00" + (last[0] if last else b""),
                                f"{type(exc).__name__}: {exc}")
            print(f"FINDING: {type(exc).__name__}: {exc}\n(saved to {path}; replay with "
                  f"--replay {path})", file=sys.stderr)
            summary("hypothesis", 1, rounds=rounds, logged_errors=ERRORS.count)
            return 1
        print(f"round {rounds}: {_STATE['cases']} cases, "
              f"{time.monotonic() - float(_STATE['started']):.0f}s", file=sys.stderr)  # type: ignore[arg-type]
    engine.store.flush()
    summary("hypothesis", 0, rounds=rounds, logged_errors=ERRORS.count)
    return 0


def replay(path: Path) -> int:
    from support.fuzzing import check_one

    data = path.read_bytes()
    engine = make_engine(Path(tempfile.mkdtemp(prefix="hdm-fuzz-")))
    check_one(engine, data[2:], envelope_for(data[:2]))
    print(f"{path}: no finding")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--round", type=int, default=1000, help="hypothesis examples per round")
    p.add_argument("--jobs", type=int, default=1, help="atheris parallel workers")
    p.add_argument("--corpus", default=str(TESTS / "fuzz" / "corpus"))
    p.add_argument("--artifacts", default=str(TESTS / "fuzz" / "artifacts"))
    p.add_argument("--replay", type=Path, help="run one saved input through the oracle")
    p.add_argument("--atheris-child", action="store_true", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    if args.replay:
        return replay(args.replay)
    if args.atheris_child:
        logging.disable(logging.INFO)
        return atheris_child(args)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    logging.disable(logging.INFO)      # one log line per case would drown the output
    return run_atheris(args) if engine == "atheris" else run_hypothesis(args)


if __name__ == "__main__":
    sys.exit(main())
