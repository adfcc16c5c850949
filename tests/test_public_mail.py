"""No damage outside the secret: other mail projects' test messages come out unchanged.

``tests/public_mail/<project>/`` holds the public test messages of eight mail libraries
and filters, byte for byte as published (``SOURCES.md`` says where each comes from).
Every one is run, with the secret scan covering it, through

- ``redact_message`` with a default ``SecretScanner``, applied as the milter applies
  it (``support.mail.apply_redaction``), and
- the engine on the example config, envelope from the message's From to a watched
  address, applied with ``rewrite_raw``,

and must come out with its body byte-identical and its header block identical apart
from the fields the milter adds (``X-Helpdesk-*``, ``Authentication-Results``,
``ARC-*``) or strips (forged ``X-Helpdesk-*``).  The messages listed in
``tests/public_mail/expected.toml`` hold real secrets: there, those strings and nothing
else may be replaced by markers.

A change that removes no real secret is damage.  Known damage is listed once, in
``DAMAGED``, and its cases are strict xfails: fixing the detector makes them pass,
which fails the run until the entry is removed here.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest

from helpdesk_milter.config import load_config
from helpdesk_milter.engine import Engine, rewrite_raw
from helpdesk_milter.message import Envelope, ParsedMessage
from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner
from support.mail import apply_redaction, as_bytes, make_message

ROOT = Path(__file__).resolve().parent
PUBLIC = ROOT / "public_mail"
EXAMPLE_CONFIG = ROOT.parent / "config" / "helpdesk-milter.toml"
WATCHED = "alice@example.org"            # a member of the example config's "team" group
FALLBACK_SENDER = "sender@public.example"
ADDED = re.compile(rb"(?i)(x-helpdesk-[a-z-]+|authentication-results|arc-[a-z-]+)$")
# Any marker the redaction writes: the default "[secret removed: {kind}]" (library) and
# the example config's marker, which is the same.
MARKER = r"\[secret removed: [a-z0-9-]+\]"

# Known damage: file -> what the redaction changes that is no secret.  One place, so
# the detector's developer removes an entry once the fix lands (the strict xfail then
# passes, and fails the run, until the entry is gone).
DAMAGED: dict[str, str] = {}


# --------------------------------------------------------------------------------------
# The message set.

@dataclass(frozen=True)
class Case:
    name: str                       # "project/file", as in DAMAGED and expected.toml
    path: Path
    secrets: tuple[str, ...]        # the real secrets it holds (expected.toml)

    def raw(self) -> bytes:
        """The message as the milter would get it: an mbox ``From `` separator line,
        which some projects keep at the top of their files, is not part of it."""
        data = self.path.read_bytes()
        if data.startswith(b"From "):
            data = data.split(b"\n", 1)[1]
        return data


def _expected() -> dict[str, tuple[str, ...]]:
    with open(PUBLIC / "expected.toml", "rb") as fh:
        entries = tomllib.load(fh).get("message", [])
    return {e["file"]: tuple(e["secrets"]) for e in entries}


def _cases() -> list[Case]:
    expected = _expected()
    return [Case(f"{p.parent.name}/{p.name}", p, expected.get(f"{p.parent.name}/{p.name}", ()))
            for p in sorted(PUBLIC.glob("*/*")) if p.is_file()]


CASES = _cases()


def _params() -> list[object]:
    return [pytest.param(case, id=case.name, marks=[
        pytest.mark.xfail(strict=True, reason=DAMAGED[case.name])] if case.name in DAMAGED
        else []) for case in CASES]


# --------------------------------------------------------------------------------------
# Comparing.

def _split(raw: bytes) -> tuple[bytes, bytes]:
    """Header block (without its last line end) and body."""
    blank = re.search(rb"\r?\n\r?\n", raw)
    if blank is None:
        return raw.rstrip(b"\r\n"), b""
    return raw[:blank.start()], raw[blank.end():]


def _fields(head: bytes) -> list[bytes]:
    """The header fields of a block, each with its continuation lines, bytes as they are."""
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return [b"\n".join(lines).rstrip(b"\r") for lines in fields]


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip()


def _own(field: bytes) -> bool:
    return _name(field).lower().startswith(b"x-helpdesk-")


def _parse(raw: bytes) -> Message:
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def _text(part: Message) -> str | None:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("latin-1")


def _subject(raw: bytes) -> str:
    head = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    return str(head.get("Subject", ""))


def _secrets_only(old: str, new: str, secrets: tuple[str, ...]) -> bool:
    """``new`` is ``old`` with some of ``secrets`` replaced by markers, nothing else."""
    if not secrets:
        return new == old
    alternation = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    pieces = re.split(alternation, old)
    pattern = f"(?:{MARKER})".join(re.escape(p) for p in pieces)
    return re.fullmatch(pattern, new, re.DOTALL) is not None and not any(
        s in new for s in secrets)


def secret_only_changes(old_raw: bytes, new_raw: bytes, secrets: tuple[str, ...]
                        ) -> list[str]:
    """What differs between two messages besides the listed secrets being replaced.

    Compared part by part: the same structure, part headers and preambles, the
    decoded text of each text leaf (a redacted part may be re-encoded) equal to the
    old one with some of ``secrets`` replaced by markers, any other leaf unchanged,
    and the listed secrets gone.  The top-level header fields must be equal too, but
    for the Subject, which may lose a secret the same way.
    """
    problems = []
    if not _secrets_only(_subject(old_raw), _subject(new_raw), secrets):
        problems.append("Subject changed beyond the secrets")
    old_parts, new_parts = list(_parse(old_raw).walk()), list(_parse(new_raw).walk())
    if len(old_parts) != len(new_parts):
        return [*problems, f"{len(old_parts)} parts became {len(new_parts)}"]
    for i, (old, new) in enumerate(zip(old_parts, new_parts, strict=True)):
        where = f"part {i} {old.get_content_type()}"
        old_fields, new_fields = old.items(), new.items()
        if i == 0:
            old_fields = [f for f in old_fields if f[0].lower() != "subject"]
            new_fields = [f for f in new_fields if f[0].lower() != "subject"]
        if old_fields != new_fields:
            problems.append(f"{where}: header fields changed")
        if (old.preamble, old.epilogue) != (new.preamble, new.epilogue):
            problems.append(f"{where}: preamble or epilogue changed")
        if old.is_multipart():
            continue
        old_text = _text(old) if old.get_content_maintype() == "text" else None
        new_text = _text(new) if old_text is not None else None
        if old_text is None or new_text is None:
            if old.get_payload() != new.get_payload():
                problems.append(f"{where}: changed")
        elif not _secrets_only(old_text, new_text, secrets):
            problems.append(f"{where}: text changed beyond the secrets")
    return problems


def _first_difference(old: bytes, new: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
              min(len(old), len(new)))
    line = old.count(b"\n", 0, at) + 1
    return (f"first difference at byte {at} (line {line}): {old[at:at + 40]!r} -> "
            f"{new[at:at + 40]!r}")


def assert_only_secrets_changed(case: Case, old: tuple[list[bytes], bytes],
                                new: tuple[list[bytes], bytes]) -> None:
    """``old`` and ``new`` are (header fields, body): equal, or for a message of
    expected.toml, equal but for its secrets."""
    (old_fields, old_body), (new_fields, new_body) = old, new
    if not case.secrets:
        same_body = new_body == old_body
        assert same_body, f"{case.name}: body changed, {_first_difference(old_body, new_body)}"
        same_head = new_fields == old_fields
        assert same_head, f"{case.name}: header changed: " + ", ".join(
            repr(f[:60]) for f in set(old_fields) ^ set(new_fields))
        return
    old_raw = b"\n".join(old_fields) + b"\n\n" + old_body
    new_raw = b"\n".join(new_fields) + b"\n\n" + new_body
    assert new_raw != old_raw, f"{case.name}: its secrets were not removed"
    assert secret_only_changes(old_raw, new_raw, case.secrets) == [], case.name


# --------------------------------------------------------------------------------------
# The two layers.

@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    config = load_config(EXAMPLE_CONFIG)
    logging.disable(logging.INFO)          # one log line per message: not wanted here
    try:
        yield Engine(config, store=None, dnsfunc=lambda *a, **k: None)
    finally:
        logging.disable(logging.NOTSET)


def envelope(raw: bytes) -> Envelope:
    sender = ParsedMessage(raw).from_addr or FALLBACK_SENDER
    return Envelope(mail_from=sender, rcpts=(WATCHED,), queue_id="PUBLIC")


SCANNER = SecretScanner()


@pytest.mark.parametrize("case", _params())
def test_redaction_leaves_message_intact(case: Case) -> None:
    raw = case.raw()
    bounce = ParsedMessage(raw).content_type == "multipart/report"
    r = redact_message(raw, SCANNER, is_bounce=bounce)
    assert not any(d.startswith("redaction failed") for d in r.defects), r.defects
    if not case.secrets:
        assert r.count == 0, f"{case.name}: findings {r.where}"
    head, body = _split(raw)
    new_head, new_body = _split(apply_redaction(raw, r))
    assert_only_secrets_changed(case, (_fields(head), body), (_fields(new_head), new_body))


@pytest.mark.parametrize("case", _params())
def test_engine_leaves_message_intact(case: Case, engine: Engine) -> None:
    raw = case.raw()
    d = engine.process_raw(envelope(raw), raw).decision
    assert all(name.lower().startswith("x-helpdesk-") for name, _ in d.strip_headers)
    added = [*d.prepend_headers, *d.add_headers]
    assert all(ADDED.match(name.encode()) for name, _ in added), added
    if not case.secrets:
        assert (d.secrets, d.new_body, d.change_headers) == (0, None, ()), \
            f"{case.name}: findings {d.secret_where}"
    out = rewrite_raw(raw, d)
    # Take the added fields off the top and the end of the header block, and the
    # forged X-Helpdesk-* ones off the original: the rest must be as it was.
    head, body = _split(out)
    fields = _fields(head)
    first, last = len(d.prepend_headers), len(fields) - len(d.add_headers)
    assert all(ADDED.match(_name(f)) for f in fields[:first] + fields[last:])
    old_head, old_body = _split(raw)
    original = [f for f in _fields(old_head) if not _own(f)]
    assert_only_secrets_changed(case, (original, old_body), (fields[first:last], body))


# --------------------------------------------------------------------------------------
# The set itself, and the checks checked.

def test_public_set_is_as_described() -> None:
    projects = {c.path.parent.name for c in CASES}
    assert projects == {"cpython", "mikel-mail", "mail-parser", "flanker", "mime4j",
                        "mail-mime-parser", "mimekit", "rspamd"}
    assert 500 <= len(CASES) <= 800
    sizes = [c.path.stat().st_size for c in CASES]
    assert max(sizes) <= 1_000_000 and sum(sizes) < 15_000_000
    names = {c.name for c in CASES}
    assert set(_expected()) <= names, "expected.toml names a missing file"
    assert set(DAMAGED) <= names, "DAMAGED names a missing file"
    assert not set(_expected()) & set(DAMAGED), "a message is either damaged or expected"


SECRET = "Vx7#kq92Lmp"
BODY = ("Bonjour,\n\nLe mot de passe du compte est : " + SECRET
        + "\n\nLe serveur reste en panne depuis ce matin.\n\nMerci\n")


def test_envelope_puts_messages_in_secret_scope(engine: Engine) -> None:
    """The envelope used above gets a message's secrets redacted by the engine."""
    raw = as_bytes(make_message(sender="Paul <paul@public.example>", body=BODY, cte="8bit"))
    d = engine.process_raw(envelope(raw), raw).decision
    assert d.secrets == 1 and d.new_body is not None
    assert SECRET.encode() not in rewrite_raw(raw, d)


def test_secret_only_changes_tells_secret_from_damage() -> None:
    raw = as_bytes(make_message(body=BODY, cte="quoted-printable"))
    out = apply_redaction(raw, redact_message(raw, SCANNER))
    assert SECRET.encode() not in out
    assert secret_only_changes(raw, out, (SECRET,)) == []
    assert secret_only_changes(raw, out, ()) != []              # an unlisted change
    damaged = out.replace(b"serveur", b"sxrveur")
    assert secret_only_changes(raw, damaged, (SECRET,)) != []   # a change beside it
