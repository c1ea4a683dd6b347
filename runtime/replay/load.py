"""Load, not one point: JCT against load, and each policy's capacity at an SLO.

One closed-loop concurrency says little: a policy that wins at 68 programs in flight may lose at
16 (nothing to thrash) or at 128. So a replay can sweep load two ways:

    closed loop   N programs in flight (a new one starts when one finishes), N over a list
    open loop     Poisson arrivals at R programs/s, R over a list

and find each policy's **capacity at SLO**: the highest Poisson rate at which the p95 JCT stays
within `slo_factor` (2) x the unloaded p95 JCT. "Unloaded" is the same for every policy: the
programs run one at a time under the baseline (`sglang`), so a policy is not rewarded for a slow
unloaded run. The search brackets the rate geometrically from the closed loop's throughput and
bisects it (on a log scale) `steps` times; p95 JCT rises with the rate except for noise, which
the bisection tolerates by keeping the best rate that met the SLO.

Every run goes through `run_one`, which the replay's CLI and `bench/admission.py` share; runs are
independent, so `run_many` spreads them over processes (two cores: about half the wall time).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

from agentflow.runtime.engines.sim.costmodel import make_cost_model
from agentflow.runtime.policies import Policy, StaticCap, make_policy
from agentflow.runtime.replay.engine import Replay, ReplayConfig
from agentflow.runtime.workload import ClosedLoop, poisson_arrivals


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    workload: str
    policy: str  # a preset, or "cap:N" (agentflow's policies with at most N programs active)
    preset: str = "llama-3.1-8b-h100"
    concurrency: int | None = None  # closed loop; None with rate None: the default oversubscription
    rate_per_s: float | None = None  # open loop (Poisson)
    num_programs: int | None = None
    host_capacity_tokens: int | None = None
    kv_capacity_tokens: int | None = None
    workers: int = 1
    seed: int = 0
    tag: str = ""  # the caller's label, returned with the result


def policy_of(name: str) -> Policy | str:
    """A preset's name, or `cap:N`: the agentflow preset with a static cap instead of the working set
    (the hindsight reference)."""
    if name.startswith("cap:"):
        try:
            n = int(name[4:])
        except ValueError:
            raise ValueError(f"policy {name!r}: a static cap is 'cap:N' with N a whole number") from None
        return replace(make_policy("agentflow"), name=name, programs=StaticCap(n))
    return name


def run_one(spec: RunSpec) -> dict:
    from agentflow.runtime.replay.run import default_concurrency, prepared_workload

    _, programs, plan, prepared = prepared_workload(spec.workload, spec.num_programs or None, spec.seed)
    cost = make_cost_model(spec.preset)
    if spec.rate_per_s is not None:
        arrivals = poisson_arrivals(programs, rate_per_s=spec.rate_per_s, seed=spec.seed)
        conc = None
    else:
        conc = spec.concurrency or default_concurrency(programs, (spec.kv_capacity_tokens or cost.kv_capacity_tokens)
                                                       * spec.workers)
        arrivals = ClosedLoop(programs, num_in_flight=conc)
    rc = ReplayConfig(workers=spec.workers, kv_capacity_tokens=spec.kv_capacity_tokens,
                      host_capacity_tokens=spec.host_capacity_tokens, seed=spec.seed)
    sim = Replay(arrivals, plan, policy_of(spec.policy), cost, rc, prepared=prepared)
    out = sim.run()
    out["concurrency"] = conc
    out["rate_per_s"] = spec.rate_per_s
    out["tag"] = spec.tag
    out["policy"] = spec.policy
    out["fault_s"] = sim.sched.faults["fault_s"]
    return out


def run_many(specs: Sequence[RunSpec], *, processes: int | None = None,
             on_done: Callable[[RunSpec, dict], None] | None = None) -> list[dict]:
    """Results in the order of `specs`."""
    procs = processes if processes is not None else min(len(specs), max(1, (os.cpu_count() or 1)))
    if procs <= 1 or len(specs) <= 1:
        out = []
        for s in specs:
            out.append(run_one(s))
            if on_done:
                on_done(s, out[-1])
        return out
    with ProcessPoolExecutor(max_workers=procs) as pool:
        futures = [pool.submit(run_one, s) for s in specs]
        results = []
        for s, f in zip(specs, futures):
            results.append(f.result())
            if on_done:
                on_done(s, results[-1])
        return results


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    policy: str
    rate_per_s: float  # the highest rate found that met the SLO (0 if none did)
    slo_p95_s: float
    tried: tuple[tuple[float, float], ...]  # (rate, p95 JCT) of every run


def capacity_at_slo(base: RunSpec, policies: Sequence[str], *, slo_factor: float = 2.0, steps: int = 5,
                    processes: int | None = None, progress: Callable[[], None] | None = None) -> dict[str, Capacity]:
    """Each policy's capacity at SLO on `base`'s workload (its rate and concurrency are ignored)."""
    unloaded = run_one(replace(base, policy="sglang", concurrency=1, rate_per_s=None))
    slo = slo_factor * unloaded["jct_p95_s"]
    # bracket: the baseline's closed-loop throughput is near its saturation rate
    sat = run_one(replace(base, policy="sglang", rate_per_s=None, concurrency=None))
    mid = sat["throughput_programs_per_min"] / 60.0
    lo = {p: mid / 8 for p in policies}
    hi = {p: mid * 4 for p in policies}
    best = {p: 0.0 for p in policies}
    tried: dict[str, list] = {p: [] for p in policies}
    for _ in range(steps):
        rates = {p: math.sqrt(lo[p] * hi[p]) for p in policies}
        specs = [replace(base, policy=p, rate_per_s=rates[p], concurrency=None, tag=p) for p in policies]
        for s, r in zip(specs, run_many(specs, processes=processes)):
            p = s.policy
            tried[p].append((rates[p], r["jct_p95_s"]))
            if r["jct_p95_s"] <= slo:
                best[p] = max(best[p], rates[p])
                lo[p] = rates[p]
            else:
                hi[p] = rates[p]
            if progress:
                progress()
    return {p: Capacity(policy=p, rate_per_s=best[p], slo_p95_s=slo, tried=tuple(tried[p])) for p in policies}


__all__ = ["Capacity", "RunSpec", "capacity_at_slo", "policy_of", "run_many", "run_one"]
