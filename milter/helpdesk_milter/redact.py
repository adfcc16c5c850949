"""Redact secrets from a whole message while keeping it a valid, equivalent MIME message.

The contract of :func:`redact_message`:

- It reads the message as raw bytes and walks the MIME tree *on those bytes* (by
  boundary lines, tolerant of broken structure) instead of re-serialising a parsed
  tree.  Only the bodies of the parts that held a secret are replaced (and the
  Subject field of an attached message, if it held one); every other byte (other
  parts, boundaries, preamble, part headers) stays identical, so signatures over
  untouched parts, base64 attachments and odd-but-working formatting survive.
- Scanned: the top-level Subject, every ``text/*`` part (inline or attachment,
  ``text/html`` as HTML) and a few textual ``application/*`` types (JSON, XML, YAML,
  TOML, SQL, shell, an OpenVPN profile), any other ``application/*`` (octet-stream,
  a program's ``x-`` type) named like a text file (".env", ".pem", ".ovpn") or opening
  a key file (a PEM block, a PuTTY key: "id_sauvegarde"), also
  inside attached ``message/rfc822`` messages.  Not scanned: other binary parts
  (untouched byte for byte) and, in a bounce (``is_bounce`` or a
  ``multipart/report``), the attached original (``message/rfc822``,
  ``message/global``) and the ``text/rfc822-headers`` and ``message/delivery-status``
  parts.
- A rewritten part keeps its headers, charset and Content-Transfer-Encoding.  With
  7bit, 8bit and quoted-printable parts only the lines that held a secret are
  re-encoded (quoted-printable lines are re-wrapped at 76 characters); base64 parts
  are re-encoded whole with the original line length (76 when the original's cannot
  be reused).  Stateful charsets (UTF-16, ISO-2022-*, UTF-7) are re-encoded whole.
- The marker is written in the part's charset.  When the charset cannot represent it,
  or the part is 7bit and the marker is not ASCII, an ASCII transliteration is used
  (accents dropped, anything else "?"): ``[secret supprimé]`` becomes
  ``[secret supprime]``.  In HTML the marker is escaped; in an unquoted attribute
  value its spaces become ``&#32;`` so the attribute still ends where it did.
- Secrets are found on the *decoded* text: quoted-printable soft line breaks and
  HTML tags/entities do not hide them (``mot de passe : <b>Soleil</b>2024!`` is found
  and both text pieces are replaced, the tags kept).
- It never raises.  What cannot be handled (unknown transfer encoding, undecodable
  base64, missing boundaries, nesting deeper than :data:`MAX_DEPTH`) is left unchanged
  and named in ``defects``.  Undeclared 8-bit text is decoded as UTF-8 when it is
  valid UTF-8, else as the declared charset (Latin-1 when none), with undecodable
  bytes carried through unchanged (``surrogateescape``); unknown charsets are scanned
  as UTF-8 the same way, so the bytes around a redaction are preserved exactly.
- Cost is linear in the message size; a part without any detector trigger costs one
  decode and a few substring searches.  Memory is bounded: besides the message, a
  part's decoded text, one scan window's working copies (see "Long texts"), its edits
  held compactly, and the new body, written as the walk goes and never built twice
  (``tests/bench/memory.py``: 3.3-3.7 times a plain-text log near the 10 MB scan cap).
- No secret value ever appears in the result except in the new body/subject, where it
  has been replaced: ``where`` and ``defects`` name locations and kinds only.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import html
import io
import itertools
import re
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.header import Header
from email.message import Message
from functools import lru_cache
from typing import NamedTuple

from .message import TEXT_LIMIT
from .secrets import (  # the private-key patterns: see _head
    _PEM_BEGIN,
    _PUTTY_BEGIN,
    _PUTTY_END,
    DEFAULT_MARKER,
    Finding,
    SecretScanner,
    redact_spans,
)

MAX_DEPTH = 64

_TEXTUAL_APPLICATION = frozenset({
    "application/json", "application/xml", "application/yaml", "application/x-yaml",
    "application/toml", "application/sql", "application/x-sql", "application/x-sh",
    "application/x-shellscript", "application/javascript", "application/x-javascript",
    "application/xhtml+xml", "application/ld+json",
    # text files that mail programs type by their extension: a VPN profile (".ovpn",
    # its inline <key> and <tls-auth> blocks), a PEM file, an armoured PGP key
    "application/x-openvpn-profile", "application/x-pem-file", "application/pgp-keys",
})
_BOUNCE_OPAQUE = frozenset({
    "message/rfc822", "message/global", "text/rfc822-headers", "message/delivery-status",
    "message/global-headers", "message/global-delivery-status",
    "message/disposition-notification", "message/global-disposition-notification",
})
_IDENTITY_CTE = frozenset({"", "7bit", "8bit", "binary", "7-bit", "8-bit"})
_STATEFUL_CODECS = ("utf_16", "utf_32", "utf_7", "iso2022", "hz", "utf_8_sig")

_HEADER_BLOCK = re.compile(rb"(?:[!-9;-~]+[ \t]*:[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*)*")
_UNFOLD = re.compile(rb"\r?\n")
_QUOTED_PAIR = re.compile(r"\\(.)")
# (a quoted value as runs of plain characters between escapes: the same matches as
# "(?:[^"\\]|\\.)*", without a step per character)
_PARAM = re.compile(r''';\s*([^\s=;]+)\s*=\s*("[^"\\]*(?:\\.[^"\\]*)*"|[^;\s]*)''')
_EOL = re.compile(rb"\r?\n")


@dataclass(frozen=True)
class Redaction:
    """What :func:`redact_message` found and, when asked to change, the new content.

    ``count`` is the number of secrets found (every occurrence, Subject included);
    ``kinds`` their sorted unique kinds; ``body`` the new message body (everything
    after the top-level header block, with the message's own line endings — CRLF as
    the milter rebuilds it) or None when nothing changed or ``change`` was false;
    ``subject`` the new Subject value for the milter (RFC 2047 encoded words on one
    line when not ASCII) or None; ``where`` one ``(location, kind)`` per secret
    (``"subject"``, ``"part 1.2 text/plain"``...), never a value; ``defects`` parts
    that could not be processed and were left unchanged.
    """

    count: int
    kinds: tuple[str, ...]
    body: bytes | None
    subject: str | None
    where: tuple[tuple[str, str], ...]
    defects: tuple[str, ...]
    # The decoded text/plain and text/html parts met on the way, in order, as
    # (content type, marked as attachment, text), with their secrets replaced by
    # markers whether or not the message is changed: the classifier's and the
    # duplicate fingerprint's input comes from here, so the message is walked and
    # decoded once, and no hash of a secret is ever stored.  Each text is cut to
    # what ParsedMessage.adopt_texts reads of it (empty for an attachment, or a part
    # past what it reads).  None when the walk did not finish (the caller parses the
    # message itself then).
    texts: tuple[tuple[str, bool, str], ...] | None = field(default=None, compare=False,
                                                            repr=False)
    # The Subject as read, its secrets replaced by markers; None when it holds none.
    subject_text: str | None = field(default=None, compare=False, repr=False)


# --------------------------------------------------------------------------------------
# Entry point.

def redact_message(raw: bytes, scanner: SecretScanner, *, marker: str = DEFAULT_MARKER,
                   change: bool = True, is_bounce: bool = False) -> Redaction:
    """Find the secrets of a whole message and, if ``change``, redact them in place.

    ``raw`` is the full message (header block, empty line, body).  See the module
    docstring for what is scanned and how parts are rewritten.  Never raises.
    """
    walker = _Walker(raw, scanner, marker=marker, change=change, is_bounce=is_bounce)
    try:
        walker.run()
    except Exception as exc:  # last resort: the message goes through unchanged
        return Redaction(count=len(walker.where), kinds=walker.kinds(), body=None,
                         subject=None, where=tuple(walker.where),
                         defects=(*walker.defects, f"redaction failed: {type(exc).__name__}"),
                         texts=None)
    body: bytes | None = None
    if change and walker.replacements:
        body = walker.new_body()
    subject = _encode_subject(walker.subject_text) \
        if change and walker.subject_text is not None else None
    return Redaction(count=len(walker.where), kinds=walker.kinds(), body=body,
                     subject=subject, where=tuple(walker.where),
                     defects=tuple(walker.defects),
                     texts=None if walker.defects else tuple(walker.texts),
                     subject_text=walker.subject_text)


# --------------------------------------------------------------------------------------
# Headers.

# The walk builds a few of these per MIME part (and a _PartInfo and an _Entity):
# named tuples, which cost a fraction of a frozen dataclass to create.
class _Field(NamedTuple):
    name: str          # lower-cased
    value: bytes       # unfolded, without the line ending
    start: int         # the field's byte range in raw (line ending included)
    end: int


def _split_header_block(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of header block, start of body) for the entity at ``raw[start:end]``.

    The header block is the run of header-looking lines; an empty line ends it and
    is skipped.  A line that is neither (a missing separator) starts the body, as in
    the standard library's parser.
    """
    m = _HEADER_BLOCK.match(raw, start, end)
    hend = m.end() if m else start
    eol = _EOL.match(raw, hend, end)
    if eol:
        return hend, eol.end()
    return hend, hend


