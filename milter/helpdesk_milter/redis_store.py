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
* a message waits for one round trip: one script looks up every key of the
  fingerprint, fetches the rows they name and numbers the row this message may
  leave.  Filing that row is a second round trip, made by a writer thread once
  the message went through (``commit``), batched with other messages' rows, as
  the SQLite store's writer does.  A message that earns a guidance mail (at
  most one per sender per ``autoreply.every``) waits for two more: the
  rate-limit read and the claim;
* check, plan and remember are atomic on one host: a lock spans them, and rows
  not yet in Redis are looked up in memory (``_Unwritten``, as in the SQLite
  store) until the writer has filed them.  Between hosts, a row is visible once
  filed: a few milliseconds after its message went through;
* row ids come from one Redis counter, so the same messages in the same order
  give the same decisions, on one host or several;
* faults (Redis down, slow, restarted, flushed) never cost mail: every command
  has a timeout; the first failure opens a breaker for ``RETRY`` seconds, during
  which messages do not even try (no thread waits on a dead server); then the
  next message probes again.  While Redis is away mail flows per
  ``milter.on_error``: ``accept`` decides without shared state (no duplicate
  found, nothing remembered, no guidance mail: better none than two), and
  ``tempfail`` raises ``StateUnavailable``, which the milter turns into a
  temporary failure.  One log line when an outage starts, one when it ends.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
