"""Messages as plain values: the envelope, and a parsed view of headers and body.

The milter hands us header fields one by one and the body in chunks; ``try``
reads an .eml file.  Both end up here as raw bytes, parsed once with the
standard library's ``email`` package.  Parsing never raises: a message the
parser cannot make sense of still yields a view whose fields are empty
strings, and ``defects`` says what was wrong, so the decision can fall back to
"let it through unchanged".

Why ``policy.compat32`` and not ``policy.default``: with ``policy.default``
every header access builds a structured header object, and walking a
multipart message's Content-Type and Content-Disposition that way cost about
1.5 ms per 5 KB message, more than the rest of the decision together (profiled
in ``make bench``).  We read raw header values and decode only what we use:
the Subject's encoded words (``email.header``), the From address
(``email.utils.parseaddr``), and the charset and transfer encoding of text
parts.
"""

from __future__ import annotations

import binascii
import email.utils
import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.base64mime import decode as _base64_decode
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from functools import cached_property
from html.parser import HTMLParser
from operator import itemgetter

# How much of the body's text we look at: enough for any real request, and it
# bounds the cost of classifying a huge text part.
TEXT_LIMIT = 200_000


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope of one message, as Postfix gave it (no angle brackets)."""

    mail_from: str                    # "" for the null sender (bounces)
    rcpts: tuple[str, ...]
    auth_user: str | None = None      # Postfix's {auth_authen}: authenticated submission
    queue_id: str | None = None       # Postfix's queue id (macro i)
    client_addr: str | None = None


def strip_brackets(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


def from_address(value: str) -> str:
    """The address of a From-style field value, as ``email.utils.parseaddr`` reads it."""
    m = _PLAIN_FROM.fullmatch(value)
    if m is not None:
        return m.group(1) or m.group(0).strip(" \t")
    return email.utils.parseaddr(value)[1]


def build_raw(headers: Iterable[tuple[str, bytes | str]], body: bytes, *,
              leading_space: bool = False) -> bytes:
    """Reassemble a message from milter header fields and body bytes.

    With ``leading_space`` the values are exactly what followed the colon
    (Postfix sends them so when SMFIP_HDR_LEADSPC is negotiated), which keeps
    the header block byte-exact for DKIM "simple" canonicalization; otherwise
    one space is put back after the colon.  Folded values come with bare LF
    line breaks and get CRLF, like the body.
    """
    parts: list[bytes] = []
    sep = b":" if leading_space else b": "
    for name, value in headers:
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        if b"\n" in value:
            value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        parts.append(name.encode("ascii", "replace") + sep + value + b"\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


_FOLD = re.compile(r"\r?\n(?=[ \t])")
# The usual shapes of a From field, ``addr@dom`` and ``Display Name <addr@dom>`` (no
# quotes, comments, groups or lists), read without email.utils.parseaddr's tokenizer;
# anything else goes to parseaddr.  Both give the same address (tested).
_PLAIN_FROM = re.compile(
    r"[ \t]*(?:[^\x00-\x20\x7f<>()\[\]\\,;:@\"]+@[^\x00-\x20\x7f<>()\[\]\\,;:@\"]+"
    r"|[^<>()\[\]\\,;:@\"\x00-\x1f\x7f]*<([^\x00-\x20\x7f<>()\[\]\\,;:@\"]+@"
    r"[^\x00-\x20\x7f<>()\[\]\\,;:@\"]+)>)[ \t]*")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; raw text when they are broken or unknown."""
    value = _FOLD.sub("", value)
    if "=?" not in value:
        return value.replace("\r", "").replace("\n", " ")
    text = _utf8_words(value)
    if text is None:
        try:
            text = str(make_header(decode_header(value)))
        except Exception:  # unknown charset, bad base64: keep what was sent
            text = value
    return text.replace("\r", "").replace("\n", " ")


