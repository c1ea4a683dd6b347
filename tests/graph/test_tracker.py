"""ProgramIndex: the per-agent minimum over live programs, kept incrementally."""

from __future__ import annotations

import math
import random

import pytest

from agentflow import Position, PositionError, ProgramIndex, estimate
from agentflow.graph.synthetic import Shape, random_workflow
from tests.graph.test_steps_to_execution import chain, tool_loop

INF = math.inf


def test_minimum_over_programs_follows_advances_and_removals():
    g = chain().compile().graph  # a1(A) -> t1 -> b1(B) -> a2(A)
    idx = ProgramIndex()
    idx.add("p1", g, Position.of("a1"))
    idx.add("p2", g, Position.of("t1"))
    assert idx.min_steps(("chain", "A")) == 0
    assert idx.min_steps(("chain", "B")) == 1  # p2 is one step from b1
    est = idx.advance("p1", Position.of("t1"))
    assert est.steps_to_execution() == {"A": 2, "B": 1}
    assert idx.min_steps(("chain", "A")) == 2
    idx.advance("p2", Position.of("a2"))
    assert idx.min_steps(("chain", "A")) == 0
    assert idx.min_steps(("chain", "B")) == 1
    idx.remove("p1")
    assert idx.min_steps(("chain", "B")) == INF  # only p2 is left, and B never runs for it again
    idx.remove("p2")
    assert idx.min_steps(("chain", "A")) == INF
    assert len(idx) == 0 and idx.snapshot() == {}


def test_same_agent_name_in_two_workflows_is_two_agents():
    idx = ProgramIndex()
    idx.add(1, chain().compile().graph, Position.of("a2"))
    idx.add(2, tool_loop().compile().graph, Position.of("think"))
    assert idx.min_steps(("chain", "A")) == 0
    assert idx.min_steps(("loop", "coder")) == 0
    assert idx.min_steps(("loop", "A")) == INF


def test_two_different_workflows_with_one_name_are_refused():
    idx = ProgramIndex()
    idx.add(1, chain().compile().graph)
    other = tool_loop()
    other.name = "chain"
    with pytest.raises(PositionError, match="both named 'chain'"):
        idx.add(2, other.compile().graph)


def test_rows_are_reused_and_grow_past_the_initial_capacity():
    g = chain().compile().graph
    idx = ProgramIndex()
    for i in range(40):
        idx.add(i, g, Position.of("a2"))
    idx.add("late", g, Position.of("t1"))
    assert idx.min_steps(("chain", "B")) == 1
    for i in range(40):
        idx.remove(i)
    assert idx.min_steps(("chain", "A")) == 2 and len(idx) == 1


def test_unknown_and_duplicate_programs_are_errors():
    idx = ProgramIndex()
    g = chain().compile().graph
    idx.add("p", g)
    with pytest.raises(PositionError, match="already tracked"):
        idx.add("p", g)
    with pytest.raises(PositionError, match="not tracked"):
        idx.advance("q", Position.of("a1"))
    with pytest.raises(PositionError, match="not tracked"):
        idx.remove("q")


@pytest.mark.parametrize("seed", range(5))
def test_incremental_minimum_equals_recomputation(seed):
    rng = random.Random(seed)
    graphs = [random_workflow(seed * 10 + i, Shape(num_steps=25, p_fork=0.0)).compile().graph for i in range(3)]
    idx = ProgramIndex()
    live: dict[int, tuple] = {}
    for step in range(300):
        if live and rng.random() < 0.1:
            pid = rng.choice(list(live))
            idx.remove(pid)
            del live[pid]
        elif not live or rng.random() < 0.2:
            g = rng.choice(graphs)
            pos = Position.of(rng.choice(list(g.steps)))
            idx.add(step, g, pos)
            live[step] = (g, pos)
        else:
            pid = rng.choice(list(live))
            g, _ = live[pid]
            pos = Position.of(rng.choice(list(g.steps)))
            idx.advance(pid, pos)
            live[pid] = (g, pos)
        expected: dict[tuple[str, str], float] = {}
        for g, pos in live.values():
            for a, v in estimate(g, pos).steps_to_execution().items():
                expected[(g.name, a)] = min(expected.get((g.name, a), INF), v)
        assert idx.snapshot() == expected
