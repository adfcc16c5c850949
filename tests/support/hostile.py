"""Hostile messages, built byte by byte: the bad input of issue 7, in one catalogue.

Every case is a :class:`Hostile`: raw CRLF bytes with a unique Message-ID, the envelope
to send it with, and what a careful milter must do with it. The same catalogue feeds
the pure core (``tests/test_hostile_core.py``: ``Engine`` in-process) and the real
Postfix harness (``tests/test_hostile_e2e.py``), so both layers face the same bytes.

What "must do" means (``expect``):

- ``"redact"``: the secret sits in text a mail client shows; it must be gone from the
  delivered message (it is what the product promises for any readable text);
- ``"flag"``: the milter cannot read the part reliably (no boundary, nesting past any
  sane depth, a charset that does not decode); the body must arrive unchanged and a
  header must say the message was not (fully) inspected -- or the secret is gone;
- ``"none"``: there is no secret; the message must simply arrive, intact.

The classes: broken MIME, deep nesting, undeclared 8-bit, invalid UTF-8, unknown and
lying charsets, encoded-word abuse, long lines, NUL bytes, many headers, empty and
header-only messages, fake .eml attachments, HTML that is quadratic to parse, forged
headers and bare CRs. In every case: no crash, no hang, every original recipient
reached (a ``redirect`` group's recipient replaced by assistance), no forged header of
ours delivered, one log line for the queue id.

The big inputs (50 MB, 10,000 recipients) are functions with a size parameter, so the
suite can run a scaled-down version and ``tests/soak/run.py`` the full one.
"""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .world import CLIENT

SECRET = "Soleil2024!"                    # caught by the FR "mot de passe" detector
SECRET_LINE = f"mot de passe : {SECRET}"
TEXT = ("Bonjour,\r\n\r\nDepuis ce matin, impossible de me connecter au webmail, "
        "il affiche une erreur.\r\n" + SECRET_LINE + "\r\nPouvez-vous regarder ?\r\n"
        "\r\nMerci,\r\nJérôme\r\n")

WATCHED_COPY = "alice@example.org"        # example config: group "team", mode copy
WATCHED_REDIRECT = "contact@example.org"  # example config: group "contact", mode redirect

_ids = itertools.count(1)


@dataclass(frozen=True)
class Hostile:
    """One hostile message and what must happen to it (see the module docstring)."""

    name: str
    cls: str                     # the class of bad input (issue 7, point 1)
    raw: bytes
    rcpts: tuple[str, ...] = (WATCHED_COPY,)
    mail_from: str = CLIENT
    expect: str = "redact"       # redact | flag | none
    secret: str | None = SECRET
    note: str = ""

    @property
    def message_id(self) -> str:
        m = re.search(rb"^Message-ID:\s*<([^>]+)>", self.raw, re.M | re.I)
        assert m, f"{self.name}: no Message-ID"
        return m.group(1).decode()

    @property
    def body(self) -> bytes:
        _head, sep, body = self.raw.partition(b"\r\n\r\n")
        return body if sep else b""


def message_id(tag: str) -> str:
    return f"hostile-{tag}-{next(_ids)}@mairie-exemple.fr"


def build(tag: str, headers: list[tuple[bytes | str, bytes | str]], body: bytes | str,
          *, to: str = WATCHED_COPY, sender: bytes | str = CLIENT,
          separator: bool = True) -> bytes:
    """A message with From/To/Message-ID/Date first, then ``headers``, then ``body``."""
    def b(v: bytes | str) -> bytes:
        return v if isinstance(v, bytes) else v.encode("utf-8")

    lines = [b"From: " + b(sender), b"To: " + b(to),
             b"Date: Tue, 03 Nov 2026 09:30:00 +0100",
             b"Message-ID: <" + message_id(tag).encode() + b">"]
    lines += [b(name) + b": " + b(value) for name, value in headers]
    head = b"\r\n".join(lines) + b"\r\n"
    return head + (b"\r\n" + b(body) if separator else b"")


