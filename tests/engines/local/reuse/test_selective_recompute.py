"""`ReuseConfig.recompute_ratio` (CacheBlend-style selective recomputation) on the tiny random Llama:
off changes nothing, all-on is a full prefill, the selection pass computes the true layer-1 KV,
and it picks the tokens whose stored KV was corrupted."""

from __future__ import annotations

import pytest
import torch
from agentflow.runtime.engines.local.reuse import (
    AnchorBank,
    ReuseConfig,
    SegmentKV,
    SegmentRef,
    SegmentStore,
    base_kv,
    forward,
    inv_freq_of,
    kv_of_cache,
    neutral_slice,
    prefill_with_reuse,
)
from agentflow.runtime.engines.local.reuse.prefill import true_layer1_kv

# the prompts and segments of `prefill_with_reuse`'s own tests
from tests.engines.local.reuse.test_prefill import HEAD_A, HEAD_B, NS, b_prompt, segment


def cross_context_store(model, seg_a, seg_b):
    """Both segments produced after agent A's header: placed in B's prompt they deviate."""
    store = SegmentStore()
    store.put(SegmentRef(namespace=NS, key="a"), base_kv(model, seg_a, HEAD_A))
    store.put(SegmentRef(namespace=NS, key="b"), base_kv(model, seg_b, HEAD_A))
    return store


def plain(**kw):
    return ReuseConfig(use_anchors=False, **kw)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_true_layer1_kv_is_the_full_prefills(tiny_lm, with_prefix):
    model = tiny_lm.model
    prompt, _ = b_prompt(segment(1), segment(2))
    keys, values = kv_of_cache(forward(model, prompt)[1])
    prefix = kv_of_cache(forward(model, HEAD_B)[1]) if with_prefix else None
    positions = [8, 9, 12, 15, 16, 17]  # any ascending subset after the prefix
    k1, v1 = true_layer1_kv(model, prompt, positions, prefix)
    torch.testing.assert_close(k1, keys[1][:, positions], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v1, values[1][:, positions], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", [0, 2])
def test_ratio_zero_is_todays_result(tiny_lm, head):
    model = tiny_lm.model
    seg_a, seg_b = segment(3), segment(4)
    prompt, placements = b_prompt(seg_a, seg_b)
    store = cross_context_store(model, seg_a, seg_b)
    prefix = kv_of_cache(forward(model, HEAD_B)[1])
    runs = [prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS, config=cfg,
                               prefix_kv=prefix)
            for cfg in (plain(recompute_head_tokens=head), plain(recompute_head_tokens=head, recompute_ratio=0.0))]
    assert torch.equal(runs[0].logits, runs[1].logits)
    assert all(torch.equal(a, b) for a, b in zip(kv_of_cache(runs[0].cache), kv_of_cache(runs[1].cache), strict=True))
    assert runs[0].outcomes == runs[1].outcomes and runs[1].selected_positions == ()
    assert (runs[1].num_reused_tokens, runs[1].num_computed_tokens) == (12 - 2 * head, len(prompt) - 7 - 12 + 2 * head)


