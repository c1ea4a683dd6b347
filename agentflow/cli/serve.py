"""`agentflow serve` (the scheduler service) and `agentflow worker` (an agent beside an engine)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click


def _quiet_grpc() -> None:
    """gRPC's C core logs its own line for a failed bind; ours says it once (set before gRPC starts)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _transport(tls_cert, tls_key, token, max_message_mb, tokens_file=None, client_ca=None):
    from agentflow.runtime.service.auth import Credentials
    from agentflow.runtime.service.server import Transport

    creds = Credentials.load(tokens_file, shared_token=token)  # CredentialsError (a ValueError): one line
    return Transport(tls_cert=tls_cert, tls_key=tls_key, token=token, credentials=creds, client_ca=client_ca,
                     max_message_bytes=int(max_message_mb * 1024 * 1024))


def _until_signal(start, stop, failed=None) -> None:
    """Run `start()`, then wait for SIGINT/SIGTERM and `stop()` (graceful drain). A start that
    fails (the port is taken, ...) and `failed()` (awaitables: a reason to give up) end it with one
    line and a non-zero exit."""

    async def main():
        try:
            await start()
        except (OSError, ValueError) as e:
            return f"{e}", 2
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        waits = [asyncio.ensure_future(done.wait())] + [asyncio.ensure_future(f) for f in (failed() if failed else ())]
        finished, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        why = next((t.result() for t in finished if t is not waits[0] and t.result()), None)
        if why is None:
            click.echo("draining...", err=True)
        await stop()
        for t in waits:
            t.cancel()
        return (why, 1) if why else None

    out = asyncio.run(main())
    if out:
        _fail(*out)


_transport_options = [
    click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="Server: its PEM certificate chain (with --tls-key). Client side: the CA to trust."),
    click.option("--token", envvar="AGENTFLOW_TOKEN", default=None,
                 help="Bearer token: sent by this process (a worker: its worker credential); without "
                      "--tokens-file, the one shared token a server requires (env AGENTFLOW_TOKEN)."),
    click.option("--tokens-file", envvar="AGENTFLOW_TOKENS_FILE", type=click.Path(dir_okay=False), default=None,
                 help="Credentials, one a line: '<token> client <tenant>', '<token> worker <id>', '<token> admin' "
                      "(env AGENTFLOW_TOKENS_FILE, or the text in AGENTFLOW_TOKENS). See docs/service.md."),
    click.option("--tls-client-ca", type=click.Path(dir_okay=False), default=None,
                 help="Require client certificates signed by this CA (mTLS; names 'client:<tenant>', "
                      "'worker:<id>', 'admin')."),
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
@click.option("--max-programs-per-tenant", type=int, default=1_000, show_default=True,
              help="Open programs one tenant may hold.")
@click.option("--program-idle-s", type=float, default=3_600.0, show_default=True,
              help="An open program without a request for this long is closed (cancelled).")
@click.option("--worker-wait-s", type=float, default=30.0, show_default=True,
              help="How long a call with no worker to run it waits for one to register.")
@click.option("--max-workflow-steps", type=int, default=2_000, show_default=True, help="Steps of one workflow.")
@click.option("--max-spec-kb", type=int, default=1_024, show_default=True, help="Size of one workflow spec.")
@click.option("-v", "--verbose", is_flag=True)
@_with(_transport_options)
def serve(listen, policy, journal_path, time_scale, worker_timeout, ttft_slo, tls_key, otel, otel_endpoint,
          openai_listen, openai_engine, openai_workflow,
          max_programs_per_tenant, program_idle_s, worker_wait_s, max_workflow_steps, max_spec_kb, verbose,
          tls_cert, token, tokens_file, tls_client_ca, max_message_mb) -> None:
    """Start the scheduler service: clients open programs and submit calls, workers register and
    receive decisions. Open programs survive a restart (the journal)."""
    _quiet_grpc()
    from agentflow.runtime.service.app import build_scheduler
    from agentflow.runtime.service.core import Limits
    from agentflow.runtime.service.journal import JournalError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    for name, v in (("--max-programs-per-tenant", max_programs_per_tenant), ("--program-idle-s", program_idle_s),
                    ("--worker-wait-s", worker_wait_s), ("--max-workflow-steps", max_workflow_steps),
                    ("--max-spec-kb", max_spec_kb)):
        if not v > 0:
            _fail(f"{name} must be > 0 (got {v})")
    try:
        limits = Limits(max_programs_per_tenant=max_programs_per_tenant, program_idle_s=program_idle_s,
                        worker_wait_s=worker_wait_s, max_workflow_steps=max_workflow_steps,
                        max_spec_bytes=max_spec_kb * 1024)
        server, recovered = build_scheduler(
            listen=listen, policy=policy, journal_path=journal_path, time_scale=time_scale,
            worker_timeout_s=worker_timeout, ttft_slo_s=ttft_slo, otel=otel, otel_endpoint=otel_endpoint,
            transport=_transport(tls_cert, tls_key, token, max_message_mb, tokens_file, tls_client_ca),
            limits=limits)
    except (ValueError, OSError, JournalError) as e:
        _fail(str(e))

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
        auth = server.authenticator
        who = "open: no credentials" if auth.open else f"{len(auth.credentials)} credential(s)"
        click.echo(f"agentflow scheduler on {server.target} (policy {policy}, journal {journal_path}, "
                   f"{recovered} program(s) recovered, {who})", err=True)
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
           sglang_url, tls_key, count, verbose, tls_cert, token, tokens_file, tls_client_ca, max_message_mb) -> None:
    """Start a worker agent beside an engine: it registers with the scheduler, serves the calls
    routed to it, and applies the scheduler's decisions to the engine's cache."""
    _quiet_grpc()
    from agentflow.runtime.service.app import build_worker

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    if count < 1 or (count > 1 and engine != "sim"):
        click.echo("error: --count must be >= 1, and above 1 only with --engine sim", err=True)
        sys.exit(2)
    from dataclasses import replace

    host, _, port = listen.rpartition(":")
    agents = []
    try:
        base = _transport(tls_cert, tls_key, token, max_message_mb, tokens_file, tls_client_ca)
        for i in range(count):
            wid = worker_id if count == 1 else f"{worker_id or 'sim'}-{i}"
            addr = listen if count == 1 or port == "0" else f"{host}:{int(port) + i}"
            tr = base
            if not base.credentials.open and wid:
                # its own credential to the scheduler: --token, else the tokens file's line for this id
                own = token or base.credentials.token_for_worker(wid)
                if own is None:
                    _fail(f"{base.credentials.source} has no 'worker {wid}' line and no --token was given: add "
                          f"'<token> worker {wid}' there, or pass --token")
                tr = replace(base, token=own)
            agents.append(build_worker(scheduler=scheduler, engine=engine, worker_id=wid, listen=addr,
                                       advertise=advertise if count == 1 else None, preset=preset,
                                       kv_tokens=kv_tokens, host_tokens=host_tokens, strategy=strategy,
                                       time_scale=time_scale, sglang_url=sglang_url, transport=tr))
    except (ValueError, OSError) as e:
        _fail(str(e))

    async def start():
        for agent in agents:
            await agent.start()
            click.echo(f"agentflow worker {agent.config.worker_id} ({engine}) on {agent.address}, "
                       f"scheduler {scheduler}", err=True)

    async def stop():
        for agent in agents:
            await agent.stop(5.0)
            await agent.engine.aclose()

    _until_signal(start, stop, failed=lambda: [a.failed for a in agents if a.failed is not None])
