"""Is this mail a support request?  Explainable rules, weighed by a learned model.

A rule is a named family of regular expressions with a weight and a place to
look (the subject, the body, or either).  A rule fires at most once per
message, however many of its patterns match.  With the learned model (the
default, ``model.py``), the score is 5 plus the model's log-odds, which reads the
sender's words and the rules that fired as features: each rule counts the weight
the model learned for it (a site's override or unknown rule: its own weight),
and the site's learned adjustments (``learn.py``) are added.  Without a model,
the score is the sum of the weights of the rules that fired, plus
``known_client_weight`` when the sender is in the client directory (the rule
``known-client``).  The names of the rules that fired, and the model's
strongest words, go into the ``X-Helpdesk-Request`` header, so an admin can
always see *why* a mail was or was not rerouted (``Classifier``).

Rules are data: the shipped set is ``rules/default.toml``; a site can replace
it (``classifier.rules_file``) or re-weight rules by name
(``classifier.weights.NAME``; 0 disables a rule).

Matching is case-, accent- and punctuation-insensitive.  The text is
``prepare``d: accents folded away (``é`` -> ``e``, ``œ`` -> ``oe``, ``’`` ->
``'``), lower-cased, every character other than a letter, a digit, ``_``,
``'`` and ``-`` turned into a space, and runs of spaces made one.  Patterns are
folded the same way (accents only; they must be ASCII afterwards), so ``reçois``
in a pattern matches ``recois`` in a mail, and a fixed-width lookbehind such as
``(?<=\\bne )`` works whatever punctuation or line breaks the mail had.

Speed.  Python's ``re`` cannot use its fast literal scan for a pattern that
starts with ``\\b`` or is case-insensitive, so a search costs about 20 ns per
character per pattern: ~200 patterns searched one alternation per rule cost
milliseconds on a 5 KB text.  Instead, each pattern that starts with a word
boundary and literal text (its *anchors*, read from the parsed pattern) is
indexed; one pass over the word separators (space, apostrophe, hyphen, each
followed by a trie of all anchors) finds the word starts where some
anchor begins, and only the patterns anchored there are tried, with ``match``
at that position.  Patterns with no usable anchor are searched in full, one
alternation per rule, so any valid regular expression still works -- it only
costs more.  The result is the same as searching every pattern everywhere (the
tests check it on the corpus).
"""

from __future__ import annotations

import functools
import importlib
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .model import (
    KNOWN_CLIENT_FEATURE,
    TextModel,
    feature_label,
    features,
    read_data_file,
    value_of_count,
    word_groups,
)
from .text import own_text, strip_subject_prefixes

# The parser behind re.compile (CPython 3.11+), used only to find anchors: if it
# is missing or changes shape, patterns are simply searched in full.
try:
    _sre: Any = importlib.import_module("re._constants")
    _sre_parser: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - another Python implementation
    _sre = _sre_parser = None

KNOWN_CLIENT = "known-client"
WHERE = ("subject", "body", "any")

# Only the start of the sender's own text is scored: a request is stated at the
# top, and this bounds the cost of a huge body (cost is linear up to here).
BODY_SCAN_LIMIT = 10_000
# own_text() reads at most this much of the body text.
TEXT_SCAN_LIMIT = 50_000

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_COMBINING = re.compile(r"[\u0300-\u036f]+")
# characters that NFKD does not reduce to ASCII but that French mail is full of
_WIDE = (("\u2019", "'"), ("\u2018", "'"), ("\u02bc", "'"), ("\u0153", "oe"),
         ("\u0152", "OE"), ("\u00e6", "ae"), ("\u00c6", "AE"))
_FORWARD_SUBJECT = re.compile(r"\s*(?:\[[^\]]{0,40}\]\s*)*(?:tr|fwd?|wg|rv|enc)\s*:",
                              re.IGNORECASE)


