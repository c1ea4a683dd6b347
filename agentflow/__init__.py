"""agentflow: a workflow-aware orchestrator for multi-agent LLM programs.

The public surface (pinned by tests/test_public_api.py):

    Workflow, CompiledWorkflow, Agent, Tool, Step   build, then compile
    when, When, Op                                  declarative conditions
    load_workflow, WorkflowSpec                     workflows as JSON/YAML files
    Position, estimate, ProgramEstimate             where a program is; what it means per agent
    ProgramIndex                                    steps-to-execution over many running programs
    errors: AgentflowError and its subclasses
"""

from agentflow.errors import (  # noqa: I001  (errors first: every layer imports them)
    AgentflowError,
    PositionError,
    Problem,
    ProblemCode,
    SpecError,
    WorkflowError,
    WorkflowValidationError,
    WorkloadError,
)
from agentflow.conditions import Op, When, when
from agentflow.workflow import Agent, CompiledWorkflow, Step, Tool, Workflow
from agentflow.graph import Position, ProgramEstimate, ProgramIndex, StepGraph, estimate
from agentflow.spec import WorkflowSpec, load_workflow

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentflowError",
    "CompiledWorkflow",
    "Op",
    "Position",
    "PositionError",
    "Problem",
    "ProblemCode",
    "ProgramEstimate",
    "ProgramIndex",
    "SpecError",
    "Step",
    "StepGraph",
    "Tool",
    "When",
    "Workflow",
    "WorkflowError",
    "WorkflowSpec",
    "WorkflowValidationError",
    "WorkloadError",
    "estimate",
    "load_workflow",
    "when",
]
