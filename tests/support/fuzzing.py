"""Fuzzing the decision path: parse -> decide -> rewrite, and the oracle it must satisfy.

Shared by the bounded property test in ``make test`` (``tests/test_hostile_fuzz.py``) and
the long runs of ``tests/fuzz/run.py`` (hypothesis or atheris).

:func:`messages` is a hypothesis strategy for hostile messages: header fields from a pool
(ours to forge, MIME, DKIM, bulk markers, random names) with values that are plain,
folded, RFC 2047 encoded (valid, broken, unknown charset), raw 8-bit, NUL-bearing or
long; a MIME tree whose boundaries may be missing, unused, reused or unterminated,
with text in any charset (declared right, wrong or not at all) and transfer encoding
(known, broken, unknown), attached messages and binary parts; secrets in the text;
then byte-level mutations (truncation, insertion, flips, LF-only line ends, no blank
line). Each example comes with an envelope (watched, redirect, assistance and outside
recipients; client, unknown, internal and null senders).

:func:`check_one` is the oracle, what must hold for any input:

1. ``Engine.process`` returns a decision (never raises), in bounded time;
2. the decision is safe: recipients removed only among the original ones and only
   when an assistance copy is added or already there; nobody added twice; only our
   own headers (X-Helpdesk-*, our Authentication-Results) removed, at indexes that
   exist;
3. the rewritten message (``rewrite_raw``, what Postfix would deliver) parses whenever
   the original did, with the same MIME structure when the body was replaced, and the
   body is byte-identical when it was not.
"""

from __future__ import annotations

import base64
import quopri
import random
import re
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser

from hypothesis import strategies as st

from helpdesk_milter.engine import Engine, rewrite_raw
from helpdesk_milter.message import Envelope, build_raw

CLIENT = "secretariat@mairie-exemple.fr"
RCPTS = ["alice@example.org", "contact@example.org", "commercial@example.org",
         "mairie-exemple@assistance.example.org", "accueil@assistance.example.org",
         "partenaire@prestataire.example", "Bob@Example.ORG"]
SENDERS = [CLIENT, "inconnu@gmail.example", "jean@example.org", "", "MAILER-DAEMON@x.example",
           "jean.dupont@webmail.example"]
SECRETS = ["mot de passe : Soleil2024!", "password: Hunter2hunter2", "le mdp c'est Azerty123",
           "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "AKIA" + "Q3EGOWVMEH7N2PXL",
           "postgres://app:Ch4ngeMe!@db.example.org/prod",
           "-----BEGIN RSA PRIVATE KEY-----\r\nMIIEowIBAAKCAQEA\r\n-----END RSA PRIVATE KEY-----"]
WORDS = ["Bonjour", "impossible", "de", "se", "connecter", "imprimante", "erreur", "merci",
         "réunion", "été", "problème", "Nextcloud", "webmail", "urgent", "--", "=", "=3D",
         "=?utf-8?q?x?=", "<b>", "&amp;", ";", "boundary", "\t", "x" * 120]
CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "us-ascii", "utf-16", "utf-7",
            "iso-2022-jp", "x-unknown", "", '"utf-8"', "utf8", "\xff", "koi8-r"]
CTES = ["7bit", "8bit", "quoted-printable", "base64", "binary", "x-uuencode", "", "BASE64"]
CTYPES = ["text/plain", "text/html", "text/calendar", "application/octet-stream",
          "application/json", "image/png", "message/rfc822", "message/delivery-status",
          "text", "garbage", ""]
HEADER_NAMES = ["Subject", "From", "To", "Cc", "Reply-To", "Message-ID", "In-Reply-To",
                "References", "Date", "X-Helpdesk-Request", "X-Helpdesk-Routed",
                "x-helpdesk-duplicate", "Authentication-Results", "DKIM-Signature",
                "ARC-Seal", "Auto-Submitted", "Precedence", "List-Id", "Content-Type",
                "Content-Transfer-Encoding", "MIME-Version", "Received", "X-Mailer",
                "X-Custom"]


