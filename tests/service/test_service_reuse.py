"""Cross-agent KV reuse through the scheduler service, without the model: the wire conversions of
spans and hints, the core's answers (spans in -> exactly the call's hints out; isolation between
programs and tenants; malformed spans refused naming the field), recovery (the reuse book is
rebuilt from the journal), and the in-process client handing hints to its engine with the call.

Nothing is faked: a real ServiceCore with a ManualClock, real SQLite journals, a real SimEngine
(spied on, not replaced) and, for OpenProgram's opt-in, a real scheduler server on loopback."""

from __future__ import annotations

import sqlite3

import anyio
import pytest

from agentflow.runtime.clock import ManualClock
from agentflow.runtime.engines.base import GenerateRequest
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.reuse_plan import InputSpan, ReuseHint, call_segment_key
from agentflow.runtime.service import convert
from agentflow.runtime.service.core import (
    CallRequest, Code, CoreConfig, RouteAnswer, ServiceCore, ServiceError, WorkerSpec,
)
from agentflow.runtime.service.journal import Journal


def review_spec() -> str:
    """The writer/critic workflow of tests/executor/test_cross_agent_reuse.py, as the wire carries it."""
    from agentflow.spec import WorkflowSpec
    from tests.executor.test_cross_agent_reuse import review_workflow

    return WorkflowSpec.from_compiled(review_workflow()).to_json()


def make_core(journal=None) -> ServiceCore:
    core = ServiceCore(CoreConfig(), clock=ManualClock(), journal=journal, wall=lambda: 0.0)
    core.register_worker(WorkerSpec(worker_id="w1", address="127.0.0.1:1001", kv_capacity_tokens=100_000))
    return core


def draft(core, pid: str, *, seq: int = 1, output_tokens: int = 32) -> RouteAnswer:
    """The writer's call of program `pid`, run to its end on w1."""
    ans = core.submit(CallRequest(program_id=pid, call_id=f"{pid}/draft", step="draft", prefixes=(),
                                  prompt_tokens=40, event_seq=seq))
    core.call_started(f"{pid}/draft", "w1")
    core.call_finished(f"{pid}/draft", "w1", output_tokens=output_tokens)
    return ans


def review(pid: str, *spans: InputSpan, seq: int = 2, prompt_tokens: int = 90) -> CallRequest:
    return CallRequest(program_id=pid, call_id=f"{pid}/review", step="review", prefixes=(),
                       prompt_tokens=prompt_tokens, event_seq=seq, input_spans=spans)


SPAN = InputSpan(source_step="draft", target_offset=30, num_tokens=31, source_offset=1)


def hint(pid: str, namespace: str, span: InputSpan = SPAN) -> ReuseHint:
    """The one hint the critic's call must carry: the writer's output span, named by call id."""
    src = f"{pid}/draft"
    return ReuseHint(key=call_segment_key(namespace, src, span.source_offset, span.num_tokens), namespace=namespace,
                     kind="draft->review", source_call_id=src, source_step="draft", target_offset=span.target_offset,
                     num_tokens=span.num_tokens, source_offset=span.source_offset, target_call_id=f"{pid}/review")


# ---- conversions ---------------------------------------------------------------------------------
def _wire(msg):
    return type(msg).FromString(msg.SerializeToString())


def test_a_submission_with_spans_round_trips():
    req = review("p", SPAN, InputSpan(source_step="plan", target_offset=-1, num_tokens=9, source_offset=0))
    req = CallRequest(**{**{f: getattr(req, f) for f in req.__slots__},
                         "prefixes": (PrefixRef(key="k", parent=None, num_tokens=12, namespace="t"),)})
    m = _wire(convert.call_to_pb(req))
    assert [(s.source_step, s.target_offset, s.num_tokens, s.source_offset) for s in m.input_spans] == [
        ("draft", 30, 31, 1), ("plan", -1, 9, 0)]
    assert convert.call_from_pb(m) == req


