"""The client side of the service: what the executor and the live replay use.

    client = ServiceClient("host:port")
    await client.open_program("p1", workflow_spec_json)
    route = await client.submit(CallRequest(...))        # -> RouteAnswer: worker + hints
    async for item in client.generate(route, request):   # chunks..., then the GenerateResult
                                                         # (the route's hints, reuse hints included,
                                                         # go with the Generate to the worker)
    await client.tool("p1", step=..., tool=..., finished=False) ... finished=True, duration_s=...
    await client.close_program("p1")

Two kinds of failure are handled here so callers do not have to:
  * the scheduler is unreachable (restarting): every scheduler RPC is retried with backoff for up
    to `scheduler_retry_s`; program-scoped requests carry `event_seq`, so a retried request that
    did reach the old scheduler is not applied twice;
  * the worker fails under a call (`UNAVAILABLE` on Generate): the call is submitted again with
    `failed_worker` set (the scheduler routes it elsewhere) and run there; again while workers keep
    failing, for up to `worker_retry_s` (every worker killed: the scheduler holds the call until
    new ones register, then it runs there).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from agentflow.runtime.engines.base import GenerateRequest, GenerateResult, TokenChunk, collect
from agentflow.runtime.service import convert
from agentflow.runtime.service.core import CallRequest, RouteAnswer
from agentflow.runtime.service.server import Transport
from agentflow.v1 import service_pb2 as pb
from agentflow.v1 import service_pb2_grpc as pbg

# CANCELLED here is the server's doing (a scheduler stopping under the RPC; a local cancel raises
# asyncio.CancelledError instead). Retrying is safe: every program-scoped request is deduplicated
# by its event_seq, opening is idempotent.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class ServiceUnavailable(Exception):
    """The scheduler stayed unreachable for longer than the client waits."""


class ServiceClient:
    def __init__(self, address: str, *, transport: Transport = Transport(), scheduler_retry_s: float = 30.0,
                 rpc_timeout_s: float = 10.0, worker_retry_s: float = 60.0):
        self.address = address
        self.worker_retry_s = worker_retry_s
        self.transport = transport
        self.scheduler_retry_s = scheduler_retry_s
        self.rpc_timeout_s = rpc_timeout_s
        self._channel = transport.channel(address)
        self.stub = pbg.SchedulerStub(self._channel)
        self._workers: dict[str, tuple[grpc.aio.Channel, pbg.WorkerStub]] = {}
        self._seq: dict[str, int] = {}
        self._sent_specs: set[str] = set()
        self._background: set[asyncio.Task] = set()
        self.retries = 0  # calls run again after their worker failed
        self.submit_ms: list[float] = []  # wall latency of each SubmitCall

    async def close(self) -> None:
        for ch, _ in self._workers.values():
            await ch.close()
        await self._channel.close()

    def _next_seq(self, program_id: str) -> int:
        n = self._seq[program_id] = self._seq.get(program_id, 0) + 1
        return n

    async def _rpc(self, method, request, retry_s: float | None = None):
        deadline = time.monotonic() + (self.scheduler_retry_s if retry_s is None else retry_s)
        backoff = 0.02
        while True:
            try:
                return await method(request, metadata=self.transport.metadata(), timeout=self.rpc_timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(0.5, backoff * 2)

    # ---- scheduler -----------------------------------------------------------------------------
    async def health(self, *, retry_s: float | None = None) -> pb.HealthResponse:
        return await self._rpc(self.stub.Health, pb.HealthRequest(), retry_s)

    async def connect(self, timeout_s: float = 5.0) -> pb.HealthResponse:
        """First contact: the scheduler's health, or ServiceUnavailable within `timeout_s` (a
        wrong address should not look like a restart to wait out)."""
        try:
            return await self.health(retry_s=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _RETRYABLE:
                raise ServiceUnavailable(f"no scheduler answers at {self.address} ({exc.code().name} for "
                                         f"{timeout_s:g} s): is `agentflow serve` running there?") from None
            raise

    async def open_program(self, program_id: str, workflow_spec: str, *, tenant: str = "",
                           share_kv_across_programs: bool = False) -> str:
        h = hashlib.sha256(workflow_spec.encode()).hexdigest()
        send = h not in self._sent_specs
        try:
            resp = await self._rpc(self.stub.OpenProgram, pb.OpenProgramRequest(
                program_id=program_id, tenant=tenant, workflow_hash=h, workflow_spec=workflow_spec if send else "",
                share_kv_across_programs=share_kv_across_programs))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or send:
                raise
            resp = await self._rpc(self.stub.OpenProgram, pb.OpenProgramRequest(
                program_id=program_id, tenant=tenant, workflow_hash=h, workflow_spec=workflow_spec,
                share_kv_across_programs=share_kv_across_programs))
        self._sent_specs.add(h)
        self._seq.setdefault(program_id, 0)
        return resp.workflow_hash

    async def submit(self, call: CallRequest) -> RouteAnswer:
        if call.event_seq == 0 and not call.failed_worker:
            call = replace(call, event_seq=self._next_seq(call.program_id))
        t = time.perf_counter()
        resp = await self._rpc(self.stub.SubmitCall, convert.call_to_pb(call))
        self.submit_ms.append((time.perf_counter() - t) * 1000.0)
        return convert.answer_from_pb(resp)

    async def tool(self, program_id: str, *, step: str, tool: str, finished: bool, duration_s: float = 0.0) -> None:
        await self._rpc(self.stub.ReportTool, pb.ReportToolRequest(
            program_id=program_id, step=step, tool=tool, finished=finished, duration_s=duration_s,
            event_seq=self._next_seq(program_id)))

    async def close_program(self, program_id: str, *, cancelled: bool = False) -> None:
        await self._rpc(self.stub.CloseProgram, pb.CloseProgramRequest(
            program_id=program_id, cancelled=cancelled, event_seq=self._next_seq(program_id)))
        self._seq.pop(program_id, None)

    # ---- workers -------------------------------------------------------------------------------
    def _worker(self, address: str) -> pbg.WorkerStub:
        hit = self._workers.get(address)
        if hit is None:
            ch = self.transport.channel(address)
            hit = self._workers[address] = (ch, pbg.WorkerStub(ch))
        return hit[1]

    async def generate(self, route: RouteAnswer, request: GenerateRequest) -> AsyncIterator[TokenChunk | GenerateResult]:
        # the route's hints travel with the call: its reuse hints reach the engine with the request,
        # before the call can be admitted (a WatchDecisions message could arrive after the Generate)
        stub = self._worker(route.worker_address)
        stream = stub.Generate(convert.generate_to_pb(request, convert.hints_to_pb(route)),
                               metadata=self.transport.metadata(), timeout=None)
        async for ev in stream:
            if ev.HasField("chunk"):
                yield TokenChunk(call_id=request.call_id, token_ids=tuple(ev.chunk.token_ids), text=ev.chunk.text)
            else:
                yield convert.result_from_pb(str(request.call_id), ev.result)

    async def run_call(self, call: CallRequest, request: GenerateRequest, *,
                       on_chunk=None) -> tuple[RouteAnswer, GenerateResult]:
        """Submit, run on the routed worker, and if that worker fails under it, run it once more
        elsewhere. Returns the final route and the result."""
        route = await self.submit(call)
        deadline = time.monotonic() + self.worker_retry_s
        backoff = 0.05
        while True:
            try:
                result = await collect(self.generate(route, request), where=f"worker {route.worker_id}",
                                       call_id=call.call_id, on_chunk=on_chunk)
                return route, result
            except grpc.aio.AioRpcError as exc:
                retryable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                           grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
                if time.monotonic() >= deadline or not retryable:
                    self._report_failed(call.call_id, route.worker_id, f"{exc.code().name}: {exc.details()}")
                    if retryable:  # name the worker that failed, not the scheduler
                        raise ServiceUnavailable(
                            f"call {call.call_id}: worker {route.worker_id} at {route.worker_address} failed "
                            f"({exc.code().name}: {exc.details()}), and no worker ran it within "
                            f"{self.worker_retry_s:g} s") from None
                    raise
                self.retries += 1
                if self.retries > 1:
                    await asyncio.sleep(backoff)  # workers failing one after another: give them time
                    backoff = min(1.0, backoff * 2)
                route = await self.submit(replace(call, failed_worker=route.worker_id, event_seq=0))
            except (asyncio.CancelledError, Exception) as exc:  # the caller gave up on it (cancel, timeout)
                self._report_failed(call.call_id, route.worker_id, type(exc).__name__)
                raise

    def _report_failed(self, call_id: str, worker_id: str, error: str) -> None:
        """Tell the scheduler the call is over without a result (in the background: this runs on
        the way out of a cancelled task). Best effort: a program's close ends it too."""
        async def report():
            try:
                await self.stub.ReportCall(pb.ReportCallRequest(call_id=call_id, worker_id=worker_id,
                                                                kind=pb.ReportCallRequest.FAILED, error=error),
                                           metadata=self.transport.metadata(), timeout=self.rpc_timeout_s)
            except grpc.aio.AioRpcError:
                pass

        task = asyncio.ensure_future(report())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = ["ServiceClient", "ServiceUnavailable"]
