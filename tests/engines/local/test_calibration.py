"""The `smollm2-135m-cpu` cost-model preset: the local engine's geometry, a sane fit, the fitter.

The preset's numbers come from scripts/calibrate_local.py timing the real engine on this CPU
(runtime/engines/sim/data/smollm2-135m-cpu.json); these tests check that the file describes the
engine the simulator stands in for, and that the fitting code recovers known coefficients.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from agentflow.runtime.engines.local.engine import DEFAULT_KV_CAPACITY_TOKENS
from agentflow.runtime.engines.local.pool import KVGeometry
from agentflow.runtime.engines.sim.costmodel import (
    MeasuredCostModel,
    all_preset_names,
    make_cost_model,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cm() -> MeasuredCostModel:
    return make_cost_model("smollm2-135m-cpu")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("calibrate_local", ROOT / "scripts/calibrate_local.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_preset_describes_the_local_engine(cm, tiny):
    import torch

    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, K and V, fp32 (the engine's default dtype)
    smol = KVGeometry(num_layers=30, num_kv_heads=3, head_dim=64, dtype=torch.float32)
    assert cm.kv_bytes_per_token == smol.bytes_per_token == 46080
    assert cm.kv_capacity_tokens == DEFAULT_KV_CAPACITY_TOKENS
    assert cm.chunk_tokens == 512 and cm.h2d_tokens_per_s > 0
    assert "smollm2-135m-cpu" in all_preset_names()


def test_the_fit_is_sane(cm):
    step = lambda **kw: cm.iteration_time_s(**{"prefill_tokens": 0, "prefill_context_tokens": 0,
                                              "decode_seqs": 0, "decode_context_tokens": 0, **kw})
    assert step() == 0.0
    one = step(decode_seqs=1, decode_context_tokens=512)
    assert 0.005 < one < 1.0  # a decode step of a 135M model on a CPU
    assert step(decode_seqs=8, decode_context_tokens=8 * 512) > one
    assert cm.prefill_time_s(1024) > cm.prefill_time_s(512) > 0
    assert cm.prefill_time_s(512, cached_tokens=2048) >= cm.prefill_time_s(512)
    assert cm.fit_error["fit"]["steps"] > 50


def test_the_fitter_recovers_known_coefficients(script):
    rng = np.random.default_rng(0)
    truth = np.array([0.02, 0.002, 0.01, 1e-7, 1e-6, 0.01, 2e-5])
    shapes = []  # decode-only, prefill-only and mixed steps, as the engine's sweeps log them
    for i, (p, c, d, k) in enumerate(zip(rng.integers(1, 512, 300), rng.integers(0, 2048, 300),
                                         rng.integers(1, 16, 300), rng.integers(16, 2048, 300), strict=True)):
        p, d = (0, d) if i % 3 == 0 else (p, 0) if i % 3 == 1 else (p, d)
        shapes.append((int(p), int(p + c), int(d), int(d * k)))
    rows = np.array([script.features(*s) for s in shapes])
    t = rows @ truth
    assert np.allclose(script.nnls_relative(rows, t), truth, rtol=1e-6)
    noisy = t * np.where(rng.random(t.size) < 0.1, 3.0, 1.0)  # a tenth of the steps slowed 3x
    got = script.robust_fit(rows, noisy)
    assert np.median(np.abs(rows @ got / t - 1)) < 0.05
