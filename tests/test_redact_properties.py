"""Property: redacting any MIME message keeps it valid and equivalent, minus the secrets.

Messages are generated with ``email.message.EmailMessage``: trees of multipart/mixed,
alternative and related containers, attached messages, text/plain and text/html leaves in
several charsets and transfer encodings (long lines force quoted-printable soft breaks
inside secrets), and binary attachments.  For every message, with or without secrets:

- the output parses with ``email.policy.default``, with the same part structure, content
  types, charsets and transfer encodings;
- every line of every text part that held no secret is still there, in order;
- no secret value is left in any part or in the Subject;
- binary payloads are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner
from support.mail import apply_redaction

SCANNER = SecretScanner()
MARK = "[secret removed: "

ASCII_WORDS = ["bonjour", "merci", "serveur", "imprimante", "demain", "nous", "avons", "un",
               "souci", "avec", "la", "mairie", "agents", "depuis", "matin", "ticket", "2024",
               "10h30", "salle", "conseil", "Jean", "Dupont", "rapidement", "possible",
               "a=b", "=3D", "50%", "tab\there", "fin.", "--", "x" * 90, "<b>", "&amp;"]
LATIN_WORDS = ["réunion", "été", "ça", "problème", "écran", "à", "déjà", "Noël", "naïf",
               "hôtel", "où", "garçon", "reçu", "crème"]
UTF8_ONLY = ["€uro", "Œuvre", "żółw", "日本"]       # € and Œ exist in cp1252, not latin-1


@dataclass(frozen=True)
class Leaf:
    subtype: str            # plain | html | binary
    charset: str
    cte: str
    lines: tuple[tuple[str, str | None], ...]   # (line, secret value or None)
    blob: bytes = b""


@dataclass(frozen=True)
class Multi:
    subtype: str
    parts: tuple[object, ...]


@dataclass(frozen=True)
class Attached:
    inner: object
    subject: tuple[str, str | None]


password = st.from_regex(r"[A-Z][a-z]{3,7}[0-9]{2,4}[!#%]?", fullmatch=True)
SECRET_TEMPLATES = [
    "mot de passe : {v}", "le mdp c'est {v}", "Identifiant : jdupont / Mot de passe : {v}",
    "password: {v}", "code wifi : {v}", "DB_PASSWORD={v}",
    "postgres://app:{v}@db.example.org/prod", "https://jdupont:{v}@cloud.example.org/dav",
]


@st.composite
def secret_line(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.integers(0, len(SECRET_TEMPLATES) + 1))
    if kind == len(SECRET_TEMPLATES):
        value = "ghp_" + draw(st.from_regex(r"[A-Za-z0-9]{36}", fullmatch=True))
        template = "token {v} pour la CI"
    elif kind == len(SECRET_TEMPLATES) + 1:
        value = "AKIA" + draw(st.from_regex(r"[A-Z2-7]{16}", fullmatch=True))
        template = "AWS key {v}"
    else:
        value = draw(password)
        template = SECRET_TEMPLATES[kind]
    line = template.format(v=value)
    if draw(st.booleans()):          # a long prefix: QP wraps inside the secret
        line = " ".join(draw(st.lists(st.sampled_from(ASCII_WORDS), min_size=8,
                                      max_size=14))) + " " + line
    return line, value


def words_for(charset: str, cte: str) -> list[str]:
    if charset == "us-ascii" or cte == "7bit":
        return ASCII_WORDS
    if charset == "utf-8":
        return ASCII_WORDS + LATIN_WORDS + UTF8_ONLY
    if charset == "windows-1252":
        return ASCII_WORDS + LATIN_WORDS + ["€uro", "Œuvre"]
    return ASCII_WORDS + LATIN_WORDS


@st.composite
def leaves(draw: st.DrawFn) -> Leaf:
    subtype = draw(st.sampled_from(["plain", "plain", "html", "binary"]))
    if subtype == "binary":
        return Leaf("binary", "", "base64", (), draw(st.binary(min_size=1, max_size=300)))
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "windows-1252", "us-ascii"]))
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]))
    if cte == "8bit" and charset == "us-ascii":
        cte = "7bit"
    vocabulary = words_for(charset, cte)
    filler = st.lists(st.sampled_from(vocabulary), min_size=1, max_size=25).map(" ".join)
    lines = draw(st.lists(st.one_of(filler.map(lambda t: (t, None)), secret_line()),
                          min_size=1, max_size=8))
    return Leaf(subtype, charset, cte, tuple(lines))


trees = st.recursive(
    leaves(),
    lambda children: st.one_of(
        st.builds(Multi, st.sampled_from(["mixed", "alternative", "related"]),
                  st.lists(children, min_size=1, max_size=3).map(tuple)),
        st.builds(Attached, children,
                  st.one_of(st.just(("Re: demande", None)),
                            password.map(lambda v: (f"mdp : {v}", v)))),
    ),
    max_leaves=6,
)


def build(node: object) -> EmailMessage:
    part = EmailMessage()
    if isinstance(node, Leaf):
        if node.subtype == "binary":
            part.set_content(node.blob, maintype="application", subtype="octet-stream")
        else:
            text_lines = [line for line, _ in node.lines]
            if node.subtype == "html":
                text_lines = [f"<p>{line}</p>" for line in text_lines]
            part.set_content("\n".join(text_lines) + "\n", subtype=node.subtype,
                             charset=node.charset, cte=node.cte)
    elif isinstance(node, Multi):
        part["Content-Type"] = f"multipart/{node.subtype}"
        for child in node.parts:
            part.attach(build(child))
    elif isinstance(node, Attached):
        inner = build(node.inner)
        inner["Subject"] = node.subject[0]
        part.set_content(inner)
    return part


def secrets_of(node: object) -> list[str]:
    if isinstance(node, Leaf):
        return [v for _, v in node.lines if v]
    if isinstance(node, Multi):
        return [v for child in node.parts for v in secrets_of(child)]
    if isinstance(node, Attached):
        return secrets_of(node.inner) + ([node.subject[1]] if node.subject[1] else [])
    return []


def to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")




def shape(msg: Message) -> list[tuple[str, str | None, str]]:
    return [(p.get_content_type(), p.get_content_charset(),
             str(p.get("Content-Transfer-Encoding", "")).lower()) for p in msg.walk()]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(tree=trees, subject=st.one_of(st.just(("Problème imprimante", None)),
                                     password.map(lambda v: (f"Accès mdp : {v}", v))))
def test_redaction_keeps_message_valid(tree: object, subject: tuple[str, str | None]) -> None:
    msg = build(tree)
    msg["From"] = "Jérôme <j@mairie-exemple.fr>"
    msg["To"] = "alice@example.org"
    msg["Subject"] = subject[0]
    raw = to_crlf(msg.as_bytes(policy=policy.default))
    secrets = secrets_of(tree) + ([subject[1]] if subject[1] else [])

    r = redact_message(raw, SCANNER)
    assert not r.defects
    out = apply_redaction(raw, r)
    old = BytesParser(policy=policy.default).parsebytes(raw)
    new = BytesParser(policy=policy.default).parsebytes(out)
    assert shape(new) == shape(old)
    assert [str(d) for p in new.walk() for d in p.defects] == [
        str(d) for p in old.walk() for d in p.defects]
    if not secrets:
        assert r.count == 0 and r.body is None and r.subject is None
    assert r.count >= len(secrets)

    for value in secrets:
        assert value not in str(new["Subject"])
    for before, after in zip(old.walk(), new.walk(), strict=True):
        if before.get_content_maintype() == "text":
            old_text, new_text = before.get_content(), after.get_content()
            for value in secrets:
                assert value not in new_text
            kept = [line for line in old_text.splitlines()
                    if not any(value in line for value in secrets)]
            assert kept == [line for line in new_text.splitlines() if MARK not in line]
        elif not before.is_multipart():
            assert before.get_payload(decode=True) == after.get_payload(decode=True)
    for inner_old, inner_new in zip(old.walk(), new.walk(), strict=True):
        if inner_old.get_content_type() == "message/rfc822":
            inner_subject = str(inner_new.get_payload()[0]["Subject"])
            assert not any(value in inner_subject for value in secrets)
