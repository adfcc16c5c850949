"""Duplicate detection: what makes two mails the same request, and where we remember it.

A client who writes to ``alice@`` and then resends, forwards or Cc's the same
request to assistance must get one ticket.  This module gives each message a
:class:`Fingerprint` (pure, no I/O) and keeps fingerprints in the state
database (no bodies: hashes and MinHash signatures only) so that a later
message can be recognised as the same request.

What "the same request" means, strongest first (:func:`find_duplicate`):

1. the same Message-ID, whoever sent it (a resend, a Cc in another
   transaction, or a forward that carries the original as ``message/rfc822``);
2. the same normalised text from the same *scope* (the client structure when
   it is known, else the sender address): Subject without ``RE:``/``TR:``/
   ``Fwd:`` prefixes, plus the sender's own words (no quoted history,
   signature, mobile footer, greeting line), with case, accents, punctuation
   and whitespace folded;
3. a near-duplicate from the same scope: similar word shingles (MinHash,
   :func:`similarity`) and no conflicting identifiers (numbers, addresses,
   names: two instances of one template differ exactly there).

A forward fingerprints like the message it forwards when the forwarder's own
words are only a covering note: short, or a few lines under the original's
Subject.  A new request that merely attaches or quotes an older one for
context fingerprints as its own words, so that it cannot be mistaken for the
older request.

Texts shorter than :data:`MIN_WORDS` words give no text fingerprint ("Merci !"
is not a request); Message-ID matching still applies to them.

Contracts: :func:`fingerprint` and :func:`similarity` are total (no exception on
any input) and linear in the message size, with the shingled region capped.
The storage functions take a ``sqlite_utils.Database`` that belongs to the
calling thread, use indexed queries only, and bound the rows a lookup reads
whatever the table size.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import re
import struct
import unicodedata
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

import sqlite_utils

from .message import ParsedMessage, header_text, html_to_text, undo_surrogates
from .text import own_text, strip_subject_prefixes

# --- tuning -----------------------------------------------------------------------

#: Fewer body words than this: no text fingerprint (a "Merci !" is not a request).
MIN_WORDS = 8
#: MinHash signature length (one-permutation hashing, densified).
SIGNATURE_SIZE = 64
#: LSH bands: 21 bands of 3 values.  A pair with estimated Jaccard 0.5 shares at
#: least one band with probability 0.94, 0.6 with 0.99; unrelated texts (Jaccard
#: < 0.1) in 0.02 % of lookups.  Candidates are verified, so extra ones only cost.
BAND_ROWS = 3
BANDS = SIGNATURE_SIZE // BAND_ROWS
#: Words of the body that are shingled: bounds the cost of a long text, and 300
#: words say what a request is about.
SHINGLE_WORDS = 300
SHINGLE_SIZE = 3
#: Characters of the message text searched for forwards and quoted history.
TEXT_CAP = 50_000
#: Characters of the sender's own words that are normalised, hashed and shingled:
#: two requests the same over their first 4,000 characters are the same request.
FOLD_CAP = 4_000
#: Identifier hashes kept per fingerprint (the smallest ones: a bottom-k sample).
MAX_IDENTS = 32
#: A forward's covering note of at most this many words always makes it a forward
#: of the original; up to FORWARD_NOTE_MAX when the Subject is the original's.
FORWARD_NOTE_SHORT = 12
FORWARD_NOTE_MAX = 40
#: Rows read per lookup key: bounds a lookup's cost even for a hot key.
ROWS_PER_KEY = 8
#: Near-duplicate candidates (sharing an LSH band) compared per lookup, most bands first.
MAX_CANDIDATES = 16
MAX_DEPTH = 3          # forwards of forwards followed
_MAX_PART_DEPTH = 30   # MIME nesting walked

SIDES = ("watched", "assistance")


# --- values -----------------------------------------------------------------------

@dataclass(frozen=True)
class Fingerprint:
    """What we remember of one message to recognise it later.

    ``message_id`` is the message's own Message-ID ("" if none).  When the
    message forwards an attached original (``message/rfc822``), ``original_id``
    is the original's Message-ID, and the text fields describe the original.

    ``text_hash`` is the hex BLAKE2b digest of the normalised request; ""
    when the text is shorter than :data:`MIN_WORDS` words, and ``minhash`` is
    then empty too.  ``shingles`` is the number of distinct word shingles the
    signature summarises; ``idents`` a sorted bottom-k sample of 32-bit hashes
    of the identifiers in the text above its sign-off (numbers, e-mail
    addresses, names).

    ``sender`` is lower-cased; ``structure`` None when unknown.  ``forward`` is
    true when the text is that of a forwarded original.
    """

    message_id: str
    text_hash: str
    minhash: tuple[int, ...]
    sender: str
    structure: str | None
    original_id: str = ""
    shingles: int = 0
    idents: tuple[int, ...] = ()
    forward: bool = False

    @functools.cached_property
    def keys(self) -> tuple[list[int], list[int], list[int]]:
        """(Message-ID keys, text keys, band keys): computed once, for the lookup
        and again for the insert."""
        return _compute_keys(self)

    @property
    def scope(self) -> str:
        """Where text matches are looked for: the structure, else the sender ("" none)."""
        return _scope(self.sender, self.structure)


def _scope(sender: str, structure: str | None) -> str:
    """:attr:`Fingerprint.scope` of a sender and structure (a stored row's, say)."""
    if structure:
        return "s:" + structure
    if sender:
        return "a:" + sender
    return ""


@dataclass(frozen=True)
class Match:
    """An earlier message that the new one duplicates.

    ``kind`` is ``"message-id"`` or ``"text"`` (exact or near; ``score`` is 1.0
    for exact matches, the :func:`similarity` otherwise).  ``of_message_id``
    is the earlier message's Message-ID ("" if it had none).  The ``earlier_*``
    fields are those given to :func:`insert` for it.  ``same_scope`` is true
    when the earlier message came from the same structure (or, structure
    unknown, the same sender); text matches always have it, a Message-ID match
    may not (a colleague forwarding the original as an attachment, or a forged
    Message-ID).
    """

    kind: str
    of_message_id: str
    earlier_time: float
    earlier_rowid: int
    earlier_assistance: str | None
    earlier_routed: bool
    earlier_side: str
    score: float
    same_scope: bool = True

    @property
    def assistance_has_it(self) -> bool:
        """True when the earlier copy provably went to an assistance address."""
        return self.earlier_side == "assistance" or self.earlier_routed


# --- fingerprints -----------------------------------------------------------------

def fingerprint(msg: ParsedMessage, *, sender: str, structure: str | None,
                resolve: Callable[[str], str | None] | None = None) -> Fingerprint:
    """The fingerprint of ``msg`` as sent by ``sender`` (lower-cased here) from
    ``structure`` (None when unknown).

    A forward fingerprints as the request it forwards, and that request's author
    is the forwarded original's sender: with ``resolve`` (address -> structure, the
    client directory), a forward whose original names its sender is filed under
    that sender and structure, so that it meets the original in the same scope
    whoever forwarded it.

    Never raises: a message that cannot be read gives a fingerprint with only
    its Message-ID (and empty text fields).
    """
    sender = (sender or "").strip().lower()
    structure = structure or None
    try:
        message_id = _clean_id(msg.message_id)
    except Exception:
        message_id = ""
    try:
        request = _request(msg)
        text_hash, minhash, shingles, idents = _text_fingerprint(request.subject, request.body)
        if resolve is not None and request.forward and request.author \
                and request.author != sender:
            sender, structure = request.author, resolve(request.author) or None
    except Exception:
        # Hostile input the helpers did not foresee: keep what is certain.
        return Fingerprint(message_id, "", (), sender, structure)
    return Fingerprint(message_id=message_id, text_hash=text_hash, minhash=minhash,
                       sender=sender, structure=structure,
                       original_id=request.original_id if request.original_id != message_id
                       else "",
                       shingles=shingles, idents=idents, forward=request.forward)


def fingerprint_text(subject: str, text: str, *, sender: str, structure: str | None,
                     message_id: str = "") -> Fingerprint:
    """The fingerprint of a message given as its Subject and readable text (the
    same rules as :func:`fingerprint`, for inline forwards; no MIME).  Never raises."""
    sender = (sender or "").strip().lower()
    structure = structure or None
    try:
        request = _request_in_text(subject or "", (text or "")[:TEXT_CAP], depth=0)
        text_hash, minhash, shingles, idents = _text_fingerprint(request.subject, request.body)
    except Exception:
        return Fingerprint(_clean_id(message_id), "", (), sender, structure)
    return Fingerprint(message_id=_clean_id(message_id), text_hash=text_hash, minhash=minhash,
                       sender=sender, structure=structure, shingles=shingles, idents=idents,
                       forward=request.forward)


def similarity(a: Fingerprint, b: Fingerprint) -> float:
    """Estimated resemblance of two requests' word shingles, 0.0 to 1.0.

    From the MinHash signatures, the Jaccard index J of the two shingle sets is
    estimated; when neither text is more than twice as long as the other the
    result is the estimated share of the shorter text found in the longer one
    (``|A∩B| / min(|A|,|B|)``, from J and the set sizes), so that a resend with
    a sentence added still scores high; otherwise J itself.  0.0 when either
    fingerprint has no signature.
    """
    return _resemblance(a.minhash, a.shingles, b.minhash, b.shingles)


def _resemblance(a: Sequence[int], a_shingles: int, b: Sequence[int], b_shingles: int) -> float:
    """:func:`similarity` from the signatures and shingle counts."""
    if not a or len(a) != len(b) or not a_shingles or not b_shingles:
        return 0.0
    return _estimate(sum(map(operator.eq, a, b)), len(a), a_shingles, b_shingles)


def _estimate(equal: int, size: int, a_shingles: int, b_shingles: int) -> float:
    """:func:`_resemblance` of two signatures of ``size`` values, ``equal`` of them equal
    position by position (shingle counts not 0)."""
    jaccard = equal / size
    small, large = (a_shingles, b_shingles) if a_shingles <= b_shingles \
        else (b_shingles, a_shingles)
    if 2 * small < large:
        return jaccard
    shared = jaccard * (a_shingles + b_shingles) / (1.0 + jaccard)
    return min(1.0, shared / small)


def identifiers_conflict(a: Sequence[int], b: Sequence[int]) -> bool:
    """True when each sample holds an identifier the other text does not have.

    Two instances of a template (an account for Marie, one for Paul; invoice
    2025-0412 and 2025-0398) differ in both directions; an edited resend only
    adds or only drops.  The samples are bottom-k: an identifier above the
    other sample's largest value is unknown to it, not missing from it.
    """
    if not a or not b:
        return False
    a_set, b_set = set(a), set(b)
    a_top = b[-1] if len(b) >= MAX_IDENTS else None
    b_top = a[-1] if len(a) >= MAX_IDENTS else None
    only_a = any(x not in b_set and (a_top is None or x <= a_top) for x in a)
    only_b = any(y not in a_set and (b_top is None or y <= b_top) for y in b)
    return only_a and only_b


@dataclass(frozen=True)
class _Request:
    subject: str
    body: str
    original_id: str = ""
    forward: bool = False
    author: str = ""        # a forwarded original's sender address (lower case), if known


def _request(msg: ParsedMessage) -> _Request:
    """The request a message carries: its own, or the original it forwards."""
    subject = msg.subject
    # (the cheap raw check avoids parsing the MIME tree of the common message)
    attached = _attached_message(msg.msg) if msg.may_attach_message else None
    if attached is None:
        return _request_in_text(subject, msg.text[:TEXT_CAP], depth=0)
    return _request_with_attachment(msg.msg, subject, attached, depth=0)


def carried_request(msg: ParsedMessage) -> tuple[str, str, str, bool]:
    """(Subject, text, the forwarded original's Message-ID or "", is it a forward) of
    the request ``msg`` carries: its own, or the original it forwards, attached or
    inline.  What learning from staff forwards reads (see learn.py)."""
    request = _request(msg)
    return request.subject, request.body, request.original_id, request.forward


def _request_with_attachment(root: Message, subject: str, attached: Message,
                             depth: int) -> _Request:
    note = own_text(_readable_text(root)[:TEXT_CAP])
    inner_subject = _header(attached, "Subject")
    if depth < MAX_DEPTH and _is_covering_note(note, subject, inner_subject):
        inner = _message_request(attached, inner_subject, depth + 1)
        original_id = inner.original_id or _clean_id(_raw_header(attached, "message-id") or "")
        author = inner.author or _address(_header(attached, "From"))
        return _Request(inner.subject, inner.body, original_id, True, author)
    # The attached mail is context for a new request: the sender's own words only.
    return _request_in_text(subject, note, depth=MAX_DEPTH)


def _message_request(msg: Message, subject: str, depth: int) -> _Request:
    attached = _attached_message(msg)
    if attached is not None:
        return _request_with_attachment(msg, subject, attached, depth)
    return _request_in_text(subject, _readable_text(msg)[:TEXT_CAP], depth)


def _request_in_text(subject: str, text: str, depth: int) -> _Request:
    """The request in a plain text: the sender's own, or an inline-forwarded one."""
    forwarded = _is_forward_subject(subject)
    start = _forward_start(text, forwarded=forwarded) if depth < MAX_DEPTH else None
    if start is None:
        return _Request(subject, own_text(text, forwarded=forwarded))
    note = own_text(text[:start])
    inner_subject, forwarded_text, author = _forwarded_part(text, start)
    if not _is_covering_note(note, subject, inner_subject):
        # A new request quoting an older one: what the sender wrote is the request.
        return _Request(subject, note)
    inner = _request_in_text(inner_subject or subject, forwarded_text, depth + 1)
    return _Request(inner.subject, inner.body, inner.original_id, True,
                    inner.author or author)


def _is_covering_note(note: str, subject: str, inner_subject: str) -> bool:
    words = len(note.split())
    if words <= FORWARD_NOTE_SHORT:
        return True
    if words > FORWARD_NOTE_MAX:
        return False
    outer = _subject_words(subject)
    return not outer or outer == _subject_words(inner_subject)


# Where a forwarded message starts, in one pass over the text.  Group 1: banners
# that always introduce a forward (Gmail, Thunderbird, Apple Mail, Outlook on the
# web; French, English, German).  Otherwise the match is ambiguous, used for replies
# and forwards alike ("-----Original Message-----", Outlook's "De : / Envoyé :"
# block): a forward only when the Subject says so or nothing of the sender's own
# comes before.
_FORWARD_START = re.compile(
    r"^(?:"
    r"([ \t]*(?:(?:-{2,}|_{2,}|=+)[ \t]*)?(?:"
    r"forwarded\s+(?:message|e-?mail)|message\s+transf[ée]r[ée]|mail\s+transf[ée]r[ée]"
    r"|courriel\s+transf[ée]r[ée]|message\s+transmis|weitergeleitete\s+nachricht"
    r")[ \t]*(?:-{2,}|_{2,}|=+)?[ \t]*:?[ \t]*$"
    r"|[ \t]*(?:begin\s+forwarded\s+message|d[ée]but\s+du\s+message\s+r[ée]exp[ée]di[ée])"
    r"[ \t]*:[ \t]*$)"
    r"|[ \t]*-{2,}[ \t]*(?:original\s+message|message\s+d'origine|mail\s+original"
    r"|message\s+original|urspr[üu]ngliche\s+nachricht)[ \t]*-{2,}[ \t]*$"
    r"|[ \t]*\*?(?:de|from|von)[ \t]*:\*?[ \t]*\S[^\n]*\n(?:[^\n]*\n){0,3}?"
    r"[ \t]*\*?(?:envoy[ée]|sent|date|gesendet)[ \t]*:\*?[ \t]*\S"
    r")",
    re.IGNORECASE | re.MULTILINE)
# The same after a line break ("^" dropped, "\n" put first): re skips ahead to each
# "\n" with a fast literal scan, where "^" made it try the pattern at every character.
_FORWARD_AFTER_BREAK = re.compile("\n" + _FORWARD_START.pattern[1:], _FORWARD_START.flags)
# Header lines of a forwarded message, under its banner.
_FORWARDED_HEADER = re.compile(
    r"[ \t]*\*?(?:de|from|date|envoy[ée]|sent|objet|subject|sujet|[àa]|pour|to|cc|cci|bcc"
    r"|copie\s+[àa]|reply-to|r[ée]pondre\s+[àa]|importance|pi[èe]ces?\s+jointes?"
    r"|attachments?|exp[ée]diteur|destinataires?|von|an|betreff|gesendet)[ \t]*:",
    re.IGNORECASE)
_FORWARDED_SUBJECT = re.compile(r"[ \t]*\*?(?:objet|subject|sujet|betreff)[ \t]*:\*?[ \t]*(.*)",
                                re.IGNORECASE)
_FORWARD_HEADER_LINES = 30


def _forward_start(text: str, *, forwarded: bool) -> int | None:
    """Offset of the first forward banner (or Outlook header block) in ``text``."""
    # _FORWARD_START.search(text): at the start, else at the first line start after it
    found = _FORWARD_START.match(text)
    start = 0
    if found is None:
        found = _FORWARD_AFTER_BREAK.search(text)
        if found is None:
            return None
        start = found.start() + 1
    if found.group(1) is not None or forwarded or not own_text(text[:start]):
        return start
    return None  # a reply: what follows is history, even a forward in it


def _forwarded_part(text: str, start: int) -> tuple[str, str, str]:
    """(the forwarded Subject or "", the forwarded text, its sender's address or "")
    of the forward block whose banner or first header line starts at ``start``."""
    first_end = text.find("\n", start)
    if first_end < 0:
        return "", "", ""
    if _FORWARDED_HEADER.match(text, start, first_end):
        rest = text[start:]      # an Outlook block: no banner, headers right away
    else:
        rest = text[first_end + 1:]
        if rest.lstrip()[:1] == ">":
            # Apple Mail on iOS quotes the whole forwarded message.
            rest = _QUOTE_LEVEL.sub("", rest)
    subject = author = ""
    pos = 0
    seen_header = False
    for _ in range(_FORWARD_HEADER_LINES):
        end = rest.find("\n", pos)
        line = rest[pos:] if end < 0 else rest[pos:end]
        following = len(rest) if end < 0 else end + 1
        if not line.strip():
            pos = following
            if seen_header:
                break
        elif len(line) < 1000 and _FORWARDED_HEADER.match(line):
            seen_header = True
            found = _FORWARDED_SUBJECT.match(line)
            if found and not subject:
                subject = found.group(1).strip().strip("*").strip()
            found = _FORWARDED_FROM.match(line)
            if found and not author:
                author = _address(found.group(1))
            pos = following
        elif seen_header and line[:1] in (" ", "\t"):
            pos = following  # a folded header line
        else:
            break
        if end < 0:
            break
    return subject, rest[pos:], author


_FORWARDED_FROM = re.compile(r"[ \t]*\*?(?:de|from|von|exp[ée]diteur)[ \t]*:\*?[ \t]*(.*)",
                             re.IGNORECASE)
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def _address(value: str) -> str:
    """The first e-mail address in a From value ("Name <a@b>", "a@b", "Name [a@b]"), or ""."""
    found = _ADDRESS.search(value or "")
    return found.group(0).lower() if found else ""


_QUOTE_LEVEL = re.compile(r"^[ \t]*> ?", re.MULTILINE)


# Forward prefixes among a Subject's leading prefixes (the rest are replies or tags).
_FORWARD_PREFIX = re.compile(r"(?<![a-z])(?:tr|fwd?|wg|enc|doorst)\s*(?:\[\d+\])?\s*[:：]",
                             re.IGNORECASE)
# Thunderbird's old "[Fwd: Subject]".
_BRACKET_FORWARD = re.compile(r"\s*\[(?:fwd?|tr)\s*:\s*(.*)\]\s*", re.IGNORECASE)


def _is_forward_subject(subject: str) -> bool:
    if _BRACKET_FORWARD.fullmatch(subject):
        return True
    rest = strip_subject_prefixes(subject)
    prefix = subject[: subject.find(rest)] if rest else subject
    return bool(_FORWARD_PREFIX.search(prefix))


def _clean_subject(subject: str) -> str:
    bracketed = _BRACKET_FORWARD.fullmatch(subject)
    if bracketed:
        subject = bracketed.group(1)
    return strip_subject_prefixes(subject)


def _subject_words(subject: str) -> list[bytes]:
    return _words(_fold(_clean_subject(subject)))


# --- normalisation ------------------------------------------------------------------

# Characters NFKD leaves alone but that have a plain-ASCII spelling; typographic
# apostrophes matter: phones type "l’imprimante", desktops "l'imprimante".
_PRE_FOLD = (("’", "'"), ("‘", "'"), ("ʼ", "'"), ("œ", "oe"), ("Œ", "OE"), ("æ", "ae"),
             ("Æ", "AE"), ("ß", "ss"), ("ø", "o"), ("Ø", "O"), ("đ", "d"), ("ł", "l"))
# Bytes that are not letters or digits become spaces; letters are lower-cased.
_WORD_BYTES = bytes((c + 32 if 65 <= c <= 90 else c)
                    if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122) else 32
                    for c in range(256))


