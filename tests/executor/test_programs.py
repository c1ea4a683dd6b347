"""Many programs through one scheduler; cancellation; the cache decisions a run takes."""

from __future__ import annotations

import anyio

from agentflow import Workflow
from agentflow.runtime.decision import UnpinReason
from agentflow.runtime.executor import Executor, ProgramStatus

from .conftest import execute, sim


async def _wait_tool() -> dict:
    await anyio.sleep(30)
    return {}


def _agentic(tool=_wait_tool, hint_s: float = 2.0) -> Workflow:
    """think -> a tool the agent waits on -> think again: the tool's round is when to pin."""
    wf = Workflow("agentic")
    wf.agent("coder", system_prompt="You fix bugs in the repository, one careful step at a time.", tools=["wait"])
    wf.tool("wait", tool, duration_hint_s=hint_s)
    wf.llm("think", agent="coder", prompt="Task: {task}", expected_output_tokens=20)
    wf.call("act", tool="wait", agent="coder")
    wf.llm("again", agent="coder", prompt="The tool returned.", inputs=["act"], expected_output_tokens=20)
    wf.sequence("think", "act", "again")
    return wf


def test_cancel_ends_the_program_and_its_pins():
    async def go():
        eng = sim()
        async with Executor(eng, tick_s=0.05) as ex:
            sched = ex.link.scheduler
            h = await ex.start(_agentic(), {"task": "t"})
            with anyio.fail_after(5):
                while not sched.pins:  # the coder's prefix is pinned while its tool runs
                    await anyio.sleep(0.01)
            pinned = eng.load().pinned_tokens
            h.cancel()
            r = await h.result()
            return r, pinned, sched, eng.load(), ex.decisions
        # (the engine is closed by the test's end)

    r, pinned, sched, load, log = anyio.run(go)
    assert pinned > 0  # the engine held the pin
    assert r.status is ProgramStatus.CANCELLED and r.error == "cancelled"
    assert [(t.step, t.status) for t in r.timeline] == [("think", "ok"), ("act", "cancelled")]
    assert not sched.pins and not sched.programs and not sched.calls
    assert load.pinned_tokens == 0  # the unpin reached the engine
    unpins = [u for _, d in log.entries for u in d.unpins]
    assert [u.reason for u in unpins] == [UnpinReason.CANCELLED]
    assert r.decisions.pins == 1 and r.decisions.unpins == {"cancelled": 1}


def test_pin_ends_at_the_next_call_and_the_prefix_is_reused():
    async def quick() -> dict:
        await anyio.sleep(0.05)
        return {"out": "ok"}

    (r,), ex = execute(_agentic(quick, hint_s=0.05), [{"task": "t"}])
    assert r.ok
    assert r.decisions.pins == 1 and r.decisions.unpins == {"next_call": 1}
    think, _, again = r.timeline
    assert again.cached_tokens == think.prompt_tokens + think.output_tokens
    assert ex.link.scheduler.pins == {}


def test_many_programs_run_concurrently_through_one_scheduler():
    async def tool() -> dict:
        await anyio.sleep(0.4)
        return {}

    wf = _agentic(tool, hint_s=0.4)
    n = 6
    results, ex = execute(wf, [{"task": f"t{i}"} for i in range(n)])
    assert [r.status for r in results] == [ProgramStatus.COMPLETED] * n
    assert len({r.program_id for r in results}) == n
    tools = [next(t for t in r.timeline if t.step == "act") for r in results]
    assert max(t.start_s for t in tools) < min(t.end_s for t in tools)  # every tool ran at once
    # one scheduler saw them all: the system prompt's key is shared by every program's calls
    sys_keys = {k for k, p in ex.link.scheduler.prefixes.items() if p.ref.parent is None}
    assert len(sys_keys) == 1
    # programs admitted after the first batch find the shared system prompt cached (those admitted
    # together with the first compute it side by side, as in SGLang); every second call hits its history
    firsts = [r.timeline[0] for r in results]
    assert sum(t.cached_tokens > 0 for t in firsts) >= 1
    for r in results:
        think, _, again = r.timeline
        assert again.cached_tokens == think.prompt_tokens + think.output_tokens
    summary = ex.decisions.summary()
    assert summary.priorities > 0 and summary.admissions > 0 and summary.pins == n


def test_run_result_serialises():
    import json

    (r,), _ = execute(_agentic(_quick, hint_s=0.01), [{"task": "t"}])
    data = json.loads(json.dumps(r.to_dict(), default=str))
    assert data["status"] == "completed" and [t["step"] for t in data["timeline"]] == ["think", "act", "again"]
    assert data["timeline"][0]["worker"] == "w0" and data["decisions"]["pins"] == 1


async def _quick() -> dict:
    return {"out": 1}


def test_agentflow_run_is_the_one_call_entry_point():
    import agentflow

    wf = Workflow("hello")
    wf.agent("a", system_prompt="s")
    wf.llm("x", agent="a", prompt="say {what}", expected_output_tokens=4)
    tokens = []
    r = agentflow.run(wf, {"what": "hi"}, engine=sim(), on_token=tokens.append)
    assert r.ok and len(r.text.split()) == 4 and "".join(t.text for t in tokens).split() == r.text.split()
    rs = agentflow.run_many(wf, [{"what": "a"}, {"what": "b"}], engine="sim", time_scale=10_000)
    assert [x.ok for x in rs] == [True, True]
