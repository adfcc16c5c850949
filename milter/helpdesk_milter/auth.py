"""DKIM verification, Authentication-Results and ARC sealing, on top of dkimpy.

The contract:

- :func:`verify_dkim` checks every DKIM-Signature of the *original* message (before the
  milter changes a byte) and never raises: a malformed signature or message is
  ``permerror``, a key lookup that timed out or got no usable answer from the resolver
  is ``temperror`` (never ``fail``: dkimpy itself turns a DNS timeout into a plain
  ``False``, which would read as a forged signature), a body or header mismatch is
  ``fail``.
- :func:`authentication_results` renders the RFC 8601 header *value*; the caller first
  removes any forged header carrying our authserv-id (:func:`is_own_authentication_results`).
- :class:`ArcSealer` seals the *modified* message (RFC 8617), so a downstream verifier
  can see what the message looked like, and what we concluded, before we changed it.
- DNS goes through :func:`make_dnsfunc`: dnspython with a configurable server, a bounded
  lifetime and a bounded, thread-safe cache of answers *and* failures, so a slow or dead
  DNS server costs each key at most ``timeout`` once per ``error_ttl``.

Everything here is called from many libmilter threads at once: no function keeps
state between calls except the cache, which has its own lock. Nothing logs key material
or message content: dkimpy's own logger (which logs header lines and key records on
error) is replaced by a silent one in every call.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import dkim
import dkim.crypto
import dkim.util
import dns.exception
import dns.inet
import dns.name
import dns.rdatatype
import dns.resolver

__all__ = [
    "ArcError",
    "ArcSealer",
    "DkimResult",
    "DnsFunc",
    "DnsTxtCache",
    "authentication_results",
    "is_own_authentication_results",
    "make_dnsfunc",
    "verify_arc",
    "verify_dkim",
]

log = logging.getLogger(__name__)

# dkimpy logs header lines, key records and signature fields on errors and at debug
# level, through the "dkimpy" logger that propagates to ours. Every dkimpy object made
# here gets this one instead: not registered with logging's manager (so no handler
# configuration can reach it) and above every level.
_SILENT = logging.Logger("helpdesk_milter.auth.dkimpy", level=logging.CRITICAL + 1)
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False

#: RFC 8601 result words used by this module.
DKIM_RESULTS = frozenset({"pass", "fail", "neutral", "none", "temperror", "permerror"})
ARC_RESULTS = frozenset({"pass", "fail", "none", "temperror"})


class DnsFunc(Protocol):
    """dkimpy's DNS hook: ``dnsfunc(b"sel._domainkey.example.org.", timeout=5)`` returns
    the TXT record (its strings joined) as bytes, or None when there is none."""

    def __call__(self, name: bytes, timeout: float = ...) -> bytes | None: ...


# --- DNS -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    value: bytes | None          # the TXT record, None for "no such record"
    temporary: bool              # the lookup failed (timeout, SERVFAIL): re-raise
    expires: float


class DnsTxtCache:
    """A bounded, thread-safe cache of TXT lookups: answers, "no record" answers and
    temporary failures, each with its own lifetime.

    - an answer is kept ``ttl`` seconds (``dns.cache_ttl``: DKIM keys change rarely);
    - "no such record" (NXDOMAIN, no TXT) is kept ``negative_ttl`` (default
      ``min(ttl, 300)``), so a key published after a miss is seen soon;
    - a temporary failure (timeout, SERVFAIL, refused) is kept ``error_ttl`` (default
      ``min(ttl, 60)``): during a DNS outage each key costs one timeout per minute
      instead of one per message, which keeps milter threads from piling up.

    At most ``max_entries`` names are kept; when full, expired entries go first, then the
    least recently used. Names are compared case-insensitively, without the final dot.
    ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(self, ttl: float = 3600.0, *, negative_ttl: float | None = None,
                 error_ttl: float | None = None, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self.ttl = float(ttl)
        self.negative_ttl = min(self.ttl, 300.0) if negative_ttl is None else negative_ttl
        self.error_ttl = min(self.ttl, 60.0) if error_ttl is None else error_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @staticmethod
    def key(name: str | bytes) -> str:
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        return name.lower().rstrip(".")

    def get(self, name: str | bytes) -> _Entry | None:
        """The live entry for ``name``, or None (never cached, or expired)."""
        key = self.key(name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def put_answer(self, name: str | bytes, value: bytes | None) -> None:
        """Cache an answer: the record, or None for "no such record"."""
        self._put(name, value, False, self.ttl if value is not None else self.negative_ttl)

    def put_failure(self, name: str | bytes) -> None:
        """Cache a temporary failure (the next lookups fail at once until it expires)."""
        self._put(name, None, True, self.error_ttl)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _put(self, name: str | bytes, value: bytes | None, temporary: bool,
             ttl: float) -> None:
        if ttl <= 0:
            return
        key = self.key(name)
        with self._lock:
            now = self._clock()
            self._entries[key] = _Entry(value, temporary, now + ttl)
            self._entries.move_to_end(key)
            if len(self._entries) > self.max_entries:
                for stale in [k for k, e in self._entries.items() if e.expires <= now]:
                    del self._entries[stale]
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)


def parse_resolver(resolver: str) -> tuple[str, int] | None:
    """``""`` -> None (the system's resolvers); ``"127.0.0.1"``, ``"127.0.0.1:5353"``,
    ``"::1"``, ``"[::1]:5353"`` -> (address, port). Raises ValueError for anything else
    (a host name is refused: resolving the resolver would need DNS)."""
    resolver = resolver.strip()
    if not resolver:
        return None
    host, port = resolver, "53"
    if resolver.startswith("["):
        host, sep, rest = resolver[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"dns.resolver {resolver!r}: expected [IPV6]:PORT")
        port = rest[1:] or "53"
    elif resolver.count(":") == 1:
        host, _, port = resolver.partition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"dns.resolver {resolver!r}: bad port {port!r}")
    if not dns.inet.is_address(host):
        raise ValueError(f"dns.resolver {resolver!r}: expected an IP address, "
                         f"optionally with :PORT")
    return host, int(port)