@dataclass(frozen=True)
class _Folded:
    text: bytes        # case kept, accents and non-Latin letters gone (ASCII)
    latin: bool        # False: the text is mostly not Latin script; use ``original``
    original: str


def _fold(text: str) -> _Folded:
    """ASCII spelling of ``text`` (accents dropped), keeping case."""
    if text.isascii():
        return _Folded(text.encode("ascii"), True, text)
    for old, new in _PRE_FOLD:
        if old in text:
            text = text.replace(old, new)
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = decomposed.encode("ascii", "ignore")
    # NFKD splits an accented letter in two and the ASCII encoding drops the mark:
    # a Latin text keeps most of its characters, Cyrillic or CJK almost none.
    latin = len(ascii_text) * 10 >= len(decomposed) * 7
    return _Folded(ascii_text, latin, text)


_UNICODE_WORD = re.compile(r"[^\W_]+")


def _words(folded: _Folded) -> list[bytes]:
    if folded.latin:
        return folded.text.translate(_WORD_BYTES).split()
    text = unicodedata.normalize("NFKC", folded.original).lower()
    return [w.encode("utf-8", "surrogatepass") for w in _UNICODE_WORD.findall(text)]


# A greeting line ("Bonjour Alice,", "Hello Bob!", "Madame, Monsieur,"): a resend to
# another recipient changes it, and the name in it is not part of the request.
_GREETING = re.compile(
    r"\s*(?:bonjour|bonsoir|salut|coucou|hello|hi|hey|dear|cher|ch[èe]re|chers|ch[èe]res"
    r"|madame|monsieur|mesdames|messieurs|good\s+(?:morning|afternoon|evening))\b",
    re.IGNORECASE)


