"""Optional CPU accounting per decision stage (parse, classify, dedup, secrets...).

The hot path marks its stages with ``with stage("classify"):``.  Nothing is
measured unless a caller (``make bench``) opened ``recording()`` in the same
thread: then each stage's CPU time (``time.thread_time``) is added to the dict
it yields.  When no recording is active a stage costs one ContextVar lookup
(and no generator: a ``@contextmanager`` stage cost ~6% of a decision).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

_current: ContextVar[dict[str, float] | None] = ContextVar("helpdesk_stage_times",
                                                           default=None)


class _Timed:
    """Adds the CPU time of its ``with`` block to ``times[name]``."""

    __slots__ = ("name", "started", "times")

    def __init__(self, times: dict[str, float], name: str) -> None:
        self.times, self.name = times, name
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        times = self.times
        times[self.name] = times.get(self.name, 0.0) + time.thread_time() - self.started


_UNTIMED = nullcontext()


def stage(name: str) -> AbstractContextManager[None]:
    """``with stage("classify"):`` times the block when a recording is open."""
    times = _current.get()
    if times is None:
        return _UNTIMED
    return _Timed(times, name)


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Collect stage CPU seconds for the code run inside this block (this thread)."""
    times: dict[str, float] = {}
    token = _current.set(times)
    try:
        yield times
    finally:
        _current.reset(token)
