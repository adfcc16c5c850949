#!/usr/bin/env python3
"""What site learning costs at scale: N learned forwards -> state size, time per label,
and the classifier's cost per message with the learned deltas (issue 13's bar: 10,000
forwards under 20 MB, the decision under 1 ms).

    .venv/bin/python tests/bench/learning.py [--forwards 10000] [--seed 1] [--decision]

The forwards are synthetic (seeded): 40 to 200 words drawn from the model's own
vocabulary and from 30,000 made-up words, so that the learned state grows as it would
with a site's own words.  The classifier is timed as the milter runs it: the learned
deltas re-checked every ``learn.REFRESH`` seconds (``LEARN_REFRESH=0``: at every
message, the worst case).  ``--decision`` also times the whole decision
(``Engine.process_raw``, bench section 3's way) on the bench mix's 5 KB messages, with
the learned state and without it, two engines alternating message by message (3
passes, per message the median): the medians and the median paired difference.
``PYTHONPATH=build/compiled`` measures the compiled core.  Prints one JSON object.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# after PYTHONPATH's entries (PYTHONPATH=build/compiled: the compiled core)
_AFTER = 1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
sys.path[_AFTER:_AFTER] = [str(ROOT / "milter"), str(ROOT / "tests")]

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
    parser.add_argument("--decision", action="store_true",
                        help="also time the whole decision on 5 KB messages, paired")
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
        if args.decision:
            result.update(decision_cost(learning, model, rules, Path(tmp)))
        learning.close()
    print(json.dumps(result, indent=2))
    return 0


def decision_cost(learning: Learning, model: Any, rules: RuleSet, workdir: Path
                  ) -> dict[str, float]:
    """The decision's CPU per 5 KB message of the bench mix, with ``learning``'s deltas
    and without them (the example configuration, each engine on a fresh database)."""
    import logging
    import statistics

    from bench.mix import generate
    from helpdesk_milter.config import parse_config
    from helpdesk_milter.engine import Engine
    from helpdesk_milter.message import Envelope
    from helpdesk_milter.policy import Policy
    from helpdesk_milter.store import SQLiteStore
    from support.milterproc import dump_toml
    from support.world import example_sections

    logging.basicConfig(level=logging.INFO, force=True,
                        stream=open(os.devnull, "w"),  # noqa: SIM115 (process lifetime)
                        format="%(asctime)s %(levelname)s %(message)s")
    messages = [m for m in generate(1000, seed=1) if 4000 <= m.size <= 6000]
    times: dict[str, list[list[float]]] = {"with": [], "without": []}
    for p in range(-1, 3):
        engines, stores = {}, []
        for name in times:
            data = example_sections()
            data["milter"]["database"] = str(workdir / f"decide-{name}-{p}.db")
            config = parse_config(dump_toml(data))
            store = SQLiteStore(data["milter"]["database"], window=config.dedup.window,
                                similarity=config.dedup.similarity)
            policy = Policy(config, rules=rules, model=model,
                            site=learning.site if name == "with" else None)
            engines[name] = Engine(config, store=store, policy=policy,
                                   dnsfunc=lambda *a, **k: None)
            stores.append(store)
        run: dict[str, list[float]] = {"with": [], "without": []}
        for i, m in enumerate(messages):
            for name in (("with", "without") if (i + p) % 2 else ("without", "with")):
                env = Envelope(mail_from=m.mail_from, rcpts=tuple(m.rcpts),
                               queue_id=f"L{p}{m.index:08X}", client_addr="192.0.2.10")
                t0 = time.thread_time()
                engines[name].process_raw(env, m.raw)
                run[name].append(time.thread_time() - t0)
        for store in stores:
            store.flush(timeout=60)
            store.close()
        if p >= 0:                       # (pass -1 warms up)
            for name in times:
                times[name].append(run[name])
    per = {name: [statistics.median(t[i] for t in runs) for i in range(len(messages))]
           for name, runs in times.items()}
    diffs = [a - b for a, b in zip(per["with"], per["without"], strict=True)]
    return {"decision_5kb_messages": len(messages),
            "decision_5kb_us_with_learning": round(statistics.median(per["with"]) * 1e6, 1),
            "decision_5kb_us_without_learning": round(
                statistics.median(per["without"]) * 1e6, 1),
            "decision_5kb_us_paired_difference": round(statistics.median(diffs) * 1e6, 1)}


if __name__ == "__main__":
    raise SystemExit(main())
