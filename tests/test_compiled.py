"""Which build of the decision core the suite runs on.

``make test`` runs the pure Python modules (the editable install);
``make test-compiled`` runs the same suite on the mypyc-compiled ones (``setup.py``'s
``COMPILED``, built as ``pip install .`` builds them) and sets
``HELPDESK_MILTER_EXPECT_COMPILED=1``: this test fails when that run would silently test
the pure modules (or the pure run a stale compiled copy).
"""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compiled_names() -> list[str]:
    """setup.py's COMPILED tuple, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILED tuple")


def test_the_build_under_test_is_the_one_announced() -> None:
    expect = os.environ.get("HELPDESK_MILTER_EXPECT_COMPILED") == "1"
    names = compiled_names()
    assert "secrets" in names and "dedup" in names
    loaded = {name: importlib.import_module(f"helpdesk_milter.{name}").__file__ or ""
              for name in names}
    compiled = {name: not path.endswith(".py") for name, path in loaded.items()}
    assert compiled == dict.fromkeys(names, expect), loaded


def test_every_compiled_module_exists() -> None:
    for name in compiled_names():
        assert (ROOT / "milter" / "helpdesk_milter" / f"{name}.py").is_file()


def test_version_and_start_line_name_the_build() -> None:
    import helpdesk_milter
    expect = os.environ.get("HELPDESK_MILTER_EXPECT_COMPILED") == "1"
    assert helpdesk_milter.build() == ("compiled (mypyc)" if expect else "pure Python")
