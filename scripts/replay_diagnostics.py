"""Where the replay's time goes: the figures docs/replay.md quotes to explain its results.

    python scripts/replay_diagnostics.py bound       # JCT floor: tools + LLM time alone, perfect reuse
    python scripts/replay_diagnostics.py occupancy   # how much of the GPU pool running requests hold
    python scripts/replay_diagnostics.py admission   # BFCL: agentflow with program-FCFS vs call-FCFS admission
    python scripts/replay_diagnostics.py costs       # every cost-model preset's sanity figures (docs/cost-model.md)

Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SWE = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
BFCL = ROOT / "examples/workloads/bfcl-multi-turn.jsonl"


def bound(args) -> dict:
    """Per program: recorded tool time + its LLM calls on an otherwise idle GPU, every prefix reused."""
    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.workload import load_workload

    cost = make_cost_model(args.preset)
    tools, llm = [], []
    for p in load_workload(args.workload).programs[: args.programs]:
        tools.append(sum(c.tool.duration_s for c in p.calls if c.tool))
        t, prev = 0.0, 0
        for c in p.calls:
            new = c.prompt_tokens - prev if prev else c.prompt_tokens
            t += cost.prefill_time_s(max(1, new), prev)
            t += c.output_tokens * cost.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=1,
                                                         decode_context_tokens=c.prompt_tokens)
            prev = c.prompt_tokens + c.output_tokens
        llm.append(t)
    return {"programs": len(tools), "tool_s_mean": round(float(np.mean(tools)), 1),
            "llm_alone_s_mean": round(float(np.mean(llm)), 1),
            "jct_floor_s_mean": round(float(np.mean(np.add(tools, llm))), 1)}


def occupancy(args) -> dict:
    """Mean GPU pool use at every batch iteration of an LRU replay: running requests vs cache."""
    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.replay.engine import Replay, ReplayConfig
    from agentflow.runtime.replay.planning import planning_graph
    from agentflow.runtime.replay.run import default_concurrency
    from agentflow.runtime.workload import ClosedLoop, load_workload

    samples = []

    class Sampling(Replay):
        def _on_iteration(self, name, res):
            w = self.workers[name]
            samples.append((w.private_tokens, w.gpu.total_size(), w.gpu.protected_size()))
            super()._on_iteration(name, res)

    programs = load_workload(args.workload).programs[: args.programs]
    cost = make_cost_model(args.preset)
    n = args.concurrency or default_concurrency(programs, cost.kv_capacity_tokens)
    sim = Sampling(ClosedLoop(programs, num_in_flight=n), planning_graph(programs), "lru", cost,
                   ReplayConfig(host_capacity_tokens=args.host_tokens))
    sim.run()
    a = np.asarray(samples, dtype=float)
    return {"programs": len(programs), "in_flight": n, "host_tokens": args.host_tokens,
            "kv_capacity_tokens": cost.kv_capacity_tokens,
            "running_private_tokens_mean": round(float(a[:, 0].mean())),
            "cached_tokens_mean": round(float(a[:, 1].mean())),
            "cached_locked_tokens_mean": round(float(a[:, 2].mean()))}


def admission(args) -> dict:
    """The same agentflow cache policy under its own (program-FCFS) and call-FCFS admission."""
    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.policies import CallFcfs, make_policy
    from agentflow.runtime.replay.engine import Replay, ReplayConfig
    from agentflow.runtime.replay.planning import planning_graph
    from agentflow.runtime.replay.run import default_concurrency
    from agentflow.runtime.workload import ClosedLoop, load_workload

    programs = load_workload(args.workload).programs[: args.programs]
    cost = make_cost_model(args.preset)
    n = args.concurrency or default_concurrency(programs, cost.kv_capacity_tokens)
    plan = planning_graph(programs)
    out = {"programs": len(programs), "in_flight": n}
    base = make_policy("agentflow")
    for label, pol in (("program_fcfs", base), ("call_fcfs", dataclasses.replace(base, admission=CallFcfs()))):
        r = Replay(ClosedLoop(programs, num_in_flight=n), plan, pol, cost, ReplayConfig()).run()
        out[label] = {"jct_mean_s": round(r["jct_mean_s"], 1),
                      "throughput_programs_per_min": round(r["throughput_programs_per_min"], 1)}
    return out


def costs(args) -> dict:
    """The sanity figures of every cost-model preset, as docs/cost-model.md tabulates them."""
    from agentflow.runtime.engines.sim.costmodel import make_cost_model, preset_names

    out = {}
    for name in preset_names():
        m = make_cost_model(name)
        decode = lambda seqs, ctx: m.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0,  # noqa: E731
                                                      decode_seqs=seqs, decode_context_tokens=seqs * ctx)
        out[name] = {
            "prefill_1k_ms": round(m.prefill_time_s(1024) * 1e3, 1),
            "prefill_8k_s": round(m.prefill_time_s(8192), 3),
            "prefill_8k_tokens_per_s": round(8192 / m.prefill_time_s(8192)),
            "prefill_32k_s": round(m.prefill_time_s(32768), 2),
            "decode_b1_at_1k_ms": round(decode(1, 1024) * 1e3, 1),
            "decode_b32_at_8k_ms": round(decode(32, 8192) * 1e3, 1),
            "kv_capacity_tokens": m.kv_capacity_tokens,
            "host_capacity_tokens": m.host_capacity_tokens,
            "prefix_8k_over_pcie_ms": round(8192 / m.h2d_tokens_per_s * 1e3, 1),
        }
    return {"presets": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["bound", "occupancy", "admission", "costs"])
    ap.add_argument("--workload", default=None, help="default: SWE-bench (bound, occupancy), BFCL (admission)")
    ap.add_argument("--programs", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--host-tokens", type=int, default=None, help="occupancy: host tier per worker (0: none)")
    ap.add_argument("--preset", default="llama-3.1-8b-h100")
    args = ap.parse_args()
    if args.workload is None:
        args.workload = str(BFCL if args.what == "admission" else SWE)
    result = {"what": args.what, "workload": Path(args.workload).name, **globals()[args.what](args)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
