#!/usr/bin/env python3
"""Dump every secret finding over the project's texts, to check that a speed change
finds exactly the same things.

    .venv/bin/python scripts/secrets-findings.py [--out FILE] [--mix N]

One line per input: the snippets of the secrets tuning sets
(``tests/blind/secrets-tune-X`` for the letters of ``--sets``, a to q by default; never a
held-out set) and of ``tests/secrets_corpus`` (``scan`` or ``scan_subject``: kind and
offsets of each finding); every message file of those sets, of
``tests/corpus``, ``tests/public_mail`` and of the bench mix (``--mix``, 1000 by
default): ``redact_message``'s count, where and a digest of the new body and Subject,
and ``scan`` over the whole raw file read as text (more text for the detectors: headers,
encoded parts).  The last line is a digest of all lines.  Run it before and after a
change and compare the files (``cmp``): identical output, identical behaviour on them.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter.redact import redact_message  # noqa: E402
from helpdesk_milter.secrets import Finding, SecretScanner  # noqa: E402

# The tuning sets the dump reads: fixed, so that a set being written meanwhile does not
# change it (give others with --sets).
TUNING = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q")


def tuning_sets(letters: tuple[str, ...] = TUNING) -> list[Path]:
    return [ROOT / "tests" / "blind" / f"secrets-tune-{x}" for x in letters]


def snippet_sets(letters: tuple[str, ...] = TUNING) -> list[Path]:
    return [ROOT / "tests" / "secrets_corpus", *tuning_sets(letters)]


def message_files(letters: tuple[str, ...] = TUNING) -> Iterator[Path]:
    folders = [*(s / "messages" for s in snippet_sets(letters)), ROOT / "tests" / "corpus",
               ROOT / "tests" / "public_mail"]
    for folder in folders:
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*") if p.is_file()
                              and p.suffix in (".eml", ".msg", ".txt", "")
                              and "heldout" not in str(p))


def spans(findings: list[Finding]) -> str:
    return " ".join(f"{f.kind}:{f.start}-{f.end}" for f in findings)


def digest(data: bytes | str | None) -> str:
    if data is None:
        return "-"
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:16]


def lines(scanner: SecretScanner, mix: int, letters: tuple[str, ...]) -> Iterator[str]:
    for folder in snippet_sets(letters):
        with open(folder / "snippets.toml", "rb") as fh:
            snippets = tomllib.load(fh).get("snippet", [])
        for s in snippets:
            text = s["text"]
            subject = s.get("where", "body") == "subject"
            found = scanner.scan_subject(text) if subject else scanner.scan(text)
            yield f"{folder.name}/{s['id']} {'S' if subject else 'B'} {spans(found)}"
    for path in message_files(letters):
        raw = path.read_bytes()
        yield from message_lines(scanner, str(path.relative_to(ROOT)), raw)
    if mix:
        from bench import mix as mixmod
        for i, m in enumerate(mixmod.generate(mix, seed=1)):
            yield from message_lines(scanner, f"mix/{i}", m.raw)


def message_lines(scanner: SecretScanner, name: str, raw: bytes) -> Iterator[str]:
    r = redact_message(raw, scanner)
    where = ",".join(f"{loc}={kind}" for loc, kind in r.where)
    yield f"{name} M {r.count} {where} {digest(r.body)} {digest(r.subject)}"
    yield f"{name} T {spans(scanner.scan(raw.decode('utf-8', 'surrogateescape')))}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write here (default: stdout)")
    parser.add_argument("--mix", type=int, default=1000,
                        help="messages of the bench mix to include (0: none)")
    parser.add_argument("--sets", default=",".join(TUNING),
                        help="letters of the secrets-tune-* sets to read (default a to q)")
    args = parser.parse_args()
    letters = tuple(x.strip() for x in args.sets.split(",") if x.strip())
    scanner = SecretScanner()
    total = hashlib.sha256()
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    count = 0
    for line in lines(scanner, args.mix, letters):
        total.update(line.encode("utf-8", "surrogatepass") + b"\n")
        out.write(line + "\n")
        count += 1
    out.write(f"# {count} lines, sha256 {total.hexdigest()}\n")
    if args.out:
        out.close()
        print(f"{count} lines, sha256 {total.hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
