"""Run a workload live, once per policy: through a scheduler service, or in process on real engines.

    agentflow replay W --service HOST:PORT      the service's scheduler (its policy) and its workers
    agentflow replay W --engine local|sglang    per policy: a fresh engine + an in-process scheduler
    agentflow replay W --engine sim --live      the same with simulated workers in scaled real time

The discrete-event replay (run.py) is the default and the reference; these paths run the same
programs, with the same token ids, through real engines and real RPCs (live.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from agentflow.runtime.replay.live import LiveReplay
from agentflow.runtime.replay.planning import planning_graph
from agentflow.runtime.workload import load_workload
from agentflow.runtime.workload.tokens import DEFAULT_VOCAB_SIZE

LIVE_ENGINES = ("sim", "local", "sglang")


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveSetup:
    workload: str
    policies: tuple[str, ...] = ("lru", "agentflow")
    engine: str = "sim"  # in process: sim, local, sglang (ignored with `service`)
    service: str | None = None  # host:port of a running scheduler service
    workers: int = 1  # in-process engines
    sglang_url: str | None = None
    preset: str = "llama-3.1-8b-h100"  # sim engines
    kv_capacity_tokens: int | None = None
    host_capacity_tokens: int | None = None
    concurrency: int = 8
    num_programs: int | None = None
    seed: int = 0
    time_scale: float = 1.0  # workload seconds per wall second (sim engines, tools, the scheduler's clock)
    token: str | None = None  # the service's bearer token
    tls_cert: str | None = None  # the service's CA certificate (PEM)


def _check(setup: LiveSetup) -> None:
    if setup.service is None and setup.engine not in LIVE_ENGINES:
        raise ValueError(f"engine must be one of {', '.join(LIVE_ENGINES)} (got {setup.engine!r})")
    if setup.engine in ("local", "sglang") and setup.service is None and setup.time_scale != 1.0:
        raise ValueError("time_scale must be 1 with a real engine: its compute runs in real time")
    if setup.engine == "sglang" and setup.service is None and not setup.sglang_url:
        raise ValueError("engine sglang needs sglang_url (the SGLang server's base URL, e.g. http://127.0.0.1:30000)")
    if setup.concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (got {setup.concurrency})")
    if setup.workers < 1:
        raise ValueError(f"workers must be >= 1 (got {setup.workers})")
    if setup.num_programs is not None and setup.num_programs < 1:
        raise ValueError(f"programs must be >= 1 (got {setup.num_programs}); leave it out to replay them all")
    if not setup.time_scale > 0:
        raise ValueError(f"time_scale must be > 0 (got {setup.time_scale})")


def run_live(setup: LiveSetup, progress: Callable[[int], None] | None = None) -> tuple[dict, dict]:
    """(config, summary per policy). With a service, the one policy is the service's."""
    _check(setup)
    wl = load_workload(setup.workload)
    programs = wl.programs[: setup.num_programs] if setup.num_programs is not None else list(wl.programs)
    plan = planning_graph(programs, name=f"replay-{wl.header.source}")
    config = {"workload": setup.workload, "source": wl.header.source, "programs": len(programs),
              "calls": sum(len(p.calls) for p in programs), "concurrency": setup.concurrency,
              "time_scale": setup.time_scale, "seed": setup.seed}
    results: dict[str, dict] = {}
    if setup.service is not None:
        policy, summary = asyncio.run(_through_service(setup, programs, plan, progress))
        config.update(mode="service", service=setup.service, policies=[policy])
        results[policy] = summary
        return config, results
    config.update(mode="in-process", engine=setup.engine, workers=setup.workers, policies=list(setup.policies))
    for i, policy in enumerate(setup.policies):
        results[policy] = asyncio.run(_in_process(setup, policy, programs, plan, progress, run_id=f"{policy}{i}"))
    return config, results


async def _through_service(setup, programs, plan, progress):
    from agentflow.runtime.service.client import ServiceClient
    from agentflow.runtime.service.server import Transport

    transport = Transport(tls_cert=setup.tls_cert, token=setup.token)
    client = ServiceClient(setup.service, transport=transport)
    try:
        health = await client.connect()
        # fresh ids per run: the service remembers closed programs, so a second replay must not reuse them
        replay = LiveReplay(programs, plan, client, time_scale=setup.time_scale, num_in_flight=setup.concurrency,
                            seed=setup.seed, on_progress=progress, run_id=f"r{uuid.uuid4().hex[:8]}")
        return health.policy or "service", await replay.run()
    finally:
        await client.close()


async def _in_process(setup, policy, programs, plan, progress, *, run_id):
    from agentflow.runtime.service.app import make_engine
    from agentflow.runtime.service.inprocess import InProcessClient

    engines = [make_engine(setup.engine, name=f"w{i}", preset=setup.preset, kv_tokens=setup.kv_capacity_tokens,
                           host_tokens=setup.host_capacity_tokens, time_scale=setup.time_scale,
                           sglang_url=setup.sglang_url) for i in range(setup.workers)]
    for e in engines:  # one real server serves every policy in turn: each starts from an empty cache
        flush = getattr(e, "flush_cache", None)
        if flush is not None:
            await flush()
    # Token ids are drawn below every engine's vocabulary (a real server's is asked from it): an
    # id a model cannot embed crashes SGLang's scheduler.
    vocab = [await e.fetch_vocab_size() if hasattr(e, "fetch_vocab_size") else getattr(e, "vocab_size", None)
             for e in engines]
    client = InProcessClient(engines, policy=policy, time_scale=setup.time_scale)
    try:
        replay = LiveReplay(programs, plan, client, time_scale=setup.time_scale, num_in_flight=setup.concurrency,
                            seed=setup.seed, run_id=run_id, on_progress=progress,
                            vocab_size=min((v for v in vocab if v), default=DEFAULT_VOCAB_SIZE))
        return await replay.run()
    finally:
        await client.close()


__all__ = ["LIVE_ENGINES", "LiveSetup", "run_live"]
