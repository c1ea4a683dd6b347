"""enter_step / leave_step: how a program's position moves as its steps start and end (graph/position.py).

Each case is a tiny graph, a position, the step entered (or left), and the exact position after it:
the `active` set and the `loop_iterations` counts.
"""

from __future__ import annotations

import pytest

from agentflow import Position, PositionError, Workflow, when
from agentflow.graph.position import enter_step, leave_step
from tests.graph.test_steps_to_execution import agents, fork_join, tool_loop

# ---- graphs --------------------------------------------------------------------------------------


def _llms(wf: Workflow, *names: str, agent: str = "A") -> None:
    for n in names:
        wf.llm(n, agent=agent)


def routed_branch() -> Workflow:
    """a -> route (noop) -> x if hard, else y; both -> done."""
    wf = Workflow("routed")
    agents(wf, "A")
    _llms(wf, "a", "x", "y", "done")
    wf.noop("route")
    wf.sequence("a", "route")
    wf.branch("route", {"x": when("hard")}, default="y")
    wf.sequence("x", "done")
    wf.sequence("y", "done")
    return wf


def back_through_noop() -> Workflow:
    """plan -> again (noop) -> think -> act; act loops back to `again` (max 3), exits to review."""
    wf = Workflow("back_noop")
    agents(wf, "A")
    _llms(wf, "plan", "think", "act", "review")
    wf.noop("again")
    wf.sequence("plan", "again", "think", "act")
    wf.loop("act", back_to="again", max_iterations=3, exit="review")
    return wf


def nested_loops() -> Workflow:
    """plan -> think -> act; inner loop act -> think (max 3) exits to check; outer loop check -> plan (max 2)."""
    wf = Workflow("nested")
    agents(wf, "A")
    _llms(wf, "plan", "think", "act", "check", "review")
    wf.sequence("plan", "think", "act")
    wf.loop("act", back_to="think", max_iterations=3, exit="check")
    wf.loop("check", back_to="plan", max_iterations=2, exit="review")
    return wf


def shared_head() -> Workflow:
    """Two loops with one head: act1 -> plan (max 3) exits to act2; act2 -> plan (max 2)."""
    wf = Workflow("shared_head")
    agents(wf, "A")
    _llms(wf, "plan", "act1", "act2", "review")
    wf.sequence("plan", "act1")
    wf.loop("act1", back_to="plan", max_iterations=3, exit="act2")
    wf.loop("act2", back_to="plan", max_iterations=2, exit="review")
    return wf


def fork_noop_branch() -> Workflow:
    """plan fans out to n (noop) -> x and to y; j joins x and y."""
    wf = Workflow("fork_noop_branch")
    agents(wf, "A")
    _llms(wf, "plan", "x", "y", "j")
    wf.noop("n")
    wf.fan_out("plan", ["n", "y"], join="j")
    wf.sequence("n", "x")
    wf.join(["x", "y"], "j")
    return wf


def noop_fork() -> Workflow:
    """plan -> split (noop) fans out to a and b; j joins them."""
    wf = Workflow("noop_fork")
    agents(wf, "A")
    _llms(wf, "plan", "a", "b", "j")
    wf.noop("split")
    wf.sequence("plan", "split")
    wf.fan_out("split", ["a", "b"], join="j")
    wf.join(["a", "b"], "j")
    return wf


def noop_loop_source() -> Workflow:
    """think -> act -> check (noop); check loops back to think (max 2), exits to review."""
    wf = Workflow("noop_loop")
    agents(wf, "A")
    _llms(wf, "think", "act", "review")
    wf.noop("check")
    wf.sequence("think", "act", "check")
    wf.loop("check", back_to="think", max_iterations=2, exit="review")
    return wf


def self_loop() -> Workflow:
    """only repeats itself (max 3), then after."""
    wf = Workflow("self_loop")
    agents(wf, "A")
    _llms(wf, "only", "after")
    wf.loop("only", back_to="only", max_iterations=3, exit="after")
    return wf


