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
