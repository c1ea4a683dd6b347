"""Run workflows for real: programs on an engine, through the program-level scheduler.

    run / run_many / arun        one call from a workflow and inputs to results
    Executor, ProgramHandle      many programs against one engine set; cancel, await results
    Backend, InProcessBackend    what programs run against: a scheduler here and its engines,
    ServiceBackend               or the scheduler service
    SchedulerLink, InProcessLink where an in-process backend's decisions come from
    RunResult, StepRecord, ...   what a run leaves: state, outputs, timeline, cache decisions
"""

from agentflow.runtime.executor.backend import Backend, InProcessBackend
from agentflow.runtime.executor.executor import (
    ENGINE_KINDS, Executor, ProgramHandle, arun, arun_many, compile_workflow, make_engine, run, run_many,
)
from agentflow.runtime.executor.link import LIVE_POLICIES, InProcessLink, SchedulerLink
from agentflow.runtime.executor.records import (
    DecisionLog, DecisionSummary, ExecutionError, ProgramStatus, RunResult, StepFailed, StepRecord, TokenEvent,
)
from agentflow.runtime.executor.service import ServiceBackend, connect_service

__all__ = [
    "ENGINE_KINDS", "LIVE_POLICIES", "Backend", "DecisionLog", "DecisionSummary", "ExecutionError", "Executor",
    "InProcessBackend", "InProcessLink", "ProgramHandle", "ProgramStatus", "RunResult", "SchedulerLink",
    "ServiceBackend", "StepFailed", "StepRecord", "TokenEvent", "arun", "arun_many", "compile_workflow",
    "connect_service", "make_engine", "run", "run_many",
]
