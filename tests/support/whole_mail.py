"""Every whole message the project has, for checks that a change alters no output.

The corpora, the public test mail of other projects, the blind *tuning* sets' messages
(never a held-out set's) and, optionally, the bench mix.  Used by
``scripts/alternative-check.py``, ``scripts/redact-identity.py`` and
``tests/test_redact_alternative.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def whole_messages(mix: int = 0) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of each message; ``mix``: that many bench-mix messages too."""
    for folder in ("corpus", "secrets_corpus", "public_mail", "dedup_pairs"):
        for path in sorted((TESTS / folder).rglob("*.eml")):
            yield str(path.relative_to(TESTS.parent)), path.read_bytes()
    for path in sorted((TESTS / "blind").glob("*/messages/*.eml")):
        if "heldout" in path.parts[-3]:
            continue
        yield str(path.relative_to(TESTS.parent)), path.read_bytes()
    if mix:
        from bench import mix as mixmod
        for m in mixmod.generate(mix, seed=1):
            yield f"mix #{m.index}", m.raw
