"""The scheduler service over gRPC: thin servicers around `ServiceCore`.

Each method converts the message (convert.py), calls the core, and maps a `ServiceError` to its
status code with a message that names the field. Nothing else happens here, apart from the three
things only a server has: the decision streams to workers (WatchDecisions), a ticker (pins past
their TTL end; silent workers are lost), and transport concerns (TLS, a bearer token, message
size limits, graceful drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from agentflow.runtime.service import convert
from agentflow.runtime.service.core import Code, ServiceCore, ServiceError
from agentflow.v1 import service_pb2 as pb
from agentflow.v1 import service_pb2_grpc as pbg

log = logging.getLogger("agentflow.service")

STATUS = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """How a server listens / a client connects: TLS files, a bearer token, message limits."""

    tls_cert: str | None = None  # server: its certificate chain; client: the CA to trust
    tls_key: str | None = None  # server only
    token: str | None = None  # bearer token required (server) / sent (client)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def options(self) -> list[tuple[str, int]]:
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes)]

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        if not self.tls_key:
            raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        return grpc.ssl_server_credentials([(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())])

    def channel(self, address: str) -> grpc.aio.Channel:
        if self.tls_cert:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(self.tls_cert).read_bytes())
            return grpc.aio.secure_channel(address, creds, options=self.options())
        return grpc.aio.insecure_channel(address, options=self.options())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class TokenCheck(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._want = f"Bearer {token}"

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization metadata)")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)
        self._deny_bidi = grpc.stream_stream_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        if dict(details.invocation_metadata or ()).get("authorization") == self._want:
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.request_streaming and handler.response_streaming:
            return self._deny_bidi
        return self._deny_stream if handler.response_streaming else self._deny


async def _abort(context, exc: ServiceError):
    await context.abort(STATUS[exc.code], str(exc))


class SubmitBatcher:
    """Submissions from every stream and unary call, applied in batches: one `submit_many` (one
    scheduling step, one journal transaction) for whatever arrived while the last batch ran.

        SubmitCall ─────────┐
        SubmitCalls ────────┼─> queue ──(loop: take up to max_batch calls, after letting ready
        SubmitCallBatches ──┘    │        RPCs enqueue)──> core.submit_many
            <──── each message's future gets its calls' answers, in order ────┘

    A batch costs one scheduling step, one journal commit and one routing snapshot of the
    workers' loads however many calls it holds, so under load the per-call cost falls as batches
    grow; an idle service answers a lone call at once (the loop waits for nothing but the calls
    already ready to run)."""

    def __init__(self, core: ServiceCore, max_batch: int = 512):
        self.core = core
        self.max_batch = max_batch
        # one entry per request message: its calls and the future of their answers (a future per
        # call cost more than the step itself at thousands of calls per second)
        self._queue: list[tuple[list, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def enqueue(self, reqs: list) -> asyncio.Future:
        """The future list of answers (each a RouteAnswer or a ServiceError) to `reqs`, in order."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((reqs, fut))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return fut

    async def submit(self, req):
        return (await self.enqueue([req]))[0]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # RPCs already ready to run enqueue theirs first
            while self._queue:
                n = taken = 0
                while taken < len(self._queue) and (n == 0 or n + len(self._queue[taken][0]) <= self.max_batch):
                    n += len(self._queue[taken][0])
                    taken += 1
                batch, self._queue = self._queue[:taken], self._queue[taken:]
                calls = [r for reqs, _ in batch for r in reqs]
                try:
                    answers = self.core.submit_many(calls)
                except Exception as exc:  # a bug must fail these calls, not the batcher
                    log.exception("submit batch failed")
                    answers = [ServiceError(Code.UNAVAILABLE, f"scheduler error: {exc}")] * len(calls)
                i = 0
                for reqs, fut in batch:
                    if not fut.done():
                        fut.set_result(answers[i:i + len(reqs)])
                    i += len(reqs)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class SchedulerServicer(pbg.SchedulerServicer):
    def __init__(self, core: ServiceCore, server: SchedulerServer):
        self.core = core
        self.server = server
        self.batcher = SubmitBatcher(core)

    async def RegisterWorker(self, request, context):
        try:
            self.core.register_worker(convert.spec_from_pb(request.info), convert.load_from_pb(request.load))
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.RegisterWorkerResponse(heartbeat_interval_s=self.core.config.heartbeat_interval_s,
                                         scheduler_epoch=self.core.epoch)

    async def Heartbeat(self, request, context):
        known = self.core.heartbeat(request.worker_id, convert.load_from_pb(request.load))
        return pb.HeartbeatResponse(known=known, scheduler_epoch=self.core.epoch)

    async def OpenProgram(self, request, context):
        if self.server.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler is shutting down; open programs elsewhere")
        try:
            h, created = self.core.open_program(request.program_id, tenant=request.tenant,
                                                workflow_spec=request.workflow_spec,
                                                workflow_hash=request.workflow_hash,
                                                share_kv_across_programs=request.share_kv_across_programs)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.OpenProgramResponse(workflow_hash=h, created=created)

    async def SubmitCall(self, request, context):
        try:
            req = convert.call_from_pb(request)
        except ServiceError as exc:
            await _abort(context, exc)
        ans = await self.batcher.submit(req)
        if isinstance(ans, ServiceError):
            await _abort(context, ans)
        return convert.answer_to_pb(ans)

    async def SubmitCalls(self, request_iterator, context):
        async with contextlib.aclosing(self._in_order(request_iterator, lambda m: (m,))) as answers:
            async for (a,) in answers:
                yield a

    async def SubmitCallBatches(self, request_iterator, context):
        async with contextlib.aclosing(self._in_order(request_iterator, lambda b: b.calls)) as answers:
            async for batch in answers:
                yield pb.SubmitCallBatchResponse(answers=batch)

    async def _in_order(self, messages, calls_of):
        """The streaming submissions: every message's calls go to the batcher as it arrives;
        answers come back per message, in the order of the messages and of their calls, each an
        answer or an error naming its call (one bad request does not end the stream)."""
        pending: asyncio.Queue = asyncio.Queue()

        async def pump():
            async for msg in messages:
                ms = list(calls_of(msg))
                reqs, bad = [], {}
                for i, m in enumerate(ms):
                    try:
                        reqs.append(convert.call_from_pb(m))
                    except ServiceError as exc:  # malformed: answered with its error, never submitted
                        bad[i] = exc
                pending.put_nowait((ms, bad, self.batcher.enqueue(reqs) if reqs else None))
            pending.put_nowait(None)

        task = asyncio.ensure_future(pump())
        try:
            while (item := await pending.get()) is not None:
                ms, bad, fut = item
                answers = iter(await fut) if fut is not None else iter(())
                out = []
                for i, m in enumerate(ms):
                    a = bad[i] if i in bad else next(answers)
                    out.append(pb.SubmitCallResponse(call_id=m.call_id, error=str(a), error_code=STATUS[a.code].value[0])
                               if isinstance(a, ServiceError) else convert.answer_to_pb(a))
                yield out
            await task  # the request stream's own errors surface here
        finally:
            task.cancel()

    async def ReportCall(self, request, context):
        K = pb.ReportCallRequest
        try:
            if request.kind == K.STARTED:
                self.core.call_started(request.call_id, request.worker_id)
            elif request.kind == K.FINISHED:
                self.core.call_finished(request.call_id, request.worker_id, output_tokens=request.output_tokens,
                                        cached=convert.prefixes_from_pb(request.cached, "cached"),
                                        prompt_tokens=request.prompt_tokens, cached_tokens=request.cached_tokens,
                                        ttft_s=request.ttft_s)
            elif request.kind == K.FAILED:
                log.info("call %s failed on %s: %s", request.call_id, request.worker_id, request.error)
                self.core.call_failed(request.call_id, request.worker_id, request.error)
            else:
                raise ServiceError(Code.INVALID_ARGUMENT, "must be STARTED, FINISHED or FAILED", field="kind")
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.ReportCallResponse()

    async def ReportTool(self, request, context):
        try:
            self.core.tool(request.program_id, step=request.step, tool=request.tool, finished=request.finished,
                           duration_s=request.duration_s, event_seq=request.event_seq)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.ReportToolResponse()

    async def CloseProgram(self, request, context):
        try:
            self.core.close(request.program_id, cancelled=request.cancelled, event_seq=request.event_seq)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.CloseProgramResponse()

    async def WatchDecisions(self, request, context):
        worker = request.worker_id
        if worker not in self.core.workers:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"worker_id: worker {worker!r} is not registered (RegisterWorker first)")
        queue: asyncio.Queue = asyncio.Queue()
        sink = lambda w, d: queue.put_nowait(d)  # noqa: E731
        self.core.sinks[worker] = sink
        try:
            while not self.server.draining:
                d = await queue.get()
                if d is None:
                    break
                yield convert.decision_to_pb(d)
        finally:
            if self.core.sinks.get(worker) is sink:
                del self.core.sinks[worker]

    async def Health(self, request, context):
        h = self.core.health()
        return pb.HealthResponse(
            status=pb.HealthResponse.DRAINING if self.server.draining else pb.HealthResponse.SERVING,
            scheduler_epoch=h["epoch"], open_programs=h["open_programs"], waiting_calls=h["waiting_calls"],
            workers=[convert.spec_to_pb(s) for s in h["workers"]], policy=h["policy"],
            decisions_per_s=h["decisions_per_s"])


