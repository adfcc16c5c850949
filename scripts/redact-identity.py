#!/usr/bin/env python3
"""Does a change to redact.py change any redaction?  Byte for byte, over every message.

Loads a reference ``redact.py`` (by default the committed one, ``git show
HEAD:milter/helpdesk_milter/redact.py``, or a file given with ``--reference-file``)
beside the working copy, both on the working copy's ``secrets.py``, and runs
``redact_message`` with each over every whole message we have: the corpora, the
public test mail, the blind *tuning* sets' messages, the bench mix, and the large
shapes of ``tests/bench/memory.py`` (a few MiB, so that long texts are scanned in
windows and rewritten whole), with and without a planted secret.  Prints every
message whose result differs (count, kinds, new body, Subject, where, defects, the
text the classifier reads of ``texts``)
and exits 1 if any does.

    .venv/bin/python scripts/redact-identity.py [--rev HEAD] [--reference-file F]
                                                [--mix 2000] [--large-mib 3]

Held-out sets are never read (their figures come from scripts/eval-secrets.py).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter import redact  # noqa: E402
from helpdesk_milter.message import ParsedMessage  # noqa: E402
from helpdesk_milter.secrets import SecretScanner  # noqa: E402
from support.whole_mail import whole_messages  # noqa: E402


def load_reference(source: str) -> ModuleType:
    """The reference redact.py as a module of the package (its relative imports work)."""
    name = "helpdesk_milter._redact_reference"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "helpdesk_milter"
    sys.modules[name] = module          # dataclasses look their module up
    exec(compile(source, "redact.py (reference)", "exec"), module.__dict__)
    return module


def messages(mix: int, large_mib: float) -> Iterator[tuple[str, bytes]]:
    yield from whole_messages(mix)
    if large_mib:
        sys.path.insert(0, str(ROOT / "tests" / "bench"))
        import memory
        for shape, build in memory.SHAPES.items():
            for secret in (False, True):
                yield (f"memory.py {shape} {large_mib} MiB{' + secret' if secret else ''}",
                       build(int(large_mib * memory.MIB), secret))


def outcome(module: ModuleType, raw: bytes, scanner: SecretScanner) -> tuple[object, ...]:
    r = module.redact_message(raw, scanner)
    # texts as their one reader reads them (a part it cannot reach may be kept empty)
    text = None
    if r.texts is not None:
        parsed = ParsedMessage(raw)
        parsed.adopt_texts(r.texts)
        text = parsed.text
    return (r.count, r.kinds, r.body, r.subject, r.where, r.defects, text, r.subject_text)


_FIELDS = ("count", "kinds", "body", "subject", "where", "defects", "texts", "subject_text")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="git revision of the reference")
    parser.add_argument("--reference-file", type=Path, help="reference redact.py (not git)")
    parser.add_argument("--mix", type=int, default=2000, help="bench mix messages (0: none)")
    parser.add_argument("--large-mib", type=float, default=3.0,
                        help="size of the memory.py shapes (0: none)")
    args = parser.parse_args()
    if args.reference_file is not None:
        source = args.reference_file.read_text("utf-8")
        label = str(args.reference_file)
    else:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.rev}:milter/helpdesk_milter/redact.py"],
            check=True, capture_output=True, text=True).stdout
        label = f"{args.rev}:milter/helpdesk_milter/redact.py"
    reference = load_reference(source)
    scanner = SecretScanner()
    n = differ = changed = 0
    cpu = {"reference": 0.0, "working copy": 0.0}
    digest = hashlib.sha256()
    for name, raw in messages(args.mix, args.large_mib):
        n += 1
        t0 = time.thread_time()
        old = outcome(reference, raw, scanner)
        t1 = time.thread_time()
        new = outcome(redact, raw, scanner)
        cpu["reference"] += t1 - t0
        cpu["working copy"] += time.thread_time() - t1
        changed += old[2] is not None
        digest.update(repr(new).encode("utf-8", "surrogateescape"))
        if old != new:
            differ += 1
            fields = [f for f, a, b in zip(_FIELDS, old, new, strict=True) if a != b]
            print(f"DIFFERS: {name}: {', '.join(fields)}", flush=True)
    print(f"reference {label}\n{n} messages ({changed} with a new body), {differ} differ; "
          f"CPU reference {cpu['reference']:.1f} s, working copy "
          f"{cpu['working copy']:.1f} s; outcomes sha256 {digest.hexdigest()[:16]}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