_LEADING_BLANKS = " \t\r\n\f\v\u00a0\u200b\u200c\u200d\u2060\ufeff"


def _drop_greeting(body: str) -> str:
    body = body.lstrip(_LEADING_BLANKS)  # iOS starts forwarded text with a BOM
    end = body.find("\n")
    first = body if end < 0 else body[:end]
    if len(first) > 80 or not _GREETING.match(first):
        return body
    words = first.split()
    if len(words) <= 2 or (len(words) <= 6 and first.rstrip()[-1:] in (",", "!", ":")):
        return "" if end < 0 else body[end + 1:]
    return body


# Identifiers: words with a digit (numbers, dates, phone numbers, serials), e-mail
# addresses, and capitalised words inside a sentence (names: "compte pour Marie
# Dubois", also after a title: "M. Tran", "Dr. Lee"), the latter found in the
# ASCII-folded text where case is kept.  The pattern starts with a literal space so
# that the regex engine skips to spaces, then looks for the capital the name needs
# before it tries the four look-behinds (most words are not capitalised: x4).
_IDENT_NAME = re.compile(rb" (?=[A-Z])(?:(?<=[a-z0-9,;)] )|(?<=[\s(]M\. )"
                         rb"|(?<=[\s(](?:Mr|Ms|Dr|Pr|Me)\. )|(?<=[\s(]Mrs\. ))"
                         rb"([A-Z][A-Za-z'-]*[a-z][A-Za-z'-]*)")
