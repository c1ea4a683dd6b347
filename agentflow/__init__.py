"""agentflow: a workflow-aware orchestrator for multi-agent LLM programs.

The public surface (pinned by tests/test_public_api.py):

    Workflow, CompiledWorkflow, Agent, Tool, Step   build, then compile
    ErrorPolicy                                     retries, error routes, timeouts of steps
    when, When, Op                                  declarative conditions
    load_workflow, WorkflowSpec                     workflows as JSON/YAML files
    Position, estimate, ProgramEstimate             where a program is; what it means per agent
    ProgramIndex                                    steps-to-execution over many running programs
    run, run_many, arun, Executor, RunResult,       run programs for real on an engine (loaded on
    ProgramStatus                                   first use: `import agentflow` stays light)
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
from agentflow.workflow import Agent, CompiledWorkflow, ErrorPolicy, Step, Tool, Workflow
from agentflow.graph import Position, ProgramEstimate, ProgramIndex, StepGraph, estimate
from agentflow.spec import WorkflowSpec, load_workflow

__version__ = "0.1.0"

_EXECUTOR = ("Executor", "ProgramStatus", "RunResult", "arun", "run", "run_many")


def __getattr__(name: str):
    if name in _EXECUTOR:  # the executor pulls in the scheduler and the engines: import on first use
        from agentflow.runtime import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'agentflow' has no attribute {name!r}")


__all__ = [
    "Agent",
    "AgentflowError",
    "CompiledWorkflow",
    "ErrorPolicy",
    "Executor",
    "Op",
    "Position",
    "PositionError",
    "Problem",
    "ProblemCode",
    "ProgramEstimate",
    "ProgramIndex",
    "ProgramStatus",
    "RunResult",
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
    "arun",
    "estimate",
    "load_workflow",
    "run",
    "run_many",
    "when",
]
