"""The front door's pure parts on tiny cases: hints, program inference, agent naming, the learner."""

from __future__ import annotations

import pytest

from agentflow.runtime.frontdoor.conversation import ProgramTracker, TrackerLimits
from agentflow.runtime.frontdoor.hints import HintError, parse_hints
from agentflow.runtime.frontdoor.learner import END, START, AgentNamer, GraphLearner
from agentflow.runtime.frontdoor.render import parse_tool_calls, render_messages


@pytest.mark.parametrize("body, headers, want", [
    ({}, {}, dict(program_id=None, source="none", last_step=False)),
    ({"agentflow": {"program_id": "p", "last_step": True}}, {}, dict(program_id="p", source="agentflow", last_step=True)),
    ({}, {"x-agentflow-program-id": "h", "x-agentflow-last-step": "0"}, dict(program_id="h", source="header")),
    ({"agentflow": {"program_id": "b"}}, {"x-agentflow-program-id": "h"}, dict(program_id="b", source="agentflow")),
    ({"job_id": 42, "is_last_step": True}, {}, dict(program_id="42", source="continuum", last_step=True)),
    ({"job_id": "j", "session_id": "s"}, {}, dict(program_id="j", source="continuum")),
    ({"session_id": "s"}, {}, dict(program_id="s", source="sglang")),
    ({"nvext": {"agent_hints": {"priority": 3, "osl": 9}}}, {}, dict(priority=3, unknown_keys=1)),
    ({"agentflow": {"agent": "a", "x": 1}}, {"x-agentflow-colour": "red"}, dict(agent="a", unknown_keys=2)),
])
def test_hints(body, headers, want):
    h = parse_hints(body, headers)
    for k, v in want.items():
        assert getattr(h, k) == v, k


@pytest.mark.parametrize("body, field", [
    ({"agentflow": []}, "agentflow"),
    ({"agentflow": {"step": ""}}, "agentflow.step"),
    ({"agentflow": {"agent": "a" * 257}}, "agentflow.agent"),
    ({"agentflow": {"workflow": "w\n"}}, "agentflow.workflow"),
    ({"is_last_step": "maybe"}, "is_last_step"),
    ({"agent_hints": {"priority": 1.5}}, "agent_hints.priority"),
    ({"nvext": {"agent_hints": 3}}, "nvext.agent_hints"),
])
def test_bad_hints_name_the_field(body, field):
    with pytest.raises(HintError) as e:
        parse_hints(body, {})
    assert e.value.field == field


def _turn(msgs, answer):
    return msgs + [{"role": "assistant", "content": answer}]


