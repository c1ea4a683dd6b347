"""Messages <-> domain objects, in one place (dicts and protos only at the wire).

Infinity travels as -1 (steps-to-execution of a prefix no live user will need); an absent
optional id as "" (a hint's source call, a request's reuse namespace).
"""

from __future__ import annotations

import math

from agentflow.runtime.decision import Decision, EvictionPriority, Pin, Prefetch, Unpin, UnpinReason
from agentflow.runtime.engines.base import EngineLoad, GenerateRequest, GenerateResult
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.reuse_plan import InputSpan, ReuseHint
from agentflow.runtime.service.core import CallRequest, LoadReport, RouteAnswer, WorkerSpec
from agentflow.v1 import service_pb2 as pb


def _inf_out(x: float) -> float:
    return -1.0 if math.isinf(x) else x


def _inf_in(x: float) -> float:
    return math.inf if x < 0 else x


def prefix_to_pb(p: PrefixRef) -> pb.Prefix:
    return pb.Prefix(key=p.key, parent=p.parent or "", num_tokens=p.num_tokens, namespace=p.namespace)


def prefix_from_pb(p: pb.Prefix) -> PrefixRef:
    return PrefixRef(key=p.key, parent=p.parent or None, num_tokens=p.num_tokens, namespace=p.namespace or "default")


def _checked(ps, where: str):
    """The prefixes of a message, each checked at the edge (an error names `where[i].field`)."""
    from agentflow.runtime.service.core import Code, ServiceError

    for i, p in enumerate(ps):
        if not p.key:
            raise ServiceError(Code.INVALID_ARGUMENT, "must not be empty", field=f"{where}[{i}].key")
        if p.num_tokens < 0:
            raise ServiceError(Code.INVALID_ARGUMENT, f"must be >= 0 (got {p.num_tokens})",
                               field=f"{where}[{i}].num_tokens")
        yield p


def prefixes_from_pb(ps, where: str) -> tuple[PrefixRef, ...]:
    return tuple(prefix_from_pb(p) for p in _checked(ps, where))


def scoped_prefixes_from_pb(ps, scope: str) -> tuple[PrefixRef, ...]:
    """A client's prefixes, keyed in its tenant ("tenant/key", parent too; namespace the tenant)."""
    tenant = scope[:-1]
    return tuple(PrefixRef(key=scope + p.key, parent=scope + p.parent if p.parent else None,
                           num_tokens=p.num_tokens, namespace=tenant) for p in _checked(ps, "prefixes"))


def spec_to_pb(s: WorkerSpec) -> pb.WorkerInfo:
    return pb.WorkerInfo(worker_id=s.worker_id, address=s.address, engine=s.engine,
                         kv_capacity_tokens=s.kv_capacity_tokens, host_capacity_tokens=s.host_capacity_tokens,
                         h2d_tokens_per_s=s.h2d_tokens_per_s, prefill_tokens_per_s=s.prefill_tokens_per_s,
                         time_scale=s.time_scale)


def spec_from_pb(m: pb.WorkerInfo) -> WorkerSpec:
    return WorkerSpec(worker_id=m.worker_id, address=m.address, engine=m.engine or "sim",
                      kv_capacity_tokens=m.kv_capacity_tokens, host_capacity_tokens=m.host_capacity_tokens,
                      h2d_tokens_per_s=m.h2d_tokens_per_s, prefill_tokens_per_s=m.prefill_tokens_per_s or 10_000.0,
                      time_scale=m.time_scale or 1.0)


def load_to_pb(load: EngineLoad) -> pb.WorkerLoad:
    return pb.WorkerLoad(kv_used_tokens=load.kv_used_tokens, queue_depth=load.queue_depth, running=load.running,
                         pinned_tokens=load.pinned_tokens)


def load_from_pb(m: pb.WorkerLoad) -> LoadReport:
    return LoadReport(kv_used_tokens=m.kv_used_tokens, queue_depth=m.queue_depth, running=m.running,
                      pinned_tokens=m.pinned_tokens)


def span_to_pb(s: InputSpan) -> pb.InputSpan:
    return pb.InputSpan(source_step=s.source_step, target_offset=s.target_offset, num_tokens=s.num_tokens,
                        source_offset=s.source_offset)


def span_from_pb(m: pb.InputSpan) -> InputSpan:
    # the numbers are checked against the prompt by the core (ServiceCore._apply_submit)
    return InputSpan(source_step=m.source_step, target_offset=m.target_offset, num_tokens=m.num_tokens,
                     source_offset=m.source_offset)


