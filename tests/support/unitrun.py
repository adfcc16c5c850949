"""Run a systemd service unit's command lines the way systemd would, without systemd.

The container the tests run in has no running systemd, so ``systemctl start`` is not
available. This plays the part of systemd for one ``Type=simple`` or ``Type=notify``
service (the readiness message itself is tested in tests/test_sd_notify.py), for the
directives that decide whether the milter can start and listen: who it runs as, which
files it can write, its umask. It must run as root inside a private mount namespace
(``unshare -m --propagation private``), so the mounts it makes never reach the host::

    unshare -m --propagation private python3 unitrun.py /etc/systemd/system/x.service

What is emulated (systemd.exec(5)):

- ``ProtectSystem=strict``: every mount of the system's directories read-only
  (``mount -o remount,bind,ro``), except ``/dev``, ``/proc`` and ``/sys``;
- ``ReadWritePaths=`` (a ``-`` prefix: ignored when missing) and ``StateDirectory=``
  (created under /var/lib, owned by ``User=``/``Group=``, ``StateDirectoryMode=``):
  bind mounts left writable;
- ``PrivateTmp=yes``: fresh tmpfs on /tmp and /var/tmp; ``ProtectHome=yes``: empty
  read-only tmpfs on /home, /root and /run/user;
- ``User=``, ``Group=`` (with the user's supplementary groups, as systemd does),
  ``NoNewPrivileges=yes`` and an empty ``CapabilityBoundingSet=``, through setpriv(1);
  ``UMask=``; systemd's clean environment and working directory ``/``;
- ``ExecStartPre=`` lines, which must exit 0, then ``ExecStart=`` replaces this process.

The other hardening directives (system-call filter, address families, ...) are not
emulated: ``systemd-analyze verify`` and ``security`` check them. A directive this file
knows nothing about is an error, so a unit change cannot silently make the emulation
differ from what systemd would do. Standard library only: it runs under the system
Python of a "clean machine".
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path

# Directives acted on here.
EMULATED = {
    "Type", "NotifyAccess", "User", "Group", "ExecStartPre", "ExecStart", "UMask",
    "StateDirectory",
    "StateDirectoryMode", "ReadWritePaths", "ProtectSystem", "ProtectHome", "PrivateTmp",
    "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities",
}
# Directives that do not change whether the command can start, read its files and
# listen on a unix socket (restart policy, kernel and system-call hardening): left to
# systemd-analyze.
NOT_EMULATED = {
    "Restart", "RestartSec", "TimeoutStopSec", "ExecReload", "KillMode", "KillSignal",
    "PrivateDevices", "DevicePolicy", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "ProtectProc", "ProcSubset", "RestrictAddressFamilies", "RestrictNamespaces",
    "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute",
    "RemoveIPC", "KeyringMode", "SystemCallArchitectures", "SystemCallFilter",
    "SystemCallErrorNumber",
}
# ProtectSystem=strict covers the whole tree but the API file systems; only these
# roots are remounted (the container's own machinery mounts are none of our business).
SYSTEM_ROOTS = ("/", "/etc", "/usr", "/opt", "/var", "/srv", "/boot", "/run", "/tmp",
                "/home", "/root", "/lib", "/lib64", "/bin", "/sbin")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnitError(Exception):
    """The unit uses something this emulation cannot reproduce faithfully."""


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``; continuation lines joined, comments out.

    An empty assignment (``CapabilityBoundingSet=``) is kept as ``""``: in systemd it
    resets the list, which the caller interprets.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise UnitError(f"not a unit file line: {line!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def last(service: dict[str, list[str]], key: str, default: str = "") -> str:
    values = service.get(key)
    return values[-1] if values else default


def command_line(value: str) -> list[str]:
    """An Exec line's argv; the ``-``/``@``/``+`` prefixes are refused, not guessed."""
    if value[:1] in "-@+!:":
        raise UnitError(f"Exec prefix {value[0]!r} is not emulated: {value}")
    return shlex.split(value)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        points.append(point)
    return points


