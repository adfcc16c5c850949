#!/usr/bin/env python3
"""Regenerate the README's configuration reference from the key table in config.py.

    .venv/bin/python scripts/update-readme.py        # rewrite README.md in place
    .venv/bin/python scripts/update-readme.py --check  # exit 1 if it is out of date
"""

import sys
from pathlib import Path

from helpdesk_milter.config import reference_markdown

START = "<!-- config-reference:start -->\n"
END = "<!-- config-reference:end -->"

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
head, _, rest = text.partition(START)
_, _, tail = rest.partition(END)
new = head + START + reference_markdown() + END + tail
if "--check" in sys.argv:
    sys.exit(0 if new == text else 1)
readme.write_text(new)
