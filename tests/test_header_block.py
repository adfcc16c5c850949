"""The fast header-block reader gives what the standard library's parser gives."""

from __future__ import annotations

from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpdesk_milter.message import ParsedMessage, parse_header_block
from support.hostile import catalogue

CORPUS = sorted((Path(__file__).parent / "corpus" / "messages").glob("*.eml"))


def standard(block: bytes) -> list[tuple[str, str]]:
    return BytesHeaderParser(policy=policy.compat32).parsebytes(block)._headers


def header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[:end] + b"\r\n"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_headers_read_the_same(path):
    block = header_block(path.read_bytes())
    assert parse_header_block(block)._headers == standard(block)


@pytest.mark.parametrize("case", catalogue(), ids=lambda c: c.name)
def test_hostile_headers_read_the_same(case):
    block = header_block(case.raw)
    assert parse_header_block(block)._headers == standard(block)


@pytest.mark.parametrize("block", [
    b"Subject: a\r\n b\r\n\tc\r\n",                 # folded
    b"Subject:\r\n  on the next line\r\n",            # empty first line
    b"Subject: \t \r\n",                             # blanks only
    b"Subject: trailing \r\nFrom: x@y\r\n",
    b" leading continuation\r\nSubject: a\r\n",       # -> the standard parser
    b"From jean@x Mon Jan  1 00:00:00 2026\r\nSubject: a\r\n",   # mbox From_ line
    b"Subject a\r\nFrom: x@y\r\n",                   # a line that is no field
    b"Subject : a\r\n",                              # blank before the colon
    b": no name\r\nSubject: a\r\n",
    b"X-8bit: caf\xc3\xa9 \xff\r\n",                 # undeclared 8-bit
    b"Subject: lf only\nFrom: x@y\n",
    b"Subject: no final newline",
    b"",
])
def test_edge_blocks_read_the_same(block):
    assert parse_header_block(block)._headers == standard(block)


LINE = st.one_of(
    st.text(alphabet="abcXYZ-:é \t", min_size=0, max_size=12).map(
        lambda s: s.encode("utf-8")),
    st.sampled_from([b"Subject: x", b" cont", b"\tcont", b"From: a@b", b"From x",
                     b"X-A:", b":", b"X\x00Y: v", b"X-B: \xff"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=6), st.sampled_from([b"\r\n", b"\n"]))
def test_any_block_reads_the_same(lines, newline):
    block = newline.join(lines) + (newline if lines else b"")
    assert parse_header_block(block)._headers == standard(block)


def test_the_message_view_uses_it():
    msg = ParsedMessage(b"From: Jean <jean@mairie-exemple.fr>\r\nSubject: =?utf-8?q?"
                        b"Probl=C3=A8me?=\r\n imprimante\r\n\r\nBonjour\r\n")
    assert msg.from_addr == "jean@mairie-exemple.fr"
    assert msg.subject == "Problème imprimante"


HEADS = [
    b"From: =?utf-8?q?Jos=C3=A9?= <j\xc3\xa9@x.fr>\r\nContent-Type: text/html\xc3\xa9; x=y\r\n",
    b"Content-Type: \r\n\tmultipart/mixed; boundary=x\r\nFrom: a@b.c\r\n",
    b"content-type: Multipart/Report ; x\r\nFROM: \"x\" <A@B.C>\r\nFrom: second@b.c\r\n",
    b"Content-Type: text\r\nFrom: nobody\r\n", b"Subject: no type, no sender\r\n",
    b"From foo@bar Mon Jan  1 00:00:00 2024\r\nFrom: a@b.c\r\nContent-Type: text/plain\r\n",
    b"Content-Type: multipart/alternative/x; boundary=b\r\n",
]


@pytest.mark.parametrize("head", HEADS + [header_block(p.read_bytes()) for p in CORPUS[:20]])
def test_fields_read_without_the_library_message_are_the_same(head):
    """ParsedMessage answers content_type, from_addr and header_fields from the fields
    it read, building no Message: the same answers as from the library's view."""
    msg = ParsedMessage(head + b"\r\nbody\r\n")
    library = parse_header_block(head)
    assert msg.content_type == library.get_content_type()
    assert msg.header_fields() == [(n, str(v)) for n, v in library.raw_items()]
    assert msg.head._headers == library._headers
    raw_from = library.get("From")
    expected = ParsedMessage.__new__(ParsedMessage)
    expected.__dict__.update(msg.__dict__)
    expected._fields = None                  # the library's way
    expected.__dict__.pop("from_addr", None)
    expected.__dict__["head"] = library
    assert msg.from_addr == expected.from_addr
    assert (raw_from is None) == ("from" not in msg._first)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b":", b" ", b"\r\n\r\n", b"\n\n",
                                 b"\n\r\n", b"\r\r\n", b"X: y"]), max_size=14))
def test_the_header_end_is_where_the_pattern_finds_it(pieces):
    # two substring searches instead of the pattern's search at every byte
    from helpdesk_milter.message import _HEADER_END, _header_end
    raw = b"".join(pieces)
    found = _HEADER_END.search(raw)
    assert _header_end(raw) == (found.start() if found else -1)


@given(st.lists(st.tuples(st.sampled_from(["Subject", "subject", "SUBJECT", "From", "X-A"]),
                          st.sampled_from(["a", "b", " c"])), max_size=8))
def test_first_holds_each_name_first_value(fields):
    msg = ParsedMessage(b"".join(f"{n}: {v}\r\n".encode() for n, v in fields) + b"\r\nbody")
    expected: dict[str, str] = {}
    for name, value in msg.header_fields():
        expected.setdefault(name.lower(), value)
    assert msg._first == expected
