"""Prometheus metrics (``[metrics] listen``): the real endpoint after real mail.

End to end: mail of every kind through the private Postfix, then a scrape of the
milter's ``/metrics``; the counts must match what the state database recorded
(messages by verdict and action, duplicates by match, secrets by kind), the
latency histogram must hold one observation per decision, and mail accepted at
the end of the envelope counts as ``unwatched``/``step-out``.  A reload counts.
Units: the counting itself, with no server; a port in use refuses the start.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

from helpdesk_milter.metrics import NullMetrics, PrometheusMetrics, make_metrics
from helpdesk_milter.policy import Decision
from support.mail import as_bytes, make_message
from support.net import free_port, wait_until
from support.prom import by_label, scrape
from support.world import CLIENT, example_sections

P = "helpdesk_milter"
SUPPORT_BODY = (
    "Bonjour,\n\nDepuis ce matin, impossible de me connecter à Nextcloud : le client "
    "de synchronisation affiche « erreur 503 » et les fichiers du secrétariat ne se "
    "synchronisent plus.\nPouvez-vous regarder rapidement ?\n\nMerci,\nJérôme Martin\n")


def test_counts_after_mail_through_postfix_match_the_database(lab, sink, milters):
    port = free_port()
    milter = milters.helpdesk(example_sections(metrics={"listen": f"127.0.0.1:{port}"}))
    first = scrape(port)
    assert first[(f"{P}_observe_mode", ())] == 0
    assert first[(f"{P}_decision_seconds_count", ())] == 0

    copy = make_message(to="alice@example.org", subject="Nextcloud : impossible de "
                        "synchroniser", body=SUPPORT_BODY,
                        message_id="<metrics-1@mairie-exemple.fr>")
    lab.deliver(sink, as_bytes(copy), CLIENT, ["alice@example.org"])
    lab.deliver(sink, as_bytes(copy), CLIENT, ["bob@example.org"])     # the same, again
    lab.deliver(sink, as_bytes(make_message(
        to="contact@example.org", subject="Accès wifi de la mairie",
        body="Bonjour,\n\nLe wifi de la mairie ne marche plus depuis ce matin.\nPour info "
             "le mot de passe du wifi est Tournesol-88\nPouvez-vous regarder ?\n\nMerci\n",
        message_id="<metrics-2@mairie-exemple.fr>")), CLIENT, ["contact@example.org"])
    lab.deliver(sink, as_bytes(make_message(
        to="commercial@example.org", subject="Merci pour mardi",
        body="Bonjour,\n\nMerci pour le déjeuner de mardi, c'était très agréable.\n\n"
             "À bientôt\n", message_id="<metrics-3@mairie-exemple.fr>")), CLIENT,
        ["commercial@example.org"])
    for n in range(3):                            # nobody watches these: stepped out
        lab.deliver(sink, as_bytes(make_message(
            to="partenaire@ailleurs.example", subject=f"Réunion {n}",
            message_id=f"<metrics-out-{n}@mairie-exemple.fr>")), CLIENT,
            ["partenaire@ailleurs.example"])

    database = tomllib.loads(Path(milter.argv[milter.argv.index("--config") + 1])
                             .read_text())["milter"]["database"]

    def recorded() -> list[tuple]:
        with sqlite3.connect(database) as conn:
            return conn.execute("select verdict, action, duplicate, secret_kinds "
                                "from decisions").fetchall()
    rows = wait_until(lambda: (r := recorded()) and len(r) == 4 and r, 10,
                      "the four decisions on disk")
    samples = scrape(port)

    expected: dict[str, float] = {}
    for verdict, action, _, _ in rows:
        key = f"{verdict}/{action}"
        expected[key] = expected.get(key, 0) + 1
    expected["unwatched/step-out"] = 3
    got = {f"{dict(labels)['verdict']}/{dict(labels)['action']}": value
           for (name, labels), value in samples.items()
           if name == f"{P}_messages_total" and value}
    assert got == expected
    assert {"support/copy", "support/redirect", "support/duplicate"} <= set(got), got
    dups: dict[str, float] = {}
    secrets: dict[str, float] = {}
    for _, _, duplicate, kinds in rows:
        if duplicate:
            dups[duplicate] = dups.get(duplicate, 0) + 1
        for kind in filter(None, (kinds or "").split(",")):
            secrets[kind] = secrets.get(kind, 0) + 1
    assert by_label(samples, f"{P}_duplicates_total", "match") == dups
    assert by_label(samples, f"{P}_secret_messages_total", "kind") == secrets == {
        "password": 1}
    assert samples[(f"{P}_decision_seconds_count", ())] == 4
    assert 0 < samples[(f"{P}_decision_seconds_sum", ())] < 4 * 5.0
    assert not by_label(samples, f"{P}_internal_errors_total", "stage")

    assert milter.pid is not None
    os.kill(milter.pid, signal.SIGHUP)
    milter.wait_log(r"reloaded ")
    assert scrape(port)[(f"{P}_reloads_total", (("result", "ok"),))] == 1


def decision(**kw) -> Decision:
    values = {"verdict": "support", "structure": "s", "score": 7.0, "rules": (),
              "action": "copy"}
    return Decision(**{**values, **kw})


def test_counting_without_a_server():
    m = PrometheusMetrics()
    get = m.registry.get_sample_value
    m.decided(decision(), 0.003)
    m.decided(decision(action="duplicate", duplicate="text", secret_kinds=("password",
                                                                            "aws-key")),
              0.004)
    m.decided(decision(verdict="other", action="none", inspected=False,
                       guidance="suppressed:rate-limited"), 0.0001)
    m.decided(decision(guidance="queued"), 0.002)
    m.stepped_out()
    m.failed("eom", "tempfail")
    m.reloaded(False, observe=False)
    m.reloaded(True, observe=True)
    m.delivered("retry")
    m.delivered("sent")
    assert get(f"{P}_messages_total", {"verdict": "support", "action": "copy"}) == 2
    assert get(f"{P}_messages_total", {"verdict": "support", "action": "duplicate"}) == 1
    assert get(f"{P}_messages_total", {"verdict": "unwatched", "action": "none"}) == 1
    assert get(f"{P}_messages_total", {"verdict": "unwatched", "action": "step-out"}) == 1
    assert get(f"{P}_messages_total", {"verdict": "error", "action": "tempfail"}) == 1
    assert get(f"{P}_duplicates_total", {"match": "text"}) == 1
    assert get(f"{P}_secret_messages_total", {"kind": "aws-key"}) == 1
    assert get(f"{P}_guidance_total", {"outcome": "suppressed", "reason": "rate-limited"}) \
        == 1
    assert get(f"{P}_guidance_total", {"outcome": "queued", "reason": ""}) == 1
    assert get(f"{P}_internal_errors_total", {"stage": "eom"}) == 1
    assert get(f"{P}_reloads_total", {"result": "failed"}) == 1
    assert get(f"{P}_observe_mode") == 1
    assert get(f"{P}_guidance_deliveries_total", {"outcome": "sent"}) == 1
    assert get(f"{P}_guidance_deliveries_total", {"outcome": "failed"}) == 0
    assert get(f"{P}_decision_seconds_count") == 4
    assert get(f"{P}_decision_seconds_bucket", {"le": "0.0005"}) == 1
    # off by default: nothing served, nothing counted
    assert isinstance(make_metrics(""), NullMetrics)


def test_a_metrics_port_in_use_refuses_the_start(protocol_milters):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = protocol_milters.write_config(
            example_sections(metrics={"listen": f"127.0.0.1:{port}"}), name="busy")
        run = subprocess.run([sys.executable, "-m", "helpdesk_milter", "run", "--config",
                              str(config)], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, check=False)
    assert run.returncode == 1
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in run.stderr