def mime(ctype: str, cte: str | None = None) -> list[tuple[bytes | str, bytes | str]]:
    headers: list[tuple[bytes | str, bytes | str]] = [("MIME-Version", "1.0"),
                                                      ("Content-Type", ctype)]
    if cte:
        headers.append(("Content-Transfer-Encoding", cte))
    return headers


def _subject(text: str = "Webmail inaccessible") -> list[tuple[bytes | str, bytes | str]]:
    return [("Subject", text)]


# --- the catalogue --------------------------------------------------------------------

def broken_mime() -> Iterator[Hostile]:
    text = TEXT.encode()
    yield Hostile("boundary-missing", "broken MIME", build(
        "nobound", _subject() + mime("multipart/mixed"),
        b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"--zz--\r\n"),
        expect="flag", note="multipart without a boundary parameter")
    yield Hostile("boundary-never-used", "broken MIME", build(
        "unused", _subject() + mime('multipart/mixed; boundary="abc"'), text),
        expect="flag", note="declared boundary never appears: everything is preamble")
    yield Hostile("boundary-unterminated", "broken MIME", build(
        "unterm", _subject() + mime('multipart/mixed; boundary="abc"'),
        b"--abc\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text),
        note="no closing delimiter: the last part runs to the end")
    yield Hostile("boundary-reused-inside", "broken MIME", build(
        "reuse", _subject() + mime('multipart/mixed; boundary="b"'),
        b"--b\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text + b"--b--\r\n--b--\r\n"),
        note="a child multipart with its parent's boundary")
    yield Hostile("boundary-garbage-delimiters", "broken MIME", build(
        "garb", _subject() + mime('multipart/mixed; boundary="=_x_="'),
        b"--=_x_=\r\n\r\n--=_x_=\r\nContent-Type: text/plain\r\n\r\n"
        + text + b"--=_x_=\r\nContent-Type: \r\n\r\n\xff\xfe\r\n--=_x_=--garbage\r\n"
        b"--=_x_=--\r\n--=_x_=--\r\nepilogue\r\n"),
        note="empty part, empty Content-Type, text after the close delimiter")
    yield Hostile("base64-undecodable", "broken MIME", build(
        "b64", _subject() + mime("text/plain; charset=utf-8", "base64"),
        b"!!!% not base64 at all %!!!\r\n" + text),
        expect="none", secret=None,
        note="clients decode the same garbage: no readable secret")
    yield Hostile("qp-broken-escapes", "broken MIME", build(
        "qp", _subject() + mime("text/plain; charset=utf-8", "quoted-printable"),
        b"=ZZ=\r\n=4\r\n" + TEXT.replace("é", "=C3=A9").encode() + b"=\r\n"),
        note="invalid =XX escapes and a soft break at the very end")
    yield Hostile("unknown-cte", "broken MIME", build(
        "cte", _subject() + mime("text/plain; charset=utf-8", "x-rot13-please"), text),
        expect="flag", note="an unknown transfer encoding (RFC 2045: treat the part as "
                            "application/octet-stream)")


def nested(depth: int = 100) -> Hostile:
    """``depth`` levels of multipart/mixed with the secret in the innermost text part."""
    body = b""
    for i in range(depth):
        body += b"--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n" % (i, i + 1)
    body += (b"--b%d\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: 8bit\r\n\r\n" % depth) + TEXT.encode()
    for i in range(depth, -1, -1):
        body += b"--b%d--\r\n" % i
    expect = "flag" if depth > 64 else "redact"
    return Hostile(f"nested-{depth}", "deep nesting", build(
        f"nest{depth}", _subject() + mime('multipart/mixed; boundary="b0"'), body),
        expect=expect, note=f"{depth} nested multiparts")


def eight_bit() -> Iterator[Hostile]:
    latin = TEXT.encode("latin-1")
    yield Hostile("8bit-undeclared-latin1", "undeclared 8-bit", build(
        "8l", [("Subject", "Problème de connexion au réseau".encode("latin-1")),
               ("X-Organisation", "Mairie d'Évry".encode("latin-1"))], latin,
        sender="Jérôme Martin <secretariat@mairie-exemple.fr>".encode("latin-1")),
        note="no MIME headers at all, Latin-1 bytes in headers and body")
    yield Hostile("8bit-undeclared-utf8", "undeclared 8-bit", build(
        "8u", [("Subject", "Problème de connexion au réseau")], TEXT.encode(),
        sender="Jérôme Martin <secretariat@mairie-exemple.fr>"),
        note="no MIME headers, raw UTF-8 in headers and body")
    bad = b"\xff\xfe \xc3 \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 "
    yield Hostile("invalid-utf8", "invalid UTF-8", build(
        "badu", [("Subject", b"Caf\xc3 " + bad + b"connexion"),
                 *mime("text/plain; charset=utf-8", "8bit")],
        bad + b"\r\n" + TEXT.encode() + b"\xc3\r\n",
        sender=b"J\xc3r\xff <secretariat@mairie-exemple.fr>"),
        note="truncated, overlong, surrogate and out-of-range sequences")


def charsets() -> Iterator[Hostile]:
    yield Hostile("charset-unknown", "unknown/lying charset", build(
        "unk", _subject() + mime("text/plain; charset=x-unknown-42", "8bit"),
        TEXT.encode("latin-1")))
    yield Hostile("charset-lying-ascii", "unknown/lying charset", build(
        "ascii", _subject() + mime("text/plain; charset=us-ascii", "7bit"),
        TEXT.encode()), note="UTF-8 bytes declared us-ascii 7bit")
    yield Hostile("charset-lying-utf8", "unknown/lying charset", build(
        "l8", _subject() + mime("text/plain; charset=utf-8", "8bit"),
        TEXT.encode("cp1252")), note="cp1252 bytes declared UTF-8")
    yield Hostile("charset-lying-utf16", "unknown/lying charset", build(
        "l16", _subject() + mime("text/plain; charset=utf-16", "8bit"),
        TEXT.encode() + b"!"), expect="flag",
        note="ASCII declared UTF-16 (odd length): clients show mojibake")
    yield Hostile("charset-garbage-param", "unknown/lying charset", build(
        "gp", _subject() + mime('text/plain; charset="\xff\x00; ;;=="; format=; =x', "8bit"),
        TEXT.encode()), note="a charset parameter that is not a name")


def encoded_words() -> Iterator[Hostile]:
    secret_word = "=?utf-8?B?" + base64.b64encode(SECRET_LINE.encode()).decode() + "?="
    subject = ("Re: =?utf-8?B?!!!notbase64?= urgent =?x-unknown?Q?abc?= : " + secret_word
               + " =?utf-8?Q?=0D=0ABcc:_evil@evil.example?= (=?utf-8?Q?" + "=C3" * 30
               + "?=) " + " ".join(["=?iso-8859-1?q?=E9?="] * 300))
    yield Hostile("encoded-words-subject", "encoded-word abuse", build(
        "ews", [("Subject", subject)], TEXT.encode()),
        note="broken, unknown-charset, CRLF-injecting and 300 encoded words; the secret "
             "in one of them")
    yield Hostile("encoded-words-from", "encoded-word abuse", build(
        "ewf", [("Subject", "Webmail")], TEXT.encode(),
        sender="=?utf-8?B?PGV2aWxAZXZpbC5leGFtcGxlPg==?= =?utf-8?Q?=2C_x@y=0D=0A?= "
               "=?bogus?B?@@@?= <secretariat@mairie-exemple.fr>"),
        note="a display name that decodes to another address, a comma and CRLF")
    yield Hostile("encoded-words-endless", "encoded-word abuse", build(
        "ewe", [("Subject", "=?utf-8?Q?" + "=41" * 30000 + "?=")], TEXT.encode()),
        note="one 90,000-character encoded word")


def long_lines(length: int) -> Hostile:
    filler = ("x" * 9 + " ") * (length // 10)
    half = len(filler) // 2
    line = filler[:half] + " " + SECRET_LINE + " " + filler[half:]
    body = ("Bonjour,\r\nimpossible de me connecter.\r\n" + line + "\r\n"
            + ("A" * length + "\r\n") * 3)
    return Hostile(f"lines-{length}", "long lines", build(
        f"len{length}", _subject(), body), note=f"{length}-character lines, secret mid-line")


def nul_bytes() -> Hostile:
    body = b"\x00\x00Bonjour\x00,\r\n" + TEXT.encode() + b"\x00\r\nfin\x00\r\n"
    return Hostile("nul-bytes", "NUL bytes", build(
        "nul", [("Subject", b"Webmail\x00inaccessible"), ("X-Nul", b"a\x00b")], body))


def many_headers(count: int = 5000) -> Hostile:
    headers: list[tuple[bytes | str, bytes | str]] = [
        (f"X-Filler-{i}", f"value {i}") for i in range(count)]
    headers.append(("Subject", "Webmail inaccessible"))
    return Hostile(f"headers-{count}", "many headers", build("hdrs", headers, TEXT.encode()),
                   note=f"{count} header fields, the Subject last")


def empty() -> Iterator[Hostile]:
    yield Hostile("empty-body", "empty body", build("empty", _subject(), b""),
                  expect="none", secret=None)
    yield Hostile("header-only", "header-only", build("honly", _subject(), b"",
                                                      separator=False),
                  expect="none", secret=None, note="no empty line after the header block")
    yield Hostile("secret-only-in-subject", "empty body", build(
        "subj", [("Subject", SECRET_LINE)], b""), note="empty body, secret in the Subject")


def fake_eml() -> Hostile:
    body = (b"--q\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + TEXT.encode()
            + b"--q\r\nContent-Type: message/rfc822; name=\"fwd.eml\"\r\n"
            b"Content-Disposition: attachment; filename=\"fwd.eml\"\r\n\r\n"
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR garbage \xff\xfe\xfd\r\n"
            b"--q\r\nContent-Type: application/octet-stream; name=\"note.eml\"\r\n"
            b"Content-Disposition: attachment; filename=\"note.eml\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(bytes(range(256)) * 4).replace(b"\n", b"\r\n")
            + b"--q\r\nContent-Type: message/rfc822\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n--q--\r\n")
    return Hostile("fake-eml-attachment", "fake .eml", build(
        "eml", _subject() + mime('multipart/mixed; boundary="q"'), body),
        note=".eml attachments that are a PNG, random bytes and broken base64")


def html_bombs() -> Iterator[Hostile]:
    """HTML that makes a naive parser rescan to the end for every tag opener."""
    secret = f"<p>Bonjour, impossible de me connecter. {SECRET_LINE}</p>\r\n"
    for name, filler in (("unclosed-tags", "<a" * 150_000),
                         ("unclosed-attributes", "<a " * 60_000),
                         ("unclosed-comments", "<!--" * 60_000)):
        yield Hostile(f"html-{name}", "hostile HTML", build(
            f"html{name}", _subject() + mime("text/html; charset=utf-8", "8bit"),
            (secret + filler).encode()),
            note=f"{len(filler) // 1000} KB of {filler[:6]!r}...: quadratic for "
                 "HTMLParser")


def forged() -> Hostile:
    """Our own headers, forged in every spelling; they must all be gone."""
    headers: list[tuple[bytes | str, bytes | str]] = [
        ("Subject", "Webmail inaccessible"),
        ("X-Helpdesk-Routed", "to=pirate@evil.example; mode=copy"),
        ("x-helpdesk-request", "support; structure=evil"),
        ("X-HELPDESK-REDACTED", "count=0"),
        ("X-Helpdesk-Duplicate", "of=<x@y>;\r\n\tmatch=message-id; action=drop"),
        ("X-Helpdesk-Future-Header", b"\xff\xfe 8-bit"),
        ("Authentication-Results", "mx.example.org; dkim=pass header.d=evil.example"),
        ("Authentication-Results", "MX.Example.ORG;\r\n dkim=pass (forged, folded)"),
        ("Authentication-Results", "  (comment) mx.example.org; dkim=pass"),
        ("Authentication-Results", "other.example; dkim=pass header.d=kept.example"),
    ]
    return Hostile("forged-headers", "forged headers", build("forged", headers, TEXT.encode()))


def bare_cr() -> Hostile:
    """A bare CR in a header value: a line break for Python's email package, not for an
    MTA. Everything after it must still be seen (and our forged headers removed)."""
    headers: list[tuple[bytes | str, bytes | str]] = [
        ("X-Mailer", b"Outlook\rExpress"),
        ("X-Helpdesk-Routed", "to=pirate@evil.example; mode=copy"),
        ("Authentication-Results", "mx.example.org; dkim=pass header.d=evil.example"),
        ("Subject", b"Webmail\r" + SECRET_LINE.encode())]
    return Hostile("bare-cr-in-headers", "forged headers", build("barecr", headers,
                                                                 TEXT.encode()))


def catalogue() -> list[Hostile]:
    """Every small hostile case (everything but the 50 MB and 10,000-recipient ones)."""
    cases: list[Hostile] = [
        *broken_mime(), nested(100), nested(40), *eight_bit(), *charsets(),
        *encoded_words(), long_lines(1000), long_lines(100_000), nul_bytes(),
        many_headers(5000), *empty(), fake_eml(), *html_bombs(), forged(), bare_cr(),
    ]
    # Two of them to a redirect group: the recipient is then replaced, never lost.
    redirect = {"boundary-unterminated", "8bit-undeclared-latin1"}
    return [Hostile(c.name, c.cls, c.raw.replace(b"To: " + WATCHED_COPY.encode(),
                                                 b"To: " + WATCHED_REDIRECT.encode(), 1),
                    (WATCHED_REDIRECT,), c.mail_from, c.expect, c.secret, c.note)
            if c.name in redirect else c for c in cases]


# --- big inputs -------------------------------------------------------------------------

def big_message(size: int, *, tag: str = "big") -> bytes:
    """A plain support request padded with a log excerpt to ``size`` bytes (CRLF)."""
    head = build(tag, _subject("Journal d'erreurs du serveur") + mime(
        "text/plain; charset=utf-8", "8bit"), TEXT.encode())
    line = b"2026-11-03T09:30:00 ERROR sync: connexion refusee par le serveur distant\r\n"
    need = max(0, size - len(head))
    rest = need % len(line)
    return head + line * (need // len(line)) + (b"x" * (rest - 2) + b"\r\n" if rest >= 2
                                                 else b"")


def many_recipients(count: int) -> tuple[bytes, list[str]]:
    """A support request to ``count`` recipients: one redirect-watched, one copy-watched,
    the rest outside our domain (as a mailing by a client would be)."""
    rcpts = [WATCHED_REDIRECT, WATCHED_COPY] + [
        f"destinataire{i:05d}@partenaires.example" for i in range(count - 2)]
    raw = build(f"rcpt{count}", _subject("Webmail inaccessible pour tout le monde"),
                TEXT.encode(), to="undisclosed-recipients:;")
    return raw, rcpts


# --- checks shared by both layers -------------------------------------------------------

NOT_INSPECTED = re.compile(r"not[-_ ]inspected|skip-", re.I)


def says_not_inspected(header_values: list[str]) -> bool:
    """True if one of our headers (or a log line) says the message, or a part of it, was
    not inspected: ``X-Helpdesk-Inspected: partial; not inspected: ...``, the log's
    ``not-inspected=N``, or a ``skip-`` rule in ``X-Helpdesk-Request``."""
    return any(NOT_INSPECTED.search(v) for v in header_values)


def expected_recipients_ok(original: list[str], delivered: list[str],
                           is_redirect: Callable[[str], bool]) -> list[str]:
    """The no-loss invariant: every original recipient reached, except a redirect
    group's recipient when an assistance address was added. Returns the lost ones."""
    got = {r.lower() for r in delivered}
    assistance_added = any(r.endswith("@assistance.example.org") for r in got)
    return [r for r in original if r.lower() not in got
            and not (is_redirect(r) and assistance_added)]


def is_redirect_watched(address: str) -> bool:
    """In the example config: contact@ and commercial@ are the redirect group."""
    return address.lower() in (WATCHED_REDIRECT, "commercial@example.org")



def secret_visible(raw: bytes, secret: str) -> str | None:
    """Where a reader of ``raw`` could still find ``secret`` (None: nowhere).

    Looks at the raw bytes, every header value with its encoded words decoded, and every
    leaf part's payload with its transfer encoding undone -- what a mail client shows.
    """
    needle = secret.encode()
    if needle in raw:
        return "raw bytes"
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for n, part in enumerate(msg.walk()):
        for name, value in part.items():
            try:
                words = email.header.decode_header(str(value))
            except Exception:
                continue
            for data, _charset in words:
                if needle in (data if isinstance(data, bytes) else data.encode("utf-8",
                                                                             "replace")):
                    return f"header {name} of part {n}"
        if part.is_multipart():
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            continue
        if isinstance(payload, bytes) and needle in payload:
            return f"part {n} ({part.get_content_type()})"
    return None


def body_of(raw: bytes) -> bytes:
    """Everything after the header block (empty for a header-only message)."""
    _, sep, body = raw.partition(b"\r\n\r\n")
    return body if sep else b""


def ended(data: bytes) -> bytes:
    """``data`` with a final CRLF, as Postfix delivers a body that had none."""
    return data if not data or data.endswith(b"\n") else data + b"\r\n"


def check_expectation(case: Hostile, out: bytes, our_headers: list[str], log_line: str,
                      *, normalize: Callable[[bytes], bytes] = lambda raw: raw) -> None:
    """The redact | flag | none contract of support.hostile, on the delivered bytes.

    ``normalize`` undoes what the MTA itself does to both sides (Postfix folds lines
    longer than 998 characters: :func:`unfold_smtp`).
    """
    if case.secret is None:
        return
    out = normalize(out)
    where = secret_visible(out, case.secret)
    if case.expect == "redact":
        assert where is None, f"{case.name}: secret still readable in {where} ({case.note})"
    elif case.expect == "flag" and where is not None:
        # The milter could not read the part: then the part must be untouched and the
        # message must say it was not inspected (header and log line).
        # (the MTA ends a last line that has no line break: not a change of ours)
        assert ended(body_of(out)) == ended(body_of(normalize(case.raw))), \
            f"{case.name}: body changed although the secret is still in {where}"
        assert says_not_inspected(our_headers), (
            f"{case.name}: secret still readable in {where} and no header says the "
            f"message was not inspected ({case.note}); our headers: {our_headers}")
        assert says_not_inspected([log_line]), (
            f"{case.name}: the log line does not say the message was not inspected: "
            f"{log_line}")


def unfold_smtp(raw: bytes) -> bytes:
    """Undo the line folding of Postfix's SMTP client (``smtp_line_length_limit``, 998:
    a longer line, header or body, is broken with CRLF and one space). Apply it to both
    sides of a comparison."""
    return raw.replace(b"\r\n ", b"")