# The only fields the walk reads.  In a header block as _split_header_block delimits it
# (a _HEADER_BLOCK match) every line is either a field line, whose name is made of
# characters other than ":" and blanks, or a continuation line starting with a blank;
# so a field is a line starting with its name, then every following blank-led line.
# One search finds the three fields instead of a Python loop over every line of every
# header block (Received, DKIM-Signature... are most of the lines and never read).  The
# pattern starts with a literal line break so that the regex engine jumps from line to
# line (a case-insensitive "^" would try every position); the match stops before the
# line break that ends the field, which may start the next match.
_WANTED_FIELD = re.compile(
    rb"\n((?i:subject|content-type|content-transfer-encoding|content-disposition))[ \t]*:"
    rb"([^\n]*(?:\n[ \t][^\n]*)*)")


def _fields(raw: bytes, start: int, end: int) -> list[_Field]:
    """The Subject, Content-Type and Content-Transfer-Encoding fields of the header block
    ``raw[start:end]`` (a _HEADER_BLOCK match), in order, unfolded, with their byte ranges
    (the line break that ends a field included)."""
    block = b"\n" + raw[start:end]      # a line break before the first line too
    out = []
    for m in _WANTED_FIELD.finditer(block):
        # block offset k is raw offset start + k - 1; the field starts after the "\n"
        stop = m.end() + 1 if m.end() < len(block) else m.end()
        value = m.group(2)
        if b"\n" in value:                 # folded: unfold
            value = _UNFOLD.sub(b"", value)
        out.append(_Field(m.group(1).decode("ascii").lower(), value.strip(),
                          start + m.start(), start + stop - 1))
    return out


class _PartInfo(NamedTuple):
    ctype: str
    boundary: str | None
    charset: str | None
    cte: str
    attachment: bool = False   # Content-Disposition: attachment
    text_name: bool = False    # application/* named like a text file (.env, .ovpn)


def _content_type(value: str | None, default_type: str) -> tuple[str, dict[str, str]]:
    """(type/subtype, parameters) of a Content-Type value, as the standard library reads it.

    The common case is parsed here (it is several times faster); RFC 2231 parameters and
    comments go through :class:`email.message.Message`.
    """
    if value is None:
        return default_type, {}
    if "*" in value or "(" in value:
        msg = Message()
        msg["Content-Type"] = value
        params: dict[str, str] = {}
        for name in ("boundary", "charset"):
            param = msg.get_param(name)
            if isinstance(param, tuple):           # RFC 2231 form
                param = param[2]
            if param:
                params[name] = str(param)
        return msg.get_content_type(), params
    main, _, rest = value.partition(";")
    ctype = main.strip().lower()
    if ctype.count("/") != 1 or not all(ctype.split("/")):
        ctype = "text/plain"                       # RFC 2045: an invalid type is text/plain
    params = {}
    for m in _PARAM.finditer(";" + rest):
        name, param = m.group(1).lower(), m.group(2)
        if param.startswith('"'):
            param = param[1:-1]
            if "\\" in param:
                param = _QUOTED_PAIR.sub(r"\1", param)
        params.setdefault(name, param)
    return ctype, params


_NOT_SHOWN = re.compile(r"[^A-Za-z0-9!#$&^_.+/-]")


def _shown(value: str) -> str:
    """A content type or transfer encoding as the message gave it, fit for a
    header value and a log line: MIME token characters only, at most 40."""
    return _NOT_SHOWN.sub("?", value[:40])


def _part_info(fields: list[_Field], default_type: str) -> _PartInfo:
    ctype_value = cte_value = disposition = None
    for f in fields:
        if f.name == "content-type" and ctype_value is None:
            ctype_value = f.value
        elif f.name == "content-transfer-encoding" and cte_value is None:
            cte_value = f.value
        elif f.name == "content-disposition" and disposition is None:
            disposition = f.value
    if len(ctype_value or b"") + len(cte_value or b"") + len(disposition or b"") \
            <= _KEPT_INFO_SIZE and (ctype_value is None
                                    or b"boundary" not in ctype_value.lower()):
        return _kept_part_info(ctype_value, cte_value, disposition, default_type)
    return _read_part_info(ctype_value, cte_value, disposition, default_type)


def _read_part_info(ctype_raw: bytes | None, cte_raw: bytes | None,
                    disposition: bytes | None, default_type: str) -> _PartInfo:
    ctype_value = ctype_raw.decode("latin-1") if ctype_raw is not None else None
    cte_value = cte_raw.decode("latin-1") if cte_raw is not None else None
    ctype, params = _content_type(ctype_value, default_type)
    boundary = params.get("boundary") if ctype.startswith("multipart/") else None
    charset = params.get("charset", "").strip().lower() or None
    cte = (cte_value or "").strip().lower()
    attachment = disposition is not None and \
        disposition.split(b";", 1)[0].strip().lower() == b"attachment"
    text_name = False
    if ctype.startswith("application/"):
        # a pasted config file sent as bytes ("application/octet-stream") or typed by a
        # program from its extension ("application/x-..."): ".env", "notes.txt",
        # "app.ini", "client.ovpn"...
        names = (ctype_value or "") + ";" + (disposition or b"").decode("latin-1")
        text_name = bool(_TEXT_FILE_NAME.search(names))
    return _PartInfo(ctype, boundary or None, charset, cte, attachment, text_name)


# The same few header values come back part after part and message after message
# ("text/plain; charset=utf-8", "quoted-printable"): their reading is kept.  Not a
# multipart's (its boundary makes it the message's own), nor a long one (the memory held
# stays small).  A pure function of header values (never a secret: the walk scans only
# the Subject); an exception (an unreadable value) is not kept and is raised again.
_KEPT_INFO_SIZE = 256
_kept_part_info = lru_cache(maxsize=512)(_read_part_info)


def _block_part_info(raw: bytes, start: int, end: int, default_type: str) -> _PartInfo:
    """``_part_info`` of the header block ``raw[start:end]`` (a _HEADER_BLOCK match).

    A part's header block is most often one of a few, byte for byte ("Content-Type:
    text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"): the
    reading of a short one is kept whole, sparing its fields' search.  Not a block
    that names a boundary (a multipart's: the message's own), as for the values
    above; a pure function of the block, whose fields the walk never scans.
    """
    if end - start <= _KEPT_BLOCK_SIZE:
        block = raw[start:end]
        if b"boundary" not in block.lower():
            return _kept_block_info(block, default_type)
    return _part_info(_fields(raw, start, end), default_type)


def _read_block_info(block: bytes, default_type: str) -> _PartInfo:
    return _part_info(_fields(block, 0, len(block)), default_type)


_KEPT_BLOCK_SIZE = 512
_kept_block_info = lru_cache(maxsize=512)(_read_block_info)


_TEXT_FILE_NAME = re.compile(
    r"""(?i)name\*?=\s*["']?[^"';]*?(?:\.env(?:\.[a-z]{1,12})?|\.(?:txt|text|conf|cfg|ini|"""
    r"""toml|ya?ml|json|properties|sh|ps1|sql|log|csv|tsv|md|netrc|pgpass|npmrc|pypirc|"""
    r"""pem|ppk|ovpn|cnf|htpasswd|bat|cmd|xml))"""
    r"""["']?\s*(?:;|$)""")


def _key_file(raw: bytes, start: int, end: int, cte: str) -> bool:
    """Whether an application/octet-stream part holds a key file whatever its name
    ("id_sauvegarde", "cle-serveur"): its first bytes open a PEM block ("-----BEGIN ")
    or a PuTTY key ("PuTTY-User-Key-File-"); it is then read as a text part."""
    head = raw[start:min(end, start + 120)]
    if cte.strip().lower() == "base64":
        b64 = bytes(c for c in head if c not in b" \t\r\n")[:32]
        try:
            head = binascii.a2b_base64(b64[:len(b64) - len(b64) % 4])
        except binascii.Error:
            return False
    return head.lstrip().startswith(_KEY_FILE_HEADS)


_KEY_FILE_HEADS = (b"-----BEGIN ", b"PuTTY-User-Key-File-")


# --------------------------------------------------------------------------------------
# Charsets.

@lru_cache(maxsize=256)
def _codec(name: str | None) -> str | None:
    if not name:
        return None
    name = name.strip().strip('"').lower()
    alias = {"unknown-8bit": None, "x-unknown": None, "x-user-defined": None,
             "ascii": "ascii", "us-ascii": "ascii", "ansi_x3.4-1968": "ascii"}
    if name in alias:
        return alias[name]
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):
        return None


def _stateful(codec: str) -> bool:
    # codecs.lookup() names them "utf-16", "utf-8-sig", "iso2022_jp"...
    return codec.replace("-", "_").startswith(_STATEFUL_CODECS)


