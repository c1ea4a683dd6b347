"""Building a scheduler service or a worker agent from settings (the CLI's and the tests')."""

from __future__ import annotations

import socket
import uuid
from dataclasses import replace

from agentflow.runtime.clock import ScaledClock
from agentflow.runtime.service import routing
from agentflow.runtime.service.core import CoreConfig, Limits, ServiceCore
from agentflow.runtime.service.journal import Journal, JournalError
from agentflow.runtime.service.server import SchedulerServer, Transport
from agentflow.runtime.service.worker_agent import AgentConfig, WorkerAgent


def build_scheduler(*, listen: str = "127.0.0.1:0", policy: str = "agentflow", journal_path: str = ":memory:",
                    time_scale: float = 1.0, worker_timeout_s: float = 3.0, heartbeat_interval_s: float = 0.5,
                    ttft_slo_s: float | None = None, otel: str = "none", otel_endpoint: str | None = None,
                    transport: Transport | None = None, tick_interval_s: float = 0.05,
                    limits: Limits | None = None) -> tuple[SchedulerServer, int]:
    """A scheduler server (not started) and how many open programs it recovered from the journal.
    Settings it cannot start with raise ValueError or JournalError with one line to show."""
    from agentflow.runtime.policies import POLICY_NAMES

    if policy not in POLICY_NAMES or policy == "belady":
        live = [p for p in POLICY_NAMES if p != "belady"]
        raise ValueError(f"unknown policy {policy!r} for a live scheduler; valid: {', '.join(live)} "
                         "(belady needs the future: replays only)")
    if worker_timeout_s <= heartbeat_interval_s:
        raise ValueError(f"worker timeout ({worker_timeout_s} s) must exceed the heartbeat interval "
                         f"({heartbeat_interval_s} s)")
    router = routing.RouterConfig()
    if ttft_slo_s is not None:
        router = replace(router, ttft_slo_s=ttft_slo_s)
    telemetry = None
    if otel != "none":
        from agentflow.runtime.service.telemetry import setup_telemetry

        telemetry = setup_telemetry(exporter=otel, endpoint=otel_endpoint, service_name="agentflow-scheduler")
    transport = transport or Transport()
    transport.check_server()
    config = CoreConfig(policy=policy, heartbeat_interval_s=heartbeat_interval_s, worker_timeout_s=worker_timeout_s,
                        router=router, limits=limits or Limits())
    journal = Journal(journal_path)
    core = ServiceCore(config, clock=ScaledClock(time_scale), journal=journal, telemetry=telemetry)
    try:
        recovered = core.recover()
    except Exception as exc:  # a journal whose rows do not replay: refuse, do not guess
        journal.close()
        raise JournalError(f"journal {journal_path} cannot be recovered ({type(exc).__name__}: {exc}); "
                           f"{journal.way_out}") from None
    return SchedulerServer(core, listen, transport=transport, tick_interval_s=tick_interval_s), recovered


def make_engine(engine: str, *, name: str, preset: str = "llama-3.1-8b-h100", kv_tokens: int | None = None,
                host_tokens: int | None = None, strategy: str = "priority", time_scale: float = 1.0,
                sglang_url: str | None = None):
    if engine == "sim":
        from agentflow.runtime.engines.sim.costmodel import make_cost_model
        from agentflow.runtime.engines.sim.engine import SimEngine

        return SimEngine(name=name, cost=make_cost_model(preset), capacity_tokens=kv_tokens,
                         host_capacity_tokens=host_tokens, strategy=strategy, time_scale=time_scale)
    if engine == "local":
        from agentflow.runtime.engines.local import LocalEngine

        kwargs = {"name": name}
        if kv_tokens is not None:
            kwargs["kv_capacity_tokens"] = kv_tokens
        if host_tokens is not None:
            kwargs["host_capacity_tokens"] = host_tokens
        return LocalEngine(**kwargs)
    if engine == "sglang":
        if not sglang_url:
            raise ValueError("--engine sglang needs --sglang-url (the SGLang server's base URL)")
        from agentflow.runtime.engines.sglang.client import SGLangEngine

        return SGLangEngine(sglang_url, name=name)
    raise ValueError(f"unknown engine {engine!r}; valid: sim, local, sglang")


def default_worker_id(engine: str, address: str) -> str:
    """ENGINE@HOST:PORT, as `agentflow worker --help` says; a wildcard host is this machine's name, and
    an unbound port (0) a random suffix, so two workers never share an id."""
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    return f"{engine}@{host}:{port}" if port not in ("", "0") else f"{engine}@{host}-{uuid.uuid4().hex[:6]}"


def build_worker(*, scheduler: str, engine: str = "sim", worker_id: str | None = None, listen: str = "127.0.0.1:0",
                 advertise: str | None = None, preset: str = "llama-3.1-8b-h100", kv_tokens: int | None = None,
                 host_tokens: int | None = None, strategy: str = "priority", time_scale: float = 1.0,
                 sglang_url: str | None = None, transport: Transport | None = None,
                 callers=None) -> WorkerAgent:
    """`callers`: the Credentials its own service checks (clients' tenants); None: the transport's."""
    wid = worker_id or default_worker_id(engine, advertise or listen)
    eng = make_engine(engine, name=wid, preset=preset, kv_tokens=kv_tokens, host_tokens=host_tokens,
                      strategy=strategy, time_scale=time_scale, sglang_url=sglang_url)
    cfg = AgentConfig(worker_id=wid, scheduler=scheduler, listen=listen, advertise=advertise, engine_kind=engine,
                      time_scale=time_scale)
    return WorkerAgent(eng, cfg, transport=transport or Transport(), callers=callers)


__all__ = ["build_scheduler", "build_worker", "make_engine"]
