#!/usr/bin/env python3
"""CPU cost of the secrets stage, in-process, without the rest of the decision.

    .venv/bin/python scripts/secrets-speed.py [--messages N] [--repeats R] [--profile]
    .venv/bin/python scripts/secrets-speed.py --base OLD_SECRETS_PY [--repeats R]

Two figures, CPU time of this thread (``time.thread_time``, as the stage bench counts):

- ``mix``: ``redact_message`` over the bench mix (``tests/bench/mix.py``, seed 1, the
  messages the ``secrets`` stage of ``tests/bench/run.py --sections stages`` sees):
  mean and median µs per message;
- ``10kb``: ``redact_message`` over the 10 KB messages of
  ``tests/secrets_corpus/compare_detect_secrets.py`` (one per corpus snippet, and as
  many without a secret): median and p99 of the best of R runs per message, in ms.

``PYTHONPATH=build/compiled`` (after ``make compiled``) measures the compiled core, as
installed by ``pip install .``; the script says which it measured.  Each figure is the
best of R passes (the machine is shared: the least disturbed pass is
the closest to the code's own cost).  ``--profile`` prints a cProfile of one mix pass.

``--base FILE`` compares, paired, a base version of ``secrets.py`` (for example
``git show HEAD:milter/helpdesk_milter/secrets.py > /tmp/base.py``) with the working
tree's: both are loaded in this process, and every message goes through both scanners
R times, the order alternating, so that a slower or faster moment of the shared machine
falls on both alike.  Per message the best time of each side is kept; printed per set
(the mix, the 10 KB messages): the base and new medians and totals, and the median of
the per-message ratios new / base (the figure to read).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# after PYTHONPATH's entries: PYTHONPATH=build/compiled measures the compiled core
_AFTER = 1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
sys.path[_AFTER:_AFTER] = [str(ROOT / "milter"), str(ROOT / "tests"),
                           str(ROOT / "tests" / "secrets_corpus")]

from helpdesk_milter.redact import redact_message  # noqa: E402
from helpdesk_milter.secrets import SecretScanner  # noqa: E402


def mix_pass(scanner: SecretScanner, raws: list[bytes]) -> list[float]:
    out = []
    clock = time.thread_time
    for raw in raws:
        t0 = clock()
        redact_message(raw, scanner)
        out.append(clock() - t0)
    return out


def load_scanner(path: Path) -> SecretScanner:
    """A scanner of the ``secrets.py`` at ``path``, loaded as a module of its own (it
    imports nothing of the package)."""
    spec = importlib.util.spec_from_file_location("helpdesk_secrets_base", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    scanner: SecretScanner = module.SecretScanner()
    return scanner


def paired(base: SecretScanner, new: SecretScanner, raws: list[bytes],
           repeats: int) -> tuple[list[float], list[float]]:
    """Best CPU time per message of each scanner, the order alternating."""
    clock = time.thread_time
    best_old = [float("inf")] * len(raws)
    best_new = [float("inf")] * len(raws)
    for r in range(repeats):
        for i, raw in enumerate(raws):
            order = ((0, base), (1, new)) if (i + r) % 2 == 0 else ((1, new), (0, base))
            for side, scanner in order:
                t0 = clock()
                redact_message(raw, scanner)
                dt = clock() - t0
                best = best_old if side == 0 else best_new
                if dt < best[i]:
                    best[i] = dt
    return best_old, best_new


def paired_row(name: str, old: list[float], new: list[float]) -> str:
    ratios = [n / o for o, n in zip(old, new, strict=True) if o > 0]
    return (f"{name:<5} ({len(old)} messages): base median {statistics.median(old) * 1e6:7.1f} µs"
            f" total {sum(old) * 1e3:8.1f} ms | new median {statistics.median(new) * 1e6:7.1f} µs"
            f" total {sum(new) * 1e3:8.1f} ms | new/base median ratio "
            f"{statistics.median(ratios):.3f}, total ratio {sum(new) / sum(old):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", choices=("mix", "10kb"))
    parser.add_argument("--base", type=Path,
                        help="a base secrets.py to compare with, paired (see above)")
    args = parser.parse_args()
    from compare_detect_secrets import ten_kb  # type: ignore[import-not-found]

    from bench import mix as mixmod
    from helpdesk_milter import build
    print(f"secrets stage, decision core {build()}", file=sys.stderr)
    scanner = SecretScanner()
    raws = [m.raw for m in mixmod.generate(args.messages, seed=1)]
    if args.base:
        base = load_scanner(args.base)
        if args.only != "10kb":
            print(paired_row("mix", *paired(base, scanner, raws, args.repeats)))
        if args.only != "mix":
            with open(ROOT / "tests" / "secrets_corpus" / "snippets.toml", "rb") as fh:
                snippets = tomllib.load(fh)["snippet"]
            bench = [ten_kb(s["text"]) for s in snippets] + [ten_kb(None) for _ in snippets]
            print(paired_row("10kb", *paired(base, scanner, bench, args.repeats)))
        return 0
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        mix_pass(scanner, raws)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        return 0
    if args.only != "10kb":
        best: list[float] | None = None
        for _ in range(args.repeats):
            times = mix_pass(scanner, raws)
            if best is None or sum(times) < sum(best):
                best = times
        assert best is not None
        print(f"mix  ({len(raws)} messages): mean {statistics.fmean(best) * 1e6:7.1f} µs  "
              f"median {statistics.median(best) * 1e6:7.1f} µs")
    if args.only != "mix":
        with open(ROOT / "tests" / "secrets_corpus" / "snippets.toml", "rb") as fh:
            snippets = tomllib.load(fh)["snippet"]
        bench = [ten_kb(s["text"]) for s in snippets] + [ten_kb(None) for _ in snippets]
        per = [min(mix_pass(scanner, [raw])[0] for _ in range(args.repeats)) for raw in bench]
        ordered = sorted(per)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(f"10kb ({len(bench)} messages, {min(map(len, bench)) // 1000}-"
              f"{max(map(len, bench)) // 1000} KB): median {statistics.median(per) * 1e3:.3f} ms"
              f"  p99 {p99 * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
