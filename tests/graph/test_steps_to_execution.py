"""Steps-to-execution on small graphs, pinned exactly; and against brute force on random ones."""

from __future__ import annotations

import math
import random

import pytest

from agentflow import Position, PositionError, Workflow, estimate, when
from agentflow.graph.exact import _advance, exact_steps_min
from agentflow.graph.synthetic import Shape, random_workflow

INF = math.inf


def agents(wf: Workflow, *names: str) -> None:
    for n in names:
        wf.agent(n, system_prompt=f"You are {n}.", tools=["t"])
    wf.tool("t", duration_hint_s=1.0)


def chain() -> Workflow:
    wf = Workflow("chain")
    agents(wf, "A", "B")
    wf.llm("a1", agent="A")
    wf.call("t1", tool="t", agent="A")
    wf.llm("b1", agent="B")
    wf.llm("a2", agent="A")
    wf.sequence("a1", "t1", "b1", "a2")
    return wf


def diamond() -> Workflow:
    """A conditional branch: 30% to the long side (two steps), 70% to the short side (one)."""
    wf = Workflow("diamond")
    agents(wf, "A", "B", "C")
    wf.llm("a", agent="A")
    wf.llm("long1", agent="B")
    wf.call("long2", tool="t")
    wf.llm("short", agent="C")
    wf.llm("end", agent="B")
    wf.branch("a", {"long1": when("hard")}, default="short", probabilities={"long1": 0.3})
    wf.sequence("long1", "long2", "end")
    wf.sequence("short", "end")
    return wf


def fork_join() -> Workflow:
    """plan fans out to a 3-step branch (A, A, C) and a 1-step branch (B); J joins; P again."""
    wf = Workflow("fork")
    agents(wf, "P", "A", "B", "C", "J")
    wf.llm("plan", agent="P")
    wf.llm("a1", agent="A")
    wf.llm("a2", agent="A")
    wf.llm("a3", agent="C")
    wf.llm("b1", agent="B")
    wf.llm("join", agent="J")
    wf.llm("after", agent="P")
    wf.fan_out("plan", ["a1", "b1"], join="join")
    wf.sequence("a1", "a2", "a3")
    wf.join(["a3", "b1"], "join")
    wf.sequence("join", "after")
    return wf


def tool_loop() -> Workflow:
    """think -> act, repeated up to 4 times (expected 2), then review."""
    wf = Workflow("loop")
    agents(wf, "coder", "reviewer")
    wf.llm("think", agent="coder")
    wf.call("act", tool="t", agent="coder")
    wf.llm("review", agent="reviewer")
    wf.sequence("think", "act")
    wf.loop("act", back_to="think", max_iterations=4, expected_iterations=2, exit="review")
    return wf


def shared_agent_fork() -> Workflow:
    """The same agent speaks in two parallel branches at different depths; the fork and the join
    are noop steps, which take no time."""
    wf = Workflow("shared")
    agents(wf, "S", "X")
    wf.noop("go")
    wf.llm("x1", agent="X")
    wf.llm("s_late", agent="S")
    wf.llm("s_early", agent="S")
    wf.noop("done")
    wf.fan_out("go", ["x1", "s_early"], join="done")
    wf.sequence("x1", "s_late")
    wf.join(["s_late", "s_early"], "done")
    return wf


