"""Where the executor's decisions come from: a `SchedulerLink`.

    executor ──send([events])──> link ──> scheduler: apply each event, take one step
             <──── Decision ─────┘

The executor needs exactly one thing from a scheduler: "here is what happened; what now?".
`send` applies the events in order and returns the Decision of one scheduling step (possibly
empty). `send([])` is a plain step: the executor ticks it so that pins expire on time while
nothing else happens.

`InProcessLink` holds a `Scheduler` in this process. A link to the scheduler service (`agentflow
run FILE --engine ADDR`) implements the same two methods over gRPC: convert the events to
protobuf, call the service, convert the Decision back; nothing else in the executor changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from agentflow.runtime.clock import Clock, MonotonicClock
from agentflow.runtime.decision import Decision
from agentflow.runtime.events import Event
from agentflow.runtime.policies import Policy, make_policy
from agentflow.runtime.scheduler import Scheduler, SchedulerConfig

LIVE_POLICIES = ("lru", "kvflow", "continuum", "agentflow")  # belady needs the future: replays only


@runtime_checkable
class SchedulerLink(Protocol):
    async def send(self, events: Sequence[Event]) -> Decision:
        """Apply `events` in order, take one scheduling step, return its Decision."""

    async def aclose(self) -> None: ...


class InProcessLink:
    """A program-level Scheduler in this process, on the wall clock (or an injected one)."""

    def __init__(self, policy: str | Policy = "agentflow", *, clock: Clock | None = None,
                 config: SchedulerConfig | None = None):
        if isinstance(policy, str):
            if policy not in LIVE_POLICIES:
                raise ValueError(f"unknown policy {policy!r} for a live run; valid: {', '.join(LIVE_POLICIES)}")
            policy = make_policy(policy)
        self.scheduler = Scheduler(policy, clock=clock or MonotonicClock(), config=config or SchedulerConfig())

    @property
    def policy_name(self) -> str:
        return self.scheduler.policy.name

    async def send(self, events: Sequence[Event]) -> Decision:
        for e in events:
            self.scheduler.apply(e)
        return self.scheduler.step()

    async def aclose(self) -> None:
        return None


__all__ = ["LIVE_POLICIES", "InProcessLink", "SchedulerLink"]
