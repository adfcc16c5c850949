"""One process per unix socket: a second instance refuses to start.

libmilter removes an existing socket file before it binds, so a second
``helpdesk-milter run`` started by hand on the same socket used to take it over
silently, leaving the first running and unreachable.  Now the second one exits 1
with a message naming the socket and the pid that serves it, and the first keeps
serving the very same socket.  A stale socket file (a killed process) is still
replaced, as before.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from support.milterclient import MilterClient
from support.net import unix_accepts, wait_until
from support.world import example_sections


def run_second(config: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "helpdesk_milter", "run", "--config", config],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def one_message(path) -> str:
    with MilterClient(path) as client:
        result = client.run_message("secretariat@mairie-exemple.fr", ["alice@example.org"],
                                    [("From", "secretariat@mairie-exemple.fr"),
                                     ("Subject", "Imprimante en panne")],
                                    b"Bonjour,\r\nL'imprimante ne marche plus depuis ce "
                                    b"matin, pouvez-vous passer ?\r\n",
                                    macros={"i": "OWNER1"})
    return result.reply


def test_second_instance_refuses_and_the_first_keeps_serving(protocol_milters):
    first = protocol_milters.helpdesk(example_sections())
    config = first.argv[first.argv.index("--config") + 1]
    inode = os.stat(first.socket_path).st_ino
    second = run_second(config)
    assert second.returncode == 1, second.stderr
    assert (f"refusing to start: another helpdesk-milter (pid {first.pid}) already serves "
            f"unix:{first.socket_path}") in second.stderr
    assert "Traceback" not in second.stderr
    # the same socket file, still served by the first
    assert os.stat(first.socket_path).st_ino == inode
    assert first.running
    assert one_message(first.socket_path) == "accept"
    first.wait_log(r"OWNER1: verdict=")


def test_a_socket_held_by_another_program_is_refused(protocol_milters):
    config = protocol_milters.write_config(example_sections(), name="squatted")
    path = protocol_milters.socket_path("squatted")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)
        second = run_second(str(config))
        assert second.returncode == 1, second.stderr
        assert f"something already listens on {path}" in second.stderr
        assert path.exists()


def test_a_stale_socket_and_lock_file_are_taken_over(protocol_milters):
    config = protocol_milters.write_config(example_sections(), name="stale")
    path = protocol_milters.socket_path("stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))             # bound, never listening: a killed process's file
    lock = path.with_name(path.name + ".lock")
    lock.write_text("999999\n")         # left behind; nobody holds it
    # started by hand (the test harness would remove the stale file itself)
    proc = subprocess.Popen([sys.executable, "-m", "helpdesk_milter", "run", "--config",
                             str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or unix_accepts(path), 30,
                   "the milter to listen on the stale socket's path")
        assert proc.poll() is None
        assert one_message(path) == "accept"
        assert lock.read_text() == f"{proc.pid}\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            unix_accepts(path, timeout=0.2)      # libmilter notices SIGTERM on a wake-up
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0].decode()
    assert proc.returncode == 0, output


def test_a_socket_folder_that_cannot_be_made_is_a_clear_refusal(tmp_path):
    """The folder of a unix socket must exist or be creatable; when it is not (here:
    its parent is a file), ``run`` says so and exits 1, with no traceback."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the socket's folder should be\n")
    from support.milterproc import write_config
    config = write_config(tmp_path / "blocked.toml", socket_path=blocker / "milter.sock",
                          database=tmp_path / "blocked.db", sections=example_sections())
    result = run_second(str(config))
    assert result.returncode == 1, result.stderr
    assert f"cannot prepare the socket unix:{blocker / 'milter.sock'}" in result.stderr
    assert "Traceback" not in result.stderr
