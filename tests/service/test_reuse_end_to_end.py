"""Cross-agent KV reuse through the scheduler service, end to end on loopback gRPC with the real
model (SmolLM2-135M-Instruct on CPU): a scheduler server, one worker agent beside a LocalEngine
(what `agentflow worker --engine local` runs), and the executor through `ServiceBackend` running
the writer/critic workflow of tests/executor/test_cross_agent_reuse.py.

The executor's input spans go with the SubmitCall, the answer carries the critic's hint, the
client puts it on the Generate, and the worker's engine places the writer's output KV. The same
workflow then runs in process (Executor on a LocalEngine of the same model): the two runs must
agree token for token, hint for hint. Nothing is faked; skips without the model like the
in-process test (an error under CI=true).
"""

from __future__ import annotations

import anyio
import pytest

from tests.executor.test_cross_agent_reuse import HEAD, TOPIC, review_workflow


@pytest.mark.slow
def test_the_critic_reuses_the_writers_output_kv_through_the_service(smollm2):
    model = smollm2
    from agentflow.runtime.engines.local import LocalEngine
    from agentflow.runtime.engines.local.reuse.prefill import ReuseConfig
    from agentflow.runtime.executor import Executor
    from agentflow.runtime.executor.service import ServiceBackend
    from agentflow.runtime.service.app import build_scheduler
    from agentflow.runtime.service.client import ServiceClient
    from agentflow.runtime.service.worker_agent import AgentConfig, WorkerAgent

    # the engine's default reuse configuration is the in-process test's (plain realignment, 4 head tokens)
    # plain realignment + the head recomputed, as the in-process test pins it (the engine's default
    # also recomputes the most deviating 5% of placed tokens: tested in tests/engines/local/reuse)
    engine = LocalEngine(model, name="local0", reuse=ReuseConfig(use_anchors=False, recompute_head_tokens=HEAD))
    requests = {}
    generate = engine.generate

    def spy_generate(request):  # what reached the worker's engine over gRPC; run unchanged
        requests[request.call_id] = request
        return generate(request)

    engine.generate = spy_generate

    async def through_the_service():
        server, _ = build_scheduler(listen="127.0.0.1:0", heartbeat_interval_s=0.1, worker_timeout_s=5.0)
        port = await server.start()
        agent = WorkerAgent(engine, AgentConfig(worker_id="local0", scheduler=f"127.0.0.1:{port}",
                                                engine_kind="local"))
        try:
            await agent.start()
            await agent.wait_registered()
            # the executor tokenizes with the served model's tokenizer (here: the same engine object)
            backend = ServiceBackend(ServiceClient(f"127.0.0.1:{port}"), tokenizer=engine)
            backend.owns_client = True
            async with Executor(backend=backend, tick_s=0.05) as ex:
                return await ex.run(review_workflow(), {"topic": TOPIC})
        finally:
            await agent.stop(0)
            await server.stop(0)

    local = LocalEngine(model, name="inproc", reuse=ReuseConfig(use_anchors=False, recompute_head_tokens=HEAD))

    async def in_process():
        async with Executor(local, tick_s=0.05) as ex:
            return await ex.run(review_workflow(), {"topic": TOPIC}), ex

    try:
        r = anyio.run(through_the_service)
        assert r.ok, r.error
        draft, review = r.timeline
        assert draft.worker == review.worker == "local0"
        sent = requests[review.call_id]
        (h,) = sent.reuse  # the hint came with the call, not through the decision stream
        assert (h.source_call_id, h.target_call_id, h.kind) == (draft.call_id, review.call_id, "draft->review")
        assert h.namespace == sent.reuse_namespace == f"default/wf:review/p:{r.program_id}"
        assert requests[draft.call_id].reuse == ()
        assert h.num_tokens >= 16  # the draft's text, found in the critic's prompt
        # the worker's engine placed it: reused tokens counted per call and per engine
        assert review.reused_tokens == h.num_tokens - HEAD == engine.reuse_stats.num_reused_tokens > 0
        assert engine.reuse_stats.skipped == {} and engine.reuse_stats.num_placed == 1

        # in process, the same workflow on the same model: the same hint, the same tokens
        r2, ex2 = anyio.run(in_process)
        assert r2.ok, r2.error
        (h2,) = [x for _, d in ex2.decisions.entries for x in d.reuse]
        assert (h2.target_offset, h2.num_tokens, h2.source_offset) == (h.target_offset, h.num_tokens, h.source_offset)
        assert [t.reused_tokens for t in r2.timeline] == [t.reused_tokens for t in r.timeline]
        assert r2.outputs == r.outputs  # the draft and the review, text for text
    finally:
        anyio.run(engine.aclose)
        anyio.run(local.aclose)
