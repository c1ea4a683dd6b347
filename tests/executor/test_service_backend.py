"""Programs through the scheduler service's core (`InProcessClient`: the service's ServiceCore and
its engines in this process, no network) via `ServiceBackend`: the same executor, the service's
routing and decisions."""

from __future__ import annotations

import anyio

from agentflow.runtime.executor import Executor, ProgramStatus
from agentflow.runtime.executor.service import ServiceBackend

from .conftest import sim


async def _sleep_tool() -> dict:
    await anyio.sleep(0.05)
    return {"slept": True}


def _workflow():
    from agentflow import Workflow

    wf = Workflow("svc")
    wf.agent("coder", system_prompt="You fix bugs carefully.", tools=["nap"])
    wf.tool("nap", _sleep_tool, duration_hint_s=0.05)
    wf.llm("think", agent="coder", prompt="Task: {task}", expected_output_tokens=6)
    wf.call("act", tool="nap", agent="coder")
    wf.llm("again", agent="coder", prompt="Done?", inputs=["act"], expected_output_tokens=6)
    wf.sequence("think", "act", "again")
    return wf


def test_programs_run_through_the_service_core():
    from agentflow.runtime.service.inprocess import InProcessClient

    async def go():
        engines = [sim(name="sim-0"), sim(name="sim-1")]
        client = InProcessClient(engines, policy="agentflow", time_scale=10_000.0)
        try:
            async with Executor(backend=ServiceBackend(client, tokenizer=engines[0])) as ex:
                return await ex.run_many(_workflow(), [{"task": f"t{i}"} for i in range(3)]), client
        finally:
            await client.close()

    results, client = anyio.run(go)
    assert [r.status for r in results] == [ProgramStatus.COMPLETED] * 3
    for r in results:
        assert [t.step for t in r.timeline] == ["think", "act", "again"]
        think, _, again = r.timeline
        assert think.worker in ("sim-0", "sim-1") and again.worker == think.worker  # routed to its KV
        assert again.cached_tokens == think.prompt_tokens + think.output_tokens
        assert r.state["slept"] is True
    assert len(client.submit_ms) == 6  # every call went through the service's SubmitCall
