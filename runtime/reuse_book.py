"""What the scheduler remembers to plan cross-agent KV reuse, and the hints it plans.

    ProgramArrived ──> program: namespace (namespace_for), flows (StepNode.inputs of its graph)
    CallSubmitted  ──> pending call: step, prompt tokens, input spans   ─┐
    CallFinished   ──> the program's latest finished call of each step   │ hints() in Scheduler.step():
    ProgramFinished──> all of the program's entries are dropped           │ hints_from_spans(...) for each
                                                                         ┘ call submitted since the last step

The scheduler never sees token ids: the executor measured where each input's output landed in
the new prompt (`CallSubmitted.input_spans`), and a hint names its source by call id, offset and
length (`reuse_plan.call_segment_key`); the engine that ran the source holds the ids and checks them.

Isolation: a hint's source is always a finished call of the *same program* (the spans describe
that program's own outputs), and the hint carries the program's namespace, so an engine keeps and
places KV, and pools anchors, per namespace. Memory is per live program: its latest finished call
per step and its pending calls, forgotten when the program finishes.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from agentflow.runtime.events import CallFinished, CallSubmitted, Event, ProgramArrived, ProgramFinished
from agentflow.runtime.reuse_plan import (
    FinishedCall, InputSpan, ReuseHint, hints_from_spans, input_steps, namespace_for,
)


@dataclass(slots=True, kw_only=True)
class _Program:
    namespace: str
    flows: dict[str, tuple[str, ...]]
    finished: dict[str, FinishedCall] = field(default_factory=dict)  # step -> its latest finished call
    calls: set[Hashable] = field(default_factory=set)  # submitted, not finished


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    program_id: Hashable
    step: str
    prompt_tokens: int
    spans: tuple[InputSpan, ...]


class ReuseBook:
    """Fed every event the scheduler applies (after it applied it); `hints()` once per step."""

    def __init__(self, *, min_tokens: int = 8):
        self.min_tokens = min_tokens
        self._programs: dict[Hashable, _Program] = {}
        self._calls: dict[Hashable, _Call] = {}
        self._new: list[Hashable] = []  # calls with spans, submitted since the last hints()

    def observe(self, event: Event) -> None:
        if isinstance(event, ProgramArrived):
            g = event.graph
            self._programs[event.program_id] = _Program(
                namespace=namespace_for(tenant=event.tenant, workflow=g.name, program_id=event.program_id,
                                        share_across_programs=event.share_kv_across_programs),
                flows=input_steps(g))
        elif isinstance(event, CallSubmitted):
            prog = self._programs.get(event.program_id)
            if prog is None or not prog.flows:  # no step reads another's output: nothing to plan or remember
                return
            self._calls[event.call_id] = _Call(program_id=event.program_id, step=event.step,
                                               prompt_tokens=event.prompt_tokens, spans=tuple(event.input_spans))
            prog.calls.add(event.call_id)
            if event.input_spans and event.step in prog.flows:
                self._new.append(event.call_id)
        elif isinstance(event, CallFinished):
            call = self._calls.pop(event.call_id, None)
            prog = self._programs.get(call.program_id) if call is not None else None
            if prog is None:
                return
            prog.calls.discard(event.call_id)
            if event.output_tokens > 0:
                prog.finished[call.step] = FinishedCall(call_id=event.call_id, step=call.step,
                                                        namespace=prog.namespace, num_output_tokens=event.output_tokens)
        elif isinstance(event, ProgramFinished):
            prog = self._programs.pop(event.program_id, None)
            if prog is not None:
                for c in prog.calls:
                    self._calls.pop(c, None)

    def hints(self) -> tuple[ReuseHint, ...]:
        """Hints for the calls submitted since the previous call (each call planned once, at submission)."""
        out: list[ReuseHint] = []
        for cid in self._new:
            call = self._calls.get(cid)
            prog = self._programs.get(call.program_id) if call is not None else None
            if prog is None:
                continue
            out.extend(hints_from_spans(target_call_id=cid, target_step=call.step, namespace=prog.namespace,
                                        prompt_tokens=call.prompt_tokens, flows=prog.flows, spans=call.spans,
                                        finished=prog.finished.values(), min_tokens=self.min_tokens))
        self._new.clear()
        return tuple(out)

    def namespace_of(self, program_id: Hashable) -> str | None:
        prog = self._programs.get(program_id)
        return prog.namespace if prog is not None else None

    @property
    def num_programs(self) -> int:
        return len(self._programs)

    @property
    def num_pending_calls(self) -> int:
        return len(self._calls)


__all__ = ["ReuseBook"]
