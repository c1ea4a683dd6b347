"""`agentflow serve` (the scheduler service) and `agentflow worker` (an agent beside an engine)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click


def _transport(tls_cert, tls_key, token, max_message_mb):
    from agentflow.runtime.service.server import Transport

    return Transport(tls_cert=tls_cert, tls_key=tls_key, token=token,
                     max_message_bytes=int(max_message_mb * 1024 * 1024))


def _until_signal(start, stop) -> None:
    """Run `start()`, then wait for SIGINT/SIGTERM and `stop()` (graceful drain)."""

    async def main():
        await start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        click.echo("draining...", err=True)
        await stop()

    asyncio.run(main())


_transport_options = [
    click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="Server: its PEM certificate chain (with --tls-key). Client side: the CA to trust."),
    click.option("--token", envvar="AGENTFLOW_TOKEN", default=None,
                 help="Bearer token required from every caller (env AGENTFLOW_TOKEN)."),
    click.option("--max-message-mb", type=float, default=4.0, show_default=True, help="Largest gRPC message."),
]


def _with(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f

    return deco


@click.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="host:port to serve on.")
@click.option("--policy", default="agentflow", show_default=True,
              help="Scheduling policy preset: lru, kvflow, continuum, agentflow.")
@click.option("--journal", "journal_path", type=click.Path(dir_okay=False), default="agentflow-journal.sqlite",
              show_default=True, help="SQLite journal of open programs (a restart recovers them); ':memory:' for none.")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Simulated workers: simulated seconds per wall second (the workers' --time-scale).")
@click.option("--worker-timeout", type=float, default=3.0, show_default=True,
              help="Seconds without a heartbeat after which a worker is lost.")
@click.option("--ttft-slo", type=float, default=None, help="Routing: the TTFT objective in seconds.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM private key.")
@click.option("--otel", type=click.Choice(["none", "console", "otlp"]), default="none", show_default=True,
              help="OpenTelemetry exporter for spans and metrics.")
@click.option("--otel-endpoint", default=None, help="OTLP endpoint (default: the exporter's).")
@click.option("--openai", "openai_listen", default=None, metavar="HOST:PORT",
              help="Also serve the OpenAI-compatible API here (docs/openai.md), with an embedded worker.")
@click.option("--openai-engine", type=click.Choice(["local", "sim"]), default="local", show_default=True,
              help="--openai: the embedded worker's engine (local: SmolLM2 on this CPU).")
@click.option("--openai-workflow", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="--openai: a workflow file (YAML/JSON) registered under its name (repeatable).")
@click.option("-v", "--verbose", is_flag=True)
@_with(_transport_options)
def serve(listen, policy, journal_path, time_scale, worker_timeout, ttft_slo, tls_key, otel, otel_endpoint,
          openai_listen, openai_engine, openai_workflow, verbose, tls_cert, token, max_message_mb) -> None:
    """Start the scheduler service: clients open programs and submit calls, workers register and
    receive decisions. Open programs survive a restart (the journal)."""
    from agentflow.runtime.service.app import build_scheduler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    try:
        server, recovered = build_scheduler(
            listen=listen, policy=policy, journal_path=journal_path, time_scale=time_scale,
            worker_timeout_s=worker_timeout, ttft_slo_s=ttft_slo, otel=otel, otel_endpoint=otel_endpoint,
            transport=_transport(tls_cert, tls_key, token, max_message_mb))
    except (ValueError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)

    front = None
    if openai_listen:
        from agentflow.runtime.frontdoor.cli import build_openai

        try:
            front = build_openai(server, openai_listen, engine=openai_engine, token=token, workflows=openai_workflow)
        except Exception as e:  # noqa: BLE001 - bad listen address, workflow file, engine extra missing
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    async def start():
        await server.start()
        click.echo(f"agentflow scheduler on {server.target} (policy {policy}, journal {journal_path}, "
                   f"{recovered} program(s) recovered)", err=True)
        if front is not None:
            await front.start()
            click.echo(f"agentflow OpenAI API on http://{front.host}:{front.port}/v1 (model {front.front.config.model_id})",
                       err=True)

    async def stop():
        if front is not None:
            await front.stop()
        await server.stop(5.0)

    _until_signal(start, stop)


@click.command()
@click.option("--scheduler", required=True, help="host:port of the scheduler service.")
@click.option("--engine", type=click.Choice(["sim", "local", "sglang"]), default="sim", show_default=True)
@click.option("--id", "worker_id", default=None,
              help="Worker id (default: ENGINE@HOST:PORT of --advertise or --listen; port 0: ENGINE@HOST-<random>).")
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="host:port for this worker's service.")
@click.option("--advertise", default=None, help="Address clients use to reach this worker (default: --listen).")
@click.option("--preset", default="llama-3.1-8b-h100", show_default=True, help="sim: cost-model preset.")
@click.option("--kv-tokens", type=int, default=None, help="sim/local: KV pool in tokens.")
@click.option("--host-tokens", type=int, default=None, help="sim/local: host KV tier in tokens (0: none).")
@click.option("--strategy", type=click.Choice(["priority", "lru"]), default="priority", show_default=True,
              help="sim: eviction order of the radix cache (priority applies the scheduler's priorities).")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="sim: simulated seconds per wall second.")
@click.option("--sglang-url", default=None, help="sglang: the server's base URL.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve this worker's own endpoint over TLS with --tls-cert and this key (else plaintext).")
@click.option("--count", type=int, default=1, show_default=True,
              help="sim: run N simulated workers in this process (ids ID-0 ... ID-(N-1), ports from --listen's).")
@click.option("-v", "--verbose", is_flag=True)
@_with(_transport_options)
def worker(scheduler, engine, worker_id, listen, advertise, preset, kv_tokens, host_tokens, strategy, time_scale,
           sglang_url, tls_key, count, verbose, tls_cert, token, max_message_mb) -> None:
    """Start a worker agent beside an engine: it registers with the scheduler, serves the calls
    routed to it, and applies the scheduler's decisions to the engine's cache."""
    from agentflow.runtime.service.app import build_worker

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    if count < 1 or (count > 1 and engine != "sim"):
        click.echo("error: --count must be >= 1, and above 1 only with --engine sim", err=True)
        sys.exit(2)
    host, _, port = listen.rpartition(":")
    agents = []
    try:
        for i in range(count):
            wid = worker_id if count == 1 else f"{worker_id or 'sim'}-{i}"
            addr = listen if count == 1 or port == "0" else f"{host}:{int(port) + i}"
            agents.append(build_worker(scheduler=scheduler, engine=engine, worker_id=wid, listen=addr,
                                       advertise=advertise if count == 1 else None, preset=preset,
                                       kv_tokens=kv_tokens, host_tokens=host_tokens, strategy=strategy,
                                       time_scale=time_scale, sglang_url=sglang_url,
                                       transport=_transport(tls_cert, tls_key, token, max_message_mb)))
    except (ValueError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)

    async def start():
        for agent in agents:
            await agent.start()
            click.echo(f"agentflow worker {agent.config.worker_id} ({engine}) on {agent.address}, "
                       f"scheduler {scheduler}", err=True)

    async def stop():
        for agent in agents:
            await agent.stop(5.0)
            await agent.engine.aclose()

    _until_signal(start, stop)
