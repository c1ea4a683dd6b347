"""When programs start in a replay: as recorded, Poisson at a rate, or a closed loop of N in flight.

Open-loop processes (recorded, Poisson) are a list of start times fixed in advance; a closed loop
depends on when programs finish, so it is an object the replay asks "a program finished at t:
what starts now?". Both draw from a seed and never read a clock.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import numpy as np

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.format import Program


class ArrivalKind(str, enum.Enum):
    RECORDED = "recorded"
    POISSON = "poisson"
    CLOSED_LOOP = "closed-loop"


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalSpec:
    kind: ArrivalKind
    rate_per_s: float | None = None  # Poisson
    num_in_flight: int | None = None  # closed loop
    seed: int = 0


def arrival_spec(kind: str, *, rate_per_s: float | None = None, num_in_flight: int | None = None,
                 seed: int = 0) -> ArrivalSpec:
    """Build a spec from a name; the error lists the valid ones and the missing parameter."""
    try:
        k = ArrivalKind(kind)
    except ValueError:
        valid = ", ".join(a.value for a in ArrivalKind)
        raise WorkloadError(f"unknown arrival process {kind!r}; valid: {valid}", field="arrivals") from None
    if k is ArrivalKind.POISSON and not (rate_per_s and rate_per_s > 0):
        raise WorkloadError("poisson arrivals need rate_per_s > 0", field="rate_per_s")
    if k is ArrivalKind.CLOSED_LOOP and not (num_in_flight and num_in_flight > 0):
        raise WorkloadError("closed-loop arrivals need num_in_flight >= 1", field="num_in_flight")
    return ArrivalSpec(kind=k, rate_per_s=rate_per_s, num_in_flight=num_in_flight, seed=seed)


def recorded_arrivals(programs: list[Program]) -> list[tuple[float, Program]]:
    """Programs at their recorded arrival times, shifted so the first starts at 0, in time order."""
    if not programs:
        return []
    t0 = min(p.arrival_s for p in programs)
    return sorted(((p.arrival_s - t0, p) for p in programs), key=lambda tp: tp[0])


def poisson_arrivals(programs: list[Program], *, rate_per_s: float, seed: int = 0) -> list[tuple[float, Program]]:
    """Programs in file order, exponential gaps with mean 1/rate; the first starts at 0."""
    if rate_per_s <= 0:
        raise WorkloadError(f"rate_per_s must be > 0 (got {rate_per_s})", field="rate_per_s")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=len(programs))
    if len(gaps):
        gaps[0] = 0.0
    return list(zip(np.cumsum(gaps).tolist(), programs))


class ClosedLoop:
    """N programs in flight: each finish admits the next program in file order."""

    def __init__(self, programs: list[Program], *, num_in_flight: int):
        if num_in_flight < 1:
            raise WorkloadError(f"num_in_flight must be >= 1 (got {num_in_flight})", field="num_in_flight")
        self._queue = deque(programs)
        self.num_in_flight = num_in_flight
        self._running = 0

    def start(self) -> list[tuple[float, Program]]:
        """The programs that start at t=0."""
        out = []
        while self._queue and self._running < self.num_in_flight:
            out.append((0.0, self._queue.popleft()))
            self._running += 1
        return out

    def on_finish(self, now_s: float) -> list[tuple[float, Program]]:
        """A program finished at ``now_s``: the programs that start then."""
        if self._running <= 0:
            raise WorkloadError("on_finish called with no program in flight", field="num_in_flight")
        self._running -= 1
        if not self._queue:
            return []
        self._running += 1
        return [(now_s, self._queue.popleft())]

    @property
    def done(self) -> bool:
        return not self._queue and self._running == 0


def open_loop_arrivals(spec: ArrivalSpec, programs: list[Program]) -> list[tuple[float, Program]]:
    if spec.kind is ArrivalKind.RECORDED:
        return recorded_arrivals(programs)
    if spec.kind is ArrivalKind.POISSON:
        return poisson_arrivals(programs, rate_per_s=spec.rate_per_s or 0.0, seed=spec.seed)
    raise WorkloadError("a closed loop has no fixed arrival times; use ClosedLoop", field="arrivals")