# Single-byte charsets that UTF-8 text is often mislabelled as (codecs.lookup names).
_MISLABEL_PRONE = ("iso8859-", "cp125", "latin")


def _decode_text(data: bytes | memoryview, declared: str | None) -> tuple[str, str]:
    """Decode text bytes; returns (text, codec used).  Round-trips: bytes are kept exactly.

    ``data`` may be a memoryview of the message, so that an unencoded part is decoded
    without first copying its bytes out of the message.
    """
    codec = _codec(declared)
    if codec is not None and codec != "ascii":
        if codec.startswith(_MISLABEL_PRONE):
            # A single-byte charset decodes anything, so a UTF-8 body labelled
            # ISO-8859-1 (webmails do it) would be read as "donnÃ©": if the bytes
            # are UTF-8 with some non-ASCII in them, they are UTF-8 (text in one of
            # those charsets almost never is: an accented letter followed by an ASCII
            # one is not UTF-8).  Round trip: the part is re-encoded as UTF-8, so
            # its bytes stay what they were.
            try:
                text = str(data, "utf-8")
            except UnicodeDecodeError:
                pass
            else:
                return text, "utf-8" if not text.isascii() else codec
        try:
            return str(data, codec), codec
        except UnicodeDecodeError:
            if _stateful(codec):
                raise
        except LookupError:
            codec = None
    if isinstance(data, bytes):
        if data.isascii():
            return data.decode("ascii"), codec or "ascii"
    else:
        try:
            return str(data, "ascii"), codec or "ascii"
        except UnicodeDecodeError:
            pass
    try:
        return str(data, "utf-8"), "utf-8"         # undeclared (or mislabelled) UTF-8
    except UnicodeDecodeError:
        pass
    if codec is None or codec == "ascii":
        codec = "latin-1" if declared is None or _codec(declared) == "ascii" else "utf-8"
    return str(data, codec, "surrogateescape"), codec


def _ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.encode("ascii", "replace").decode("ascii")


# --------------------------------------------------------------------------------------
# Long texts: scanned in overlapping windows.
#
# Why: the scanner's working copies of a text (its UTF-8 bytes twice, its lower-cased
# form, which CPython builds through a buffer of 12 bytes a character when the text is
# not ASCII) cost about 16 times the text; a log near the 10 MB scan cap took ~170 MB.
# A window of _SCAN_CORE characters (half as many when the text is not ASCII) plus
# _SCAN_OVERLAP on each side bounds that to about 20 MB, at the price of scanning the
# overlaps twice (+15 to +30 % CPU on such texts; a smaller core costs more CPU, a
# larger one more memory).  It gives exactly the findings of a whole-text scan because
# every detector
# decides on a bounded neighbourhood (secrets.py: "every context look-up reads a bounded
# window").  The farthest reach is a table: a header line (at most 500 characters) and
# 200 rows of at most 501 (_MAX_TABLE_ROWS, _MAX_TABLE_LINE), about 101,000 characters;
# then a private key block (64 KiB).  A window keeps the findings that start in its core:
# each of them, and everything that can decide about it, lies within the overlap.
# This holds for secrets.py as it is; a detector that reads farther (or the text as a
# whole, as the three cases below do) must be added here, and
# tests/test_redact_memory.py checks windowed and whole-text scans agree.

_SCAN_CORE = 2 * 1024 * 1024
_SCAN_OVERLAP = 128 * 1024
# Two things the scanner decides on the text as a whole rather than near a position:
# whether it holds HTML table cells (then it also reads the text with its tags blanked,
# secrets.py's _CELL_TAG, searched on bytes with ASCII letters lower-cased), and whether
# lower-casing changes its length (only U+0130 does; then several detectors search
# differently).  A window that lacks what the whole text has gets it at its far edge,
# on a line of its own, more than the overlap away from the findings it keeps.
#
# And the start of the text: a note near the top that the password quoted below was
# changed (secrets.py's _drop_stale_history reads the first 20,000 characters) decides
# about findings anywhere below it.  Every window after the first is read after the
# text's first _SCAN_HEAD characters, so that it has the same top.
_SCAN_HEAD = 32 * 1024
_CELL_TAG_TEXT = re.compile(r"<[tT][dDhH][ \t\n\r\f\v>]")
_DOTTED_I = "\u0130"


def _head(text: str) -> str:
    """The text's first ``_SCAN_HEAD`` characters as read before every window after the
    first, closed so that nothing in them reads on into the window: the head's cut
    may fall inside a private key block, whose BEGIN line would then take the END
    line of another key in the window for its own (one finding from the head to
    there, dropped as starting outside the core, and the window's key with it).  A
    block left open gets its END line (PuTTY: its MAC line), and two blank lines end
    a table.  All of it lies past the first 20,000 characters, which is all that is
    read of the head (see above)."""
    head = text[:_SCAN_HEAD]
    closing = []
    for m in _PEM_BEGIN.finditer(head):
        end_line = f"-----END {m.group('label')}-----"
        if end_line not in head[m.end():] and end_line not in closing:
            closing.append(end_line)
    if any(_PUTTY_END.search(head, m.end()) is None for m in _PUTTY_BEGIN.finditer(head)):
        closing.append("Private-MAC: " + "0" * 40)
    return head + "".join("\n" + line for line in closing) + "\n\n\n"


def _core(text: str) -> int:
    """The core of a window of ``text``.  Not ASCII, the scan of a window holds about
    15 times the window (an ASCII one 3 to 6: `tests/bench/memory.py`'s logs; the
    UTF-8 copies, lower-casing and findings all cost more): a third of the core."""
    return _SCAN_CORE if text.isascii() else _SCAN_CORE // 3


def _could_match(scanner: SecretScanner, text: str) -> bool:
    """``scanner.could_match(text)``, asked of windows of a long text: the pre-check
    holds a few copies of what it reads (bytes, lower-cased bytes, lower-cased text),
    and near the scan cap that was the walk's peak.  Each window reaches
    ``_SCAN_OVERLAP`` past its core; everything that makes the pre-check say yes
    lies within that reach (see above), so a yes of the whole text is a yes of the
    window whose core holds its start.  A window may say yes where the whole text
    would not (its edge cuts a word): that only costs the full scan, which decides."""
    n = len(text)
    core = _core(text)
    if n <= core + 2 * _SCAN_OVERLAP:
        return scanner.could_match(text)
    return any(scanner.could_match(text[start:start + core + _SCAN_OVERLAP])
               for start in range(0, n, core))


def _scan_text(scanner: SecretScanner, text: str) -> _Edits:
    """``scanner.scan(text)`` as (start, end, kind), in bounded memory for long texts
    (see above), held as :class:`_Edits`: a log full of session ids has tens of
    thousands of findings, and a Finding (or a tuple) costs several times its share of
    the text."""
    n = len(text)
    core = _core(text)
    if n <= core + 2 * _SCAN_OVERLAP:
        return _Edits.of(scanner.scan(text))
    has_cells = _CELL_TAG_TEXT.search(text) is not None
    has_dotted_i = _DOTTED_I in text
    found = _Edits()
    head: str | None = None
    core_start = 0
    while core_start < n:
        core_end = core_start + core
        if n - core_end < core // 2:
            core_end = n                      # no short last window
        else:
            nl = text.find("\n", core_end, core_end + 4096)
            if nl >= 0:
                core_end = nl + 1             # cut between lines where there is one
        lo, hi = max(0, core_start - _SCAN_OVERLAP), min(n, core_end + _SCAN_OVERLAP)
        if lo <= _SCAN_HEAD + _SCAN_OVERLAP:
            lo = 0
        switches = ""
        if has_cells and _CELL_TAG_TEXT.search(text, lo, hi) is None:
            switches += "<td>"
        if has_dotted_i and text.find(_DOTTED_I, lo, hi) < 0:
            switches += _DOTTED_I
        before = after = ""
        if switches and hi < n:
            after = "\n" + switches
        elif switches:                          # the last window: its far edge is its start
            before = switches + "\n"
        if lo > 0:
            head = head if head is not None else _head(text)
            before = head + before
        window = "".join((before, text[lo:hi], after)) if before or after else text[lo:hi]
        shift = lo - len(before)
        for f in scanner.scan(window):
            start = f.start + shift
            if core_start <= start < core_end:
                found.append(start, f.end + shift, f.kind)
        del window
        core_start = core_end
    if any(end > start for end, start in zip(found.ends[:-1], found.starts[1:], strict=True)):
        # cannot happen (see above); stay exact
        return _Edits.of(scanner.scan(text))
    return found


# --------------------------------------------------------------------------------------
# HTML: visible text and attribute values with a map back to the markup.

