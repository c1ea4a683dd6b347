"""The scheduler service's core: the program scheduler, shared by many clients and workers.

gRPC servicers (server.py) only convert messages and call this; everything here is plain Python
on one event loop (no locks: one call at a time), testable without a network.

    client ── open / submit / tool / close ──┐
                                             v
    worker ── register / heartbeat / report ─> ServiceCore ── Scheduler.apply(event), step()
                                             │        │
                                             │        └─> Decision, split per worker ─> sinks
                                             │                                       (WatchDecisions)
                                             └─> Journal (open programs' events, SQLite WAL)

Cross-agent KV reuse: a submission may say where upstream outputs sit in its prompt
(`CallRequest.input_spans`); the scheduler's ReuseBook turns them into hints on the step's
Decision.reuse, and the answer to the submission carries the call's own hints
(`RouteAnswer.reuse`). The client puts them on its Generate to the routed worker, so they reach
the engine with the call; they never go through WatchDecisions (a Generate can reach the worker
before its decision does). A program's namespace (tenant, share_kv_across_programs) is journaled
with it, so a restarted scheduler plans hints from calls that finished before the restart.

Routing: the scheduler's Decision ranks workers for each new call; the service picks one with the
DualMap-style router (routing.py): the program's own worker while it is not overloaded, else two
hash-chosen candidates compared by predicted TTFT against the SLO.

Faults:
  * a worker that misses heartbeats for `worker_timeout_s` is lost: WorkerLost ends its pins and
    puts its in-flight calls back in the queue; the clients that were waiting on it retry once
    (`failed_worker` set), which also declares it lost at once if the heartbeats have not yet;
  * every program-scoped request carries `event_seq`: a repeat (a client retrying after a timeout
    or a scheduler restart) is answered again, never applied twice;
  * `recover(journal)` rebuilds the scheduler from the journal at the recorded times; in-flight
    calls finish on workers that register again; workers that do not are lost after the timeout.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import math
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agentflow.errors import AgentflowError, PositionError, SpecError, WorkflowValidationError
from agentflow.graph.model import StepGraph
from agentflow.runtime.decision import Decision, priority_of_steps
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, ProgramArrived, ProgramFinished, ToolFinished, ToolStarted,
    WorkerLost, WorkerUpdate,
)
from agentflow.runtime.policies import make_policy
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.reuse_plan import InputSpan, ReuseHint
from agentflow.runtime.scheduler import DEFAULT_TENANT, Scheduler, SchedulerConfig, SchedulerError, tool_scope
from agentflow.runtime.service import routing
from agentflow.runtime.service.journal import Journal

CLOSED_REMEMBERED = 100_000  # closed program ids kept to answer "closed", not "unknown"
log = logging.getLogger("agentflow.service")


class Code(enum.Enum):
    """What went wrong, in gRPC's terms (server.py maps these to status codes)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    PERMISSION_DENIED = "permission_denied"
    INTERNAL = "internal"


