"""Learning from the site: staff forwards and explicit labels teach the classifier.

What this module promises:

- **Labels.**  A mail a staff member forwards to an assistance address *was* a support
  request (source ``forward``); ``helpdesk-milter learn --support | --not-support``
  labels mail by hand (source ``learn``).  Each label is one row of
  ``learned_examples``: the label, its source, the original's Message-ID, whether the
  milter had routed the original (1), missed it (0: it reached a watched address and
  was not routed) or never saw it (NULL), and the message's *features as 32-bit
  hashes* (``zlib.crc32`` of the model's feature names, see ``model.text_keys``).
  Never the text, never a word in clear, never a secret: features are computed from
  the text with secrets already replaced by markers, then hashed.
- **Adaptation.**  The shipped model is logistic regression; the site's examples
  continue its training: each label moves per-feature *deltas* (``learned_weights``)
  by stochastic gradient steps on the log-loss, with the shipped model's logit as
  the starting point, until the example sits on the right side of the threshold
  with a margin (``MARGIN``), with a small L2 pull towards zero.  A request the
  shipped model already routes barely moves anything; five misses of one kind move
  that kind's words.  ``forget`` and ``reset`` replay the remaining examples from
  scratch, so the deltas are always what the kept labels give.
- **Bounded.**  At most ``max_examples`` examples (the oldest go first) and at most
  ``MAX_FEATURES`` deltas (the smallest go first); 10,000 forwards stay well under
  20 MB.
- **Picked up without a restart.**  ``SiteModel.current`` re-reads the deltas when
  another process (the milter, ``learn``) changed them: a version number in
  ``learn_meta``, checked at most every ``REFRESH`` seconds.
- Reads and writes use their own SQLite connection to the state file (WAL), under
  a lock; the schema is a sqlite-utils ``Migrations`` set of its own.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import mailbox
import math
import re
import sqlite3
import threading
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from itertools import repeat
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from .classify import SITE_RULE, RuleSet, prepared_texts
from .dedup import FINGERPRINTS, TEXT_CAP, Fingerprint, carried_request, find_duplicate
from .message import ParsedMessage, from_address
from .model import KNOWN_CLIENT_FEATURE, TextModel, text_keys, text_value
from .secrets import SecretScanner, redact_spans

log = logging.getLogger("helpdesk_milter.learn")

migrations = Migrations("helpdesk_milter_learn")

LABELS = ("support", "other")
MARGIN = 2.0            # log-odds beyond the threshold a labelled example is pushed to
RATE = 1.0              # step size of one (normalised) gradient step
L2 = 0.0005             # pull of each delta towards zero, per step
STEPS = 8               # at most this many steps per example and pass
MAX_FEATURES = 200_000
MAX_EXAMPLE_FEATURES = 600   # text features kept per example (a request is stated early)
REFRESH = 2.0           # seconds between checks for another process's changes


@migrations()
def m001_learning(db: sqlite_utils.Database) -> None:
    db["learned_examples"].create({   # type: ignore[union-attr]
        "id": int, "time": float, "label": str, "source": str, "message_id": str,
        "routed": int, "value": float, "text_features": bytes, "other_features": bytes,
        "original_time": float,
    }, pk="id")
    db["learned_examples"].create_index(["time"])          # type: ignore[union-attr]
    db["learned_examples"].create_index(["message_id"])    # type: ignore[union-attr]
    db.execute("CREATE TABLE [learned_weights] ([feature] INTEGER PRIMARY KEY, "
               "[delta] REAL NOT NULL)")
    db["learn_meta"].create({"key": str, "value": int}, pk="key")   # type: ignore[union-attr]


ROUTED_ACTIONS = ("copy", "redirect", "duplicate", "tag")


def was_routed(verdict: str, action: str) -> bool:
    """Whether a recorded decision sent the mail to assistance (or found it there)."""
    return verdict in ("support", "followup") and action in ROUTED_ACTIONS


def without_secrets(text: str, scanner: SecretScanner, marker: str) -> str:
    """``text`` with its secrets replaced by markers: what an example is made of."""
    return redact_spans(text, scanner.scan(text), marker=marker)


def feature_hash(key: str) -> int:
    """The 32-bit name under which a feature's delta is kept."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Example:
    """What is kept of one labelled message: hashes, never text."""

    label: str
    value: float                     # the value of each text feature
    text: tuple[int, ...]            # hashed text features
    other: tuple[int, ...]           # hashed rule and known-client features (value 1)

    @classmethod
    def of(cls, subject: str, text: str, rules: RuleSet, model: TextModel | None, *,
           label: str, known_client: bool) -> Example:
        """The example of a message whose Subject and text have secrets removed."""
        prepared_subject, prepared_body = prepared_texts(subject, text)
        keys = text_keys(prepared_subject, prepared_body)
        fired = rules.fired(prepared_subject, prepared_body)
        other = ["r:" + rule.name for rule, hit in zip(rules.rules, fired, strict=True) if hit]
        if known_client:
            other.append(KNOWN_CLIENT_FEATURE)
        scale = model.text_scale if model is not None else 1.0
        return cls(label=label, value=text_value(keys, scale),
                   text=tuple(dict.fromkeys(map(feature_hash,
                                                keys[:MAX_EXAMPLE_FEATURES]))),
                   other=tuple(dict.fromkeys(map(feature_hash, other))))

    @property
    def target(self) -> int:
        return 1 if self.label == "support" else 0


