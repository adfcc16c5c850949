"""Precision and recall of the secret detectors on the labelled corpus.

``tests/secrets_corpus/snippets.toml`` holds short texts (French and English, secrets,
negatives and look-alikes) with the exact secret values; ``messages/`` holds whole
messages with a manifest.  The per-kind table is printed (``pytest -s`` shows it) and
the bars of issue 4 are asserted: recall >= 0.95 overall, no look-alike damaged, every
redacted message parses with its structure intact.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest

from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import KINDS, SecretScanner, redact_spans
from support.mail import apply_redaction

CORPUS = Path(__file__).parent / "secrets_corpus"
SCANNER = SecretScanner()


def load_snippets() -> list[dict]:
    with open(CORPUS / "snippets.toml", "rb") as fh:
        return tomllib.load(fh)["snippet"]


def load_messages() -> list[dict]:
    with open(CORPUS / "messages" / "manifest.toml", "rb") as fh:
        return tomllib.load(fh)["message"]


@dataclass
class Tally:
    tp: Counter[str]
    fn: Counter[str]
    fp: Counter[str]

    @classmethod
    def empty(cls) -> Tally:
        return cls(Counter(), Counter(), Counter())

    def table(self) -> str:
        rows = [f"{'kind':<18} {'secrets':>7} {'found':>5} {'false':>5} {'recall':>6} "
                f"{'precision':>9}"]
        for kind in [*KINDS, "all"]:
            if kind == "all":
                tp, fn, fp = (sum(c.values()) for c in (self.tp, self.fn, self.fp))
            else:
                tp, fn, fp = self.tp[kind], self.fn[kind], self.fp[kind]
            if tp + fn + fp == 0:
                continue
            recall = tp / (tp + fn) if tp + fn else 1.0
            precision = tp / (tp + fp) if tp + fp else 1.0
            rows.append(f"{kind:<18} {tp + fn:>7} {tp:>5} {fp:>5} {recall:>6.2f} "
                        f"{precision:>9.2f}")
        return "\n".join(rows)


def score_snippets(tally: Tally) -> list[str]:
    """Span-level scoring; returns the problems (misses, false findings, damage)."""
    problems = []
    for snippet in load_snippets():
        text = snippet["text"]
        findings = SCANNER.scan(text)
        redacted = redact_spans(text, findings)
        spans = []
        for secret in snippet["secrets"]:
            start = text.index(secret["value"])
            end = start + len(secret["value"])
            spans.append((start, end))
            hit = any(f.kind == secret["kind"] and f.start < end and f.end > start
                      for f in findings)
            if hit and secret["value"] not in redacted:
                tally.tp[secret["kind"]] += 1
            else:
                tally.fn[secret["kind"]] += 1
                problems.append(f"{snippet['id']}: missed {secret['kind']}")
        for f in findings:
            if not any(f.start < end and f.end > start for start, end in spans):
                tally.fp[f.kind] += 1
                problems.append(f"{snippet['id']}: false {f.kind} at {f.start}-{f.end}")
        for keep in snippet.get("keep", []):
            if keep not in redacted:
                problems.append(f"{snippet['id']}: damaged look-alike {keep!r}")
    return problems




def readable(msg: Message) -> str:
    """Everything a reader could see: subjects and decoded text of every part."""
    out = [str(msg.get("Subject", ""))]
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            out.append(str(part.get_payload()[0].get("Subject", "")))
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            charset = part.get_content_charset() or "utf-8"
            try:
                out.append(payload.decode(charset, "replace"))
            except LookupError:
                out.append(payload.decode("utf-8", "replace"))
    return "\n".join(out)


def shape(msg: Message) -> list[tuple[str, str | None, str]]:
    return [(p.get_content_type(), p.get_content_charset(),
             str(p.get("Content-Transfer-Encoding", "")).lower()) for p in msg.walk()]


def score_message(entry: dict, tally: Tally) -> list[str]:
    """Message-level scoring of one manifest entry; returns the problems."""
    problems = []
    raw = (CORPUS / "messages" / entry["file"]).read_bytes()
    r = redact_message(raw, SCANNER, is_bounce=entry.get("bounce", False))
    out = apply_redaction(raw, r)
    old = BytesParser(policy=policy.default).parsebytes(raw)
    new = BytesParser(policy=policy.default).parsebytes(out)
    name = entry["file"]
    if shape(new) != shape(old):
        problems.append(f"{name}: structure changed")
    text = readable(new)
    for secret in entry["secrets"]:
        if secret["value"] in text or secret["kind"] not in r.kinds:
            tally.fn[secret["kind"]] += 1
            problems.append(f"{name}: missed {secret['kind']}")
        else:
            tally.tp[secret["kind"]] += 1
    expected = {s["kind"] for s in entry["secrets"]}
    for kind in set(r.kinds) - expected:
        tally.fp[kind] += 1
        problems.append(f"{name}: false {kind}")
    if r.count != entry["count"]:
        problems.append(f"{name}: {r.count} findings, expected {entry['count']}")
    for keep in entry["keep"]:
        if keep not in text and keep.encode() not in out:
            problems.append(f"{name}: lost {keep!r}")
    if r.defects:
        problems.append(f"{name}: defects {r.defects}")
    return problems


def score_messages(tally: Tally) -> list[str]:
    return [p for entry in load_messages() for p in score_message(entry, tally)]


def test_corpus_is_well_formed() -> None:
    snippets = load_snippets()
    assert len(snippets) >= 80
    assert len({s["id"] for s in snippets}) == len(snippets)
    assert {s["lang"] for s in snippets} == {"fr", "en"}
    for s in snippets:
        for secret in s["secrets"]:
            assert secret["kind"] in KINDS, s["id"]
            assert s["text"].count(secret["value"]) == 1, f"{s['id']}: value must be unique"
    messages = load_messages()
    assert len(messages) >= 20
    for m in messages:
        assert (CORPUS / "messages" / m["file"]).is_file()


def test_precision_recall_per_kind() -> None:
    tally = Tally.empty()
    problems = score_snippets(tally) + score_messages(tally)
    table = tally.table()
    print("\nsecret detection on tests/secrets_corpus (snippets + messages)\n" + table)
    found, missed, false = (sum(c.values()) for c in (tally.tp, tally.fn, tally.fp))
    recall = found / (found + missed)
    precision = found / (found + false)
    damaged = [p for p in problems if "damaged" in p or "lost" in p or "structure" in p]
    assert recall >= 0.95, "\n".join([table, *problems])
    assert precision >= 0.95, "\n".join([table, *problems])
    assert not damaged, "\n".join(damaged)


@pytest.mark.parametrize("entry", load_messages(), ids=lambda e: e["file"])
def test_corpus_message(entry: dict) -> None:
    assert score_message(entry, Tally.empty()) == []