_ENTITY = re.compile(r"&(?:#[0-9]{1,8}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]{1,31});?")
_WS_RUN = re.compile(r"[ \t\r\n\f\xa0]{2,}|[\t\r\n\f]")
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9:\-]*)")
# A tag up to the first ">" with a name, and no quote or "<" inside (see _html_streams).
_SIMPLE_TAG = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9:\-]*)[^<>"']*>""")
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_BLOCK_TAGS = frozenset({
    "p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote",
    "pre", "hr", "ul", "ol", "dl", "dt", "dd", "section", "article", "header", "footer",
    "tbody", "thead", "tfoot", "title", "body", "html", "center", "address", "form",
})
_CELL_TAGS = frozenset({"td", "th"})
_ROW_TAGS = frozenset({"tr", "table", "tbody", "thead", "tfoot"})
_RAW_TEXT_TAGS = frozenset({"script", "style", "title", "textarea", "xmp"})
_RAW_TEXT_END = {name: re.compile(rf"</{name}\s*>", re.I) for name in _RAW_TEXT_TAGS}


_CONTEXTS = ("text", "attr", "attr-unquoted")
_CONTEXT_FLAGS = {context: 2 * i for i, context in enumerate(_CONTEXTS)}
_FLUSH_PIECES = 4096


class _Mapped:
    """Text built from pieces of a source string, each piece knowing where it came from.

    A *literal* piece maps character for character; an *atom* (an entity, a collapsed
    run of white space) maps as a whole; a *virtual* piece (a line break standing for a
    block tag) maps to nothing.  ``context`` says how a replacement must be escaped.

    An HTML part near the scan cap makes about a million pieces: they are kept as
    arrays of offsets and the text as a few long strings (about 13 bytes a piece, where
    a string, an int and a tuple per piece took some 250).
    """

    def __init__(self) -> None:
        self._chunks: list[str] = []       # the text so far: joined runs of pieces ...
        self._pending: list[str] = []      # ... and the pieces not joined yet
        self._last = ""                    # the last piece
        self.starts = array("i")           # each piece's offset in the text
        self._src_starts = array("i")      # its source range
        self._src_ends = array("i")
        self._flags = array("b")           # 2 * context index + literal
        self.length = 0

    def _last_virtual(self) -> bool:
        return self._src_starts[-1] == self._src_ends[-1]

    def empty(self) -> bool:
        return not self.starts

    def add(self, piece: str, src_start: int, src_end: int, *, literal: bool,
            context: str = "text") -> None:
        if not piece:
            return
        pending = self._pending
        pending.append(piece)
        if len(pending) >= _FLUSH_PIECES:
            self._chunks.append("".join(pending))
            pending.clear()
        self._last = piece
        self.starts.append(self.length)
        self._src_starts.append(src_start)
        self._src_ends.append(src_end)
        self._flags.append(_CONTEXT_FLAGS[context] + literal)
        self.length += len(piece)

    def add_text(self, source: str, start: int, end: int, *, collapse: bool,
                 context: str = "text") -> None:
        """Add ``source[start:end]`` decoding entities (and collapsing white space)."""
        if collapse and (self.empty() or self._last_virtual()) \
                and not source[start:end].strip():
            return          # indentation between block tags: not text
        pos = start
        combined = _ENTITY_WS if collapse else _ENTITY
        for m in combined.finditer(source, start, end):
            if m.start() > pos:
                self.add(source[pos:m.start()], pos, m.start(), literal=True, context=context)
            token = m.group(0)
            if token[0] == "&":
                decoded = html.unescape(token)
                if decoded == token:
                    self.add(token, m.start(), m.end(), literal=True, context=context)
                else:
                    self.add(decoded, m.start(), m.end(), literal=False, context=context)
            else:
                self.add(" ", m.start(), m.end(), literal=False, context=context)
            pos = m.end()
        if end > pos:
            self.add(source[pos:end], pos, end, literal=True, context=context)

    def virtual(self, piece: str, at: int) -> None:
        if not self.empty() and self._last == piece and self._last_virtual():
            return
        self.add(piece, at, at, literal=False)

    def text(self) -> str:
        text = "".join((*self._chunks, *self._pending))
        self._chunks, self._pending = [text], []      # held once, not twice
        return text

    def to_source(self, start: int, end: int) -> list[tuple[int, int, str]]:
        """Source ranges (and their contexts) covering text[start:end], in order."""
        out: list[tuple[int, int, str]] = []
        starts = self.starts
        count = len(starts)
        i = max(0, bisect.bisect_right(starts, start) - 1)
        while i < count and starts[i] < end:
            ds = starts[i]
            de = starts[i + 1] if i + 1 < count else self.length
            s, e, flags = self._src_starts[i], self._src_ends[i], self._flags[i]
            literal, context = flags & 1, _CONTEXTS[flags >> 1]
            if de > start and s < e:
                if literal:
                    s, e = s + max(start, ds) - ds, s + min(end, de) - ds
                if out and out[-1][1] == s and out[-1][2] == context:
                    out[-1] = (out[-1][0], e, context)
                else:
                    out.append((s, e, context))
            i += 1
        return out


