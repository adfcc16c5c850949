"""Configuration: the key table, the example file, and the errors admins see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpdesk_milter.config import (
    KEYS,
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    reference_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "helpdesk-milter.toml"


def problems_of(text: str, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="test.toml", base_dir=tmp_path)
    return info.value.problems


def test_example_config_loads_with_the_spec_world():
    config = load_config(EXAMPLE)
    assert config.milter.socket == "inet:8894@127.0.0.1"
    assert [g.name for g in config.watch] == ["contact", "team"]
    assert config.watch[0].mode == "redirect"
    assert config.clients["mairie-exemple.fr"] == "mairie-exemple"
    # from clients.csv, next to the config file
    assert config.clients["greenhouse.example.com"] == "greenhouse"
    assert config.dedup.window == 72 * 3600
    assert config.milter.max_scan_size == 10 * 1024 * 1024


def test_empty_config_is_all_defaults():
    config = parse_config("")
    assert config.milter.socket == "inet:8894@127.0.0.1"
    assert config.milter.on_error == "accept"
    assert config.watch == ()
    assert config.addresses.fallback == "accueil@assistance.example.org"


def _documented_keys(text: str) -> set[str]:
    """Key paths that appear, active or commented, in a TOML file."""
    found, table = set(), ""
    for line in text.splitlines():
        bare = line.lstrip("# ").rstrip()
        m = re.match(r"^\[\[?([\w.]+)\]\]?$", bare)
        if m:
            table = m.group(1)
            continue
        m = re.match(r'^"?([\w.-]+)"?\s*=', bare)
        if m and table:
            found.add(f"{table}.{m.group(1)}")
    return found


def test_every_key_is_documented_in_the_example_config():
    text = EXAMPLE.read_text()
    documented = _documented_keys(text)
    for key in KEYS:
        path = key.path.replace("[]", "")
        if path.endswith(".*"):
            table = path[:-2]
            assert f"[{table}]" in text, f"{key.path}: no [{table}] table in the example"
            continue
        assert path in documented, f"{key.path} is not documented in {EXAMPLE.name}"


def test_readme_reference_is_generated_from_the_key_table():
    readme = (ROOT / "README.md").read_text()
    assert reference_markdown() in readme, (
        "README's configuration reference is stale: run scripts/update-readme.py")
    for key in KEYS:
        assert f"`{key.path}`" in readme, f"{key.path} missing from README's reference"


def test_unknown_keys_are_errors_with_line_and_suggestion():
    problems = problems_of("[milter]\nsocket = \"inet:1@127.0.0.1\"\non_eror = \"accept\"\n")
    assert problems == ["test.toml:3: milter.on_eror: unknown key (did you mean 'on_error'?)"]


def test_unknown_table_is_an_error():
    problems = problems_of("[milterr]\nsocket = 1\n")
    assert any(p.startswith("test.toml:1: milterr: unknown table") for p in problems)


def test_wrong_types_name_the_key_and_line():
    text = "[milter]\ntimeout = \"soon\"\n[classifier]\nthreshold = \"high\"\n"
    problems = problems_of(text)
    assert "test.toml:2: milter.timeout: expected an integer, got str 'soon'" in problems
    assert any(p.startswith("test.toml:4: classifier.threshold: expected a number")
               for p in problems)


def test_all_problems_are_reported_together():
    text = """
[milter]
socket = "inet:127.0.0.1:8894"
on_error = "ignore"

[[watch]]
name = "a"
addresses = ["contact@example.org"]
mode = "forward"

