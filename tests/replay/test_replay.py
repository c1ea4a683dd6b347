"""The replay: planning graphs, the oracle, a small replay end to end, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflow.cli.main import cli
from agentflow.graph import Position, estimate
from agentflow.runtime.replay.oracle import ReplayOracle
from agentflow.runtime.replay.planning import planning_graph
from agentflow.runtime.replay.run import ReplaySetup, default_concurrency, run
from agentflow.runtime.workload import load_workload

ROOT = Path(__file__).resolve().parents[2]
SWE = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
CHATDEV = ROOT / "examples/workloads/chatdev.jsonl"


def test_single_agent_workload_plans_as_a_tool_loop_with_the_mean_length():
    programs = load_workload(SWE).programs[:10]
    plan = planning_graph(programs)
    g = plan.graph
    (loop,) = g.loops.values()
    assert loop.max_iterations == max(len(p.calls) for p in programs)
    mean = sum(len(p.calls) for p in programs) / 10
    assert g.transitions[loop.source].expected_iterations == pytest.approx(mean)
    assert estimate(g, Position.of(plan.tool_step)).steps_to_execution() == {"agent": 1.0}


def test_multi_agent_workload_plans_with_each_agents_share_of_calls():
    programs = load_workload(CHATDEV).programs
    plan = planning_graph(programs)
    agents = {c.agent for p in programs for c in p.calls}
    assert set(plan.graph.agents) == agents
    branch = plan.graph.transitions["speak"]
    total = sum(c.probability for c in branch.cases) + branch.default_probability
    assert total == pytest.approx(1.0)


def test_oracle_reports_the_earliest_projected_use():
    o = ReplayOracle(llm_time_s_per_call=1.0)
    o.project("p", 10.0, [(0.0, ["a"]), (5.0, ["a", "b"])])  # a at 10, then b after 1 + 5 s
    o.project("q", 12.0, [(0.0, ["a"])])
    assert o.next_use_at_s("a") == 10.0 and o.next_use_at_s("b") == 16.0
    o.forget("p")
    assert o.next_use_at_s("a") == 12.0 and math.isinf(o.next_use_at_s("b"))


def test_default_load_oversubscribes_the_kv_pool():
    programs = load_workload(SWE).programs
    n = default_concurrency(programs, 400_000)
    peak = sum(max(c.prompt_tokens for c in p.calls) for p in programs) / len(programs)
    assert n * 0.5 * peak >= 1.9 * 400_000  # about twice the pool, at half a program's peak


@pytest.fixture(scope="module")
def small():
    setup = ReplaySetup(workload=str(SWE), num_programs=6, concurrency=6, kv_capacity_tokens=60_000,
                        host_capacity_tokens=0, policies=("lru", "agentflow", "belady"))
    return run(setup)


def test_every_program_finishes_and_metrics_are_consistent(small):
    config, results, series = small
    programs = load_workload(SWE).programs[:6]
    tool_s = [sum(c.tool.duration_s for c in p.calls if c.tool) for p in programs]
    for name, r in results.items():
        assert r["programs"] == 6, name
        assert min(series[name]["jct_s"]) >= min(tool_s)  # nobody finishes faster than its tools
        assert 0.0 <= r["prefix_hit_rate"] <= 1.0 and r["host_hit_rate"] == 0.0
        assert r["prefilled_tokens"] >= r["recomputed_prefill_tokens"] >= 0
    assert results["lru"]["pinned_gib_s"] == 0 and results["agentflow"]["pinned_gib_s"] > 0
    assert config["kv_capacity_tokens_per_worker"] == 60_000


def test_replays_are_deterministic(small):
    _, again, _ = run(ReplaySetup(workload=str(SWE), num_programs=6, concurrency=6, kv_capacity_tokens=60_000,
                                  host_capacity_tokens=0, policies=("lru",)))
    first = dict(small[1]["lru"])
    for r in (first, again["lru"]):
        r.pop("wall_s")
    assert again["lru"] == first


def test_replay_command_prints_the_table_and_writes_json_and_plots(tmp_path):
    out = CliRunner().invoke(cli, ["replay", str(SWE), "--programs", "4", "--concurrency", "4",
                                   "--policies", "lru,agentflow", "--json", str(tmp_path / "r.json"),
                                   "--plot", str(tmp_path / "plots")])
    assert out.exit_code == 0, out.output
    assert "JCT vs lru" in out.output and "agentflow" in out.output
    doc = json.loads((tmp_path / "r.json").read_text())
    keys = {"jct_mean_s", "jct_p50_s", "jct_p95_s", "jct_p99_s", "ttft_mean_s", "ttft_p99_s", "prefix_hit_rate",
            "recomputed_prefill_tokens", "pinned_gib_s", "throughput_programs_per_min"}
    assert set(doc["policies"]) == {"lru", "agentflow"}
    assert keys <= set(doc["policies"]["lru"])
    assert doc["config"]["programs"] == 4
    for f in ("jct_cdf.png", "cache_over_time.png", "policies.png"):
        assert (tmp_path / "plots" / f).stat().st_size > 1000


def test_replay_command_rejects_bad_input(tmp_path):
    bad = CliRunner().invoke(cli, ["replay", str(SWE), "--policies", "lru,magic"])
    assert bad.exit_code == 2 and "unknown policy magic" in bad.output
    both = CliRunner().invoke(cli, ["replay", str(SWE), "--rate", "1", "--concurrency", "3"])
    assert both.exit_code == 2 and "choose one of" in both.output
    missing = CliRunner().invoke(cli, ["replay", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "none.jsonl" in missing.output
    for args, message in ((["--workers", "0"], "workers must be >= 1 (got 0)"),
                          (["--programs", "0"], "programs must be >= 1 (got 0)"),
                          (["--kv-tokens", "0"], "needs a GPU KV pool"),
                          (["--concurrency", "0", "--programs", "2"], "--concurrency must be >= 1 (got 0)")):
        out = CliRunner().invoke(cli, ["replay", str(SWE), *args])
        assert out.exit_code == 2 and message in out.output, (args, out.output)


def test_policies_in_parallel_give_what_they_give_one_after_another():
    setup = ReplaySetup(workload=str(SWE), policies=("sglang", "agentflow"), num_programs=6, concurrency=4)
    ticks: list[int] = []
    _, parallel, series_p = run(setup, progress=ticks.append, processes=2)
    _, sequential, series_s = run(setup, processes=1)
    for name in setup.policies:
        for key in ("jct_mean_s", "ttft_p99_s", "prefix_hit_rate", "recomputed_prefill_tokens"):
            assert parallel[name][key] == sequential[name][key], (name, key)
        assert series_p[name]["jct_s"] == series_s[name]["jct_s"]
    assert sum(ticks) == 2 * 6  # every finished program of both runs reached the progress bar