def under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def prepare(service: dict[str, list[str]]) -> None:
    """Make the mounts and directories systemd would make before ExecStartPre."""
    unknown = set(service) - EMULATED - NOT_EMULATED
    if unknown:
        raise UnitError(f"directives not known to the emulation: {sorted(unknown)}")
    if last(service, "Type", "simple") not in ("simple", "notify"):
        raise UnitError("only Type=simple and Type=notify are emulated")
    user = pwd.getpwnam(last(service, "User"))
    gid = user.pw_gid
    if last(service, "Group"):
        import grp
        gid = grp.getgrnam(last(service, "Group")).gr_gid

    writable: list[str] = []
    for name in " ".join(service.get("StateDirectory", [])).split():
        state = Path("/var/lib") / name
        state.mkdir(parents=True, exist_ok=True)
        os.chown(state, user.pw_uid, gid)
        state.chmod(int(last(service, "StateDirectoryMode", "0755"), 8))
        writable.append(str(state))
    for entry in " ".join(service.get("ReadWritePaths", [])).split():
        optional = entry.startswith("-")
        path = entry.lstrip("-")
        if not os.path.exists(path):
            if optional:
                continue
            raise UnitError(f"ReadWritePaths={path} does not exist (systemd: 226/NAMESPACE)")
        writable.append(path)

    if last(service, "PrivateTmp") in ("yes", "true", "1"):
        for tmp in ("/tmp", "/var/tmp"):
            mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", tmp)
            writable.append(tmp)
    if last(service, "ProtectHome") in ("yes", "true", "1"):
        for home in ("/home", "/root", "/run/user"):
            if os.path.isdir(home):
                mount("-t", "tmpfs", "-o", "ro,mode=0755", "tmpfs", home)
    elif last(service, "ProtectHome"):
        raise UnitError("only ProtectHome=yes is emulated")
    for path in writable:
        if path not in ("/tmp", "/var/tmp"):
            mount("--bind", path, path)
    protect = last(service, "ProtectSystem")
    if protect == "strict":
        for point in sorted(set(mount_points())):
            if (under(point, SYSTEM_ROOTS) and not under(point, ("/dev", "/proc", "/sys"))
                    and not under(point, tuple(writable))):
                mount("-o", "remount,bind,ro", point)
    elif protect:
        raise UnitError("only ProtectSystem=strict is emulated")


def privileges(service: dict[str, list[str]]) -> list[str]:
    """The setpriv(1) prefix that drops to User=/Group= like systemd."""
    argv = ["setpriv", f"--reuid={last(service, 'User')}",
            f"--regid={last(service, 'Group') or last(service, 'User')}", "--init-groups"]
    if last(service, "NoNewPrivileges") in ("yes", "true", "1"):
        argv.append("--no-new-privs")
    if service.get("CapabilityBoundingSet") == [""]:
        argv += ["--bounding-set=-all", "--inh-caps=-all"]
    elif "CapabilityBoundingSet" in service:
        raise UnitError("only an empty CapabilityBoundingSet= is emulated")
    return argv


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: unitrun.py UNIT.service", file=sys.stderr)
        return 2
    unit = parse_unit(Path(argv[0]).read_text())
    service = unit.get("Service", {})
    prepare(service)
    prefix = privileges(service)
    os.umask(int(last(service, "UMask", "0022"), 8))
    os.chdir("/")
    user = pwd.getpwnam(last(service, "User"))
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": user.pw_dir,
           "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": user.pw_shell}
    for pre in service.get("ExecStartPre", []):
        done = subprocess.run([*prefix, *command_line(pre)], env=env)
        if done.returncode != 0:
            print(f"unitrun: ExecStartPre failed ({done.returncode}): {pre}",
                  file=sys.stderr)
            return done.returncode
    start = service.get("ExecStart", [])
    if len(start) != 1:
        raise UnitError("Type=simple/notify needs exactly one ExecStart=")
    sys.stdout.flush()
    os.execvpe(prefix[0], [*prefix, *command_line(start[0])], env)
    return 127     # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
