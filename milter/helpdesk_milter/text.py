"""Text helpers shared by the classifier and deduplication.

``own_text`` keeps what the sender wrote in this message and drops what mail
clients add around it: quoted reply history, signatures, mobile footers and
legal disclaimers.  A *forward* is treated differently from a reply: the
forwarded content is usually the request itself ("see below, can you have a
look?"), so only the banner and the forwarded header lines are dropped.

``strip_subject_prefixes`` and ``normalise`` give the comparable forms of a
subject and a text.

Contract: every function is total (never raises on any ``str``) and runs in
time linear in its input.  Each line is looked at a bounded number of times,
with anchored, precompiled patterns; the marker patterns only run on lines
shorter than ``MARKER_MAX`` characters, so a 100,000-character line costs one
``len`` and a few ``startswith``-like checks, never a backtracking search.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# Reply headers, banners and footers are short lines; longer lines are content.
MARKER_MAX = 400

# "Le lun. 3 mars 2025 à 10:12, Jean Dupont <jean@x.fr> a écrit :"
# "On Mon, Mar 3, 2025 at 10:12 AM Jean <jean@x.fr> wrote:"
# "Am 03.03.2025 um 10:12 schrieb Jean:"
_REPLY_HEADER = re.compile(
    r"(?:le|on|am)\s.{0,300}?\s(?:a\s+[ée]crit|wrote|schrieb)\b[^:\n]{0,80}:\s*$",
    re.IGNORECASE)
# How a reply header starts (with a date or time in it), even when wrapped on two lines.
_REPLY_HEADER_START = re.compile(r"(?:le|on|am)\s.{0,300}\d", re.IGNORECASE)

# Banners that always introduce a forwarded message.
_FORWARD_BANNER = re.compile(
    r"(?:-{2,}|_{2,}|=+)?\s*(?:"
    r"forwarded\s+message|message\s+transf[ée]r[ée]|mail\s+transf[ée]r[ée]"
    r"|courriel\s+transf[ée]r[ée]|message\s+transmis|weitergeleitete\s+nachricht"
    r")\s*(?:-{2,}|_{2,}|=+)?\s*:?\s*$"
    r"|begin\s+forwarded\s+message\s*:\s*$"
    r"|d[ée]but\s+du\s+message\s+r[ée]exp[ée]di[ée]\s*:\s*$",
    re.IGNORECASE)

# Banners clients use for replies *and* forwards; only context tells which.
_AMBIGUOUS_BANNER = re.compile(
    r"-{2,}\s*(?:original\s+message|message\s+d'origine|mail\s+original"
    r"|message\s+original|urspr[üu]ngliche\s+nachricht)\s*-{2,}\s*$",
    re.IGNORECASE)

# Outlook's header block: "De : X" then, within a few lines, "Envoyé : ..." or "Date : ...".
_OUTLOOK_FROM = re.compile(r"\*?(?:de|from|von)\s*:\*?\s*\S", re.IGNORECASE)
_OUTLOOK_SENT = re.compile(r"\*?(?:envoy[ée]|sent|date|gesendet)\s*:\*?\s*\S",
                           re.IGNORECASE)
_OUTLOOK_LOOKAHEAD = 4

# Header lines of a forwarded message, right under its banner.
_FORWARD_HEADER = re.compile(
    r"\s*\*?(?:de|from|date|envoy[ée]|sent|objet|subject|sujet|[àa]|pour|to|cc|cci|bcc"
    r"|copie\s+[àa]|reply-to|r[ée]pondre\s+[àa]|importance|pi[èe]ces?\s+jointes?"
    r"|attachments?|exp[ée]diteur|destinataires?|von|an|betreff|gesendet)\s*:",
    re.IGNORECASE)

# Where the signature starts: RFC 3676's "-- " line (some clients drop the space).
_SIGNATURE = re.compile(r"--\s*$")
_MOBILE_FOOTER = re.compile(
    r"(?:envoy[ée]\s+(?:de|depuis|à\s+partir\s+de)\s+(?:mon|ma|l'application)"
    r"|sent\s+from\s+(?:my|mail\s+for|outlook|yahoo)|sent\s+with\s+proton"
    r"|provenance\s*:\s*courrier\s+pour\s+windows"
    r"|(?:get|obtenir|t[ée]l[ée]charger)\s+outlook\s+(?:for|pour))",
    re.IGNORECASE)
_DISCLAIMER = re.compile(
    r"(?:ce\s+(?:message|courriel|mail|e-?mail)\b.{0,80}\bconfidentiel"
    r"|(?:this|the\s+information\s+in\s+this)\s+(?:e-?mail|message)\b.{0,80}\bconfidential"
    r"|pensez\s+[àa]\s+l'environnement|please\s+consider\s+the\s+environment"
    r"|avertissement\s*:|disclaimer\s*:|confidentiality\s+notice)",
    re.IGNORECASE)
# A line of only rule characters ("________", "-----", "=====").
_SEPARATOR = re.compile(r"[-_=*~]{5,}\s*$")

# Every marker above starts with one of these characters or (lower-cased) triples;
# a line that does not is content, and costs no regular expression at all.
_RULE_CHARS = frozenset("-_=*~")
_MARKER_STARTS = frozenset((
    "le ", "le\xa0", "on ", "am ",                              # reply headers
    "de ", "de:", "de\xa0", "fro", "von", "*de", "*fr", "*vo",  # Outlook blocks
    "for", "mes", "mai", "cou", "wei", "beg", "déb", "deb",     # forward banners
    "env", "sen", "pro", "get", "obt", "tél", "tel",            # mobile footers
    "ce ", "thi", "the", "pen", "ple", "ave", "dis", "con",     # disclaimers
))

_BODY, _SIGNATURE_STATE, _HEADERS = range(3)


def own_text(text: str, *, forwarded: bool = False) -> str:
    """The sender's own words in ``text``, the readable text of a message body.

    Dropped: ``>``-quoted lines; everything after a reply header (``Le ... a
    écrit :``, ``On ... wrote:``) unless the history below it is ``>``-quoted (then
    bottom-posted and interleaved answers are kept); everything after an
    ``-----Original Message-----``-style banner or an Outlook ``De : / Envoyé :``
    block in a reply; signatures, mobile footers and disclaimers (up to the next
    forward banner, since a forwarder's signature sits above the forwarded mail).

    Forwards keep their content and lose only the banner and the header lines
    under it.  ``Forwarded message``-style banners always mean a forward; the
    ambiguous ones (``Original Message``, Outlook blocks) mean a forward when
    ``forwarded`` is true (the caller saw ``TR:``/``Fwd:`` in the Subject) or
    when nothing of the sender's own came before them.  Within a forward, a
    second ambiguous banner is the forwarded mail's own history and cuts.
    """
    if not text:
        return ""
    return _own_text(text, bool(forwarded))


# The classifier, the reply guidance and deduplication each ask for the own text of
# the same message text (usually the very same str object, whose hash is then computed
# once), one right after the other; a forward's covering note is asked for twice too.
# The function is pure, so a remembered answer is the answer.  32 entries cover the
# messages in flight in every milter thread; lru_cache is thread-safe.
@functools.lru_cache(maxsize=32)
def _own_text(text: str, forwarded: bool) -> str:
    lines = text.split("\n")
    out: list[str] = []
    has_content = False         # some own, non-blank line kept so far
    forwards = 0                # forward blocks opened so far
    state = _BODY
    header_seen = False
    skip_next = False
    for i, line in enumerate(lines):
        if skip_next:
            skip_next = False
            continue
        stripped = line.strip()
        if not stripped:
            if state == _HEADERS:
                if header_seen:
                    state = _BODY
            elif state == _BODY and has_content and out[-1]:
                out.append("")  # runs of blank lines become one
            continue
        if stripped[0] == ">":
            if state == _HEADERS and header_seen:
                state = _BODY
            continue  # quoted
        if state == _HEADERS:
            if _FORWARD_HEADER.match(line):
                header_seen = True
                continue
            if header_seen and line[:1] in (" ", "\t"):
                continue  # a folded header line
            state = _BODY
        # Most lines cannot be a marker; three characters tell (see _MARKER_STARTS).
        marker = len(line) <= MARKER_MAX and (
            stripped[0] in _RULE_CHARS or stripped[:3].lower() in _MARKER_STARTS)
        if not marker and state == _BODY:
            out.append(line.rstrip())  # the common case: an ordinary line of text
            has_content = True
            continue
        if marker:
            if _FORWARD_BANNER.match(stripped):
                state, header_seen, forwards = _HEADERS, False, forwards + 1
                _end_paragraph(out)
                continue
            banner = _AMBIGUOUS_BANNER.match(stripped) is not None
            if banner or _is_outlook_block(lines, i):
                if not (forwarded or not has_content) or forwards:
                    break  # a reply's history
                forwards += 1
                # an Outlook block has no banner: its first line is already a header
                state, header_seen = _HEADERS, not banner
                _end_paragraph(out)
                continue
            else:
                wrapped = _reply_header_at(lines, i)
                if wrapped is not None:
                    if _next_is_quoted(lines, i + 1 + wrapped):
                        skip_next = wrapped == 1
                        continue
                    break
        if state == _SIGNATURE_STATE:
            continue
        if marker:
            if _SIGNATURE.match(stripped) or _MOBILE_FOOTER.match(stripped) \
                    or _DISCLAIMER.match(stripped):
                state = _SIGNATURE_STATE
                continue
            if _SEPARATOR.match(stripped):
                continue
        out.append(line.rstrip())
        has_content = True
    return "\n".join(out).strip()


def _end_paragraph(out: list[str]) -> None:
    """Keep the forwarded text a paragraph apart from what the forwarder wrote."""
    if out and out[-1]:
        out.append("")


def _is_outlook_block(lines: list[str], i: int) -> bool:
    """True when line ``i`` opens an Outlook-style "De : / Envoyé :" header block."""
    if not _OUTLOOK_FROM.match(lines[i].lstrip()):
        return False
    for j in range(i + 1, min(i + 1 + _OUTLOOK_LOOKAHEAD, len(lines))):
        candidate = lines[j]
        if len(candidate) <= MARKER_MAX and _OUTLOOK_SENT.match(candidate.lstrip()):
            return True
    return False


def _reply_header_at(lines: list[str], i: int) -> int | None:
    """0 when line ``i`` is a reply header, 1 when it is one wrapped onto the next
    line, None otherwise."""
    stripped = lines[i].strip()
    if not _REPLY_HEADER_START.match(stripped):
        return None  # also requires a digit: reply headers carry a date or a time
    if _REPLY_HEADER.match(stripped):
        return 0
    if i + 1 < len(lines):
        following = lines[i + 1].strip()
        if len(following) <= MARKER_MAX and _REPLY_HEADER.match(stripped + " " + following):
            return 1
    return None


def _next_is_quoted(lines: list[str], start: int) -> bool:
    """True when the first non-blank line from ``start`` on is ``>``-quoted."""
    for j in range(start, len(lines)):
        stripped = lines[j].lstrip()
        if stripped:
            return stripped.startswith(">")
    return False


# One reply/forward prefix or one "[EXT]"-style tag.  Bracketed tags holding a
# digit or "#" are kept: "[example #1234]" names a ticket, it is not noise.
_SUBJECT_PREFIX = re.compile(
    r"\s*(?:"
    r"(?:re|r[ée]f|tr|fwd?|aw|wg|rv|sv|vs|antw|enc|doorst|odp|ynt)"
    r"\s*(?:\[\d{1,5}\]|\(\d{1,5}\)|\^\d{1,5})?\s*[:：]"
    r"|\[[^\]\[#\d\n]{1,40}\]"
    r")\s*",
    re.IGNORECASE)


def strip_subject_prefixes(subject: str) -> str:
    """``"RE: TR: [EXT] Re[2]: Imprimante"`` -> ``"Imprimante"``.

    Removes any run of reply and forward prefixes in the usual languages and of
    bracketed tags such as ``[EXT]`` or ``[SPAM]`` at the start of the subject.
    """
    if not subject:
        return ""
    pos = 0
    while True:
        m = _SUBJECT_PREFIX.match(subject, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
    return subject[pos:].strip()


def normalise(text: str) -> str:
    """Comparable form of a text: NFKC, lower case, whitespace runs collapsed to one space."""
    if not text:
        return ""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())
