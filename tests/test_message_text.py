"""The text the classifier reads is the same whether it comes from the MIME parser
or from the redaction walk (which decodes every text part anyway, so the policy
reuses it instead of parsing the message twice)."""

from __future__ import annotations

import email.utils
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpdesk_milter.message import ParsedMessage, from_address
from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner
from support.mail import apply_redaction

TESTS = Path(__file__).resolve().parent
# Bounces are left out: the walk leaves their returned original alone on purpose,
# and the policy never classifies a bounce.
FILES = sorted(p for p in [*TESTS.glob("corpus/messages/*.eml"),
                           *TESTS.glob("dedup_pairs/*.eml"),
                           *TESTS.glob("secrets_corpus/messages/*.eml")]
               if b"multipart/report" not in p.read_bytes())
SCANNER = SecretScanner()


def squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_adopted_text_equals_parsed_text(path):
    """The walk hands on its texts with secrets replaced: they read as the parsed
    message does once redacted (the same message when it holds no secret)."""
    raw = path.read_bytes()
    walked = redact_message(raw, SCANNER)
    assert walked.texts is not None, walked.defects
    parsed = ParsedMessage(apply_redaction(raw, walked)).text
    adopted = ParsedMessage(raw)
    adopted.adopt_texts(walked.texts)
    assert squeeze(adopted.text) == squeeze(parsed)


def test_adopt_is_ignored_when_the_walk_failed():
    msg = ParsedMessage(b"Subject: x\r\n\r\nhello\r\n")
    msg.adopt_texts(None)
    assert msg.text.strip() == "hello"


# --- the From address fast path ---------------------------------------------------------

FROM_ALPHABET = 'aé Z.-_+=?@<>(),;:"\\[]\t\x01!#'


@pytest.mark.parametrize("value", [
    "jean@mairie.fr", " Jean Dupont <jean.dupont@mairie.fr>", '"Dupont, Jean" <j@x.fr>',
    "=?utf-8?q?Jos=C3=A9?= <jose@x.fr>", "J. Dupont <j@x>", "jean@x.fr (Jean)", "<a@b>",
    "a@b, c@d", "Jean <a@b> <c@d>", "undisclosed", "", "a b@c", "Jean\t<a@b>", "<>",
    "Jean <a@b>x", "Élodie Martin <elodie@école.fr>", "a@b@c", "Jean <a@b@c>",
])
def test_from_address_reads_as_parseaddr_does(value):
    assert from_address(value) == email.utils.parseaddr(value)[1]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=FROM_ALPHABET, max_size=30))
def test_from_address_agrees_with_parseaddr_on_any_input(value):
    assert from_address(value) == email.utils.parseaddr(value)[1]


@given(st.lists(st.sampled_from([b"message/rfc822", b"MESSAGE/Global", b"Message/RFC82",
                                 b"essage/rfc822", b"x" * 40_000, b"/", b"\xe9", b"m"]),
                max_size=12),
       st.integers(0, 70_000))
def test_the_attached_message_check_is_the_pattern_search(pieces, cut):
    # the C-speed check must answer as the case-insensitive pattern does, across the
    # 64 KiB slices it reads (a literal straddling a slice boundary included)
    from helpdesk_milter.message import _RFC822, _mentions_rfc822
    raw = b"".join(pieces)
    for data in (raw, b"y" * cut + raw, b"y" * (65_536 - 7) + raw):
        assert _mentions_rfc822(data) == (_RFC822.search(data) is not None)


def _library_words(value: str) -> str:
    """What ``decode_words`` gave before its fast path: the ``email`` library's answer."""
    from email.header import decode_header, make_header

    from helpdesk_milter.message import _FOLD
    value = _FOLD.sub("", value)
    if "=?" not in value:
        return value.replace("\r", "").replace("\n", " ")
    try:
        text = str(make_header(decode_header(value)))
    except Exception:
        text = value
    return text.replace("\r", "").replace("\n", " ")


@pytest.mark.parametrize("value", [
    "=?utf-8?q?probl=C3=A8me_d'acc=C3=A8s?=", "Re: =?UTF-8?Q?probl=C3=A8me?= imprimante",
    "=?utf-8?b?cHJvYmzDqG1l?= =?utf-8?q?_encore?=", "=?utf-8?q?a?=  (b) =?utf-8?q?c?=",
    "=?utf-8?b?cHJvYmzDqG1l?=x", "x=?utf-8?q?=e9?=", "=?utf-8?q?=C3?=", "=?utf-8?b?/w?=",
    "=?utf-8?b?abc!?=", "=?utf-8?q??=", "=?utf-8?q?_?= a", "a\\ =?utf-8?q?b?=",
    "=?iso-8859-1?q?=E9t=E9?= =?utf-8?q?=C3=A9?=", "=?utf8?q?x?=", "=?utf-8*fr?q?x?=",
    "=?utf-8?q?a?=\r\n =?utf-8?q?b?=", "=?utf-8?q?a?=\n=?utf-8?q?b?=", "é =?utf-8?q?a?=",
    "=?utf-8?q?a=3Fb?=", "=?utf-8?q?a=3?=", "=?", "=?utf-8?x?a?=", " \t=?utf-8?Q?x?=\t",
])
def test_encoded_words_decode_as_the_library_does(value):
    from helpdesk_milter.message import decode_words
    assert decode_words(value) == _library_words(value)


_WORD_PARTS = st.sampled_from([
    "=?utf-8?q?probl=C3=A8me?=", "=?UTF-8?Q?a_b?=", "=?utf-8?q?=c3=a9?=", "=?utf-8?q?=C3?=",
    "=?utf-8?b?w6k=?=", "=?utf-8?b?w6k?=", "=?utf-8?B?/w==?=", "=?utf-8?b?ab!c?=",
    "=?utf-8?q??=", "=?utf-8?q?_?=", "=?iso-8859-1?q?=E9?=", "=?utf8?q?x?=", "=?utf-8?q?(?=",
    "Re:", "TR:", "[EXT]", "(x)", "a\\b", "é", "ok", "x)", "(y", "=?", "?=", " ", "  ", "\t",
    "\r\n ", "\n", "\r", "\x0c", "_", "=3D"])


@settings(max_examples=1000, deadline=None)
@given(st.lists(_WORD_PARTS, max_size=10))
def test_encoded_words_agree_with_the_library_on_any_mix(parts):
    from helpdesk_milter.message import decode_words
    value = "".join(parts)
    assert decode_words(value) == _library_words(value)
