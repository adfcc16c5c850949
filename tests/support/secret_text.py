"""The one scanner the secrets unit tests share, and how they read its result.

``redacted(text)`` is the text as the redaction leaves it; ``check(text, gone, kept)``
asserts that every value of ``gone`` was removed and every decoy of ``kept`` survived
byte for byte.
"""

from __future__ import annotations

from helpdesk_milter.secrets import SecretScanner, redact_spans

SCANNER = SecretScanner()


def redacted(text: str) -> str:
    return redact_spans(text, SCANNER.scan(text))


def check(text: str, gone: list[str], kept: list[str]) -> None:
    out = redacted(text)
    for value in gone:
        assert value not in out, (value, out)
    for value in kept:
        assert value in out, (value, out)
