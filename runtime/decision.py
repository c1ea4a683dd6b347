"""The one thing the scheduler emits per scheduling step.

A `Decision` is plain data: it can be logged (`to_dict`), compared in tests, replayed, and sent
over the wire. Engines apply it; they never ask the scheduler anything else.

Eviction priorities follow SGLang's convention: a radix node with a *smaller* priority is evicted
first, so a higher number keeps a prefix longer. `priority_of_steps` maps steps-to-execution onto
that scale: an agent due now gets the top, one that never runs again gets 0. Only prefixes whose
priority changed since the previous decision are listed (a decision is a delta).

`reuse` names, for calls submitted since the previous decision, spans of their prompts that a
finished call of the same program already produced (`runtime/reuse_plan.ReuseHint`: source call,
offset in its output, offset in the new prompt, length). An engine that holds the source's KV may
place it instead of computing it (the local engine does); others ignore it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

from agentflow.runtime.reuse_plan import ReuseHint

MAX_PRIORITY = 1_000_000_000  # priority of a prefix needed now; 1/1000 resolution up to 10^6


def priority_of_steps(steps: float) -> int:
    """Steps-to-execution -> SGLang priority (higher keeps). inf (never needed again) -> 0."""
    if math.isinf(steps):
        return 0
    return max(1, MAX_PRIORITY - int(round(min(steps, 1e6) * 1000)))


class UnpinReason(enum.Enum):
    NEXT_CALL = "next_call"  # the program's next call arrived: the pin did its job
    TTL_EXPIRED = "ttl_expired"
    CANCELLED = "cancelled"  # the program ended or was cancelled
    WORKER_LOST = "worker_lost"
    PRESSURE = "pressure"  # released to admit waiting work (lowest expected payoff first)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvictionPriority:
    prefix: str
    priority: int  # SGLang convention: higher is kept longer
    steps_to_execution: float  # what it came from (inf: no live user will need it)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pin:
    prefix: str
    worker: str | None
    program_id: Hashable
    ttl_s: float
    expires_at_s: float
    num_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unpin:
    prefix: str
    worker: str | None
    program_id: Hashable
    reason: UnpinReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Prefetch:
    prefix: str
    worker: str
    deadline_s: float  # when the call that needs it is expected
    num_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    call_id: Hashable
    workers: tuple[str, ...]  # preference order; empty: anywhere


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    step: int
    time_s: float
    admit: tuple[Hashable, ...] = ()  # waiting calls, in the order to admit them
    priorities: tuple[EvictionPriority, ...] = ()  # changed since the previous decision
    pins: tuple[Pin, ...] = ()
    unpins: tuple[Unpin, ...] = ()
    prefetches: tuple[Prefetch, ...] = ()
    routes: tuple[Route, ...] = ()
    reuse: tuple[ReuseHint, ...] = ()  # cross-agent KV reuse: finished calls' outputs inside new prompts
    activated: tuple[Hashable, ...] = ()  # parked programs made active: their held calls are routed now
    notes: tuple[str, ...] = field(default=())  # why, in words, for logs and docs

    @property
    def empty(self) -> bool:
        return not (self.admit or self.priorities or self.pins or self.unpins or self.prefetches or self.routes
                    or self.reuse or self.activated)

    def to_dict(self) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            if isinstance(x, enum.Enum):
                return x.value
            if isinstance(x, float) and math.isinf(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return x

        return clean(asdict(self))
