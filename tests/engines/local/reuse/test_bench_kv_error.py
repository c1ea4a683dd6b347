"""`bench/cross_agent_reuse.py --kv-error` on a tiny random Llama: the analysis's own pieces (true KV,
estimators, online order, summary), not its figures (those need SmolLM2; docs/cross-agent-reuse.md)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from agentflow.runtime.engines.local.reuse import (
    AnchorConfig,
    AnchorPool,
    Placement,
    SegmentRef,
    SegmentStore,
)
from agentflow.runtime.engines.local.reuse.anchors import shrunk_mean

BENCH = Path(__file__).resolve().parents[4] / "bench" / "cross_agent_reuse.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cross_agent_reuse", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def setting(bench, tiny_lm):
    """The benchmark's program on the tiny model; text becomes ids one character per token."""
    return bench.make_setting(tiny_lm.model, lambda text: [300 + ord(c) % 2000 for c in text], 0)


def questions(num: int, num_tokens: int = 8) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(2500, 5000, (num_tokens,), generator=g).tolist() for _ in range(num)]


def test_a_segment_in_its_own_context_has_no_plain_error(bench, setting):
    """The true KV of a span at the offset and in the context it was stored from is the stored KV;
    in a round-2 prompt (another context) it is not."""
    (q,) = questions(1)
    store = SegmentStore()
    answers = bench.round1(setting, 0, q, store, 3)
    r1 = setting.sys_hdr[0] + q + setting.r1_tail
    own = [Placement(ref=SegmentRef(namespace=bench.NAMESPACE, key="q0/question"), kind="q",
                     start=len(setting.sys_hdr[0]), num_tokens=len(q)),
           Placement(ref=SegmentRef(namespace=bench.NAMESPACE, key="q0/answer0"), kind="a",
                     start=len(r1), num_tokens=len(answers[0]))]
    prompt = r1 + answers[0] + [5]  # one more token: in_context_kv needs nothing of it
    for p, (true_k, true_v) in zip(own, bench.in_context_kv(setting, prompt, own), strict=True):
        seg = store.get(p.ref, prompt[p.start:p.end])
        assert bench.kv_error(seg.keys, seg.values, true_k, true_v) < 1e-5

    prompt, placements = bench.round2_prompt(setting, 0, 1, q, answers, "slot")
    for p, (true_k, true_v) in zip(placements, bench.in_context_kv(setting, prompt, placements), strict=True):
        seg = store.get(p.ref, prompt[p.start:p.end])
        assert bench.kv_error(seg.keys, seg.values, true_k, true_v) > 1e-3


def test_ours_is_kvcomms_weighted_sum_shrunk_by_the_leave_one_out_factor(bench):
    """`ours@T` (AnchorPool.estimate) = λ_l · `kvcomm@T` per layer, λ from uniform weights."""
    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 5, 4)  # layers, kv heads, tokens, head dim
    config = AnchorConfig(min_trust=0.0)
    pool = AnchorPool(config)
    for _ in range(3):
        base_k, base_v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        pool.observe(base_k=base_k, base_v=base_v, real_k=base_k + torch.randn(shape, generator=g),
                     real_v=base_v + torch.randn(shape, generator=g), start=0)
    new_k, new_v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    devs, info = bench.estimator_deviations(pool, new_k, new_v, config, [0.05, 0.1])
    assert set(devs) == {"ours@0.05", "ours@0.1", "kvcomm@0.05", "kvcomm@0.1", "kvcomm_token@0.05",
                         "kvcomm_token@0.1", "half"}
    _, lam_k = shrunk_mean([a.dev_k for a in pool.anchors], [1 / 3] * 3)
    for t in ("0.05", "0.1"):
        ours_k, kvcomm_k = devs[f"ours@{t}"][0], devs[f"kvcomm@{t}"][0]
        torch.testing.assert_close(ours_k, kvcomm_k * lam_k.view(-1, 1, 1, 1))
    torch.testing.assert_close(devs["half"][0], 0.5 * devs["kvcomm@0.1"][0])
    assert 0.0 <= info["trust"] <= 1.0 and len(info["distances"]) == 3
    assert all(0.0 < h <= 1.0 + 1e-9 for h in info["entropy"].values())
    assert pool.config is config  # the temperature swap is undone


def test_the_mode_scores_placements_online_on_a_tiny_model(bench, setting):
    """Three questions: the third is the first with two anchors per slot, so its 25 placements are
    scored, from the same pools the benchmark would hold (the first two questions' fallbacks)."""
    out = bench.run_kv_error(setting, questions(3), AnchorConfig(), answer_tokens=3, progress=False)
    assert out["num_placements"] == 25 and out["num_prompts_scored"] == 5
    rel = out["kv_error_vs_plain"]
    assert rel["plain"] == 1.0
    assert set(rel) == {"plain", "ours", "kvcomm", "kvcomm_token", "half"}
    assert set(rel["ours"]) == {"0.02", "0.05", "0.1", "0.3", "1"}
    assert all(math.isfinite(x) for name in ("ours", "kvcomm", "kvcomm_token") for x in rel[name].values())
    assert out["by_segment"]["question"]["num_placements"] == 5
    assert out["by_segment"]["answer"]["num_placements"] == 20
    assert set(out["by_num_anchors"]) == {"2"}
    assert 0.0 <= out["trust"]["min"] <= out["trust"]["max"] <= 1.0
    assert out["distances"]["min"] > 0.0
    assert set(out["error_by_position"]["question"]["plain_vs_true_kv"]) == {"0", "1-3", "4-15"}  # 8 tokens
    share = out["error_by_position"]["answer"]["plain_error_share"]
    assert sum(share.values()) == pytest.approx(1.0, abs=2e-3)
    pools = out["benchmark_pools"]
    assert pools["num_placements"] == 25 and pools["num_prompts_fell_back"] == 10
    assert pools["kv_error_vs_plain"]["ours"] == pytest.approx(rel["ours"]["0.1"], abs=1e-4)
    assert pools["kv_error_vs_plain"]["kvcomm"] == pytest.approx(rel["kvcomm"]["0.1"], abs=1e-4)
