"""The learned request model: features, the file format, inference, how it combines
with the rules, and that the shipped weights are what ``make train`` produces."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpdesk_milter.classify import (
    SCORE_OFFSET,
    Classifier,
    Rule,
    RuleSet,
    message_features,
    prepare,
)
from helpdesk_milter.config import ConfigError, parse_config
from helpdesk_milter.model import (
    KNOWN_CLIENT_FEATURE,
    ModelError,
    TextModel,
    feature_label,
    features,
    load_model,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = RuleSet(rules=(
    Rule(name="printer", weight=3.0, where="any",
         patterns=(re.compile(r"imprimante", re.I),)),
))


def test_features_are_words_stems_pairs_subject_rules_and_client():
    values = features("imprimante hs", "l'imprimante ne fonctionne plus", ("printer",),
                      known_client=True)
    text = {k for k in values if k[0] in "upbs"}
    assert text == {
        "u:l'imprimante", "p:l'imp", "u:ne", "b:l'imp ne", "u:fonctionne", "p:fonct",
        "b:ne fonct", "u:plus", "b:fonct plus", "s:imprimante", "s:impri*", "s:hs"}
    scale = 1 / math.sqrt(len(text))
    assert all(values[k] == pytest.approx(scale) for k in text)
    assert values["r:printer"] == 1.0 and values[KNOWN_CLIENT_FEATURE] == 1.0


def test_text_scale_and_length_normalisation():
    short = features("", "panne serveur")
    scaled = features("", "panne serveur", text_scale=4.0)
    assert scaled["u:panne"] == pytest.approx(4 * short["u:panne"])
    long = features("", "panne " + " ".join(f"mot{i}" for i in range(100)))
    assert long["u:panne"] < short["u:panne"]


def test_only_the_start_of_a_long_text_is_read():
    body = "a " * 10_000 + "imprimante"
    assert "u:imprimante" not in features("", body)


def test_message_features_read_own_text_not_the_quote():
    text = ("Merci, tout va bien.\n\nLe lun. 3 mars 2025 à 10:12, Alice <a@example.org> "
            "a écrit :\n> l'imprimante ne fonctionne plus\n")
    values, fired = message_features("Re: point", text, RULES)
    assert fired == () and "u:ne" not in values
    assert "u:merci" in values


def _model(weights, bias=0.0, scale=1.0):
    return TextModel(weights=weights, bias=bias, text_scale=scale)


def test_logit_is_the_bias_plus_the_explained_contributions():
    model = _model({"u:panne": 2.0, "u:merci": -1.0, "r:printer": 1.5}, bias=-0.5)
    values = features("", "merci panne imprimante", ("printer",))
    parts = model.explain(values)
    assert model.logit(values) == pytest.approx(model.bias + sum(c for _, c in parts))
    assert parts[0][0] == "r:printer"   # strongest first


def test_score_is_log_odds_plus_offset_and_names_strongest_words():
    model = _model({"u:panne": 10.0, "u:merci": -2.0}, bias=-1.0)
    classifier = Classifier(RuleSet(rules=()), model)
    got = classifier.score("", "panne merci", known_client=False)
    values = features("", prepare("panne merci"))
    assert got.score == pytest.approx(SCORE_OFFSET + model.logit(values), abs=1e-3)
    assert got.rules[:2] == ("text:panne", "text:merci")


def test_rules_count_their_learned_weight_unless_the_site_overrides_them():
    model = _model({"r:printer": 0.5})
    plain = Classifier(RULES, model).score("", "imprimante", known_client=False)
    assert plain.score == pytest.approx(SCORE_OFFSET + 0.5)
    overridden = RuleSet(rules=(Rule(name="printer", weight=4.0, where="any",
                                     patterns=RULES.rules[0].patterns),))
    site = Classifier(overridden, model, overridden=frozenset({"printer"}))
    assert site.score("", "imprimante", known_client=False).score == \
        pytest.approx(SCORE_OFFSET + 4.0)
    # a rule the model never saw counts the weight written in the rules file
    unseen = Classifier(RULES, _model({}))
    assert unseen.score("", "imprimante", known_client=False).score == \
        pytest.approx(SCORE_OFFSET + 3.0)


def test_without_a_model_the_score_is_the_sum_of_rule_weights():
    got = Classifier(RULES, None).score("", "imprimante", known_client=True,
                                        known_client_weight=2.0)
    assert got.score == 5.0 and got.rules == ("printer", "known-client")


def test_known_client_is_learned_and_the_setting_adds_to_it():
    model = _model({KNOWN_CLIENT_FEATURE: 1.25})
    classifier = Classifier(RuleSet(rules=()), model)
    assert classifier.score("", "x", known_client=True).score == \
        pytest.approx(SCORE_OFFSET + 1.25)
    assert classifier.score("", "x", known_client=True, known_client_weight=1.0).score == \
        pytest.approx(SCORE_OFFSET + 2.25)
    assert classifier.score("", "x", known_client=True).rules == ("known-client",)


@pytest.mark.parametrize("text, problem", [
    ("{", "not valid JSON"),
    ('{"format": 99}', "not a helpdesk-milter model"),
    ('{"format": 1, "bias": "x", "weights": {}}', "expected 'bias'"),
    ('{"format": 1, "bias": 0, "weights": {"u:a": "heavy"}}', "expected 'bias'"),
    ('{"format": 1, "bias": 0, "weights": {}, "text_scale": -1}', "text_scale"),
])
def test_broken_model_files_are_explained(text, problem):
    with pytest.raises(ModelError, match=re.escape(problem)) as info:
        TextModel.parse(text, source="site.json")
    assert str(info.value).startswith("site.json: ")


def test_model_setting_shipped_none_or_a_file(tmp_path):
    assert load_model("none") is None
    assert len(load_model("shipped").weights) > 1000
    own = tmp_path / "model.json"
    own.write_text(json.dumps({"format": 1, "bias": 0.5, "weights": {"u:a": 1}}))
    assert load_model(str(own)).bias == 0.5
    config = parse_config(f'[classifier]\nmodel = "{own}"\n')
    assert config.classifier.model == str(own)
    with pytest.raises(ConfigError, match=r"classifier\.model"):
        parse_config('[classifier]\nmodel = "nowhere.json"\n')


def test_feature_labels_fit_in_a_header():
    assert feature_label("u:l'imprimante") == "text:l'imprimante"
    assert feature_label("b:ne march") == "pair:ne-march"
    assert feature_label("s:impri*") == "subject:impri*"
    assert feature_label("r:problem-fr") == "problem-fr"


def test_the_shipped_model_is_what_make_train_produces():
    """Like the README-sync test: the weights in the package are rebuilt from the
    labelled sets by scripts/train-model.py (fixed seed), never edited by hand."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train-model.py"),
                             "--check"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout


