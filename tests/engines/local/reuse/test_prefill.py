"""`prefill_with_reuse` on a real (tiny, random) HF Llama: exact where it must be (segment KV
taken from the same context, fallbacks, prefix copies), anchors that learn online, isolation.

Random weights make the text meaningless, so quality is measured by the benchmark on SmolLM2
(bench/cross_agent_reuse.py); here every expected value is a full prefill of the same prompt."""

from __future__ import annotations

import pytest
import torch
from agentflow.runtime.engines.local.reuse import (
    AnchorBank,
    AnchorConfig,
    Placement,
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

NS = "tenant-a"
HEAD_A, HEAD_B = [1, 2, 3], [40, 41, 42, 43, 44, 45, 46]
GLUE, TAIL = [9, 9], [7, 8]


def segment(seed: int, n: int = 6) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 5000, (n,), generator=g).tolist()


def store_from(model, prompt, start, n, ref, store):
    """Cut prompt[start:start+n] out of a real prefill of `prompt`, position-neutral."""
    k, v = kv_of_cache(forward(model, prompt)[1])
    sk, sv = neutral_slice(k, v, start, start + n, inv_freq_of(model))
    store.put(ref, SegmentKV(token_ids=tuple(prompt[start:start + n]), keys=sk, values=sv))


def b_prompt(seg_a, seg_b):
    """Agent B's prompt: its header, segment a, glue, segment b, tail."""
    prompt = HEAD_B + seg_a + GLUE + seg_b + TAIL
    pa = Placement(ref=SegmentRef(namespace=NS, key="a"), kind="a->B", start=len(HEAD_B), num_tokens=len(seg_a))
    pb = Placement(ref=SegmentRef(namespace=NS, key="b"), kind="b->B", start=pa.end + len(GLUE),
                   num_tokens=len(seg_b))
    return prompt, [pa, pb]


def test_segments_from_the_same_context_reproduce_a_full_prefill(tiny_lm):
    """Stored KV cut from B's own prompt, placed back at the same offsets, gaps computed: exact."""
    model = tiny_lm.model
    seg_a, seg_b = segment(1), segment(2)
    prompt, placements = b_prompt(seg_a, seg_b)
    store = SegmentStore()
    for p in placements:
        store_from(model, prompt, p.start, p.num_tokens, p.ref, store)
    res = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS,
                             config=ReuseConfig(use_anchors=False))
    full_logits, full_cache = forward(model, prompt)
    torch.testing.assert_close(res.logits, full_logits[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kv_of_cache(res.cache)[0], kv_of_cache(full_cache)[0], atol=1e-4, rtol=1e-4)
    assert (res.num_reused_tokens, res.num_computed_tokens, res.fell_back) == (12, len(prompt) - 12, False)
    assert [o.reason for o in res.outcomes] == ["plain", "plain"]


def test_prefix_kv_is_copied_not_recomputed(tiny_lm):
    model = tiny_lm.model
    seg_a, seg_b = segment(3), segment(4)
    prompt, placements = b_prompt(seg_a, seg_b)
    store = SegmentStore()
    for p in placements:
        store_from(model, prompt, p.start, p.num_tokens, p.ref, store)
    prefix = kv_of_cache(forward(model, HEAD_B)[1])
    res = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS,
                             config=ReuseConfig(use_anchors=False), prefix_kv=prefix)
    assert (res.num_prefix_tokens, res.num_computed_tokens) == (len(HEAD_B), len(GLUE) + len(TAIL))
    full = forward(model, prompt)[0][-1]
    torch.testing.assert_close(res.logits, full, atol=1e-4, rtol=1e-4)
    # a fallback (no anchors yet) still starts from the prefix: exact, and the prefix is not recomputed
    bank = AnchorBank()
    fb = prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS, prefix_kv=prefix)
    assert fb.fell_back and (fb.num_prefix_tokens, fb.num_computed_tokens) == (len(HEAD_B), len(prompt) - len(HEAD_B))
    torch.testing.assert_close(fb.logits, full, atol=1e-4, rtol=1e-4)
    assert len(bank.pool(NS, "a->B")) == 1


