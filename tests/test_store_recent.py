"""The writer thread gathers rows for a moment before a commit; in that moment the
in-memory index must answer for them, near duplicates included."""

from __future__ import annotations

import sqlite3

from helpdesk_milter import dedup
from helpdesk_milter.store import OutboxRow, Remember, SQLiteStore

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


def test_once_written_the_database_answers_for_near_duplicates(tmp_path):
    clock = Clock()
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    try:
        store.check_and_remember(fp(REQUEST, "<a@mairie>"), remember_watched)
        store.flush()
        assert not store._recent.by_band       # on disk: the bands are left to the file
        # ... and the fingerprint is let go: the exact keys of thousands of entries
        # stay for minutes, their signatures must not (the soak test's RSS caught it)
        assert [e.fp for e in store._recent.order] == [None]
        clock.now += 3600
        match = store.check_and_remember(fp(RESEND, "<b@mairie>"), remember_watched)
        assert match is not None and match.kind == "text" and match.earlier_rowid > 0
        assert len(store._recent.band_order) == 1     # the old entry's bands are gone
    finally:
        store.close()


def test_an_aborted_entry_takes_its_band_keys_back(tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    try:
        entry = store._recent.add(fp(REQUEST, "<a@mairie>"), remember_watched(None), 1.0)
        assert store._recent.by_band
        store._recent.remove(entry)
        assert not store._recent.by_band and not store._recent.by_key
    finally:
        store.close()


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
