"""Workflow files: round trips with the builder, clear errors, the published JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from agentflow import SpecError, Workflow, WorkflowSpec, WorkflowValidationError, load_workflow, when
from agentflow.graph.synthetic import Shape, random_workflow

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "agentflow" / "schemas" / "workflow.schema.json"


def is_even(state) -> bool:  # a module-level condition: written to files as a reference
    return state.get("n", 0) % 2 == 0


def sample() -> Workflow:
    wf = Workflow("sample", description="all edge kinds")
    wf.agent("a", system_prompt="You plan.", model="llama-3.1-8b", tools=["search"])
    wf.agent("b", system_prompt="You write.")
    wf.tool("search", duration_hint_s=0.5, impl="tests.test_spec:is_even")
    wf.llm("plan", agent="a", prompt="Task: {task}", expected_output_tokens=64)
    wf.call("s1", tool="search", agent="a", args={"q": "{task}"})
    wf.llm("s2", agent="b", inputs=["plan"])
    wf.noop("join")
    wf.llm("check", agent="a")
    wf.llm("fix", agent="b")
    wf.llm("done", agent="b", max_tokens=100)
    wf.fan_out("plan", ["s1", "s2"], join="join")
    wf.join(["s1", "s2"], "join")
    wf.sequence("join", "check")
    wf.branch("check", {"fix": when("bugs", "gt", 0)}, default="done", probabilities={"fix": 0.25})
    wf.loop("fix", back_to="check", max_iterations=3, expected_iterations=1.5, while_=is_even, exit="done")
    return wf


def test_yaml_and_json_round_trip_exactly():
    compiled = sample().compile()
    spec = compiled.spec()
    for text, fmt in ((spec.to_yaml(), "yaml"), (spec.to_json(), "json")):
        again = WorkflowSpec.parse(text, fmt=fmt)
        assert again == spec
        recompiled = again.compile()
        assert recompiled.spec() == spec
        assert dict(recompiled.graph.transitions).keys() == dict(compiled.graph.transitions).keys()


def test_conditions_survive_as_declarative_or_reference():
    spec = sample().compile().spec()
    check = next(s for s in spec.steps if s.name == "check")
    assert check.branch.cases[0].when.model_dump(mode="json") == {"key": "bugs", "op": "gt", "value": 0}
    fix = next(s for s in spec.steps if s.name == "fix")
    assert fix.loop.while_.ref == "tests.test_spec:is_even"
    compiled = WorkflowSpec.parse(spec.to_yaml()).compile()
    loop = compiled.graph.transitions["fix"]
    assert loop.while_({"n": 4}) is True and loop.while_({"n": 3}) is False


@pytest.mark.parametrize("seed", range(10))
def test_random_workflows_round_trip(seed):
    compiled = random_workflow(seed, Shape(num_steps=20)).compile()
    spec = compiled.spec()
    assert WorkflowSpec.parse(spec.to_yaml()).compile().spec() == spec


def test_a_lambda_cannot_be_written_to_a_file():
    wf = Workflow("l")
    wf.agent("a", system_prompt="x")
    wf.llm("s", agent="a")
    wf.llm("t", agent="a")
    wf.llm("u", agent="a")
    wf.branch("s", {"t": lambda st: True}, default="u")
    with pytest.raises(SpecError, match="lambda"):
        wf.compile().spec()


@pytest.mark.parametrize("text, field, message", [
    ("name: x\nsteps: []\n", "steps", "at least 1"),
    ("name: x\nsteps:\n  - {name: s, kind: llm}\n", "steps[0](s).agent", "Field required"),
    ("name: x\nsteps:\n  - {name: s, kind: robot}\n", "steps[0](s).kind", "'robot' is not one of llm, tool, noop"),
    ("name: x\nsteps:\n  - {name: s, kind: llm, agent: a, loop: {back_to: s, max_iterations: 0}}\n",
     "steps[0](s).loop.max_iterations", "greater than or equal to 1"),
    ("name: x\nsteps:\n  - {name: s, kind: tool, tool: t, colour: red}\n", "steps[0](s).colour",
     "unknown field 'colour'; valid fields: name, next"),
    ("name: x\nspec_version: 2\nsteps:\n  - {name: s, kind: noop}\n", "spec_version", "'2' is not one of 1"),
])
def test_malformed_files_name_the_field(text, field, message):
    with pytest.raises(SpecError) as info:
        WorkflowSpec.parse(text, source="wf.yaml")
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith("wf.yaml, field ")


def test_every_field_error_is_reported_with_its_path_and_a_did_you_mean():
    text = ("name: x\nagents:\n  - {name: a, system_promt: hi}\nsteps:\n"
            "  - {name: s1, kind: llm, agnet: a, promt: hi, nxt: s2}\n"
            "  - {name: s2, kind: llm, agent: a, loop: {back_to: s1, max_iteration: 3}}\n")
    with pytest.raises(SpecError) as info:
        WorkflowSpec.parse(text, source="wf.yaml")
    assert str(info.value).splitlines() == [
        "wf.yaml: 5 field errors:",
        "  - agents[0](a).system_promt: unknown field 'system_promt'; did you mean 'system_prompt'?",
        "  - steps[0](s1).agnet: unknown field 'agnet'; did you mean 'agent'?",
        "  - steps[0](s1).promt: unknown field 'promt'; did you mean 'prompt'?",
        "  - steps[0](s1).nxt: unknown field 'nxt'; did you mean 'next'?",
        "  - steps[1](s2).loop.max_iteration: unknown field 'max_iteration'; did you mean 'max_iterations'?",
    ]  # the 'missing agent' and 'missing max_iterations' errors are the typos', not reported twice


def test_a_condition_typo_reports_the_closest_variant_only():
    text = "name: x\nsteps:\n  - {name: s, kind: noop, branch: {cases: [{to: s, when: {key: k, op: trthy}}]}}\n"
    with pytest.raises(SpecError) as info:
        WorkflowSpec.parse(text, source="wf.yaml")
    assert info.value.field == "steps[0](s).branch.cases[0].when.op"
    assert "'trthy' is not one of" in str(info.value) and "did you mean 'truthy'?" in str(info.value)


def test_invalid_yaml_and_wrong_top_level():
    with pytest.raises(SpecError, match="not valid YAML"):
        WorkflowSpec.parse("name: [unclosed", source="a.yaml")
    with pytest.raises(SpecError, match="mapping at top level"):
        WorkflowSpec.parse("- 1\n- 2\n", source="a.yaml")


def test_a_valid_file_with_a_broken_workflow_reports_the_steps(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\n"
        "agents: [{name: a, system_prompt: hi}]\n"
        "steps:\n"
        "  - {name: s, kind: llm, agent: ghost, next: t}\n"
        "  - {name: t, kind: llm, agent: a, next: s}\n"
    )
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(path)
    text = str(info.value)
    assert "step 's': unknown agent 'ghost'" in text
    assert "the cycle" in text


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_workflow(tmp_path / "none.yaml")


def test_published_schema_is_current_and_validates_specs():
    assert SCHEMA.exists(), "run: agentflow schema -o agentflow/schemas/workflow.schema.json"
    published = json.loads(SCHEMA.read_text())
    assert published == WorkflowSpec.json_schema(), "stale: run agentflow schema -o agentflow/schemas/workflow.schema.json"
    jsonschema.validate(sample().compile().spec().to_dict(), published)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "steps": [{"name": "s", "kind": "robot"}]}, published)


def test_python_workflow_files_keep_importable_tool_references(tmp_path, monkeypatch):
    """examples/swe_agent.py loads as examples.swe_agent: its tools survive a trip through YAML."""
    import subprocess
    import sys

    monkeypatch.chdir(ROOT)
    compiled = load_workflow("examples/swe_agent.py")
    impls = {t.impl for t in compiled.tools.values()}
    assert all(i and i.startswith("examples.swe_agent:") for i in impls), impls
    path = tmp_path / "swe.yaml"
    path.write_text(compiled.spec().to_yaml())
    code = f"import agentflow; c = agentflow.load_workflow({str(path)!r}, resolve=True); print(sorted(c.tools))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "bash" in out.stdout


def test_builder_shows_what_it_declared():
    wf = sample()
    assert list(wf.agents) == ["a", "b"]
    assert wf.steps["s2"].inputs == ("plan",)
    with pytest.raises(TypeError):
        wf.agents["c"] = None  # type: ignore[index]


def test_branch_probabilities_carry_no_float_noise():
    wf = Workflow("p")
    wf.agent("a", system_prompt="x")
    for s in ("s", "t", "u", "v"):
        wf.llm(s, agent="a")
    wf.branch("s", {"t": when("x"), "u": when("y")}, default="v", probabilities={"t": 0.69, "u": 0.28})
    spec = wf.compile().spec()
    assert spec.steps[0].branch.default_probability == 0.03


def review_stage() -> Workflow:
    wf = Workflow("review")
    wf.agent("b", system_prompt="You write.")  # the same definition as in sample(): shared
    wf.agent("critic", system_prompt="You criticise.")
    wf.llm("critique", agent="critic")
    wf.llm("revise", agent="b")
    wf.sequence("critique", "revise")
    wf.loop("revise", back_to="critique", max_iterations=3, expected_iterations=2)
    return wf


def test_subworkflows_inline_with_prefixed_steps_and_shared_agents():
    from agentflow import Position, estimate

    wf = Workflow("outer")
    wf.agent("b", system_prompt="You write.")
    wf.llm("draft", agent="b")
    entry, exits = wf.subworkflow("rev", review_stage())
    wf.llm("publish", agent="b")
    wf.sequence("draft", entry)
    for x in exits:
        wf.sequence(x, "publish")
    compiled = wf.compile()
    assert entry == "rev/critique" and exits == ["rev/revise"]
    assert list(compiled.agents) == ["b", "critic"]
    g = compiled.graph
    assert g.loops["rev/revise"].head == "rev/critique"
    assert estimate(g, Position.of("draft")).steps_to_execution() == {"b": 0, "critic": 1}
    assert estimate(g, Position.of("rev/revise", loop_iterations={"rev/revise": 2})).steps_to_execution() == {
        "b": 0, "critic": float("inf")}
    assert WorkflowSpec.parse(compiled.spec().to_yaml()).compile().spec() == compiled.spec()


def test_a_subworkflow_that_redefines_an_agent_is_refused():
    wf = Workflow("outer")
    wf.agent("b", system_prompt="Something else.")
    wf.llm("draft", agent="b")
    entry, _ = wf.subworkflow("rev", review_stage())
    wf.sequence("draft", entry)
    with pytest.raises(WorkflowValidationError, match="defines agent 'b' differently"):
        wf.compile()
