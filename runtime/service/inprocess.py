"""The service without the network: one `ServiceCore` and its engines in this process.

`InProcessClient` has the methods `ServiceClient` (client.py) offers the live replay and the
executor, and does what the gRPC path does, in the same order, minus serialisation:

    ServiceClient (gRPC)                         InProcessClient
    ────────────────────                         ───────────────
    SubmitCall -> scheduler routes               core.submit -> routes among `engines`
    Generate on the routed worker's agent        engine.generate on the routed engine
      agent: ReportCall STARTED, FINISHED          core.call_started, core.call_finished
    Generate carries the answer's reuse hints    engine.generate(request + the answer's reuse hints)
    WatchDecisions -> agent -> engine.apply      core's decision sink -> engine.apply
    Heartbeat (load every interval)              core.heartbeat(engine.load()) before each submit

so a benchmark that runs one workload both ways (bench/service_load.py) measures what the network
and the process boundaries cost, and nothing else. It also serves the fidelity benchmark, which
runs the scheduler against the real local engine without a service.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from collections.abc import Sequence
from dataclasses import replace

from agentflow.runtime.clock import ScaledClock
from agentflow.runtime.engines.base import Engine, GenerateRequest, GenerateResult, collect
from agentflow.runtime.service.core import (
    CallRequest, CoreConfig, Held, LoadReport, RouteAnswer, ServiceCore, ServiceError, WorkerSpec,
)


def load_report(engine: Engine) -> LoadReport:
    load = engine.load()
    return LoadReport(kv_used_tokens=load.kv_used_tokens, queue_depth=load.queue_depth, running=load.running,
                      pinned_tokens=load.pinned_tokens)


class InProcessClient:
    def __init__(self, engines: Sequence[Engine], *, policy: str = "agentflow", time_scale: float = 1.0,
                 config: CoreConfig | None = None, clock=None):
        if not engines:
            raise ValueError("InProcessClient needs at least one engine")
        names = [e.name for e in engines]
        if len(set(names)) != len(names):
            raise ValueError(f"engine names must be unique (got {names})")
        self.engines = {e.name: e for e in engines}
        self._reports_admission: set[str] = set()
        cfg = config or CoreConfig(policy=policy)
        self.core = ServiceCore(cfg, clock=clock or ScaledClock(time_scale))
        for e in engines:
            load = e.load()
            self.core.register_worker(WorkerSpec(
                worker_id=e.name, address=f"inprocess:{e.name}", engine=type(e).__name__,
                kv_capacity_tokens=load.kv_capacity_tokens, host_capacity_tokens=load.host_capacity_tokens,
                h2d_tokens_per_s=load.h2d_tokens_per_s, prefill_tokens_per_s=load.prefill_tokens_per_s,
                time_scale=time_scale), load_report(e))
            self.core.sinks[e.name] = self._deliver
            # An engine that reports its admissions starts its calls then (with their hits), as the
            # simulated replay does; otherwise a call starts when it is handed to the engine.
            if isinstance(getattr(e, "admission_listeners", None), list):
                e.admission_listeners.append(partial(self._on_admitted, e.name))
                self._reports_admission.add(e.name)
        self._released: dict[str, asyncio.Future] = {}  # held submissions (parked programs) by call id
        self.core.release_listeners.append(self._on_release)
        # Loads reach the core as the service's heartbeats bring them (between them, the core
        # counts the calls it routed): the same information, at the same age, as over gRPC.
        self.heartbeat_interval_s = cfg.heartbeat_interval_s
        self._last_heartbeat = time.monotonic()
        self.retries = 0  # no worker fails in process; kept for LiveReplay's summary
        self.submit_ms: list[float] = []

    def _deliver(self, worker: str, decision) -> None:
        self.engines[worker].apply(decision)

    def _on_admitted(self, worker: str, call_id, gpu_hit_tokens: int, host_hit_tokens: int) -> None:
        if call_id not in self.core.sched.calls:  # not the core's call (an engine used directly)
            return
        self.core.call_started(call_id, worker, gpu_hit_tokens=gpu_hit_tokens, host_hit_tokens=host_hit_tokens)

    def _on_release(self, call_id: str, answer) -> None:
        fut = self._released.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(answer)

    async def open_program(self, program_id: str, workflow_spec: str, *, tenant: str = "",
                           share_kv_across_programs: bool = False) -> str:
        h, _ = self.core.open_program(program_id, tenant=tenant, workflow_spec=workflow_spec,
                                      share_kv_across_programs=share_kv_across_programs)
        return h

    async def submit(self, call: CallRequest) -> RouteAnswer:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.heartbeat_interval_s:  # as often as a worker agent's heartbeat
            self._last_heartbeat = now
            for name, e in self.engines.items():
                self.core.heartbeat(name, load_report(e))
        t = time.perf_counter()
        ans = self.core.submit(call)
        self.submit_ms.append((time.perf_counter() - t) * 1000.0)
        if isinstance(ans, Held):  # its program is parked: the route comes when it is activated
            fut = self._released[call.call_id] = asyncio.get_running_loop().create_future()
            ans = await fut
            if isinstance(ans, ServiceError):
                raise ans
        return ans

    async def run_call(self, call: CallRequest, request: GenerateRequest, *,
                       on_chunk=None) -> tuple[RouteAnswer, GenerateResult]:
        route = await self.submit(call)
        engine = self.engines[route.worker_id]
        if route.worker_id not in self._reports_admission:
            self.core.call_started(call.call_id, route.worker_id)
        try:
            result = await collect(engine.generate(replace(request, reuse=request.reuse or route.reuse)),  # as Generate
                                   where=f"engine {engine.name}", call_id=call.call_id, on_chunk=on_chunk)
        except BaseException as exc:  # cancelled, or the engine failed: the call leaves the scheduler
            self.core.call_failed(call.call_id, route.worker_id, type(exc).__name__)
            raise
        self.core.call_finished(call.call_id, route.worker_id, output_tokens=len(result.output_ids),
                                cached=result.cached, prompt_tokens=result.prompt_tokens,
                                cached_tokens=result.cached_tokens, ttft_s=result.ttft_s)
        return route, result

    async def tool(self, program_id: str, *, step: str, tool: str, finished: bool, duration_s: float = 0.0) -> None:
        self.core.tool(program_id, step=step, tool=tool, finished=finished, duration_s=duration_s)

    async def close_program(self, program_id: str, *, cancelled: bool = False) -> None:
        self.core.close(program_id, cancelled=cancelled)

    async def close(self) -> None:
        for e in self.engines.values():
            await e.aclose()


__all__ = ["InProcessClient", "load_report"]
