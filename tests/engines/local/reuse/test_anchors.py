"""The anchor pool as a pure algorithm on small seeded tensors: weights, fallback reasons,
the replacement rule, isolation by namespace."""

from __future__ import annotations

import math

import pytest
import torch
from agentflow.runtime.engines.local.reuse import AnchorBank, AnchorConfig, AnchorPool
from agentflow.runtime.engines.local.reuse.anchors import (
    entropy_bits,
    relative_distance,
    softmax_weights,
)

SHAPE = (3, 2, 4, 8)  # layers, kv_heads, tokens, head_dim


def kv(seed: int, tokens: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*SHAPE[:2], tokens, SHAPE[3], generator=g), torch.randn(*SHAPE[:2], tokens, SHAPE[3], generator=g)


def observe(pool: AnchorPool, base_seed: int, dev: float, tokens: int = 4):
    bk, bv = kv(base_seed, tokens)
    return pool.observe(base_k=bk, base_v=bv, real_k=bk + dev, real_v=bv - dev, start=10)


def test_weights_and_entropy_on_a_table():
    assert softmax_weights([0.0, 0.0], 0.1) == [0.5, 0.5]
    w = softmax_weights([0.0, 0.1], 0.05)
    assert w[0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert entropy_bits([0.5, 0.5]) == pytest.approx(1.0)
    assert entropy_bits([1.0, 0.0]) == 0.0


def test_relative_distance_ignores_layer_0_and_is_scale_free():
    k, v = kv(1)
    k2, v2 = k.clone(), v.clone()
    k2[0] += 100.0  # layer 0 never deviates: not part of the distance
    assert relative_distance(k, v, k2, v2) == 0.0
    assert relative_distance(k, v, 2 * k, 2 * v) == pytest.approx(1.0, rel=1e-5)
    assert relative_distance(3 * k, 3 * v, 6 * k, 6 * v) == pytest.approx(1.0, rel=1e-5)


def test_too_few_anchors_then_estimate_is_nearest_weighted():
    pool = AnchorPool(AnchorConfig(min_anchors=2, temperature=0.01, max_anchors=4))
    bk, bv = kv(1)
    assert pool.estimate(bk, bv).reason == "too_few_anchors"
    observe(pool, 1, dev=0.5)  # same base as the query: distance 0
    assert pool.estimate(bk, bv).reason == "too_few_anchors"
    observe(pool, 2, dev=-3.0)  # a far base
    verdict = pool.estimate(bk, bv)
    assert verdict.reason == "estimated" and verdict.num_usable == 2
    est = verdict.estimate
    assert est.weights[0] > 0.999 and est.distances[0] == 0.0
    assert torch.allclose(est.dev_k[1:], torch.full_like(est.dev_k[1:], 0.5), atol=1e-3)
    assert torch.allclose(est.dev_v[1:], torch.full_like(est.dev_v[1:], -0.5), atol=1e-3)
    assert est.dev_k[0].abs().max() == 0.0  # layer 0 is left unchanged
    assert [a.uses for a in pool.anchors] == [1, 0]


def test_anchors_disagree_falls_back_on_entropy():
    pool = AnchorPool(AnchorConfig(min_anchors=2, temperature=10.0, entropy_frac=0.5, max_distance=10.0))
    observe(pool, 1, dev=0.1)
    observe(pool, 2, dev=0.2)
    bk, bv = kv(3)
    verdict = pool.estimate(bk, bv)  # temperature 10: near-uniform weights, entropy ~1 bit > 0.5
    assert verdict.estimate is None and verdict.reason == "anchors_disagree"


def test_too_far_and_too_short():
    pool = AnchorPool(AnchorConfig(min_anchors=1, max_distance=0.5))
    observe(pool, 1, dev=0.1, tokens=4)
    bk, bv = kv(2)  # an unrelated base: relative distance ~1.4
    assert pool.estimate(bk, bv).reason == "too_far"
    lk, lv = kv(1, tokens=6)  # longer than every anchor: none usable
    assert pool.estimate(lk, lv).reason == "too_few_anchors"
    sk, sv = kv(1)
    short = pool.estimate(sk[:, :, :3], sv[:, :, :3])  # shorter span: the anchor's first 3 tokens line up
    assert short.reason == "estimated" and short.estimate.dev_k.shape[2] == 3


def test_replacement_drops_least_used_then_oldest():
    pool = AnchorPool(AnchorConfig(min_anchors=1, max_anchors=3, temperature=0.01))
    a0, a1, a2 = (observe(pool, s, dev=0.1 * s) for s in (10, 11, 12))
    bk, bv = kv(11)
    pool.estimate(bk, bv)  # a1 serves (weight ~1): uses 1
    assert [a.uses for a in pool.anchors] == [0, 1, 0]
    a3 = observe(pool, 13, dev=0.4)  # full: a0 (uses 0, oldest) goes
    assert pool.anchors == [a1, a2, a3]
    observe(pool, 14, dev=0.5)  # a2 is now the oldest unused
    assert [a.seq for a in pool.anchors] == [a1.seq, a3.seq, 4]
    assert a0 not in pool.anchors


def test_bank_isolates_namespaces():
    bank = AnchorBank(AnchorConfig(min_anchors=1))
    observe(bank.pool("tenant-a", "answer->judge"), 1, dev=0.1)
    bk, bv = kv(1)
    assert bank.pool("tenant-a", "answer->judge").estimate(bk, bv).reason == "estimated"
    assert bank.pool("tenant-b", "answer->judge").estimate(bk, bv).reason == "too_few_anchors"
    assert bank.drop_namespace("tenant-a") == 1
    assert bank.pool("tenant-a", "answer->judge").estimate(bk, bv).reason == "too_few_anchors"


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_anchors"):
        AnchorConfig(min_anchors=5, max_anchors=2)
    with pytest.raises(ValueError, match="temperature"):
        AnchorConfig(temperature=0)


@pytest.mark.parametrize(("devs", "weights", "lam"), [
    ([1.0, 1.0, 1.0], [1 / 3] * 3, 1.0),  # anchors agree: a systematic deviation, kept whole
    ([1.0, -1.0], [0.5, 0.5], 0.0),  # they cancel: noise around zero, dropped
    ([2.0, 1.0], [0.5, 0.5], 0.8),  # (0.5*2*1 + 0.5*1*2) / (0.5*1 + 0.5*4)
    ([1.0, 3.0], [0.5, 0.5], 0.6),  # (0.5*1*3 + 0.5*3*1) / (0.5*9 + 0.5*1)
    ([1.0, 4.0], [0.5, 0.5], 8 / 17),
    ([5.0, -1.0], [1.0, 0.0], 1.0),  # one anchor carries all the weight (exact match): as is
])
def test_shrunk_mean_leave_one_out_table(devs, weights, lam):
    from agentflow.runtime.engines.local.reuse.anchors import shrunk_mean

    tensors = [torch.full((3, 1, 2, 4), d) for d in devs]
    out, lams = shrunk_mean(tensors, weights)
    mean = sum(w * d for w, d in zip(weights, devs, strict=True))
    assert lams.tolist() == pytest.approx([lam] * 3)
    assert torch.allclose(out, torch.full_like(out, lam * mean))


def test_untrusted_anchors_fall_back_when_asked():
    pool = AnchorPool(AnchorConfig(min_anchors=2, temperature=10.0, min_trust=0.5))
    observe(pool, 1, dev=1.0)
    observe(pool, 2, dev=-1.0)  # opposite deviations: trust 0
    bk, bv = kv(3)
    assert pool.estimate(bk, bv).reason == "untrusted"
    lenient = AnchorPool(AnchorConfig(min_anchors=2, temperature=10.0, min_trust=0.0))
    observe(lenient, 1, dev=1.0)
    observe(lenient, 2, dev=-1.0)
    est = lenient.estimate(bk, bv).estimate
    assert est.trust == pytest.approx(0.0, abs=1e-6) and est.dev_k.abs().max() < 1e-5