# (workflow, position, loop_iterations, {agent: min steps})
MIN_CASES = [
    (chain, {"a1"}, {}, {"A": 0, "B": 2}),
    (chain, {"t1"}, {}, {"A": 2, "B": 1}),
    (chain, {"b1"}, {}, {"A": 1, "B": 0}),
    (chain, {"a2"}, {}, {"A": 0, "B": INF}),
    (diamond, {"a"}, {}, {"A": 0, "B": 1, "C": 1}),
    (diamond, {"long2"}, {}, {"A": INF, "B": 1, "C": INF}),
    (diamond, {"short"}, {}, {"A": INF, "B": 1, "C": 0}),
    (fork_join, {"plan"}, {}, {"P": 0, "A": 1, "B": 1, "C": 3, "J": 4}),
    (fork_join, {"a1", "b1"}, {}, {"P": 4, "A": 0, "B": 0, "C": 2, "J": 3}),
    (fork_join, {"a2"}, {}, {"P": 3, "A": 0, "B": INF, "C": 1, "J": 2}),  # b1 already done
    (fork_join, {"b1"}, {}, {"P": 2, "A": INF, "B": 0, "C": INF, "J": 1}),  # branch A already done
    (fork_join, {"a3", "b1"}, {}, {"P": 2, "A": INF, "B": 0, "C": 0, "J": 1}),
    (tool_loop, {"act"}, {}, {"coder": 1, "reviewer": 1}),
    (tool_loop, {"act"}, {"act": 2}, {"coder": 1, "reviewer": 1}),
    (tool_loop, {"act"}, {"act": 3}, {"coder": INF, "reviewer": 1}),  # last iteration: coder is done
    (tool_loop, {"think"}, {"act": 3}, {"coder": 0, "reviewer": 2}),
    (shared_agent_fork, {"go"}, {}, {"S": 0, "X": 0}),  # a noop fork: its branches start with it
    (shared_agent_fork, {"x1", "s_early"}, {}, {"S": 0, "X": 0}),
    (shared_agent_fork, {"x1"}, {}, {"S": 1, "X": 0}),
]


@pytest.mark.parametrize("build, active, loops, expected", MIN_CASES,
                         ids=[f"{c[0].__name__}-{'+'.join(sorted(c[1]))}-{c[2]}" for c in MIN_CASES])
def test_min_steps_to_execution(build, active, loops, expected):
    g = build().compile().graph
    got = estimate(g, Position.of(*active, loop_iterations=loops)).steps_to_execution()
    assert got == {a: float(v) for a, v in expected.items()}
    assert exact_steps_min(g, frozenset(active), loops) == expected


def test_expected_steps_in_a_branch_weigh_by_probability():
    g = diamond().compile().graph
    e = estimate(g, Position.of("a"))
    # B: via long1 (p 0.3, 1 step) or via short then end (p 0.7, 2 steps): 0.3*1 + 0.7*2
    assert e.expected_steps()["B"] == pytest.approx(1.7)
    # C only on the short side: runs again with p 0.7, 1 step away when it does
    assert e.hit_probability[g.agents.index("C")] == pytest.approx(0.7)
    assert e.expected_steps()["C"] == pytest.approx(1.0)
    # expected LLM calls left: a, then 0.3*(long1 + end) + 0.7*(short + end)
    assert e.remaining_calls == pytest.approx(1 + 0.3 * 2 + 0.7 * 2)


def test_expected_steps_in_a_loop_are_geometric():
    g = tool_loop().compile().graph
    e = estimate(g, Position.of("act"))
    # p(continue) = 1 - 1/2: coder next in 1 step w.p. 1/2; else never again (reviewer ends it)
    assert e.hit_probability[g.agents.index("coder")] == pytest.approx(0.5)
    assert e.expected_steps()["coder"] == pytest.approx(1.0)
    # reviewer: every pass adds 2 rounds (act -> think -> act) before the exit: 1 + 2 * E[extra passes]
    assert e.expected_steps()["reviewer"] == pytest.approx(1 + 2 * 1.0)
    start = estimate(g, Position.of("think"))
    assert start.remaining_calls == pytest.approx(2 + 1)  # 2 expected thinks + the review


def test_parallel_branches_join_after_the_slowest():
    g = fork_join().compile().graph
    e = estimate(g, Position.of("plan"))
    assert e.expected_steps()["J"] == pytest.approx(4.0)
    assert e.remaining_calls == pytest.approx(7.0)
    assert estimate(g, Position.of("a2", "b1")).remaining_calls == pytest.approx(5.0)


def test_finished_program_needs_nobody():
    g = chain().compile().graph
    e = estimate(g, Position.of())
    assert e.steps_to_execution() == {"A": INF, "B": INF}
    assert e.remaining_calls == 0.0


@pytest.mark.parametrize("position, message", [
    (Position.of("nope"), "no step 'nope'"),
    (Position.of("act", loop_iterations={"think": 1}), "no loop at step 'think'"),
    (Position.of("act", loop_iterations={"act": 4}), "allows 0..3"),
])
def test_bad_positions_are_rejected(position, message):
    g = tool_loop().compile().graph
    with pytest.raises(PositionError, match=message):
        estimate(g, position)


