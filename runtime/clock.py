"""Injected time. The scheduler never reads the wall clock itself: tests jump a ManualClock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float: ...


class MonotonicClock:
    """Real time (seconds since an arbitrary start, never going back)."""

    def now_s(self) -> float:
        return time.monotonic()


class ManualClock:
    """Time that moves only when told to (tests, simulators)."""

    def __init__(self, start_s: float = 0.0):
        self._t = float(start_s)

    def now_s(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"time cannot go back ({seconds} s)")
        self._t += seconds
        return self._t

    def set(self, t_s: float) -> None:
        if t_s < self._t:
            raise ValueError(f"time cannot go back ({t_s} < {self._t})")
        self._t = float(t_s)


class ScaledClock:
    """Wall time at `time_scale` simulated seconds per second, in absolute terms (seconds since
    the epoch, scaled), so a restarted process continues the same timeline: the service and its
    simulated workers run on it."""

    def __init__(self, time_scale: float = 1.0):
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0 (got {time_scale})")
        self.time_scale = float(time_scale)

    def now_s(self) -> float:
        return time.time() * self.time_scale
