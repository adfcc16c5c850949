"""Run a milter as a subprocess on a unix socket: the real helpdesk-milter or the no-op one.

``MilterProcess`` starts the command, captures its stdout and stderr in one log file
(appended across restarts), and returns from :meth:`~MilterProcess.start` only when the
socket accepts connections. Guarantees:

- ``start()`` refuses a socket path where something already listens, and fails fast, with
  the log tail, if the process exits before its socket is ready;
- ``stop()`` is quick: libmilter notices SIGTERM only when its listener wakes up (every
  5 s), so after SIGTERM the socket is "poked" with empty connections until the process
  exits (~0.1 s instead of ~5 s); SIGKILL after ``timeout`` (15 s);
- every process started here is stopped at interpreter exit at the latest (atexit).

``write_config`` writes a helpdesk-milter TOML config for tests; see ``tests/conftest.py``
for the fixtures that tie this to the Postfix lab.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from .net import WaitTimeout, unix_accepts, wait_until
from .procs import LogFile, kill_orphans

NOOP_MILTER = Path(__file__).with_name("noop_milter.py")
OWNER_SUFFIX = ".owner.json"     # next to each socket: who started the milter
SOCKET_DIR_PREFIX = "hdm-sock-"

# Strong references: a running instance must not escape the atexit guard by being
# garbage-collected.
_LIVE: set[MilterProcess] = set()


class MilterStartError(RuntimeError):
    """The milter did not come up; the message carries the tail of its log."""


class MilterProcess(LogFile):
    """A milter subprocess listening on the unix socket ``socket_path``.

    ``argv`` is the full command. Prefer the constructors :meth:`helpdesk` and
    :meth:`noop`. Usable as a context manager (start/stop).
    """

    def __init__(self, argv: Sequence[str], socket_path: str | Path, log_path: str | Path,
                 *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 name: str = "milter") -> None:
        self.argv = [str(a) for a in argv]
        self.socket_path = Path(socket_path)
        self.log_path = Path(log_path)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = str(cwd) if cwd else None
        self.name = name
        self.log_label = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    def helpdesk(cls, config: str | Path, socket_path: str | Path, log_path: str | Path,
                 *, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> MilterProcess:
        """The real milter: ``python -m helpdesk_milter run --config CONFIG``.

        ``socket_path`` must be the unix socket the config names (``[milter] socket``).
        """
        argv = [sys.executable, "-m", "helpdesk_milter", "run", "--config", str(config),
                *extra_args]
        return cls(argv, socket_path, log_path, env=env, name="helpdesk-milter")

    @classmethod
    def noop(cls, socket_path: str | Path, log_path: str | Path, *,
             noreply: bool = False, quiet: bool = False) -> MilterProcess:
        """The no-op pymilter milter of ``noop_milter.py`` (accepts everything)."""
        argv = [sys.executable, str(NOOP_MILTER), "--socket", f"unix:{socket_path}"]
        if noreply:
            argv.append("--noreply")
        if quiet:
            argv.append("--quiet")
        return cls(argv, socket_path, log_path, name="noop-milter")

    # --- addresses ------------------------------------------------------------

    @property
    def postfix_spec(self) -> str:
        """The socket as Postfix's ``smtpd_milters`` writes it."""
        return f"unix:{self.socket_path}"

    @property
    def libmilter_spec(self) -> str:
        """The socket as libmilter/pymilter (and the config's ``[milter] socket``) write it."""
        return f"unix:{self.socket_path}"

    # --- lifecycle ------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def start(self, timeout: float = 20.0) -> MilterProcess:
        """Start the process; return once its socket accepts connections."""
        if self.running:
            return self
        if self.socket_path.exists():
            if unix_accepts(self.socket_path):
                raise MilterStartError(f"{self.name}: something already listens on "
                                       f"{self.socket_path}")
            self.socket_path.unlink()     # stale, from a killed run
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {self.name} start: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        sweep_stale_milters()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, start_new_session=True)
        _LIVE.add(self)
        # Lets a later test run kill this process if ours dies without cleaning up.
        self._owner_path.write_text(json.dumps(
            {"pid": self.proc.pid, "owner_pid": os.getpid(), "argv": self.argv}))

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise MilterStartError(
                    f"{self.name} exited with status {self.proc.returncode} before its "
                    f"socket was ready\n--- {self.log_path} (tail) ---\n{self.log_tail()}")
            return self.socket_path.exists() and unix_accepts(self.socket_path)

        try:
            wait_until(ready, timeout, f"{self.name} to listen on {self.socket_path}")
        except WaitTimeout as exc:
            self.kill()
            raise MilterStartError(f"{exc}\n--- {self.log_path} (tail) ---\n"
                                   f"{self.log_tail()}") from None
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wake libmilter's listener until the process exits, SIGKILL after
        ``timeout``. Returns the exit status (None if it was never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                # libmilter checks its stop flag only when poll() on the listening
                # socket returns: a connection makes it return now, not in 5 s.
                _poke(self.socket_path)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
            if proc.poll() is None:
                self._note(f"did not exit {timeout:g}s after SIGTERM: SIGKILL")
                proc.kill()
                proc.wait(10)
        self._finish()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL now (a crash, as Postfix sees it) and reap the process."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._finish()
        return proc.returncode

    def restart(self, timeout: float = 20.0) -> MilterProcess:
        """``stop()`` then ``start()`` on the same socket."""
        self.stop()
        return self.start(timeout)

    @property
    def _owner_path(self) -> Path:
        return self.socket_path.with_name(self.socket_path.name + OWNER_SUFFIX)

    def _finish(self) -> None:
        _LIVE.discard(self)
        with contextlib.suppress(OSError):
            self._owner_path.unlink()
        if self.proc is not None:
            self._note(f"exited with status {self.proc.returncode}")
        if self._log is not None:
            self._log.close()
            self._log = None

    def _note(self, text: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(f"--- {self.name} {text}\n".encode())
            self._log.flush()

    def __enter__(self) -> MilterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()



def _poke(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        with contextlib.suppress(OSError):
            s.connect(str(path))


def kill_stale_milters(directory: Path) -> int:
    """SIGKILL the milters started from ``directory`` (their owner files) by a test
    process that no longer exists; returns how many were killed."""
    return kill_orphans(directory.glob(f"*{OWNER_SUFFIX}"))


def sweep_stale_milters() -> None:
    """Kill milters left by dead test processes in private socket directories, and
    remove those directories."""
    for directory in Path(tempfile.gettempdir()).glob(f"{SOCKET_DIR_PREFIX}*"):
        if not any(directory.glob(f"*{OWNER_SUFFIX}")):
            continue
        kill_stale_milters(directory)
        if not any(directory.glob(f"*{OWNER_SUFFIX}")):
            shutil.rmtree(directory, ignore_errors=True)


@atexit.register
def _stop_all_milters() -> None:
    for milter in list(_LIVE):
        with contextlib.suppress(Exception):
            milter.kill()


class _Lab(Protocol):
    milter_dir: Path

    def set_milter(self, spec: str, default_action: str | None = None, *,
                   timeout: float = 15.0) -> None: ...


class MilterLauncher:
    """Starts milters for a test and, given a Postfix lab, plugs them into it.

    With a ``lab``, sockets live in the lab's ``milter_dir`` (reachable by Postfix);
    without, in a private short temporary directory (unix socket paths are limited to
    107 bytes, which a pytest ``tmp_path`` can exceed). ``workdir`` receives configs,
    databases and logs. :meth:`close` stops every milter started here and, if one was
    attached, sets the lab back to no milter and ``milter_default_action = tempfail``.
    """

    def __init__(self, workdir: str | Path, lab: _Lab | None = None) -> None:
        self.lab = lab
        self.workdir = Path(workdir)
        self.started: list[MilterProcess] = []
        self._attached = False
        self._own_socket_dir: Path | None = None
        if lab is not None:
            self.socket_dir = lab.milter_dir
        else:
            self._own_socket_dir = self.socket_dir = Path(
                tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))
            self.socket_dir.chmod(0o755)

    def socket_path(self, name: str) -> Path:
        return self.socket_dir / f"{name}.sock"

    def write_config(self, sections: Mapping[str, Any] | None = None, *,
                     name: str = "helpdesk") -> Path:
        """A helpdesk-milter config listening on ``<milter_dir>/<name>.sock`` with its
        database in ``workdir``; ``sections`` as in :func:`write_config`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        return write_config(self.workdir / f"{name}.toml",
                            socket_path=self.socket_path(name),
                            database=self.workdir / f"{name}.db", sections=sections)

    def helpdesk(self, sections: Mapping[str, Any] | None = None, *,
                 name: str = "helpdesk", attach: bool | None = None,
                 default_action: str | None = None,
                 env: Mapping[str, str] | None = None) -> MilterProcess:
        """Write a config, start ``helpdesk-milter run`` and, with ``attach`` (default:
        when there is a lab), make it the lab's only smtpd milter (returns once new SMTP
        sessions use it)."""
        config = self.write_config(sections, name=name)
        milter = MilterProcess.helpdesk(config, self.socket_path(name),
                                        self.workdir / f"{name}.log", env=env)
        return self._launch(milter, attach, default_action)

    def noop(self, *, name: str = "noop", attach: bool | None = None, noreply: bool = False,
             default_action: str | None = None) -> MilterProcess:
        """Start the no-op milter and, with ``attach`` (default: when there is a lab),
        plug it into the lab."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        milter = MilterProcess.noop(self.socket_path(name), self.workdir / f"{name}.log",
                                    noreply=noreply)
        return self._launch(milter, attach, default_action)

    def attach(self, milter: MilterProcess | str | None,
               default_action: str | None = None) -> None:
        """Make ``milter`` (or a Postfix socket spec, or None for none) the lab's milter."""
        if self.lab is None:
            raise RuntimeError("this MilterLauncher has no Postfix lab to attach to")
        spec = milter.postfix_spec if isinstance(milter, MilterProcess) else (milter or "")
        self.lab.set_milter(spec, default_action)
        self._attached = True

    def _launch(self, milter: MilterProcess, attach: bool | None,
                default_action: str | None) -> MilterProcess:
        self.started.append(milter)
        milter.start()
        if attach or (attach is None and self.lab is not None):
            self.attach(milter, default_action)
        return milter

    def close(self) -> None:
        """Detach from the lab (no milter, default action tempfail); stop every milter."""
        errors: list[BaseException] = []
        if self._attached and self.lab is not None:
            try:
                self.lab.set_milter("", "tempfail")
            except Exception as exc:
                errors.append(exc)
            self._attached = False
        for milter in self.started:
            try:
                milter.stop()
            except Exception as exc:
                errors.append(exc)
        self.started.clear()
        if self._own_socket_dir is not None:
            shutil.rmtree(self._own_socket_dir, ignore_errors=True)
            self._own_socket_dir = None
        if errors:
            raise errors[0]

    def __enter__(self) -> MilterLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- configuration files ------------------------------------------------------------

