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

    def key(self, call: CallState, program: ProgramState) -> tuple:
        """Sort key of a waiting call (smaller first), constant while it waits; ties go by submission."""

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        """Up to `limit` waiting calls, first to admit first."""


def _order(policy: AdmissionPolicy, snap: Snapshot, limit: int) -> list[Hashable]:
    # nsmallest is stable: equal keys keep `snap.waiting`'s order (submission order)
    return heapq.nsmallest(limit, snap.waiting,
                           key=lambda c: policy.key(snap.calls[c], snap.programs[snap.calls[c].program_id]))


class CallFcfs:
    name = "call-fcfs"

    def key(self, call: CallState, program: ProgramState) -> tuple:
        return ()  # submission order alone

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        return list(snap.waiting[:limit])


class ProgramFcfs:
    name = "program-fcfs"

    def key(self, call: CallState, program: ProgramState) -> tuple:
        return (not call.was_pinned, program.arrival_s, call.submitted_s)

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        return _order(self, snap, limit)


@dataclass(frozen=True, slots=True, kw_only=True)
class FairShareConfig:
    aging_tokens_per_s: float = 2_000.0


class FairShare:
    name = "fair-share"

    def __init__(self, config: FairShareConfig = FairShareConfig()):
        self.config = config

    def key(self, call: CallState, program: ProgramState) -> tuple:
        # = attained - aging x (time waited), plus the same aging x now for every call
        return (program.attained_tokens + self.config.aging_tokens_per_s * call.submitted_s, call.submitted_s)

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        return _order(self, snap, limit)