def _text_table() -> bytes:
    """Latin-1 byte -> the ASCII byte rules see: letters unaccented and lower-cased,
    digits, ``_``, ``'`` and ``-`` kept, everything else a space."""
    table = bytearray(b" " * 256)
    for code in range(256):
        char = chr(code)
        if char.isalnum() or char in "_'-":
            base = unicodedata.normalize("NFKD", char)[:1]
            if base.isascii() and (base.isalnum() or base in "_'-"):
                table[code] = ord(base.lower())
    return bytes(table)


_TEXT_TABLE = _text_table()
_SPACES = re.compile(b"  +")


def fold(text: str) -> str:
    """Accent-insensitive spelling of a pattern or a text: ``é`` -> ``e``,
    ``’`` -> ``'``, ``œ`` -> ``oe``; nothing else changes."""
    if text.isascii():
        return text
    for wide, plain in _WIDE:
        if wide in text:
            text = text.replace(wide, plain)
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text))


def prepare(text: str) -> str:
    """The form rules are matched against: folded, lower-cased ASCII where every
    character but letters, digits, ``_``, ``'`` and ``-`` is a space, spaces single.

    One byte-table pass (``bytes.translate``): per-character work in Python or in
    ``str.translate`` would cost more than all the matching.  Characters outside
    Latin-1 (other scripts, emoji, symbols) become spaces.
    """
    if text.isascii():
        data = text.encode("ascii")
    else:
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)  # "e" + U+0301 -> "é"
        for wide, plain in _WIDE:
            if wide in text:
                text = text.replace(wide, plain)
        data = text.encode("latin-1", "replace")
    return _SPACES.sub(b" ", data.translate(_TEXT_TABLE)).strip().decode("ascii")


class RulesError(ValueError):
    """A rules file or a weight override is unusable; the message says where and why."""


# --- anchors ---------------------------------------------------------------------

_MAX_ANCHOR = 16          # anchors longer than this are cut (still a valid prefix)
_MAX_ANCHORS = 400        # more alternatives than this: search the pattern in full
_MIN_ANCHOR = 2           # a one-letter anchor would hit nearly every word
_SMALL_CLASS = 6          # [eé] expands into alternatives; bigger classes stop an anchor
_WORD_START = re.compile(r"[a-z0-9_]")

# (prefix, complete, boundary): ``prefix`` is literal text every match starting
# this way begins with; ``complete`` says whether the element was entirely
# literal (so what follows can extend the prefix); ``boundary`` whether a \b
# was asserted before the first character.
_State = tuple[str, bool, bool]


def find_anchors(source: str) -> frozenset[str] | None:
    """Lower-case literal strings such that every match of ``source`` (compiled
    case-insensitively) starts at a word boundary with one of them, or None when
    the pattern has no such prefix of two characters or more."""
    if _sre_parser is None:
        return None
    try:
        states = _sequence(list(_sre_parser.parse(source, re.IGNORECASE)))
    except Exception:  # a construct this reader does not know: no index, full search
        return None
    if not states:
        return None
    anchors = set()
    for prefix, _complete, boundary in states:
        # the index looks at word starts only: the anchor must begin with a word character
        if not boundary or len(prefix) < _MIN_ANCHOR or not _WORD_START.match(prefix):
            return None
        anchors.add(prefix)
    # "erreur" covers "erreurs": a text that starts with one starts with the other
    return frozenset(a for a in anchors
                     if not any(a != b and a.startswith(b) for b in anchors))


def _sequence(items: Iterable[tuple[Any, Any]]) -> set[_State] | None:
    states: set[_State] = {("", True, False)}
    for op, av in items:
        alternatives = _element(op, av)
        new: set[_State] = set()
        for prefix, complete, boundary in states:
            if not complete:
                new.add((prefix, False, boundary))
            elif alternatives is None:
                if not prefix:
                    return None  # the match may start with something that is not literal
                new.add((prefix, False, boundary))
            else:
                for more, more_complete, more_boundary in alternatives:
                    joined = prefix + more
                    # a \b counts only before the first character of the match
                    seen = boundary or (more_boundary and not prefix)
                    if len(joined) >= _MAX_ANCHOR:
                        new.add((joined[:_MAX_ANCHOR], False, seen))
                    else:
                        new.add((joined, more_complete, seen))
        if len(new) > _MAX_ANCHORS:
            return None
        states = new
    return states


