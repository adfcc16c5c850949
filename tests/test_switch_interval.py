"""The thread switch interval the daemon sets (app.SWITCH_INTERVAL; see its comment)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from helpdesk_milter import app


@pytest.mark.parametrize(("value", "expected"), [
    ("", app.SWITCH_INTERVAL),
    ("0.005", 0.005),                 # Python's own default, for comparisons
    ("1e-4", 0.0001),
    ("0", app.SWITCH_INTERVAL),       # out of range: the default
    ("5", app.SWITCH_INTERVAL),
])
def test_switch_interval(monkeypatch: pytest.MonkeyPatch, value: str, expected: float) -> None:
    monkeypatch.setenv("HELPDESK_MILTER_SWITCH_INTERVAL", value)
    assert app.switch_interval() == expected


def test_a_bad_value_is_named_and_the_default_used(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HELPDESK_MILTER_SWITCH_INTERVAL", "half a millisecond")
    with caplog.at_level(logging.WARNING):
        assert app.switch_interval() == app.SWITCH_INTERVAL
    assert "HELPDESK_MILTER_SWITCH_INTERVAL" in caplog.text and "half a millisecond" in caplog.text


def test_the_default_is_shorter_than_pythons() -> None:
    default = float(subprocess.check_output(
        [sys.executable, "-c", "import sys; print(sys.getswitchinterval())"]))
    assert default > app.SWITCH_INTERVAL
