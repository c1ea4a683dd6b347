"""SimEngine: the simulated SGLang worker behind the Engine interface, in scaled real time.

These drive the real SimWorker, radix cache and cost model. Time is a ManualClock whose `sleep`
advances it exactly, so every duration the engine reports is the cost model's figure; nothing
here sleeps for real except `test_real_clock_scaled`.
"""

from __future__ import annotations

import asyncio

import pytest

from agentflow.runtime.clock import ManualClock
from agentflow.runtime.decision import Decision, Pin, Unpin, UnpinReason
from agentflow.runtime.engines.base import (
    Engine, EngineError, GenerateRequest, GenerateResult, TokenChunk, prefix_chain, prefix_key,
)
from agentflow.runtime.engines.sim.costmodel import make_cost_model
from agentflow.runtime.engines.sim.engine import SimEngine, pseudo_output

COST = make_cost_model()


def _engine(**kw) -> tuple[SimEngine, ManualClock]:
    clock = ManualClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    kw.setdefault("min_wall_step_s", 0.0)  # one decode step per iteration: durations are exact
    return SimEngine(cost=COST, clock=clock, sleep=sleep, **kw), clock


def _words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def _request(eng: SimEngine, call_id: str, text: str, *, out: int = 4, system: str = "you are terse",
             **kw) -> GenerateRequest:
    ids = eng.encode_chat([{"role": "system", "content": system}, {"role": "user", "content": text}])
    sys_len = len(eng.encode_chat([{"role": "system", "content": system}])) - 1  # without the generation prompt
    return GenerateRequest(call_id=call_id, program_id="p", prompt_ids=tuple(ids), max_new_tokens=out,
                           prefixes=prefix_chain("default", ids, [sys_len]), **kw)


async def _run(eng: SimEngine, req: GenerateRequest) -> tuple[list[TokenChunk], GenerateResult]:
    chunks, result = [], None
    async for item in eng.generate(req):
        if isinstance(item, TokenChunk):
            assert result is None, "a chunk after the result"
            chunks.append(item)
        else:
            result = item
    assert result is not None
    return chunks, result


def test_is_an_engine_and_the_toy_tokenizer_round_trips():
    eng, _ = _engine()
    assert isinstance(eng, Engine)
    ids = eng.encode_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "fix  the\nbug"}])
    assert ids[0] == 1 and ids[-1] == 3  # system role id ... assistant generation prompt
    assert eng.decode(ids) == "be brief fix the\nbug"  # runs of spaces collapse; line breaks stay
    answer = "```bash\n  ls  -la\n```"
    assert eng.decode(eng._encode_text(answer)) == "```bash\nls -la\n```"
    with pytest.raises(EngineError, match="unknown chat role"):
        eng.encode_chat([{"role": "narrator", "content": "x"}])


def test_lone_request_durations_are_the_cost_model_s():
    eng, clock = _engine()
    req = _request(eng, "a", _words(20, "w"), out=4)
    chunks, res = asyncio.run(_run(eng, req))
    n = len(req.prompt_ids)
    prefill = COST.iteration_time_s(prefill_tokens=n, prefill_context_tokens=n, decode_seqs=0,
                                    decode_context_tokens=0)
    decodes = [COST.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=1,
                                     decode_context_tokens=n + g) for g in (1, 2, 3)]
    assert res.queued_s == 0.0
    assert res.ttft_s == pytest.approx(prefill, rel=1e-12)
    assert res.duration_s == pytest.approx(prefill + sum(decodes), rel=1e-12)
    assert clock.now_s() == pytest.approx(res.duration_s, rel=1e-12)  # wall == simulated at scale 1
    assert [c.token_ids for c in chunks] == [(t,) for t in res.output_ids]  # one chunk per step, in order
    assert res.output_ids == pseudo_output("a", 4)
    assert (res.prompt_tokens, res.cached_tokens, res.finish_reason) == (n, 0, "length")
    full = req.prompt_ids + res.output_ids
    assert res.cached[-1].key == prefix_key("default", full) and res.cached[-1].num_tokens == len(full)
    assert res.cached[:-1] == req.prefixes


def test_time_scale_divides_wall_time_not_simulated_time():
    eng, clock = _engine(time_scale=100.0)
    _, res = asyncio.run(_run(eng, _request(eng, "a", _words(20, "w"), out=4)))
    assert clock.now_s() == pytest.approx(res.duration_s / 100.0, rel=1e-9)


