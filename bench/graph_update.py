"""Incremental steps-to-execution updates vs recomputation from scratch.

100 concurrent programs on a 1,000-step graph with 50 agents (seeded random structured workflow:
sequences, fan-out/join, branches, bounded loops). Each event is one finished step of one program:
the index re-estimates that program (a few precomputed rows) and updates the per-agent minimum
over all programs (timed up to the refreshed minimum). The baseline, measured in the same run, recomputes the graph's tables from
scratch and re-estimates the same position: what an update would cost without the tables.

    python bench/graph_update.py --json
Target: update_p99_us <= 100 and full_recompute_us / update_p99_us >= 20.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from agentflow.graph import Position, ProgramIndex, estimate
from agentflow.graph.analysis import GraphTables
from agentflow.graph.synthetic import Shape, random_walk, random_workflow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--programs", type=int, default=100)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--full-samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    wf = random_workflow(args.seed, Shape(num_steps=args.steps, num_agents=args.agents, max_depth=6,
                                          max_iterations=8), name="bench")
    t0 = time.perf_counter()
    graph = wf.compile().graph
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph.analysis  # noqa: B018  (tables are built once per graph, at first use)
    tables_s = time.perf_counter() - t0

    # Pre-generate every program's run so the timed loop does only the update.
    def run():
        return list(random_walk(graph, random.Random(rng.random()), max_events=50_000))

    runs = {pid: iter(run()) for pid in range(args.programs)}
    index = ProgramIndex()
    for pid in runs:
        index.add(pid, graph, Position.start(graph))
    events: list[tuple[int, Position]] = []
    next_pid = args.programs
    while len(events) < args.events:
        pid = rng.choice(list(runs))
        pos = next(runs[pid], None)
        if pos is None or pos.finished:  # program ended: a new one takes its place
            events.append((pid, None))
            runs.pop(pid)
            runs[next_pid] = iter(run())
            events.append((next_pid, Position.start(graph)))
            next_pid += 1
            continue
        events.append((pid, pos))

    # Warm the exhausted-loop variants outside the timed loop? No: their first use is part of
    # the cost a live scheduler pays, so it stays in the measured updates.
    probe = ("bench", graph.agents[0])
    times_ns: list[int] = []
    perf = time.perf_counter_ns
    for pid, pos in events:
        if pos is None:
            index.remove(pid)
            continue
        if pid not in index:
            index.add(pid, graph, pos)
            continue
        t = perf()
        index.advance(pid, pos)
        index.min_steps(probe)  # the per-agent minimum over all programs, refreshed
        times_ns.append(perf() - t)

    sample = [p for _, p in events if p is not None][:: max(1, len(events) // args.full_samples)][: args.full_samples]
    full_ns = []
    for pos in sample:
        t = perf()
        tables = GraphTables.compute(graph)
        graph._analysis.clear()
        graph._analysis[frozenset()] = tables
        estimate(graph, pos)
        full_ns.append(perf() - t)

    times_ns.sort()
    q = lambda p: times_ns[min(len(times_ns) - 1, int(p * len(times_ns)))] / 1000  # noqa: E731
    full_us = statistics.median(full_ns) / 1000
    result = {
        "bench": "graph_update",
        "steps": len(graph.steps), "agents": len(graph.agents), "programs": args.programs,
        "fan_outs": len(graph.regions), "loops": len(graph.loops),
        "updates": len(times_ns),
        "update_p50_us": round(q(0.50), 2),
        "update_p99_us": round(q(0.99), 2),
        "update_max_us": round(times_ns[-1] / 1000, 2),
        "full_recompute_us": round(full_us, 1),
        "speedup_p99": round(full_us / q(0.99), 1),
        "compile_s": round(compile_s, 3),
        "tables_s": round(tables_s, 3),
        "target_met": q(0.99) <= 100 and full_us / q(0.99) >= 20,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
