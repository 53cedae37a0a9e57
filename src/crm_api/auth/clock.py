"""The clock identity decisions read "now" from: token issue times, revocation instants,
refresh-token and login-throttle times.

Revocation is compared to the microsecond (``auth/tokens.py``), so whether a token counts
as minted before or after a revocation depends only on the order of two readings of this
clock. Production reads the system clock; a test installs a :class:`ManualClock` with
:func:`use` and gets the same order on a loaded machine as on an idle one, instead of
having to fit its steps into one wall-clock second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000


class Clock(Protocol):
    def now_us(self) -> int:
        """Microseconds since the epoch."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1000


class ManualClock:
    """A clock that moves only when told, plus ``tick_us`` per reading, so consecutive
    events stay strictly ordered (as on a real clock) without depending on how fast the
    machine runs them."""

    def __init__(self, start_us: int, tick_us: int = 1) -> None:
        self._now_us = start_us
        self.tick_us = tick_us

    def now_us(self) -> int:
        value = self._now_us
        self._now_us += self.tick_us
        return value

    def advance(self, seconds: float) -> None:
        self._now_us += round(seconds * US)


_current: Clock = SystemClock()


def now_us() -> int:
    return _current.now_us()


def now() -> datetime:
    """The current instant, timezone-aware (UTC), exact to the microsecond."""
    return _EPOCH + timedelta(microseconds=now_us())


def to_us(when: datetime) -> int:
    """Microseconds since the epoch, exactly (``timestamp()`` is a float)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


@contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Install ``clock`` for the duration of the block (tests)."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous
