"""One message traced: ``report --queue-id | --message-id | --sender``.

End to end: a client request carrying a password goes through the real private
Postfix with the milter on the documented example config; the queue id Postfix
gave it (its SMTP answer, checked against Postfix's own log) finds, through the
real command line, the recipients as they came and as they left, the verdict,
the rules, the secrets by kind (never the value).  A resend of the same request
is then traced as a duplicate of the first, by Message-ID and by sender.  A
state file written before the trace columns existed still reads.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from helpdesk_milter.cli import main
from helpdesk_milter.store import DecisionRecord, SQLiteStore, open_database, trace
from support.mail import as_bytes, make_message
from support.world import CLIENT, CLIENT_ASSISTANCE, example_sections

PASSWORD = "Tournesol-88!"
SUBJECT = "Messagerie bloquée depuis ce matin"
BODY = ("Bonjour,\n\nDepuis ce matin je n'arrive plus à me connecter à la messagerie, "
        "le navigateur affiche une erreur d'authentification.\n"
        f"Mon identifiant est secretariat et le mot de passe est {PASSWORD}\n"
        "Pouvez-vous regarder ?\n\nMerci,\nJérôme\n")


def report(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``helpdesk-milter report --config CONFIG ARGS`` (in this process: it only reads)."""
    argv = ["report", "--config", str(config), *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def traced(config: Path, *args: str, count: int = 1) -> list[dict]:
    """The JSON trace once it holds ``count`` rows (the store's writer commits
    within a fraction of a second of the message)."""
    deadline = time.monotonic() + 10
    while True:
        out = report(config, *args, "--json")
        rows = json.loads(out.stdout)["decisions"] if out.stdout else []
        if len(rows) >= count or time.monotonic() > deadline:
            assert len(rows) == count, (out.returncode, out.stdout, out.stderr)
            assert out.returncode == 0
            return rows
        time.sleep(0.1)


def test_one_message_is_traced_by_queue_id_message_id_and_sender(lab, sink, milters):
    milter = milters.helpdesk(example_sections())
    config = Path(milter.argv[milter.argv.index("--config") + 1])

    first = make_message(to="contact@example.org", subject=SUBJECT, body=BODY,
                         message_id="<trace-1@mairie-exemple.fr>")
    sent = lab.send(as_bytes(first), CLIENT, ["contact@example.org"])
    lab.wait_queue_empty()
    got = sink.find("<trace-1@mairie-exemple.fr>")
    assert got.rcpt_tos == [CLIENT_ASSISTANCE]          # redirected
    qid = sent.queue_id
    assert qid
    # the id of the SMTP answer is Postfix's queue id for this very message
    lab.wait_log(rf"{qid}: message-id=<trace-1@mairie-exemple\.fr>")

    [row] = traced(config, "--queue-id", qid)
    assert row["queue_id"] == qid
    assert row["message_id"] == "<trace-1@mairie-exemple.fr>"
    assert row["mail_from"] == CLIENT
    assert row["rcpts"] == ["contact@example.org"]
    assert row["final_rcpts"] == [CLIENT_ASSISTANCE]
    assert row["added"] == [CLIENT_ASSISTANCE] and row["removed"] == ["contact@example.org"]
    assert row["verdict"] == "support" and row["action"] == "redirect"
    assert row["structure"] == "mairie-exemple" and row["watch_group"] == "contact"
    # the rules are those the delivered message's header names
    header_rules = got.message["X-Helpdesk-Request"].split("rules=", 1)[1].split(";")[0]
    assert row["rules"] == header_rules.split(",") and row["rules"]
    assert row["secrets"] == 1 and row["secret_kinds"] == ["password"]
    assert row["duplicate"] is None and row["duplicate_of"] is None

    text = report(config, "--queue-id", qid)
    assert text.returncode == 0, text.stderr
    assert f"queue id     {qid}\n" in text.stdout
    assert "recipients   contact@example.org\n" in text.stdout
    assert f"final        {CLIENT_ASSISTANCE}  (added {CLIENT_ASSISTANCE})  " \
           "(removed contact@example.org)" in text.stdout
    assert "secrets      1 (password; values are never stored)" in text.stdout
    assert PASSWORD not in text.stdout + text.stderr

    # The client sends the same request again, to a colleague: a duplicate of the
    # first (assistance has it), tagged, its recipient kept.
    again = make_message(to="alice@example.org", subject=SUBJECT, body=BODY,
                         message_id="<trace-2@mairie-exemple.fr>")
    sent2 = lab.send(as_bytes(again), CLIENT, ["alice@example.org"])
    lab.wait_queue_empty()
    assert sink.find("<trace-2@mairie-exemple.fr>").rcpt_tos == ["alice@example.org"]

    [dup] = traced(config, "--message-id", "trace-2@mairie-exemple.fr")  # brackets optional
    assert dup["queue_id"] == sent2.queue_id != qid
    assert dup["action"] == "duplicate" and dup["duplicate"] == "text"
    assert dup["duplicate_of"] == "<trace-1@mairie-exemple.fr>"
    assert dup["rcpts"] == dup["final_rcpts"] == ["alice@example.org"]
    text = report(config, "--message-id", "<trace-2@mairie-exemple.fr>")
    assert "duplicate    of <trace-1@mairie-exemple.fr> (match text)" in text.stdout

    both = traced(config, "--sender", CLIENT.upper(), count=2)
    assert [r["message_id"] for r in both] == ["<trace-2@mairie-exemple.fr>",
                                               "<trace-1@mairie-exemple.fr>"]

    # the summary's last decisions carry the Message-ID and the duplicate's origin too
    summary = json.loads(report(config, "--json").stdout)
    assert {(r["message_id"], r["duplicate_of"]) for r in summary["last"]} == {
        ("<trace-1@mairie-exemple.fr>", None),
        ("<trace-2@mairie-exemple.fr>", "<trace-1@mairie-exemple.fr>")}

    nothing = report(config, "--queue-id", "4ABSENT0000")
    assert nothing.returncode == 1
    assert "no decision recorded for queue id 4ABSENT0000" in nothing.stderr


def record(**fields: object) -> DecisionRecord:
    base: dict[str, object] = dict(
        time=time.time(), queue_id="4OLD1", message_id="<old@x.example>", mail_from=CLIENT,
        from_addr=CLIENT, structure="mairie-exemple", verdict="support", score=7.0,
        rules="a,b", action="copy", skip_reason=None, watch_group="team",
        assistance=CLIENT_ASSISTANCE, added=CLIENT_ASSISTANCE, removed="", duplicate=None,
        size=100, rcpts="alice@example.org",
        final_rcpts=f"alice@example.org,{CLIENT_ASSISTANCE}")
    base.update(fields)
    return DecisionRecord(**base)  # type: ignore[arg-type]


def test_a_state_file_from_before_the_trace_columns_still_reads(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.record(record())
    store.close()
    conn = sqlite3.connect(path)
    for column in ("rcpts", "final_rcpts", "duplicate_of"):
        conn.execute(f"ALTER TABLE decisions DROP COLUMN {column}")
    conn.commit()
    conn.close()
    [row] = trace(open_database(path, readonly=True), queue_id="4OLD1")
    assert row["rcpts"] is None and row["final_rcpts"] is None
    assert row["added"] == [CLIENT_ASSISTANCE] and row["rules"] == ["a", "b"]
    out = subprocess.run([sys.executable, "-m", "helpdesk_milter", "report", "--database",
                          str(path), "--queue-id", "4OLD1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "recipients   (not recorded)" in out.stdout


def test_the_lookups_use_the_indexes(tmp_path):
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    db = open_database(path, readonly=True)
    plans = {
        "queue_id": "SELECT * FROM decisions WHERE queue_id = ?",
        "message_id": "SELECT * FROM decisions WHERE message_id in (?, ?)",
        "mail_from": "SELECT id FROM decisions WHERE mail_from = ?",
        "from_addr": "SELECT id FROM decisions WHERE from_addr = ?",
    }
    for column, sql in plans.items():
        plan = " ".join(str(r[-1]) for r in db.execute(
            f"EXPLAIN QUERY PLAN {sql}", ["x"] * sql.count("?")).fetchall())
        assert plan.startswith("SEARCH decisions USING") \
            and f"INDEX idx_decisions_{column} (" in plan, (column, plan)


def test_observe_mode_rows_are_traced_as_what_would_have_been_done(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.record(record(time=1000.0, queue_id="4ENF1", message_id="<obs@x.example>"))
    store.close()
    conn = sqlite3.connect(path)
    # an observe-mode row, as the milter writes it with milter.mode = "observe"
    conn.execute("INSERT INTO observed (time, queue_id, message_id, mail_from, from_addr, "
                 "rcpts, verdict, score, rules, action, added, removed, secrets, "
                 "secret_kinds) VALUES (2000, '4OBS1', '<obs@x.example>', ?, ?, "
                 "'contact@example.org', 'support', 8.0, 'a', 'redirect', ?, "
                 "'contact@example.org', 1, 'password')", [CLIENT, CLIENT, CLIENT_ASSISTANCE])
    conn.commit()
    conn.close()
    db = open_database(path, readonly=True)
    [observed] = trace(db, queue_id="4OBS1")
    assert observed["mode"] == "observe" and observed["action"] == "redirect"
    # nothing was changed: it left with the recipients it came with
    assert observed["rcpts"] == observed["final_rcpts"] == ["contact@example.org"]
    assert observed["added"] == [CLIENT_ASSISTANCE]
    both = trace(db, message_id="obs@x.example")
    assert [(r["mode"], r["queue_id"]) for r in both] == [("observe", "4OBS1"),
                                                           ("enforce", "4ENF1")]
    assert len(trace(db, sender=CLIENT)) == 2
    plan = " ".join(str(r[-1]) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM observed WHERE queue_id = ?", ["x"]))
    assert "INDEX idx_observed_queue_id (" in plan, plan
    out = subprocess.run([sys.executable, "-m", "helpdesk_milter", "report", "--database",
                          str(path), "--queue-id", "4OBS1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "mode         observe: nothing was changed" in out.stdout