def make_dnsfunc(resolver: str = "", timeout: float = 2.0, cache_ttl: float = 3600.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 cache: DnsTxtCache | None = None) -> DnsFunc:
    """A dkimpy ``dnsfunc`` backed by dnspython and a :class:`DnsTxtCache`.

    ``resolver`` is ``dns.resolver`` from the config ("" = /etc/resolv.conf, else
    ``HOST`` or ``HOST:PORT``, an IP address); ``timeout`` bounds one lookup in total
    (all servers, all retries); ``cache_ttl`` is :class:`DnsTxtCache`'s ``ttl``.
    Raises ValueError at once for a malformed ``resolver``.

    The returned callable is thread-safe and, per dkimpy's contract, returns the first
    DKIM-looking TXT record of the name (its strings joined) or None when the name has
    no TXT record; the only exception it raises is :class:`dkim.DnsTimeoutError`, for a
    timeout or a resolver failure (SERVFAIL, refused, unreachable) -- dkimpy catches it,
    and :func:`verify_dkim` reports it as ``temperror``. A name that is not a valid DNS
    name gets None. Pass ``cache`` to share or inspect the cache (tests).
    """
    server = parse_resolver(resolver)
    txt_cache = cache if cache is not None else DnsTxtCache(cache_ttl, clock=clock)
    lifetime = max(float(timeout), 0.001)
    try:
        if server is None:
            res: dns.resolver.Resolver | None = dns.resolver.Resolver(configure=True)
        else:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = [server[0]]
            res.port = server[1]
    except dns.exception.DNSException as exc:
        # No /etc/resolv.conf: every lookup is a temporary failure (the mail still
        # flows, with dkim=temperror), and the reason is said once, here.
        log.warning("DKIM key lookups disabled: no usable resolver configuration (%s)",
                    type(exc).__name__)
        res = None
    if res is not None:
        res.timeout = lifetime       # per try; lifetime below bounds the whole lookup
        res.lifetime = lifetime
        res.cache = None             # ours caches failures too, and is bounded

    def dnsfunc(name: bytes | str, timeout: float = lifetime) -> bytes | None:
        entry = txt_cache.get(name)
        if entry is not None:
            if entry.temporary:
                raise dkim.DnsTimeoutError("DNS lookup failed recently (cached)")
            return entry.value
        if res is None:
            raise dkim.DnsTimeoutError("no resolver configuration")
        try:
            value = _lookup_txt(res, name, min(lifetime, max(float(timeout), 0.001)))
        except dkim.DnsTimeoutError:
            txt_cache.put_failure(name)
            raise
        txt_cache.put_answer(name, value)
        return value

    return dnsfunc