def test_cross_context_segments_deviate_and_fallbacks_seed_exact_anchors(tiny_lm):
    """Segments produced after agent A's header are placed in B's prompt. Plain realignment is
    off (the deviation above layer 0); with anchors, the first two prompts fall back (exact,
    each becomes an anchor) and a third prompt with the same segments is then corrected from
    its nearest anchor, back to the full prefill's logits."""
    model = tiny_lm.model
    cfg = AnchorConfig(min_anchors=2, temperature=0.01)
    bank, store = AnchorBank(cfg), SegmentStore()

    def produce(seg_a, seg_b):
        store.put(SegmentRef(namespace=NS, key="a"), base_kv(model, seg_a, HEAD_A))
        store.put(SegmentRef(namespace=NS, key="b"), base_kv(model, seg_b, HEAD_A))

    seen = []
    for seeds in [(10, 11), (12, 13), (10, 11)]:
        seg_a, seg_b = segment(seeds[0]), segment(seeds[1])
        produce(seg_a, seg_b)
        prompt, placements = b_prompt(seg_a, seg_b)
        full = forward(model, prompt)[0][-1]
        plain = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(cfg), namespace=NS,
                                   config=ReuseConfig(use_anchors=False))
        res = prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS)
        seen.append((res.fell_back, [o.reason for o in res.outcomes]))
        plain_err = (plain.logits - full).abs().max().item()
        assert plain_err > 1e-3  # rotation alone cannot fix the context
        torch.testing.assert_close(res.logits, full, atol=1e-4, rtol=1e-4)
    assert seen == [(True, ["too_few_anchors", "too_few_anchors"]), (True, ["too_few_anchors", "too_few_anchors"]),
                    (False, ["estimated", "estimated"])]
    assert len(bank.pool(NS, "a->B")) == 2 and len(bank.pool(NS, "b->B")) == 2


def test_following_text_is_placed_from_the_first_observation(tiny_lm):
    """reuse_following_text: the glue after segment a is stored at the first fallback and placed
    (with its anchor deviation) afterwards; the prompt's last token is still computed."""
    model = tiny_lm.model
    bank, store = AnchorBank(AnchorConfig(min_anchors=1, temperature=0.01)), SegmentStore()
    seg_a, seg_b = segment(20), segment(21)
    store.put(SegmentRef(namespace=NS, key="a"), base_kv(model, seg_a, HEAD_A))
    store.put(SegmentRef(namespace=NS, key="b"), base_kv(model, seg_b, HEAD_A))
    prompt, placements = b_prompt(seg_a, seg_b)
    cfg = ReuseConfig(reuse_following_text=True)
    first = prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS, config=cfg)
    again = prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS, config=cfg)
    assert first.fell_back and not again.fell_back
    assert [o.num_follow_reused for o in again.outcomes] == [len(GLUE), len(TAIL) - 1]
    assert again.num_computed_tokens == len(HEAD_B) + 1
    torch.testing.assert_close(again.logits, forward(model, prompt)[0][-1], atol=1e-4, rtol=1e-4)


def test_isolation_namespace_is_part_of_every_key(tiny_lm):
    model = tiny_lm.model
    seg_a, seg_b = segment(5), segment(6)
    prompt, placements = b_prompt(seg_a, seg_b)
    store = SegmentStore()
    for p in placements:
        store_from(model, prompt, p.start, p.num_tokens, p.ref, store)
    with pytest.raises(ValueError, match="never reused across namespaces"):
        prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace="tenant-b")
    # the same keys in another namespace are other entries: nothing to reuse there
    other = [Placement(ref=SegmentRef(namespace="tenant-b", key=p.ref.key), kind=p.kind, start=p.start,
                       num_tokens=p.num_tokens) for p in placements]
    res = prefill_with_reuse(model, prompt, other, store=store, bank=AnchorBank(), namespace="tenant-b")
    assert [o.reason for o in res.outcomes] == ["missing", "missing"] and res.num_reused_tokens == 0
    # a key that now names other text misses instead of serving stale KV
    prompt2, placements2 = b_prompt(segment(7), seg_b)
    res2 = prefill_with_reuse(model, prompt2, placements2, store=store, bank=AnchorBank(), namespace=NS,
                              config=ReuseConfig(use_anchors=False))
    assert [o.reason for o in res2.outcomes] == ["missing", "plain"]
    assert store.drop_namespace(NS) == 2 and len(store) == 0


