#!/usr/bin/env python3
"""Routing precision and recall on every labelled set, through the engine.

    .venv/bin/python scripts/eval-requests.py [-v] [--config FILE] [SET_DIR ...]

Prints one line per set (the project's corpus, the blind tuning batches, the frozen
held-out batches; or the folders given): clear cases' tp/fp/fn/tn, precision, recall,
and agreement on ambiguous cases.  ``-v`` lists every miss of the tuning sets with its
score and rules (never those of a held-out set: reading them is how tuning on them
starts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter.config import load_config  # noqa: E402
from helpdesk_milter.policy import Policy  # noqa: E402
from support.blind import EXAMPLE_CONFIG, HEADER, Figures, all_sets, measure  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", type=Path)
    parser.add_argument("--config", type=Path, default=EXAMPLE_CONFIG)
    parser.add_argument("-v", "--verbose", action="store_true", help="list the misses")
    args = parser.parse_args()
    config = load_config(args.config)
    policy = Policy(config)
    print(HEADER)
    totals = {"tuning": Figures("all tuning"), "heldout": Figures("all held-out")}
    for folder in args.sets or all_sets():
        f = measure(folder, config, policy)
        print(f.row())
        totals["heldout" if "heldout" in folder.name else "tuning"].add(f)
        if args.verbose and "heldout" not in folder.name:
            # a held-out set's misses are not listed: reading them is how tuning starts
            for miss in f.misses:
                print("    " + miss)
    for total in totals.values():
        if total.clear:
            print(total.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