class _Unmapped(_Mapped):
    """A _Mapped that keeps the text only: the same pieces, hence the same text, without
    the map back to the source.  Most HTML parts hold no secret: they are read once this
    way (5 to 50 % cheaper: Outlook's markup is most of its cost, a plain one's map is
    half of it), and the map is built only for the few that do."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual = False

    def _last_virtual(self) -> bool:
        return self._virtual

    def empty(self) -> bool:
        return not self.length

    def add(self, piece: str, src_start: int, src_end: int, *, literal: bool,
            context: str = "text") -> None:
        # _Mapped.add's first half, repeated rather than shared: it runs once per piece
        # (a million for a large HTML part) and a shared helper is a call per piece.
        if not piece:
            return
        pending = self._pending
        pending.append(piece)
        if len(pending) >= _FLUSH_PIECES:
            self._chunks.append("".join(pending))
            pending.clear()
        self._last = piece
        self._virtual = src_start == src_end
        self.length += len(piece)

    def to_source(self, start: int, end: int) -> list[tuple[int, int, str]]:
        raise TypeError("an _Unmapped stream has no map to its source")


_ENTITY_WS = re.compile(_ENTITY.pattern + "|" + _WS_RUN.pattern)


def _html_streams(markup: str, *, mapped: bool = True) -> tuple[_Mapped, _Mapped]:
    """The visible text and the attribute values of an HTML document, mapped to it.

    Linear: every search starts past the previous token.  Block tags become line
    breaks and table cells tabs in the visible text, so that tables and paragraphs read
    as they render; inline tags (``<b>``, ``<span>``) vanish, so a secret split by them
    reads whole.  Comments, scripts and styles are skipped.
    """
    vis, attrs = (_Mapped(), _Mapped()) if mapped else (_Unmapped(), _Unmapped())
    n = len(markup)
    i = 0
    pre = 0
    in_cell = False     # inside <td>/<th>: a <p> or <div> there is not a new row
    while i < n:
        lt = markup.find("<", i)
        if lt < 0:
            vis.add_text(markup, i, n, collapse=not pre)
            break
        if lt > i:
            vis.add_text(markup, i, lt, collapse=not pre)
        simple = _SIMPLE_TAG.match(markup, lt)
        if simple is not None:
            # The common tag, decided in one match: it ends at the first ">" and holds
            # no quote, so the general path below would find the same end, name and
            # attributes (_extend_for_quotes has nothing to extend).
            gt = simple.end() - 1
            name = simple.group(2).lower()
            closing = simple.group(1) == "/"
            name_end: int | None = simple.end(2)
        else:
            if markup.startswith("<!--", lt):
                close = markup.find("-->", lt + 4)
                i = n if close < 0 else close + 3
                continue
            nxt = markup[lt + 1:lt + 2]
            if not (nxt.isalpha() or nxt in ("/", "!", "?")):
                vis.add_text(markup, lt, lt + 1, collapse=not pre)
                i = lt + 1
                continue
            gt = markup.find(">", lt + 1)
            if gt < 0:
                vis.add_text(markup, lt, n, collapse=not pre)
                break
            gt = _extend_for_quotes(markup, lt, gt)
            nm = _TAG_NAME.match(markup, lt, gt)
            name = nm.group(1).lower() if nm else ""
            closing = markup.startswith("</", lt)
            name_end = nm.end() if nm else None
        if name_end is not None and not closing and name_end < gt:  # <p>: no attributes
            _tag_attributes(markup, name_end, gt, attrs)
        if name in _CELL_TAGS:
            if not closing:
                vis.virtual("\t", lt)
            in_cell = not closing
        elif name in _BLOCK_TAGS:
            if in_cell and name not in _ROW_TAGS:
                vis.virtual(" ", lt)      # Outlook wraps every cell's text in a <p>
            else:
                vis.virtual("\n", lt)
                in_cell = False
        if name == "pre":
            pre = max(0, pre + (-1 if closing else 1))
        i = gt + 1
        if name in _RAW_TEXT_TAGS and not closing:
            end = _RAW_TEXT_END[name].search(markup, i)
            if name in ("title", "textarea"):
                stop = end.start() if end else n
                vis.add_text(markup, i, stop, collapse=True)
                vis.virtual("\n", stop)
            i = end.end() if end else n
    return vis, attrs


# --------------------------------------------------------------------------------------
# The HTML alternative of a plain part that held no secret.
#
# Mail programs write a multipart/alternative's plain part from its HTML, so when the
# plain part held no secret, the HTML holds none either unless it shows something the
# plain part does not.  Extracting and scanning the HTML is the dearest step of the
# walk (a Python loop per tag); this check is a few regular expressions.  It answers
# yes only when every word the HTML can show is somewhere in the plain text, the HTML
# has no table (cells give a column's header as context, which the plain rendering
# loses), and its attribute values (links, form values, alt texts) hold no secret by
# the scanner.  A no, or any doubt, means the HTML is read in full as before: the
# check can only spare work, never find or change anything.

# Comments, scripts and styles: what ``<!--.*?(?:-->|\Z)|<(script|style|xmp|textarea)\b
# .*?(?:</\1\s*>|\Z)`` matches, spelt so that ``re`` runs through their text a run of
# characters at a time (no "<", no "-") instead of trying the end at every character
# (a style block is most of an HTML mail's head): each loop stops exactly where the lazy
# ``.*?`` would, at the first end mark; possessive, so nothing is retried.
_HIDDEN = re.compile(r"<!--(?:[^-]++|-(?!->))*+(?:-->|\Z)"
                     r"|<(script|style|xmp|textarea)\b(?:[^<]++|<(?!/\1\s*>))*+(?:</\1\s*>|\Z)",
                     re.I | re.S)
# Where a _HIDDEN match can start.  _HIDDEN's own search tries every position of the
# markup (some 6 us on 4 KB); this one jumps from "<" to "<", so markup without a
# comment, script or style (most of a simple mail's) is passed over at C speed.
_HIDDEN_START = re.compile(r"<(?:!--|script|style|xmp|textarea)", re.I)
_TABLE_CELL = re.compile(r"<t[dh][\s>/]", re.I)
# (no "<" inside: each try stops at the next "<", so the search stays linear)
_A_TAG = re.compile(r"<[A-Za-z/!?][^<>]*>")
# Beyond this the check is not tried: its word set would cost more memory than the
# windowed scan it spares, and a missing word's search through the plain text more time.
_SAID_IN_MAX = 256 * 1024
_SAID_IN_SEARCHES = 64
# (an HTML part whose plain alternative held a secret is read with its map at once up
# to this size: see _Walker._html_edits)
_MAPPED_AT_ONCE_MAX = 1024 * 1024
# attributes whose values are layout, never content
_INERT_ATTRS = frozenset({
    "style", "class", "id", "width", "height", "align", "valign", "border",
    "cellpadding", "cellspacing", "color", "bgcolor", "face", "size", "lang", "dir",
    "type", "span", "colspan", "rowspan", "nowrap", "frame", "rules", "summary",
    "charset", "http-equiv", "xmlns", "target", "rel", "role", "start", "clear",
    "hspace", "vspace", "tabindex", "autocomplete", "shape", "data-outlook-trace",
})
# an attribute's value, found from its "=" (rare in text: the search runs at C speed);
# its name is the word before
_ATTR_VALUE = re.compile(r"""=[ \t\r\n]*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""")
# The inert names that are most of them (Outlook's markup is made of class and style
# attributes), with the blank before: a name known at once, without the slice and
# split that find the word before an "=" in general.
_USUAL_INERT = tuple(blank + name for name in ("class", "style") for blank in " \n\t")


def _said_in(markup: str, plain: str, scanner: SecretScanner) -> bool:
    """True when the HTML ``markup`` can show nothing that its plain alternative
    ``plain`` (which held no secret) does not: its words are all in the plain text, it
    has no table, and no attribute value holds a secret (see the block comment)."""
    if len(plain) > _SAID_IN_MAX or len(markup) > _SAID_IN_MAX or _TABLE_CELL.search(markup):
        return False
    shown = _HIDDEN.sub(" ", markup) if _HIDDEN_START.search(markup) else markup
    words = _A_TAG.sub(" ", shown)
    if "&" in words:
        # the usual entities at C speed; a word with another one is decoded alone
        words = words.replace("&nbsp;", " ").replace("&#160;", " ")
    plain_words = plain.split()
    html_words = words.split()
    # Most often the HTML shows the plain part's words in the same order: its words
    # joined by single blanks are then a run of the plain part's joined so, and each of
    # them one of the plain part's words (no word holds a blank), which the loop below
    # would find word by word, hashing every word of the plain part first (the dearest
    # step of this check: some 40 ns a word).
    if (" " + " ".join(html_words) + " ") not in (" " + " ".join(plain_words) + " "):
        known = frozenset(plain_words)
        searches = _SAID_IN_SEARCHES    # words not in the plain part as words, looked for
        # (the words the plain part has as words are passed over at C speed: most of them)
        for word in itertools.filterfalse(known.__contains__, html_words):
            for part in html.unescape(word).split() if "&" in word else (word,):
                if part in known:
                    continue
                searches -= 1
                if searches < 0 or part not in plain:
                    return False
    values = []
    inert = _INERT_ATTRS
    for m in _ATTR_VALUE.finditer(shown):
        start = m.start()
        if shown.endswith(_USUAL_INERT, 0, start):
            continue
        before = shown[start - 64 if start > 64 else 0:start].rsplit(None, 1)
        if before and before[-1].lower() in inert:
            continue
        quoted, single, bare = m.groups()
        value = quoted or single or bare        # (one matched; an empty value is skipped)
        if value:
            values.append(html.unescape(value) if "&" in value else value)
    return not (values and _scan_text(scanner, "\n".join(values)))


# The check the walk calls, looked up at each call: tests and scripts/alternative-check.py
# swap it (a compiled module calls its own functions directly, so patching _said_in
# itself would change nothing there).
alternative_check: Callable[[str, str, SecretScanner], bool] = _said_in


_EQ_QUOTE = re.compile(r"""=\s*(["'])""")
_QUOTE_TOKEN = re.compile(r"""=\s*(["'])|(["'])""")


def _extend_for_quotes(markup: str, lt: int, gt: int) -> int:
    """Move ``gt`` past a '>' that sits inside a quoted attribute value (bounded)."""
    for _ in range(8):
        segment = markup[lt:gt]
        eq_quote = _EQ_QUOTE.search(segment)
        if not eq_quote:
            return gt
        # count quotes after the first "=": an odd number means one is still open
        open_quote = None
        for m in _QUOTE_TOKEN.finditer(segment):
            if open_quote is None and m.group(1):
                open_quote = m.group(1)
            elif open_quote is not None and (m.group(2) == open_quote or
                                             m.group(1) == open_quote):
                open_quote = None
        if open_quote is None:
            return gt
        close = markup.find(open_quote, gt, gt + 8192)
        if close < 0:
            return gt
        nxt = markup.find(">", close + 1, close + 8192)
        if nxt < 0:
            return gt
        gt = nxt
    return gt


def _tag_attributes(markup: str, start: int, end: int, attrs: _Mapped) -> None:
    for m in _ATTR.finditer(markup, start, end):
        # groups 2, 3, 4: a "quoted", 'quoted' or unquoted value; at most one matched,
        # and it is then the last group matched (group 1, the name, comes before)
        group = m.lastindex
        if group is not None and group > 1:
            a, b = m.span(group)
            if b <= a:
                continue
            context = "attr-unquoted" if group == 4 else "attr"
            if "&" in markup[a:b]:
                attrs.add_text(markup, a, b, collapse=False, context=context)
            else:               # no entity: the value is one literal piece
                attrs.add(markup[a:b], a, b, literal=True, context=context)
            attrs.virtual("\n", b)


def _escape_marker(marker: str, context: str) -> str:
    escaped = html.escape(marker, quote=True)
    if context == "attr-unquoted":
        escaped = re.sub(r"\s", lambda m: f"&#{ord(m.group(0))};", escaped)
    return escaped


# --------------------------------------------------------------------------------------
# Re-encoding a text part.

_Edit = tuple[int, int, str]


class _Edits:
    """Edits (start, end, replacement) of a text, in order, held in two arrays and a
    list: 24 bytes an edit, where a tuple of three took some 130.  A 10 MB log full of
    session ids makes 84,000 of them, held from the scan until the new body is built.
    Iterating gives the (start, end, replacement) tuples.  The scan puts the kind in
    the replacement's place; the part's walk swaps it for the marker."""

    __slots__ = ("ends", "repls", "starts")

    def __init__(self) -> None:
        self.starts = array("q")
        self.ends = array("q")
        self.repls: list[str] = []

    @classmethod
    def of(cls, findings: Iterable[Finding]) -> _Edits:
        edits = cls()
        for f in findings:
            edits.append(f.start, f.end, f.kind)
        return edits

    def append(self, start: int, end: int, repl: str) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.repls.append(repl)

    def __len__(self) -> int:
        return len(self.repls)

    def __iter__(self) -> Iterator[_Edit]:
        return zip(self.starts, self.ends, self.repls, strict=True)



_EditSeq = list[_Edit] | _Edits


def _apply_edits(text: str, edits: Iterable[_Edit], offset: int = 0) -> str:
    out = []
    pos = 0
    for s, e, repl in edits:
        out.append(text[pos:s - offset])
        out.append(repl)
        pos = e - offset
    out.append(text[pos:])
    return "".join(out)


def _edited_chunks(text: str, edits: Iterable[_Edit], size: int) -> Iterator[str]:
    """``_apply_edits(text, edits)`` in pieces of about ``size`` characters (at least
    ``size``, but the last), without building the whole edited text."""
    pending: list[str] = []
    have = pos = 0
    for s, e, repl in itertools.chain(edits, ((len(text), len(text), ""),)):
        while pos < s:
            take = min(s, pos + size - have)
            pending.append(text[pos:take])
            have += take - pos
            pos = take
            if have >= size:
                yield "".join(pending)
                pending.clear()
                have = 0
        if repl:
            pending.append(repl)
            have += len(repl)
            if have >= size:
                yield "".join(pending)
                pending.clear()
                have = 0
        pos = e
    if pending:
        yield "".join(pending)


def _edited_prefix(text: str, edits: Iterable[_Edit], limit: int) -> str:
    """``_apply_edits(text, edits)[:limit]``, without building the rest."""
    out = []
    size = pos = 0
    for s, e, repl in edits:
        if size >= limit:
            break
        piece = text[pos:min(s, pos + limit - size)]
        out.append(piece)
        size += len(piece)
        if size >= limit:
            break
        out.append(repl)
        size += len(repl)
        pos = e
    if size < limit:
        out.append(text[pos:pos + limit - size])
    return "".join(out)[:limit]


def _text_to_read(text: str, edits: _EditSeq) -> str:
    """What ``Redaction.texts`` keeps of a part: its text with the secrets replaced, cut
    to what ``ParsedMessage.adopt_texts`` can read of it (at most ``4 * TEXT_LIMIT``
    characters of HTML, fewer of plain text; a text that is not ASCII may lose up to 4
    characters to 1 there, when undecodable bytes become replacement characters)."""
    limit = 4 * TEXT_LIMIT if text.isascii() else 16 * TEXT_LIMIT + 4
    if len(text) <= limit:
        return _apply_edits(text, edits) if edits else text
    return _edited_prefix(text, edits, limit)


def _units(raw: bytes, start: int, end: int, cte: str) -> Iterator[int]:
    """Start offsets of the independently re-encodable byte ranges of ``raw[start:end]``:
    lines, or quoted-printable logical lines (a unit ends where the next one starts)."""
    qp = cte == "quoted-printable"
    unit = start
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        stop = end if nl < 0 else nl + 1
        if qp:
            k = stop - 1
            while k >= pos and raw[k] in b"\r\n":
                k -= 1
            if k >= pos and raw[k] == 0x3D and stop < end:      # "=": soft line break
                pos = stop
                continue
        yield unit
        unit = pos = stop


def _qp_encode(text: str, codec: str, eol: bytes) -> bytes:
    """Quoted-printable for ``text``: its "\\n" (or "\\r\\n") become ``eol`` hard breaks,
    lines are wrapped at 76 characters with soft breaks, any other CR is "=0D".
    A stateful codec (UTF-16, a byte order mark...) is encoded in one piece, its
    line breaks being bytes of the encoding like any other."""
    if _stateful(codec):
        data = text.encode(codec, "surrogateescape")
        return binascii.b2a_qp(data, quotetabs=False, istext=False,
                               header=False).replace(b"=\n", b"=" + eol)
    out = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:
            break
        if not last and line.endswith("\r"):
            line = line[:-1]
        data = line.encode(codec, "surrogateescape")
        encoded = binascii.b2a_qp(data, quotetabs=False, istext=False, header=False)
        out.append(encoded.replace(b"=\n", b"=" + eol))
        if not last:
            out.append(eol)
    return b"".join(out)


_ENCODE_CHUNK = 64 * 1024     # characters encoded at a time into a new base64 body


def _base64_write(out: io.BytesIO, chunks: Iterable[str], codec: str, raw: bytes,
                  start: int, end: int) -> None:
    """The text given as ``chunks``, encoded and in base64, written to ``out``, laid out
    as the original ``raw[start:end]`` was: its line length (76 when it cannot be
    reused), its line ending, a final line break if it had one.  A non-stateful codec
    encodes character by character, so the text is encoded a chunk at a time."""
    eol = b"\r\n" if raw.find(b"\r\n", start, end) >= 0 else b"\n"
    nl = raw.find(b"\n", start, end)
    first = raw[start:nl if nl >= 0 else end].strip()
    width = len(first) if 4 <= len(first) <= 76 and len(first) % 4 == 0 else 76
    step = width // 4 * 3                       # bytes per line
    lines = 0

    def emit(data: bytes | memoryview) -> None:
        nonlocal lines
        if lines:
            out.write(eol)
        out.write(binascii.b2a_base64(data, newline=False))
        lines += 1

    encoded: Iterable[bytes]
    if _stateful(codec):
        encoded = ("".join(chunks).encode(codec, "surrogateescape"),)
    else:
        encoded = (chunk.encode(codec, "surrogateescape") for chunk in chunks)
    pending = b""
    for chunk in encoded:
        data = pending + chunk if pending else chunk
        view = memoryview(data)
        full = len(data) - len(data) % step
        for i in range(0, full, step):
            emit(view[i:i + step])
        pending = data[full:]
        view.release()
    if pending:
        emit(pending)
    k = end - 1
    while k >= start and raw[k] in b" \t":
        k -= 1
    if k >= start and raw[k] == 0x0A:
        out.write(eol)


def _rewrite(out: io.BytesIO, raw: bytes, start: int, end: int, cte: str, codec: str,
             text: str, edits: _EditSeq) -> None:
    """Write to ``out`` the part body ``raw[start:end]`` with ``edits`` (in decoded-text
    coordinates) applied and re-encoded.

    Streamed: near the scan cap neither the whole edited text nor the part's whole new
    encoding is ever built apart from ``out`` (the new body), except for the rare part
    re-encoded whole below (a stateful charset, or lines that do not decode one by one
    to the part's text)."""
    if cte == "base64":
        _base64_write(out, _edited_chunks(text, edits, _ENCODE_CHUNK), codec, raw, start, end)
        return
    eol = b"\r\n" if raw.find(b"\r\n", start, end) >= 0 else b"\n"
    if not _stateful(codec):
        units = _unit_offsets(raw, start, end, cte, codec, text)
        if units is not None:
            _write_units(out, raw, start, end, cte, codec, edits, units, eol)
            return
    new_text = _apply_edits(text, edits)
    if cte == "quoted-printable":
        out.write(_qp_encode(new_text, codec, eol))
    else:
        out.write(new_text.encode(codec, "surrogateescape"))


def _decode_unit(data: bytes, cte: str, codec: str) -> str:
    if cte == "quoted-printable":
        data = binascii.a2b_qp(data)
    return data.decode(codec, "surrogateescape")


def _unit_offsets(raw: bytes, start: int, end: int, cte: str, codec: str,
                  text: str) -> tuple[array[int], array[int]] | None:
    """(each unit's offset in ``text``, its offset in ``raw`` then ``end``) for the units
    (lines) of ``raw[start:end]``; None when decoding unit by unit does not give
    ``text`` (then the part is re-encoded whole).  When it does, a run of units decodes
    to the text between their offsets."""
    starts = array("q")
    bounds = array("q")
    pos = 0
    for s in _units(raw, start, end, cte):
        if bounds:
            t = _decode_unit(raw[bounds[-1]:s], cte, codec)
            if not text.startswith(t, pos):
                return None
            pos += len(t)
        starts.append(pos)
        bounds.append(s)
    if bounds:
        t = _decode_unit(raw[bounds[-1]:end], cte, codec)
        if not text.startswith(t, pos):
            return None
        pos += len(t)
    if pos != len(text):
        return None
    bounds.append(end)
    return starts, bounds


def _write_units(out: io.BytesIO, raw: bytes, start: int, end: int, cte: str, codec: str,
                 edits: Iterable[_Edit], units: tuple[array[int], array[int]],
                 eol: bytes) -> None:
    """Write ``raw[start:end]`` re-encoding only the units (lines) that hold an edit: each
    run of units that edits touch is decoded again from ``raw``, edited and encoded,
    one run at a time (a log full of session ids makes tens of thousands of runs)."""
    starts, bounds = units
    view = memoryview(raw)
    pos = start

    def write_run(first: int, last: int, run: list[_Edit]) -> None:
        nonlocal pos
        text = "".join(_decode_unit(raw[bounds[k]:bounds[k + 1]], cte, codec)
                       for k in range(first, last + 1))
        new_text = _apply_edits(text, run, offset=starts[first])
        if cte == "quoted-printable":
            encoded = _qp_encode(new_text, codec, eol)
        else:
            encoded = new_text.encode(codec, "surrogateescape")
        out.write(view[pos:bounds[first]])
        out.write(encoded)
        pos = bounds[last + 1]

    run: list[_Edit] = []
    first = last = 0
    for edit in edits:
        s, e, _ = edit
        f = max(0, bisect.bisect_right(starts, s) - 1)
        g = max(f, bisect.bisect_right(starts, max(s, e - 1)) - 1)
        if run and f <= last:           # touches the run's units: one run
            last = max(last, g)
            run.append(edit)
            continue
        if run:
            write_run(first, last, run)
        first, last, run = f, g, [edit]
    if run:
        write_run(first, last, run)
    out.write(view[pos:end])
    view.release()


# --------------------------------------------------------------------------------------
# Subjects.

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"[ \t]+")


