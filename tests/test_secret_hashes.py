"""No trace of a secret in the state database, whatever ``secrets.action`` says.

The duplicate fingerprint keeps 32-bit hashes of the identifiers of a text (words
with digits, names, addresses); a password is such a word, and a 32-bit hash of a
password is one dictionary away from the password.  The guidance mail, queued in
the database, quotes the Subject.  Both must read the text with secrets replaced.
"""

from __future__ import annotations

import sqlite3
import struct
import zlib

import pytest

from helpdesk_milter.config import parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from helpdesk_milter.store import SQLiteStore
from support.mail import as_bytes, make_message
from support.milterproc import dump_toml
from support.world import CLIENT, example_sections

BODY_SECRET = "Tr0ub4dor2024"
SUBJECT_SECRET = "Lune2025zq"
RAW = as_bytes(make_message(
    sender=CLIENT, to="contact@example.org",
    subject=f"Webmail bloqué, mot de passe : {SUBJECT_SECRET}",
    body=("Bonjour,\n\nJe n'arrive plus à me connecter au webmail depuis ce matin.\n"
          f"Mon mot de passe : {BODY_SECRET} ne fonctionne plus.\n"
          "Le poste 4521 de l'accueil est touché. Pouvez-vous regarder ?\n")))


@pytest.mark.parametrize("action", ["redact", "tag"])
def test_no_hash_or_text_of_a_secret_reaches_the_database(tmp_path, action):
    data = example_sections(secrets={"action": action},
                            autoreply={"enabled": True, "trust": "known"})
    store = SQLiteStore(tmp_path / "state.db")
    engine = Engine(parse_config(dump_toml(data)), store=store,
                    dnsfunc=lambda *a, **k: None)
    d = engine.process_raw(Envelope(mail_from=CLIENT, rcpts=("contact@example.org",),
                                    queue_id="HASH1"), RAW).decision
    store.close()
    assert d.secrets == 2 and d.add_rcpts and d.guidance == "queued"
    with sqlite3.connect(tmp_path / "state.db") as conn:
        idents = [v for (blob,) in conn.execute("select idents from dedup_fingerprints")
                  for v in struct.unpack(f">{len(blob) // 4}I", blob)]
        outbox = [m for (m,) in conn.execute("select message from outbox")]
        dump = "\n".join(conn.iterdump())
    assert idents, "the fingerprint keeps identifiers"
    for secret in (BODY_SECRET, SUBJECT_SECRET):
        assert zlib.crc32(secret.lower().encode()) not in idents
        assert secret not in dump
        assert all(secret.encode() not in m for m in outbox)
