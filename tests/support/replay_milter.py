"""A milter that replays helpdesk-milter's actions without deciding anything.

The bench (``make bench``, section 1) uses it to split what helpdesk-milter costs a
Postfix into its two parts: the decision (CPU in the milter) and the changes Postfix
is asked to make (headers added and removed, recipients added and removed, bodies
replaced). It reads a JSON file of the actions helpdesk-milter decided for each
message of the bench mix, made in-process beforehand (``bench/effects.py``), finds a
message's entry by Message-ID and recipients, and applies it at end of message as
``helpdesk_milter.app`` does. It takes the same callbacks as helpdesk-milter.

    python replay_milter.py --socket unix:/run/dir/replay.sock --actions FILE.json

The file maps ``"<message-id>|rcpt,rcpt"`` to a list of action sets, used in order
(a message sent twice replays the first decision, then the second); a message
without an entry, or past its list, is accepted unchanged. One line per message
on stderr unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
from typing import Any, ClassVar

import Milter

ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT | Milter.CHGBODY


def replay_key(message_id: str, rcpts: list[str]) -> str:
    """The key of a message in the actions file (bench/effects.py writes the same)."""
    return message_id.strip() + "|" + ",".join(r.strip("<>").lower() for r in rcpts)


class ReplayMilter(Milter.Base):
    actions: ClassVar[dict[str, list[dict[str, Any]]]] = {}
    quiet = False
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.rcpts: list[str] = []
        self.message_id = ""

    def negotiate(self, opts: list[int]) -> Any:
        rc = Milter.Base.negotiate(self, opts)
        opts[0] = self._actions = opts[0] & ACTIONS
        return rc

    def envfrom(self, mailfrom: str, *esmtp: str) -> int:
        self.rcpts, self.message_id = [], ""
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *esmtp: str) -> int:
        self.rcpts.append(to)
        return Milter.CONTINUE

    def data(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        if not self.message_id and name.lower() == "message-id":
            self.message_id = value.strip()
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        key = replay_key(self.message_id, self.rcpts)
        with self._lock:
            queue = self.actions.get(key)
            act = queue.pop(0) if queue else None
        if act is not None:
            for name, index in act["strip_headers"]:
                self.chgheader(name, index, "")
            for name, index, value in act["change_headers"]:
                self.chgheader(name, index, value)
            for name, value in reversed(act["prepend_headers"]):
                self.addheader(name, value, 0)
            for name, value in act["add_headers"]:
                self.addheader(name, value)
            for rcpt in act["add_rcpts"]:
                self.addrcpt(f"<{rcpt}>")
            originals = {r.strip("<>").lower(): r for r in self.rcpts}
            for rcpt in act["del_rcpts"]:
                self.delrcpt(originals.get(rcpt.lower(), f"<{rcpt}>"))
            if act["new_body"] is not None:
                self.replacebody(base64.b64decode(act["new_body"]))
        if not self.quiet:
            print(f"replay-milter: qid={self.getsymval('i') or '-'} "
                  f"replayed={'yes' if act is not None else 'no'}", file=sys.stderr,
                  flush=True)
        return Milter.ACCEPT

    def close(self) -> int:
        return Milter.CONTINUE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True, help="unix:/path")
    ap.add_argument("--actions", required=True, help="JSON file from bench/effects.py")
    ap.add_argument("--timeout", type=int, default=60, help="libmilter I/O timeout (s)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not args.socket.startswith(("unix:", "local:")):
        ap.error("a unix socket only")
    os.umask(0o007)
    with open(args.actions) as f:
        ReplayMilter.actions = json.load(f)
    ReplayMilter.quiet = args.quiet
    Milter.factory = ReplayMilter
    Milter.set_flags(ACTIONS)
    print(f"replay-milter: {len(ReplayMilter.actions)} messages, listening on {args.socket}",
          file=sys.stderr, flush=True)
    Milter.runmilter("replay-milter", args.socket, args.timeout)
    print("replay-milter: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