_NOT_NAMES = frozenset((b"i'm", b"i've", b"i'll", b"i'd"))
_EMAIL_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+")
_MAX_ADDRESSES = 20
# The sign-off line ("Cordialement,", "Thanks, Tom") near the end, and the signature
# block under it: its names and phone numbers are not identifiers of the request
# (a resend from a phone signs differently).  Only the end of the text is searched.
_SIGN_OFF = re.compile(
    rb"^[ \t]*(?:cordialement|bien (?:a vous|cordialement|amicalement)|salutations(?: distinguees)?"
    rb"|bonne (?:journee|soiree|fin de journee)|merci(?: d'avance| beaucoup| par avance| encore)?"
    rb"|a bientot|amicalement|regards|best(?: regards| wishes)?|kind regards|many thanks"
    rb"|thanks(?: again| in advance)?|thank you|cheers|sincerely|yours(?: sincerely)?)"
    rb"[ \t]*[,.!]*(?:[ \t]+[A-Za-z'-]{1,20})?[ \t]*$",
    re.IGNORECASE | re.MULTILINE)
_SIGN_OFF_AFTER_BREAK = re.compile(b"\n" + _SIGN_OFF.pattern[1:], _SIGN_OFF.flags)
_SIGN_OFF_TAIL = 600

_MASK32 = 0xFFFFFFFF


def _identifiers(subject: _Folded, body: _Folded, subject_words: list[bytes],
                 body_words: list[bytes]) -> tuple[int, ...]:
    """Sorted bottom-k sample of the 32-bit hashes of the text's identifiers.

    ``subject_words`` and ``body_words`` are ``_words(subject)`` and ``_words(body)``:
    the words above the sign-off are a prefix of the latter (a sign-off starts a
    line, so no word straddles it), and only the tail under it is split again."""
    if subject.latin and body.latin:
        text = body.text
        sign_off = _last_sign_off(text)
        if sign_off < 0:
            span = subject.text + b"\n" + text
            words = subject_words + body_words
        else:
            span = subject.text + b"\n" + text[:sign_off]
            below = len(text[sign_off:].translate(_WORD_BYTES).split())
            words = subject_words + body_words[:len(body_words) - below]
        tokens = set(itertools.filterfalse(bytes.isalpha, words))
        tokens.update(n for n in map(bytes.lower, _IDENT_NAME.findall(span))
                      if n not in _NOT_NAMES)
        tokens.update(_addresses(span))
    else:
        tokens = set(itertools.filterfalse(bytes.isalpha, subject_words + body_words))
    tokens.discard(b"")
    hashes = sorted(set(map(zlib.crc32, tokens)))
    return tuple(hashes[:MAX_IDENTS])


