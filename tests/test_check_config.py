"""check-config catches what an admin did not mean, in the file's line order, and the
permission check knows the sticky bit.

- watching every mailbox of a domain that is not internal: staff's mail to each other
  would go to the fallback address.  ``check-config`` refuses it (exit 1) and says
  so; ``run`` starts and logs the same as a warning;
- a ``ticket_pattern`` with no capture group is an error;
- problems come in the order of their lines in the file;
- a world-writable directory with the sticky bit (``/tmp``) is accepted, a plain
  world-writable one is not, and a file of ours in a sticky directory must be ours.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import re
import subprocess
import sys
import uuid
from pathlib import Path

from helpdesk_milter.cli import main
from support.milterproc import write_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    if args[0] == "check-config":
        # in this process (check-config has no side effect): a second per call saved
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
    return subprocess.run([sys.executable, "-m", "helpdesk_milter", *args],
                          capture_output=True, text=True, timeout=60)


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[milter]\nsocket = "inet:8894@127.0.0.1"\n'
                    f'database = "{tmp_path}/state.db"\n' + text)
    return path


WATCH_ALL = '[[watch]]\nname = "team"\naddresses = ["*@example.org"]\n'


def test_watching_a_whole_domain_that_is_not_internal_is_refused(tmp_path):
    config = config_file(tmp_path, '[addresses]\ninternal_domains = []\n' + WATCH_ALL)
    out = run("check-config", "--config", str(config))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "helpdesk-milter: the configuration has 1 problem:",
        f"  {config}:8: watch[0].addresses: '*@example.org' watches every mailbox of "
        "example.org, but example.org is not in addresses.internal_domains: mail staff "
        "there write to each other would be taken for client mail and routed to "
        "accueil@assistance.example.org; add \"example.org\" to "
        "addresses.internal_domains"]


def test_an_internal_domain_or_parent_domain_satisfies_it(tmp_path):
    for internal in ('["example.org"]', '["EXAMPLE.org"]', '["@example.org"]'):
        config = config_file(tmp_path, f'[addresses]\ninternal_domains = {internal}\n'
                             '[[watch]]\nname = "team"\naddresses = ["*@example.org", '
                             '"*@support.example.org", "contact@partner.example"]\n')
        out = run("check-config", "--config", str(config))
        assert out.returncode == 0, out.stderr
        assert "internal_domains" not in out.stdout


def test_exact_addresses_only_warn_when_no_domain_is_internal(tmp_path):
    config = config_file(tmp_path, '[[watch]]\nname = "c"\naddresses = '
                         '["contact@example.org"]\n')
    out = run("check-config", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert ("warning: addresses.internal_domains is empty: staff's own mail to a watched "
            "address is treated as client mail") in out.stdout


def test_run_starts_with_the_doubt_and_logs_it(protocol_milters):
    milter = protocol_milters.helpdesk({"addresses": {"internal_domains": ["example.net"]},
                                        "watch": [{"name": "team",
                                                   "addresses": ["*@example.org"]}]})
    assert milter.running
    milter.wait_log(r"WARNING configuration: .*watch\[0\]\.addresses: '\*@example\.org' "
                    r"watches every mailbox of example\.org")


def test_a_ticket_pattern_needs_a_capture_group(tmp_path):
    config = config_file(tmp_path, "[followup]\nticket_pattern = '\\[example #\\d+\\]'\n")
    out = run("check-config", "--config", str(config))
    assert out.returncode == 1
    assert (f"{config}:5: followup.ticket_pattern: '\\\\[example #\\\\d+\\\\]' has no "
            "capture group: put the ticket number in parentheses") in out.stderr


def test_problems_are_listed_in_line_order(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        "[followup]\n"                              # 1
        "ticket_pattern = 'ticket [0-9]+'\n"        # 2: no group
        "[secrets]\n"                               # 3
        'scope = "everything"\n'                    # 4
        "[milter]\n"                                # 5
        'on_eror = "accept"\n'                      # 6
        "[[watch]]\n"                               # 7
        'name = "t"\n'                              # 8
        'addresses = ["contact@example.org"]\n'     # 9
        'mode = "forward"\n'                        # 10
        "[addresses]\n"                             # 11
        'fallback = "nobody"\n'                     # 12
        "[logging]\n"                               # 13
        'target = "file"\n')                        # 14
    out = run("check-config", "--config", str(config))
    assert out.returncode == 1
    lines = [int(m.group(1)) for m in re.finditer(rf"^  {re.escape(str(config))}:(\d+):",
                                                  out.stderr, re.MULTILINE)]
    assert lines == [2, 4, 6, 10, 12, 14], out.stderr


# --- permissions -------------------------------------------------------------------

def test_a_sticky_world_writable_directory_is_accepted(tmp_path):
    # /tmp itself (mode 1777) holds the unix socket; the database sits in a sticky
    # directory of our own
    assert os.stat("/tmp").st_mode & 0o1777 == 0o1777
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config = write_config(tmp_path / "config.toml",
                          socket_path=f"/tmp/hdm-{uuid.uuid4().hex[:8]}.sock",
                          database=shared / "state.db",
                          sections={"addresses": {"internal_domains": ["example.org"]}})
    out = run("check-config", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "world-writable" not in out.stdout + out.stderr
    assert "chmod o-w /tmp" not in out.stdout + out.stderr

    shared.chmod(0o777)                       # no sticky bit: anyone may swap files
    out = run("check-config", "--config", str(config))
    assert out.returncode == 1
    assert f"{shared} is world-writable (mode 0777); fix it with: chmod o-w {shared}" \
        in out.stderr


def test_a_file_someone_else_left_in_a_sticky_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    database = shared / "state.db"
    database.write_bytes(b"")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(database, nobody, -1)
    config = write_config(tmp_path / "config.toml", socket_path=tmp_path / "m.sock",
                          database=database)
    out = run("run", "--config", str(config))
    assert out.returncode == 1
    assert (f"refusing to start: {database} is in a world-writable directory and belongs "
            f"to uid {nobody}, not to the milter's user (uid {os.geteuid()})") in out.stderr


def test_logging_keys_are_checked(tmp_path):
    config = config_file(tmp_path, '[logging]\ntarget = "syslog"\nfacility = "kern"\n'
                         'format = "xml"\nsyslog_socket = "dev/log"\n')
    out = run("check-config", "--config", str(config))
    assert out.returncode == 1
    problems = out.stderr.splitlines()[1:]
    assert problems[0].startswith(f"  {config}:6: logging.facility: 'kern' is not one of: "
                                  "mail, daemon, user, local0")
    assert problems[1].startswith(f"  {config}:7: logging.format: 'xml' is not one of")
    assert problems[2] == (f"  {config}:8: logging.syslog_socket: 'dev/log': give the "
                           "absolute path of a unix socket, such as \"/dev/log\"")
