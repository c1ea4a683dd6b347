"""The front door in front of a worker that registered over gRPC (`agentflow worker`): the call is
routed by the scheduler to that worker and runs there through its Generate RPC; the worker reports
it. A simulated engine on both sides (the front door's copy only tokenizes), so this runs in seconds."""

from __future__ import annotations

import asyncio

import pytest


def test_calls_reach_a_grpc_worker():
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")

    async def run():
        from agentflow.runtime.frontdoor.gateway import FrontDoorConfig
        from agentflow.runtime.frontdoor.server import OpenAIServer
        from agentflow.runtime.service.app import build_scheduler, build_worker, make_engine

        sched, _ = build_scheduler(journal_path=":memory:")
        await sched.start()
        worker = build_worker(scheduler=sched.target, engine="sim", worker_id="remote-sim", time_scale=1000.0)
        await worker.start()
        await worker.wait_registered()
        srv = OpenAIServer(sched, [make_engine("sim", name="tokenizer-only")], listen="127.0.0.1:0",
                           config=FrontDoorConfig(model_id="agentflow-sim"), serve_engines=False)
        port = await srv.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=30) as c:
                msgs = [{"role": "system", "content": "you review code " * 20},
                        {"role": "user", "content": "look at this diff please"}]
                r1 = (await c.post("/chat/completions", json={"model": "agentflow-sim", "messages": msgs,
                                                              "max_tokens": 4})).json()
                msgs += [r1["choices"][0]["message"], {"role": "user", "content": "and now?"}]
                r2 = (await c.post("/chat/completions", json={"model": "agentflow-sim", "messages": msgs,
                                                              "max_tokens": 4})).json()
        finally:
            await srv.stop()
            await worker.stop()
            await worker.engine.aclose()
            await sched.stop(1.0)
        return r1, r2, worker.decisions_applied

    r1, r2, decisions = asyncio.run(run())
    assert r1["agentflow"]["worker"] == r2["agentflow"]["worker"] == "remote-sim"
    assert r2["agentflow"]["program_id"] == r1["agentflow"]["program_id"]
    assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] >= r1["usage"]["prompt_tokens"] - 1
    assert decisions > 0  # the scheduler's decisions reached the worker's engine