class ServiceError(AgentflowError):
    def __init__(self, code: Code, message: str, *, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field


class NoWorker(ServiceError):
    """No worker to route to (yet): the server holds the call until one registers (bounded)."""

    def __init__(self, message: str):
        super().__init__(Code.UNAVAILABLE, message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one client can make the service hold or do (docs/service.md, "Limits")."""

    max_id_chars: int = 256  # program, call, step, tool, worker ids; prefix keys; tenants; addresses
    max_spec_bytes: int = 1_048_576  # a workflow spec as JSON
    max_workflow_steps: int = 2_000  # steps of one workflow (compile costs ~0.3 ms a step)
    max_json_depth: int = 32  # nesting of a workflow spec
    max_programs_per_tenant: int = 1_000  # open at once
    max_workflows_per_tenant: int = 100  # distinct workflow specs compiled for a tenant
    max_calls_per_program: int = 256  # in flight at once
    max_prefixes_per_call: int = 64
    max_input_spans_per_call: int = 64
    max_tokens: int = 10_000_000  # prompt, output and prefix token counts
    max_tool_duration_s: float = 7 * 86_400.0
    max_workers: int = 1_024
    max_kv_capacity_tokens: int = 1 << 40
    max_rate_per_s: float = 1e12  # prefill and host-to-device tokens per second
    program_idle_s: float = 3_600.0  # an open program without a request for this long is closed (cancelled)
    worker_wait_s: float = 30.0  # a call with no worker to run it waits this long for one to register


def check_id(value: str, fieldname: str, limits: Limits, *, required: bool = True) -> None:
    if not value:
        if required:
            raise ServiceError(Code.INVALID_ARGUMENT, "must not be empty", field=fieldname)
        return
    if len(value) > limits.max_id_chars:
        raise ServiceError(Code.INVALID_ARGUMENT, f"is {len(value)} characters; at most {limits.max_id_chars}",
                           field=fieldname)
    if not value.isprintable():
        raise ServiceError(Code.INVALID_ARGUMENT, "must hold printable characters only", field=fieldname)


def check_int(value: int, fieldname: str, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ServiceError(Code.INVALID_ARGUMENT, f"must be in [{lo}, {hi}] (got {value})", field=fieldname)


def check_float(value: float, fieldname: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        raise ServiceError(Code.INVALID_ARGUMENT, f"must be a finite number in {'(' if lo_open else '['}{lo:g}, "
                           f"{hi:g}] (got {value})", field=fieldname)


def tenant_prefixes(refs: tuple[PrefixRef, ...], tenant: str, *, reported: bool = False) -> tuple[PrefixRef, ...]:
    """A tenant's prefixes as the service keys them: "tenant/key" (and its parent), in the tenant's
    namespace. Prefix keys are chosen by clients, so two tenants can name the same key; scoped, one
    tenant's key never reaches another's prefix state, pins, priorities or reuse answers (the worker
    agent scopes the keys of a Generate the same way, so decisions name what its engine holds).
    `reported`: keys a worker reports, which may be scoped already (a Generate's own prefixes) or
    the engine's own (the whole sequence's content address)."""
    if tenant == DEFAULT_TENANT or not refs:
        return refs
    head = f"{tenant}/"
    out = []
    for p in refs:
        key = p.key if reported and p.key.startswith(head) else head + p.key
        parent = p.parent
        if parent is not None and not (reported and parent.startswith(head)):
            parent = head + parent
        out.append(PrefixRef(key=key, parent=parent, num_tokens=p.num_tokens, namespace=tenant))
    return tuple(out)


def _scoped(refs: tuple[PrefixRef, ...], tenant: str) -> bool:
    """The refs are the tenant's already (a client's call, scoped as it was converted)."""
    head = tenant + "/"
    return all(p.namespace == tenant and p.key.startswith(head) for p in refs)


def _json_depth(text: str) -> int:
    """Deepest nesting of brackets outside strings (a spec is refused before the parser recurses)."""
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def compile_workflow(spec: str, limits: Limits) -> StepGraph:
    """A workflow spec (JSON) -> its step graph, or ServiceError naming workflow_spec. Pure: the
    server runs it in a thread, off the RPC event loop."""
    from agentflow.graph.position import Position, estimate
    from agentflow.spec import WorkflowSpec

    size = len(spec.encode())
    if size > limits.max_spec_bytes:
        raise ServiceError(Code.INVALID_ARGUMENT, f"is {size} bytes; at most {limits.max_spec_bytes}",
                           field="workflow_spec")
    depth = _json_depth(spec)
    if depth > limits.max_json_depth:
        raise ServiceError(Code.INVALID_ARGUMENT, f"nests {depth} levels deep; at most {limits.max_json_depth}",
                           field="workflow_spec")
    try:
        steps = json.loads(spec).get("steps")
    except (ValueError, AttributeError, RecursionError):
        steps = None  # the spec parser says what is wrong
    if isinstance(steps, list) and len(steps) > limits.max_workflow_steps:
        raise ServiceError(Code.INVALID_ARGUMENT, f"has {len(steps)} steps; at most {limits.max_workflow_steps}",
                           field="workflow_spec")
    try:
        graph = WorkflowSpec.parse(spec, source="workflow_spec", fmt="json").compile().graph
        estimate(graph, Position.start(graph))  # the first arrival's tables, built here, not on the event loop
    except (SpecError, WorkflowValidationError, PositionError) as exc:
        raise ServiceError(Code.INVALID_ARGUMENT, str(exc), field="workflow_spec") from None
    except RecursionError:
        raise ServiceError(Code.INVALID_ARGUMENT, "nests too deep", field="workflow_spec") from None
    return graph


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    worker_id: str
    address: str
    engine: str = "sim"
    kv_capacity_tokens: int
    host_capacity_tokens: int = 0
    h2d_tokens_per_s: float = 0.0
    prefill_tokens_per_s: float = 10_000.0
    time_scale: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport:
    kv_used_tokens: int = 0
    queue_depth: int = 0
    running: int = 0
    pinned_tokens: int = 0


@dataclass(slots=True, kw_only=True)
class _Worker:
    spec: WorkerSpec
    load: LoadReport
    last_seen_s: float  # wall (monotonic) time of its last register or heartbeat
    in_flight: int = 0  # calls routed here and not finished (fresher than its last report)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequest:
    program_id: str
    call_id: str
    step: str
    prefixes: tuple[PrefixRef, ...]
    prompt_tokens: int
    expected_output_tokens: int = 256
    event_seq: int = 0  # 0: the client does not number its requests (no deduplication)
    failed_worker: str = ""
    input_spans: tuple[InputSpan, ...] = ()  # where upstream outputs sit in the prompt (cross-agent reuse)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteAnswer:
    call_id: str
    worker_id: str
    worker_address: str
    reason: str
    predicted_ttft_s: float
    priority: int
    session_id: str
    steps_to_execution: float  # the calling agent's, inf: never again
    reuse_prefixes: tuple[str, ...] = ()
    reuse: tuple[ReuseHint, ...] = ()  # this call's cross-agent reuse hints (for its Generate)


@dataclass(frozen=True, slots=True)
class Held:
    """A submission the scheduler holds: its program is parked by the working-set admission
    (runtime/policies/programs.py). Its answer comes later, through `ServiceCore.release_listeners`, when
    the program is activated (or an error if the program is closed first)."""

    call_id: str


@dataclass(slots=True, kw_only=True)
class _Program:
    program_id: str
    workflow_hash: str
    tenant: str
    share_kv_across_programs: bool = False
    last_seq: int = 0
    answers: dict[str, RouteAnswer] = field(default_factory=dict)  # calls in flight -> their route
    last_active_s: float = 0.0  # wall time of its last request (idle programs expire)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    policy: str = "agentflow"
    heartbeat_interval_s: float = 0.5  # wall seconds
    worker_timeout_s: float = 3.0  # wall seconds without a heartbeat: the worker is lost
    router: routing.RouterConfig = routing.RouterConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    kv_bytes_per_token: int = 131_072  # telemetry's pinned bytes (Llama-3.1-8B, fp16: 32 layers x 8 KV heads x 128 x 2 x 2 B)
    limits: Limits = Limits()


class _Clock:
    """The service's clock (injected), overridable while the journal is replayed."""

    def __init__(self, clock):
        self.clock = clock
        self.fixed: float | None = None

    def now_s(self) -> float:
        return self.fixed if self.fixed is not None else self.clock.now_s()


DecisionSink = Callable[[str, Decision], None]


class ServiceCore:
    def __init__(self, config: CoreConfig = CoreConfig(), *, clock, journal: Journal | None = None,
                 wall: Callable[[], float] = time.monotonic, telemetry=None):
        self.config = config
        self.clock = _Clock(clock)
        self.wall = wall
        self.journal = journal
        self.telemetry = telemetry
        self.policy_name = config.policy
        self.sched = Scheduler(make_policy(config.policy), clock=self.clock, config=config.scheduler)
        self.epoch = uuid.uuid4().hex[:12]
        self.workers: dict[str, _Worker] = {}
        self.programs: dict[str, _Program] = {}
        self.graphs: dict[str, StepGraph] = {}
        self.closed: OrderedDict[str, None] = OrderedDict()
        self.call_worker: dict[str, str] = {}  # routed calls -> worker
        self.sinks: dict[str, DecisionSink] = {}  # worker -> where its part of each decision goes
        # workers whose sinks take prefix keys as the scheduler names them ("tenant/key": the gRPC
        # worker agents, which declare a tenant's keys so). Engines in this process (the in-process
        # client, the front door) get a tenant's keys as their requests named them.
        self.scoped_sinks: set[str] = set()
        self.decisions = 0
        self._started_wall = wall()
        self._batch_loads: dict[str, routing.WorkerLoad] | None = None  # while submit_many routes
        self._recovered_s: float | None = None  # wall time of a recovery whose workers may not come back
        # cross-agent reuse hints of submitted calls, from the step that planned them until the
        # call's answer takes them (normally the same submit_many; kept while the call is in flight)
        self._hints: dict[str, tuple[ReuseHint, ...]] = {}
        # Working-set admission live: submissions of parked programs wait here, unanswered, and are
        # answered through each of `release_listeners(call_id, answer or error)` (the gRPC batcher,
        # the front door's, an in-process client: each ignores calls it does not hold) when their
        # program is activated.
        self._held: dict[str, CallRequest] = {}
        self.release_listeners: list = []
        self._tenant_programs: dict[str, int] = {}  # open programs per tenant (quota)
        self._tenant_workflows: dict[str, set[str]] = {}  # workflow hashes compiled for each tenant (quota)
        self._unrouted_ok: set[str] = set()  # calls in flight at recovery, not routed since
        self.journal_failures = 0  # journal writes that failed (disk full ...); memory was rebuilt each time

    # ================================================================ workers ===================
    def check_worker(self, spec: WorkerSpec, load: LoadReport) -> None:
        """Every field of a registration, before anything is applied (a bad one never reaches routing)."""
        lim = self.config.limits
        check_id(spec.worker_id, "info.worker_id", lim)
        check_id(spec.address, "info.address", lim)
        host, sep, port = spec.address.rpartition(":")
        in_process = host == "inprocess"  # InProcessClient's engines (no network)
        if not in_process and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536
                               or " " in host):
            raise ServiceError(Code.INVALID_ARGUMENT, f"must be host:port of the worker's service (got "
                               f"{spec.address[:64]!r})", field="info.address")
        check_id(spec.engine, "info.engine", lim)
        check_int(spec.kv_capacity_tokens, "info.kv_capacity_tokens", 1, lim.max_kv_capacity_tokens)
        check_int(spec.host_capacity_tokens, "info.host_capacity_tokens", 0, lim.max_kv_capacity_tokens)
        check_float(spec.h2d_tokens_per_s, "info.h2d_tokens_per_s", 0.0, lim.max_rate_per_s)
        check_float(spec.prefill_tokens_per_s, "info.prefill_tokens_per_s", 0.0, lim.max_rate_per_s, lo_open=True)
        check_float(spec.time_scale, "info.time_scale", 0.0, 1e6, lo_open=True)
        self.check_load(load, "load", spec.kv_capacity_tokens)

    def check_load(self, load: LoadReport, where: str, capacity: int | None = None) -> None:
        hi = self.config.limits.max_kv_capacity_tokens
        check_int(load.kv_used_tokens, f"{where}.kv_used_tokens", 0, hi)
        check_int(load.queue_depth, f"{where}.queue_depth", 0, 1 << 31)
        check_int(load.running, f"{where}.running", 0, 1 << 31)
        check_int(load.pinned_tokens, f"{where}.pinned_tokens", 0, hi)

    def register_worker(self, spec: WorkerSpec, load: LoadReport = LoadReport()) -> None:
        self.check_worker(spec, load)
        if spec.worker_id not in self.workers and len(self.workers) >= self.config.limits.max_workers:
            raise ServiceError(Code.RESOURCE_EXHAUSTED, f"{len(self.workers)} workers are registered; at most "
                               f"{self.config.limits.max_workers}", field="info.worker_id")
        old = self.workers.get(spec.worker_id)
        self.workers[spec.worker_id] = _Worker(spec=spec, load=load, last_seen_s=self.wall(),
                                               in_flight=old.in_flight if old else 0)
        self._update(spec.worker_id)

    def heartbeat(self, worker_id: str, load: LoadReport) -> bool:
        w = self.workers.get(worker_id)
        if w is None:
            return False
        self.check_load(load, "load")
        w.load, w.last_seen_s = load, self.wall()
        self._update(worker_id)
        if self.telemetry is not None:
            self.telemetry.set_queue_depth(worker_id, load.queue_depth)
            self.telemetry.set_pinned_bytes(worker_id, load.pinned_tokens * self.config.kv_bytes_per_token)
        return True

    def _update(self, worker_id: str) -> None:
        w = self.workers[worker_id]
        s = w.spec
        self.sched.apply(WorkerUpdate(worker=worker_id, kv_capacity_tokens=s.kv_capacity_tokens,
                                      kv_used_tokens=w.load.kv_used_tokens, host_capacity_tokens=s.host_capacity_tokens,
                                      h2d_tokens_per_s=s.h2d_tokens_per_s, prefill_tokens_per_s=s.prefill_tokens_per_s,
                                      queue_depth=w.load.queue_depth))

    def lose_worker(self, worker_id: str) -> None:
        if self.workers.pop(worker_id, None) is None:
            return
        self.sinks.pop(worker_id, None)
        for cid in [c for c, w in self.call_worker.items() if w == worker_id]:
            del self.call_worker[cid]
        self.sched.apply(WorkerLost(worker=worker_id))
        self._step()

    def expire_workers(self) -> list[str]:
        """Workers silent for longer than the timeout are lost (called periodically)."""
        now = self.wall()
        lost = [w for w, rec in self.workers.items() if now - rec.last_seen_s > self.config.worker_timeout_s]
        for w in lost:
            self.lose_worker(w)
        if self._recovered_s is not None and now - self._recovered_s > self.config.worker_timeout_s:
            self._recovered_s = None  # the journal's workers had their chance to register again
            lost += self._lose_unregistered()
        return lost

    # ================================================================ programs ==================
    def needs_compile(self, workflow_spec: str, workflow_hash: str) -> str | None:
        """The hash of a spec that open_program would compile (the server compiles it first, in a
        thread, with `compile_workflow`), or None."""
        if not workflow_spec:
            return None
        h = hashlib.sha256(workflow_spec.encode()).hexdigest()
        return None if h in self.graphs else h

    def open_program(self, program_id: str, *, tenant: str = "", workflow_spec: str = "",
                     workflow_hash: str = "", share_kv_across_programs: bool = False,
                     compiled: StepGraph | None = None) -> tuple[str, bool]:
        lim = self.config.limits
        check_id(program_id, "program_id", lim)
        check_id(tenant, "tenant", lim, required=False)
        if len(workflow_hash) > 64:
            raise ServiceError(Code.INVALID_ARGUMENT, "must be a sha256 in hex (64 characters)", field="workflow_hash")
        tenant = tenant or "default"
        if program_id in self.programs:
            prog = self.programs[program_id]
            prog.last_active_s = self.wall()
            return prog.workflow_hash, False
        if program_id in self.closed:
            raise ServiceError(Code.FAILED_PRECONDITION, f"program {program_id!r} was closed; open it under a new id",
                               field="program_id")
        if self._tenant_programs.get(tenant, 0) >= lim.max_programs_per_tenant:
            raise ServiceError(Code.RESOURCE_EXHAUSTED, f"tenant {tenant!r} has {lim.max_programs_per_tenant} "
                               "programs open, its quota: close some first", field="program_id")
        with self._durable():
            h = self._workflow(workflow_spec, workflow_hash, tenant, compiled)
            now = self.clock.now_s()
            if self.journal is not None:
                self.journal.open_program(program_id, h, tenant, now, share_kv_across_programs)
            try:
                # the scheduler's reuse namespace (namespace_for) is the executor's: same tenant, same opt-in
                self.sched.apply(ProgramArrived(program_id=program_id, graph=self.graphs[h], tenant=tenant,
                                                share_kv_across_programs=share_kv_across_programs))
            except (SchedulerError, PositionError) as exc:
                if self.journal is not None:
                    self.journal.close_program(program_id)
                raise ServiceError(Code.INVALID_ARGUMENT, str(exc), field="workflow_spec") from None
        self.programs[program_id] = _Program(program_id=program_id, workflow_hash=h, tenant=tenant,
                                             share_kv_across_programs=share_kv_across_programs,
                                             last_active_s=self.wall())
        self._tenant_programs[tenant] = self._tenant_programs.get(tenant, 0) + 1
        if self.telemetry is not None:
            self.telemetry.start_program(program_id, self.graphs[h].name, attributes={"agentflow.tenant": tenant})
        return h, True

    def _workflow(self, spec: str, spec_hash: str, tenant: str = "default",
                  compiled: StepGraph | None = None) -> str:
        if spec:
            h = hashlib.sha256(spec.encode()).hexdigest()
            if spec_hash and spec_hash != h:
                raise ServiceError(Code.INVALID_ARGUMENT, f"is not the sha256 of workflow_spec ({h})",
                                   field="workflow_hash")
            if h not in self.graphs:
                mine = self._tenant_workflows.setdefault(tenant, set())
                if len(mine) >= self.config.limits.max_workflows_per_tenant:
                    raise ServiceError(Code.RESOURCE_EXHAUSTED, f"tenant {tenant!r} has "
                                       f"{len(mine)} workflows compiled, its quota", field="workflow_spec")
                graph = compiled if compiled is not None else compile_workflow(spec, self.config.limits)
                if self.journal is not None:  # journaled first: a graph in memory is always in the journal
                    self.journal.put_workflow(h, spec)
                self.graphs[h] = graph
                mine.add(h)
            return h
        if not spec_hash:
            raise ServiceError(Code.INVALID_ARGUMENT, "one of workflow_spec or workflow_hash is required",
                               field="workflow_spec")
        if spec_hash not in self.graphs:
            raise ServiceError(Code.NOT_FOUND, f"workflow {spec_hash[:12]}... is not known here: send workflow_spec",
                               field="workflow_hash")
        return spec_hash

    def _compile(self, h: str, spec: str) -> None:
        from agentflow.spec import WorkflowSpec

        try:
            compiled = WorkflowSpec.parse(spec, source="workflow_spec", fmt="json").compile()
        except (SpecError, WorkflowValidationError) as exc:
            raise ServiceError(Code.INVALID_ARGUMENT, str(exc), field="workflow_spec") from None
        self.graphs[h] = compiled.graph

    @contextlib.contextmanager
    def _durable(self):
        """A journal write that fails (disk full, I/O error) leaves memory as the journal says:
        the open transaction is rolled back and the scheduler rebuilt from the journal, and the
        caller gets a retryable UNAVAILABLE (the same request, repeated when space returns, works)."""
        try:
            yield
        except sqlite3.Error as exc:
            self.journal_failures += 1
            log.error("journal write failed (%s): state rebuilt from the journal; requests get UNAVAILABLE", exc)
            self._resync()
            raise ServiceError(Code.UNAVAILABLE, f"the journal could not be written ({exc}); nothing was applied, "
                               "retry later") from None

    def _program(self, program_id: str, fieldname: str = "program_id") -> _Program:
        prog = self.programs.get(program_id)
        if prog is not None:
            prog.last_active_s = self.wall()
            return prog
        if prog is None:
            if program_id in self.closed:
                raise ServiceError(Code.FAILED_PRECONDITION, f"program {program_id!r} is closed", field=fieldname)
            raise ServiceError(Code.NOT_FOUND, f"program {program_id!r} is not open (OpenProgram first)",
                               field=fieldname)
        return prog

    def _seen(self, prog: _Program, seq: int) -> bool:
        """True when this request was applied before (a repeat); records the new number otherwise."""
        if seq <= 0:
            return False
        if seq <= prog.last_seq:
            return True
        prog.last_seq = seq
        return False

    def _journal(self, prog: _Program, kind: str, body: dict, seq: int) -> None:
        if self.journal is not None:
            self.journal.append(prog.program_id, self.clock.now_s(), kind, body, seq if seq > 0 else None)

    # ================================================================ calls =====================
    def submit(self, req: CallRequest) -> RouteAnswer:
        ans = self.submit_many([req])[0]
        if isinstance(ans, ServiceError):
            raise ans
        return ans

    def submit_many(self, reqs: list[CallRequest]) -> list[RouteAnswer | ServiceError]:
        """Apply a batch of submissions, take one scheduling step, route each call."""
        out: list[RouteAnswer | ServiceError | CallRequest] = []
        try:
            with self._durable(), self.journal.batch() if self.journal is not None else contextlib.nullcontext():
                for req in reqs:
                    try:
                        out.append(self._apply_submit(req))
                    except ServiceError as exc:
                        out.append(exc)
                    except Exception as exc:  # a bug must fail this call only, never its batch-mates
                        log.exception("submission of %r failed", req.call_id)
                        out.append(ServiceError(Code.INTERNAL, f"the scheduler could not apply it ({exc})",
                                                field="call_id"))
        except ServiceError as exc:  # the journal refused the batch: nothing of it was applied
            return [exc] * len(reqs)
        self._step()
        self._batch_loads = {w.name: w for w in self._build_loads("")}
        try:
            for i, item in enumerate(out):
                if isinstance(item, CallRequest) and self._parked(item):
                    self._held[item.call_id] = item
                    out[i] = Held(item.call_id)
                elif isinstance(item, CallRequest):
                    try:
                        out[i] = self._answer(item)
                    except ServiceError as exc:
                        out[i] = exc
                    except Exception as exc:  # a bug routing one call fails that call only
                        log.exception("routing of %r failed", item.call_id)
                        out[i] = ServiceError(Code.INTERNAL, f"the scheduler could not route it ({exc})",
                                              field="call_id")
        finally:
            self._batch_loads = None
        return out  # type: ignore[return-value]

    @contextlib.contextmanager
    def batch(self):
        """Reports and submissions inside share one journal transaction (one commit for many); a
        write the journal refuses leaves memory as the journal says (UNAVAILABLE, as `_durable`)."""
        with self._durable(), self.journal.batch() if self.journal is not None else contextlib.nullcontext():
            yield

    def check_call(self, req: CallRequest) -> None:
        """Every field of a submission on its own (no state): the error names the field."""
        lim = self.config.limits
        if _plainly_valid(req, lim):  # the common case, in one pass; else find and name the field
            return
        check_id(req.program_id, "program_id", lim)
        check_id(req.call_id, "call_id", lim)
        check_id(req.step, "step", lim)
        check_id(req.failed_worker, "failed_worker", lim, required=False)
        check_int(req.prompt_tokens, "prompt_tokens", 0, lim.max_tokens)
        check_int(req.expected_output_tokens, "expected_output_tokens", 0, lim.max_tokens)
        check_int(req.event_seq, "event_seq", 0, 1 << 62)
        if len(req.prefixes) > lim.max_prefixes_per_call:
            raise ServiceError(Code.INVALID_ARGUMENT, f"holds {len(req.prefixes)} prefixes; at most "
                               f"{lim.max_prefixes_per_call}", field="prefixes")
        last = 0
        for i, p in enumerate(req.prefixes):
            check_id(p.key, f"prefixes[{i}].key", lim)
            check_id(p.parent or "", f"prefixes[{i}].parent", lim, required=False)
            check_id(p.namespace, f"prefixes[{i}].namespace", lim, required=False)
            if p.num_tokens > req.prompt_tokens:
                raise ServiceError(Code.INVALID_ARGUMENT, f"has {p.num_tokens} tokens, more than the prompt's "
                                   f"{req.prompt_tokens}", field=f"prefixes[{i}].num_tokens")
            if p.num_tokens < last:
                raise ServiceError(Code.INVALID_ARGUMENT, f"has {p.num_tokens} tokens, fewer than the prefix before "
                                   f"it ({last}): prefixes go root first, cumulative", field=f"prefixes[{i}].num_tokens")
            last = p.num_tokens
        if len(req.input_spans) > lim.max_input_spans_per_call:
            raise ServiceError(Code.INVALID_ARGUMENT, f"holds {len(req.input_spans)} spans; at most "
                               f"{lim.max_input_spans_per_call}", field="input_spans")
        for i, sp in enumerate(req.input_spans):
            check_id(sp.source_step, f"input_spans[{i}].source_step", lim, required=False)  # _check_spans says why
            check_int(sp.target_offset, f"input_spans[{i}].target_offset", -lim.max_tokens, lim.max_tokens)
            check_int(sp.source_offset, f"input_spans[{i}].source_offset", -lim.max_tokens, lim.max_tokens)
        _check_spans(req)

    def _apply_submit(self, req: CallRequest) -> RouteAnswer | CallRequest:
        self.check_call(req)
        prog = self._program(req.program_id)
        if req.prefixes and prog.tenant != DEFAULT_TENANT and not _scoped(req.prefixes, prog.tenant):
            req = replace(req, prefixes=tenant_prefixes(req.prefixes, prog.tenant))  # an admin's call in a tenant
        if req.failed_worker:  # a retry of a call whose worker failed under it
            if req.call_id not in self.sched.calls:  # it finished there after all: just route it again
                return req
            if str(self.sched.calls[req.call_id].program_id) != req.program_id:
                raise ServiceError(Code.NOT_FOUND, f"call {req.call_id!r} is not in flight", field="call_id")
            self._suspect(req.failed_worker)
            self.call_worker.pop(req.call_id, None)
            return req
        if self._seen(prog, req.event_seq):
            ans = prog.answers.get(req.call_id)
            if ans is None and req.call_id in self.sched.calls:
                return req  # in flight, and its answer went with a restart: route it again
            if ans is None:
                raise ServiceError(Code.FAILED_PRECONDITION,
                                   f"event_seq {req.event_seq} of program {req.program_id!r} was already applied "
                                   f"(last {prog.last_seq}) and call {req.call_id!r} is not in flight",
                                   field="event_seq")
            return ans
        call = self.sched.calls.get(req.call_id)
        if call is not None and str(call.program_id) == req.program_id and req.call_id not in self.call_worker \
                and req.call_id not in prog.answers:
            return req  # submitted when no worker could take it: route it now
        if len(prog.answers) >= self.config.limits.max_calls_per_program and req.call_id not in self.sched.calls:
            raise ServiceError(Code.RESOURCE_EXHAUSTED, f"program {req.program_id!r} has "
                               f"{len(prog.answers)} calls in flight; at most {self.config.limits.max_calls_per_program}",
                               field="call_id")
        try:  # a step the program cannot enter (a loop past its bound) raises PositionError: this call fails
            # alone (the scheduler checks before it moves the program; only its pins were released)
            self.sched.apply(CallSubmitted(program_id=req.program_id, call_id=req.call_id, step=req.step,
                                           prefixes=req.prefixes, prompt_tokens=req.prompt_tokens,
                                           expected_output_tokens=req.expected_output_tokens,
                                           input_spans=req.input_spans))
        except SchedulerError as exc:
            fieldname = "call_id" if "submitted twice" in str(exc) else "step"
            code = Code.ALREADY_EXISTS if fieldname == "call_id" else Code.INVALID_ARGUMENT
            raise ServiceError(code, str(exc), field=fieldname) from None
        except PositionError as exc:
            raise ServiceError(Code.FAILED_PRECONDITION, str(exc), field="step") from None
        body = {"call_id": req.call_id, "step": req.step, "prompt_tokens": req.prompt_tokens,
                "expected_output_tokens": req.expected_output_tokens,
                "prefixes": [[p.key, p.parent, p.num_tokens, p.namespace] for p in req.prefixes]}
        if req.input_spans:
            body["input_spans"] = [[s.source_step, s.target_offset, s.num_tokens, s.source_offset]
                                   for s in req.input_spans]
        self._journal(prog, "submitted", body, req.event_seq)
        return req

    def _parked(self, req: CallRequest) -> bool:
        call = self.sched.calls.get(req.call_id)
        return call is not None and call.started_s is None and req.program_id in self.sched.parked

    def _release(self, activated) -> None:
        """Answer the held submissions of programs the scheduler just activated."""
        if not self._held or not activated:
            return
        ready = set(activated)
        for cid, req in list(self._held.items()):
            if req.program_id not in ready:
                continue
            del self._held[cid]
            try:
                ans: RouteAnswer | ServiceError = self._answer(req)
            except ServiceError as exc:
                ans = exc
            for listener in self.release_listeners:
                listener(cid, ans)

    def _answer(self, req: CallRequest) -> RouteAnswer:
        call = self.sched.calls.get(req.call_id)
        prog = self.programs[req.program_id]
        if call is None:  # a retry of a call that already finished: route only
            choice = self._route_only(req, exclude=req.failed_worker)
            agent_steps = math.inf
        else:
            choice = self._route(call, req.program_id, exclude=req.failed_worker)
            agent_steps = self.sched.steps_to_execution(req.program_id).get(call.agent, math.inf)
        w = self.workers[choice.worker]
        self._routed(choice.worker)
        self.call_worker[req.call_id] = choice.worker
        deepest = req.prefixes[-1].key if req.prefixes else None
        pre = self.sched.prefixes.get(deepest) if deepest else None
        priority = pre.priority if pre is not None and pre.priority is not None else priority_of_steps(agent_steps)
        # the prompt's prefixes the chosen worker holds, named as the client named them
        cut = len(prog.tenant) + 1 if prog.tenant != DEFAULT_TENANT else 0
        held = tuple(p.key[cut:] for p in req.prefixes if p.key in self.sched.prefixes
                     and self.sched.prefixes[p.key].tiers.get(choice.worker) == "gpu")
        if self.telemetry is not None and call is not None:
            chosen = next((a for a in choice.alternatives if a.worker == choice.worker), None)
            self.telemetry.start_step(req.program_id, req.step, agent=call.agent)
            self.telemetry.start_llm_call(req.call_id, choice.worker, req.prompt_tokens,
                                          chosen.cached_tokens if chosen is not None else None,
                                          program_id=req.program_id, step=req.step, agent=call.agent,
                                          route_reason=choice.reason.value, predicted_ttft_s=choice.predicted_ttft_s)
        reuse = self._hints.pop(req.call_id, None)
        if reuse is None:  # a retry (another worker) or a repeat: the hints planned at submission
            prev = prog.answers.get(req.call_id)
            reuse = prev.reuse if prev is not None else ()
        ans = RouteAnswer(call_id=req.call_id, worker_id=choice.worker, worker_address=w.spec.address,
                          reason="retry" if req.failed_worker else choice.reason.value,
                          predicted_ttft_s=choice.predicted_ttft_s, priority=priority, session_id=req.program_id,
                          steps_to_execution=agent_steps, reuse_prefixes=held, reuse=reuse)
        prog.answers[req.call_id] = ans
        return ans

    def _loads(self, exclude: str = "") -> list[routing.WorkerLoad]:
        # Built once per batch of submissions (submit_many) and kept current as calls are routed
        # (`_routed`): a batch of 64 calls does not rebuild 8 loads 64 times.
        if self._batch_loads is not None and exclude == "":
            loads = list(self._batch_loads.values())
        else:
            loads = self._build_loads(exclude)
        if not loads:
            raise NoWorker("no worker is registered" + (f" besides {exclude!r}" if exclude else ""))
        return loads

    def _suspect(self, worker_id: str) -> None:
        """A client says a call failed on this worker. The call goes elsewhere; the worker is lost
        only if its heartbeats say so too (late by two intervals): one client cannot take a healthy
        worker away from everyone."""
        w = self.workers.get(worker_id)
        if w is not None and self.wall() - w.last_seen_s > 2 * self.config.heartbeat_interval_s:
            self.lose_worker(worker_id)

    def _routed(self, worker: str) -> None:
        w = self.workers[worker]
        w.in_flight += 1
        if self._batch_loads is not None and worker in self._batch_loads:
            cur = self._batch_loads[worker]
            self._batch_loads[worker] = replace(cur, queue_depth=max(w.load.queue_depth, w.in_flight - w.load.running))

    def _build_loads(self, exclude: str) -> list[routing.WorkerLoad]:
        loads = []
        for name, w in self.workers.items():
            if name == exclude:
                continue
            loads.append(routing.WorkerLoad(
                name=name, queue_depth=max(w.load.queue_depth, w.in_flight - w.load.running),
                running=w.load.running, kv_capacity_tokens=w.spec.kv_capacity_tokens,
                kv_used_tokens=w.load.kv_used_tokens, prefill_tokens_per_s=w.spec.prefill_tokens_per_s,
                pinned_tokens=self.sched.workers[name].pinned_tokens if name in self.sched.workers else 0,
                healthy=True))
        return loads

    def _route(self, call, program_id: str, exclude: str = "") -> routing.RouteChoice:
        prog = self.sched.programs[program_id]
        held: dict[str, dict[str, str]] = {}
        for ref in call.prefixes:
            pre = self.sched.prefixes.get(ref.key)
            if pre is not None and pre.tiers:
                held[ref.key] = dict(pre.tiers)
        req = routing.RouteRequest(
            program_id=str(program_id), current_worker=prog.worker if prog.worker != exclude else None,
            prompt_tokens=call.prompt_tokens, prefixes=tuple((p.key, p.num_tokens) for p in call.prefixes),
            held=held, expected_output_tokens=call.expected_output_tokens)
        return routing.route(req, self._loads(exclude), self.config.router)

    def _route_only(self, req: CallRequest, exclude: str) -> routing.RouteChoice:
        r = routing.RouteRequest(program_id=req.program_id, current_worker=None, prompt_tokens=req.prompt_tokens,
                                 prefixes=tuple((p.key, p.num_tokens) for p in req.prefixes), held={},
                                 expected_output_tokens=req.expected_output_tokens)
        return routing.route(r, self._loads(exclude), self.config.router)

    def _reported_call(self, call_id: str, worker_id: str, reporter: str | None):
        """The call a worker reports on. `reporter`: the worker id the caller authenticated as
        (None: an admin or an open service). A worker reports only calls routed to it (or, after a
        restart, calls the journal holds with no route yet); any other id reads as not in flight."""
        check_id(call_id, "call_id", self.config.limits)
        check_id(worker_id, "worker_id", self.config.limits, required=reporter is not None)
        call = self.sched.calls.get(call_id)
        missing = ServiceError(Code.NOT_FOUND, f"call {call_id!r} is not in flight (finished already, or its "
                               "program closed)", field="call_id")
        if call is None:
            raise missing
        if reporter is not None:
            if worker_id != reporter:
                raise ServiceError(Code.PERMISSION_DENIED, f"this credential is worker {reporter!r}'s",
                                   field="worker_id")
            routed = self.call_worker.get(call_id)
            if routed != reporter and not (routed is None and call.worker in (None, reporter)
                                           and call_id in self._unrouted_ok):
                raise missing
        return call

    def call_started(self, call_id: str, worker_id: str, *, reporter: str | None = None,
                     gpu_hit_tokens: int | None = None, host_hit_tokens: int | None = None,
                     step: bool = True) -> None:
        """The call began on its worker; an engine that reports its admission also says what of the
        prompt it found (device, host): the working-set admission counts faults from these.
        `step=False`: apply and journal the report, but leave the scheduling step to the caller's
        next `submit_many` or `tick` (a caller that batches reports: one step for many)."""
        call = self._reported_call(call_id, worker_id, reporter)
        for name, v in (("gpu_hit_tokens", gpu_hit_tokens), ("host_hit_tokens", host_hit_tokens)):
            if v is not None:
                check_int(v, name, 0, self.config.limits.max_tokens)
        with self._durable():
            self.sched.apply(CallStarted(call_id=call_id, worker=worker_id, gpu_hit_tokens=gpu_hit_tokens,
                                         host_hit_tokens=host_hit_tokens))
            self._journal(self.programs[str(call.program_id)], "started", {"call_id": call_id, "worker": worker_id}, 0)
        if step:
            self._step()

    def call_finished(self, call_id: str, worker_id: str, *, output_tokens: int,
                      cached: tuple[PrefixRef, ...] = (), prompt_tokens: int | None = None,
                      cached_tokens: int | None = None, ttft_s: float | None = None,
                      reporter: str | None = None, step: bool = True) -> None:
        call = self._reported_call(call_id, worker_id, reporter)
        lim = self.config.limits
        check_int(output_tokens, "output_tokens", 0, lim.max_tokens)
        for name, v in (("prompt_tokens", prompt_tokens), ("cached_tokens", cached_tokens)):
            if v is not None:
                check_int(v, name, 0, lim.max_tokens)
        if ttft_s is not None:
            check_float(ttft_s, "ttft_s", 0.0, lim.max_tool_duration_s)
        if len(cached) > lim.max_prefixes_per_call:
            raise ServiceError(Code.INVALID_ARGUMENT, f"holds {len(cached)} prefixes; at most "
                               f"{lim.max_prefixes_per_call}", field="cached")
        for i, p in enumerate(cached):
            check_id(p.key, f"cached[{i}].key", lim)
            check_id(p.parent or "", f"cached[{i}].parent", lim, required=False)
            check_id(p.namespace, f"cached[{i}].namespace", lim, required=False)
            check_int(p.num_tokens, f"cached[{i}].num_tokens", 0, lim.max_tokens)
        prog = self.programs[str(call.program_id)]
        cached = tenant_prefixes(cached, prog.tenant, reported=True)
        with self._durable():
            self.sched.apply(CallFinished(call_id=call_id, worker=worker_id, output_tokens=output_tokens,
                                          cached=cached))
            self._journal(prog, "finished", {"call_id": call_id, "worker": worker_id, "output_tokens": output_tokens,
                                             "cached": [[p.key, p.parent, p.num_tokens, p.namespace] for p in cached]},
                          0)
        w = self.workers.get(self.call_worker.pop(call_id, worker_id))
        if w is not None:
            w.in_flight = max(0, w.in_flight - 1)
        self._unrouted_ok.discard(call_id)
        prog.answers.pop(call_id, None)
        self._hints.pop(call_id, None)
        if self.telemetry is not None:
            t = self.telemetry
            t.end_llm_call(call_id, output_tokens=output_tokens, prompt_tokens=prompt_tokens,
                           cached_tokens=cached_tokens, ttft_s=ttft_s)
            t.end_step(str(call.program_id), call.step)
            if prompt_tokens is not None and cached_tokens is not None and 0 <= cached_tokens <= prompt_tokens:
                t.record_hit(prompt_tokens, cached_tokens, worker=worker_id)
        if step:
            self._step()

    def call_failed(self, call_id: str, worker_id: str, error: str = "", *, reporter: str | None = None) -> bool:
        """A call that ended without a result (cancelled by its program, or the engine refused it):
        it leaves the scheduler as a call that produced nothing, so it holds no place in the queue
        and no worker's load. False when the call is not in flight (finished, retried, closed)."""
        if call_id not in self.sched.calls:
            return False
        self.call_finished(call_id, worker_id or self.call_worker.get(call_id, ""), output_tokens=0, reporter=reporter)
        if self.telemetry is not None:
            self.telemetry.end_llm_call(call_id, error=error or "failed")
        return True

    # ================================================================ tools and closing =========
    def tool(self, program_id: str, *, step: str, tool: str, finished: bool, duration_s: float = 0.0,
             event_seq: int = 0, take_step: bool = True) -> None:
        lim = self.config.limits
        check_id(program_id, "program_id", lim)
        check_id(step, "step", lim)
        check_id(tool, "tool", lim)
        check_int(event_seq, "event_seq", 0, 1 << 62)
        if finished:
            check_float(duration_s, "duration_s", 0.0, lim.max_tool_duration_s)
        prog = self._program(program_id)
        sprog = self.sched.programs.get(program_id)
        if sprog is not None and step not in sprog.graph.steps:
            raise ServiceError(Code.INVALID_ARGUMENT, f"workflow '{sprog.graph.name}' has no step {step!r}",
                               field="step")
        if self._seen(prog, event_seq):
            return
        with self._durable():
            try:
                if finished:
                    self.sched.apply(ToolFinished(program_id=program_id, step=step, tool=tool, duration_s=duration_s))
                else:
                    self.sched.apply(ToolStarted(program_id=program_id, step=step, tool=tool))
            except (SchedulerError, PositionError) as exc:
                raise ServiceError(Code.INVALID_ARGUMENT, str(exc), field="step") from None
            body = {"step": step, "tool": tool, "duration_s": duration_s}
            scope = tool_scope(prog.tenant)
            if scope and finished:  # what the journal keeps of it once the program closes: the tenant's
                body["stats_tool"] = scope + tool
            self._journal(prog, "tool_finished" if finished else "tool_started", body, event_seq)
        if self.telemetry is not None:
            if finished:
                self.telemetry.end_tool(program_id, tool, attributes={"agentflow.tool.duration_s": duration_s})
                self.telemetry.end_step(program_id, step)
            else:
                self.telemetry.start_step(program_id, step)
                self.telemetry.start_tool(program_id, tool, step=step)
        if take_step:
            self._step()

    def close(self, program_id: str, *, cancelled: bool = False, event_seq: int = 0) -> None:
        check_id(program_id, "program_id", self.config.limits)
        check_int(event_seq, "event_seq", 0, 1 << 62)
        if program_id in self.closed:
            return  # closing twice is a repeat, not an error
        prog = self._program(program_id)
        with self._durable():
            if self.journal is not None:  # first: a close the journal refused leaves the program open
                self.journal.close_program(program_id)
        self.sched.apply(ProgramFinished(program_id=program_id, cancelled=cancelled))
        self._tenant_programs[prog.tenant] = max(0, self._tenant_programs.get(prog.tenant, 1) - 1)
        for cid in prog.answers:
            w = self.workers.get(self.call_worker.pop(cid, ""))
            if w is not None:
                w.in_flight = max(0, w.in_flight - 1)
        del self.programs[program_id]
        for cid, req in list(self._held.items()):  # held submissions of a program closed while parked
            if req.program_id == program_id:
                del self._held[cid]
                err = ServiceError(Code.FAILED_PRECONDITION, f"program {program_id!r} was closed while parked",
                                   field="program_id")
                for listener in self.release_listeners:
                    listener(cid, err)
        if self._hints:  # hints of its calls that were never answered
            self._hints = {c: h for c, h in self._hints.items() if c in self.sched.calls}
        self.closed[program_id] = None
        if len(self.closed) > CLOSED_REMEMBERED:
            self.closed.popitem(last=False)
        if self.telemetry is not None:
            self.telemetry.end_program(program_id, error="cancelled" if cancelled else None)
        self._step()

    # ================================================================ decisions =================
    def tick(self) -> Decision:
        """A step with no new event (pins past their TTL end; periodic)."""
        return self._step()

    def expire_programs(self) -> list[str]:
        """Programs without a request for `limits.program_idle_s` are closed as cancelled (a client
        that went away does not hold memory, journal rows and quota forever)."""
        cutoff = self.wall() - self.config.limits.program_idle_s
        idle = [pid for pid, p in self.programs.items() if p.last_active_s < cutoff]
        done = []
        for pid in idle:
            try:
                self.close(pid, cancelled=True)
                done.append(pid)
            except ServiceError as exc:  # the journal refused: try again next time
                log.warning("idle program %s not closed: %s", pid, exc)
                break
        return done

    def _resync(self) -> None:
        """Memory := the journal (after a write the journal refused): a fresh scheduler, the
        registered workers, then the journal's programs and events, as a recovery does."""
        old = self.programs
        self.sched = Scheduler(make_policy(self.policy_name), clock=self.clock, config=self.config.scheduler)
        for wid in self.workers:
            self._update(wid)
        self.programs = {}
        self._hints = {}
        self._replay_journal()
        for pid, prog in self.programs.items():
            was = old.get(pid)
            if was is not None:
                prog.answers = {c: a for c, a in was.answers.items() if c in self.sched.calls}
                prog.last_active_s = was.last_active_s
            else:
                prog.last_active_s = self.wall()
        self.call_worker = {c: w for c, w in self.call_worker.items() if c in self.sched.calls}
        for w in self.workers.values():
            w.in_flight = 0
        for wid in self.call_worker.values():
            if wid in self.workers:
                self.workers[wid].in_flight += 1
        for pid in self.programs:
            self.closed.pop(pid, None)
        self._tenant_programs = {}
        for prog in self.programs.values():
            self._tenant_programs[prog.tenant] = self._tenant_programs.get(prog.tenant, 0) + 1

    def _step(self) -> Decision:
        d = self.sched.step()
        for h in d.reuse:  # each waits for its call's answer (submit_many answers after this step)
            self._hints[h.target_call_id] = self._hints.get(h.target_call_id, ()) + (h,)
        if self.clock.fixed is not None:  # replaying the journal: nobody to tell yet
            return d
        self._release(d.activated)
        self.decisions += 1
        if self.telemetry is not None:
            self.telemetry.count_decisions()
        if not d.empty and self.sinks:
            for worker, sink in list(self.sinks.items()):
                part = _part_for(d, worker, self.call_worker)
                if part is not None:
                    sink(worker, part if worker in self.scoped_sinks else self._as_requested(part))
        return d

    def _raw_key(self, key: str) -> str:
        """A prefix key as the request that declared it named it (without its tenant's scope)."""
        pre = self.sched.prefixes.get(key)
        ns = pre.ref.namespace if pre is not None else DEFAULT_TENANT
        return key[len(ns) + 1:] if ns != DEFAULT_TENANT and key.startswith(ns + "/") else key

    def _as_requested(self, d: Decision) -> Decision:
        if not self._tenant_programs.keys() - {DEFAULT_TENANT}:
            return d  # no tenant but the default: no key is scoped
        raw = self._raw_key
        return replace(d, priorities=tuple(replace(p, prefix=raw(p.prefix)) for p in d.priorities),
                       pins=tuple(replace(p, prefix=raw(p.prefix)) for p in d.pins),
                       unpins=tuple(replace(u, prefix=raw(u.prefix)) for u in d.unpins),
                       prefetches=tuple(replace(f, prefix=raw(f.prefix)) for f in d.prefetches))

    def open_programs_of(self, tenant: str) -> int:
        return self._tenant_programs.get(tenant, 0)

    def health(self) -> dict:
        elapsed = max(1e-9, self.wall() - self._started_wall)
        return {"epoch": self.epoch, "open_programs": len(self.programs), "waiting_calls": len(self.sched.waiting),
                "workers": [w.spec for w in self.workers.values()], "policy": self.policy_name,
                "decisions_per_s": self.decisions / elapsed}

    # ================================================================ recovery ==================
    def recover(self) -> int:
        """Rebuild the scheduler from the journal; returns the number of programs recovered."""
        j = self.journal
        if j is None:
            return 0
        for h, spec in j.workflows().items():
            self._compile(h, spec)
        self._replay_journal()
        now = self.wall()
        for prog in self.programs.values():
            prog.last_active_s = now
            self._tenant_programs[prog.tenant] = self._tenant_programs.get(prog.tenant, 0) + 1
        self._unrouted_ok = set(self.sched.calls)
        # the scheduler's ReuseBook is rebuilt by the replay (programs' namespaces, finished calls);
        # hints replanned for calls still in flight go with their answer if the client asks again
        self._hints = {c: h for c, h in self._hints.items() if c in self.sched.calls}
        # calls submitted and not finished: answer their repeats with a fresh route when asked;
        # calls and pins on workers that do not register again within the timeout: expire_workers
        self._recovered_s = self.wall()
        return len(self.programs)

    def _replay_journal(self) -> None:
        j = self.journal
        for tool, d in j.tool_samples():
            self.sched.tool_stats.observe(tool, d)
        try:
            for p in j.programs():
                self.clock.fixed = p.opened_s
                self.programs[p.program_id] = _Program(program_id=p.program_id, workflow_hash=p.workflow_hash,
                                                       tenant=p.tenant, last_seq=p.last_seq,
                                                       share_kv_across_programs=p.share_kv_across_programs)
                self.sched.apply(ProgramArrived(program_id=p.program_id, graph=self.graphs[p.workflow_hash],
                                                tenant=p.tenant, share_kv_across_programs=p.share_kv_across_programs))
            for e in j.events():
                self.clock.fixed = max(self.clock.fixed or 0.0, e.t_s)
                self._replay(e.program_id, e.kind, e.body)
                self._step()
        finally:
            self.clock.fixed = None

    def _replay(self, pid: str, kind: str, b: dict) -> None:
        refs = lambda rows: tuple(PrefixRef(key=k, parent=par, num_tokens=n, namespace=ns)  # noqa: E731
                                  for k, par, n, ns in rows)
        if kind == "submitted":
            self.sched.apply(CallSubmitted(program_id=pid, call_id=b["call_id"], step=b["step"],
                                           prefixes=refs(b["prefixes"]), prompt_tokens=b["prompt_tokens"],
                                           expected_output_tokens=b["expected_output_tokens"],
                                           input_spans=tuple(InputSpan(source_step=st, target_offset=to, num_tokens=n,
                                                                       source_offset=so)
                                                             for st, to, n, so in b.get("input_spans", ()))))
        elif kind == "started":
            self.sched.apply(CallStarted(call_id=b["call_id"], worker=b["worker"]))
        elif kind == "finished":
            self.sched.apply(CallFinished(call_id=b["call_id"], worker=b["worker"], output_tokens=b["output_tokens"],
                                          cached=refs(b["cached"])))
        elif kind == "tool_started":
            self.sched.apply(ToolStarted(program_id=pid, step=b["step"], tool=b["tool"]))
        elif kind == "tool_finished":
            self.sched.apply(ToolFinished(program_id=pid, step=b["step"], tool=b["tool"], duration_s=b["duration_s"]))
        else:
            raise ValueError(f"journal: unknown event kind {kind!r}")

    def _lose_unregistered(self) -> list[str]:
        """After recovery: workers the journal's events name (calls started there, pins there) that
        never registered again are lost: their calls go back to the queue, their pins end."""
        gone = sorted({c.worker for c in self.sched.calls.values() if c.worker and c.worker not in self.workers}
                      | {p.worker for p in self.sched.pins.values() if p.worker and p.worker not in self.workers})
        for w in gone:
            self.sched.apply(WorkerLost(worker=w))
        if gone:
            self._step()
        return gone


