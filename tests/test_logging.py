"""Logs: the one line per message to syslog's mail facility, or as JSON.

End to end: the real milter, behind the private Postfix, is pointed at a syslog
socket the test binds itself (a unix datagram socket, as /dev/log is); the line
for a message arrives there with the facility and severity in its priority, the
``helpdesk-milter[PID]`` ident and Postfix's queue id.  With ``format = "json"``
on stderr every line parses and the message's line carries its queue id and
fields.  A syslog socket missing at start means stderr, said once.  The bounded
queue in front of syslog drops lines rather than block a milter thread.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import queue
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpdesk_milter.logs import JsonFormatter, _DroppingQueueHandler
from support.mail import as_bytes, make_message
from support.world import CLIENT, CLIENT_ASSISTANCE, example_sections

PASSWORD = "Hibiscus-2718!"
# a request of its own per message (in one state file): the same text twice would be
# a duplicate, not routed again
PROBLEMS = itertools.cycle([
    "L'imprimante du secrétariat affiche une erreur depuis ce matin, impossible "
    "d'imprimer les convocations du conseil municipal.",
    "Le site internet de la mairie affiche une page blanche depuis la mise à jour "
    "d'hier soir, les habitants ne trouvent plus les horaires.",
    "Le partage Nextcloud des délibérations est inaccessible depuis lundi, un message "
    "d'erreur 403 apparaît pour tous les agents.",
    "La messagerie refuse d'envoyer les courriels avec une pièce jointe depuis ce "
    "matin, le message reste bloqué dans la boîte d'envoi.",
    "Le logiciel de facturation ne démarre plus sur le poste de l'accueil, une "
    "fenêtre indique une licence expirée.",
])

LOG_MAIL, LOG_LOCAL3, LOG_INFO = 2, 19, 6


@pytest.fixture
def syslog() -> Iterator[tuple[Path, socket.socket]]:
    """A unix datagram socket standing in for /dev/log (a short path: the limit is
    107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="hdm-syslog-"))
    path = folder / "log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(0.2)
    try:
        yield path, server
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


