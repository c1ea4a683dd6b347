"""What programs run against: a `Backend` (a scheduler and the engines it decides for).

A running program needs five things from the world outside it, all program-level:

    open_program(id, workflow, tenant, share)  the program exists (its step graph, for planning; its
                                               tenant and opt-in: its cross-agent reuse namespace)
    encode_chat(messages)                      the model's tokens for a prompt (prefixes are cut on them)
    call(request, step, expected, on_chunk)    an LLM call: routed, run, streamed -> (worker, result)
    tool(id, step, tool, finished, s)          a tool call starts / ends (measured wall seconds)
    close_program(id, cancelled)               it ended (its pins end)

`InProcessBackend` is a scheduler in this process (behind a `SchedulerLink`) plus engines: it turns
those into scheduler events (ProgramArrived; CallSubmitted -> route, CallStarted, CallFinished with
what the engine cached; ToolStarted/Finished; ProgramFinished), applies every Decision to every
engine (but its reuse hints: each goes with its call's request, `GenerateRequest.reuse`, as
through the service), and keeps the log of decisions.

`ServiceBackend` (service.py) is the scheduler service: the same five map one to one onto
`ServiceClient` (gRPC, `agentflow run FILE --engine ADDR`) or `InProcessClient` (open_program,
run_call, tool, close_program), tokenizing with a local copy of the served model's tokenizer.
The executor never needs to know which it has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import anyio

from agentflow.runtime.clock import Clock
from agentflow.runtime.decision import Decision
from agentflow.runtime.engines.base import Engine, GenerateRequest, GenerateResult, TokenChunk, collect
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, Event, ProgramArrived, ProgramFinished, ToolFinished, ToolStarted,
    WorkerUpdate,
)
from agentflow.runtime.executor.link import InProcessLink, SchedulerLink
from agentflow.runtime.executor.records import DecisionLog
from agentflow.runtime.reuse_plan import InputSpan, ReuseHint
from agentflow.workflow import CompiledWorkflow


@runtime_checkable
class Backend(Protocol):
    decisions: DecisionLog | None  # the decisions applied, when the backend sees them

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]: ...

    async def open_program(self, program_id: Hashable, workflow: CompiledWorkflow, *, tenant: str | None = None,
                           share_kv_across_programs: bool | None = None) -> None:
        """The program starts. `tenant` and `share_kv_across_programs` (None: the backend's own) are
        the executor's: the scheduler derives the program's reuse namespace from them
        (reuse_plan.namespace_for) as the executor does for its requests' `reuse_namespace`."""

    async def call(self, request: GenerateRequest, *, step: str, expected_output_tokens: int,
                   on_chunk: Callable[[TokenChunk], None] | None = None,
                   input_spans: Sequence[InputSpan] = ()) -> tuple[str, GenerateResult]:
        """Submit an LLM call, run it where the scheduler routes it, stream its chunks to
        `on_chunk`; returns (the worker it ran on, its result). Cancelled or failed, the call is
        closed with nothing cached. `input_spans`: where upstream outputs sit in the prompt (the
        scheduler plans cross-agent KV reuse from them; a backend may ignore them)."""

    async def tool(self, program_id: Hashable, *, step: str, tool: str, finished: bool,
                   duration_s: float = 0.0) -> None: ...

    async def close_program(self, program_id: Hashable, *, cancelled: bool = False) -> None: ...

    async def tick(self) -> None:
        """Nothing happened for a while (lets pins expire on time)."""

    async def aclose(self) -> None: ...


class InProcessBackend:
    """A scheduler here (an `InProcessLink`, or any SchedulerLink) and the engines it decides for."""

    def __init__(self, engines: Engine | Sequence[Engine], *, link: SchedulerLink | None = None,
                 policy: str = "agentflow", clock: Clock | None = None, now_s=None, tenant: str = "default",
                 share_kv_across_programs: bool = False):
        self.engines: list[Engine] = [engines] if not isinstance(engines, Sequence) else list(engines)
        if not self.engines:
            raise ValueError("a backend needs at least one engine")
        names = [e.name for e in self.engines]
        if len(set(names)) != len(names):
            raise ValueError(f"engine names must be unique (got {names})")
        self._by_name = {e.name: e for e in self.engines}
        self.link = link if link is not None else InProcessLink(policy, clock=clock)
        self.decisions: DecisionLog | None = DecisionLog()
        self._now_s = now_s or (lambda: 0.0)  # the executor's timeline clock, for the decision log
        self._started = False
        # cross-agent KV reuse isolation (reuse_plan.namespace_for): the scheduler derives each
        # program's namespace from these, the executor the requests' (ProgramRun) from the same
        self.tenant = tenant
        self.share_kv_across_programs = share_kv_across_programs

    async def send(self, events: Sequence[Event]) -> Decision:
        if not self._started:  # the scheduler learns the workers before anything else
            self._started = True
            events = [worker_update(e) for e in self.engines] + list(events)
        d = await self.link.send(events)
        if not d.empty:
            self.decisions.add(self._now_s(), d)
            # reuse hints are not broadcast: each goes with its call (call(), as through the service)
            part = replace(d, reuse=()) if d.reuse else d
            for e in self.engines:
                e.apply(part)
        return d

    # ---- the six operations --------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.engines[0].encode_chat(messages)  # one model (one tokenizer) behind every engine

    async def open_program(self, program_id: Hashable, workflow: CompiledWorkflow, *, tenant: str | None = None,
                           share_kv_across_programs: bool | None = None) -> None:
        share = self.share_kv_across_programs if share_kv_across_programs is None else share_kv_across_programs
        await self.send([ProgramArrived(program_id=program_id, graph=workflow.graph, tenant=tenant or self.tenant,
                                        share_kv_across_programs=share)])

    async def call(self, request: GenerateRequest, *, step: str, expected_output_tokens: int,
                   on_chunk: Callable[[TokenChunk], None] | None = None,
                   input_spans: Sequence[InputSpan] = ()) -> tuple[str, GenerateResult]:
        worker, reuse = await self._submit(request, step=step, expected_output_tokens=expected_output_tokens,
                                           input_spans=tuple(input_spans))
        if reuse:  # the call's reuse hints go with it, as the service's Generate carries them
            request = replace(request, reuse=request.reuse or reuse)
        result = await collect(self._generate(request, worker), where=f"worker {worker}", call_id=request.call_id,
                               on_chunk=on_chunk)
        return worker, result

    async def _submit(self, request: GenerateRequest, *, step: str, expected_output_tokens: int,
                      input_spans: tuple[InputSpan, ...] = ()) -> tuple[str, tuple[ReuseHint, ...]]:
        """(the worker to run on, the call's reuse hints from the decision that admitted it)."""
        d = await self.send([CallSubmitted(program_id=request.program_id, call_id=request.call_id, step=step,
                                           prefixes=request.prefixes, prompt_tokens=len(request.prompt_ids),
                                           expected_output_tokens=expected_output_tokens, input_spans=input_spans)])
        reuse = tuple(h for h in d.reuse if h.target_call_id == request.call_id)
        for r in d.routes:  # the first worker of the scheduler's preference that this backend has
            if r.call_id == request.call_id:
                for w in r.workers:
                    if w in self._by_name:
                        return w, reuse
        return self.engines[0].name, reuse

    async def _generate(self, request: GenerateRequest, worker: str) -> AsyncIterator[TokenChunk | GenerateResult]:
        engine = self._by_name[worker]
        started = False
        n_out = 0
        result: GenerateResult | None = None
        try:
            async for item in engine.generate(request):
                if not started:
                    started = True
                    await self.send([CallStarted(call_id=request.call_id, worker=worker)])
                if isinstance(item, TokenChunk):
                    n_out += len(item.token_ids)
                else:
                    result = item
                yield item
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.send([CallFinished(call_id=request.call_id, worker=worker, output_tokens=n_out)])
            raise
        if result is None:
            await self.send([CallFinished(call_id=request.call_id, worker=worker, output_tokens=n_out)])
            return
        await self.send([CallFinished(call_id=request.call_id, worker=worker, output_tokens=len(result.output_ids),
                                      cached=result.cached), worker_update(engine)])

    async def tool(self, program_id: Hashable, *, step: str, tool: str, finished: bool,
                   duration_s: float = 0.0) -> None:
        if finished:
            await self.send([ToolFinished(program_id=program_id, step=step, tool=tool, duration_s=duration_s)])
        else:
            await self.send([ToolStarted(program_id=program_id, step=step, tool=tool)])

    async def close_program(self, program_id: Hashable, *, cancelled: bool = False) -> None:
        await self.send([ProgramFinished(program_id=program_id, cancelled=cancelled)])

    async def tick(self) -> None:
        await self.send([])

    async def aclose(self) -> None:
        await self.link.aclose()


def worker_update(engine: Engine) -> WorkerUpdate:
    load = engine.load()
    return WorkerUpdate(worker=engine.name, kv_capacity_tokens=load.kv_capacity_tokens,
                        kv_used_tokens=load.kv_used_tokens, host_capacity_tokens=load.host_capacity_tokens,
                        h2d_tokens_per_s=load.h2d_tokens_per_s, prefill_tokens_per_s=load.prefill_tokens_per_s,
                        queue_depth=load.queue_depth)


__all__ = ["Backend", "InProcessBackend", "worker_update"]
