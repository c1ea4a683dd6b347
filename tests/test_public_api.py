"""The public surface is explicit: adding or removing a name is a deliberate change here."""

from __future__ import annotations

import subprocess
import sys

import agentflow
import agentflow.graph

PUBLIC = [
    "Agent", "AgentflowError", "CompiledWorkflow", "ErrorPolicy", "Executor", "Op", "Position", "PositionError",
    "Problem", "ProblemCode", "ProgramEstimate", "ProgramIndex", "ProgramStatus", "RunResult", "SpecError", "Step",
    "StepGraph", "Tool", "When", "Workflow", "WorkflowError", "WorkflowSpec", "WorkflowValidationError",
    "WorkloadError", "arun", "estimate", "load_workflow", "run", "run_many", "when",
]

GRAPH = [
    "END", "INF", "AgentKey", "Branch", "Case", "Edge", "EdgeKind", "Fork", "GraphTables", "Loop", "LoopInfo",
    "Next", "Position", "ProgramEstimate", "ProgramIndex", "Region", "StepGraph", "StepKind", "StepNode",
    "estimate",
]


def test_agentflow_all_is_pinned():
    assert sorted(agentflow.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(agentflow, name), name


def test_graph_all_is_pinned():
    assert sorted(agentflow.graph.__all__) == sorted(GRAPH)
    for name in GRAPH:
        assert hasattr(agentflow.graph, name), name


def test_errors_form_one_hierarchy():
    for cls in (agentflow.WorkflowError, agentflow.WorkflowValidationError, agentflow.SpecError,
                agentflow.PositionError, agentflow.WorkloadError):
        assert issubclass(cls, agentflow.AgentflowError)


def test_no_generic_top_level_packages_and_no_torch_on_import():
    code = (
        "import sys, importlib.util, agentflow, agentflow.graph, agentflow.runtime;"
        "print(importlib.util.find_spec('graph') is None, importlib.util.find_spec('runtime') is None,"
        " 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.split() == ["True", "True", "False"]
