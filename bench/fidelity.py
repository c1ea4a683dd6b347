"""Simulator fidelity: a scaled SWE-bench workload run for real on the local engine, and simulated.

The same programs (mini-swe-agent trajectories, SWE-bench Verified; examples/workloads/) go twice
through each policy:

    real   LiveReplay -> InProcessClient(policy) -> ServiceCore (the scheduler) -> LocalEngine
           (SmolLM2-135M on this CPU, a tight KV pool, forced recorded outputs, tools sleep their
           recorded durations); JCT in wall seconds
    sim    Replay (discrete events) -> the same scheduler and policy -> SimWorker with the
           `smollm2-135m-cpu` cost-model preset (fitted to this engine's steps by
           scripts/calibrate_local.py) and the same pool, chunk size and concurrency

Scaling, so that a run takes minutes on two cores: the first `--programs` programs, their first
`--calls` calls, every prompt segment scaled by `--token-scale` (history stays "all of the previous
call"), outputs scaled by `--output-scale` and capped, tool durations capped. The pool is set to
`--pool-fraction` of the programs-in-flight's peak contexts, so LRU must evict prefixes that
come back.

Prints per policy `real_jct_mean_s`, `sim_jct_mean_s`, their relative error, hit rates; and
`sim_error` (the largest relative error), `real_speedup` / `sim_speedup` (lru JCT over agentflow
JCT), `same_ranking`. Targets: sim_error <= 0.15, real_speedup > 1, same ranking.

    .venv/bin/python bench/fidelity.py --json              # ~5 min on 2 shared cores
    .venv/bin/python bench/fidelity.py --quick --json      # fewer programs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
PRESET = "smollm2-135m-cpu"
STRATEGY = {"lru": "lru", "continuum": "lru"}  # the replay's rule: other policies use "priority"


def scale_programs(programs, *, num_calls: int, token_scale: float, output_scale: float, max_output: int,
                   max_tool_s: float):
    """Shorter programs with the same sharing structure (see the module docstring)."""
    from agentflow.runtime.workload.format import SegmentKind

    out = []
    for p in programs:
        calls, full_len = [], []
        for c in p.calls[:num_calls]:
            segs = []
            for s in c.segments:
                if s.kind is SegmentKind.HISTORY:
                    orig_full = p.calls[s.call].prompt_tokens + p.calls[s.call].output_tokens
                    n = full_len[s.call] if s.num_tokens >= orig_full else min(full_len[s.call],
                                                                               max(1, round(s.num_tokens * token_scale)))
                else:
                    n = max(1, round(s.num_tokens * token_scale)) if s.num_tokens else 0
                segs.append(s.model_copy(update={"num_tokens": n}))
            o = max(2, min(max_output, round(c.output_tokens * output_scale)))
            tool = c.tool.model_copy(update={"duration_s": min(c.tool.duration_s, max_tool_s)}) if c.tool else None
            calls.append(c.model_copy(update={"segments": segs, "output_tokens": o, "tool": tool}))
            full_len.append(sum(s.num_tokens for s in segs) + o)
        agents = [a.model_copy(update={"system_prompt": [pp.model_copy(update={
            "num_tokens": max(1, round(pp.num_tokens * token_scale))}) for pp in a.system_prompt]})
            for a in p.agents]
        out.append(p.model_copy(update={"calls": calls, "agents": agents}))
    return out


def peak_tokens(programs) -> list[int]:
    return [max(c.prompt_tokens + c.output_tokens for c in p.calls) for p in programs]


async def run_real(programs, plan, policy: str, args, kv_tokens: int, lm) -> dict:
    from agentflow.runtime.engines.local.engine import LocalEngine
    from agentflow.runtime.replay.live import LiveReplay
    from agentflow.runtime.service.inprocess import InProcessClient

    cost = _cost()
    eng = LocalEngine(lm, name="w0", kv_capacity_tokens=kv_tokens, host_capacity_tokens=0,
                      strategy=STRATEGY.get(policy, "priority"), chunk_tokens=args.chunk_tokens,
                      max_running=args.max_running,
                      prefill_tokens_per_s=8192 / cost.prefill_time_s(8192))
    client = make_client(eng, policy, args)
    live = LiveReplay(programs, plan, client, time_scale=1.0, num_in_flight=args.in_flight, seed=args.seed,
                      run_id=f"fid-{policy}")
    t0 = time.perf_counter()
    summary = await live.run()
    summary["wall_s"] = time.perf_counter() - t0
    summary["evicted_tokens"] = eng.cache.evicted_tokens
    summary["steps"] = eng.steps
    await client.close()
    return summary


def make_client(eng, policy: str, args):
    from agentflow.runtime.service.inprocess import InProcessClient

    return InProcessClient([eng], policy=policy, time_scale=1.0)


def run_sim(programs, plan, policy: str, args, kv_tokens: int) -> dict:
    from agentflow.runtime.replay.engine import Replay, ReplayConfig
    from agentflow.runtime.workload import ClosedLoop

    rc = ReplayConfig(kv_capacity_tokens=kv_tokens, host_capacity_tokens=0, chunk_tokens=args.chunk_tokens,
                      max_running=args.max_running, seed=args.seed)
    sim = Replay(ClosedLoop(programs, num_in_flight=args.in_flight), plan, policy, _cost(), rc)
    return sim.run()


_FRESH: dict = {}  # --calibrate: a calibration measured by this run, used instead of the shipped file


def _cost():
    from agentflow.runtime.engines.sim.costmodel import (
        MeasuredCostModel,
        make_cost_model,
    )

    if _FRESH:
        return MeasuredCostModel(PRESET + " (calibrated by this run)", _FRESH)
    return make_cost_model(PRESET)


def calibrate_now(args) -> dict:
    """scripts/calibrate_local.py's quick sweep, now: the machine's speed at the time of the real runs."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("calibrate_local", ROOT / "scripts/calibrate_local.py")
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    ns = SimpleNamespace(threads=args.threads, chunk_tokens=args.chunk_tokens, seed=args.seed, repeats=1, quick=True)
    return asyncio.run(cal.calibrate(ns))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", type=Path, default=WORKLOAD)
    ap.add_argument("--policies", default="lru,agentflow")
    ap.add_argument("--programs", type=int, default=12)
    ap.add_argument("--calls", type=int, default=6, help="first N calls of each program")
    ap.add_argument("--in-flight", type=int, default=6, help="programs in flight (closed loop)")
    ap.add_argument("--token-scale", type=float, default=1 / 8)
    ap.add_argument("--output-scale", type=float, default=1 / 8)
    ap.add_argument("--max-output", type=int, default=8)
    ap.add_argument("--max-tool-s", type=float, default=10.0)
    ap.add_argument("--pool-fraction", type=float, default=0.5,
                    help="KV pool / sum of the peak contexts of the programs in flight")
    ap.add_argument("--chunk-tokens", type=int, default=512)
    ap.add_argument("--max-running", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (as calibrated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 programs, 4 calls")
    ap.add_argument("--repeats", type=int, default=2, help="real runs per policy, interleaved; JCTs averaged")
    ap.add_argument("--calibrate", action="store_true",
                    help="time the engine now (a quick calibration, ~1 min) and simulate with that fit instead "
                         "of the shipped preset: on a shared machine the speed drifts between runs")
    ap.add_argument("--sim-only", action="store_true", help="skip the real runs (checks the setup fast)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    return ap


def apply_quick(args) -> None:
    if args.quick:
        args.programs, args.calls, args.in_flight, args.repeats = 4, 4, 3, 1


def setup(args):
    """(programs, planning graph, KV pool tokens) for the flags."""
    from agentflow.runtime.replay.planning import planning_graph
    from agentflow.runtime.workload import load_workload

    wl = load_workload(args.workload)
    programs = scale_programs(wl.programs[: args.programs], num_calls=args.calls, token_scale=args.token_scale,
                              output_scale=args.output_scale, max_output=args.max_output,
                              max_tool_s=args.max_tool_s)
    plan = planning_graph(programs, name=f"fidelity-{wl.header.source}")
    peaks = sorted(peak_tokens(programs), reverse=True)
    kv_tokens = max(max(peaks) + args.max_output + 8,
                    int(args.pool_fraction * sum(peaks[: args.in_flight])))
    return programs, plan, kv_tokens


def main() -> int:
    args = parser().parse_args()
    apply_quick(args)
    import torch

    torch.set_num_threads(args.threads)
    programs, plan, kv_tokens = setup(args)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]

    lm = None
    if not args.sim_only:
        from agentflow.runtime.engines.local.model import load_smollm2

        lm = load_smollm2("float32")
        if args.calibrate:
            _FRESH.update(calibrate_now(args))
    per: dict[str, dict] = {}
    for policy in policies:
        sim = run_sim(programs, plan, policy, args, kv_tokens)
        per[policy] = {"sim_jct_mean_s": round(sim["jct_mean_s"], 3), "sim_hit_rate": round(sim["prefix_hit_rate"], 3),
                       "sim_recomputed_tokens": sim["recomputed_prefill_tokens"]}
    if lm is not None:
        # Policies interleaved (lru, agentflow, lru, agentflow, ...): a drift in the machine's speed
        # (other users) then weighs on every policy alike.
        runs: dict[str, list[dict]] = {p: [] for p in policies}
        for _ in range(args.repeats):
            for policy in policies:
                runs[policy].append(asyncio.run(run_real(programs, plan, policy, args, kv_tokens, lm)))
        for policy, rs in runs.items():
            row = per[policy]
            row.update(real_jct_mean_s=round(sum(r["jct_mean_s"] for r in rs) / len(rs), 3),
                       real_jct_runs_s=[round(r["jct_mean_s"], 2) for r in rs],
                       real_hit_rate=round(sum(r["hit_rate"] for r in rs) / len(rs), 3),
                       real_wall_s=round(sum(r["wall_s"] for r in rs), 1),
                       real_evicted_tokens=sum(r["evicted_tokens"] for r in rs) // len(rs),
                       real_steps=sum(r["steps"] for r in rs) // len(rs))
            row["rel_error"] = round(abs(row["sim_jct_mean_s"] - row["real_jct_mean_s"]) / row["real_jct_mean_s"], 3)

    out: dict = {
        "bench": "fidelity", "preset": PRESET, "programs": len(programs),
        "calls": sum(len(p.calls) for p in programs), "in_flight": args.in_flight, "kv_capacity_tokens": kv_tokens,
        "prompt_tokens_mean": round(sum(c.prompt_tokens for p in programs for c in p.calls)
                                    / max(1, sum(len(p.calls) for p in programs)), 1),
        "torch_threads": args.threads, "calibration": "fresh" if _FRESH else "shipped",
        "load_average": [round(v, 2) for v in os.getloadavg()], "policies": per,
    }
    if lm is not None:
        out["sim_error"] = max(r["rel_error"] for r in per.values())
    if {"lru", "agentflow"} <= set(per):
        lru, af = per["lru"], per["agentflow"]
        out["sim_speedup"] = round(lru["sim_jct_mean_s"] / af["sim_jct_mean_s"], 3)
        if lm is not None:
            out["real_speedup"] = round(lru["real_jct_mean_s"] / af["real_jct_mean_s"], 3)
            out["same_ranking"] = (out["real_speedup"] > 1) == (out["sim_speedup"] > 1)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
