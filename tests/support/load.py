"""Load through the lab's smtpd the way a real sending MTA does it, and count what arrives.

- :func:`send_many` sends messages over ``connections`` parallel SMTP sessions (smtplib
  threads, several messages per session) and **retries on any 4xx and on a dropped
  connection**, as a sending MTA would, until a deadline. It returns a :class:`LoadReport`
  (accepted, retries, temporary failures by stage, permanent refusals, latencies).
- :class:`CountingSink` is a capture sink that keeps only the Message-ID and the
  recipients of each delivery (soak-sized runs would otherwise hold every body).
- :func:`prepare_lab` puts a session-wide lab back to a clean state (what the ``lab``
  fixture does) for module-scoped fixtures.
- :func:`send_pipelined` sends one message with thousands of recipients using ESMTP
  PIPELINING (smtplib would need one round trip per RCPT).
- :func:`support_messages` builds N distinct, realistic messages (some carrying a secret)
  addressed like real traffic: watched copy/redirect groups and outside recipients.
- :class:`ProcSampler` samples a process's RSS, file descriptors and threads over time.

Counting rule ("counts in = counts out"): every message smtpd accepted (250 after the
final dot) must reach the sink for every original recipient, except that a redirect
group's recipient may be replaced by an assistance address
(:func:`support.hostile.expected_recipients_ok`).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import random
import re
import smtplib
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import Envelope

from .hostile import expected_recipients_ok, is_redirect_watched
from .net import LOOPBACK, WaitTimeout, wait_until
from .sink import Sink

# --- messages ---------------------------------------------------------------------------

_BODIES = [
    "Bonjour,\r\n\r\nDepuis ce matin, impossible de me connecter au webmail : le message "
    "« identifiant ou mot de passe incorrect » s'affiche alors que rien n'a changé.\r\n"
    "Pouvez-vous regarder ? C'est urgent, nous avons le conseil ce soir.\r\n",
    "Bonjour,\r\n\r\nL'imprimante du secrétariat ne fonctionne plus, elle affiche une "
    "erreur 0x3F et refuse tous les travaux depuis la mise à jour d'hier.\r\n",
    "Hello,\r\n\r\nOur Nextcloud client stopped syncing this morning, it shows error 503 "
    "and the shared folder of the accounting team is empty. Could you have a look?\r\n",
    "Bonjour,\r\n\r\nMerci pour le déjeuner de mardi, c'était très agréable. À bientôt "
    "pour la réunion de rentrée.\r\n",
]
_SECRET_LINE = "Mon identifiant est jdupont{n} et le mot de passe est Marmotte{n:05d}!\r\n"
RCPT_PATTERNS: list[tuple[str, ...]] = [
    ("alice@example.org",),                                 # team: copy
    ("contact@example.org",),                               # contact: redirect
    ("contact@example.org", "partenaire@prestataire.example"),
    ("someone@elsewhere.example",),                         # not watched
    ("bob@example.org", "claire@example.org"),
]
SENDERS = ["secretariat@mairie-exemple.fr", "jean.dupont@webmail.example",
           "direction@ecole-des-pins.fr", "inconnu@gmail.example"]


@dataclass(frozen=True)
class Outgoing:
    mail_from: str
    rcpts: tuple[str, ...]
    raw: bytes
    message_id: str


def support_messages(count: int, *, tag: str = "load", size: int = 0,
                     secret_every: int = 5, seed: int = 7) -> list[Outgoing]:
    """``count`` distinct messages (unique Message-ID and text), CRLF, about ``size``
    bytes when given (padded with a quoted log excerpt)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        sender = SENDERS[n % len(SENDERS)]
        rcpts = RCPT_PATTERNS[n % len(RCPT_PATTERNS)]
        mid = f"{tag}-{n}-{rng.getrandbits(32):08x}@{sender.split('@')[1]}"
        body = _BODIES[n % len(_BODIES)] + f"Référence de la demande : {tag}-{n}\r\n"
        if secret_every and n % secret_every == 0:
            body += _SECRET_LINE.format(n=n)
        body += "\r\nCordialement,\r\nL'équipe\r\n"
        if size:
            line = f"> {tag}-{n} journal: connexion refusée par le serveur distant\r\n"
            body += line * max(0, (size - len(body) - 400) // len(line))
        subject = ["Webmail inaccessible", "Imprimante en panne", "Nextcloud sync broken",
                   "Merci"][n % 4] + f" ({n})"
        raw = (f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
               f"Date: Tue, 03 Nov 2026 09:30:00 +0100\r\nMessage-ID: <{mid}>\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n" + body).encode("utf-8")
        out.append(Outgoing(sender, rcpts, raw, mid))
    return out


# --- sending --------------------------------------------------------------------------

@dataclass
class Attempt:
    message_id: str
    accepted: bool = False
    queue_id: str | None = None
    attempts: int = 0
    tempfails: list[str] = field(default_factory=list)      # "stage code"
    refused: str | None = None                               # permanent failure
    first_try: float = 0.0
    done: float = 0.0

    @property
    def latency(self) -> float:
        return self.done - self.first_try


@dataclass
class LoadReport:
    attempts: dict[str, Attempt]
    elapsed: float

    @property
    def accepted(self) -> list[str]:
        return [m for m, a in self.attempts.items() if a.accepted]

    @property
    def refused(self) -> dict[str, str]:
        return {m: a.refused for m, a in self.attempts.items() if a.refused}

    @property
    def unsent(self) -> list[str]:
        return [m for m, a in self.attempts.items() if not a.accepted and not a.refused]

    @property
    def retries(self) -> int:
        return sum(a.attempts - 1 for a in self.attempts.values() if a.attempts)

    def tempfail_stages(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self.attempts.values():
            for t in a.tempfails:
                counts[t] = counts.get(t, 0) + 1
        return counts

    def latencies(self) -> list[float]:
        return sorted(a.latency for a in self.attempts.values() if a.accepted)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies()

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 4) if lat else 0.0

        return {"messages": len(self.attempts), "accepted": len(self.accepted),
                "refused": len(self.refused), "unsent": len(self.unsent),
                "retries": self.retries, "tempfails": self.tempfail_stages(),
                "elapsed": round(self.elapsed, 2),
                "rate": round(len(self.accepted) / self.elapsed, 1) if self.elapsed else 0,
                "latency_p50": pct(0.5), "latency_p99": pct(0.99),
                "latency_max": round(lat[-1], 3) if lat else 0.0,
                "latency_mean": round(statistics.fmean(lat), 4) if lat else 0.0}


class _Client:
    """One SMTP session, reopened after any connection error."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.smtp: smtplib.SMTP | None = None
        self.sent_on_session = 0

    def close(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(Exception):
                self.smtp.quit()
            with contextlib.suppress(Exception):
                self.smtp.close()
        self.smtp = None

    def send(self, msg: Outgoing) -> tuple[str, str, int, str]:
        """Returns (outcome, stage, code, text): outcome ok | temp | perm."""
        try:
            if self.smtp is None:
                self.smtp = smtplib.SMTP(LOOPBACK, self.port, timeout=self.timeout,
                                         local_hostname="load.lab.invalid")
                self.smtp.ehlo()
                self.sent_on_session = 0
            s = self.smtp
            code, text = s.mail(msg.mail_from)
            if code != 250:
                return self._fail("mail", code, text)
            ok = 0
            last = (0, b"")
            for rcpt in msg.rcpts:
                code, text = s.rcpt(rcpt)
                if code in (250, 251):
                    ok += 1
                else:
                    last = (code, text)
            if ok != len(msg.rcpts):
                # A real MTA would send to the accepted ones and retry the others later;
                # the counting here is per message, so retry it whole.
                return self._fail("rcpt", *last)
            code, text = s.data(msg.raw)
            self.sent_on_session += 1
            if code != 250:
                return self._fail("message", code, text)
            return "ok", "message", code, text.decode("utf-8", "replace")
        except smtplib.SMTPDataError as exc:
            return self._fail("data", exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            return "temp", "connection", 0, type(exc).__name__

    def _fail(self, stage: str, code: int, text: bytes | str) -> tuple[str, str, int, str]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        with contextlib.suppress(Exception):
            assert self.smtp is not None
            self.smtp.rset()
        if 400 <= code < 500 or not code:
            # Like a sending MTA, give up the session after a temporary failure: Postfix
            # applies milter_default_action to the rest of a session whose milter died.
            self.close()
            return "temp", stage, code, text
        return "perm", stage, code, text


def send_many(port: int, messages: Sequence[Outgoing], *, connections: int = 10,
              deadline: float = 300.0, per_session: int = 20, timeout: float = 120.0,
              on_accept: Callable[[int], None] | None = None) -> LoadReport:
    """Send every message, retrying temporary failures like an MTA, until ``deadline``
    seconds have passed. ``on_accept(n)`` is called after the n-th acceptance (from a
    worker thread): a test uses it to inject a fault mid-run."""
    work: queue.Queue[Outgoing] = queue.Queue()
    attempts = {m.message_id: Attempt(m.message_id) for m in messages}
    for m in messages:
        work.put(m)
    lock = threading.Lock()
    accepted = itertools.count(1)
    started = time.monotonic()
    end = started + deadline
    pending = [len(messages)]

    def worker() -> None:
        client = _Client(port, timeout)
        try:
            while time.monotonic() < end:
                with lock:
                    if pending[0] == 0:
                        return
                try:
                    msg = work.get(timeout=0.05)
                except queue.Empty:
                    continue
                a = attempts[msg.message_id]
                if not a.attempts:
                    a.first_try = time.monotonic()
                a.attempts += 1
                outcome, stage, code, text = client.send(msg)
                if outcome == "ok":
                    a.accepted, a.done = True, time.monotonic()
                    m = re.search(r"queued as ([0-9A-Za-z]+)", text)
                    a.queue_id = m.group(1) if m else None
                    with lock:
                        pending[0] -= 1
                    if on_accept is not None:
                        on_accept(next(accepted))
                    if client.sent_on_session >= per_session:
                        client.close()
                elif outcome == "temp":
                    a.tempfails.append(f"{stage} {code}")
                    # back off like an MTA (much shorter: the test waits for it)
                    time.sleep(min(1.0, 0.05 * 2 ** min(a.attempts - 1, 5))
                               * (0.5 + random.random()))
                    work.put(msg)
                else:
                    a.refused, a.done = f"{stage} {code} {text}", time.monotonic()
                    with lock:
                        pending[0] -= 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"load-{i}", daemon=True)
               for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()) + timeout + 5)
    return LoadReport(attempts, time.monotonic() - started)


def send_pipelined(port: int, raw: bytes, mail_from: str, rcpts: Sequence[str], *,
                   timeout: float = 120.0) -> SmtpReply:
    """One message to many recipients in one pipelined SMTP transaction.

    The commands are written by a thread while this one reads the replies, so neither
    side can block the other on full socket buffers.
    """
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        rfile = sock.makefile("rb")
        _reply(rfile)                                          # greeting
        sock.sendall(b"EHLO load.lab.invalid\r\n")
        ehlo = _reply(rfile)
        if b"PIPELINING" not in ehlo.raw.upper():
            raise RuntimeError("the server does not offer PIPELINING")
        commands = [f"MAIL FROM:<{mail_from}>\r\n".encode()]
        commands += [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
        commands.append(b"DATA\r\n")
        writer = threading.Thread(target=sock.sendall, args=(b"".join(commands),),
                                  daemon=True)
        writer.start()
        replies = [_reply(rfile) for _ in commands]
        writer.join(timeout)
        mail, rcpt_replies, data = replies[0], replies[1:-1], replies[-1]
        if mail.code != 250:
            return mail
        refused = sum(1 for r in rcpt_replies if r.code not in (250, 251))
        if data.code != 354:
            return SmtpReply(data.code, f"DATA refused ({refused} recipients refused): "
                                        f"{data.text}", data.raw)
        body = re.sub(rb"(?m)^\.", b"..", raw)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        sock.sendall(body + b".\r\n")
        final = _reply(rfile)
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
            _reply(rfile)
        if refused:
            return SmtpReply(final.code, f"{refused} recipients refused; {final.text}",
                             final.raw)
        return final


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str
    raw: bytes

    @property
    def queue_id(self) -> str | None:
        m = re.search(r"queued as ([0-9A-Za-z]+)", self.text)
        return m.group(1) if m else None


def _reply(rfile: Any) -> SmtpReply:
    lines = []
    while True:
        line = rfile.readline()
        if not line:
            raise ConnectionError("SMTP server closed the connection")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
    raw = b"".join(lines)
    return SmtpReply(int(lines[-1][:3]), lines[-1][4:].decode("utf-8", "replace").strip(),
                     raw)


# --- receiving ------------------------------------------------------------------------

_MID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.I | re.M)


@dataclass(frozen=True)
class _Recorded:
    seq: int            # all the sink's SMTP handler reads of a recorded delivery


class CountingSink(Sink):
    """A :class:`~support.sink.Sink` that keeps, per delivery, only the Message-ID and
    the recipients (no body, no files): a 20,000-message soak holds a few MB."""

    def __init__(self, outdir: Path, port: int = 0) -> None:
        super().__init__(outdir, port=port, write_files=False)
        self.received: dict[str, list[tuple[str, ...]]] = {}
        self.total = 0

    def _record(self, envelope: Envelope) -> Any:
        raw = envelope.original_content or b""
        head = raw[:raw.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in raw else raw
        m = _MID.search(head)
        mid = m.group(1).decode("ascii", "replace").strip() if m else ""
        with self._cond:
            self.received.setdefault(mid, []).append(tuple(envelope.rcpt_tos))
            self.total += 1
            self._cond.notify_all()
        return _Recorded(self.total)

    def reset(self) -> None:
        with self._cond:
            self.received.clear()
            self.total = 0

    def rcpts_of(self, message_id: str) -> list[str]:
        with self._cond:
            return [r for rs in self.received.get(message_id, []) for r in rs]


def index_deliveries(deliveries: Iterable[Any]) -> Callable[[str], list[str]]:
    """``received(message_id)`` over a :class:`~support.sink.Sink`'s deliveries: every
    recipient that got that Message-ID (duplicates kept)."""
    index: dict[str, list[str]] = {}
    for d in deliveries:
        head = d.raw[:d.raw.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in d.raw else d.raw
        m = _MID.search(head)
        if m:
            index.setdefault(m.group(1).decode("ascii", "replace").strip(), []).extend(
                d.rcpt_tos)
    return lambda mid: index.get(mid, [])


def account(sent: Iterable[Outgoing], report: LoadReport,
            received: Callable[[str], list[str]]) -> dict[str, Any]:
    """Counts in and out: accepted messages, delivered ones, lost ones (an accepted
    message with an original recipient that nothing reached), duplicates."""
    accepted = set(report.accepted)
    lost: dict[str, list[str]] = {}
    delivered = duplicated = 0
    for m in sent:
        if m.message_id not in accepted:
            continue
        got = received(m.message_id)
        if got:
            delivered += 1
        if len(got) != len(set(got)):
            duplicated += 1
        missing = expected_recipients_ok(list(m.rcpts), got, is_redirect_watched)
        if missing:
            lost[m.message_id] = missing
    return {"in": len(accepted), "out": delivered, "lost": len(lost),
            "lost_examples": dict(itertools.islice(lost.items(), 5)),
            "duplicated": duplicated}


# --- lab --------------------------------------------------------------------------------

def prepare_lab(lab: Any, sink: Sink) -> None:
    """Sink up and empty, no milter, default config, empty queue: what the ``lab``
    fixture (conftest.py) does, and module-scoped fixtures too."""
    if not sink.running:
        sink.start()
    lab.reset_config()      # no milter, tempfail, no postconf() leftovers
    if lab.queue_count():
        # Left behind by an earlier test (e.g. deferred while the sink was down).
        lab.flush()
        try:
            lab.wait_queue_empty(timeout=10)
        except AssertionError:
            lab.purge_queue()
            lab.wait_queue_empty(timeout=10)
    sink.clear()


# --- process sampling -----------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (bytes), Threads and open file descriptors of a process."""
    text = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        out[key] = int(m.group(1)) * 1024 if m else 0
    m = re.search(r"^Threads:\s+(\d+)", text, re.M)
    out["Threads"] = int(m.group(1)) if m else 0
    try:
        out["fds"] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        out["fds"] = -1
    return out


class ProcSampler:
    """Samples :func:`proc_status` of ``pid_of()`` every ``interval`` seconds in a thread
    (``pid_of`` may return a new pid after a restart, or None while down)."""

    def __init__(self, pid_of: Callable[[], int | None], interval: float = 1.0) -> None:
        self.pid_of = pid_of
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self, **extra: Any) -> dict[str, Any] | None:
        pid = self.pid_of()
        if pid is None:
            return None
        try:
            s: dict[str, Any] = {"t": round(time.monotonic() - self._t0, 2), "pid": pid,
                                 **proc_status(pid), **extra}
        except OSError:
            return None
        self.samples.append(s)
        return s

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_delivered(count_received: Callable[[], int], expected: int, timeout: float,
                   what: str) -> None:
    """Wait until the sink holds ``expected`` messages (WaitTimeout otherwise)."""
    try:
        wait_until(lambda: count_received() >= expected, timeout, what, interval=0.05)
    except WaitTimeout:
        raise WaitTimeout(f"{what}: {count_received()} of {expected} after {timeout:g}s") \
            from None