def test_training_refuses_a_held_out_set(tmp_path):
    held = tmp_path / "requests-heldout-z"
    (held / "messages").mkdir(parents=True)
    (held / "manifest.toml").write_text("")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train-model.py"),
                             "--check", "--set", str(held)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0 and "held-out set never trains" in result.stderr


def test_model_card_sits_beside_the_weights():
    card = (ROOT / "milter" / "helpdesk_milter" / "models" / "request.md").read_text()
    data = json.loads((ROOT / "milter" / "helpdesk_milter" / "models" / "request.json")
                      .read_text())
    assert f"{len(data['weights'])} non-zero weights" in card
    for line in data["card"]["trained_on"]:
        assert line in card


def test_the_fast_path_scores_as_the_plain_model_does():
    """``Classifier.score`` adds the text weights in one pass; it must agree with
    ``features`` + ``TextModel.logit`` (the training-time definition) everywhere."""
    from helpdesk_milter.message import ParsedMessage
    rules = RuleSet.load()
    model = load_model("shipped")
    classifier = Classifier(rules, model)
    for path in [*sorted((ROOT / "tests" / "corpus" / "messages").glob("*.eml")),
                 *sorted((ROOT / "tests" / "blind").glob("requests-*/**/*.eml"))]:
        msg = ParsedMessage(path.read_bytes())
        for known in (False, True):
            got = classifier.score(msg.subject, msg.text, known_client=known)
            values, _ = message_features(msg.subject, msg.text, rules, known_client=known,
                                         text_scale=model.text_scale)
            assert got.score == pytest.approx(SCORE_OFFSET + model.logit(values), abs=2e-3)


def _texts():
    """(Subject, text) of the corpus's messages, and a few edge cases."""
    from helpdesk_milter.message import ParsedMessage
    out = [("", ""), ("Panne", ""), ("", "un mot"), ("Re: TR: ***", "a b a b a b"),
           ("ordinateurs bloqués", "l'imprimante ne marche plus " * 400)]
    for path in [*sorted((ROOT / "tests" / "corpus" / "messages").glob("*.eml")),
                 *sorted((ROOT / "tests" / "blind").glob("requests-*/**/*.eml"))]:
        msg = ParsedMessage(path.read_bytes())
        out.append((msg.subject, msg.text))
    return out


@pytest.mark.parametrize("count,shown", [(12, 0.3), (4, 0.0), (10_000, 0.0), (3, 5.0)])
def test_scoring_without_feature_names_is_scoring_with_them(count, shown):
    """``score_words`` (the classifier's hot path) gives exactly what ``score_text`` on
    ``text_keys`` gives: the same sum to the last bit, the same features in order."""
    from helpdesk_milter.classify import prepared_texts
    from helpdesk_milter.model import text_keys, text_value
    model = load_model("shipped")
    assert model is not None
    for subject, text in _texts():
        prepared = prepared_texts(subject, text)
        keys = text_keys(*prepared)
        expected = model.score_text(keys, text_value(keys, model.text_scale), count,
                                    shown=shown)
        assert model.score_words(*prepared, count, shown=shown) == expected
    # a model with every kind of feature, and weights that tie
    tied = _model({"u:panne": 1.0, "p:ordin": 1.0, "b:ne march": -1.0, "s:panne": 1.0,
                   "s:ordin*": 1.0, "u:ne": 0.0, "r:x": 3.0})
    for subject, text in [("Panne ordinateurs", "panne: ne marche plus, ordinateurs")]:
        prepared = prepared_texts(subject, text)
        keys = text_keys(*prepared)
        assert tied.score_words(*prepared, count, shown=shown) == tied.score_text(
            keys, text_value(keys, 1.0), count, shown=shown)
