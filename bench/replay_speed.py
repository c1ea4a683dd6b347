"""Replay speed: 200 programs x 5 policies through the simulated cluster.

    python bench/replay_speed.py --json
Target on this machine: wall_s <= 60. Prints `wall_s` (all five policies, one after another, in
this run), `simulated_events_per_s`, and each policy's mean JCT and recomputed prefill tokens so
that one run also gives the side-by-side comparison the replay targets are about.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from agentflow.runtime.process import tune_gc
    from agentflow.runtime.replay.run import ReplaySetup, run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default=str(ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"))
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--policies", default="lru,kvflow,continuum,agentflow,belady")
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tune_gc()
    setup = ReplaySetup(workload=args.workload, policies=tuple(args.policies.split(",")),
                        num_programs=args.programs, concurrency=args.concurrency)
    t0 = time.perf_counter()
    config, results, _ = run(setup)
    wall = time.perf_counter() - t0
    events = sum(r["simulated_events"] for r in results.values())
    lru = results.get("lru")
    out = {
        "bench": "replay_speed", "workload": Path(args.workload).name, "programs": config["programs"],
        "calls": config["calls"], "policies": list(results), "concurrency": config["concurrency"],
        "wall_s": round(wall, 1), "simulated_events_per_s": round(events / wall),
        "target_met": wall <= 60,
        "jct_mean_s": {k: round(v["jct_mean_s"], 1) for k, v in results.items()},
        "recomputed_prefill_tokens": {k: v["recomputed_prefill_tokens"] for k, v in results.items()},
    }
    if lru:
        out["jct_speedup_vs_lru"] = {k: round(lru["jct_mean_s"] / v["jct_mean_s"], 3) for k, v in results.items()}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