def write_config(path: str | Path, *, socket_path: str | Path, database: str | Path,
                 sections: Mapping[str, Any] | None = None,
                 socket_mode: str = "0660") -> Path:
    """Write a helpdesk-milter TOML config for tests and return its path.

    ``[milter]`` gets ``socket = "unix:<socket_path>"``, ``socket_mode`` and
    ``database``; ``sections`` adds or overrides anything else: a dict per table
    (``{"milter": {"on_error": "tempfail"}, "clients": {"a.fr": "a"}}``) and a list of
    dicts for an array of tables (``{"watch": [{"name": "team", ...}]}``).

    The default mode 0660 suffices when the socket's directory is the lab's
    ``milter_dir`` (group ``postfix``, setgid): the socket then belongs to group postfix.
    """
    data: dict[str, Any] = {"milter": {"socket": f"unix:{socket_path}",
                                       "socket_mode": socket_mode,
                                       "database": str(database)}}
    for name, value in (sections or {}).items():
        if isinstance(value, Mapping) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    path = Path(path)
    path.write_text(dump_toml(data))
    return path


def dump_toml(data: Mapping[str, Any]) -> str:
    """Serialise nested dicts/lists of str, int, float and bool to TOML (enough for
    test configs: tables, arrays of tables, inline arrays, quoted keys)."""
    out: list[str] = []
    top = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    for k, v in top.items():
        out.append(f"{_key(k)} = {_value(v)}")
    _dump_tables(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


def _dump_tables(data: Mapping[str, Any], prefix: list[str], out: list[str]) -> None:
    for k, v in data.items():
        if _is_table(v):
            name = ".".join(_key(p) for p in [*prefix, k])
            out.append(f"\n[{name}]")
            for sk, sv in v.items():
                if not _is_table(sv) and not _is_table_array(sv):
                    out.append(f"{_key(sk)} = {_value(sv)}")
            _dump_tables(v, [*prefix, k], out)
        elif _is_table_array(v):
            name = ".".join(_key(p) for p in [*prefix, k])
            for item in v:
                out.append(f"\n[[{name}]]")
                for sk, sv in item.items():
                    if not _is_table(sv) and not _is_table_array(sv):
                        out.append(f"{_key(sk)} = {_value(sv)}")
                _dump_tables(item, [*prefix, k], out)


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, Mapping) for i in v)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _string(k)


def _string(s: str) -> str:
    escaped = (s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v!r}")
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, Path):
        return _string(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(i) for i in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML: {v!r}")
