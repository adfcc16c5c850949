"""The Redis state backend against a real redis-server on a private loopback port.

Two ``RedisStore`` instances with one key prefix and their own SQLite files play
two MX hosts.  Shared: duplicates (Message-ID, text, near text), guidance limits
and the atomic claim; per host: decisions and the outbox.  The faults are real:
the server is killed, stopped with SIGSTOP (it accepts and never answers),
restarted and flushed, and the mail flows per ``on_error`` while it is away.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis

from helpdesk_milter import dedup
from helpdesk_milter.config import ConfigError, parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from helpdesk_milter.redis_store import RedisStore, StateUnavailable, describe_url, open_store
from helpdesk_milter.store import OutboxRow, Pending, Remember, SQLiteStore
from support.mail import as_bytes, make_message
from support.milterproc import dump_toml
from support.redis import RedisServer, StateBackend, redis_server  # noqa: F401
from support.world import example_sections

TEXT = ("Bonjour, depuis ce matin l'imprimante du secrétariat de la mairie affiche une "
        "erreur de bourrage papier et plus rien ne sort, pouvez-vous regarder ?")
EDITED = TEXT.replace("depuis ce matin", "depuis ce matin très tôt")
WATCHED = Remember(side="watched", assistance=None, routed=False)


def fp(message_id: str, text: str = TEXT, subject: str = "Imprimante en panne",
       sender: str = "secretariat@mairie-exemple.fr") -> dedup.Fingerprint:
    return dedup.fingerprint_text(subject, text, sender=sender, structure="mairie-exemple",
                                  message_id=message_id)


def remember(match: dedup.Match | None) -> Remember:
    return WATCHED


def outbox_row(to: str) -> OutboxRow:
    return OutboxRow(created=time.time(), to_addr=to, queue_id="Q", lang="fr", cases="",
                     message=b"Subject: guide\r\n\r\nhello\r\n")


def outbox_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("select count(*) from outbox").fetchone()[0])


@pytest.fixture
def hosts(redis_server, tmp_path):  # noqa: F811
    backend = StateBackend("redis", redis_server)
    a = backend.make(tmp_path / "a.db")
    b = backend.make(tmp_path / "b.db", like=a)
    yield a, b
    a.close()
    b.close()


def test_a_request_seen_by_one_host_is_a_duplicate_on_the_other(hosts):
    a, b = hosts
    assert a.check_and_remember(fp("<1@mairie>"), remember) is None
    a.flush()                          # filed by MX1's writer a few ms later
    same_id = b.check_and_remember(fp("<1@mairie>", text="TR: voir plus bas"), remember)
    assert same_id is not None and same_id.kind == "message-id"
    assert same_id.of_message_id == "<1@mairie>"
    same_text = b.check_and_remember(fp("<2@mairie>"), remember)
    assert same_text is not None and (same_text.kind, same_text.score) == ("text", 1.0)
    near = b.check_and_remember(fp("<3@mairie>", text=EDITED, subject="TR: Imprimante en panne"),
                                remember)
    assert near is not None and near.kind == "text" and 0.8 <= near.score < 1.0
    other = b.check_and_remember(fp("<4@mairie>", text="Le site web de la médiathèque "
                                    "affiche une erreur 502 depuis la mise à jour d'hier "
                                    "soir, merci de regarder"), remember)
    assert other is None


def test_a_message_waits_for_one_round_trip_and_costs_two(redis_server,  # noqa: F811
                                                          tmp_path):
    sent = []

    class Counting(redis.Connection):
        def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
            sent.append(1)
            return super().send_packed_command(command, check_health)

    client = redis.Redis(connection_pool=redis.ConnectionPool(
        host="127.0.0.1", port=redis_server.port, connection_class=Counting))
    store = RedisStore(redis_server.url, local=SQLiteStore(tmp_path / "a.db"),
                       key_prefix="trips:", client=client)
    store.check_and_remember(fp("<warm@x>"), remember)     # loads the scripts once
    store.flush()
    for n in range(5):
        pending = Pending()
        sent.clear()
        store.check_and_remember(fp(f"<{n}@x>", text=f"{TEXT} numéro {n}"), remember,
                                 pending=pending)
        assert len(sent) == 1, sent            # what the message waits for
        store.commit(pending)
        store.flush()
        assert len(sent) == 2, sent            # and the row filed by the writer
    sent.clear()
    store.check_and_remember(fp("<miss@x>"), lambda m: None)   # nothing to remember
    store.flush()
    assert len(sent) == 1
    # a server that forgot the script (restarted, flushed): it comes with the lookup
    redis.Redis(port=redis_server.port).script_flush()
    sent.clear()
    assert store.check_and_remember(fp("<0@x>", text=f"{TEXT} numéro 0"),
                                    lambda m: None) is not None
    assert len(sent) == 2, sent                # EVALSHA refused, then EVAL
    sent.clear()
    store.check_and_remember(fp("<miss2@x>"), lambda m: None)
    assert len(sent) == 1, sent                # and it is known again
    store.close()


def test_a_message_that_earns_a_guidance_mail_waits_for_two_round_trips(
        redis_server, tmp_path):  # noqa: F811
    """The duplicate lookup, then the claim (which checks the limits itself): the
    engine does not read the limits first on a store whose claim checks them."""
    sent = []

    class Counting(redis.Connection):
        def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
            packed = b"".join(command) if isinstance(command, list) else command
            name = packed.split(b"\r\n")[2].upper()
            if name not in (b"HELLO", b"CLIENT", b"AUTH", b"SELECT", b"PING"):
                sent.append(name)    # (a new pooled connection's handshake is no trip)
            return super().send_packed_command(command, check_health)

    data = example_sections(autoreply={"enabled": True, "trust": "any"})
    data["milter"]["database"] = str(tmp_path / "a.db")
    config = parse_config(dump_toml(data))
    client = redis.Redis(connection_pool=redis.ConnectionPool(
        host="127.0.0.1", port=redis_server.port, connection_class=Counting))
    store = RedisStore(redis_server.url, local=SQLiteStore(tmp_path / "a.db"),
                       key_prefix="guided:", client=client)
    engine = Engine(config, store=store, dnsfunc=lambda *a, **k: None)

    def request(n: int) -> bytes:
        return as_bytes(make_message(
            to="contact@example.org", subject=f"Imprimante {n} en panne",
            body=f"Bonjour,\n\nL'imprimante numéro {n} du secrétariat ne sort plus rien "
                 "depuis ce matin, pouvez-vous passer ?\n\nMerci\n"))

    # a first guided message loads the scripts (EVALSHA, then SCRIPT LOAD once)
    engine.process_raw(Envelope(mail_from="accueil@mairie-exemple.fr",
                                rcpts=("contact@example.org",), queue_id="W"), request(9))
    store.flush()
    for n, sender in enumerate(("secretariat@mairie-exemple.fr", "urbanisme@mairie-exemple.fr")):
        sent.clear()
        outcome = engine.process_raw(Envelope(mail_from=sender, rcpts=("contact@example.org",),
                                              queue_id=f"G{n}"), request(n), defer=True)
        assert outcome.decision.guidance == "queued"
        assert len(sent) == 2, sent            # lookup + claim: what the message waits for
        engine.commit(outcome)
        store.flush()                          # (the writer files the row: off the path)
    # a sender already guided: still two, and the claim says why not
    sent.clear()
    outcome = engine.process_raw(Envelope(mail_from="secretariat@mairie-exemple.fr",
                                          rcpts=("contact@example.org",), queue_id="G3"),
                                 request(3), defer=True)
    assert outcome.decision.guidance == "suppressed:rate-limited"
    assert len(sent) == 2, sent
    engine.commit(outcome)
    store.close()


def test_exactly_one_host_queues_a_guidance_mail(hosts, tmp_path):
    a, b = hosts
    outcomes: list[str] = []
    start = threading.Barrier(16)

    def claim(store: RedisStore) -> None:
        start.wait()
        outcomes.append(store.queue_guidance(
            "Client@Mairie-Exemple.fr", lambda: outbox_row("client@mairie-exemple.fr"),
            every=7 * 86400, per_hour=30))

    threads = [threading.Thread(target=claim, args=(s,)) for s in (a, b) * 8]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["queued"] + ["rate-limited"] * 15
    a.flush()
    b.flush()
    assert outbox_count(tmp_path / "a.db") + outbox_count(tmp_path / "b.db") == 1
    assert b.guidance_allowed("client@mairie-exemple.fr", every=7 * 86400,
                              per_hour=30) == "rate-limited"


def test_the_hourly_budget_is_for_all_hosts_together(hosts):
    a, b = hosts
    args = {"every": 86400.0, "per_hour": 2}
    assert a.queue_guidance("x@m.fr", lambda: outbox_row("x@m.fr"), **args) == "queued"
    assert b.queue_guidance("y@m.fr", lambda: outbox_row("y@m.fr"), **args) == "queued"
    assert a.guidance_allowed("z@m.fr", **args) == "hourly-cap"
    assert a.queue_guidance("z@m.fr", lambda: outbox_row("z@m.fr"), **args) == "hourly-cap"


def test_an_aborted_message_takes_back_its_row_and_its_claim(hosts):
    a, b = hosts
    pending = Pending()
    a.check_and_remember(fp("<abort@x>"), remember, pending=pending)
    assert a.queue_guidance("c@m.fr", lambda: outbox_row("c@m.fr"), every=3600.0,
                            per_hour=30, pending=pending) == "queued"
    a.abort(pending)
    a.flush()
    assert a.check_and_remember(fp("<abort@x>"), lambda m: None) is None
    assert b.check_and_remember(fp("<abort@x>"), remember) is None
    assert b.guidance_allowed("c@m.fr", every=3600.0, per_hour=30) is None
    # committed, it stays
    pending = Pending()
    a.check_and_remember(fp("<kept@x>", text=EDITED), remember, pending=pending)
    a.commit(pending)
    a.flush()
    assert b.check_and_remember(fp("<kept@x>", text=EDITED), remember) is not None


def test_fingerprints_expire_with_the_window(redis_server, tmp_path):  # noqa: F811
    store = StateBackend("redis", redis_server).make(tmp_path / "a.db", window=0.5)
    store.check_and_remember(fp("<old@x>"), remember)
    store.flush()
    assert store.client.keys(f"{store.prefix}[fh]:*")
    time.sleep(0.7)
    assert store.client.keys(f"{store.prefix}[fh]:*") == []
    assert store.check_and_remember(fp("<old@x>"), remember) is None
    store.close()


def test_the_same_messages_in_the_same_order_give_the_same_decisions(redis_server,  # noqa: F811
                                                                     tmp_path):
    texts = [TEXT, EDITED, TEXT + " Merci", "Autre chose : le wifi de la salle du conseil "
             "ne marche plus depuis la coupure de courant de mardi matin"]
    runs = []
    for run in range(2):
        store = StateBackend("redis", redis_server).make(tmp_path / f"{run}.db",
                                                         clock=lambda: 1_800_000_000.0)
        runs.append([store.check_and_remember(fp(f"<{n % 3}@x>", text=t), remember)
                     for n, t in enumerate(texts * 2)])
        store.close()
    assert runs[0] == runs[1]
    assert runs[0][0] is None and runs[0][4] is not None


def test_no_secret_reaches_redis(redis_server, tmp_path):  # noqa: F811
    data = example_sections(autoreply={"enabled": True, "trust": "any"})
    data["milter"]["database"] = str(tmp_path / "a.db")
    config = parse_config(dump_toml(data))
    store = StateBackend("redis", redis_server).make(tmp_path / "a.db")
    engine = Engine(config, store=store, dnsfunc=lambda *a, **k: None)
    secret = "Zq8-plume-Vx42-tilleul"
    raw = as_bytes(make_message(to="contact@example.org", subject="Accès webmail",
                                body=f"Bonjour,\n\nJe n'arrive plus à me connecter au "
                                     f"webmail.\nMon mot de passe : {secret}\n\nMerci\n"))
    d = engine.process_raw(Envelope(mail_from="secretariat@mairie-exemple.fr",
                                    rcpts=("contact@example.org",), queue_id="Q1"), raw).decision
    assert d.secrets and d.guidance == "queued"
    keys = store.client.keys(f"{store.prefix}*")
    assert keys
    for key in keys:
        kind = store.client.type(key)
        values = {b"string": lambda k: [store.client.get(k)],
                  b"list": lambda k: store.client.lrange(k, 0, -1),
                  b"zset": lambda k: store.client.zrange(k, 0, -1)}[kind](key)
        for value in [key, *values]:
            assert secret.encode() not in value and b"plume" not in value
    store.close()


# --- faults ------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """A server of the test's own, free to be killed."""
    with RedisServer(tmp_path / "redis") as s:
        yield s


