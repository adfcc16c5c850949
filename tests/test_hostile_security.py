"""Security checks: secrets never leak, the milter refuses unsafe files, the unit is hardened.

- The whole labelled secrets corpus (``tests/secrets_corpus``: 173 snippets as message
  bodies, half of them in the Subject too, and the 26 whole messages) goes through the
  real Postfix with helpdesk-milter. Afterwards no secret value appears in the milter's
  log, the Postfix log, any table of the state database, or any header we add; and
  every secret the pure core removes (same engine, same config, in-process) is also gone
  from what was delivered. Forged ``X-Helpdesk-*`` and ``Authentication-Results``
  headers are covered by ``test_hostile_e2e.py`` (``forged-headers``) and the routing
  and secrets e2e tests.
- An internal error on secret-bearing mail (the body spool directory vanishes) logs the
  exception type and place, never its text or the content.
- ``run`` refuses to start when files that steer it are world-writable (the config and
  the socket directory are covered in ``test_cli.py``): a client CSV, and the state
  database or its directory -- whoever can replace the database can forge earlier
  copies, and with ``dedup.action = "drop"`` make the milter remove recipients.
- ``systemd-analyze security`` rates the shipped unit "OK" or better.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpdesk_milter.config import load_config
from helpdesk_milter.engine import Engine, rewrite_raw
from helpdesk_milter.message import Envelope
from helpdesk_milter.store import NullStore
from support.hostile import secret_visible
from support.load import Outgoing, account, index_deliveries, send_many
from support.net import wait_until
from support.world import CLIENT, example_sections

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "secrets_corpus"


def _sender_part(raw: bytes) -> bytes:
    """The delivered message without the trace headers the MTAs added on the way."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if not line[:1].isspace():      # a new field (else: a folded continuation)
            dropping = bool(re.match(
                rb"(?i)(received|return-path|x-original-to|delivered-to):", line))
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


def fragments(value: str) -> list[str]:
    """What to look for: the value, or each long-enough line of a multi-line value."""
    lines = [line.strip() for line in value.splitlines() if len(line.strip()) >= 8]
    return [value] if len(lines) <= 1 else [ln for ln in lines if "-----" not in ln]


def corpus() -> list[tuple[Outgoing, list[str], bool]]:
    """(message, secret values, is_bounce) for every snippet and corpus message."""
    out: list[tuple[Outgoing, list[str], bool]] = []
    snippets = tomllib.loads((CORPUS / "snippets.toml").read_text())["snippet"]
    for n, snip in enumerate(snippets):
        values = [s["value"] for s in snip.get("secrets", [])]
        subject = f"Demande {snip['id']}"
        if n % 2 and values and "\n" not in snip["text"].strip():
            subject += " : " + snip["text"].strip()[:200]      # the secret in the Subject
        mid = f"corpus-snippet-{n}@mairie-exemple.fr"
        rcpt = "contact@example.org" if n % 3 else "quelquun@ailleurs.example"
        raw = (f"From: {CLIENT}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{mid}>\r\nDate: Tue, 03 Nov 2026 09:30:00 +0100\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n"
               + snip["text"].strip().replace("\n", "\r\n") + "\r\n").encode()
        out.append((Outgoing(CLIENT, (rcpt,), raw, mid), values, False))
    manifest = tomllib.loads((CORPUS / "messages" / "manifest.toml").read_text())["message"]
    for n, entry in enumerate(manifest):
        raw = re.sub(rb"\r?\n", b"\r\n", (CORPUS / "messages" / entry["file"]).read_bytes())
        mid = f"corpus-message-{n}@mairie-exemple.fr"
        raw = re.sub(rb"(?im)^Message-ID:[^\r\n]*", f"Message-ID: <{mid}>".encode(), raw,
                     count=1)
        bounce = bool(entry.get("bounce"))
        values = [s["value"] for s in entry.get("secrets", [])]
        values += [k for k in entry.get("keep", []) if bounce and "2024" in k]
        out.append((Outgoing("" if bounce else CLIENT, ("alice@example.org",), raw, mid),
                    values, bounce))
    return out


