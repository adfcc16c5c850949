"""Duplicate detection: normalisation, fingerprints, the labelled pairs, the store.

The pairs in ``tests/dedup_pairs/`` are real-looking mails as common clients
produce them (see ``pairs.toml``); adding a pair needs no code.  Storage tests
use a real SQLite file, in WAL mode as the daemon opens it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils.migrations import Migrations

from helpdesk_milter import dedup
from helpdesk_milter.dedup import Fingerprint, find_duplicate, fingerprint, insert
from helpdesk_milter.message import ParsedMessage

PAIRS_DIR = Path(__file__).parent / "dedup_pairs"
WINDOW = 72 * 3600.0
THRESHOLD = 0.8          # the configuration's default dedup.similarity

REQUEST = """Bonjour,

Depuis ce matin l'imprimante du secrétariat affiche « Remplacer la cartouche de toner »
alors que nous avons mis une cartouche neuve hier soir. Impossible d'imprimer quoi que
ce soit, même en noir et blanc. Pouvez-vous passer ou nous dire quoi faire ?

Merci d'avance,
Marie Durand
"""


def raw_message(body: str, *, subject: str = "Problème imprimante",
                message_id: str = "<m1@mairie-exemple.fr>",
                sender: str = "marie.durand@mairie-exemple.fr") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "alice@example.org"
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    return msg.as_bytes()


def fp_of(body: str, *, sender: str = "marie.durand@mairie-exemple.fr",
          structure: str | None = "mairie-exemple", **headers: str) -> Fingerprint:
    return fingerprint(ParsedMessage(raw_message(body, sender=sender, **headers)),
                       sender=sender, structure=structure)


# --- normalisation ------------------------------------------------------------------

@pytest.mark.parametrize("subject", [
    "Problème imprimante", "RE: Problème imprimante", "TR: Problème imprimante",
    "Fwd: Problème imprimante", "Réf : Problème imprimante", "RE: TR: Fwd: Problème imprimante",
    "[Fwd: Problème imprimante]", "  PROBLEME   imprimante ", "[EXT] Problème imprimante",
])
def test_subject_prefixes_case_and_accents_do_not_matter(subject: str) -> None:
    assert fp_of(REQUEST, subject=subject).text_hash == fp_of(REQUEST).text_hash


def test_whitespace_punctuation_case_and_apostrophes_do_not_matter() -> None:
    typed_on_a_phone = (REQUEST.replace("'", "’").replace(" ", "  ").replace("\n", " \n\t")
                        .replace(",", " ,").replace("«", '"').upper())
    assert fp_of(typed_on_a_phone).text_hash == fp_of(REQUEST).text_hash


@pytest.mark.parametrize("tail", [
    "\n-- \nMarie Durand\nSecrétaire de mairie\nTél. 04 75 12 34 56\n",
    "\nEnvoyé de mon iPhone\n",
    "\nSent from my iPhone\n",
    "\nEnvoyé depuis mon mobile Samsung\n",
    "\nLe mar. 4 mars 2025 à 08:47, Alice <alice@example.org> a écrit :\n> Bonjour Marie,\n"
    "> pouvez-vous préciser le modèle ?\n",
    "\nOn Tue, Mar 4, 2025 at 8:47 AM Alice <alice@example.org> wrote:\n> Which model?\n",
])
def test_signatures_footers_and_quoted_history_do_not_matter(tail: str) -> None:
    assert fp_of(REQUEST + tail).text_hash == fp_of(REQUEST).text_hash


@pytest.mark.parametrize("greeting", ["Bonjour Alice,", "Hello Bob!", "Madame, Monsieur,",
                                      "Bonjour", "Dear Sir or Madam,"])
def test_greeting_line_does_not_matter(greeting: str) -> None:
    assert fp_of(REQUEST.replace("Bonjour,", greeting)).text_hash == fp_of(REQUEST).text_hash


def test_greeting_with_the_request_on_the_same_line_is_kept() -> None:
    one_liner = "Bonjour, impossible d'imprimer depuis ce matin sur la Ricoh du secrétariat"
    other = "Bonjour, impossible de scanner depuis ce matin sur la Ricoh du secrétariat"
    assert fp_of(one_liner).text_hash and fp_of(one_liner).text_hash != fp_of(other).text_hash


ORIGINAL_HEADERS_FR = ("De : Marie Durand <marie.durand@mairie-exemple.fr>\n"
                       "Envoyé : mardi 4 mars 2025 08:47\nÀ : Alice <alice@example.org>\n"
                       "Objet : Problème imprimante\n\n")


@pytest.mark.parametrize("banner", [
    "---------- Forwarded message ---------\nFrom: Marie Durand <marie.durand@mairie-exemple.fr>\n"
    "Date: Tue, 4 Mar 2025 at 08:47\nSubject: Problème imprimante\nTo: <alice@example.org>\n\n\n",
    "---------- Message transféré ---------\n" + ORIGINAL_HEADERS_FR,
    "-------- Message transféré --------\nSujet : \tProblème imprimante\n"
    "Date : \tTue, 4 Mar 2025 08:47:12 +0100\nDe : \tMarie <marie.durand@mairie-exemple.fr>\n\n\n",
    "Begin forwarded message:\n\nFrom: Marie <marie.durand@mairie-exemple.fr>\n"
    "Subject: Problème imprimante\nDate: 4 March 2025 at 08:47:12 CET\nTo: alice@example.org\n\n",
    "Début du message réexpédié :\n\nDe: Marie <marie.durand@mairie-exemple.fr>\n"
    "Objet: Problème imprimante\n\n",
    "________________________________\n" + ORIGINAL_HEADERS_FR,
    "-----Message d'origine-----\n" + ORIGINAL_HEADERS_FR,
    "-----Original Message-----\nFrom: Marie\nSent: Tuesday, March 4, 2025 8:47 AM\n"
    "Subject: Problème imprimante\n\n",
])
@pytest.mark.parametrize("note", ["", "Bonjour,\n\nJe vous transfère ma demande.\n\nMarie\n\n",
                                  "Envoyé de mon iPhone\n\n"])
def test_inline_forward_fingerprints_like_the_original(banner: str, note: str) -> None:
    forward = fp_of(note + banner + REQUEST, subject="TR: Problème imprimante",
                    message_id="<fwd@mairie-exemple.fr>")
    assert forward.forward
    assert forward.text_hash == fp_of(REQUEST).text_hash


def test_iphone_forward_quoted_with_angle_brackets_fingerprints_like_the_original() -> None:
    quoted = "\n".join("> " + line if line else ">" for line in
                       ("De: Marie <marie.durand@mairie-exemple.fr>\nObjet: Problème imprimante\n\n"
                        + REQUEST).split("\n"))
    forward = fp_of("\n\nEnvoyé de mon iPhone\n\nDébut du message réexpédié :\n\n" + quoted,
                    subject="Fwd: Problème imprimante")
    assert forward.text_hash == fp_of(REQUEST).text_hash


def test_forward_as_attachment_fingerprints_like_the_original() -> None:
    original = raw_message(REQUEST, message_id="<orig@mairie-exemple.fr>")
    outer = EmailMessage()
    outer["From"] = "marie.durand@mairie-exemple.fr"
    outer["Subject"] = "TR: Problème imprimante"
    outer["Message-ID"] = "<outer@mairie-exemple.fr>"
    outer.set_content("Je vous transfère ma demande.\n")
    outer.add_attachment(ParsedMessage(original).msg, filename="demande.eml")
    forward = fingerprint(ParsedMessage(outer.as_bytes()), sender="Marie.Durand@mairie-exemple.fr",
                          structure="mairie-exemple")
    assert forward.message_id == "<outer@mairie-exemple.fr>"
    assert forward.original_id == "<orig@mairie-exemple.fr>"
    assert forward.forward and forward.sender == "marie.durand@mairie-exemple.fr"
    assert forward.text_hash == fp_of(REQUEST).text_hash


def test_a_new_request_quoting_an_older_one_is_its_own_request() -> None:
    new = ("Bonjour,\n\nAutre souci aujourd'hui : la messagerie refuse mon mot de passe depuis "
           "la mise à jour de ce matin, sur le poste comme sur le téléphone, et les collègues "
           "de l'accueil ont le même problème. Pouvez-vous regarder en priorité ?\n\nPour info, "
           "mon message d'hier :\n\n")
    fp = fp_of(new + "---------- Forwarded message ---------\nFrom: Marie\n\n" + REQUEST,
               subject="Messagerie bloquée")
    assert not fp.forward
    assert fp.text_hash != fp_of(REQUEST).text_hash
    assert dedup.similarity(fp, fp_of(REQUEST)) < THRESHOLD


def test_a_reply_with_an_outlook_block_is_not_a_forward() -> None:
    reply = ("Le modèle est une Ricoh MP C3004, elle est au premier étage à côté de l'accueil, "
             "vous pouvez passer quand vous voulez cet après-midi.\n\n" + ORIGINAL_HEADERS_FR
             + "Quel est le modèle de l'imprimante ?\n")
    fp = fp_of(reply, subject="RE: Problème imprimante")
    assert not fp.forward
    assert fp.text_hash == fp_of(reply.split("De :")[0], subject="Problème imprimante").text_hash


@pytest.mark.parametrize("body", ["Merci !", "Merci beaucoup, ça remarche !\n\nMarie",
                                  "OK pour demain 14h.", "", "   \n\n  "])
def test_short_texts_give_no_text_fingerprint(body: str) -> None:
    fp = fp_of(body, message_id="<short@x>")
    assert (fp.text_hash, fp.minhash, fp.shingles) == ("", (), 0)
    assert fp.message_id == "<short@x>"


def test_fingerprint_shape() -> None:
    fp = fp_of(REQUEST)
    assert len(fp.text_hash) == 32 and int(fp.text_hash, 16) >= 0
    assert len(fp.minhash) == dedup.SIGNATURE_SIZE
    assert all(0 <= v < 2**32 for v in fp.minhash)
    assert fp.shingles > 20
    assert list(fp.idents) == sorted(fp.idents) and len(fp.idents) <= dedup.MAX_IDENTS
    assert fp.scope == "s:mairie-exemple"
    assert fp_of(REQUEST, structure=None).scope == "a:marie.durand@mairie-exemple.fr"
    assert fp_of(REQUEST) == fp_of(REQUEST)


def test_fingerprint_text_agrees_with_fingerprint() -> None:
    fp = dedup.fingerprint_text("TR: Problème imprimante", REQUEST,
                                sender="Marie.Durand@mairie-exemple.fr",
                                structure="mairie-exemple", message_id="<m1@mairie-exemple.fr>")
    assert fp == fp_of(REQUEST)


def test_fingerprints_are_the_same_in_every_process() -> None:
    # Signatures are stored: they must not depend on Python's per-process hash salt.
    code = ("from helpdesk_milter.dedup import fingerprint_text as f;"
            "import sys; fp = f('Problème imprimante', sys.stdin.read(), sender='a@b', "
            "structure='s'); print(fp.text_hash, fp.minhash, fp.idents)")
    outputs = set()
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", code], input=REQUEST, text=True,
                                capture_output=True, check=True,
                                env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.add(result.stdout)
    fp = dedup.fingerprint_text("Problème imprimante", REQUEST, sender="a@b", structure="s")
    assert outputs == {f"{fp.text_hash} {fp.minhash} {fp.idents}\n"}


def test_non_latin_text_gets_a_fingerprint() -> None:
    russian = ("Здравствуйте! С утра принтер в секретариате показывает ошибку тонера, хотя "
               "картридж новый. Можете посмотреть сегодня? Спасибо")
    fp = fp_of(russian)
    assert fp.text_hash and len(fp.minhash) == dedup.SIGNATURE_SIZE
    assert dedup.similarity(fp, fp_of(russian.replace("сегодня", "завтра"))) > 0.5


# --- similarity and identifiers -------------------------------------------------------

def test_similarity() -> None:
    a = fp_of(REQUEST)
    assert dedup.similarity(a, a) == 1.0
    edited = fp_of("Je vous renvoie ma demande, je n'ai pas eu de réponse.\n\n" + REQUEST)
    assert THRESHOLD <= dedup.similarity(a, edited) < 1.0
    other = fp_of("Bonjour,\n\nLa numérisation vers e-mail ne fonctionne plus sur le copieur "
                  "de l'accueil, l'écran affiche une erreur de transmission.\n\nMerci")
    assert dedup.similarity(a, other) < 0.3
    assert dedup.similarity(a, fp_of("Merci !")) == 0.0
    assert dedup.similarity(fp_of("Merci !"), fp_of("Merci !")) == 0.0


def test_similarity_of_texts_of_very_different_length_is_jaccard() -> None:
    short = fp_of(REQUEST)
    long = fp_of(REQUEST + "\n".join(f"Ligne {i} d'un long inventaire du matériel informatique "
                                     f"de la mairie, poste numéro {i}." for i in range(40)))
    assert long.shingles > 2 * short.shingles
    assert dedup.similarity(short, long) < 0.5


def test_identifier_conflicts() -> None:
    conflict = dedup.identifiers_conflict
    assert conflict((1, 2, 3), (1, 2, 4))            # 3 vs 4: two instances of a template
    assert not conflict((1, 2, 3), (1, 2, 3, 4))     # an edit added an identifier
    assert not conflict((1, 2, 3), (1, 2))           # ... or removed one
    assert not conflict((), (1, 2))
    full = tuple(range(10, 10 + dedup.MAX_IDENTS))   # a truncated bottom-k sample
    assert not conflict(full, (10, 10 + dedup.MAX_IDENTS + 5))  # 5 beyond the sample
    assert conflict(full, (10, 5))


def test_template_for_two_people_is_not_a_near_duplicate() -> None:
    template = ("Bonjour,\n\nPouvez-vous créer un compte Nextcloud pour {}, qui commence lundi "
                "à l'accueil ? Il faut l'accès aux dossiers partagés Accueil et État civil et le "
                "même quota que les autres agents. Merci de m'envoyer les identifiants.\n\nSophie")
    marie, paul = fp_of(template.format("Marie Dubois")), fp_of(template.format("Paul Lefèvre"))
    assert dedup.similarity(marie, paul) >= THRESHOLD    # the words alone would match...
    assert dedup.identifiers_conflict(marie.idents, paul.idents)  # ...the names do not


def test_signature_numbers_are_not_identifiers() -> None:
    body = REQUEST.replace("Merci d'avance,\nMarie Durand\n", "")
    desktop = fp_of(body + "Cordialement,\nMarie Durand\nSecrétaire de mairie\nTél. 04 75 12 34 56")
    phone = fp_of(body + "Cordialement,\nMarie\n06 71 48 22 19", message_id="<2@x>")
    assert not dedup.identifiers_conflict(desktop.idents, phone.idents)
    assert dedup.similarity(desktop, phone) >= THRESHOLD


# --- hostile input --------------------------------------------------------------------

HOSTILE = {
    "empty": b"",
    "headers only": b"Subject: x\r\n\r\n",
    "nul bytes": b"Subject: a\x00b\r\nMessage-ID: <a\x00@b>\r\n\r\n" + b"mot\x00 de passe " * 500,
    "one huge line": b"Subject: x\r\n\r\n" + b"a b c d e f g " * 15_000,
    "huge line, no spaces": b"Subject: x\r\n\r\n" + b"x" * 100_000,
    "many banners": b"Subject: TR: x\r\n\r\n" + b"---------- Forwarded message ---------\n" * 3000,
    "many outlook blocks": b"Subject: TR: x\r\n\r\n" + b"De : a\nEnvoy\xc3\xa9 : b\n" * 3000,
    "many at signs": b"Subject: x\r\n\r\n" + b"@" * 50_000 + b" a@b " * 5000,
    "unknown charset": b"Subject: x\r\nContent-Type: text/plain; charset=x-nonsense\r\n\r\n"
                       + "créer un compte pour Marie Dubois lundi prochain merci".encode("latin-1"),
    "lying base64": b"Subject: x\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!",
    "broken rfc822": (b"Subject: x\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                      b"Content-Type: message/rfc822\r\n\r\n\x00\xff garbage\r\n--B--\r\n"),
    "deep nesting": b"Subject: x\r\n" + b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(200)) + b"Content-Type: text/plain\r\n\r\nhello\r\n",
    "nested forwards": b"Subject: Fwd: x\r\n\r\n" + b"".join(
        b"---------- Forwarded message ---------\nFrom: a\nSubject: Fwd: x\n\nnote %d\n" % i
        for i in range(100)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_never_raises(name: str) -> None:
    started = time.perf_counter()
    fp = fingerprint(ParsedMessage(HOSTILE[name]), sender="a@b", structure=None)
    assert isinstance(fp, Fingerprint)
    assert time.perf_counter() - started < 5.0   # generous: no pathological slowness


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=3000), st.text(max_size=200))
def test_fingerprint_text_is_total(text: str, subject: str) -> None:
    fp = dedup.fingerprint_text(subject, text, sender="a@b", structure=None)
    assert not fp.minhash or len(fp.minhash) == dedup.SIGNATURE_SIZE
    assert 0.0 <= dedup.similarity(fp, fp) <= 1.0


# --- the labelled pairs ---------------------------------------------------------------

def load_pairs() -> tuple[dict[str, str], list[dict[str, str]]]:
    data = tomllib.loads((PAIRS_DIR / "pairs.toml").read_text(encoding="utf-8"))
    return data["clients"], data["pair"]


CLIENTS, PAIRS = load_pairs()


def structure_of(address: str) -> str | None:
    return CLIENTS.get(address) or CLIENTS.get(address.rpartition("@")[2])


def corpus_fingerprint(name: str) -> Fingerprint:
    msg = ParsedMessage((PAIRS_DIR / name).read_bytes())
    return fingerprint(msg, sender=msg.from_addr, structure=structure_of(msg.from_addr))


def lookup_pair(db: sqlite_utils.Database, pair: dict[str, str]) -> str:
    """Record the first message, look the second up an hour later: the match kind."""
    first, second = corpus_fingerprint(pair["first"]), corpus_fingerprint(pair["second"])
    db.execute(f"DELETE FROM {dedup.KEYS}")
    db.execute(f"DELETE FROM {dedup.FINGERPRINTS}")
    insert(db, first, time=1_000.0, side="watched", assistance=None, routed=True,
           queue_id="Q1")
    match = find_duplicate(db, second, now=4_600.0, window=WINDOW, threshold=THRESHOLD)
    return match.kind if match else "none"


def test_the_pairs_corpus_is_complete() -> None:
    kinds = [p["expect"] for p in PAIRS]
    assert len(PAIRS) >= 30
    assert kinds.count("none") >= 6 and kinds.count("message-id") >= 2
    assert set(kinds) <= {"message-id", "text", "none"}
    used = {p["first"] for p in PAIRS} | {p["second"] for p in PAIRS}
    on_disk = {p.name for p in PAIRS_DIR.glob("*.eml")}
    assert used == on_disk, "every .eml is in a pair and every pair's files exist"


def test_pairs_recall_and_false_duplicates(db: sqlite_utils.Database,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(p, lookup_pair(db, p)) for p in PAIRS]
    duplicates = [(p, got) for p, got in rows if p["expect"] != "none"]
    near_misses = [(p, got) for p, got in rows if p["expect"] == "none"]
    found = sum(got != "none" for _, got in duplicates)
    false_duplicates = [p["second"] for p, got in near_misses if got != "none"]
    recall = found / len(duplicates)
    with capsys.disabled():
        print(f"\ndedup pairs: {len(rows)} pairs; duplicate recall {found}/{len(duplicates)} "
              f"= {recall:.2f}; false duplicates {len(false_duplicates)}/{len(near_misses)}; "
              f"right kind {sum(got == p['expect'] for p, got in rows)}/{len(rows)}")
        for p, got in rows:
            if got != p["expect"]:
                print(f"  expected {p['expect']}, got {got}: {p['second']} ({p['note']})")
    assert recall >= 0.9
    assert false_duplicates == []


@pytest.mark.parametrize("pair", PAIRS, ids=[p["second"].removesuffix(".eml") for p in PAIRS])
def test_pair(db: sqlite_utils.Database, pair: dict[str, str]) -> None:
    assert lookup_pair(db, pair) == pair["expect"], pair["note"]


# --- storage --------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> sqlite_utils.Database:
    """A state database file with the fingerprint schema, applied as a migration."""
    database = sqlite_utils.Database(str(tmp_path / "state.db"), execute_plugins=False)
    database.enable_wal()
    migrations = Migrations("dedup-test")
    migrations()(dedup.create_schema)
    migrations.apply(database)
    return database


def remember(db: sqlite_utils.Database, fp: Fingerprint, *, at: float = 1_000.0,
             side: str = "watched", routed: bool = False,
             assistance: str | None = None) -> int:
    return insert(db, fp, time=at, side=side, assistance=assistance, routed=routed,
                  queue_id="4XyZ1")


def lookup(db: sqlite_utils.Database, fp: Fingerprint, *, at: float = 2_000.0,
           window: float = WINDOW) -> dedup.Match | None:
    return find_duplicate(db, fp, now=at, window=window, threshold=THRESHOLD)


def test_schema(db: sqlite_utils.Database) -> None:
    assert {dedup.FINGERPRINTS, dedup.KEYS} <= set(db.table_names())
    assert "WITHOUT ROWID" in db.table(dedup.KEYS).schema
    assert [i.columns for i in db.table(dedup.FINGERPRINTS).indexes] == [["time"]]
    assert ["fp"] in [i.columns for i in db.table(dedup.KEYS).indexes]
    columns = set(db.table(dedup.FINGERPRINTS).columns_dict)
    assert not columns & {"body", "text", "subject"}, "no text is stored"


def test_insert_and_find_by_message_id_across_structures(db: sqlite_utils.Database) -> None:
    rowid = remember(db, fp_of(REQUEST), side="assistance",
                     assistance="mairie-exemple@assistance.example.org")
    resent = fp_of("Merci !", sender="someone@elsewhere.example", structure="other")
    match = lookup(db, resent)
    assert match is not None
    assert (match.kind, match.score) == ("message-id", 1.0)
    assert match.of_message_id == "<m1@mairie-exemple.fr>"
    assert (match.earlier_rowid, match.earlier_time) == (rowid, 1_000.0)
    assert match.earlier_side == "assistance"
    assert match.earlier_assistance == "mairie-exemple@assistance.example.org"
    assert match.assistance_has_it and not match.earlier_routed
    assert not match.same_scope


def test_no_message_id_never_matches_by_message_id(db: sqlite_utils.Database) -> None:
    remember(db, fp_of("Merci !", message_id=""))
    assert lookup(db, fp_of("Merci !", message_id="")) is None


def test_forward_as_attachment_matches_its_original_in_both_orders(
        db: sqlite_utils.Database) -> None:
    original = Fingerprint("<orig@x>", "", (), "a@x", "s")
    forward = Fingerprint("<fwd@x>", "", (), "b@y", None, original_id="<orig@x>", forward=True)
    remember(db, original)
    match = lookup(db, forward)
    assert match is not None and (match.kind, match.of_message_id) == ("message-id", "<orig@x>")
    db.execute(f"DELETE FROM {dedup.KEYS}")
    db.execute(f"DELETE FROM {dedup.FINGERPRINTS}")
    remember(db, forward)
    match = lookup(db, original)
    assert match is not None and (match.kind, match.of_message_id) == ("message-id", "<fwd@x>")


@pytest.mark.parametrize(("first", "second", "matches"), [
    (("a@mairie-exemple.fr", "mairie-exemple"), ("a@mairie-exemple.fr", "mairie-exemple"), True),
    (("a@mairie-exemple.fr", "mairie-exemple"), ("b@mairie-exemple.fr", "mairie-exemple"), True),
    (("a@mairie-exemple.fr", "mairie-exemple"), ("a@ecole.fr", "ecole-pins"), False),
    (("jean@gmail.example", None), ("jean@gmail.example", None), True),
    (("jean@gmail.example", None), ("JEAN@gmail.example", None), True),
    (("jean@gmail.example", None), ("paul@gmail.example", None), False),
])
def test_text_matches_are_scoped_to_the_sender_or_structure(
        db: sqlite_utils.Database, first: tuple[str, str | None],
        second: tuple[str, str | None], matches: bool) -> None:
    remember(db, fp_of(REQUEST, sender=first[0], structure=first[1], message_id="<1@x>"))
    match = lookup(db, fp_of(REQUEST, sender=second[0], structure=second[1], message_id="<2@x>"))
    assert (match is not None) == matches
    if match is not None:
        assert (match.kind, match.score, match.same_scope) == ("text", 1.0, True)


def test_near_duplicate_is_found_through_the_band_index(db: sqlite_utils.Database) -> None:
    remember(db, fp_of(REQUEST, message_id="<1@x>"))
    edited = fp_of("Je vous renvoie ma demande, je n'ai pas eu de réponse.\n\n"
                   + REQUEST.replace("nous dire", "me dire"), message_id="<2@x>")
    match = lookup(db, edited)
    assert match is not None and match.kind == "text"
    assert THRESHOLD <= match.score < 1.0


def test_short_texts_do_not_match_each_other(db: sqlite_utils.Database) -> None:
    remember(db, fp_of("Merci beaucoup, ça remarche !", message_id="<1@x>"))
    assert lookup(db, fp_of("Merci beaucoup, ça remarche !", message_id="<2@x>")) is None


def test_window_is_respected(db: sqlite_utils.Database) -> None:
    remember(db, fp_of(REQUEST), at=1_000.0)
    assert lookup(db, fp_of(REQUEST), at=1_000.0 + 3_600, window=3_600) is not None
    assert lookup(db, fp_of(REQUEST), at=1_000.0 + 3_601, window=3_600) is None


def test_strongest_rule_wins(db: sqlite_utils.Database) -> None:
    remember(db, fp_of(REQUEST, message_id="<other@x>"), at=1_500.0)
    remember(db, fp_of(REQUEST), at=1_000.0)  # same Message-ID: stronger, though older
    match = lookup(db, fp_of(REQUEST))
    assert match is not None and (match.kind, match.of_message_id) == ("message-id",
                                                                      "<m1@mairie-exemple.fr>")


def test_a_copy_that_reached_assistance_wins_over_a_stronger_rule(
        db: sqlite_utils.Database) -> None:
    edited = "Je vous renvoie ma demande, je n'ai pas eu de réponse.\n\n" + REQUEST
    remember(db, fp_of(edited, message_id="<at-assistance@x>"), at=1_200.0,
             side="assistance", assistance="mairie-exemple@assistance.example.org")
    remember(db, fp_of(REQUEST), at=1_000.0)                    # to alice, tag mode
    remember(db, fp_of(REQUEST, message_id="<3@x>"), at=1_800.0)  # to bob, tag mode
    match = lookup(db, fp_of(REQUEST))
    assert match is not None and match.assistance_has_it
    assert (match.kind, match.of_message_id) == ("text", "<at-assistance@x>")
    assert THRESHOLD <= match.score < 1.0

    remember(db, fp_of(REQUEST, message_id="<routed@x>"), at=1_100.0, routed=True)
    match = lookup(db, fp_of(REQUEST))
    assert match is not None and (match.kind, match.of_message_id) == ("text", "<routed@x>")


def test_a_hot_key_costs_a_bounded_number_of_rows(db: sqlite_utils.Database) -> None:
    request = fp_of(REQUEST)
    with db.conn:
        db.execute("BEGIN")  # one transaction: insert() joins an open one
        for i in range(200):
            remember(db, replace(request, message_id=f"<{i}@x>"), at=1_000.0 + i)
    match = lookup(db, fp_of(REQUEST, message_id="<new@x>"), at=5_000.0)
    assert match is not None and match.earlier_time == 1_199.0   # the most recent one


def test_lookup_and_expiry_use_indexes_only(db: sqlite_utils.Database) -> None:
    remember(db, fp_of(REQUEST))
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        lookup(db, fp_of(REQUEST, message_id="<2@x>"))
        dedup.expire(db, before=0.0)
    finally:
        db.conn.set_trace_callback(None)
    queries = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert queries
    for sql in queries:
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
        assert "SCAN dedup_" not in plan and "SCAN f" not in plan, plan


def test_expire_removes_old_fingerprints_and_their_keys(db: sqlite_utils.Database) -> None:
    request = fp_of(REQUEST)
    for i in range(10):
        remember(db, replace(request, message_id=f"<{i}@x>"), at=1_000.0 + i)
    keys_per_row = db.table(dedup.KEYS).count // 10
    assert dedup.expire(db, before=1_004.0, limit=3) == 3
    assert dedup.expire(db, before=1_004.0) == 1
    assert dedup.expire(db, before=1_004.0) == 0
    assert db.table(dedup.FINGERPRINTS).count == 6
    assert db.table(dedup.KEYS).count == 6 * keys_per_row
    assert lookup(db, fp_of(REQUEST, message_id="<2@x>")).of_message_id != "<2@x>"  # type: ignore[union-attr]
    dedup.expire(db, before=10_000.0)
    assert (db.table(dedup.FINGERPRINTS).count, db.table(dedup.KEYS).count) == (0, 0)
    assert lookup(db, fp_of(REQUEST)) is None


def test_insert_joins_the_callers_transaction(db: sqlite_utils.Database) -> None:
    db.execute("BEGIN")
    remember(db, fp_of(REQUEST))
    assert db.conn.in_transaction
    db.conn.rollback()
    assert db.table(dedup.FINGERPRINTS).count == 0
    remember(db, fp_of(REQUEST))                  # no transaction open: commits
    assert not db.conn.in_transaction


def test_insert_rejects_an_unknown_side(db: sqlite_utils.Database) -> None:
    with pytest.raises(ValueError, match="side"):
        remember(db, fp_of(REQUEST), side="elsewhere")


def test_readers_in_other_threads_see_committed_fingerprints(db: sqlite_utils.Database) -> None:
    remember(db, fp_of(REQUEST))
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    results: list[object] = []

    def read() -> None:
        # sqlite3 connections refuse to cross threads: a reader opens its own.
        reader = sqlite_utils.Database(path, execute_plugins=False)
        try:
            results.append(lookup(reader, fp_of(REQUEST, message_id="<2@x>")))
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert isinstance(results[0], dedup.Match)


@settings(max_examples=40, deadline=None)
@given(scope=st.text(max_size=40),
       minhash=st.lists(st.integers(0, 2**32 - 1), min_size=dedup.SIGNATURE_SIZE,
                        max_size=dedup.SIGNATURE_SIZE))
def test_band_keys_keep_their_stored_form(scope: str, minhash: list[int]) -> None:
    # the keys are on disk (and in Redis): however they are computed, they must stay
    # the hash of the band number and its values packed as ">B3I"
    import struct
    s = scope.encode("utf-8", "surrogatepass")
    expected = [dedup._key(b"b", s, struct.pack(">B3I", band, *minhash[3 * band:3 * band + 3]))
                for band in range(dedup.BANDS)]
    assert dedup._band_keys(scope, minhash) == expected


def _densified_by_sorting(hashes: list[int]) -> tuple[int, ...]:
    """The signature as it was first computed (sorted hashes, each bin's first one,
    then the empty bins filled from the right): stored signatures were made so."""
    if not hashes:
        return ()
    smallest = {h >> 58: h for h in reversed(sorted(hashes))}
    values = [-1] * 64
    for top, h in smallest.items():
        values[top + 32] = (h >> 26) & 0xFFFFFFFF
    nearest_at = min(smallest) + 32 + 64
    nearest = values[nearest_at - 64]
    for at in range(63, -1, -1):
        if values[at] >= 0:
            nearest, nearest_at = values[at], at
        else:
            values[at] = (nearest + (nearest_at - at) * 0x9E3779B1) & 0xFFFFFFFF
    return tuple(values)


@settings(max_examples=200, deadline=None)
@given(hashes=st.sets(st.integers(-2**63, 2**63 - 1), max_size=300)
       | st.sets(st.sampled_from([-2**63, -1, 0, 1, 2**63 - 1, 2**58 - 1, 2**58, -2**58,
                                  (1 << 26) - 1, 1 << 26, 5 << 58, (5 << 58) + 1])))
def test_densified_keeps_the_stored_signature(hashes: set[int]) -> None:
    # one pass over the hashes in any order gives the signature the sorted walk gave
    assert dedup._densified(hashes) == _densified_by_sorting(list(hashes))
    assert dedup._densified(list(reversed(list(hashes)))) == _densified_by_sorting(list(hashes))


def test_densified_of_full_and_empty_bins() -> None:
    every_bin = {(b << 58) + ((b + 40) << 26) for b in range(-32, 32)}
    assert dedup._densified(every_bin) == tuple(b + 40 for b in range(-32, 32))
    assert dedup._densified(set()) == ()
    one = dedup._densified({3 << 26})       # bin 32 only: every other bin borrows from it
    assert one[32] == 3 and len(set(one)) == 64


_VALUES = st.sampled_from([0, 1, 2, 2**31, 2**32 - 2, 2**32 - 1]) | st.integers(0, 2**32 - 1)


@settings(max_examples=200, deadline=None)
@given(a=st.lists(_VALUES, min_size=dedup.SIGNATURE_SIZE, max_size=dedup.SIGNATURE_SIZE),
       changes=st.dictionaries(st.integers(0, dedup.SIGNATURE_SIZE - 1), _VALUES))
def test_equal_values_counts_as_comparing_one_by_one(a: list[int],
                                                     changes: dict[int, int]) -> None:
    b = list(a)
    for at, value in changes.items():
        b[at] = value
    mine = dedup._packed_signature(a)
    assert mine is not None
    one_by_one = sum(x == y for x, y in zip(a, b, strict=True))
    assert dedup._equal_values(mine, dedup._pack(b)) == one_by_one


def test_packed_signature_only_of_full_signatures() -> None:
    full = list(range(dedup.SIGNATURE_SIZE))
    assert dedup._packed_signature(full) == int.from_bytes(dedup._pack(full), "big")
    assert dedup._packed_signature(full[:-1]) is None
    assert dedup._packed_signature(()) is None
    assert dedup._packed_signature([2**32, *full[1:]]) is None    # not a 32-bit value
    assert dedup._packed_signature([-1, *full[1:]]) is None


def test_near_score_of_a_row_as_of_its_fingerprint() -> None:
    first = dedup.fingerprint_text("Imprimante", REQUEST, sender="a@mairie.fr", structure="m")
    resend = dedup.fingerprint_text("Imprimante", REQUEST + "\nMerci encore, la cartouche "
                                    "est une HP 305.", sender="a@mairie.fr", structure="m")
    row = dedup.row_of(first, rowid=1, time=0.0, side="watched", assistance=None, routed=False)
    mine = dedup._packed_signature(resend.minhash)
    for threshold in (0.0, 0.5, 0.8, 0.99):
        expected = dedup.near_score(resend, first, threshold)
        assert dedup._near_score(resend, resend.scope, mine, row, threshold) == expected
        assert dedup._near_score(resend, resend.scope, None, row, threshold) == expected
    short = dict(row, minhash=row["minhash"][:-4])          # a damaged stored signature
    assert dedup._near_score(resend, resend.scope, mine, short, 0.01) is None
    assert dedup._near_score(resend, resend.scope, mine, short, 0.0) == 0.0


_LINES = st.sampled_from([
    "Cordialement,", "  merci d'avance !", "Best regards, Tom", "Thanks", "cheers", "Bien a vous",
    "---------- Forwarded message ---------", "De : Jean <j@x.fr>", "Envoyé : lundi",
    "-----Original Message-----", "Begin forwarded message:", "From: a@b.c", "Sent: Monday",
    "bonjour", "", " ", "> quoted", "texte de la demande 42", "\tDe: x", "Message transféré"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_LINES, max_size=12), st.integers(0, 700), st.booleans())
def test_line_start_searches_find_what_the_patterns_find(lines, cut, forwarded):
    # the patterns are tried after each line break instead of at every character
    text = "\n".join(lines)
    text = ("x" * cut + "\n" + text) if cut % 3 else text
    found = dedup._FORWARD_START.search(text)
    expected = None
    if found is not None and (found.group(1) is not None or forwarded
                              or not dedup.own_text(text[:found.start()])):
        expected = found.start()
    assert dedup._forward_start(text, forwarded=forwarded) == expected
    data = dedup._fold(text).text
    sign_offs = list(dedup._SIGN_OFF.finditer(data, max(0, len(data) - dedup._SIGN_OFF_TAIL)))
    assert dedup._last_sign_off(data) == (sign_offs[-1].start() if sign_offs else -1)


_NAME_PATTERN_BEFORE = (rb" (?:(?<=[a-z0-9,;)] )|(?<=[\s(]M\. )|(?<=[\s(](?:Mr|Ms|Dr|Pr|Me)\. )"
                        rb"|(?<=[\s(]Mrs\. ))([A-Z][A-Za-z'-]*[a-z][A-Za-z'-]*)")


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"a", b"Z", b"M.", b"Mr.", b"Mrs.", b"Dr.", b"(", b",",
                                 b";", b")", b"\n", b"'", b"-", b"1", b"Marie", b"le", b"I'm"]),
                max_size=20))
def test_identifier_names_are_those_of_the_plain_pattern(pieces):
    # the capital is looked for before the look-behinds: the same names are found
    import re
    span = b"".join(pieces)
    assert dedup._IDENT_NAME.findall(span) == re.findall(_NAME_PATTERN_BEFORE, span)
