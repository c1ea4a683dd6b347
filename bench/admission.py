"""Working-set admission against what users run: every figure side by side in one run.

    .venv/bin/python bench/admission.py --json                    # the shipped SWE-bench workload (~10 min)
    .venv/bin/python bench/admission.py SWE_WORKLOAD --json       # SWE-bench runs it has never seen
    .venv/bin/python bench/admission.py --quick --json            # a smoke run (fewer programs and loads)

What runs (simulated workers, `llama-3.1-8b-h100` unless said; every run through the same
`runtime/replay/load.run_one`, two at a time on two cores):

    main       SWE_WORKLOAD at the default load (closed loop, 2x the KV pool in flight):
               sglang, sglang-hicache, kvflow, continuum, agentflow, belady
    references the same load with agentflow's policies under static caps (cap:N, N on a grid): the
               best cap is found in hindsight, by running them all; with belady (eviction's
               offline optimum, every program admitted), the best reference's JCT bounds how
               much better an online admission could have done at this load
    70b        `llama-3.1-70b-4xh100`, no host tier for anyone: sglang vs agentflow
    sweep      closed loops at 1/4, 1/2 and 2x the default concurrency, and open loops at 1/2 and
               1x the baseline's saturation rate: sglang vs agentflow (tails at every load)
    capacity   the highest Poisson rate with p95 JCT <= 2x the unloaded p95 (runtime/replay/load.py)
    bfcl,      the shipped BFCL and ChatDev workloads at 1/2, 1x and 2x their default concurrency:
    chatdev    sglang vs agentflow

Printed (one JSON line with --json; ratios are baseline over agentflow, more is better, except
the two tail ratios, agentflow over sglang, the worst over every load of the sweep):
    jct_x_vs_sglang, jct_x_vs_sglang_hicache, jct_x_vs_kvflow, jct_x_vs_continuum, jct_x_vs_sglang_70b,
    capacity_x_vs_sglang, ttft_p99_ratio_vs_sglang (TTFT p99 of every call after a program's first,
    parked time included), jct_p95_ratio_vs_sglang, bfcl_jct_x_vs_sglang, chatdev_jct_x_vs_sglang (the
    worst load), jct_ratio_vs_best_reference (agentflow JCT / the best reference's), start_wait_p99_s,
    and the per-run figures under "runs".
Targets (issue 14): >= 2.2, >= 1.15, >= 1.3, >= 1.3, >= 2.5, >= 1.8, <= 1.0, <= 1.0, >= 1.0, >= 1.0, <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentflow.runtime.replay.load import RunSpec, capacity_at_slo, run_many  # noqa: E402

SWE = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
BFCL = ROOT / "examples/workloads/bfcl-multi-turn.jsonl"
CHATDEV = ROOT / "examples/workloads/chatdev.jsonl"
MAIN = ("sglang", "sglang-hicache", "kvflow", "continuum", "agentflow", "belady")
CAPS = (12, 16, 22, 28, 36, 48)


def _default_concurrency(workload: str, n: int | None) -> int:
    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.replay.run import default_concurrency
    from agentflow.runtime.workload import load_workload

    programs = list(load_workload(workload).programs)[:n] if n else list(load_workload(workload).programs)
    return default_concurrency(programs, make_cost_model("llama-3.1-8b-h100").kv_capacity_tokens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload", nargs="?", default=str(SWE), help="SWE-bench workload (default: the shipped one)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 40 programs, fewer loads and caps")
    ap.add_argument("--programs", type=int, default=None, help="the first N programs of each workload")
    ap.add_argument("--processes", type=int, default=None, help="runs in parallel (default: the cores)")
    args = ap.parse_args()
    if not Path(args.workload).is_file():
        print(f"error: no workload file {args.workload}", file=sys.stderr)
        return 2
    n = args.programs or (40 if args.quick else None)
    caps = (8, 16) if args.quick else CAPS
    t0 = time.perf_counter()
    swe = args.workload
    conc = _default_concurrency(swe, n)
    specs: list[RunSpec] = []

    def add(**kw):
        specs.append(RunSpec(num_programs=n, **kw))

    for p in MAIN:
        add(workload=swe, policy=p, concurrency=conc, tag="main")
    for c in caps:
        add(workload=swe, policy=f"cap:{c}", concurrency=conc, tag="reference")
    for p in ("sglang", "agentflow"):
        add(workload=swe, policy=p, preset="llama-3.1-70b-4xh100", host_capacity_tokens=0, tag="70b")
    loads = (2.0,) if args.quick else (0.25, 0.5, 2.0)
    for f in loads:
        for p in ("sglang", "agentflow"):
            add(workload=swe, policy=p, concurrency=max(1, round(conc * f)), tag=f"sweep-x{f}")
    for name, wl in (("bfcl", BFCL), ("chatdev", CHATDEV)):
        wconc = _default_concurrency(str(wl), n)
        for f in ((1.0,) if args.quick else (0.5, 1.0, 2.0)):
            for p in ("sglang", "agentflow"):
                add(workload=str(wl), policy=p, concurrency=max(1, round(wconc * f)), tag=f"{name}-x{f}")

    done = [0]

    def tick(spec, res):
        done[0] += 1
        if not args.json:
            print(f"  [{done[0]}/{len(specs)}] {spec.tag} {spec.policy}: JCT {res['jct_mean_s']:.0f} s "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    results = run_many(specs, processes=args.processes, on_done=tick)
    runs = [dict(tag=s.tag, policy=s.policy, preset=s.preset, concurrency=r["concurrency"], workload=Path(s.workload).name,
                 jct_mean_s=r["jct_mean_s"], jct_p95_s=r["jct_p95_s"], ttft_after_first_p99_s=r["ttft_after_first_p99_s"],
                 start_wait_p99_s=r["start_wait_p99_s"], recomputed_prefill_tokens=r["recomputed_prefill_tokens"],
                 prefix_hit_rate=r["prefix_hit_rate"], host_hit_rate=r["host_hit_rate"],
                 throughput_programs_per_min=r["throughput_programs_per_min"])
            for s, r in zip(specs, results)]

    def get(tag, policy):
        return next(r for r in runs if r["tag"] == tag and r["policy"] == policy)

    main_ = {p: get("main", p) for p in MAIN}
    af = main_["agentflow"]["jct_mean_s"]
    x = {f"jct_x_vs_{p.replace('-', '_')}": main_[p]["jct_mean_s"] / af for p in MAIN if p != "agentflow"}
    refs = {f"cap:{c}": get("reference", f"cap:{c}")["jct_mean_s"] for c in caps}
    refs["belady"] = main_["belady"]["jct_mean_s"]
    best_ref = min(refs, key=refs.get)

    # open-loop points of the sweep at the baseline's saturation rate, and capacity at SLO
    base = RunSpec(workload=swe, policy="sglang", num_programs=min(n or 100, 100))
    cap = capacity_at_slo(base, ("sglang", "agentflow"), steps=3 if args.quick else 5, processes=args.processes)
    sat = cap["sglang"].tried  # (rate, p95) runs of the baseline
    sweep_tags = [t for t in {r["tag"] for r in runs} if t.startswith("sweep")] + ["main"]
    tails_ttft, tails_p95 = [], []
    for t in sweep_tags:
        a, b = get(t, "agentflow"), get(t, "sglang")
        tails_ttft.append(a["ttft_after_first_p99_s"] / max(1e-9, b["ttft_after_first_p99_s"]))
        tails_p95.append(a["jct_p95_s"] / max(1e-9, b["jct_p95_s"]))

    def worst(prefix):
        tags = sorted({r["tag"] for r in runs if r["tag"].startswith(prefix)})
        return min(get(t, "sglang")["jct_mean_s"] / get(t, "agentflow")["jct_mean_s"] for t in tags)

    out = {
        "workload": Path(swe).name, "programs": n, "concurrency": conc,
        **{k: round(v, 3) for k, v in x.items()},
        "jct_x_vs_sglang_70b": round(get("70b", "sglang")["jct_mean_s"] / get("70b", "agentflow")["jct_mean_s"], 3),
        "capacity_x_vs_sglang": round(cap["agentflow"].rate_per_s / cap["sglang"].rate_per_s, 3)
        if cap["sglang"].rate_per_s > 0 else None,
        "capacity_per_min": {p: round(c.rate_per_s * 60, 3) for p, c in cap.items()},
        "slo_p95_s": round(cap["sglang"].slo_p95_s, 1),
        "ttft_p99_ratio_vs_sglang": round(max(tails_ttft), 3),
        "jct_p95_ratio_vs_sglang": round(max(tails_p95), 3),
        "bfcl_jct_x_vs_sglang": round(worst("bfcl"), 3),
        "chatdev_jct_x_vs_sglang": round(worst("chatdev"), 3),
        "jct_ratio_vs_best_reference": round(af / refs[best_ref], 3),
        "best_reference": best_ref,
        "start_wait_p99_s": round(main_["agentflow"]["start_wait_p99_s"], 1),
        "sglang_saturation_runs": [(round(r * 60, 3), round(p, 1)) for r, p in sat],
        "wall_s": round(time.perf_counter() - t0, 1),
        "runs": runs,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "runs":
                print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
