"""Configuration: one TOML file -> frozen dataclasses.

Every key is declared once, in ``KEYS``, with its type, default and a one-line
description (Postfix's ``mail_params.h`` is the model).  The commented example
in ``config/helpdesk-milter.toml`` and the README's reference are checked
against this table by the test suite, so a key cannot be added silently.

Contract kept by ``load_config``:

* unknown keys and wrong types are errors, never ignored;
* every error names the key path and, where the key appears in the file, the
  file and line (``/etc/helpdesk-milter/config.toml:12: watch[1].mode: ...``);
* all problems are collected and reported together, so an admin fixes a file
  in one pass.
"""

from __future__ import annotations

import csv
import fnmatch
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- value parsers -------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|k|mb|m|gb|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3,
               "gb": 1024**3}


def parse_duration(value: str | int | float) -> float:
    """``"72h"`` -> 259200.0 seconds.  Bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"72h\", \"7d\" or \"30m\"")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration; use a number with s, m, h, d or w, "
                         "such as \"72h\"")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]


def parse_size(value: str | int) -> int:
    """``"10MB"`` -> 10485760 bytes.  Bare numbers are bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as \"10MB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size; use a number with KB, MB or GB, "
                         "such as \"10MB\"")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])


def _check_socket(value: str) -> None:
    kind, _, rest = value.partition(":")
    if kind in ("unix", "local"):
        if not rest.startswith("/"):
            raise ValueError("a unix socket needs an absolute path: unix:/run/helpdesk-milter/"
                             "milter.sock")
    elif kind in ("inet", "inet6"):
        port, at, host = rest.partition("@")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: libmilter syntax is {kind}:PORT@HOST, "
                             "for example inet:8894@127.0.0.1")
        if not at or not host:
            raise ValueError(f"{value!r}: name the address to listen on, for example "
                             f"{kind}:{port}@127.0.0.1 (an empty host listens everywhere)")
    elif kind == "fd":
        if not rest.isdigit():
            raise ValueError(f"{value!r}: socket activation uses fd:3")
    else:
        raise ValueError(f"{value!r}: expected unix:/path, inet:PORT@HOST, inet6:PORT@HOST "
                         "or fd:3 (libmilter syntax; Postfix's smtpd_milters uses "
                         "inet:HOST:PORT)")