def test_second_request_hits_the_prefix():
    eng, _ = _engine()

    async def go():
        _, first = await _run(eng, _request(eng, "a", _words(30, "w")))
        _, again = await _run(eng, _request(eng, "b", _words(30, "w")))
        _, other = await _run(eng, _request(eng, "c", _words(30, "x")))
        return first, again, other

    first, again, other = asyncio.run(go())
    assert first.cached_tokens == 0
    assert again.cached_tokens == again.prompt_tokens - 1  # SGLang computes the last prompt token
    assert again.ttft_s < first.ttft_s
    sys_len = _request(eng, "z", "").prefixes[0].num_tokens
    assert other.cached_tokens == sys_len + 1  # the shared system prompt and the user role id


def test_scripted_reply_and_forced_output():
    eng, _ = _engine(reply=lambda req, prompt: "yes " + prompt.split()[-1])
    _, res = asyncio.run(_run(eng, _request(eng, "a", "ship it", out=8)))
    assert res.text == "yes it"
    forced = _request(eng, "b", "ship it", forced_output_ids=(eng.encode_chat([])[0],) * 2)
    _, res = asyncio.run(_run(eng, forced))
    assert res.output_ids == (3, 3)


def _pressure(eng: SimEngine, pin: bool) -> tuple[bool, bool]:
    """A (25 tokens cached), B (different prompt) fits beside it, C needs room: evict one.
    Returns (A still cached after C, A still cached after an unpin and D)."""

    async def go():
        _, a = await _run(eng, _request(eng, "a", _words(16, "a"), system="s"))
        if pin:
            key = a.cached[-1].key
            eng.apply(Decision(step=1, time_s=0.0, pins=(Pin(prefix=key, worker="w0", program_id="p", ttl_s=60.0,
                                                             expires_at_s=60.0, num_tokens=a.cached[-1].num_tokens),)))
        await _run(eng, _request(eng, "b", _words(20, "b"), system="t"))
        await _run(eng, _request(eng, "c", _words(20, "c"), system="u"))
        kept = a.cached[-1].key in eng.load().cached_prefixes
        if pin:
            eng.apply(Decision(step=2, time_s=0.0, unpins=(Unpin(prefix=a.cached[-1].key, worker="w0", program_id="p",
                                                                 reason=UnpinReason.NEXT_CALL),)))
        await _run(eng, _request(eng, "d", _words(20, "d"), system="v"))
        return kept, a.cached[-1].key in eng.load().cached_prefixes

    return asyncio.run(go())


def test_pin_survives_pressure_and_unpin_lets_it_go():
    eng, _ = _engine(capacity_tokens=64)
    assert _pressure(eng, pin=False) == (False, False)  # LRU: A is the oldest leaf
    eng, _ = _engine(capacity_tokens=64)
    assert _pressure(eng, pin=True) == (True, False)
    assert eng.load().pinned_tokens == 0


def test_pin_of_unknown_key_or_other_worker_is_ignored():
    eng, _ = _engine()
    eng.apply(Decision(step=1, time_s=0.0, pins=(
        Pin(prefix="nope", worker="w0", program_id="p", ttl_s=1.0, expires_at_s=1.0, num_tokens=3),)))
    assert eng.load().pinned_tokens == 0


def test_cancel_frees_kv_and_other_requests_go_on():
    eng, _ = _engine(capacity_tokens=200)

    async def go():
        long = asyncio.create_task(_run(eng, _request(eng, "long", _words(20, "l"), out=100)))
        for _ in range(20):  # let it be admitted and decode a few steps
            await asyncio.sleep(0)
        during = eng.load()
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        after = eng.load()
        _, res = await _run(eng, _request(eng, "next", _words(20, "n"), out=4))
        return during, after, res

    during, after, res = asyncio.run(go())
    assert during.running == 1 and during.kv_used_tokens >= 100
    assert after.running == 0 and after.queue_depth == 0
    assert after.kv_used_tokens == 0  # the cancelled sequence reserved everything privately
    assert res.finish_reason == "length" and res.cached_tokens == 0


@pytest.mark.parametrize("charge_link", [False, True])
def test_queued_request_waits_for_memory_then_runs(charge_link):
    eng, _ = _engine(capacity_tokens=120, charge_link=charge_link)

    async def go():
        a = asyncio.create_task(_run(eng, _request(eng, "a", _words(20, "a"), out=60)))
        b = asyncio.create_task(_run(eng, _request(eng, "b", _words(20, "b"), out=60)))
        return await a, await b

    (_, ra), (_, rb) = asyncio.run(go())
    assert ra.queued_s == 0.0
    # admitted when A's KV came free: at A's end, or (HiCache write-through with its link charged)
    # once A's sequence has been written to the host, its GPU path locked until then
    write_s = (ra.prompt_tokens + 60) / COST.d2h_tokens_per_s if charge_link else 0.0
    assert rb.queued_s == pytest.approx(ra.duration_s + write_s, rel=1e-9)


