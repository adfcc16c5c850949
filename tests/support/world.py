"""The example world of the SPEC, as the test layers use it.

``example_sections()`` turns ``config/helpdesk-milter.toml`` (the documented example)
into the ``sections`` a ``MilterLauncher`` writes into a test config, so that the
end-to-end tests run the very configuration an admin starts from.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "config" / "helpdesk-milter.toml"

CLIENT = "secretariat@mairie-exemple.fr"
CLIENT_ASSISTANCE = "mairie-exemple@assistance.example.org"
FALLBACK = "accueil@assistance.example.org"


def example_sections(**overrides: dict[str, Any]) -> dict[str, Any]:
    """The example config minus its [milter] socket/database (the harness sets those)."""
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    milter = data.pop("milter")
    for key in ("socket", "socket_mode", "database"):
        milter.pop(key, None)
    data["milter"] = milter
    data["directory"]["csv"] = [str(EXAMPLE_CONFIG.parent / p) for p in data["directory"]["csv"]]
    data.get("classifier", {}).pop("weights", None)
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            merged = copy.deepcopy(data[name])
            merged.update(value)
            data[name] = merged
        else:
            data[name] = value
    return data
