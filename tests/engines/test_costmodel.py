"""The GPU cost model: KV geometry, monotonicity, presets, shipped coefficients, sanity ranges."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agentflow.runtime.engines.sim import calibration as cal
from agentflow.runtime.engines.sim.costmodel import (
    DEFAULT_PRESET, PRESETS, VidurCostModel, make_cost_model, preset_names, sglang_mem_fraction_static)
from tests.conftest import shared_file

KIB = 1024
ALL = sorted(PRESETS)


@pytest.fixture(scope="module")
def models():
    return {name: make_cost_model(name) for name in ALL}


def decode(cm, seqs, context_each):
    return cm.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=seqs,
                               decode_context_tokens=seqs * context_each)


# ---- geometry and memory ---------------------------------------------------------------------


@pytest.mark.parametrize("name, kv_bytes, per_gpu", [
    ("llama-3.1-8b-h100", 128 * KIB, 128 * KIB),
    ("llama-3.1-70b-4xh100", 320 * KIB, 80 * KIB),
    ("llama-3-8b-a100", 128 * KIB, 128 * KIB),
    ("llama-3-70b-a100", 320 * KIB, 80 * KIB),
])
def test_kv_bytes_per_token_is_exact(models, name, kv_bytes, per_gpu):
    assert models[name].kv_bytes_per_token == kv_bytes
    assert models[name].kv_bytes_per_token_per_gpu == per_gpu


def test_kv_capacity_follows_sglang_memory_formula(models):
    cm = models["llama-3.1-8b-h100"]
    assert cm.mem_fraction_static == 0.835  # SGLang's heuristic on an 81559 MiB H100, TP 1
    usable = (81559 - 512) * 2**20
    pool = int(usable * 0.835) - 8_030_261_248 * 2
    assert cm.kv_capacity_tokens == pool // (128 * KIB)
    assert 400_000 <= cm.kv_capacity_tokens <= 500_000
    assert cm.host_capacity_tokens == 2 * cm.kv_capacity_tokens  # hicache_ratio 2.0


@pytest.mark.parametrize("tp, expected", [(1, 0.835), (4, 0.831)])
def test_sglang_mem_fraction_static(tp, expected):
    assert sglang_mem_fraction_static(gpu_memory_mib=81559, tp=tp, chunked_prefill_size=8192,
                                      cuda_graph_max_bs=256) == expected


def test_a_model_too_big_for_its_gpus_raises():
    with pytest.raises(ValueError, match="no KV pool"):
        make_cost_model("llama-3.1-8b-h100", mem_fraction_static=0.1)


def test_pcie_load_of_an_8k_prefix_is_above_the_theoretical_floor(models):
    cm = models["llama-3.1-8b-h100"]
    seconds = cm.transfer_time_s(8192)
    assert 0.017 <= seconds <= 0.030  # 1 GiB: >= 17 ms at 64 GB/s (anchors.md); 21 ms at 50 GB/s
    assert cm.transfer_time_s(8192, to_gpu=False) == pytest.approx(seconds)


# ---- the iteration --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_zero_work_takes_zero_time(models, name):
    cm = models[name]
    assert cm.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=0,
                               decode_context_tokens=0) == 0.0
    assert cm.prefill_time_s(0) == 0.0
    assert cm.prefill_time_s(0, cached_tokens=5000) == 0.0


@pytest.mark.parametrize("name", ALL)
def test_more_work_takes_more_time(models, name):
    cm = models[name]
    prefill = [cm.iteration_time_s(prefill_tokens=p, prefill_context_tokens=p + 1000, decode_seqs=8,
                                   decode_context_tokens=8000) for p in range(0, 12000, 37)]
    assert np.all(np.diff(prefill) > 0)
    seqs = [decode(cm, b, 2000) for b in range(1, 1200, 7)]
    assert np.all(np.diff(seqs) > 0)
    context = [cm.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=16,
                                   decode_context_tokens=c) for c in range(16, 400_000, 4000)]
    assert np.all(np.diff(context) > 0)  # decode reads every context token's KV
    cached = [cm.prefill_time_s(2048, cached_tokens=c) for c in range(0, 64_000, 4000)]
    assert np.all(np.diff(cached) > 0)  # attention over a longer cached prefix
    assert np.all(np.diff([cm.prefill_time_s(n) for n in range(1, 40_000, 997)]) > 0)


def test_breakdown_adds_up_and_tp1_has_no_allreduce(models):
    cm = models["llama-3.1-8b-h100"]
    kw = dict(prefill_tokens=512, prefill_context_tokens=4096, decode_seqs=20, decode_context_tokens=60_000)
    cost = cm.iteration_cost(**kw)
    assert cost.total_s == pytest.approx(cm.iteration_time_s(**kw))
    assert cost.allreduce_s == 0.0
    assert min(cost.linear_s, cost.lm_head_s, cost.attention_prefill_s, cost.attention_decode_s) > 0
    assert models["llama-3.1-70b-4xh100"].iteration_cost(**kw).allreduce_s > 0


def test_a_two_sequence_chunk_prices_each_sequence_against_its_own_context(models):
    """Issue 14, item 7: a chunk of 1000 new tokens over a 5000-token context and 1000 over 1000
    (a fresh prompt) attends to 1000 x 4500 + 1000 x 500 = 5e6 pairs; priced as one sequence of the
    summed lengths (2000 over 6000) it would be 10e6, twice the pairs."""
    cm = models["llama-3.1-8b-h100"]
    seqs = ((1000, 5000), (1000, 1000))
    kw = dict(prefill_tokens=2000, prefill_context_tokens=6000, decode_seqs=0, decode_context_tokens=0)
    cost = cm.iteration_cost(**kw, prefill_seqs=seqs)
    # Llama-3.1-8B on one H100, by hand: 32 layers, 32 query heads of 128, K and V of 8 KV heads x 128
    # in bf16 (4096 bytes per token per layer), 989.4 TFLOP/s x 0.5, 3.35 TB/s x 0.7, 5 us floor.
    flops = 4 * 32 * 128 * (1000 * (5000 - 500) + 1000 * (1000 - 500))
    nbytes = 4096 * ((5000 + 1000) + (1000 + 1000)) + (2 * 32 * 128 * 2) * 2000
    attention = 32 * 5e-6 + 32 * max(flops / (989.4e12 * 0.5), nbytes / (3.35e12 * 0.7))
    assert attention == pytest.approx(32 * 5e-6 + 32 * 8.192e10 / 4.947e14, rel=1e-12)  # compute-bound
    assert cost.attention_prefill_s == pytest.approx(attention, rel=1e-12)
    assert cost.attention_prefill_s == pytest.approx(0.00545905, abs=1e-8)  # 5.459 ms
    one = cm.iteration_cost(**kw)  # without prefill_seqs: one 2000-token chunk over 6000, 10e6 pairs
    assert one.attention_prefill_s == pytest.approx(32 * 5e-6 + 32 * 4 * 32 * 128 * 10e6 / 4.947e14, rel=1e-12)
    # every other part is the same, and the whole is the parts
    assert (cost.linear_s, cost.lm_head_s, cost.overhead_s) == (one.linear_s, one.lm_head_s, one.overhead_s)
    assert cm.iteration_time_s(**kw, prefill_seqs=seqs) == pytest.approx(
        one.total_s - one.attention_prefill_s + attention, rel=1e-12)
    # one sequence listed is the old call exactly
    assert cm.iteration_time_s(**kw, prefill_seqs=((2000, 6000),)) == cm.iteration_time_s(**kw)
    with pytest.raises(ValueError, match="prefill_tokens=2000"):
        cm.iteration_time_s(**kw, prefill_seqs=((1000, 5000),))


def test_the_measured_model_prices_pairs_per_sequence():
    cm = make_cost_model("smollm2-135m-cpu")
    c = cm.data["coefficients"]
    kw = dict(prefill_tokens=300, prefill_context_tokens=700, decode_seqs=2, decode_context_tokens=900)
    t = cm.iteration_time_s(**kw, prefill_seqs=((100, 500), (200, 200)))
    expected = (c["overhead_s"] + c["s_per_prefill_token"] * 300 + c["s_per_prefill"]
                + c["s_per_attention_pair"] * (100 * (500 - 50) + 200 * (200 - 100))
                + c["s_per_prefill_context_token"] * 700 + c["s_per_decode_seq"] * 2
                + c["s_per_decode_context_token"] * 900)
    assert t == pytest.approx(expected, rel=1e-12)


def test_batches_beyond_the_table_are_computed(models):
    cm = models["llama-3.1-8b-h100"]
    big = decode(cm, 4000, 1000)
    assert big > decode(cm, 1000, 1000) > 0


def test_negative_counts_raise(models):
    cm = models[DEFAULT_PRESET]
    with pytest.raises(ValueError, match="must be >= 0"):
        cm.iteration_time_s(prefill_tokens=-1, prefill_context_tokens=0, decode_seqs=0,
                            decode_context_tokens=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        cm.prefill_time_s(10, cached_tokens=-5)


# ---- sanity against published orders of magnitude (docs/cost-model.md) ------------------------


def test_sanity_llama_31_8b_h100(models):
    cm = models["llama-3.1-8b-h100"]
    prefill_8k = cm.prefill_time_s(8192)
    assert 0.15 <= prefill_8k <= 0.8  # ~60% MFU -> ~0.2 s; serving figures of 10-20K tok/s -> 0.4-0.8 s
    assert 0.005 <= decode(cm, 1, 1024) <= 0.012  # one sequence: ~16 GB of weights at ~3 TB/s, + overhead
    assert 0.012 <= decode(cm, 32, 8192) <= 0.060  # 32 GiB of KV read per step dominates
    assert cm.prefill_time_s(1024, cached_tokens=8192) < cm.prefill_time_s(9216)  # cache hits pay off


def test_sanity_llama_31_70b_4xh100(models):
    cm = models["llama-3.1-70b-4xh100"]
    assert 0.3 <= cm.prefill_time_s(8192) <= 2.0
    assert 0.010 <= decode(cm, 1, 1024) <= 0.040
    a100 = models["llama-3-70b-a100"]
    assert a100.prefill_time_s(8192) > 2 * cm.prefill_time_s(8192)  # 312 vs 989 TFLOP/s peak


# ---- presets ----------------------------------------------------------------------------------


def test_preset_registry():
    assert DEFAULT_PRESET == "llama-3.1-8b-h100"
    assert {"llama-3.1-8b-h100", "llama-3.1-70b-4xh100", "llama-3-8b-a100", "llama-3-70b-a100"} <= set(ALL)
    assert preset_names() == ALL
    assert make_cost_model().name == DEFAULT_PRESET


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        make_cost_model("llama-9-1t-tpu")
    assert "llama-9-1t-tpu" in str(e.value)
    for name in ALL:
        assert name in str(e.value)


def test_unknown_assumption_lists_the_valid_ones():
    with pytest.raises(ValueError, match="iteration_overhead_s"):
        make_cost_model(DEFAULT_PRESET, overhead_ms=3)


def test_assumptions_can_be_overridden():
    base = make_cost_model()
    slow = make_cost_model(iteration_overhead_s=0.005)
    assert decode(slow, 1, 100) == pytest.approx(decode(base, 1, 100) + 0.004)


def test_protocol_attributes(models):
    for cm in models.values():
        assert isinstance(cm, VidurCostModel)
        for attr in ("kv_bytes_per_token", "kv_capacity_tokens", "host_capacity_tokens"):
            assert isinstance(getattr(cm, attr), int) and getattr(cm, attr) > 0
        assert cm.h2d_tokens_per_s > 0 and cm.d2h_tokens_per_s > 0


# ---- calibration ----------------------------------------------------------------------------


def test_shipped_coefficients_round_trip_and_name_their_source():
    c = cal.load_calibration()
    assert c.source["commit"] and "MIT" in c.source["licence"]
    assert set(c.gpus) == {"h100", "a100"}
    again = cal.calibration_from_json(json.loads(json.dumps(cal.calibration_to_json(c))))
    assert again == c


def test_bad_coefficients_file_is_rejected():
    with pytest.raises(ValueError, match="not a agentflow.vidur-coefficients"):
        cal.calibration_from_json({"format": "something-else", "version": 1})


def test_reported_fit_error_is_small_where_the_presets_live():
    rows = {(r["kind"], r["gpu"], r["model"], r["tp"]): r for r in
            cal.load_calibration().fit_error + cal.load_calibration().holdout_error}
    # Llama-3.1-70B on 4 H100s has Llama-2-70B's layers at TP 4.
    assert rows[("fit", "h100", "Llama-2-70b-hf", 4)]["layer_mean_pct"] < 10
    # Llama-3.1-8B's shapes, predicted from a fit that never saw them (on A100, where they were measured).
    assert rows[("holdout", "a100", "Meta-Llama-3-8B", 1)]["layer_mean_pct"] < 10
    assert all(abs(r["layer_small_batch_bias_pct"]) < 15 for r in rows.values())


def test_fit_curve_recovers_a_known_roofline():
    truth = cal.OpCurve(t0_s=5e-6, s_per_flop=1 / 700e12, s_per_byte=1 / 3e12, k=1.5)
    m = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    flops, nbytes = 2 * m * 4096 * 8192, 2 * (4096 * 8192 + m * (4096 + 8192))
    got = cal.fit_curve(flops, nbytes, truth.time_s(flops, nbytes))
    assert np.allclose(got.time_s(flops, nbytes), truth.time_s(flops, nbytes), rtol=0.01)


@pytest.mark.needs_shared
def test_shipped_coefficients_reproduce_vidur_medians():
    """Re-derive the reported fit error from the raw CSVs, and check a few rows by hand."""
    c = cal.load_calibration()
    reported = {(r["gpu"], r["model"], r["tp"]): r for r in c.fit_error}
    for gpu, model in [("h100", "Llama-2-70b-hf"), ("a100", "Meta-Llama-3-8B")]:
        path = shared_file("calibration/vidur/" + cal.MEASURED_FILES[(gpu, model)])
        measured = cal.read_measured_set(path, gpu=gpu, model=model)
        for row in cal.set_errors(c.gpu(gpu), measured):
            want = reported[(gpu, model, row["tp"])]
            for key in ("op_mean_pct", "op_p95_pct", "layer_mean_pct", "layer_p95_pct"):
                assert row[key] == pytest.approx(want[key], abs=0.01), (gpu, model, row["tp"], key)
        for tp in (1, 4):
            for tokens in (1, 64, 512, 2048, 4096):
                sel = np.flatnonzero((measured.tp == tp) & (measured.num_tokens == tokens))[:1]
                meas = sum(measured.median_s[op][sel] for op in cal.LAYER_OPS)
                pred = c.gpu(gpu).layer_time_s(measured.shape, tp, measured.num_tokens[sel])
                err = abs(float(pred[0] / meas[0]) - 1) * 100
                assert err <= reported[(gpu, model, tp)]["layer_max_pct"] + 1e-6, (gpu, model, tp, tokens)
