"""A private, disposable Postfix instance for end-to-end tests.

``PostfixLab`` writes its own ``main.cf``/``master.cf`` into a fresh run directory and
starts a master that never touches the system instance:

- smtpd listens on 127.0.0.1:<free high port> only; every other service is ``unix``;
- nothing is delivered locally (empty ``mydestination``); everything is relayed to
  ``[127.0.0.1]:<relay_port>`` (the capture sink), with a short retry backoff;
- every service runs with ``chroot = n`` (a chroot would need /etc files copied into the
  queue and would make ``unix:/`` milter paths chroot-relative);
- the log goes to ``<run>/postfix.log`` (``maillog_file`` + the ``postlog`` service);
- milters: ``milter_protocol = 6``, ``milter_default_action = tempfail`` unless told
  otherwise (a dead milter must fail a test, not let mail through silently), the
  ``{client_addr}`` family in ``milter_connect_macros``;
- ``milter_dir``: a directory owned by root, group ``postfix``, mode 02755 (setgid):
  a unix socket created there belongs to group ``postfix``, so a milter running as root
  with socket mode 0660 is reachable by Postfix's smtpd (user ``postfix``).

The lessons behind this (root only; ``postfix stop`` returns before the master exits;
``reload`` is asynchronous) are in the project's notes; each is handled below where it
bites. Always stopped: context manager, plus an ``atexit`` guard for anything still
running, plus a sweep of run directories whose owning process died (a SIGKILLed pytest).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import email.parser
import email.policy
import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .milterproc import kill_stale_milters
from .net import LOOPBACK, WaitTimeout, free_port, port_is_free, tcp_listening, wait_until
from .procs import LogFile, pid_alive
from .sink import Deliveries, Sink

RUN_PREFIX = "hdm-postfix-"
MARKER = "helpdesk-milter-test-lab.json"   # only a directory holding this is ever removed
HOSTNAME = "lab.localdomain"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Strong references: a running instance must not escape the atexit guard by being
# garbage-collected.
_LIVE: set[PostfixLab] = set()


class PostfixLabError(RuntimeError):
    """The lab could not be set up or operated; the message says why and what to check."""


class SmtpRejected(Exception):
    """The lab's smtpd refused the message (any non-2xx/3xx answer).

    ``stage`` is where: ``connect`` (greeting), ``helo``, ``mail``, ``rcpt`` (every
    recipient refused; see ``refused``), ``data`` (the DATA command) or ``message`` (the
    answer after the final dot, where milter end-of-message verdicts show).
    """

    def __init__(self, stage: str, code: int, message: str,
                 refused: Mapping[str, tuple[int, str]] | None = None) -> None:
        self.stage = stage
        self.code = code
        self.message = message
        self.refused = dict(refused or {})
        super().__init__(f"SMTP {stage} rejected: {code} {message}")

    @property
    def temporary(self) -> bool:
        """True for a 4xx answer (the client would retry)."""
        return 400 <= self.code < 500


@dataclass(frozen=True)
class SendResult:
    """The answer to a message smtpd accepted."""

    code: int                                  # 250
    message: str                               # "2.0.0 Ok: queued as 4Xyz..."
    queue_id: str | None                       # parsed from the message, if present
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # partial refusals


def find_postfix() -> Path:
    """The ``postfix`` command, or PostfixLabError saying how to install it."""
    found = shutil.which("postfix")
    if found:
        return Path(found)
    for d in SBIN_DIRS:
        p = Path(d, "postfix")
        if p.is_file() and os.access(p, os.X_OK):
            return p
    raise PostfixLabError(
        "the postfix binary was not found (PATH and /usr/sbin); install it with: "
        "echo 'postfix postfix/main_mailer_type select No configuration' | "
        "debconf-set-selections && apt-get install -y --no-install-recommends postfix")


def check_requirements() -> Path:
    """Fail with a clear message unless this process can run a private Postfix.

    Needs root (the master must run as root; as another user ``postfix start`` fails
    silently because it cannot write its log), the ``postfix`` binary, and the
    ``postfix`` user and ``postdrop`` group that the Debian package creates.
    """
    if os.geteuid() != 0:
        raise PostfixLabError(
            "the end-to-end tests run a private Postfix instance and must run as root "
            f"(euid is {os.geteuid()}); run the test suite as root")
    binary = find_postfix()
    try:
        grp.getgrnam("postdrop")
        grp.getgrnam("postfix")
    except KeyError as exc:
        raise PostfixLabError(f"group {exc} missing: reinstall the postfix package") from None
    return binary


class PostfixLab(LogFile):
    """A private Postfix instance relaying to 127.0.0.1:``relay_port``.

    Construct, then :meth:`start` (or use ``with``). ``milter`` and ``default_action``
    set ``smtpd_milters``/``milter_default_action`` at start; :meth:`set_milter` changes
    them on the running instance and returns only once new SMTP sessions use them.
    ``main_cf`` adds or overrides main.cf parameters.
    """

    log_label = "Postfix"

    def __init__(self, relay_port: int, *, run_dir: str | Path | None = None,
                 smtp_port: int | None = None, milter: str = "",
                 default_action: str = "tempfail", command_timeout: str = "10s",
                 content_timeout: str = "60s", connect_timeout: str = "5s",
                 main_cf: Mapping[str, str] | None = None) -> None:
        self.postfix_bin = check_requirements()
        self.sbin = self.postfix_bin.parent
        self.relay_port = relay_port
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else Path(
            tempfile.mkdtemp(prefix=RUN_PREFIX))
        self.smtp_port = smtp_port or free_port(exclude={relay_port})
        self.milter = milter
        self.default_action = default_action
        self.command_timeout = command_timeout
        self.content_timeout = content_timeout
        self.connect_timeout = connect_timeout
        self.extra_main_cf = dict(main_cf or {})
        self._initial = (milter, default_action, dict(self.extra_main_cf))
        self._auto_port = smtp_port is None
        self.conf_dir = self.run_dir / "conf"
        self.queue_dir = self.run_dir / "queue"
        self.data_dir = self.run_dir / "data"
        self.milter_dir = self.run_dir / "milter"
        self.log_path = self.run_dir / "postfix.log"
        self._started = False

    # --- lifecycle ------------------------------------------------------------

    def __enter__(self) -> PostfixLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> PostfixLab:
        """Write the configuration and start the master; return when smtpd listens.

        On failure everything started so far is stopped and the run directory removed;
        the error includes the tail of the Postfix log.
        """
        if self._started:
            return self
        sweep_stale_labs()
        if not port_is_free(self.smtp_port):
            if not self._auto_port:
                raise PostfixLabError(f"port {LOOPBACK}:{self.smtp_port} is already in use")
            self.smtp_port = free_port(exclude={self.relay_port})
        self._write_config()
        _LIVE.add(self)
        self._started = True
        try:
            # Not "postfix check": it takes ~2.6 s; "start" runs the fatal checks itself.
            _become_subreaper()
            self._postfix("start")
            wait_until(lambda: self.master_pid() is not None and
                       tcp_listening(self.smtp_port), timeout,
                       f"Postfix smtpd to listen on {LOOPBACK}:{self.smtp_port}")
        except BaseException as exc:
            tail = self.log_tail()
            self.stop()
            if isinstance(exc, (PostfixLabError, WaitTimeout)):
                raise PostfixLabError(f"{exc}\n--- postfix log (tail) ---\n{tail}") from exc
            raise
        return self

    def stop(self, timeout: float = 15.0, *, keep_run_dir: bool = False) -> None:
        """Stop the master and wait until it is gone; then remove the run directory.

        ``postfix stop`` returns before the master exits, so its PID is waited on; after
        ``timeout`` seconds ``postfix abort``, then SIGKILL. Leftover daemons of this
        instance (found by their MAIL_CONFIG) are killed. Idempotent; never raises for a
        lab that is already down.
        """
        if not self._started:
            return
        self._started = False
        _LIVE.discard(self)
        stop_instance(self.run_dir, timeout)
        if self._own_run_dir and not keep_run_dir:
            _remove_run_dir(self.run_dir)

    def restart(self, timeout: float = 20.0) -> PostfixLab:
        """Stop and start again, keeping the run directory (and so the queue)."""
        if self._started:
            self._started = False
            _LIVE.discard(self)
            stop_instance(self.run_dir)
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self._started and self.master_pid() is not None

    def master_pid(self) -> int | None:
        """The master's PID if it is alive."""
        return _master_pid(self.run_dir)

    # --- configuration --------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters this lab writes (before ``postconf`` changes)."""
        run = self.run_dir
        params = {
            "compatibility_level": "3.6",
            "config_directory": str(self.conf_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"postfix-lab-{self.smtp_port}",
            "maillog_file": str(self.log_path),
            # Without this a maillog_file outside /var is refused.
            "maillog_file_prefixes": str(run),
            "myhostname": HOSTNAME,
            "mydomain": "localdomain",
            "myorigin": "$myhostname",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "smtp_bind_address": LOOPBACK,
            # Nothing is local: every recipient is relayed to the sink.
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery disabled in the test lab",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[{LOOPBACK}]:{self.relay_port}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            # Room for the hostile-input tests (50 MB, 10,000 recipients).
            "message_size_limit": str(200 * 1024 * 1024),
            "smtpd_recipient_limit": "20000",
            # Deliver at once; retry quickly when the sink was down.
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "5s",
            "bounce_queue_lifetime": "1h",
            "maximal_queue_lifetime": "1h",
            "smtpd_milters": self.milter,
            "non_smtpd_milters": "",
            "milter_protocol": "6",
            "milter_default_action": self.default_action,
            "milter_connect_timeout": self.connect_timeout,
            "milter_command_timeout": self.command_timeout,
            "milter_content_timeout": self.content_timeout,
            # Postfix sends no {client_*} macros unless asked.
            "milter_connect_macros": "j {daemon_name} {daemon_addr} v _ {client_addr} "
                                     "{client_name} {client_port}",
        }
        params.update(self.extra_main_cf)
        return params

    def master_cf(self) -> str:
        """master.cf: smtpd on loopback only, everything else as stock, chroot = n."""
        return f"""\
# generated by helpdesk-milter tests (support/postfix.py) -- disposable, loopback only
{LOOPBACK}:{self.smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def _write_config(self) -> None:
        for d in (self.run_dir, self.conf_dir, self.queue_dir, self.data_dir):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
            d.chmod(0o755)
        self.milter_dir.mkdir(exist_ok=True)
        os.chown(self.milter_dir, 0, grp.getgrnam("postfix").gr_gid)
        self.milter_dir.chmod(0o2755)
        shutil.chown(self.data_dir, "postfix", "postfix")
        (self.run_dir / MARKER).write_text(json.dumps(
            {"owner_pid": os.getpid(), "created": time.time(),
             "smtp_port": self.smtp_port}))
        lines = ["# generated by helpdesk-milter tests (support/postfix.py)"]
        lines += [f"{k} = {v}" for k, v in self.main_cf().items()]
        (self.conf_dir / "main.cf").write_text("\n".join(lines) + "\n")
        (self.conf_dir / "master.cf").write_text(self.master_cf())
        self._age_config()

    def _age_config(self) -> None:
        # Postfix refuses to read a main.cf/master.cf modified within the last second
        # or so ("being edited"): every postfix command then sleeps in 300 ms steps,
        # ~2 s per reload. Backdate the files: nothing else edits them.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.conf_dir / name, (past, past))

    def postconf(self, params: Mapping[str, str], *, reload: bool = True,
                 timeout: float = 15.0) -> None:
        """Set main.cf parameters; with ``reload``, wait until new sessions use them.

        For the milter itself use :meth:`set_milter`. :meth:`reset_config` undoes these.
        """
        args = [f"{k} = {v}" for k, v in params.items()]
        self.extra_main_cf.update(params)     # kept by restart(), which rewrites main.cf
        self._run([str(self.sbin / "postconf"), "-c", str(self.conf_dir), "-e", *args])
        self._age_config()
        if reload and self.running:
            self.reload(timeout)

    @property
    def config_changed(self) -> bool:
        """True if main.cf differs from what the lab started with (milter included)."""
        return (self.milter, self.default_action, self.extra_main_cf) != self._initial

    def reset_config(self, timeout: float = 15.0) -> None:
        """Undo every ``postconf``/``set_milter`` change since construction and reload
        (only if something changed): a clean instance for the next test."""
        if not self.config_changed:
            return
        self.milter, self.default_action, initial_extra = (
            self._initial[0], self._initial[1], dict(self._initial[2]))
        added = [k for k in self.extra_main_cf if k not in initial_extra]
        self.extra_main_cf = initial_extra
        baseline = self.main_cf()
        unknown = [k for k in added if k not in baseline]
        if unknown:
            # Parameters that were not in the generated main.cf: back to Postfix's default.
            self._run([str(self.sbin / "postconf"), "-c", str(self.conf_dir), "-X",
                       *unknown])
        self._run([str(self.sbin / "postconf"), "-c", str(self.conf_dir), "-e",
                   *[f"{k} = {v}" for k, v in baseline.items()]])
        self._age_config()
        if self.running:
            self.reload(timeout)

    def set_milter(self, spec: str, default_action: str | None = None, *,
                   timeout: float = 15.0) -> None:
        """Point ``smtpd_milters`` at ``spec`` (Postfix syntax: ``unix:/path`` or
        ``inet:127.0.0.1:PORT``; ``""`` for none) and optionally change
        ``milter_default_action``. Returns once every new SMTP session uses the new
        setting (see :meth:`reload`)."""
        if spec and not spec.startswith(("unix:/", f"inet:{LOOPBACK}:", "inet:localhost:")):
            raise ValueError(f"milter must be unix:/path or inet:{LOOPBACK}:PORT "
                             f"(Postfix syntax), got {spec!r}")
        params = {"smtpd_milters": spec}
        if default_action is not None:
            params["milter_default_action"] = default_action
        self._run([str(self.sbin / "postconf"), "-c", str(self.conf_dir), "-e",
                   *[f"{k} = {v}" for k, v in params.items()]])
        self._age_config()
        self.milter = spec
        if default_action is not None:
            self.default_action = default_action
        if self.running:
            self.reload(timeout)

    def reload(self, timeout: float = 15.0) -> None:
        """``postfix reload``, and return only when new SMTP sessions see the new config.

        Reload is asynchronous, and an smtpd process that already runs keeps its old
        settings for its next sessions until it exits. So: note the smtpd processes that
        exist now, reload, wait for the master's ``reload`` log line, then wait until
        every noted smtpd has exited (idle ones do so at once when the master
        re-reads its config). After that, every smtpd is a fresh one. An SMTP session
        left open by a test keeps its smtpd alive: then this times out, naming it.
        """
        master = self.master_pid()
        if master is None:
            raise PostfixLabError("reload: the lab's Postfix is not running")
        old = _children(master, "smtpd")
        offset = self.log_offset()
        self._postfix("reload")
        self.wait_log(r"master\[\d+\]: reload ", timeout=timeout, since=offset)
        try:
            wait_until(lambda: not any(_alive(p) for p in old), timeout,
                       "the smtpd processes started before the reload to exit")
        except WaitTimeout as exc:
            left = [p for p in old if _alive(p)]
            raise PostfixLabError(f"{exc}: pids {left} still alive (an SMTP session "
                                  "left open?)") from None

    # --- queue ----------------------------------------------------------------

    def queue_count(self) -> int:
        """Messages in the queue (maildrop, incoming, active, deferred, hold)."""
        n = 0
        for q in QUEUES:
            for _root, _dirs, files in os.walk(self.queue_dir / q):
                n += len(files)
        return n

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        """Wait until every accepted message has left the queue (delivered or bounced).

        Once this returns, the sink holds every delivery of what was sent before.
        """
        try:
            wait_until(lambda: self.queue_count() == 0, timeout, "the Postfix queue to empty")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc} ({self.queue_count()} left: {self.queue_listing()})\n"
                              f"--- postfix log (tail) ---\n{self.log_tail()}") from None

    def queue_listing(self) -> str:
        """``postqueue -p`` output (queue ids, reasons for deferral)."""
        return self._run([str(self.sbin / "postqueue"), "-c", str(self.conf_dir), "-p"],
                         check=False).stdout

    def purge_queue(self) -> None:
        """``postsuper -d ALL``: delete every queued message (a test left mail behind)."""
        self._run([str(self.sbin / "postsuper"), "-c", str(self.conf_dir), "-d", "ALL"])

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now (after the sink came back)."""
        self._run([str(self.sbin / "postqueue"), "-c", str(self.conf_dir), "-f"])

    # --- SMTP -----------------------------------------------------------------

    def smtp(self, timeout: float = 30.0) -> smtplib.SMTP:
        """An smtplib client connected to the lab's smtpd (close it, or use ``with``)."""
        return smtplib.SMTP(LOOPBACK, self.smtp_port, local_hostname="client.lab.invalid",
                            timeout=timeout)

    def send(self, raw: bytes | str, mail_from: str, rcpts: Iterable[str], *,
             mail_options: Iterable[str] = (), timeout: float = 60.0,
             normalize_eol: bool = True) -> SendResult:
        """Send one message through the lab's smtpd, step by step.

        Returns the final answer when the message was queued (some recipients may have
        been refused: ``SendResult.refused``). Raises :class:`SmtpRejected` with the
        stage and code when it was not: a milter's tempfail shows as ``code`` 4xx.
        ``raw`` is sent as is (dot-stuffed by smtplib), bare LF turned into CRLF unless
        ``normalize_eol=False``.
        """
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        if normalize_eol:
            raw = re.sub(rb"\r?\n", b"\r\n", raw)
        rcpts = list(rcpts)
        try:
            client = self.smtp(timeout)
        except smtplib.SMTPConnectError as exc:
            raise SmtpRejected("connect", exc.smtp_code, _text(exc.smtp_error)) from None
        with client:
            code, msg = client.ehlo()
            if code != 250:
                raise SmtpRejected("helo", code, _text(msg))
            code, msg = client.mail(mail_from, list(mail_options))
            if code != 250:
                _reset(client)
                raise SmtpRejected("mail", code, _text(msg))
            refused: dict[str, tuple[int, str]] = {}
            for rcpt in rcpts:
                code, msg = client.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, _text(msg))
            if len(refused) == len(rcpts):
                _reset(client)
                code, text = next(iter(refused.values())) if refused else (554, "no rcpt")
                raise SmtpRejected("rcpt", code, text, refused)
            try:
                code, msg = client.data(raw)
            except smtplib.SMTPDataError as exc:
                _reset(client)
                raise SmtpRejected("data", exc.smtp_code, _text(exc.smtp_error),
                                   refused) from None
            if code != 250:
                raise SmtpRejected("message", code, _text(msg), refused)
            text = _text(msg)
            m = re.search(r"queued as ([0-9A-Za-z]+)", text)
            return SendResult(code, text, m.group(1) if m else None, refused)

    def deliver(self, sink: Sink, raw: bytes | str, mail_from: str, rcpts: Iterable[str],
                *, timeout: float = 30.0, **send_args: object) -> Deliveries:
        """Send, wait until the queue is empty, return the sink's deliveries of it.

        The message must carry a Message-ID (that is how it is found in the sink).
        Raises :class:`SmtpRejected` if smtpd refused it, and
        :class:`~support.net.WaitTimeout` if nothing arrived (e.g. a discard).
        """
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
        message_id = headers.get("Message-ID")
        if not message_id:
            raise ValueError("deliver() needs a message with a Message-ID header")
        self.send(data, mail_from, rcpts, **send_args)  # type: ignore[arg-type]
        self.wait_queue_empty(timeout)
        return sink.find(str(message_id), timeout=5.0)

    # --- helpers --------------------------------------------------------------

    def _postfix(self, action: str) -> None:
        self._run([str(self.postfix_bin), "-c", str(self.conf_dir), action])

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, MAIL_CONFIG=str(self.conf_dir))
        proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=60, check=False)
        if check and proc.returncode != 0:
            # With no tty, postfix writes its complaints only to the log file.
            raise PostfixLabError(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}\n"
                f"--- postfix log (tail) ---\n{self.log_tail(15)}")
        return proc