def _check_choice(*choices: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
    return check


def _check_regex(value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None


def _check_ticket_pattern(value: str) -> None:
    _check_regex(value)
    if re.compile(value).groups < 1:
        raise ValueError(f"{value!r} has no capture group: put the ticket number in "
                         "parentheses, as in '\\[example #(\\d+)\\]' (the group is the "
                         "ticket recorded and quoted back to the sender)")


def _check_socket_path(value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"{value!r}: give the absolute path of a unix socket, such as "
                         "\"/dev/log\"")


def _check_assistance(value: str) -> None:
    if value.count("{structure}") != 1 or "@" not in value:
        raise ValueError(f"{value!r} must be an address containing {{structure}} once, "
                         "such as \"{structure}@assistance.example.org\"")
    _local, _, domain = value.rpartition("@")
    if "{structure}" in domain:
        raise ValueError("{structure} must be in the local part, before the @")


def _check_address(value: str) -> None:
    if not _ADDRESS_RE.match(value):
        raise ValueError(f"{value!r} is not an email address")


def _check_mode(value: str) -> None:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal file mode such as \"0660\"") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a file mode between 0000 and 0777")
    if mode & 0o002:
        raise ValueError(f"{value!r} makes the socket world-writable; use 0660 and give "
                         "Postfix's user the milter's group")


def _check_unit(value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{value} must be between 0 (exclusive) and 1")


def _check_marker(value: str) -> None:
    if not value.strip():
        raise ValueError("the marker cannot be empty")
    try:
        value.format(kind="password")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{value!r}: only {{kind}} may appear in braces") from None


def _check_resolver(value: str) -> None:
    from .auth import parse_resolver  # the one parser of this value
    parse_resolver(value)


def _check_hostport(value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{value!r}: expected HOST:PORT, for example 127.0.0.1:25")


def _check_redis_timeout(value: float) -> None:
    if not 0 < value <= 60:
        raise ValueError("expected a duration above 0 and at most 60s, such as \"0.5s\"")


def _check_redis_url(value: str) -> None:
    from urllib.parse import urlsplit
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{parts.scheme or value!r}: expected a redis://, rediss:// or "
                         "unix:// URL")
    if parts.password:
        raise ValueError("the URL holds a password: put it in state.redis_password_file")


def _check_listen(value: str) -> None:
    if value:                   # empty: no metrics endpoint
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: expected HOST:PORT, for example 127.0.0.1:9894, "
                             "or \"\" for no metrics endpoint")


_ADDRESS_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# --- the key table -------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One configuration key: where it lives, what it holds, what it defaults to."""

    path: str                       # "milter.socket"; "watch[].mode" for array tables
    kind: str                       # str | int | float | bool | list[str] | duration | size
    default: Any
    doc: str
    check: Callable[[Any], None] | None = None
    required: bool = False


KEYS: tuple[Key, ...] = (
    Key("milter.socket", "str", "inet:8894@127.0.0.1",
        "where the milter listens (libmilter syntax): inet:PORT@HOST, inet6:PORT@HOST, "
        "unix:/path or fd:3 under systemd socket activation", _check_socket),
    Key("milter.socket_mode", "str", "0660",
        "permissions of a unix socket (octal); Postfix's user must be able to write it",
        _check_mode),
    Key("milter.database", "str", "/var/lib/helpdesk-milter/state.db",
        "the SQLite state file (decisions, fingerprints); created if missing"),
    Key("milter.on_error", "str", "accept",
        "what happens to a message when the milter fails internally: accept (deliver "
        "unchanged) or tempfail (the client retries later)", _check_choice("accept", "tempfail")),
    Key("milter.authserv_id", "str", "localhost",
        "the authserv-id written in Authentication-Results (usually this MX's host name)"),
    Key("milter.max_scan_size", "size", "10MB",
        "messages larger than this pass unchanged, tagged as not inspected"),
    Key("milter.spool_memory", "size", "1MB",
        "a message body is held in memory up to this size, then spooled to a temporary file"),
    Key("milter.timeout", "int", 600,
        "seconds libmilter waits for Postfix before dropping an idle milter connection"),
    Key("milter.log_level", "str", "info", "debug, info, warning or error",
        _check_choice("debug", "info", "warning", "error")),
    Key("milter.mode", "str", "enforce",
        "enforce (apply the decisions) or observe (decide, log and record what would have "
        "been done, change no message, send no guidance, learn nothing)",
        _check_choice("enforce", "observe")),
    Key("addresses.assistance", "str", "{structure}@assistance.example.org",
        "each client structure's support address; {structure} is replaced by the structure "
        "name", _check_assistance),
    Key("addresses.fallback", "str", "accueil@assistance.example.org",
        "where support requests from senders of unknown structure go", _check_address),
    Key("addresses.internal_domains", "list[str]", [],
        "sender domains (and their subdomains) whose mail is never rerouted"),
    Key("watch[].name", "str", None, "a name for the group, shown in logs and reports",
        required=True),
    Key("watch[].addresses", "list[str]", None,
        "watched addresses; * matches any characters (\"*@example.org\"); case-insensitive",
        required=True),
    Key("watch[].mode", "str", "copy",
        "tag (headers only), copy (add the assistance address) or redirect (add the "
        "assistance address and remove this group's watched recipients)",
        _check_choice("tag", "copy", "redirect")),
    Key("directory.csv", "list[str]", [],
        "CSV files of more clients, one \"domain-or-address,structure\" per line; relative "
        "paths are relative to the config file"),
    Key("clients.*", "str", None,
        "sender domain or exact address = structure name (a domain also covers its "
        "subdomains; an exact address beats its domain)"),
    Key("classifier.threshold", "float", 5.0,
        "score at or above which a message is a support request"),
    Key("classifier.known_client_weight", "float", 0.0,
        "evidence added when the sender is in the client directory, on top of what the "
        "model learned of such senders (with model = none it is the only such evidence: "
        "2.0 gives the rules-only behaviour of before the model)"),
    Key("classifier.model", "str", "shipped",
        "the learned text model: shipped (the one in the package), a path to a model "
        "file made by make train, or none (rules only, each rule counting its own weight)"),
    Key("classifier.rules_file", "str", "",
        "a TOML rules file that replaces the shipped rules (empty: the shipped set)"),
    Key("classifier.weights.*", "float", None,
        "override the weight of a shipped rule by name; 0 disables it"),
    Key("followup.ticket_pattern", "str", r"\[example #(\d+)\]",
        "a Subject matching this regular expression is a complement to an existing ticket; "
        "its first capture group is the ticket number", _check_ticket_pattern),
    Key("dedup.window", "duration", "72h",
        "how long a request is remembered to recognise its duplicates"),
    Key("dedup.action", "str", "tag",
        "tag (add X-Helpdesk-Duplicate) or drop (remove the duplicate's watched recipients; "
        "the assistance copy is always kept)", _check_choice("tag", "drop")),
    Key("dedup.similarity", "float", 0.75,
        "near-duplicate threshold: estimated word-shingle similarity (0-1) at or above "
        "which a lightly edited resend is the same request", _check_unit),
    Key("secrets.action", "str", "redact",
        "redact (replace secrets in place), tag (header only) or off",
        _check_choice("redact", "tag", "off")),
    Key("secrets.marker", "str", "[secret removed: {kind}]",
        "what replaces a secret; {kind} is the detector's name (password, private-key, ...)",
        _check_marker),
    Key("secrets.disabled_kinds", "list[str]", [],
        "detector kinds to turn off, e.g. [\"jwt\"]"),
    Key("secrets.scope", "str", "helpdesk",
        "which mail is scanned for secrets: helpdesk (mail with a watched or assistance "
        "recipient; any other mail is accepted at the end of the envelope, untouched) or "
        "all (every message: its headers and body are then read by the milter)",
        _check_choice("helpdesk", "all")),
    Key("secrets.outgoing", "bool", False,
        "also redact staff's authenticated submissions (SMTP AUTH, Postfix's {auth_authen}): "
        "false leaves their mail as written (a temporary password sent to a client), true "
        "redacts it like any other"),
    Key("logging.target", "str", "stderr",
        "where the one line per message goes: stderr (journald under systemd) or syslog "
        "(facility logging.facility, beside Postfix's own lines in /var/log/mail.log)",
        _check_choice("stderr", "syslog")),
    Key("logging.facility", "str", "mail",
        "the syslog facility with logging.target = syslog: mail, daemon, user or local0 to "
        "local7", _check_choice("mail", "daemon", "user", *(f"local{n}" for n in range(8)))),
    Key("logging.format", "str", "text",
        "text (key=value words) or json (one JSON object per line, with queue_id and the "
        "line's key=value fields)", _check_choice("text", "json")),
    Key("logging.syslog_socket", "str", "/dev/log",
        "the local syslog socket (logging.target = syslog)", _check_socket_path),
    Key("metrics.listen", "str", "",
        "HOST:PORT of a Prometheus endpoint (/metrics), e.g. 127.0.0.1:9894; empty: none",
        _check_listen),
    Key("dns.resolver", "str", "",
        "DNS server for DKIM key lookups as HOST or HOST:PORT (empty: the system's "
        "resolvers)", _check_resolver),
    Key("dns.timeout", "duration", "2s",
        "upper bound for one DKIM key lookup; on timeout the result is temperror"),
    Key("dns.cache_ttl", "duration", "1h", "how long DKIM keys (and failures) are cached"),
    Key("arc.enabled", "bool", False,
        "ARC-seal messages the milter modified, so downstream verifiers can trust the change"),
    Key("arc.domain", "str", "", "signing domain (d=) of the ARC seal"),
    Key("arc.selector", "str", "", "selector (s=) of the ARC seal's key"),
    Key("arc.private_key", "str", "",
        "PEM private key file for the ARC seal (relative paths: next to the config)"),
    Key("learning.forwards", "bool", True,
        "learn from staff forwards: a mail an internal sender forwards to an assistance "
        "address was a support request (features only, as hashes; see README)"),
    Key("learning.max_examples", "int", 20000,
        "at most this many learned labels are kept (the oldest go first)"),
    Key("autoreply.enabled", "bool", False, "send guidance mail to senders"),
    Key("autoreply.smtp", "str", "127.0.0.1:25", "relay used to send guidance mail",
        _check_hostport),
    Key("autoreply.from", "str", "assistance@example.org", "From of the guidance mail",
        _check_address),
    Key("autoreply.every", "duration", "7d", "at most one guidance mail per sender per period"),
    Key("autoreply.trust", "str", "known-dkim",
        "who may get guidance: known-dkim (client directory + DKIM pass aligned with From), "
        "known (any client directory sender) or any",
        _check_choice("known-dkim", "known", "any")),
    Key("autoreply.paste_url", "str", "https://paste.example.org",
        "where senders should share secrets instead of mail"),
    Key("autoreply.max_per_hour", "int", 30,
        "at most this many guidance mails in any hour, all senders together"),
    Key("autoreply.trusted_relays", "list[str]", [],
        "client IP addresses (Postfix's {client_addr}) of relays whose mail counts as "
        "authenticated for autoreply.trust, like a DKIM pass"),
    Key("autoreply.templates_dir", "str", "",
        "a directory of template overrides (fr/ and en/ pieces, same names as the shipped "
        "ones); relative paths: next to the config; empty: the shipped templates"),
    Key("autoreply.give_up", "duration", "2d",
        "how long a guidance mail is retried while the relay is unreachable"),
    Key("autoreply.retry", "duration", "1m",
        "first retry delay when the relay fails; it doubles each time, up to an hour"),
    Key("state.backend", "str", "sqlite",
        "where duplicates and guidance limits are kept: sqlite (milter.database, one host) "
        "or redis (state.redis_url, shared by several MX hosts; the decision log and the "
        "guidance outbox stay in milter.database)", _check_choice("sqlite", "redis")),
    Key("state.redis_url", "str", "redis://127.0.0.1:6379/0",
        "the Redis server with state.backend = redis: redis://HOST:PORT/DB, rediss:// "
        "(TLS) or unix:///path/to/socket?db=0; no password here (state.redis_password_file)",
        _check_redis_url),
    Key("state.redis_password_file", "str", "",
        "a file whose first line is the Redis password (AUTH); relative paths: next to the "
        "config; empty: no password"),
    Key("state.key_prefix", "str", "helpdesk-milter:",
        "prefix of every Redis key this milter writes (one per site sharing a server)"),
    Key("state.timeout", "duration", "0.5s",
        "upper bound for one Redis command; past it the message is decided without shared "
        "state (per milter.on_error) and Redis is retried a second later",
        _check_redis_timeout),
    Key("state.connect_timeout", "duration", "0.5s",
        "upper bound for opening a connection to Redis", _check_redis_timeout),
)

KEYS_BY_PATH: dict[str, Key] = {k.path: k for k in KEYS}


# --- frozen values -------------------------------------------------------------

@dataclass(frozen=True)
class MilterSettings:
    socket: str
    socket_mode: int
    database: str
    on_error: str
    authserv_id: str
    max_scan_size: int
    spool_memory: int
    timeout: int
    log_level: str
    mode: str = "enforce"               # enforce | observe


@dataclass(frozen=True)
class WatchGroup:
    name: str
    addresses: tuple[str, ...]
    mode: str
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def matches(self, address: str) -> bool:
        address = address.lower()
        return any(p.match(address) for p in self._patterns)


@dataclass(frozen=True)
class Addresses:
    assistance: str
    fallback: str
    internal_domains: tuple[str, ...]

    def assistance_for(self, structure: str | None) -> str:
        """The assistance address of a structure, or the fallback when it is unknown."""
        if not structure:
            return self.fallback
        return self.assistance.replace("{structure}", structure)


@dataclass(frozen=True)
class ClassifierSettings:
    threshold: float
    known_client_weight: float
    rules_file: str
    weights: Mapping[str, float]
    model: str = "shipped"          # "shipped", "none" or a model file path


@dataclass(frozen=True)
class DedupSettings:
    window: float
    action: str
    similarity: float


@dataclass(frozen=True)
class SecretsSettings:
    action: str
    marker: str
    disabled_kinds: tuple[str, ...]
    scope: str = "helpdesk"                 # helpdesk | all
    outgoing: bool = False                  # redact authenticated submissions too


@dataclass(frozen=True)
class LoggingSettings:
    target: str = "stderr"                  # stderr | syslog
    facility: str = "mail"
    format: str = "text"                    # text | json
    syslog_socket: str = "/dev/log"


@dataclass(frozen=True)
class DnsSettings:
    resolver: str
    timeout: float
    cache_ttl: float


@dataclass(frozen=True)
class StateSettings:
    backend: str = "sqlite"                 # sqlite | redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: str = ""
    key_prefix: str = "helpdesk-milter:"
    timeout: float = 0.5
    connect_timeout: float = 0.5


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""                    # HOST:PORT; empty: no endpoint


@dataclass(frozen=True)
class LearningSettings:
    forwards: bool = True
    max_examples: int = 20000


@dataclass(frozen=True)
class ArcSettings:
    enabled: bool
    domain: str
    selector: str
    private_key: str


@dataclass(frozen=True)
class AutoreplySettings:
    enabled: bool
    smtp: str
    sender: str
    every: float
    trust: str
    paste_url: str
    max_per_hour: int = 30
    trusted_relays: tuple[str, ...] = ()
    templates_dir: str = ""
    give_up: float = 2 * 86400.0
    retry: float = 60.0


@dataclass(frozen=True)
class Config:
    milter: MilterSettings
    addresses: Addresses
    watch: tuple[WatchGroup, ...]
    clients: Mapping[str, str]          # lower-cased key -> structure; config then CSV files
    classifier: ClassifierSettings
    ticket_pattern: str
    dedup: DedupSettings
    secrets: SecretsSettings
    autoreply: AutoreplySettings
    client_files: tuple[str, ...] = ()      # the CSV files the directory was read from
    dns: DnsSettings = DnsSettings(resolver="", timeout=2.0, cache_ttl=3600.0)
    arc: ArcSettings = ArcSettings(enabled=False, domain="", selector="", private_key="")
    learning: LearningSettings = LearningSettings()
    source: str = "<defaults>"
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    state: StateSettings = StateSettings()
    # Valid TOML and types, yet almost surely not what the admin meant: check-config
    # lists these as problems (exit 1), run logs them as warnings and starts.
    doubts: tuple[str, ...] = ()


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --- loading -------------------------------------------------------------------

def _compile_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern.lower()))


