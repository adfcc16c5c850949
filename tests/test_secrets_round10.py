"""Mechanisms generalised in the tenth round of issue 12 (the secrets-tune-v and -w
sets): each case is invented here, not a labelled set's sentence, with the look-alike
that must stay.

- a Wi-Fi label that says which network ("Wi-Fi accueil : NAME, clé : X"): the name
  between it and the key's label is the network's, not the key;
"""

from __future__ import annotations

import pytest

from support.secret_text import check


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # a qualified Wi-Fi label, the network's name, then the key's own label
    ("Wi-Fi invités : Mediatheque-Hall, clé WPA : lilas-Perche-77\nMerci\n",
     ["lilas-Perche-77"], ["Mediatheque-Hall"]),
    ("WLAN staff: Annex-Office2 / key: Tq8-rowan-Vessel\n",
     ["Tq8-rowan-Vessel"], ["Annex-Office2"]),
])
def test_round10(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)