def _plainly_valid(req: CallRequest, lim: Limits) -> bool:
    """True when every field of a submission is obviously in range (no spans, ids short and
    printable, counts in range, prefixes cumulative): the per-field checks would pass. False means
    only "look closer" (check_call then names the field)."""
    n = lim.max_id_chars
    pid, cid, step, fw = req.program_id, req.call_id, req.step, req.failed_worker
    if req.input_spans or not (pid and cid and step) or len(req.prefixes) > lim.max_prefixes_per_call:
        return False
    if len(pid) > n or len(cid) > n or len(step) > n or len(fw) > n:
        return False
    if not (pid.isprintable() and cid.isprintable() and step.isprintable() and fw.isprintable()):
        return False
    prompt, hi = req.prompt_tokens, lim.max_tokens
    if not (0 <= prompt <= hi and 0 <= req.expected_output_tokens <= hi and 0 <= req.event_seq <= 1 << 62):
        return False
    last = 0
    for p in req.prefixes:
        k, par, ns, t = p.key, p.parent or "", p.namespace, p.num_tokens
        if not k or len(k) > n or len(par) > n or len(ns) > n or not (last <= t <= prompt):
            return False
        if not (k.isprintable() and par.isprintable() and ns.isprintable()):
            return False
        last = t
    return True


