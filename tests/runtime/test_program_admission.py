"""Working-set admission: remaining work learned online, the plan, the budget's control, and the
scheduler holding a parked program's calls, on tiny exact cases."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agentflow.runtime.clock import ManualClock
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, ProgramArrived, ProgramFinished, WorkerUpdate,
)
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.policies import StaticCap, WorkingSet, WorkingSetConfig, make_policy
from agentflow.runtime.remaining_work import RemainingWork, RemainingWorkConfig
from agentflow.runtime.scheduler import Scheduler
from tests.runtime.helpers import coding_agent


# ---- remaining work ---------------------------------------------------------------------------
def test_remaining_calls_are_conditional_on_the_calls_done():
    rw = RemainingWork(RemainingWorkConfig(min_programs=3))
    for n in (2, 10, 30):
        assert rw.remaining_calls("wf", 0) is None  # not enough finished programs yet
        rw.program_finished("wf", n)
    assert rw.remaining_calls("wf", 0) == pytest.approx(14.0)  # mean(2, 10, 30) - 0
    assert rw.remaining_calls("wf", 5) == pytest.approx(15.0)  # mean(10, 30) - 5: the 2-call run is over
    assert rw.remaining_calls("wf", 12) == pytest.approx(18.0)  # only the 30-call run is that long
    assert rw.remaining_calls("wf", 40) == 1.0  # outlived every finished run: one more call
    assert rw.remaining_calls("other", 0) is None


def test_growth_is_a_running_mean_then_an_exponential_average():
    rw = RemainingWork(RemainingWorkConfig(growth_smoothing=0.5))
    assert rw.growth_per_call("wf") is None
    rw.observe_growth("wf", 100)
    assert rw.growth_per_call("wf") == 100.0
    rw.observe_growth("wf", 300)  # mean of two
    assert rw.growth_per_call("wf") == 200.0
    rw.observe_growth("wf", 0)  # weight max(0.5, 1/3) = 0.5
    assert rw.growth_per_call("wf") == 100.0
    rw.observe_growth("wf", -50)  # a context cannot shrink below nothing added
    assert rw.growth_per_call("wf") == 50.0


def test_remaining_work_memory_is_bounded():
    rw = RemainingWork(RemainingWorkConfig(min_programs=1, max_samples=3, max_workflows=2))
    for n in (100, 1, 1, 1):
        rw.program_finished("a", n)
    assert rw.num_finished("a") == 3 and rw.remaining_calls("a", 0) == 1.0  # the 100 fell out
    rw.program_finished("b", 5)
    rw.program_finished("c", 5)  # a third workflow: the least recently seen ("a") is forgotten
    assert rw.num_finished("a") == 0 and rw.num_finished("b") == 1


def test_bad_remaining_work_input_is_refused():
    with pytest.raises(ValueError, match="num_calls"):
        RemainingWork().program_finished("wf", -1)


# ---- the budget's control -----------------------------------------------------------------------
@pytest.mark.parametrize("fault, head, active, expected", [
    (0.30, 300.0, 800.0, 760.0),  # faulting: shrink from what is active (800 x 0.95), not from the budget
    (0.30, 300.0, 5000.0, 950.0),  # faulting, active above the budget: shrink the budget (1000 x 0.95)
    (0.03, 300.0, 900.0, 1030.0),  # quiet, the budget holds the head back (900 + 300 > 1000): grow 3%
    (0.01, 300.0, 900.0, 1100.0),  # ... and hardly faulting (< 0.05 / 4): grow 10%
    (0.01, 300.0, 500.0, 1000.0),  # quiet, but the head fits (500 + 300): unchanged
    (0.01, None, 900.0, 1000.0),  # quiet, nobody waits: unchanged
    (0.10, 300.0, 900.0, 1000.0),  # between the thresholds: unchanged
    (0.50, 300.0, 10.0, 100.0),  # never below floor x pool (0.1 x 1000)
])
def test_next_budget(fault, head, active, expected):
    ws = WorkingSet(WorkingSetConfig())
    got = ws.next_budget(1000.0, fault_share=fault, waiting_tokens=head, pool_tokens=1000.0, active_tokens=active)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("fault, stall, expected", [
    (0.01, 0.30, 855.0),  # hardly faulting, but active programs stall 30% of the time: shrink (900 x 0.95)
    (0.01, 0.10, 1000.0),  # stalls between the thresholds hold the budget
    (0.01, 0.02, 1030.0),  # neither faults nor stalls: grow (not x 1.10: stalls above a quarter of 0.05)
])
def test_stalls_count_as_faults(fault, stall, expected):
    ws = WorkingSet(WorkingSetConfig())
    got = ws.next_budget(1000.0, fault_share=fault, stall_share=stall, waiting_tokens=300.0, pool_tokens=1000.0,
                         active_tokens=900.0)
    assert got == pytest.approx(expected)


def test_working_set_config_is_checked():
    with pytest.raises(ValueError, match="fault_share_low"):
        WorkingSetConfig(fault_share_low=0.2, fault_share_high=0.1)
    with pytest.raises(ValueError, match="shrink"):
        WorkingSetConfig(grow=0.9)
    with pytest.raises(ValueError, match="max_active"):
        StaticCap(0)


# ---- the scheduler holds parked programs' calls ------------------------------------------------
def _sched(programs, capacity=10_000):
    clock = ManualClock()
    sched = Scheduler(replace(make_policy("agentflow"), programs=programs), clock=clock)
    sched.apply(WorkerUpdate(worker="w0", kv_capacity_tokens=capacity))
    return sched, clock


def _call(sched, pid, n, prompt):
    cid = f"{pid}#{n}"
    sched.apply(CallSubmitted(program_id=pid, call_id=cid, step="think", prefixes=(), prompt_tokens=prompt,
                              expected_output_tokens=100))
    return cid


def test_a_static_cap_holds_the_third_program_until_one_finishes():
    sched, clock = _sched(StaticCap(2))
    g = coding_agent()
    for pid in ("a", "b", "c"):
        sched.apply(ProgramArrived(program_id=pid, graph=g))
        _call(sched, pid, 0, 500)
    d = sched.step()
    assert d.activated == ("a", "b")
    assert [r.call_id for r in d.routes] == ["a#0", "b#0"]  # c's call is held: no route, not admitted
    assert "c#0" not in d.admit and list(sched.parked) == ["c"]
    sched.apply(CallStarted(call_id="a#0", worker="w0"))
    sched.apply(CallFinished(call_id="a#0", worker="w0", output_tokens=100))
    sched.apply(ProgramFinished(program_id="a"))
    d = sched.step()
    assert d.activated == ("c",) and [r.call_id for r in d.routes] == ["c#0"] and "c#0" in d.admit


def test_working_set_slow_start_then_sizes_programs_by_their_projected_footprint():
    ws = WorkingSet(WorkingSetConfig())
    sched, clock = _sched(ws, capacity=7_000)
    g = coding_agent()
    for pid in ("a", "b", "c"):
        sched.apply(ProgramArrived(program_id=pid, graph=g))
        _call(sched, pid, 0, 1_000)
    # nothing is known of the workflow's growth: one program at a time
    assert sched.step().activated == ("a",)
    sched.apply(CallStarted(call_id="a#0", worker="w0", gpu_hit_tokens=0, host_hit_tokens=0))
    sched.apply(CallFinished(call_id="a#0", worker="w0", output_tokens=100))  # coder's context: 1,100
    assert sched.step().activated == ()
    _call(sched, "a", 1, 1_500)  # 400 tokens of tool output came in
    sched.apply(CallStarted(call_id="a#1", worker="w0", gpu_hit_tokens=1_100, host_hit_tokens=0))
    sched.apply(CallFinished(call_id="a#1", worker="w0", output_tokens=100))  # growth 1,500 - 1,100 + 100 = 500
    snap = sched.snapshot()
    assert snap.remaining.growth_per_call(g.name) == 500.0
    # footprint = context now (+ a held call's prompt and expected output) + half of 500 x the graph's
    # expected remaining calls (5: too few programs have finished to learn them): the mean context
    # over the rest of the program's life
    from agentflow.runtime.policies import footprint_tokens
    assert snap.index.estimate("a").remaining_calls == 5.0 and snap.remaining.remaining_calls(g.name, 2) is None
    assert footprint_tokens(snap, snap.programs["a"], 0.5) == 1_600 + 0.5 * 500 * 5
    assert footprint_tokens(snap, snap.programs["b"], 0.5) == 1_000 + 100 + 0.5 * 500 * 5
    assert footprint_tokens(snap, snap.programs["b"]) == 1_000 + 100 + 500 * 5  # the final context
    d = sched.step()  # 2,850 + 2,350 fits the 7,000-token budget; + 2,350 more would not
    assert d.activated == ("b",) and sched.budget_tokens == 7_000 and list(sched.parked) == ["c"]


def test_faults_are_counted_from_the_deepest_prefix_an_engine_had_held():
    sched, clock = _sched(StaticCap(5))
    sched.apply(WorkerUpdate(worker="w0", kv_capacity_tokens=10_000, prefill_tokens_per_s=1_000.0,
                             h2d_tokens_per_s=10_000.0))
    g = coding_agent()
    sys_ref = PrefixRef(key="sys", parent=None, num_tokens=500)
    hist = PrefixRef(key="h1", parent="sys", num_tokens=1_200)
    sched.apply(ProgramArrived(program_id="a", graph=g))
    sched.apply(CallSubmitted(program_id="a", call_id="a#0", step="think", prefixes=(sys_ref,), prompt_tokens=1_000))
    sched.step()
    sched.apply(CallStarted(call_id="a#0", worker="w0", gpu_hit_tokens=0, host_hit_tokens=0))
    assert sched.faults["fault_tokens"] == 0  # nothing had been held before: no fault
    sched.apply(CallFinished(call_id="a#0", worker="w0", output_tokens=200, cached=(sys_ref, hist)))
    sched.apply(CallSubmitted(program_id="a", call_id="a#1", step="think", prefixes=(sys_ref, hist),
                              prompt_tokens=1_600))
    sched.step()
    # of the 1,200 held before: 300 still on the GPU, 500 loaded back from host, 400 prefilled again
    sched.apply(CallStarted(call_id="a#1", worker="w0", gpu_hit_tokens=300, host_hit_tokens=500))
    assert sched.faults["fault_tokens"] == 400 and sched.faults["reload_tokens"] == 500
    assert sched.faults["fault_s"] == pytest.approx(400 / 1_000 + 500 / 10_000)
    # a prompt that starts a new conversation (no prefix held before) faults on nothing
    sched.apply(CallFinished(call_id="a#1", worker="w0", output_tokens=100))
    sched.apply(CallSubmitted(program_id="a", call_id="a#2", step="think",
                              prefixes=(PrefixRef(key="new", parent=None, num_tokens=900),), prompt_tokens=1_000))
    sched.step()
    sched.apply(CallStarted(call_id="a#2", worker="w0", gpu_hit_tokens=0, host_hit_tokens=0))
    assert sched.faults["fault_tokens"] == 400


def test_an_engine_that_runs_a_held_call_makes_its_program_active():
    sched, clock = _sched(StaticCap(1))
    g = coding_agent()
    for pid in ("a", "b"):
        sched.apply(ProgramArrived(program_id=pid, graph=g))
        _call(sched, pid, 0, 500)
    assert sched.step().activated == ("a",)
    sched.apply(CallStarted(call_id="b#0", worker="w0"))  # not routed, run anyway
    assert not sched.parked and sched.programs["b"].active
    assert "b#0" not in sched.waiting  # started: nothing to admit


def test_a_later_call_that_waits_for_the_engine_is_a_stall_the_first_is_not():
    sched, clock = _sched(StaticCap(5))
    g = coding_agent()
    sched.apply(ProgramArrived(program_id="a", graph=g))
    _call(sched, "a", 0, 500)
    sched.step()
    clock.advance(7.0)  # the first call waits 7 s: the program's start, not a stall
    sched.apply(CallStarted(call_id="a#0", worker="w0"))
    sched.apply(CallFinished(call_id="a#0", worker="w0", output_tokens=100))
    assert sched.faults["stall_s"] == 0.0
    _call(sched, "a", 1, 900)
    sched.step()
    clock.advance(2.5)
    sched.apply(CallStarted(call_id="a#1", worker="w0"))
    assert sched.faults["stall_s"] == 2.5


def test_remaining_work_learns_from_finished_programs_not_cancelled_ones():
    sched, clock = _sched(StaticCap(5))
    g = coding_agent()
    for pid in ("done", "cut"):
        sched.apply(ProgramArrived(program_id=pid, graph=g))
        _call(sched, pid, 0, 500)
        sched.step()
        sched.apply(CallStarted(call_id=f"{pid}#0", worker="w0"))
        sched.apply(CallFinished(call_id=f"{pid}#0", worker="w0", output_tokens=100))
    sched.apply(ProgramFinished(program_id="done"))
    sched.apply(ProgramFinished(program_id="cut", cancelled=True))
    assert sched.remaining.num_finished(g.name) == 1


def test_a_call_waiting_past_the_bound_goes_ahead_of_pinned_and_older_programs():
    from agentflow.runtime.policies import ProgramFcfs
    from agentflow.runtime.policies.admission import OVERDUE
    clock = ManualClock()
    pol = replace(make_policy("agentflow"), programs=StaticCap(5), admission=ProgramFcfs(max_wait_s=10.0))
    sched = Scheduler(pol, clock=clock)
    sched.apply(WorkerUpdate(worker="w0", kv_capacity_tokens=10_000))
    g = coding_agent()
    for pid in ("old", "young"):
        sched.apply(ProgramArrived(program_id=pid, graph=g))
        clock.advance(1.0)
    _call(sched, "young", 0, 500)
    clock.advance(1.0)
    _call(sched, "old", 0, 500)
    assert sched.step().admit == ("old#0", "young#0")  # program FCFS: the older program first
    clock.advance(9.5)  # young#0 has waited 10.5 s, old#0 9.5 s
    d = sched.step()
    assert d.admit == ("young#0", "old#0")
    assert sched.policy.admission.order(sched.snapshot(), 10) == ["young#0", "old#0"]  # the reference agrees
    assert sched._queue._live["young#0"][0][0] == OVERDUE
    with pytest.raises(ValueError, match="max_wait_s"):
        ProgramFcfs(max_wait_s=0)
