"""Which waiting call goes first.

- call FCFS: by submission (what an engine does on its own);
- program FCFS (Continuum): by the program's first arrival, so a program that has started is
  finished before newer ones; a call whose program held a pin when it arrived goes first (its
  KV is on the GPU: serving it now is cheap, and waiting would risk losing it);
- fair share (Autellix-like): least attained service (tokens served) first, with aging so a
  waiting call's key falls by `aging_tokens_per_s` each second: no program waits forever.

Each policy is its `key(call, program)`: a sort key that does not change while the call waits
(ties: submission order). That is what lets the scheduler keep the order incrementally (a heap
across steps, `runtime/admission_queue.py`) instead of sorting every waiting call at each step;
`order(snap, limit)` is the same order computed from scratch, the reference the tests compare
the incremental one against. Aging fits this form because every waiting call ages at the same
rate: `attained - aging * (now - submitted)` orders calls exactly as `attained + aging *
submitted` does (the common `aging * now` cancels), so the key need not change with time.
A key may depend on the program's state (fair share: attained tokens); the scheduler re-keys a
program's waiting calls whenever one of its calls finishes, the only event that changes it.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from agentflow.runtime.state import CallState, ProgramState, Snapshot


class AdmissionPolicy(Protocol):
    name: str
    # A call that has waited longer than this goes ahead of every call that has not (None: no bound).
    # The scheduler applies it (a key cannot: it would change while the call waits); `order` does too.
    max_wait_s: float | None

    def key(self, call: CallState, program: ProgramState) -> tuple:
        """Sort key of a waiting call (smaller first), constant while it waits; ties go by submission."""

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        """Up to `limit` waiting calls, first to admit first."""


OVERDUE = float("-inf")  # the first element of an overdue call's key: before every policy's keys


def overdue_key(call: CallState) -> tuple:
    return (OVERDUE, call.submitted_s)


def _order(policy: AdmissionPolicy, snap: Snapshot, limit: int) -> list[Hashable]:
    bound = policy.max_wait_s

    def key(c):
        call = snap.calls[c]
        if bound is not None and snap.time_s - call.submitted_s > bound:
            return overdue_key(call)
        return policy.key(call, snap.programs[call.program_id])

    # nsmallest is stable: equal keys keep `snap.waiting`'s order (submission order)
    return heapq.nsmallest(limit, snap.waiting, key=key)


class CallFcfs:
    name = "call-fcfs"
    max_wait_s = None  # submission order already bounds every wait

    def key(self, call: CallState, program: ProgramState) -> tuple:
        return ()  # submission order alone

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        return list(snap.waiting[:limit])


class ProgramFcfs:
    """`max_wait_s`: Continuum's order has none, so a call whose program's pin lapsed can wait behind
    pinned calls as long as they keep coming (on the shipped SWE-bench workload at 34 programs in
    flight: TTFT p99 of later calls 54.8 s against call FCFS's 21.0 s). With a bound, a call waits
    at most about that long plus its own admission."""

    name = "program-fcfs"

    def __init__(self, max_wait_s: float | None = None):
        if max_wait_s is not None and not max_wait_s > 0:
            raise ValueError(f"max_wait_s must be > 0 or None (got {max_wait_s})")
        self.max_wait_s = max_wait_s

    def key(self, call: CallState, program: ProgramState) -> tuple:
        return (not call.was_pinned, program.arrival_s, call.submitted_s)

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        return _order(self, snap, limit)


@dataclass(frozen=True, slots=True, kw_only=True)
class FairShareConfig:
    aging_tokens_per_s: float = 2_000.0


class FairShare:
    name = "fair-share"
    max_wait_s = None  # aging bounds the wait

    def __init__(self, config: FairShareConfig = FairShareConfig()):
        self.config = config

    def key(self, call: CallState, program: ProgramState) -> tuple:
        # = attained - aging x (time waited), plus the same aging x now for every call
        return (program.attained_tokens + self.config.aging_tokens_per_s * call.submitted_s, call.submitted_s)

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        return _order(self, snap, limit)
