"""Where a running program is, and what that means for each agent.

A `Position` is the set of steps that are active (running, or ready to run) plus, for each
loop whose body holds an active step, how many iterations it has completed. `estimate()`
combines the precomputed rows of the active steps (`analysis.py`) into one `ProgramEstimate`:

    active steps, by innermost region          combine
    ---------------------------------          -------------------------------------------
    region of fork F: {x (branch 1), y (b3)}   agents: min(dmin[x], dmin[y]) (+ offsets)
                                               join J starts at max(exit[x], exit[y]):
                                               J joins F's parent region with that offset
    top level: {J @ offset t}                  agents: min(..., t + dmin[J])

Only the rows of the active steps are read, so an update costs O(active x agents) whatever the
size of the graph. A loop with no iterations left (`loop_iterations[l] + 1 >= max_iterations`)
whose body holds an active step switches to tables without that back edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from agentflow.errors import PositionError
from agentflow.graph.analysis import INF, GraphTables
from agentflow.graph.model import StepGraph

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    active: frozenset[str]
    loop_iterations: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # completed iterations, by loop source step

    @classmethod
    def of(cls, *active: str, loop_iterations: Mapping[str, int] | None = None) -> "Position":
        return cls(active=frozenset(active), loop_iterations=MappingProxyType(dict(loop_iterations or {})))

    @classmethod
    def start(cls, graph: StepGraph) -> "Position":
        return cls.of(graph.entry)

    @property
    def finished(self) -> bool:
        return not self.active


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramEstimate:
    """What a program's position says about its agents and its remaining work."""

    agents: tuple[str, ...]
    steps_min: np.ndarray  # per agent: fewest rounds until its next LLM call (inf: never again)
    hit_probability: np.ndarray  # per agent: probability that it runs again
    steps_expected: np.ndarray  # per agent: expected rounds, given that it runs again
    remaining_calls: float  # expected LLM calls left, active steps included
    remaining_tokens: float  # expected prompt + output tokens of those calls

    def steps_to_execution(self) -> dict[str, float]:
        return {a: float(v) for a, v in zip(self.agents, self.steps_min)}

    def expected_steps(self) -> dict[str, float]:
        return {a: float(v) for a, v in zip(self.agents, self.steps_expected)}


def _tables_for(graph: StepGraph, position: Position) -> GraphTables:
    if not position.loop_iterations:
        return graph.analysis
    exhausted = []
    for loop, done in position.loop_iterations.items():
        info = graph.loops.get(loop)
        if info is None:
            raise PositionError(f"workflow '{graph.name}' has no loop at step '{loop}'")
        if done < 0 or done >= info.max_iterations:
            raise PositionError(
                f"loop at '{loop}' has completed {done} iterations; it allows 0..{info.max_iterations - 1}")
        if done + 1 >= info.max_iterations and info.body & position.active:
            exhausted.append(loop)
    return graph.analysis_without(frozenset(exhausted)) if exhausted else graph.analysis


def estimate(graph: StepGraph, position: Position) -> ProgramEstimate:
    tables = _tables_for(graph, position)
    A = len(tables.agents)
    if position.finished:
        return ProgramEstimate(agents=tables.agents, steps_min=np.full(A, INF), hit_probability=np.zeros(A),
                               steps_expected=np.full(A, INF), remaining_calls=0.0, remaining_tokens=0.0)
    index, region_of = tables.index, graph.region_of
    for s in position.active:
        if s not in index:
            raise PositionError(f"workflow '{graph.name}' has no step '{s}'")
    if len(position.active) == 1:
        (s,) = position.active
        if region_of[s] is None:  # the common case: one active step at top level, rows as they are
            r = index[s]
            return ProgramEstimate(agents=tables.agents, steps_min=tables.dmin[r], hit_probability=tables.hit[r],
                                   steps_expected=tables.dexp[r], remaining_calls=float(tables.rem_calls[r]),
                                   remaining_tokens=float(tables.rem_tokens[r]))
    # pending[region] = [(row, offset_min, offset_exp)]
    pending: dict[str | None, list[tuple[int, float, float]]] = {}
    for s in position.active:
        pending.setdefault(region_of[s], []).append((index[s], 0.0, 0.0))
    contributions: list[tuple[int, float, float]] = []
    regions = graph.regions
    while len(pending) > 1 or None not in pending:
        fork = max((r for r in pending if r is not None), key=lambda r: regions[r].depth)
        entries = pending.pop(fork)
        contributions += entries
        join = regions[fork].join
        if join is not None:
            t_min = max(o + tables.exit_min[r] for r, o, _ in entries)
            t_exp = max(o + tables.exit_exp[r] for r, _, o in entries)
            pending.setdefault(region_of[join], []).append((index[join], t_min, t_exp))
        elif not pending:
            break
    contributions += pending.get(None, [])
    return _combine(tables, contributions)


def _combine(tables: GraphTables, contributions: Iterable[tuple[int, float, float]]) -> ProgramEstimate:
    steps_min = None
    miss = None
    steps_exp = None
    calls = tokens = 0.0
    for r, o_min, o_exp in contributions:
        d = tables.dmin[r] + o_min
        e = tables.dexp[r] + o_exp
        steps_min = d if steps_min is None else np.minimum(steps_min, d)
        steps_exp = e if steps_exp is None else np.minimum(steps_exp, e)
        miss = 1.0 - tables.hit[r] if miss is None else miss * (1.0 - tables.hit[r])
        calls += float(tables.rem_calls[r])
        tokens += float(tables.rem_tokens[r])
    return ProgramEstimate(agents=tables.agents, steps_min=steps_min, hit_probability=1.0 - miss,
                           steps_expected=steps_exp, remaining_calls=calls, remaining_tokens=tokens)
