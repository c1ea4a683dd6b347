"""Shared pieces for the service tests: a small workflow, and its spec as the wire carries it."""

from __future__ import annotations

import pytest


def coding_workflow(name: str = "coder-loop"):
    """think -> bash -> (loop back, at most 4 times); one agent, one tool."""
    from agentflow.workflow import Workflow

    wf = Workflow(name)
    wf.tool("bash", duration_hint_s=2.0)
    wf.agent("coder", system_prompt="You fix bugs.", tools=["bash"])
    wf.llm("think", agent="coder")
    wf.call("run", tool="bash")
    wf.noop("next")
    wf.sequence("think", "run", "next")
    wf.loop("next", back_to="think", max_iterations=4, expected_iterations=3)
    return wf.compile()


@pytest.fixture(scope="session")
def spec_json() -> str:
    from agentflow.spec import WorkflowSpec

    return WorkflowSpec.from_compiled(coding_workflow()).to_json()
