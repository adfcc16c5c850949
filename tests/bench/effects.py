"""The actions helpdesk-milter takes on the mix, for the replay milter (section 1).

``make bench`` runs the mix through Postfix with a fourth milter,
``support/replay_milter.py``: it decides nothing and applies, message by message,
the actions helpdesk-milter decided for that message here, in-process, beforehand
(same configuration, a fresh state database, the mix in order). The gap between
it and the no-op milter is what Postfix pays for the changes themselves (headers,
recipients, new bodies); the gap between it and helpdesk-milter is the deciding.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Sequence
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from bench.inproc import EngineFactory
from bench.mix import MixMessage
from helpdesk_milter.message import Envelope
from support.replay_milter import replay_key


def message_id_field(raw: bytes) -> str:
    """The Message-ID field's value as a milter's header callback sees it."""
    head = BytesHeaderParser(policy=policy.compat32).parsebytes(raw.split(b"\r\n\r\n")[0])
    return str(head.get("Message-ID") or "").strip()


def write_actions(factory: EngineFactory, messages: Sequence[MixMessage], path: Path
                  ) -> dict[str, int]:
    """Decide every message of ``messages`` in order; write what was decided to
    ``path`` (JSON, see replay_milter.py); returns counts of the actions."""
    table: dict[str, list[dict[str, Any]]] = {}
    counts = {"messages": 0, "add_rcpts": 0, "del_rcpts": 0, "headers": 0, "new_body": 0}
    with tempfile.TemporaryDirectory(prefix="bench-effects-") as tmp:
        engine, store = factory.make(Path(tmp) / "effects.db")
        try:
            for n, m in enumerate(messages):
                env = Envelope(mail_from=m.mail_from, rcpts=tuple(m.rcpts),
                               queue_id=f"EFFECTS{n:05d}")
                d = engine.process_raw(env, m.raw).decision
                table.setdefault(replay_key(message_id_field(m.raw), list(m.rcpts)),
                                 []).append({
                    "strip_headers": d.strip_headers,
                    "change_headers": d.change_headers,
                    "prepend_headers": d.prepend_headers,
                    "add_headers": d.add_headers,
                    "add_rcpts": d.add_rcpts, "del_rcpts": d.del_rcpts,
                    "new_body": base64.b64encode(d.new_body).decode()
                    if d.new_body is not None else None})
                counts["messages"] += 1
                counts["add_rcpts"] += len(d.add_rcpts)
                counts["del_rcpts"] += len(d.del_rcpts)
                counts["headers"] += (len(d.add_headers) + len(d.prepend_headers)
                                      + len(d.strip_headers) + len(d.change_headers))
                counts["new_body"] += d.new_body is not None
        finally:
            store.close()
    path.write_text(json.dumps(table))
    return counts
