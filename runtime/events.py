"""What the scheduler is told. One dataclass per event; engines, the executor and the replay send them.

Positions: an LLM call or a tool call names the step it runs; the scheduler moves the program to
that step (steps it comes from are done; noop steps in between are passed through). A finished
step stays the program's position until its successor starts: the gap between a call's end and
the next call is exactly when the agent's prefix must not be lost.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from agentflow.graph.model import StepGraph
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.reuse_plan import InputSpan

ProgramId = Hashable
CallId = Hashable


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramArrived:
    program_id: ProgramId
    graph: StepGraph
    # Cross-agent KV reuse isolation (runtime/reuse_plan.namespace_for): KV and anchors are shared
    # only within tenant/workflow/program, or tenant/workflow when the workflow opted in.
    tenant: str = "default"
    share_kv_across_programs: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSubmitted:
    program_id: ProgramId
    call_id: CallId
    step: str  # the LLM step of the program's graph this call runs
    prefixes: tuple[PrefixRef, ...]  # the prompt's cacheable prefixes, root first
    prompt_tokens: int
    expected_output_tokens: int = 256
    # where the outputs of upstream steps sit in this prompt (tokens), when the executor could
    # tell: what the scheduler turns into cross-agent reuse hints (Decision.reuse)
    input_spans: tuple[InputSpan, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted:
    call_id: CallId
    worker: str
    # What the engine found of the prompt when it admitted the call, where it knows: on the GPU, and
    # loaded back from a host tier. The working-set admission measures faults from these.
    gpu_hit_tokens: int | None = None
    host_hit_tokens: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFinished:
    call_id: CallId
    worker: str
    output_tokens: int
    cached: tuple[PrefixRef, ...] = ()  # prefixes the worker now holds (e.g. history + this output)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStarted:
    program_id: ProgramId
    step: str
    tool: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolFinished:
    program_id: ProgramId
    step: str
    tool: str
    duration_s: float  # measured


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramFinished:
    program_id: ProgramId
    cancelled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerUpdate:
    worker: str
    kv_capacity_tokens: int
    kv_used_tokens: int = 0
    host_capacity_tokens: int = 0
    h2d_tokens_per_s: float = 0.0  # host-to-GPU transfer rate, for prefetch budgets
    prefill_tokens_per_s: float = 10_000.0  # recompute rate, for what a lost prefix costs
    queue_depth: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLost:
    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixMoved:
    """An engine reports where a prefix now lives: 'gpu', 'host', or 'none' (evicted)."""

    worker: str
    key: str
    tier: str


Event = (ProgramArrived | CallSubmitted | CallStarted | CallFinished | ToolStarted | ToolFinished
         | ProgramFinished | WorkerUpdate | WorkerLost | PrefixMoved)
