"""Who gets a guidance mail, decided in-process (Engine + a real SQLite store).

The end-to-end tests (test_e2e_guidance.py) show the mail itself; these check
the rules around it quickly: the cases that call for guidance, the message
rules that forbid it, the per-sender period, the hourly cap, and trust.
The period and the cap are checked against both state backends (SQLite, and
Redis on a private redis-server).
"""

from __future__ import annotations

import sqlite3

import pytest

from helpdesk_milter.config import parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from support.mail import as_bytes, make_message
from support.milterproc import dump_toml
from support.redis import StateBackend, redis_server, state_backend  # noqa: F401
from support.world import example_sections

PROBLEMS = [
    "le partage réseau du service état civil est inaccessible depuis 8 h 30",
    "Thunderbird refuse d'envoyer les mails au trésor public depuis lundi",
    "le site de la médiathèque affiche une erreur 502 depuis la mise à jour",
    "le VPN de la police municipale coupe toutes les dix minutes depuis hier",
]


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


SQLITE = StateBackend("sqlite")


def engine(tmp_path, backend=SQLITE, **autoreply):
    data = example_sections(autoreply={"enabled": True, "trust": "known", **autoreply})
    data["milter"]["database"] = str(tmp_path / "state.db")
    config = parse_config(dump_toml(data))
    clock = Clock()
    store = backend.make(tmp_path / "state.db", clock=clock)
    return Engine(config, store=store, clock=clock, dnsfunc=lambda *a, **k: None), clock


def request(n: int, sender: str = "secretariat@mairie-exemple.fr", **headers):
    msg = make_message(sender=sender, to="contact@example.org",
                       subject="Panne : " + PROBLEMS[n][:40],
                       body=f"Bonjour,\n\n{PROBLEMS[n]}.\nPouvez-vous regarder ?\n",
                       headers=headers)
    return as_bytes(msg)


def decide(eng, raw, sender="secretariat@mairie-exemple.fr", client_addr="127.0.0.1",
           rcpts=("contact@example.org",)):
    env = Envelope(mail_from=sender, rcpts=rcpts, queue_id="Q", client_addr=client_addr)
    return eng.process_raw(env, raw).decision


def test_one_guidance_per_sender_per_period(tmp_path, state_backend):  # noqa: F811
    eng, clock = engine(tmp_path, state_backend, every="7d")
    assert decide(eng, request(0)).guidance == "queued"
    clock.now += 3600
    assert decide(eng, request(1)).guidance == "suppressed:rate-limited"
    clock.now += 8 * 86400
    assert decide(eng, request(2)).guidance == "queued"
    eng.store.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("select count(*), min(status) from outbox").fetchone() == \
            (2, "pending")
        rows = conn.execute("select outcome, reason from guidance_events order by id").fetchall()
    assert rows == [("queued", ""), ("suppressed", "rate-limited"), ("queued", "")]


def test_hourly_cap_for_all_senders(tmp_path, state_backend):  # noqa: F811
    eng, _ = engine(tmp_path, state_backend, max_per_hour=2)
    senders = ["a@mairie-exemple.fr", "b@mairie-exemple.fr", "c@mairie-exemple.fr"]
    outcomes = [decide(eng, request(n, sender=s), sender=s).guidance
                for n, s in enumerate(senders)]
    eng.store.close()
    assert outcomes == ["queued", "queued", "suppressed:hourly-cap"]


@pytest.mark.parametrize("sender, headers, reason", [
    ("noreply@mairie-exemple.fr", {}, "no-reply-sender"),
    ("no-reply@mairie-exemple.fr", {}, "no-reply-sender"),
    ("owner-liste@mairie-exemple.fr", {}, "no-reply-sender"),
    ("liste-request@mairie-exemple.fr", {}, "no-reply-sender"),
    ("mailer-daemon@mairie-exemple.fr", {}, "no-reply-sender"),
    ("quelquun@inconnu.example", {}, "unknown-sender"),
])
def test_message_rules(tmp_path, sender, headers, reason):
    eng, _ = engine(tmp_path)
    d = decide(eng, request(0, sender=sender, **headers), sender=sender)
    eng.store.close()
    assert d.action == "redirect" and d.guidance == f"suppressed:{reason}"


def test_any_trust_answers_unknown_senders_and_known_dkim_refuses_unsigned(tmp_path):
    eng, _ = engine(tmp_path, trust="any")
    assert decide(eng, request(0, sender="x@inconnu.example"),
                  sender="x@inconnu.example").guidance == "queued"
    eng.store.close()
    eng, _ = engine(tmp_path / "dkim", trust="known-dkim")
    assert decide(eng, request(1)).guidance == "suppressed:dkim-not-aligned"
    eng.store.close()


def test_trusted_relay_stands_for_dkim(tmp_path):
    eng, _ = engine(tmp_path, trust="known-dkim", trusted_relays=["192.0.2.25"])
    assert decide(eng, request(0), client_addr="192.0.2.25").guidance == "queued"
    eng.store.close()


def test_disabled_means_no_guidance_and_no_events(tmp_path):
    eng, _ = engine(tmp_path, enabled=False)
    d = decide(eng, request(0))
    eng.store.close()
    assert d.guidance is None and d.guidance_cases == ()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("select count(*) from guidance_events").fetchone() == (0,)


def test_not_a_request_gets_no_guidance(tmp_path):
    eng, _ = engine(tmp_path)
    msg = make_message(to="contact@example.org", subject="Invitation inauguration",
                       body="Bonjour, nous avons le plaisir de vous inviter à l'inauguration "
                            "de la médiathèque samedi.\n")
    d = decide(eng, as_bytes(msg))
    eng.store.close()
    assert d.verdict == "other" and d.guidance is None