import logging
import queue
import threading
import time
import weakref
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
# 8 the newest bucket's number, 9 how many buckets to read.
# Returns {NEW, "I:ID,ID;I:ID", ID, row, ID, row, ...}: NEW, the id of the row this
# message may leave (numbered now, so that it is known before it is written); for
# each key that has rows (I its position from 1), its newest row ids; then the rows
# ``dedup.find_duplicate`` may read: every row found by a strong key, and the band
# candidates that share most bands (ties: the newest), as it ranks them.  A row
# gone (expired) is left out.  Most mail: {NEW, ""}.
_LOOKUP = """
local new = redis.call('INCR', ARGV[5])
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

# ARGV: 1 the row id, 2 the row key prefix, 3 the bucket key, 4 the row, 5 its
# lifetime (ms), 6 rows kept per key, 7 the lookup keys, 8 the bucket's lifetime (ms).
_REMEMBER = """
local id = ARGV[1]
redis.call('SET', ARGV[2] .. id, ARGV[4], 'PX', ARGV[5])
local keep = tonumber(ARGV[6])
local fields = {}
for key in string.gmatch(ARGV[7], '%S+') do fields[#fields + 1] = key end
local old = redis.call('HMGET', ARGV[3], unpack(fields))
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
redis.call('HSET', ARGV[3], unpack(pairs_))
redis.call('PEXPIRE', ARGV[3], ARGV[8])
return 1
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


class RedisStore:
    """A ``Store`` sharing duplicates and guidance limits between hosts through Redis.

    ``local`` keeps what stays per host (decisions, guidance events, outbox).
    ``client`` may be given (tests); otherwise one is made from ``url`` with a
    blocking connection pool, so that a thread waits at most ``timeout`` for a
    connection, then at most ``timeout`` for the answer.
    """

    RETRY = 1.0               # seconds the breaker stays open after a failure
    # the claim script checks the limits: asking guidance_allowed first would be a
    # third round trip for a message that earns a guidance mail
    limits_in_claim = True
    MAX_CONNECTIONS = 64
    BATCH = 200               # rows filed per round trip at most
    QUEUE_MAX = 20_000
    DECODED_ROWS = 2048       # rows kept decoded (about 2 KB each)

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
        self._queue: queue.Queue[_Row | None] = queue.Queue(self.QUEUE_MAX)
        self._dropped = 0
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer",
                                        daemon=True)
        self._writer.start()

    # --- health -------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run one round trip, through the breaker; raise StateUnavailable on failure."""
        with self._health:
            if self._down_since is not None and time.monotonic() < self._retry_at:
                self._skipped += 1
                raise StateUnavailable(f"shared state {self.url} is unavailable")
        try:
            result = fn()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise StateUnavailable(f"shared state {self.url} is unavailable") from None
        if self._down_since is not None:
            self._recovered()
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

    def _recovered(self) -> None:
        with self._health:
            if self._down_since is None:
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
        remember the result: one round trip; the row is filed in Redis by the
        writer thread once the message went through (at once without ``pending``).

        The lookup feeds ``dedup.find_duplicate`` the rows Redis holds for each
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
            rowid: int | None = None
            try:
                match, rowid = self._find(fp, keys, now) if keys else (None, None)
            except StateUnavailable:
                self._unavailable()
                match = None
            remember = plan(match)
            if remember is not None and rowid is not None:
                row = dedup.row_of(fp, rowid=rowid, time=now, side=remember.side,
                                   assistance=remember.assistance, routed=remember.routed)
                self._unwritten.add(row, keys)
                item = _Row(rowid, _encode_row(row), " ".join(map(str, keys)),
                            self._bucket(now))
                if pending is None:
                    self._enqueue(item)
                else:
                    held = self._held_for(pending)
                    held.rows.append(item)
                    held.undo.append(lambda: self._forget(rowid))
        finally:
            self._lock.release()
        return match

    def _find(self, fp: dedup.Fingerprint, keys: Sequence[int],
              now: float) -> tuple[dedup.Match | None, int]:
        """The earlier copy of ``fp`` (lock held) and the id for this message's row."""
        ids, texts, _ = fp.keys
        strong = len(dict.fromkeys(ids + texts))     # lookup_keys puts them first
        reply = self._call(lambda: self._evalsha_lookup([
            dedup.ROWS_PER_KEY, f"{self.prefix}h:", f"{self.prefix}f:",
            " ".join(map(str, keys)), f"{self.prefix}n", strong, dedup.MAX_CANDIDATES,
            self._bucket(now), BUCKETS + 1]))
        rowid = int(reply[0])
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
        held = self._unwritten.by_key
        if held:
            for key in keys:
                mine = held.get(key)
                if mine:
                    there = by_key.get(key, [])
                    filed = {r["id"] for r in there}
                    by_key[key] = there + [r for r in mine if r["id"] not in filed]
        if not by_key:
            return None, rowid             # no key of this message is known: most mail
        return dedup.find_duplicate(None, fp, now=now, window=self.window,
                                    threshold=self.similarity, unwritten=by_key), rowid

    def _evalsha_lookup(self, args: list[Any]) -> Any:
        """The lookup script's reply, on the lookups' own connection (lock held).

        One round trip with none of the client's per-command steps (taking a pooled
        connection, the retry wrapper, response callbacks): about 0.1 ms less per
        message.  As the pool does: one new try on a dropped connection (a restarted
        server), none on a timeout; a server that forgot the script (restarted,
        flushed) gets it with the lookup itself (EVAL, which also caches it): two round
        trips then, never three.
        """
        reconnected = resent = False
        while True:
            conn = self._line
            if conn is None:
                pool = self.client.connection_pool
                conn = self._line = pool.connection_class(**pool.connection_kwargs)
            try:
                if resent:
                    conn.send_command("EVAL", _LOOKUP, 0, *args)
                else:
                    conn.send_command("EVALSHA", self._lookup.sha, 0, *args)
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

    def _forget(self, rowid: int) -> None:
        """Take a row out of the in-memory index (lock held)."""
        self._unwritten.remove(rowid)

    # --- the writer ---------------------------------------------------------------

    def _enqueue(self, item: _Row) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._forget(item.rowid)
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
            batch, stop = take_batch(self._queue, first, self.BATCH)

            def write(batch: list[_Row] = batch) -> None:
                # EVALSHA in a plain pipeline: one round trip (redis-py's script
                # pipelining would first ask SCRIPT EXISTS, a round trip per batch);
                # a restarted Redis has forgotten the script: load it, send again.
                for attempt in range(2):
                    pipe = self.client.pipeline(transaction=False)
                    for row in batch:
                        pipe.evalsha(self._remember.sha, 0, row.rowid, f"{self.prefix}f:",
                                     f"{self.prefix}h:{row.bucket}", row.blob, ttl,
                                     dedup.ROWS_PER_KEY, row.keys, bucket_ttl)
                    results = pipe.execute(raise_on_error=False)
                    failed = [r for r in results if isinstance(r, Exception)]
                    if not failed:
                        return
                    if attempt or not isinstance(failed[0], redis.exceptions.NoScriptError):
                        raise failed[0]
                    self.client.script_load(_REMEMBER)

            try:
                self._call(write)
            except StateUnavailable:
                pass                    # logged once per outage; the rows are lost
            except Exception as exc:    # never let the writer die
                log.error("shared state %s: cannot file %d row(s): %s", self.url,
                          len(batch), type(exc).__name__)
            finally:
                # filed (Redis answers for them now) or lost: out of memory either way
                with self._lock:
                    for row in batch:
                        self._forget(row.rowid)
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
        self._writer.join(timeout=2 * self.timeout + 5.0)
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
    """A fingerprint row for the writer: its id, its encoding, its lookup keys."""

    rowid: int
    blob: bytes
    keys: str
    bucket: int


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