def _last_sign_off(text: bytes) -> int:
    """Where the last ``_SIGN_OFF`` match in the last ``_SIGN_OFF_TAIL`` bytes of
    ``text`` starts (-1: none), as ``finditer(text, start)`` finds it, but trying
    the pattern only at line starts (``_SIGN_OFF_AFTER_BREAK``, a match never
    reaching past its line), not at every byte of the tail."""
    start = max(0, len(text) - _SIGN_OFF_TAIL)
    last = 0 if start == 0 and _SIGN_OFF.match(text) else -1
    for found in _SIGN_OFF_AFTER_BREAK.finditer(text, max(0, start - 1)):
        last = found.start() + 1
    return last


def _addresses(text: bytes) -> Iterator[bytes]:
    at = text.find(b"@")
    for _ in range(_MAX_ADDRESSES):
        if at < 0:
            return
        start, end = at, at + 1
        while start > 0 and text[start - 1] in _EMAIL_BYTES:
            start -= 1
        while end < len(text) and text[end] in _EMAIL_BYTES:
            end += 1
        yield text[start:end].strip(b".-").lower()
        at = text.find(b"@", end)


# One-permutation MinHash: each shingle hash falls in one of SIGNATURE_SIZE bins by
# its top bits; a bin keeps its smallest value; empty bins borrow from the next
# non-empty bin to their right, shifted by the distance (densification by rotation,
# Shrivastava & Li 2014), so that every position is comparable for LSH.  Bin b holds
# the signed hashes in [-2**63 + b * 2**58, -2**63 + (b + 1) * 2**58): h >> _BIN_SHIFT
# is b - _HALF.
_BIN_SHIFT = 64 - 6
_HALF = SIGNATURE_SIZE // 2
_ROTATION = 0x9E3779B1


def _text_fingerprint(subject: str,
                      body: str) -> tuple[str, tuple[int, ...], int, tuple[int, ...]]:
    """(text_hash, minhash, shingle count, identifiers) of a Subject and own text."""
    body_folded = _fold(_drop_greeting(body)[:FOLD_CAP])
    body_words = _words(body_folded)
    if len(body_words) < MIN_WORDS:
        return "", (), 0, ()
    subject_folded = _fold(_clean_subject(subject))
    subject_words = _words(subject_folded)
    digest = hashlib.blake2b(b" ".join(subject_words) + b"\n" + b" ".join(body_words),
                             digest_size=16).hexdigest()
    stream = [*subject_words, b"\n", *body_words[:SHINGLE_WORDS]]
    # crc32 of every word, repeats included: cheaper than hashing the distinct words
    # once through a dict (a set, a dict and a lookup per word cost more than crc32)
    word_ids = list(map(zlib.crc32, stream))
    # hash() of a tuple of small ints is not salted (only str/bytes hashing is) and
    # is the same on every 64-bit CPython >= 3.8: stored signatures stay comparable.
    shingles = set(map(hash, zip(*(word_ids[i:] for i in range(SHINGLE_SIZE)), strict=False)))
    idents = _identifiers(subject_folded, body_folded, subject_words, body_words)
    return digest, _densified(shingles), len(shingles), idents


# A bin's smallest hash h, as _densified keeps it: (h >> 26) + 2**37, a 38-bit number
# whose top 6 bits are the bin's index (h >> 58, plus _HALF) and whose low 32 bits are
# the bin's value; within a bin the smaller hash never gives the larger number (equal
# numbers have equal values).  _EMPTY is more than any of them.
_LOW_SHIFT = _BIN_SHIFT - 32
_LOW_OFFSET = 1 << (63 - _LOW_SHIFT)
_EMPTY = 1 << 40


def _densified(hashes: Collection[int]) -> tuple[int, ...]:
    """The one-permutation MinHash signature of distinct 64-bit shingle hashes (in any
    order): each bin's smallest in one pass, no sort (a sort of 64-bit ints compares
    them one generic call at a time)."""
    if not hashes:
        return ()
    lowest = [_EMPTY] * SIGNATURE_SIZE
    for h in hashes:
        # A bin's value is bits 26-57 of (hash - bin start); the bin start is a
        # multiple of 2**58, so they are bits 26-57 of the hash itself.
        low = (h >> _LOW_SHIFT) + _LOW_OFFSET
        at = low >> 32
        if low < lowest[at]:
            lowest[at] = low
    if _EMPTY not in lowest:
        return tuple([low & _MASK32 for low in lowest])
    # Walking the bins from the last down, the nearest non-empty bin to the right of
    # an empty one is the last non-empty bin seen or, before any was seen, the first
    # non-empty bin one turn further round the circle.
    first = (min(hashes) >> _BIN_SHIFT) + _HALF
    nearest, nearest_at = lowest[first] & _MASK32, first + SIGNATURE_SIZE
    values = [0] * SIGNATURE_SIZE
    for at in range(SIGNATURE_SIZE - 1, -1, -1):
        low = lowest[at]
        if low == _EMPTY:
            values[at] = (nearest + (nearest_at - at) * _ROTATION) & _MASK32
        else:
            nearest = values[at] = low & _MASK32
            nearest_at = at
    return tuple(values)


# --- MIME helpers -------------------------------------------------------------------

_header = header_text


_ID = re.compile(r"<[^<>\s]{1,500}>")


def _clean_id(value: str) -> str:
    # raw 8-bit bytes arrive as surrogates: make them text (a Message-ID is stored)
    value = undo_surrogates(value or "")
    found = _ID.search(value)
    if found:
        return found.group(0)
    value = (value or "").strip()
    return value if 0 < len(value) <= 500 else ""


def _content_type(part: Message) -> str:
    """The part's content type, read from the raw header: the ``email`` package's
    parsed headers cost tens of microseconds each, and this runs on every part."""
    value = _raw_header(part, "content-type")
    if value is None:
        try:
            return part.get_default_type()
        except Exception:
            return "text/plain"
    ctype = value.split(";", 1)[0].strip().lower()
    # RFC 2045: a syntactically invalid Content-Type means text/plain.
    return ctype if ctype.count("/") == 1 and " " not in ctype else "text/plain"


def _raw_header(part: Message, name: str) -> str | None:
    try:
        for key, value in part.raw_items():
            if key.lower() == name:
                return str(value)
    except Exception:
        return None
    return None


