"""The writer thread gathers rows for a moment before a commit; in that moment the
rows held in memory must answer for them, near duplicates included.  A lookup that
cannot match costs no SQLite trip (the filter of the window's keys)."""

from __future__ import annotations

import random
import sqlite3

from helpdesk_milter import dedup
from helpdesk_milter.store import KeyFilter, OutboxRow, Pending, Remember, SQLiteStore

REQUEST = ("Bonjour, depuis ce matin la messagerie de la mairie refuse tous les envois "
           "vers l'extérieur avec une erreur 550 relais refusé. Les agents de l'accueil "
           "ne peuvent plus répondre aux administrés. Pouvez-vous regarder rapidement ?")
RESEND = REQUEST.replace("Les agents de l'accueil", "Les trois agents du guichet")
OTHER = ("Bonjour, pourriez-vous nous envoyer le devis pour l'hébergement de trois sites "
         "supplémentaires et la migration des boîtes de l'école, avec les tarifs 2027 ?")


def fp(text, message_id, subject="Messagerie bloquée"):
    return dedup.fingerprint_text(subject, text, sender="secretariat@mairie-exemple.fr",
                                  structure="mairie-exemple", message_id=message_id)


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def remember_watched(match):
    return Remember(side="watched", assistance="mairie-exemple@assistance.example.org",
                    routed=True)


