"""The milter SIGKILLed and restarted under load, through Postfix: nothing is lost.

A load generator that behaves like a sending MTA (10 parallel sessions, retries on any
4xx) sends 200 distinct messages through the lab while the milter is killed with SIGKILL
(twice) and restarted. With ``milter_default_action = tempfail`` (the lab's and the
recommended setting) every message must end up delivered, inspected, to every original
recipient (a redirect group's recipient replaced by assistance): counts in = counts out.
The cost is delay: the messages caught by the crash are temp-failed and retried.

The trade-off with ``accept``: nothing is lost either, and nothing waits, but what
arrives while the milter is down is delivered uninspected (no routing, no redaction);
the second test counts those. ``tests/soak/run.py --scenario kill`` runs the full-size
version (1,000 messages).
"""

from __future__ import annotations

import threading

from support.load import account, index_deliveries, send_many, support_messages
from support.world import example_sections

MESSAGES = 200


def kill_and_restart_at(milter, when: set[int], done: list[float]):
    """An on_accept hook: at the n-th acceptance, SIGKILL the milter and start it again
    (in a thread, so the load never waits on it)."""
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def restart() -> None:
        with lock:
            milter.kill()
            milter.start()
            done.append(1.0)

    def hook(n: int) -> None:
        if n in when:
            t = threading.Thread(target=restart, daemon=True)
            threads.append(t)
            t.start()

    return hook, threads


def test_sigkill_with_tempfail_loses_nothing(lab, sink, milters):
    milter = milters.helpdesk(example_sections(), default_action="tempfail")
    messages = support_messages(MESSAGES, tag="kill")
    restarts: list[float] = []
    hook, threads = kill_and_restart_at(milter, {MESSAGES // 4, MESSAGES * 3 // 4}, restarts)
    report = send_many(lab.smtp_port, messages, connections=10, deadline=120,
                       on_accept=hook)
    for t in threads:
        t.join(30)
    lab.wait_queue_empty(60)
    counts = account(messages, report, index_deliveries(sink.deliveries))
    summary = report.summary()
    print(f"\nSIGKILL x{len(restarts)} with tempfail: {summary} -> {counts}")
    assert len(restarts) == 2 and milter.running
    assert not report.unsent and not report.refused, summary
    assert counts["in"] == counts["out"] == MESSAGES, counts
    assert counts["lost"] == 0, counts
    assert report.retries > 0, "the crashes were not felt: the fault was not injected"
    # Every delivered message was inspected: tempfail never lets one through unfiltered.
    uninspected = [d for d in sink.deliveries if b"\r\nX-Helpdesk-Request:" not in d.raw
                   and any(r.endswith("@example.org") for r in d.rcpt_tos)]
    assert not uninspected
    assert milter.log_text().count("helpdesk-milter listening on") == 3


def test_sigkill_with_accept_loses_nothing_but_lets_some_through_uninspected(lab, sink,
                                                                               milters):
    milter = milters.helpdesk(example_sections(), default_action="accept")
    count = MESSAGES // 2
    messages = support_messages(count, tag="killacc")
    restarts: list[float] = []
    hook, threads = kill_and_restart_at(milter, {count // 3}, restarts)
    report = send_many(lab.smtp_port, messages, connections=10, deadline=120,
                       on_accept=hook)
    for t in threads:
        t.join(30)
    lab.wait_queue_empty(60)
    counts = account(messages, report, index_deliveries(sink.deliveries))
    watched = {m.message_id for m in messages if any(r.endswith("@example.org")
                                                     for r in m.rcpts)}
    uninspected = {d.message_id for d in sink.deliveries if d.message_id in watched
                   and b"\r\nX-Helpdesk-Request:" not in d.raw}
    print(f"\nSIGKILL with accept: {report.summary()} -> {counts}; "
          f"{len(uninspected)} of {len(watched)} watched messages delivered uninspected")
    assert counts["in"] == counts["out"] == count and counts["lost"] == 0, counts
    assert not report.unsent and not report.refused
