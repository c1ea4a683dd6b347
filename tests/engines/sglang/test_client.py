"""SGLangEngine against a real loopback HTTP server that speaks SGLang's API (tests/engines/sglang/_loopback.py).

The server fakes only the model's output (deterministic token ids) and the batching loop around
the cache; request parsing is SGLang's `GenerateReqInput`, the cache is the plugin's
`AgentflowRadixCache` over SGLang's real `UnifiedRadixCache` (CPU pools), the hints go through
the plugin's real hooks and SGLang's IPC codec, and `/v1/loads` is SGLang's `LoadSnapshot`.
"""

from __future__ import annotations

import asyncio

import pytest
from agentflow.runtime.decision import (
    Decision,
    EvictionPriority,
    Pin,
    Unpin,
    UnpinReason,
)
from agentflow.runtime.engines.base import (
    Engine,
    EngineError,
    GenerateRequest,
    GenerateResult,
    TokenChunk,
    prefix_chain,
)

pytestmark = pytest.mark.needs_sglang

SYS = tuple(range(1, 9))
PROMPT = SYS + (50, 51, 52)


def _request(call_id, prompt=PROMPT, *, ns="tenant1", out=3, program=7, priority=None):
    return GenerateRequest(call_id=call_id, program_id=program, prompt_ids=prompt, max_new_tokens=out,
                           namespace=ns, prefixes=prefix_chain(ns, prompt, [len(SYS), len(prompt)]),
                           priority=priority, session_id=f"s{program}")


async def _run(engine, request):
    items = [x async for x in engine.generate(request)]
    return items[:-1], items[-1]


def _serve(af_cache, test, **kw):
    from agentflow.runtime.engines.sglang.client import SGLangEngine

    from tests.engines.sglang._loopback import LoopbackSGLang

    async def main():
        async with LoopbackSGLang(af_cache(pool_tokens=256), **kw) as server:
            engine = SGLangEngine(server.url, name="w1")
            try:
                return await test(server, engine)
            finally:
                await engine.aclose()

    return asyncio.run(main())


def test_generate_streams_tokens_then_a_result_and_the_second_call_hits_the_cache(af_cache):
    async def test(server, engine):
        assert isinstance(engine, Engine)
        chunks, first = await _run(engine, _request("c1"))
        _, second = await _run(engine, _request("c2", PROMPT + (60,)))
        return server, chunks, first, second

    server, chunks, first, second = _serve(af_cache, test)
    want = tuple(1000 + (sum(PROMPT) + i) % 1000 for i in range(3))
    assert [c.token_ids for c in chunks] == [(t,) for t in want]
    assert all(isinstance(c, TokenChunk) for c in chunks) and isinstance(first, GenerateResult)
    assert (first.output_ids, first.prompt_tokens, first.cached_tokens, first.finish_reason) == (want, 11, 0, "length")
    assert first.text == " ".join(f"t{t}" for t in want)  # the server's detokenized text (no local tokenizer)
    assert second.cached_tokens == len(PROMPT)  # the first call's prompt, now in SGLang's tree
    assert [p.num_tokens for p in first.cached] == [8, 11, 14]
    body = server.generate_bodies[0]
    assert body["input_ids"] == list(PROMPT) and body["extra_key"] == "tenant1" and body["session_id"] == "s7"
    assert body["sampling_params"] == {"max_new_tokens": 3, "temperature": 0.0, "top_p": 1.0, "ignore_eos": False}
    assert [a["action_type"] for a in body["kv_hints"]["actions"]] == ["agentflow.declare"] * 2 + ["agentflow.call"]
    assert tuple(server.cache.keys[first.cached[0].key].token_ids) == SYS  # learnt from the request's own ids


def test_tenants_never_share_cache_entries(af_cache):
    async def test(server, engine):
        await _run(engine, _request("a", ns="tenant1"))
        _, other = await _run(engine, _request("b", ns="tenant2"))
        _, same = await _run(engine, _request("c", ns="tenant1"))
        return other, same

    other, same = _serve(af_cache, test)
    assert (other.cached_tokens, same.cached_tokens) == (0, len(PROMPT))


def test_a_decision_pins_and_prioritizes_on_the_server_and_a_finished_calls_key_ships_its_tokens_once(af_cache):
    async def test(server, engine):
        _, res = await _run(engine, _request("c1"))
        sys_ref, _, full_ref = res.cached
        engine.apply(Decision(step=1, time_s=0.0, priorities=(
            EvictionPriority(prefix=full_ref.key, priority=900, steps_to_execution=0.1),
            EvictionPriority(prefix="never-seen", priority=5, steps_to_execution=1.0)),
            pins=(Pin(prefix=full_ref.key, worker="w1", program_id=7, ttl_s=30.0, expires_at_s=30.0,
                      num_tokens=full_ref.num_tokens),
                  Pin(prefix=sys_ref.key, worker="w2", program_id=8, ttl_s=30.0, expires_at_s=30.0, num_tokens=8))))
        await engine.flush()
        pinned = dict(server.cache.pins)
        prio = {toks: p for toks, p, _ in server.driver.tree()}
        engine.apply(Decision(step=2, time_s=1.0, unpins=(
            Unpin(prefix=full_ref.key, worker="w1", program_id=7, reason=UnpinReason.CANCELLED),)))
        await engine.flush()
        return server, full_ref, pinned, prio, engine.load()

    server, full_ref, pinned, prio, load = _serve(af_cache, test)
    first, second = server.control_bodies
    kinds = [a["action_type"] for a in first["actions"]]
    assert kinds == ["agentflow.declare", "agentflow.pin", "agentflow.priority"]  # w2's pin and the unknown key: dropped
    assert len(first["actions"][0]["payload"]["token_ids"]) == full_ref.num_tokens
    assert [a["action_type"] for a in second["actions"]] == ["agentflow.unpin"]
    assert list(pinned) == [(full_ref.key, "7")] and pinned[(full_ref.key, "7")].num_tokens == full_ref.num_tokens
    assert set(prio.values()) == {900}  # the whole path of the prompt+output key
    assert server.cache.pins == {} and server.cache.released[-1].reason == "cancelled"
    assert load.pinned_tokens == 0