def _check_spans(req: CallRequest) -> None:
    """Malformed input spans are refused, naming the span; spans that are well formed but do not
    apply (a step that is not an input, no finished call of it, a negative offset) are dropped
    when hints are planned (reuse_plan.hints_from_spans), never an error."""
    for i, sp in enumerate(req.input_spans):
        if not sp.source_step:
            raise ServiceError(Code.INVALID_ARGUMENT, "must name the step whose output the span holds",
                               field=f"input_spans[{i}].source_step")
        if sp.num_tokens < 1:
            raise ServiceError(Code.INVALID_ARGUMENT, f"must be >= 1 (got {sp.num_tokens})",
                               field=f"input_spans[{i}].num_tokens")
        if sp.target_offset + sp.num_tokens > req.prompt_tokens:
            raise ServiceError(Code.INVALID_ARGUMENT, f"{sp.num_tokens} tokens from offset {sp.target_offset} run "
                               f"past the prompt's {req.prompt_tokens}", field=f"input_spans[{i}].num_tokens")


def _part_for(d: Decision, worker: str, call_worker: dict[str, str]) -> Decision | None:
    """The part of a decision one worker applies: every priority (each worker ignores keys it does
    not hold), pins/unpins/prefetches on it (or on no worker), its calls in admission order. Not
    the reuse hints: those travel with their call (the submission's answer, then its Generate)."""
    pins = tuple(p for p in d.pins if p.worker in (worker, None))
    unpins = tuple(u for u in d.unpins if u.worker in (worker, None))
    prefetches = tuple(f for f in d.prefetches if f.worker == worker)
    admit = tuple(c for c in d.admit if call_worker.get(c) == worker)
    if not (d.priorities or pins or unpins or prefetches or admit):
        return None
    return replace(d, pins=pins, unpins=unpins, prefetches=prefetches, admit=admit, routes=(), reuse=())


__all__ = ["CallRequest", "Code", "CoreConfig", "Held", "LoadReport", "RouteAnswer", "ServiceCore", "ServiceError",
           "WorkerSpec"]
