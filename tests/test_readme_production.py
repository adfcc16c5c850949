"""The README's "Install on Debian (production)" section, followed line by line.

The section's ``sh`` blocks are run as written, as root, in a scratch copy of this
machine: a private mount namespace where /etc, /opt, /usr/local, /var/lib and
/var/cache are overlays (nothing reaches the host) and /var/spool/postfix is the queue
directory of a private Postfix whose smtpd runs **chrooted** there, as Debian's does.
Only what a container cannot do is translated, each by one rule below:

- ``apt-get install PKG...``: checked (every package installed), not run;
- ``editor FILE``: the README's ``toml`` block is written into FILE's ``[milter]`` table;
- ``systemctl daemon-reload && systemctl enable --now NAME``: there is no systemd here,
  so ``systemd-analyze verify`` checks the installed unit and ``support/unitrun.py`` runs
  its command lines as systemd would (its user, ``ProtectSystem=strict`` with only the
  unit's writable paths, ``PrivateTmp``, ``ProtectHome``, no capabilities);
- ``man NAME``: rendered to a file instead of a pager;
- ``.../pip install .``: run with ``HELPDESK_MILTER_COMPILE=0`` (the pure Python modules,
  the README's documented quicker install, so that this test does not spend minutes
  compiling): ``make test-compiled`` runs the whole suite on the wheel ``pip install .``
  builds by default, compiled.

Then a message goes through the chrooted smtpd to the milter on the README's unix
socket (``smtpd_milters`` from the README's Postfix block) and must come out routed.
Before that, the same unit without ``ReadWritePaths=`` must fail to create its socket
(the bug of issue 15): the emulated sandbox is real, not decorative.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.net import LOOPBACK
from support.postfix import PostfixLab, PostfixLabError, check_requirements
from support.sink import Sink
from support.unitrun import parse_unit

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## Install on Debian (production)"
UNITRUN = Path(__file__).resolve().parent / "support" / "unitrun.py"
OVERLAYS = ("/etc", "/opt", "/usr/local", "/var/lib", "/var/cache")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a clone holds that `pip install .` and the README's commands read.
SOURCE = ("pyproject.toml", "setup.py", "README.md", "milter", "man", "config", "systemd")

REQUEST = """\
From: Sophie Moreau <s.moreau@mairie-exemple.fr>
To: contact@example.org
Subject: Le certificat du site de la mairie a expire
Message-ID: <{mid}>
Date: Thu, 03 Dec 2026 09:00:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Bonjour,

depuis ce matin le site de la mairie affiche une erreur de certificat expire et
les administres ne peuvent plus faire leurs demarches en ligne. Pouvez-vous
regarder rapidement ? Nous avons besoin d'aide, c'est urgent.

Merci,
Sophie Moreau, secretariat de mairie
"""


@dataclass(frozen=True)
class Section:
    shell: list[str]            # the sh blocks' commands, continuation lines joined
    milter_toml: dict[str, object]
    postfix: dict[str, str]     # main.cf parameters of the Postfix block


def production_section(text: str) -> Section:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end > 0 else None]
    shell: list[str] = []
    toml: dict[str, object] = {}
    postfix: dict[str, str] = {}
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```$", body, re.M | re.S):
        if lang == "sh":
            shell += [line for line in block.replace("\\\n", " ").splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
        elif lang == "toml":
            toml = tomllib.loads(block)["milter"]
        elif "smtpd_milters" in block and not postfix:   # the first: the recipe
            joined = re.sub(r"\n[ \t]+", " ", block)
            for line in joined.splitlines():
                if "=" in line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    postfix[key.strip()] = value.strip()
    return Section(shell, toml, postfix)


def test_the_section_has_what_the_recipe_needs() -> None:
    section = production_section(README.read_text())
    assert section.milter_toml["socket"] == \
        "unix:/var/spool/postfix/helpdesk-milter/milter.sock"
    # smtpd is chrooted in /var/spool/postfix: Postfix names the socket inside it.
    assert section.postfix["smtpd_milters"] == "unix:/helpdesk-milter/milter.sock"
    assert any(line.startswith("install -d -o helpdesk-milter -g postfix -m 2750 "
                               "/var/spool/postfix/helpdesk-milter") for line in section.shell)
    unit = parse_unit((ROOT / "systemd/helpdesk-milter.service").read_text())
    exec_start = shlex.split(unit["Service"]["ExecStart"][0])[0]
    assert f"python3 -m venv {Path(exec_start).parent.parent}" in section.shell


# --- the scratch machine -------------------------------------------------------------

class ChrootedSmtpdLab(PostfixLab):
    """The test lab with smtpd chrooted in its queue directory, as on Debian."""

    def master_cf(self) -> str:
        text = super().master_cf()
        line = f"{LOOPBACK}:{self.smtp_port} inet n - n - - smtpd"
        assert line in text
        return text.replace(line, f"{LOOPBACK}:{self.smtp_port} inet n - y - - smtpd")


APPLY_TOML = """\
import re, sys, tomllib
path, wanted = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
lines, table = open(path).read().splitlines(), None
for i, line in enumerate(lines):
    m = re.match(r"\\[(.*)\\]\\s*$", line)
    if m:
        table = m.group(1)
    key = line.split("=", 1)[0].strip()
    if table == "milter" and key in wanted and not line.startswith("#"):
        lines[i] = f"{key} = {wanted.pop(key)}"
