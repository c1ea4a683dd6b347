"""The scheduler on tiny configurations: exact pins, priorities, prefetches and admission orders."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from agentflow.runtime.clock import ManualClock
from agentflow.runtime.decision import MAX_PRIORITY, UnpinReason, priority_of_steps
from agentflow.runtime.events import CallSubmitted, PrefixMoved, ProgramFinished, WorkerLost, WorkerUpdate
from agentflow.runtime.policies import AdmitAll, make_policy
from agentflow.runtime.scheduler import Scheduler, SchedulerConfig, SchedulerError
from tests.runtime.helpers import Driver, coding_agent, system_prefix


def setup(policy="agentflow", **kw):
    """`agentflow-all`: the agentflow preset with every program active at once (no working set), for
    tests of pins, priorities and orders among programs that run together."""
    clock = ManualClock()
    pol = (replace(make_policy("agentflow"), programs=AdmitAll()) if policy == "agentflow-all"
           else make_policy(policy))
    sched = Scheduler(pol, clock=clock, config=SchedulerConfig(**kw))
    return sched, clock, Driver(sched, clock)


def test_priorities_follow_steps_to_execution_and_are_sent_as_deltas():
    sched, clock, d = setup()
    g = coding_agent()
    d.arrive(1, g)
    d.call(1, g, "think")
    first = sched.step()
    by = {p.prefix: p for p in first.priorities}
    hist = d.deepest(1, "coder").key
    assert by["swe/coder:sys"].steps_to_execution == 0 and by[hist].steps_to_execution == 0
    assert by[hist].priority == MAX_PRIORITY
    d.tool(1, "act")
    second = sched.step()
    assert {p.prefix: p.steps_to_execution for p in second.priorities} == {"swe/coder:sys": 1, hist: 1}
    assert sched.step().priorities == ()  # nothing moved: nothing sent


def test_a_shared_prefix_is_as_urgent_as_its_most_urgent_user():
    sched, clock, d = setup()
    g = coding_agent()
    for pid in (1, 2):
        d.arrive(pid, g)
        d.call(pid, g, "think")
    d.tool(1, "act")
    d.tool(2, "act")
    sched.step()
    d.call(2, g, "think", finish=False)  # program 2's coder speaks again
    dec = sched.step()
    steps = {p.prefix: p.steps_to_execution for p in dec.priorities}
    assert steps["swe/coder:sys"] == 0  # program 2 needs it now, program 1 in one step
    assert d.deepest(1, "coder").key not in steps  # program 1's own history did not move


def test_an_agent_that_never_runs_again_gets_priority_zero():
    sched, clock, d = setup()
    g = coding_agent(max_iterations=2, expected=1.5)
    d.arrive(1, g)
    d.call(1, g, "think")
    d.tool(1, "act")
    sched.step()
    d.tool_done(1, "act", 1.0)
    d.call(1, g, "think")
    d.tool(1, "act")  # second and last iteration: the coder is done after this
    dec = sched.step()
    steps = {p.prefix: p.steps_to_execution for p in dec.priorities}
    assert math.isinf(steps[d.deepest(1, "coder").key])
    assert {p.prefix: p.priority for p in dec.priorities}[d.deepest(1, "coder").key] == 0
    assert priority_of_steps(0) > priority_of_steps(1) > priority_of_steps(40) > priority_of_steps(math.inf) == 0


def test_pin_at_a_tool_call_ends_at_the_next_call():
    sched, clock, d = setup()
    g = coding_agent()
    d.arrive(1, g)
    d.call(1, g, "think")
    d.tool(1, "act")
    dec = sched.step()
    (pin,) = dec.pins
    assert pin.prefix == d.deepest(1, "coder").key and pin.program_id == 1
    # prior for bash: the hint 2 s, log-normal quantiles; the benefit dwarfs the holding cost,
    # so the TTL covers the largest prior quantile: 2 * e^1.534
    assert pin.ttl_s == pytest.approx(2.0 * math.exp(1.534))
    assert sched.pinned_tokens["w0"] == pin.num_tokens
    clock.advance(1.0)
    d.tool_done(1, "act", 1.0)
    d.call(1, g, "think", finish=False)
    dec = sched.step()
    assert [(u.prefix, u.reason) for u in dec.unpins] == [(pin.prefix, UnpinReason.NEXT_CALL)]
    assert sched.pinned_tokens["w0"] == 0


def test_pin_expires_at_its_ttl_within_one_step():
    sched, clock, d = setup()
    g = coding_agent()
    d.arrive(1, g)
    d.call(1, g, "think")
    d.tool(1, "act")
    (pin,) = sched.step().pins
    clock.set(pin.expires_at_s - 0.001)
    assert sched.step().unpins == ()
    clock.set(pin.expires_at_s)
    (unpin,) = sched.step().unpins
    assert unpin.reason is UnpinReason.TTL_EXPIRED
    assert sched.pins == {}


def test_ttl_is_learned_from_the_tool_durations():
    sched, clock, d = setup()
    g = coding_agent(max_iterations=50, expected=40)
    d.arrive(1, g)
    for i in range(25):  # 25 observed bash calls of 0.5 s: the tool's own distribution takes over
        d.call(1, g, "think")
        d.tool(1, "act")
        sched.step()
        d.tool_done(1, "act", 0.5)
    assert sched.tool_stats.source("bash") == "tool"
    d.call(1, g, "think")
    d.tool(1, "act")
    (pin,) = sched.step().pins
    assert pin.ttl_s == 0.5


def test_lru_and_kvflow_never_pin_continuum_pins_without_the_graph():
    for policy, pins in (("lru", 0), ("kvflow", 0), ("continuum", 1)):
        sched, clock, d = setup(policy)
        g = coding_agent(max_iterations=2, expected=1.5)
        d.arrive(1, g)
        d.call(1, g, "think")
        d.tool(1, "act")
        sched.step()
        d.tool_done(1, "act", 1.0)
        d.call(1, g, "think")
        d.tool(1, "act")  # the last iteration: the coder will not be back
        assert len(sched.step().pins) == pins, policy
    # agentflow knows the coder is done and does not hold its prefix
    sched, clock, d = setup("agentflow")
    d.arrive(1, g)
    d.call(1, g, "think")
    d.tool(1, "act")
    assert len(sched.step().pins) == 1
    d.tool_done(1, "act", 1.0)
    d.call(1, g, "think")
    d.tool(1, "act")
    assert sched.step().pins == ()


def _two_pins(first_tokens, second_tokens):
    clock = ManualClock()
    sched = Scheduler(make_policy("agentflow"), clock=clock, config=SchedulerConfig(pin_cap_share=0.05))
    d = Driver(sched, clock, capacity=100_000)  # cap: 5,000 pinned tokens
    g = coding_agent()
    d.arrive(1, g)
    d.call(1, g, "think", new_tokens=first_tokens)  # history: 1,000 + new + 100 output
    d.arrive(2, g)
    d.call(2, g, "think", new_tokens=second_tokens)
    d.tool(1, "act")
    (pin1,) = sched.step().pins
    d.tool(2, "act")
    return sched, sched.step()


def test_pins_never_exceed_the_cap_and_the_weaker_one_gives_way():
    # 1,600 + 4,100 tokens do not fit under 5,000. The bigger prefix is worth more to keep
    # (0.41 s of prefill vs 0.16 s, both near-certain to return within the prior's TTL).
    sched, dec = _two_pins(500, 3_000)
    (pin2,) = dec.pins
    assert pin2.program_id == 2
    assert [(u.program_id, u.reason) for u in dec.unpins] == [(1, UnpinReason.PRESSURE)]
    assert sched.pinned_tokens["w0"] == pin2.num_tokens == 4_100


def test_a_pin_worth_less_than_those_in_place_is_not_made():
    sched, dec = _two_pins(3_000, 500)
    assert dec.pins == () and dec.unpins == ()
    assert sched.pinned_tokens["w0"] == 4_100 <= 5_000


def test_every_pin_ends_on_cancellation_and_on_worker_loss():
    sched, clock, d = setup()
    g = coding_agent()
    d.arrive(1, g)
    d.call(1, g, "think")
    d.tool(1, "act")
    sched.step()
    sched.apply(ProgramFinished(program_id=1, cancelled=True))
    assert [u.reason for u in sched.step().unpins] == [UnpinReason.CANCELLED]
    d.arrive(2, g)
    d.call(2, g, "think")
    d.tool(2, "act")
    sched.step()
    sched.apply(WorkerLost(worker="w0"))
    assert [u.reason for u in sched.step().unpins] == [UnpinReason.WORKER_LOST]
    assert sched.pins == {}


def test_prefetch_the_prefix_of_the_agent_due_next_from_host_memory():
    clock = ManualClock()
    sched = Scheduler(make_policy("agentflow"), clock=clock)
    d = Driver(sched, clock, h2d=50_000.0)
    g = coding_agent()
    d.arrive(1, g)
    d.call(1, g, "think")
    hist = d.deepest(1, "coder")
    sched.apply(PrefixMoved(worker="w0", key=hist.key, tier="host"))  # demoted by the engine
    d.tool(1, "act")
    dec = sched.step()
    (pre,) = dec.prefetches
    assert (pre.prefix, pre.worker, pre.num_tokens) == (hist.key, "w0", hist.num_tokens)
    # due when the bash call is expected to end: the prior's mean for a 2 s hint
    assert pre.deadline_s == pytest.approx(sched.tool_stats.mean_s("bash"))
    assert sched.step().prefetches == ()  # requested once


def test_program_fcfs_admits_the_older_program_first_and_call_fcfs_does_not():
    for policy, expected in (("agentflow-all", ["1:2", "2:1"]), ("lru", ["2:1", "1:2"])):
        sched, clock, d = setup(policy)
        g = coding_agent()
        d.arrive(1, g)
        d.call(1, g, "think")
        d.tool(1, "act")
        clock.advance(1.0)
        d.arrive(2, g)
        from agentflow.runtime.events import CallSubmitted
        from agentflow.runtime.prefixes import system_prefix

        sys_ref = system_prefix("swe", "coder", 1000)
        sched.apply(CallSubmitted(program_id=2, call_id="2:1", step="think", prefixes=(sys_ref,), prompt_tokens=1500))
        clock.advance(1.0)
        d.tool_done(1, "act", 2.0)
        sched.apply(CallSubmitted(program_id=1, call_id="1:2", step="think", prefixes=(sys_ref,), prompt_tokens=1500))
        dec = sched.step()
        assert list(dec.admit) == expected, policy


def test_decisions_are_deterministic_and_serialisable():
    def run():
        sched, clock, d = setup()
        g = coding_agent()
        out = []
        for pid in (1, 2, 3):
            d.arrive(pid, g)
            d.call(pid, g, "think")
            d.tool(pid, "act")
            clock.advance(0.5)
            out.append(sched.step().to_dict())
        return out

    a, b = run(), run()
    assert a == b
    import json

    json.dumps(a)  # plain data all the way down


def test_bad_events_are_errors_that_say_what_is_wrong():
    sched, clock, d = setup()
    g = coding_agent()
    with pytest.raises(SchedulerError, match="program 9 is not known"):
        d.tool(9, "act")
    d.arrive(1, g)
    with pytest.raises(SchedulerError, match="arrived twice"):
        d.arrive(1, g)
    with pytest.raises(SchedulerError, match="'act' is not an LLM step"):
        d.call(1, g, "act")
    with pytest.raises(SchedulerError, match="tier must be"):
        d.call(1, g, "think")
        sched.apply(PrefixMoved(worker="w0", key="swe/coder:sys", tier="disk"))


class _DictOracle:
    def __init__(self, next_use):
        self.next_use = next_use

    def next_use_at_s(self, key):
        return self.next_use.get(key, math.inf)


def test_belady_ranks_prefixes_by_their_next_use():
    oracle = _DictOracle({"swe/coder:sys": 5.0, "p1/coder:h1": 40.0})
    clock = ManualClock()
    sched = Scheduler(make_policy("belady", oracle=oracle), clock=clock)
    d = Driver(sched, clock)
    g = coding_agent()
    d.arrive(1, g)
    d.call(1, g, "think")
    pr = {p.prefix: p.priority for p in sched.step().priorities}
    assert pr["swe/coder:sys"] > pr["p1/coder:h1"] > 0  # sooner next use: kept longer
    with pytest.raises(ValueError, match="needs an .*oracle|reads the future"):
        make_policy("belady")


def test_fair_share_serves_the_least_served_program_but_ages_waiting_calls():
    from agentflow.runtime.events import CallSubmitted
    from agentflow.runtime.policies import FairShareConfig
    from agentflow.runtime.prefixes import system_prefix

    clock = ManualClock()
    sched = Scheduler(make_policy("agentflow", fair_share=FairShareConfig(aging_tokens_per_s=100.0)), clock=clock)
    d = Driver(sched, clock)
    g = coding_agent()
    d.arrive("big", g)
    for _ in range(3):  # "big" has been served 3 x 1,600 tokens
        d.call("big", g, "think")
        d.tool("big", "act")
        d.tool_done("big", "act", 0.1)
    d.arrive("new", g)
    sys_ref = system_prefix("swe", "coder", 1000)
    sched.apply(CallSubmitted(program_id="big", call_id="b", step="think", prefixes=(sys_ref,), prompt_tokens=1500))
    clock.advance(1.0)
    sched.apply(CallSubmitted(program_id="new", call_id="n", step="think", prefixes=(sys_ref,), prompt_tokens=1500))
    assert list(sched.step().admit) == ["n", "b"]  # the program with less service first
    # "big" was served 1,600 + 2,200 + 2,800 = 6,600 tokens; its waiting call ages at 100 tokens/s,
    # so after 66 s it overtakes a fresh call of "new" (which has 0)
    assert sched.programs["big"].attained_tokens == 6_600
    clock.advance(70.0)
    sched.apply(CallSubmitted(program_id="new", call_id="n2", step="think", prefixes=(sys_ref,), prompt_tokens=1500))
    order = list(sched.step().admit)
    assert order.index("b") < order.index("n2")


def test_a_pin_that_gives_way_in_the_step_that_made_it_reaches_no_engine():
    # Program 1 starts a tool (a pin is made in step 2 of the next decision); program 2's next call
    # heads the line and does not fit, so pins give way (step 4 of the same decision). The pin must
    # not go out with its own unpin: engines apply unpins first, and the pin would then outlive the
    # scheduler's record of it and hold its KV for ever (a replay at 34 programs in flight ended
    # with 390K of 419K tokens pinned on the worker and none in the scheduler).
    sched, clock, d = setup("agentflow-all")
    g = coding_agent()
    d.arrive(1, g)
    d.arrive(2, g)
    d.call(2, g, "think")
    d.call(1, g, "think")
    sched.step()
    d.tool(1, "act")
    prev = d.deepest(2, "coder")
    sched.apply(CallSubmitted(program_id=2, call_id="2:big", step="think",
                              prefixes=(system_prefix(g.name, "coder", 1_000), prev),
                              prompt_tokens=prev.num_tokens + 90_000, expected_output_tokens=100))
    sched.apply(WorkerUpdate(worker="w0", kv_capacity_tokens=100_000, kv_used_tokens=95_000))
    dec = sched.step()
    assert dec.admit[0] == "2:big"
    assert dec.pins == () and dec.unpins == () and sched.pins == {}