def test_redis_down_mail_flows_one_log_line_and_recovery_without_restart(server, tmp_path,
                                                                         caplog):
    caplog.set_level(logging.INFO, logger="helpdesk_milter.state")
    a = StateBackend("redis", server).make(tmp_path / "a.db", timeout=0.3)
    a.check_and_remember(fp("<before@x>"), remember)
    server.kill()
    started = time.monotonic()
    for n in range(50):
        assert a.check_and_remember(fp(f"<down-{n}@x>"), remember) is None
    assert a.guidance_allowed("d@m.fr", every=60.0, per_hour=5) == "state-unavailable"
    assert a.queue_guidance("d@m.fr", lambda: outbox_row("d@m.fr"), every=60.0,
                            per_hour=5) == "state-unavailable"
    assert time.monotonic() - started < 1.0          # nobody waits on a dead server
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unavailable" in errors[0].getMessage()
    server.start()                                   # restarted, empty
    time.sleep(a.RETRY + 0.1)
    assert a.check_and_remember(fp("<after@x>"), remember) is None
    assert a.check_and_remember(fp("<after@x>"), remember) is not None
    back = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(back) == 1
    a.close()


def test_tempfail_raises_so_the_milter_temp_fails(server, tmp_path):
    a = StateBackend("redis", server).make(tmp_path / "a.db", on_error="tempfail")
    server.kill()
    with pytest.raises(StateUnavailable):
        a.check_and_remember(fp("<t@x>"), remember)
    with pytest.raises(StateUnavailable):
        a.guidance_allowed("t@m.fr", every=60.0, per_hour=5)
    a.close()


