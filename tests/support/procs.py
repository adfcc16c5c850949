"""What the harness's process wrappers share: reading a log file, and reaping the
processes a killed test run left behind.

``LogFile`` is a mixin for objects with a ``log_path`` (and a ``log_label`` for
messages): the milter, Postfix and dnsmasq wrappers all read their logs this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path

from .net import WaitTimeout, wait_until


class LogFile:
    log_path: Path
    log_label: str = "process"

    def log_text(self, since: int = 0) -> str:
        """The log from byte offset ``since`` (all of it by default)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_offset(self) -> int:
        """The current size of the log, to pass as ``since`` later."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, pattern: str, *, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """Wait until the log (after byte ``since``) matches the regex ``pattern``."""
        rx = re.compile(pattern)
        try:
            return wait_until(lambda: rx.search(self.log_text(since)), timeout,
                              f"{self.log_label} log line /{pattern}/")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n--- {self.log_path} (tail) ---\n"
                              f"{self.log_tail()}") from None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a SIGKILLed test process can stay a
    zombie for a while, and must count as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]]


def kill_orphans(owner_files: Iterable[Path]) -> int:
    """SIGKILL the processes recorded in owner files (JSON: pid, owner_pid, argv) whose
    owner, a test process, no longer exists; remove those files; return how many were
    killed.  The command line is compared first, so a recycled pid is left alone."""
    killed = 0
    for owner_file in owner_files:
        try:
            info = json.loads(owner_file.read_text())
            pid, owner, argv = int(info["pid"]), int(info["owner_pid"]), info["argv"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner == os.getpid() or pid_alive(owner):
            continue
        if cmdline(pid) == argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        with contextlib.suppress(OSError):
            owner_file.unlink()
    return killed