def _walk(root: Message) -> Iterator[Message]:
    """Parts under ``root`` (itself included), depth-first; attached messages are
    yielded but not entered."""
    stack: list[tuple[Message, int]] = [(root, 0)]
    while stack:
        part, depth = stack.pop()
        yield part
        if depth >= _MAX_PART_DEPTH or not part.is_multipart():
            continue
        if _content_type(part) == "message/rfc822":
            continue  # an attached message: its parts are not ours
        try:
            children = part.get_payload()
        except Exception:
            children = None
        if isinstance(children, list):
            stack.extend((c, depth + 1) for c in reversed(children) if isinstance(c, Message))


def _attached_message(root: Message) -> Message | None:
    """The first message attached (``message/rfc822``) to ``root``, if any."""
    if not root.is_multipart():
        return None  # the common case, decided without parsing Content-Type
    for part in _walk(root):
        if part is root or _content_type(part) != "message/rfc822":
            continue
        try:
            payload = part.get_payload()
        except Exception:
            continue
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
    return None


_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)


def _part_text(part: Message) -> str:
    """Decoded text of a text part.  The transfer encoding is undone by
    ``get_payload(decode=True)``; the charset is read from the raw header rather
    than through the ``email`` content manager, which costs a header parse per
    parameter.  Unknown or lying charsets degrade to replacement characters."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        return ""
    found = _CHARSET.search(_raw_header(part, "content-type") or "")
    try:
        return payload.decode(found.group(1) if found else "utf-8", "replace")
    except (LookupError, ValueError):
        return payload.decode("utf-8", "replace")


def _is_attachment(part: Message) -> bool:
    value = _raw_header(part, "content-disposition")
    return value is not None and value.split(";", 1)[0].strip().lower() == "attachment"


def _readable_text(root: Message) -> str:
    """Text of ``root``'s own parts (not of attached messages): text/plain, else HTML."""
    plain: list[str] = []
    markup: list[str] = []
    size = 0
    for part in _walk(root):
        ctype = _content_type(part)
        if part.is_multipart() or ctype == "message/rfc822" or _is_attachment(part):
            continue
        if ctype == "text/plain":
            plain.append(_part_text(part))
            size += len(plain[-1])
        elif ctype == "text/html" and not plain:
            markup.append(_part_text(part))
            size += len(markup[-1])
        if size > TEXT_CAP * 4:
            break
    if plain:
        text = "\n".join(plain)
    elif markup:
        text = html_to_text("\n".join(markup)[: TEXT_CAP * 4])
    else:
        return ""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- storage ------------------------------------------------------------------------
#
# dedup_fingerprints: one row per message remembered (no text: hashes only).
# dedup_keys: the lookup keys of each row, (key, fp) in a WITHOUT ROWID table so
#   that one B-tree serves both "rows with this key" and uniqueness; 64-bit keys
#   hash a kind, a scope and a value:
#     m  Message-ID (and a forward's original Message-ID), across scopes;
#     t  scope + text_hash;
#     b  scope + band number + the band's MinHash values (LSH).
#   An index on fp lets expiry delete a row's keys without a scan.

FINGERPRINTS = "dedup_fingerprints"
KEYS = "dedup_keys"


def create_schema(db: sqlite_utils.Database) -> None:
    """Create the fingerprint tables and indexes (migration ``m002_fingerprints``)."""
    db.table(FINGERPRINTS).create({
        "id": int, "time": float, "message_id": str, "original_id": str,
        "sender": str, "structure": str, "side": str, "assistance": str, "routed": int,
        "queue_id": str, "shingles": int, "minhash": bytes, "idents": bytes,
    }, pk="id", not_null=["time", "side", "routed"])
    db.table(FINGERPRINTS).create_index(["time"])
    # sqlite-utils cannot declare WITHOUT ROWID tables.
    db.execute(f"CREATE TABLE [{KEYS}] ([key] INTEGER NOT NULL, [fp] INTEGER NOT NULL, "
               "PRIMARY KEY ([key], [fp])) WITHOUT ROWID")
    db.table(KEYS).create_index(["fp"])


def _key(kind: bytes, *parts: bytes) -> int:
    digest = hashlib.blake2b(kind + b"\0" + b"\0".join(parts), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _id_key(message_id: str) -> int:
    return _key(b"m", message_id.encode("utf-8", "surrogatepass"))


def _text_key(scope: str, text_hash: str) -> int:
    return _key(b"t", scope.encode("utf-8", "surrogatepass"), text_hash.encode("ascii"))


def _band_keys(scope: str, minhash: Sequence[int]) -> list[int]:
    """``_key(b"b", scope, band number + the band's values)`` for every band (as
    ``struct.pack(">B3I", band, *values)``): the signature packed once, each band's
    input sliced from it; the hash of the common prefix taken once and copied (a
    copy costs less than a new BLAKE2b state), the digests read as one struct."""
    if len(minhash) != SIGNATURE_SIZE:
        return []
    prefix = b"b\0" + scope.encode("utf-8", "surrogatepass") + b"\0"
    packed = struct.pack(f">{SIGNATURE_SIZE}I", *minhash)
    step = 4 * BAND_ROWS
    start = hashlib.blake2b(prefix, digest_size=8)
    digests = []
    for band in range(BANDS):
        h = start.copy()
        h.update(_BAND_BYTES[band] + packed[band * step:band * step + step])
        digests.append(h.digest())
    return list(_BAND_DIGESTS.unpack(b"".join(digests)))


_BAND_BYTES = [bytes((band,)) for band in range(256)]
_BAND_DIGESTS = struct.Struct(f">{BANDS}q")     # = int.from_bytes(d, "big", signed=True)


def _compute_keys(fp: Fingerprint) -> tuple[list[int], list[int], list[int]]:
    ids = [_id_key(i) for i in dict.fromkeys((fp.message_id, fp.original_id)) if i]
    scope = fp.scope
    if not scope or not fp.text_hash:
        return ids, [], []
    return ids, [_text_key(scope, fp.text_hash)], _band_keys(scope, fp.minhash)


def band_keys(fp: Fingerprint) -> list[int]:
    """The LSH band keys of ``fp`` (empty without a text signature): two
    fingerprints that share one are near-duplicate candidates."""
    return fp.keys[2]


def near_score(fp: Fingerprint, earlier: Fingerprint, threshold: float) -> float | None:
    """The :func:`similarity` of ``fp`` to ``earlier`` when it makes ``fp`` a near
    duplicate (same scope, at or above ``threshold``, no identifier conflict),
    else None."""
    if not fp.scope or earlier.scope != fp.scope:
        return None  # also a 64-bit key collision across scopes
    score = similarity(fp, earlier)
    if score < threshold or identifiers_conflict(fp.idents, earlier.idents):
        return None
    return score


def _pack(values: Sequence[int]) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def _unpack(blob: bytes | None) -> tuple[int, ...]:
    if not blob or len(blob) % 4:
        return ()
    if len(blob) == _SIGNATURE.size:
        return _SIGNATURE.unpack(blob)   # a MinHash signature: no format string to parse
    return struct.unpack(f">{len(blob) // 4}I", blob)


_SIGNATURE = struct.Struct(f">{SIGNATURE_SIZE}I")


def insert(db: sqlite_utils.Database, fp: Fingerprint, *, time: float, side: str,
           assistance: str | None, routed: bool, queue_id: str,
           rowid: int | None = None) -> int:
    """Remember ``fp``, seen at ``time`` on ``side`` ("watched" or "assistance").

    ``assistance`` is the assistance address the message went to (already a
    recipient, or added by routing: then ``routed`` is true).  Returns the new
    row id: ``rowid`` when given (the store numbers its rows itself, so that a
    row has its identity before it reaches the disk), else SQLite's next one.

    Runs in the caller's transaction when one is open (``db.conn.in_transaction``:
    after an explicit ``BEGIN`` or any earlier write not yet committed), so a
    writer can batch rows and commit once; otherwise it commits by itself.
    """
    if side not in SIDES:
        raise ValueError(f"dedup side must be one of {SIDES}, not {side!r}")
    ids, texts, bands = fp.keys

    def write() -> int:
        cursor = db.conn.execute(
            f"INSERT INTO [{FINGERPRINTS}] (id, time, message_id, original_id, sender,"
            " structure, side, assistance, routed, queue_id, shingles, minhash, idents)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [rowid, time, fp.message_id, fp.original_id, fp.sender, fp.structure, side,
             assistance, int(bool(routed)), queue_id, fp.shingles, _pack(fp.minhash),
             _pack(fp.idents)])
        new = int(cursor.lastrowid or 0)
        db.conn.executemany(f"INSERT OR IGNORE INTO [{KEYS}] (key, fp) VALUES (?, ?)",
                            [(k, new) for k in dict.fromkeys(ids + texts + bands)])
        return new

    if db.conn.in_transaction:
        return write()
    with db.conn:
        return write()