def _element(op: Any, av: Any) -> set[_State] | None:
    """The ways one parsed element (opcode, argument) can start; None: not literal."""
    if op is _sre.LITERAL:
        return {(chr(av).lower(), True, False)}
    if op is _sre.IN:
        chars = [a for o, a in av if o is _sre.LITERAL]
        if len(chars) != len(av) or len(chars) > _SMALL_CLASS:
            return None
        return {(chr(c).lower(), True, False) for c in chars}
    if op is _sre.AT:
        return {("", True, av is _sre.AT_BOUNDARY)}
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):
        return {("", True, False)}  # zero width: checked when the pattern is matched
    if op is _sre.SUBPATTERN:
        return _sequence(av[-1])
    if op is _sre.ATOMIC_GROUP:
        return _sequence(av)
    if op is _sre.BRANCH:
        union: set[_State] = set()
        for branch in av[1]:
            states = _sequence(branch)
            if states is None:
                return None
            union |= states
        return union
    if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
        low, high, item = av
        inner = _sequence(item)
        if inner is None:
            return None
        exact_once = low == 1 and high == 1
        states = {(p, c and exact_once, b) for p, c, b in inner}
        if low == 0:
            states.add(("", True, False))
        return states
    return None


class _Index:
    """Anchored patterns of one side (subject or body), found through word starts.

    In ``prepare``d text a word starts at 0 or right after a space, an apostrophe
    or a hyphen.  One pass finds them all, and only there is the trie of anchors
    tried.  (A pass per separator let ``re`` skip ahead to a literal character, and
    was faster in a warm loop; but each pass had its own copy of the trie's compiled
    code, large and out of the cache by the time a message gets here: in the
    decision, one pass costs less.)
    """

    def __init__(self, entries: list[tuple[str, int, re.Pattern[str]]]):
        own: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        for anchor, rule, pattern in entries:
            own.setdefault(anchor, []).append((rule, pattern))
        # The trie reports the longest anchor at a word start; every shorter anchor
        # there is a prefix of it, so each anchor carries its prefixes' patterns too.
        self.targets: dict[str, tuple[tuple[int, re.Pattern[str]], ...]] = {
            anchor: tuple(pair for size in range(_MIN_ANCHOR, len(anchor) + 1)
                          for pair in own.get(anchor[:size], ()))
            for anchor in own}
        if own:
            trie = _trie(set(own))
            self.at_start: re.Pattern[str] | None = re.compile("(?=(" + trie + "))")
            self.after_separator: tuple[re.Pattern[str], ...] = (
                re.compile("[ '-](?=(" + trie + "))"),)
        else:
            self.at_start, self.after_separator = None, ()

    def scan(self, text: str, fired: list[bool]) -> None:
        """Set ``fired[i]`` for every rule ``i`` with a pattern matching in ``text``."""
        if self.at_start is None:
            return
        targets = self.targets
        first = self.at_start.match(text)
        matches = [first] if first else []
        for separator in self.after_separator:
            matches.extend(separator.finditer(text))
        for m in matches:
            pos = m.end()
            for rule, pattern in targets[m.group(1)]:
                if not fired[rule] and pattern.match(text, pos):
                    fired[rule] = True


def _trie(words: set[str]) -> str:
    """A regular expression matching the longest of ``words`` that starts at the
    current position, as a trie: one dispatch per character, not one test per word."""
    root: dict[str, dict] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items())
                    if char]
        if not branches:
            return ""
        either = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # a word ends here too: the longer words are tried first, greedily
        return "(?:" + either + ")?" if "" in node else either

    return emit(root)