def _lookup_txt(res: dns.resolver.Resolver, name: bytes | str,
                lifetime: float) -> bytes | None:
    try:
        text = name.decode("ascii") if isinstance(name, bytes) else name
        qname = dns.name.from_text(text)
    except (UnicodeError, ValueError, dns.exception.DNSException):
        return None              # not a DNS name: there is no such key
    try:
        answer = res.resolve(qname, dns.rdatatype.TXT, lifetime=lifetime,
                             raise_on_no_answer=False, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
        return None
    except dns.exception.Timeout as exc:
        raise dkim.DnsTimeoutError(f"DNS timeout after {lifetime:g}s") from exc
    except dns.resolver.NoNameservers as exc:
        raise dkim.DnsTimeoutError("DNS servers failed (SERVFAIL, refused or "
                                   "unreachable)") from exc
    except (dns.exception.DNSException, OSError) as exc:
        raise dkim.DnsTimeoutError(f"DNS lookup failed: {type(exc).__name__}") from exc
    records = [b"".join(rdata.strings) for rdata in (answer.rrset or ())]
    if not records:
        return None
    # Several TXT records at one name: RFC 6376 leaves it undefined; prefer a key.
    for record in records:
        if record.lstrip().startswith(b"v=DKIM1") or b"p=" in record:
            return record
    return records[0]


# --- DKIM verification ------------------------------------------------------------

@dataclass(frozen=True)
class DkimResult:
    """The outcome of one DKIM-Signature.

    ``result`` is an RFC 8601 word: pass, fail, neutral, none (no signature),
    temperror (key lookup failed for now), permerror (malformed signature, no key,
    unusable key). ``domain`` (d=), ``selector`` (s=) and ``b_prefix`` (the first 8
    characters of b=, for ``header.b``) are None when absent or not safe to echo in a
    header. ``aligned`` is True when d= equals the From domain or is a parent of it
    with at least two labels (relaxed alignment without a public-suffix list); it says
    nothing about the result: trust needs ``result == "pass" and aligned``.
    ``reason`` is a short fixed phrase for logs (never content from the message).
    """

    result: str
    domain: str | None = None
    selector: str | None = None
    b_prefix: str | None = None
    aligned: bool = False
    reason: str = ""

    @property
    def trusted(self) -> bool:
        """pass and aligned with the From domain."""
        return self.result == "pass" and self.aligned


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62})"
                        r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?$")
_SELECTOR_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,127})$")
_BTAG_RE = re.compile(r"^[A-Za-z0-9+/=]+$")


def _safe_domain(raw: bytes | None) -> str | None:
    if not raw:
        return None
    text = raw.decode("ascii", "replace").strip().lower()
    return text.rstrip(".") if _DOMAIN_RE.match(text) else None


def _aligned(d: str | None, from_domain: str | None) -> bool:
    if not d or not from_domain:
        return False
    f = from_domain.strip().lower().rstrip(".")
    return f == d or ("." in d and f.endswith("." + d))


