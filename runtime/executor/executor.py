"""The executor: many programs, one scheduler, one or more engines.

    ┌ Executor ───────────────────────────────────────────────────────────────────────────────┐
    │  ProgramRun ─┐            ┌ InProcessBackend ──────────────────────────────────────────┐ │
    │  ProgramRun ─┼─ open,  ──>│ events ─> SchedulerLink ─> Decision ─┬─> every engine.apply │ │
    │  ProgramRun ─┘  submit,   │                                     └─> DecisionLog        │ │
    │                 generate, │ generate: the routed engine's stream                       │ │
    │                 tool,     └────────────────────────────────────────────────────────────┘ │
    │                 close       (or any Backend: e.g. the scheduler service's client)         │
    │  ticker: backend.tick() every tick_s while programs run, so pins end at their TTL         │
    └─────────────────────────────────────────────────────────────────────────────────────────┘

Every program goes through the one backend, so the scheduler sees all programs at once and its
decisions (admission order, eviction priorities, pins, prefetches) span them. A call runs on the
first engine its route names (the scheduler's preference order), else the first engine. All
engines of one executor serve the same model (one tokenizer).

Use it as an async context manager:

    async with Executor(SimEngine(cost=make_cost_model())) as ex:
        handle = await ex.start(workflow, {"task": "..."})
        ...
        handle.cancel()                       # the program ends; its pins end with it
        result = await handle.result()

or through `run` / `run_many` (blocking) and `arun` (async), which build the engine and the
in-process scheduler from names.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import anyio

from agentflow.runtime.clock import Clock, MonotonicClock
from agentflow.runtime.engines.base import Engine
from agentflow.runtime.executor.backend import Backend, InProcessBackend
from agentflow.runtime.executor.link import SchedulerLink
from agentflow.runtime.executor.program import ProgramRun
from agentflow.runtime.executor.records import (
    DecisionLog, DecisionSummary, ExecutionError, ProgramStatus, RunResult, TokenEvent,
)
from agentflow.workflow import CompiledWorkflow, Workflow

TokenCallback = Callable[[TokenEvent], None]
ENGINE_KINDS = ("sim", "local")


class ProgramHandle:
    """A running program: `cancel()` it, or `await result()`."""

    def __init__(self, program_id: Hashable, run: ProgramRun):
        self.program_id = program_id
        self._run = run
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self._result: RunResult | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def state(self) -> dict[str, Any]:
        return self._run.state

    def cancel(self) -> None:
        """End the program now: its in-flight call is cancelled (the engine frees its KV), the
        scheduler hears ProgramFinished(cancelled=True) and releases its pins."""
        if self._scope is not None:
            self._scope.cancel()

    async def result(self) -> RunResult:
        await self._done.wait()
        assert self._result is not None
        return self._result


class Executor:
    """Runs programs against a backend: by default a scheduler here (`policy`, or any `link`)
    deciding for `engines`; or any `Backend` (e.g. one for the scheduler service)."""

    def __init__(self, engines: Engine | Sequence[Engine] | None = None, *, backend: Backend | None = None,
                 link: SchedulerLink | None = None, policy: str = "agentflow", clock: Clock | None = None,
                 namespace: str = "default", tick_s: float = 0.25, share_kv_across_programs: bool = False):
        self.clock = clock or MonotonicClock()
        self._t0 = self.clock.now_s()
        if backend is None:
            if engines is None:
                raise ValueError("give the engines to run on, or a backend")
            backend = InProcessBackend(engines, link=link, policy=policy, clock=self.clock, now_s=self.now_s,
                                       tenant=namespace, share_kv_across_programs=share_kv_across_programs)
        elif engines is not None or link is not None:
            raise ValueError("give engines (and a link), or a backend, not both")
        self.backend = backend
        self.namespace = namespace  # the tenant: part of every cache key
        # cross-agent KV reuse: programs of one workflow share reused KV and anchors only if True
        self.share_kv_across_programs = share_kv_across_programs
        self.tick_s = tick_s
        self._tg: anyio.abc.TaskGroup | None = None
        self._live = 0
        self._ids = itertools.count(1)
        # a shared service outlives one run: its backend asks for ids of this run only (run_tag),
        # so a second `agentflow run --engine HOST:PORT` does not reuse the first one's ids
        self._tag = getattr(self.backend, "run_tag", None)

    @property
    def link(self) -> SchedulerLink | None:
        """The in-process backend's scheduler link (tests read `ex.link.scheduler`)."""
        return getattr(self.backend, "link", None)

    @property
    def decisions(self) -> DecisionLog:
        return self.backend.decisions if self.backend.decisions is not None else DecisionLog()

    def decision_summary(self, program_id: Hashable | None = None) -> DecisionSummary:
        return self.decisions.summary(program_id)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._ticker)
        return self

    async def __aexit__(self, *exc) -> bool | None:
        assert self._tg is not None
        if exc[0] is None:
            while self._live:  # let started programs finish
                await anyio.sleep(0.01)
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(*exc)
        finally:
            self._tg = None
            await self.backend.aclose()

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(self.tick_s)
            if self._live:
                await self.backend.tick()

    def now_s(self) -> float:
        """Wall seconds since the executor was made (the timeline's clock)."""
        return self.clock.now_s() - self._t0

    # ---- programs ------------------------------------------------------------------------------
    async def start(self, workflow: Workflow | CompiledWorkflow | str | Path, inputs: Mapping[str, Any] | None = None,
                    *, program_id: Hashable | None = None, on_token: TokenCallback | None = None) -> ProgramHandle:
        if self._tg is None:
            raise RuntimeError("start programs inside `async with Executor(...) as ex:`")
        wf = compile_workflow(workflow)
        n = next(self._ids)
        pid = program_id if program_id is not None else (f"{wf.name}-{self._tag}-{n}" if self._tag else f"{wf.name}-{n}")
        handle = ProgramHandle(pid, ProgramRun(self, wf, pid, inputs or {}, on_token))
        self._live += 1
        await self._tg.start(self._program, handle)
        return handle

    async def _program(self, handle: ProgramHandle, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        run = handle._run
        try:
            with anyio.CancelScope() as scope:
                handle._scope = scope
                task_status.started()
                handle._result = await run.run()
            if handle._result is None:  # cancelled: run() recorded it on the way out
                handle._result = run.result()
        except BaseException:
            if handle._result is None:
                run.status = run.status if run.status is not ProgramStatus.COMPLETED else ProgramStatus.FAILED
                handle._result = run.result()
            raise
        finally:
            self._live -= 1
            handle._done.set()

    async def run(self, workflow, inputs: Mapping[str, Any] | None = None, *,
                  on_token: TokenCallback | None = None) -> RunResult:
        handle = await self.start(workflow, inputs, on_token=on_token)
        return await handle.result()

    async def run_many(self, workflow, inputs: Sequence[Mapping[str, Any]], *,
                       on_token: TokenCallback | None = None) -> list[RunResult]:
        """Run one program per inputs mapping, all at once; results in the same order."""
        handles = [await self.start(workflow, i, on_token=on_token) for i in inputs]
        return [await h.result() for h in handles]


def compile_workflow(workflow: Workflow | CompiledWorkflow | str | Path) -> CompiledWorkflow:
    if isinstance(workflow, CompiledWorkflow):
        return workflow
    if isinstance(workflow, Workflow):
        return workflow.compile()
    if isinstance(workflow, (str, Path)):
        from agentflow.spec import load_workflow

        return load_workflow(workflow, resolve=True)
    raise TypeError(f"not a workflow: {workflow!r} (give a Workflow, a CompiledWorkflow or a file path)")


def make_engine(kind: str | Engine = "sim", *, policy: str = "agentflow", time_scale: float = 100.0,
                cost: str | None = None, **options: Any) -> Engine:
    """An engine by name: "sim" (the simulated SGLang worker, `time_scale` simulated seconds per
    wall second) or "local" (the local model; loaded on first use)."""
    if not isinstance(kind, str):
        return kind
    if kind == "sim":
        from agentflow.runtime.engines.sim.costmodel import make_cost_model
        from agentflow.runtime.engines.sim.engine import SimEngine

        strategy = "lru" if policy in ("lru", "continuum") else "priority"
        model = make_cost_model(cost) if cost else make_cost_model()
        return SimEngine(cost=model, strategy=strategy, time_scale=time_scale, **options)
    if kind == "local":
        try:
            from agentflow.runtime.engines.local import LocalEngine
        except ImportError as e:
            raise ExecutionError(f"the local engine is not available: {e}") from None
        return LocalEngine(strategy="lru" if policy in ("lru", "continuum") else "priority", **options)
    raise ExecutionError(f"unknown engine {kind!r}; valid: {', '.join(ENGINE_KINDS)} "
                         "(a scheduler service address needs a service link)")


async def arun(workflow, inputs: Mapping[str, Any] | None = None, *, engine: str | Engine = "sim",
               policy: str = "agentflow", on_token: TokenCallback | None = None, time_scale: float = 100.0,
               link: SchedulerLink | None = None) -> RunResult:
    return (await arun_many(workflow, [inputs or {}], engine=engine, policy=policy, on_token=on_token,
                            time_scale=time_scale, link=link))[0]


async def arun_many(workflow, inputs: Sequence[Mapping[str, Any]], *, engine: str | Engine = "sim",
                    policy: str = "agentflow", on_token: TokenCallback | None = None, time_scale: float = 100.0,
                    link: SchedulerLink | None = None) -> list[RunResult]:
    wf = compile_workflow(workflow)
    eng = make_engine(engine, policy=policy, time_scale=time_scale)
    try:
        async with Executor(eng, policy=policy, link=link) as ex:
            return await ex.run_many(wf, inputs, on_token=on_token)
    finally:
        if not isinstance(engine, Engine):  # we made it: we close it
            await eng.aclose()


def run(workflow, inputs: Mapping[str, Any] | None = None, *, engine: str | Engine = "sim",
        policy: str = "agentflow", on_token: TokenCallback | None = None, time_scale: float = 100.0) -> RunResult:
    """Run one program to its end (blocking): `agentflow.run(workflow, {"task": ...}, engine="sim")`."""
    return anyio.run(lambda: arun(workflow, inputs, engine=engine, policy=policy, on_token=on_token,
                                  time_scale=time_scale))


def run_many(workflow, inputs: Sequence[Mapping[str, Any]], *, engine: str | Engine = "sim",
             policy: str = "agentflow", on_token: TokenCallback | None = None,
             time_scale: float = 100.0) -> list[RunResult]:
    """Run one program per inputs mapping, concurrently, through one scheduler (blocking)."""
    return anyio.run(lambda: arun_many(workflow, inputs, engine=engine, policy=policy, on_token=on_token,
                                       time_scale=time_scale))


__all__ = ["ENGINE_KINDS", "Executor", "ProgramHandle", "arun", "arun_many", "compile_workflow", "make_engine",
           "run", "run_many"]
