"""Secret redaction scored on labelled sets written blind to the code.

A *set* is a folder with ``snippets.toml`` (``[[snippet]]`` tables: id, lang,
where = body|subject, text, secrets = [{kind, value}], keep = [decoys]) and, optionally,
``messages/*.eml`` with ``messages/manifest.toml`` (``[[message]]``: file, secrets,
keep, as they read once decoded).  The blind batches ``tests/blind/secrets-*`` have this
shape, and so does the project's own ``tests/secrets_corpus``; batches whose name
contains ``heldout`` are frozen: they are measured, never tuned on.

Scoring goes through the library as the milter does: a body snippet through
:meth:`SecretScanner.scan` and :func:`redact_spans`, a subject snippet through the
Subject path (:meth:`SecretScanner.scan_subject`), a message through
:func:`redact_message` and :func:`support.mail.apply_redaction`.

- A secret is *found* when a finding overlaps it (for a message: the message had a
  finding) and its value no longer occurs after redaction.  Its ``kind`` is the
  writer's guess and is not scored.
- A decoy is *damaged* when its ``keep`` string no longer occurs after redaction (for a
  message: in no decoding of any part).  A message whose MIME structure changed counts
  as damaged too.
"""

from __future__ import annotations

import html
import tomllib
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner, redact_spans
from support.mail import apply_redaction

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "secrets_corpus"

HEADER = (f"{'set':<22} {'secrets':>7} {'found':>5} {'missed':>6} {'recall':>6} "
          f"{'decoys':>6} {'damaged':>7}")


def blind_secret_sets() -> list[Path]:
    """Every ``tests/blind/secrets-*`` folder with a ``snippets.toml``."""
    return sorted(p.parent for p in (ROOT / "tests" / "blind").glob("secrets-*/snippets.toml"))


@dataclass
class SecretFigures:
    """Figures of one set; ``misses`` and ``damage`` name the cases (with values: they
    are the writers' invented values, shown to whoever tunes on a tuning set)."""

    name: str
    secrets: int = 0
    found: int = 0
    decoys: int = 0
    damaged: int = 0
    misses: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / self.secrets if self.secrets else 1.0

    def add(self, other: SecretFigures) -> None:
        self.secrets += other.secrets
        self.found += other.found
        self.decoys += other.decoys
        self.damaged += other.damaged

    def row(self) -> str:
        return (f"{self.name:<22} {self.secrets:>7} {self.found:>5} "
                f"{self.secrets - self.found:>6} {self.recall:>6.3f} {self.decoys:>6} "
                f"{self.damaged:>7}")


def load_toml(path: Path) -> dict:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def score_snippet(snippet: dict, scanner: SecretScanner, figures: SecretFigures) -> None:
    text = snippet["text"]
    subject = snippet.get("where", "body") == "subject"
    findings = getattr(scanner, "scan_subject", scanner.scan)(text) if subject \
        else scanner.scan(text)
    redacted = redact_spans(text, findings)
    sid = snippet["id"]
    for secret in snippet.get("secrets", []):
        value = secret["value"]
        figures.secrets += 1
        start = text.find(value)
        end = start + len(value)
        hit = start >= 0 and any(f.start < end and f.end > start for f in findings)
        if hit and value not in redacted:
            figures.found += 1
        else:
            figures.misses.append(f"{sid}: missed {secret.get('kind', '?')} {value!r}")
    for keep in snippet.get("keep", []):
        figures.decoys += 1
        if keep not in redacted:
            figures.damaged += 1
            figures.damage.append(f"{sid}: damaged {keep!r} -> "
                                  f"{_context(redacted, text, keep)!r}")


def _context(redacted: str, text: str, keep: str) -> str:
    """Where the decoy was, in the redacted text (for the report of a tuning set)."""
    i = text.find(keep)
    return redacted[max(0, i - 20):i + len(keep) + 40] if i >= 0 else ""


def readable_variants(msg: Message) -> list[str]:
    """Every text a reader may see, decoded every plausible way (declared charset,
    UTF-8, Latin-1; HTML also with its entities decoded)."""
    out = [str(msg.get("Subject", ""))]
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                out.append(str(inner[0].get("Subject", "")))
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charsets = [part.get_content_charset() or "utf-8", "utf-8", "cp1252"]
        for charset in dict.fromkeys(charsets):
            try:
                decoded = payload.decode(charset, "replace")
            except LookupError:
                continue
            out.append(decoded)
            if "&" in decoded:
                out.append(html.unescape(decoded))
    return out


def shape(msg: Message) -> list[tuple[str, str | None, str]]:
    return [(p.get_content_type(), p.get_content_charset(),
             str(p.get("Content-Transfer-Encoding", "")).lower()) for p in msg.walk()]


def score_message(folder: Path, entry: dict, scanner: SecretScanner,
                  figures: SecretFigures) -> None:
    name = entry["file"]
    raw = (folder / "messages" / name).read_bytes()
    r = redact_message(raw, scanner, is_bounce=entry.get("bounce", False))
    out = apply_redaction(raw, r)
    parser = BytesParser(policy=policy.default)
    old, new = parser.parsebytes(raw), parser.parsebytes(out)
    texts = readable_variants(new)
    for secret in entry.get("secrets", []):
        value = secret["value"]
        figures.secrets += 1
        if r.count and not any(value in t for t in texts):
            figures.found += 1
        else:
            figures.misses.append(f"{name}: missed {secret.get('kind', '?')} {value!r}")
    for keep in entry.get("keep", []):
        figures.decoys += 1
        if not any(keep in t for t in texts) and keep.encode() not in out:
            figures.damaged += 1
            figures.damage.append(f"{name}: damaged {keep!r}")
    if shape(new) != shape(old):
        figures.damaged += 1
        figures.damage.append(f"{name}: structure changed")


def measure_secrets(folder: Path, scanner: SecretScanner | None = None) -> SecretFigures:
    """Score one set folder (snippets and, when present, messages)."""
    scanner = scanner or SecretScanner()
    figures = SecretFigures(folder.name)
    for snippet in load_toml(folder / "snippets.toml").get("snippet", []):
        score_snippet(snippet, scanner, figures)
    manifest = folder / "messages" / "manifest.toml"
    if manifest.is_file():
        for entry in load_toml(manifest).get("message", []):
            score_message(folder, entry, scanner, figures)
    return figures
