"""The learned text model: a linear model over words, word stems and rule firings.

What this module promises:

- ``features(subject, body, fired)`` turns the ``prepare``d Subject and sender's own
  text (see ``classify.prepare``) and the names of the rules that fired into the
  feature values the model reads.  Training (``scripts/train-model.py``, scikit-learn)
  calls this very function, so what was learned is what is inferred.
- ``TextModel.logit(features)`` is a dot product: a few dictionary look-ups per word,
  pure Python, no NumPy or scikit-learn at run time.
- ``TextModel.explain(features)`` gives each feature's contribution, so the strongest
  ones can go into the ``X-Helpdesk-Request`` header and ``try --explain``.

The features (all binary, text ones scaled by 1/sqrt(count) so a long mail does not
outweigh a short one; rule firings count 1 each):

- ``u:WORD``   a word of the body or subject;
- ``p:STEM``   the first ``STEM`` characters of a longer word, so that ``fonctionne``,
  ``fonctionnait`` and ``fonctionnement`` share evidence (French conjugates a lot);
- ``b:S1 S2``  two consecutive stems ("ne march", "march plus", "can't log");
- ``s:WORD``   a word of the Subject (a Subject says more per word than a body);
- ``r:RULE``   a rule of the rules file fired (its learned weight replaces the file's
  weight; a rule the model never saw keeps the file's weight);
- ``k:known-client``  the sender is in the client directory.

The shipped weights (``models/request.json``) are data with a card beside them
(``models/request.md``); ``make train`` rebuilds both from the labelled sets with a
fixed seed.  Only the start of the text is read (``MODEL_TEXT_LIMIT`` characters):
a request is stated at the top, and this bounds the cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import accumulate, compress, pairwise, repeat
from operator import itemgetter, ne
from pathlib import Path
from typing import Any

STEM = 5
KNOWN_CLIENT_FEATURE = "k:known-client"
MODEL_TEXT_LIMIT = 3000
FORMAT = 1

_STEM_OF = itemgetter(slice(0, STEM))     # word -> word[:STEM], a C function
# The package whose data files are read: this module's own, so that a copy of the
# package under another name (scripts/decision-cpu-paired.py) reads its own model.
_PACKAGE = __name__.rpartition(".")[0] or "helpdesk_milter"


class ModelError(ValueError):
    """A model file is unusable; the message says which file and why."""


def read_data_file(path: str | Path | None, shipped: str, what: str,
                   error: type[ValueError]) -> tuple[str, str]:
    """(source name, UTF-8 text) of a data file: ``path``, or the package's own
    ``shipped`` one (a path inside ``helpdesk_milter``) when ``path`` is None.  Raises
    ``error`` naming the file and, without a traceback, why it cannot be read."""
    if path is None:
        source = f"helpdesk_milter/{shipped}"
        try:
            return source, resources.files(_PACKAGE).joinpath(shipped).read_text(
                encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise error(f"{source}: cannot read the shipped {what}: {exc}") from None
    source = str(path)
    try:
        return source, Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{source}: cannot read the {what} file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{source}: the {what} file is not UTF-8 text") from None


def text_keys(subject: str, body: str) -> list[str]:
    """The text features of one message, each once (``subject`` and ``body`` already
    ``prepare``d).  Built with list comprehensions and ``dict.fromkeys``: this runs for
    every message, and per-key Python statements cost more than the rest together."""
    words = body[:MODEL_TEXT_LIMIT].split()
    stems = [w[:STEM] for w in words]
    subject_words = subject.split()
    keys = ["u:" + w for w in words]
    keys += ["p:" + w[:STEM] for w in words if len(w) > STEM]
    keys += ["b:" + a + " " + b for a, b in pairwise(stems)]
    keys += ["s:" + w for w in subject_words]
    keys += ["s:" + w[:STEM] + "*" for w in subject_words if len(w) > STEM]
    return list(dict.fromkeys(keys))


def word_groups(subject: str, body: str) -> tuple[dict[Any, None], ...]:
    """The features of ``text_keys`` by kind, each kind's once and in its order, as what
    their names are built from: the words, the longer words' stems, the pairs of stems
    (tuples), the Subject's words, its longer words' stems.  (Kinds never share a name.)
    map/compress over C functions: no Python step per word."""
    words = body[:MODEL_TEXT_LIMIT].split()
    stems = list(map(_STEM_OF, words))
    subject_words = subject.split()
    return (dict.fromkeys(words),
            dict.fromkeys(compress(stems, map(ne, words, stems))),   # longer than STEM
            dict.fromkeys(pairwise(stems)),
            dict.fromkeys(subject_words),
            dict.fromkeys(compress(map(_STEM_OF, subject_words),
                                   map(STEM.__lt__, map(len, subject_words)))))


def text_value(keys: Sequence[str], text_scale: float) -> float:
    """The value every text feature of a message has: ``text_scale / sqrt(count)``."""
    return value_of_count(len(keys), text_scale)


def value_of_count(count: int, text_scale: float) -> float:
    """``text_value`` of a message with ``count`` text features (of ``word_groups``:
    the sum of its groups' lengths)."""
    return text_scale / math.sqrt(count) if count else 0.0


def features(subject: str, body: str, fired: Iterable[str] = (), *,
             known_client: bool = False, text_scale: float = 1.0) -> dict[str, float]:
    """Feature values of one message (``subject`` and ``body`` already ``prepare``d).

    Text features are worth ``text_scale / sqrt(count)`` each; a rule firing, and
    ``k:known-client`` (the sender is in the client directory), 1 each."""
    keys = text_keys(subject, body)
    out = dict.fromkeys(keys, text_value(keys, text_scale))
    for name in fired:
        out["r:" + name] = 1.0
    if known_client:
        out[KNOWN_CLIENT_FEATURE] = 1.0
    return out


class _ByKind:
    """The text weights keyed by what ``text_keys`` builds each feature's name from (a
    word, a stem, a pair of stems): scoring then needs no name per word of the text."""

    __slots__ = ("pairs", "stems", "subject", "subject_stems", "words")

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.words: dict[str, float] = {}                  # u:WORD
        self.stems: dict[str, float] = {}                  # p:STEM
        self.pairs: dict[tuple[str, str], float] = {}      # b:S1 S2
        self.subject: dict[str, float] = {}                # s:WORD
        self.subject_stems: dict[str, float] = {}          # s:STEM*
        for key, weight in weights.items():
            kind, _, name = key.partition(":")
            if kind == "u":
                self.words[name] = weight
            elif kind == "p":
                self.stems[name] = weight
            elif kind == "b":
                first, _, second = name.partition(" ")
                self.pairs[(first, second)] = weight
            elif kind == "s":
                if name.endswith("*"):
                    self.subject_stems[name[:-1]] = weight
                else:
                    self.subject[name] = weight


@dataclass(frozen=True)
class TextModel:
    """A linear model: ``logit = bias + sum(weight[f] * value[f])``."""

    weights: Mapping[str, float]
    bias: float
    text_scale: float = 1.0
    source: str = "<model>"
    card: Mapping[str, object] | None = None
    _by_kind: _ByKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_kind", _ByKind(self.weights))

    @classmethod
    def load(cls, path: str | Path | None = None) -> TextModel:
        """Read a model file (``None``: the shipped ``models/request.json``)."""
        source, text = read_data_file(path, "models/request.json", "model", ModelError)
        return cls.parse(text, source=source)

    @classmethod
    def parse(cls, text: str, *, source: str = "<model>") -> TextModel:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"{source}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(f"{source}: not a helpdesk-milter model of format {FORMAT}")
        weights = data.get("weights")
        bias = data.get("bias")
        if not isinstance(weights, dict) or not isinstance(bias, int | float) \
                or not all(isinstance(k, str) and isinstance(v, int | float)
                           for k, v in weights.items()):
            raise ModelError(f"{source}: expected 'bias' (a number) and 'weights' "
                             "(feature name -> number)")
        scale = data.get("text_scale", 1.0)
        if not isinstance(scale, int | float) or scale <= 0:
            raise ModelError(f"{source}: 'text_scale' must be a positive number")
        card = data.get("card") if isinstance(data.get("card"), dict) else None
        return cls(weights={k: float(v) for k, v in weights.items()}, bias=float(bias),
                   text_scale=float(scale), source=source, card=card)

    def logit(self, values: Mapping[str, float],
              rule_weights: Mapping[str, float] | None = None) -> float:
        """The model's log-odds that the message is a request.

        ``rule_weights`` gives, for each ``r:RULE`` feature, the weight to use when
        the model has none (a site's own rule) or when the site overrode it.
        """
        get = self.weights.get
        total = self.bias
        for key, value in values.items():
            if rule_weights is not None and key in rule_weights:
                total += rule_weights[key] * value
            else:
                weight = get(key)
                if weight is not None:
                    total += weight * value
        return total

    def score_text(self, keys: Sequence[str], value: float, count: int,
                   shown: float = 0.0) -> tuple[float, list[tuple[str, float]]]:
        """The text features' part of the logit (all worth ``value``), and the
        ``count`` strongest of them (of those contributing at least ``shown``) with
        their contributions: the hot path of
        ``Classifier.score``, equal to ``logit``/``explain`` on the same features."""
        # map(), compress() and sort keys that are C functions: no Python frame per
        # feature.  Only the features that could be shown (contribution at least
        # ``shown``) are sorted; in a long text they are a few out of hundreds.
        weights = list(map(self.weights.get, keys, repeat(0.0, len(keys))))
        magnitudes = list(map(abs, weights))
        cut = shown / value if value else 0.0
        candidates = list(compress(range(len(keys)), map(cut.__le__, magnitudes)))
        top = sorted(candidates, key=magnitudes.__getitem__, reverse=True)[:count]
        return value * math.fsum(weights), [(keys[i], weights[i] * value) for i in top
                                            if weights[i]]

    def score_words(self, subject: str, body: str, count: int,
                    shown: float = 0.0) -> tuple[float, list[tuple[str, float]]]:
        """``score_text(keys, text_value(keys, text_scale), count, shown)`` with ``keys =
        text_keys(subject, body)``, the same floats and features in the same order,
        without building a name per feature: each kind's words, stems or pairs are
        looked up as they are (``_ByKind``), and only the strongest get their name."""
        return self.score_groups(word_groups(subject, body), count, shown)

    def score_groups(self, groups: tuple[dict[Any, None], ...], count: int,
                     shown: float = 0.0) -> tuple[float, list[tuple[str, float]]]:
        """``score_words`` of the groups ``word_groups`` gave."""
        by_kind = self._by_kind
        ends = list(accumulate(map(len, groups)))
        if not ends[-1]:
            return 0.0, []
        value = value_of_count(ends[-1], self.text_scale)
        weights = [*map(by_kind.words.get, groups[0], repeat(0.0)),
                   *map(by_kind.stems.get, groups[1], repeat(0.0)),
                   *map(by_kind.pairs.get, groups[2], repeat(0.0)),
                   *map(by_kind.subject.get, groups[3], repeat(0.0)),
                   *map(by_kind.subject_stems.get, groups[4], repeat(0.0))]
        cut = shown / value
        candidates = list(compress(range(len(weights)), map(cut.__le__, map(abs, weights))))
        top = sorted(candidates, key=lambda i: abs(weights[i]), reverse=True)[:count]
        strongest: list[tuple[str, float]] = []
        listed: dict[int, list[Any]] = {}
        for i in top:
            weight = weights[i]
            if not weight:
                continue
            kind = 0
            while i >= ends[kind]:
                kind += 1
            names = listed.get(kind)
            if names is None:
                names = listed[kind] = list(groups[kind])
            name = names[i - ends[kind - 1] if kind else i]
            if kind == 0:
                key = "u:" + name
            elif kind == 1:
                key = "p:" + name
            elif kind == 2:
                key = "b:" + name[0] + " " + name[1]
            elif kind == 3:
                key = "s:" + name
            else:
                key = "s:" + name + "*"
            strongest.append((key, weight * value))
        return value * math.fsum(weights), strongest

    def explain(self, values: Mapping[str, float],
                rule_weights: Mapping[str, float] | None = None) -> list[tuple[str, float]]:
        """Every feature's contribution to the logit, strongest first."""
        out = []
        for key, value in values.items():
            if rule_weights is not None and key in rule_weights:
                weight: float | None = rule_weights[key]
            else:
                weight = self.weights.get(key)
            if weight:
                out.append((key, weight * value))
        out.sort(key=lambda item: -abs(item[1]))
        return out


def feature_label(key: str) -> str:
    """A feature as it can appear in a header's ``rules=`` list: ``text:WORD``,
    ``stem:STEM``, ``pair:S1-S2``, ``subject:WORD``; rules by their own name."""
    kind, _, name = key.partition(":")
    name = name.replace(" ", "-").replace(",", "").replace(";", "")
    return {"u": "text:", "p": "stem:", "b": "pair:", "s": "subject:", "r": "",
            "k": ""}.get(
        kind, kind + ":") + name


def load_model(setting: str) -> TextModel | None:
    """The model a ``classifier.model`` setting names: ``shipped``, ``none`` or a path."""
    if setting == "none":
        return None
    return TextModel.load(None if setting in ("", "shipped") else setting)
