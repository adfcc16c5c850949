"""Secret redaction on the blind tuning sets (tests/blind/secrets-tune-*).

The sets were written by people who never saw the detectors (see
tests/blind/briefs/secrets-world.md); scoring is in :mod:`support.blind_secrets`.  The
bars are what the detectors reach today, rounded down, so that a change that loses
recall or damages a decoy fails here.  The held-out set is not asserted here: it is
measured by the lead, never tuned on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.blind_secrets import ROOT, measure_secrets

TUNE = ROOT / "tests" / "blind"
# recall reached on each tuning set (rounded down); no decoy may be damaged
BARS = {"secrets-tune-a": 0.98, "secrets-tune-b": 1.0, "secrets-tune-c": 0.97,
        "secrets-tune-d": 0.96, "secrets-tune-e": 0.98, "secrets-tune-f": 0.98,
        "secrets-tune-g": 0.95, "secrets-tune-h": 0.95, "secrets-tune-i": 0.96}
# decoys still damaged on a set (a ceiling, to be kept at 0).  Both are provider key
# *identifiers* that their writers call decoys while other writers call the same kind a
# secret (secrets-tune-i labels an AWS_ACCESS_KEY_ID value a secret): h's
# "AWS_ACCESS_KEY_ID=AKIA..." (the aws-access-key detector, kept on purpose) and i's OVH
# "Application Key : ..." beside its application secret and consumer key.
DAMAGED: dict[str, int] = {"secrets-tune-h": 1, "secrets-tune-i": 1}


@pytest.mark.parametrize("name", sorted(BARS))
def test_tuning_set(name: str) -> None:
    folder: Path = TUNE / name
    assert (folder / "snippets.toml").is_file(), f"{name} is missing"
    figures = measure_secrets(folder)
    details = "\n".join([figures.row(), *figures.misses, *figures.damage])
    assert figures.recall >= BARS[name], details
    assert figures.damaged <= DAMAGED.get(name, 0), details


def test_held_out_set_does_not_fall() -> None:
    """The frozen held-out set (never read by whoever changes a detector): its figures
    are reported, and may not fall below what they were when last measured (recall
    0.957, 2 decoys damaged).  The issue's bar is recall 0.97 with no decoy damaged;
    only the aggregate is shown here, never which secret or decoy."""
    figures = measure_secrets(TUNE / "secrets-heldout")
    print(f"\nsecrets held-out: recall {figures.recall:.3f}, {figures.damaged} damaged")
    assert figures.recall >= 0.955 and figures.damaged <= 2, (
        f"held-out recall {figures.recall:.3f}, {figures.damaged} decoys damaged")
