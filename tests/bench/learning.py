#!/usr/bin/env python3
"""What site learning costs at scale: N learned forwards -> state size, time per label,
and the classifier's cost per message with the learned deltas (issue 13's bar: 10,000
forwards under 20 MB, the decision under 1 ms).

    .venv/bin/python tests/bench/learning.py [--forwards 10000] [--seed 1]

The forwards are synthetic (seeded): 40 to 200 words drawn from the model's own
vocabulary and from 30,000 made-up words, so that the learned state grows as it would
with a site's own words.  The classifier is timed as the milter runs it: the learned
deltas re-checked every ``learn.REFRESH`` seconds (``LEARN_REFRESH=0``: at every
message, the worst case).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "milter"))

from helpdesk_milter import learn  # noqa: E402
from helpdesk_milter.classify import Classifier, RuleSet  # noqa: E402
from helpdesk_milter.learn import Example, Learning  # noqa: E402
from helpdesk_milter.model import load_model  # noqa: E402

TEXT = ("Bonjour, depuis ce matin l'imprimante du secrétariat ne fonctionne plus, elle "
        "affiche une erreur et plus rien ne sort. Pouvez-vous regarder rapidement ? ") * 12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forwards", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rules, model = RuleSet.load(), load_model("shipped")
    rnd = random.Random(args.seed)
    vocab = [f"mot{i}" for i in range(30_000)] + [k[2:] for k in list(model.weights)[:3000]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        learning = Learning(path, model, rules)
        start = time.perf_counter()
        for i in range(args.forwards):
            words = " ".join(rnd.choice(vocab) for _ in range(rnd.randint(40, 200)))
            learning.learn(Example.of("demande " + rnd.choice(vocab), words, rules, model,
                                      label="support", known_client=bool(i % 2)),
                           source="forward", routed=False)
        elapsed = time.perf_counter() - start
        learning.close()
        size = sum(os.path.getsize(p) for p in Path(tmp).glob("state.db*"))
        learn.REFRESH = float(os.environ.get("LEARN_REFRESH", learn.REFRESH))
        learning = Learning(path, model, rules)
        with_site = Classifier(rules, model, site=learning.site)
        without = Classifier(rules, model)
        timings = {}
        for name, classifier in (("without", without), ("with", with_site)):
            classifier.score("Imprimante", TEXT, known_client=True)
            t0 = time.process_time()
            for _ in range(500):
                classifier.score("Imprimante", TEXT, known_client=True)
            timings[name] = (time.process_time() - t0) / 500 * 1e6
        result = {
            "forwards": args.forwards, "state_mb": round(size / 1e6, 2),
            "learned_features": len(learning.site().deltas),
            "ms_per_label": round(elapsed / args.forwards * 1000, 2),
            "classify_us_without_learning": round(timings["without"], 1),
            "classify_us_with_learning": round(timings["with"], 1),
            "text_chars": len(TEXT),
        }
        learning.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