# --- rules -----------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One family of patterns.  ``name`` appears in the X-Helpdesk-Request header."""

    name: str
    weight: float
    where: str                              # "subject" | "body" | "any"
    patterns: tuple[re.Pattern[str], ...]
    description: str = ""
    # every pattern folded into one case-insensitive alternation: search() uses it
    matcher: re.Pattern[str] = field(init=False, repr=False, compare=False)
    # (anchors, folded pattern) for indexed patterns; the rest as one alternation
    anchored: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = field(
        init=False, repr=False, compare=False)
    unanchored: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise RulesError(f"rule {self.name!r}: where must be one of {', '.join(WHERE)}, "
                             f"not {self.where!r}")
        if not self.patterns:
            raise RulesError(f"rule {self.name!r}: no patterns")
        anchored: list[tuple[frozenset[str], re.Pattern[str]]] = []
        rest: list[str] = []
        folded_all: list[str] = []
        for pattern in self.patterns:
            folded = fold(pattern.pattern)
            if not folded.isascii():
                char = next(c for c in folded if not c.isascii())
                raise RulesError(f"rule {self.name!r}: pattern {pattern.pattern!r} contains "
                                 f"{char!r}, which never appears in the text rules see "
                                 "(ASCII letters, digits, _, ' and -; the rest is spaces)")
            folded_all.append(folded)
            try:
                compiled = re.compile(folded, re.IGNORECASE)
            except re.error as exc:  # folding cannot break a valid pattern; be explicit
                raise RulesError(f"rule {self.name!r}: pattern {pattern.pattern!r} "
                                 f"does not survive accent folding: {exc}") from None
            anchors = find_anchors(folded)
            if anchors is None:
                rest.append(folded)
            else:
                anchored.append((anchors, compiled))
        object.__setattr__(self, "matcher", _alternation(folded_all))
        object.__setattr__(self, "anchored", tuple(anchored))
        object.__setattr__(self, "unanchored", _alternation(rest) if rest else None)

    def search(self, text: str) -> re.Match[str] | None:
        """The first match in ``text`` (already ``prepare``d), by plain search."""
        return self.matcher.search(text)