def _decode_word(m: re.Match[str]) -> str:
    charset, encoding, data = m.group(1).split("*")[0], m.group(2).lower(), m.group(3)
    try:
        if encoding == "q":
            raw = binascii.a2b_qp(data.replace("_", " ").encode("ascii"), header=True)
        else:
            raw = base64.b64decode(data + "=" * (-len(data) % 4))
    except (ValueError, binascii.Error):
        return m.group(0)
    return raw.decode(_codec(charset) or "utf-8", "replace")


def _decode_subject(value: bytes) -> str:
    """The text of a Subject value: RFC 2047 encoded words decoded, raw 8-bit as UTF-8
    (else Latin-1).  Undecodable words are kept as they are."""
    if value.isascii():
        text = value.decode("ascii")
    else:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
    if "=?" not in text:
        return text
    pieces: list[str] = []
    pos = 0
    last_was_word = False
    for m in _ENCODED_WORD.finditer(text):
        gap = text[pos:m.start()]
        # white space between two encoded words is not part of the text (RFC 2047, 6.2)
        if not (last_was_word and _BETWEEN_WORDS.fullmatch(gap)):
            pieces.append(gap)
        try:
            pieces.append(_decode_word(m))
        except LookupError:
            pieces.append(m.group(0))
        pos = m.end()
        last_was_word = True
    pieces.append(text[pos:])
    return "".join(pieces)