def hint_to_pb(h: ReuseHint) -> pb.ReuseHint:
    return pb.ReuseHint(key=h.key, namespace=h.namespace, kind=h.kind,
                        source_call_id="" if h.source_call_id is None else str(h.source_call_id),
                        source_step=h.source_step or "", target_offset=h.target_offset, num_tokens=h.num_tokens,
                        source_offset=h.source_offset)


def hint_from_pb(m: pb.ReuseHint, target_call_id: str) -> ReuseHint:
    """A hint as the wire carries it: inside one call's hints, so its target is that call."""
    return ReuseHint(key=m.key, namespace=m.namespace, kind=m.kind, source_call_id=m.source_call_id or None,
                     source_step=m.source_step or None, target_offset=m.target_offset, num_tokens=m.num_tokens,
                     source_offset=m.source_offset, target_call_id=target_call_id)


def call_from_pb(m: pb.SubmitCallRequest, scope: str = "") -> CallRequest:
    """`scope`: the caller's id scope ("tenant/" for a client; auth.Identity.scope). A client's prefix
    keys are scoped the same way, in its tenant's namespace (core.tenant_prefixes)."""
    return CallRequest(program_id=scope + m.program_id if m.program_id else "",
                       call_id=scope + m.call_id if m.call_id else "", step=m.step,
                       prefixes=(prefixes_from_pb(m.prefixes, "prefixes") if not scope
                                 else scoped_prefixes_from_pb(m.prefixes, scope)), prompt_tokens=m.prompt_tokens,
                       expected_output_tokens=m.expected_output_tokens or 256, event_seq=m.event_seq,
                       failed_worker=m.failed_worker, input_spans=tuple(span_from_pb(s) for s in m.input_spans))


def call_to_pb(c: CallRequest) -> pb.SubmitCallRequest:
    return pb.SubmitCallRequest(program_id=c.program_id, call_id=c.call_id, step=c.step,
                                prefixes=[prefix_to_pb(p) for p in c.prefixes], prompt_tokens=c.prompt_tokens,
                                expected_output_tokens=c.expected_output_tokens, event_seq=c.event_seq,
                                failed_worker=c.failed_worker, input_spans=[span_to_pb(s) for s in c.input_spans])


def hints_to_pb(a: RouteAnswer) -> pb.CallHints:
    """What an answer tells the call's worker (SubmitCallResponse.hints, then GenerateRequest.hints)."""
    return pb.CallHints(priority=a.priority, session_id=a.session_id, steps_to_execution=_inf_out(a.steps_to_execution),
                        reuse_prefixes=list(a.reuse_prefixes), reuse=[hint_to_pb(h) for h in a.reuse])


def answer_to_pb(a: RouteAnswer) -> pb.SubmitCallResponse:
    return pb.SubmitCallResponse(
        call_id=a.call_id, worker_id=a.worker_id, worker_address=a.worker_address, route_reason=a.reason,
        predicted_ttft_s=a.predicted_ttft_s, hints=hints_to_pb(a))


def answer_from_pb(m: pb.SubmitCallResponse) -> RouteAnswer:
    h = m.hints
    return RouteAnswer(call_id=m.call_id, worker_id=m.worker_id, worker_address=m.worker_address,
                       reason=m.route_reason, predicted_ttft_s=m.predicted_ttft_s, priority=h.priority,
                       session_id=h.session_id, steps_to_execution=_inf_in(h.steps_to_execution),
                       reuse_prefixes=tuple(h.reuse_prefixes),
                       reuse=tuple(hint_from_pb(x, m.call_id) for x in h.reuse))


def decision_to_pb(d: Decision) -> pb.WorkerDecision:
    return pb.WorkerDecision(
        step=d.step,
        priorities=[pb.Priority(prefix=p.prefix, priority=p.priority, steps_to_execution=_inf_out(p.steps_to_execution))
                    for p in d.priorities],
        pins=[pb.Pin(prefix=p.prefix, program_id=str(p.program_id), ttl_s=p.ttl_s, num_tokens=p.num_tokens)
              for p in d.pins],
        unpins=[pb.Unpin(prefix=u.prefix, program_id=str(u.program_id), reason=u.reason.value) for u in d.unpins],
        prefetches=[pb.PrefetchHint(prefix=f.prefix, deadline_in_s=max(0.0, f.deadline_s - d.time_s),
                                    num_tokens=f.num_tokens) for f in d.prefetches],
        admit=[str(c) for c in d.admit])


