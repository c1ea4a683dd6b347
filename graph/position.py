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

from collections.abc import Mapping
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


class ProgramEstimate:
    """What a program's position says about its agents and its remaining work.

    A plain slotted class rather than a frozen dataclass: one is built per scheduler event,
    and a frozen dataclass's __init__ costs several microseconds. Treat it as immutable.
    """

    __slots__ = ("agents", "steps_min", "hit_probability", "steps_expected", "remaining_calls",
                 "remaining_tokens")

    def __init__(self, *, agents: tuple[str, ...], steps_min: np.ndarray, hit_probability: np.ndarray,
                 steps_expected: np.ndarray, remaining_calls: float, remaining_tokens: float):
        self.agents = agents
        self.steps_min = steps_min  # per agent: fewest rounds until its next LLM call (inf: never again)
        self.hit_probability = hit_probability  # per agent: probability that it runs again
        self.steps_expected = steps_expected  # per agent: expected rounds, given that it runs again
        self.remaining_calls = remaining_calls  # expected LLM calls left, active steps included
        self.remaining_tokens = remaining_tokens  # expected prompt + output tokens of those calls

    def __repr__(self) -> str:
        return (f"ProgramEstimate(steps={self.steps_to_execution()}, remaining_calls={self.remaining_calls:.2f}, "
                f"remaining_tokens={self.remaining_tokens:.0f})")

    def steps_to_execution(self) -> dict[str, float]:
        return {a: float(v) for a, v in zip(self.agents, self.steps_min)}

    def expected_steps(self) -> dict[str, float]:
        return {a: float(v) for a, v in zip(self.agents, self.steps_expected)}


def _tables_for(graph: StepGraph, position: Position) -> GraphTables:
    if not position.loop_iterations:
        return graph.analysis
    exhausted = []
    loops = graph.loops
    for loop, done in position.loop_iterations.items():
        info = loops.get(loop)
        if info is None:
            raise PositionError(f"workflow '{graph.name}' has no loop at step '{loop}'")
        if done + 1 < info.max_iterations and done >= 0:
            continue  # iterations left: the default tables hold
        if done < 0 or done >= info.max_iterations:
            raise PositionError(
                f"loop at '{loop}' has completed {done} iterations; it allows 0..{info.max_iterations - 1}")
        if not info.body.isdisjoint(position.active):
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
    exit_min, exit_exp = tables.exits
    while len(pending) > 1 or None not in pending:
        if len(pending) == 1:
            (fork,) = pending
        else:
            fork = max((r for r in pending if r is not None), key=lambda r: regions[r].depth)
        entries = pending.pop(fork)
        contributions += entries
        join = regions[fork].join
        if join is not None:
            t_min = max(o + exit_min[r] for r, o, _ in entries)
            t_exp = max(o + exit_exp[r] for r, _, o in entries)
            pending.setdefault(region_of[join], []).append((index[join], t_min, t_exp))
        elif not pending:
            break
    contributions += pending.get(None, [])
    return _combine(tables, contributions)


def _combine(tables: GraphTables, contributions: list[tuple[int, float, float]]) -> ProgramEstimate:
    # One gather per table over all contributing rows: the cost hardly grows with their number.
    if len(contributions) == 1 and contributions[0][1] == 0.0 and contributions[0][2] == 0.0:
        r = contributions[0][0]
        return ProgramEstimate(agents=tables.agents, steps_min=tables.dmin[r], hit_probability=tables.hit[r],
                               steps_expected=tables.dexp[r], remaining_calls=float(tables.rem_calls[r]),
                               remaining_tokens=float(tables.rem_tokens[r]))
    rows, o_min, o_exp = zip(*contributions)
    block = tables.stacked[list(rows)]  # (k, 3, agents): dmin, dexp, 1 - hit
    offsets = np.array((o_min, o_exp)).T[:, :, None]  # (k, 2, 1)
    best = (block[:, :2] + offsets).min(axis=0)
    hit = 1.0 - block[:, 2].prod(axis=0)
    rem = tables.remaining[list(rows)].sum(axis=0)
    return ProgramEstimate(agents=tables.agents, steps_min=best[0], hit_probability=hit,
                           steps_expected=best[1], remaining_calls=float(rem[0]), remaining_tokens=float(rem[1]))


def _noop_path(graph: StepGraph, source: str, target: str):
    """The shortest edge path source -> ... -> target whose inner steps are all noops, or None.

    Noops take no time and send no events, so this is how a program got from a step it was at to
    the step that just started; the path's loop and fork edges say what else changed on the way."""
    cache = graph._analysis.setdefault("noop_paths", {})
    key = (source, target)
    if key in cache:
        return cache[key]
    from agentflow.graph.model import StepKind

    found = None
    frontier = [(e, (e,)) for e in graph.edges(source) if e.target in graph.steps]
    seen: set[str] = set()
    while frontier and found is None:
        nxt = []
        for e, path in frontier:
            if e.target == target:
                found = path
                break
            if e.target in seen or graph.steps[e.target].kind is not StepKind.NOOP:
                continue
            seen.add(e.target)
            nxt += [(x, path + (x,)) for x in graph.edges(e.target) if x.target in graph.steps]
        frontier = nxt
    cache[key] = found
    return found


def enter_step(graph: StepGraph, position: Position, step: str, *, again: bool = False) -> Position:
    """The position after `step` starts.

    The active steps it comes from (directly, or through noop steps, which take no time and send
    no events) are done. Along each such path a loop back edge counts one completed iteration, a
    loop exit drops the loop's count, and a fork edge makes the fork's other branches ready.
    `again=True` says an active step runs once more (a loop back to itself); otherwise entering
    an active step (a branch already made ready by its fork) changes nothing.
    """
    from agentflow.graph.model import EdgeKind, Fork

    if step not in graph.steps:
        raise PositionError(f"workflow '{graph.name}' has no step '{step}'")
    if step in position.active and not again:
        return position
    sources = position.active if again else position.active - {step}
    paths = {}
    for u in sources:
        path = _noop_path(graph, u, step)
        if path is not None:
            paths[u] = path
    counters = dict(position.loop_iterations)
    active = (position.active - set(paths)) | {step}
    for u, path in paths.items():
        for e in path:
            if e.kind is EdgeKind.LOOP_BACK:
                counters[e.source] = counters.get(e.source, 0) + 1
                if counters[e.source] >= graph.loops[e.source].max_iterations:
                    raise PositionError(f"loop at '{e.source}' went past its "
                                        f"{graph.loops[e.source].max_iterations} iterations")
            elif e.kind is EdgeKind.LOOP_EXIT:
                counters.pop(e.source, None)
            elif e.kind is EdgeKind.FORK:
                fork = graph.transitions[e.source]
                assert isinstance(fork, Fork)
                active |= {b for b in fork.targets if b != e.target}
    # Counts of loops no active step is inside any more are stale: drop them.
    counters = {k: v for k, v in counters.items() if not graph.loops[k].body.isdisjoint(active)}
    return Position(active=frozenset(active), loop_iterations=MappingProxyType(counters))


def leave_step(graph: StepGraph, position: Position, step: str) -> Position:
    """The position after `step` ends with nothing after it (the end of a branch or program)."""
    if step not in graph.steps:
        raise PositionError(f"workflow '{graph.name}' has no step '{step}'")
    counters = {k: v for k, v in position.loop_iterations.items()
                if not graph.loops[k].body.isdisjoint(position.active - {step})}
    return Position(active=position.active - {step}, loop_iterations=MappingProxyType(counters))