def loop_ends_program() -> Workflow:
    """think -> act; act loops back to think (max 4); no exit: the program ends with the loop."""
    wf = Workflow("loop_end")
    agents(wf, "A")
    _llms(wf, "think", "act")
    wf.sequence("think", "act")
    wf.loop("act", back_to="think", max_iterations=4)
    return wf


def fork_without_join() -> Workflow:
    """plan fans out to code -> run (run loops back to code, max 3) and to lint; no join: both end."""
    wf = Workflow("no_join")
    agents(wf, "A")
    _llms(wf, "plan", "code", "run", "lint")
    wf.fan_out("plan", ["code", "lint"])
    wf.sequence("code", "run")
    wf.loop("run", back_to="code", max_iterations=3)
    return wf


# ---- enter_step ---------------------------------------------------------------------------------

# (graph, active before, loops before, step entered, active after, loops after)
ENTER_CASES = [
    # a plain loop: the back edge counts an iteration, the exit drops the count
    pytest.param(tool_loop, {"think"}, {}, "act", {"act"}, {}, id="loop-first-pass"),
    pytest.param(tool_loop, {"act"}, {}, "think", {"think"}, {"act": 1}, id="loop-back-counts"),
    pytest.param(tool_loop, {"act"}, {"act": 2}, "think", {"think"}, {"act": 3}, id="loop-back-counts-again"),
    pytest.param(tool_loop, {"think"}, {"act": 3}, "act", {"act"}, {"act": 3}, id="loop-body-keeps-count"),
    pytest.param(tool_loop, {"act"}, {"act": 3}, "review", {"review"}, {}, id="loop-exit-drops-count"),
    pytest.param(tool_loop, {"act"}, {}, "review", {"review"}, {}, id="loop-exit-first-pass"),
    pytest.param(tool_loop, {"act"}, {}, "act", {"act"}, {}, id="already-active-unchanged"),
    # a branch through a noop routing step: the step before the noop is done, the noop passed through
    pytest.param(routed_branch, {"a"}, {}, "x", {"x"}, {}, id="routed-branch-case"),
    pytest.param(routed_branch, {"a"}, {}, "y", {"y"}, {}, id="routed-branch-default"),
    pytest.param(routed_branch, {"a"}, {}, "route", {"route"}, {}, id="routed-branch-enter-noop"),
    pytest.param(routed_branch, {"route"}, {}, "y", {"y"}, {}, id="routed-branch-from-noop"),
    pytest.param(routed_branch, {"x"}, {}, "done", {"done"}, {}, id="routed-branch-merge"),
    # a loop whose back edge reaches its head through a noop
    pytest.param(back_through_noop, {"plan"}, {}, "think", {"think"}, {}, id="back-noop-first-pass"),
    pytest.param(back_through_noop, {"act"}, {}, "think", {"think"}, {"act": 1}, id="back-noop-counts"),
    pytest.param(back_through_noop, {"act"}, {"act": 1}, "think", {"think"}, {"act": 2}, id="back-noop-counts-again"),
    pytest.param(back_through_noop, {"act"}, {"act": 2}, "review", {"review"}, {}, id="back-noop-exit"),
    # nested loops: the inner count goes when the inner loop exits, before the outer loop iterates
    pytest.param(nested_loops, {"act"}, {"act": 1, "check": 1}, "think", {"think"}, {"act": 2, "check": 1},
                 id="nested-inner-back"),
    pytest.param(nested_loops, {"act"}, {"act": 2, "check": 1}, "check", {"check"}, {"check": 1},
                 id="nested-inner-exit-keeps-outer"),
    pytest.param(nested_loops, {"check"}, {}, "plan", {"plan"}, {"check": 1}, id="nested-outer-back"),
    pytest.param(nested_loops, {"check"}, {"check": 1}, "review", {"review"}, {}, id="nested-outer-exit"),
    pytest.param(shared_head, {"act1"}, {"act1": 1}, "plan", {"plan"}, {"act1": 2}, id="shared-head-inner-back"),
    pytest.param(shared_head, {"act1"}, {"act1": 2}, "act2", {"act2"}, {}, id="shared-head-inner-exit"),
    pytest.param(shared_head, {"act2"}, {}, "plan", {"plan"}, {"act2": 1}, id="shared-head-outer-back"),
    # a fan-out: entering one branch start marks the sibling branch starts ready
    pytest.param(fork_join, {"plan"}, {}, "a1", {"a1", "b1"}, {}, id="fork-first-branch"),
    pytest.param(fork_join, {"plan"}, {}, "b1", {"a1", "b1"}, {}, id="fork-second-branch"),
    pytest.param(fork_join, {"a1", "b1"}, {}, "b1", {"a1", "b1"}, {}, id="fork-sibling-already-ready"),
    pytest.param(fork_join, {"a1", "b1"}, {}, "a2", {"a2", "b1"}, {}, id="fork-branch-advances"),
    pytest.param(fork_join, {"a3", "b1"}, {}, "join", {"join"}, {}, id="fork-join-ends-all-branches"),
    pytest.param(fork_join, {"a3"}, {}, "join", {"join"}, {}, id="fork-join-after-short-branch"),
    # a fork whose branch starts with a noop: the noop is the branch start that is marked ready
    pytest.param(fork_noop_branch, {"plan"}, {}, "x", {"x", "y"}, {}, id="fork-noop-branch-enter-through-noop"),
    pytest.param(fork_noop_branch, {"plan"}, {}, "y", {"n", "y"}, {}, id="fork-noop-branch-sibling-is-noop"),
    pytest.param(fork_noop_branch, {"n", "y"}, {}, "x", {"x", "y"}, {}, id="fork-noop-branch-noop-passed"),
    pytest.param(fork_noop_branch, {"x", "y"}, {}, "j", {"j"}, {}, id="fork-noop-branch-join"),
    # believed wrong today
    pytest.param(noop_fork, {"plan"}, {}, "a", {"a", "b"}, {}, id="noop-fork-step-marks-siblings"),
    pytest.param(noop_fork, {"a", "b"}, {}, "j", {"j"}, {}, id="noop-fork-step-join"),
    pytest.param(noop_loop_source, {"act"}, {}, "think", {"think"}, {"check": 1}, id="noop-loop-source-counts"),
    pytest.param(noop_loop_source, {"act"}, {"check": 1}, "review", {"review"}, {}, id="noop-loop-source-exit"),
    pytest.param(self_loop, {"only"}, {"only": 2}, "after", {"after"}, {}, id="self-loop-exit"),
]