def _utf8_words(value: str) -> str | None:
    """``str(make_header(decode_header(value)))`` for the usual shape of an encoded
    header, or None for any other (the caller then asks the library, which also
    decides what a broken one gives).

    The usual shape: one line of ASCII whose encoded words are all UTF-8 (Q or B).
    The steps are the library's own (``decode_header``: split on encoded words, drop
    the blanks between two of them, decode, join runs of one charset; then
    ``Header.__str__``: a space where an encoded run meets plain text without one),
    without the ``Header`` and ``Charset`` objects, which cost most of the time of
    a Subject (``tests/test_message.py`` compares the two on many headers)."""
    if not value.isascii():
        return None
    lines = value.splitlines()
    if len(lines) != 1:
        return None
    parts = _ENCODED_WORD.split(lines[0])
    if len(parts) == 1:
        return None
    # decode_header: (text, encoding or "" for plain text)
    words: list[tuple[str, str]] = []
    first = True
    for i in range(0, len(parts), 4):
        unencoded = parts[i]
        if first:
            unencoded = unencoded.lstrip()
            first = False
        if unencoded:
            words.append((unencoded, ""))
        if i + 1 < len(parts):
            if parts[i + 1].lower() != "utf-8":
                return None
            words.append((parts[i + 3], parts[i + 2].lower()))
    droplist = [n - 1 for n in range(2, len(words))
                if words[n][1] and words[n - 2][1] and words[n - 1][0].isspace()]
    for d in reversed(droplist):
        del words[d]
    # decode, and collapse runs (plain runs joined by a space, encoded ones glued)
    chunks: list[tuple[bytes, bool]] = []        # (bytes, encoded)
    for text, encoding in words:
        if not encoding:
            data = text.encode("ascii")
        elif encoding == "q":
            data = _q_decode(text)
        else:
            padding = len(text) % 4
            if padding:
                text += "==="[:4 - padding]
            try:
                data = _base64_decode(text)
            except binascii.Error:
                return None
        encoded = bool(encoding)
        if chunks and chunks[-1][1] == encoded:
            chunks[-1] = (chunks[-1][0] + (data if encoded else b" " + data), encoded)
        else:
            chunks.append((data, encoded))
    # make_header + Header.__str__ (ASCII runs and UTF-8 runs alternate)
    out: list[str] = []
    last_plain = True
    last_space: bool | str = False
    for data, encoded in chunks:
        try:
            string = data.decode("utf-8" if encoded else "ascii")
        except UnicodeDecodeError:
            return None
        plain = not encoded
        if out:
            has_space = string and _nonctext(string[0])
            if not last_plain:
                if plain and not has_space:
                    out.append(" ")
            elif not plain and not last_space:
                out.append(" ")
        last_space = string and _nonctext(string[-1])
        last_plain = plain
        out.append(string)
    return "".join(out)


# email.header's encoded word (``ecre``, not in its public names): =?charset?q|b?text?=
_ENCODED_WORD = re.compile(r"=\?([^?]*?)\?([qQbB])\?(.*?)\?=", re.MULTILINE)
_Q_ESCAPE = re.compile(r"=([a-fA-F0-9]{2})", re.ASCII)


def _q_decode(text: str) -> bytes:
    """``bytes(email.quoprimime.header_decode(text), "raw-unicode-escape")``: "_" is a
    space, each "=XX" the byte XX; the escapes found by one split, not one Python
    call each."""
    pieces = _Q_ESCAPE.split(text.replace("_", " "))
    if len(pieces) == 1:
        return pieces[0].encode("ascii")
    pieces[1::2] = map(chr, bytes.fromhex("".join(pieces[1::2])))
    return "".join(pieces).encode("latin-1")


def _nonctext(s: str) -> bool:
    """``Header._nonctext``: not an RFC 822 ctext character."""
    return s.isspace() or s in ("(", ")", "\\")


