"""Fuzzing parse -> decide -> rewrite with hypothesis, bounded for ``make test``.

The generator and the oracle live in ``support/fuzzing.py`` (see there what is generated
and what must hold); ``tests/fuzz/run.py`` runs the same oracle for longer, with
hypothesis or, when installed, coverage-guided with atheris. ``HDM_FUZZ_EXAMPLES`` sets
the number of examples here (default 200: a few seconds).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from helpdesk_milter.config import load_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.store import SQLiteStore
from support.fuzzing import check_one, messages

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("HDM_FUZZ_EXAMPLES", "200"))


def no_dns(name: bytes, timeout: float = 5) -> bytes | None:
    return None


def test_any_message_gets_a_safe_decision(tmp_path_factory):
    store = SQLiteStore(tmp_path_factory.mktemp("fuzz") / "state.db")
    engine = Engine(load_config(ROOT / "config" / "helpdesk-milter.toml"), store=store,
                    dnsfunc=no_dns)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(case=messages())
    def run(case):
        raw, env = case
        check_one(engine, raw, env)

    try:
        run()
    finally:
        store.close()