@pytest.mark.parametrize("build, active, loops, step, active_after, loops_after", ENTER_CASES)
def test_enter_step(build, active, loops, step, active_after, loops_after):
    g = build().compile().graph
    before = Position.of(*active, loop_iterations=loops)
    after = enter_step(g, before, step)
    assert after.active == frozenset(active_after)
    assert dict(after.loop_iterations) == loops_after
    assert before == Position.of(*active, loop_iterations=loops)  # positions are values: the old one is intact


# (graph, steps entered from the start, (active, loops) after each)
WALKS = {
    "nested-loops": (nested_loops, [
        ("think", {"think"}, {}),
        ("act", {"act"}, {}),
        ("think", {"think"}, {"act": 1}),
        ("act", {"act"}, {"act": 1}),
        ("think", {"think"}, {"act": 2}),
        ("act", {"act"}, {"act": 2}),
        ("check", {"check"}, {}),  # the inner loop is left: its count goes
        ("plan", {"plan"}, {"check": 1}),  # the outer loop iterates; the inner one starts again from 0
        ("think", {"think"}, {"check": 1}),
        ("act", {"act"}, {"check": 1}),
        ("think", {"think"}, {"act": 1, "check": 1}),
        ("act", {"act"}, {"act": 1, "check": 1}),
        ("check", {"check"}, {"check": 1}),
        ("review", {"review"}, {}),
    ]),
    "fork-noop-branch": (fork_noop_branch, [
        ("y", {"n", "y"}, {}),
        ("x", {"x", "y"}, {}),
        ("j", {"j"}, {}),
    ]),
    "back-through-noop": (back_through_noop, [
        ("think", {"think"}, {}),
        ("act", {"act"}, {}),
        ("think", {"think"}, {"act": 1}),
        ("act", {"act"}, {"act": 1}),
        ("review", {"review"}, {}),
    ]),
}


