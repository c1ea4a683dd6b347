"""Simulator fidelity: a scaled SWE-bench workload run for real on the local engine, and simulated.

The same programs (mini-swe-agent trajectories, SWE-bench Verified; examples/workloads/) go twice
through each policy:

    real   LiveReplay -> InProcessClient(policy) -> ServiceCore (the scheduler) -> LocalEngine
           (SmolLM2-135M on this CPU, a tight KV pool, forced recorded outputs, tools sleep their
           recorded durations); JCT in wall seconds
    sim    Replay (discrete events) -> the same scheduler and policy -> SimWorker with the
           `smollm2-135m-cpu` cost model and the same pool, chunk size and concurrency

The regime (defaults): 6 programs, their first 4 calls, 3 in flight (closed loop), prompts and
outputs scaled by 1/8 (outputs capped at 8 tokens), tools capped at 5 s, no host tier, and a KV pool
of half the peak contexts of the 3 largest programs (939 tokens): a pool that thrashes, where LRU
loses most histories between a program's calls (simulated hit rate 0.14, against 0.67 for
agentflow), so the policies should differ on CPU too. It is sized so that 3 policies x 3 repeats
run in under 10 minutes on two shared cores.

Trust (issue 19):
  * calibration: by default the cost model is fitted (scripts/calibrate_local.py's fit) on the
    steps the real runs themselves logged, all policies and repeats pooled, and the simulation
    runs after them with that fit. On this shared machine the speed moves 2-3x within minutes with
    other users' load, so a fit taken before the runs predicts the load of that minute, not of the
    runs (a first version probed before the runs: the probe ran at load 6, the runs at 3.5-7, and
    the runs were 1.0-2.5x faster than the probe). The fit sets only per-step costs from step
    shapes; the JCTs come from the simulated decisions, batches, queues and tools. The shipped
    preset is checked against the same steps (`calibration.shipped_over_measured`, stale when off
    by > 15 %), and simulated too (`sim_error_shipped`). `--calibration probe` fits a quick sweep
    before the runs instead (about a minute), `--calibration shipped` uses the shipped file.
  * every real run's steps are compared with the fit (`speed`: measured step seconds over the
    model's; 1.0 = as fast as the fit): a run whose speed is off by > 15 % ran at another load
    than the rest and is named in `suspect_runs`.
  * real runs interleave policies (the order rotates each repeat), `--repeats` (>= 3) each;
    `real_speedup` is the ratio of mean JCTs, with a 95 % interval from the per-repeat ratios
    (Student t on their logs: each repeat's runs are adjacent in time, so they share the load).
  * `lru` and `sglang` are one configuration here (LRU, no host tier): their real ratio is an A/A
    check of the noise (`aa_ratio`, should contain 1).

Prints per policy `real_jct_mean_s` (and per run), `sim_jct_mean_s`, their relative error, hit
rates; `sim_error` (the largest relative error), `real_speedup` / `sim_speedup` of agentflow over
each baseline, `same_ranking`. Targets: sim_error <= 0.15, real_speedup > 1 with its interval
above 1, same ranking.

    .venv/bin/python bench/fidelity.py --json              # ~6-9 min on 2 shared cores
    .venv/bin/python bench/fidelity.py --quick --json      # 4 programs, 1 repeat (no interval)
    .venv/bin/python bench/fidelity.py --sim-only --json   # the simulation only (seconds)
    .venv/bin/python bench/fidelity_trace.py --policy agentflow   # decision by decision, both engines
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
PRESET = "smollm2-135m-cpu"
STALE = 0.15  # a fit off by more than this on the probe (or a run's steps) is named


def strategy_of(policy: str) -> str:
    """The engine's eviction strategy for a preset: the replay's rule (LRU presets: "lru")."""
    from agentflow.runtime.policies import make_policy

    try:
        lru = make_policy(policy).eviction.name == "lru"
    except ValueError:  # a preset that needs more than its name (belady)
        lru = False
    return "lru" if lru else "priority"


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

    cost = _cost()
    eng = LocalEngine(lm, name="w0", kv_capacity_tokens=kv_tokens, host_capacity_tokens=0,
                      strategy=strategy_of(policy), chunk_tokens=args.chunk_tokens,
                      max_running=args.max_running,
                      prefill_tokens_per_s=8192 / cost.prefill_time_s(8192))
    eng.log_steps(True)
    client = make_client(eng, policy, args)
    live = LiveReplay(programs, plan, client, time_scale=1.0, num_in_flight=args.in_flight, seed=args.seed,
                      run_id=f"fid-{policy}")
    t0 = time.perf_counter()
    summary = await live.run()
    summary["wall_s"] = time.perf_counter() - t0
    summary["evicted_tokens"] = eng.cache.evicted_tokens
    summary["steps"] = eng.steps
    summary["step_log"] = list(eng.step_log)
    summary["load_average"] = [round(v, 2) for v in os.getloadavg()]
    await client.close()
    return summary


def speed(steps, cost) -> float:
    """Measured step seconds over the cost model's for the same steps (1.0: as fast as calibrated)."""
    model = sum(cost.iteration_time_s(prefill_tokens=p, prefill_context_tokens=c, decode_seqs=d,
                                      decode_context_tokens=k) for p, c, d, k, _ in steps)
    return round(sum(s[4] for s in steps) / model, 3) if model > 0 else math.nan


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


