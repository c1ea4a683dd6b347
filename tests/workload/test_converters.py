"""Each converter on a tiny fixture written for the test: exact segments, tools and counts."""

from __future__ import annotations

import pytest

from agentflow.runtime.workload.convert import converter
from agentflow.runtime.workload.format import SegmentKind as K
from agentflow.runtime.workload.format import ToolKind, program_problems


def run(fmt, fixtures, folder, table):
    result = converter(fmt)([fixtures / folder], table=table, seed=0)
    for p in result.programs:
        assert program_problems(p) == []
    return result


def segs(call):
    return [(s.kind, s.num_tokens, s.call) for s in call.segments]


def test_mini_swe_agent_format_1(fixtures, table):
    r = run("mini-swe-agent", fixtures, "mini", table)
    assert (r.report.num_read, r.report.num_converted, r.report.num_skipped) == (1, 1, 0)
    (p,) = r.programs
    # system 'You are a bot.' = ceil(14 / 4) + 4 = 8 tokens
    assert p.agents[0].system_prompt_tokens == 8
    assert [segs(c) for c in p.calls] == [
        [(K.SYSTEM, 8, None), (K.NEW, 92, None)],
        [(K.HISTORY, 120, 0), (K.NEW, 30, None)],  # previous prompt 100 + answer 20
        [(K.HISTORY, 150, 1), (K.NEW, 60, None)],  # call 1 reasoned: only its prompt is history
    ]
    assert [c.output_tokens for c in p.calls] == [20, 30, 5]
    assert [(c.tool.name, c.tool.kind, c.tool.synthetic) for c in p.calls] == [
        ("ls", ToolKind.BASH, True), ("cat", ToolKind.BASH, True), ("echo", ToolKind.SUBMIT, True)]
    assert [c.start_s for c in p.calls] == [0.0, 3.0, 10.0]
    assert p.calls[1].cached_tokens == 100
    assert r.header.durations.value == "synthetic" and r.header.seed == 0


def test_mini_swe_agent_format_1_1_records_durations(fixtures, table):
    (p,) = run("mini-swe-agent", fixtures, "mini11", table).programs
    assert p.calls[0].tool.duration_s == 1.5 and not p.calls[0].tool.synthetic
    assert p.calls[0].tool.name == "grep"
    assert p.calls[1].tool is None  # no action: nothing ran
    assert segs(p.calls[1]) == [(K.HISTORY, 60, 0), (K.NEW, 10, None)]


def test_synthetic_durations_are_seeded(fixtures, table):
    a = converter("mini-swe-agent")([fixtures / "mini"], table=table, seed=1).programs[0]
    b = converter("mini-swe-agent")([fixtures / "mini"], table=table, seed=1).programs[0]
    c = converter("mini-swe-agent")([fixtures / "mini"], table=table, seed=2).programs[0]
    assert [x.tool.duration_s for x in a.calls] == [x.tool.duration_s for x in b.calls]
    assert [x.tool.duration_s for x in a.calls] != [x.tool.duration_s for x in c.calls]


def test_openhands(fixtures, table):
    (p,) = run("openhands", fixtures, "openhands", table).programs
    assert [segs(c) for c in p.calls] == [
        [(K.SYSTEM, 9, None), (K.NEW, 491, None)],
        [(K.HISTORY, 540, 0), (K.NEW, 60, None)],
        [(K.HISTORY, 9, 1), (K.NEW, 291, None)],  # prompt shrank: condensed, only the system is shared
    ]
    assert [(c.tool.name, c.tool.kind, c.tool.duration_s) for c in p.calls[:2]] == [
        ("execute_bash", ToolKind.BASH, 0.6), ("str_replace_editor", ToolKind.READ, 0.01)]
    assert p.calls[2].tool is None  # finish has no observation
    assert [c.latency_s for c in p.calls] == [2.5, 2.0, 1.0]
    assert [c.start_s for c in p.calls] == [0.5, 4.0, 7.0]


@pytest.mark.parametrize("folder, synthetic", [("swe0", True), ("swev1", False)])
def test_swe_agent(fixtures, table, folder, synthetic):
    r = run("swe-agent", fixtures, folder, table)
    (p,) = r.programs
    assert p.agents[0].system_prompt_tokens == 14  # 40 chars / 4 + 4
    assert [c.tool.synthetic for c in p.calls] == [synthetic, synthetic]
    assert p.calls[1].tool.kind is ToolKind.SUBMIT
    if folder == "swev1":
        assert [c.tool.duration_s for c in p.calls] == [0.25, 0.5]
        assert [segs(c) for c in p.calls] == [
            [(K.SYSTEM, 14, None), (K.NEW, 34, None)],
            [(K.HISTORY, 62, 0), (K.NEW, 54, None)],  # 14 + 34 + answer 14, then the 200-char observation
        ]
    else:  # the demonstration is part of the prompt
        assert segs(p.calls[0]) == [(K.SYSTEM, 14, None), (K.NEW, 58, None)]


def test_bfcl(fixtures, table):
    (p,) = run("bfcl", fixtures, "bfcl", table).programs
    assert p.agents[0].system_prompt[0].key == "bfcl:doc:MathAPI"
    assert [c.tool.name if c.tool else None for c in p.calls] == ["add", "mul", None, None]
    assert [c.step for c in p.calls] == ["turn 0", "turn 0", "turn 0", "turn 1"]
    assert segs(p.calls[1]) == [(K.HISTORY, 50, 0), (K.NEW, 36, None)]  # result 32 + 4
    assert all(c.tool.synthetic for c in p.calls if c.tool)


def test_chatdev_shares_prompts_and_outputs(fixtures, table):
    r = run("chatdev", fixtures, "chatdev", table)
    (p,) = r.programs
    progr, reviewer = (next(a for a in p.agents if a.name == n) for n in ("Programmer", "Code Reviewer"))
    assert progr.system_prompt[0].key == reviewer.system_prompt[0].key  # the shared background
    assert progr.system_prompt[1].key != reviewer.system_prompt[1].key  # role texts differ
    assert [c.step for c in p.calls] == ["Coding", "CodeReview/CodeReviewComment", "CodeReview/CodeReviewComment"]
    assert segs(p.calls[1]) == [(K.SYSTEM, 21, None), (K.OUTPUT_OF, 400, 0), (K.NEW, 79, None)]
    assert segs(p.calls[2])[-1] == (K.OUTPUT_OF, 50, 1)  # the programmer reads the review
    assert [c.prompt_tokens for c in p.calls] == [100, 500, 570]
    assert p.calls[2].tool.name == "run_software" and p.calls[2].tool.duration_s == 3.0
    assert [c.latency_s for c in p.calls] == [4.0, 2.0, 1.0]


def test_mooncake_sessions(fixtures, table):
    r = run("mooncake", fixtures, "mooncake", table)
    assert (r.report.num_read, r.report.num_converted) == (4, 3)
    a, b, c = r.programs
    # request 2 extends every full block of request 1 (the latest one sharing block 0): same session
    assert [len(x.calls) for x in (a, b, c)] == [1, 2, 1]
    assert a.agents[0].system_prompt[0].key == b.agents[0].system_prompt[0].key  # block 0, shared
    assert c.agents[0].system_prompt == []
    assert segs(b.calls[1]) == [(K.HISTORY, 512, 0), (K.NEW, 588, None)]
    assert b.calls[0].tool.kind is ToolKind.USER and b.calls[0].tool.duration_s == 4.0
    assert (b.arrival_s, c.arrival_s) == (1.0, 6.0)
