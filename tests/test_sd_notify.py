"""systemd readiness: with ``NOTIFY_SOCKET`` set (the unit's ``Type=notify``), ``run``
sends ``READY=1`` once its socket accepts connections, so that ``systemctl start``
returns when Postfix can connect and no ``systemctl reload`` (SIGHUP) reaches the
process before it serves.  The notification socket here is a datagram socket the test
binds, as systemd's is.
"""

from __future__ import annotations

import socket
import time

from support.net import unix_accepts
from support.world import example_sections


def test_ready_is_sent_once_the_socket_accepts(protocol_milters, tmp_path):
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        milter = protocol_milters.helpdesk(example_sections(),
                                           env={"NOTIFY_SOCKET": str(notify_path)})
        message = notify.recv(4096).decode()
        received = time.monotonic()
        assert message.startswith("READY=1\n"), message
        assert f"STATUS=listening on unix:{milter.socket_path}" in message
        assert unix_accepts(milter.socket_path)          # ready means serving
        notify.settimeout(1.0)
        try:
            extra = notify.recv(4096)
        except TimeoutError:
            extra = b""
        assert extra == b"", extra                        # one READY, not one per poll
    assert milter.running and time.monotonic() - received < 5

