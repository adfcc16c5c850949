"""Fixtures shared by the three test layers (see ``tests/support/`` for the machinery).

Session-wide, started on first use and stopped at the end of the run:

- ``sink``: the capture SMTP server Postfix relays to (``support.sink.Sink``);
- ``postfix_lab``: one private Postfix instance (``support.postfix.PostfixLab``),
  running with no milter, relaying everything to ``sink``. A test that needs it on a
  machine where it cannot run (not root, no postfix) *fails* with the reason: the
  end-to-end layer is part of the suite, never silently skipped.

Per test:

- ``milters``: a ``support.milterproc.MilterLauncher`` bound to the lab; milters started
  through it live in the lab's socket directory, are plugged into Postfix, and are
  stopped (and Postfix set back to no milter) when the test ends, pass or fail;
- ``protocol_milters``: the same without Postfix, for the protocol layer;
- ``lab``: ``postfix_lab`` after making sure the sink runs and is empty, the queue is
  empty and no milter is configured: a clean starting point for one e2e test.

Example (an end-to-end test)::

    def test_copy_to_assistance(lab, sink, milters):
        milters.helpdesk({"watch": [{"name": "team", "addresses": ["*@example.org"]}]})
        got = lab.deliver(sink, raw_message, "jean@mairie-exemple.fr",
                          ["alice@example.org"])
        assert "mairie-exemple@assistance.example.org" in got.rcpt_tos
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.load import prepare_lab
from support.milterproc import MilterLauncher
from support.postfix import PostfixLab, PostfixLabError, check_requirements
from support.sink import Sink


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (CI timeout, `kill`) would end the run without teardown and leave a
    # Postfix master and milters behind: turn it into an interrupt, which pytest
    # handles by running the fixture finalizers.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sink]:
    """The capture SMTP sink on 127.0.0.1 (random free port); deliveries also land
    as .eml/.json files in a pytest temp dir for debugging."""
    with Sink(tmp_path_factory.mktemp("sink")) as s:
        yield s


@pytest.fixture(scope="session")
def postfix_lab(sink: Sink) -> Iterator[PostfixLab]:
    """A private Postfix (smtpd on 127.0.0.1:<free port>), no milter, relaying to
    ``sink``; milter_default_action = tempfail. Stopped and removed at session end."""
    try:
        check_requirements()
        lab = PostfixLab(sink.port)
        lab.start()
    except PostfixLabError as exc:
        pytest.fail(f"cannot run the end-to-end tests: {exc}", pytrace=False)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def lab(postfix_lab: PostfixLab, sink: Sink) -> PostfixLab:
    """``postfix_lab`` in a clean state: sink running and emptied, queue empty, no
    milter, milter_default_action = tempfail, main.cf as generated (a test may change
    it with ``lab.postconf({...})``; the next test that asks for ``lab`` undoes it)."""
    prepare_lab(postfix_lab, sink)
    return postfix_lab


@pytest.fixture
def milters(postfix_lab: PostfixLab, tmp_path: Path) -> Iterator[MilterLauncher]:
    """Start milters plugged into the lab; all stopped and unplugged after the test.

    ``milters.helpdesk(sections)`` runs the real milter with a config written from
    ``sections`` (socket and database already filled in) and makes it the lab's
    milter; ``milters.noop()`` does the same with the no-op milter; ``attach=False``
    starts one without plugging it in.
    """
    with MilterLauncher(tmp_path / "milters", postfix_lab) as launcher:
        yield launcher


@pytest.fixture
def protocol_milters(tmp_path: Path) -> Iterator[MilterLauncher]:
    """Start milters with no Postfix at all (protocol layer): drive them with
    ``MilterClient(milter.socket_path)``; all stopped after the test."""
    with MilterLauncher(tmp_path / "milters") as launcher:
        yield launcher


# DKIM/ARC material and the local DNS server (dnsmasq), for any test module.
from support.dkimfixtures import arc_key, dkim_key, dns_server  # noqa: E402, F401
