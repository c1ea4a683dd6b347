"""Error policies: retry, route to an error branch, fail with the state kept; timeouts."""

from __future__ import annotations

import anyio
import pytest

from agentflow import Workflow, WorkflowValidationError
from agentflow.errors import ProblemCode
from agentflow.runtime.executor import ProgramStatus

from .conftest import execute


class Flaky:
    """Raises on the first `fails` calls, then returns {"fixed": attempt number}."""

    def __init__(self, fails: int):
        self.fails = fails
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        if self.calls <= self.fails:
            raise RuntimeError(f"boom {self.calls}")
        return {"fixed": self.calls}


def _wf(tool, **policy) -> Workflow:
    wf = Workflow("errs")
    wf.agent("a", system_prompt="s", tools=["t"])
    wf.tool("t", tool)
    wf.llm("think", agent="a", prompt="go", expected_output_tokens=2)
    wf.call("act", tool="t", agent="a", **policy)
    wf.llm("after", agent="a", prompt="next", expected_output_tokens=2)
    wf.llm("report", agent="a", prompt="report {error}", expected_output_tokens=2)
    wf.sequence("think", "act", "after", "report")
    return wf


def test_retry_then_success(run1):
    tool = Flaky(fails=2)
    r = run1(_wf(tool, retries=2), {"error": None})
    assert r.ok and tool.calls == 3 and r.state["fixed"] == 3
    acts = [(t.attempt, t.status, t.error) for t in r.timeline if t.step == "act"]
    assert acts == [(1, "error", "RuntimeError: boom 1"), (2, "error", "RuntimeError: boom 2"), (3, "ok", None)]


def test_exhausted_retries_route_to_the_error_branch(run1):
    tool = Flaky(fails=5)
    r = run1(_wf(tool, retries=1, on_error="report"))
    assert r.ok and tool.calls == 2
    assert [t.step for t in r.timeline] == ["think", "act", "act", "report"]  # `after` was skipped
    assert r.state["error"] == {"step": "act", "error": "RuntimeError: boom 2", "attempts": 2}


def test_failure_without_a_route_fails_the_program_and_keeps_its_state(run1):
    tool = Flaky(fails=5)
    r = run1(_wf(tool), {"keep": 1})
    assert r.status is ProgramStatus.FAILED and r.failed_step == "act"
    assert r.error == "step 'act' failed after 1 attempt: RuntimeError: boom 1"
    assert r.state == {"keep": 1} and list(r.outputs) == ["think"]
    assert [t.step for t in r.timeline] == ["think", "act"]


def test_workflow_default_policy_and_step_override(run1):
    tool = Flaky(fails=1)
    wf = _wf(tool)
    wf.error_policy(retries=3)
    assert run1(wf, {"error": None}).ok and tool.calls == 2
    tool = Flaky(fails=1)
    wf = _wf(tool, retries=0)  # the step's own 0 wins over the workflow's 3
    wf.error_policy(retries=3)
    assert run1(wf).status is ProgramStatus.FAILED and tool.calls == 1


def test_timeout_per_attempt_then_retry(run1):
    calls = []

    async def sometimes_slow() -> dict:
        calls.append(1)
        if len(calls) == 1:
            await anyio.sleep(5)
        return {"fast": True}

    r = run1(_wf(sometimes_slow, retries=1, timeout_s=0.2), {"error": None})
    assert r.ok and r.state["fast"] is True
    acts = [(t.status, t.error) for t in r.timeline if t.step == "act"]
    assert acts == [("timeout", "timed out after 0.2 s"), ("ok", None)]
    first = next(t for t in r.timeline if t.step == "act")
    assert 0.15 < first.duration_s < 1.0


def test_llm_step_timeout_fails_and_closes_the_call():
    from .conftest import sim

    wf = Workflow("slowllm")
    wf.agent("a", system_prompt="s")
    wf.llm("x", agent="a", prompt="go", expected_output_tokens=50_000, timeout_s=0.1)
    (r,), ex = execute(wf, [{}], engine=sim(time_scale=1.0))  # ~6 min of simulated decode: never done
    assert r.status is ProgramStatus.FAILED and r.error == "step 'x' failed after 1 attempt: timed out"
    (rec,) = r.timeline
    assert rec.status == "timeout" and rec.output_tokens < 50_000
    sched = ex.link.scheduler
    assert not sched.calls and not sched.waiting and not sched.programs


@pytest.mark.parametrize("kw, code", [
    ({"retries": -1}, ProblemCode.BAD_VALUE),
    ({"timeout_s": 0}, ProblemCode.BAD_VALUE),
    ({"on_error": "nowhere"}, ProblemCode.UNKNOWN_STEP),
    ({"on_error": "think"}, ProblemCode.BAD_VALUE),  # backwards: could loop forever
    ({"on_error": "act"}, ProblemCode.BAD_VALUE),
])
def test_bad_policies_are_compile_errors(kw, code):
    with pytest.raises(WorkflowValidationError) as e:
        _wf(Flaky(0), **kw).compile()
    assert e.value.codes == [code]
    assert "'act'" in str(e.value)


def test_error_route_must_stay_in_its_fan_out_branch():
    wf = Workflow("fanerr")
    wf.tool("t", Flaky(0))
    wf.noop("start")
    wf.call("b1", tool="t", on_error="j")
    wf.call("b2", tool="t")
    wf.noop("j")
    wf.fan_out("start", ["b1", "b2"], join="j")
    wf.join(["b1", "b2"], "j")
    with pytest.raises(WorkflowValidationError, match="leaves its fan-out branch"):
        wf.compile()


def test_policies_round_trip_through_a_file():
    from agentflow.spec import WorkflowSpec

    wf = _wf(None, retries=2, on_error="report", timeout_s=1.5)
    wf.error_policy(retries=1, timeout_s=30)
    spec = WorkflowSpec.parse(wf.compile().spec().to_yaml())
    again = spec.compile()
    assert again.errors == wf.compile().errors
    assert again.error_policy("act") == wf.compile().error_policy("act")
    assert again.error_policy("think").retries == 1 and again.error_policy("think").timeout_s == 30


def test_a_failing_branch_cancels_its_siblings(run1):
    async def slow() -> dict:
        await anyio.sleep(5)
        return {}

    wf = Workflow("fanfail")
    wf.tool("bad", Flaky(9))
    wf.tool("slow", slow)
    wf.noop("start")
    wf.call("b1", tool="bad")
    wf.call("b2", tool="slow")
    wf.noop("j")
    wf.fan_out("start", ["b1", "b2"], join="j")
    wf.join(["b1", "b2"], "j")
    r = run1(wf)
    assert r.status is ProgramStatus.FAILED and r.failed_step == "b1"
    b2 = next(t for t in r.timeline if t.step == "b2")
    assert b2.status == "cancelled" and b2.duration_s < 1.0
