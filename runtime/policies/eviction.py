"""Eviction priority: how urgent is a cached prefix? (lower steps = keep; inf = evict first)

KVFlow's rule: a prefix is as urgent as its most urgent user, the minimum steps-to-execution over
the agents and programs whose prompts pass through it. Engines break ties by recency (SGLang's
priority strategy orders by (priority, last_access_time)). LRU returns None: no priorities at all,
the engine's own LRU decides. Belady reads the future from an oracle: the offline optimum.
"""

from __future__ import annotations

import math
from typing import Protocol

from agentflow.runtime.state import PrefixState, Snapshot

INF = math.inf


class EvictionPolicy(Protocol):
    name: str

    def steps(self, snap: Snapshot, prefix: PrefixState) -> float | None:
        """Urgency of a cached prefix in steps (or seconds, for Belady); None: no opinion."""


class LruEviction:
    name = "lru"

    def steps(self, snap: Snapshot, prefix: PrefixState) -> float | None:
        return None


class WorkflowEviction:
    """KVFlow-style: the minimum steps-to-execution over the prefix's users."""

    name = "workflow"

    def steps(self, snap: Snapshot, prefix: PrefixState) -> float | None:
        best = INF
        index = snap.index
        for (workflow, agent), programs in prefix.users.items():
            if not programs:
                continue
            if len(programs) == 1:
                (pid,) = programs
                best = min(best, snap.agent_steps(pid, agent)[0])
            else:
                # Shared by several programs (a system prompt): the minimum over all live programs
                # of the workflow, kept incrementally by the index. It may include programs that
                # have not used this exact prefix yet, which only makes a shared prefix more urgent.
                best = min(best, index.min_steps((workflow, agent)))
            if best == 0:
                break
        return best


class FutureOracle(Protocol):
    def next_use_at_s(self, prefix_key: str) -> float:
        """The (projected) time at which the prefix is next read; inf if never."""


class BeladyEviction:
    """Clairvoyant: evict what is needed furthest in the future (Belady's MIN). A bound only.

    Its urgency is the absolute time of the next use, not the time left until it: priorities are
    sent only when they change, and absolute times stay comparable however long ago each one was
    sent (time left would need every priority refreshed at every step)."""

    name = "belady"

    def __init__(self, oracle: FutureOracle):
        self.oracle = oracle

    def steps(self, snap: Snapshot, prefix: PrefixState) -> float | None:
        return self.oracle.next_use_at_s(prefix.key)
