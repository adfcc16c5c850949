"""Self-tests of the harness (tests/support/): the sink, the Postfix lab, milter
processes and the milter-protocol client, exercised with the no-op milter.

If these fail, every end-to-end and protocol test is suspect: fix these first.
"""

from __future__ import annotations

import tomllib
import uuid

import pytest

from support.milterclient import MilterClient
from support.milterproc import MilterLauncher, dump_toml
from support.postfix import PostfixLab, SmtpRejected
from support.sink import Sink


def make_message(subject: str = "harness") -> tuple[str, bytes]:
    """A small unique message: (Message-ID without brackets, raw bytes)."""
    mid = f"harness-{uuid.uuid4().hex}@lab.invalid"
    raw = (f"From: client@mairie-exemple.fr\r\nTo: team@example.org, bob@example.org\r\n"
           f"Subject: {subject}\r\nMessage-ID: <{mid}>\r\n\r\n"
           "Bonjour,\r\n.leading dot line\r\nmerci\r\n").encode()
    return mid, raw


@pytest.mark.postfix
def test_message_through_postfix_and_noop_milter_reaches_sink(
        lab: PostfixLab, sink: Sink, milters: MilterLauncher) -> None:
    noop = milters.noop()
    mid, raw = make_message()
    rcpts = ["team@example.org", "bob@example.org"]

    result = lab.send(raw, "client@mairie-exemple.fr", rcpts)
    assert result.code == 250 and result.queue_id
    lab.wait_queue_empty()
    got = sink.find(mid)

    assert got.rcpt_tos == sorted(rcpts)
    assert got.mail_from == "client@mairie-exemple.fr"
    assert got.message["Subject"] == "harness"
    assert got.message.get_content().replace("\r\n", "\n") == (
        "Bonjour,\n.leading dot line\nmerci\n")
    # The milter saw the message, with Postfix's queue id.
    noop.wait_log(rf"qid={result.queue_id} from=<client@mairie-exemple.fr> rcpts=2 ")


@pytest.mark.postfix
def test_split_delivery_is_found_as_one_message(lab: PostfixLab, sink: Sink) -> None:
    # Postfix relays at most 50 recipients per transaction (smtp_destination_recipient_
    # limit): 60 recipients arrive as two deliveries of the same Message-ID.
    rcpts = [f"user{n:02d}@example.org" for n in range(60)]
    _, raw = make_message()
    got = lab.deliver(sink, raw, "client@mairie-exemple.fr", rcpts)
    assert len(got) == 2
    assert got.rcpt_tos == sorted(rcpts) and len(got.rcpt_list) == 60


@pytest.mark.postfix
def test_missing_milter_socket_tempfails(lab: PostfixLab, milters: MilterLauncher) -> None:
    absent = lab.milter_dir / "absent.sock"
    milters.attach(f"unix:{absent}", default_action="tempfail")
    _, raw = make_message()

    with pytest.raises(SmtpRejected) as info:
        lab.send(raw, "client@mairie-exemple.fr", ["team@example.org"])

    assert info.value.stage in ("mail", "rcpt", "data")
    assert info.value.code == 451 and info.value.temporary
    assert lab.queue_count() == 0
    lab.wait_log(rf"connect to Milter service unix:{absent}: No such file or directory")


@pytest.mark.postfix
def test_killed_milter_tempfails_then_restart_delivers(
        lab: PostfixLab, sink: Sink, milters: MilterLauncher) -> None:
    noop = milters.noop()
    noop.kill()
    _, raw = make_message()
    with pytest.raises(SmtpRejected) as info:
        lab.send(raw, "client@mairie-exemple.fr", ["team@example.org"])
    assert info.value.temporary

    noop.restart()
    mid, raw = make_message()
    got = lab.deliver(sink, raw, "client@mairie-exemple.fr", ["team@example.org"])
    assert got.rcpt_tos == ["team@example.org"]
    assert sink.find_now(mid) == got


