"""The Redis state backend against a real redis-server on a private loopback port.

Two ``RedisStore`` instances with one key prefix and their own SQLite files play
two MX hosts.  Shared: duplicates (Message-ID, text, near text), guidance limits
and the atomic claim; per host: decisions and the outbox.  Each host holds the
newest rows of every host in memory, the others' received through a Redis stream:
a lookup memory can answer waits for no round trip, the others for one, and the
answer is the same either way.  The faults are real: the server is killed,
stopped with SIGSTOP (it accepts and never answers), restarted and flushed, and
the mail flows per ``on_error`` while it is away.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis

from bench.mix import generate
from helpdesk_milter import dedup, redis_store
from helpdesk_milter.config import ConfigError, parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from helpdesk_milter.redis_store import RedisStore, StateUnavailable, describe_url, open_store
from helpdesk_milter.store import OutboxRow, Pending, Remember, SQLiteStore
from support.mail import as_bytes, make_message
from support.milterproc import dump_toml
from support.net import wait_until
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


def in_step(*stores: RedisStore) -> None:
    """Wait until each store's reader follows the stream (memory answers lookups)."""
    for store in stores:
        wait_until(lambda s=store: s._live, 10, "the reader in step")


def resynced(store: RedisStore, before: int) -> None:
    """Wait until the store's reader lost its place and started in step again."""
    wait_until(lambda: store.resyncs > before and store._live, 10, "the reader again in step")


READERS: list[RedisStore] = []     # stores whose stream reader's connection is no trip


def counting_client(port: int, sent: list[bytes]) -> redis.Redis:
    """A client whose connections record the commands the calling thread sends: what
    a message waits for.  The writer's are off its path, and so is the stream reader's
    connection (a lookup may take in what arrived there and ask for what comes next,
    which it does not wait for)."""
    me = threading.get_ident()

    class Counting(redis.Connection):
        def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
            if threading.get_ident() == me and \
                    not any(self is store._reader_conn for store in READERS):
                packed = b"".join(command) if isinstance(command, list) else command
                name = packed.split(b"\r\n")[2].upper()
                if name not in (b"HELLO", b"CLIENT", b"AUTH", b"SELECT", b"PING"):
                    sent.append(name)   # (a new connection's handshake is no trip)
            return super().send_packed_command(command, check_health)

    return redis.Redis(connection_pool=redis.ConnectionPool(
        host="127.0.0.1", port=port, connection_class=Counting))


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


def test_a_message_memory_can_answer_waits_for_no_round_trip(redis_server,  # noqa: F811
                                                               tmp_path):
    sent: list[bytes] = []
    client = counting_client(redis_server.port, sent)
    store = RedisStore(redis_server.url, local=SQLiteStore(tmp_path / "a.db"),
                       key_prefix="trips:", client=client)
    READERS.append(store)
    in_step(store)
    store.check_and_remember(fp("<warm@x>"), remember)
    store.flush()
    for n in range(5):
        pending = Pending()
        sent.clear()
        store.check_and_remember(fp(f"<{n}@x>", text=f"{TEXT} numéro {n}"), remember,
                                 pending=pending)
        assert sent == [], sent              # answered from memory, numbered from a block
        store.commit(pending)
        store.flush()                        # (filed by the writer: off the path)
    sent.clear()
    again = store.check_and_remember(fp("<3@x>", text=f"{TEXT} numéro 3"), lambda m: None)
    assert again is not None and again.of_message_id == "<3@x>" and sent == []
    store.close()


def test_a_message_memory_cannot_answer_waits_for_one_round_trip(redis_server,  # noqa: F811
                                                                 tmp_path):
    """Out of step (here: told so), every lookup asks Redis, as before the mirror:
    one round trip; a server that forgot the script gets it with the lookup."""
    sent: list[bytes] = []
    client = counting_client(redis_server.port, sent)
    store = RedisStore(redis_server.url, local=SQLiteStore(tmp_path / "a.db"),
                       key_prefix="trips-out:", client=client)
    READERS.append(store)
    store._in_step = lambda: False  # type: ignore[method-assign]
    store.check_and_remember(fp("<warm@x>"), remember)     # loads the script once
    store.flush()
    for n in range(5):
        sent.clear()
        store.check_and_remember(fp(f"<{n}@x>", text=f"{TEXT} numéro {n}"), remember)
        assert sent == [b"EVALSHA"], sent
    store.flush()
    redis.Redis(port=redis_server.port).script_flush()
    sent.clear()
    assert store.check_and_remember(fp("<0@x>", text=f"{TEXT} numéro 0"),
                                    lambda m: None) is not None
    assert sent == [b"EVALSHA", b"EVAL"], sent   # refused, then sent with the lookup
    sent.clear()
    store.check_and_remember(fp("<miss2@x>"), lambda m: None)
    assert sent == [b"EVALSHA"], sent            # and it is known again
    store.close()