def undo_surrogates(value: str) -> str:
    """Raw 8-bit header bytes (kept as surrogates by the parser) as text: UTF-8 when
    valid, else Windows-1252, what undeclared 8-bit headers nearly always are."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def header_text(msg: Message, name: str) -> str:
    """The first ``name`` header as text (encoded words and raw 8-bit decoded), or ""."""
    key = name.lower()
    try:
        for field, value in msg.raw_items():
            if field.lower() == key:
                return decode_words(undo_surrogates(str(value)))
    except Exception:
        pass
    return ""




def _part_text(part: Message) -> str:
    """Decoded text of a text/* part; unknown or lying charsets degrade to replacement."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        charset = "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


class _HTMLText(HTMLParser):
    """Text content of an HTML part: drops tags, scripts and styles, keeps line breaks."""

    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "blockquote",
                        "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._quote = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag == "blockquote":
            self._quote += 1
        if tag in self._BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag == "blockquote":
            self._quote = max(0, self._quote - 1)
        if tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._quote:
            # quoted history in HTML replies: mark it like a plain-text quote
            data = "\n".join("> " + line for line in data.split("\n"))
        self.out.append(data)


def _defuse(markup: str) -> str:
    """``markup`` with the tag openers that can never complete turned into text.

    Why: the standard library's HTMLParser (CPython 3.11) rescans to the end of the
    input for every ``<`` after which no ``>`` follows: ``"<a" * 150_000`` (300 KB, a
    plausible mail part) took 105 s of CPU while holding the GIL, so every milter
    session stalled behind one message.  No tag, comment or declaration can end
    after the last ``>``; escaping the ``<`` there changes nothing in the text (the
    parser would emit them as data) and makes the parse linear.
    """
    last_gt = markup.rfind(">")
    tail = markup[last_gt + 1:]
    if "<" in tail:
        return markup[:last_gt + 1] + tail.replace("<", "&lt;")
    return markup


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(_defuse(markup))
        parser.close()
    except Exception:
        # <[^<>]*> rather than <[^>]*>: the latter rescans to the end for each "<"
        # of an input with no ">" (quadratic, like the parser itself).
        return html.unescape(re.sub(r"<[^<>]*>", " ", markup))
    text = "".join(parser.out)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text)


def _is_attachment(part: Message) -> bool:
    try:
        disposition = part.get_content_disposition()
    except Exception:
        return False
    return disposition == "attachment"


def iter_parts(msg: Message, *, max_depth: int = 50) -> Iterator[Message]:
    """Leaf parts, depth-first, bounded so that hostile nesting cannot recurse forever."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if part.is_multipart() and depth < max_depth:
            try:
                children = part.get_payload()
            except Exception:
                continue
            if isinstance(children, list):
                stack.extend((c, depth + 1) for c in reversed(children)
                             if isinstance(c, Message))
            continue
        yield part


_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _header_end(raw: bytes) -> int:
    """Where ``_HEADER_END`` first matches in ``raw`` (-1: nowhere), from two substring
    searches: ``re`` cannot skip ahead to an optional first character, and tries the
    pattern at every byte of the header block.  The first blank line is the first
    "\n" followed by "\n" or "\r\n"; the match starts at the "\r" before it, if any."""
    crlf = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, len(raw) if crlf < 0 else crlf + 1)
    first = crlf if lf < 0 else lf
    if first < 0:
        return -1
    return first - 1 if first and raw[first - 1] == 13 else first


# One header field: its name (printable ASCII but ":"), the rest of its first line and
# its continuation lines, as the standard library's feedparser reads them.
_FIELD = re.compile(r"([\041-\071\073-\176]+):([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)(?:\r?\n|\Z)")


def parse_header_block(block: bytes) -> Message:
    """The header fields of ``block`` in a compat32 ``Message``: the same fields and
    values as ``BytesHeaderParser(policy=compat32)`` gives, several times faster.

    A block of well-formed fields is read with one regular expression; anything else
    (a line that is no field, a leading continuation line, an mbox "From " line)
    goes to the standard parser, which knows what to make of it.
    """
    fields = _well_formed_fields(block)
    if fields is None:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    return _message_of(fields)


def _well_formed_fields(block: bytes) -> list[tuple[str, str]] | None:
    """(name, raw value) of every field of ``block`` as ``parse_header_block`` reads
    them, when every line is a field or a continuation line; else None."""
    text = block.decode("ascii", "surrogateescape")
    fields = []
    pos = 0
    for m in _FIELD.finditer(text):
        if m.start() != pos:
            break
        fields.append((m.group(1), m.group(2).lstrip(" \t")))
        pos = m.end()
    if pos != len(text) and text[pos:] not in ("\r\n", "\n"):
        return None
    return fields


def _message_of(fields: Iterable[tuple[str, str]]) -> Message:
    head = Message(policy=policy.compat32)
    for name, value in fields:
        head.set_raw(name, value)
    return head


_BARE_CR = re.compile(rb"\r(?!\n)")
_RFC822 = re.compile(rb"(?i)message/(?:rfc822|global)")
_RFC822_CHUNK = 1 << 16


def _mentions_rfc822(raw: bytes) -> bool:
    """``_RFC822.search(raw) is not None``, three times faster: ``re`` tries a
    case-insensitive pattern at every byte, while ASCII lower-casing (what IGNORECASE
    means for a bytes pattern) and a substring search run at C speed.  Slices of 64 KiB,
    overlapping by a literal's length less one, bound the copy a big message costs."""
    for start in range(0, len(raw), _RFC822_CHUNK):
        chunk = raw[start:start + _RFC822_CHUNK + 13].lower()
        if b"message/rfc822" in chunk or b"message/global" in chunk:
            return True
    return False


def _readable(plain: list[str], markup: list[str]) -> str:
    if plain:
        text = "\n".join(plain)
    elif markup:
        text = html_to_text("\n".join(markup)[: TEXT_LIMIT * 4])
    else:
        text = ""
    return text[:TEXT_LIMIT].replace("\r\n", "\n").replace("\r", "\n")


class ParsedMessage:
    """A read-only view of one message; fields are computed on first use.

    Only the header block is parsed up front (``head``); the MIME tree
    (``msg``) is parsed the first time something needs the body, which many
    messages never do (skipped mail, follow-ups, mail nobody watches).
    """

    def __init__(self, raw: bytes):
        self.raw = raw
        self.defects: list[str] = []
        end = _header_end(raw)
        stop = end if end >= 0 else len(raw)
        self.header_end = stop      # raw[:header_end]: the top-level header block
        # The standard library ends a line at a bare CR; a milter's MTA does not
        # (Postfix turns it into a space; others pass it on in the field).  Parsed
        # as is, "X-A: a\rb" would end the header block early and hide every later
        # field from the decision: forged X-Helpdesk-* and Authentication-Results
        # would then be kept, Auto-Submitted and List-Id ignored.  Parse the fields
        # as the MTA sees them; ``raw`` itself is left exactly as it came.
        self._view = raw
        if _BARE_CR.search(raw, 0, stop):
            self._view = _BARE_CR.sub(b" ", raw[:stop]) + raw[stop:]
        # The fields of a well-formed block are kept as read: most messages need no
        # more (``head``, the standard library's view of them, is built when asked).
        block = self._view[:stop] + b"\r\n" if end >= 0 else self._view
        self._fields: list[tuple[str, str]] | None = _well_formed_fields(block)
        if self._fields is None:
            try:
                self.__dict__["head"] = BytesHeaderParser(
                    policy=policy.compat32).parsebytes(block)
            except Exception as exc:  # the parser is lenient; this is the last resort
                self.defects.append(f"unparseable headers: {type(exc).__name__}")
                self.__dict__["head"] = Message()

    @cached_property
    def head(self) -> Message:
        """The top-level header fields as a compat32 ``Message`` (``parse_header_block``)."""
        return _message_of(self._fields or ())

    @cached_property
    def msg(self) -> Message:
        """The whole message as a compat32 ``Message`` tree (parsed on first use)."""
        try:
            return BytesParser(policy=policy.compat32).parsebytes(self._view)
        except Exception as exc:  # the parser is lenient; this is the last resort
            self.defects.append(f"unparseable: {type(exc).__name__}")
            return Message()

    def header(self, name: str) -> str:
        """First value of a header, decoded; "" when absent."""
        value = self._first.get(name.lower())
        return "" if value is None else decode_words(undo_surrogates(value))

    def header_block_mentions(self, *names: bytes) -> bool:
        """False when no ``names`` (lower-case ASCII) occur, in any case, in the
        top-level header block's bytes: then no field of ``header_fields`` is named
        so, nor starts so (a field's name is in those bytes as it is read)."""
        block = self.raw[:self.header_end].lower()
        return any(name in block for name in names)

    def has_header(self, name: str) -> bool:
        return name.lower() in self._first

    @cached_property
    def _first(self) -> dict[str, str]:
        """Lower-cased name -> raw value of its first occurrence (looked up often)."""
        fields = self.header_fields()
        fields.reverse()        # an earlier occurrence overwrites a later one
        return dict(zip(map(str.lower, map(itemgetter(0), fields)),
                        map(itemgetter(1), fields), strict=True))

    def header_fields(self) -> list[tuple[str, str]]:
        """Every (name, raw value) of the top-level header block, in order."""
        if self._fields is not None:
            return list(self._fields)      # (what head.raw_items() gives for them)
        try:
            return [(name, str(value)) for name, value in self.head.raw_items()]
        except Exception:
            return []

    @cached_property
    def content_type(self) -> str:
        value = self._first.get("content-type")
        if value is not None and self._fields is not None and value.isascii():
            # Message.get_content_type on a plain str value, without the Message
            ctype = value.partition(";")[0].strip().lower()
            return ctype if ctype.count("/") == 1 else "text/plain"
        if value is None and self._fields is not None:
            return "text/plain"
        try:
            return self.head.get_content_type()
        except Exception:
            return "text/plain"

    @cached_property
    def subject(self) -> str:
        return self.header("Subject").strip()

    @cached_property
    def from_addr(self) -> str:
        """The From header's address, lower-cased; "" when none can be read."""
        try:
            if self._fields is None:
                raw = self.head.get("From")
            else:
                # head.get("From") without the Message: the first From field's raw
                # value, unless it has 8-bit bytes (then the library's Header)
                raw = self._first.get("from")
                if raw is not None and not raw.isascii():
                    raw = self.head.get("From")
            addr = from_address(_FOLD.sub("", str(raw)) if raw else "")
        except Exception:
            return ""
        return addr.lower() if "@" in addr else ""

    @cached_property
    def message_id(self) -> str:
        value = self.header("Message-ID").strip()
        m = re.search(r"<[^<>\s]+>", value)
        return m.group(0) if m else value

    @cached_property
    def text(self) -> str:
        """The readable text of the message: its text/plain parts, else its HTML as text.

        Parts marked ``Content-Disposition: attachment`` are left out.  An
        inline ``message/rfc822`` part is walked into: a request forwarded as
        an attached message is the request (a bounce's returned original also
        is, but the policy skips bounces before classifying).
        """
        plain: list[str] = []
        markup: list[str] = []
        try:
            for part in iter_parts(self.msg):
                ctype = part.get_content_type()
                if _is_attachment(part):
                    continue
                if ctype == "text/plain":
                    plain.append(_part_text(part))
                elif ctype == "text/html":
                    markup.append(_part_text(part))
                if sum(map(len, plain)) > TEXT_LIMIT:
                    break
        except Exception as exc:
            self.defects.append(f"walk: {type(exc).__name__}")
        return _readable(plain, markup)

    def adopt_texts(self, texts: Iterable[tuple[str, bool, str]] | None,
                    subject: str | None = None) -> None:
        """Take the text parts someone already decoded (the redaction walk) as the
        source of ``text``, so the MIME tree need not be parsed again for it; and,
        when given, ``subject`` (the Subject with its secrets replaced) as
        ``subject``, so that nothing downstream reads a secret.

        ``texts`` are (content type, is an attachment, decoded text) in message
        order; the rules are those of ``text``.  Bytes that did not decode were
        kept as surrogates; they become replacement characters here, as ``text``
        does.
        """
        if subject is not None:
            self.__dict__["subject"] = subject.strip()
        if texts is None or "text" in self.__dict__:
            return
        plain: list[str] = []
        markup: list[str] = []
        for ctype, attachment, text in texts:
            if attachment:
                continue
            if not text.isascii():
                try:
                    text.encode("utf-8")    # no surrogate: the round trip gives it back
                except UnicodeEncodeError:
                    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            (plain if ctype == "text/plain" else markup).append(text)
        self.__dict__["text"] = _readable(plain, markup)

    @cached_property
    def may_attach_message(self) -> bool:
        """False when the message certainly has no attached message/rfc822 part."""
        return self.content_type.startswith("multipart/") and _mentions_rfc822(self.raw)

    def content_types(self) -> list[str]:
        try:
            return [p.get_content_type() for p in iter_parts(self.msg)]
        except Exception:
            return []
