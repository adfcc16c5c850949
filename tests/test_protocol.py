"""The running milter, driven over its unix socket by a milter-protocol client.

No Postfix here: ``support.milterclient`` plays the MTA side, so these tests see
the exact actions the milter asks for (add/delete recipient, add/change header),
what it negotiates, and how it behaves on several messages per connection, on
aborts, on garbage, and when something breaks inside it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import Milter
import pytest
from miltertest import constants as C

from helpdesk_milter.app import HelpdeskMilter
from support.mail import as_bytes, make_message
from support.milterclient import MilterClient
from support.world import CLIENT, CLIENT_ASSISTANCE, example_sections

SUPPORT = dict(subject="Thunderbird : je ne reçois plus mes mails",
               body="Bonjour,\n\nDepuis hier je ne reçois plus aucun mail dans Thunderbird, "
                    "il affiche une erreur de connexion au serveur IMAP.\nPouvez-vous "
                    "regarder ?\n\nMerci,\nJérôme\n")


def split(msg) -> tuple[list[tuple[str, str]], bytes]:
    """A message as the milter receives it: header fields and the CRLF body."""
    raw = as_bytes(msg)
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            name, value = headers[-1]
            headers[-1] = (name, value + "\r\n" + line.decode())
        else:
            name, _, value = line.decode().partition(":")
            headers.append((name, value.lstrip()))
    return headers, body


@pytest.fixture
def milter(protocol_milters):
    return protocol_milters.helpdesk(example_sections())


def test_negotiates_only_what_it_uses(milter):
    with MilterClient(milter.socket_path) as client:
        assert client.actions == (C.SMFIF_ADDHDRS | C.SMFIF_CHGHDRS | C.SMFIF_ADDRCPT
                                  | C.SMFIF_DELRCPT | C.SMFIF_CHGBODY)
        for flag in (C.SMFIP_NR_RCPT, C.SMFIP_NR_HDR, C.SMFIP_NR_BODY):
            assert client.protocol & flag, hex(flag)
        # steps it does not use are not sent at all
        for flag in (C.SMFIP_NOCONNECT, C.SMFIP_NOHELO, C.SMFIP_NOEOH):
            assert client.protocol & flag, hex(flag)
        # DATA is negotiated and answered: without it a TCP milter stalls on Nagle.
        assert not client.protocol & C.SMFIP_NODATA
        assert not client.protocol & C.SMFIP_NR_DATA


def test_redirect_actions_on_the_wire(milter):
    headers, body = split(make_message(to="contact@example.org", **SUPPORT))
    headers.append(("X-Helpdesk-Routed", "to=pirate@evil.example; mode=copy"))
    with MilterClient(milter.socket_path) as client:
        result = client.run_message(CLIENT, ["<contact@example.org>"], headers, body,
                                    macros={"i": "4AB12C3D4E"})
    assert result.reply == "accept"
    assert result.added_rcpts == [CLIENT_ASSISTANCE]
    assert result.deleted_rcpts == ["contact@example.org"]
    assert result.deleted_headers == [("X-Helpdesk-Routed", 1)]
    assert result.added_headers["X-Helpdesk-Routed"] == \
        f"to={CLIENT_ASSISTANCE}; mode=redirect"
    assert result.added_headers["X-Helpdesk-Request"].startswith(
        "support; structure=mairie-exemple;")
    assert result.new_body is None            # routing never touches the body
    # recipients are added before any is removed (a failure in between duplicates,
    # never loses)
    kinds = [a.kind for a in result.actions]
    assert kinds.index("add_rcpt") < kinds.index("delete_rcpt")
    milter.wait_log(r"4AB12C3D4E: verdict=support action=redirect")


def test_several_messages_on_one_connection_do_not_share_state(milter):
    support_headers, support_body = split(make_message(to="alice@example.org", **SUPPORT))
    other_headers, other_body = split(make_message(
        sender="Paul <ami@perso.example>", to="bob@example.org", subject="Déjeuner jeudi ?",
        body="Salut Bob, on déjeune ensemble jeudi ? Bises\n"))
    with MilterClient(milter.socket_path) as client:
        first = client.run_message(CLIENT, ["alice@example.org"], support_headers,
                                   support_body)
        second = client.run_message("ami@perso.example", ["bob@example.org"],
                                    other_headers, other_body)
        # an aborted transaction, then a third message
        client.mail(CLIENT)
        client.rcpt("<contact@example.org>")
        client.abort()
        third_headers, third_body = split(make_message(
            to="alice@example.org", subject="Imprimante bloquée",
            body="Bonjour,\n\nL'imprimante du premier étage affiche une erreur de bourrage "
                 "papier et ne fonctionne plus.\nPouvez-vous envoyer quelqu'un ?\n"))
        third = client.run_message(CLIENT, ["alice@example.org"], third_headers, third_body)
    assert first.added_rcpts == [CLIENT_ASSISTANCE]
    assert second.added_rcpts == [] and second.deleted_rcpts == []
    assert second.added_headers["X-Helpdesk-Request"].startswith("other; structure=unknown")
    assert third.added_rcpts == [CLIENT_ASSISTANCE]
    assert third.deleted_rcpts == []          # contact@ from the aborted one is forgotten


def test_authenticated_submission_is_not_rerouted(milter):
    headers, body = split(make_message(to="contact@example.org", **SUPPORT))
    with MilterClient(milter.socket_path) as client:
        result = client.run_message(CLIENT, ["contact@example.org"], headers, body,
                                    macros={"{auth_authen}": "jerome", "{auth_type}": "PLAIN"})
    assert result.added_rcpts == [] and result.deleted_rcpts == []
    assert result.added_headers["X-Helpdesk-Request"].endswith("rules=skip-authenticated")


def test_eight_bit_undeclared_headers_and_body(milter):
    body = ("Bonjour,\r\nl'imprimante ne fonctionne plus, impossible d'imprimer.\r\n"
            "Pouvez-vous nous aider ?\r\n").encode("latin-1")
    headers = [("From", "J\xe9r\xf4me <secretariat@mairie-exemple.fr>".encode("latin-1")),
               ("To", b"contact@example.org"),
               ("Subject", "Probl\xe8me imprimante".encode("latin-1")),
               ("Message-ID", b"<latin1@mairie-exemple.fr>")]
    with MilterClient(milter.socket_path) as client:
        result = client.run_message(CLIENT, ["contact@example.org"], headers, body)
    assert result.reply == "accept"
    assert result.added_rcpts == [CLIENT_ASSISTANCE]


def test_garbage_on_the_socket_does_not_hurt_the_next_client(milter):
    client = MilterClient(milter.socket_path, timeout=5).open(negotiate=False)
    try:
        client.send_raw(b"\x00\x00\x10\x00" + b"\xff" * 64)
        client.closed_by_peer(timeout=5)
    finally:
        client.close()
    headers, body = split(make_message(to="alice@example.org", **SUPPORT))
    with MilterClient(milter.socket_path) as client:
        assert client.run_message(CLIENT, ["alice@example.org"], headers, body) \
            .added_rcpts == [CLIENT_ASSISTANCE]


@pytest.mark.parametrize("on_error, expected", [("accept", "accept"),
                                                ("tempfail", "tempfail")])
def test_internal_error_follows_on_error_and_changes_nothing(protocol_milters, tmp_path,
                                                             on_error, expected):
    # A real fault: the directory the body spools to disappears (a full or unmounted
    # /tmp behaves the same).  spool_memory = 1 byte forces the spool to disk.
    spool = tmp_path / "spool"
    spool.mkdir()
    milter = protocol_milters.helpdesk(
        example_sections(milter={"on_error": on_error, "spool_memory": 1}),
        env={"TMPDIR": str(spool)})
    headers, body = split(make_message(to="contact@example.org", **SUPPORT))
    with MilterClient(milter.socket_path) as client:
        ok = client.run_message(CLIENT, ["contact@example.org"], headers, body)
        assert ok.added_rcpts == [CLIENT_ASSISTANCE]
        shutil.rmtree(spool)
        broken = client.run_message(CLIENT, ["contact@example.org"], headers, body,
                                    macros={"i": "5FAULT0001"})
    assert broken.reply == expected
    assert broken.actions == []              # nothing half-done: message unchanged
    line = milter.wait_log(r"5FAULT0001: internal error in body \((\w+) at [\w.]+:\d+\)")
    assert line.group(1) == "FileNotFoundError"
    word = "accepted unchanged" if on_error == "accept" else "temp-failed"
    assert word in milter.log_text()
    assert str(spool) not in milter.log_text()    # exception text is never logged


def test_sigterm_stops_cleanly_and_flushes_the_database(protocol_milters):
    milter = protocol_milters.helpdesk(example_sections())
    headers, body = split(make_message(to="alice@example.org", **SUPPORT))
    with MilterClient(milter.socket_path) as client:
        client.run_message(CLIENT, ["alice@example.org"], headers, body,
                           macros={"i": "6TERM00001"})
    code = milter.stop()
    assert code == 0, milter.log_tail()
    assert "helpdesk-milter stopped" in milter.log_text()
    database = milter.argv[milter.argv.index("--config") + 1].replace(".toml", ".db")
    import sqlite3
    with sqlite3.connect(database) as conn:
        rows = conn.execute("select queue_id, action from decisions").fetchall()
    assert rows == [("6TERM00001", "copy")]


def test_socket_activation_fd3(tmp_path, protocol_milters):
    """systemd socket activation: the milter serves the listening socket it inherits."""
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate (package systemd) is needed for this test"
    sock = tmp_path / "activated.sock"
    config = protocol_milters.write_config(example_sections(), name="activated")
    text = config.read_text()
    config.write_text(text.replace(f'socket = "unix:{protocol_milters.socket_path("activated")}"',
                                   'socket = "fd:3"'))
    proc = subprocess.Popen([activate, "-l", str(sock), sys.executable, "-m",
                             "helpdesk_milter", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        headers, body = split(make_message(to="contact@example.org", **SUPPORT))
        with MilterClient(str(sock), timeout=20) as client:
            result = client.run_message(CLIENT, ["contact@example.org"], headers, body)
        assert result.added_rcpts == [CLIENT_ASSISTANCE]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_header_fields_get_no_reply_once_none_was_agreed():
    """libmilter logs an error for each field answered CONTINUE after "no reply"
    was negotiated; pymilter's @noreply wrapper is bypassed by header_bytes."""
    agreed, plain = HelpdeskMilter(), HelpdeskMilter()
    agreed.negotiate([0x1FF, Milter.P_NR_HDR, 0, 0])
    plain.negotiate([0x1FF, 0, 0, 0])
    assert agreed.header_bytes("Subject", b" Webmail") == Milter.NOREPLY
    assert plain.header_bytes("Subject", b" Webmail") == Milter.CONTINUE
    assert agreed.headers == plain.headers == [("Subject", b" Webmail")]
