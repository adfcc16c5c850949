#!/usr/bin/env python3
"""How the secret scanner holds up when the same text reaches it in another form.

    .venv/bin/python scripts/secrets-robustness.py [-v] [--sets a,b,...] [FORM ...]

Mail programs change what people typed before the milter reads it: they wrap prose at
a width, quote a reply with "> ", forward it under a header block, send it with CRLF line
ends.  For every body snippet of the tuning sets (``tests/blind/secrets-tune-X`` for the
letters given, a to q by default, and ``tests/secrets_corpus``; never a held-out set),
this rewrites the text in each FORM (w72, w55, w40: prose lines rewrapped at that width;
quote; fwd; crlf) and prints, per form: the secrets the scanner finds in the original
text, how many of them it still removes from the rewritten one, and how many decoys it
keeps in the original but damages in the rewritten one.  ``-v`` lists the cases.

Only prose lines are rewrapped (six words or more, mostly words, no table bar, tab,
aligned columns, markup or assignment), as a mail program's format=flowed wrap would.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter.secrets import SecretScanner, redact_spans  # noqa: E402

FORWARD = ("---------- Forwarded message ---------\nDe : Marie <marie@example.org>\n"
           "Date: lun. 2 mars 2026 à 10:12\nSubject: info\nTo: <bob@example.org>\n\n")


def _prose(line: str) -> bool:
    words = line.split()
    return (len(words) >= 6 and not any(c in line for c in "<{=|;\t")
            and "  " not in line.strip() and not line.lstrip().startswith(">")
            and sum(w.strip(".,;:!?()«»\"'").isalpha() for w in words) >= 0.6 * len(words))


def rewrap(text: str, width: int) -> str:
    out: list[str] = []
    for line in text.split("\n"):
        if len(line) > width and _prose(line):
            out.extend(textwrap.wrap(line, width, break_long_words=False,
                                     break_on_hyphens=False) or [""])
        else:
            out.append(line)
    return "\n".join(out)


FORMS: dict[str, Callable[[str], str]] = {
    "w72": lambda t: rewrap(t, 72),
    "w55": lambda t: rewrap(t, 55),
    "w40": lambda t: rewrap(t, 40),
    "quote": lambda t: "\n".join("> " + line if line else ">" for line in t.split("\n")),
    "fwd": lambda t: FORWARD + t,
    "crlf": lambda t: t.replace("\n", "\r\n"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("forms", nargs="*", help=f"of {', '.join(FORMS)} (default: all)")
    parser.add_argument("--sets", default="a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    unknown = [f for f in args.forms if f not in FORMS]
    if unknown:
        parser.error(f"unknown form(s): {', '.join(unknown)}")
    folders = [ROOT / "tests" / "blind" / f"secrets-tune-{x}" for x in args.sets.split(",")]
    folders.append(ROOT / "tests" / "secrets_corpus")
    snippets = []
    for folder in folders:
        assert "heldout" not in folder.name
        with open(folder / "snippets.toml", "rb") as fh:
            for s in tomllib.load(fh).get("snippet", []):
                if s.get("where", "body") == "body":
                    snippets.append((folder.name, s))
    scanner = SecretScanner()
    print(f"{'form':<6} {'found':>6} {'kept':>6} {'ratio':>6} {'decoys':>6} {'damaged':>7}")
    for form in args.forms or list(FORMS):
        change = FORMS[form]
        found = kept = decoys = damaged = 0
        cases: list[str] = []
        for name, s in snippets:
            text = s["text"]
            before = redact_spans(text, scanner.scan(text))
            other = change(text)
            after = redact_spans(other, scanner.scan(other))
            for secret in s.get("secrets", []):
                value = secret["value"]
                if value in text and value not in before and value in other:
                    found += 1
                    if value in after:
                        cases.append(f"{name}/{s['id']}: lost {value!r}")
                    else:
                        kept += 1
            for keep in s.get("keep", []):
                if keep in before and keep in other:
                    decoys += 1
                    if keep not in after:
                        damaged += 1
                        cases.append(f"{name}/{s['id']}: damaged {keep!r}")
        print(f"{form:<6} {found:>6} {kept:>6} {kept / max(found, 1):>6.3f} {decoys:>6} "
              f"{damaged:>7}")
        if args.verbose:
            for line in cases:
                print("    " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
