"""`StepNode.inputs`: which upstream steps' outputs enter a step's prompt, filled at compile time
(the plan cross-agent KV reuse starts from), validated by the graph, kept through a spec round trip."""

from __future__ import annotations

import pytest

from agentflow import Workflow
from agentflow.errors import ProblemCode, WorkflowValidationError
from agentflow.graph.model import Next, StepGraph, StepKind, StepNode
from agentflow.runtime.reuse_plan import input_steps
from agentflow.spec import WorkflowSpec


def review_chain():
    wf = Workflow("chain")
    for a in ("writer", "critic", "editor"):
        wf.agent(a, system_prompt=f"You are the {a}.")
    wf.llm("draft", agent="writer", prompt="Write about {topic}.")
    wf.llm("review", agent="critic", prompt="Draft:\n{steps.draft}\nBe brief, {{steps.draft}} is literal.")
    wf.llm("edit", agent="editor", prompt="Review: { steps.review }\nDraft: {steps.draft}", inputs=["draft", "review"])
    wf.sequence("draft", "review", "edit")
    return wf.compile()


def test_inputs_come_from_template_references_then_inputs_in_order_without_repeats():
    g = review_chain().graph
    assert g.steps["draft"].inputs == ()
    assert g.steps["review"].inputs == ("draft",)  # `{{steps.draft}}` renders literally: not an input
    assert g.steps["edit"].inputs == ("review", "draft")
    assert input_steps(g) == input_steps(review_chain()) == {"review": ("draft",), "edit": ("review", "draft")}


def test_an_input_naming_no_step_of_the_graph_is_a_clear_error():
    steps = {"a": StepNode(name="a", kind=StepKind.LLM, agent="x"),
             "b": StepNode(name="b", kind=StepKind.LLM, agent="x", inputs=("a", "ghost"))}
    with pytest.raises(WorkflowValidationError) as e:
        StepGraph.build("g", entry="a", steps=steps, transitions={"a": Next("b"), "b": None})
    (p,) = e.value.problems
    assert (p.code, p.step) == (ProblemCode.UNKNOWN_STEP, "b")
    assert "ghost" in p.message and "a, b" in p.fix


def test_inputs_survive_a_spec_round_trip():
    compiled = review_chain()
    again = WorkflowSpec.parse(compiled.spec().to_json(), fmt="json").compile()
    assert {s: n.inputs for s, n in again.graph.steps.items()} == {s: n.inputs for s, n in compiled.graph.steps.items()}
