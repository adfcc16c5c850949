"""Compiles the decision core with mypyc at install: ``pip install .``

Everything else is in ``pyproject.toml``.  The modules in ``COMPILED`` are the ones the
decision spends its time in (README, "Performance").  ``pip install .`` compiles them
(mypy, which brings mypyc, is a build requirement; a few minutes).  They are installed
as the plain Python they are, which behaves the same:

- with ``HELPDESK_MILTER_COMPILE=0`` in the environment (``=1`` forces compiling);
- for an editable install (``pip install -e .``, as ``make`` sets up the development
  tree): a compiled copy placed beside the sources would shadow every later edit;
- when mypyc cannot be imported;
- when there is no C compiler, or a module fails to compile: the extensions are
  optional, so the build warns and installs the pure Python modules.

``make test-compiled`` builds the wheel ``pip install .`` builds and runs the whole suite
on it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
# the decision's modules; message.py is left out (its ParsedMessage caches fields in
# the instance __dict__, which mypyc's native classes do not have); engine, store,
# stages, logs and directory too: compiled with them the decision took 5 % less CPU
# again, but one run of the suite crashed (a segmentation fault in the garbage
# collector) and that was not understood, so they stay plain Python.
COMPILED = ("dedup", "text", "classify", "model", "secrets", "redact", "policy")


# the setuptools commands of an editable install (PEP 660, and the legacy one)
EDITABLE_COMMANDS = ("editable_wheel", "develop")


def wants_compiling(environ: dict, argv: list) -> bool:
    """HELPDESK_MILTER_COMPILE=1 or 0 decides; unset or empty, every install but an
    editable one compiles."""
    flag = environ.get("HELPDESK_MILTER_COMPILE", "").strip().lower()
    if flag in ("1", "yes", "true"):
        return True
    if flag in ("0", "no", "false"):
        return False
    if flag:
        raise SystemExit(f"HELPDESK_MILTER_COMPILE={flag!r}: use 1 (compile) or 0 (pure "
                         "Python); unset, every install but an editable one compiles")
    return not any(command in argv for command in EDITABLE_COMMANDS)


def compiled_modules() -> list:
    if not wants_compiling(dict(os.environ), sys.argv):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("helpdesk-milter: mypyc not available, installing pure Python modules",
              file=sys.stderr)
        return []
    here = os.getcwd()
    os.chdir(ROOT)          # mypycify takes paths relative to the project
    try:
        extensions = mypycify([f"milter/helpdesk_milter/{name}.py" for name in COMPILED],
                              opt_level="3")
    except Exception as exc:  # a type error, a mypy that does not run: stay pure
        print(f"helpdesk-milter: not compiled ({type(exc).__name__}: {exc}); "
              "installing pure Python modules", file=sys.stderr)
        return []
    finally:
        os.chdir(here)
    for extension in extensions:
        extension.optional = True     # no C compiler: build_ext warns, pure Python stays
    return extensions


if __name__ == "__main__":        # (setuptools runs this file as __main__; tests import it)
    setup(ext_modules=compiled_modules())