def _alternation(sources: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{s})" for s in sources), re.IGNORECASE)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    source: str = "<rules>"
    _subject: _Index = field(init=False, repr=False, compare=False)
    _body: _Index = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        subject: list[tuple[str, int, re.Pattern[str]]] = []
        body: list[tuple[str, int, re.Pattern[str]]] = []
        for number, rule in enumerate(self.rules):
            for anchors, pattern in rule.anchored:
                for anchor in anchors:
                    if rule.where in ("subject", "any"):
                        subject.append((anchor, number, pattern))
                    if rule.where in ("body", "any"):
                        body.append((anchor, number, pattern))
        object.__setattr__(self, "_subject", _Index(subject))
        object.__setattr__(self, "_body", _Index(body))

    @classmethod
    def load(cls, path: str | None = None,
             weights: Mapping[str, float] | None = None) -> RuleSet:
        """Read a rules file (``None``: the shipped ``rules/default.toml``).

        ``weights`` overrides rule weights by name; a weight of 0 disables the rule.
        Raises RulesError naming the file and the rule for a broken file, and for a
        weight given to a rule that does not exist.
        """
        source, text = read_data_file(path, "rules/default.toml", "rules", RulesError)
        return cls.parse(text, source=source, weights=weights)

    @classmethod
    def parse(cls, text: str, *, source: str = "<rules>",
              weights: Mapping[str, float] | None = None) -> RuleSet:
        """Build a rule set from TOML text (see ``load``)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RulesError(f"{source}: not valid TOML: {exc}") from None
        unknown = sorted(set(data) - {"rule"})
        if unknown:
            raise RulesError(f"{source}: unknown top-level key {unknown[0]!r}; "
                             "a rules file holds [[rule]] tables only")
        raw_rules = data.get("rule")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise RulesError(f"{source}: no [[rule]] tables")
        rules: list[Rule] = []
        seen: set[str] = set()
        for index, table in enumerate(raw_rules):
            rule = _parse_rule(table, f"{source}: rule[{index}]")
            if rule.name in seen:
                raise RulesError(f"{source}: rule {rule.name!r} is defined twice")
            seen.add(rule.name)
            rules.append(rule)
        if weights:
            for name, weight in weights.items():
                if name not in seen:
                    hint = (" (set classifier.known_client_weight instead)"
                            if name == KNOWN_CLIENT else "")
                    raise RulesError(f"classifier.weights.{name}: no rule named {name!r} in "
                                     f"{source}{hint}; rules are: {', '.join(sorted(seen))}")
                if isinstance(weight, bool) or not isinstance(weight, int | float):
                    raise RulesError(f"classifier.weights.{name}: expected a number, "
                                     f"got {weight!r}")
            rules = [Rule(name=r.name, weight=float(weights[r.name]), where=r.where,
                          patterns=r.patterns, description=r.description)
                     if r.name in weights else r for r in rules]
        return cls(rules=tuple(r for r in rules if r.weight != 0), source=source)

    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules)

    def fired(self, subject: str, body: str) -> tuple[bool, ...]:
        """Which rules match, given the ``prepare``d subject and body."""
        fired = [False] * len(self.rules)
        self._subject.scan(subject, fired)
        self._body.scan(body, fired)
        for number, rule in enumerate(self.rules):
            if fired[number] or rule.unanchored is None:
                continue
            in_subject = rule.where != "body" and rule.unanchored.search(subject)
            fired[number] = bool(in_subject or (
                rule.where != "subject" and rule.unanchored.search(body)))
        return tuple(fired)


_RULE_KEYS = {"name", "weight", "where", "patterns", "description"}


def _parse_rule(table: object, where: str) -> Rule:
    if not isinstance(table, dict):
        raise RulesError(f"{where}: expected a [[rule]] table")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RulesError(f"{where}: name must be lower-case letters, digits and '-' "
                         f"(it appears in a mail header), got {name!r}")
    if name == KNOWN_CLIENT:
        raise RulesError(f"{where}: the name {KNOWN_CLIENT!r} is reserved")
    label = f"{where} ({name})"
    extra = sorted(set(table) - _RULE_KEYS)
    if extra:
        raise RulesError(f"{label}: unknown key {extra[0]!r}; keys are "
                         f"{', '.join(sorted(_RULE_KEYS))}")
    weight = table.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise RulesError(f"{label}: weight must be a number, got {weight!r}")
    place = table.get("where", "any")
    if place not in WHERE:
        raise RulesError(f"{label}: where must be one of {', '.join(WHERE)}, got {place!r}")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise RulesError(f"{label}: description must be a string")
    raw_patterns = table.get("patterns")
    if not isinstance(raw_patterns, list) or not raw_patterns \
            or not all(isinstance(p, str) for p in raw_patterns):
        raise RulesError(f"{label}: patterns must be a non-empty list of strings")
    patterns: list[re.Pattern[str]] = []
    for number, pattern in enumerate(raw_patterns):
        try:
            patterns.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise RulesError(f"{label}: pattern {number} {pattern!r} is not a valid "
                             f"regular expression: {exc}") from None
    try:
        return Rule(name=name, weight=float(weight), where=place, patterns=tuple(patterns),
                    description=description)
    except RulesError as exc:
        raise RulesError(f"{where}: {exc}") from None


# --- scoring ---------------------------------------------------------------------

# The score is the log-odds of "request" plus this, so that the default threshold,
# 5.0, is even odds; each point up or down multiplies the odds by e (about 2.7).
SCORE_OFFSET = 5.0
# How many of the model's strongest features are named in ``rules=``.
EXPLAIN_FEATURES = 3
EXPLAIN_MIN = 0.1       # ... when each moves the log-odds by at least this much
EXPLAIN_MIN_CHARS = 4   # ... and is a word (or stem) of at least this many letters


@dataclass(frozen=True)
class Score:
    score: float
    rules: tuple[str, ...]          # rules that fired, in rule order, then the model's
                                    # strongest features (see model.feature_label)


def is_forward_subject(subject: str) -> bool:
    """True when the subject starts (after tags) with a forward prefix: TR:, Fwd:, FW:..."""
    return bool(_FORWARD_SUBJECT.match(subject or ""))


def prepared_texts(subject: str, text: str) -> tuple[str, str]:
    """The ``prepare``d Subject and sender's own text the rules and the model read."""
    subject = subject or ""
    return (prepare(strip_subject_prefixes(subject)),
            prepared_body(text or "", is_forward_subject(subject)))


