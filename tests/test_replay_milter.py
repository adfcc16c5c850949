"""The bench's replay milter applies recorded actions, message by message, in order."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from support.milterclient import MilterClient
from support.milterproc import MilterProcess
from support.replay_milter import replay_key

REPLAY = Path(__file__).parent / "support" / "replay_milter.py"
HEADERS = [("From", "secretariat@mairie-exemple.fr"), ("To", "contact@example.org"),
           ("Message-ID", "<r1@mairie-exemple.fr>"), ("Subject", "Messagerie bloquée")]
ACTION = {"strip_headers": [], "change_headers": [["Subject", 1, "Messagerie bloquée"]],
          "prepend_headers": [["Authentication-Results", "mx.example.org; dkim=none"]],
          "add_headers": [["X-Helpdesk-Request", "support; structure=mairie-exemple"]],
          "add_rcpts": ["mairie-exemple@assistance.example.org"],
          "del_rcpts": ["contact@example.org"],
          "new_body": base64.b64encode(b"Bonjour, [secret removed: password]\r\n").decode()}


def test_replays_each_recorded_decision_once(tmp_path):
    key = replay_key("<r1@mairie-exemple.fr>", ["<contact@example.org>"])
    actions = tmp_path / "actions.json"
    actions.write_text(json.dumps({key: [ACTION]}))
    socket_path = tmp_path / "replay.sock"
    milter = MilterProcess([sys.executable, str(REPLAY), "--socket", f"unix:{socket_path}",
                            "--actions", str(actions)], socket_path, tmp_path / "replay.log",
                           name="replay-milter")
    with milter:
        with MilterClient(socket_path) as client:
            first = client.run_message("secretariat@mairie-exemple.fr",
                                       ["<contact@example.org>"], HEADERS,
                                       "Bonjour, mot de passe : Tr0ub4dor&3\r\n")
        with MilterClient(socket_path) as client:
            second = client.run_message("secretariat@mairie-exemple.fr",
                                        ["<contact@example.org>"], HEADERS, "Bonjour\r\n")
    assert first.reply == second.reply == "accept"
    assert first.added_rcpts == ["mairie-exemple@assistance.example.org"]
    assert first.deleted_rcpts == ["<contact@example.org>"]
    assert first.added_headers["X-Helpdesk-Request"].startswith("support")
    assert first.new_body == b"Bonjour, [secret removed: password]\r\n"
    assert second.actions == []          # its one recorded decision is used up
