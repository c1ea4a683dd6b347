"""The scheduler service over gRPC: thin servicers around `ServiceCore`.

Each method converts the message (convert.py), calls the core, and maps a `ServiceError` to its
status code with a message that names the field. Nothing else happens here, apart from the three
things only a server has: the decision streams to workers (WatchDecisions), a ticker (pins past
their TTL end; silent workers are lost; idle programs expire), and transport concerns (TLS,
credentials, message size limits, graceful drain).

Authorization (auth.py): every RPC first finds who calls. A client's program and call ids are
scoped to its tenant here, at the edge (`Identity.scope`), so the core never sees an id a client
could use to reach another tenant; worker RPCs are allowed only to that worker's credential (or an
admin); a client may report only FAILED, on its own calls. Heavy workflow compiles run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from agentflow.runtime.service import convert
from agentflow.runtime.service.auth import Credentials, Identity, identity_of_certificate
from agentflow.runtime.service.core import Code, Held, NoWorker, ServiceCore, ServiceError, compile_workflow
from agentflow.runtime.service.wire import BadRequest, SafeDecoding, request_types
from agentflow.v1 import service_pb2 as pb
from agentflow.v1 import service_pb2_grpc as pbg

log = logging.getLogger("agentflow.service")

STATUS = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_WATCHERS_PER_WORKER = 4  # decision streams one worker id may hold at once
MAX_QUEUED_DECISIONS = 10_000  # a stream that falls this far behind is ended (the worker watches again)
UNAUTHENTICATED = "missing or unknown credential (authorization: Bearer TOKEN, or a client certificate)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """How a server listens / a client connects: TLS files, a bearer token, message limits."""

    tls_cert: str | None = None  # server: its certificate chain; client: the CA to trust
    tls_key: str | None = None  # server: its key; client (mTLS): its own key, with client_cert
    token: str | None = None  # bearer token sent (client); the shared token required (server, no tokens file)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    credentials: Credentials | None = None  # server: token -> identity (None: from `token`, or open)
    client_ca: str | None = None  # server: require client certificates signed by this CA (mTLS identities)
    client_cert: str | None = None  # client: its certificate for mTLS (CN "client:<tenant>", "worker:<id>", "admin")

    def options(self) -> list[tuple[str, int]]:
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0)]  # a second server on a taken port fails to bind

    def auth(self) -> Credentials:
        if self.credentials is not None:
            return self.credentials
        return Credentials.shared(self.token) if self.token else Credentials()

    def check_server(self) -> None:
        """Refuse settings a server cannot start with, as one line (ValueError)."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        if self.client_ca and not self.tls_cert:
            raise ValueError("client certificates (--tls-client-ca) need TLS: add --tls-cert and --tls-key")
        for what, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--tls-client-ca", self.client_ca), ("client certificate", self.client_cert)):
            if path and not Path(path).is_file():
                raise ValueError(f"{what} {path}: no such file")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        self.check_server()
        if not self.tls_cert:
            return None
        # A worker with mTLS holds one certificate (client_cert, its name "worker:<id>") for both ends:
        # it shows it to the scheduler and serves its own endpoint with it; tls_cert is then the CA
        # it trusts. Without client_cert, tls_cert is the server's own chain.
        chain = self.client_cert or self.tls_cert
        pair = [(Path(self.tls_key).read_bytes(), Path(chain).read_bytes())]
        if self.client_ca:
            return grpc.ssl_server_credentials(pair, root_certificates=Path(self.client_ca).read_bytes(),
                                               require_client_auth=True)
        return grpc.ssl_server_credentials(pair)

    def channel(self, address: str) -> grpc.aio.Channel:
        if self.tls_cert:
            key = chain = None
            if self.client_cert and self.tls_key:
                key, chain = Path(self.tls_key).read_bytes(), Path(self.client_cert).read_bytes()
            creds = grpc.ssl_channel_credentials(root_certificates=Path(self.tls_cert).read_bytes(),
                                                 private_key=key, certificate_chain=chain)
            return grpc.aio.secure_channel(address, creds, options=self.options())
        return grpc.aio.insecure_channel(address, options=self.options())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class Authenticator:
    """Who calls an RPC: the client certificate's name (mTLS), else the bearer token."""

    def __init__(self, credentials: Credentials, *, mtls: bool = False):
        self.credentials = credentials
        self.mtls = mtls

    @property
    def open(self) -> bool:
        return self.credentials.open and not self.mtls

    def identify(self, context) -> Identity | None:
        if self.mtls:
            names = context.auth_context().get("x509_common_name") or ()
            ident = identity_of_certificate(names[0].decode()) if names else None
            if ident is not None:
                return ident
            if self.credentials.open:  # a certificate without a known name, and no tokens: nobody
                return None
        return self.credentials.identify_metadata(context.invocation_metadata())


