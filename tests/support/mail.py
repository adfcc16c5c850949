"""Building realistic test messages (MIME, encodings, French text) in one place."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from helpdesk_milter.redact import Redaction

_counter = itertools.count(1)


def make_message(*, sender: str = "Jérôme Martin <secretariat@mairie-exemple.fr>",
                 to: str = "alice@example.org", subject: str = "Problème d'imprimante",
                 body: str = "Bonjour,\n\nL'imprimante du secrétariat ne fonctionne plus "
                             "depuis ce matin, impossible d'imprimer.\n\nMerci,\nJérôme\n",
                 html: str | None = None, headers: dict[str, str] | None = None,
                 message_id: str | None = None, cte: str | None = None) -> EmailMessage:
    """A plausible client mail; ``html`` adds a multipart/alternative HTML part."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 3, 9, 30, next(_counter) % 60,
                                           tzinfo=UTC))
    msg["Message-ID"] = message_id or make_msgid(domain="mairie-exemple.fr")
    for name, value in (headers or {}).items():
        msg[name] = value
    if cte:
        msg.set_content(body, cte=cte)
    else:
        msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def as_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def apply_redaction(raw: bytes, r: Redaction) -> bytes:
    """What the milter does with a Redaction: chgheader Subject, replacebody (CRLF or
    LF line ends, as the message has them)."""
    blank = re.search(rb"\r?\n\r?\n", raw)
    end = blank.end() if blank else len(raw)
    head, body = raw[:end], raw[end:]
    if r.subject is not None:
        eol = b"\r\n" if blank and blank.group(0).startswith(b"\r") else b"\n"
        field = b"Subject: " + r.subject.encode("ascii") + eol
        head = re.sub(rb"(?mi)^Subject:.*(?:\r?\n[ \t].*)*\r?\n", lambda _: field, head,
                      count=1)
    return head + (r.body if r.body is not None else body)
