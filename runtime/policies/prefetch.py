"""Prefetch: bring a prefix back from host memory before its agent needs it.

Candidates are agents due within `within_steps` steps whose deepest prefix has a host copy on
the program's worker and no GPU copy. The deadline is when the call is expected: the running tool's
expected remaining time (learned) for an agent due next, plus `step_time_s` per further step.
Earliest deadline first, within each worker's host-to-GPU budget for `horizon_s` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from agentflow.runtime.decision import Prefetch
from agentflow.runtime.state import Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchConfig:
    within_steps: int = 2
    step_time_s: float = 1.0
    horizon_s: float = 1.0


class PrefetchPolicy(Protocol):
    name: str

    def prefetches(self, snap: Snapshot, programs: Iterable[Hashable]) -> list[Prefetch]:
        """Prefetches for these programs (the ones whose state changed), earliest deadline first."""


class NoPrefetch:
    name = "none"

    def prefetches(self, snap, programs) -> list[Prefetch]:
        return []


class WorkflowPrefetch:
    name = "workflow"

    def __init__(self, config: PrefetchConfig = PrefetchConfig()):
        self.config = config

    def prefetches(self, snap: Snapshot, programs: Iterable[Hashable]) -> list[Prefetch]:
        cfg = self.config
        out: list[Prefetch] = []
        for pid in programs:
            prog = snap.programs.get(pid)
            if prog is None or prog.worker is None:
                continue
            est = snap.index.estimate(pid)
            for agent, key in prog.agent_prefix.items():
                if agent not in est.agents:
                    continue
                steps = float(est.steps_min[est.agents.index(agent)])
                if math.isinf(steps) or steps > cfg.within_steps or steps < 1:
                    continue
                pre = snap.prefixes.get(key)
                if pre is None or pre.tiers.get(prog.worker) != "host":
                    continue
                wait = cfg.step_time_s * (steps - 1)
                if prog.tool is not None:
                    wait += snap.tool_stats.remaining_mean_s(prog.tool.tool, snap.time_s - prog.tool.started_s)
                out.append(Prefetch(prefix=key, worker=prog.worker, deadline_s=snap.time_s + wait,
                                    num_tokens=pre.num_tokens))
        out.sort(key=lambda p: (p.deadline_s, p.prefix))
        budget: dict[str, float] = {}
        kept = []
        for p in out:
            w = snap.workers.get(p.worker)
            if w is None or w.h2d_tokens_per_s <= 0:
                continue
            left = budget.setdefault(p.worker, w.h2d_tokens_per_s * cfg.horizon_s)
            if p.num_tokens <= left:
                budget[p.worker] = left - p.num_tokens
                kept.append(p)
        return kept