def _pack(values: Sequence[int]) -> bytes:
    return array("I", values).tobytes()


def _unpack(blob: bytes | None) -> tuple[int, ...]:
    out = array("I")
    if blob:
        out.frombytes(blob)
    return tuple(out)


class SiteModel:
    """The site's learned deltas, as the classifier reads them (immutable)."""

    def __init__(self, deltas: Mapping[int, float] | None = None, version: int = 0):
        self.deltas: Mapping[int, float] = deltas or {}
        self.version = version

    def __bool__(self) -> bool:
        return bool(self.deltas)

    def contribution(self, groups: Sequence[Iterable[Any]], value: float,
                     other: Iterable[str]) -> float:
        """What the site adds to the log-odds of a message whose text features are
        ``groups`` (``model.word_groups``: the words, the longer words' stems, the pairs
        of stems, the Subject's words and its longer words' stems, each kind's once),
        each worth ``value``, and whose other features (rules, known client) are
        ``other``: the deltas of the features' names (``feature_hash``), without
        building a name per feature.  A feature's hash is its name's CRC-32, and a
        CRC-32 goes on from a prefix's (``crc32(b, crc32(a)) == crc32(a + b)``), so
        each kind's prefix ("u:", "b:"...) is hashed once and each word's bytes
        continue from it."""
        get = self.deltas.get
        crc32 = zlib.crc32
        words, stems, pairs, subject_words, subject_stems = groups
        hashes = [*map(crc32, map(str.encode, words), repeat(_CRC_WORD)),
                  *map(crc32, map(str.encode, stems), repeat(_CRC_STEM)),
                  *map(crc32, map(str.encode, map(" ".join, pairs)), repeat(_CRC_PAIR)),
                  *map(crc32, map(str.encode, subject_words), repeat(_CRC_SUBJECT)),
                  *map(crc32, repeat(b"*"),
                       map(crc32, map(str.encode, subject_stems), repeat(_CRC_SUBJECT)))]
        text = math.fsum(map(get, hashes, repeat(0.0)))
        return value * text + math.fsum(get(feature_hash(k), 0.0) for k in other)


# the CRC-32 of each text feature kind's prefix (see model.text_keys)
_CRC_WORD, _CRC_STEM, _CRC_PAIR, _CRC_SUBJECT = (zlib.crc32(p) for p in (b"u:", b"p:", b"b:",
                                                                           b"s:"))


