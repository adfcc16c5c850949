"""Duplicate detection on mail the team did not write, through the engine and a real
SQLite state file.

A *set* (``tests/blind/dedup-*``) is a folder with ``manifest.toml`` and ``messages/``:
scenarios of mails in time order (``scenario``, ``minutes`` since the scenario's start,
``mail_from``, ``rcpts``), each labelled ``same_as`` = the earlier mail it duplicates
(the same request again: resent, re-delivered, forwarded by its sender or a colleague
with a short note) or ``""`` (a first mail, a new request, a complement with new
information, another person's own report of the same outage).  Writers saw only the
briefs in ``tests/blind/briefs/`` (``world.md``, ``dedup-world.md``, the batch brief).

The scenarios share one state file and one clock: scenario N starts ``SPACING``
minutes after scenario N-1, and all mails are decided in time order, so that one
scenario's request can be (wrongly) taken for another's, as in production.

A mail counts as *recognised* as a duplicate when the decision names an earlier copy
(``X-Helpdesk-Duplicate`` with ``match=message-id`` or ``match=text``).  A
``same-transaction`` duplicate (assistance and a watched address in one envelope) says
nothing about an earlier mail and is not counted as recognising one.  Clear cases only;
ambiguous ones are reported as agreement.  A recognised duplicate also says whether it
named the right original (``of=`` the Message-ID of ``same_as`` or of a mail that is
itself a copy of the same request).
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from helpdesk_milter.config import Config, load_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope, strip_brackets
from helpdesk_milter.policy import Decision, Policy
from helpdesk_milter.store import SQLiteStore
from support.blind import Figures

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "config" / "helpdesk-milter.toml"
SPACING = 30          # minutes between the starts of two scenarios
CROSS_MESSAGE = ("message-id", "text")


def dedup_sets() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "tests" / "blind").glob("dedup-*/manifest.toml"))


@dataclass
class DedupFigures(Figures):
    """tp: a duplicate recognised; fn: a duplicate missed; fp: a non-duplicate called
    one; tn: the rest (clear cases)."""

    wrong_original: int = 0        # recognised, but of= names another request
    missed_as_other: int = 0       # of fn: the classifier said "other" (no dedup ran)

    def row(self) -> str:
        return (f"{self.name:<22} {self.tp + self.fn:>5} {self.tp:>4} {self.fn:>4} "
                f"{self.fp:>4} {self.tn:>5} {self.precision:>9.3f} {self.recall:>6.3f} "
                f"{self.wrong_original:>6} {self.missed_as_other:>8} "
                f"{self.ambiguous_agree:>3}/{self.ambiguous:<3}")


HEADER = (f"{'set':<22} {'dups':>5} {'tp':>4} {'fn':>4} {'fp':>4} {'tn':>5} "
          f"{'precision':>9} {'recall':>6} {'wrong-of':>6} {'fn-other':>8} ambig.")


def _message_id(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return strip_brackets(str(msg.get("Message-ID", "")).strip())


def _named_original(d: Decision) -> str:
    """The Message-ID the X-Helpdesk-Duplicate header names (``of=<...>``)."""
    for name, value in d.add_headers:
        if name == "X-Helpdesk-Duplicate":
            found = re.match(r"of=([^;]*)", value)
            return strip_brackets(found.group(1).strip()) if found else ""
    return ""


def measure_dedup(folder: Path, config: Config | None = None) -> DedupFigures:
    """Decide every mail of ``folder`` in time order with one engine and one state file."""
    config = config or load_config(EXAMPLE_CONFIG)
    entries = tomllib.loads((folder / "manifest.toml").read_text(encoding="utf-8"))["message"]
    starts: dict[int, int] = {}
    for e in entries:
        starts.setdefault(e["scenario"], len(starts) * SPACING)
    timeline = sorted(entries, key=lambda e: (starts[e["scenario"]] + e["minutes"],
                                              e["scenario"], e["file"]))
    figures = DedupFigures(folder.name)
    now = [1_780_000_000.0]           # a fixed epoch: the same run gives the same figures
    epoch = now[0]
    ids: dict[str, str] = {}          # file -> Message-ID
    request_of: dict[str, str] = {}   # file -> the first file of its request
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "state.db"
        config = replace(config, milter=replace(config.milter, database=str(db)))
        store = SQLiteStore(db, window=config.dedup.window,
                            similarity=config.dedup.similarity, clock=lambda: now[0])
        engine = Engine(config, store=store, policy=Policy(config), clock=lambda: now[0])
        logging.disable(logging.CRITICAL)
        try:
            for e in timeline:
                now[0] = epoch + 60.0 * (starts[e["scenario"]] + e["minutes"])
                raw = (folder / "messages" / e["file"]).read_bytes()
                ids[e["file"]] = _message_id(raw)
                request_of[e["file"]] = request_of.get(e["same_as"], e["same_as"]) \
                    if e["same_as"] else e["file"]
                env = Envelope(mail_from=e["mail_from"], rcpts=tuple(e["rcpts"]),
                               queue_id="EVAL", client_addr="192.0.2.10")
                d = engine.process_raw(env, raw, size=len(raw)).decision
                said = d.duplicate in CROSS_MESSAGE
                wanted = bool(e["same_as"])
                if e.get("clarity", "clear") != "clear":
                    figures.ambiguous += 1
                    figures.ambiguous_agree += said == wanted
                    continue
                figures.tp += said and wanted
                figures.fp += said and not wanted
                figures.fn += wanted and not said
                figures.tn += not said and not wanted
                if wanted and not said and d.verdict == "other":
                    figures.missed_as_other += 1
                if said and wanted:
                    same_request = {f for f, first in request_of.items()
                                    if first == request_of[e["file"]] and f != e["file"]}
                    if _named_original(d) not in {ids[f] for f in same_request}:
                        figures.wrong_original += 1
                if said != wanted:
                    figures.misses.append(
                        f"{'FP' if said else 'FN'} {e['file']} verdict={d.verdict} "
                        f"action={d.action} duplicate={d.duplicate or '-'} "
                        f"score={d.score:.1f}")
        finally:
            logging.disable(logging.NOTSET)
            store.flush(timeout=30)
            store.close()
    return figures