_COLUMNS = ("id", "time", "message_id", "sender", "structure", "side", "assistance",
            "routed", "shingles", "minhash", "idents")

#: A fingerprint row as :func:`find_duplicate` reads it (the keys of ``_COLUMNS``).
Row = dict[str, Any]


def row_of(fp: Fingerprint, *, rowid: int, time: float, side: str, assistance: str | None,
           routed: bool) -> Row:
    """The row :func:`insert` will write for ``fp``, as :func:`find_duplicate` reads it."""
    return {"id": rowid, "time": time, "message_id": fp.message_id, "sender": fp.sender,
            "structure": fp.structure, "side": side, "assistance": assistance,
            "routed": int(bool(routed)), "shingles": fp.shingles,
            "minhash": _pack(fp.minhash), "idents": _pack(fp.idents)}


def lookup_keys(fp: Fingerprint) -> list[int]:
    """Every key :func:`insert` files ``fp`` under (Message-IDs, text, LSH bands)."""
    ids, texts, bands = fp.keys
    return list(dict.fromkeys(ids + texts + bands))


def find_duplicate(db: sqlite_utils.Database | None, fp: Fingerprint, *, now: float,
                   window: float, threshold: float,
                   unwritten: Mapping[int, Sequence[Row]] | None = None,
                   only: Sequence[int] | None = None,
                   on_file: Sequence[int] | None = None) -> Match | None:
    """The earlier message (seen at or after ``now - window``) that ``fp`` duplicates,
    or None.

    Rules, strongest first: same Message-ID (``fp``'s own or its forwarded
    original's, against either of an earlier row's); same text hash in the same
    scope; :func:`similarity` at or above ``threshold`` in the same scope with
    no :func:`identifiers_conflict`.  When several earlier messages match, one
    whose copy provably reached assistance (:attr:`Match.assistance_has_it`)
    wins, since that is what the policy needs to know; then the strongest
    rule, the higher score, the most recent.

    Cost is bounded whatever the table size: one index-only query reads at most
    :data:`ROWS_PER_KEY` rows for each of the (at most 24) lookup keys, then at
    most :data:`MAX_CANDIDATES` fingerprints are read by rowid and compared.

    ``unwritten`` holds, by lookup key, the rows handed to a writer and maybe not
    on disk yet (their ``id`` the rowid they will have); they count exactly as if
    they were on disk (the :data:`ROWS_PER_KEY` newest rowids of the union per
    key), so the answer does not depend on how far the writer has got.  ``db``
    None: only ``unwritten`` is searched (the file cannot be read).  ``only``: the
    keys that may be in the window at all (the caller's filter said so of them); the
    others are neither queried nor looked up in ``unwritten``.  ``on_file``: the keys
    the file may hold rows of that ``unwritten`` does not (None: any key); only they
    are queried.
    """
    ids, texts, bands = fp.keys
    strength_of: dict[int, int] = {}  # key -> 3 Message-ID, 2 text, 1 band
    if only is None:
        strength_of = dict.fromkeys(bands, 1)
        strength_of.update(dict.fromkeys(texts, 2))
        strength_of.update(dict.fromkeys(ids, 3))
    else:
        # the few keys the caller's filter let through, each classed by itself
        for k in only:
            if k in ids:
                strength_of[k] = 3
            elif k in texts:
                strength_of[k] = 2
            elif k in bands:
                strength_of[k] = 1
    if not strength_of:
        return None
    per_key: dict[int, list[int]] = {}
    file_keys = strength_of if on_file is None else [k for k in on_file if k in strength_of]
    if db is not None and file_keys:
        params: list[Any] = []
        for k in file_keys:
            params += [k, ROWS_PER_KEY]
        for key, rowid in db.conn.execute(_keys_sql(len(file_keys)), params).fetchall():
            per_key.setdefault(key, []).append(rowid)
    held: dict[int, Row] = {}
    if unwritten:
        for key in strength_of:
            rows = unwritten.get(key)
            if rows:
                for row in rows:
                    held[row["id"]] = row
                per_key[key] = sorted({*per_key.get(key, ()), *(r["id"] for r in rows)},
                                      reverse=True)[:ROWS_PER_KEY]
    strong: dict[int, int] = {}        # rowid -> strongest exact rule that found it
    band_hits: dict[int, int] = {}     # rowid -> bands shared (likelier similar first)
    for key, rowids in per_key.items():
        strength = strength_of.get(key, 0)
        for rowid in rowids:
            if strength > 1:
                strong[rowid] = max(strength, strong.get(rowid, 0))
            elif strength == 1:
                band_hits[rowid] = band_hits.get(rowid, 0) + 1
    since = now - window
    scope = fp.scope
    best: tuple[tuple[int, int, float, float], Match] | None = None
    for row in _rows(db, held, list(strong), since) if strong else ():
        strength = strong[row["id"]]
        match = _match(row, "message-id" if strength == 3 else "text", 1.0, scope)
        rank = (int(match.assistance_has_it), strength, 1.0, match.earlier_time)
        if best is None or rank > best[0]:
            best = (rank, match)
    if (best is not None and best[1].assistance_has_it) or not band_hits:
        return best[1] if best else None  # a near match could not beat it
    candidates = sorted(band_hits, key=lambda r: (band_hits[r], r), reverse=True)
    mine = _packed_signature(fp.minhash)
    for row in _rows(db, held, candidates[:MAX_CANDIDATES], since):
        score = _near_score(fp, scope, mine, row, threshold)
        if score is None:
            continue
        match = _match(row, "text", score, scope)
        rank = (int(match.assistance_has_it), 1, score, match.earlier_time)
        if best is None or rank > best[0]:
            best = (rank, match)
    return best[1] if best else None