# --- process plumbing (module level: also used by the atexit guard and the sweep) ----

def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reset(client: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.rset()


_alive = pid_alive


def _children(ppid: int, comm: str | None = None) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == ppid and (comm is None or name == comm):
            found.append(int(entry.name))
    return found


def _master_pid(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / "queue" / "pid" / "master.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm == "master" else None


def _instance_pids(conf_dir: Path) -> list[int]:
    """Every process whose environment says MAIL_CONFIG=conf_dir (master and daemons)."""
    needle = f"\0MAIL_CONFIG={conf_dir}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + env + b"\0":
            pids.append(int(entry.name))
    return pids


def stop_instance(run_dir: Path, timeout: float = 15.0) -> None:
    """Stop the Postfix instance of ``run_dir`` and wait until none of its processes
    remain: ``postfix stop``, wait for the master PID, then ``abort``, then SIGKILL."""
    conf = run_dir / "conf"
    postfix = shutil.which("postfix") or "/usr/sbin/postfix"
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    pid = _master_pid(run_dir)
    if pid is not None:
        subprocess.run([postfix, "-c", str(conf), "stop"], env=env, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=60, check=False)
        try:
            wait_until(lambda: not _alive(pid), timeout, "the Postfix master to exit")
        except WaitTimeout:
            subprocess.run([postfix, "-c", str(conf), "abort"], env=env,
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                           check=False)
            with contextlib.suppress(WaitTimeout):
                wait_until(lambda: not _alive(pid), 5, "the Postfix master to abort")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Daemons exit when their master is gone; make sure of it.
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: not _instance_pids(conf), 5, "the Postfix daemons to exit")
    for left in _instance_pids(conf):
        with contextlib.suppress(ProcessLookupError):
            os.kill(left, signal.SIGKILL)
    _reap_postfix_children(pid)


def _become_subreaper() -> None:
    """Make this process the reaper of the master it starts (PR_SET_CHILD_SUBREAPER).

    ``postfix start`` daemonizes the master; it and, once it exits, its daemons would be
    re-parented to PID 1, which on some CI VMs reaps only every couple of seconds: dead
    masters then linger as zombies in ``ps``. As their reaper, :func:`stop_instance`
    collects them at once. Harmless if unsupported.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER


def _reap_postfix_children(master: int | None, timeout: float = 2.0) -> None:
    """Reap the master and the Postfix daemons (user postfix) that became our children.

    Only those: other children (milters run by the tests) are left to their owners.
    """
    try:
        postfix_uid = pwd.getpwnam("postfix").pw_uid
    except KeyError:
        return
    me = os.getpid()

    def ours() -> list[int]:
        found = []
        for pid in _children(me):
            if pid == master or _uid(pid) == postfix_uid:
                found.append(pid)
        return found

    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for pid in ours():
            try:
                if os.waitpid(pid, os.WNOHANG)[0] != pid:
                    pending.append(pid)          # still running
            except ChildProcessError:
                pass
        if not pending or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _remove_run_dir(run_dir: Path) -> None:
    # Only ever delete a directory this module created.
    if (run_dir / MARKER).is_file():
        shutil.rmtree(run_dir, ignore_errors=True)


def sweep_stale_labs() -> list[Path]:
    """Stop and remove labs left behind by test processes that died (e.g. SIGKILL).

    Looks only at ``$TMPDIR/hdm-postfix-*`` directories holding this module's marker
    whose owner PID no longer exists. Returns the directories removed.
    """
    removed = []
    for run_dir in Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*"):
        marker = run_dir / MARKER
        try:
            owner = int(json.loads(marker.read_text())["owner_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner == os.getpid() or _alive(owner):
            continue
        kill_stale_milters(run_dir / "milter")
        stop_instance(run_dir, timeout=5)
        _remove_run_dir(run_dir)
        removed.append(run_dir)
    return removed


@atexit.register
def _stop_all_labs() -> None:
    for lab in list(_LIVE):
        with contextlib.suppress(Exception):
            lab.stop(timeout=5)
