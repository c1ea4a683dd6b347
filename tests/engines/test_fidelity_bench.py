"""bench/fidelity.py's parts that decide what it reports: the engines' strategy per preset, the
interval of a speedup, and the default regime (a pool that thrashes; sglang and lru alike)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("bench_fidelity", ROOT / "bench/fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lru_presets_run_the_engines_lru_strategy(fidelity):
    # sglang once ran the local engine's "priority" strategy (no priorities: insert order) while the
    # replay ran LRU for it
    assert [fidelity.strategy_of(p) for p in ("lru", "sglang", "continuum", "agentflow", "kvflow")] == [
        "lru", "lru", "lru", "priority", "priority"]


def test_the_interval_of_a_speedup_is_student_t_on_the_per_repeat_log_ratios(fidelity):
    assert fidelity.ratio_interval([(30.0, 20.0)]) is None  # one repeat: no interval
    assert fidelity.ratio_interval([(30.0, 20.0), (33.0, 22.0), (24.0, 16.0)]) == (1.5, 1.5)
    lo, hi = fidelity.ratio_interval([(30.0, 20.0), (30.0, 25.0), (30.0, 15.0)])
    logs = [math.log(1.5), math.log(1.2), math.log(2.0)]
    mean = sum(logs) / 3
    half = 4.303 * math.sqrt(sum((x - mean) ** 2 for x in logs) / 2) / math.sqrt(3)
    assert (lo, hi) == (round(math.exp(mean - half), 3), round(math.exp(mean + half), 3))
    assert lo < 1.0 < hi  # three repeats this far apart do not show a speedup


def test_the_default_regime_thrashes_and_the_baselines_simulate_alike(fidelity):
    args = fidelity.parser().parse_args([])
    programs, plan, kv_tokens = fidelity.setup(args)
    assert (len(programs), kv_tokens) == (6, 939)
    sim = {p: fidelity.run_sim(programs, plan, p, args, kv_tokens) for p in ("lru", "sglang", "agentflow")}
    assert sim["lru"]["jct_mean_s"] == sim["sglang"]["jct_mean_s"]  # one configuration without a host tier
    assert sim["lru"]["prefix_hit_rate"] < 0.35  # LRU loses most histories between calls
    assert sim["agentflow"]["prefix_hit_rate"] > 2 * sim["lru"]["prefix_hit_rate"]
