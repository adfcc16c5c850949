"""Shared state for several MX hosts: a ``Store`` whose memory lives in Redis.

A site with a primary and a backup MX runs one milter per host.  With
``[state] backend = "redis"`` they share, through one Redis server:

* duplicate fingerprints and their lookup keys, expiring with ``dedup.window``:
  a request sent to ``contact@`` through one MX and resent to assistance
  through the other is recognised;
* guidance rate limits: "last guided" per sender (``autoreply.every``) and the
  hourly budget (``autoreply.max_per_hour``) for all hosts together.  Queueing
  a guidance mail is an atomic claim in Redis (one Lua script checks both
  limits and takes them), so of two hosts deciding at the same moment exactly
  one queues the mail; it goes to that host's own outbox and is sent from there
  (a host's outbox survives its restarts, so nothing is sent twice or lost).

Per host, in the local SQLite file as with the default backend: the decision
log that ``report`` reads, guidance events and the outbox.  This class wraps a
``SQLiteStore`` for them.

Contract, the same as the SQLite store's (``store.Store`` is the seam; the
policy code does not know which backend it talks to):

* no body and no secret value is ever written: a fingerprint row holds hashes,
  MinHash signatures, the Message-ID, addresses and the verdict's side;
* most messages wait for no round trip: as the SQLite store answers from its
  newest rows held in memory, each host holds the newest ``MIRROR_ROWS`` rows of
  *every* host (``_Mirror``): its own from the moment they are decided, the
  others' as a reader thread receives them from a Redis stream that filing a
  row appends to (``XADD``, trimmed to ``STREAM_MAX`` entries; the reader waits
  on it with ``XREAD BLOCK`` on a connection of its own).  Beside them, a
  filter (``KeyFilter``) of the keys Redis may hold rows of beyond memory:
  seeded from the buckets' keys when the reader (re)starts, fed with the keys
  of the rows memory lets go.  A lookup none of whose keys the filter holds is
  answered from memory, exactly as Redis would answer it; the others, and every
  lookup while the reader is not in step (starting, or after it lost its place:
  the stream trimmed past it, Redis flushed, restarted or unreachable), wait for
  one round trip: one script looks up every key of the fingerprint and fetches
  the rows they name.  Filing a row is a round trip made by a writer thread once
  the message went through (``commit``), batched with other messages' rows, as
  the SQLite store's writer does.  A message that earns a guidance mail (at
  most one per sender per ``autoreply.every``) waits for one more: the claim;
* check, plan and remember are atomic on one host: a lock spans them, and rows
  not yet in Redis are looked up in memory (``_Unwritten``, as in the SQLite
  store) until the writer has filed them.  Between hosts, a row is visible once
  filed and received by the other host's reader: within about ``LINGER`` (20 ms,
  the writer gathering rows into one round trip) after its message went through
  (a lookup first takes in what has reached the reader's socket);
* row ids are numbered without a round trip, from blocks of ``ID_BLOCK`` ids
  that each host reserves ahead from one Redis counter (``INCRBY``).  On one
  host ids grow with the order of decisions, so the same messages in the same
  order give the same decisions; between hosts, ids order rows by block, not by
  time (``dedup.find_duplicate`` reads "newest" as "highest id"; see the README);
* faults (Redis down, slow, restarted, flushed) never cost mail: every command
  has a timeout; the first failure opens a breaker for ``RETRY`` seconds, during
  which messages do not even try (no thread waits on a dead server); then the
  next message probes again.  While Redis is away mail flows per
  ``milter.on_error``: ``accept`` decides without shared state (no duplicate
  found, nothing remembered, no guidance mail: better none than two), and
  ``tempfail`` raises ``StateUnavailable``, which the milter turns into a
  temporary failure.  One log line when an outage starts, one when it ends.
  Memory answers only while the reader is in step: a killed or restarted
  server closes its connection, which the next lookup sees; a hung one is
  noticed when the reader's ``XREAD`` (``BLOCK`` seconds) is ``timeout`` late,
  and a flushed one at the reader's next wake (at most ``BLOCK``: it checks the
  counters when idle, the stream's sequence when not).  Until then a lookup may
  be answered from memory, as if it had come that much earlier.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
import logging
import queue
import select
import threading
import time
import weakref
from bisect import insort
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import dedup
from .config import Config
from .store import (
    GuidanceEvent,
    KeyFilter,
    OutboxRow,
    Pending,
    Plan,
    SQLiteStore,
    _Unwritten,  # the same in-memory index of rows not filed yet
    take_batch,
)

log = logging.getLogger("helpdesk_milter.state")

BUCKETS = 4          # lookup-key buckets per window (see the scripts)


class StateUnavailable(RuntimeError):
    """The shared state could not be reached (and ``on_error`` is ``tempfail``)."""


# --- scripts -----------------------------------------------------------------------

# Where the rows are: each fingerprint row is a string key ``f:ID`` expiring with
# the window; its lookup keys map to row ids in *buckets*, one hash per quarter of
# the window (``h:N``, N = time // (window / 4)): field = lookup key, value = the
# newest row ids filed under it in that quarter ("ID,ID,...", at most ROWS_PER_KEY).
# A bucket expires a window after its last write, so the state forgets with the
# window, and a lookup reads the five buckets that cover it with one HMGET each:
# a few Redis calls per message instead of one per key (a list per key cost
# 24 calls to read and 72 to write, which a loaded server feels).
#
# The scripts take the lookup keys in one space-separated argument: one argument
# instead of two dozen makes the request cheap to pack.  They name keys outside
# KEYS: fine on one server (with Sentinel for failover), not for Redis Cluster.

# ARGV: 1 rows per key, 2 bucket key prefix, 3 row key prefix, 4 the lookup keys,
# 5 the row counter key, 6 how many of the keys are strong (Message-ID and text
# keys come first, LSH band keys after), 7 the near-duplicate candidates to read,
# 8 the newest bucket's number, 9 how many buckets to read, 10 row ids to reserve
# (0: none).
# Returns {END, "I:ID,ID;I:ID", ID, row, ID, row, ...}: END, the last id of the
# block of row ids reserved (0 when none was asked for); for each key that has
# rows (I its position from 1), its newest row ids; then the rows
# ``dedup.find_duplicate`` may read: every row found by a strong key, and the band
# candidates that share most bands (ties: the newest), as it ranks them.  A row
# gone (expired) is left out.  Most mail: {END, ""}.
_LOOKUP = """
local new = 0
if ARGV[10] ~= '0' then new = redis.call('INCRBY', ARGV[5], ARGV[10]) end
local n, nstrong, ncand = tonumber(ARGV[1]), tonumber(ARGV[6]), tonumber(ARGV[7])
local fields = {}
for key in string.gmatch(ARGV[4], '%S+') do fields[#fields + 1] = key end
local per = {}
local newest = tonumber(ARGV[8])
for b = newest, newest - tonumber(ARGV[9]) + 1, -1 do
  local values = redis.call('HMGET', ARGV[2] .. b, unpack(fields))
  for i = 1, #fields do
    if values[i] then
      local ids = per[i]
      if not ids then
        ids = {}
        per[i] = ids
      end
      for id in string.gmatch(values[i], '[^,]+') do
        if #ids < n then ids[#ids + 1] = id end
      end
    end
  end
end
local lists, strong, hits = {}, {}, {}
for i = 1, #fields do
  local ids = per[i]
  if ids then
    lists[#lists + 1] = i .. ':' .. table.concat(ids, ',')
    for _, id in ipairs(ids) do
      if i <= nstrong then strong[id] = true else hits[id] = (hits[id] or 0) + 1 end
    end
  end
end
local wanted = {}
for id in pairs(strong) do wanted[#wanted + 1] = id end
local cands = {}
for id, count in pairs(hits) do
  if not strong[id] then cands[#cands + 1] = {count, tonumber(id), id} end
end
table.sort(cands, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end)
for j = 1, math.min(ncand, #cands) do wanted[#wanted + 1] = cands[j][3] end
local out = {new, table.concat(lists, ';')}
if #wanted > 0 then
  local names = {}
  for j, id in ipairs(wanted) do names[j] = ARGV[3] .. id end
  local rows = redis.call('MGET', unpack(names))
  for j, id in ipairs(wanted) do
    if rows[j] then
      out[#out + 1] = id
      out[#out + 1] = rows[j]
    end
  end
end
return out
"""

# ARGV: 1 the row key prefix, 2 a row's lifetime (ms), 3 rows kept per key, 4 the
# buckets' lifetime (ms), 5 the stream, 6 the stream's sequence counter, 7 the
# stream's length (about); then four per row: its id, its bucket key, the row, its
# lookup keys.  One call files a whole batch (one command to pack and one reply to
# read for the writer thread, however many rows).  Each row is also appended to the
# stream the hosts' readers follow, numbered by the sequence counter (one more per
# entry: a reader that sees a gap lost its place).  The stream and its counter
# expire with the buckets.
_REMEMBER = """
local keep = tonumber(ARGV[3])
local filed = 0
for base = 8, #ARGV, 4 do
  local id, bucket, row, keys = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local seq = redis.call('INCR', ARGV[6])
  redis.call('XADD', ARGV[5], 'MAXLEN', '~', ARGV[7], '*', 'q', seq, 'i', id,
             'k', keys, 'r', row)
  redis.call('SET', ARGV[1] .. id, row, 'PX', ARGV[2])
  local fields = {}
  for key in string.gmatch(keys, '%S+') do fields[#fields + 1] = key end
  if #fields > 0 then
    local old = redis.call('HMGET', bucket, unpack(fields))
    local pairs_ = {}
    for i = 1, #fields do
      local value, count = id, 1
      if old[i] then
        for previous in string.gmatch(old[i], '[^,]+') do
          if count >= keep then break end
          value = value .. ',' .. previous
          count = count + 1
        end
      end
      pairs_[#pairs_ + 1] = fields[i]
      pairs_[#pairs_ + 1] = value
    end
    redis.call('HSET', bucket, unpack(pairs_))
    redis.call('PEXPIRE', bucket, ARGV[4])
  end
  filed = filed + 1
end
redis.call('PEXPIRE', ARGV[6], ARGV[4])
redis.call('PEXPIRE', ARGV[5], ARGV[4])
return filed
"""

# Where a reader starts (atomic): ARGV 1 the stream, 2 its sequence counter, 3 the
# row counter.  Returns {the stream's last entry id ("0-0": none), the sequence
# number of that entry, the row counter}.
_MARK = """
local last = redis.call('XREVRANGE', ARGV[1], '+', '-', 'COUNT', 1)
local pos = '0-0'
if #last > 0 then pos = last[1][1] end
return {pos, redis.call('GET', ARGV[2]) or '0', redis.call('GET', ARGV[3]) or '0'}
"""

# KEYS[1]: the sender's "last guided" time, KEYS[2]: the last hour's guidance mails
# (a sorted set by time).  ARGV: now, every (s), per hour, this claim's member, every
# (ms).  Checks both limits and, when neither says no, takes them: atomic, so of
# two hosts exactly one gets "ok".
_CLAIM = """
local now = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if last and tonumber(last) > now - tonumber(ARGV[2]) then return 'rate-limited' end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[6])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 'hourly-cap' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], 3600000)
return 'ok'
"""

# Take a claim back (its message did not go through): only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


def describe_url(url: str) -> str:
    """``url`` without user name or password (for logs and check-config)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or ''}"


def read_password(path: str) -> str | None:
    """The password in ``path`` (first line, surrounding blanks dropped); None for ""."""
    if not path:
        return None
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def _encode_row(row: dedup.Row) -> bytes:
    b64 = binascii.b2a_base64
    return json.dumps([row["time"], row["message_id"], row["sender"], row["structure"],
                       row["side"], row["assistance"], row["routed"], row["shingles"],
                       b64(row["minhash"], newline=False).decode(),
                       b64(row["idents"], newline=False).decode()],
                      separators=(",", ":")).encode()


def _decode_row(rowid: int, blob: bytes) -> dedup.Row:
    (when, message_id, sender, structure, side, assistance, routed, shingles, minhash,
     idents) = json.loads(blob)
    return {"id": rowid, "time": when, "message_id": message_id, "sender": sender,
            "structure": structure, "side": side, "assistance": assistance,
            "routed": routed, "shingles": shingles,
            "minhash": binascii.a2b_base64(minhash), "idents": binascii.a2b_base64(idents)}


class _DecodedRows:
    """Rows decoded from their Redis form, the newest ``size`` kept (not thread-safe).

    Keyed by the stored bytes, not by the id alone: a flushed Redis numbers rows
    from 1 again, and an id must never bring back another row.  The rows handed out
    are shared: nobody changes a row once it is made.
    """

    def __init__(self, size: int):
        self.size = size
        self._rows: dict[bytes, dedup.Row] = {}

    def get(self, rowid: int, blob: bytes) -> dedup.Row:
        row = self._rows.get(blob)
        if row is None or row["id"] != rowid:
            row = _decode_row(rowid, blob)
            rows = self._rows
            if len(rows) >= self.size:
                del rows[next(iter(rows))]       # the oldest decoded
            rows[blob] = row
        return row


class _Mirror(_Unwritten):
    """The newest ``size`` fingerprint rows of every host, by lookup key (lock held):
    the SQLite store's in-memory index (``_Unwritten``: its ``remove``), with rows
    that may arrive out of id order and a bound.

    Each key's rows are kept in id order (as ``find_duplicate`` ranks them: the
    highest ids are the "newest"); rows leave in the order they came, the oldest
    first beyond ``size``, handed to ``let_go`` with their keys and time, so that
    Redis is asked for those keys from then on.
    """

    def __init__(self, size: int, let_go: Callable[[Sequence[int], float], None]):
        super().__init__()
        self.size = size
        self._let_go = let_go

    def __contains__(self, rowid: int) -> bool:
        return rowid in self._rows

    def add(self, row: dedup.Row, keys: Sequence[int]) -> None:
        rowid = row["id"]
        if rowid in self._rows:
            return
        self._rows[rowid] = (row, keys)
        by_key = self.by_key
        for key in keys:
            rows = by_key.get(key)
            if rows is None:
                by_key[key] = [row]
            elif rows[-1]["id"] < rowid:
                rows.append(row)
            else:                     # another host's row from an earlier id block
                insort(rows, row, key=_row_id)
        while len(self._rows) > self.size:
            oldest = next(iter(self._rows))
            old, old_keys = self._rows[oldest]
            self.remove(oldest)
            self._let_go(old_keys, old["time"])

    def clear(self) -> None:
        self.by_key.clear()
        self._rows.clear()


def _row_id(row: dedup.Row) -> int:
    return int(row["id"])


_BEYOND = object()     # a lookup memory cannot answer: ask Redis


class RedisStore:
    """A ``Store`` sharing duplicates and guidance limits between hosts through Redis.

    ``local`` keeps what stays per host (decisions, guidance events, outbox).
    ``client`` may be given (tests); otherwise one is made from ``url`` with a
    blocking connection pool, so that a thread waits at most ``timeout`` for a
    connection, then at most ``timeout`` for the answer.

    Three threads talk to Redis: the message's (a lookup memory cannot answer, a
    guidance claim, a block of row ids when the reader could not reserve one
    ahead), the writer (files rows, batched) and the reader (follows the stream
    of filed rows on a connection of its own; reserves blocks of ids ahead; checks
    that Redis was not flushed when idle).  A lookup also takes in what reached
    the reader's connection, so that it never misses a row because the reader
    thread has not run yet.
    """

    RETRY = 1.0               # seconds the breaker stays open after a failure
    # the claim script checks the limits: asking guidance_allowed first would be a
    # third round trip for a message that earns a guidance mail
    limits_in_claim = True
    MAX_CONNECTIONS = 64
    BATCH = 200               # rows filed per round trip at most
    # seconds the writer gathers rows into one round trip: one pipeline per message
    # cost the writer thread more CPU than the rows themselves (the SQLite store's
    # writer waits 0.1 s; here freshness across hosts is worth more)
    LINGER = 0.02
    QUEUE_MAX = 20_000
    DECODED_ROWS = 1024       # rows read from Redis kept decoded (about 2 KB each)
    # newest rows of every host held in memory (about 3 KB each with their keys'
    # index: 12 MB); a lookup with a key of an older row in the window asks Redis
    MIRROR_ROWS = 4096
    STREAM_MAX = 10_000       # entries the stream keeps (about): a reader's slack
    ID_BLOCK = 256            # row ids reserved at a time
    BLOCK = 0.1               # seconds a reader's XREAD waits for new rows
    READ_COUNT = 500          # stream entries per XREAD at most

    def __init__(self, url: str, *, local: SQLiteStore, window: float = 72 * 3600,
                 similarity: float = 0.75, key_prefix: str = "helpdesk-milter:",
                 timeout: float = 0.5, connect_timeout: float = 0.5,
                 password: str | None = None, on_error: str = "accept",
                 clock: Callable[[], float] = time.time,
                 client: redis.Redis | None = None):
        self.url = describe_url(url)
        self.local = local
        self.window = window
        self.similarity = similarity
        self.prefix = key_prefix
        self.timeout = timeout
        self.on_error = on_error
        self.clock = clock
        # at least 10 ms per bucket: a bucket number then has at most 12 digits, which
        # Lua's numbers (doubles, printed with 14) keep exact
        self._slice = max(window, 0.04) / BUCKETS
        if client is None:
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=self.MAX_CONNECTIONS, timeout=timeout,
                socket_timeout=timeout, socket_connect_timeout=connect_timeout,
                password=password,
                # one quick retry on a dropped connection (a restarted server), none
                # on a timeout: a slow server must not double the wait
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
            client = redis.Redis(connection_pool=pool)
        self.client = client
        self._lookup = client.register_script(_LOOKUP)
        # the lookups' own connection (they run one at a time, under _lock)
        self._line: redis.Connection | None = None
        self._remember = client.register_script(_REMEMBER)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._lock = threading.Lock()
        # the breaker: when the current outage started, when to try again
        self._health = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._skipped = 0
        # what each message holds until it went through: rows to file, steps to undo
        # (weak: a message the milter neither commits nor aborts leaves nothing behind)
        self._held: weakref.WeakKeyDictionary[Pending, _Held] = weakref.WeakKeyDictionary()
        self._held_lock = threading.Lock()
        self._seq = itertools.count(1)
        # rows decided on this host and not filed yet, looked up beside Redis's
        self._unwritten = _Unwritten()
        # rows as read from Redis, decoded (lock held): the same candidates come back
        # lookup after lookup, and decoding is most of this store's own CPU time
        self._decoded = _DecodedRows(self.DECODED_ROWS)
        # the mirror (lock held): the newest rows of every host, and the keys Redis
        # may hold beyond them (None: not known, memory cannot answer)
        self._mirror = _Mirror(self.MIRROR_ROWS, self._let_go)
        self._beyond: KeyFilter | None = None
        self._live = False                 # the reader is in step with the stream
        self._reader_conn: redis.Connection | None = None
        self._poll_lookup: Any = None      # one poll object per thread (not shareable)
        self._poll_reader: Any = None
        self._awaiting: deque[str] = deque()   # replies due on the reader's connection
        self._sent_at = 0.0                # when the reader's last XREAD was sent
        self._last_entry = b"0-0"          # the stream entry the reader is at
        self._last_seq = 0                 # its sequence number
        # row ids (lock held): the block in use (next, last) and a spare one
        self._next_id, self._last_id = 1, 0
        self._spare: tuple[int, int] | None = None
        self._reserved = 0                 # the highest id reserved: if the counter is
                                           # ever below it, Redis was flushed or restarted
        # one reservation in flight at a time, so that blocks come in order: the
        # reader's (ahead of need), or the message's own when none is in flight
        self._reserving = False
        self._ids_floor = self._check_floor = 0   # _reserved when the reader asked
        self.resyncs = 0                   # times the reader (re)started (tests, logs)
        self._run_id: bytes | None = None  # the server's run_id (a restart changes it)
        self._stopping = threading.Event()
        self._closing = threading.Event()      # cuts the writer's linger short
        self._stream = f"{self.prefix}s"
        self._stream_seq = f"{self.prefix}sq"
        self._counter = f"{self.prefix}n"
        self._queue: queue.Queue[_Row | None] = queue.Queue(self.QUEUE_MAX)
        self._dropped = 0
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer",
                                        daemon=True)
        self._writer.start()
        self._reader = threading.Thread(target=self._read_loop, name="redis-reader",
                                        daemon=True)
        self._reader.start()

    # --- health -------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run one round trip, through the breaker; raise StateUnavailable on failure."""
        with self._health:
            if self._down_since is not None and time.monotonic() < self._retry_at:
                self._skipped += 1
                raise StateUnavailable(f"shared state {self.url} is unavailable")
        started = time.monotonic()
        try:
            result = fn()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise StateUnavailable(f"shared state {self.url} is unavailable") from None
        if self._down_since is not None:
            self._recovered(started)
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._health:
            now = time.monotonic()
            self._retry_at = now + self.RETRY
            if self._down_since is not None:
                return
            self._down_since, self._skipped = now, 0
        # redis-py's messages name the host and the error, never a password
        log.error("shared state %s unavailable (%s: %s); until it returns, mail flows per "
                  "on_error=%s%s", self.url, type(exc).__name__, exc, self.on_error,
                  ": no duplicate is recognised across hosts and no guidance mail is "
                  "queued" if self.on_error == "accept" else
                  ": inspected mail is temp-failed")

    def _recovered(self, started: float) -> None:
        """Redis answered a call ``started`` then (``time.monotonic()``): the outage is
        over, unless the call began before it (an answer on its way as it began)."""
        with self._health:
            if self._down_since is None or started < self._down_since:
                return
            down, skipped = time.monotonic() - self._down_since, self._skipped
            self._down_since = None
        log.warning("shared state %s is back after %.1f s (%d lookup(s) made without it)",
                    self.url, down, skipped)

    @property
    def available(self) -> bool:
        """False while an outage is known (the breaker is open or half-open)."""
        return self._down_since is None

    def _unavailable(self) -> None:
        """What a failed round trip means for this message: with ``tempfail`` the
        message is temp-failed (the caller lets the exception through)."""
        if self.on_error == "tempfail":
            raise StateUnavailable(f"shared state {self.url} is unavailable")

    def ping(self) -> bool:
        """One round trip (start-up check, tests); False when Redis cannot answer."""
        try:
            self._call(self.client.ping)
        except StateUnavailable:
            return False
        return True

    # --- duplicates ---------------------------------------------------------------

    def check_and_remember(self, fp: dedup.Fingerprint, plan: Plan, *,
                           pending: Pending | None = None) -> dedup.Match | None:
        """Find the earlier copy of ``fp`` in the shared state, let ``plan`` decide,
        remember the result.  From memory when the reader is in step and no key of
        ``fp`` may have rows in Redis beyond memory (most mail: no round trip),
        else with one round trip; the row is filed in Redis by the writer thread
        once the message went through (at once without ``pending``).

        Either way ``dedup.find_duplicate`` reads the rows Redis holds for each
        key and those not filed yet, so the rules are exactly the SQLite store's.
        Without Redis (and ``on_error = "accept"``) the message is decided as if
        nothing were remembered, and what it would leave is lost, never the message.
        """
        keys = dedup.lookup_keys(fp)
        # a thread waits for the lock at most as long as the holder can take
        if not self._lock.acquire(timeout=2 * self.timeout + 1.0):
            self._unavailable()
            plan(None)
            return None
        try:
            now = self.clock()
            numbered = False            # an id is ready for this message's row
            try:
                match: Any = None
                if keys:
                    match = self._recall(fp, keys, now) if self._in_step() else _BEYOND
                    if match is _BEYOND:
                        match = self._find(fp, keys, now)
                    if self._needs_ids():
                        self._reserve_now()
                    numbered = True
            except StateUnavailable:
                self._unavailable()
                match = None
            remember = plan(match)
            if remember is not None and numbered:
                rowid = self._take_id()
                row = dedup.row_of(fp, rowid=rowid, time=now, side=remember.side,
                                   assistance=remember.assistance, routed=remember.routed)
                self._unwritten.add(row, keys)
                self._mirror.add(row, keys)
                item = _Row(rowid, row, keys, self._bucket(now))
                if pending is None:
                    self._enqueue(item)
                else:
                    held = self._held_for(pending)
                    held.rows.append(item)
                    held.undo.append(lambda: self._forget(rowid, filed=False))
        finally:
            self._lock.release()
        return match  # type: ignore[no-any-return]

    def _recall(self, fp: dedup.Fingerprint, keys: Sequence[int], now: float) -> Any:
        """The earlier copy of ``fp`` from memory (lock held, reader in step), or
        ``_BEYOND`` when a key of ``fp`` may have rows in Redis that memory lacks."""
        beyond = self._beyond
        if beyond is None or beyond.holding(keys, now):
            return _BEYOND
        by_key: dict[int, list[dedup.Row]] = {}
        mirrored = self._mirror.by_key
        for key in keys:
            rows = mirrored.get(key)
            if rows:
                # in id order: the ROWS_PER_KEY newest are all a lookup can rank
                by_key[key] = rows[-dedup.ROWS_PER_KEY:]
        self._merge_unwritten(by_key, keys)
        if not by_key:
            return None                # no key of this message is known: most mail
        return dedup.find_duplicate(None, fp, now=now, window=self.window,
                                    threshold=self.similarity, unwritten=by_key)

    def _merge_unwritten(self, by_key: dict[int, list[dedup.Row]],
                         keys: Sequence[int]) -> None:
        """Add this host's rows not filed yet to ``by_key`` (lock held)."""
        held = self._unwritten.by_key
        if held:
            for key in keys:
                mine = held.get(key)
                if mine:
                    there = by_key.get(key, [])
                    known = {r["id"] for r in there}
                    by_key[key] = there + [r for r in mine if r["id"] not in known]

    def _find(self, fp: dedup.Fingerprint, keys: Sequence[int],
              now: float) -> dedup.Match | None:
        """The earlier copy of ``fp``, looked up in Redis (lock held); reserves a
        block of row ids with it when this host has none left."""
        ids, texts, _ = fp.keys
        strong = len(dict.fromkeys(ids + texts))     # lookup_keys puts them first
        reserve = self.ID_BLOCK if self._needs_ids() else 0
        reply = self._call(lambda: self._on_line(self._lookup.sha, _LOOKUP, [
            dedup.ROWS_PER_KEY, f"{self.prefix}h:", f"{self.prefix}f:",
            " ".join(map(str, keys)), self._counter, strong, dedup.MAX_CANDIDATES,
            self._bucket(now), BUCKETS + 1, reserve]))
        if reserve:
            self._add_block(int(reply[0]))
        by_key: dict[int, list[dedup.Row]] = {}
        if reply[1]:
            lists: list[tuple[int, list[int]]] = []
            for entry in reply[1].decode().split(";"):
                position, _, listed = entry.partition(":")
                lists.append((keys[int(position) - 1], [int(x) for x in listed.split(",")]))
            # only the rows find_duplicate would read: the others are left out of
            # the lists too, so that it ranks exactly these
            decoded = self._decoded.get
            rows = {int(reply[j]): decoded(int(reply[j]), reply[j + 1])
                    for j in range(2, len(reply) - 1, 2)}
            for key, rowids in lists:
                found = [rows[r] for r in rowids if r in rows]
                if found:
                    by_key[key] = found
        self._merge_unwritten(by_key, keys)
        if not by_key:
            return None                # no key of this message is known: most mail
        return dedup.find_duplicate(None, fp, now=now, window=self.window,
                                    threshold=self.similarity, unwritten=by_key)

    # --- row ids ------------------------------------------------------------------

    def _needs_ids(self) -> bool:
        """Whether this host has no id left (lock held), after taking in the block
        the reader may have asked for (then it waits for that answer: a round trip
        at most, and only when the reader could not keep ahead)."""
        if self._next_id <= self._last_id or self._spare is not None:
            return False
        if self._reserving:
            self._await_ids()
        return self._next_id > self._last_id and self._spare is None

    def _take_id(self) -> int:
        """The next row id (lock held; the caller made sure one is ready)."""
        if self._next_id > self._last_id and self._spare is not None:
            (self._next_id, self._last_id), self._spare = self._spare, None
        rowid = self._next_id
        self._next_id += 1
        return rowid

    def _add_block(self, last: int) -> None:
        """Ids ``last - ID_BLOCK + 1`` to ``last`` are this host's (lock held).  The
        counter gone back (Redis flushed or restarted): what memory holds is given up."""
        if last <= self._reserved:
            self._lose(flushed=True)
        block = (last - self.ID_BLOCK + 1, last)
        self._reserved = last
        if self._next_id > self._last_id:
            self._next_id, self._last_id = block
        else:
            self._spare = block

    def _drop_ids(self) -> None:
        """Give up the ids reserved (lock held): Redis may have been flushed or
        restarted, and numbers from 1 again: its blocks must not meet ours."""
        self._next_id, self._last_id, self._spare = 1, 0, None

    def _reserve_now(self) -> None:
        """Reserve a block of ids on the message's path (lock held): only when the
        reader could not reserve one ahead (starting, or out of step)."""
        self._add_block(int(self._call(lambda: self._on_line(
            None, "", ["INCRBY", self._counter, self.ID_BLOCK]))))

    def _on_line(self, sha: str | None, script: str, args: list[Any]) -> Any:
        """A command's reply, on the lookups' own connection (lock held): a script
        (``sha``, its text ``script``, its ``args``) or a plain command (``args``).

        One round trip with none of the client's per-command steps (taking a pooled
        connection, the retry wrapper, response callbacks): about 0.1 ms less per
        message.  As the pool does: one new try on a dropped connection (a restarted
        server), none on a timeout; a server that forgot the script (restarted,
        flushed) gets it with the command itself (EVAL, which also caches it): two
        round trips then, never three.
        """
        reconnected = resent = False
        while True:
            conn = self._line
            if conn is None:
                pool = self.client.connection_pool
                conn = self._line = pool.connection_class(**pool.connection_kwargs)
            try:
                if sha is None:
                    conn.send_command(*args)
                elif resent:
                    conn.send_command("EVAL", script, 0, *args)
                else:
                    conn.send_command("EVALSHA", sha, 0, *args)
                return conn.read_response()
            except redis.exceptions.NoScriptError:
                if resent:
                    raise
                resent = True
            except redis.ConnectionError:
                conn.disconnect()
                if reconnected:
                    raise
                reconnected = True
            except BaseException:
                conn.disconnect()       # a reply may still be on its way: start afresh
                raise

    def _bucket(self, now: float) -> int:
        """The number of the bucket that files rows seen at ``now``."""
        return int(now // self._slice)

    def _forget(self, rowid: int, *, filed: bool) -> None:
        """Take a row out of the rows not filed (lock held); out of memory altogether
        unless it reached Redis (``filed``)."""
        self._unwritten.remove(rowid)
        if not filed:
            self._mirror.remove(rowid)

    # --- the mirror: the newest rows of every host, through the stream ------------

    def _let_go(self, keys: Sequence[int], when: float) -> None:
        """A row leaves memory (``_Mirror``): Redis answers for its keys from now."""
        if self._beyond is not None:
            self._beyond.add(keys, when)

    def _in_step(self) -> bool:
        """Whether memory may answer a lookup now (lock held): the reader is in step,
        Redis is not known to be away, and what reached the reader's socket (rows
        filed by any host before this lookup began, a closed connection) is taken
        in first."""
        if not self._live or self._down_since is not None:
            return False
        if self._poll_lookup.poll(0):
            self._drain()
            if not self._live:
                return False
        # an XREAD long overdue: Redis may hang (the reader will say so)
        return time.monotonic() - self._sent_at < self.BLOCK + self.timeout

    def _read_loop(self) -> None:
        """The reader thread: (re)start in step with the stream, then take in what
        arrives.  Everything it changes, it changes under the store's lock."""
        while not self._stopping.is_set():
            conn = self._reader_conn
            if conn is None:
                wait = self._retry_at - time.monotonic() if self._down_since else 0.0
                if wait > 0:
                    self._stopping.wait(min(wait, self.RETRY))
                    continue
                started = time.monotonic()
                try:
                    self._seed()
                except (redis.RedisError, OSError) as exc:
                    with self._lock:
                        self._lose()
                    if not self._stopping.is_set():
                        self._failed(exc)
                    continue
                if self._down_since is not None:
                    self._recovered(started)
                continue
            due = self._sent_at + self.BLOCK + self.timeout
            try:
                ready = self._poll_reader.poll(max(0.0, due - time.monotonic()) * 1000)
            except (OSError, ValueError):
                ready = True
            with self._lock:
                if conn is not self._reader_conn:
                    continue                       # lost (and maybe seeded) meanwhile
                if ready:
                    self._drain()
                elif time.monotonic() >= due and self._awaiting:
                    self._lose()
                    self._failed(redis.TimeoutError(
                        f"no answer to XREAD in {self.BLOCK + self.timeout:.1f} s"))

    def _seed(self) -> None:
        """Start in step: mark the stream's end, read every key the buckets hold
        (rows filed before the mark: Redis answers for them), then follow the
        stream from the mark.  Network on this thread, without the lock."""
        pool = self.client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = self.BLOCK + self.timeout
        conn = pool.connection_class(**kwargs)
        with self._lock:
            floor = self._reserved
        try:
            conn.connect()
            now = self.clock()
            conn.send_command("INFO", "server")
            info = conn.read_response()
            run_id = next((line.split(b":", 1)[1].strip() for line in
                           (info if isinstance(info, bytes) else str(info).encode()
                            ).splitlines() if line.startswith(b"run_id:")), b"")
            conn.send_command("EVAL", _MARK, 0, self._stream, self._stream_seq,
                              self._counter)
            entry, seq, counter = conn.read_response()
            keys: list[int] = []
            newest = self._bucket(now)
            for bucket in range(newest, newest - BUCKETS - 1, -1):
                cursor = b"0"
                while True:
                    conn.send_command("HSCAN", f"{self.prefix}h:{bucket}", cursor,
                                      "COUNT", 1000)
                    cursor, items = conn.read_response()
                    keys.extend(int(k) for k in items[0::2])
                    if cursor in (b"0", 0, "0"):
                        break
        except BaseException:
            conn.disconnect()
            raise
        beyond = KeyFilter(self.window, capacity=2 * len(keys))
        if keys:
            beyond.load(keys, oldest=now - self.window, newest=now)
        sock = conn._sock
        with self._lock:
            if self._stopping.is_set():
                conn.disconnect()
                return
            if int(counter) < floor or run_id != (self._run_id or run_id):
                self._forget_all()                # flushed or restarted while away
            self._run_id = run_id
            self._beyond = beyond
            self._last_entry, self._last_seq = entry, int(seq)
            self._reader_conn = conn
            self._poll_lookup, self._poll_reader = select.poll(), select.poll()
            for poller in (self._poll_lookup, self._poll_reader):
                poller.register(sock, select.POLLIN | select.POLLPRI)
            self._awaiting.clear()
            self._live = True
            self.resyncs += 1
            self._send_next(idle=False)

    def _lose(self, *, flushed: bool = False) -> None:
        """The reader is out of step (lock held): memory no longer answers until it
        starts again; the ids reserved are given up (Redis may number from 1 again).
        The rows memory holds stay (this host's, decided since, too) unless Redis
        was ``flushed``: its ids may come back naming other rows."""
        conn, self._reader_conn = self._reader_conn, None
        self._live = False
        self._reserving = False
        self._awaiting.clear()
        self._beyond = None
        self._drop_ids()
        if flushed:
            self._forget_all()
        if conn is not None:
            conn.disconnect()

    def _forget_all(self) -> None:
        """Redis was flushed or restarted (lock held): the rows of memory that Redis
        had are gone there, and their ids may be numbered again."""
        self._drop_ids()
        self._reserved = self._ids_floor = self._check_floor = 0
        self._mirror.clear()
        for row, keys in list(self._unwritten._rows.values()):
            self._mirror.add(row, keys)      # not filed yet: the writer files them

    def _send_next(self, *, idle: bool) -> None:
        """Ask for what comes next on the reader's connection (lock held): after an
        idle wait, the counters (a flushed Redis has lost them); a spare block of
        row ids when none is ready; then the stream's next entries."""
        conn = self._reader_conn
        assert conn is not None
        commands: list[tuple[Any, ...]] = []
        kinds: list[str] = []
        if idle:
            commands.append(("MGET", self._stream_seq, self._counter))
            kinds.append("check")
            self._check_floor = self._reserved
        if self._spare is None and not self._reserving:
            commands.append(("INCRBY", self._counter, self.ID_BLOCK))
            kinds.append("ids")
            self._reserving, self._ids_floor = True, self._reserved
        commands.append(("XREAD", "COUNT", self.READ_COUNT, "BLOCK", int(self.BLOCK * 1000),
                         "STREAMS", self._stream, self._last_entry))
        kinds.append("xread")
        conn.send_packed_command(conn.pack_commands(commands))
        self._awaiting.extend(kinds)
        self._sent_at = time.monotonic()

    def _drain(self) -> None:
        """Take in every reply that has arrived on the reader's connection (lock held)."""
        conn = self._reader_conn
        try:
            while conn is not None and self._awaiting and conn.can_read(0):
                if not self._take(conn.read_response()):
                    return
        except (redis.RedisError, OSError) as exc:
            self._lose()
            self._failed(exc)

    def _await_ids(self) -> None:
        """Wait for the block of ids the reader asked for (lock held): its answer
        comes before the pending XREAD's, within a round trip."""
        conn = self._reader_conn
        try:
            while conn is not None and self._reserving and self._awaiting \
                    and self._awaiting[0] != "xread":
                if not self._take(conn.read_response()):
                    return
        except (redis.RedisError, OSError) as exc:
            self._lose()
            self._failed(exc)

    def _take(self, reply: Any) -> bool:
        """Take in one reply on the reader's connection (lock held); False when the
        reader lost its place."""
        kind = self._awaiting.popleft()
        if kind == "xread":
            if not self._apply(reply):
                return False
            self._send_next(idle=reply is None)
        elif kind == "ids":
            self._reserving = False
            last = int(reply)
            if last <= self._ids_floor:
                self._lose(flushed=True)           # the counter went back
                return False
            self._add_block(last)
        else:
            seq, counter = (int(v or 0) for v in reply)
            if seq < self._last_seq or counter < self._check_floor:
                self._lose(flushed=True)           # (or the stream expired: no harm)
                return False
        return True

    def _apply(self, reply: Any) -> bool:
        """Take in the stream entries of an XREAD reply (lock held); False when the
        reader lost its place (a gap in the sequence: entries trimmed before it read
        them, or a flushed Redis numbering again)."""
        if not reply:
            return True
        mirror = self._mirror
        # a map under RESP3 (redis-py's default), a list of pairs under RESP2
        for _stream, entries in (reply.items() if isinstance(reply, dict) else reply):
            for entry, fields in entries:
                seq = int(fields[1])
                if seq != self._last_seq + 1:
                    self._lose()
                    return False
                self._last_seq, self._last_entry = seq, entry
                rowid = int(fields[3])
                if rowid not in mirror:            # (this host's: held since decided)
                    mirror.add(_decode_row(rowid, fields[7]),
                               [int(k) for k in fields[5].split()])
        return True

    # --- the writer ---------------------------------------------------------------

    def _enqueue(self, item: _Row) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._forget(item.rowid, filed=False)
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("shared state %s is not keeping up: %d fingerprint(s) dropped",
                            self.url, self._dropped)

    def _write_loop(self) -> None:
        ttl = max(1, int(self.window * 1000))
        bucket_ttl = int((self.window + self._slice) * 1000) + 1
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                break
            batch, stop = take_batch(self._queue, first, self.BATCH, self.LINGER,
                                     self._closing)

            def write(batch: list[_Row] = batch) -> None:
                # the whole batch in one EVALSHA (rows beside each other in ARGV); a
                # restarted Redis has forgotten the script: load it, send again
                args: list[Any] = [f"{self.prefix}f:", ttl, dedup.ROWS_PER_KEY,
                                   bucket_ttl, self._stream, self._stream_seq,
                                   self.STREAM_MAX]
                prefix = f"{self.prefix}h:"
                for row in batch:
                    args += (row.rowid, f"{prefix}{row.bucket}", row.blob(),
                             " ".join(map(str, row.keys)))
                try:
                    self.client.evalsha(self._remember.sha, 0, *args)
                except redis.exceptions.NoScriptError:
                    self.client.script_load(_REMEMBER)
                    self.client.evalsha(self._remember.sha, 0, *args)

            filed = False
            try:
                self._call(write)
                filed = True
            except StateUnavailable:
                pass                    # logged once per outage; the rows are lost
            except Exception as exc:    # never let the writer die
                log.error("shared state %s: cannot file %d row(s): %s", self.url,
                          len(batch), type(exc).__name__)
            finally:
                # filed (Redis answers for them now: memory keeps the newest, as it
                # keeps every host's) or lost (out of memory altogether)
                with self._lock:
                    for row in batch:
                        self._forget(row.rowid, filed=filed)
                for _ in batch:
                    self._queue.task_done()
            if stop:
                break

    # --- guidance mail ------------------------------------------------------------

    def _guidance_keys(self, to_addr: str) -> list[str]:
        # hashed: bounded key names whatever the address
        digest = hashlib.blake2b(to_addr.lower().encode("utf-8", "surrogatepass"),
                                 digest_size=12).hexdigest()
        return [f"{self.prefix}g:{digest}", f"{self.prefix}gh"]

    def guidance_allowed(self, to_addr: str, *, every: float, per_hour: int) -> str | None:
        """None when a guidance mail to ``to_addr`` may be queued now, else the reason
        ("rate-limited", "hourly-cap", or "state-unavailable" without Redis)."""
        last_key, hour_key = self._guidance_keys(to_addr)
        now = self.clock()

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(last_key)
            pipe.zcount(hour_key, now - 3600, "+inf")
            return pipe.execute()  # type: ignore[no-any-return]

        try:
            last, recent = self._call(read)
        except StateUnavailable:
            self._unavailable()
            return "state-unavailable"
        if last is not None and float(last) > now - every:
            return "rate-limited"
        if int(recent) >= per_hour:
            return "hourly-cap"
        return None

    def queue_guidance(self, to_addr: str, build: Callable[[], OutboxRow], *, every: float,
                       per_hour: int, queue_id: str = "",
                       pending: Pending | None = None) -> str:
        """Claim the sender's guidance in Redis (atomic across hosts), then queue the
        mail in this host's outbox; returns "queued" or the reason it was not."""
        key = to_addr.lower()
        last_key, hour_key = self._guidance_keys(key)
        now = self.clock()
        stamp = repr(now)
        member = f"{stamp}:{id(self)}:{next(self._seq)}"
        try:
            answer = self._call(lambda: self._claim(
                keys=[last_key, hour_key],
                args=[stamp, every, per_hour, member, max(1, int(every * 1000)),
                      repr(now - 3600)]))
            outcome = answer.decode() if isinstance(answer, bytes) else str(answer)
        except StateUnavailable:
            self._unavailable()
            outcome = "state-unavailable"
        if outcome != "ok":
            self.local.record_guidance_event(GuidanceEvent(
                time=now, to_addr=key, queue_id=queue_id, outcome="suppressed",
                reason=outcome), pending=pending)
            return outcome
        if pending is not None:
            self._held_for(pending).claims.append(lambda: self._release(
                keys=[last_key, hour_key], args=[stamp, member]))
        # the local store keeps the row (and, after a flushed Redis, still knows
        # what this host sent: it may only say no where Redis said yes)
        return self.local.queue_guidance(to_addr, build, every=every, per_hour=per_hour,
                                         queue_id=queue_id, pending=pending)

    def record_guidance_event(self, event: GuidanceEvent, *,
                              pending: Pending | None = None) -> None:
        self.local.record_guidance_event(event, pending=pending)

    # --- per host -----------------------------------------------------------------

    def record(self, rec: Any, *, pending: Pending | None = None) -> None:
        self.local.record(rec, pending=pending)

    def _held_for(self, pending: Pending) -> _Held:
        with self._held_lock:
            held = self._held.get(pending)
            if held is None:
                held = self._held[pending] = _Held()
            return held

    def _release_held(self, pending: Pending) -> _Held | None:
        with self._held_lock:
            return self._held.pop(pending, None)

    def commit(self, pending: Pending) -> None:
        """The message went through: file its rows; write the rest locally."""
        held = self._release_held(pending)
        if held is not None:
            for item in held.rows:
                self._enqueue(item)
        self.local.commit(pending)

    def abort(self, pending: Pending) -> None:
        """The message did not go through: forget its rows, take back its claim."""
        held = self._release_held(pending)
        if held is not None:
            with self._lock:
                for undo in reversed(held.undo):
                    undo()
            for claim in held.claims:
                try:
                    self._call(claim)
                except StateUnavailable:
                    # the claim stays until ``every`` ends: the sender may then miss
                    # a guidance mail, which costs advice, not mail
                    break
        self.local.abort(pending)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every row handed to the writer is filed (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        self.local.flush(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._queue.put(None)
        self._closing.set()
        self._writer.join(timeout=2 * self.timeout + 5.0)
        self._stopping.set()
        with self._lock:
            self._lose()
        self._reader.join(timeout=2 * self.timeout + 5.0)
        self.local.close()
        with self._lock:
            if self._line is not None:
                self._line.disconnect()
        try:
            self.client.close()
        except Exception as exc:   # closing must not fail a shutdown
            log.debug("closing the Redis client: %s", type(exc).__name__)


@dataclass(frozen=True)
class _Row:
    """A fingerprint row for the writer: its id, the row, its lookup keys, its bucket.
    Encoded by the writer (``blob``), off the message's path."""

    rowid: int
    row: dedup.Row
    keys: Sequence[int]
    bucket: int

    def blob(self) -> bytes:
        return _encode_row(self.row)


@dataclass
class _Held:
    """What one message holds until it went through."""

    rows: list[_Row] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)      # local, lock held
    claims: list[Callable[[], Any]] = field(default_factory=list)     # in Redis


def open_store(config: Config, *,
               clock: Callable[[], float] = time.time) -> SQLiteStore | RedisStore:
    """The store ``[state]`` asks for: the SQLite file alone, or Redis beside it.

    Raises with a message naming the file or setting at fault.  Redis being
    down is no reason not to start: the outage is logged and mail flows per
    ``milter.on_error`` until Redis answers.
    """
    local = SQLiteStore(config.milter.database, window=config.dedup.window,
                        similarity=config.dedup.similarity, clock=clock)
    state = config.state
    if state.backend != "redis":
        return local
    try:
        if state.redis_password_file and Path(state.redis_password_file).stat().st_mode & 0o004:
            log.warning("state.redis_password_file %s is readable by every user: "
                        "chmod o-r it", state.redis_password_file)
        password = read_password(state.redis_password_file)
    except (OSError, UnicodeDecodeError) as exc:
        local.close()
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"state.redis_password_file {state.redis_password_file}: "
                         f"cannot read it: {reason}") from None
    # observe mode never temp-fails mail (app.tempfails): nor does an outage then
    on_error = "accept" if config.milter.mode == "observe" else config.milter.on_error
    store = RedisStore(state.redis_url, local=local, window=config.dedup.window,
                       similarity=config.dedup.similarity, key_prefix=state.key_prefix,
                       timeout=state.timeout, connect_timeout=state.connect_timeout,
                       password=password, on_error=on_error, clock=clock)
    if store.ping():
        log.info("shared state: %s (key prefix %r)", store.url, state.key_prefix)
    return store
