"""The command line: check-config, try, report, --help (kept in sync with the README)."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpdesk_milter.cli import build_parser, main
from support.mail import as_bytes, make_message
from support.world import CLIENT_ASSISTANCE, EXAMPLE_CONFIG

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = make_message(
    to="contact@example.org", subject="Site internet inaccessible",
    body="Bonjour,\n\nNotre site internet affiche une erreur 500 depuis ce matin, "
         "impossible d'accéder à la page d'accueil. Pouvez-vous regarder ?\n\nMerci\n")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "helpdesk_milter", *args],
                          capture_output=True, text=True, timeout=60)


def test_check_config_ok_explains_the_config():
    out = run("check-config", "--config", str(EXAMPLE_CONFIG))
    assert out.returncode == 0, out.stderr
    assert f"{EXAMPLE_CONFIG}: OK" in out.stdout
    assert "watch         contact: redirect: contact@example.org, commercial@example.org" \
        in out.stdout
    assert "clients       11 entries" in out.stdout


def test_check_config_lists_every_problem_and_exits_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[milter]\non_eror = "accept"\n[[watch]]\nname = "t"\n'
                   'addresses = ["contact@example.org"]\nmode = "forward"\n')
    out = run("check-config", "--config", str(bad))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "helpdesk-milter: the configuration has 2 problems:",
        f"  {bad}:2: milter.on_eror: unknown key (did you mean 'on_error'?)",
        f"  {bad}:6: watch[0].mode: 'forward' is not one of: tag, copy, redirect",
    ]
    assert "Traceback" not in out.stderr


def test_check_config_unknown_rule_weight(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[classifier.weights]\n"no-such-rule" = 1.0\n')
    out = run("check-config", "--config", str(bad))
    assert out.returncode == 1
    assert "no-such-rule" in out.stderr and "Traceback" not in out.stderr


def test_check_config_missing_file(tmp_path):
    out = run("check-config", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 1
    assert "cannot read the config file" in out.stderr


def test_try_prints_the_decision_and_writes_the_message(tmp_path):
    eml = tmp_path / "request.eml"
    eml.write_bytes(as_bytes(SUPPORT))
    output = tmp_path / "out.eml"
    out = run("try", "--config", str(EXAMPLE_CONFIG), "--rcpt", "contact@example.org",
              "--output", str(output), str(eml))
    assert out.returncode == 0, out.stderr
    assert "verdict     support" in out.stdout
    assert "structure   mairie-exemple" in out.stdout
    assert f"  + rcpt    {CLIENT_ASSISTANCE}" in out.stdout
    assert "  - rcpt    contact@example.org" in out.stdout
    rewritten = email.message_from_bytes(output.read_bytes(), policy=email.policy.default)
    assert rewritten["X-Helpdesk-Routed"] == f"to={CLIENT_ASSISTANCE}; mode=redirect"
    assert rewritten["Subject"] == "Site internet inaccessible"
    assert rewritten.get_content().replace("\r\n", "\n") == SUPPORT.get_content()


def test_try_json_and_forged_header(tmp_path):
    msg = make_message(to="alice@example.org",
                       headers={"X-Helpdesk-Routed": "to=pirate@evil.example; mode=copy"})
    eml = tmp_path / "m.eml"
    eml.write_bytes(as_bytes(msg))
    out = run("try", "--config", str(EXAMPLE_CONFIG), "--rcpt", "alice@example.org",
              "--json", str(eml))
    data = json.loads(out.stdout)
    assert data["remove_headers"] == [["X-Helpdesk-Routed", 1]]
    assert data["action"] == "copy" and data["add_rcpts"] == [CLIENT_ASSISTANCE]


def test_try_bounce_with_empty_sender(tmp_path):
    eml = tmp_path / "m.eml"
    eml.write_bytes(as_bytes(SUPPORT))
    out = run("try", "--config", str(EXAMPLE_CONFIG), "--from", "", "--rcpt",
              "contact@example.org", "--json", str(eml))
    assert json.loads(out.stdout)["skip_reason"] == "bounce"


def test_try_unreadable_message_is_a_clear_error(tmp_path):
    out = run("try", "--config", str(EXAMPLE_CONFIG), "--rcpt", "a@example.org",
              str(tmp_path / "missing.eml"))
    assert out.returncode == 1
    assert "cannot read" in out.stderr and "Traceback" not in out.stderr


def test_report_without_a_database_is_a_clear_error(tmp_path):
    out = run("report", "--database", str(tmp_path / "none.db"))
    assert out.returncode == 1
    assert "no state database" in out.stderr


def test_report_tables(tmp_path, capsys):
    from helpdesk_milter.store import SQLiteStore
    from test_store import record

    store = SQLiteStore(tmp_path / "s.db")
    store.record(record())
    store.close()
    assert main(["report", "--database", str(tmp_path / "s.db")]) == 0
    text = capsys.readouterr().out
    assert "1 inspected message(s) in the last 7d" in text
    assert "secretariat@mairie-exemple.fr  mairie-exemple  1" in text


@pytest.mark.parametrize("command", ["run", "check-config", "try", "report"])
def test_every_command_is_in_the_readme_and_help(command):
    readme = (ROOT / "README.md").read_text()
    assert f"helpdesk-milter {command} " in readme
    parser = build_parser()
    assert command in parser.format_help()


def test_readme_command_synopses_match_the_options():
    """Every option of every sub-command appears in the README's synopsis of it."""
    readme = (ROOT / "README.md").read_text().split("## Commands", 1)[1]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, subparser in sub.choices.items():
        synopsis = next(line for line in readme.splitlines()
                        if line.startswith(f"helpdesk-milter {name} "))
        for action in subparser._actions:
            if action.option_strings and action.dest != "help":
                assert action.option_strings[0] in synopsis, (name, action.option_strings)


def test_run_refuses_a_world_writable_config(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[milter]\nsocket = "unix:{tmp_path}/s/milter.sock"\n'
                      f'database = "{tmp_path}/state.db"\n')
    config.chmod(0o666)
    out = run("run", "--config", str(config))
    assert out.returncode == 1
    assert f"refusing to start: {config} is world-writable (mode 0666)" in out.stderr
    assert not (tmp_path / "state.db").exists()


def test_run_refuses_a_world_writable_socket_directory(tmp_path):
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    sockets.chmod(0o777)
    config = tmp_path / "config.toml"
    config.write_text(f'[milter]\nsocket = "unix:{sockets}/milter.sock"\n'
                      f'database = "{tmp_path}/state.db"\n')
    out = run("run", "--config", str(config))
    assert out.returncode == 1
    assert f"{sockets} is world-writable (mode 0777)" in out.stderr
    check = run("check-config", "--config", str(config))
    assert check.returncode == 1 and "the milter refuses to start" in check.stderr


def test_try_explain_shows_the_features_for_and_against(capsys):
    code = main(["try", "--config", str(EXAMPLE_CONFIG), "--rcpt", "alice@example.org", "--explain",
                 str(ROOT / "tests" / "corpus" / "messages" / "030-vpn-poste-accueil.eml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "explain     score" in out and "for a request:" in out and "against:" in out
    assert "(rule)" in out and "(model)" in out