def test_a_slow_redis_costs_one_timeout_then_nothing(server, tmp_path):
    a = StateBackend("redis", server).make(tmp_path / "a.db", timeout=0.2)
    a.check_and_remember(fp("<warm@x>"), remember)
    a.flush()
    server.pause()
    try:
        started = time.monotonic()
        assert a.check_and_remember(fp("<slow@x>"), remember) is None
        first = time.monotonic() - started
        started = time.monotonic()
        for n in range(20):
            a.check_and_remember(fp(f"<slow-{n}@x>"), remember)
        rest = time.monotonic() - started
    finally:
        server.resume()
    assert first < 0.2 * 2 + 0.3, first     # the timeout, not the server's mercy
    assert rest < 0.1, rest
    time.sleep(a.RETRY + 0.1)
    assert a.check_and_remember(fp("<warm@x>"), remember) is not None
    assert a.available
    a.close()


def test_no_thread_is_stuck_past_the_timeout(server, tmp_path):
    a = StateBackend("redis", server).make(tmp_path / "a.db", timeout=0.2)
    a.check_and_remember(fp("<warm@x>"), remember)
    a.flush()
    server.pause()
    took: list[float] = []

    def one(n: int) -> None:
        started = time.monotonic()
        a.check_and_remember(fp(f"<p-{n}@x>"), remember)
        took.append(time.monotonic() - started)

    try:
        threads = [threading.Thread(target=one, args=(n,)) for n in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
    finally:
        server.resume()
    assert len(took) == 10 and max(took) < 1.0, took
    a.close()


def test_a_flushed_redis_forgets_but_this_host_sends_no_second_guidance(server, tmp_path):
    a = StateBackend("redis", server).make(tmp_path / "a.db")
    args = {"every": 86400.0, "per_hour": 30}
    a.check_and_remember(fp("<f@x>"), remember)
    assert a.queue_guidance("f@m.fr", lambda: outbox_row("f@m.fr"), **args) == "queued"
    a.flush()
    redis.Redis(port=server.port).flushall()
    assert a.check_and_remember(fp("<f@x>"), remember) is None      # forgotten, no error
    assert a.queue_guidance("f@m.fr", lambda: outbox_row("f@m.fr"), **args) == "rate-limited"
    assert a.available
    a.close()


def test_after_a_flush_a_reused_row_id_brings_back_the_new_row_not_the_old(server, tmp_path):
    # The store keeps rows it read decoded; a flushed Redis numbers rows from 1 again,
    # so a row id alone must never bring back the row it named before the flush.
    a = StateBackend("redis", server).make(tmp_path / "a.db")
    other = ("Hello, since this morning nobody in the accounts office can open the shared "
             "drive, it says access denied for every folder, could someone look at it?")
    a.check_and_remember(fp("<f@x>"), remember)
    a.flush()
    first = a.check_and_remember(fp("<f@x>"), remember)   # read back: now kept decoded
    assert first is not None and first.of_message_id == "<f@x>"
    a.flush()
    redis.Redis(port=server.port).flushall()
    assert a.check_and_remember(fp("<g@y>", other, "Shared drive"), remember) is None
    a.flush()
    again = a.check_and_remember(fp("<g@y>", other, "Shared drive"), remember)
    assert again is not None and again.of_message_id == "<g@y>", again
    assert again.earlier_rowid == first.earlier_rowid   # the same id, another row
    a.close()


# --- configuration ------------------------------------------------------------------

def test_open_store_reads_the_password_from_a_file(tmp_path, caplog):
    password = "s3cr3t-redis-pass"
    with RedisServer(tmp_path / "redis", password=password) as server:
        secret_file = tmp_path / "redis.pass"
        secret_file.write_text(password + "\n")
        secret_file.chmod(0o600)
        data = example_sections(state={"backend": "redis", "redis_url": server.url,
                                       "redis_password_file": str(secret_file)})
        data["milter"]["database"] = str(tmp_path / "a.db")
        store = open_store(parse_config(dump_toml(data)))
        assert isinstance(store, RedisStore) and store.ping()
        store.close()
        secret_file.write_text("wrong-password\n")
        caplog.set_level(logging.INFO)
        store = open_store(parse_config(dump_toml(data)))
        assert isinstance(store, RedisStore) and not store.ping()
        assert store.check_and_remember(fp("<p@x>"), remember) is None   # mail still flows
        store.close()
    logged = caplog.text
    assert "unavailable" in logged and password not in logged and "wrong-password" not in logged


def test_the_default_backend_is_sqlite(tmp_path):
    data = example_sections()
    data["milter"]["database"] = str(tmp_path / "a.db")
    store = open_store(parse_config(dump_toml(data)))
    assert isinstance(store, SQLiteStore)
    store.close()


@pytest.mark.parametrize("state, problem", [
    ({"backend": "memcached"}, "state.backend"),
    ({"redis_url": "http://127.0.0.1:6379"}, "state.redis_url"),
    ({"redis_url": "redis://:hunter2@127.0.0.1:6379/0"}, "redis_password_file"),
    ({"timeout": "0s"}, "state.timeout"),
    ({"backend": "redis", "redis_password_file": "/nonexistent/pass"}, "no such file"),
    ({"sentinel": "x"}, "state.sentinel: unknown key"),
])
def test_state_settings_are_validated_with_their_key_path(state, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(dump_toml(example_sections(state=state)))
    assert problem in str(err.value.problems)
    assert "hunter2" not in str(err.value.problems)


def test_urls_are_logged_without_credentials():
    assert describe_url("redis://user:pw@10.0.0.5:6380/2") == "redis://10.0.0.5:6380/2"
    assert describe_url("unix:///run/redis/redis.sock?db=1") == \
        "unix:///run/redis/redis.sock"


def test_parallel_copies_on_one_host_see_each_other_before_redis_has_them(hosts):
    a, _ = hosts
    found: list[dedup.Match | None] = []
    start = threading.Barrier(8)
    pendings = [Pending() for _ in range(8)]

    def copy(n: int) -> None:
        start.wait()
        found.append(a.check_and_remember(fp("<same@x>"), remember, pending=pendings[n]))

    threads = [threading.Thread(target=copy, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # none committed yet: the later copies found the first in memory
    assert sum(m is None for m in found) == 1
    for pending in pendings:
        a.abort(pending)
    assert a.check_and_remember(fp("<same@x>"), lambda m: None) is None
