#!/usr/bin/env python3
"""Secret recall and decoy damage on every labelled secrets set, through the library.

    .venv/bin/python scripts/eval-secrets.py [-v] [SET_DIR ...]

Prints one line per set (the project's ``tests/secrets_corpus`` and every
``tests/blind/secrets-*`` folder; or the folders given): secrets, found, missed, recall,
decoys and decoys damaged.  ``-v`` lists the misses and the damage of every set whose
name does not contain "heldout" (never those of a held-out set: reading them is how
tuning on them starts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter.secrets import SecretScanner  # noqa: E402
from support.blind_secrets import (  # noqa: E402
    CORPUS,
    HEADER,
    SecretFigures,
    blind_secret_sets,
    measure_secrets,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("sets", nargs="*", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list misses and damage (never for a held-out set)")
    args = parser.parse_args()
    scanner = SecretScanner()
    print(HEADER)
    totals = {"tuning": SecretFigures("all tuning"), "heldout": SecretFigures("all held-out")}
    for folder in args.sets or [CORPUS, *blind_secret_sets()]:
        figures = measure_secrets(folder.resolve(), scanner)
        print(figures.row())
        heldout = "heldout" in folder.resolve().name
        totals["heldout" if heldout else "tuning"].add(figures)
        if args.verbose and not heldout:
            for line in [*figures.misses, *figures.damage]:
                print("    " + line)
    for total in totals.values():
        if total.secrets:
            print(total.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