def other_host(redis_server: RedisServer, path: Path,  # noqa: F811
               prefix: str) -> tuple[RedisStore, list[bytes]]:
    """A second host's store on the same Redis and key prefix, its commands counted."""
    sent: list[bytes] = []
    store = RedisStore(redis_server.url, local=SQLiteStore(path), key_prefix=prefix,
                       client=counting_client(redis_server.port, sent))
    READERS.append(store)
    return store, sent


def two_hosts(redis_server: RedisServer,  # noqa: F811
              tmp_path: Path) -> tuple[RedisStore, RedisStore, list[bytes]]:
    """Hosts a and b sharing one Redis, both readers in step; b's commands counted."""
    a = StateBackend("redis", redis_server).make(tmp_path / "a.db")
    b, sent = other_host(redis_server, tmp_path / "b.db", a.prefix)
    in_step(a, b)
    return a, b, sent


def test_another_hosts_rows_reach_memory_through_the_stream(redis_server,  # noqa: F811
                                                            tmp_path):
    a, b, sent = two_hosts(redis_server, tmp_path)
    assert a.check_and_remember(fp("<s1@mairie>"), remember) is None
    a.flush()              # filed: the entry is on its way to b's reader, or there
    found = b.check_and_remember(fp("<s1@mairie>", text="TR: voir plus bas"), remember)
    assert found is not None and found.kind == "message-id", found
    near = b.check_and_remember(fp("<s2@mairie>", text=EDITED), remember)
    assert near is not None and near.kind == "text"
    assert sent == []                            # both from memory
    assert len(b._mirror) == 3
    b.flush()
    # and b's rows reach a likewise
    wait_until(lambda: len(a._mirror) == 3, 5, "b's rows in a's memory")
    a.close()
    b.close()


def test_a_reader_that_lost_its_place_starts_again_and_redis_answers_meanwhile(
        redis_server, tmp_path):  # noqa: F811
    a, b, sent = two_hosts(redis_server, tmp_path)
    before = b.resyncs
    texts = [f"{TEXT} (poste {n}, bureau {n + 10})" for n in range(4)]
    with b._lock:          # b's reader cannot take anything in meanwhile
        for n, text in enumerate(texts):
            a.check_and_remember(fp(f"<gap{n}@x>", text=text), remember)
            a.flush()
        # entries b was not sent yet are trimmed away: b will see a gap
        redis.Redis(port=redis_server.port).xtrim(f"{a.prefix}s", maxlen=0, approximate=False)
        a.check_and_remember(fp("<gap-after@x>"), lambda m: WATCHED)
        a.flush()
    resynced(b, before)
    redis.Redis(port=redis_server.port).script_load(redis_store._LOOKUP)
    for n in range(len(texts)):
        sent.clear()
        found = b.check_and_remember(fp(f"<gap{n}@x>", text="TR: voir plus bas"),
                                     lambda m: None)
        assert found is not None and found.of_message_id == f"<gap{n}@x>", (n, found)
        # the keys of rows filed before it started again: Redis answers for them
        assert sent == [b"EVALSHA"], sent
    sent.clear()
    assert b.check_and_remember(fp("<new@x>", text="Le site web de la médiathèque affiche "
                                   "une erreur 502 depuis hier soir, merci"),
                                remember) is None
    assert sent == []                            # a new request: memory answers
    a.close()
    b.close()


def test_a_host_started_later_seeds_from_redis(redis_server, tmp_path):  # noqa: F811
    a = StateBackend("redis", redis_server).make(tmp_path / "a.db")
    a.check_and_remember(fp("<early@x>"), remember)
    a.flush()
    a.close()
    c, sent = other_host(redis_server, tmp_path / "c.db", a.prefix)
    in_step(c)
    assert c._beyond is not None and c._beyond.may_hold(dedup.lookup_keys(fp("<early@x>")),
                                                        time.time())
    found = c.check_and_remember(fp("<early@x>", text="TR: voir plus bas"), lambda m: None)
    assert found is not None and found.of_message_id == "<early@x>"
    assert sent == [b"EVALSHA"]                  # a key filed before it started: Redis
    sent.clear()
    assert c.check_and_remember(fp("<other@x>", text="Le site web de la médiathèque "
                                   "affiche une erreur 502 depuis hier soir, merci"),
                                remember) is None
    assert sent == []
    c.close()


def test_a_message_that_earns_a_guidance_mail_waits_for_one_round_trip(
        redis_server, tmp_path):  # noqa: F811
    """The claim (which checks the limits itself): the engine does not read the
    limits first on a store whose claim checks them; the lookup is memory's."""
    sent: list[bytes] = []

    data = example_sections(autoreply={"enabled": True, "trust": "any"})
    data["milter"]["database"] = str(tmp_path / "a.db")
    config = parse_config(dump_toml(data))
    client = counting_client(redis_server.port, sent)
    store = RedisStore(redis_server.url, local=SQLiteStore(tmp_path / "a.db"),
                       key_prefix="guided:", client=client)
    READERS.append(store)
    in_step(store)
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
        assert sent == [b"EVALSHA"], sent      # the claim: what the message waits for
        engine.commit(outcome)
        store.flush()                          # (the writer files the row: off the path)
    # a sender already guided: still two, and the claim says why not
    sent.clear()
    outcome = engine.process_raw(Envelope(mail_from="secretariat@mairie-exemple.fr",
                                          rcpts=("contact@example.org",), queue_id="G3"),
                                 request(3), defer=True)
    assert outcome.decision.guidance == "suppressed:rate-limited"
    assert sent == [b"EVALSHA"], sent
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