class _Problems:
    """Collects errors with file and line where the key can be found in the text."""

    def __init__(self, source: str, text: str):
        self.source = source
        self.lines = text.splitlines()
        self.items: list[str] = []
        self._lines: dict[int, int | None] = {}   # item index -> its line in the file

    def add(self, path: str, message: str) -> None:
        line = _locate(self.lines, path)
        where = f"{self.source}:{line}" if line else self.source
        self.items.append(f"{where}: {path}: {message}")
        self._lines[len(self.items) - 1] = line

    def in_line_order(self) -> list[str]:
        """The problems sorted by their line in the file (stable); those with no line
        in it (a missing key, another file such as a client CSV) come last."""
        last = len(self.lines) + 1
        order = sorted(range(len(self.items)),
                       key=lambda i: self._lines.get(i) or last)
        return [self.items[i] for i in order]


def _locate(lines: list[str], path: str) -> int | None:
    """Best-effort line number of ``path`` ("watch[1].mode") in the TOML text.

    Falls back to the line of the key's table header (a missing key), and
    returns None when neither is in the file (a default).
    """
    table, key = path, ""
    for free in ("clients.", "classifier.weights."):
        if path.startswith(free):
            table, key = free[:-1], path[len(free):]
            break
    else:
        if "." in path:
            table, key = path.rsplit(".", 1)
    index = None
    m = re.match(r"^(.*)\[(\d+)\]$", table)
    if m:
        table, index = m.group(1), int(m.group(2))
    header_re = re.compile(r"^\s*\[(\[)?\s*([^\]]+?)\s*\]")
    key_re = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=") if key else None
    current, seen, header_line = "", -1, None
    for number, text in enumerate(lines, start=1):
        m = header_re.match(text)
        if m:
            current = m.group(2).replace('"', "").strip()
            if current == table and m.group(1):
                seen += 1
            if current == table and (index is None or seen == index) and header_line is None:
                header_line = number
            continue
        if key_re and current == table and (index is None or seen == index) \
                and key_re.match(text):
            return number
    if key_re is None and not header_line:
        # a top-level name: "watch" or "milter" written as a plain key
        top = re.compile(r"^\s*" + re.escape(table) + r"\s*=")
        return next((n for n, t in enumerate(lines, start=1) if top.match(t)), None)
    return header_line


