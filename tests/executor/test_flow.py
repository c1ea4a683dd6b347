"""Control flow, state, prompts and streaming of real runs."""

from __future__ import annotations

import time

import anyio
import pytest

from agentflow import Workflow, when
from agentflow.runtime.executor import ProgramStatus

from .conftest import execute, sim


def _steps(result) -> list[str]:
    return [r.step for r in result.timeline]


def test_sequence_runs_llm_and_tool_steps_in_order(run1):
    calls = []

    def lookup(word: str) -> dict:
        calls.append(word)
        return {"found": word.upper()}

    wf = Workflow("seq")
    wf.agent("a", system_prompt="You answer.", tools=["lookup"])
    wf.tool("lookup", lookup)
    wf.llm("ask", agent="a", prompt="Question: {q}", expected_output_tokens=5)
    wf.call("look", tool="lookup", agent="a", args={"word": "{q}"})
    wf.llm("answer", agent="a", prompt="Found {found}", inputs=["look"], expected_output_tokens=7)
    wf.sequence("ask", "look", "answer")
    r = run1(wf, {"q": "kv"})
    assert r.status is ProgramStatus.COMPLETED and r.error is None
    assert _steps(r) == ["ask", "look", "answer"]
    assert calls == ["kv"]
    assert r.state == {"q": "kv", "found": "KV"}
    assert r.outputs["look"] == {"found": "KV"}
    assert [t.output_tokens for t in r.timeline if t.kind == "llm"] == [5, 7]
    assert len(r.outputs["ask"].split()) == 5 and r.text == r.outputs["answer"]
    ask, look, answer = r.timeline
    assert ask.end_s <= look.start_s <= look.end_s <= answer.start_s
    # the agent's second prompt extends its first prompt + answer: all of that is a cache hit
    assert answer.cached_tokens == ask.prompt_tokens + ask.output_tokens
    assert all(t.worker == "w0" for t in (ask, answer)) and look.worker is None


def test_prompt_holds_template_and_new_inputs_only():
    seen = []

    def reply(request, prompt_text):
        seen.append(prompt_text)
        return "ok"

    wf = Workflow("inputs")
    wf.agent("a", system_prompt="sys")
    wf.tool("t", _count)
    wf.llm("think", agent="a", prompt="Do {job}", inputs=["act"], expected_output_tokens=1)
    wf.call("act", tool="t", args={"n": "{n}"})
    wf.sequence("think", "act")
    wf.loop("act", back_to="think", max_iterations=3)
    (r,), _ = execute(wf, [{"job": "x", "n": 0}], engine=sim(reply=reply))
    assert r.ok and _steps(r) == ["think", "act"] * 3
    # the toy tokenizer keeps words and line breaks: each prompt is the whole conversation, the latest input once
    assert seen[0] == "sys Do x"
    assert seen[1] == 'sys Do x ok Do x\n\n[act]\n{"n": 1}'
    assert seen[2] == 'sys Do x ok Do x\n\n[act]\n{"n": 1} ok Do x\n\n[act]\n{"n": 2}'


def _count(n: int = 0) -> dict:
    return {"n": n + 1}


def test_tool_args_pass_values_and_templates():
    got = {}

    def tool(items, label, nested):
        got.update(items=items, label=label, nested=nested)
        return "done"

    wf = Workflow("args")
    wf.tool("t", tool)
    wf.call("c", tool="t", args={"items": "{xs}", "label": "n={n} {{x}}", "nested": {"k": ["{n}"]}})
    (r,), _ = execute(wf, [{"xs": [1, 2], "n": 3}])
    assert r.ok and got == {"items": [1, 2], "label": "n=3 {x}", "nested": {"k": [3]}}
    assert r.outputs["c"] == "done" and r.state == {"xs": [1, 2], "n": 3}


def test_missing_state_key_fails_the_program_and_names_it(run1):
    wf = Workflow("missing")
    wf.agent("a", system_prompt="s")
    wf.llm("x", agent="a", prompt="Do {task}")
    r = run1(wf, {})
    assert r.status is ProgramStatus.FAILED and "no 'task'" in r.error and "give it as an input" in r.error


def test_branch_follows_the_state(run1):
    wf = Workflow("branchy")
    wf.tool("set", _set_kind)
    wf.tool("mark", _mark)
    wf.call("decide", tool="set", args={"kind": "{kind}"})
    wf.call("big", tool="mark", args={"m": "big"})
    wf.call("small", tool="mark", args={"m": "small"})
    wf.call("other", tool="mark", args={"m": "other"})
    wf.branch("decide", {"big": when("kind", "eq", "B"), "small": when("kind", "eq", "S")}, default="other")
    for kind, path in (("B", "big"), ("S", "small"), ("?", "other")):
        r = run1(wf, {"kind": kind})
        assert _steps(r) == ["decide", path] and r.state["m"] == path


