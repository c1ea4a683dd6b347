"""Steps-to-execution over many running programs, kept incrementally.

The scheduler asks, per agent, "how soon does *any* live program need this agent again?"
(a shared system prompt is as urgent as its most urgent user). Each program's estimate is a
vector over its workflow's agents (`position.estimate`). Programs of one workflow share a
dense matrix, one row per program and one column per agent:

    workflow "swe"     coder  reviewer
    program 17    ->     1       4        advance(17, pos) rewrites row 17 only
    program 42    ->     0       inf
    minimum       ->     0       4        a column minimum, recomputed lazily on the next query

An update costs one estimate (a few precomputed rows) plus one row write, independent of the
number of programs and of the size of the graph; a query after updates costs one vectorised
column minimum per workflow. (A per-agent heap or bag was measured slower: a step moves almost
every agent's distance by one, so nearly every entry changes on every update.)

Agents are keyed by (workflow name, agent name): two workflows may both have an "assistant",
and they are not the same KV.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import numpy as np

from agentflow.errors import PositionError
from agentflow.graph.analysis import INF
from agentflow.graph.model import StepGraph
from agentflow.graph.position import Position, ProgramEstimate, estimate

AgentKey = tuple[str, str]  # (workflow name, agent name)


class _Group:
    """The programs of one workflow: rows of a programs x agents matrix."""

    __slots__ = ("name", "agents", "col", "steps", "expected", "free", "n", "_min", "_exp")

    def __init__(self, name: str, agents: tuple[str, ...], capacity: int = 16):
        self.name, self.agents = name, agents
        self.col = {a: i for i, a in enumerate(agents)}
        self.steps = np.full((capacity, len(agents)), INF)
        self.expected = np.full((capacity, len(agents)), INF)
        self.free = list(range(capacity - 1, -1, -1))
        self.n = 0
        self._min: np.ndarray | None = None  # cached column minima; None when stale
        self._exp: np.ndarray | None = None

    def alloc(self) -> int:
        if not self.free:
            cap = len(self.steps)
            self.steps = np.vstack([self.steps, np.full_like(self.steps, INF)])
            self.expected = np.vstack([self.expected, np.full_like(self.expected, INF)])
            self.free = list(range(2 * cap - 1, cap - 1, -1))
        self.n += 1
        return self.free.pop()

    def release(self, row: int) -> None:
        self.steps[row] = INF
        self.expected[row] = INF
        self.free.append(row)
        self.n -= 1
        self._min = self._exp = None

    def write(self, row: int, est: ProgramEstimate) -> None:
        self.steps[row] = est.steps_min
        self.expected[row] = est.steps_expected
        self._min = self._exp = None

    def min_steps(self) -> np.ndarray:
        if self._min is None:
            self._min = self.steps.min(axis=0)
        return self._min

    def min_expected(self) -> np.ndarray:
        if self._exp is None:
            self._exp = self.expected.min(axis=0)
        return self._exp


@dataclass(slots=True)
class _Program:
    graph: StepGraph
    group: _Group
    row: int
    position: Position
    estimate: ProgramEstimate


class ProgramIndex:
    """Live programs and, per agent, the minimum steps-to-execution over all of them."""

    def __init__(self) -> None:
        self._programs: dict[Hashable, _Program] = {}
        self._groups: dict[str, _Group] = {}

    # ---- updates --------------------------------------------------------------------------
    def add(self, program_id: Hashable, graph: StepGraph, position: Position | None = None) -> ProgramEstimate:
        if program_id in self._programs:
            raise PositionError(f"program {program_id!r} is already tracked")
        group = self._groups.get(graph.name)
        if group is None:
            group = self._groups[graph.name] = _Group(graph.name, graph.agents)
        elif group.agents != graph.agents:
            raise PositionError(f"two different workflows are both named '{graph.name}' "
                                f"(agents {list(group.agents)} vs {list(graph.agents)}); give them distinct names")
        position = position or Position.start(graph)
        est = estimate(graph, position)
        row = group.alloc()
        group.write(row, est)
        self._programs[program_id] = _Program(graph, group, row, position, est)
        return est

    def advance(self, program_id: Hashable, position: Position) -> ProgramEstimate:
        """Move a program to a new position; returns its new estimate."""
        prog = self._programs.get(program_id)
        if prog is None:
            raise PositionError(f"program {program_id!r} is not tracked")
        est = estimate(prog.graph, position)
        prog.group.write(prog.row, est)
        prog.position, prog.estimate = position, est
        return est

    def remove(self, program_id: Hashable) -> None:
        prog = self._programs.pop(program_id, None)
        if prog is None:
            raise PositionError(f"program {program_id!r} is not tracked")
        prog.group.release(prog.row)
        if prog.group.n == 0:
            del self._groups[prog.group.name]

    # ---- queries --------------------------------------------------------------------------
    def min_steps(self, key: AgentKey) -> float:
        """Fewest steps until any live program calls this agent (inf: none will)."""
        group = self._groups.get(key[0])
        if group is None or key[1] not in group.col:
            return INF
        return float(group.min_steps()[group.col[key[1]]])

    def min_expected_steps(self, key: AgentKey) -> float:
        group = self._groups.get(key[0])
        if group is None or key[1] not in group.col:
            return INF
        return float(group.min_expected()[group.col[key[1]]])

    def estimate(self, program_id: Hashable) -> ProgramEstimate:
        return self._get(program_id).estimate

    def position(self, program_id: Hashable) -> Position:
        return self._get(program_id).position

    def snapshot(self) -> dict[AgentKey, float]:
        """Every tracked agent's minimum steps-to-execution."""
        out: dict[AgentKey, float] = {}
        for name, group in self._groups.items():
            mins = group.min_steps()
            for a, i in group.col.items():
                out[(name, a)] = float(mins[i])
        return out

    def agents(self) -> list[AgentKey]:
        return [(name, a) for name, g in self._groups.items() for a in g.agents]

    def __len__(self) -> int:
        return len(self._programs)

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._programs

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._programs)

    def _get(self, program_id: Hashable) -> _Program:
        try:
            return self._programs[program_id]
        except KeyError:
            raise PositionError(f"program {program_id!r} is not tracked") from None