assert not wanted, f"not in [milter]: {wanted}"
open(path, "w").write("\\n".join(lines) + "\\n")
tomllib.loads(open(path).read())
"""


def translate(line: str, section: Section, scratch: Path) -> str:
    """The README line as run here (see the module docstring for each rule)."""
    words = shlex.split(line)
    if words[:2] == ["apt-get", "install"]:
        packages = [w for w in words[2:] if not w.startswith("-")]
        return " && ".join(
            f"dpkg-query -W -f='${{Status}}' {p} | grep -q 'install ok installed'"
            for p in packages)
    if words[0] == "editor":
        values = [f"{k}={tomlvalue(v)}" for k, v in section.milter_toml.items()]
        return shlex.join(["/usr/bin/python3", str(scratch / "apply_toml.py"), words[1],
                           *values])
    if words[0] == "systemctl":
        assert line.endswith("systemctl enable --now helpdesk-milter"), line
        unit = "/etc/systemd/system/helpdesk-milter.service"
        broken = scratch / "no-read-write-paths.service"
        steps = [f"systemd-analyze verify {unit} > {scratch}/verify.txt 2>&1",
                 # the counter-proof first: without ReadWritePaths= the socket cannot be made
                 f"sed '/^ReadWritePaths=/d' {unit} > {broken}",
                 f"rc=0; timeout 60 unshare -m --propagation private /usr/bin/python3 "
                 f"{UNITRUN} {broken} > {scratch}/broken.log 2>&1 || rc=$?",
                 f"echo $rc > {scratch}/broken.rc"]
        steps.append(f"unshare -m --propagation private /usr/bin/python3 {UNITRUN} {unit} "
                     f"> {scratch}/milter.log 2>&1 & echo $! > {scratch}/unit.pid")
        return "\n".join(steps)
    if len(words) >= 3 and words[0].endswith("/pip") and words[1:] == ["install", "."]:
        return f"HELPDESK_MILTER_COMPILE=0 {line}"
    if words[0] == "man":
        return (f"man -w {words[1]} > {scratch}/man-path.txt && "
                f"MANPAGER=cat MANWIDTH=80 man {words[1]} > {scratch}/man.txt")
    return line


def tomlvalue(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def script(section: Section, scratch: Path, queue_dir: Path, src: Path) -> str:
    lines = ["PS4='+ [${SECONDS}s] '", "set -euxo pipefail"]
    for target in OVERLAYS:
        name = target.strip("/").replace("/", "-")
        up, work = scratch / "over" / name, scratch / "over" / f"{name}.work"
        lines += [f"mkdir -p {up} {work}",
                  f"mount -t overlay overlay -o lowerdir={target},upperdir={up},"
                  f"workdir={work} {target}"]
    lines += [f"mount --bind {queue_dir} /var/spool/postfix", f"cd {src}"]
    lines += [translate(line, section, scratch) for line in section.shell]
    lines += [f"command -v helpdesk-milter > {scratch}/which.txt",
              f"ls /opt/helpdesk-milter/share/doc/helpdesk-milter/README.md > {scratch}/doc.txt",
              f"echo installed > {scratch}/installed",
              f'wait "$(cat {scratch}/unit.pid)"']
    return "\n".join(lines) + "\n"


@dataclass
class Machine:
    scratch: Path
    lab: PostfixLab
    proc: subprocess.Popen[bytes]

    @property
    def socket_path(self) -> Path:
        return self.lab.queue_dir / "helpdesk-milter" / "milter.sock"

    def log(self) -> str:
        parts = []
        for name in ("setup.log", "milter.log", "verify.txt"):
            path = self.scratch / name
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM the whole namespace's process group; poke libmilter's listener so
        it notices at once; SIGKILL after 15 s."""
        pgid = self.proc.pid
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while (self.proc.poll() is None or _group_alive(pgid)) and \
                time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.2)
                s.connect(str(self.socket_path))
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(10)


def _group_alive(pgid: int) -> bool:
    """True while a process of the group runs. Its zombies are reaped here: the lab
    makes this process a child subreaper, so the namespace's orphans end up ours."""
    alive = False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if pgrp != pgid:
            continue
        if state == "Z" and ppid == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(stat.parent.name), os.WNOHANG)
        elif state != "Z":
            alive = True
    return alive