# The classifier and then the reply guidance's hints (guidance.hints) read the same
# prepared own text of the same message text (the very same str object, whose hash is
# then computed once): the second asks a remembered answer instead of preparing up to
# BODY_SCAN_LIMIT characters again.  The function is pure; 32 entries cover the
# messages in flight in every milter thread; lru_cache is thread-safe.
@functools.lru_cache(maxsize=32)
def prepared_body(text: str, forwarded: bool) -> str:
    """``prepare`` of the first ``BODY_SCAN_LIMIT`` characters of the sender's own
    text (``own_text`` of the first ``TEXT_SCAN_LIMIT`` characters of ``text``, a
    forward when ``forwarded``): the body the rules, the model and the hints read."""
    return prepare(own_text(text[:TEXT_SCAN_LIMIT], forwarded=forwarded)[:BODY_SCAN_LIMIT])


def _shown(strongest: list[tuple[str, float]], count: int = 3) -> list[str]:
    """Which of the strongest text features go into ``rules=``: at least
    ``EXPLAIN_MIN`` each, a stem only when no word shown already has it."""
    out: list[str] = []
    words: list[str] = []
    for key, contribution in strongest:
        if len(out) == count or abs(contribution) < EXPLAIN_MIN:
            break
        kind, _, text = key.partition(":")
        if (kind == "p" and any(w.startswith(text) for w in words)) \
                or len(text.strip("*")) < EXPLAIN_MIN_CHARS:
            continue   # short function words weigh (style) but explain nothing
        if kind in ("u", "s"):
            words.append(text)
        out.append(key)
    return out


def message_features(subject: str, text: str, rules: RuleSet, *, known_client: bool = False,
                     text_scale: float = 1.0) -> tuple[dict[str, float], tuple[str, ...]]:
    """What the classifier reads of one message: the model's feature values and the
    names of the rules that fired.  ``subject`` is the decoded Subject, ``text`` the
    body's text; the body is first reduced to the sender's own words (``own_text``; a
    forward, told by its subject, keeps the forwarded content), then only its first
    ``BODY_SCAN_LIMIT`` characters are looked at.  Training calls this too."""
    prepared_subject, prepared_body = prepared_texts(subject, text)
    fired = rules.fired(prepared_subject, prepared_body)
    names = tuple(rule.name for rule, hit in zip(rules.rules, fired, strict=True) if hit)
    return features(prepared_subject, prepared_body, names, known_client=known_client,
                    text_scale=text_scale), names


class SiteDeltas(Protocol):
    """What a site's learned state offers the classifier (see ``learn.SiteModel``)."""

    def __bool__(self) -> bool: ...
    def contribution(self, groups: Sequence[Iterable[Any]], value: float,
                     other: Iterable[str]) -> float: ...


# Named in rules= when the site's learned deltas moved the score (see learn.py).
SITE_RULE = "site-learned"