def test_load_reads_the_servers_load_endpoint(af_cache):
    async def test(server, engine):
        # The first load() fetches a snapshot synchronously (a worker registers with the pool's
        # size); from a thread here, as this loopback server shares the test's event loop.
        before = await asyncio.to_thread(engine.load)
        await _run(engine, _request("c1"))  # refreshes the snapshot when it ends
        return before, engine.load()

    before, after = _serve(af_cache, test)
    assert (before.kv_capacity_tokens, before.kv_used_tokens) == (256, 0)  # known before any call
    assert (after.kv_capacity_tokens, after.kv_used_tokens, after.running, after.queue_depth) == (256, 14, 0, 0)


def test_decode_without_a_local_tokenizer_asks_the_server(af_cache):
    async def test(server, engine):
        return await asyncio.to_thread(engine.decode, [1001, 1002])  # decode() is synchronous

    assert _serve(af_cache, test) == "t1001 t1002"


def test_a_server_error_is_an_engine_error(af_cache):
    async def test(server, engine):
        bad = GenerateRequest(call_id="x", program_id=1, prompt_ids=(), max_new_tokens=2)  # SGLang refuses it
        with pytest.raises(EngineError, match="/generate answered 400: .*input_ids cannot be empty"):
            await _run(engine, bad)
        return True

    assert _serve(af_cache, test)


def test_cancelling_a_stream_aborts_the_request_on_the_server(af_cache):
    async def test(server, engine):
        async def consume():
            async for _ in engine.generate(_request("c1", out=50)):
                pass

        task = asyncio.create_task(consume())
        while not server.running:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if server.aborted:
                break
            await asyncio.sleep(0.01)
        return server.aborted

    aborted = _serve(af_cache, test, token_delay_s=0.05)
    assert len(aborted) == 1 and next(iter(aborted)).startswith("af-c1-")


def test_flushing_the_cache_forgets_prefixes_pins_and_keys(af_cache):
    async def test(server, engine):
        _, res = await _run(engine, _request("c1"))
        engine.apply(Decision(step=1, time_s=0.0, pins=(Pin(prefix=res.cached[1].key, worker="w1", program_id=7,
                                                             ttl_s=30.0, expires_at_s=30.0, num_tokens=11),)))
        await engine.flush()
        held = len(server.cache.pins)
        assert await engine.flush_cache()
        _, again = await _run(engine, _request("c2"))
        return held, server.cache.pins, again

    held, pins, again = _serve(af_cache, test)
    assert (held, pins, again.cached_tokens) == (1, {}, 0)


def test_the_programs_next_call_ends_its_pin_on_the_server(af_cache):
    async def test(server, engine):
        _, res = await _run(engine, _request("c1", program=7))
        engine.apply(Decision(step=1, time_s=0.0, pins=(Pin(prefix=res.cached[1].key, worker="w1", program_id=7,
                                                             ttl_s=30.0, expires_at_s=30.0, num_tokens=11),)))
        await engine.flush()
        held = list(server.cache.pins)
        await _run(engine, _request("c2", program=8))  # another program's call leaves it alone
        after_other = list(server.cache.pins)
        _, again = await _run(engine, _request("c3", PROMPT + (70,), program=7))
        return held, after_other, server.cache, again

    held, after_other, cache, again = _serve(af_cache, test)
    assert held == after_other == [(held[0][0], "7")]
    assert cache.pins == {} and cache.released[-1].reason == "next_call"
    assert again.cached_tokens == len(PROMPT)


def test_token_ids_outside_the_servers_vocabulary_are_never_sent(af_cache):
    """SGLang crashes on an id its embedding cannot index: the engine asks the server's vocabulary
    (GET /agentflow/info) before its first request and refuses such a prompt, naming the field."""

    async def test(server, engine):
        assert engine.vocab_size is None
        with pytest.raises(EngineError, match=r"prompt_ids of call c1 hold token id 64, outside .*\[0, 64\)"):
            await _run(engine, _request("c1", prompt=SYS + (64,)))
        assert engine.vocab_size == 64 and server.generate_bodies == []
        _, result = await _run(engine, _request("c2", prompt=SYS + (63,)))
        assert len(server.generate_bodies) == 1 and result.prompt_tokens == len(SYS) + 1

    _serve(af_cache, test, vocab_size=64)