def test_admission_order_follows_the_decision():
    eng, _ = _engine(capacity_tokens=120)

    async def go():
        tasks = {}
        for cid in ("a", "b", "c"):
            tasks[cid] = asyncio.create_task(_run(eng, _request(eng, cid, _words(20, cid), out=60)))
            await asyncio.sleep(0)
        eng.apply(Decision(step=1, time_s=0.0, admit=("c", "b")))
        return {cid: (await t)[1] for cid, t in tasks.items()}

    res = asyncio.run(go())
    assert res["a"].queued_s == 0.0
    assert 0 < res["c"].queued_s < res["b"].queued_s


def test_closed_engine_fails_streams():
    eng, _ = _engine()

    async def go():
        t = asyncio.create_task(_run(eng, _request(eng, "a", _words(20, "a"), out=500)))
        for _ in range(5):
            await asyncio.sleep(0)
        await eng.aclose()
        with pytest.raises(EngineError, match="closed"):
            await t
        with pytest.raises(EngineError, match="closed"):
            await _run(eng, _request(eng, "b", "x"))

    asyncio.run(go())


def test_real_clock_scaled():
    """The default clock and asyncio.sleep: a 200-token call priced at ~1.4 s runs in ~14 ms."""
    eng = SimEngine(cost=COST, time_scale=100.0)

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        _, res = await _run(eng, _request(eng, "a", _words(50, "w"), out=200))
        return res, loop.time() - t0

    res, wall = asyncio.run(go())
    assert len(res.output_ids) == 200
    assert wall >= res.duration_s / 100.0 * 0.9
    assert wall < 2.0


@pytest.mark.parametrize("charge_link", [False, True])
def test_prefetch_brings_an_evicted_prefix_back_from_host_after_h2d_time(charge_link):
    from agentflow.runtime.decision import Prefetch

    eng, clock = _engine(capacity_tokens=64, host_capacity_tokens=1000, charge_link=charge_link)

    async def go():
        _, a = await _run(eng, _request(eng, "a", _words(16, "a"), system="s"))
        await _run(eng, _request(eng, "b", _words(20, "b"), system="t"))
        await _run(eng, _request(eng, "c", _words(20, "c"), system="u"))  # evicts A from the GPU
        key = a.cached[-1].key
        gone = key not in eng.load().cached_prefixes
        t0 = clock.now_s()
        queued = max(0.0, eng.worker.link.free_at_s - t0)  # C's host write still on the link
        eng.apply(Decision(step=1, time_s=t0, prefetches=(
            Prefetch(prefix=key, worker="w0", deadline_s=t0 + 1, num_tokens=a.cached[-1].num_tokens),)))
        early = key in eng.load().cached_prefixes
        for _ in range(10):
            await asyncio.sleep(0)
        back = not early and key in eng.load().cached_prefixes
        waited = clock.now_s() - t0
        _, again = await _run(eng, _request(eng, "a2", _words(16, "a"), system="s"))
        return gone, back, waited, again, a, queued

    gone, back, waited, again, a, queued = asyncio.run(go())
    assert gone and back
    assert (queued > 0) == charge_link  # with the link charged, the prefetch waits behind C's write
    h2d = a.cached[-1].num_tokens / COST.h2d_tokens_per_s
    # the engine slept until the transfer landed (the GPU kept part of it)
    assert queued < waited <= (queued + h2d) * 1.0001
    assert again.cached_tokens == again.prompt_tokens - 1 and again.host_tokens == 0  # a GPU hit now


# ---- the SimWorker underneath: chunk pricing, HiCache write-through and its one host link ---------

def _tokens(start: int, n: int) -> bytes:
    from agentflow.runtime.engines.sim.radix import pack_tokens
    return pack_tokens(range(start, start + n))


def _sim_request(call_id: str, prompt: bytes, out: int = 1):
    from agentflow.runtime.engines.sim.worker import SimRequest
    return SimRequest(call_id=call_id, program_id="p", tokens=prompt, output_ids=_tokens(900_000, out),
                      submitted_s=0.0)


def test_worker_prices_a_two_sequence_chunk_per_sequence():
    from agentflow.runtime.engines.sim.worker import SimWorker

    w = SimWorker("w0", COST, host_capacity_tokens=0)
    cached = _tokens(0, 4000)
    w.insert_cached(cached)  # 4000 tokens on the GPU: A's prompt extends them
    w.waiting += [_sim_request("a", cached + _tokens(50_000, 1000)), _sim_request("b", _tokens(60_000, 1000))]
    assert len(w.admit(0.0, {})) == 2
    res = w.run_iteration(0.0)
    # A: 1000 new tokens through 5000 (4000 hit on the GPU); B: 1000 through 1000
    expected = COST.iteration_time_s(prefill_tokens=2000, prefill_context_tokens=6000, decode_seqs=0,
                                     decode_context_tokens=0, prefill_seqs=((1000, 5000), (1000, 1000)))
    assert res.duration_s == expected
    assert res.duration_s < COST.iteration_time_s(prefill_tokens=2000, prefill_context_tokens=6000, decode_seqs=0,
                                                  decode_context_tokens=0)  # the summed-lengths overcount


