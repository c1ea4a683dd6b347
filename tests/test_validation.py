"""Every validation error: its code, the step it names, and that it says how to fix it."""

from __future__ import annotations

import pytest

from agentflow import ProblemCode, Workflow, WorkflowValidationError, when

P = ProblemCode


def base(name="wf") -> Workflow:
    wf = Workflow(name)
    wf.agent("a", system_prompt="A", tools=["bash"])
    wf.agent("b", system_prompt="B")
    wf.tool("bash", duration_hint_s=1.0)
    return wf


def unknown_agent(wf):
    wf.llm("s", agent="ghost")


def unknown_tool(wf):
    wf.call("s", tool="rm_rf")


def unknown_tool_on_agent(wf):
    wf.agent("c", system_prompt="C", tools=["missing"])
    wf.llm("s", agent="c")


def tool_not_allowed(wf):
    wf.call("s", tool="bash", agent="b")


def duplicate_step(wf):
    wf.llm("s", agent="a")
    wf.llm("s", agent="b")


def duplicate_agent(wf):
    wf.agent("a", system_prompt="again")
    wf.llm("s", agent="a")


def unbounded_cycle(wf):
    wf.llm("s", agent="a")
    wf.llm("t", agent="b")
    wf.sequence("s", "t", "s")


def loop_to_a_later_step(wf):
    wf.llm("s", agent="a")
    wf.llm("t", agent="b")
    wf.sequence("s", "t")
    wf.loop("s", back_to="t", max_iterations=3)


def loop_without_bound(wf):
    wf.llm("s", agent="a")
    wf.loop("s", back_to="s", max_iterations=0)


def unreachable(wf):
    wf.llm("s", agent="a")
    wf.llm("island", agent="b")


def join_without_fan_out(wf):
    wf.llm("s", agent="a")
    wf.llm("t", agent="b")
    wf.llm("j", agent="a")
    wf.branch("s", {"t": when("x")}, default="j")
    wf.join(["t"], "j")


def branches_meet_outside_join(wf):
    wf.llm("s", agent="a")
    wf.llm("x", agent="a")
    wf.llm("y", agent="b")
    wf.llm("meet", agent="a")
    wf.fan_out("s", ["x", "y"])
    wf.sequence("x", "meet")
    wf.sequence("y", "meet")


def branch_never_joins(wf):
    wf.llm("s", agent="a")
    wf.llm("x", agent="a")
    wf.llm("y", agent="b")
    wf.llm("j", agent="a")
    wf.fan_out("s", ["x", "y"], join="j")
    wf.join(["x"], "j")


def no_default_branch(wf):
    wf.llm("s", agent="a")
    wf.llm("t", agent="b")
    wf.branch("s", {"t": when("x")})


def bad_probabilities(wf):
    wf.llm("s", agent="a")
    wf.llm("t", agent="b")
    wf.llm("u", agent="b")
    wf.branch("s", {"t": when("x")}, default="u", probabilities={"t": 1.4})


def two_successor_kinds(wf):
    wf.llm("s", agent="a")
    wf.llm("t", agent="b")
    wf.llm("u", agent="b")
    wf.sequence("s", "t")
    wf.branch("s", {"t": when("x")}, default="u")


def edge_to_unknown_step(wf):
    wf.llm("s", agent="a")
    wf.sequence("s", "nowhere")


def loop_out_of_a_branch(wf):
    wf.llm("s", agent="a")
    wf.llm("x", agent="a")
    wf.llm("y", agent="b")
    wf.llm("j", agent="a")
    wf.fan_out("s", ["x", "y"], join="j")
    wf.join(["x", "y"], "j")
    wf.loop("x", back_to="s", max_iterations=2)


def empty(wf):
    pass


