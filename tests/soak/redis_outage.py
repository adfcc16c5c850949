#!/usr/bin/env python3
"""Two MX hosts, one Redis, and Redis killed in the middle of the run.

    tests/soak/redis_outage.py [--messages 1000] [--connections 5] [--fault kill|pause]
                               [--json FILE]

Starts a capture sink, two private Postfix instances relaying to it, one private
redis-server and, on each Postfix, helpdesk-milter with ``[state] backend =
"redis"`` (``milter_default_action = tempfail``: a milter failure would show).
Half the messages go through each MX, over parallel SMTP sessions that retry a
4xx like an MTA.  When 30 % of the messages are accepted, Redis is SIGKILLed;
at 60 % it is started again (empty: no persistence).  With ``--fault pause`` it
is SIGSTOPped instead (it accepts connections and never answers: a hung
server, each command's timeout is what bounds the wait) and SIGCONTed.  Then:

- counts in = counts out: every accepted message reached every original
  recipient (a redirect group's recipient replaced by assistance), none lost;
- each milter logged the outage once (not once per message) and its end once,
  and how long after Redis came back its first message used Redis again;
- a request through MX1 and its resend through MX2 are duplicates again.

Exit status 0 when every check held; the last line printed is a JSON report.
The short version of this run is part of ``make test`` (tests/test_e2e_redis.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from support.load import CountingSink, account, send_many, support_messages  # noqa: E402
from support.milterproc import MilterLauncher  # noqa: E402
from support.postfix import PostfixLab  # noqa: E402
from support.redis import RedisServer  # noqa: E402
from support.world import example_sections  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=5, help="SMTP sessions per MX")
    ap.add_argument("--fault", choices=("kill", "pause"), default="kill")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hdm-redis-soak-")))
        sink = stack.enter_context(CountingSink(work / "sink"))
        labs = [stack.enter_context(PostfixLab(sink.port)) for _ in range(2)]
        server = RedisServer(work / "redis").start()
        stack.callback(server.close)
        milters = []
        for n, lab in enumerate(labs, 1):
            launcher = stack.enter_context(MilterLauncher(work / f"mx{n}", lab))
            milters.append(launcher.helpdesk(example_sections(
                state={"backend": "redis", "redis_url": server.url, "key_prefix": "soak:",
                       "timeout": "0.3s"}), name=f"mx{n}", default_action="tempfail"))
        report = run(args, labs, sink, server, milters)
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def run(args: argparse.Namespace, labs: list[PostfixLab], sink: CountingSink,
        server: RedisServer, milters: list[Any]) -> dict[str, Any]:
    messages = support_messages(args.messages, tag=f"rsoak{int(time.time())}")
    halves = [messages[0::2], messages[1::2]]
    kill_at, back_at = int(0.3 * args.messages), int(0.6 * args.messages)
    accepted = [0]
    lock = threading.Lock()
    events: dict[str, float] = {}

    def on_accept(_: int) -> None:
        with lock:
            accepted[0] += 1
            n = accepted[0]
        if n == kill_at:
            server.kill() if args.fault == "kill" else server.pause()
            events["killed"] = time.monotonic()
        elif n == back_at:
            server.start() if args.fault == "kill" else server.resume()
            events["restarted"] = time.monotonic()

    recovered: dict[str, float] = {}

    def watch_recovery() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(recovered) < len(milters):
            for m in milters:
                if m.log_path.name not in recovered and "is back after" in m.log_text():
                    recovered[m.log_path.name] = time.monotonic()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_recovery, daemon=True)
    watcher.start()
    reports: list[Any] = [None, None]

    def send(i: int) -> None:
        reports[i] = send_many(labs[i].smtp_port, halves[i], connections=args.connections,
                               deadline=600, on_accept=on_accept)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lab in labs:
        lab.wait_queue_empty(120)
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 60
    counts = [account(halves[i], reports[i], sink.rcpts_of) for i in range(2)]
    while time.monotonic() < deadline and any(c["in"] != c["out"] for c in counts):
        time.sleep(0.5)
        counts = [account(halves[i], reports[i], sink.rcpts_of) for i in range(2)]
    watcher.join(timeout=10)

    # shared again: a request through MX1, its resend through MX2
    probe_id = f"rprobe-{time.time_ns()}@mairie-exemple.fr"
    probe = (f"From: secretariat@mairie-exemple.fr\r\nTo: contact@example.org\r\n"
             f"Subject: Badgeuse du gymnase hors service\r\nMessage-ID: <{probe_id}>\r\n"
             "Content-Type: text/plain; charset=utf-8\r\n\r\nBonjour,\r\nLa badgeuse "
             "du gymnase municipal refuse tous les badges depuis la coupure de ce matin, "
             "les associations ne peuvent plus entrer.\r\nMerci de regarder.\r\n").encode()
    labs[0].send(probe, "secretariat@mairie-exemple.fr", ["contact@example.org"])
    labs[0].wait_queue_empty(30)
    time.sleep(0.2)
    labs[1].send(probe, "secretariat@mairie-exemple.fr",
                 ["mairie-exemple@assistance.example.org"])
    labs[1].wait_queue_empty(30)
    time.sleep(0.5)
    dup_again = bool(re.search(rf"duplicate=message-id .*<{re.escape(probe_id)}>",
                               milters[1].log_text()))

    logs = {m.log_path.name: m.log_text() for m in milters}
    restarted = events.get("restarted", 0.0)
    report: dict[str, Any] = {
        "messages": args.messages, "fault": args.fault, "elapsed_s": round(elapsed, 1),
        "redis_killed_after": kill_at, "redis_restarted_after": back_at,
        "outage_s": round(restarted - events.get("killed", restarted), 2),
        "send": [r.summary() for r in reports],
        "accounting": counts,
        "outage_lines": {k: v.count("unavailable (") for k, v in logs.items()},
        "recovered_lines": {k: v.count("is back after") for k, v in logs.items()},
        "recovered_after_restart_s": {k: round(t - restarted, 2) for k, t in recovered.items()},
        "tracebacks": {k: v.count("Traceback") for k, v in logs.items()},
        "duplicate_across_hosts_after_recovery": dup_again,
    }
    if not dup_again:
        report["probe_lines"] = [line for v in logs.values() for line in v.splitlines()
                                 if probe_id in line or "state" in line]
    report["ok"] = (
        all(c["lost"] == 0 and c["in"] == c["out"] for c in counts)
        and all(r.summary()["unsent"] == 0 and r.summary()["refused"] == 0 for r in reports)
        and all(n == 1 for n in report["outage_lines"].values())
        and all(n == 1 for n in report["recovered_lines"].values())
        and len(recovered) == len(milters)
        and all(t < 10 for t in report["recovered_after_restart_s"].values())
        and not any(report["tracebacks"].values()) and dup_again)
    return report


if __name__ == "__main__":
    sys.exit(main())
