"""The shipped systemd units: what they promise, checked by systemd's own tools.

No running systemd is needed: ``systemd-analyze verify`` and ``security --offline=yes``
read unit files. ``verify`` checks that every ``Exec`` program exists and that each
``man:`` page in ``Documentation=`` resolves, so it runs in a private mount namespace
where /opt holds a stand-in for the installed program and ``MANPATH`` points at this
repository's man page. (tests/test_readme_production.py runs the unit's command lines
after a real install.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from support.unitrun import EMULATED, NOT_EMULATED, parse_unit

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "systemd" / "helpdesk-milter.service"
SOCKET = ROOT / "systemd" / "helpdesk-milter.socket"
SOCKET_DIR = "/var/spool/postfix/helpdesk-milter"


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail("systemd-analyze is missing: run scripts/install-system-deps.sh "
                    "(Debian package systemd; no running systemd is needed)")
    return found


def service() -> dict[str, list[str]]:
    return parse_unit(SERVICE.read_text())["Service"]


def test_the_socket_folder_is_writable_and_nothing_else_is_invented() -> None:
    svc = service()
    assert svc["ProtectSystem"] == ["strict"]
    # "-": a TCP setup without the folder still starts (systemd: 226/NAMESPACE otherwise)
    assert svc["ReadWritePaths"] == [f"-{SOCKET_DIR}"]
    assert svc["StateDirectory"] == ["helpdesk-milter"]
    # /run is outside chrooted smtpd's view: no runtime directory for the socket.
    assert "RuntimeDirectory" not in svc
    text = SERVICE.read_text()
    assert "/run/helpdesk-milter" not in text
    # The comments give the exact settings the README uses.
    assert 'socket = "unix:/var/spool/postfix/helpdesk-milter/milter.sock"' in text
    assert "smtpd_milters = unix:/helpdesk-milter/milter.sock" in text
    # Every directive is one the emulation in support/unitrun.py knows about.
    assert set(svc) <= EMULATED | NOT_EMULATED
    # A stopped milter means unfiltered mail: any exit systemctl did not ask for restarts.
    assert svc["Restart"] == ["always"]


def test_the_socket_unit_shows_the_same_unix_socket() -> None:
    text = SOCKET.read_text()
    for line in (f"ListenStream={SOCKET_DIR}/milter.sock", "SocketUser=helpdesk-milter",
                 "SocketGroup=postfix", "SocketMode=0660",
                 "smtpd_milters = unix:/helpdesk-milter/milter.sock"):
        assert line in text, line


def test_exec_lines_and_documentation_match_the_install() -> None:
    unit = parse_unit(SERVICE.read_text())
    svc = unit["Service"]
    program = Path(shlex.split(svc["ExecStart"][0])[0])
    prefix = program.parent.parent                     # the virtualenv
    assert program == prefix / "bin" / "helpdesk-milter"
    assert shlex.split(svc["ExecStart"][0])[1:] == [
        "run", "--config", "/etc/helpdesk-milter/config.toml"]
    assert shlex.split(svc["ExecStartPre"][0]) == [
        str(program), "check-config", "--config", "/etc/helpdesk-milter/config.toml"]
    docs = unit["Unit"]["Documentation"]
    assert "man:helpdesk-milter(8)" in docs
    # The file URL is where `pip install` puts the README (data-files in pyproject).
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["data-files"]
    assert data_files["share/man/man8"] == ["man/helpdesk-milter.8"]
    assert "README.md" in data_files["share/doc/helpdesk-milter"]
    assert f"file://{prefix}/share/doc/helpdesk-milter/README.md" in docs
    assert (ROOT / "man" / "helpdesk-milter.8").is_file()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = analyze()
    man = tmp_path / "man" / "man8"
    man.mkdir(parents=True)
    shutil.copy(ROOT / "man" / "helpdesk-milter.8", man)
    program = shlex.split(service()["ExecStart"][0])[0]
    stand_in = (f"mount -t tmpfs tmpfs /opt && mkdir -p {Path(program).parent} && "
                f"printf '#!/bin/sh\\n' > {program} && chmod 755 {program} && "
                f"{tool} verify {SERVICE} {SOCKET}")
    env = dict(os.environ, MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_LEVEL="notice")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", stand_in],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


def test_verify_notices_a_missing_program() -> None:
    """Verify is not a formality: the unit outside the stand-in namespace names a
    program that does not exist on this machine (unless it is really installed)."""
    tool = analyze()
    program = shlex.split(service()["ExecStart"][0])[0]
    if os.path.exists(program):
        pytest.fail(f"{program} exists on this test machine: remove it or adapt the test")
    done = subprocess.run([tool, "verify", "--man=no", str(SERVICE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"Command {program} is not executable" in done.stderr


def test_systemd_analyze_security_matches_the_readme() -> None:
    tool = analyze()
    done = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(SERVICE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    m = re.search(r"Overall exposure level for helpdesk-milter\.service: (\d+\.\d) (\w+)",
                  done.stdout)
    assert m, done.stdout[-2000:]
    score, verdict = float(m.group(1)), m.group(2)
    assert score <= 2.0 and verdict == "OK", done.stdout[-2000:]
    readme = (ROOT / "README.md").read_text()
    assert f'rates it {m.group(1)}, "{verdict}"' in readme, \
        "the README's systemd-analyze security figure is stale"
