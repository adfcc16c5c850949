#!/usr/bin/env python3
"""A no-op pymilter milter: accepts every message and changes nothing.

It is the floor of any pymilter milter, used by the harness self-tests and, later, as
the baseline of the benchmark. It negotiates the callbacks a real filter needs
(connect, envfrom, envrcpt, data, header, eoh, body, eom) and asks for no modification
action at all.

    python noop_milter.py --socket unix:/run/dir/noop.sock [--noreply] [--quiet]

--socket   libmilter syntax: ``unix:/path`` or ``inet:PORT@127.0.0.1``
           (Postfix's ``smtpd_milters`` writes the same TCP socket ``inet:127.0.0.1:PORT``).
--noreply  mark connect/envrcpt/header/eoh/body ``@Milter.noreply`` (fewer round trips).
--quiet    no log line per message.

Guarantees:

- one line per message on stderr, ``noop-milter: qid=... from=<...> rcpts=N
  headers=N body=N result=accept`` (unless ``--quiet``), flushed at once, so a test can
  wait for it;
- a unix socket is created with umask 007 (mode 0770): put it in a directory whose group
  is ``postfix`` with the setgid bit and Postfix's smtpd (user ``postfix``) can connect,
  while other users cannot;
- exits 0 after SIGTERM/SIGINT (libmilter takes up to its 5 s poll interval to notice,
  unless a connection wakes its listener; see ``milterproc.MilterProcess.stop``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import Milter


class NoopMilter(Milter.Base):
    """Accepts everything. One instance per milter connection (libmilter calls
    ``Milter.factory`` from its negotiate callback); a connection can carry several
    messages, so per-message state is reset in ``envfrom`` and ``abort``."""

    quiet = False

    def __init__(self) -> None:
        self.mail_from = ""
        self.rcpts = 0
        self.headers = 0
        self.body_bytes = 0

    def negotiate(self, opts: list[int]) -> Any:
        # Milter.Base.negotiate() grants every action the MTA offers, whatever
        # Milter.set_flags() said; a no-op filter needs none of them.
        rc = Milter.Base.negotiate(self, opts)
        opts[0] = self._actions = 0
        return rc

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    def envfrom(self, mailfrom: str, *esmtp: str) -> int:
        self.mail_from = mailfrom
        self.rcpts = self.headers = self.body_bytes = 0
        return Milter.CONTINUE

    def envrcpt(self, to: str, *esmtp: str) -> int:
        self.rcpts += 1
        return Milter.CONTINUE

    def data(self) -> int:
        # Keep a replying DATA step: over TCP, skipping it costs ~40 ms per message
        # (Postfix's lone DATA macro packet meets Nagle and the delayed ACK).
        return Milter.CONTINUE

    def header(self, name: str, value: str) -> int:
        self.headers += 1
        return Milter.CONTINUE

    def eoh(self) -> int:
        return Milter.CONTINUE

    def body(self, chunk: bytes) -> int:
        self.body_bytes += len(chunk)
        return Milter.CONTINUE

    def eom(self) -> int:
        if not self.quiet:
            print(f"noop-milter: qid={self.getsymval('i') or '-'} from={self.mail_from} "
                  f"rcpts={self.rcpts} headers={self.headers} body={self.body_bytes} "
                  "result=accept", file=sys.stderr, flush=True)
        return Milter.ACCEPT

    def abort(self) -> int:
        self.rcpts = self.headers = self.body_bytes = 0
        return Milter.CONTINUE

    def close(self) -> int:
        return Milter.CONTINUE


class NoopMilterNoReply(NoopMilter):
    """The same, but the MTA does not wait for a reply to these callbacks."""

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *esmtp: str) -> int:
        self.rcpts += 1
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        self.headers += 1
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self.body_bytes += len(chunk)
        return Milter.CONTINUE


def main(argv: list[str] | None = None) -> int:
    """Run the milter until SIGTERM/SIGINT; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True, help="unix:/path or inet:PORT@127.0.0.1")
    ap.add_argument("--timeout", type=int, default=60, help="libmilter I/O timeout (s)")
    ap.add_argument("--noreply", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    kind, _, rest = args.socket.partition(":")
    if kind in ("unix", "local"):
        # libmilter creates the socket with the process umask; 007 -> 0770.
        os.umask(0o007)
    elif kind == "inet" and not rest.endswith(("@127.0.0.1", "@localhost")):
        ap.error("loopback only: use inet:PORT@127.0.0.1")
    cls = NoopMilterNoReply if args.noreply else NoopMilter
    cls.quiet = args.quiet
    Milter.factory = cls
    Milter.set_flags(0)
    print(f"noop-milter: {cls.__name__} listening on {args.socket}", file=sys.stderr,
          flush=True)
    Milter.runmilter("noop-milter", args.socket, args.timeout)
    print("noop-milter: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