@dataclass(frozen=True)
class Classifier:
    """The rules, the learned model (or None: rules only) and how they combine.

    With a model, a rule that fired is one of the model's features: its learned
    weight counts, unless the site set ``classifier.weights.NAME`` or the model
    never saw the rule (a site's own rules file), where the rule's own weight counts.
    Without a model, the score is the sum of the weights of the rules that fired
    (the behaviour before the model).
    """

    rules: RuleSet
    model: TextModel | None = None
    overridden: frozenset[str] = frozenset()
    # the site's learned deltas (learn.Learning.site), asked for at each message
    site: Callable[[], SiteDeltas] | None = None
    _rule_weights: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weights = {}
        for rule in self.rules.rules:
            key = "r:" + rule.name
            if self.model is None or rule.name in self.overridden \
                    or key not in self.model.weights:
                weights[key] = rule.weight
        object.__setattr__(self, "_rule_weights", weights)

    def score(self, subject: str, text: str, *, known_client: bool,
              known_client_weight: float = 0.0) -> Score:
        prepared_subject, prepared_body = prepared_texts(subject, text)
        fired_flags = self.rules.fired(prepared_subject, prepared_body)
        fired = [rule.name for rule, hit in zip(self.rules.rules, fired_flags, strict=True)
                 if hit]
        names = list(fired)
        model = self.model
        if model is None:
            total = 0.0 + sum(self._rule_weights["r:" + n] for n in fired)
        else:
            # features() and logit() in one pass: every text feature is worth the same;
            # the features' names are needed only for the site's learned deltas
            site = self.site() if self.site is not None else None
            groups = word_groups(prepared_subject, prepared_body)
            text_part, strongest = model.score_groups(groups, EXPLAIN_FEATURES * 4,
                                                      shown=EXPLAIN_MIN)
            total = SCORE_OFFSET + model.bias + text_part
            for name in fired:
                key = "r:" + name
                weight = self._rule_weights.get(key)
                total += model.weights.get(key, 0.0) if weight is None else weight
            if known_client:
                total += model.weights.get(KNOWN_CLIENT_FEATURE, 0.0)
            names.extend(feature_label(key) for key in _shown(strongest))
            if site:
                others = ["r:" + n for n in fired]
                if known_client:
                    others.append(KNOWN_CLIENT_FEATURE)
                learned = site.contribution(
                    groups, value_of_count(sum(map(len, groups)), model.text_scale), others)
                total += learned
                if abs(learned) >= EXPLAIN_MIN:
                    names.append(SITE_RULE)
        if known_client:
            total += known_client_weight
            if known_client_weight or model is not None:
                names.append(KNOWN_CLIENT)
        # rounding keeps 2.5 + 1.5 + 1.0 from landing a hair under a threshold of 5.0
        return Score(score=round(total, 3), rules=tuple(names))

    def explain(self, subject: str, text: str, *, known_client: bool = False
                ) -> list[tuple[str, float]]:
        """Every feature's contribution to the log-odds, strongest first (rules
        included, as ``r:NAME``); for ``try --explain``."""
        values, fired = message_features(
            subject, text, self.rules, known_client=known_client,
            text_scale=self.model.text_scale if self.model is not None else 1.0)
        if self.model is None:
            return [("r:" + n, self._rule_weights["r:" + n]) for n in fired]
        return self.model.explain(values, self._rule_weights)

    def rule_weight(self, name: str) -> float | None:
        """The weight a fired rule counts with, whatever its source."""
        key = "r:" + name
        if key in self._rule_weights:
            return self._rule_weights[key]
        return self.model.weights.get(key) if self.model is not None else None


def score_message(subject: str, text: str, rules: RuleSet, *, known_client: bool,
                  known_client_weight: float = 2.0, model: TextModel | None = None) -> Score:
    """Score one message with ``rules`` (and ``model``, when given); see Classifier."""
    return Classifier(rules, model).score(subject, text, known_client=known_client,
                                          known_client_weight=known_client_weight)
