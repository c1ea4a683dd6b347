"""The front door's core: an OpenAI request in, a call through the scheduler service out.

    request ─> hints (hints.py) ─> program: the hint's id, else inferred (conversation.py)
            ─> agent: the hint, else named by its system prompt (learner.AgentNamer)
            ─> on a program's first request: ServiceCore.open_program with the declared workflow
               registered under the `workflow` hint, else the class's learned plan (learner.py)
            ─> a tool gap closes: ServiceCore.tool(finished, duration_s = the gap)
            ─> CallRequest ─> the service's submit path (the gRPC servicer's SubmitBatcher when
               one runs: the same batching, admission and routing as gRPC clients)
            ─> the routed worker: an embedded engine (here: call_started / call_finished, as the
               in-process client does) or a worker agent over gRPC (it reports itself)
            ─> answer: tool calls parsed; the conversation keys left for the next request;
               tool calls open a tool gap (ServiceCore.tool(started): the scheduler may pin)

Nothing here speaks HTTP (api.py does); errors are `FrontDoorError` with an HTTP status and the
request field they concern.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from agentflow.graph.model import StepKind
from agentflow.runtime.engines.base import Engine, GenerateRequest, GenerateResult, TokenChunk, prefix_chain
from agentflow.runtime.frontdoor.batcher import CallBatcher
from agentflow.runtime.frontdoor.conversation import (LinkCache, ProgramTracker, TrackedProgram, TrackerLimits, chain,
                                                      message_text)
from agentflow.runtime.frontdoor.hints import Hints
from agentflow.runtime.frontdoor.learner import AgentNamer, GraphLearner, LearnedPlan, LearnerLimits
from agentflow.runtime.frontdoor.render import forced_prefix, parse_tool_calls, render_messages
from agentflow.runtime.service.core import CallRequest, Code, Held, ServiceCore, ServiceError, WorkerSpec
from agentflow.runtime.service.inprocess import load_report

log = logging.getLogger("agentflow.openai")
_HTTP = {Code.INVALID_ARGUMENT: 400, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
         Code.FAILED_PRECONDITION: 409, Code.UNAVAILABLE: 503, Code.RESOURCE_EXHAUSTED: 429,
         Code.PERMISSION_DENIED: 403, Code.INTERNAL: 500}
MAX_PREFIXES = 4  # per request: the system prompt's, and the last few message boundaries


class FrontDoorError(Exception):
    def __init__(self, status: int, field: str | None, message: str, *, code: str = "invalid_request_error"):
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontDoorConfig:
    model_id: str = "SmolLM2-135M-Instruct"
    default_max_tokens: int = 256
    max_tokens_cap: int = 4096
    max_in_flight: int = 256  # requests being served at once; more get 429
    tracker: TrackerLimits = TrackerLimits()
    learner: LearnerLimits = LearnerLimits()
    expire_interval_s: float = 1.0
    kv_bytes_per_token: int | None = None  # pinned bytes in /metrics (None: the engine's, else the core's)
    step_interval_s: float = 0.001  # under load, scheduling steps at least this far apart (batcher.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """A validated chat (or completion) request: what api.py hands the front door."""

    messages: tuple[Mapping, ...] = ()
    prompt: str | tuple[int, ...] | None = None  # /v1/completions
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Mapping, ...] = ()
    tool_choice: object = None


@dataclass(slots=True, kw_only=True)
class Answer:
    """What a request produced: text, tool calls, usage, and where it ran."""

    call_id: str
    program_id: str
    text: str = ""
    tool_calls: list = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    worker: str = ""
    agent: str = ""
    step: str = ""
    ttft_s: float = 0.0


@dataclass(slots=True, kw_only=True)
class _ProgramPlan:
    workflow: str  # learned class or declared workflow name
    declared: bool
    plan: LearnedPlan | None = None
    steps: dict = field(default_factory=dict)  # declared: step -> (kind, agent, tool)
    opened_s: float = 0.0


class FrontDoor:
    def __init__(self, core: ServiceCore, engines: Sequence[Engine], *, config: FrontDoorConfig = FrontDoorConfig(),
                 submit=None, remote=None, clock=time.monotonic, metrics=None, serve_engines: bool = True):
        if not engines:
            raise ValueError("the front door needs an engine to tokenize with (an embedded worker)")
        self.core = core
        self.config = config
        # serve_engines=False: the engines only tokenize, every call goes to workers registered over gRPC
        self.engines = {e.name: e for e in engines} if serve_engines else {}
        self.tokenizer = engines[0]
        self.submit = submit  # async (CallRequest) -> RouteAnswer | ServiceError; None: the batcher's
        self.batcher = CallBatcher(core, min_interval_s=config.step_interval_s)
        self.remote = remote  # async generator (route, GenerateRequest) for workers not embedded here
        self.clock = clock
        self.metrics = metrics
        self.tracker = ProgramTracker(config.tracker)
        self.links = LinkCache()  # hash-chain links already computed: a resent history is not rehashed
        self.learner = GraphLearner(config.learner)
        self.namer = AgentNamer()
        # declared workflows: (tenant, name) -> spec (JSON); tenant None: every tenant's (the operator's)
        self.workflows: dict[tuple[str | None, str], str] = {}
        self._plans: dict[str, _ProgramPlan] = {}
        self.in_flight = 0
        self.expired_for_quota = 0  # programs ended early: their tenant's quota of open programs was full
        self.tool_gaps = 0
        self.unknown_hint_keys = 0
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._last_heartbeat = 0.0

    # ================================================================ lifecycle =================
    def register_engines(self) -> None:
        """Register the embedded engines with the core as workers (as the in-process client does)."""
        for e in self.engines.values():
            load = e.load()
            self.core.register_worker(WorkerSpec(
                worker_id=e.name, address=f"inprocess:{e.name}", engine=type(e).__name__,
                kv_capacity_tokens=load.kv_capacity_tokens, host_capacity_tokens=load.host_capacity_tokens,
                h2d_tokens_per_s=load.h2d_tokens_per_s, prefill_tokens_per_s=load.prefill_tokens_per_s),
                load_report(e))
            self.core.sinks[e.name] = self._deliver

    def _deliver(self, worker: str, decision) -> None:
        if decision is not None and worker in self.engines:  # None: the server drains its streams
            self.engines[worker].apply(decision)

    async def start(self) -> None:
        self.register_engines()
        self._tasks = [asyncio.ensure_future(self._heartbeats()), asyncio.ensure_future(self._expiry())]
        self._started = True

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for prog in list(self.tracker.programs.values()):
            self._end(prog, cancelled=True)
            self.tracker.remove(prog.program_id)
        self.batcher.close()

    def heartbeat(self) -> None:
        self._last_heartbeat = time.monotonic()
        for name, e in self.engines.items():
            if not self.core.heartbeat(name, load_report(e)):
                self.register_engines()  # declared lost (a stall): register again
                return

    async def _heartbeats(self) -> None:
        while True:
            self.heartbeat()
            await asyncio.sleep(self.core.config.heartbeat_interval_s)

    async def _expiry(self) -> None:
        while True:
            await asyncio.sleep(self.config.expire_interval_s)
            self.expire()

    def expire(self) -> int:
        gone = self.tracker.expired(self.clock())
        for prog in gone:
            self._end(prog)
        return len(gone)

    def _end(self, prog: TrackedProgram, *, cancelled: bool = False) -> None:
        self.batcher.apply_reports()  # its calls' and tools' reports go in before it closes
        plan = self._plans.pop(prog.program_id, None)
        if plan is not None and not plan.declared:
            self.learner.program_done(plan.workflow, prog.last_agent, prog.calls)
        if plan is not None and self.metrics is not None:
            self.metrics.program_done(prog.last_seen_s - plan.opened_s)
        with contextlib.suppress(ServiceError):
            self.core.close(prog.program_id, cancelled=cancelled)

    def _expire_one(self, tenant: str, keep: TrackedProgram) -> bool:
        """End the tenant's least recently used program with nothing in flight; False when none."""
        for p in self.tracker.programs.values():  # least recently used first
            if p.tenant == tenant and p is not keep and not p.in_flight and p.program_id in self._plans:
                self.tracker.remove(p.program_id)
                self._end(p)
                self.expired_for_quota += 1
                return True
        return False

    # ================================================================ workflows =================
    def register_workflow(self, spec_text: str, *, source: str = "workflow", fmt: str | None = None,
                          tenant: str | None = None) -> str:
        """Register a declared workflow (YAML or JSON text) under its name, for one tenant (None:
        every tenant, as `--openai-workflow` does); returns the name."""
        from agentflow.errors import SpecError, WorkflowValidationError
        from agentflow.spec import WorkflowSpec

        try:
            compiled = WorkflowSpec.parse(spec_text, source=source, fmt=fmt).compile()
        except (SpecError, WorkflowValidationError) as exc:
            raise FrontDoorError(400, "spec", str(exc)) from None
        key = (tenant, compiled.graph.name)
        if len(self.workflows) >= 1024 and key not in self.workflows:
            raise FrontDoorError(429, "spec", "1024 workflows are registered already", code="rate_limit_exceeded")
        self.workflows[key] = WorkflowSpec.from_compiled(compiled).to_json()
        return compiled.graph.name

    def workflow_spec(self, tenant: str, name: str) -> str | None:
        """The declared workflow a tenant's `workflow` hint names: its own, else the operator's."""
        return self.workflows.get((tenant, name)) or self.workflows.get((None, name))

    def declared(self, tenant: str | None) -> list[str]:
        """The declared workflow names a tenant can use (None: all, for an admin)."""
        return sorted({n for t, n in self.workflows if tenant is None or t in (None, tenant)})

    # ================================================================ requests ==================
    def _agent_of(self, prog: TrackedProgram, messages: Sequence[Mapping], hints: Hints) -> str:
        if hints.agent:
            return hints.agent
        system = "".join(message_text(m.get("content")) for m in messages[:2] if m.get("role") in ("system", "developer"))
        d = hashlib.blake2b(system.encode(), digest_size=8).hexdigest()
        agent = prog.agents.get(d)
        if agent is None:
            agent = self.namer.name(system, prog.program_id)
            if len(prog.agents) < 256:
                prog.agents[d] = agent
        return agent

    def _open(self, prog: TrackedProgram, tenant: str, agent: str, hints: Hints) -> _ProgramPlan:
        spec = self.workflow_spec(tenant, hints.workflow) if hints.workflow else None
        if spec is not None:
            pp = _ProgramPlan(workflow=hints.workflow, declared=True, opened_s=self.clock())
        else:
            cls = f"hint:{tenant}:{hints.workflow}" if hints.workflow else f"auto:{tenant}:{agent}"
            plan = self.learner.plan(cls)
            spec = plan.spec_json
            pp = _ProgramPlan(workflow=cls, declared=False, plan=plan, opened_s=self.clock())
        for attempt in (0, 1):
            try:
                h, _ = self.core.open_program(prog.program_id, tenant=tenant, workflow_spec=spec)
                # Front-door programs declare no end (they expire when idle), so the working set
                # could park a new one for ever behind idle ones: they are never held. Active from
                # the start, no scheduling step sizes them against the budget.
                self.core.sched.activate(prog.program_id)
                break
            except ServiceError as exc:
                # the tenant's quota of open programs: its least recently used idle program ends
                # first (undeclared programs have no end of their own), then this one opens
                if attempt == 0 and exc.code is Code.RESOURCE_EXHAUSTED and self._expire_one(tenant, prog):
                    continue
                raise FrontDoorError(_HTTP.get(exc.code, 500), "agentflow.program_id", str(exc),
                                     code="rate_limit_exceeded" if exc.code is Code.RESOURCE_EXHAUSTED
                                     else "invalid_request_error") from None
        if pp.declared:
            g = self.core.graphs[h]
            pp.steps = {s.name: (s.kind, s.agent, s.tool) for s in g.steps.values()}
        prog.workflow, prog.declared = pp.workflow, pp.declared
        return pp

    def _step_of(self, pp: _ProgramPlan, agent: str, hints: Hints) -> str:
        if not pp.declared:
            return pp.plan.step_of(self.learner.agent_of(pp.workflow, agent))
        if hints.step:
            kind = pp.steps.get(hints.step, (None,))[0]
            if kind is not StepKind.LLM:
                llm = sorted(s for s, v in pp.steps.items() if v[0] is StepKind.LLM)
                raise FrontDoorError(400, "agentflow.step", f"'{hints.step}' is not an LLM step of workflow "
                                     f"'{pp.workflow}' (its LLM steps: {', '.join(llm)})")
            return hints.step
        for s, (kind, a, _) in pp.steps.items():
            if kind is StepKind.LLM and a == agent:
                return s
        agents = sorted({v[1] for v in pp.steps.values() if v[0] is StepKind.LLM})
        raise FrontDoorError(400, "agentflow.agent", f"workflow '{pp.workflow}' has no agent '{agent}' "
                             f"(its agents: {', '.join(agents)}); name one, or the step")

    def _tool_step(self, pp: _ProgramPlan, tool: str) -> str | None:
        if not pp.declared:
            return pp.plan.tool_step
        for s, (kind, _, t) in pp.steps.items():
            if kind is StepKind.TOOL and t == tool:
                return s
        return None

    def _tool(self, prog: TrackedProgram, pp: _ProgramPlan, *, finished: bool, duration_s: float = 0.0) -> None:
        tool = prog.tool_names[0] if prog.tool_names else "tool"
        step = self._tool_step(pp, tool)
        if step is None:
            return
        self.batcher.report("tool", prog.program_id, step=step, tool=tool[:128], finished=finished,
                            duration_s=duration_s)

    def prompt_ids(self, req: ChatRequest) -> tuple[list[int], str, list[int]]:
        """(prompt ids, the forced tool-call opening, message boundaries in the ids)."""
        tok = self.tokenizer
        if req.prompt is not None:
            if isinstance(req.prompt, tuple):
                return list(req.prompt), "", []
            return encode_text(tok, req.prompt), "", []
        forced = forced_prefix(req.tool_choice, req.tools)
        ids = tok.encode_chat(render_messages(req.messages, req.tools))
        starts = message_starts(tok, ids)
        if forced:
            ids = ids + encode_text(tok, forced)
        return ids, forced, starts

    async def complete(self, req: ChatRequest, hints: Hints, *, tenant: str) -> AsyncIterator[str | Answer]:
        """Serve one request: text deltas (str) while it generates, then its `Answer`."""
        if self.in_flight >= self.config.max_in_flight:
            raise FrontDoorError(429, None, f"{self.in_flight} requests are being served; retry later",
                                 code="rate_limit_exceeded")
        self.unknown_hint_keys += hints.unknown_keys
        now = self.clock()
        pid = f"oa:{tenant}:{hints.program_id}" if hints.program_id else None
        links = chain(tenant, req.messages, self.links) if req.messages else None
        if pid is None and req.messages:
            pid = self.tracker.find(tenant, req.messages, links)
        prog, created = self.tracker.open(pid, tenant=tenant, now_s=now)
        try:
            agent = self._agent_of(prog, req.messages, hints)
            pp = self._plans.get(prog.program_id)
            if pp is None:
                pp = self._plans[prog.program_id] = self._open(prog, tenant, agent, hints)
            step = self._step_of(pp, agent, hints)
            ids, forced, starts = self.prompt_ids(req)
        except BaseException:
            if created:
                self.tracker.remove(prog.program_id)
                if prog.program_id in self._plans:
                    self._end(prog, cancelled=True)
            raise
        if prog.tool_calls_at_s is not None:  # this request carries the tools' results: the gap ends
            gap = max(0.0, now - prog.tool_calls_at_s)
            self._tool(prog, pp, finished=True, duration_s=gap)
            if not pp.declared:
                for t in prog.tool_names[:4]:
                    self.learner.tool_gap(pp.workflow, t[:128], gap)
            prog.tool_calls_at_s, prog.tool_names = None, ()
            self.tool_gaps += 1
        if not pp.declared:
            self.learner.call(pp.workflow, prog.last_agent, agent)
        prog.last_agent = agent
        prog.calls += 1
        bounds = [b for b in starts if 0 < b < len(ids)]
        bounds = sorted(set(bounds[:1] + bounds[-(MAX_PREFIXES - 1):])) if bounds else [len(ids)]
        refs = prefix_chain(tenant, ids, bounds)
        call_id = f"{prog.program_id}#{prog.calls}-{random.getrandbits(24):06x}"
        call = CallRequest(program_id=prog.program_id, call_id=call_id, step=step, prefixes=refs,
                           prompt_tokens=len(ids), expected_output_tokens=req.max_tokens)
        gen = GenerateRequest(call_id=call_id, program_id=prog.program_id, prompt_ids=tuple(ids),
                              max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                              seed=req.seed, prefixes=refs, namespace=tenant, priority=hints.priority,
                              session_id=prog.program_id)
        self.in_flight += 1
        prog.in_flight += 1
        try:
            result = None
            async with contextlib.aclosing(self._run(call, gen)) as run:  # closed at once if the client goes
                async for item in run:
                    if isinstance(item, TokenChunk):
                        if item.text:
                            yield item.text
                    else:
                        result, worker = item
        finally:
            self.in_flight -= 1
            prog.in_flight -= 1
            prog.last_seen_s = self.clock()
        text = forced + result.text if forced else result.text
        content, calls = ((parse_tool_calls(result.text if forced else text, forced))
                          if req.tools and req.tool_choice != "none" else (text, []))
        finish = "tool_calls" if calls else ("length" if result.finish_reason == "length" else "stop")
        for s in req.stop:
            i = content.find(s)
            if i >= 0:
                content, finish = content[:i], "stop"
        ans = Answer(call_id=call_id, program_id=prog.program_id, text=content, tool_calls=calls, finish_reason=finish,
                     prompt_tokens=result.prompt_tokens, completion_tokens=len(result.output_ids),
                     cached_tokens=result.cached_tokens, worker=worker, agent=agent, step=step, ttft_s=result.ttft_s)
        if req.messages:
            self.tracker.answered(prog, req.messages, {"role": "assistant", "content": content or None,
                                                        "tool_calls": calls or None}, links)
        if calls:
            prog.tool_calls_at_s = self.clock()
            prog.tool_names = tuple(c["function"]["name"] for c in calls)
            self._tool(prog, pp, finished=False)
        if self.metrics is not None:
            self.metrics.answered(ans)
        if hints.last_step:
            self.tracker.remove(prog.program_id)
            self._end(prog)
        yield ans

    async def _run(self, call: CallRequest, gen: GenerateRequest):
        # as the in-process client does: a busy loop may starve the heartbeat task, and the
        # embedded worker must not be declared lost for it
        if time.monotonic() - self._last_heartbeat >= self.core.config.heartbeat_interval_s:
            self.heartbeat()
        if self.submit is not None:
            route = await self.submit(call)
        else:  # batched with the other requests of this loop turn: one scheduling step (batcher.py)
            route = await self.batcher.submit(call)
        if isinstance(route, ServiceError):
            raise FrontDoorError(_HTTP.get(route.code, 500), None, f"scheduler: {route}", code="scheduler_error")
        engine = self.engines.get(route.worker_id)
        if engine is None:
            if self.remote is None:
                raise FrontDoorError(503, None, f"worker {route.worker_id} is not reachable from the front door")
            async for item in self.remote(route, gen):
                yield item if isinstance(item, TokenChunk) else (item, route.worker_id)
            return
        # the engine's reports ride with the next batch (no step, no commit of their own); a report
        # the core refuses (the call's program closed under it, the worker was declared lost) is
        # logged there: the answer is still the client's
        report = self.batcher.report
        report("call_started", call.call_id, route.worker_id)
        try:
            result = None
            async with contextlib.aclosing(engine.generate(replace(gen, reuse=route.reuse) if route.reuse else gen)
                                           ) as stream:
                async for item in stream:
                    if isinstance(item, GenerateResult):
                        result = item
                    else:
                        yield item
            if result is None:
                raise FrontDoorError(502, None, f"engine {engine.name} ended without a result")
        except BaseException as exc:
            report("call_failed", call.call_id, route.worker_id, type(exc).__name__)
            raise
        report("call_finished", call.call_id, route.worker_id, output_tokens=len(result.output_ids),
               cached=result.cached, prompt_tokens=result.prompt_tokens, cached_tokens=result.cached_tokens,
               ttft_s=result.ttft_s)
        yield result, route.worker_id

    # ================================================================ introspection =============
    def programs(self, tenant: str | None = None) -> list[dict]:
        out = []
        for p in self.tracker.programs.values():
            if tenant is not None and p.tenant != tenant:
                continue
            out.append({"program_id": p.program_id, "inferred": p.inferred, "workflow": p.workflow,
                        "declared": p.declared, "calls": p.calls, "last_agent": p.last_agent,
                        "waiting_on_tools": list(p.tool_names) if p.tool_calls_at_s is not None else [],
                        "in_flight": p.in_flight})
        return out


def encode_text(engine, text: str) -> list[int]:
    tok = getattr(engine, "tokenizer", None)
    if tok is not None and hasattr(tok, "encode"):
        return list(tok.encode(text, add_special_tokens=False))
    if hasattr(engine, "encode_text"):
        return list(engine.encode_text(text))
    ids = engine.encode_chat([{"role": "user", "content": text}])
    return list(ids)


def message_starts(engine, ids: Sequence[int]) -> list[int]:
    """Where messages start in a templated prompt (the template's message-start token), or []."""
    start = getattr(engine, "_frontdoor_msg_start", None)
    if start is None:
        tok = getattr(engine, "tokenizer", None)
        start = -1
        if tok is not None and hasattr(tok, "convert_tokens_to_ids"):
            t = tok.convert_tokens_to_ids("<|im_start|>")
            start = t if isinstance(t, int) and t != getattr(tok, "unk_token_id", None) else -1
        with contextlib.suppress(AttributeError):
            engine._frontdoor_msg_start = start
    if start < 0:
        return []
    return [i for i, t in enumerate(ids) if t == start]


__all__ = ["Answer", "ChatRequest", "FrontDoor", "FrontDoorConfig", "FrontDoorError", "encode_text",
           "message_starts"]
