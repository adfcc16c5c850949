#!/usr/bin/env python3
"""Does reading an HTML alternative from its plain part change any redaction?

``redact._said_in`` lets the walk skip extracting and scanning the HTML part of a
multipart/alternative whose plain part held no secret.  This runs ``redact_message``
over every whole message we have (the corpora, the public test mail, the blind
*tuning* sets' messages, the bench mix) twice, with the check and without it, and
prints every message whose result differs (count, kinds, new body), how often the
check spared the HTML, and the walk's CPU time both ways.

    .venv/bin/python scripts/alternative-check.py [--mix 2000]

Held-out sets are never read (their figures come from scripts/eval-secrets.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter import redact  # noqa: E402
from helpdesk_milter.secrets import SecretScanner  # noqa: E402
from support.whole_mail import whole_messages  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", type=int, default=2000, help="bench mix messages (0: none)")
    args = parser.parse_args()
    scanner = SecretScanner()
    said_in = redact._said_in
    spared = 0

    def counting(markup: str, plain: str, sc: SecretScanner) -> bool:
        nonlocal spared
        yes = said_in(markup, plain, sc)
        spared += yes
        return yes

    def never(markup: str, plain: str, sc: SecretScanner) -> bool:
        return False

    n = differ = 0
    cpu = {"with": 0.0, "without": 0.0}
    for name, raw in whole_messages(args.mix):
        n += 1
        results = {}
        for label, check in (("without", never), ("with", counting)):
            redact.alternative_check = check
            t0 = time.thread_time()
            r = redact.redact_message(raw, scanner)
            cpu[label] += time.thread_time() - t0
            results[label] = (r.count, r.kinds, r.body, r.subject, r.where)
        if results["with"] != results["without"]:
            differ += 1
            print(f"DIFFERS: {name}: without {results['without'][0]} secret(s) "
                  f"{results['without'][1]}, with {results['with'][0]} {results['with'][1]}")
    redact.alternative_check = said_in
    print(f"{n} messages, {differ} differ; the HTML alternative spared {spared} time(s); "
          f"walk CPU without {cpu['without'] * 1e3:.0f} ms, with {cpu['with'] * 1e3:.0f} ms")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
