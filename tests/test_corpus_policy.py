"""The whole decision on the labelled corpus, with the example configuration.

``test_classify.py`` measures the classifier alone; this runs every corpus
message through ``Policy.decide`` with its SMTP envelope, so the skip rules
(internal, bulk, auto-replies, bounces) and follow-up detection count too.
A message labelled ``support`` or ``followup`` must be routed to assistance
(copy or redirect, since it is sent to watched addresses); any other message
must not be.  Precision and recall of "routed" are printed and held to the
issue's bar (precision >= 0.97, recall >= 0.95).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from helpdesk_milter.config import load_config
from helpdesk_milter.message import Envelope, ParsedMessage
from helpdesk_milter.policy import Policy
from support.world import EXAMPLE_CONFIG

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = tomllib.loads((CORPUS / "manifest.toml").read_text())["message"]
POLICY = Policy(load_config(EXAMPLE_CONFIG))


def decide(entry):
    raw = (CORPUS / "messages" / entry["file"]).read_bytes()
    env = Envelope(mail_from=entry["mail_from"], rcpts=tuple(entry["rcpts"]))
    return POLICY.decide(env, ParsedMessage(raw))


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_corpus_message(entry):
    d = decide(entry)
    routed = d.action in ("copy", "redirect")
    if entry["label"] in ("support", "followup"):
        assert d.verdict == entry["label"], d
        assert routed, d
        assert d.add_rcpts, d
    else:
        assert not routed and not d.add_rcpts and not d.del_rcpts, d
    if entry["category"] in ("internal", "bulk", "autoreply", "bounce"):
        assert d.action == "skip", d


def test_precision_and_recall_of_routing(capsys):
    tp = fp = fn = tn = 0
    for entry in MANIFEST:
        routed = decide(entry).action in ("copy", "redirect")
        wanted = entry["label"] in ("support", "followup")
        tp += routed and wanted
        fp += routed and not wanted
        fn += wanted and not routed
        tn += not routed and not wanted
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    with capsys.disabled():
        print(f"\ncorpus routing: {len(MANIFEST)} messages, tp={tp} fp={fp} fn={fn} tn={tn}, "
              f"precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.97 and recall >= 0.95