_FRESH: dict = {}  # a calibration measured by this run, used instead of the shipped file


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


def fit_steps(steps: list, base: dict) -> dict:
    """A calibration (the shipped file's form) fitted on logged steps (P, C, D, K, seconds) with
    scripts/calibrate_local.py's robust relative-error fit."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("calibrate_local", ROOT / "scripts/calibrate_local.py")
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    rows = np.array([cal.features(*s[:4]) for s in steps])
    t = np.array([s[4] for s in steps])
    x = cal.robust_fit(rows, t)
    data = {k: v for k, v in base.items() if k != "steps"}
    data.update(coefficients=dict(zip(cal.FEATURES, (float(f"{v:.6g}") for v in x), strict=True)),
                fit_error={"fit": cal.summary(cal.rel_errors(rows, t, x)), "held_out": None},
                measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                command="bench/fidelity.py (the real runs' steps)",
                machine={**base.get("machine", {}), "load_average": [round(v, 2) for v in os.getloadavg()]})
    return data


def check_shipped(steps: list, source: str, fit: dict) -> dict:
    """The shipped preset against measured steps: its predicted seconds over the measured."""
    from agentflow.runtime.engines.sim.costmodel import make_cost_model

    shipped = make_cost_model(PRESET)
    ratio = speed(steps, shipped)
    return {"source": source, "steps": len(steps), "fit_error_mean_pct": fit["fit_error"]["fit"]["mean_pct"],
            "coefficients": fit["coefficients"],
            "shipped_over_measured": round(1 / ratio, 3) if ratio else math.nan,
            "shipped_stale": bool(abs(1 / ratio - 1) > STALE) if ratio else True,
            "shipped_measured_at": shipped.data.get("measured_at")}


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def ratio_interval(pairs: list[tuple[float, float]]) -> tuple[float, float] | None:
    """95 % interval of a ratio from per-repeat (baseline JCT, policy JCT) pairs: Student t on the
    logs of the per-repeat ratios. None with fewer than two repeats."""
    logs = [math.log(b / a) for b, a in pairs]
    n = len(logs)
    if n < 2:
        return None
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return round(math.exp(mean - half), 3), round(math.exp(mean + half), 3)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", type=Path, default=WORKLOAD)
    ap.add_argument("--policies", default="lru,sglang,agentflow",
                    help="presets; agentflow's speedup is reported over each of the others")
    ap.add_argument("--programs", type=int, default=6)
    ap.add_argument("--calls", type=int, default=4, help="first N calls of each program")
    ap.add_argument("--in-flight", type=int, default=3, help="programs in flight (closed loop)")
    ap.add_argument("--token-scale", type=float, default=1 / 8)
    ap.add_argument("--output-scale", type=float, default=1 / 8)
    ap.add_argument("--max-output", type=int, default=8)
    ap.add_argument("--max-tool-s", type=float, default=5.0)
    ap.add_argument("--pool-fraction", type=float, default=0.5,
                    help="KV pool / sum of the peak contexts of the programs in flight")
    ap.add_argument("--chunk-tokens", type=int, default=512)
    ap.add_argument("--max-running", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (as calibrated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 programs, 4 calls, 3 in flight, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3, help="real runs per policy, interleaved (order rotated)")
    ap.add_argument("--calibration", choices=("runs", "probe", "shipped"), default="runs",
                    help="the cost model the simulation uses: fitted on the real runs' own steps (default), on "
                         "a quick sweep just before them (~1 min), or the shipped file")
    ap.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)  # old spelling of --calibration probe
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
    if args.repeats < 1:
        print("fidelity: --repeats must be >= 1", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    programs, plan, kv_tokens = setup(args)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    load_before = [round(v, 2) for v in os.getloadavg()]
    t_start = time.perf_counter()

    if args.calibrate:
        args.calibration = "probe"
    lm, calibration = None, {"source": "shipped"}
    from agentflow.runtime.engines.sim.costmodel import make_cost_model

    shipped_data = make_cost_model(PRESET).data
    if not args.sim_only:
        from agentflow.runtime.engines.local.model import load_smollm2

        lm = load_smollm2("float32")
        if args.calibration == "probe":
            _FRESH.update(calibrate_now(args))
            calibration = check_shipped([list(s[:4]) + [s[4]] for s in _FRESH["steps"]], "probe before the runs",
                                        _FRESH)
    runs: dict[str, list[dict]] = {p: [] for p in policies}
    if lm is not None:
        # Interleaved, the order rotated each repeat (lru, sglang, agentflow; sglang, agentflow, lru;
        # ...): a drift in the machine's speed (other users) weighs on every policy alike, and no
        # policy always runs first or right after another.
        for r in range(args.repeats):
            order = policies[r % len(policies):] + policies[: r % len(policies)]
            for policy in order:
                res = asyncio.run(run_real(programs, plan, policy, args, kv_tokens, lm))
                res["repeat"] = r
                runs[policy].append(res)
        if args.calibration == "runs":
            steps = [s for rs in runs.values() for r in rs for s in r["step_log"]]
            _FRESH.update(fit_steps(steps, shipped_data))
            calibration = check_shipped(steps, "the real runs' steps", _FRESH)
    per: dict[str, dict] = {}
    shipped_jct: dict[str, float] = {}
    for policy in policies:
        sim = run_sim(programs, plan, policy, args, kv_tokens)
        per[policy] = {"sim_jct_mean_s": round(sim["jct_mean_s"], 3), "sim_hit_rate": round(sim["prefix_hit_rate"], 3),
                       "sim_recomputed_tokens": sim["recomputed_prefill_tokens"]}
        if _FRESH:  # the shipped preset too, for comparison
            fresh = dict(_FRESH)
            _FRESH.clear()
            shipped_jct[policy] = run_sim(programs, plan, policy, args, kv_tokens)["jct_mean_s"]
            _FRESH.update(fresh)
    suspect = []
    if lm is not None:
        cost = _cost()
        for policy, rs in runs.items():
            for r in rs:
                r["speed"] = speed(r.pop("step_log"), cost)
                if not abs(r["speed"] - 1) <= STALE:
                    suspect.append(f"{policy}#{r['repeat']}")
        for policy, rs in runs.items():
            row = per[policy]
            row.update(real_jct_mean_s=round(sum(r["jct_mean_s"] for r in rs) / len(rs), 3),
                       real_jct_runs_s=[round(r["jct_mean_s"], 2) for r in rs],
                       real_hit_rate=round(sum(r["hit_rate"] for r in rs) / len(rs), 3),
                       real_wall_s=round(sum(r["wall_s"] for r in rs), 1),
                       real_evicted_tokens=sum(r["evicted_tokens"] for r in rs) // len(rs),
                       real_steps=sum(r["steps"] for r in rs) // len(rs),
                       speed=[r["speed"] for r in rs], load_after_runs=[r["load_average"][0] for r in rs])
            row["rel_error"] = round(abs(row["sim_jct_mean_s"] - row["real_jct_mean_s"]) / row["real_jct_mean_s"], 3)
            if policy in shipped_jct:
                row["sim_jct_shipped_s"] = round(shipped_jct[policy], 3)

    out: dict = {
        "bench": "fidelity", "preset": PRESET, "programs": len(programs),
        "calls": sum(len(p.calls) for p in programs), "in_flight": args.in_flight, "kv_capacity_tokens": kv_tokens,
        "prompt_tokens_mean": round(sum(c.prompt_tokens for p in programs for c in p.calls)
                                    / max(1, sum(len(p.calls) for p in programs)), 1),
        "torch_threads": args.threads, "repeats": args.repeats if lm is not None else 0,
        "calibration": calibration, "policies": per,
    }
    if lm is not None:
        out["sim_error"] = max(r["rel_error"] for r in per.values())
        if shipped_jct:
            out["sim_error_shipped"] = round(max(abs(shipped_jct[p] - r["real_jct_mean_s"]) / r["real_jct_mean_s"]
                                                 for p, r in per.items()), 3)
    if "agentflow" in per:
        af = per["agentflow"]
        for base in (p for p in policies if p != "agentflow"):
            b = per[base]
            key = "" if base == "lru" else f"_over_{base}"
            out[f"sim_speedup{key}"] = round(b["sim_jct_mean_s"] / af["sim_jct_mean_s"], 3)
            if lm is not None:
                out[f"real_speedup{key}"] = round(b["real_jct_mean_s"] / af["real_jct_mean_s"], 3)
                ci = ratio_interval([(x["jct_mean_s"], y["jct_mean_s"]) for x, y in zip(runs[base], runs["agentflow"])])
                out[f"real_speedup{key}_ci95"] = ci
        if lm is not None:
            # every baseline ranked as the simulation ranks it
            out["same_ranking"] = all((out[f"real_speedup{'' if p == 'lru' else f'_over_{p}'}"] > 1)
                                      == (out[f"sim_speedup{'' if p == 'lru' else f'_over_{p}'}"] > 1)
                                      for p in policies if p != "agentflow")
    if lm is not None and {"lru", "sglang"} <= set(per):
        out["aa_ratio"] = round(per["lru"]["real_jct_mean_s"] / per["sglang"]["real_jct_mean_s"], 3)
        out["aa_ratio_ci95"] = ratio_interval([(x["jct_mean_s"], y["jct_mean_s"])
                                               for x, y in zip(runs["lru"], runs["sglang"])])
    if lm is not None:
        out["suspect_runs"] = suspect
    out["load_average"] = {"before": load_before, "after": [round(v, 2) for v in os.getloadavg()]}
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