def _describe(fields: dict[bytes, bytes], from_domain: str | None
              ) -> tuple[str | None, str | None, str | None, bool]:
    domain = _safe_domain(fields.get(b"d"))
    sel_raw = fields.get(b"s", b"").decode("ascii", "replace").strip()
    selector = sel_raw if _SELECTOR_RE.match(sel_raw) else None
    b = re.sub(r"\s+", "", fields.get(b"b", b"").decode("ascii", "replace"))[:8]
    b_prefix = b if b and _BTAG_RE.match(b) else None
    return domain, selector, b_prefix, _aligned(domain, from_domain)


def _signature_fields(value: bytes) -> dict[bytes, bytes]:
    """The tags of a DKIM-Signature value, as far as they parse (never raises)."""
    unfolded = re.sub(rb"\r?\n", b"", value)
    try:
        return dkim.util.parse_tag_value(unfolded)
    except Exception:
        # Duplicate or broken tags: keep what can be read, for the report only.
        fields: dict[bytes, bytes] = {}
        for spec in unfolded.split(b";"):
            key, eq, val = spec.partition(b"=")
            if eq and key.strip() and key.strip() not in fields:
                fields[key.strip()] = val.strip()
        return fields


def _header_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Tolerant split of the header block into (name, value) pairs, values unfolded
    of their line breaks. Never raises; lines that are not fields are skipped."""
    fields: list[list[bytes]] = []
    for line in re.split(rb"\r?\n", raw):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1] += b"\r\n" + line
            continue
        name, colon, value = line.partition(b":")
        if colon and name and re.fullmatch(rb"[\x21-\x39\x3b-\x7e]+", name):
            fields.append([name, value])
    return [(n, v) for n, v in fields]


class _KeyProbe:
    """Wraps a dnsfunc for one signature and records what its key lookup gave:
    None (not asked), "ok", "missing", "bad" (unusable record) or "temp"."""

    def __init__(self, dnsfunc: Callable[..., bytes | None]) -> None:
        self._dnsfunc = dnsfunc
        self.outcome: str | None = None
        self.saw_temp = False

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        try:
            txt = self._dnsfunc(name, timeout=timeout)
        except dkim.DnsTimeoutError:
            self.outcome, self.saw_temp = "temp", True
            raise
        except Exception as exc:
            # A dnsfunc breaking its contract must not turn into "fail": dkimpy only
            # catches DnsTimeoutError, so translate.
            self.outcome, self.saw_temp = "temp", True
            raise dkim.DnsTimeoutError(f"DNS lookup failed: {type(exc).__name__}") from None
        if isinstance(txt, str):
            txt = txt.encode("utf-8", "replace")
        if not txt:
            self.outcome = "missing"
            return None
        try:
            dkim.evaluate_pk(name, txt)
        except Exception:
            self.outcome = "bad"
        else:
            self.outcome = "ok"
        return txt


def verify_dkim(raw: bytes, dnsfunc: Callable[..., bytes | None], *,
                from_domain: str | None, max_signatures: int = 5,
                timeout: float = 5.0) -> tuple[DkimResult, ...]:
    """Verify the DKIM-Signatures of ``raw`` (the whole original message, CRLF or LF
    line ends), top to bottom, at most ``max_signatures`` of them (the rest are not
    looked at: each one may cost a DNS lookup).

    Returns one :class:`DkimResult` per signature checked, in header order, or
    ``(DkimResult("none"),)`` when there is none. Never raises. ``timeout`` is handed
    to ``dnsfunc`` (the one from :func:`make_dnsfunc` bounds it by its own). The whole
    message is held in memory by dkimpy: the caller decides how large a message is
    worth verifying.
    """
    sig_values = [v for n, v in _header_fields(raw) if n.lower() == b"dkim-signature"]
    if not sig_values:
        return (DkimResult("none", reason="no signature"),)
    sig_values = sig_values[:max(1, max_signatures)]
    try:
        verifier: dkim.DKIM | None = dkim.DKIM(raw, logger=_SILENT, timeout=timeout)
    except Exception:
        verifier = None          # dkimpy cannot even split the header block
    results = []
    for idx, value in enumerate(sig_values):
        domain, selector, b_prefix, aligned = _describe(_signature_fields(value),
                                                        from_domain)
        if verifier is None:
            word, reason = "permerror", "unparsable header block"
        else:
            word, reason = _verify_one(verifier, idx, dnsfunc)
        results.append(DkimResult(word, domain, selector, b_prefix, aligned, reason))
    return tuple(results)


def _verify_one(verifier: dkim.DKIM, idx: int,
                dnsfunc: Callable[..., bytes | None]) -> tuple[str, str]:
    probe = _KeyProbe(dnsfunc)
    try:
        ok = verifier.verify(idx=idx, dnsfunc=probe)
    except dkim.DKIMException as exc:
        if probe.outcome is None:
            return "permerror", "malformed signature"
        if probe.outcome == "temp":
            return "temperror", "key lookup failed"
        if probe.outcome == "ok" and isinstance(exc, dkim.ValidationError):
            return "fail", "body hash mismatch"
        return "permerror", "unusable key"
    except Exception:
        # dkimpy has unguarded corners (a continuation line first in the header
        # block, odd bytes in tags): a signature we cannot check is a permerror.
        return "permerror", "unverifiable signature"
    if ok:
        return "pass", "good signature"
    return {
        "temp": ("temperror", "key lookup failed"),
        "missing": ("permerror", "no key for selector"),
        "bad": ("permerror", "unusable key"),
        "ok": ("fail", "signature did not verify"),
    }.get(probe.outcome or "", ("permerror", "unverifiable signature"))


def verify_arc(raw: bytes, dnsfunc: Callable[..., bytes | None], *,
               timeout: float = 5.0) -> str:
    """Validate the ARC chain that arrived with ``raw`` (the original message): "none"
    (no ARC set), "pass", "fail", or "temperror" (the chain did not validate and a key
    lookup failed, so it may be fine). Never raises.

    Its result goes into our Authentication-Results as ``arc=...``: :meth:`ArcSealer.seal`
    needs it to seal a message that already carries ARC sets (cv= of the next instance).
    """
    if not any(n.lower() == b"arc-seal" for n, _ in _header_fields(raw)):
        return "none"
    probe = _KeyProbe(dnsfunc)
    try:
        cv, _, _ = dkim.ARC(raw, logger=_SILENT, timeout=timeout).verify(dnsfunc=probe)
    except Exception:
        return "fail"
    if cv == dkim.CV_Pass:
        return "pass"
    if cv == dkim.CV_None:
        return "none"
    return "temperror" if probe.saw_temp else "fail"


# --- Authentication-Results ----------------------------------------------------------

_TSPECIALS = set('()<>@,;:\\"/[]?= \t')


def _pvalue(text: str) -> str:
    """An RFC 8601 value: a token as is, anything else as a quoted-string."""
    if text and not (_TSPECIALS & set(text)) and text.isprintable() and text.isascii():
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authentication_results(authserv_id: str, results: Sequence[DkimResult], *,
                           arc: str | None = None) -> str:
    """The value of our Authentication-Results header (RFC 8601), one line:
    ``mx.example.org; dkim=pass header.d=mairie-exemple.fr header.s=sel1
    header.b=AbCdEf12``, ``mx.example.org; dkim=none``; with several signatures, one
    ``dkim=`` resinfo each, separated by ``; ``. ``arc`` (from :func:`verify_arc`) adds
    ``; arc=RESULT`` -- needed when the message arrived with ARC sets and will be
    sealed. No results and no arc: ``mx.example.org; none``.
    """
    parts = [authserv_id.strip()]
    for r in results:
        word = r.result if r.result in DKIM_RESULTS else "permerror"
        resinfo = f"dkim={word}"
        if r.domain:
            resinfo += f" header.d={_pvalue(r.domain)}"
        if r.selector:
            resinfo += f" header.s={_pvalue(r.selector)}"
        if r.b_prefix:
            resinfo += f" header.b={_pvalue(r.b_prefix)}"
        parts.append(resinfo)
    if arc is not None:
        parts.append(f"arc={arc if arc in ARC_RESULTS else 'fail'}")
    if len(parts) == 1:
        parts.append("none")
    return "; ".join(parts)


def _skip_cfws(text: str, i: int) -> int:
    """Index of the first character at or after ``i`` that is not white space (line
    breaks included) or inside an RFC 5322 comment (nested, with quoted-pairs)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if depth and c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and c not in " \t\r\n":
            return i
        i += 1
    return i


