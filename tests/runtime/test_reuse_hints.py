"""Cross-agent reuse through the scheduler: CallSubmitted.input_spans -> exact hints in the Decision.

A real Scheduler with a manual clock, fed the events an executor sends; the hints are pinned
exactly (source call, offsets, length, namespace, key) on tiny cases."""

from __future__ import annotations

from agentflow import Workflow
from agentflow.runtime.clock import ManualClock
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, ProgramArrived, ProgramFinished, WorkerUpdate,
)
from agentflow.runtime.policies import make_policy
from agentflow.runtime.reuse_plan import InputSpan, ReuseHint, call_segment_key
from agentflow.runtime.scheduler import Scheduler


def debate():
    """Two solvers, then a judge whose prompt holds both answers (one via the template, one via inputs)."""
    wf = Workflow("debate")
    for a in ("s1", "s2", "judge"):
        wf.agent(a, system_prompt=f"You are {a}.")
    wf.llm("solve1", agent="s1", prompt="Solve {task}")
    wf.llm("solve2", agent="s2", prompt="Solve {task}")
    wf.llm("judge", agent="judge", prompt="First: {steps.solve1}", inputs=["solve2"])
    wf.sequence("solve1", "solve2", "judge")
    return wf.compile().graph


def sched():
    s = Scheduler(make_policy("agentflow"), clock=ManualClock())
    s.apply(WorkerUpdate(worker="w0", kv_capacity_tokens=100_000))
    return s


def run_call(s, pid, cid, step, *, out=20, prompt=100, spans=()):
    s.apply(CallSubmitted(program_id=pid, call_id=cid, step=step, prefixes=(), prompt_tokens=prompt,
                          input_spans=tuple(spans)))
    d = s.step()
    s.apply(CallStarted(call_id=cid, worker="w0"))
    s.apply(CallFinished(call_id=cid, worker="w0", output_tokens=out))
    return d


SPANS = (InputSpan(source_step="solve1", target_offset=30, num_tokens=20),
         InputSpan(source_step="solve2", target_offset=60, num_tokens=18, source_offset=1))


def test_spans_become_exact_hints_in_the_decision_of_the_submission():
    s, g = sched(), debate()
    s.apply(ProgramArrived(program_id="p1", graph=g, tenant="acme"))
    run_call(s, "p1", "c1", "solve1", out=20)
    run_call(s, "p1", "c2", "solve2", out=19)
    s.apply(CallSubmitted(program_id="p1", call_id="c3", step="judge", prefixes=(), prompt_tokens=100,
                          input_spans=SPANS))
    d = s.step()
    ns = "acme/wf:debate/p:p1"
    assert d.reuse == (
        ReuseHint(key=call_segment_key(ns, "c1", 0, 20), namespace=ns, kind="solve1->judge", source_call_id="c1",
                  source_step="solve1", target_offset=30, num_tokens=20, source_offset=0, target_call_id="c3"),
        ReuseHint(key=call_segment_key(ns, "c2", 1, 18), namespace=ns, kind="solve2->judge", source_call_id="c2",
                  source_step="solve2", target_offset=60, num_tokens=18, source_offset=1, target_call_id="c3"),
    )
    assert not d.empty
    assert d.to_dict()["reuse"][0] == {"key": call_segment_key(ns, "c1", 0, 20), "namespace": ns,
                                       "kind": "solve1->judge", "source_call_id": "c1", "source_step": "solve1",
                                       "target_offset": 30, "num_tokens": 20, "source_offset": 0,
                                       "target_call_id": "c3"}
    assert s.step().reuse == ()  # each call is planned once, at submission


def test_another_programs_call_is_never_a_source():
    s, g = sched(), debate()
    for pid in ("p1", "p2"):
        s.apply(ProgramArrived(program_id=pid, graph=g, share_kv_across_programs=True))
    run_call(s, "p1", "a1", "solve1")
    run_call(s, "p1", "a2", "solve2")
    run_call(s, "p2", "b1", "solve1")  # p2's solve2 has not run
    d = run_call(s, "p2", "b3", "judge", spans=SPANS)
    assert [(h.source_call_id, h.namespace) for h in d.reuse] == [("b1", "default/wf:debate")]


def test_a_span_overlapping_an_earlier_one_is_dropped_and_the_latest_call_of_a_step_is_the_source():
    s, g = sched(), debate()
    s.apply(ProgramArrived(program_id="p1", graph=g))
    run_call(s, "p1", "c1", "solve1")
    run_call(s, "p1", "c2", "solve1")  # the step ran again: its newest output is what the prompt holds
    run_call(s, "p1", "c3", "solve2")
    spans = (InputSpan(source_step="solve1", target_offset=30, num_tokens=20),
             InputSpan(source_step="solve2", target_offset=45, num_tokens=12))  # starts inside the first
    d = run_call(s, "p1", "c4", "judge", spans=spans)
    assert [(h.source_call_id, h.target_offset) for h in d.reuse] == [("c2", 30)]


def test_a_finished_programs_calls_are_forgotten():
    s, g = sched(), debate()
    s.apply(ProgramArrived(program_id="p1", graph=g))
    run_call(s, "p1", "c1", "solve1")
    s.apply(CallSubmitted(program_id="p1", call_id="c2", step="solve2", prefixes=(), prompt_tokens=10))
    assert (s.reuse.num_programs, s.reuse.num_pending_calls) == (1, 1)
    s.apply(ProgramFinished(program_id="p1", cancelled=True))
    assert (s.reuse.num_programs, s.reuse.num_pending_calls) == (0, 0)
    # the same id arriving again is a new program: nothing of the old one is a source
    s.apply(ProgramArrived(program_id="p1", graph=g))
    assert run_call(s, "p1", "c9", "judge", spans=SPANS).reuse == ()


def test_no_spans_or_a_step_without_inputs_gives_no_hints():
    s, g = sched(), debate()
    s.apply(ProgramArrived(program_id="p1", graph=g))
    run_call(s, "p1", "c1", "solve1")
    assert run_call(s, "p1", "c2", "judge").reuse == ()  # no spans: nothing measured, nothing hinted
    assert run_call(s, "p1", "c3", "solve2", spans=SPANS).reuse == ()  # solve2 reads no step