def clean_env() -> dict[str, str]:
    """A root login's environment, plus this machine's package-registry settings."""
    env = {"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
           "DEBIAN_FRONTEND": "noninteractive"}
    env.update({k: v for k, v in os.environ.items()
                if k.startswith("PIP_") or "proxy" in k.lower()
                or k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")})
    return env


def copy_source(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    dest.mkdir()
    for name in SOURCE:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=ignore)
        else:
            shutil.copy2(path, dest / name)
    return dest


@pytest.fixture
def machine(tmp_path: Path, sink: Sink) -> Iterator[Machine]:
    for tool in ("unshare", "setpriv", "systemd-analyze", "man", "adduser"):
        if not shutil.which(tool, path=CLEAN_PATH):
            pytest.fail(f"{tool} is missing: run scripts/install-system-deps.sh")
    section = production_section(README.read_text())
    params = {k: v for k, v in section.postfix.items() if k != "milter_default_action"}
    try:
        check_requirements()
        # tempfail, not the README's accept: a milter that is not there must fail the
        # test instead of letting the message through unfiltered.
        lab = ChrootedSmtpdLab(sink.port, default_action="tempfail", main_cf=params)
        lab.start()
    except PostfixLabError as exc:
        pytest.fail(f"cannot run the private Postfix: {exc}", pytrace=False)
    try:
        scratch = tmp_path / "machine"
        scratch.mkdir()
        (scratch / "apply_toml.py").write_text(APPLY_TOML)
        src = copy_source(tmp_path / "helpdesk-milter")
        (scratch / "setup.sh").write_text(script(section, scratch, lab.queue_dir, src))
        with open(scratch / "setup.log", "wb") as log:
            proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "bash",
                 str(scratch / "setup.sh")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=clean_env(), start_new_session=True)
        machine = Machine(scratch, lab, proc)
        try:
            yield machine
        finally:
            machine.stop()
    finally:
        lab.stop()


def wait_for(what: str, machine: Machine, ready: Callable[[], bool],
             timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if machine.proc.poll() is not None:
            pytest.fail(f"the README's commands stopped (exit {machine.proc.returncode}) "
                        f"before {what}\n{machine.log()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{machine.log()}")


def accepts(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            s.connect(str(path))
    except OSError:
        return False
    return True


@pytest.mark.postfix
def test_production_recipe_line_by_line(machine: Machine, sink: Sink) -> None:
    wait_for("the milter listens on the README's socket", machine,
             lambda: accepts(machine.socket_path))
    wait_for("the end of the README's commands", machine,
             lambda: (machine.scratch / "installed").exists())
    scratch = machine.scratch
    # helpdesk-milter on the PATH, its man page and README where Documentation= says.
    assert (scratch / "which.txt").read_text().strip() == "/usr/local/bin/helpdesk-milter"
    # man -w shows the link's target: the page pip installed, found through the link.
    assert (scratch / "man-path.txt").read_text().strip() == \
        "/opt/helpdesk-milter/share/man/man8/helpdesk-milter.8"
    assert "helpdesk-milter run" in (scratch / "man.txt").read_text()
    # verify found the program, the user and man:helpdesk-milter(8): no complaint at all.
    assert (scratch / "verify.txt").read_text() == ""
    # The socket: group postfix (setgid folder), mode 0660, in a 2750 folder.
    st, folder = machine.socket_path.stat(), machine.socket_path.parent.stat()
    assert oct(st.st_mode & 0o777) == "0o660"
    assert oct(folder.st_mode & 0o7777) == "0o2750"
    postfix_gid = grp.getgrnam("postfix").gr_gid
    assert st.st_gid == postfix_gid == folder.st_gid
    assert st.st_uid == folder.st_uid != 0          # the service user, not root
    # The counter-proof: the same unit without ReadWritePaths= fails as in issue 15 (the
    # emulated sandbox does refuse what the unit does not allow).
    broken = (scratch / "broken.log").read_text()
    assert (scratch / "broken.rc").read_text().strip() == "1", broken
    assert "/var/spool/postfix/helpdesk-milter/milter.sock" in broken, broken
    assert "Read-only file system" in broken or "cannot opensocket" in broken, broken

    mid = f"readme-production-{os.getpid()}-{time.time_ns()}@mairie-exemple.fr"
    got = machine.lab.deliver(sink, REQUEST.format(mid=mid), "s.moreau@mairie-exemple.fr",
                              ["contact@example.org"], timeout=60)
    assert "mairie-exemple@assistance.example.org" in got.rcpt_tos, machine.log()
    assert str(got[0].headers["X-Helpdesk-Request"]).startswith("support; "
                                                                "structure=mairie-exemple")
    log = (scratch / "milter.log").read_text()
    assert "verdict=support" in log, log
    # Nothing of the install reached the host: it all lives in the overlays.
    for path in ("/etc/helpdesk-milter", "/opt/helpdesk-milter",
                 "/usr/local/bin/helpdesk-milter"):
        assert not os.path.lexists(path), f"{path} leaked out of the scratch machine"