def _encoded_word(text: str, charset: str, enc: str) -> str:
    data = text.encode("utf-8")
    if enc == "B":
        payload = base64.b64encode(data).decode()
    else:
        payload = "".join(chr(b) if 48 <= b < 123 and chr(b).isalnum() else f"={b:02X}"
                          for b in data)
    return f"=?{charset}?{enc}?{payload}?="


def _words(rng: random.Random, n: int, secrets: bool = True) -> list[str]:
    pool = WORDS + SECRETS if secrets else WORDS
    return [rng.choice(pool) for _ in range(n)]


@st.composite
def header_value(draw: st.DrawFn) -> bytes:
    # Structure from hypothesis (it shrinks well), filler from a seeded RNG (cheap draws).
    kind = draw(st.integers(0, 9))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    words = _words(rng, rng.randint(0, 6))
    text = " ".join(words)
    if kind == 0:
        return text.encode("utf-8")
    if kind == 1:                                  # folded
        return text.replace(" ", "\r\n\t", 2).encode("utf-8")
    if kind == 2:                                  # encoded words, some broken
        parts = [_encoded_word(w, rng.choice(["utf-8", "iso-8859-1", "x-unknown", "utf-8*fr"]),
                               rng.choice(["B", "Q", "b", "q"])) for w in words]
        if rng.random() < 0.5:
            parts.append("=?utf-8?B?!!!?=")
        return " ".join(parts).encode("ascii")
    if kind == 3:                                  # raw 8-bit
        return text.encode(rng.choice(["latin-1", "utf-8", "cp1252"]), "replace")
    if kind == 4:
        return rng.randbytes(rng.randint(0, 60)).replace(b"\r", b"").replace(b"\n", b"")
    if kind == 5:
        return b""
    if kind == 6:                                  # long
        return (text or "x").encode() * rng.randint(50, 400)
    if kind == 7:
        return b"<" + text.encode("utf-8", "replace").replace(b" ", b"") + b"@x>"
    if kind == 8:                                  # an address list
        return ", ".join(rng.choice(RCPTS + SENDERS) for _ in range(rng.randint(0, 4))
                         ).encode()
    return b"mx.example.org; dkim=pass header.d=evil.example"


@st.composite
def header_block(draw: st.DrawFn, *, top: bool) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    if top:
        fields.append((b"From", draw(st.sampled_from(
            [CLIENT.encode(), b"J\xe9r\xf4me <secretariat@mairie-exemple.fr>",
             b"=?utf-8?B?PGV2aWxAZXZpbC5leGFtcGxlPg==?= <x@y>", b"", b"<>"]))))
        fields.append((b"Message-ID", draw(st.sampled_from(
            [b"<fuzz@mairie-exemple.fr>", b"", b"<<>>", b"no-brackets"]))))
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from([*HEADER_NAMES, "X-A", "x-helpdesk-", "X-Helpdesk-X-Y",
                                     "Content-type", "SUBJECT", "A" * 70]))
        fields.append((name.encode(), draw(header_value())))
    return fields


@dataclass
class _Node:
    ctype: str
    params: dict[str, str]
    cte: str
    headers: list[tuple[bytes, bytes]]
    children: list[_Node]
    payload: bytes


@st.composite
def text_payload(draw: st.DrawFn) -> bytes:
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    lines = [rng.choice(SECRETS) if rng.random() < 0.2 else
             " ".join(_words(rng, rng.randint(1, 12), secrets=False))
             for _ in range(draw(st.integers(0, 8)))]
    text = "\r\n".join(lines) + "\r\n"
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "cp1252", "utf-16-le", "ascii"]))
    data = text.encode(encoding, "replace")
    cte = draw(st.sampled_from(["none", "none", "qp", "b64", "broken-b64"]))
    if cte == "qp":
        data = quopri.encodestring(data)
    elif cte == "b64":
        data = base64.encodebytes(data).replace(b"\n", b"\r\n")
    elif cte == "broken-b64":
        data = b"!!" + base64.encodebytes(data)[3:]
    if rng.random() < 0.3:
        data += rng.randbytes(rng.randint(1, 20))
    return data


