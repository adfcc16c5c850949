"""One message in, one decision out: parse, decide, log, record.

``Engine`` is what the milter adapter and the ``try`` command share.  It owns
no per-message state, so one instance serves every milter thread.  It logs
one line per message, with Postfix's queue id, and never a Subject or body
(they can hold secrets): only addresses, the verdict and the action.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import Config
from .message import Envelope, ParsedMessage, build_raw
from .policy import Decision, Policy
from .stages import stage
from .store import DecisionRecord, NullStore, Store

log = logging.getLogger("helpdesk_milter")


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    message: ParsedMessage


class Engine:
    def __init__(self, config: Config, *, store: Store | None = None,
                 clock: Callable[[], float] = time.time, policy: Policy | None = None):
        self.config = config
        self.policy = policy or Policy(config)
        self.store: Store = store or NullStore()
        self.clock = clock

    def process(self, env: Envelope, headers: Sequence[tuple[str, bytes | str]], body: bytes,
                *, size: int | None = None, too_large: bool = False) -> Outcome:
        """Decide on one message given as milter header fields and body bytes."""
        return self.process_raw(env, build_raw(headers, body), size=size, too_large=too_large)

    def process_raw(self, env: Envelope, raw: bytes, *, size: int | None = None,
                    too_large: bool = False) -> Outcome:
        with stage("parse"):
            msg = ParsedMessage(raw)
            # parse lazily-computed fields here, so "parse" holds all parsing
            _ = msg.subject, msg.from_addr
        decision = self.policy.decide(env, msg, too_large=too_large)
        size = len(raw) if size is None else size
        self._log(env, msg, decision, size)
        if decision.inspected:
            with stage("store"):
                self.store.record(self._record(env, msg, decision, size))
        return Outcome(decision, msg)

    def _record(self, env: Envelope, msg: ParsedMessage, d: Decision,
                size: int) -> DecisionRecord:
        return DecisionRecord(
            time=self.clock(), queue_id=env.queue_id or "", message_id=msg.message_id,
            mail_from=env.mail_from.lower(), from_addr=msg.from_addr, structure=d.structure,
            verdict=d.verdict, score=round(d.score, 2), rules=",".join(d.rules),
            action=d.action, skip_reason=d.skip_reason, watch_group=d.group,
            assistance=d.assistance, added=",".join(d.add_rcpts),
            removed=",".join(d.del_rcpts), duplicate=d.duplicate, size=size)

    @staticmethod
    def _log(env: Envelope, msg: ParsedMessage, d: Decision, size: int) -> None:
        qid = env.queue_id or "NOQUEUE"
        if not d.inspected:
            log.info("%s: not watched: from=<%s> nrcpt=%d size=%d%s", qid, env.mail_from,
                     len(env.rcpts), size,
                     f" removed-forged-headers={len(d.strip_headers)}"
                     if d.strip_headers else "")
            return
        parts = [f"{qid}:", f"verdict={d.verdict}", f"action={d.action}",
                 f"structure={d.structure or 'unknown'}", f"score={d.score:.1f}",
                 f"from=<{env.mail_from}>", f"nrcpt={len(env.rcpts)}", f"size={size}"]
        if d.skip_reason:
            parts.append(f"skipped={d.skip_reason}")
        if d.group:
            parts.append(f"group={d.group}")
        if d.add_rcpts:
            parts.append("added=" + ",".join(f"<{r}>" for r in d.add_rcpts))
        if d.del_rcpts:
            parts.append("removed=" + ",".join(f"<{r}>" for r in d.del_rcpts))
        if d.duplicate:
            parts.append(f"duplicate={d.duplicate}")
        if d.ticket:
            parts.append(f"ticket={d.ticket}")
        if d.strip_headers:
            parts.append(f"removed-forged-headers={len(d.strip_headers)}")
        parts.append(f"rules={','.join(d.rules) or '-'}")
        if msg.message_id:
            parts.append(f"message-id={msg.message_id}")
        log.info(" ".join(parts))


def rewrite_raw(raw: bytes, decision: Decision) -> bytes:
    """Apply a decision's header and body changes to raw message bytes (``try --output``).

    Mirrors what the milter asks Postfix to do: remove the listed header
    occurrences, append the new headers at the end of the header block, and
    replace the body when the decision has a new one.
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    newline = b"\r\n"
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
        newline = b"\n"
    if not sep:
        head, body = raw.rstrip(b"\r\n"), b""
    # group physical lines into fields (continuation lines start with blanks)
    fields: list[list[bytes]] = []
    for line in head.split(newline):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    drop = {(name.lower(), index) for name, index in decision.strip_headers}
    counts: dict[str, int] = {}
    kept: list[bytes] = []
    for field in fields:
        name = field[0].split(b":", 1)[0].decode("ascii", "replace").strip().lower()
        counts[name] = counts.get(name, 0) + 1
        if (name, counts[name]) in drop:
            continue
        kept.append(newline.join(field))
    for name, value in decision.add_headers:
        kept.append(f"{name}: {value}".encode())
    new_body = decision.new_body if decision.new_body is not None else body
    if decision.new_body is not None and newline == b"\n":
        new_body = new_body.replace(b"\r\n", b"\n")
    return newline.join(kept) + newline + newline + new_body
