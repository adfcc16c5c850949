"""Optional CPU accounting per decision stage (parse, classify, dedup, secrets...).

The hot path marks its stages with ``with stage("classify"):``.  Nothing is
measured unless a caller (``make bench``) opened ``recording()`` in the same
thread: then each stage's CPU time (``time.thread_time``) is added to the dict
it yields.  When no recording is active a stage costs one ContextVar lookup.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[dict[str, float] | None] = ContextVar("helpdesk_stage_times",
                                                           default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    times = _current.get()
    if times is None:
        yield
        return
    started = time.thread_time()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + time.thread_time() - started


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Collect stage CPU seconds for the code run inside this block (this thread)."""
    times: dict[str, float] = {}
    token = _current.set(times)
    try:
        yield times
    finally:
        _current.reset(token)