@pytest.mark.parametrize("name", list(WALKS))
def test_walk(name):
    build, steps = WALKS[name]
    g = build().compile().graph
    pos = Position.start(g)
    for step, active, loops in steps:
        pos = enter_step(g, pos, step)
        assert (step, pos.active, dict(pos.loop_iterations)) == (step, frozenset(active), loops)


# (graph, active before, loops before, step entered, error message)
ENTER_ERRORS = [
    pytest.param(tool_loop, {"think"}, {}, "nope", "no step 'nope'", id="unknown-step"),
    pytest.param(tool_loop, {"act"}, {"act": 3}, "think", "went past its 4 iterations", id="loop-past-max"),
    pytest.param(back_through_noop, {"act"}, {"act": 2}, "think", "went past its 3 iterations",
                 id="back-noop-past-max"),
    pytest.param(nested_loops, {"act"}, {"act": 2, "check": 1}, "think", "loop at 'act' went past its 3",
                 id="nested-inner-past-max"),
    pytest.param(nested_loops, {"check"}, {"check": 1}, "plan", "loop at 'check' went past its 2",
                 id="nested-outer-past-max"),
    pytest.param(noop_loop_source, {"act"}, {"check": 1}, "think", "loop at 'check' went past its 2",
                 id="noop-loop-source-past-max"),
]


def test_a_step_that_loops_to_itself_runs_again_only_when_told():
    g = self_loop().compile().graph
    pos = Position.of("only")
    assert enter_step(g, pos, "only") == pos  # made ready earlier, now started: nothing changes
    again = enter_step(g, pos, "only", again=True)
    assert again.active == frozenset({"only"}) and dict(again.loop_iterations) == {"only": 1}
    with pytest.raises(PositionError, match="loop at 'only' went past its 3"):
        enter_step(g, Position.of("only", loop_iterations={"only": 2}), "only", again=True)


@pytest.mark.parametrize("build, active, loops, step, message", ENTER_ERRORS)
def test_enter_step_rejects(build, active, loops, step, message):
    g = build().compile().graph
    with pytest.raises(PositionError, match=message):
        enter_step(g, Position.of(*active, loop_iterations=loops), step)


# ---- leave_step ---------------------------------------------------------------------------------

# (graph, active before, loops before, step left, active after, loops after)
LEAVE_CASES = [
    pytest.param(fork_join, {"after"}, {}, "after", set(), {}, id="last-step-finishes"),
    pytest.param(loop_ends_program, {"act"}, {"act": 2}, "act", set(), {}, id="loop-ends-program-drops-count"),
    pytest.param(fork_without_join, {"run", "lint"}, {"run": 1}, "lint", {"run"}, {"run": 1},
                 id="other-branch-ends-loop-keeps-count"),
    pytest.param(fork_without_join, {"code", "lint"}, {"run": 1}, "lint", {"code"}, {"run": 1},
                 id="other-branch-ends-loop-head-keeps-count"),
    pytest.param(fork_without_join, {"run", "lint"}, {"run": 2}, "run", {"lint"}, {}, id="loop-branch-ends"),
    pytest.param(fork_without_join, {"lint"}, {}, "lint", set(), {}, id="last-branch-ends"),
]


@pytest.mark.parametrize("build, active, loops, step, active_after, loops_after", LEAVE_CASES)
def test_leave_step(build, active, loops, step, active_after, loops_after):
    g = build().compile().graph
    after = leave_step(g, Position.of(*active, loop_iterations=loops), step)
    assert after.active == frozenset(active_after)
    assert dict(after.loop_iterations) == loops_after
    assert after.finished == (not active_after)


def test_leave_step_rejects_unknown_step():
    g = tool_loop().compile().graph
    with pytest.raises(PositionError, match="no step 'nope'"):
        leave_step(g, Position.of("act"), "nope")