def authserv_id_of(value: str) -> str | None:
    """The authserv-id of an Authentication-Results value, lower-cased and without a
    final dot (comments and folding skipped, quoted form accepted); None if there is
    none."""
    i = _skip_cfws(value, 0)
    if i >= len(value):
        return None
    if value[i] == '"':
        out = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            out.append(value[i])
            i += 1
        ident = "".join(out)
    else:
        m = re.match(r'[^\s;()"]+', value[i:])
        ident = m.group(0) if m else ""
    ident = ident.strip().lower().rstrip(".")
    return ident or None


def is_own_authentication_results(value: str, authserv_id: str) -> bool:
    """True when the Authentication-Results ``value`` claims to be ours (its
    authserv-id equals ``authserv_id``, case-insensitively, final dot ignored).

    Such a header arriving with a message is forged or stale: RFC 8601 section 5 says
    to remove it before adding ours, otherwise a downstream reader (or our own ARC
    seal) would trust it.
    """
    own = authserv_id.strip().lower().rstrip(".")
    return bool(own) and authserv_id_of(value) == own


# --- ARC ---------------------------------------------------------------------------------

class ArcError(Exception):
    """Sealing was not possible; the message says why (never key or message content).
    The caller logs it and delivers the message unsealed."""


def _normalise_pem(data: bytes) -> bytes:
    # dkimpy finds the base64 block with b"--\n(.*?)\n--": CRLF files do not parse.
    return data.replace(b"\r\n", b"\n").strip() + b"\n"