CASES = [
    (unknown_agent, P.UNKNOWN_AGENT, "s", "agent('ghost'"),
    (unknown_tool, P.UNKNOWN_TOOL, "s", "tool('rm_rf'"),
    (unknown_tool_on_agent, P.UNKNOWN_TOOL, None, "tool('missing'"),
    (tool_not_allowed, P.TOOL_NOT_ALLOWED, "s", "tools=[...]"),
    (duplicate_step, P.DUPLICATE_NAME, "s", "unique name"),
    (duplicate_agent, P.DUPLICATE_NAME, None, "unique name"),
    (unbounded_cycle, P.UNBOUNDED_CYCLE, "s", "max_iterations=N"),
    (loop_to_a_later_step, P.BAD_LOOP, "s", "loop back to a step on the path"),
    (loop_without_bound, P.BAD_LOOP, "s", "positive max_iterations"),
    (unreachable, P.UNREACHABLE_STEP, "island", "connect it"),
    (join_without_fan_out, P.JOIN_WITHOUT_FAN_OUT, "j", "fan_out(<step>, [...], join='j')"),
    (branches_meet_outside_join, P.BAD_FAN_OUT, "meet", "join='meet'"),
    (branch_never_joins, P.BAD_FAN_OUT, "y", "lead this branch into 'j'"),
    (no_default_branch, P.NO_DEFAULT_BRANCH, "s", "default='<step>'"),
    (bad_probabilities, P.BAD_PROBABILITY, "s", "sum to at most 1"),
    (two_successor_kinds, P.CONFLICTING_EDGES, "s", "one successor kind"),
    (edge_to_unknown_step, P.UNKNOWN_STEP, "s", "define that step"),
    (loop_out_of_a_branch, P.BAD_LOOP, "x", "around the whole fan-out/join"),
    (empty, P.EMPTY_WORKFLOW, None, "add at least one step"),
]


@pytest.mark.parametrize("build, code, step, fix", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_problem_names_its_step_and_fix(build, code, step, fix):
    wf = base()
    build(wf)
    with pytest.raises(WorkflowValidationError) as info:
        wf.compile()
    matching = [p for p in info.value.problems if p.code is code]
    assert matching, f"expected {code}, got {info.value.codes}"
    problem = matching[0]
    assert problem.step == step
    assert fix in problem.fix
    assert f"[{code.value}]" in str(info.value)
    assert "Fix:" in str(info.value)


def test_all_problems_are_reported_at_once():
    wf = base()
    wf.llm("s", agent="ghost")
    wf.call("t", tool="nope")
    wf.llm("island", agent="a")
    wf.sequence("s", "t")
    with pytest.raises(WorkflowValidationError) as info:
        wf.compile()
    assert set(info.value.codes) >= {P.UNKNOWN_AGENT, P.UNKNOWN_TOOL}
    assert "workflow 'wf' has" in str(info.value)


def test_a_valid_workflow_compiles_to_an_immutable_object():
    wf = base()
    wf.llm("s", agent="a")
    compiled = wf.compile()
    with pytest.raises(TypeError):
        compiled.steps["x"] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        compiled.name = "other"  # type: ignore[misc]


def test_a_bad_probability_names_the_value_given_and_a_forgotten_join_names_the_join():
    wf = Workflow("p")
    wf.agent("a", system_prompt="x")
    wf.agent("b", system_prompt="y")
    bad_probabilities(wf)
    with pytest.raises(WorkflowValidationError) as info:
        wf.compile()
    (problem,) = info.value.problems
    assert problem.message == "probability 1.4 for 't' lies outside [0, 1]"  # not "(got sum 1)"
    wf = Workflow("j")
    wf.agent("a", system_prompt="x")
    for s in ("plan", "r1", "r2", "write"):
        wf.llm(s, agent="a")
    wf.fan_out("plan", ["r1", "r2"], join="write")  # and no wf.join(["r1", "r2"], "write")
    with pytest.raises(WorkflowValidationError) as info:
        wf.compile()
    (problem,) = info.value.problems
    assert problem.message == "it is the join of fan-out 'plan', but no branch leads into it"
    assert problem.fix == "lead the last step of each branch into it: join(['r1', 'r2'], 'write')"
