"""The worker agent: runs beside one engine, serves its calls, keeps the scheduler informed.

    scheduler <── RegisterWorker, Heartbeat (load) every interval ── agent
    scheduler ── WatchDecisions (its part of each decision) ──> agent ── engine.apply(decision)
    client ── Generate(prompt ids, hints) ──> agent ── engine.generate ──> chunks ... result
                                               │
                                               └── ReportCall STARTED, then FINISHED (before the
                                                   client sees the result, so the scheduler learns
                                                   what is cached before the program's next event)

When the scheduler is unreachable (restarting), the agent keeps serving: heartbeats and the
decision stream retry with backoff, and a FINISHED report is retried for up to
`report_retry_s` before the result is returned anyway. A heartbeat answered "unknown" (the
scheduler restarted, or declared this worker lost) makes the agent register again.

Its own service checks who calls (auth.py, the scheduler's tokens): a client's Generate runs in
that client's tenant only (its call and program ids scoped as the scheduler scopes them, its cache
namespaces its tenant's), GetState shows a client no prefix keys, ApplyHints is for admins. A
scheduler that refuses this worker's credential (UNAUTHENTICATED, PERMISSION_DENIED) or its
registration (INVALID_ARGUMENT) is fatal: `failed` holds why, and `agentflow worker` exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from agentflow.runtime.engines.base import Engine, GenerateResult
from agentflow.runtime.service import convert
from agentflow.runtime.service.auth import Credentials, Identity
from agentflow.runtime.service.core import Code, ServiceError
from agentflow.runtime.service.server import STATUS, UNAUTHENTICATED, Authenticator, Transport, bind
from agentflow.runtime.service.wire import BadRequest, SafeDecoding, request_types
from agentflow.v1 import service_pb2 as pb
from agentflow.v1 import service_pb2_grpc as pbg

log = logging.getLogger("agentflow.worker")
MAX_ALIASES = 65_536  # engine-made keys whose scheduler names a worker remembers


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    worker_id: str
    scheduler: str  # host:port of the scheduler service
    listen: str = "127.0.0.1:0"
    advertise: str | None = None  # the address clients reach this worker at (default: the bound one)
    engine_kind: str = "sim"
    time_scale: float = 1.0  # simulated engines: simulated seconds per wall second
    report_retry_s: float = 30.0


class WorkerServicer(pbg.WorkerServicer):
    def __init__(self, agent: WorkerAgent):
        self.agent = agent

    async def _who(self, context, request) -> Identity:
        if isinstance(request, BadRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        ident = self.agent.authenticator.identify(context)
        if ident is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        return ident

    async def Generate(self, request, context):
        ident = await self._who(context, request)
        try:
            if ident.kind == "worker":
                raise ServiceError(Code.PERMISSION_DENIED, "a worker credential cannot run calls")
            if ident.kind == "client":
                _in_tenant(request, ident)
            head = _scope_prefixes(request)
            # the call's cross-agent reuse hints come with it (hints.reuse -> GenerateRequest.reuse):
            # the engine registers them as it takes the request, before the call can be admitted
            req = convert.generate_from_pb(request)
        except ServiceError as exc:
            await context.abort(STATUS[exc.code], str(exc))
        agent = self.agent
        # STARTED goes out while the engine works (not a round trip before the first token); it
        # is awaited before FINISHED so the scheduler sees them in order.
        started = asyncio.ensure_future(agent.report(pb.ReportCallRequest(
            call_id=req.call_id, worker_id=agent.config.worker_id, kind=pb.ReportCallRequest.STARTED), required=False))
        result: GenerateResult | None = None
        try:
            async for item in agent.engine.generate(req):
                if isinstance(item, GenerateResult):
                    result = item
                else:
                    yield pb.GenerateEvent(chunk=pb.TokenChunk(token_ids=list(item.token_ids), text=item.text))
        finally:
            with contextlib.suppress(Exception):
                await started
        if result is None:
            await context.abort(grpc.StatusCode.INTERNAL, f"engine {agent.engine.name} returned no result")
        if head:
            agent.alias(head, result.cached)
        await agent.report(pb.ReportCallRequest(
            call_id=req.call_id, worker_id=agent.config.worker_id, kind=pb.ReportCallRequest.FINISHED,
            output_tokens=len(result.output_ids), cached=[convert.prefix_to_pb(p) for p in result.cached],
            prompt_tokens=result.prompt_tokens, cached_tokens=result.cached_tokens, ttft_s=result.ttft_s,
            duration_s=result.duration_s), required=True)
        yield pb.GenerateEvent(result=convert.result_to_pb(result))

    async def ApplyHints(self, request, context):
        ident = await self._who(context, request)
        if not ident.is_admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "ApplyHints is for admin credentials")
        self.agent.apply(request)
        return pb.ApplyHintsResponse()

    async def GetState(self, request, context):
        ident = await self._who(context, request)
        load = self.agent.engine.load()
        # prefix keys name other tenants' cached prompts: only the operator sees them
        keys = list(load.cached_prefixes) if ident.kind != "client" else []
        return pb.WorkerStateResponse(info=self.agent.info(), load=convert.load_to_pb(load), cached_prefixes=keys)


def _scope_prefixes(m: pb.GenerateRequest) -> str:
    """A Generate in a tenant's namespace declares its prefixes as "tenant/key" (and parents), as
    the scheduler keys that tenant's prefixes (core.tenant_prefixes): two tenants that name the same
    key reach different entries of the engine's prefix book, and the scheduler's decisions name
    exactly those. Returns the scope ("tenant/"), "" in the default namespace."""
    ns = m.namespace or "default"
    if ns == "default":
        return ""
    head = f"{ns}/"
    for p in m.prefixes:
        p.key = head + p.key
        if p.parent:
            p.parent = head + p.parent
    return head


def _in_tenant(m: pb.GenerateRequest, ident: Identity) -> None:
    """A client's Generate, rewritten in place into its tenant: ids scoped as the scheduler scopes
    them (so reports name the scheduler's call), every cache namespace the tenant's own."""
    t = ident.tenant
    for fieldname, ns in [("namespace", m.namespace)] + [(f"prefixes[{i}].namespace", p.namespace)
                                                          for i, p in enumerate(m.prefixes)]:
        if ns not in ("", "default", t):  # "" and "default": the caller's own tenant
            raise ServiceError(Code.PERMISSION_DENIED, f"must be this credential's tenant {t!r}", field=fieldname)
    m.namespace = t
    for p in m.prefixes:
        p.namespace = t
    if m.reuse_namespace:
        if m.reuse_namespace.startswith("default/"):
            m.reuse_namespace = t + m.reuse_namespace[len("default"):]
        if not m.reuse_namespace.startswith(f"{t}/"):
            raise ServiceError(Code.PERMISSION_DENIED, f"must be within tenant {t!r}", field="reuse_namespace")
        tail = f"/p:{m.program_id}"
        if m.program_id and m.reuse_namespace.endswith(tail):  # the scheduler's namespace_for, scoped id
            m.reuse_namespace = m.reuse_namespace[:-len(tail)] + f"/p:{ident.scope(m.program_id)}"
    for i, h in enumerate(m.hints.reuse):
        if not h.namespace.startswith(f"{t}/"):
            raise ServiceError(Code.PERMISSION_DENIED, f"must be within tenant {t!r}",
                               field=f"hints.reuse[{i}].namespace")
    m.call_id = ident.scope(m.call_id)
    m.program_id = ident.scope(m.program_id)


class WorkerAgent:
    def __init__(self, engine: Engine, config: AgentConfig, *, transport: Transport = Transport(),
                 callers: Credentials | None = None):
        self.engine = engine
        self.config = config
        self.transport = transport
        self.authenticator = Authenticator(callers if callers is not None else transport.auth(),
                                           mtls=bool(transport.client_ca))
        self.failed: asyncio.Future | None = None  # set with the reason when the scheduler refuses this worker
        self.port: int | None = None
        self.epoch: str | None = None
        self.heartbeat_interval_s = 0.5
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pbg.SchedulerStub | None = None
        self._tasks: list[asyncio.Task] = []
        self._registered = asyncio.Event()
        self.decisions_applied = 0
        # the scheduler's names ("tenant/key") of keys the engine made itself (a finished sequence's
        # content address, already unique to its namespace) -> the engine's name (bounded)
        self._aliases: OrderedDict[str, str] = OrderedDict()

    @property
    def address(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def info(self) -> pb.WorkerInfo:
        load = self.engine.load()
        return pb.WorkerInfo(worker_id=self.config.worker_id, address=self.address, engine=self.config.engine_kind,
                             kv_capacity_tokens=load.kv_capacity_tokens, host_capacity_tokens=load.host_capacity_tokens,
                             h2d_tokens_per_s=load.h2d_tokens_per_s, prefill_tokens_per_s=load.prefill_tokens_per_s,
                             time_scale=self.config.time_scale)

    async def start(self) -> int:
        # The worker's own service (Generate) asks callers for the same token, and serves TLS when
        # it has a key (clients then reach it with the CA they use for the scheduler).
        self.failed = asyncio.get_running_loop().create_future()
        self._server = grpc.aio.server(interceptors=[SafeDecoding(request_types(pb.DESCRIPTOR.services_by_name[
            "Worker"], pb))], options=self.transport.options())
        pbg.add_WorkerServicer_to_server(WorkerServicer(self), self._server)
        creds = self.transport.server_credentials() if self.transport.tls_key else None
        self.port = bind(self._server, self.config.listen, creds)
        await self._server.start()
        self._channel = self.transport.channel(self.config.scheduler)
        self._stub = pbg.SchedulerStub(self._channel)
        self._tasks = [asyncio.ensure_future(self._heartbeats()), asyncio.ensure_future(self._watch())]
        return self.port

    async def wait_registered(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._registered.wait(), timeout_s)

    async def stop(self, grace_s: float | None = 0.5) -> None:
        """Stop serving (a crash, as the scheduler sees it: heartbeats just stop)."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._channel is not None:
            await self._channel.close()

    # ---- scheduler link ----------------------------------------------------------------------
    async def _register(self) -> None:
        md = self.transport.metadata()
        resp = await self._stub.RegisterWorker(pb.RegisterWorkerRequest(
            info=self.info(), load=convert.load_to_pb(self.engine.load())), metadata=md, timeout=5.0)
        self.heartbeat_interval_s = resp.heartbeat_interval_s or 0.5
        if self.epoch is not None and resp.scheduler_epoch != self.epoch:
            log.warning("scheduler restarted (epoch %s -> %s): registered again", self.epoch, resp.scheduler_epoch)
        self.epoch = resp.scheduler_epoch
        self._registered.set()

    async def _heartbeats(self) -> None:
        backoff = 0.05
        while True:
            try:
                if not self._registered.is_set():
                    await self._register()
                resp = await self._stub.Heartbeat(pb.HeartbeatRequest(
                    worker_id=self.config.worker_id, load=convert.load_to_pb(self.engine.load())),
                    metadata=self.transport.metadata(), timeout=5.0)
                if not resp.known or resp.scheduler_epoch != self.epoch:
                    self._registered.clear()
                    await self._register()
                backoff = 0.05
                await asyncio.sleep(self.heartbeat_interval_s)
            except grpc.aio.AioRpcError as exc:
                self._registered.clear()
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.INVALID_ARGUMENT):
                    why = (f"the scheduler at {self.config.scheduler} refused worker {self.config.worker_id!r}: "
                           f"{exc.code().name}: {exc.details()}")
                    log.info("%s", why)  # `failed` carries it (agentflow worker prints it once, and exits)
                    if self.failed is not None and not self.failed.done():
                        self.failed.set_result(why)
                    return
                log.info("scheduler unreachable (%s); retrying in %.2f s", exc.code().name, backoff)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)

    async def _watch(self) -> None:
        while True:
            await self._registered.wait()
            try:
                call = self._stub.WatchDecisions(pb.WatchDecisionsRequest(worker_id=self.config.worker_id),
                                                 metadata=self.transport.metadata())
                async for d in call:
                    self.apply(d)
            except grpc.aio.AioRpcError as exc:
                log.info("decision stream ended (%s)", exc.code().name)
            await asyncio.sleep(0.05)

    def alias(self, head: str, cached) -> None:
        """Remember the scheduler's name of each key a finished call's engine made (not "tenant/")."""
        for p in cached:
            if not p.key.startswith(head):
                self._aliases[head + p.key] = p.key
                self._aliases.move_to_end(head + p.key)
        while len(self._aliases) > MAX_ALIASES:
            self._aliases.popitem(last=False)

    def apply(self, d: pb.WorkerDecision) -> None:
        if self._aliases:  # decisions name a tenant's engine-made keys as the scheduler does
            get = self._aliases.get
            for part in (d.priorities, d.pins, d.unpins, d.prefetches):
                for x in part:
                    x.prefix = get(x.prefix, x.prefix)
        now = getattr(self.engine, "now_s", time.monotonic)()
        self.engine.apply(convert.decision_from_pb(d, self.config.worker_id, now))
        self.decisions_applied += 1

    async def report(self, m: pb.ReportCallRequest, *, required: bool) -> None:
        """Tell the scheduler about a call. FINISHED is retried while the scheduler is away (so it
        learns what is cached); a call it does not know (finished by a retry elsewhere, or closed)
        is not an error for the worker."""
        deadline = time.monotonic() + (self.config.report_retry_s if required else 0.0)
        backoff = 0.05
        while True:
            try:
                await self._stub.ReportCall(m, metadata=self.transport.metadata(), timeout=5.0)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                    log.info("report %s of %s: %s", pb.ReportCallRequest.Kind.Name(m.kind), m.call_id, exc.details())
                    return
                if time.monotonic() >= deadline:
                    log.warning("could not report %s of %s: %s", pb.ReportCallRequest.Kind.Name(m.kind), m.call_id,
                                exc.code().name)
                    return
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)


__all__ = ["AgentConfig", "WorkerAgent", "WorkerServicer", "Code"]
