"""Compiles the decision core with mypyc when asked: ``HELPDESK_MILTER_COMPILE=1 pip install .``

Everything else is in ``pyproject.toml``.  The modules in ``COMPILED`` are the ones the
decision spends its time in (README, "Performance": 6 to 9 % less CPU per message,
paired).  Opt-in: by default, and whenever compiling is not possible, they are installed
as the plain Python they are, which behaves the same:

- without ``HELPDESK_MILTER_COMPILE=1`` in the environment (``make`` builds the compiled
  copy the suite also runs on, ``make test-compiled``, with it);
- when mypyc cannot be imported (it comes with mypy, a build requirement);
- when there is no C compiler, or a module fails to compile: the extensions are
  optional, so the build warns and installs the pure Python modules.
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


def compiled_modules() -> list:
    if os.environ.get("HELPDESK_MILTER_COMPILE", "0").strip() not in ("1", "yes", "true"):
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


setup(ext_modules=compiled_modules())
