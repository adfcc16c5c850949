"""Routing accuracy on labelled mail sets, through the engine.

A *set* is a folder with ``manifest.toml`` (``[[message]]`` tables: file, label,
category, clarity, mail_from, rcpts) and ``messages/``.  The project's own corpus
(``tests/corpus``) and the blind batches (``tests/blind/requests-*``) have this shape;
batches whose name contains ``heldout`` are frozen: they are measured, never tuned on.

A message counts as *routed* when the engine treats it as a request or a follow-up and
acts on it (copy, redirect, duplicate or tag): the helpdesk gets it.  Wanted: labels
``support`` and ``followup``.  Precision and recall are computed on ``clear`` messages;
``ambiguous`` ones are reported as agreement with the writer's label.  Mail sent to
assistance addresses only is counted apart (``at-assist.``): it is already where it
belongs, and the milter has nothing to route.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from helpdesk_milter.config import Config, load_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.learn import was_routed
from helpdesk_milter.message import Envelope
from helpdesk_milter.policy import Policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "config" / "helpdesk-milter.toml"


def blind_sets(kind: str = "requests") -> list[Path]:
    return sorted(p.parent for p in (ROOT / "tests" / "blind").glob(f"{kind}-*/manifest.toml"))


def all_sets() -> list[Path]:
    return [ROOT / "tests" / "corpus", *blind_sets()]


@dataclass
class Figures:
    name: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    ambiguous: int = 0
    ambiguous_agree: int = 0
    at_assistance: int = 0          # sent to assistance addresses only: nothing to route
    misses: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def clear(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def add(self, other: Figures) -> None:
        """Add ``other``'s counts to these (a total over several sets)."""
        for f in dataclasses.fields(self):
            if f.type in (int, "int"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def row(self) -> str:
        return (f"{self.name:<28} {self.clear:>5} {self.tp:>4} {self.fp:>4} {self.fn:>4} "
                f"{self.tn:>4} {self.precision:>9.3f} {self.recall:>6.3f} "
                f"{self.ambiguous_agree:>3}/{self.ambiguous:<3} {self.at_assistance:>5}")


HEADER = (f"{'set':<28} {'clear':>5} {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>4} "
          f"{'precision':>9} {'recall':>6} ambig. at-assist.")


def measure(folder: Path, config: Config | None = None, policy: Policy | None = None
            ) -> Figures:
    """Run every message of ``folder`` through the engine and count."""
    config = config or load_config(EXAMPLE_CONFIG)
    policy = policy or Policy(config)
    engine = Engine(config, policy=policy, store=None)
    manifest = tomllib.loads((folder / "manifest.toml").read_text(encoding="utf-8"))
    figures = Figures(folder.name)
    logging.disable(logging.CRITICAL)
    try:
        for entry in manifest["message"]:
            if all(policy.is_assistance(r) for r in entry["rcpts"]):
                figures.at_assistance += 1
                continue
            raw = (folder / "messages" / entry["file"]).read_bytes()
            env = Envelope(mail_from=entry["mail_from"], rcpts=tuple(entry["rcpts"]),
                           queue_id="EVAL")
            d = engine.process_raw(env, raw, size=len(raw)).decision
            routed = was_routed(d.verdict, d.action)
            wanted = entry["label"] in ("support", "followup")
            if entry.get("clarity", "clear") != "clear":
                figures.ambiguous += 1
                figures.ambiguous_agree += routed == wanted
                continue
            figures.tp += routed and wanted
            figures.fp += routed and not wanted
            figures.fn += wanted and not routed
            figures.tn += not routed and not wanted
            if routed != wanted:
                figures.misses.append(
                    f"{'FP' if routed else 'FN'} {entry['file']} [{entry['category']}] "
                    f"score={d.score:.1f} action={d.action} rules={','.join(d.rules)}")
    finally:
        logging.disable(logging.NOTSET)
    return figures