class Learning:
    """The learned state in the SQLite file at ``path``: labels, deltas, reports.

    Thread-safe: one connection under a lock (labels are rare; lookups cheap).
    """

    def __init__(self, path: str | Path, model: TextModel | None, rules: RuleSet, *,
                 threshold: float = 5.0, max_examples: int = 20_000,
                 clock: Any = time.time, readonly: bool = False):
        self.path = str(path)
        self.model = model
        self.rules = rules
        self.threshold = threshold
        self.max_examples = max_examples
        self.clock = clock
        self.readonly = readonly
        self._lock = threading.Lock()
        self._db: sqlite_utils.Database | None = None
        self._site = SiteModel()
        self._checked = -math.inf
        self._shipped_cache: dict[int, float] | None = None   # hashed shipped weights

    # --- the connection --------------------------------------------------------------

    def _open(self) -> sqlite_utils.Database:
        if self._db is None:
            if self.readonly:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       check_same_thread=False, timeout=5.0)
            else:
                conn = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
                conn.execute("PRAGMA journal_mode=WAL")
            db = sqlite_utils.Database(conn, execute_plugins=False)
            if not self.readonly:
                migrations.apply(db)
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(Exception):
                    self._db.close()
                self._db = None

    def _has_tables(self, db: sqlite_utils.Database) -> bool:
        return "learned_weights" in db.table_names()

    # --- the site model ----------------------------------------------------------------

    def site(self) -> SiteModel:
        """The current deltas; re-read when another process changed them (checked at
        most every ``REFRESH`` seconds).  Never raises: on a database problem the
        last known deltas stay in use."""
        now = time.monotonic()
        if now - self._checked < REFRESH:
            return self._site
        with self._lock:
            if now - self._checked < REFRESH:
                return self._site
            self._checked = now
            try:
                db = self._open()
                if not self._has_tables(db):
                    return self._site
                version = self._version(db)
                if version != self._site.version:
                    deltas = dict(db.execute("select feature, delta from learned_weights"
                                             ).fetchall())
                    self._site = SiteModel(deltas, version)
            except (sqlite3.Error, OSError) as exc:
                log.warning("learned model: cannot read %s (%s); keeping the last one",
                            self.path, type(exc).__name__)
        return self._site

    @staticmethod
    def _version(db: sqlite_utils.Database) -> int:
        row = db.execute("select value from learn_meta where key = 'version'").fetchone()
        return int(row[0]) if row else 0

    # --- labels --------------------------------------------------------------------

    def learn(self, example: Example, *, source: str, message_id: str = "",
              routed: bool | None = None, original_time: float | None = None) -> int:
        """Record one label and learn from it; returns its id."""
        if example.label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}")
        with self._lock:
            db = self._open()
            with db.conn:
                deltas = self._deltas_for(db, example)
                self._fit(example, deltas)
                self._write_deltas(db, deltas)
                cur = db.execute(
                    "insert into learned_examples (time, label, source, message_id, routed, "
                    "value, text_features, other_features, original_time) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [self.clock(), example.label, source, message_id,
                     None if routed is None else int(routed), example.value,
                     _pack(example.text), _pack(example.other), original_time])
                new_id = int(cur.lastrowid or 0)
                self._bound(db)
                self._bump(db)
            self._checked = -math.inf
            return new_id

    def forget(self, example_id: int) -> bool:
        """Remove one label and rebuild the deltas from the others."""
        with self._lock:
            db = self._open()
            with db.conn:
                gone = db.execute("delete from learned_examples where id = ?",
                                  [example_id]).rowcount
                if gone:
                    self._replay(db)
                    self._bump(db)
            self._checked = -math.inf
            return bool(gone)

    def reset(self) -> int:
        """Forget every label: back to the shipped model.  Returns how many went."""
        with self._lock:
            db = self._open()
            with db.conn:
                n = db.execute("delete from learned_examples").rowcount
                db.execute("delete from learned_weights")
                self._bump(db)
            self._checked = -math.inf
            return int(n)

    def examples(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """The newest labels (no features), for ``learn --list``."""
        with self._lock:
            db = self._open()
            if "learned_examples" not in db.table_names():
                return []
            cols = ["id", "time", "label", "source", "message_id", "routed"]
            return [dict(zip(cols, row, strict=True)) for row in db.execute(
                f"select {', '.join(cols)} from learned_examples order by id desc limit ?",
                [limit]).fetchall()]

    def size(self) -> dict[str, int]:
        with self._lock:
            db = self._open()
            return _size(db)

    # --- fitting -------------------------------------------------------------------

    def _base_logit(self, example: Example, deltas: Mapping[int, float]) -> float:
        """The example's log-odds relative to the threshold, with these deltas.  The
        shipped model's part is computed from the same hashed names."""
        text = math.fsum(deltas.get(h, 0.0) for h in example.text)
        other = math.fsum(deltas.get(h, 0.0) for h in example.other)
        return example.value * text + other + self._shipped(example) \
            - (self.threshold - 5.0)

    def _shipped(self, example: Example) -> float:
        shipped = self._shipped_hashed()
        return (self.model.bias if self.model is not None else 0.0) \
            + example.value * math.fsum(shipped.get(h, 0.0) for h in example.text) \
            + math.fsum(shipped.get(h, 0.0) for h in example.other)

    def _shipped_hashed(self) -> dict[int, float]:
        if self._shipped_cache is None:
            weights = self.model.weights if self.model is not None else {}
            self._shipped_cache = {feature_hash(k): w for k, w in weights.items()}
        return self._shipped_cache

    def _fit(self, example: Example, deltas: dict[int, float]) -> None:
        """Gradient steps on this example until it is ``MARGIN`` beyond the threshold
        on its side (or ``STEPS`` steps)."""
        y = example.target
        # normalised steps: each moves this example's log-odds by about RATE * (y - p),
        # whatever its length (a plain step would scale with the number of features)
        norm = len(example.text) * example.value ** 2 + len(example.other) or 1.0
        for _ in range(STEPS):
            z = self._base_logit(example, deltas)
            if (y == 1 and z >= MARGIN) or (y == 0 and z <= -MARGIN):
                return
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            g = RATE * (y - p) / norm
            for h in example.text:
                d = deltas.get(h, 0.0)
                deltas[h] = d + g * example.value - L2 * d
            for h in example.other:
                d = deltas.get(h, 0.0)
                deltas[h] = d + g - L2 * d

    def _deltas_for(self, db: sqlite_utils.Database, example: Example) -> dict[int, float]:
        wanted = list(dict.fromkeys((*example.text, *example.other)))
        out: dict[int, float] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            out.update(db.execute(
                "select feature, delta from learned_weights where feature in "
                f"({', '.join('?' * len(chunk))})", chunk).fetchall())
        return out

    @staticmethod
    def _write_deltas(db: sqlite_utils.Database, deltas: Mapping[int, float]) -> None:
        db.conn.executemany("insert or replace into learned_weights (feature, delta) "
                            "values (?, ?)", list(deltas.items()))

    def _bound(self, db: sqlite_utils.Database) -> None:
        over = db.execute("select count(*) from learned_examples").fetchone()[0] \
            - self.max_examples
        if over > 0:
            db.execute("delete from learned_examples where id in (select id from "
                       "learned_examples order by id limit ?)", [over])
        features = db.execute("select count(*) from learned_weights").fetchone()[0]
        if features > MAX_FEATURES:
            db.execute("delete from learned_weights where feature in (select feature from "
                       "learned_weights order by abs(delta) limit ?)",
                       [features - MAX_FEATURES])

    def _replay(self, db: sqlite_utils.Database) -> None:
        """Rebuild the deltas from the kept examples, oldest first."""
        deltas: dict[int, float] = {}
        for label, value, text, other in db.execute(
                "select label, value, text_features, other_features from learned_examples "
                "order by id").fetchall():
            self._fit(Example(label, value, _unpack(text), _unpack(other)), deltas)
        db.execute("delete from learned_weights")
        self._write_deltas(db, {h: d for h, d in deltas.items() if d})

    @staticmethod
    def _bump(db: sqlite_utils.Database) -> None:
        db.execute("insert into learn_meta (key, value) values ('version', 1) "
                   "on conflict(key) do update set value = value + 1")

    def find_original(self, forward: Forward, fp: Fingerprint | None, *, now: float,
                      window: float, threshold: float) -> Original | None:
        """``find_original`` on this state file (None when it cannot be read)."""
        with self._lock:
            try:
                return find_original(self._open(), forward, fp, now=now, window=window,
                                     threshold=threshold)
            except sqlite3.Error:
                return None

    def routed(self, message_id: str) -> bool | None:
        """Whether the milter routed the message with this Message-ID (None: not seen)."""
        with self._lock:
            db = self._open()
            if "decisions" not in db.table_names():
                return None
            row = db.execute("select verdict, action from decisions where message_id = ? "
                             "order by time desc limit 1", [message_id]).fetchone()
        return None if row is None else was_routed(*row)

    # --- reports --------------------------------------------------------------------

    def report(self, *, since: float) -> dict[str, Any]:
        """``learning_report`` on this state file."""
        with self._lock:
            return learning_report(self._open(), since=since)


def learning_report(db: sqlite_utils.Database, *, since: float) -> dict[str, Any]:
    """Production recall, per ISO week: forwarded requests the milter had routed,
    missed (reached a watched address, not routed) or not seen; routed mail later
    labelled not a request; requests routed thanks to what was learned (the rule
    ``site-learned`` in their decision).  Plus the learned state's size."""
    weeks: dict[str, dict[str, int]] = {}

    def week(t: float) -> dict[str, int]:
        year, number, _ = _iso_week(t)
        return weeks.setdefault(f"{year}-W{number:02d}", {
            "forwarded": 0, "routed": 0, "missed": 0, "unseen": 0,
            "not_request_after_routing": 0, "routed_by_learning": 0})

    tables = set(db.table_names())
    size = {"examples": 0, "features": 0}
    if "learned_examples" in tables:
        for t, label, source, routed in db.execute(
                "select time, label, source, routed from learned_examples where time >= ?",
                [since]).fetchall():
            if label == "support" and source == "forward":
                w = week(t)
                w["forwarded"] += 1
                w["routed" if routed == 1 else "missed" if routed == 0 else "unseen"] += 1
            elif label == "other" and routed == 1:
                week(t)["not_request_after_routing"] += 1
        size = _size(db)
    if "decisions" in tables:
        for (t,) in db.execute(
                "select time from decisions where time >= ? and ',' || rules || ',' like ? "
                "and action in ('copy', 'redirect', 'tag')",
                [since, f"%,{SITE_RULE},%"]).fetchall():
            week(t)["routed_by_learning"] += 1
    return {"weeks": dict(sorted(weeks.items())), **size}


def _size(db: sqlite_utils.Database) -> dict[str, int]:
    """How many labels and learned adjustments the state holds."""
    if "learned_weights" not in db.table_names():
        return {"examples": 0, "features": 0}
    return {"examples": db.execute("select count(*) from learned_examples").fetchone()[0],
            "features": db.execute("select count(*) from learned_weights").fetchone()[0]}


def _iso_week(t: float) -> tuple[int, int, int]:
    year, week, day = datetime.datetime.fromtimestamp(t, datetime.UTC).isocalendar()
    return year, week, day


# --- reading labelled mail -------------------------------------------------------------

def read_messages(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of every message at ``path``: an .eml file, a Maildir
    (``cur``/``new``/``tmp``) or an mbox file.  Raises OSError or ValueError with a
    clear message for anything else."""
    path = Path(path)
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new")):
            raise ValueError(f"{path}: a folder must be a Maildir (with cur/ and new/)")
        box = mailbox.Maildir(str(path), factory=None, create=False)
        for key in sorted(box.keys()):
            with box.get_file(key) as fh:
                yield f"{path.name}/{key}", fh.read()
        return
    data = path.read_bytes()
    if data.startswith(b"From "):
        box_m = mailbox.mbox(str(path), factory=None, create=False)
        for n, key in enumerate(box_m.keys(), 1):
            yield f"{path.name}#{n}", box_m.get_bytes(key)
        return
    yield path.name, data



# --- staff forwards ---------------------------------------------------------------------

# A forwarded header block's sender line: "De : Jean <jean@x.fr>", "From: jean@x.fr".
_FORWARDED_FROM = re.compile(
    r"^[ \t>]*\*?(?:de|from|von|exp[ée]diteur)[ \t]*:\*?[ \t]*([^\n]{1,300})$",
    re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")


@dataclass(frozen=True)
class Forward:
    """The client mail a staff forward carries."""

    subject: str
    text: str
    original_id: str          # its Message-ID, when the forward carries it
    original_from: str        # its sender's address, lower-cased ("" when unknown)


def carried_forward(msg: ParsedMessage) -> Forward | None:
    """The original a forward carries (attached ``message/rfc822`` or inline under a
    banner / Outlook header block), or None when ``msg`` is not a forward."""
    subject, text, original_id, forwarded = carried_request(msg)
    if not forwarded:
        return None
    original_from = ""
    attached = _attached(msg)
    if attached is not None:
        original_from = from_address(str(attached.get("From", "") or ""))
    else:
        found = _FORWARDED_FROM.search(msg.text[:TEXT_CAP])
        if found:
            address = _ADDRESS.search(found.group(1))
            original_from = address.group(0).lower() if address else ""
    return Forward(subject, text, original_id, original_from.lower())


def _attached(msg: ParsedMessage) -> Message | None:
    if not msg.may_attach_message:
        return None
    for part in msg.msg.walk():
        if part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
    return None


@dataclass(frozen=True)
class Original:
    """The milter's decision on the original of a forward, when it saw it."""

    message_id: str
    time: float
    routed: bool              # it reached assistance (routed, tagged, duplicate of one)
    watched: bool             # it went to a watched address


def find_original(db: sqlite_utils.Database, forward: Forward, fp: Fingerprint | None, *,
                  now: float, window: float, threshold: float) -> Original | None:
    """The decision on a forward's original: by its Message-ID, else by the duplicate
    fingerprint, else the latest decision on mail from the same sender to a watched
    address within ``window``.  None when none is found."""
    if "decisions" not in db.table_names():
        return None
    ids = [forward.original_id] if forward.original_id else []
    if not ids and fp is not None and FINGERPRINTS in db.table_names():
        with contextlib.suppress(sqlite3.Error):
            match = find_duplicate(db, fp, now=now, window=window, threshold=threshold)
            if match is not None and match.of_message_id:
                ids.append(match.of_message_id)
    cols = "message_id, time, verdict, action, watch_group"
    row = None
    for message_id in ids:
        row = db.execute(f"select {cols} from decisions where message_id = ? "
                         "order by time desc limit 1", [message_id]).fetchone()
        if row:
            break
    if row is None and forward.original_from:
        row = db.execute(
            f"select {cols} from decisions where (from_addr = ? or mail_from = ?) "
            "and time >= ? and watch_group is not null and watch_group != '' "
            "order by time desc limit 1",
            [forward.original_from, forward.original_from, now - window]).fetchone()
    if row is None:
        return None
    message_id, when, verdict, action, group = row
    return Original(message_id or "", float(when), was_routed(verdict, action), bool(group))
