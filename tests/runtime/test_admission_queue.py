"""The incremental admission order: exact on tiny cases, and equal to the policies' own order."""

from __future__ import annotations

from agentflow.graph.model import StepKind
from agentflow.runtime.admission_queue import AdmissionQueue
from agentflow.runtime.clock import ManualClock
from agentflow.runtime.events import CallFinished, CallStarted, CallSubmitted, ProgramArrived, ProgramFinished
from agentflow.runtime.policies import FairShareConfig, make_policy
from agentflow.runtime.scheduler import Scheduler
from tests.runtime.helpers import coding_agent


def test_smallest_key_first_and_ties_in_the_order_calls_started_waiting():
    q = AdmissionQueue()
    q.push("a", (2,))
    q.push("b", (1,))
    q.push("c", (2,))
    q.push("d", (1,))
    assert q.first(10) == ["b", "d", "a", "c"]
    assert q.first(2) == ["b", "d"]
    assert q.first(10) == ["b", "d", "a", "c"]  # reading the order does not consume it


def test_discarded_calls_leave_and_a_pushed_again_call_goes_behind_its_equals():
    q = AdmissionQueue()
    for c in "abc":
        q.push(c, ())
    q.discard("a")
    q.discard("zzz")  # not waiting: nothing happens
    assert q.first(10) == ["b", "c"] and len(q) == 2 and "a" not in q
    q.push("a", ())  # waits again (a call re-queued after its worker was lost)
    assert q.first(10) == ["b", "c", "a"]


def test_rekey_moves_a_call_but_keeps_its_place_among_equal_keys():
    q = AdmissionQueue()
    q.push("a", (5,))
    q.push("b", (3,))
    q.push("c", (3,))
    q.rekey("a", (3,))  # now equal to b and c, and it started waiting first
    assert q.first(10) == ["a", "b", "c"]
    q.rekey("a", (3,))  # unchanged: nothing happens
    q.rekey("b", (9,))
    assert q.first(10) == ["a", "c", "b"]


def test_thousands_in_and_out_leave_exactly_the_waiting_ones():
    q = AdmissionQueue()
    for i in range(5000):
        q.push(i, (i % 7,))
    for i in range(4990):
        q.discard(i)
    assert len(q) == 10 and len(q._order) == 10
    assert q.first(3) == [4991, 4998, 4992]  # keys 0, 0, 1 (4991 = 7 x 713)



def test_fair_share_rekeys_a_programs_waiting_calls_when_one_of_its_calls_finishes():
    """Two programs; "big" has one call running and one waiting: when the running one finishes,
    big's attained service grows and its waiting call falls behind "small"'s, as the
    from-scratch order says."""
    clock = ManualClock()
    sched = Scheduler(make_policy("agentflow", fair_share=FairShareConfig(aging_tokens_per_s=1.0)), clock=clock)
    g = coding_agent()
    llm = next(n.name for n in g.steps.values() if n.kind is StepKind.LLM)
    for pid in ("big", "small"):
        sched.apply(ProgramArrived(program_id=pid, graph=g))
    sched.apply(CallSubmitted(program_id="big", call_id="b1", step=llm, prefixes=(), prompt_tokens=100))
    sched.apply(CallStarted(call_id="b1", worker="w"))
    clock.advance(1.0)
    sched.apply(CallSubmitted(program_id="big", call_id="b2", step=llm, prefixes=(), prompt_tokens=100))
    sched.apply(CallSubmitted(program_id="small", call_id="s1", step=llm, prefixes=(), prompt_tokens=100))
    assert sched.step().admit == ("b2", "s1")  # both programs at 0 tokens served: b2 waited longest
    sched.apply(CallFinished(call_id="b1", worker="w", output_tokens=400))  # big: 500 tokens served
    d = sched.step()
    assert d.admit == ("s1", "b2")
    assert list(d.admit) == sched.policy.admission.order(sched.snapshot(), 64)
    sched.apply(ProgramFinished(program_id="small", cancelled=True))
    assert sched.step().admit == ("b2",)
