#!/usr/bin/env python3
"""Duplicate detection on the blind duplicate sets, through the engine.

    .venv/bin/python scripts/eval-dedup.py [-v] [--config FILE] [SET_DIR ...]

One line per set (``tests/blind/dedup-*``, or the folders given): duplicates
recognised (tp) and missed (fn), non-duplicates called duplicates (fp) and not (tn),
precision, recall, recognised duplicates that named the wrong original, misses where
the classifier had said "other" (no duplicate lookup runs then), agreement on
ambiguous cases.  ``-v`` lists the misses of sets that are not held-out (a held-out
set's misses are never listed: reading them is how tuning on them starts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter.config import load_config  # noqa: E402
from support.blind_dedup import (  # noqa: E402
    EXAMPLE_CONFIG,
    HEADER,
    DedupFigures,
    dedup_sets,
    measure_dedup,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", type=Path)
    parser.add_argument("--config", type=Path, default=EXAMPLE_CONFIG)
    parser.add_argument("-v", "--verbose", action="store_true", help="list the misses")
    args = parser.parse_args()
    config = load_config(args.config)
    print(HEADER)
    totals = {"tuning": DedupFigures("all tuning"), "heldout": DedupFigures("all held-out")}
    for folder in args.sets or dedup_sets():
        f = measure_dedup(folder, config)
        print(f.row())
        totals["heldout" if "heldout" in folder.name else "tuning"].add(f)
        if args.verbose and "heldout" not in folder.name:
            for miss in f.misses:
                print("    " + miss)
    for total in totals.values():
        if total.tp + total.fn + total.fp + total.tn:
            print(total.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
