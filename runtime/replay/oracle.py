"""The future of a replayed workload: what only Belady's bound may read.

Belady's MIN evicts what is needed furthest in the future. In a replay the future order of reads
depends on the simulated schedule itself, so the oracle projects it from what the workload
recorded: a program that has just finished call i will submit call i+1 after its tool's recorded
duration, call i+2 after that plus an estimate of call i+1's LLM time, and so on. A prefix's next
use is the earliest projected call, over all live programs, whose prompt starts with it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable


class ReplayOracle:
    def __init__(self, *, llm_time_s_per_call: float = 1.0):
        self.llm_time_s = llm_time_s_per_call
        # prefix key -> {program: projected time of its next call reading that prefix}
        self._next: dict[str, dict[Hashable, float]] = {}
        self._keys_of: dict[Hashable, set[str]] = {}

    def project(self, program_id: Hashable, now_s: float, future: list[tuple[float, list[str]]]) -> None:
        """Program `program_id`'s future calls: (delay before the call, the prefix keys it reads),
        in order. Replaces what was known of this program."""
        self.forget(program_id)
        t = now_s
        keys_seen: set[str] = set()
        for delay, keys in future:
            t += delay
            for k in keys:
                if k not in keys_seen:  # the earliest call reading a key is its next use
                    keys_seen.add(k)
                    self._next.setdefault(k, {})[program_id] = t
            t += self.llm_time_s
        self._keys_of[program_id] = keys_seen

    def forget(self, program_id: Hashable) -> None:
        for k in self._keys_of.pop(program_id, ()):
            users = self._next.get(k)
            if users is not None:
                users.pop(program_id, None)
                if not users:
                    del self._next[k]

    def next_use_at_s(self, prefix_key: str) -> float:
        users = self._next.get(prefix_key)
        if not users:
            return math.inf
        return min(users.values())
