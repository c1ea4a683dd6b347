"""Trace one policy's fidelity run decision by decision, on the simulated worker and on the local engine.

    .venv/bin/python bench/fidelity_trace.py --policy agentflow --sim-only          # seconds
    .venv/bin/python bench/fidelity_trace.py --policy lru --out /tmp/lru.jsonl      # + the real run
    .venv/bin/python bench/fidelity_trace.py --policy agentflow --programs 6 --in-flight 3

Same workload, scaling and pool as `bench/fidelity.py` (its flags). Both engines get the same
programs and the same scheduler; each records, in its own time (simulated seconds, wall seconds):

    admit     a call admitted: prompt tokens, device hit, seconds it waited in the engine queue,
              pinned tokens then
    blocked   an admission refused for memory: tokens needed, free, and how many of the locked
              tokens were pins (a pin that keeps a runnable call out of the batch)
    evict     tokens evicted, whose (program index, or "shared"), their priority
    decision  a scheduler step that said something: pins, unpins, priorities, admission order,
              programs activated, the working-set budget
    step      (real only) one model step: its shape, its seconds, and the cost model's seconds

and prints one JSON summary per engine (with `--out`, every record as JSON lines) so the two can
be compared: per-call hits side by side, evicted tokens by kind (a program's own history that it
needs again = a fault), blocked admissions, pins, the time the real run spends deciding and
applying, and the real steps against the cost model (is the calibration stale?).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity  # noqa: E402  (bench/fidelity.py: the workload, scaling, pool and runs)


def _call_key(call_id: str) -> tuple[int, int]:
    """(program index, call number) of a replay call id ("i:prog#n") or a live one ("run:i:prog#n")."""
    pid, n = str(call_id).rsplit("#", 1)
    parts = pid.split(":")
    return int(parts[0] if parts[0].isdigit() else parts[1]), int(n)


class Owners:
    """Which program a cached path belongs to (its tokens start one of that program's sequences)."""

    def __init__(self, programs, seed: int):
        from agentflow.runtime.engines.sim.radix import pack_tokens
        from agentflow.runtime.replay.live import prepare
        from agentflow.runtime.workload.tokens import TokenIds

        ids = TokenIds(seed=seed)
        self.seqs = [[pack_tokens(c.prompt_ids + c.output_ids) for c in prepare(p, i, ids)]
                     for i, p in enumerate(programs)]

    def of(self, path: bytes):
        who = {i for i, seqs in enumerate(self.seqs) if any(s.startswith(path) for s in seqs)}
        return next(iter(who)) if len(who) == 1 else "shared"


class Trace:
    def __init__(self, owners: Owners, now):
        self.owners = owners
        self.now = now
        self.records: list[dict] = []
        self.active: set[int] = set()  # programs with a call submitted and not finished (sim and real alike)
        self.finished_calls: dict[int, int] = {}  # program -> calls finished

    def add(self, kind: str, **kw) -> None:
        self.records.append({"kind": kind, "t": round(self.now(), 4), **kw})

    def evictions(self, evicted, path_of) -> None:
        for e in evicted:
            path = path_of(e.parent) + e.key
            owner = self.owners.of(path)
            self.add("evict", tokens=e.num_tokens, owner=owner, priority=e.priority, end=e.start + e.num_tokens)

    def decision(self, d, budget) -> None:
        if d.empty and not d.activated:
            return
        self.add("decision", pins=[[p.prefix, p.num_tokens, round(p.ttl_s, 2)] for p in d.pins],
                 unpins=[[u.prefix, u.reason.name if hasattr(u.reason, "name") else str(u.reason)] for u in d.unpins],
                 priorities=len(d.priorities), admit=[list(_call_key(c)) for c in d.admit[:4]],
                 activated=[str(a) for a in d.activated], budget=None if budget is None else round(budget))


def _path_key(node) -> bytes:
    parts = []
    while node is not None and node.parent is not None:
        parts.append(node.key)
        node = node.parent
    return b"".join(reversed(parts))


# ---- the simulated run ------------------------------------------------------------------------
def trace_sim(programs, plan, policy: str, args, kv_tokens: int, owners: Owners) -> tuple[dict, Trace]:
    from agentflow.runtime.replay.engine import Replay, ReplayConfig
    from agentflow.runtime.workload import ClosedLoop

    rc = ReplayConfig(kv_capacity_tokens=kv_tokens, host_capacity_tokens=0, chunk_tokens=args.chunk_tokens,
                      max_running=args.max_running, seed=args.seed)
    sim = Replay(ClosedLoop(programs, num_in_flight=args.in_flight), plan, policy, fidelity._cost(), rc)
    tr = Trace(owners, sim.clock.now_s)
    w = sim.workers["w0"]

    evict = w.gpu.evict

    def traced_evict(n):
        out = evict(n)
        tr.evictions(out, _path_key)
        return out

    w.gpu.evict = traced_evict
    admit = w.admit

    def traced_admit(now, rank):
        out = admit(now, rank)
        for r in out:
            tr.add("admit", call=list(_call_key(r.call_id)), prompt=r.prompt_len, hit=r.gpu_hit,
                   waited=round(now - r.submitted_s, 4), pinned=w.pinned_tokens)
        if w.waiting:  # the head did not fit
            head = w.waiting[0]
            if len(w.prefilling) + len(w.decoding) < w.max_running:
                need = head.prompt_len - min(w.gpu.match_prefix(head.tokens).num_tokens, head.prompt_len - 1) \
                    + head.output_len
                tr.add("blocked", call=list(_call_key(head.call_id)), need=need, free=w.free_tokens(),
                       evictable=w.gpu.evictable_size(), pinned=w.pinned_tokens,
                       running=len(w.prefilling) + len(w.decoding))
        return out

    w.admit = traced_admit
    step = sim.sched.step

    def traced_step():
        d = step()
        tr.decision(d, sim.sched.budget_tokens)
        return d

    sim.sched.step = traced_step
    summary = sim.run()
    return summary, tr


# ---- the real run -----------------------------------------------------------------------------
async def trace_real(programs, plan, policy: str, args, kv_tokens: int, lm, owners: Owners) -> tuple[dict, Trace]:
    from agentflow.runtime.engines.local.engine import LocalEngine
    from agentflow.runtime.replay.live import LiveReplay
    from agentflow.runtime.service.inprocess import InProcessClient

    cost = fidelity._cost()
    eng = LocalEngine(lm, name="w0", kv_capacity_tokens=kv_tokens, host_capacity_tokens=0,
                      strategy=fidelity.strategy_of(policy), chunk_tokens=args.chunk_tokens,
                      max_running=args.max_running, prefill_tokens_per_s=8192 / cost.prefill_time_s(8192))
    eng.log_steps(True)
    client = fidelity.make_client(eng, policy, args)
    t0 = time.perf_counter()
    tr = Trace(owners, lambda: time.perf_counter() - t0)
    tree = eng.cache.tree
    evict = tree.evict

    def traced_evict(n):
        out = evict(n)
        tr.evictions(out, _path_key)
        return out

    tree.evict = traced_evict
    admit_one = eng._admit_one

    def traced_admit_one(seq):
        ok = admit_one(seq)
        if ok:
            tr.add("admit", call=list(_call_key(seq.request.call_id)), prompt=seq.prompt_len, hit=seq.cached,
                   waited=round(seq.admitted_s - seq.submitted_s, 4), pinned=eng._pinned_tokens)
        else:
            hit = eng.cache.tree.peek_prefix(seq.tokens, seq.request.namespace).num_tokens
            need = seq.prompt_len - min(hit, seq.prompt_len - 1) + seq.max_new - 1
            tr.add("blocked", call=list(_call_key(seq.request.call_id)), need=need, free=eng.pool.num_free,
                   evictable=tree.evictable_size(), pinned=eng._pinned_tokens, running=len(eng._running))
        return ok

    eng._admit_one = traced_admit_one
    sched_box = client.core
    spent = {"decide_s": 0.0, "apply_s": 0.0, "decisions": 0}
    step = sched_box.sched.step

    def traced_step():
        s = time.perf_counter()
        d = step()
        spent["decide_s"] += time.perf_counter() - s
        spent["decisions"] += 1
        tr.decision(d, sched_box.sched.budget_tokens)
        return d

    sched_box.sched.step = traced_step
    apply = eng.apply

    def traced_apply(d):
        s = time.perf_counter()
        apply(d)
        spent["apply_s"] += time.perf_counter() - s

    eng.apply = traced_apply
    live = LiveReplay(programs, plan, client, time_scale=1.0, num_in_flight=args.in_flight, seed=args.seed,
                      run_id=f"trace-{policy}")
    summary = await live.run()
    summary.update({k: round(v, 3) if isinstance(v, float) else v for k, v in spent.items()})
    steps = eng.step_log
    real = sum(s[4] for s in steps)
    pred = sum(cost.iteration_time_s(prefill_tokens=p, prefill_context_tokens=c, decode_seqs=d,
                                     decode_context_tokens=k) for p, c, d, k, _ in steps)
    for p, c, d, k, dt in steps:
        tr.records.append({"kind": "step", "prefill": p, "decode": d, "s": round(dt, 4),
                           "model_s": round(cost.iteration_time_s(prefill_tokens=p, prefill_context_tokens=c,
                                                                  decode_seqs=d, decode_context_tokens=k), 4)})
    summary.update(steps=len(steps), step_s=round(real, 2), model_step_s=round(pred, 2),
                   evicted_tokens=eng.cache.evicted_tokens)
    await client.close()
    return summary, tr


def digest(summary: dict, tr: Trace) -> dict:
    """What the comparison needs, from one engine's records."""
    recs = tr.records
    admits = [r for r in recs if r["kind"] == "admit"]
    ev = [r for r in recs if r["kind"] == "evict"]
    blocked = [r for r in recs if r["kind"] == "blocked"]
    decisions = [r for r in recs if r["kind"] == "decision"]
    # an eviction is a fault-to-be when its owner has calls still to come after it
    last_call_t: dict[int, float] = {}
    for r in admits:
        last_call_t[r["call"][0]] = max(last_call_t.get(r["call"][0], 0.0), r["t"])
    own_needed = sum(r["tokens"] for r in ev if r["owner"] != "shared" and last_call_t.get(r["owner"], -1) > r["t"])
    by_prio = Counter()
    for r in ev:
        by_prio[r["priority"]] += r["tokens"]
    out = {
        "jct_mean_s": round(summary.get("jct_mean_s", float("nan")), 3),
        "hit_rate": round(summary.get("prefix_hit_rate", summary.get("hit_rate", float("nan"))), 3),
        "calls": len(admits), "prompt_tokens": sum(r["prompt"] for r in admits),
        "hit_tokens": sum(r["hit"] for r in admits),
        "queue_wait_s_sum": round(sum(r["waited"] for r in admits), 2),
        "evicted_tokens": sum(r["tokens"] for r in ev), "evicted_needed_again": own_needed,
        "evicted_by_priority": dict(sorted(by_prio.items())),
        "blocked_admissions": len(blocked),
        "blocked_with_pins": sum(1 for b in blocked if b["pinned"] > 0),
        "blocked_pins_would_fit": sum(1 for b in blocked if b["pinned"] > 0
                                      and b["free"] + b["evictable"] < b["need"] <= b["free"] + b["evictable"]
                                      + b["pinned"]),
        "pins": sum(len(d["pins"]) for d in decisions),
        "pinned_tokens": sum(p[1] for d in decisions for p in d["pins"]),
        "unpins_by_reason": dict(Counter(u[1] for d in decisions for u in d["unpins"])),
        "decisions_with_admit_order": sum(1 for d in decisions if d["admit"]),
        "activations": sum(len(d["activated"]) for d in decisions),
        "budgets": sorted({d["budget"] for d in decisions if d["budget"] is not None})[:8],
    }
    for k in ("steps", "step_s", "model_step_s", "decide_s", "apply_s", "decisions", "wall_s"):
        if k in summary:
            out[k] = summary[k]
    return out


def per_call(trs: dict[str, Trace]) -> list[dict]:
    """Per call: the device hit on each engine (the first admission of each call)."""
    rows: dict[tuple, dict] = {}
    for name, tr in trs.items():
        for r in tr.records:
            if r["kind"] == "admit":
                rows.setdefault(tuple(r["call"]), {"call": r["call"], "prompt": r["prompt"]}).setdefault(
                    name + "_hit", r["hit"])
    return [rows[k] for k in sorted(rows)]


def main() -> int:
    ap = fidelity.parser()
    ap.add_argument("--policy", default="agentflow")
    ap.add_argument("--out", type=Path, help="write every record here (JSON lines)")
    ap.add_argument("--calls-table", action="store_true", help="print per-call hits side by side")
    args = ap.parse_args()
    fidelity.apply_quick(args)
    import torch

    torch.set_num_threads(args.threads)
    programs, plan, kv_tokens = fidelity.setup(args)
    owners = Owners(programs, args.seed)
    out, trs = {"policy": args.policy, "kv_capacity_tokens": kv_tokens}, {}
    s, trs["sim"] = trace_sim(programs, plan, args.policy, args, kv_tokens, owners)
    out["sim"] = digest(s, trs["sim"])
    if not args.sim_only:
        from agentflow.runtime.engines.local.model import load_smollm2

        lm = load_smollm2("float32")
        if args.calibrate or args.calibration == "probe":  # else the shipped preset (no fit on its own run)
            fidelity._FRESH.update(fidelity.calibrate_now(args))
        s, trs["real"] = asyncio.run(trace_real(programs, plan, args.policy, args, kv_tokens, lm, owners))
        out["real"] = digest(s, trs["real"])
    if args.out:
        with args.out.open("w") as f:
            for name, tr in trs.items():
                for r in tr.records:
                    f.write(json.dumps({"engine": name, **r}) + "\n")
    if args.calls_table:
        for row in per_call(trs):
            print(json.dumps(row))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
