"""Belady's eviction as a reference: its oracle's exact futures, and no heuristic eviction beating it.

The heuristics run under Belady's own admission (call FCFS), with no pins and no prefetch, on the
same arrivals and token ids: only the eviction order differs. `recomputed` counts prompt tokens
computed before and found in neither the GPU nor the host tier.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agentflow.runtime.engines.sim.costmodel import make_cost_model
from agentflow.runtime.engines.sim.radix import TOKEN_BYTES as B
from agentflow.runtime.engines.sim.radix import pack_tokens
from agentflow.runtime.policies import CallFcfs, NoPins, NoPrefetch, Policy, WorkflowEviction
from agentflow.runtime.replay.engine import Replay, ReplayConfig
from agentflow.runtime.replay.oracle import ReplayOracle, program_paths
from agentflow.runtime.replay.planning import planning_graph
from agentflow.runtime.workload import ClosedLoop, load_workload

ROOT = Path(__file__).resolve().parents[2]
SWE = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
COST = make_cost_model()


def test_refresh_projects_every_call_from_the_next_one_at_its_known_time():
    o = ReplayOracle()
    # call 0 reads s; call 1 reads s, h1; call 2 reads s, h1, h2 (old history stays on the path)
    o.learn("p", [["s"], ["s", "h1"], ["s", "h1", "h2"]], llm_s=[2.0, 3.0, 4.0], tool_s=[5.0, 7.0, 0.0])
    o.refresh("p", 1, 100.0)  # call 0 done, its 5 s tool started at 95: call 1 is read at 100
    assert (o.next_use_at_s("s"), o.next_use_at_s("h1"), o.next_use_at_s("h2")) == (100.0, 100.0, 110.0)
    o.refresh("p", 2, 130.0)  # call 1 ran late: everything moves with it
    assert (o.next_use_at_s("s"), o.next_use_at_s("h1"), o.next_use_at_s("h2")) == (130.0, 130.0, 130.0)
    o.learn("q", [["s"]], llm_s=[1.0], tool_s=[0.0])
    o.refresh("q", 0, 120.0)
    assert o.next_use_at_s("s") == 120.0  # the earliest reader over programs
    o.forget("p")
    assert o.next_use_at_s("s") == 120.0 and math.isinf(o.next_use_at_s("h1"))


def test_paths_keep_old_history_and_the_prompt_part_of_a_dropped_output():
    p0, o0 = pack_tokens(range(0, 10)), pack_tokens(range(100, 103))
    p1 = p0 + o0 + pack_tokens(range(200, 205))  # call 1 carries call 0's prompt and output
    o1 = pack_tokens(range(300, 302))
    p2 = p1 + pack_tokens(range(400, 404))  # call 2 drops call 1's output (a reasoning call's)
    calls = [(p0, o0, [("sys", 4)], "full0"), (p1, o1, [("full0", 13)], "full1"),
             (p2, b"", [("p1", 18)], "full2")]
    paths = program_paths(calls, B)
    # a key is read by a call that reaches into the part it governs (past its parent prefix):
    # full0's part starts with call 0's own prompt tokens past the system prompt
    assert sorted(paths[0]) == ["full0", "p1", "sys"]
    assert {"sys", "full0"} <= set(paths[1])
    # call 2 reads the old history (full0) and full1's part up to call 1's output, which it drops
    assert sorted(paths[2]) == ["full0", "full1", "full2", "p1", "sys"]
    other = pack_tokens(range(500, 520))  # a prompt that shares nothing reads none of them
    assert program_paths([*calls, (other, b"", [], "x")], B)[3] == ["x"]


def _recomputed(programs, kv: int, host: int) -> dict[str, int]:
    plan = planning_graph(programs)
    workflow = Policy(name="workflow-eviction", eviction=WorkflowEviction(), ttl=NoPins(), prefetch=NoPrefetch(),
                      admission=CallFcfs())
    prepared: dict = {}
    out = {}
    for policy in ("lru", workflow, "belady"):
        replay = Replay(ClosedLoop(programs, num_in_flight=len(programs)), plan, policy, COST,
                        ReplayConfig(kv_capacity_tokens=kv, host_capacity_tokens=host), prepared=prepared)
        r = replay.run()
        assert r["programs"] == len(programs)
        out[replay.policy_name] = r["recomputed_prefill_tokens"]
    return out


@pytest.mark.parametrize("num_programs, kv, host", [
    (8, 120_000, 0),
    (8, 120_000, 120_000),
    pytest.param(16, 150_000, 0, marks=pytest.mark.slow),
    pytest.param(16, 150_000, 150_000, marks=pytest.mark.slow),
])
def test_no_heuristic_eviction_recomputes_less_than_belady(num_programs, kv, host):
    r = _recomputed(load_workload(SWE).programs[:num_programs], kv, host)
    assert r["lru"] > 0  # the pool is short: eviction decides something
    assert r["belady"] <= r["lru"], r
    assert r["belady"] <= r["workflow-eviction"], r


def test_without_a_host_tier_the_link_setting_changes_nothing():
    """host_capacity_tokens=0 is SGLang without HiCache: no writes, no loads, nothing on a link."""
    programs = load_workload(SWE).programs[:4]
    plan = planning_graph(programs)
    runs = []
    for charge in (True, False):
        replay = Replay(ClosedLoop(programs, num_in_flight=4), plan, "lru", COST,
                        ReplayConfig(kv_capacity_tokens=40_000, host_capacity_tokens=0, charge_host_link=charge))
        r = replay.run()
        assert all(w.host is None and w.link.busy_s == 0.0 for w in replay.workers.values())
        runs.append(r)
    assert runs[0] == runs[1]


def test_the_host_link_carries_the_write_through_and_costs_time():
    programs = load_workload(SWE).programs[:4]
    plan = planning_graph(programs)
    out = {}
    for charge in (True, False):
        replay = Replay(ClosedLoop(programs, num_in_flight=4), plan, "lru", COST,
                        ReplayConfig(kv_capacity_tokens=40_000, host_capacity_tokens=80_000, charge_host_link=charge))
        r = replay.run()
        (w,) = replay.workers.values()
        out[charge] = (r, w.link, replay.rec.host_hit_tokens)
    (charged, link, loaded), (free, unused, _) = out[True], out[False]
    assert unused.busy_s == 0.0 and link.d2h_tokens > 0 and link.h2d_tokens > 0
    assert link.h2d_tokens == loaded  # lru prefetches nothing: the link's loads are the host hits
    assert link.busy_s == pytest.approx(link.d2h_tokens / COST.d2h_tokens_per_s + loaded / COST.h2d_tokens_per_s)
    assert charged["makespan_s"] >= free["makespan_s"]