def _simulate_expected(g, start: str, agent: str, rng: random.Random, runs: int) -> tuple[float, float]:
    """Monte Carlo of the planning model on a graph without forks: (P(hit), E[T | hit])."""
    from agentflow.graph.model import Branch, Loop, Next

    hits, total = 0, 0.0
    for _ in range(runs):
        s, t = start, 0
        while True:
            node = g.steps[s]
            if node.agent == agent and node.kind.value == "llm":
                hits += 1
                total += t
                break
            tr = g.transitions[s]
            if tr is None:
                break
            if isinstance(tr, Next):
                s = tr.target
            elif isinstance(tr, Branch):
                r, acc, s = rng.random(), 0.0, tr.default
                for c in tr.cases:
                    acc += c.probability
                    if r < acc:
                        s = c.target
                        break
            elif isinstance(tr, Loop):
                if rng.random() < tr.continue_probability:
                    s = tr.back_to
                elif tr.exit is None:
                    break
                else:
                    s = tr.exit
            t += 0 if node.kind.value == "noop" else 1  # noops take no time
    return hits / runs, (total / hits if hits else INF)


@pytest.mark.parametrize("seed", range(6))
def test_expected_values_match_a_simulation_of_the_planning_model(seed):
    shape = Shape(num_steps=14, p_fork=0.0, p_branch=0.25, p_loop=0.25)
    g = random_workflow(seed, shape).compile().graph
    rng = random.Random(seed)
    start = g.entry
    e = estimate(g, Position.of(start))
    for i, a in enumerate(g.agents):
        p, t = _simulate_expected(g, start, a, rng, runs=4000)
        assert e.hit_probability[i] == pytest.approx(p, abs=0.03)
        if p > 0.2:
            assert e.steps_expected[i] == pytest.approx(t, rel=0.08, abs=0.15)


@pytest.mark.parametrize("seed", range(25))
def test_tables_equal_brute_force_on_reachable_positions(seed):
    """Random walks of the brute-force simulator; at every state both must agree exactly."""
    g = random_workflow(seed, Shape(num_steps=14, p_fork=0.25, p_loop=0.2)).compile().graph
    joins = {reg.join: f for f, reg in g.regions.items() if reg.join is not None}
    rng = random.Random(seed)
    for _ in range(3):
        state = (((g.entry, False),), ())
        for _ in range(30):
            tokens, counters = state
            active = frozenset(s for s, waiting in tokens if not waiting)
            if not active:
                break
            got = estimate(g, Position.of(*active, loop_iterations=dict(counters))).steps_to_execution()
            assert got == {k: float(v) for k, v in exact_steps_min(g, active, dict(counters)).items()}, (
                sorted(active), counters)
            state = rng.choice(list(_advance(g, state, joins)))


@pytest.mark.parametrize("seed", range(12))
def test_exhausted_loop_rows_equal_a_full_recomputation_without_the_back_edge(seed):
    """Re-solving only a loop's body must agree with re-solving the whole graph, on the body."""
    import numpy as np

    from agentflow.graph.analysis import _Computation

    g = random_workflow(seed, Shape(num_steps=30, p_fork=0.2, p_loop=0.3)).compile().graph
    for loop, info in g.loops.items():
        outer = [o for o, oi in g.loops.items() if o != loop and info.body < oi.body]
        fast = g.analysis_without(frozenset({loop}))
        full = _Computation(g, frozenset({loop})).run()
        rows = [fast.index[s] for s in info.body]
        assert np.array_equal(fast.dmin[rows], full.dmin[rows])
        if not outer:  # inside an outer loop, a full re-solve would also disable re-entries
            np.testing.assert_allclose(fast.dexp[rows], full.dexp[rows], rtol=1e-9)
            np.testing.assert_allclose(fast.hit[rows], full.hit[rows], atol=1e-12)
            np.testing.assert_allclose(fast.rem_calls[rows], full.rem_calls[rows], rtol=1e-9)