def _encode_subject(text: str) -> str:
    """A Subject value for the milter: plain ASCII, or encoded words on one line."""
    text = text.replace("\r", " ").replace("\n", " ")
    if text.isascii() and "=?" not in text:
        return text
    encoded = Header(text, "utf-8").encode()
    return re.sub(r"\r?\n[ \t]+", " ", encoded)


# --------------------------------------------------------------------------------------
# The walk.

class _Entity(NamedTuple):
    start: int              # header block start
    end: int                # entity end (exclusive)
    leaf_path: str          # the IMAP-style number of this entity as a leaf
    child_prefix: str       # prefix for the numbers of its children
    depth: int
    bounce: bool
    default_type: str


class _Walker:
    def __init__(self, raw: bytes, scanner: SecretScanner, *, marker: str, change: bool,
                 is_bounce: bool) -> None:
        self.raw = raw
        self.scanner = scanner
        self.marker = marker
        self.change = change
        self.is_bounce = is_bounce
        self.where: list[tuple[str, str]] = []
        self.defects: list[str] = []
        # The new body, written as the walk goes (it meets the parts in the order of
        # their bytes): the message up to a replaced range, then the range's new bytes.
        # Near the scan cap this is the one copy of the message the rewrite makes.
        self.replacements: list[tuple[int, int]] = []
        self._out: io.BytesIO | None = None
        self._copied = 0          # raw is in _out up to here
        self.subject_text: str | None = None
        self.body_start = 0
        self.texts: list[tuple[str, bool, str]] = []
        self._text_kept = [0, 0]      # characters adopt_texts reads of texts: HTML, plain
        self._delims: dict[bytes, list[int]] | None = None
        self._closes: dict[bytes, list[int]] = {}
        # multipart/alternative: each child's start -> its parent's start; the
        # parent's start -> the text of its plain part, when that part held no secret
        self._alt_parent: dict[int, int] = {}
        self._alt_plain: dict[int, str] = {}
        # ... and the parents whose plain part held a secret
        self._alt_secret: set[int] = set()

    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({k for _, k in self.where}))

    def replace(self, start: int, end: int, write: Callable[[io.BytesIO], object]) -> None:
        """Put what ``write`` writes in place of ``raw[start:end]`` in the new body.  If
        ``write`` raises, the range stays as it was (and the exception goes on)."""
        if self._out is None:
            self._out = io.BytesIO()
            self._copied = self.body_start
        out = self._out
        if start < self._copied:
            # cannot happen (the walk meets the parts in the order of their bytes, and
            # parts do not overlap); if it did, this range would stay unchanged and be
            # named in defects, as a part that cannot be processed is
            raise RuntimeError("replacements out of order")
        with memoryview(self.raw) as view:
            out.write(view[self._copied:start])
        self._copied = start
        mark = out.tell()
        try:
            write(out)
        except BaseException:
            out.seek(mark)
            out.truncate()
            raise
        self._copied = end
        self.replacements.append((start, end))

    def new_body(self) -> bytes:
        out = self._out
        assert out is not None
        with memoryview(self.raw) as view:
            out.write(view[self._copied:])
        self._out = None
        return out.getvalue()

    # ---------------------------------------------------------------- tree

    def run(self) -> None:
        raw = self.raw
        hend, bstart = _split_header_block(raw, 0, len(raw))
        self.body_start = bstart
        fields = _fields(raw, 0, hend)
        subject = next((f for f in fields if f.name == "subject"), None)
        if subject is not None:
            self.subject_text = self._scan_subject(subject, "subject")
        top = _Entity(0, len(raw), "1", "", 0, self.is_bounce, "text/plain")
        stack = [top]
        while stack:
            entity = stack.pop()
            if entity is top:
                children = self._entity(entity, fields, (hend, bstart))
            else:
                children = self._entity(entity, None, None)
            stack.extend(reversed(children))

    def _entity(self, ent: _Entity, fields: list[_Field] | None,
                split: tuple[int, int] | None) -> list[_Entity]:
        raw = self.raw
        if split is None:
            split = _split_header_block(raw, ent.start, ent.end)
        hend, bstart = split
        try:
            info = _part_info(fields, ent.default_type) if fields is not None \
                else _block_part_info(raw, ent.start, hend, ent.default_type)
        except Exception as exc:
            self.defects.append(f"part {ent.leaf_path}: unreadable Content-Type "
                                f"({type(exc).__name__}), left unchanged")
            return []
        ctype = info.ctype
        if ctype.startswith("multipart/"):
            if ent.depth >= MAX_DEPTH:
                self.defects.append(f"part {ent.leaf_path}: nesting deeper than {MAX_DEPTH} "
                                    "levels, left unchanged")
                return []
            return self._children(ent, info, bstart)
        if ent.bounce and ctype in _BOUNCE_OPAQUE:
            return []
        if ctype in ("message/rfc822", "message/global"):
            if info.cte not in _IDENTITY_CTE:
                self.defects.append(f"part {ent.leaf_path} {_shown(ctype)}: encoded attached "
                                    f"message ({_shown(info.cte)}), left unchanged")
                return []
            if ent.depth >= MAX_DEPTH:
                self.defects.append(f"part {ent.leaf_path}: nesting deeper than {MAX_DEPTH} "
                                    "levels, left unchanged")
                return []
            inner_hend, _ = _split_header_block(raw, bstart, ent.end)
            inner_subject = next((f for f in _fields(raw, bstart, inner_hend)
                                  if f.name == "subject"), None)
            if inner_subject is not None:
                new = self._scan_subject(inner_subject,
                                         f"part {ent.leaf_path} {_shown(ctype)} subject")
                if new is not None and self.change:
                    eol = b"\r\n" if raw[inner_subject.start:inner_subject.end].endswith(
                        b"\r\n") else b"\n"
                    line = b"Subject: " + _encode_subject(new).encode("ascii") + eol
                    self.replace(inner_subject.start, inner_subject.end,
                                 lambda out: out.write(line))
            return [_Entity(bstart, ent.end, f"{ent.leaf_path}.1", ent.leaf_path,
                            ent.depth + 1, ent.bounce, "text/plain")]
        if ctype.startswith("application/") and not info.text_name \
                and ctype not in _TEXTUAL_APPLICATION \
                and _key_file(raw, bstart, ent.end, info.cte):
            info = info._replace(text_name=True)
        if ctype.startswith("text/") or ctype in _TEXTUAL_APPLICATION or info.text_name:
            try:
                self._text_part(ent, info, bstart)
            except Exception as exc:
                self.defects.append(f"part {ent.leaf_path} {_shown(ctype)}: could not be processed "
                                    f"({type(exc).__name__}), left unchanged")
        return []

    def _boundary_index(self) -> None:
        """Every line that starts with "--", indexed by what follows (built once: linear)."""
        raw = self.raw
        delims: dict[bytes, list[int]] = {}
        closes: dict[bytes, list[int]] = {}
        pos = raw.find(b"\n--", max(0, self.body_start - 1))
        while pos >= 0:
            pos += 1
            nl = raw.find(b"\n", pos)
            line = raw[pos + 2:(nl if nl >= 0 else len(raw))].rstrip(b" \t\r")
            delims.setdefault(line, []).append(pos)
            if line.endswith(b"--"):
                closes.setdefault(line[:-2], []).append(pos)
            pos = raw.find(b"\n--", pos)
        self._delims, self._closes = delims, closes

    def _children(self, ent: _Entity, info: _PartInfo, bstart: int) -> list[_Entity]:
        if not info.boundary:
            self.defects.append(f"part {ent.leaf_path} {_shown(info.ctype)}: no boundary, "
                                "left unchanged")
            return []
        if self._delims is None:
            self._boundary_index()
        assert self._delims is not None
        boundary = info.boundary.encode("latin-1", "replace")
        positions = self._delims.get(boundary, [])
        lo = bisect.bisect_left(positions, bstart)
        hi = bisect.bisect_left(positions, ent.end)
        delims = positions[lo:hi]
        if not delims:
            self.defects.append(f"part {ent.leaf_path} {_shown(info.ctype)}: boundary not found, "
                                "left unchanged")
            return []
        closes = self._closes.get(boundary, [])
        ci = bisect.bisect_right(closes, delims[0])
        stop = closes[ci] if ci < len(closes) and closes[ci] < ent.end else ent.end
        delims = [d for d in delims if d < stop]
        bounce = ent.bounce or info.ctype == "multipart/report"
        default = "message/rfc822" if info.ctype == "multipart/digest" else "text/plain"
        children = []
        raw = self.raw
        for i, d in enumerate(delims):
            nl = raw.find(b"\n", d, stop if stop > d else len(raw))
            cstart = nl + 1 if nl >= 0 else stop
            nxt = delims[i + 1] if i + 1 < len(delims) else stop
            cend = nxt
            if i + 1 < len(delims) or stop < ent.end:
                # the line break before a delimiter belongs to the delimiter (RFC 2046)
                if raw[cend - 2:cend] == b"\r\n":
                    cend -= 2
                elif raw[cend - 1:cend] == b"\n":
                    cend -= 1
            cend = max(cend, cstart)
            path = f"{ent.child_prefix}.{i + 1}" if ent.child_prefix else str(i + 1)
            children.append(_Entity(cstart, cend, path, path, ent.depth + 1, bounce, default))
            if info.ctype == "multipart/alternative":
                self._alt_parent[cstart] = ent.start
        return children

    # ---------------------------------------------------------------- leaves

    def _scan_subject(self, field: _Field, location: str) -> str | None:
        """The Subject's text with its secrets replaced by markers (None: none)."""
        text = _decode_subject(field.value)
        findings = self.scanner.scan_subject(text)
        if not findings:
            return None
        self.where.extend((location, f.kind) for f in findings)
        return redact_spans(text, findings, self.marker)

    def _text_part(self, ent: _Entity, info: _PartInfo, bstart: int) -> None:
        raw = self.raw
        location = f"part {ent.leaf_path} {_shown(info.ctype)}"
        cte = info.cte
        if cte in ("7-bit", "8-bit"):
            cte = cte.replace("-", "")
        if cte not in _IDENTITY_CTE and cte not in ("quoted-printable", "base64"):
            self.defects.append(f"{location}: unknown transfer encoding, left unchanged")
            return
        if bstart >= ent.end:
            return
        # Decoded straight from the message (no copy of the part's bytes), and each
        # intermediate dropped as soon as the next exists: near the scan cap the
        # message, its decoded text and the scan's working windows are what is held.
        body: bytes | memoryview = raw[bstart:ent.end] if ent.end - bstart <= 65536 \
            else memoryview(raw)[bstart:ent.end]
        data: bytes | memoryview
        if cte == "quoted-printable":
            data = binascii.a2b_qp(body)
        elif cte == "base64":
            try:
                data = binascii.a2b_base64(body)
            except binascii.Error:
                self.defects.append(f"{location}: undecodable base64, left unchanged")
                return
        else:
            data = body
        try:
            text, codec = _decode_text(data, info.charset)
        except (UnicodeDecodeError, LookupError):
            self.defects.append(f"{location}: undecodable text, left unchanged")
            return
        finally:
            del data, body
        is_html = info.ctype in ("text/html", "application/xhtml+xml")
        parent = self._alt_parent.get(ent.start)
        edits: _EditSeq
        if is_html:
            plain = None if parent is None or info.attachment else self._alt_plain.get(parent)
            edits = self._html_edits(text, location, codec, cte, plain,
                                     expect=parent in self._alt_secret and not info.attachment)
        else:
            found = edits = _scan_text(self.scanner, text)
            if parent is not None and info.ctype == "text/plain" and not info.attachment:
                if found:
                    self._alt_secret.add(parent)
                else:
                    self._alt_plain[parent] = text
            if found:
                # one (location, kind) tuple per kind, referred to once per secret
                kinds = set(found.repls)
                pairs = {kind: (location, kind) for kind in kinds}
                self.where.extend(map(pairs.__getitem__, found.repls))
                marker = self._part_marker(codec, cte)
                markers = {kind: marker(kind) for kind in kinds}
                found.repls = list(map(markers.__getitem__, found.repls))
        if info.ctype in ("text/plain", "text/html"):
            self.texts.append((info.ctype, info.attachment,
                               self._text_to_keep(info, text, edits)))
        if not edits or not self.change:
            return
        kind = "quoted-printable" if cte == "quoted-printable" else \
            ("base64" if cte == "base64" else "identity")
        self.replace(bstart, ent.end, lambda out: _rewrite(
            out, raw, bstart, ent.end, kind, codec, text, edits))

    def _text_to_keep(self, info: _PartInfo, text: str, edits: _EditSeq) -> str:
        """What ``Redaction.texts`` keeps of a part: what ``ParsedMessage.adopt_texts``
        can read of it.  It reads no attachment, and of the other parts the first
        ``TEXT_LIMIT`` characters of the plain ones joined (``4 * TEXT_LIMIT`` of the
        HTML ones): a part past that gets an empty text.  (Several large parts' texts,
        held to the end of the walk, cost half a message near the scan cap.)"""
        if info.attachment:
            return ""
        plain = info.ctype == "text/plain"
        if self._text_kept[plain] >= (TEXT_LIMIT if plain else 4 * TEXT_LIMIT):
            return ""
        kept = _text_to_read(text, edits)
        # what adopt_texts reads of it at least (see _text_to_read), and the line break
        # that joins it to the next part
        self._text_kept[plain] += (len(kept) if kept.isascii() else len(kept) // 4) + 1
        return kept

    def _part_marker(self, codec: str, cte: str) -> Callable[[str], str]:
        """The marker for a kind, representable in this part (see the module docstring)."""
        seven_bit = cte in ("", "7bit")

        def marker(kind: str) -> str:
            value = self.marker.format(kind=kind)
            if seven_bit and not value.isascii():
                return _ascii_fold(value)
            try:
                value.encode(codec)
            except (UnicodeEncodeError, LookupError):
                return _ascii_fold(value)
            return value
        return marker

    def _html_edits(self, markup: str, location: str, codec: str, cte: str,
                    plain: str | None = None, *, expect: bool = False) -> list[_Edit]:
        """``expect``: the plain alternative of this HTML held a secret (then this most
        likely holds it too: its texts are read with their map at once, unless long:
        the map held during the scan would add to the walk's peak memory)."""
        if plain is not None and alternative_check(markup, plain, self.scanner):
            return []
        if not _could_match(self.scanner, markup):
            return []
        expect = expect and len(markup) <= _MAPPED_AT_ONCE_MAX
        # The texts first (no map); the map only for a part that holds a secret.  (The
        # same texts either way: the map is read only where a secret was found.)
        vis, attrs = _html_streams(markup, mapped=expect)
        found = [_scan_text(self.scanner, stream.text()) for stream in (vis, attrs)]
        if not any(found):
            return []
        if not expect:
            del vis, attrs              # (near the scan cap: one copy of the text at a time)
            vis, attrs = _html_streams(markup)
        marker = self._part_marker(codec, cte)
        edits: list[_Edit] = []
        for stream, in_stream in zip((vis, attrs), found, strict=True):
            for start, end, kind in in_stream:
                self.where.append((location, kind))
                ranges = stream.to_source(start, end)
                for i, (s, e, context) in enumerate(ranges):
                    edits.append((s, e, _escape_marker(marker(kind), context) if i == 0
                                  else ""))
        edits.sort()
        merged: list[_Edit] = []
        for edit in edits:
            if merged and edit[0] < merged[-1][1]:
                continue
            merged.append(edit)
        return merged