@pytest.mark.parametrize("charge_link", [True, False])
def test_a_load_back_waits_behind_a_host_write_on_the_one_link(charge_link):
    from agentflow.runtime.engines.sim.worker import SimWorker

    d2h, h2d = COST.d2h_tokens_per_s, COST.h2d_tokens_per_s
    w = SimWorker("w0", COST, capacity_tokens=10_000, host_capacity_tokens=20_000, charge_link=charge_link)
    x, y = _tokens(0, 1000), _tokens(10_000, 2000)
    w.insert_cached(x, now=0.0)  # write-through: X's 1000 tokens go to the host
    t1 = 1000 / d2h
    if charge_link:
        assert w.link.free_at_s == t1 and w.next_write_s() == t1
        assert w.gpu.evictable_size() == 0  # X's path is locked while it is written
        w.admit(t1 * 0.999, {})
        assert w.gpu.evictable_size() == 0
    w.admit(t1, {})  # the write has landed: X may go
    assert w.gpu.evictable_size() == 1000 and w.next_write_s() is None
    w.gpu.evict(1000)  # X leaves the GPU; the host keeps it
    t2 = 2 * t1
    w.insert_cached(y, now=t2)  # Y's write takes the link from t2
    w.waiting.append(_sim_request("r", x + _tokens(20_000, 10)))
    (req,) = w.admit(t2, {})
    assert (req.gpu_hit, req.host_hit) == (0, 1000)
    if charge_link:  # the load queues behind Y's 2000-token write
        assert req.ready_s == pytest.approx(t2 + 2000 / d2h + 1000 / h2d, rel=1e-12)
        assert w.link.waited_s == pytest.approx(2000 / d2h, rel=1e-12)
        assert (w.link.d2h_tokens, w.link.h2d_tokens) == (3000, 1000)
    else:  # free writes, a link nobody else uses
        assert req.ready_s == pytest.approx(t2 + 1000 / h2d, rel=1e-12)
        assert w.link.busy_s == 0.0


def test_without_a_host_tier_nothing_crosses_the_link():
    from agentflow.runtime.engines.sim.worker import SimWorker

    w = SimWorker("w0", COST, capacity_tokens=10_000, host_capacity_tokens=0)
    w.insert_cached(_tokens(0, 1000), now=0.0)
    assert w.host is None and w.next_write_s() is None and w.link.busy_s == 0.0
    assert w.gpu.evictable_size() == 1000  # nothing locked under a write
    assert w.prefetch(0.0, _tokens(0, 1000)) is None


def test_the_in_process_client_starts_a_call_when_its_engine_admits_it():
    # The scheduler's CallStarted marks admission, with what the engine found of the prompt (the
    # working-set admission counts faults from it), as in the replay; it once went out when the call
    # was handed to the engine, without hits, so the live scheduler never saw a fault and kept calls
    # queued inside the engine out of its admission order (issue 19).
    from agentflow.runtime.events import CallStarted
    from agentflow.runtime.service.core import CallRequest
    from agentflow.runtime.service.inprocess import InProcessClient
    from tests.service.test_service_reuse import review_spec

    engine = SimEngine(cost=COST, name="w1", time_scale=10_000.0, strategy="priority")
    started = []

    async def go():
        client = InProcessClient([engine], time_scale=10_000.0)
        apply = client.core.sched.apply

        def spy(event):
            if isinstance(event, CallStarted):
                started.append((event.call_id, event.gpu_hit_tokens, event.host_hit_tokens))
            apply(event)

        client.core.sched.apply = spy
        try:
            await client.open_program("p", review_spec(), tenant="acme")
            first = GenerateRequest(call_id="p/draft", program_id="p", prompt_ids=tuple(range(100, 140)),
                                    max_new_tokens=8, ignore_eos=True)
            _, r1 = await client.run_call(CallRequest(program_id="p", call_id="p/draft", step="draft", prefixes=(),
                                                      prompt_tokens=40), first)
            prompt = first.prompt_ids + r1.output_ids + tuple(range(500, 520))
            second = GenerateRequest(call_id="p/review", program_id="p", prompt_ids=prompt, max_new_tokens=4,
                                     ignore_eos=True)
            await client.run_call(CallRequest(program_id="p", call_id="p/review", step="review", prefixes=(),
                                              prompt_tokens=len(prompt)), second)
        finally:
            await client.close()

    asyncio.run(go())
    assert started == [("p/draft", 0, 0), ("p/review", 48, 0)]  # the draft's 40 + 8 tokens, found cached