def on_disk(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("select count(*) from dedup_fingerprints").fetchone()[0]


def test_a_near_duplicate_is_found_before_its_original_reaches_the_disk(tmp_path):
    clock = Clock()
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    store.LINGER = 30.0          # the writer holds the first row for the whole test
    try:
        first, resend = fp(REQUEST, "<a@mairie>"), fp(RESEND, "<b@mairie>")
        assert resend.text_hash != first.text_hash
        assert dedup.near_score(resend, first, 0.8) is not None
        assert store.check_and_remember(first, remember_watched) is None
        clock.now += 2
        match = store.check_and_remember(resend, remember_watched)
        assert on_disk(tmp_path / "state.db") == 0      # the lookup could not use the file
        assert match is not None and match.kind == "text" and 0.8 <= match.score < 1.0
        assert match.of_message_id == "<a@mairie>" and match.assistance_has_it
        assert store.check_and_remember(fp(OTHER, "<c@mairie>"), remember_watched) is None
    finally:
        store.close()                 # commits at once, without waiting out LINGER
    assert on_disk(tmp_path / "state.db") == 3


def test_once_written_the_database_answers_for_near_duplicates(tmp_path, monkeypatch):
    monkeypatch.setattr(SQLiteStore, "RECENT_ROWS", 0)   # no row on disk held in memory
    clock = Clock()
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    try:
        store.check_and_remember(fp(REQUEST, "<a@mairie>"), remember_watched)
        store.flush()
        # on disk: memory lets the row go (the soak test's RSS caught a leak of
        # fingerprints held for minutes)
        assert len(store._unwritten) == 0 and not store._unwritten.by_key
        clock.now += 3600
        match = store.check_and_remember(fp(RESEND, "<b@mairie>"), remember_watched)
        assert match is not None and match.kind == "text" and match.earlier_rowid == 1
    finally:
        store.close()


def test_an_aborted_entry_takes_its_keys_back(tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    pending = Pending()
    try:
        store.check_and_remember(fp(REQUEST, "<a@mairie>"), remember_watched, pending=pending)
        assert store._unwritten.by_key
        store.abort(pending)
        assert not store._unwritten.by_key and len(store._unwritten) == 0
        assert store.check_and_remember(fp(REQUEST, "<b@mairie>"), remember_watched) is None
    finally:
        store.close()


def test_a_miss_costs_no_sqlite_trip(tmp_path, monkeypatch):
    """The filter of the window's keys answers "no" before the file is asked."""
    store = SQLiteStore(tmp_path / "state.db")
    asked = []
    real = dedup.find_duplicate
    monkeypatch.setattr(dedup, "find_duplicate", lambda *a, **k: asked.append(1) or real(*a, **k))
    try:
        assert store.check_and_remember(fp(REQUEST, "<a@mairie>"), remember_watched) is None
        assert store.check_and_remember(fp(OTHER, "<c@mairie>"), remember_watched) is None
        assert asked == []
        store.flush()
        assert store.check_and_remember(fp(RESEND, "<a@mairie>"), remember_watched)
        assert asked == [1]
    finally:
        store.close()


def test_the_filter_is_rebuilt_from_the_file_and_forgets_with_the_window(tmp_path):
    clock = Clock()
    path = tmp_path / "state.db"
    store = SQLiteStore(path, clock=clock, window=3600.0)
    store.check_and_remember(fp(REQUEST, "<a@mairie>"), remember_watched)
    store.close()
    clock.now += 60
    store = SQLiteStore(path, clock=clock, window=3600.0)      # a restart
    try:
        keys = dedup.lookup_keys(fp(REQUEST, "<a@mairie>"))
        assert store._filter is not None and store._filter.may_hold(keys, clock.now)
        match = store.check_and_remember(fp(REQUEST, "<b@mairie>"), remember_watched)
        assert match is not None and match.kind == "text"
        assert store._next_id == 3                  # numbering goes on from the file
        clock.now += 3 * 3600                        # past the window: all forgotten
        store._filter.add([12345], clock.now)
        assert not store._filter.may_hold(keys, clock.now)
    finally:
        store.close()


def test_the_key_filter_never_says_no_to_a_key_it_holds():
    rng = random.Random(5)
    held = [rng.getrandbits(64) - (1 << 63) for _ in range(200_000)]
    f = KeyFilter(3600.0, capacity=1000)            # grows by generations
    for n in range(0, len(held), 20):
        f.add(held[n:n + 20], 100.0 + n / 1000)
    assert all(f.may_hold([k], 400.0) for k in held[::97])
    others = [rng.getrandbits(64) - (1 << 63) for _ in range(20_000)]
    false = sum(f.may_hold([k], 400.0) for k in others)
    assert false < 20_000 * 0.01, false             # well under 1 % per key


def test_guided_senders_kept_in_memory_are_pruned(tmp_path):
    """One entry per guided sender lived as long as the process; past GUIDED_MAX the
    ones older than ``every`` go (the outbox table still answers for them)."""
    clock = Clock()
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    store.GUIDED_MAX = 5
    try:
        for n in range(12):
            to = f"client{n}@mairie-exemple.fr"
            assert store.queue_guidance(
                to, lambda to=to: OutboxRow(created=clock.now, to_addr=to, queue_id="Q",
                                            lang="fr", cases="rerouted", message=b"x"),
                every=60.0, per_hour=1000) == "queued"
            clock.now += 61.0
        assert len(store._guided) <= store.GUIDED_MAX
        # still one mail per sender per ``every``: the last one is remembered
        assert store.guidance_allowed("client11@mairie-exemple.fr", every=3600.0,
                                      per_hour=1000) == "rate-limited"
    finally:
        store.close()


def test_the_newest_rows_on_disk_answer_from_memory(tmp_path, monkeypatch):
    """Rows already written stay in memory, the newest RECENT_ROWS of them: a lookup of
    their keys reads no file (the store's filter of the file's keys says no)."""
    store = SQLiteStore(tmp_path / "state.db")
    asked = []
    real = dedup.find_duplicate

    def spy(db, *a, **k):
        asked.append(db is not None and k.get("on_file") != [])
        return real(db, *a, **k)

    monkeypatch.setattr(dedup, "find_duplicate", spy)
    try:
        store.check_and_remember(fp(REQUEST, "<a@mairie>"), remember_watched)
        store.flush()
        assert on_disk(tmp_path / "state.db") == 1 and len(store._unwritten) == 1
        match = store.check_and_remember(fp(RESEND, "<b@mairie>"), remember_watched)
        assert match is not None and match.kind == "text" and match.earlier_rowid == 1
        assert asked == [False]                     # memory answered, not the file
    finally:
        store.close()


def test_rows_memory_lets_go_are_found_in_the_file(tmp_path, monkeypatch):
    """Beyond RECENT_ROWS the oldest rows leave memory; their keys then send the
    lookup to the file, which finds them as before: memory stays bounded and the
    answers do not change."""
    monkeypatch.setattr(SQLiteStore, "RECENT_ROWS", 2)
    clock = Clock()
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    try:
        store.check_and_remember(fp(REQUEST, "<a@mairie>"), remember_watched)
        store.flush()
        for n in range(5):
            clock.now += 10
            text = f"Bonjour, merci de créer le compte numéro {n} pour la bibliothèque " \
                   f"de l'école {n} avec un accès au partage {n} des enseignants."
            store.check_and_remember(fp(text, f"<{n}@mairie>", subject=f"compte {n}"),
                                     remember_watched)
            store.flush()
        assert len(store._unwritten) == 2 and 1 not in store._unwritten._rows
        keys = dedup.lookup_keys(fp(REQUEST, "<a@mairie>"))
        assert store._on_file is not None and store._on_file.may_hold(keys, clock.now)
        clock.now += 10
        match = store.check_and_remember(fp(RESEND, "<b@mairie>"), remember_watched)
        assert match is not None and match.kind == "text" and match.earlier_rowid == 1
        assert match.of_message_id == "<a@mairie>"
    finally:
        store.close()


def test_the_filter_masks_of_a_lookup_are_each_keys_mask():
    rng = random.Random(7)
    keys = [rng.randrange(-2**63, 2**63) for _ in range(2000)] + [0, -1, 2**63 - 1, -2**63]
    assert KeyFilter.masks(keys) == [KeyFilter._mask(k) for k in keys]