class SchedulerServer:
    """A running scheduler service: `await start()`, `await stop(grace_s)`."""

    def __init__(self, core: ServiceCore, address: str = "127.0.0.1:0", *, transport: Transport = Transport(),
                 tick_interval_s: float = 0.05):
        self.core = core
        self.address = address
        self.transport = transport
        self.tick_interval_s = tick_interval_s
        self.draining = False
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._ticker: asyncio.Task | None = None

    async def start(self) -> int:
        interceptors = [TokenCheck(self.transport.token)] if self.transport.token else []
        self._server = grpc.aio.server(interceptors=interceptors, options=self.transport.options())
        self.servicer = SchedulerServicer(self.core, self)
        pbg.add_SchedulerServicer_to_server(self.servicer, self._server)
        creds = self.transport.server_credentials()
        if creds is not None:
            self.port = self._server.add_secure_port(self.address, creds)
        else:
            self.port = self._server.add_insecure_port(self.address)
        if not self.port:
            raise OSError(f"cannot listen on {self.address}")
        await self._server.start()
        self._ticker = asyncio.ensure_future(self._tick())
        return self.port

    @property
    def target(self) -> str:
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval_s)
            try:
                lost = self.core.expire_workers()
                for w in lost:
                    log.warning("worker %s missed its heartbeats: lost; its calls go elsewhere", w)
                self.core.tick()
            except Exception:  # a bug here must not stop the ticker
                log.exception("scheduler tick failed")

    async def stop(self, grace_s: float | None = 1.0) -> None:
        """Graceful drain: refuse new programs, end decision streams, finish RPCs in flight."""
        self.draining = True
        for sink in list(self.core.sinks.values()):
            sink("", None)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            await self._server.stop(grace_s)
            await self.servicer.batcher.aclose()
        if self.core.journal is not None:
            self.core.journal.close()
        if self.core.telemetry is not None:
            self.core.telemetry.shutdown()  # flushes what the exporters hold

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


__all__ = ["SchedulerServer", "SchedulerServicer", "SubmitBatcher", "TokenCheck", "Transport"]