@functools.lru_cache(maxsize=64)
def _keys_sql(keys: int) -> str:
    """For ``keys`` lookup keys: per key, the rowids of its ROWS_PER_KEY newest
    fingerprints (the key's primary-key range read backwards, no table access)."""
    select = f"SELECT * FROM (SELECT key, fp FROM [{KEYS}] WHERE key = ? ORDER BY fp DESC LIMIT ?)"
    return " UNION ALL ".join([select] * keys)


@functools.lru_cache(maxsize=64)
def _rows_sql(rows: int) -> str:
    # one statement per row count (at most MAX_CANDIDATES + a few exact hits): they
    # all stay in sqlite3's statement cache
    return (f"SELECT {', '.join(_COLUMNS)} FROM [{FINGERPRINTS}] "
            f"WHERE id IN ({', '.join('?' * rows)}) AND time >= ?")


def _fingerprint_rows(db: sqlite_utils.Database, rowids: list[int],
                      since: float) -> list[dict[str, Any]]:
    cursor = db.conn.execute(_rows_sql(len(rowids)), [*rowids, since])
    return [dict(zip(_COLUMNS, row, strict=True)) for row in cursor.fetchall()]


def _rows(db: sqlite_utils.Database | None, held: Mapping[int, Row], rowids: list[int],
          since: float) -> list[Row]:
    """The rows of ``rowids`` seen at or after ``since``, from ``held`` or the file, in
    rowid order (the order ties are ranked in, wherever the rows are)."""
    found = [held[r] for r in rowids if r in held and held[r]["time"] >= since]
    rest = [r for r in rowids if r not in held]
    if rest and db is not None:
        found += _fingerprint_rows(db, rest, since)
    return sorted(found, key=lambda row: row["id"])


def _near_score(fp: Fingerprint, scope: str, mine: int | None, row: dict[str, Any],
                threshold: float) -> float | None:
    """:func:`near_score` against a stored row (``scope``: ``fp.scope``; ``mine``:
    ``_packed_signature(fp.minhash)``), without building a Fingerprint for the many
    candidates that fall short."""
    blob = row["minhash"]
    shingles = row["shingles"] or 0
    if mine is not None and isinstance(blob, bytes) and len(blob) == _SIGNATURE.size:
        score = _estimate(_equal_values(mine, blob), SIGNATURE_SIZE, fp.shingles, shingles) \
            if fp.shingles and shingles else 0.0
    else:
        score = _resemblance(fp.minhash, fp.shingles, _unpack(blob), shingles)
    if score < threshold:
        return None
    if not scope or _scope(row["sender"] or "", row["structure"]) != scope:
        return None  # also a 64-bit key collision across scopes
    return None if identifiers_conflict(fp.idents, _unpack(row["idents"])) else score


def _packed_signature(minhash: Sequence[int]) -> int | None:
    """A MinHash signature as one integer (its values packed as stored, read big-endian),
    for :func:`_equal_values`; None when it is not a full signature of 32-bit values."""
    if len(minhash) != SIGNATURE_SIZE:
        return None
    try:
        return int.from_bytes(_SIGNATURE.pack(*minhash), "big")
    except struct.error:
        return None


# the lowest bit of each 32-bit value of a packed signature
_VALUE_LOW_BITS = int.from_bytes(b"\0\0\0\1" * SIGNATURE_SIZE, "big")


def _equal_values(mine: int, blob: bytes) -> int:
    """How many of the 32-bit values packed in ``blob`` (a full signature) equal the
    value at the same position in ``mine`` (:func:`_packed_signature`): the count
    ``sum(map(operator.eq, a, b))`` gives, from a few operations on 2,048-bit integers
    instead of 64 integers unpacked and compared one by one per candidate."""
    diff = mine ^ int.from_bytes(blob, "big")
    # Fold each value's 32 bits into its lowest bit: the shifts add up to 31, so the
    # lowest bit of a value only ever gathers bits of that same value.
    diff |= diff >> 1
    diff |= diff >> 2
    diff |= diff >> 4
    diff |= diff >> 8
    diff |= diff >> 16
    return SIGNATURE_SIZE - (diff & _VALUE_LOW_BITS).bit_count()


def _match(row: dict[str, Any], kind: str, score: float, scope: str) -> Match:
    earlier_scope = _scope(row["sender"] or "", row["structure"])
    return Match(kind=kind, of_message_id=row["message_id"] or "",
                 earlier_time=float(row["time"]), earlier_rowid=int(row["id"]),
                 earlier_assistance=row["assistance"] or None,
                 earlier_routed=bool(row["routed"]), earlier_side=row["side"],
                 score=score, same_scope=bool(scope) and scope == earlier_scope)


def expire(db: sqlite_utils.Database, *, before: float, limit: int | None = None) -> int:
    """Forget fingerprints seen before ``before``; returns how many were removed.

    Both deletes go through indexes (``time``, then the keys' ``fp``).  With
    ``limit``, at most that many (the oldest) go per call, to keep the write
    lock short; call again while it returns ``limit``.  Runs in the caller's
    transaction when one is open; otherwise commits.
    """
    chosen = (f"SELECT id FROM [{FINGERPRINTS}] WHERE time < ?"
              + (" ORDER BY time LIMIT ?" if limit is not None else ""))
    params: list[Any] = [before] + ([limit] if limit is not None else [])

    def delete() -> int:
        db.execute(f"DELETE FROM [{KEYS}] WHERE fp IN ({chosen})", params)
        return int(db.execute(f"DELETE FROM [{FINGERPRINTS}] WHERE id IN ({chosen})",
                              params).rowcount)

    if db.conn.in_transaction:
        return delete()
    with db.conn:
        return delete()
