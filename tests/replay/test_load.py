"""Load runs: run specs, static-cap references, capacity at SLO and the sweep, on small real slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflow.cli.main import cli
from agentflow.runtime.replay.load import RunSpec, capacity_at_slo, policy_of, run_many, run_one

ROOT = Path(__file__).resolve().parents[2]
BFCL = str(ROOT / "examples/workloads/bfcl-multi-turn.jsonl")
SWE = str(ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl")


def test_a_static_cap_is_agentflow_with_a_cap_and_bad_caps_are_named():
    pol = policy_of("cap:3")
    assert pol.name == "cap:3" and pol.programs.max_active == 3 and pol.eviction.name == "workflow"
    assert policy_of("sglang") == "sglang"
    with pytest.raises(ValueError, match="cap:N"):
        policy_of("cap:x")


def test_a_static_cap_holds_programs_back_and_reports_their_wait():
    """8 SWE-bench programs all at once, at most 2 active: programs wait to start, and the run says so."""
    base = RunSpec(workload=SWE, policy="cap:2", num_programs=8, concurrency=8, kv_capacity_tokens=60_000)
    capped, free = run_many([base, RunSpec(**{**_fields(base), "policy": "cap:100"})], processes=1)
    assert capped["programs"] == free["programs"] == 8
    assert capped["start_wait_p99_s"] > 10 * max(free["start_wait_p99_s"], 0.1)
    assert capped["jct_mean_s"] > 0 and capped["concurrency"] == 8


def test_capacity_at_slo_brackets_and_bisects():
    base = RunSpec(workload=BFCL, policy="sglang", num_programs=12)
    cap = capacity_at_slo(base, ("sglang",), steps=3, processes=1)["sglang"]
    assert len(cap.tried) == 3
    assert cap.slo_p95_s > 0
    met = [r for r, p95 in cap.tried if p95 <= cap.slo_p95_s]
    assert cap.rate_per_s == (max(met) if met else 0.0)


def test_replay_sweep_writes_json_and_a_plot(tmp_path):
    out = tmp_path / "sweep"
    res = CliRunner().invoke(cli, ["replay", BFCL, "--policies", "sglang,agentflow", "--programs", "6",
                                   "--sweep", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "sweep.json").read_text())
    assert {r["policy"] for r in doc["runs"]} == {"sglang", "agentflow"}
    assert {r["loop"] for r in doc["runs"]} == {"closed", "open"}
    assert set(doc["capacity_per_min"]) == {"sglang", "agentflow"}
    assert (out / "jct_vs_load.png").stat().st_size > 10_000
    assert "capacity at SLO" in res.output


def _fields(spec: RunSpec) -> dict:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


def test_run_one_is_deterministic():
    spec = RunSpec(workload=BFCL, policy="agentflow", num_programs=5)
    a, b = run_one(spec), run_one(spec)
    assert a["jct_mean_s"] == b["jct_mean_s"] and a["programs"] == 5