def decision_from_pb(m: pb.WorkerDecision, worker: str, now_s: float) -> Decision:
    """A worker's part of a decision, in the worker's own time (TTL and deadlines are relative)."""
    return Decision(
        step=m.step, time_s=now_s,
        priorities=tuple(EvictionPriority(prefix=p.prefix, priority=p.priority,
                                          steps_to_execution=_inf_in(p.steps_to_execution)) for p in m.priorities),
        pins=tuple(Pin(prefix=p.prefix, worker=worker, program_id=p.program_id, ttl_s=p.ttl_s,
                       expires_at_s=now_s + p.ttl_s, num_tokens=p.num_tokens) for p in m.pins),
        unpins=tuple(Unpin(prefix=u.prefix, worker=worker, program_id=u.program_id, reason=UnpinReason(u.reason))
                     for u in m.unpins),
        prefetches=tuple(Prefetch(prefix=f.prefix, worker=worker, deadline_s=now_s + f.deadline_in_s,
                                  num_tokens=f.num_tokens) for f in m.prefetches),
        admit=tuple(m.admit))


def generate_to_pb(r: GenerateRequest, hints: pb.CallHints | None = None) -> pb.GenerateRequest:
    """`hints`: the call's answer (`hints_to_pb`); the request's own reuse hints (`r.reuse`, when it
    has any) replace the answer's."""
    if r.reuse:
        given, hints = hints, pb.CallHints()
        if given is not None:
            hints.CopyFrom(given)
        del hints.reuse[:]
        hints.reuse.extend(hint_to_pb(h) for h in r.reuse)
    return pb.GenerateRequest(
        call_id=str(r.call_id), program_id=str(r.program_id), prompt_ids=list(r.prompt_ids),
        max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed or 0,
        ignore_eos=r.ignore_eos, forced_output_ids=list(r.forced_output_ids or ()),
        prefixes=[prefix_to_pb(p) for p in r.prefixes], namespace=r.namespace, hints=hints,
        reuse_namespace=r.reuse_namespace or "")


def generate_from_pb(m: pb.GenerateRequest) -> GenerateRequest:
    from agentflow.runtime.service.core import Code, ServiceError

    if not m.call_id:
        raise ServiceError(Code.INVALID_ARGUMENT, "must not be empty", field="call_id")
    if not m.prompt_ids:
        raise ServiceError(Code.INVALID_ARGUMENT, "must hold at least one token", field="prompt_ids")
    return GenerateRequest(
        call_id=m.call_id, program_id=m.program_id, prompt_ids=tuple(m.prompt_ids),
        max_new_tokens=m.max_new_tokens or 256, temperature=m.temperature, top_p=m.top_p or 1.0,
        seed=m.seed or None, ignore_eos=m.ignore_eos,
        forced_output_ids=tuple(m.forced_output_ids) if m.forced_output_ids else None,
        prefixes=prefixes_from_pb(m.prefixes, "prefixes"), namespace=m.namespace or "default",
        priority=m.hints.priority if m.HasField("hints") else None,
        session_id=m.hints.session_id if m.HasField("hints") and m.hints.session_id else None,
        reuse_namespace=m.reuse_namespace or None,
        reuse=tuple(hint_from_pb(h, m.call_id) for h in m.hints.reuse))


def result_to_pb(r: GenerateResult) -> pb.GenerateResult:
    return pb.GenerateResult(output_ids=list(r.output_ids), text=r.text, prompt_tokens=r.prompt_tokens,
                             cached_tokens=r.cached_tokens, host_tokens=r.host_tokens, queued_s=r.queued_s,
                             ttft_s=r.ttft_s, duration_s=r.duration_s, finish_reason=r.finish_reason,
                             cached=[prefix_to_pb(p) for p in r.cached], reused_tokens=r.reused_tokens)


def result_from_pb(call_id: str, m: pb.GenerateResult) -> GenerateResult:
    return GenerateResult(call_id=call_id, output_ids=tuple(m.output_ids), text=m.text, prompt_tokens=m.prompt_tokens,
                          cached_tokens=m.cached_tokens, host_tokens=m.host_tokens, queued_s=m.queued_s,
                          ttft_s=m.ttft_s, duration_s=m.duration_s, finish_reason=m.finish_reason,
                          cached=tuple(prefix_from_pb(p) for p in m.cached), reused_tokens=m.reused_tokens)
