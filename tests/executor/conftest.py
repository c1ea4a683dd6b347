"""Executor tests: real programs on a real SimEngine (the simulated SGLang worker, its radix
cache and cost model) at a high time scale, through a real in-process Scheduler. Tools are
real Python functions; the only thing simulated is the GPU (SimEngine), which cannot run here.
"""

from __future__ import annotations

import anyio
import pytest

from agentflow.runtime.engines.sim.costmodel import make_cost_model
from agentflow.runtime.engines.sim.engine import SimEngine
from agentflow.runtime.executor import Executor

COST = make_cost_model()


def sim(**kw) -> SimEngine:
    kw.setdefault("time_scale", 10_000.0)  # a 300-token call priced at ~2 s runs in ~0.2 ms of wall time
    kw.setdefault("strategy", "priority")
    return SimEngine(cost=COST, **kw)


def execute(workflow, inputs_list, *, engine=None, policy="agentflow", on_token=None, tick_s=0.05):
    """Run programs to their ends on one executor; returns (results, executor)."""

    async def go():
        eng = engine or sim()
        try:
            async with Executor(eng, policy=policy, tick_s=tick_s) as ex:
                return await ex.run_many(workflow, inputs_list, on_token=on_token), ex
        finally:
            await eng.aclose()

    return anyio.run(go)


@pytest.fixture
def run1():
    def _run(workflow, inputs=None, **kw):
        (result,), _ = execute(workflow, [inputs or {}], **kw)
        return result

    return _run
