"""Every example compiles, loads as a file, and round-trips through YAML; the broken one fails well."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from agentflow import ProblemCode, WorkflowSpec, WorkflowValidationError, load_workflow
from examples import debate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MODULES = ["swe_agent", "chatdev", "retrieval", "debate"]


@pytest.mark.parametrize("name", MODULES)
def test_example_compiles_and_round_trips_through_yaml(name):
    compiled = importlib.import_module(f"examples.{name}").build().compile()
    spec = compiled.spec()
    again = WorkflowSpec.parse(spec.to_yaml())
    assert again == spec
    recompiled = again.compile(resolve=True)  # tool functions import by name: examples.<name>:<function>
    assert recompiled.spec() == spec
    assert recompiled.graph.agents == compiled.graph.agents
    for tool in recompiled.tools.values():
        assert tool.fn is compiled.tools[tool.name].fn


@pytest.mark.parametrize("name", MODULES)
def test_load_workflow_calls_build(name):
    compiled = load_workflow(EXAMPLES / f"{name}.py")
    assert compiled.spec().steps == importlib.import_module(f"examples.{name}").build().compile().spec().steps


def test_debate_yaml_is_the_debate_example():
    assert load_workflow(EXAMPLES / "debate.yaml").spec() == debate.build().compile().spec()


def test_broken_yaml_reports_every_problem():
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(EXAMPLES / "broken.yaml")
    err = info.value
    assert err.codes == [ProblemCode.UNKNOWN_AGENT, ProblemCode.NO_DEFAULT_BRANCH, ProblemCode.UNBOUNDED_CYCLE]
    assert {p.step for p in err.problems} == {"moderate", "pro_argues"}
    assert "unknown agent 'moderator'" in str(err)