def bind(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> int:
    """Listen on `address`; an OSError naming it when that is not possible (the port is taken)."""
    try:
        port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise OSError(f"cannot listen on {address}: the port is taken or the address is not this machine's "
                      "(another agentflow serve or worker there?); pick another with --listen")
    return port


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
        # submissions the core holds (their program is parked): answered when it is activated
        self._released: dict[str, asyncio.Future] = {}
        core.release_listeners.append(self._on_release)

    def _on_release(self, call_id: str, answer) -> None:
        fut = self._released.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(answer)

    async def _when_released(self, answers: list, waits: dict, fut: asyncio.Future) -> None:
        """Resolve a message's future once every held call in it has its answer."""
        out = list(answers)
        for i, a in enumerate(out):
            if isinstance(a, Held):
                out[i] = await waits[a.call_id]
        if not fut.done():
            fut.set_result(out)

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
                loop = asyncio.get_running_loop()
                for reqs, fut in batch:
                    part = answers[i:i + len(reqs)]
                    held = [a for a in part if isinstance(a, Held)]
                    if held:  # parked programs: this message is answered when they are activated
                        waits = {a.call_id: loop.create_future() for a in held}
                        self._released.update(waits)
                        asyncio.ensure_future(self._when_released(part, waits, fut))
                    elif not fut.done():
                        fut.set_result(part)
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
        self.auth = server.authenticator
        self.batcher = SubmitBatcher(core)
        self._compiles = asyncio.Semaphore(2)  # heavy compiles at once (threads, off the event loop)
        self._watchers: dict[str, list[asyncio.Queue]] = {}

    async def _who(self, context, request=None) -> Identity:
        if isinstance(request, BadRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        ident = self.auth.identify(context)
        if ident is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        return ident

    async def _as_worker(self, context, request, worker_id: str) -> Identity:
        ident = await self._who(context, request)
        if not ident.may_act_as_worker(worker_id):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"worker_id: this credential ({ident.describe()}) may not act as worker {worker_id!r}")
        return ident

    async def RegisterWorker(self, request, context):
        await self._as_worker(context, request, request.info.worker_id if not isinstance(request, BadRequest) else "")
        try:
            self.core.register_worker(convert.spec_from_pb(request.info), convert.load_from_pb(request.load))
        except ServiceError as exc:
            await _abort(context, exc)
        self.server.worker_registered()
        return pb.RegisterWorkerResponse(heartbeat_interval_s=self.core.config.heartbeat_interval_s,
                                         scheduler_epoch=self.core.epoch)

    async def Heartbeat(self, request, context):
        await self._as_worker(context, request, request.worker_id if not isinstance(request, BadRequest) else "")
        try:
            known = self.core.heartbeat(request.worker_id, convert.load_from_pb(request.load))
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.HeartbeatResponse(known=known, scheduler_epoch=self.core.epoch)

    async def OpenProgram(self, request, context):
        ident = await self._who(context, request)
        if self.server.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler is shutting down; open programs elsewhere")
        tenant = request.tenant
        if ident.kind == "worker":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "a worker credential cannot open programs")
        if ident.kind == "client":
            if tenant not in ("", "default", ident.tenant):  # "default": the caller's own
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"tenant: this credential is tenant {ident.tenant!r}'s (leave tenant empty)")
            tenant = ident.tenant
        try:
            compiled = None
            if self.core.needs_compile(request.workflow_spec, request.workflow_hash) is not None:
                async with self._compiles:
                    compiled = await asyncio.to_thread(compile_workflow, request.workflow_spec,
                                                       self.core.config.limits)
            h, created = self.core.open_program(ident.scope(request.program_id) if request.program_id else "",
                                                tenant=tenant, workflow_spec=request.workflow_spec,
                                                workflow_hash=request.workflow_hash,
                                                share_kv_across_programs=request.share_kv_across_programs,
                                                compiled=compiled)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.OpenProgramResponse(workflow_hash=h, created=created)

    def _calls(self, ident: Identity, msgs) -> tuple[list, dict[int, ServiceError]]:
        """Messages -> CallRequests in the caller's scope (malformed ones: their error)."""
        prefix = f"{ident.tenant}/" if ident.kind == "client" else ""
        reqs, bad = [], {}
        for i, m in enumerate(msgs):
            try:
                if ident.kind == "worker":
                    raise ServiceError(Code.PERMISSION_DENIED, "a worker credential cannot submit calls")
                if isinstance(m, BadRequest):
                    raise ServiceError(Code.INVALID_ARGUMENT, m.message)
                reqs.append(convert.call_from_pb(m, prefix))
            except ServiceError as exc:  # malformed: answered with its error, never submitted
                bad[i] = exc
        return reqs, bad

    async def _submit(self, reqs: list) -> list:
        """Answers to `reqs`; calls with no worker to run them wait for one to register, up to
        `limits.worker_wait_s` (then UNAVAILABLE, retryable: the call stays queued)."""
        answers = await self.batcher.enqueue(reqs) if reqs else []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.core.config.limits.worker_wait_s
        while True:
            waiting = [i for i, a in enumerate(answers) if isinstance(a, NoWorker)]
            left = deadline - loop.time()
            if not waiting or left <= 0 or self.server.draining:
                return answers
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.registered_event().wait(), left)
            again = await self.batcher.enqueue([reqs[i] for i in waiting])
            for i, a in zip(waiting, again):
                answers[i] = a

    def _answer(self, ident: Identity, a) -> pb.SubmitCallResponse:
        out = convert.answer_to_pb(a)
        if ident.kind == "client":
            out.call_id = ident.unscope(a.call_id)
        return out

    async def SubmitCall(self, request, context):
        ident = await self._who(context, request)
        reqs, bad = self._calls(ident, [request])
        if bad:
            await _abort(context, bad[0])
        (ans,) = await self._submit(reqs)
        if isinstance(ans, ServiceError):
            await _abort(context, ans)
        return self._answer(ident, ans)

    async def SubmitCalls(self, request_iterator, context):
        ident = await self._who(context)
        async with contextlib.aclosing(self._in_order(ident, request_iterator, lambda m: (m,))) as answers:
            async for (a,) in answers:
                yield a

    async def SubmitCallBatches(self, request_iterator, context):
        ident = await self._who(context)
        async with contextlib.aclosing(self._in_order(
                ident, request_iterator, lambda b: (b,) if isinstance(b, BadRequest) else b.calls)) as answers:
            async for batch in answers:
                yield pb.SubmitCallBatchResponse(answers=batch)

    async def _in_order(self, ident: Identity, messages, calls_of):
        """The streaming submissions: every message's calls go to the batcher as it arrives;
        answers come back per message, in the order of the messages and of their calls, each an
        answer or an error naming its call (one bad request does not end the stream)."""
        pending: asyncio.Queue = asyncio.Queue()

        async def pump():
            async for msg in messages:
                ms = list(calls_of(msg))
                reqs, bad = self._calls(ident, ms)
                pending.put_nowait((ms, bad, asyncio.ensure_future(self._submit(reqs))))
            pending.put_nowait(None)

        task = asyncio.ensure_future(pump())
        try:
            while (item := await pending.get()) is not None:
                ms, bad, fut = item
                answers = iter(await fut)
                out = []
                for i, m in enumerate(ms):
                    a = bad[i] if i in bad else next(answers)
                    cid = "" if isinstance(m, BadRequest) else m.call_id
                    out.append(pb.SubmitCallResponse(call_id=cid, error=str(a), error_code=STATUS[a.code].value[0])
                               if isinstance(a, ServiceError) else self._answer(ident, a))
                yield out
            await task  # the request stream's own errors surface here
        finally:
            task.cancel()

    async def ReportCall(self, request, context):
        ident = await self._who(context, request)
        K = pb.ReportCallRequest
        try:
            if ident.kind == "client":
                # a client may say only that its own call is over without a result (it gave up)
                if request.kind != K.FAILED:
                    raise ServiceError(Code.PERMISSION_DENIED, "a client credential may report only FAILED, for "
                                       "its own calls", field="kind")
                self.core.call_failed(ident.scope(request.call_id), "", request.error[:256])
                return pb.ReportCallResponse()
            reporter = None if ident.is_admin else ident.worker_id
            if request.kind == K.STARTED:
                self.core.call_started(request.call_id, request.worker_id, reporter=reporter)
            elif request.kind == K.FINISHED:
                self.core.call_finished(request.call_id, request.worker_id, output_tokens=request.output_tokens,
                                        cached=convert.prefixes_from_pb(request.cached, "cached"),
                                        prompt_tokens=request.prompt_tokens, cached_tokens=request.cached_tokens,
                                        ttft_s=request.ttft_s, reporter=reporter)
            elif request.kind == K.FAILED:
                log.info("call %s failed on %s: %s", request.call_id[:256], request.worker_id[:256],
                         request.error[:256])
                if reporter is not None:
                    self.core._reported_call(request.call_id, request.worker_id, reporter)
                self.core.call_failed(request.call_id, request.worker_id, request.error[:256], reporter=reporter)
            else:
                raise ServiceError(Code.INVALID_ARGUMENT, "must be STARTED, FINISHED or FAILED", field="kind")
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.ReportCallResponse()

    async def ReportTool(self, request, context):
        ident = await self._who(context, request)
        try:
            if ident.kind == "worker":
                raise ServiceError(Code.PERMISSION_DENIED, "a worker credential cannot report tools")
            self.core.tool(ident.scope(request.program_id), step=request.step, tool=request.tool,
                           finished=request.finished, duration_s=request.duration_s, event_seq=request.event_seq)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.ReportToolResponse()

    async def CloseProgram(self, request, context):
        ident = await self._who(context, request)
        try:
            if ident.kind == "worker":
                raise ServiceError(Code.PERMISSION_DENIED, "a worker credential cannot close programs")
            self.core.close(ident.scope(request.program_id), cancelled=request.cancelled,
                            event_seq=request.event_seq)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.CloseProgramResponse()

    async def WatchDecisions(self, request, context):
        worker = "" if isinstance(request, BadRequest) else request.worker_id
        await self._as_worker(context, request, worker)
        if worker not in self.core.workers:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"worker_id: worker {worker!r} is not registered (RegisterWorker first)")
        queues = self._watchers.setdefault(worker, [])
        if len(queues) >= MAX_WATCHERS_PER_WORKER:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"worker_id: worker {worker!r} has {len(queues)} decision streams open; end one first")
        queue: asyncio.Queue = asyncio.Queue()
        queues.append(queue)

        def sink(w, d, queues=queues):  # every stream of the worker gets every decision
            for q in queues:
                if d is not None and q.qsize() >= MAX_QUEUED_DECISIONS:
                    while not q.empty():
                        q.get_nowait()
                    q.put_nowait(None)  # too far behind: end it, the worker watches again
                else:
                    q.put_nowait(d)

        self.core.sinks[worker] = sink
        self.core.scoped_sinks.add(worker)  # the worker agent declares a tenant's keys as the scheduler does
        try:
            while not self.server.draining:
                d = await queue.get()
                if d is None:
                    break
                yield convert.decision_to_pb(d)
        finally:
            queues.remove(queue)
            if not queues:
                self._watchers.pop(worker, None)
                if self.core.sinks.get(worker) is sink or worker not in self._watchers:
                    self.core.sinks.pop(worker, None)
                    self.core.scoped_sinks.discard(worker)

    async def Health(self, request, context):
        ident = await self._who(context, request)
        h = self.core.health()
        open_programs = h["open_programs"]
        if ident.kind == "client":
            open_programs = self.core.open_programs_of(ident.tenant)
        return pb.HealthResponse(
            status=pb.HealthResponse.DRAINING if self.server.draining else pb.HealthResponse.SERVING,
            scheduler_epoch=h["epoch"], open_programs=open_programs, waiting_calls=h["waiting_calls"],
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
        self.authenticator = Authenticator(transport.auth(), mtls=bool(transport.client_ca))
        self._registered: asyncio.Event | None = None

    def registered_event(self) -> asyncio.Event:
        """Set when the next worker registers (waiting submissions then try again)."""
        if self._registered is None:
            self._registered = asyncio.Event()
        return self._registered

    def worker_registered(self) -> None:
        if self._registered is not None:
            self._registered.set()
            self._registered = None

    async def start(self) -> int:
        creds = self.transport.server_credentials()
        self._server = grpc.aio.server(interceptors=[SafeDecoding(request_types(pb.DESCRIPTOR.services_by_name[
            "Scheduler"], pb))], options=self.transport.options())
        self.servicer = SchedulerServicer(self.core, self)
        pbg.add_SchedulerServicer_to_server(self.servicer, self._server)
        self.port = bind(self._server, self.address, creds)
        await self._server.start()
        self._ticker = asyncio.ensure_future(self._tick())
        return self.port

    @property
    def target(self) -> str:
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_expiry = loop.time() + 1.0
        while True:
            await asyncio.sleep(self.tick_interval_s)
            try:
                lost = self.core.expire_workers()
                for w in lost:
                    log.warning("worker %s missed its heartbeats: lost; its calls go elsewhere", w)
                if loop.time() >= next_expiry:  # idle programs: once a second, not every tick
                    next_expiry = loop.time() + 1.0
                    for pid in self.core.expire_programs():
                        log.info("program %s idle for %.0f s: closed", pid, self.core.config.limits.program_idle_s)
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


__all__ = ["Authenticator", "SchedulerServer", "SchedulerServicer", "SubmitBatcher", "Transport", "bind"]
