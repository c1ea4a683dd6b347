"""The scheduler's state, and the read-only snapshot policies see.

The mechanism (`scheduler.py`) owns these records and mutates them only while applying events.
Policies receive a `Snapshot`: read-only mappings over the same records, taken between events, so
a policy call is a pure function of (snapshot, arguments). Copying 1,000 programs into frozen
views on every decision would cost more than the decision itself; the views are read-only by
contract and by `MappingProxyType`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from agentflow.graph.model import StepGraph
from agentflow.graph.position import Position, ProgramEstimate
from agentflow.graph.tracker import ProgramIndex
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.remaining_work import RemainingWork
from agentflow.runtime.tool_stats import ToolStats


@dataclass(slots=True, kw_only=True)
class ToolCall:
    tool: str
    step: str
    agent: str | None
    started_s: float


@dataclass(slots=True, kw_only=True)
class ProgramState:
    program_id: Hashable
    graph: StepGraph
    arrival_s: float
    position: Position
    turn: int = 0  # LLM calls submitted so far
    attained_tokens: int = 0  # prompt + output tokens served: the fair-share measure
    last_agent: str | None = None  # who spoke last (the agent a tool call belongs to)
    worker: str | None = None  # where its last call ran (its KV is there)
    tool: ToolCall | None = None  # the tool call in flight, if any
    agent_prefix: dict[str, str] = field(default_factory=dict)  # agent -> its deepest cached prefix key
    prefixes: set[str] = field(default_factory=set)  # every prefix this program uses
    calls: set[Hashable] = field(default_factory=set)  # its calls not yet finished
    started: set[str] = field(default_factory=set)  # active steps that have begun (not just ready)
    # Program admission (policies/programs.py): a parked program's calls are held, not routed.
    active: bool = False
    activated_s: float | None = None
    context_tokens: dict[str, int] = field(default_factory=dict)  # agent -> prompt + output of its last call
    last_context_tokens: int | None = None  # prompt + output of its latest finished call


@dataclass(slots=True, kw_only=True)
class CallState:
    call_id: Hashable
    program_id: Hashable
    step: str
    agent: str
    prefixes: tuple[PrefixRef, ...]
    prompt_tokens: int
    expected_output_tokens: int
    submitted_s: float
    started_s: float | None = None
    worker: str | None = None
    was_pinned: bool = False  # its program held a pin when it arrived (its KV is likely still there)


@dataclass(slots=True, kw_only=True)
class PrefixState:
    ref: PrefixRef
    users: dict[tuple[str, str], set[Hashable]]  # (workflow, agent) -> programs using it
    last_used_s: float
    tiers: dict[str, str] = field(default_factory=dict)  # worker -> "gpu" | "host"
    priority: int | None = None  # last priority sent to engines
    built: bool = False  # some engine has held it (a call that finished cached it): losing it is a fault

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def num_tokens(self) -> int:
        return self.ref.num_tokens


@dataclass(slots=True, kw_only=True)
class WorkerState:
    worker: str
    kv_capacity_tokens: int
    kv_used_tokens: int = 0
    host_capacity_tokens: int = 0
    h2d_tokens_per_s: float = 0.0
    prefill_tokens_per_s: float = 10_000.0
    queue_depth: int = 0
    pinned_tokens: int = 0


@dataclass(slots=True, kw_only=True)
class PinState:
    prefix: str
    worker: str | None
    program_id: Hashable
    agent: str
    tool: str
    num_tokens: int
    pinned_at_s: float
    expires_at_s: float
    benefit_s: float  # what keeping it saves if the program comes back in time


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What a policy may read. Everything is read-only."""

    time_s: float
    programs: Mapping[Hashable, ProgramState]
    calls: Mapping[Hashable, CallState]
    waiting: tuple[Hashable, ...]  # calls submitted and not started, in submission order
    prefixes: Mapping[str, PrefixState]
    workers: Mapping[str, WorkerState]
    pins: Mapping[str, PinState]
    index: ProgramIndex  # steps-to-execution: per program, and per agent over all programs
    tool_stats: ToolStats
    remaining: RemainingWork | None = None  # remaining calls and context growth, learned from finished programs

    def estimate(self, program_id: Hashable) -> ProgramEstimate:
        return self.index.estimate(program_id)

    def agent_steps(self, program_id: Hashable, agent: str) -> tuple[float, float, float]:
        """(min steps, hit probability, expected steps) of one program's agent."""
        est = self.index.estimate(program_id)
        i = est.agents.index(agent) if agent in est.agents else -1
        if i < 0:
            return float("inf"), 0.0, float("inf")
        return float(est.steps_min[i]), float(est.hit_probability[i]), float(est.steps_expected[i])
