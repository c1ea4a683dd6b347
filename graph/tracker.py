"""Steps-to-execution over many running programs, kept incrementally.

The scheduler asks, per agent, "how soon does *any* live program need this agent again?"
(a shared system prompt is as urgent as its most urgent user). Each program's estimate is a
vector over its workflow's agents (`position.estimate`); this index keeps, per agent, a bag
of the values of all live programs and its minimum. Advancing a program costs one estimate
(a few table rows) plus one bag update per agent whose value changed, independent of the
number of programs and of the size of the graph.

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


class _MinBag:
    """A multiset of floats with its minimum; O(1) add, O(1) remove unless the minimum leaves."""

    __slots__ = ("counts", "min")

    def __init__(self) -> None:
        self.counts: dict[float, int] = {}
        self.min = INF

    def add(self, v: float) -> None:
        self.counts[v] = self.counts.get(v, 0) + 1
        if v < self.min:
            self.min = v

    def remove(self, v: float) -> None:
        c = self.counts[v] - 1
        if c:
            self.counts[v] = c
            return
        del self.counts[v]
        if v == self.min:
            self.min = min(self.counts) if self.counts else INF

    def __len__(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class _Program:
    graph: StepGraph
    position: Position
    estimate: ProgramEstimate
    keys: tuple[AgentKey, ...]


class ProgramIndex:
    """Live programs and, per agent, the minimum steps-to-execution over all of them."""

    def __init__(self) -> None:
        self._programs: dict[Hashable, _Program] = {}
        self._min: dict[AgentKey, _MinBag] = {}
        self._exp: dict[AgentKey, _MinBag] = {}

    # ---- updates --------------------------------------------------------------------------
    def add(self, program_id: Hashable, graph: StepGraph, position: Position | None = None) -> ProgramEstimate:
        if program_id in self._programs:
            raise PositionError(f"program {program_id!r} is already tracked")
        position = position or Position.start(graph)
        est = estimate(graph, position)
        keys = tuple((graph.name, a) for a in est.agents)
        for i, k in enumerate(keys):
            self._min.setdefault(k, _MinBag()).add(float(est.steps_min[i]))
            self._exp.setdefault(k, _MinBag()).add(float(est.steps_expected[i]))
        self._programs[program_id] = _Program(graph, position, est, keys)
        return est

    def advance(self, program_id: Hashable, position: Position) -> list[AgentKey]:
        """Move a program to a new position; returns the agents whose values for it changed."""
        prog = self._get(program_id)
        new = estimate(prog.graph, position)
        old = prog.estimate
        keys = prog.keys
        changed: set[int] = set()
        if new.steps_min is not old.steps_min:
            for i in np.flatnonzero(new.steps_min != old.steps_min).tolist():
                bag = self._min[keys[i]]
                bag.remove(float(old.steps_min[i]))
                bag.add(float(new.steps_min[i]))
                changed.add(i)
        if new.steps_expected is not old.steps_expected:
            for i in np.flatnonzero(new.steps_expected != old.steps_expected).tolist():
                bag = self._exp[keys[i]]
                bag.remove(float(old.steps_expected[i]))
                bag.add(float(new.steps_expected[i]))
                changed.add(i)
        prog.position, prog.estimate = position, new
        return [keys[i] for i in sorted(changed)]

    def remove(self, program_id: Hashable) -> None:
        prog = self._programs.pop(program_id, None)
        if prog is None:
            raise PositionError(f"program {program_id!r} is not tracked")
        for i, k in enumerate(prog.keys):
            for bags, arr in ((self._min, prog.estimate.steps_min), (self._exp, prog.estimate.steps_expected)):
                bag = bags[k]
                bag.remove(float(arr[i]))
                if not bag.counts:
                    del bags[k]

    # ---- queries --------------------------------------------------------------------------
    def min_steps(self, key: AgentKey) -> float:
        """Fewest steps until any live program calls this agent (inf: none will)."""
        bag = self._min.get(key)
        return bag.min if bag is not None else INF

    def min_expected_steps(self, key: AgentKey) -> float:
        bag = self._exp.get(key)
        return bag.min if bag is not None else INF

    def estimate(self, program_id: Hashable) -> ProgramEstimate:
        return self._get(program_id).estimate

    def position(self, program_id: Hashable) -> Position:
        return self._get(program_id).position

    def snapshot(self) -> dict[AgentKey, float]:
        return {k: b.min for k, b in self._min.items()}

    def agents(self) -> list[AgentKey]:
        return list(self._min)

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
