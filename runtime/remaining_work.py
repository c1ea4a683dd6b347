"""How much work a running program has left, learned online from the programs that finished.

A step graph's expectation says little about a single-agent loop: a loop is memoryless, so a
coding agent's expected remaining calls are the same (38.1 on the shipped SWE-bench workload) at
turn 1 and at turn 40. Real runs are not memoryless: lengths spread widely, and a program that
has already run 40 turns has a different future from one that has just started. So, as tool
durations are learned now (`tool_stats.py`), the scheduler learns from every finished program of a
workflow the empirical distribution of its total calls N and estimates, for a program that has
done t calls,

    E[remaining calls | t] = E[N - t | N > t]      (over finished programs with N > t)

and how much longer each call's context (prompt + output) is than the program's previous call's
(tool results, the new instruction and the output; 0 when a new conversation starts):

    E[final context] = context now + growth per call x E[remaining calls | t]

Before `min_programs` programs of a workflow have finished it knows nothing and says so (None):
callers fall back to the graph's expectation. Memory is bounded: the last `max_samples` programs
per workflow, the `max_workflows` most recently seen workflows.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RemainingWorkConfig:
    min_programs: int = 5  # finished programs of a workflow before its estimates are trusted
    max_samples: int = 2_000  # per workflow, most recent first
    max_workflows: int = 256
    growth_smoothing: float = 0.02  # EWMA weight of one observed per-call context growth


class _Workflow:
    __slots__ = ("calls", "_sorted", "growth", "growth_n")


    def __init__(self, max_samples: int):
        self.calls: deque[int] = deque(maxlen=max_samples)  # total calls of finished programs
        self._sorted: list[int] | None = None
        self.growth: float | None = None  # tokens a call adds to the program's contexts (running mean, then EWMA)
        self.growth_n = 0

    def sorted_calls(self) -> list[int]:
        if self._sorted is None:
            self._sorted = sorted(self.calls)
        return self._sorted


class RemainingWork:
    def __init__(self, config: RemainingWorkConfig = RemainingWorkConfig()):
        self.config = config
        self._wf: OrderedDict[str, _Workflow] = OrderedDict()
        self._cache: dict[tuple[str, int], float | None] = {}

    def _get(self, workflow: str) -> _Workflow:
        wf = self._wf.get(workflow)
        if wf is None:
            wf = self._wf[workflow] = _Workflow(self.config.max_samples)
            if len(self._wf) > self.config.max_workflows:
                old, _ = self._wf.popitem(last=False)
                self._cache = {k: v for k, v in self._cache.items() if k[0] != old}
        else:
            self._wf.move_to_end(workflow)
        return wf

    # ---- learning ------------------------------------------------------------------------------
    def program_finished(self, workflow: str, num_calls: int) -> None:
        if num_calls < 0:
            raise ValueError(f"num_calls must be >= 0 (got {num_calls})")
        wf = self._get(workflow)
        wf.calls.append(num_calls)
        wf._sorted = None
        self._cache = {k: v for k, v in self._cache.items() if k[0] != workflow}

    def observe_growth(self, workflow: str, tokens: int) -> None:
        """One call grew its program's contexts by `tokens` (negative counts as 0)."""
        wf = self._get(workflow)
        g = max(0, tokens)
        wf.growth_n += 1
        old = wf.growth or 0.0
        # a running mean over the first 1/smoothing observations, an exponential average after them
        wf.growth = old + max(self.config.growth_smoothing, 1.0 / wf.growth_n) * (g - old)

    # ---- estimates -----------------------------------------------------------------------------
    def num_finished(self, workflow: str) -> int:
        wf = self._wf.get(workflow)
        return len(wf.calls) if wf else 0

    def remaining_calls(self, workflow: str, calls_done: int) -> float | None:
        """E[N - t | N > t] over finished programs of the workflow; None until enough have finished.
        A program that has outlived every finished one is given one more call."""
        key = (workflow, calls_done)
        if key in self._cache:
            return self._cache[key]
        wf = self._wf.get(workflow)
        if wf is None or len(wf.calls) < self.config.min_programs:
            return None
        xs = wf.sorted_calls()
        i = bisect.bisect_right(xs, calls_done)
        longer = xs[i:]
        est = (sum(longer) / len(longer) - calls_done) if longer else 1.0
        self._cache[key] = est
        return est

    def growth_per_call(self, workflow: str) -> float | None:
        wf = self._wf.get(workflow)
        return wf.growth if wf else None


__all__ = ["RemainingWork", "RemainingWorkConfig"]