def receive_until(server: socket.socket, needle: bytes, timeout: float = 10.0) -> list[bytes]:
    """Every datagram received until one contains ``needle`` (that one last)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = server.recv(65536)
        except TimeoutError:
            continue
        got.append(data)
        if needle in data:
            return got
    raise AssertionError(f"no syslog datagram with {needle!r}; got {got!r}")


def send_request(lab, sink, message_id: str) -> str:
    body = (f"Bonjour,\n\n{next(PROBLEMS)}\nLe mot de passe de l'interface est "
            f"{PASSWORD}\nPouvez-vous regarder ?\n\nMerci,\nJérôme\n")
    msg = make_message(to="contact@example.org", subject="Problème urgent", body=body,
                       message_id=message_id)
    sent = lab.send(as_bytes(msg), CLIENT, ["contact@example.org"])
    lab.wait_queue_empty()
    assert sink.find(message_id).rcpt_tos == [CLIENT_ASSISTANCE]
    assert sent.queue_id
    return sent.queue_id


@pytest.mark.parametrize("facility, code, fmt", [("mail", LOG_MAIL, "text"),
                                                 ("local3", LOG_LOCAL3, "json")])
def test_the_line_per_message_goes_to_syslog(lab, sink, milters, syslog, facility, code, fmt):
    path, server = syslog
    milter = milters.helpdesk(example_sections(logging={
        "target": "syslog", "facility": facility, "format": fmt,
        "syslog_socket": str(path)}))
    message_id = f"<syslog-{facility}@mairie-exemple.fr>"
    qid = send_request(lab, sink, message_id)
    datagrams = receive_until(server, f"{qid}: verdict=".encode())
    line = datagrams[-1].decode()
    # <PRIORITY> is facility * 8 + severity (RFC 3164), then the ident, as Postfix's
    # "postfix/smtpd[123]: " is
    prefix = f"<{code * 8 + LOG_INFO}>helpdesk-milter[{milter.pid}]: "
    assert line.startswith(prefix), line
    content = line[len(prefix):]
    if fmt == "json":
        event = json.loads(content)
        assert event["queue_id"] == qid and event["level"] == "info"
        assert event["verdict"] == "support" and event["action"] == "redirect"
        assert event["message-id"] == message_id
        content = event["message"]
    assert content.startswith(f"{qid}: verdict=support action=redirect "
                              "structure=mairie-exemple ")
    assert f"added=<{CLIENT_ASSISTANCE}>" in content and "secrets=1" in content
    assert all(PASSWORD.encode() not in d for d in datagrams)
    # the start-up line went there too, and nothing of it to stderr
    assert any(b"helpdesk-milter listening on" in d for d in datagrams)
    assert f"{qid}:" not in milter.log_text()
    if facility != "mail":
        return
    # syslog goes away (restarted): the lines go to stderr meanwhile, not lost
    server.close()
    path.unlink()
    qid = send_request(lab, sink, "<syslog-gone@mairie-exemple.fr>")
    milter.wait_log(rf"\n{qid}: verdict=support action=redirect")
    assert f"cannot write to syslog at {path}; lines go to stderr until it is back" \
        in milter.log_text()
    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(str(path))
    again.settimeout(0.2)
    try:
        qid = send_request(lab, sink, "<syslog-back@mairie-exemple.fr>")
        assert receive_until(again, f"{qid}: verdict=".encode())
        milter.wait_log(rf"syslog at {path} is back")
    finally:
        again.close()


def test_json_lines_on_stderr_and_the_fallback_when_syslog_is_missing(lab, sink, milters,
                                                                     tmp_path):
    milter = milters.helpdesk(example_sections(logging={"format": "json"}))
    qid = send_request(lab, sink, "<json-1@mairie-exemple.fr>")
    milter.wait_log(rf'"queue_id":"{qid}"')
    events = [json.loads(line) for line in milter.log_text().splitlines()
              if not line.startswith("--- ")]           # the harness's own notes
    assert events, milter.log_text()
    [event] = [e for e in events if e.get("queue_id") == qid]
    assert event["verdict"] == "support" and event["structure"] == "mairie-exemple"
    assert event["message"].startswith(f"{qid}: verdict=support")
    assert event["time"].endswith("Z") and event["logger"] == "helpdesk_milter"
    assert PASSWORD not in milter.log_text()
    milters.close()

    missing = tmp_path / "no-syslog-here"
    milter = milters.helpdesk(example_sections(logging={
        "target": "syslog", "syslog_socket": str(missing)}), name="fallback")
    qid = send_request(lab, sink, "<json-2@mairie-exemple.fr>")
    milter.wait_log(rf"INFO {qid}: verdict=support")
    assert f"cannot reach syslog at {missing}" in milter.log_text()
    assert "logging to stderr instead" in milter.log_text()


def test_json_formatter_fields():
    record = logging.LogRecord(
        "helpdesk_milter", logging.INFO, "", 0,
        "4XyZ1C2D3E: verdict=support action=copy structure=mairie-exemple score=7.5 "
        "from=<a@b.example> added=<x@assistance.example.org> rules=a,b "
        "message-id=<m@b.example>", (), None)
    event = json.loads(JsonFormatter().format(record))
    assert event["queue_id"] == "4XyZ1C2D3E" and event["level"] == "info"
    assert event["from"] == "<a@b.example>" and event["rules"] == "a,b"
    assert event["message-id"] == "<m@b.example>" and event["score"] == "7.5"
    # a word named like a base field never overwrites it
    record = logging.LogRecord("helpdesk_milter", logging.WARNING, "", 0,
                               "NOQUEUE: level=x message=y", (), None)
    event = json.loads(JsonFormatter().format(record))
    assert event["level"] == "warning" and event["queue_id"] == "NOQUEUE"
    assert event["message"] == "NOQUEUE: level=x message=y"
    # a line with no queue id has none
    record = logging.LogRecord("helpdesk_milter", logging.INFO, "", 0,
                               "helpdesk-milter listening on inet:8894@127.0.0.1", (), None)
    assert "queue_id" not in json.loads(JsonFormatter().format(record))


def test_a_stalled_syslog_drops_lines_instead_of_blocking():
    records: queue.Queue[logging.LogRecord] = queue.Queue(2)
    handler = _DroppingQueueHandler(records)

    def line(text: str) -> logging.LogRecord:
        return logging.LogRecord("helpdesk_milter", logging.INFO, "", 0, text, (), None)

    started = time.monotonic()
    for n in range(5):
        handler.emit(line(f"Q{n}: verdict=other"))
    assert time.monotonic() - started < 1.0
    assert handler.dropped == 3
    assert [records.get_nowait().getMessage() for _ in range(2)] == [
        "Q0: verdict=other", "Q1: verdict=other"]
    handler.emit(line("Q9: verdict=other"))       # room again: the loss is said first
    note = records.get_nowait()
    assert note.levelno == logging.WARNING
    assert note.getMessage() == "3 log line(s) dropped: syslog did not keep up"
    assert records.get_nowait().getMessage() == "Q9: verdict=other"
    assert handler.dropped == 0


# --- the line per message written straight to the stream (logs.write_info) ----------

LINE = "4XyZ1C2D3E: verdict=support action=copy from=<a@b.example> rules=é"


@pytest.mark.parametrize("fmt", ["%(asctime)s %(levelname)s %(message)s",
                                 "%(levelname)s %(message)s", "%(message)s"])
def test_the_short_line_writes_what_logging_writes(fmt):
    from helpdesk_milter.engine import log, log_info
    from helpdesk_milter.logs import write_info
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        logging.basicConfig(level=logging.INFO, force=True, stream=stream, format=fmt)
        log_info(LINE)                              # the short way
        log.info("%s", LINE)                        # logging's own way
        short, usual = stream.getvalue().splitlines()
        assert write_info(log, LINE)                # (it was the short way)
        if fmt.startswith("%(asctime)s"):
            # the same shape; the times differ by the time between the two calls
            stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
            assert re.fullmatch(stamp + "INFO " + re.escape(LINE), short)
            assert re.fullmatch(stamp + "INFO " + re.escape(LINE), usual)
            assert abs(time.mktime(time.strptime(short[:19], "%Y-%m-%d %H:%M:%S"))
                       - time.mktime(time.strptime(usual[:19], "%Y-%m-%d %H:%M:%S"))) <= 1
        else:
            assert short == usual
        # below INFO's level: nothing either way
        root.setLevel(logging.WARNING)
        log_info(LINE)
        assert len(stream.getvalue().splitlines()) == 3
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_short_line_goes_the_usual_way_when_logging_is_not_simple(caplog):
    """A second handler (pytest's capture here), a filter or another formatter: the
    line is an ordinary record, which the handlers and filters all see."""
    from helpdesk_milter.engine import log_info
    from helpdesk_milter.logs import write_info
    caplog.set_level(logging.INFO, logger="helpdesk_milter")
    log_info(LINE)
    assert [r.getMessage() for r in caplog.records] == [LINE]
    assert not write_info(logging.getLogger("helpdesk_milter"), LINE)