MIX = generate(200, seed=1)


def mix_decisions(tmp_path: Path, store_of) -> list[object]:  # type: ignore[no-untyped-def]
    ticks = iter(range(1_800_000_000, 1_800_000_000 + 7 * 10_000, 7))
    clock = lambda: float(next(ticks))   # noqa: E731  the same times in every pass
    data = example_sections()
    data["milter"]["database"] = str(tmp_path / "cfg.db")
    store = store_of(clock)
    engine = Engine(parse_config(dump_toml(data)), store=store, clock=clock,
                    dnsfunc=lambda *a, **k: None)
    try:
        return [engine.process_raw(Envelope(mail_from=m.mail_from, rcpts=m.rcpts,
                                            queue_id=f"Q{m.index:05d}"), m.raw).decision
                for m in MIX]
    finally:
        store.close()


def test_memory_and_redis_give_the_same_decisions_as_the_sqlite_store(redis_server,  # noqa: F811
                                                                       tmp_path):
    """The bench mix (resends, forwards, near-duplicate templates) decided with the
    reader in step (memory answers), out of step (Redis answers every lookup), and
    with a memory of 8 rows (the filter sends a lookup to Redis whenever a key may
    have rows beyond them): the same decisions, one by one, as the SQLite store's."""
    backend = StateBackend("redis", redis_server)
    n = iter(range(100))
    asked: list[int] = []

    def redis_store_of(mode: str):  # type: ignore[no-untyped-def]
        def make(clock):  # type: ignore[no-untyped-def]
            store = backend.make(tmp_path / f"{mode}{next(n)}.db", clock=clock)
            if mode == "out":
                store._in_step = lambda: False
            elif mode == "small":
                store._mirror.size = 8
                find = store._find

                def counted(*args):  # type: ignore[no-untyped-def]
                    asked.append(1)
                    return find(*args)
                store._find = counted
            if mode != "out":
                in_step(store)
            return store
        return make

    sqlite = mix_decisions(tmp_path, lambda clock: SQLiteStore(tmp_path / "s.db", clock=clock,
                                                               similarity=0.8))
    assert sum(d.duplicate is not None for d in sqlite) > 20
    for mode in ("in", "out", "small"):
        other = mix_decisions(tmp_path, redis_store_of(mode))
        differ = [(MIX[i].index, MIX[i].kind, a.duplicate, b.duplicate)
                  for i, (a, b) in enumerate(zip(sqlite, other, strict=True)) if a != b]
        assert not differ, (mode, differ[:10])
    assert 10 < len(asked) < len(MIX)      # the small memory asked Redis, not always


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
    store.flush()                      # the row filed: buckets, stream and all
    keys = store.client.keys(f"{store.prefix}*")
    assert keys
    c = store.client
    for key in keys:
        kind = c.type(key)
        values = {b"string": lambda k: [c.get(k)],
                  b"list": lambda k: c.lrange(k, 0, -1),
                  b"zset": lambda k: c.zrange(k, 0, -1),
                  b"hash": lambda k: [x for kv in c.hgetall(k).items() for x in kv],
                  b"stream": lambda k: [x for _, entry in c.xrange(k) for kv in entry.items()
                                        for x in kv]}[kind](key)
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
    """A hung server is noticed by the reader (its XREAD ``timeout`` late), not by a
    message: meanwhile lookups are answered from memory (as if they had come a
    moment earlier) and wait for nothing; then mail flows without shared state."""
    a = StateBackend("redis", server).make(tmp_path / "a.db", timeout=0.2)
    in_step(a)
    a.check_and_remember(fp("<warm@x>"), remember)
    a.flush()
    server.pause()
    try:
        started = time.monotonic()
        a.check_and_remember(fp("<slow@x>"), remember)
        first = time.monotonic() - started
        wait_until(lambda: not a.available, 5, "the outage noticed")
        noticed = time.monotonic() - started
        started = time.monotonic()
        for n in range(20):
            assert a.check_and_remember(fp(f"<slow-{n}@x>"), remember) is None
        rest = time.monotonic() - started
    finally:
        server.resume()
    assert first < 0.2 * 2 + 0.3, first     # the timeout, not the server's mercy
    assert noticed < a.BLOCK + 0.2 + 0.5, noticed
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
    in_step(a)
    before = a.resyncs
    redis.Redis(port=server.port).flushall()
    resynced(a, before)               # the reader's next wake: at most BLOCK later
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
    in_step(a)
    before = a.resyncs
    redis.Redis(port=server.port).flushall()
    resynced(a, before)               # ids from before the flush are given up
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
