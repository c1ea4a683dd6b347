"""The local engine applies Decision.reuse: finished outputs kept position-neutral, hinted spans
placed with `prefill_with_reuse`, hints that do not apply skipped and counted, and approximate KV
never entering the prefix cache.

A tiny random Llama (no tokenizer: prompts are ids; its text is meaningless, so this pins
mechanics and exactness of what is cached; the real model's quality is tested in
tests/executor/test_cross_agent_reuse.py)."""

from __future__ import annotations

import asyncio

import torch
from agentflow.runtime.decision import Decision
from agentflow.runtime.engines.base import GenerateRequest, collect
from agentflow.runtime.engines.local.engine import LocalEngine
from agentflow.runtime.engines.local.reuse.prefill import ReuseConfig
from agentflow.runtime.engines.sim.radix import pack_tokens
from agentflow.runtime.reuse_plan import ReuseHint, call_segment_key

NS = "t/wf:w/p:1"
SOURCE_PROMPT = tuple(range(10, 30))
SOURCE_OUT = tuple(range(100, 120))  # forced: 20 tokens, the first 19 have KV
HEAD = 2
# the target prompt: glue, 16 tokens of the source's output from its 2nd token, glue
TARGET = (1, 2, 3, *range(200, 210), *SOURCE_OUT[1:17], 5, 6, 7)
AT = 13  # where the span sits in TARGET


def engine(tiny, **kw) -> LocalEngine:
    kw.setdefault("reuse", ReuseConfig(use_anchors=False, recompute_head_tokens=HEAD))
    return LocalEngine(tiny, kv_capacity_tokens=1024, **kw)


def request(call_id, prompt, out, **kw) -> GenerateRequest:
    kw.setdefault("reuse_namespace", NS)
    return GenerateRequest(call_id=call_id, program_id=1, prompt_ids=tuple(prompt), forced_output_ids=tuple(out), **kw)


def hint(*, target="B", source="A", at=AT, lo=1, n=16, ns=NS) -> ReuseHint:
    return ReuseHint(key=call_segment_key(ns, source, lo, n), namespace=ns, kind="src->dst", source_call_id=source,
                     source_step="src", target_offset=at, num_tokens=n, source_offset=lo, target_call_id=target)


async def run(eng, *requests, hints=(), close=True):
    """Run requests one after another; the hints are applied (as a Decision) before the last."""
    results = []
    for i, r in enumerate(requests):
        if i == len(requests) - 1 and hints:
            eng.apply(Decision(step=1, time_s=0.0, reuse=tuple(hints)))
        results.append(await collect(eng.generate(r), where="test", call_id=r.call_id))
    if close:
        await eng.aclose()
    return results


def test_a_hinted_span_is_placed_and_only_exact_kv_is_cached(tiny):
    eng = engine(tiny)
    _, b = asyncio.run(run(eng, request("A", SOURCE_PROMPT, SOURCE_OUT), request("B", TARGET, (7, 8, 9)),
                           hints=[hint()]))
    st = eng.reuse_stats
    assert (st.num_hints, st.num_placed, st.num_prefills, st.skipped) == (1, 1, 1, {})
    assert b.reused_tokens == st.num_reused_tokens == 16 - HEAD
    assert st.num_computed_tokens == len(TARGET) - (16 - HEAD)
    assert b.cached == ()  # it had no prefixes, and prompt + output is not cached whole
    # the radix tree holds B's tokens only up to the first placed one
    full = pack_tokens(TARGET + (7, 8))
    assert eng.cache.resident_tokens(full, "default") == AT + HEAD
    assert eng.pool.num_used == eng.cache.tree.total_size()  # the approximate KV's slots were freed


def test_a_later_prefix_hit_serves_exact_kv_only(tiny):
    """After a reused call, the same prompt through the cache gives a full prefill's logits exactly."""
    eng = engine(tiny)
    asyncio.run(run(eng, request("A", SOURCE_PROMPT, SOURCE_OUT), request("B", TARGET, (7, 8, 9)), hints=[hint()],
                    close=False))
    logits, cached, _ = eng.next_token_logits(TARGET)
    assert cached == AT + HEAD
    fresh = LocalEngine(tiny, kv_capacity_tokens=1024, reuse=None)
    exact, _, _ = fresh.next_token_logits(TARGET)
    assert torch.allclose(logits, exact, atol=1e-5)
    asyncio.run(eng.aclose())
    asyncio.run(fresh.aclose())


def test_hints_that_do_not_apply_are_skipped_and_counted(tiny):
    eng = engine(tiny)
    bad = [hint(ns="t/wf:w/p:2"),  # another namespace than the request's
           hint(source="Z"),  # no such output held
           hint(lo=10, n=16),  # runs past the 19 outputs with KV
           hint(at=AT + 1),  # the prompt holds other tokens there
           hint(at=len(TARGET) - 16)]  # would reach the prompt's last token
    good_then_overlap = [hint(), hint(at=AT + 4, lo=5, n=12)]
    asyncio.run(run(eng, request("A", SOURCE_PROMPT, SOURCE_OUT), request("B", TARGET, (7, 8, 9)),
                    hints=bad + good_then_overlap))
    st = eng.reuse_stats
    assert st.skipped == {"namespace": 1, "source_missing": 1, "out_of_range": 2, "tokens_differ": 1, "overlap": 1}
    assert (st.num_hints, st.num_placed) == (7, 1)


def test_a_span_inside_the_prefix_hit_and_a_request_without_namespace_are_skipped(tiny):
    eng2 = engine(tiny)
    # the target prompt runs once exactly (cached), then again with the hint: the hit covers the span
    asyncio.run(run(eng2, request("A", SOURCE_PROMPT, SOURCE_OUT), request("B0", TARGET, (7, 8, 9)),
                    request("B", TARGET, (7, 8, 9)), hints=[hint()]))
    assert eng2.reuse_stats.skipped == {"in_prefix": 1}
    eng3 = engine(tiny)
    asyncio.run(run(eng3, request("A", SOURCE_PROMPT, SOURCE_OUT),
                    request("B", TARGET, (7, 8, 9), reuse_namespace=None), hints=[hint()]))
    assert eng3.reuse_stats.skipped == {"no_namespace": 1}


def test_an_engine_without_reuse_ignores_hints(tiny):
    eng = engine(tiny, reuse=None)
    _, b = asyncio.run(run(eng, request("A", SOURCE_PROMPT, SOURCE_OUT), request("B", TARGET, (7, 8, 9)),
                           hints=[hint()]))
    assert b.reused_tokens == 0 and eng.reuse_stats.num_hints == 0
    assert eng.cache.resident_tokens(pack_tokens(TARGET + (7, 8)), "default") == len(TARGET) + 2


def test_a_span_ending_with_the_outputs_last_token_is_placed_without_it(tiny):
    """The last output token was sampled, never fed: it has no KV, so the engine trims it off the
    span (the scheduler, counting output tokens, cannot know) and computes it with the gaps."""
    eng = engine(tiny)
    target = (1, 2, 3, *SOURCE_OUT[3:], 5, 6)  # the output's last 17 tokens, its very last one included
    _, b = asyncio.run(run(eng, request("A", SOURCE_PROMPT, SOURCE_OUT), request("B", target, (7, 8)),
                           hints=[hint(at=3, lo=3, n=17)]))
    assert eng.reuse_stats.skipped == {}
    assert b.reused_tokens == 16 - HEAD
