"""What a run leaves behind: per-step timeline records, the decisions taken, the result.

Times in a `StepRecord` are wall seconds since the executor started (`start_s`, `end_s`); the
engine's own figures (`queued_s`, `ttft_s`, `engine_s`) are in the engine's time, which for a
simulated engine is simulated seconds (the cost model's), for a real one wall seconds.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from agentflow.errors import AgentflowError
from agentflow.runtime.decision import Decision


class ExecutionError(AgentflowError):
    """A program cannot run as written (a tool with no implementation, a template naming a
    state key that is not there, an engine that does not exist)."""


class StepFailed(AgentflowError):
    """Every attempt of a step failed and its error policy says: fail the program."""

    def __init__(self, step: str, attempts: int, cause: BaseException):
        self.step = step
        self.attempts = attempts
        self.cause = cause
        super().__init__(f"step '{step}' failed after {attempts} attempt{'s' if attempts > 1 else ''}: "
                         f"{describe(cause)}")


def describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ProgramStatus(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"  # a step failed with no error route; the state is kept
    CANCELLED = "cancelled"


@dataclass(slots=True, kw_only=True)
class StepRecord:
    program_id: Hashable
    step: str
    kind: str  # "llm" or "tool"
    agent: str | None = None
    tool: str | None = None
    attempt: int = 1
    start_s: float = 0.0
    end_s: float = 0.0
    status: str = "ok"  # "ok", "error", "timeout", "cancelled"
    error: str | None = None
    worker: str | None = None
    call_id: Hashable | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    host_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens placed from another call's output (cross-agent KV reuse)
    output_tokens: int = 0
    queued_s: float | None = None  # engine time: submit -> admitted
    ttft_s: float | None = None  # engine time: submit -> first token
    engine_s: float | None = None  # engine time: submit -> last token
    preview: str = ""  # the first characters of the output

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__} | {"program_id": str(self.program_id),
                                                                "call_id": None if self.call_id is None
                                                                else str(self.call_id)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenEvent:
    """Streamed text of one LLM step (what `on_token` receives)."""

    program_id: Hashable
    step: str
    call_id: Hashable
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionSummary:
    decisions: int = 0  # non-empty decisions applied
    pins: int = 0
    unpins: dict[str, int] = field(default_factory=dict)  # by reason
    priorities: int = 0  # eviction priorities set
    prefetches: int = 0
    admissions: int = 0  # admission orders sent
    reuse_hints: int = 0  # cross-agent KV reuse hints (spans of new prompts that finished calls produced)
    lines: tuple[str, ...] = ()  # pins, unpins and prefetches, in order, in words

    def to_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "pins": self.pins, "unpins": dict(self.unpins),
                "priorities": self.priorities, "prefetches": self.prefetches, "admissions": self.admissions,
                "reuse_hints": self.reuse_hints, "lines": list(self.lines)}


class DecisionLog:
    """Every non-empty Decision the executor applied, with the wall time it was applied at."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, Decision]] = []

    def add(self, t_s: float, d: Decision) -> None:
        if not d.empty:
            self.entries.append((t_s, d))

    def summary(self, program_id: Hashable | None = None, *, max_lines: int = 200) -> DecisionSummary:
        """Counts and lines; with `program_id`, only its pins, unpins (and the decisions holding them)."""
        n = pins = prios = prefetches = admits = hints = 0
        unpins: Counter[str] = Counter()
        lines: list[str] = []
        for t, d in self.entries:
            mine_pins = [p for p in d.pins if program_id is None or p.program_id == program_id]
            mine_unpins = [u for u in d.unpins if program_id is None or u.program_id == program_id]
            if program_id is None:
                hints += len(d.reuse)
            if program_id is not None and not (mine_pins or mine_unpins):
                continue
            n += 1
            pins += len(mine_pins)
            unpins.update(u.reason.value for u in mine_unpins)
            if program_id is None:
                prios += len(d.priorities)
                prefetches += len(d.prefetches)
                admits += bool(d.admit)
            for p in mine_pins:
                lines.append(f"{t:8.3f}s pin    {p.prefix} ({p.num_tokens} tokens, program {p.program_id}) "
                             f"on {p.worker or 'any'} for {p.ttl_s:.2f}s")
            for u in mine_unpins:
                lines.append(f"{t:8.3f}s unpin  {u.prefix} (program {u.program_id}): {u.reason.value}")
            if program_id is None:
                for f in d.prefetches:
                    lines.append(f"{t:8.3f}s fetch  {f.prefix} ({f.num_tokens} tokens) to {f.worker}")
        return DecisionSummary(decisions=n, pins=pins, unpins=dict(unpins), priorities=prios, prefetches=prefetches,
                               admissions=admits, reuse_hints=hints, lines=tuple(lines[:max_lines]))


@dataclass(slots=True, kw_only=True)
class RunResult:
    """One program's run: how it ended, its state and outputs, its timeline, its cache decisions."""

    program_id: Hashable
    workflow: str
    status: ProgramStatus
    state: dict[str, Any]  # the final program state (inputs, tool results, parsed answers)
    outputs: dict[str, Any]  # per step, its last output (LLM text, or the tool's return value)
    timeline: list[StepRecord]
    error: str | None = None
    failed_step: str | None = None
    start_s: float = 0.0
    end_s: float = 0.0
    decisions: DecisionSummary = DecisionSummary()

    @property
    def ok(self) -> bool:
        return self.status is ProgramStatus.COMPLETED

    @property
    def text(self) -> str:
        """The last LLM answer of the run ("" if none)."""
        for r in reversed(self.timeline):
            if r.kind == "llm" and r.status == "ok":
                out = self.outputs.get(r.step)
                return out if isinstance(out, str) else ""
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {"program_id": str(self.program_id), "workflow": self.workflow, "status": self.status.value,
                "error": self.error, "failed_step": self.failed_step, "start_s": self.start_s, "end_s": self.end_s,
                "state": self.state, "outputs": self.outputs, "timeline": [r.to_dict() for r in self.timeline],
                "decisions": self.decisions.to_dict()}


__all__ = ["DecisionLog", "DecisionSummary", "ExecutionError", "ProgramStatus", "RunResult", "StepFailed",
           "StepRecord", "TokenEvent", "describe"]