nodes = st.recursive(
    st.builds(lambda ctype, charset, cte, payload, extra: _Node(
        ctype, {"charset": charset} if charset else {}, cte, extra, [], payload),
        st.sampled_from(CTYPES), st.sampled_from(CHARSETS), st.sampled_from(CTES),
        text_payload(), header_block(top=False)),
    lambda children: st.builds(
        lambda sub, kids, boundary, cte: _Node(f"multipart/{sub}",
                                                {"boundary": boundary} if boundary else {},
                                                cte, [], kids, b""),
        st.sampled_from(["mixed", "alternative", "related", "report", "digest", "weird"]),
        st.lists(children, min_size=0, max_size=4),
        st.sampled_from(["b1", "b2", "=_x", "", "a b", "--", "b1"]),
        st.sampled_from(["", "7bit", "base64"])),
    max_leaves=8)


def _render(node: _Node, *, boundary_mode: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    params = "".join(f'; {k}="{v}"' for k, v in node.params.items())
    headers = [(b"Content-Type", f"{node.ctype}{params}".encode("latin-1", "replace"))]
    if node.cte:
        headers.append((b"Content-Transfer-Encoding", node.cte.encode()))
    headers += node.headers
    if not node.ctype.startswith("multipart/"):
        return headers, node.payload
    boundary = node.params.get("boundary", "b?").encode()
    chunks = [b"preamble\r\n"]
    for child in node.children:
        ch, cb = _render(child, boundary_mode=boundary_mode)
        if boundary_mode != "unused":
            chunks.append(b"--" + boundary + b"\r\n")
        chunks.append(_join(ch, cb))
        chunks.append(b"\r\n")
    if boundary_mode == "normal":
        chunks.append(b"--" + boundary + b"--\r\nepilogue\r\n")
    return headers, b"".join(chunks)


def _join(headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    return b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, Envelope]:
    """(raw message bytes, envelope): a hostile message and who it is for."""
    top = draw(header_block(top=True))
    root = draw(nodes)
    mode = draw(st.sampled_from(["normal", "normal", "unterminated", "unused"]))
    mime_headers, body = _render(root, boundary_mode=mode)
    if draw(st.booleans()):
        top += [(b"MIME-Version", b"1.0"), *mime_headers]
    raw = _join(top, body)
    for _ in range(draw(st.integers(0, 3))):
        raw = draw(mutations(raw))
    rcpts = tuple(draw(st.lists(st.sampled_from(RCPTS), min_size=1, max_size=4,
                                unique_by=str.lower)))
    env = Envelope(mail_from=draw(st.sampled_from(SENDERS)), rcpts=rcpts,
                   queue_id="FUZZ", auth_user=draw(st.sampled_from([None, None, "alice"])))
    return raw, env


@st.composite
def mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    kind = draw(st.integers(0, 6))
    pos = draw(st.integers(0, len(raw)))
    if kind == 0:
        return raw[:pos]
    if kind == 1:
        return raw[:pos] + draw(st.sampled_from(
            [b"\x00", b"\r", b"\n", b"\r\n\r\n", b"--b1\r\n", b"--b1--", b"\xff\xfe",
             b"=?", b"\r\n ", b":"])) + raw[pos:]
    if kind == 2 and raw:
        pos = min(pos, len(raw) - 1)
        return raw[:pos] + bytes([raw[pos] ^ draw(st.integers(1, 255))]) + raw[pos + 1:]
    if kind == 3:
        return raw.replace(b"\r\n", b"\n")
    if kind == 4:
        return raw.replace(b"\r\n\r\n", b"\r\n", 1)
    if kind == 5:
        return raw[:pos] + raw[pos:pos + 200] * draw(st.integers(2, 30)) + raw[pos + 200:]
    return raw


# --- the oracle -----------------------------------------------------------------------

_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def milter_view(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split raw bytes the way Postfix hands a message to a milter: header fields (name,
    value after the colon, leading space kept, folds as bare LF) until the first line
    that is not a header field, then the body (CRLF)."""
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    headers: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n", pos)
        end = len(raw) if end < 0 else end
        line = raw[pos:end]
        nxt = min(end + 2, len(raw))
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + line)
            pos = nxt
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _NAME.fullmatch(name.rstrip(b" \t")):
            break
        headers.append((name.rstrip(b" \t").decode("ascii"), value))
        pos = nxt
    body = raw[pos:]
    if body.startswith(b"\r\n"):
        body = body[2:]
    return headers, body


_BARE_CR = re.compile(rb"\r(?!\n)")


def _parse(raw: bytes, pol: policy.Policy) -> list[str]:
    # Lines end at LF for the MTA and the milter, at a bare CR too for the standard
    # library: compare both messages as the MTA sees them (Postfix even turns a bare CR
    # into a space before the milter sees it).
    msg = BytesParser(policy=pol).parsebytes(_BARE_CR.sub(b" ", raw))
    out = []
    for part in msg.walk():
        out.append(part.get_content_type())
        for _name, value in part.items():
            str(value)
    return out


class OracleError(AssertionError):
    """The decision path broke its contract on this input."""


def check_one(engine: Engine, raw: bytes, env: Envelope, *, budget: float = 5.0) -> None:
    """Run one input through parse -> decide -> rewrite; raise OracleError when a
    property of the module docstring does not hold (exceptions from the engine itself
    propagate as they are: that is a crash)."""
    headers, body = milter_view(raw)
    started = time.monotonic()
    outcome = engine.process(env, headers, body, leading_space=True)
    elapsed = time.monotonic() - started
    if elapsed > budget:
        raise OracleError(f"decision took {elapsed:.1f}s (budget {budget:g}s)")
    d = outcome.decision
    original = build_raw(headers, body, leading_space=True)

    rcpts = {r.lower() for r in env.rcpts}
    removed = {r.lower() for r in d.del_rcpts}
    added = {r.lower() for r in d.add_rcpts}
    if not removed <= rcpts:
        raise OracleError(f"removed recipients that were not there: {removed - rcpts}")
    if added & rcpts:
        raise OracleError(f"added a recipient that was already there: {added & rcpts}")
    if removed:
        assistance = {r for r in rcpts | added if engine.policy.is_assistance(r)} - removed
        if not assistance:
            raise OracleError(f"removed {removed} with no assistance copy")
    if not d.inspected and (added or removed):
        raise OracleError("changed the envelope of a message it did not inspect")
    counts: dict[str, int] = {}
    for name, _ in headers:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    for name, index in d.strip_headers:
        key = name.lower()
        if not (key.startswith("x-helpdesk-") or key == "authentication-results"):
            raise OracleError(f"removes a header that is not ours: {name}")
        if not 1 <= index <= counts.get(key, 0):
            raise OracleError(f"removes {name} #{index}, which does not exist")

    out = rewrite_raw(original, d)
    try:
        before = _parse(original, policy.compat32)
        _parse(original, policy.default)
    except Exception:
        return                       # the standard library cannot read the input itself
    try:
        after = _parse(out, policy.compat32)
        _parse(out, policy.default)
    except Exception as exc:
        raise OracleError(f"the rewritten message does not parse: {type(exc).__name__}: "
                          f"{exc}") from exc
    if d.new_body is not None and after != before:
        raise OracleError(f"redaction changed the MIME structure: {before} -> {after}")
    if d.new_body is None:
        _, sep, old_body = original.partition(b"\r\n\r\n")
        _, sep2, new_body = out.partition(b"\r\n\r\n")
        if sep and sep2 and new_body != old_body:
            raise OracleError("the body changed although the decision did not replace it")
