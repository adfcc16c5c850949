"""man/helpdesk-milter.8 is what scripts/make-manpage.py makes from the argument parser,
and man(1) renders it cleanly.

When this fails after a change to the command line: ``.venv/bin/python
scripts/make-manpage.py`` and commit the new page.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from helpdesk_milter.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "man" / "helpdesk-milter.8"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_manpage",
                                                  ROOT / "scripts" / "make-manpage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_page_is_the_generated_one() -> None:
    assert PAGE.read_text() == generator().render(), \
        "man/helpdesk-milter.8 is stale: run .venv/bin/python scripts/make-manpage.py"


def test_every_command_and_option_is_in_the_page() -> None:
    page = PAGE.read_text()
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        assert f".SS {name.replace('-', chr(92) + '-')}\n" in page
        for action in sub._actions:
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, (name, option)


def render(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat", LANG="C.UTF-8",
               **env_extra)
    return subprocess.run(["man", "--warnings", "-l", str(PAGE)], capture_output=True,
                          text=True, env=env, timeout=60)


def test_man_renders_it_without_warnings() -> None:
    if not shutil.which("man"):
        pytest.fail("man is missing: run scripts/install-system-deps.sh (package man-db)")
    done = render({})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert out.startswith("HELPDESK-MILTER(8)")
    for section in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert f"\n{section}\n" in out
    assert "helpdesk-milter check-config [-h] [--config FILE]" in out