def test_an_answer_with_hints_round_trips_and_its_hints_go_on_the_generate():
    shared = ReuseHint(key="s1", namespace="t/wf:review", kind="state:task->review", source_call_id=None,
                       source_step=None, target_offset=3, num_tokens=8, target_call_id="p/review")
    ans = RouteAnswer(call_id="p/review", worker_id="w1", worker_address="h:1", reason="sticky", predicted_ttft_s=0.5,
                      priority=7, session_id="p", steps_to_execution=2.0, reuse_prefixes=("k",),
                      reuse=(hint("p", "t/wf:review/p:p"), shared))
    m = _wire(convert.answer_to_pb(ans))
    assert m.hints.reuse[1].source_call_id == "" and m.hints.reuse[1].source_step == ""  # None travels as ""
    assert convert.answer_from_pb(m) == ans

    # the client sends the answer's hints with the call; the worker's request has them, aimed at it
    req = GenerateRequest(call_id="p/review", program_id="p", prompt_ids=tuple(range(90)), max_new_tokens=4,
                          prefixes=(), namespace="t", reuse_namespace="t/wf:review/p:p")
    g = _wire(convert.generate_to_pb(req, convert.hints_to_pb(ans)))
    assert g.reuse_namespace == "t/wf:review/p:p" and len(g.hints.reuse) == 2
    back = convert.generate_from_pb(g)
    assert back.reuse == ans.reuse and back.reuse_namespace == req.reuse_namespace
    assert (back.priority, back.session_id) == (7, "p")
    # a request that carries hints of its own round-trips exactly (with an answer's other hints)
    own = GenerateRequest(**{**{f: getattr(req, f) for f in req.__slots__}, "reuse": ans.reuse[:1],
                             "priority": 7, "session_id": "p"})
    assert convert.generate_from_pb(_wire(convert.generate_to_pb(own, convert.hints_to_pb(ans)))) == own
    # none at all: no namespace, no hints
    plain = convert.generate_from_pb(_wire(convert.generate_to_pb(
        GenerateRequest(call_id="c", program_id="p", prompt_ids=(1, 2)))))
    assert plain.reuse == () and plain.reuse_namespace is None


def test_a_result_round_trips_with_its_reused_tokens():
    from agentflow.runtime.engines.base import GenerateResult

    r = GenerateResult(call_id="p/review", output_ids=(5, 6), text="ab", prompt_tokens=90, cached_tokens=20,
                       reused_tokens=27, queued_s=0.25, ttft_s=0.5, duration_s=1.0, finish_reason="stop",
                       cached=(PrefixRef(key="k", parent=None, num_tokens=20, namespace="t"),))
    assert convert.result_from_pb("p/review", _wire(convert.result_to_pb(r))) == r


def test_open_program_carries_the_opt_in_over_grpc():
    """The servicer passes OpenProgramRequest.share_kv_across_programs to the core (loopback)."""
    from agentflow.runtime.service.app import build_scheduler
    from agentflow.runtime.service.client import ServiceClient

    async def go():
        server, _ = build_scheduler(listen="127.0.0.1:0")
        port = await server.start()
        client = ServiceClient(f"127.0.0.1:{port}")
        try:
            spec = review_spec()
            await client.open_program("shared", spec, tenant="acme", share_kv_across_programs=True)
            await client.open_program("own", spec, tenant="acme")
            return {p: server.core.sched.reuse.namespace_of(p) for p in ("shared", "own")}
        finally:
            await client.close()
            await server.stop(0)

    assert anyio.run(go) == {"shared": "acme/wf:review", "own": "acme/wf:review/p:own"}


# ---- the core ------------------------------------------------------------------------------------
def test_spans_in_the_answer_carries_exactly_the_calls_hint():
    core = make_core()
    core.open_program("p", tenant="acme", workflow_spec=review_spec())
    assert core.graphs[core.programs["p"].workflow_hash].steps["review"].inputs == ("draft",)
    assert draft(core, "p").reuse == ()
    ans = core.submit(review("p", SPAN))
    assert ans.reuse == (hint("p", "acme/wf:review/p:p"),)
    assert core._hints == {}  # taken by the answer, nothing left behind
    # a repeat of the submission (same event_seq) is answered again, hints included
    assert core.submit(review("p", SPAN)).reuse == ans.reuse