[[watch]]
name = "b"
mode = "copy"
"""
    problems = problems_of(text)
    assert len(problems) == 4
    assert problems[0].startswith("test.toml:3: milter.socket:")
    assert "inet:PORT@HOST" in problems[0]
    assert problems[1].startswith("test.toml:4: milter.on_error:")
    assert problems[2] == "test.toml:9: watch[0].mode: 'forward' is not one of: tag, copy, redirect"
    assert problems[3] == "test.toml:11: watch[1].addresses: missing (required)"


def test_invalid_toml_says_where():
    with pytest.raises(ConfigError) as info:
        parse_config("[milter\nsocket=1", source="x.toml")
    assert "x.toml: not valid TOML" in str(info.value)
    assert "line 1" in str(info.value)


@pytest.mark.parametrize("value, message", [
    ('"{structure}@assistance"', "not an email address"),
    ('"support@assistance.example.org"', "must be an address containing {structure}"),
    ('"help@{structure}.example.org"', "must be in the local part"),
])
def test_assistance_template_is_checked(value, message):
    key = "fallback" if "not an email" in message else "assistance"
    problems = problems_of(f"[addresses]\n{key} = {value}\n")
    assert message in problems[0]
    assert problems[0].startswith(f"test.toml:2: addresses.{key}:")


def test_world_writable_socket_mode_is_refused():
    problems = problems_of('[milter]\nsocket_mode = "0666"\n')
    assert "world-writable" in problems[0]


def test_bad_ticket_pattern_is_refused():
    problems = problems_of("[followup]\nticket_pattern = '[unclosed'\n")
    assert problems[0].startswith("test.toml:2: followup.ticket_pattern: not a valid regular")


def test_duplicate_watch_names_and_bad_patterns():
    text = """
[[watch]]
name = "team"
addresses = ["alice"]
[[watch]]
name = "team"
addresses = ["bob@example.org"]
"""
    problems = problems_of(text)
    assert any("watch[0].addresses: 'alice' is not an address" in p for p in problems)
    assert any("test.toml:6: watch[1].name: the name 'team' is used twice" in p
               for p in problems)


def test_client_entries_are_validated():
    problems = problems_of('[clients]\n"mairie.fr" = "la mairie"\n"nodot" = "x"\n')
    assert problems[0].startswith("test.toml:2: clients.mairie.fr:")
    assert problems[1].startswith("test.toml:3: clients.nodot:")


def test_clients_csv_with_header_comments_and_errors(tmp_path):
    (tmp_path / "clients.csv").write_text(
        "domain,structure\n# a comment\nmairie.fr,mairie\nJean@Webmail.example,asso\n"
        "broken line\nbad.fr,has space\n", encoding="utf-8")
    problems = problems_of('[directory]\ncsv = ["clients.csv"]\n', tmp_path)
    assert problems == [
        f"{tmp_path}/clients.csv:5: expected two columns \"domain-or-address,structure\", got 1",
        f"{tmp_path}/clients.csv:6: 'has space' is not a usable structure name (letters, "
        "digits, ., _ and -; it becomes the local part of the assistance address)",
    ]


def test_clients_csv_is_merged_and_config_wins(tmp_path):
    (tmp_path / "c.csv").write_text("mairie.fr,from-csv\nJean@Webmail.example,asso\n")
    config = parse_config('[directory]\ncsv = ["c.csv"]\n[clients]\n"Mairie.FR" = "from-toml"\n',
                          base_dir=tmp_path)
    assert config.clients == {"mairie.fr": "from-toml", "jean@webmail.example": "asso"}


def test_missing_csv_file_is_an_error(tmp_path):
    problems = problems_of('[directory]\ncsv = ["nope.csv"]\n', tmp_path)
    assert "directory.csv" in problems[0] and "No such file" in problems[0]


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert str(info.value) == f"{tmp_path}/absent.toml: cannot read the config file: " \
                              "No such file or directory"


@pytest.mark.parametrize("text, seconds", [
    ("72h", 259200), ("7d", 604800), ("30m", 1800), ("45s", 45), (90, 90), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-1h", "3 days", True])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("text, size", [("10MB", 10485760), ("512KB", 524288), (1000, 1000),
                                        ("1g", 1073741824)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_watch_patterns_are_case_insensitive_globs():
    config = parse_config('[[watch]]\nname = "t"\naddresses = ["*@Example.org", '
                          '"contact@other.fr"]\n')
    group = config.watch[0]
    assert group.matches("Alice@EXAMPLE.ORG")
    assert group.matches("contact@other.fr")
    assert not group.matches("alice@example.org.evil.fr")
    assert not group.matches("alice@sub.example.org")