@pytest.mark.parametrize(("with_prefix", "head"), [(False, 0), (True, 0), (True, 2)])
def test_ratio_one_recomputes_everything_placed(tiny_lm, with_prefix, head):
    """Cross-context segments (plain placement is off); r = 1 computes every placed token: a full prefill."""
    model = tiny_lm.model
    seg_a, seg_b = segment(5), segment(6)
    prompt, placements = b_prompt(seg_a, seg_b)
    store = cross_context_store(model, seg_a, seg_b)
    prefix = kv_of_cache(forward(model, HEAD_B)[1]) if with_prefix else None
    full_logits, full_cache = forward(model, prompt)
    off = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS,
                             config=plain(recompute_head_tokens=head), prefix_kv=prefix)
    assert (off.logits - full_logits[-1]).abs().max().item() > 1e-3
    res = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS,
                             config=plain(recompute_head_tokens=head, recompute_ratio=1.0), prefix_kv=prefix)
    torch.testing.assert_close(res.logits, full_logits[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kv_of_cache(res.cache)[0], kv_of_cache(full_cache)[0], atol=1e-4, rtol=1e-4)
    m = len(HEAD_B) if with_prefix else 0
    assert (res.num_reused_tokens, res.num_computed_tokens) == (0, len(prompt) - m)
    assert [(o.reused, o.num_recomputed, o.num_selected, o.num_reused) for o in res.outcomes] == \
        [(True, head, 6 - head, 0)] * 2
    assert res.selected_positions == tuple(t for p in placements for t in range(p.start + head, p.end))


@pytest.mark.parametrize("with_prefix", [False, True])
def test_selection_finds_the_corrupted_tokens(tiny_lm, with_prefix):
    """Stored KV cut from B's own prompt (exact) except 3 tokens corrupted at every layer above 0:
    r = 0.25 of 12 placed tokens selects exactly those 3, and computing them restores the full prefill."""
    model = tiny_lm.model
    prompt, placements = b_prompt(segment(7), segment(8))
    keys, values = kv_of_cache(forward(model, prompt)[1])
    corrupt = {placements[0].ref: [1, 4], placements[1].ref: [3]}  # token index within each segment
    g = torch.Generator().manual_seed(0)
    store = SegmentStore()
    for p in placements:
        k, v = neutral_slice(keys, values, p.start, p.end, inv_freq_of(model))
        k, v = k.clone(), v.clone()
        for t in corrupt[p.ref]:
            k[1:, :, t] += 3 * k[1:, :, t].abs().mean() * torch.randn(k[1:, :, t].shape, generator=g)
            v[1:, :, t] += 3 * v[1:, :, t].abs().mean() * torch.randn(v[1:, :, t].shape, generator=g)
        store.put(p.ref, SegmentKV(token_ids=tuple(prompt[p.start:p.end]), keys=k, values=v))
    prefix = kv_of_cache(forward(model, HEAD_B)[1]) if with_prefix else None
    full = forward(model, prompt)[0][-1]
    off = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS, config=plain(),
                             prefix_kv=prefix)
    assert (off.logits - full).abs().max().item() > 1e-3
    res = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS,
                             config=plain(recompute_ratio=0.25), prefix_kv=prefix)
    planted = tuple(sorted(p.start + t for p in placements for t in corrupt[p.ref]))
    assert res.selected_positions == planted
    assert [o.num_selected for o in res.outcomes] == [2, 1] and res.num_reused_tokens == 9
    torch.testing.assert_close(res.logits, full, atol=1e-4, rtol=1e-4)


def test_selected_following_text_counts_as_computed(tiny_lm):
    """With reuse_following_text the placed glue is a candidate too; r = 1 computes it all."""
    from agentflow.runtime.engines.local.reuse import AnchorConfig

    model = tiny_lm.model
    bank = AnchorBank(AnchorConfig(min_anchors=1, temperature=0.01))
    seg_a, seg_b = segment(20), segment(21)
    store = cross_context_store(model, seg_a, seg_b)
    prompt, placements = b_prompt(seg_a, seg_b)
    prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS,
                       config=ReuseConfig(reuse_following_text=True))  # falls back, stores the glue, seeds anchors
    res = prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS,
                             config=ReuseConfig(reuse_following_text=True, recompute_ratio=1.0))
    assert not res.fell_back and res.num_reused_tokens == 0 and res.num_computed_tokens == len(prompt)
    assert [(o.num_selected, o.num_follow_reused) for o in res.outcomes] == [(6, 0), (6, 0)]
    torch.testing.assert_close(res.logits, forward(model, prompt)[0][-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_bad_ratio_is_rejected(ratio):
    with pytest.raises(ValueError, match="recompute_ratio"):
        ReuseConfig(recompute_ratio=ratio)
