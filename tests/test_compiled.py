"""Which build of the decision core the suite runs on.

``make test`` runs the pure Python modules (the editable install, never compiled);
``make test-compiled`` runs the same suite on the mypyc-compiled ones (``setup.py``'s
``COMPILED``, in the wheel ``pip install .`` builds by default) and sets
``HELPDESK_MILTER_EXPECT_COMPILED=1``: this test fails when that run would silently test
the pure modules (or the pure run a stale compiled copy).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
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


def _setup_module():
    """setup.py as a module (its ``setup()`` call runs only as ``__main__``)."""
    spec = importlib.util.spec_from_file_location("helpdesk_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pip_install_compiles_by_default_but_not_an_editable_install() -> None:
    wants = _setup_module().wants_compiling
    # what setuptools' PEP 517 backend puts in sys.argv for `pip install .` / `-e .`
    wheel = ["setup.py", "bdist_wheel", "--dist-dir", "/tmp/x"]
    editable = ["setup.py", "editable_wheel", "--dist-dir", "/tmp/x"]
    assert wants({}, wheel) is True
    assert wants({"HELPDESK_MILTER_COMPILE": ""}, wheel) is True
    assert wants({}, editable) is False
    assert wants({}, ["setup.py", "develop"]) is False
    assert wants({"HELPDESK_MILTER_COMPILE": "0"}, wheel) is False
    assert wants({"HELPDESK_MILTER_COMPILE": "no"}, wheel) is False
    assert wants({"HELPDESK_MILTER_COMPILE": "1"}, editable) is True
    assert wants({"HELPDESK_MILTER_COMPILE": " Yes "}, wheel) is True


def test_a_mistyped_compile_flag_is_an_error_that_says_what_to_write() -> None:
    wants = _setup_module().wants_compiling
    try:
        wants({"HELPDESK_MILTER_COMPILE": "sometimes"}, ["setup.py", "bdist_wheel"])
    except SystemExit as exc:
        assert "use 1 (compile) or 0" in str(exc)
    else:
        raise AssertionError("no error for HELPDESK_MILTER_COMPILE=sometimes")