@pytest.mark.parametrize(("starts", "match"), [([(3, 6), (5, 6)], "not overlap"), ([(0, 6)], "after the prefix"),
                                               ([(10, 6)], "last token must be computed")])
def test_bad_placements_are_rejected(tiny_lm, starts, match):
    prompt = list(range(100, 116))
    placements = [Placement(ref=SegmentRef(namespace=NS, key=str(i)), kind="k", start=s, num_tokens=n)
                  for i, (s, n) in enumerate(starts)]
    prefix = kv_of_cache(forward(tiny_lm.model, prompt[:2])[1]) if match == "after the prefix" else None
    with pytest.raises(ValueError, match=match):
        prefill_with_reuse(tiny_lm.model, prompt, placements, store=SegmentStore(), bank=AnchorBank(), namespace=NS,
                           prefix_kv=prefix)


def test_store_evicts_least_recently_used_past_its_budget(tiny_lm):
    store = SegmentStore(capacity_tokens=12)
    refs = [SegmentRef(namespace=NS, key=k) for k in "xyz"]
    for r, seed in zip(refs[:2], (1, 2), strict=True):
        store.put(r, base_kv(tiny_lm.model, segment(seed)))
    assert store.get(refs[0]) is not None  # x is now the most recent
    store.put(refs[2], base_kv(tiny_lm.model, segment(3)))
    assert refs[1] not in store and refs[0] in store and store.num_tokens == 12


def test_recomputed_heads_join_the_gaps(tiny_lm):
    """recompute_head_tokens=2: each segment's first 2 tokens are computed in the one gap forward;
    with stored KV from the same context the result stays exact."""
    model = tiny_lm.model
    prompt, placements = b_prompt(segment(8), segment(9))
    store = SegmentStore()
    for p in placements:
        store_from(model, prompt, p.start, p.num_tokens, p.ref, store)
    res = prefill_with_reuse(model, prompt, placements, store=store, bank=AnchorBank(), namespace=NS,
                             config=ReuseConfig(use_anchors=False, recompute_head_tokens=2))
    assert [o.num_reused for o in res.outcomes] == [4, 4]
    assert (res.num_reused_tokens, res.num_computed_tokens) == (8, len(prompt) - 8)
    torch.testing.assert_close(res.logits, forward(model, prompt)[0][-1], atol=1e-4, rtol=1e-4)


def test_segment_fallback_computes_only_the_untrusted_segment(tiny_lm):
    """fallback="segment": a segment without anchors is computed in the gap forward (the rest is
    still placed) and becomes an anchor; the same text in the same slot is then placed with that
    anchor's deviation (an exact match) and reproduces the full prefill."""
    model = tiny_lm.model
    seg_a, seg_b = segment(30), segment(31)
    prompt, placements = b_prompt(seg_a, seg_b)
    store, bank = SegmentStore(), AnchorBank(AnchorConfig(min_anchors=1))
    store.put(SegmentRef(namespace=NS, key="a"), base_kv(model, seg_a, HEAD_A))
    store_from(model, prompt, placements[1].start, placements[1].num_tokens, placements[1].ref, store)
    bank.pool(NS, "b->B").observe(base_k=store.get(placements[1].ref).keys, base_v=store.get(placements[1].ref).values,
                                  real_k=store.get(placements[1].ref).keys, real_v=store.get(placements[1].ref).values,
                                  start=placements[1].start)  # b: stored from B itself, deviation 0
    cfg = ReuseConfig(fallback="segment")
    full = forward(model, prompt)[0][-1]
    first = prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS, config=cfg)
    assert not first.fell_back and [(o.reused, o.reason) for o in first.outcomes] == [(False, "too_few_anchors"),
                                                                                      (True, "estimated")]
    assert first.num_computed_tokens == len(prompt) - len(seg_b)
    torch.testing.assert_close(first.logits, full, atol=1e-4, rtol=1e-4)
    again = prefill_with_reuse(model, prompt, placements, store=store, bank=bank, namespace=NS, config=cfg)
    assert [o.reason for o in again.outcomes] == ["estimated", "estimated"] and again.num_reused_tokens == 12
    torch.testing.assert_close(again.logits, full, atol=1e-4, rtol=1e-4)
