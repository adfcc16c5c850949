#!/usr/bin/env python3
"""Paired CPU time of the secrets stage (``redact_message``): a base version of
``secrets.py`` and ``redact.py`` against the working tree's, in one process.

    .venv/bin/python scripts/secrets-stage-paired.py BASE_DIR [--repeats R] [--only SET]

``BASE_DIR`` holds the base ``secrets.py`` and/or ``redact.py`` (for example copied
before a change, or ``git show REV:milter/helpdesk_milter/redact.py > BASE_DIR/redact.py``).
The package is copied into a temporary directory as ``helpdesk_milter_base``, those files
replaced by ``BASE_DIR``'s, and both packages are imported side by side (pure Python,
the tree's files, whatever a compiled build would do).  Every message goes through both
``redact_message`` R times, the order alternating from message to message and pass to
pass, so that a slower or faster moment of the shared machine falls on both alike; per
message the best CPU time (``time.thread_time``) of each side is kept.

Sets: ``5kb``, the bench mix's messages of 4000-6000 bytes (``generate(1000, 1)``, bench
section 3's line); ``10kb``, the messages of ``scripts/secrets-speed.py``'s 10 KB set.
Printed per set: the base and new medians, the median of the per-message differences
and of the per-message ratios new / base (the figures to read), and the totals.  Both
sides' results are compared as well (count, kinds, body, subject, where): a difference
is reported.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests"), str(ROOT / "tests" / "secrets_corpus")]


def load_side(base_dir: Path, workdir: Path, name: str) -> tuple[Any, Any]:
    """(redact_message, a SecretScanner) of the package copied as ``name`` with
    ``base_dir``'s secrets.py and redact.py over the tree's."""
    target = workdir / name
    shutil.copytree(ROOT / "milter" / "helpdesk_milter", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for f in ("secrets.py", "redact.py"):
        if (base_dir / f).is_file():
            shutil.copy(base_dir / f, target / f)
    sys.path.insert(0, str(workdir))
    redact = importlib.import_module(f"{name}.redact")
    secrets = importlib.import_module(f"{name}.secrets")
    return redact.redact_message, secrets.SecretScanner()


def paired(sides: list[tuple[Any, Any]], raws: list[bytes],
           repeats: int) -> tuple[list[float], list[float], int]:
    clock = time.thread_time
    best = [[float("inf")] * len(raws), [float("inf")] * len(raws)]
    differ = 0
    for r in range(repeats):
        for i, raw in enumerate(raws):
            order = (0, 1) if (i + r) % 2 == 0 else (1, 0)
            results = [None, None]
            for side in order:
                redact_message, scanner = sides[side]
                t0 = clock()
                result = redact_message(raw, scanner)
                dt = clock() - t0
                if dt < best[side][i]:
                    best[side][i] = dt
                results[side] = result
            if r == 0:
                a, b = results
                if (a.count, a.kinds, a.body, a.subject, a.where, a.defects) != \
                        (b.count, b.kinds, b.body, b.subject, b.where, b.defects):
                    differ += 1
    return best[0], best[1], differ


def row(name: str, old: list[float], new: list[float], differ: int) -> str:
    diffs = [n - o for o, n in zip(old, new, strict=True)]
    ratios = [n / o for o, n in zip(old, new, strict=True) if o > 0]
    return (f"{name:<5} ({len(old)} messages): base median {statistics.median(old) * 1e6:7.1f} µs"
            f" | new median {statistics.median(new) * 1e6:7.1f} µs | paired diff median "
            f"{statistics.median(diffs) * 1e6:+7.1f} µs, ratio median "
            f"{statistics.median(ratios):.3f} | totals {sum(old) * 1e3:.1f} / "
            f"{sum(new) * 1e3:.1f} ms" + (f" | RESULTS DIFFER on {differ}" if differ else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("base", type=Path, help="folder of base secrets.py / redact.py")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("5kb", "10kb"))
    args = parser.parse_args()
    from compare_detect_secrets import ten_kb  # type: ignore[import-not-found]

    from bench import mix as mixmod

    with tempfile.TemporaryDirectory() as tmp:
        base = load_side(args.base, Path(tmp), "helpdesk_milter_base")
        new = load_side(ROOT / "milter" / "helpdesk_milter", Path(tmp), "helpdesk_milter_new")
        sets: dict[str, list[bytes]] = {}
        if args.only != "10kb":
            sets["5kb"] = [m.raw for m in mixmod.generate(1000, seed=1)
                           if 4000 <= len(m.raw) <= 6000]
        if args.only != "5kb":
            with open(ROOT / "tests" / "secrets_corpus" / "snippets.toml", "rb") as fh:
                snippets = tomllib.load(fh)["snippet"]
            sets["10kb"] = [ten_kb(s["text"]) for s in snippets] + [ten_kb(None)
                                                                     for _ in snippets]
        for name, raws in sets.items():
            print(row(name, *paired([base, new], raws, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