@dataclass(frozen=True)
class ArcSealer:
    """Seals modified messages with ARC (RFC 8617) as ``domain``/``selector``.

    ``private_key`` is an RSA key in PEM (PKCS#1 or PKCS#8; dkimpy signs ARC with
    rsa-sha256 only). ``authserv_id`` is ours (``milter.authserv_id``): the seal copies
    our Authentication-Results into ARC-Authentication-Results. Immutable and safe to
    share between threads.
    """

    domain: str
    selector: str
    private_key: bytes = field(repr=False)     # never in a log line or a traceback
    authserv_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "private_key", _normalise_pem(self.private_key))
        if not self.domain or not self.selector or not self.authserv_id.strip():
            raise ArcError("ARC sealing needs a domain, a selector and an authserv-id")
        try:
            dkim.crypto.parse_pem_private_key(self.private_key)
        except Exception:
            raise ArcError("the ARC private key is not an RSA key in PEM form") from None

    @classmethod
    def from_file(cls, domain: str, selector: str, key_path: str | Path,
                  authserv_id: str) -> ArcSealer:
        """Read the PEM key at ``key_path``; ArcError if it cannot be read or parsed."""
        try:
            data = Path(key_path).read_bytes()
        except OSError as exc:
            raise ArcError(f"cannot read the ARC private key {key_path}: "
                           f"{exc.strerror or type(exc).__name__}") from None
        try:
            return cls(domain, selector, data, authserv_id)
        except ArcError as exc:
            raise ArcError(f"{key_path}: {exc}") from None

    def seal(self, raw_modified: bytes, ar_value: str, *,
             timestamp: int | None = None) -> list[tuple[str, str]]:
        """The ARC set for the next instance, as ``[("ARC-Seal", v),
        ("ARC-Message-Signature", v), ("ARC-Authentication-Results", v)]`` in top-to-bottom
        order: insert them above every other header (ARC-Seal first).

        ``raw_modified`` is the message exactly as it will be delivered (headers and
        body after our changes; our Authentication-Results may or may not be in it);
        ``ar_value`` is our Authentication-Results value from
        :func:`authentication_results`. When the original carried ARC sets, ``ar_value``
        must hold the ``arc=`` result of :func:`verify_arc` on the *original* (it
        becomes the seal's cv=; the modified body no longer validates the earlier
        AMS). Values may contain folds as LF + white space (libmilter's form).

        Raises :class:`ArcError` when dkimpy cannot seal: authres not installed, an
        ``ar_value`` that is not ours or does not parse, ``arc=temperror`` (sealing
        cv=fail would end the chain for good), a chain with no ``arc=`` result, more
        than 50 instances, or a message dkimpy cannot parse.
        """
        srv_id = self.authserv_id.strip().lower()
        if not is_own_authentication_results(ar_value, srv_id):
            raise ArcError("the Authentication-Results value does not carry our "
                           "authserv-id")
        arc_word = self._arc_result(ar_value)
        if arc_word == "temperror":
            raise ArcError("the incoming ARC chain could not be checked (DNS); "
                           "not sealing")
        # dkimpy reads only fields named exactly "Authentication-Results" whose
        # authserv-id, as authres lower-cases it, equals srv_id; it folds all of them
        # into the AAR. Hand it exactly one: ours, unfolded, on top.
        header_block, body = _split_message(raw_modified)
        kept = [chunk for name, chunk in header_block
                if not (name == b"authentication-results"
                        and is_own_authentication_results(
                            chunk.partition(b":")[2].decode("utf-8", "replace"), srv_id))]
        own = b"Authentication-Results: " + " ".join(ar_value.split()).encode() + b"\r\n"
        message = own + b"".join(kept) + body
        try:
            lines = dkim.arc_sign(message, self.selector.encode(), self.domain.encode(),
                                  self.private_key, srv_id.encode(), logger=_SILENT,
                                  timestamp=timestamp)
        except NameError:
            raise ArcError("ARC sealing needs the 'authres' package") from None
        except dkim.DKIMException as exc:
            raise ArcError(f"dkimpy refused to seal: {type(exc).__name__}") from None
        except Exception as exc:
            raise ArcError(f"dkimpy failed to seal: {type(exc).__name__}") from None
        if not lines:
            raise ArcError("dkimpy produced no ARC set (the message has ARC sets but "
                           "Authentication-Results has no arc= result)")
        out = []
        for line in lines:
            name, _, value = line.decode("ascii").partition(":")
            out.append((name.strip(), value.strip().replace("\r\n", "\n")))
        return out

    @staticmethod
    def _arc_result(ar_value: str) -> str | None:
        try:
            import authres
        except ImportError:
            raise ArcError("ARC sealing needs the 'authres' package") from None
        try:
            parsed = authres.AuthenticationResultsHeader.parse(
                "Authentication-Results: " + " ".join(ar_value.split()))
        except Exception:
            raise ArcError("our Authentication-Results value does not parse") from None
        words = [str(r.result).lower() for r in parsed.results if r.method == "arc"]
        return words[0] if len(words) == 1 else None


def _split_message(raw: bytes) -> tuple[list[tuple[bytes | None, bytes]], bytes]:
    """(header fields as ``(lower-cased name or None, raw bytes with continuation lines
    and line ends)``, the rest of the message from the blank line on). Joining the
    chunks and the rest gives ``raw`` back byte for byte."""
    names: list[bytes | None] = []
    chunks: list[bytes] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end + 1
        line = raw[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and chunks:
            chunks[-1] += line
        else:
            name, colon, _ = line.partition(b":")
            names.append(name.lower() if colon else None)
            chunks.append(line)
        pos = end
    return list(zip(names, chunks, strict=True)), raw[pos:]