def test_tracker_joins_continuations_quotes_and_extensions_not_reruns():
    t = ProgramTracker()
    sys_u = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}]
    p, _ = t.open(None, tenant="t", now_s=0.0)
    t.answered(p, sys_u, {"role": "assistant", "content": "a1", "tool_calls": None})
    assert t.find("t", _turn(sys_u, "a1") + [{"role": "user", "content": "u2"}]) == p.program_id  # continues
    assert t.find("x", _turn(sys_u, "a1") + [{"role": "user", "content": "u2"}]) is None  # another tenant
    assert t.find("t", sys_u + [{"role": "user", "content": "cut off, again"}]) == p.program_id  # extends
    assert t.find("t", sys_u) is None  # a rerun of the same request starts anew
    long = "a long enough answer to be quoted by the next agent"
    t.answered(p, sys_u + [{"role": "user", "content": "u3"}], {"role": "assistant", "content": long})
    assert t.find("t", [{"role": "system", "content": "other agent"}, {"role": "user", "content": long}]) == p.program_id
    # an echo re-serialised with other JSON spacing still matches
    call = {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": '{"path": "."}'}}
    t.answered(p, sys_u + [{"role": "user", "content": "u4"}], {"role": "assistant", "content": None, "tool_calls": [call]})
    echo = dict(call, function={"name": "ls", "arguments": '{"path":"."}'})
    nxt = sys_u + [{"role": "user", "content": "u4"}, {"role": "assistant", "content": "", "tool_calls": [echo]},
                   {"role": "tool", "tool_call_id": "c1", "content": "x"}]
    assert t.find("t", nxt) == p.program_id


def test_tracker_expires_idle_programs_and_bounds_them():
    t = ProgramTracker(TrackerLimits(idle_s=10.0, max_programs=2, max_keys=4))
    a, _ = t.open(None, tenant="t", now_s=0.0)
    b, _ = t.open(None, tenant="t", now_s=5.0)
    b.in_flight = 1
    assert t.expired(11.0) == [a]  # idle; b has a call in flight
    b.in_flight = 0
    c, _ = t.open(None, tenant="t", now_s=12.0)
    d, _ = t.open(None, tenant="t", now_s=12.0)
    assert [p.program_id for p in t.expired(12.0)] == [b.program_id]  # over the bound: least recent first
    for i in range(10):
        t.answered(c, [{"role": "user", "content": f"m{i}"}] * 2, {"role": "assistant", "content": "x"})
    assert len(t._keys) <= 2 and len(t._requests) <= 2


def test_agent_names_keep_what_recurs_across_programs():
    n = AgentNamer()
    first = n.name("background\n\nrole: coder\n\ntask 1", "p1")
    second = n.name("background\n\nrole: coder\n\ntask 2", "p2")
    third = n.name("background\n\nrole: coder\n\ntask 3", "p3")
    reviewer = n.name("background\n\nrole: reviewer\n\ntask 3", "p3")
    assert first != second == third != reviewer
    assert n.name("", "p1") == "default"


def test_learner_counts_transitions_and_steps_to_execution():
    lr = GraphLearner()
    for _ in range(2):
        prev = None
        for a in ("plan", "code", "code", "review"):
            lr.call("c", prev, a)
            prev = a
        lr.program_done("c", prev, 4)
    lr.tool_gap("c", "bash", 2.0)
    lr.tool_gap("c", "bash", 4.0)
    (snap,) = lr.snapshot("c")
    assert {(t["from"], t["to"]): t["count"] for t in snap["transitions"]} == {
        (START, "plan"): 2, ("plan", "code"): 2, ("code", "code"): 2, ("code", "review"): 2, ("review", END): 2}
    assert snap["steps_to_execution"] == {"plan": 1.0, "code": 2.0, "review": 4.0}
    assert snap["tool_gaps"]["bash"] == {"n": 2, "mean_s": 3.0, "max_s": 4.0}
    plan = lr.plan("c")
    assert plan.step_of("code") == "llm:code" and plan.step_of("never-seen") == "llm:other"
    assert lr.plan("c") is plan  # cached until the agents or the call count's power of two change
    lr.call("c", None, "plan")
    assert lr.plan("c") is plan


def test_tool_calls_render_and_parse():
    tools = [{"type": "function", "function": {"name": "ls"}}]
    out = render_messages([{"role": "developer", "content": "be brief"},
                           {"role": "assistant", "content": None, "tool_calls": [
                               {"id": "1", "function": {"name": "ls", "arguments": '{"p": 1}'}}]}], tools)
    assert out[0]["role"] == "system" and "<tools>" in out[0]["content"]
    assert out[1]["content"] == '<tool_call>{"name": "ls", "arguments": {"p": 1}}</tool_call>'
    content, calls = parse_tool_calls('ok <tool_call>{"name": "ls", "arguments": {"p": 2}}</tool_call>', "")
    assert content == "ok" and calls[0]["function"] == {"name": "ls", "arguments": '{"p": 2}'}
    prefix = '<tool_call>{"name": "ls", "arguments": '
    _, calls = parse_tool_calls('{"p": "}"}} trailing', prefix)
    assert calls[0]["function"]["arguments"] == '{"p": "}"}'


def test_the_link_cache_gives_the_chain_it_saves():
    from agentflow.runtime.frontdoor.conversation import LinkCache, chain

    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                    "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}]
    cache = LinkCache(max_entries=4)
    first = chain("t", msgs, cache)
    assert first == chain("t", msgs)  # the same links as without the cache
    assert chain("t", msgs, cache) == first and cache.hits == 2  # the two plain messages, from the cache
    # another tenant's seed, or another text, is another chain
    assert chain("u", msgs, cache)[0] != first[0]
    assert chain("t", [msgs[0], {"role": "user", "content": "hj"}], cache)[1] != first[1]
    for i in range(10):  # bounded
        chain("t", [{"role": "user", "content": f"m{i}"}], cache)
    assert len(cache._links) <= 4
