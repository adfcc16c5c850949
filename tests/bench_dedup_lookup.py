"""Benchmark: the cost of a duplicate lookup with 100,000 stored fingerprints.

Not a test.  Run it as::

    .venv/bin/python tests/bench_dedup_lookup.py [--rows 100000] [--lookups 2000]

It fills a SQLite file (WAL mode, as the daemon opens it) with fingerprints of
synthetic support requests spread like real traffic: a few hundred client
structures with a long tail (a handful of big ones send most of the mail),
several senders each, a quarter of the mail from senders of unknown structure,
requests built from shared phrases, topics and signatures (so that LSH bands
really collide inside a structure), times spread over the window plus an hour
not yet cleaned up.  Then it times ``find_duplicate`` on hits (same Message-ID,
same text, a lightly edited resend) and on new requests from a known scope
(mostly misses: the synthetic generator draws from a small pool of phrases, so
a few new requests do repeat an earlier one), and prints a table and a JSON
line.  Costs are CPU time of the calling thread, so that they do not depend on
the load of the machine; wall time is shown next to them.  It also times ``fingerprint`` on a
5 KB message, ``insert``, and ``expire`` of one hour of fingerprints.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from helpdesk_milter import dedup
from helpdesk_milter.message import ParsedMessage

T = TypeVar("T")
WINDOW = 72 * 3600.0
NOW = 1_741_100_000.0

FIRST = ["Marie", "Paul", "Claire", "Jean", "Sophie", "Pierre", "Julien", "Anne", "Tom",
         "Sunita", "Daniel", "Karen", "Luc", "Emma", "Hugo", "Léa", "Nina", "Omar", "Rosa"]
LAST = ["Durand", "Lefèvre", "Fontaine", "Dupont", "Moreau", "Morel", "Roux", "Baker",
        "Patel", "Reeves", "Smith", "Martin", "Bernard", "Petit", "Garcia", "Faure"]
ROLES = ["Secrétaire de mairie", "Directrice", "Trésorier", "Office Manager",
         "Production Coordinator", "Chargée de communication", "Comptable", "Président"]
DEVICES = ["l'imprimante du secrétariat", "le copieur de l'accueil", "mon ordinateur portable",
           "la borne wifi", "le NAS", "mon téléphone", "le poste de la salle du conseil"]
SERVICES = ["Nextcloud", "la messagerie", "le site internet", "l'agenda partagé", "le VPN",
            "le webmail", "la visioconférence", "le partage de fichiers"]
DAYS = ["lundi", "mardi", "mercredi", "jeudi", "vendredi"]
GREETINGS = ["Bonjour,", "Bonjour {first},", "Madame, Monsieur,", "Hello,", "Bonjour à tous,"]
FILLERS = ["Pouvez-vous regarder rapidement ?", "Merci d'avance pour votre aide.",
           "C'est assez urgent pour nous.", "Je reste joignable toute la journée.",
           "Nous n'avons rien changé de notre côté.", "Les collègues ont le même problème.",
           "Pouvez-vous me rappeler quand vous aurez un moment ?",
           "Je vous remercie par avance.", "Dites-moi si vous avez besoin d'un accès."]
DETAILS = ["C'est le poste {n} au {floor} étage, à côté de {place}.",
           "{first} {last} a remarqué le problème {day} vers {hour} h.",
           "Le numéro de série indiqué est {serial}.",
           "Nous avons {count} personnes concernées à {place}.",
           "Le problème est apparu après la coupure de courant de {day}.",
           "J'ai joint une capture d'écran prise par {first} ce matin.",
           "Notre prestataire {last} nous a dit de vous contacter.",
           "La réunion avec {first} {last} est prévue {day} à {hour} h."]
PLACES = ["l'accueil", "la salle du conseil", "la bibliothèque", "l'atelier", "la cantine",
          "la comptabilité", "la direction", "la salle de montage"]
TOPICS = [
    ("Problème {device}", [
        "Depuis ce matin {device} affiche un message d'erreur et refuse de fonctionner.",
        "Nous avons déjà essayé de redémarrer {device} sans succès.",
        "Le voyant orange clignote et rien ne sort depuis {day}.",
        "L'écran indique le code E{n} que nous ne connaissons pas.",
        "Cela arrive surtout quand plusieurs personnes l'utilisent en même temps.",
        "Nous devons imprimer les documents pour la réunion de {day}.",
    ]),
    ("Accès à {service}", [
        "Je n'arrive plus à me connecter à {service} depuis {day}.",
        "Le message indique que mon mot de passe est incorrect alors que je ne l'ai pas changé.",
        "Mon collègue {first} {last} n'a pas ce problème sur son poste.",
        "J'ai essayé depuis mon téléphone et depuis l'ordinateur, même résultat.",
        "Pouvez-vous vérifier si mon compte n'est pas bloqué ?",
        "Il faudrait aussi que {first} ait accès au dossier partagé {n}.",
    ]),
    ("{service} très lent", [
        "{service} est très lent depuis {day}, les pages mettent une minute à s'afficher.",
        "L'envoi d'un fichier de {n} Mo échoue une fois sur deux.",
        "Le problème touche tous les postes du bureau.",
        "Est-ce qu'il y a une maintenance en cours sur le serveur ?",
    ]),
    ("Création de compte", [
        "Pouvez-vous créer un compte {service} pour {first} {last} qui arrive {day} ?",
        "Son adresse sera {first_l}.{last_l}@{domain}.",
        "Il faut le même quota et les mêmes dossiers que les autres agents.",
        "Merci de m'envoyer ses identifiants, je les lui remettrai.",
    ]),
    ("Question sur la facture {n}", [
        "Je ne comprends pas le montant de la facture n° 2025-{n}.",
        "Il y a une ligne que nous n'avions pas commandée.",
        "Pouvez-vous nous envoyer un avoir si c'est une erreur ?",
        "Notre contrat prévoit uniquement l'hébergement du site et des boîtes mail.",
    ]),
    ("Boîte mail pleine", [
        "Ma boîte mail semble pleine, les messages reviennent avec une erreur de quota.",
        "J'ai supprimé beaucoup d'anciens messages mais la jauge reste à 100 %.",
        "Je dois recevoir des documents importants de la préfecture {day}.",
        "Pouvez-vous augmenter le quota de {first_l}@{domain} ?",
    ]),
    ("Site en panne", [
        "Le site {domain} affiche une page blanche depuis hier soir.",
        "Les usagers nous appellent car ils ne trouvent plus les horaires.",
        "La dernière modification date de {day}, nous n'avons rien touché depuis.",
        "Le message indique une erreur {n} du serveur.",
    ]),
]


@dataclass
class Request:
    subject: str
    body: str
    sender: str
    structure: str | None
    message_id: str
    time: float


class World:
    """Structures, their senders, and a generator of requests."""

    def __init__(self, rng: random.Random, structures: int = 400, unknown: int = 6000):
        self.rng = rng
        self.structures = [f"client-{i:03d}" for i in range(structures)]
        # Zipf-like: the structure of rank r sends in proportion to 1/r.
        self.weights = [1.0 / (rank + 1) for rank in range(structures)]
        self.senders = {s: [self._person(f"{s}.example") for _ in range(rng.randint(1, 8))]
                        for s in self.structures}
        self.unknown = [self._person(f"mail{rng.randint(1, 40)}.example") for _ in range(unknown)]
        self.counter = 0

    def _person(self, domain: str) -> tuple[str, str, str, str]:
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        address = f"{first.lower()}.{last.lower()}{self.rng.randint(1, 99)}@{domain}"
        signature = f"{first} {last}\n{self.rng.choice(ROLES)}\n{domain.split('.')[0].title()}"
        if self.rng.random() < 0.5:
            signature += f"\nTél. 04 {self.rng.randint(10, 99)} {self.rng.randint(10, 99)} " \
                         f"{self.rng.randint(10, 99)} {self.rng.randint(10, 99)}"
        return address, first, domain, signature

    def request(self, at: float, *, scope: tuple[str | None, tuple[str, str, str, str]] | None
                = None) -> Request:
        rng = self.rng
        if scope is not None:
            structure, person = scope
        elif rng.random() < 0.25:
            structure, person = None, rng.choice(self.unknown)
        else:
            structure = rng.choices(self.structures, self.weights)[0]
            person = rng.choice(self.senders[structure])
        address, _first, domain, signature = person
        subject_template, sentences = rng.choice(TOPICS)
        slots = {"device": rng.choice(DEVICES), "service": rng.choice(SERVICES),
                 "day": rng.choice(DAYS), "n": str(rng.randint(10, 9999)),
                 "first": rng.choice(FIRST), "last": rng.choice(LAST), "domain": domain}
        slots["first_l"], slots["last_l"] = slots["first"].lower(), slots["last"].lower()
        slots.update(floor=rng.choice(["premier", "deuxième", "troisième"]),
                     place=rng.choice(PLACES), hour=str(rng.randint(8, 18)),
                     serial=f"{rng.choice('ABCDEFGH')}{rng.randint(100000, 999999)}",
                     count=str(rng.randint(2, 30)))
        chosen = rng.sample(sentences, k=min(len(sentences), rng.randint(2, 4)))
        chosen += rng.sample(DETAILS, k=rng.randint(1, 2))
        rng.shuffle(chosen)
        chosen += rng.sample(FILLERS, k=rng.randint(1, 2))
        body = "\n\n".join([rng.choice(GREETINGS).format(first=rng.choice(FIRST)),
                            " ".join(chosen).format(**slots),
                            rng.choice(["Cordialement,", "Merci,", "Bonne journée,", "Best,"]),
                            signature])
        self.counter += 1
        return Request(subject_template.format(**slots).capitalize(), body, address, structure,
                       f"<{self.counter}.{rng.getrandbits(40):x}@{domain}>", at)


def fingerprint_of(req: Request) -> dedup.Fingerprint:
    return dedup.fingerprint_text(req.subject, req.body, sender=req.sender,
                                  structure=req.structure, message_id=req.message_id)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed(func: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """(CPU µs of the calling thread, result).  CPU time, not wall time: the figures
    must not depend on what else the machine runs (wall time is reported apart)."""
    start = time.thread_time()
    result = func(*args, **kwargs)
    return (time.thread_time() - start) * 1e6, result


def timed_wall(func: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, float, T]:
    """(CPU µs, wall µs, result)."""
    wall = time.perf_counter()
    cpu = time.thread_time()
    result = func(*args, **kwargs)
    return ((time.thread_time() - cpu) * 1e6, (time.perf_counter() - wall) * 1e6, result)


def fill(db: sqlite_utils.Database, world: World, rows: int) -> tuple[list[Request], list[float]]:
    requests: list[Request] = []
    insert_us: list[float] = []
    span = WINDOW + 3600.0
    times = sorted(NOW - span + world.rng.random() * span for _ in range(rows))
    batch = 500
    for start in range(0, rows, batch):
        chunk = [world.request(t) for t in times[start:start + batch]]
        fps = [fingerprint_of(r) for r in chunk]
        with db.conn:
            db.execute("BEGIN")  # one transaction per batch, as the store's writer does
            for req, fp in zip(chunk, fps, strict=True):
                side = "assistance" if world.rng.random() < 0.4 else "watched"
                elapsed, _ = timed(
                    dedup.insert, db, fp, time=req.time, side=side, routed=side == "watched",
                    assistance=f"{req.structure or 'accueil'}@assistance.example.org",
                    queue_id="4XyZ1")
                insert_us.append(elapsed)
        requests.extend(chunk)
        if (start // batch) % 20 == 19:
            print(f"  {start + batch:>7} fingerprints stored", file=sys.stderr)
    return requests, insert_us


def lookups(db: sqlite_utils.Database, world: World, stored: list[Request], count: int,
            threshold: float) -> dict[str, list[tuple[float, float, bool]]]:
    """Time find_duplicate on hits of three kinds and on misses."""
    rng = world.rng
    recent = [r for r in stored if r.time >= NOW - WINDOW + 3600]
    results: dict[str, list[tuple[float, float, bool]]] = {
        "message-id": [], "text": [], "near": [], "new": []}
    plan = (["message-id"] * 15 + ["text"] * 25 + ["near"] * 20 + ["new"] * 40)
    for i in range(count):
        kind = plan[i % len(plan)]
        earlier = rng.choice(recent)
        if kind == "message-id":
            req = earlier
        elif kind == "text":
            req = Request(earlier.subject, earlier.body, earlier.sender, earlier.structure,
                          f"<resend{i}@x>", NOW)
        elif kind == "near":
            req = Request("TR: " + earlier.subject,
                          "Je vous renvoie ma demande, je n'ai pas eu de réponse.\n\n"
                          + earlier.body.replace("Cordialement,", "Bien cordialement,"),
                          earlier.sender, earlier.structure, f"<edited{i}@x>", NOW)
        else:
            person = next((p for p in (world.senders.get(earlier.structure or "") or [])
                           if p[0] == earlier.sender), None)
            scope = (earlier.structure, person) if person else None
            req = world.request(NOW, scope=scope)
        fp = fingerprint_of(req)
        cpu, wall, match = timed_wall(dedup.find_duplicate, db, fp, now=NOW, window=WINDOW,
                                      threshold=threshold)
        results[kind].append((cpu, wall, match is not None))
    return results


def _read_fields(parsed: ParsedMessage) -> tuple[str, ...]:
    return parsed.text, parsed.subject, parsed.message_id, parsed.from_addr


def bench_fingerprint(world: World, repeat: int = 300) -> dict[str, float]:
    """fingerprint() of 5 KB messages: a reply (own text, signature, quoted history),
    and 5 KB of the sender's own text (the worst case: everything is shingled)."""
    def own_text(size: int) -> str:
        parts: list[str] = []
        while sum(map(len, parts)) < size:
            parts.append(world.request(NOW).body.split("\n\n", 1)[1].rsplit("\n\n", 2)[0])
        return "\n\n".join(parts)[:size]

    quoted = "".join("> " + line + "\n" for line in own_text(2200).split("\n"))
    reply = EmailMessage()
    reply["From"] = "Pierre Morel <p.morel@cabinet-morel.fr>"
    reply["To"] = "alice@example.org"
    reply["Subject"] = "RE: Agenda partagé qui n'apparaît plus"
    reply["Message-ID"] = "<bench@cabinet-morel.fr>"
    reply["Date"] = "Tue, 4 Mar 2025 09:00:00 +0100"
    reply.set_content("Bonjour Alice,\n\n" + own_text(2300) + "\n\nCordialement,\nPierre Morel"
                      "\nCabinet Morel\n\nLe lun. 3 mars 2025 à 17:40, Alice <alice@example.org>"
                      " a écrit :\n" + quoted)
    worst = EmailMessage()
    worst["Subject"] = "Agenda partagé"
    worst.set_content(own_text(5000))
    out: dict[str, float] = {}
    for name, message in (("reply", reply), ("own_text", worst)):
        raw = message.as_bytes()
        parse_us, fp_us = [], []
        for _ in range(repeat):
            elapsed, parsed = timed(ParsedMessage, raw)
            # What the policy reads anyway (cached on the message): not dedup's cost.
            text_us, _ = timed(_read_fields, parsed)
            parse_us.append(elapsed + text_us)
            elapsed, _ = timed(dedup.fingerprint, parsed, sender="p.morel@cabinet-morel.fr",
                               structure="cabinet-morel")
            fp_us.append(elapsed)
        out[f"{name}_bytes"] = len(raw)
        out[f"{name}_fingerprint_median_us"] = statistics.median(fp_us)
        out[f"{name}_fingerprint_p99_us"] = percentile(fp_us, 99)
        out[f"{name}_parse_and_text_median_us"] = statistics.median(parse_us)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--db", type=Path, help="SQLite file to create (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        path = args.db or Path(tmp) / "state.db"
        if path.exists():
            parser.error(f"{path} exists; give a new file")
        db = sqlite_utils.Database(str(path), execute_plugins=False)
        db.enable_wal()
        db.conn.execute("PRAGMA synchronous = NORMAL")
        dedup.create_schema(db)
        world = World(random.Random(args.seed))

        print(f"filling {path} with {args.rows} fingerprints...", file=sys.stderr)
        started = time.perf_counter()
        stored, insert_us = fill(db, world, args.rows)
        fill_s = time.perf_counter() - started
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size_mb = path.stat().st_size / 1e6
        key_rows = db.table(dedup.KEYS).count

        reader = sqlite_utils.Database(str(path), execute_plugins=False)  # a fresh connection
        results = lookups(reader, world, stored, args.lookups, args.threshold)
        every = [cpu for rows in results.values() for cpu, _, _ in rows]
        every_wall = [wall for rows in results.values() for _, wall, _ in rows]

        expire_us, removed = timed(dedup.expire, db, before=NOW - WINDOW)
        fp_cost = bench_fingerprint(world)

    report = {
        "rows": args.rows, "key_rows": key_rows, "db_mb": round(size_mb, 1),
        "fill_seconds": round(fill_s, 1),
        "insert_median_us": round(statistics.median(insert_us), 1),
        "insert_p99_us": round(percentile(insert_us, 99), 1),
        "lookups": len(every),
        "lookup_median_us": round(statistics.median(every), 1),
        "lookup_p99_us": round(percentile(every, 99), 1),
        "lookup_wall_median_us": round(statistics.median(every_wall), 1),
        "lookup_wall_p99_us": round(percentile(every_wall, 99), 1),
        "by_kind": {kind: {"n": len(rows),
                           "found": sum(found for _, _, found in rows),
                           "median_us": round(statistics.median(c for c, _, _ in rows), 1),
                           "p99_us": round(percentile([c for c, _, _ in rows], 99), 1),
                           "wall_median_us": round(statistics.median(w for _, w, _ in rows), 1),
                           "wall_p99_us": round(percentile([w for _, w, _ in rows], 99), 1)}
                    for kind, rows in results.items() if rows},
        "expire_hour": {"removed": removed, "us": round(expire_us, 1)},
        "fingerprint": {k: round(v, 1) for k, v in fp_cost.items()},
    }
    print(f"\nfind_duplicate with {args.rows:,} stored fingerprints "
          f"({key_rows:,} key rows, {size_mb:.1f} MB), {len(every)} lookups")
    print("CPU µs of the calling thread (wall µs, which includes waiting for the CPU on a "
          "busy machine, in brackets)")
    print(f"{'lookup':<12}{'n':>6}{'found':>7}{'median':>18}{'p99':>20}")
    for kind, row in report["by_kind"].items():  # type: ignore[union-attr]
        print(f"{kind:<12}{row['n']:>6}{row['found']:>7}"
              f"{row['median_us']:>9} ({row['wall_median_us']:>7})"
              f"{row['p99_us']:>10} ({row['wall_p99_us']:>8})")
    print(f"{'all':<12}{len(every):>6}{'':>7}{report['lookup_median_us']:>9} "
          f"({report['lookup_wall_median_us']:>7}){report['lookup_p99_us']:>10} "
          f"({report['lookup_wall_p99_us']:>8})")
    print(f"insert: median {report['insert_median_us']} µs, p99 {report['insert_p99_us']} µs CPU; "
          f"expire of one hour ({removed} rows): {expire_us / 1000:.1f} ms CPU")
    for name, what in (("reply", "a reply with quoted history"),
                       ("own_text", "5 KB of own text")):
        print(f"fingerprint, {what} ({fp_cost[name + '_bytes']:.0f} bytes): median "
              f"{fp_cost[name + '_fingerprint_median_us']:.0f} µs, p99 "
              f"{fp_cost[name + '_fingerprint_p99_us']:.0f} µs (parse + text, shared with "
              f"the classifier: {fp_cost[name + '_parse_and_text_median_us']:.0f} µs)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