@pytest.mark.postfix
def test_sink_down_defers_then_restart_delivers(lab: PostfixLab, sink: Sink) -> None:
    port = sink.port
    sink.stop()
    offset = lab.log_offset()
    mid, raw = make_message()
    lab.send(raw, "client@mairie-exemple.fr", ["team@example.org"])
    lab.wait_log(r"status=deferred .*Connection refused", since=offset)
    assert lab.queue_count() == 1

    sink.start()
    assert sink.port == port
    lab.flush()
    lab.wait_queue_empty()
    assert sink.find(mid).rcpt_tos == ["team@example.org"]


@pytest.mark.postfix
def test_postconf_change_is_undone_for_the_next_test(lab: PostfixLab) -> None:
    lab.postconf({"message_size_limit": "1000", "smtpd_banner": "$myhostname test"})
    _, raw = make_message("x" * 2000)
    with pytest.raises(SmtpRejected) as info:
        lab.send(raw, "client@mairie-exemple.fr", ["team@example.org"])
    assert info.value.code == 552
    assert lab.config_changed

    lab.reset_config()
    assert not lab.config_changed
    lab.send(raw, "client@mairie-exemple.fr", ["team@example.org"])
    lab.wait_queue_empty()


@pytest.mark.protocol
@pytest.mark.parametrize("noreply", [False, True], ids=["replies", "noreply"])
def test_protocol_client_against_noop(protocol_milters: MilterLauncher,
                                      noreply: bool) -> None:
    noop = protocol_milters.noop(noreply=noreply)
    headers = [("From", "client@mairie-exemple.fr"), ("Subject", "aide")]
    with MilterClient(noop.socket_path, timeout=5) as client:
        assert client.actions == 0            # a no-op milter asks for no action
        for qid in ("AAA111", "BBB222"):      # two messages on one connection
            result = client.run_message("client@mairie-exemple.fr",
                                        ["team@example.org", "bob@example.org"],
                                        headers, b"caf\xe9 8-bit body\r\n" * 3,
                                        macros={"i": qid})
            assert result.reply == "accept" and result.stage == "eom"
            assert result.actions == []
            assert result.added_rcpts == [] and result.deleted_rcpts == []
            assert len(result.added_headers) == 0 and result.new_body is None
        # An aborted message, then one more on the same connection.
        client.mail("other@example.net")
        client.rcpt("team@example.org")
        client.abort()
        assert client.run_message("a@b.example", ["c@d.example"], [], b"x\r\n").accepted
    noop.wait_log(r"qid=BBB222 from=<client@mairie-exemple.fr> rcpts=2 headers=2 body=51 ")


@pytest.mark.protocol
def test_protocol_client_garbage_closes_connection(protocol_milters: MilterLauncher) -> None:
    noop = protocol_milters.noop()
    client = MilterClient(noop.socket_path, timeout=5).open(negotiate=False)
    try:
        client.send_raw(b"\x00\x00\x00\x05Zjunk")     # unknown command before optneg
        assert client.closed_by_peer(timeout=5)
    finally:
        client.close()
    # The milter survives and serves the next connection.
    with MilterClient(noop.socket_path, timeout=5) as client:
        assert client.run_message("a@b.example", ["c@d.example"], [], b"x\r\n").accepted


def test_dump_toml_round_trips() -> None:
    data = {"milter": {"socket": "unix:/tmp/x.sock", "timeout": 5, "on_error": "accept"},
            "clients": {"mairie-exemple.fr": "mairie-exemple", "a.b@c.example": "x"},
            "watch": [{"name": "team", "addresses": ["*@example.org"], "mode": "copy"},
                      {"name": "sales", "addresses": ["commercial@example.org"]}],
            "classifier": {"threshold": 5.0, "weights": {"greeting": 0.5}},
            "autoreply": {"enabled": False, "paste_url": 'https://p.example/"q"\\'}}
    assert tomllib.loads(dump_toml(data)) == data