def test_another_programs_or_tenants_call_is_never_a_source():
    core = make_core()
    spec = review_spec()
    core.open_program("p", tenant="acme", workflow_spec=spec)
    core.open_program("q", tenant="acme", workflow_spec=spec)  # same tenant and workflow, not opted in
    core.open_program("r", tenant="other", workflow_spec=spec)
    core.open_program("s1", tenant="acme", workflow_spec=spec, share_kv_across_programs=True)
    core.open_program("s2", tenant="acme", workflow_spec=spec, share_kv_across_programs=True)
    draft(core, "p")
    draft(core, "s1")
    # p's writer finished, s1's too; nobody else's: their critics get no hint, whatever they say
    for pid in ("q", "r", "s2"):
        assert core.submit(review(pid, SPAN, seq=1)).reuse == (), pid
    # each program's own writer is its critic's only source; opted-in programs share the namespace
    core2 = make_core()
    for pid, tenant, share in (("p", "acme", False), ("r", "other", False), ("s1", "acme", True), ("s2", "acme", True)):
        core2.open_program(pid, tenant=tenant, workflow_spec=spec, share_kv_across_programs=share)
        draft(core2, pid)
    got = {pid: core2.submit(review(pid, SPAN)).reuse for pid in ("p", "r", "s1", "s2")}
    assert got == {"p": (hint("p", "acme/wf:review/p:p"),), "r": (hint("r", "other/wf:review/p:r"),),
                   "s1": (hint("s1", "acme/wf:review"),), "s2": (hint("s2", "acme/wf:review"),)}


@pytest.mark.parametrize(("span", "prompt_tokens", "field", "message"), [
    (InputSpan(source_step="draft", target_offset=30, num_tokens=0), 90, "input_spans[0].num_tokens", "must be >= 1"),
    (InputSpan(source_step="draft", target_offset=30, num_tokens=-5), 90, "input_spans[0].num_tokens", "must be >= 1"),
    (InputSpan(source_step="draft", target_offset=80, num_tokens=20), 90, "input_spans[0].num_tokens",
     "20 tokens from offset 80 run past the prompt's 90"),
    (InputSpan(source_step="", target_offset=30, num_tokens=20), 90, "input_spans[0].source_step", "must name"),
])
def test_a_malformed_span_is_refused_naming_it(span, prompt_tokens, field, message):
    core = make_core()
    core.open_program("p", workflow_spec=review_spec())
    draft(core, "p")
    with pytest.raises(ServiceError) as e:
        core.submit(review("p", span, prompt_tokens=prompt_tokens))
    assert e.value.code is Code.INVALID_ARGUMENT and e.value.field == field
    assert str(e.value).startswith(f"{field}: {message}")
    assert "p/review" not in core.sched.calls  # refused, not submitted


@pytest.mark.parametrize("span", [
    InputSpan(source_step="draft", target_offset=-3, num_tokens=20),  # negative offsets
    InputSpan(source_step="draft", target_offset=30, num_tokens=20, source_offset=-1),
    InputSpan(source_step="nosuch", target_offset=30, num_tokens=20),  # not an input of the step
    InputSpan(source_step="draft", target_offset=30, num_tokens=33),  # longer than the draft's output
    InputSpan(source_step="draft", target_offset=60, num_tokens=30),  # into the prompt's last token
])
def test_a_span_that_does_not_apply_is_dropped_not_refused(span):
    core = make_core()
    core.open_program("p", workflow_spec=review_spec())
    draft(core, "p")
    ans = core.submit(review("p", span))
    assert ans.reuse == () and "p/review" in core.sched.calls


