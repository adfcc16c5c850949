"""Prometheus metrics: what the milter decided, counted, and how long deciding took.

Off by default; ``[metrics] listen = "127.0.0.1:9894"`` serves them at
``/metrics`` with the official ``prometheus_client`` (its own HTTP thread).

The contract: counting costs the message a few microseconds.  So the labelled
children are bound once (at start for the label values we know, at first sight
for the others) and kept in plain dicts keyed by the label values as the
decision holds them: no ``labels()`` call, no string formatting per message.
``NullMetrics`` (no endpoint) costs a method call.

What is exported (every name starts with ``helpdesk_milter_``):

* ``messages_total{verdict,action}`` -- one per message: the decision's verdict
  (support, followup, other; ``unwatched`` for mail accepted at the end of the
  envelope; ``error`` when an internal error sent it through on_error) and its
  action (none, tag, copy, redirect, duplicate, skip, step-out, accept or tempfail);
* ``duplicates_total{match}`` -- duplicates recognised, by match;
* ``secret_messages_total{kind}`` -- messages with a secret of that kind;
* ``guidance_total{outcome,reason}`` -- guidance mail queued, or suppressed and why;
* ``guidance_deliveries_total{outcome}`` -- the outbox sender's attempts: sent,
  retry (the relay deferred or was down), failed (given up);
* ``internal_errors_total{stage}`` -- internal errors, by milter step;
* ``decision_seconds`` -- histogram of the time from end of message to decision;
* ``reloads_total{result}`` -- SIGHUP reloads, ok or failed;
* ``observe_mode`` -- 1 while milter.mode = "observe".

In observe mode the counters count what the decisions would have done.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .policy import Decision

log = logging.getLogger("helpdesk_milter")

PREFIX = "helpdesk_milter"
VERDICTS = ("support", "followup", "other")
ACTIONS = ("none", "tag", "copy", "redirect", "duplicate", "skip")
# Decisions take from about a millisecond (routing) to hundreds (DKIM lookups).
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics(Protocol):
    def decided(self, d: Decision, seconds: float) -> None: ...
    def stepped_out(self) -> None: ...
    def failed(self, stage: str, fallback: str) -> None: ...
    def reloaded(self, ok: bool, *, observe: bool) -> None: ...
    def delivered(self, outcome: str) -> None: ...
    def close(self) -> None: ...


class NullMetrics:
    """No endpoint: every call does nothing."""

    def decided(self, d: Decision, seconds: float) -> None:
        pass

    def stepped_out(self) -> None:
        pass

    def failed(self, stage: str, fallback: str) -> None:
        pass

    def reloaded(self, ok: bool, *, observe: bool) -> None:
        pass

    def delivered(self, outcome: str) -> None:
        pass

    def close(self) -> None:
        pass


class _Family:
    """One labelled metric and its children, bound once per label values."""

    __slots__ = ("children", "metric")

    def __init__(self, metric: Any, known: tuple[tuple[str, ...], ...] = ()):
        self.metric = metric
        self.children: dict[Any, Any] = {}
        for values in known:
            self.child(values if len(values) > 1 else values[0])

    def child(self, key: Any) -> Any:
        """The child for ``key`` (a label value, or a tuple of them); bound at first use."""
        found = self.children.get(key)
        if found is None:
            found = self.metric.labels(*key) if isinstance(key, tuple) \
                else self.metric.labels(key)
            # a plain dict write: readers see the old or the new dict entry, both fine
            self.children[key] = found
        return found


class PrometheusMetrics:
    """The metrics, in a registry of their own (tests run several in one process)."""

    def __init__(self, *, observe: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        self._server: Any = None
        self._thread: Any = None
        self.messages = _Family(
            Counter(f"{PREFIX}_messages", "messages by verdict and action",
                    ["verdict", "action"], registry=registry),
            (*((v, a) for v in VERDICTS for a in ACTIONS),
             ("unwatched", "step-out"), ("error", "accept"), ("error", "tempfail")))
        self._unwatched = self.messages.child(("unwatched", "step-out"))
        self.duplicates = _Family(
            Counter(f"{PREFIX}_duplicates", "duplicates recognised, by match",
                    ["match"], registry=registry),
            (("same-transaction",), ("message-id",), ("text",)))
        self.secrets = _Family(
            Counter(f"{PREFIX}_secret_messages",
                    "messages with a secret of this kind (kinds only, never values)",
                    ["kind"], registry=registry))
        self.guidance = _Family(
            Counter(f"{PREFIX}_guidance", "guidance mail: queued, or suppressed and why",
                    ["outcome", "reason"], registry=registry),
            (("queued", ""),))
        self.errors = _Family(
            Counter(f"{PREFIX}_internal_errors",
                    "internal errors (the message got milter.on_error), by milter step",
                    ["stage"], registry=registry),
            (("envfrom",), ("data",), ("body",), ("eom",)))
        self.reloads = _Family(
            Counter(f"{PREFIX}_reloads", "configuration reloads (SIGHUP), ok or failed",
                    ["result"], registry=registry),
            (("ok",), ("failed",)))
        self.deliveries = _Family(
            Counter(f"{PREFIX}_guidance_deliveries",
                    "guidance mail handed to the relay by the outbox sender: sent, "
                    "retry (deferred), failed (given up)", ["outcome"], registry=registry),
            (("sent",), ("retry",), ("failed",)))
        self.latency = Histogram(f"{PREFIX}_decision_seconds",
                                 "time from end of message to the decision applied",
                                 buckets=BUCKETS, registry=registry)
        self.observe_mode = Gauge(f"{PREFIX}_observe_mode",
                                  "1 while milter.mode is observe (nothing is changed)",
                                  registry=registry)
        self.observe_mode.set(1 if observe else 0)
        # guidance outcomes as the decision writes them -> the child to count
        self._guidance_key: dict[str, tuple[str, str]] = {"queued": ("queued", "")}

    # --- counting (milter threads) ----------------------------------------------------

    def decided(self, d: Decision, seconds: float) -> None:
        self.latency.observe(seconds)
        self.messages.child((d.verdict if d.inspected else "unwatched", d.action)).inc()
        if d.duplicate is not None:
            self.duplicates.child(d.duplicate).inc()
        for kind in d.secret_kinds:
            self.secrets.child(kind).inc()
        if d.guidance is not None:
            key = self._guidance_key.get(d.guidance)
            if key is None:
                outcome, _, reason = d.guidance.partition(":")
                key = self._guidance_key[d.guidance] = (outcome, reason)
            self.guidance.child(key).inc()

    def stepped_out(self) -> None:
        self._unwatched.inc()

    def failed(self, stage: str, fallback: str) -> None:
        self.errors.child(stage).inc()
        self.messages.child(("error", fallback)).inc()

    def reloaded(self, ok: bool, *, observe: bool) -> None:
        self.reloads.child("ok" if ok else "failed").inc()
        if ok:
            self.observe_mode.set(1 if observe else 0)

    def delivered(self, outcome: str) -> None:
        """The outbox sender's attempt at one guidance mail (its thread)."""
        self.deliveries.child(outcome).inc()

    # --- the endpoint -----------------------------------------------------------------

    def serve(self, listen: str) -> None:
        """Serve ``/metrics`` on HOST:PORT in a daemon thread; raises OSError when the
        address cannot be bound (the caller refuses to start: a silent metrics gap is
        worse than a clear error)."""
        from prometheus_client import start_http_server

        host, _, port = listen.rpartition(":")
        self._server, self._thread = start_http_server(int(port), addr=host.strip("[]"),
                                                       registry=self.registry)
        log.info("metrics on http://%s/metrics", listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def make_metrics(listen: str, *, observe: bool = False) -> Metrics:
    """The metrics for ``[metrics] listen``: Prometheus when set, else nothing."""
    if not listen:
        return NullMetrics()
    metrics = PrometheusMetrics(observe=observe)
    metrics.serve(listen)
    return metrics