def _set_kind(kind: str) -> dict:
    return {"kind": kind}


def _mark(m: str) -> dict:
    return {"m": m}


def test_loop_is_bounded_by_max_iterations_and_stops_on_its_condition(run1):
    wf = Workflow("loopy")
    wf.tool("count", _count)
    wf.call("inc", tool="count", args={"n": "{n}"})
    wf.noop("check")
    wf.sequence("inc", "check")
    wf.loop("check", back_to="inc", max_iterations=4, while_=when("n", "lt", 10))
    r = run1(wf, {"n": 0})
    assert _steps(r) == ["inc"] * 4 and r.state["n"] == 4  # max_iterations passes through the body
    r = run1(wf, {"n": 8})
    assert _steps(r) == ["inc"] * 2 and r.state["n"] == 10  # the condition ended it first


def test_fan_out_runs_branches_concurrently_then_joins(run1):
    async def slow(tag: str) -> dict:
        await anyio.sleep(0.3)
        return {tag: True}

    def blocking(tag: str) -> dict:  # a sync tool runs in a worker thread, beside the others
        time.sleep(0.3)
        return {tag: True}

    wf = Workflow("fan")
    wf.agent("a", system_prompt="plan")
    wf.tool("slow", slow)
    wf.tool("blocking", blocking)
    wf.llm("plan", agent="a", prompt="go", expected_output_tokens=3)
    wf.call("b1", tool="slow", args={"tag": "one"})
    wf.call("b2", tool="slow", args={"tag": "two"})
    wf.call("b3", tool="blocking", args={"tag": "three"})
    wf.llm("join", agent="a", prompt="done", inputs=["b1", "b2", "b3"], expected_output_tokens=3)
    wf.fan_out("plan", ["b1", "b2", "b3"], join="join")
    wf.join(["b1", "b2", "b3"], "join")
    r = run1(wf)
    assert r.ok and {"one", "two", "three"} <= set(r.state)
    branches = [t for t in r.timeline if t.step in ("b1", "b2", "b3")]
    assert max(t.start_s for t in branches) < min(t.end_s for t in branches)  # all three overlapped
    join = r.timeline[-1]
    assert join.step == "join" and join.start_s >= max(t.end_s for t in branches)


def test_parse_turns_answers_into_state_for_conditions(run1):
    def reply(request, prompt):
        return "I concede" if prompt.count("argue") >= 3 else "no way"

    def parse(text, state, step):
        return {"consensus": "concede" in text, "rounds": state.get("rounds", 0) + 1}

    wf = Workflow("talk")
    wf.agent("a", system_prompt="argue")
    wf.llm("say", agent="a", prompt="argue", parse=parse, expected_output_tokens=3)
    wf.noop("next")
    wf.sequence("say", "next")
    wf.loop("next", back_to="say", max_iterations=10, while_=when("consensus", "falsy"))
    (r,), _ = execute(wf, [{}], engine=sim(reply=reply))
    assert r.ok and r.state == {"consensus": True, "rounds": 2} and r.text == "I concede"


def test_streaming_delivers_every_token_in_order():
    events = []
    wf = Workflow("stream")
    wf.agent("a", system_prompt="s")
    wf.llm("one", agent="a", prompt="x", expected_output_tokens=12)
    wf.llm("two", agent="a", prompt="y", expected_output_tokens=8)
    wf.sequence("one", "two")
    (r,), _ = execute(wf, [{}], on_token=events.append, engine=sim(min_wall_step_s=0.0))
    assert [e.step for e in events] == ["one"] * 12 + ["two"] * 8  # one chunk per decode step
    assert [len(e.token_ids) for e in events] == [1] * 20
    assert "".join(e.text for e in events if e.step == "one").split() == r.outputs["one"].split()
    assert "".join(e.text for e in events if e.step == "two").split() == r.outputs["two"].split()


@pytest.mark.parametrize("policy", ["lru", "kvflow", "continuum", "agentflow"])
def test_every_live_policy_runs(policy, run1):
    wf = Workflow("p")
    wf.agent("a", system_prompt="s")
    wf.llm("x", agent="a", prompt="hi", expected_output_tokens=2)
    assert run1(wf, policy=policy).ok
