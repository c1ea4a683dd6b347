"""Which waiting call goes first.

- call FCFS: by submission (what an engine does on its own);
- program FCFS (Continuum): by the program's first arrival, so a program that has started is
  finished before newer ones; a call whose program held a pin when it arrived goes first (its
  KV is on the GPU: serving it now is cheap, and waiting would risk losing it);
- fair share (Autellix-like): least attained service (tokens served) first, with aging so a
  waiting call's key falls by `aging_tokens_per_s` each second: no program waits forever.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from agentflow.runtime.state import Snapshot


class AdmissionPolicy(Protocol):
    name: str

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        """Up to `limit` waiting calls, first to admit first."""


class CallFcfs:
    name = "call-fcfs"

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        return list(snap.waiting[:limit])


class ProgramFcfs:
    name = "program-fcfs"

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        def key(c):
            call = snap.calls[c]
            return (not call.was_pinned, snap.programs[call.program_id].arrival_s, call.submitted_s)

        return heapq.nsmallest(limit, snap.waiting, key=key)


@dataclass(frozen=True, slots=True, kw_only=True)
class FairShareConfig:
    aging_tokens_per_s: float = 2_000.0


class FairShare:
    name = "fair-share"

    def __init__(self, config: FairShareConfig = FairShareConfig()):
        self.config = config

    def order(self, snap: Snapshot, limit: int) -> list[Hashable]:
        now, aging = snap.time_s, self.config.aging_tokens_per_s

        def key(c):
            call = snap.calls[c]
            prog = snap.programs[call.program_id]
            return (prog.attained_tokens - aging * (now - call.submitted_s), call.submitted_s)

        return heapq.nsmallest(limit, snap.waiting, key=key)