def test_the_decision_stream_does_not_carry_hints():
    """Workers get hints with their calls only: a worker's part of a decision never holds them."""
    from agentflow.runtime.decision import Decision
    from agentflow.runtime.service.core import _part_for

    d = Decision(step=3, time_s=1.0, admit=("p/review",), reuse=(hint("p", "acme/wf:review/p:p"),))
    part = _part_for(d, "w1", {"p/review": "w1"})
    assert part is not None and part.admit == ("p/review",) and part.reuse == ()
    assert _part_for(Decision(step=4, time_s=1.0, reuse=d.reuse), "w1", {}) is None  # hints alone: nothing to send


# ---- recovery ------------------------------------------------------------------------------------
def test_a_restarted_scheduler_plans_hints_from_calls_that_finished_before_it(tmp_path):
    path = tmp_path / "journal.sqlite"
    core = make_core(Journal(path))
    spec = review_spec()
    core.open_program("p", tenant="acme", workflow_spec=spec)
    core.open_program("s", tenant="acme", workflow_spec=spec, share_kv_across_programs=True)
    core.open_program("f", tenant="acme", workflow_spec=spec)
    for pid in ("p", "s", "f"):
        draft(core, pid)
    in_flight = core.submit(review("f", SPAN))  # answered before the restart, not finished
    assert in_flight.reuse == (hint("f", "acme/wf:review/p:f"),)
    core.journal.close()

    again = make_core(Journal(path))
    assert again.recover() == 3
    assert again.sched.reuse.namespace_of("s") == "acme/wf:review"  # the opt-in was journaled
    # calls submitted after the restart: hints from the writers that finished before it
    assert again.submit(review("p", SPAN)).reuse == (hint("p", "acme/wf:review/p:p"),)
    assert again.submit(review("s", SPAN)).reuse == (hint("s", "acme/wf:review"),)
    # a repeat of the submission in flight at the restart: its hints, planned again by the replay
    assert again.submit(review("f", SPAN)).reuse == in_flight.reuse
    assert again._hints == {}


def test_a_journal_from_before_reuse_opens_and_shares_nothing(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE programs (program_id TEXT PRIMARY KEY, workflow_hash TEXT NOT NULL, tenant TEXT NOT NULL,
                               opened_s REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0);
        INSERT INTO programs VALUES ('p', 'h', 'acme', 1.0, 4);""")
    db.commit()
    db.close()
    (p,) = Journal(path).programs()
    assert (p.program_id, p.tenant, p.last_seq, p.share_kv_across_programs) == ("p", "acme", 4, False)


# ---- the in-process client -----------------------------------------------------------------------
def test_the_in_process_client_hands_the_hints_to_the_engine_with_the_call():
    from agentflow.runtime.service.inprocess import InProcessClient
    from tests.executor.conftest import sim

    engine = sim(name="w1")
    seen, applied = {}, []
    generate, apply = engine.generate, engine.apply

    def spy_generate(request):
        seen[request.call_id] = request
        return generate(request)

    def spy_apply(decision):
        applied.append(decision)
        apply(decision)

    engine.generate, engine.apply = spy_generate, spy_apply

    async def go():
        client = InProcessClient([engine], time_scale=10_000.0)
        try:
            await client.open_program("p", review_spec(), tenant="acme")
            for call, n in ((CallRequest(program_id="p", call_id="p/draft", step="draft", prefixes=(), prompt_tokens=40,
                                         event_seq=1), 32), (review("p", SPAN), 4)):
                req = GenerateRequest(call_id=call.call_id, program_id="p", prompt_ids=tuple(range(call.prompt_tokens)),
                                      max_new_tokens=n, ignore_eos=True, reuse_namespace="acme/wf:review/p:p")
                route, _ = await client.run_call(call, req)
                assert route.reuse == seen[call.call_id].reuse
        finally:
            await client.close()

    anyio.run(go)
    assert seen["p/draft"].reuse == () and seen["p/review"].reuse == (hint("p", "acme/wf:review/p:p"),)
    assert applied and all(d.reuse == () for d in applied)  # never through apply()
