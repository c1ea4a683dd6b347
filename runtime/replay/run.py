"""Run a workload through the simulated cluster once per policy, on identical inputs."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from queue import Empty

from agentflow.runtime.engines.sim.costmodel import make_cost_model
from agentflow.runtime.policies import POLICY_NAMES
from agentflow.runtime.replay.engine import Replay, ReplayConfig
from agentflow.runtime.replay.fit import check_fits
from agentflow.runtime.replay.planning import planning_graph
from agentflow.runtime.workload import ClosedLoop, load_workload, poisson_arrivals, recorded_arrivals

DEFAULT_OVERSUBSCRIPTION = 2.0
SAMPLE_EVERY_S = 0.5  # the plots' time series: enough points for a replay of a minute (BFCL)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaySetup:
    workload: str
    policies: tuple[str, ...] = POLICY_NAMES
    preset: str = "llama-3.1-8b-h100"
    workers: int = 1
    rate_per_s: float | None = None  # Poisson arrivals
    concurrency: int | None = None  # closed loop; default: enough programs to oversubscribe the KV pool
    recorded: bool = False  # arrivals as recorded
    num_programs: int | None = None  # the first N programs of the file
    seed: int = 0
    kv_capacity_tokens: int | None = None
    host_capacity_tokens: int | None = None


def default_concurrency(programs, kv_tokens_total: int, factor: float = DEFAULT_OVERSUBSCRIPTION) -> int:
    """Programs in flight whose contexts add up to `factor` times the cluster's GPU KV pool:
    the load at which LRU has to evict the prefixes of programs that are coming back."""
    peaks = sorted(max((c.prompt_tokens + c.output_tokens for c in p.calls), default=0) for p in programs)
    mean_peak = sum(peaks) / len(peaks) if peaks else 1
    # a program holds about half its peak context on average over its life
    return max(1, math.ceil(factor * kv_tokens_total / max(1.0, 0.5 * mean_peak)))


def _check(setup: ReplaySetup) -> None:
    """Bad settings are errors that name the setting, before any work."""
    if setup.workers < 1:
        raise ValueError(f"workers must be >= 1 (got {setup.workers})")
    if setup.num_programs is not None and setup.num_programs < 1:
        raise ValueError(f"programs must be >= 1 (got {setup.num_programs}); leave it out to replay them all")
    for name in ("kv_capacity_tokens", "host_capacity_tokens"):
        value = getattr(setup, name)
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0 (got {value})")
    if setup.kv_capacity_tokens == 0:
        raise ValueError("kv_capacity_tokens must be > 0: a worker needs a GPU KV pool")
    if not setup.policies:
        raise ValueError("no policies to replay")


def run(setup: ReplaySetup, progress: Callable[[int], None] | None = None,
        processes: int | None = None) -> tuple[dict, dict, dict]:
    """(config, results per policy, series per policy for plots). Policies run in `processes`
    processes (default: one per core); each run is deterministic and independent of the others,
    so the results are the same as one after another."""
    _check(setup)
    wl, programs, plan, _ = prepared_workload(setup.workload, setup.num_programs)
    cost = make_cost_model(setup.preset)
    kv = setup.kv_capacity_tokens or cost.kv_capacity_tokens
    check_fits(programs, kv)  # a call larger than the pool would wait forever
    arrival = "closed-loop"
    concurrency = setup.concurrency
    if setup.rate_per_s is not None:
        arrival = f"poisson {setup.rate_per_s}/s"
    elif setup.recorded:
        arrival = "recorded"
    elif concurrency is None:
        concurrency = default_concurrency(programs, kv * setup.workers)
    config = {
        "workload": setup.workload, "source": wl.header.source, "programs": len(programs),
        "calls": sum(len(p.calls) for p in programs), "preset": setup.preset, "workers": setup.workers,
        "kv_capacity_tokens_per_worker": kv,
        "host_capacity_tokens_per_worker": setup.host_capacity_tokens
        if setup.host_capacity_tokens is not None else cost.host_capacity_tokens,
        "arrivals": arrival, "concurrency": concurrency, "seed": setup.seed,
        "policies": list(setup.policies),
    }
    resolved = replace(setup, concurrency=concurrency)
    jobs = [(resolved, name) for name in setup.policies]
    procs = min(len(jobs), processes if processes is not None else (os.cpu_count() or 1))
    if procs <= 1:
        done = [_run_policy(job, progress) for job in jobs]
    else:
        done = _run_parallel(jobs, procs, progress)
    results = {name: summary for (_, name), (summary, _) in zip(jobs, done)}
    series = {name: ser for (_, name), (_, ser) in zip(jobs, done)}
    return config, results, series


_PREPARED: dict = {}  # per process: (workload, number of programs) -> what every run of them shares
_PREPARED_KEPT = 4
_PROGRESS = None  # per worker process: the queue its progress goes to


def prepared_workload(workload: str, num_programs: int | None = None, seed: int = 0):
    """(workload, its first `num_programs` programs, their planning graph, token ids per program for
    `seed`), kept per process for the runs that follow (every policy of a replay, every run of a load
    sweep): token ids depend only on the seed, so runs with one seed share them. The last few
    workloads are kept."""
    key = (workload, num_programs)
    if key not in _PREPARED:
        wl = load_workload(workload)
        programs = list(wl.programs[:num_programs]) if num_programs is not None else list(wl.programs)
        while len(_PREPARED) >= _PREPARED_KEPT:
            del _PREPARED[next(iter(_PREPARED))]
        _PREPARED[key] = (wl, programs, planning_graph(programs, name=f"replay-{wl.header.source}"), {})
    wl, programs, plan, ids_by_seed = _PREPARED[key]
    return wl, programs, plan, ids_by_seed.setdefault(seed, {})


def _run_policy(job: tuple[ReplaySetup, str], progress: Callable[[int], None] | None = None) -> tuple[dict, dict]:
    setup, name = job  # setup.concurrency resolved by run()
    _, programs, plan, prepared = prepared_workload(setup.workload, setup.num_programs, setup.seed)
    cost = make_cost_model(setup.preset)
    if setup.rate_per_s is not None:
        arrivals = poisson_arrivals(programs, rate_per_s=setup.rate_per_s, seed=setup.seed)
    elif setup.recorded:
        arrivals = recorded_arrivals(programs)
    else:
        arrivals = ClosedLoop(programs, num_in_flight=setup.concurrency)
    rc = ReplayConfig(workers=setup.workers, kv_capacity_tokens=setup.kv_capacity_tokens,
                      host_capacity_tokens=setup.host_capacity_tokens, seed=setup.seed,
                      sample_every_s=SAMPLE_EVERY_S)
    if progress is None and _PROGRESS is not None:
        progress = _PROGRESS.put
    sim = Replay(arrivals, plan, name, cost, rc, on_progress=progress, prepared=prepared)
    t0 = time.perf_counter()
    summary = sim.run()
    summary["wall_s"] = time.perf_counter() - t0
    summary["simulated_events"] = sim.events
    return summary, {"jct_s": list(sim.rec.jct_s), "ttft_s": list(sim.rec.ttft_s), "timeline": list(sim.rec.series)}


def _init_worker(queue) -> None:
    global _PROGRESS
    _PROGRESS = queue


def _run_parallel(jobs, procs: int, progress: Callable[[int], None] | None) -> list[tuple[dict, dict]]:
    """The jobs over `procs` processes; their progress (programs finished) comes back on a queue."""
    # spawn, not fork: the caller may hold threads (torch, gRPC, a test runner's), and a forked child of
    # a threaded process can die or hang (a CLI test saw BrokenProcessPool under the default fork)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue() if progress is not None else None
    with ProcessPoolExecutor(max_workers=procs, mp_context=ctx, initializer=_init_worker,
                             initargs=(queue,)) as pool:
        futures = [pool.submit(_run_policy, job) for job in jobs]
        while queue is not None and not all(f.done() for f in futures):
            try:
                progress(queue.get(timeout=0.2))
            except Empty:
                pass
        out = [f.result() for f in futures]  # a failed run raises here, with its traceback
        while queue is not None:  # what came in after the last check
            try:
                progress(queue.get_nowait())
            except Empty:
                break
    return out


__all__ = ["ReplaySetup", "asdict", "default_concurrency", "prepared_workload", "run"]