def core_removes(engine: Engine, msg: Outgoing, value: str) -> bool:
    """Whether the pure core, given this message, leaves no trace of ``value``."""
    d = engine.process_raw(Envelope(mail_from=msg.mail_from, rcpts=msg.rcpts,
                                    queue_id="CORE"), msg.raw).decision
    out = rewrite_raw(msg.raw, d)
    return all(secret_visible(out, f) is None for f in fragments(value))


def test_secrets_corpus_through_postfix_leaves_no_trace(lab, sink, milters):
    milter = milters.helpdesk(example_sections())
    postfix_offset = lab.log_offset()
    cases = corpus()
    messages = [m for m, _, _ in cases]
    report = send_many(lab.smtp_port, messages, connections=6, deadline=120)
    lab.wait_queue_empty(60)
    counts = account(messages, report, index_deliveries(sink.deliveries))
    assert counts["in"] == counts["out"] == len(messages) and not counts["lost"], counts

    database = milter.argv[milter.argv.index("--config") + 1].replace(".toml", ".db")
    wait_until(lambda: _rows(database) >= len(messages) // 2, 15, "decision rows")
    dump = _stored_values(database)
    logs = milter.log_text() + lab.log_text(postfix_offset)

    engine = Engine(load_config(ROOT / "config" / "helpdesk-milter.toml"), store=NullStore(),
                    dnsfunc=lambda name, timeout=5: None)
    delivered = {d.message_id: d for d in sink.deliveries}
    leaks: list[str] = []
    removed = total = 0
    for msg, values, bounce in cases:
        got = delivered[msg.message_id]
        head = got.raw.partition(b"\r\n\r\n")[0].decode("utf-8", "replace")
        ours = "\n".join(line for line in head.split("\r\n")
                         if re.match(r"(?i)(x-helpdesk-|authentication-results|arc-)", line))
        for value in values:
            total += 1
            for frag in fragments(value):
                if len(frag) < 6:
                    continue        # a 4-digit PIN matches timestamps and hashes by chance
                for where, text in (("milter log", milter.log_text()),
                                    ("postfix log", logs), ("database", dump),
                                    ("our headers", ours)):
                    if frag in text:
                        leaks.append(f"{msg.message_id}: a secret in the {where}")
            if bounce:
                continue                # a bounce's original is delivered untouched
            if core_removes(engine, msg, value):
                # a short value ("0000") matches the "+0000" of the headers Postfix
                # adds: look for it in what the sender wrote (Subject and body) only
                seen = got.raw if len(value) >= 6 else _sender_part(got.raw)
                where = next((w for f in fragments(value)
                              if (w := secret_visible(seen, f))), None)
                if where:
                    leaks.append(f"{msg.message_id}: removed in-process but delivered "
                                 f"in {where}")
                else:
                    removed += 1
    print(f"\nsecrets corpus through Postfix: {len(messages)} messages, {total} labelled "
          f"secrets, {removed} removed from what was delivered, {len(leaks)} leaks")
    assert not leaks, "\n".join(leaks[:20])


def _stored_values(database: str) -> str:
    """Every value the database holds where a secret could be: text as text, blobs as
    their bytes, integers in decimal.  Not ``iterdump()``: it prints timestamps as
    ``1.79632252604482913014e+09``, where a 6-digit PIN turned up by chance (482913)."""
    values: list[str] = []
    with sqlite3.connect(database) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for v in row:
                    if isinstance(v, bytes):
                        values.append(v.decode("latin-1"))
                    elif isinstance(v, str | int):
                        values.append(str(v))
    return "\n".join(values)


def _rows(database: str) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("select count(*) from decisions").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_internal_errors_never_log_content(lab, sink, milters, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    milter = milters.helpdesk(example_sections(milter={"spool_memory": 1}),
                              env={"TMPDIR": str(spool)})
    # One message first: Python settles on TMPDIR for good (a missing TMPDIR at first
    # use would make it fall back to /tmp); then the directory goes, and every body
    # spool fails from now on.
    first = (f"From: {CLIENT}\r\nTo: contact@example.org\r\nSubject: x\r\n"
             "Message-ID: <interr-first@mairie-exemple.fr>\r\n\r\nBonjour\r\n").encode()
    lab.deliver(sink, first, CLIENT, ["contact@example.org"])
    shutil.rmtree(spool)
    secrets = [f"Vautour{n:04d}!" for n in range(5)]
    messages = [Outgoing(CLIENT, ("contact@example.org",), (
        f"From: {CLIENT}\r\nTo: contact@example.org\r\nSubject: mdp {s}\r\n"
        f"Message-ID: <interr-{n}@mairie-exemple.fr>\r\n\r\n"
        f"Bonjour, impossible de me connecter, le mot de passe est {s}\r\n").encode(),
        f"interr-{n}@mairie-exemple.fr") for n, s in enumerate(secrets)]
    report = send_many(lab.smtp_port, messages, connections=2, deadline=60)
    lab.wait_queue_empty(30)
    assert len(report.accepted) == len(messages)
    milter.wait_log(r"internal error in body \(\w+ at [\w.]+:\d+\); the message will be "
                    r"accepted unchanged")
    log = milter.log_text()
    assert not [s for s in secrets if s in log]
    assert str(spool) not in log                  # exception text (a path) never logged


# --- files that steer the milter -------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "helpdesk_milter", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def run_until_refused(config: Path) -> tuple[int | None, str]:
    """``run --config``: (exit status, stderr) if it refuses; (None, stderr) if it
    starts listening instead (then it is stopped at once)."""
    socket_path = config.parent / "sockets" / "milter.sock"
    proc = subprocess.Popen([sys.executable, "-m", "helpdesk_milter", "run", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: proc.poll() is not None or socket_path.exists(), 30,
                   "the milter to refuse or to start")
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    return (None if socket_path.exists() else proc.returncode), err


def config_with(tmp_path: Path, database: Path, csv: Path | None = None) -> Path:
    sockets = tmp_path / "sockets"
    sockets.mkdir(exist_ok=True)
    sockets.chmod(0o750)
    config = tmp_path / "config.toml"
    text = (f'[milter]\nsocket = "unix:{sockets}/milter.sock"\n'
            f'database = "{database}"\n')
    if csv is not None:
        text += f'\n[directory]\ncsv = ["{csv}"]\n'
    config.write_text(text)
    config.chmod(0o640)
    return config


def test_run_refuses_a_world_writable_client_file(tmp_path):
    csv = tmp_path / "clients.csv"
    csv.write_text("domain,structure\nmairie-exemple.fr,mairie-exemple\n")
    csv.chmod(0o666)
    out = run_cli("run", "--config", str(config_with(tmp_path, tmp_path / "state.db", csv)))
    assert out.returncode == 1
    assert f"refusing to start: {csv} is world-writable (mode 0666)" in out.stderr


@pytest.mark.parametrize("what", ["directory", "file"])
def test_run_refuses_a_world_writable_database(tmp_path, what):
    home = tmp_path / "state"
    home.mkdir()
    database = home / "state.db"
    if what == "directory":
        home.chmod(0o777)
        target = home
    else:
        sqlite3.connect(database).close()
        database.chmod(0o666)
        target = database
    status, err = run_until_refused(config_with(tmp_path, database))
    assert status == 1, f"started with a world-writable database {what}: {err[-500:]}"
    assert f"refusing to start: {target} is world-writable" in err


def test_systemd_unit_hardening_is_ok_or_better():
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed for this check"
    out = subprocess.run([analyze, "security", "--offline=yes",
                          str(ROOT / "systemd" / "helpdesk-milter.service")],
                         capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out.stdout + out.stderr)
    assert m, out.stdout[-2000:] + out.stderr[-2000:]
    score, level = float(m.group(1)), m.group(2)
    print(f"\nsystemd-analyze security: {score} {level}")
    assert level in ("SAFE", "OK"), f"exposure {score} {level}"