def _convert(key: Key, path: str, value: Any, problems: _Problems) -> Any:
    kind = key.kind
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError("expected a string")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("expected an integer")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError("expected a number")
            value = float(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
        elif kind == "list[str]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError("expected a list of strings, such as [\"a\", \"b\"]")
            value = tuple(value)
        elif kind == "duration":
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise TypeError("expected a duration such as \"72h\"")
            value = parse_duration(value)
        elif kind == "size":
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise TypeError("expected a size such as \"10MB\"")
            value = parse_size(value)
        if key.check is not None:
            key.check(value)
    except (TypeError, ValueError) as exc:
        got = type(value).__name__
        message = str(exc)
        if isinstance(exc, TypeError):
            message += f", got {got} {value!r}"
        problems.add(path, message)
        return None
    return value


def _section(data: Mapping[str, Any], name: str, problems: _Problems) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, "expected a table [" + name + "]")
        return {}
    return value


def _read_table(section: str, table: Mapping[str, Any], problems: _Problems,
                prefix: str | None = None) -> dict[str, Any]:
    """Validate one table against KEYS; returns converted values, defaults filled in."""
    prefix = prefix if prefix is not None else section
    out: dict[str, Any] = {}
    known = {k.path.split(".", 1)[1]: k for k in KEYS
             if k.path.startswith(section + ".") and "*" not in k.path}
    for name, value in table.items():
        path = f"{prefix}.{name}"
        if name in known:
            out[name] = _convert(known[name], path, value, problems)
        elif isinstance(value, dict) and f"{section}.{name}.*" in KEYS_BY_PATH:
            continue  # a free-form sub-table, read by the caller
        else:
            problems.add(path, "unknown key" + _did_you_mean(name, known))
    for name, key in known.items():
        if name not in out:
            if key.required:
                problems.add(f"{prefix}.{name}", "missing (required)")
            out[name] = key.default if key.kind not in ("duration", "size") \
                else _convert(key, f"{prefix}.{name}", key.default, problems)
            if key.kind == "list[str]" and isinstance(out[name], list):
                out[name] = tuple(out[name])
    return out


