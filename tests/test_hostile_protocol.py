"""Hostile traffic on the milter socket itself (no Postfix): garbage, giant lengths, stalled
peers, crowds of connections, and busy sessions carrying many messages.

The milter must survive all of it, keep serving well-behaved clients at once, and keep
its memory and file descriptors bounded.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.fuzzing import milter_view
from support.load import proc_status, support_messages
from support.milterclient import MilterClient
from support.net import wait_until
from support.world import CLIENT, example_sections

MiB = 1024 * 1024
_probes = itertools.count(1)


def settled(milter) -> dict:
    """The milter's process status once every connection it opens lazily is open: the
    state writer's and the learned state's SQLite files (their WAL is opened at the
    first transaction, the writer commits up to 0.1 s after a decision)."""
    healthy(milter)
    time.sleep(0.5)
    healthy(milter)
    time.sleep(0.5)
    return proc_status(milter.pid)


def healthy(milter) -> None:
    """The milter is alive and decides a normal message promptly (a fresh one each time:
    a resend would rightly be a duplicate)."""
    assert milter.running, milter.log_tail()
    msg = support_messages(1, tag=f"probe{next(_probes)}", secret_every=0,
                           seed=time.monotonic_ns())[0]
    headers, body = milter_view(msg.raw)
    started = time.monotonic()
    with MilterClient(milter.socket_path, timeout=10) as client:
        result = client.run_message(
            CLIENT, ["contact@example.org"], [(n, v.lstrip(b" ")) for n, v in headers], body)
    assert result.reply == "accept"
    assert result.added_headers.get("X-Helpdesk-Request", "").startswith("support;")
    assert time.monotonic() - started < 2.0


# --- garbage --------------------------------------------------------------------------

COMMANDS = b"ABCDEHKLMNOQRTU" + bytes(range(0, 256, 37))

packets = st.one_of(
    # well framed, any command, random payload
    st.tuples(st.sampled_from(list(COMMANDS)), st.binary(max_size=300)).map(
        lambda cp: struct.pack("!L", len(cp[1]) + 1) + bytes([cp[0]]) + cp[1]),
    # lying lengths: shorter, longer, zero, huge
    st.tuples(st.sampled_from([0, 1, 2, 5, 65535, 65536, 2**20, 2**31 - 1, 2**32 - 1]),
              st.binary(max_size=40)).map(lambda lp: struct.pack("!L", lp[0]) + lp[1]),
    # a valid negotiation packet, then anything
    st.binary(max_size=40).map(
        lambda b: struct.pack("!LcLLL", 13, b"O", 6, 0x1FF, 0x1FFFFF) + b),
    st.binary(min_size=1, max_size=200),
)


def test_random_packets_never_hurt_the_milter(protocol_milters):
    milter = protocol_milters.helpdesk(example_sections())
    before = settled(milter)
    cases = [0]

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(stream=st.lists(packets, min_size=1, max_size=6))
    def run(stream: list[bytes]) -> None:
        cases[0] += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(milter.socket_path))
            try:
                for chunk in stream:
                    s.sendall(chunk)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):          # until the milter gives up on us
                    pass
            except OSError:
                pass                          # reset, timeout: the milter hung up
        assert milter.running, f"the milter died on {stream!r}\n{milter.log_tail()}"

    run()
    healthy(milter)
    # the milter closes its side of the last connections a moment after we do
    wait_until(lambda: proc_status(milter.pid)["fds"] <= before["fds"] + 2, 10,
               "the milter to close the garbage connections")
    after = proc_status(milter.pid)
    print(f"\n{cases[0]} garbage streams; VmHWM {before['VmHWM'] / MiB:.0f} -> "
          f"{after['VmHWM'] / MiB:.0f} MiB, fds {before['fds']} -> {after['fds']}")
    assert after["VmHWM"] - before["VmHWM"] < 32 * MiB
    assert after["fds"] <= before["fds"] + 2


def test_a_stalled_peer_does_not_stall_the_others(protocol_milters):
    milter = protocol_milters.helpdesk(example_sections())
    stalled = MilterClient(milter.socket_path, timeout=5).open()
    try:
        stalled.connect()
        stalled.mail(CLIENT)
        # half a header packet, then silence (a Postfix stuck mid-write)
        stalled.send_raw(struct.pack("!L", 200) + b"LSubject\0Mot de pa")
        healthy(milter)
    finally:
        stalled.close()
    healthy(milter)


def test_a_crowd_of_idle_connections_is_survived_and_released(protocol_milters):
    milter = protocol_milters.helpdesk(example_sections())
    before = settled(milter)
    crowd = []
    try:
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(milter.socket_path))
            crowd.append(s)
        healthy(milter)
        during = proc_status(milter.pid)
    finally:
        for s in crowd:
            s.close()

    def released() -> bool:
        return proc_status(milter.pid)["fds"] <= before["fds"] + 2

    wait_until(released, 10, "the milter to close the crowd's connections")
    after = proc_status(milter.pid)
    print(f"\n200 idle connections: fds {before['fds']} -> {during['fds']} -> {after['fds']}, "
          f"threads {before['Threads']} -> {during['Threads']} -> {after['Threads']}")
    healthy(milter)
