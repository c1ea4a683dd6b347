"""Tool durations learned online: what a time-to-live at a tool call is chosen from.

Per tool, the durations seen so far (the most recent `window` of them). A tool's own distribution
is trusted once it has `min_samples`; before that the global one (all tools) stands in; before
any sample at all, the prior: the workflow's `duration_hint_s` for that tool if it gave one, else
`prior_median_s`. A prior is a small log-normal set of quantiles around its median (heavy-tailed,
as measured tool times are), so that a TTL chosen from it is not a coin flip.

Tenants: the scheduler names a tenant's tools "tenant<0x1f>tool" (scheduler.tool_scope); the
global distribution that stands in for a tool with few samples is then that tenant's own (its
tools' durations only), so no tenant's durations reach another's choices. Plain names share
the one global distribution of the default tenant.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStatsConfig:
    min_samples: int = 20  # Continuum uses ~100 on long traces; 20 adapts sooner on short runs
    window: int = 512
    prior_median_s: float = 3.0  # AgentCgroup: mean Bash 3.8-5.9 s, Read 0.1-0.3 s; a middle value
    prior_sigma: float = 1.0  # log-normal spread of the prior


# z-scores of evenly spaced quantiles (1/16 .. 15/16) of a standard normal
_Z = [-1.534, -1.150, -0.887, -0.674, -0.489, -0.319, -0.157, 0.0, 0.157, 0.319, 0.489, 0.674, 0.887, 1.150, 1.534]


class ToolStats:
    def __init__(self, config: ToolStatsConfig = ToolStatsConfig()):
        self.config = config
        self._per_tool: dict[str, deque[float]] = {}
        self._globals: dict[str, deque[float]] = {}  # per scope ("" for plain tool names)
        self._global: deque[float] = self._global_of("")
        self._hints: dict[str, float] = {}
        self._sorted_cache: dict[str, list[float]] = {}
        self._array_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _global_of(self, scope: str) -> deque[float]:
        g = self._globals.get(scope)
        if g is None:
            g = self._globals[scope] = deque(maxlen=self.config.window)
        return g

    @staticmethod
    def _scope(tool: str) -> str:
        """The scope of a tool name: the tenant before the separator, "" for a plain name; the
        cache key of its global distribution is "\x1f" + scope (no tool name starts with it)."""
        i = tool.find("\x1f")
        return tool[:i] if i >= 0 else ""

    def hint(self, tool: str, duration_s: float | None) -> None:
        if duration_s is not None and duration_s > 0:
            self._hints.setdefault(tool, duration_s)

    def observe(self, tool: str, duration_s: float) -> None:
        if not duration_s >= 0 or math.isinf(duration_s):
            raise ValueError(f"tool {tool!r}: duration must be a finite number >= 0 (got {duration_s})")
        self._per_tool.setdefault(tool, deque(maxlen=self.config.window)).append(duration_s)
        scope = self._scope(tool)
        self._global_of(scope).append(duration_s)
        gkey = "\x1f" + scope
        self._sorted_cache.pop(tool, None)
        self._sorted_cache.pop(gkey, None)
        self._array_cache.pop(tool, None)
        self._array_cache.pop(gkey, None)

    def source(self, tool: str) -> str:
        """Which distribution stands for this tool now: 'tool', 'global' or 'prior'."""
        if len(self._per_tool.get(tool, ())) >= self.config.min_samples:
            return "tool"
        g = self._globals.get(self._scope(tool))
        if g is not None and len(g) >= self.config.min_samples:
            return "global"
        return "prior"

    def samples(self, tool: str) -> list[float]:
        """Sorted durations (seconds) standing for this tool's distribution."""
        src = self.source(tool)
        key = tool if src == "tool" else ("\x1f" + self._scope(tool) if src == "global" else None)
        if key is not None:
            cached = self._sorted_cache.get(key)
            if cached is None:
                data = self._per_tool[tool] if src == "tool" else self._globals[self._scope(tool)]
                cached = self._sorted_cache[key] = sorted(data)
            return cached
        median = self._hints.get(tool, self.config.prior_median_s)
        return [median * math.exp(self.config.prior_sigma * z) for z in _Z]

    def arrays(self, tool: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted durations, their prefix sums) as arrays, cached until the next observation."""
        src = self.source(tool)
        key = tool if src == "tool" else ("\x1f" + self._scope(tool) if src == "global" else f"prior:{tool}")
        out = self._array_cache.get(key)
        if out is None:
            xs = np.asarray(self.samples(tool), dtype=float)
            out = self._array_cache[key] = (xs, np.cumsum(xs))
        return out

    def cdf(self, tool: str, t_s: float) -> float:
        xs = self.samples(tool)
        return bisect.bisect_right(xs, t_s) / len(xs)

    def mean_s(self, tool: str) -> float:
        xs = self.samples(tool)
        return sum(xs) / len(xs)

    def remaining_mean_s(self, tool: str, elapsed_s: float) -> float:
        """E[D - elapsed | D > elapsed]: how much longer a running tool call is expected to take."""
        xs = self.samples(tool)
        i = bisect.bisect_right(xs, elapsed_s)
        tail = xs[i:]
        if not tail:
            return 0.0
        return sum(tail) / len(tail) - elapsed_s

    def count(self, tool: str) -> int:
        return len(self._per_tool.get(tool, ()))