def _did_you_mean(name: str, known: Mapping[str, Key]) -> str:
    import difflib
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


TOP_LEVEL = ("milter", "addresses", "watch", "directory", "clients", "classifier", "followup",
             "dedup", "secrets", "learning", "autoreply", "dns", "arc", "logging", "metrics",
             "state")


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    return parse_config(text, source=str(path), base_dir=path.parent)


def parse_config(text: str, *, source: str = "<string>",
                 base_dir: Path | None = None) -> Config:
    """Validate TOML text; ``base_dir`` resolves relative file paths (CSV, rules)."""
    problems = _Problems(source, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already says "(at line N, column M)"
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    for name in data:
        if name not in TOP_LEVEL:
            problems.add(name, "unknown table or key" + _did_you_mean(
                name, {n: KEYS[0] for n in TOP_LEVEL}))

    milter = _read_table("milter", _section(data, "milter", problems), problems)
    addresses = _read_table("addresses", _section(data, "addresses", problems), problems)
    directory = _read_table("directory", _section(data, "directory", problems), problems)
    classifier_table = _section(data, "classifier", problems)
    classifier = _read_table("classifier", classifier_table, problems)
    followup = _read_table("followup", _section(data, "followup", problems), problems)
    dedup = _read_table("dedup", _section(data, "dedup", problems), problems)
    secrets = _read_table("secrets", _section(data, "secrets", problems), problems)
    autoreply = _read_table("autoreply", _section(data, "autoreply", problems), problems)
    dns = _read_table("dns", _section(data, "dns", problems), problems)
    arc = _read_table("arc", _section(data, "arc", problems), problems)
    learning = _read_table("learning", _section(data, "learning", problems), problems)
    logging_ = _read_table("logging", _section(data, "logging", problems), problems)
    metrics = _read_table("metrics", _section(data, "metrics", problems), problems)
    state = _read_table("state", _section(data, "state", problems), problems)

    weights: dict[str, float] = {}
    raw_weights = classifier_table.get("weights", {})
    if not isinstance(raw_weights, dict):
        problems.add("classifier.weights", "expected a table of rule name = number")
    else:
        for name, value in raw_weights.items():
            converted = _convert(KEYS_BY_PATH["classifier.weights.*"],
                                 f"classifier.weights.{name}", value, problems)
            if converted is not None:
                weights[name] = converted

    groups: list[WatchGroup] = []
    raw_watch = data.get("watch", [])
    if not isinstance(raw_watch, list):
        problems.add("watch", "expected one or more [[watch]] tables")
        raw_watch = []
    seen_names: set[str] = set()
    for index, table in enumerate(raw_watch):
        prefix = f"watch[{index}]"
        if not isinstance(table, dict):
            problems.add(prefix, "expected a [[watch]] table")
            continue
        values = _read_table("watch[]", table, problems, prefix=prefix)
        if values.get("name") in seen_names:
            problems.add(f"{prefix}.name", f"the name {values['name']!r} is used twice")
        seen_names.add(values.get("name") or "")
        addrs = values.get("addresses") or ()
        for addr in addrs:
            if "@" not in addr:
                problems.add(f"{prefix}.addresses", f"{addr!r} is not an address or "
                             "address pattern (\"*@example.org\")")
        if values.get("name") and addrs and values.get("mode"):
            groups.append(WatchGroup(
                name=values["name"], addresses=tuple(a.lower() for a in addrs),
                mode=values["mode"], _patterns=tuple(_compile_glob(a) for a in addrs)))

    clients: dict[str, str] = {}
    raw_clients = _section(data, "clients", problems)
    for name, structure in raw_clients.items():
        problems_before = len(problems.items)
        _check_client(f"clients.{name}", name, structure, problems)
        if len(problems.items) == problems_before:
            clients.setdefault(name.lower().strip(), structure)
    base = base_dir or Path(".")

    def beside_config(value: str | None) -> str:
        """A path from the config: relative ones are relative to the config file."""
        return str(base / value) if value and not Path(value).is_absolute() else value or ""

    client_files: list[str] = []
    for csv_path in directory.get("csv") or ():
        full = Path(beside_config(csv_path))
        client_files.append(str(full))
        for key, structure in _read_clients_csv(full, problems):
            clients.setdefault(key, structure)

    rules_file = beside_config(classifier.get("rules_file"))
    if rules_file and not Path(rules_file).is_file():
        problems.add("classifier.rules_file", f"{rules_file}: no such file")
    model = classifier.get("model") or "shipped"
    if model not in ("shipped", "none"):
        model = beside_config(model)
        if not Path(model).is_file():
            problems.add("classifier.model", f"{model}: no such file (or say shipped or none)")

    templates_dir = beside_config(autoreply.get("templates_dir"))
    if templates_dir and not Path(templates_dir).is_dir():
        problems.add("autoreply.templates_dir", f"{templates_dir}: no such directory")
    redis_password_file = beside_config(state.get("redis_password_file"))
    if state.get("backend") == "redis" and redis_password_file \
            and not Path(redis_password_file).is_file():
        problems.add("state.redis_password_file", f"{redis_password_file}: no such file")
    arc_key = beside_config(arc.get("private_key"))
    if arc.get("enabled"):
        for name in ("domain", "selector", "private_key"):
            if not arc.get(name):
                problems.add(f"arc.{name}", "required when arc.enabled = true")
        if arc_key and not Path(arc_key).is_file():
            problems.add("arc.private_key", f"{arc_key}: no such file")

    if problems.items:
        raise ConfigError(problems.in_line_order())
    doubts = _Problems(source, text)
    internal = tuple(d.lower().lstrip("@") for d in addresses["internal_domains"])
    for index, group in enumerate(groups):
        _doubt_watched_domains(f"watch[{index}].addresses", group, internal,
                               addresses["fallback"], doubts)

    return Config(
        milter=MilterSettings(
            socket=milter["socket"], socket_mode=int(milter["socket_mode"], 8),
            database=milter["database"], on_error=milter["on_error"],
            authserv_id=milter["authserv_id"], max_scan_size=milter["max_scan_size"],
            spool_memory=milter["spool_memory"], timeout=milter["timeout"],
            log_level=milter["log_level"], mode=milter["mode"]),
        addresses=Addresses(
            assistance=addresses["assistance"].lower(), fallback=addresses["fallback"].lower(),
            internal_domains=tuple(d.lower().lstrip("@") for d in
                                   addresses["internal_domains"])),
        watch=tuple(groups),
        clients=clients,
        client_files=tuple(client_files),
        classifier=ClassifierSettings(
            threshold=classifier["threshold"],
            known_client_weight=classifier["known_client_weight"],
            rules_file=rules_file, weights=weights, model=model),
        ticket_pattern=followup["ticket_pattern"],
        dedup=DedupSettings(window=dedup["window"], action=dedup["action"],
                            similarity=dedup["similarity"]),
        secrets=SecretsSettings(action=secrets["action"], marker=secrets["marker"],
                                disabled_kinds=tuple(secrets["disabled_kinds"]),
                                scope=secrets["scope"], outgoing=secrets["outgoing"]),
        dns=DnsSettings(resolver=dns["resolver"], timeout=dns["timeout"],
                        cache_ttl=dns["cache_ttl"]),
        arc=ArcSettings(enabled=arc["enabled"], domain=arc["domain"],
                        selector=arc["selector"], private_key=arc_key),
        learning=LearningSettings(forwards=learning["forwards"],
                                  max_examples=learning["max_examples"]),
        autoreply=AutoreplySettings(
            enabled=autoreply["enabled"], smtp=autoreply["smtp"], sender=autoreply["from"],
            every=autoreply["every"], trust=autoreply["trust"],
            paste_url=autoreply["paste_url"], max_per_hour=autoreply["max_per_hour"],
            trusted_relays=tuple(autoreply["trusted_relays"]),
            templates_dir=templates_dir, give_up=autoreply["give_up"],
            retry=autoreply["retry"]),
        source=source,
        logging=LoggingSettings(target=logging_["target"], facility=logging_["facility"],
                                format=logging_["format"],
                                syslog_socket=logging_["syslog_socket"]),
        metrics=MetricsSettings(listen=metrics["listen"]),
        state=StateSettings(backend=state["backend"], redis_url=state["redis_url"],
                            redis_password_file=redis_password_file,
                            key_prefix=state["key_prefix"], timeout=state["timeout"],
                            connect_timeout=state["connect_timeout"]),
        doubts=tuple(doubts.in_line_order()),
    )


def _doubt_watched_domains(path: str, group: WatchGroup, internal: tuple[str, ...],
                           fallback: str, doubts: _Problems) -> None:
    """A pattern that watches every mailbox of a domain (``*@example.org``) names staff
    who also write mail; if that domain is not internal, their mail to each other looks
    like client mail and is routed to the fallback address."""
    for address in group.addresses:
        local, _, domain = address.rpartition("@")
        if "*" not in local or not domain or any(c in domain for c in "*?["):
            continue
        if not any(domain == d or domain.endswith("." + d) for d in internal):
            doubts.add(path, f"{address!r} watches every mailbox of {domain}, but {domain} "
                       "is not in addresses.internal_domains: mail staff there write to "
                       f"each other would be taken for client mail and routed to {fallback};"
                       f" add \"{domain}\" to addresses.internal_domains")


_STRUCTURE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$", re.IGNORECASE)


def _check_client(path: str, name: str, structure: Any, problems: _Problems) -> None:
    if not isinstance(structure, str):
        problems.add(path, f"expected a structure name (string), got {structure!r}")
    elif not _STRUCTURE_RE.match(structure):
        problems.add(path, f"{structure!r} is not a usable structure name (letters, digits, "
                     "., _ and -; it becomes the local part of the assistance address)")
    key = name.strip().lower()
    if not key or " " in key or ("." not in key.rpartition("@")[2]):
        problems.add(path, f"{name!r} is neither a domain (example.fr) nor an address")


def _read_clients_csv(path: Path, problems: _Problems) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) != 2:
                    problems.items.append(f"{path}:{number}: expected two columns "
                                          f"\"domain-or-address,structure\", got {len(row)}")
                    continue
                key, structure = row[0].strip().lower(), row[1].strip()
                if number == 1 and key in ("domain", "address", "domain-or-address", "sender"):
                    continue  # a header line
                local = _Problems(str(path), "")
                _check_client("", key, structure, local)
                for item in local.items:
                    problems.items.append(f"{path}:{number}: {item.split(': ', 2)[-1]}")
                if not local.items:
                    out.append((key, structure))
    except OSError as exc:
        problems.add("directory.csv", f"{path}: {exc.strerror}")
    except UnicodeDecodeError:
        problems.add("directory.csv", f"{path}: not UTF-8 text")
    return out


def reference_markdown() -> str:
    """The README's configuration reference table, generated from ``KEYS``."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        default = key.default
        if key.required:
            shown = "(required)"
        elif default is None:
            shown = "—"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        elif isinstance(default, str):
            shown = f"`'{default}'`" if "\\" in default else f'`"{default}"`'
        elif isinstance(default, list):
            shown = "`[]`" if not default else f"`{default!r}`"
        else:
            shown = f"`{default}`"
        doc = key.doc.replace("|", "\\|")
        lines.append(f"| `{key.path}` | {key.kind} | {shown} | {doc} |")
    return "\n".join(lines) + "\n"
