"""The MTA side of the milter protocol, for driving a running milter over its socket.

Built on the PyPI ``miltertest`` package (its constants and command encoder), with what
it lacks for our tests:

- it follows the protocol flags the milter negotiated: steps the milter asked to skip
  (``SMFIP_NO*``) are not sent, and steps marked no-reply (``SMFIP_NR_*``, pymilter's
  ``@Milter.noreply``) are sent without waiting (``miltertest``'s ``send()`` would hang);
- bodies, header values and replacement bodies are bytes-safe (``miltertest`` encodes
  them as UTF-8 ``str``, so 8-bit legacy mail could not be sent or read back);
- the optneg reply may carry macro lists (``smfi_setsymlist``), which are kept;
- TCP sockets get TCP_NODELAY (else Nagle + delayed ACK add ~40 ms per step);
- every read has a timeout, so a silent milter fails a test instead of hanging it.

Typical use::

    with MilterClient("unix:/run/dir/milter.sock") as client:
        result = client.run_message("alice@client.fr", ["team@example.org"],
                                    [("Subject", "help")], b"Hello\\r\\n",
                                    macros={"i": "4ABC123"})
    assert result.reply == "accept"
    assert "assistance@..." in result.added_rcpts
    assert result.added_headers["X-Helpdesk-Request"].startswith("support")

Several messages may run on one connection (as Postfix does within one SMTP session);
:meth:`MilterClient.abort` and :meth:`MilterClient.send_raw` serve the hostile-input tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from miltertest import codec
from miltertest import constants as C

# command -> (no-reply flag, skip flag)
_STEP_FLAGS: dict[str, tuple[int, int]] = {
    C.SMFIC_CONNECT: (C.SMFIP_NR_CONN, C.SMFIP_NOCONNECT),
    C.SMFIC_HELO: (C.SMFIP_NR_HELO, C.SMFIP_NOHELO),
    C.SMFIC_MAIL: (C.SMFIP_NR_MAIL, C.SMFIP_NOMAIL),
    C.SMFIC_RCPT: (C.SMFIP_NR_RCPT, C.SMFIP_NORCPT),
    C.SMFIC_DATA: (C.SMFIP_NR_DATA, C.SMFIP_NODATA),
    C.SMFIC_HEADER: (C.SMFIP_NR_HDR, C.SMFIP_NOHDRS),
    C.SMFIC_EOH: (C.SMFIP_NR_EOH, C.SMFIP_NOEOH),
    C.SMFIC_BODY: (C.SMFIP_NR_BODY, C.SMFIP_NOBODY),
}

# Reply codes: what they mean to the MTA.
REPLY_KINDS = {
    C.SMFIR_ACCEPT: "accept",
    C.SMFIR_CONTINUE: "continue",
    C.SMFIR_REJECT: "reject",
    C.SMFIR_TEMPFAIL: "tempfail",
    C.SMFIR_DISCARD: "discard",
    C.SMFIR_REPLYCODE: "replycode",   # resolved to reject/tempfail by its SMTP code
    C.SMFIR_SKIP: "skip",
    C.SMFIR_CONN_FAIL: "conn_fail",
    C.SMFIR_SHUTDOWN: "shutdown",
}
_DISPOSITIONS = {C.SMFIR_ACCEPT, C.SMFIR_CONTINUE, C.SMFIR_REJECT, C.SMFIR_TEMPFAIL,
                 C.SMFIR_DISCARD, C.SMFIR_REPLYCODE, C.SMFIR_CONN_FAIL, C.SMFIR_SHUTDOWN}

STAGES = ("connect", "helo", "mail", "rcpt", "data", "eoh", "eom")
_CONNECT_MACROS = {"j", "_", "v", "{daemon_name}", "{daemon_addr}", "{client_addr}",
                   "{client_name}", "{client_port}", "{client_ptr}", "{client_connections}",
                   "{if_name}", "{if_addr}"}
MAX_PACKET = 64 * 1024 * 1024


class MilterProtocolError(AssertionError):
    """The milter broke the protocol or answered something unexpected."""


class MilterClosed(MilterProtocolError):
    """The milter closed the connection."""


@dataclass(frozen=True)
class Reply:
    """One disposition reply from the milter (to a step, or the final one at EOM)."""

    code: str                        # the SMFIR_* character, e.g. "a"
    smtp_code: str | None = None     # for SMFIR_REPLYCODE: "550"
    text: str | None = None          # for SMFIR_REPLYCODE: "5.7.1 go away"

    @property
    def kind(self) -> str:
        """accept, continue, reject, tempfail, discard, skip, ... A REPLYCODE is reported
        as reject (5xx) or tempfail (4xx), its text in ``smtp_code``/``text``."""
        if self.code == C.SMFIR_REPLYCODE and self.smtp_code:
            return "tempfail" if self.smtp_code.startswith("4") else "reject"
        return REPLY_KINDS.get(self.code, f"unknown({self.code!r})")

    @property
    def final(self) -> bool:
        """True if this ends the message (anything but continue/skip)."""
        return self.code not in (C.SMFIR_CONTINUE, C.SMFIR_SKIP)


@dataclass(frozen=True)
class Action:
    """One modification requested at end of message.

    kind: ``add_header`` (name, value, index: None = append, else insert position),
    ``change_header`` (name, index: 1-based occurrence, value: "" = delete),
    ``add_rcpt`` (rcpt, args), ``delete_rcpt`` (rcpt), ``replace_body`` (body: one chunk),
    ``change_from`` (rcpt holds the new sender, args), ``quarantine`` (value: reason).
    """

    kind: str
    name: str | None = None
    value: str | None = None
    index: int | None = None
    rcpt: str | None = None
    args: tuple[str, ...] = ()
    body: bytes = b""


def _bare(address: str) -> str:
    return address.strip().removeprefix("<").removesuffix(">")


class HeaderView(Sequence[tuple[str, str]]):
    """(name, value) pairs in order; indexing by a str looks a name up case-insensitively."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for name, value in self._pairs:
                if name.lower() == key.lower():
                    return value
            raise KeyError(key)
        return self._pairs[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return any(name.lower() == key.lower() for name, _ in self._pairs)
        return key in self._pairs

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        try:
            return self[name]  # type: ignore[no-any-return]
        except KeyError:
            return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        return [v for n, v in self._pairs if n.lower() == name.lower()]

    def names(self) -> list[str]:
        return [n for n, _ in self._pairs]

    def __repr__(self) -> str:
        return f"HeaderView({self._pairs!r})"


@dataclass
class Result:
    """What the milter answered for one message."""

    reply: str                                  # accept|continue|reject|tempfail|discard|...
    stage: str                                  # where the final reply came: eom, mail, rcpt...
    final: Reply | None                         # the raw final reply
    actions: list[Action] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # refused recipients only
    queue_id: str = ""

    @property
    def accepted(self) -> bool:
        """True if the message would be delivered (accept or continue at the end)."""
        return self.reply in ("accept", "continue")

    @property
    def smtp_reply(self) -> tuple[str, str] | None:
        """(code, text) if the milter set an SMTP reply (SMFIR_REPLYCODE)."""
        if self.final and self.final.smtp_code:
            return self.final.smtp_code, self.final.text or ""
        return None

    @property
    def added_rcpts(self) -> list[str]:
        """Recipients added (without angle brackets), in order."""
        return [_bare(a.rcpt or "") for a in self.actions if a.kind == "add_rcpt"]

    @property
    def deleted_rcpts(self) -> list[str]:
        """Recipients removed (without angle brackets), in order."""
        return [_bare(a.rcpt or "") for a in self.actions if a.kind == "delete_rcpt"]

    @property
    def added_headers(self) -> HeaderView:
        """Headers added (appended or inserted), in order; ``["Name"]`` looks one up."""
        return HeaderView((a.name or "", a.value or "") for a in self.actions
                          if a.kind == "add_header")

    @property
    def changed_headers(self) -> list[tuple[str, int, str]]:
        """(name, index, value) of every change; value "" means the header is deleted."""
        return [(a.name or "", a.index or 0, a.value or "") for a in self.actions
                if a.kind == "change_header"]

    @property
    def deleted_headers(self) -> list[tuple[str, int]]:
        """(name, index) of the headers deleted (changed to an empty value)."""
        return [(n, i) for n, i, v in self.changed_headers if v == ""]

    @property
    def new_body(self) -> bytes | None:
        """The replacement body (chunks joined), or None if the body was not replaced."""
        chunks = [a.body for a in self.actions if a.kind == "replace_body"]
        return b"".join(chunks) if chunks else None

    @property
    def new_from(self) -> str | None:
        for a in self.actions:
            if a.kind == "change_from":
                return _bare(a.rcpt or "")
        return None

    @property
    def quarantine(self) -> str | None:
        for a in self.actions:
            if a.kind == "quarantine":
                return a.value
        return None


def parse_address(address: str | Path | tuple[str, int]) -> tuple[int, Any]:
    """(family, sockaddr) for ``unix:/path``, ``/path``, ``inet:PORT@HOST`` (libmilter),
    ``inet:HOST:PORT`` (Postfix), ``HOST:PORT`` or ``(HOST, PORT)``; loopback only."""
    if isinstance(address, Path):
        return socket.AF_UNIX, str(address)
    if isinstance(address, tuple):
        host, port = address
    else:
        kind, sep, rest = address.partition(":")
        if address.startswith("/"):
            return socket.AF_UNIX, address
        if sep and kind in ("unix", "local"):
            return socket.AF_UNIX, rest
        if kind == "inet" and "@" in rest:
            port_s, _, host = rest.partition("@")
        elif kind == "inet":
            host, _, port_s = rest.rpartition(":")
        else:
            host, _, port_s = address.rpartition(":")
        port = int(port_s)
    if host not in ("127.0.0.1", "localhost") and not host.startswith("127."):
        raise ValueError(f"loopback only, got {host!r}")
    return socket.AF_INET, (host, port)


def _frame(cmd: str, payload: bytes) -> bytes:
    return struct.pack("!Lc", len(payload) + 1, cmd.encode()) + payload


def _cstr(value: str | bytes) -> bytes:
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    return data + b"\0"


def _split_cstrs(data: bytes) -> list[str]:
    if data and not data.endswith(b"\0"):
        raise MilterProtocolError(f"string field not NUL-terminated: {data[:80]!r}")
    return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0")[:-1]]


def new_queue_id() -> str:
    """A random Postfix-looking queue id (11 hex digits)."""
    return os.urandom(6).hex().upper()[:11]


class MilterClient:
    """One milter connection, played from the MTA side.

    ``open()`` (or ``with``) connects and negotiates. The step methods (``connect``,
    ``helo``, ``mail``, ``rcpt``, ``data``, ``header``, ``eoh``, ``body``, ``eom``)
    return the milter's :class:`Reply`, or None when the step was skipped or is
    no-reply. :meth:`run_message` plays a whole message and returns a :class:`Result`.
    """

    def __init__(self, address: str | Path | tuple[str, int], *, timeout: float = 30.0,
                 actions: int = C.SMFI_V6_ACTS, protocol: int = C.SMFI_V6_PROT) -> None:
        self.address = address
        self.timeout = timeout
        self.offered_actions = actions
        self.offered_protocol = protocol
        self.actions = 0                  # negotiated
        self.protocol = 0                 # negotiated (steps to skip, no-reply flags)
        self.milter_version = 0
        self.symlists: dict[int, str] = {}
        self.sock: socket.socket | None = None
        self._buf = b""
        self._session_started = False

    # --- connection ----------------------------------------------------------

    def open(self, *, negotiate: bool = True) -> MilterClient:
        """Connect to the milter's socket and (by default) negotiate options."""
        family, sockaddr = parse_address(self.address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(sockaddr)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        if negotiate:
            self.negotiate()
        return self

    def negotiate(self) -> tuple[int, int]:
        """Send our SMFIC_OPTNEG; return the milter's (actions, protocol)."""
        self._sendall(codec.encode_optneg(self.offered_actions, self.offered_protocol))
        cmd, data = self._recv_packet()
        if cmd != C.SMFIC_OPTNEG or len(data) < 12:
            raise MilterProtocolError(f"bad optneg reply {cmd!r} {data[:40]!r}")
        self.milter_version, actions, protocol = struct.unpack("!LLL", data[:12])
        rest = data[12:]
        while len(rest) >= 4:                         # optional macro lists
            (where,) = struct.unpack("!L", rest[:4])
            macros, _, rest = rest[4:].partition(b"\0")
            self.symlists[where] = macros.decode()
        if actions & ~self.offered_actions or protocol & ~self.offered_protocol & C.SMFI_V6_PROT:
            raise MilterProtocolError(f"milter asked for more than offered: actions "
                                      f"0x{actions:x}, protocol 0x{protocol:x}")
        self.actions, self.protocol = actions, protocol
        return actions, protocol

    def close(self) -> None:
        """Close the socket (no QUIT). Idempotent."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def quit(self) -> None:
        """SMFIC_QUIT, then close."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self._sendall(codec.encode_msg(C.SMFIC_QUIT))
        self.close()

    def __enter__(self) -> MilterClient:
        if self.sock is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()

    # --- raw access (hostile-input tests) -------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the socket as they are (garbage, truncated packets, ...)."""
        self._sendall(data)

    def send_packet(self, cmd: str, payload: bytes = b"") -> None:
        """Write one well-framed packet with any command byte and payload."""
        self._sendall(_frame(cmd, payload))

    def read_reply(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """The next packet (command, raw payload), or None if the milter closed."""
        try:
            return self._recv_packet(timeout)
        except MilterClosed:
            return None

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the milter closes the connection within ``timeout`` (pending packets
        are read and discarded)."""
        assert self.sock is not None, "not open"
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)

    # --- protocol steps ---------------------------------------------------------

    def macro(self, stage_cmd: str, macros: Mapping[str, str | None]) -> None:
        """Send SMFIC_MACRO for the command ``stage_cmd``; None values are left out."""
        pairs = b"".join(_cstr(k) + _cstr(v) for k, v in macros.items() if v is not None)
        self._sendall(_frame(C.SMFIC_MACRO, stage_cmd.encode() + pairs))

    def connect(self, hostname: str = "client.example", address: str = "127.0.0.1",
                port: int = 40000, macros: Mapping[str, str | None] | None = None
                ) -> Reply | None:
        """SMFIC_CONNECT (family from the address: 4, 6, or L for a unix path)."""
        if address.startswith("/"):
            family = C.SMFIA_UNIX
        elif ":" in address:
            family = C.SMFIA_INET6
        else:
            family = C.SMFIA_INET
        self.macro(C.SMFIC_CONNECT, macros or {})
        self._session_started = True
        payload = (_cstr(hostname) + family.encode() + struct.pack("!H", port)
                   + _cstr(address))
        return self._step(C.SMFIC_CONNECT, payload)

    def helo(self, name: str = "client.example",
             macros: Mapping[str, str | None] | None = None) -> Reply | None:
        self.macro(C.SMFIC_HELO, macros or {})
        return self._step(C.SMFIC_HELO, _cstr(name))

    def mail(self, sender: str, *esmtp: str,
             macros: Mapping[str, str | None] | None = None) -> Reply | None:
        """MAIL FROM; ``sender`` without brackets ("" for the null sender)."""
        self.macro(C.SMFIC_MAIL, macros or {})
        return self._step(C.SMFIC_MAIL, b"".join(_cstr(a) for a in (f"<{sender}>", *esmtp)))

    def rcpt(self, rcpt: str, *esmtp: str,
             macros: Mapping[str, str | None] | None = None) -> Reply | None:
        self.macro(C.SMFIC_RCPT, macros or {})
        return self._step(C.SMFIC_RCPT, b"".join(_cstr(a) for a in (f"<{rcpt}>", *esmtp)))

    def data(self, macros: Mapping[str, str | None] | None = None) -> Reply | None:
        self.macro(C.SMFIC_DATA, macros or {})
        return self._step(C.SMFIC_DATA, b"")

    @property
    def leading_space(self) -> bool:
        """SMFIP_HDR_LEADSPC negotiated: header values travel verbatim after the colon."""
        return bool(self.protocol & C.SMFIP_HDR_LEADSPC)

    def header(self, name: str | bytes, value: str | bytes) -> Reply | None:
        """Send one header field; ``value`` is what follows "Name: " (as Postfix
        does, the space is sent too when SMFIP_HDR_LEADSPC was negotiated)."""
        if self.leading_space:
            value = (b" " + value) if isinstance(value, bytes) else (" " + value)
        return self._step(C.SMFIC_HEADER, _cstr(name) + _cstr(value))

    def eoh(self, macros: Mapping[str, str | None] | None = None) -> Reply | None:
        self.macro(C.SMFIC_EOH, macros or {})
        return self._step(C.SMFIC_EOH, b"")

    def body(self, data: bytes, chunk_size: int = C.MILTER_CHUNK_SIZE) -> Reply | None:
        """Send the body in chunks; stops early on a final reply or SMFIR_SKIP."""
        reply = None
        for off in range(0, len(data), chunk_size):
            reply = self._step(C.SMFIC_BODY, data[off:off + chunk_size])
            if reply is not None and reply.code != C.SMFIR_CONTINUE:
                return reply
        return reply

    def eom(self, macros: Mapping[str, str | None] | None = None
            ) -> tuple[Reply, list[Action]]:
        """End of message: collect modification actions until the final reply."""
        self.macro(C.SMFIC_BODYEOB, macros or {})
        self._sendall(_frame(C.SMFIC_BODYEOB, b""))
        actions: list[Action] = []
        while True:
            cmd, data = self._recv_packet()
            if cmd == C.SMFIR_PROGRESS:
                continue
            if cmd in _DISPOSITIONS:
                return self._decode_reply(cmd, data), actions
            action = self._decode_action(cmd, data)
            if self.leading_space and action.value and action.kind in ("add_header",
                                                                       "change_header"):
                # verbatim after the colon: show values as after "Name: "
                action = replace(action, value=action.value.removeprefix(" "))
            actions.append(action)

    def abort(self) -> None:
        """SMFIC_ABORT: forget the current message (no reply expected)."""
        self._sendall(_frame(C.SMFIC_ABORT, b""))

    # --- a whole message --------------------------------------------------------

    def run_message(self, mail_from: str, rcpts: Sequence[str],
                    headers: Iterable[tuple[str | bytes, str | bytes]], body: bytes | str,
                    macros: Mapping[str, Any] | None = None, *,
                    connect_info: tuple[str, str] = ("client.example", "127.0.0.1"),
                    helo: str = "client.example", queue_id: str | None = None,
                    mail_esmtp: Sequence[str] = ()) -> Result:
        """Play one message like Postfix 3.7 does and return the milter's verdict.

        The connection-level steps (CONNECT, HELO) are sent only before the first message
        of this connection. ``macros`` is either flat (``{"i": "ABC", "{auth_authen}":
        "alice"}``: each name is sent at the stage where Postfix sends it, unknown names
        at MAIL) or per stage (``{"mail": {...}, "eom": {...}}`` with stages from
        :data:`STAGES`). Postfix-like defaults are sent for the rest; a value of None
        removes a default. The queue id ``i`` is sent from the second RCPT on, as
        Postfix does (its queue file does not exist before).

        A reject/tempfail at RCPT refuses that recipient only; if all are refused, the
        message ends there. Any other final reply before EOM ends the message, and an
        SMFIC_ABORT resets the milter for the next message on this connection.
        """
        if self.sock is None:
            self.open()
        qid = queue_id or _macro_queue_id(macros) or new_queue_id()
        stage_macros = _stage_macros(macros, qid, mail_from, connect_info, helo)
        if isinstance(body, str):
            body = body.encode("utf-8")

        if not self._session_started:
            host, addr = connect_info
            reply = self.connect(host, addr, 40000, stage_macros["connect"])
            if reply is not None and reply.final:
                return Result(reply.kind, "connect", reply, queue_id=qid)
            reply = self.helo(helo, stage_macros["helo"])
            if reply is not None and reply.final:
                return Result(reply.kind, "helo", reply, queue_id=qid)

        reply = self.mail(mail_from, *mail_esmtp,
                          macros={"{mail_addr}": mail_from, "{mail_host}": "[127.0.0.1]",
                                  "{mail_mailer}": "smtp", **stage_macros["mail"]})
        if reply is not None and reply.final:
            return self._end_early(reply, "mail", qid)

        refused: dict[str, str] = {}
        last_refusal: Reply | None = None
        for n, rcpt in enumerate(rcpts):
            rm: dict[str, str | None] = {"{rcpt_addr}": rcpt, "{rcpt_host}": "[127.0.0.1]",
                                         "{rcpt_mailer}": "smtp"}
            if n > 0:
                rm["i"] = qid
            rm.update(stage_macros["rcpt"])
            reply = self.rcpt(rcpt, macros=rm)
            if reply is None or not reply.final:
                continue
            if reply.kind in ("reject", "tempfail"):
                refused[rcpt] = reply.kind
                last_refusal = reply
                continue
            return self._end_early(reply, "rcpt", qid, refused)
        if rcpts and len(refused) == len(rcpts):
            assert last_refusal is not None
            return self._end_early(last_refusal, "rcpt", qid, refused)

        steps: list[tuple[str, Any]] = [("data", lambda: self.data(stage_macros["data"]))]
        steps += [("header", lambda h=h: self.header(*h)) for h in headers]
        steps += [("eoh", lambda: self.eoh(stage_macros["eoh"])),
                  ("body", lambda: self.body(body))]
        for stage, step in steps:
            reply = step()
            if reply is not None and reply.final:
                return self._end_early(reply, stage, qid, refused)
            if reply is not None and reply.code == C.SMFIR_SKIP:
                break            # only the body may be skipped; EOM follows

        final, actions = self.eom(stage_macros["eom"])
        return Result(final.kind, "eom", final, actions, refused, qid)

    def _end_early(self, reply: Reply, stage: str, qid: str,
                   refused: dict[str, str] | None = None) -> Result:
        self.abort()
        return Result(reply.kind, stage, reply, [], dict(refused or {}), qid)

    # --- plumbing -----------------------------------------------------------------

    def _step(self, cmd: str, payload: bytes) -> Reply | None:
        no_reply, skip = _STEP_FLAGS[cmd]
        if self.protocol & skip:
            return None
        self._sendall(_frame(cmd, payload))
        if self.protocol & no_reply:
            return None
        while True:
            rcmd, data = self._recv_packet()
            if rcmd == C.SMFIR_PROGRESS:
                continue
            if rcmd in _DISPOSITIONS or rcmd == C.SMFIR_SKIP:
                return self._decode_reply(rcmd, data)
            raise MilterProtocolError(f"unexpected reply {rcmd!r} to command {cmd!r}: "
                                      f"{data[:80]!r}")

    def _sendall(self, data: bytes) -> None:
        if self.sock is None:
            raise MilterProtocolError("not connected (call open() first)")
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise MilterClosed(f"milter closed the connection: {exc}") from None

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except TimeoutError:
                raise MilterProtocolError(
                    f"no answer from the milter within {self.sock.gettimeout()}s") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise MilterClosed("milter closed the connection"
                                   + (f" mid-packet ({len(self._buf)} bytes pending)"
                                      if self._buf else ""))
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _recv_packet(self, timeout: float | None = None) -> tuple[str, bytes]:
        assert self.sock is not None, "not connected"
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            (length,) = struct.unpack("!L", self._recv_exact(4))
            if not 1 <= length <= MAX_PACKET:
                raise MilterProtocolError(f"bad packet length {length}")
            packet = self._recv_exact(length)
        finally:
            if timeout is not None and self.sock is not None:
                self.sock.settimeout(self.timeout)
        return chr(packet[0]), packet[1:]

    @staticmethod
    def _decode_reply(cmd: str, data: bytes) -> Reply:
        if cmd == C.SMFIR_REPLYCODE:
            parts = _split_cstrs(data)
            text = parts[0] if parts else ""
            return Reply(cmd, text[:3], text[4:])
        return Reply(cmd)

    @staticmethod
    def _decode_action(cmd: str, data: bytes) -> Action:
        if cmd == C.SMFIR_REPLBODY:
            return Action("replace_body", body=data)
        if cmd in (C.SMFIR_INSHEADER, C.SMFIR_CHGHEADER):
            (index,) = struct.unpack("!L", data[:4])
            name, value = [*_split_cstrs(data[4:]), "", ""][:2]
            kind = "add_header" if cmd == C.SMFIR_INSHEADER else "change_header"
            return Action(kind, name=name, value=value, index=index)
        parts = _split_cstrs(data)
        if cmd == C.SMFIR_ADDHEADER:
            return Action("add_header", name=parts[0], value=parts[1] if len(parts) > 1
                          else "")
        if cmd in (C.SMFIR_ADDRCPT, C.SMFIR_ADDRCPT_PAR):
            return Action("add_rcpt", rcpt=parts[0], args=tuple(parts[1:]))
        if cmd == C.SMFIR_DELRCPT:
            return Action("delete_rcpt", rcpt=parts[0])
        if cmd == C.SMFIR_CHGFROM:
            return Action("change_from", rcpt=parts[0], args=tuple(parts[1:]))
        if cmd == C.SMFIR_QUARANTINE:
            return Action("quarantine", value=parts[0] if parts else "")
        raise MilterProtocolError(f"unexpected reply {cmd!r} at end of message: "
                                  f"{data[:80]!r}")


def _macro_queue_id(macros: Mapping[str, Any] | None) -> str | None:
    if not macros:
        return None
    if isinstance(macros.get("i"), str):
        return str(macros["i"])
    eom = macros.get("eom")
    if isinstance(eom, Mapping) and isinstance(eom.get("i"), str):
        return str(eom["i"])
    return None


def _stage_macros(macros: Mapping[str, Any] | None, qid: str, mail_from: str,
                  connect_info: tuple[str, str], helo: str) -> dict[str, dict[str, Any]]:
    host, addr = connect_info
    stages: dict[str, dict[str, Any]] = {
        "connect": {"j": "lab.localdomain", "{daemon_name}": "lab.localdomain",
                    "{daemon_addr}": "127.0.0.1", "v": "Postfix 3.7.11",
                    "_": f"{host} [{addr}]", "{client_addr}": addr, "{client_name}": host,
                    "{client_port}": "40000"},
        "helo": {},
        "mail": {},
        "rcpt": {},
        "data": {"i": qid},
        "eoh": {"i": qid},
        "eom": {"i": qid},
    }
    if not macros:
        return stages
    per_stage = all(k in STAGES and isinstance(v, Mapping) for k, v in macros.items())
    if per_stage:
        for stage, values in macros.items():
            stages[stage].update(values)
        return stages
    for name, value in macros.items():
        if name == "i":
            for stage in ("data", "eoh", "eom"):
                stages[stage]["i"] = value
        elif name in _CONNECT_MACROS:
            stages["connect"][name] = value
        elif name.startswith("{rcpt_"):
            stages["rcpt"][name] = value
        else:                          # {auth_*}, {mail_*} and anything else: from MAIL on
            stages["mail"][name] = value
    return stages
