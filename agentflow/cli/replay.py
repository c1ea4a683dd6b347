"""`agentflow replay`: a workload through the simulated cluster, every policy side by side; or
live, through a scheduler service (`--service`) or real engines (`--engine local|sglang`)."""

from __future__ import annotations

import sys

import click

from agentflow.cli._errors import fail, require_local_engine
from agentflow.errors import AgentflowError


@click.command()
@click.argument("workload", type=click.Path(dir_okay=False))
@click.option("--policies", default="sglang,sglang-hicache,kvflow,continuum,agentflow,belady", show_default=True,
              help="Comma-separated: sglang (SGLang's default: LRU, no host tier), sglang-hicache, kvflow, "
                   "continuum, agentflow, belady, lru (LRU with the host tier as --host-tokens says).")
@click.option("--preset", default="llama-3.1-8b-h100", show_default=True, help="Model and GPU cost-model preset.")
@click.option("--workers", type=int, default=1, show_default=True, help="Simulated GPU workers.")
@click.option("--rate", type=float, default=None, help="Poisson arrivals at R programs per second.")
@click.option("--concurrency", type=int, default=None,
              help="Closed loop with N programs in flight (default: enough to oversubscribe the GPU KV pool 2x).")
@click.option("--recorded", is_flag=True, help="Arrivals as recorded in the workload.")
@click.option("--programs", "num_programs", type=int, default=None, help="Replay only the first N programs.")
@click.option("--kv-tokens", type=int, default=None, help="GPU KV pool per worker, in tokens (default: the preset's).")
@click.option("--host-tokens", type=int, default=None,
              help="Host KV tier per worker, in tokens, for the presets that have one (0: none; default: the preset's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write results as JSON here.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Write plots (JCT CDF, cache over time, per-policy bars) into this folder.")
@click.option("--engine", type=click.Choice(["sim", "local", "sglang"]), default="sim", show_default=True,
              help="sim: the discrete-event replay; local / sglang: live on a real engine, one run per policy.")
@click.option("--live", is_flag=True, help="With --engine sim: simulated workers in scaled real time, in process.")
@click.option("--service", default=None, metavar="HOST:PORT",
              help="Replay live through a running scheduler service (`agentflow serve`) and its workers.")
@click.option("--sglang-url", default=None, help="--engine sglang: the SGLang server's base URL.")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Live runs: workload seconds per wall second (the service's and sim workers' --time-scale).")
@click.option("--token", default=None, help="--service: bearer token.")
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False), help="--service: CA certificate (PEM).")
@click.option("--sweep", "sweep_dir", type=click.Path(file_okay=False), default=None,
              help="JCT against load (closed loop 1/4-2x the default concurrency, open loop 1/4-5/4 of saturation) "
                   "and each policy's capacity at SLO (p95 JCT <= 2x unloaded): JSON and jct_vs_load.png here. "
                   "First 100 programs unless --programs; minutes per policy.")
def replay(workload, policies, preset, workers, rate, concurrency, recorded, num_programs, kv_tokens, host_tokens,
           seed, json_out, plot_dir, engine, live, service, sglang_url, time_scale, token, tls_cert, sweep_dir) -> None:
    """Replay WORKLOAD (a workload file, see `agentflow workload`) through a simulated SGLang
    cluster once per policy, and compare them side by side: job completion time, time to first
    token, prefix hit rate, recomputed prefill, pinned memory, throughput."""
    from agentflow.runtime.policies import ALL_POLICY_NAMES as POLICY_NAMES
    from agentflow.runtime.replay import report
    from agentflow.runtime.replay.run import ReplaySetup, run

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    bad = [p for p in names if p not in POLICY_NAMES]
    if bad:
        _usage(f"unknown polic{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)}; valid: {', '.join(POLICY_NAMES)}")
    if not names:
        _usage(f"--policies names no policy; give one or more of {', '.join(POLICY_NAMES)}")
    for flag, value, least in (("--workers", workers, 1), ("--concurrency", concurrency, 1),
                               ("--programs", num_programs, 1), ("--kv-tokens", kv_tokens, 1),
                               ("--host-tokens", host_tokens, 0)):
        if value is not None and value < least:
            why = "; a worker needs a GPU KV pool" if flag == "--kv-tokens" else ""
            _usage(f"{flag} must be >= {least} (got {value}){why}")
    for flag, value in (("--rate", rate), ("--time-scale", time_scale)):
        if value is not None and not value > 0:
            _usage(f"{flag} must be > 0 (got {value:g})")
    if sum(x is not None and x is not False for x in (rate, concurrency, recorded or None)) > 1:
        _usage("choose one of --rate, --concurrency, --recorded")
    ctx = click.get_current_context()
    given = {p.opts[-1] for p in ctx.command.params if isinstance(p, click.Option)
             and ctx.get_parameter_source(p.name) not in (None, click.core.ParameterSource.DEFAULT)}
    if service:
        # the service's scheduler runs its own policy on its own workers: these flags would be ignored
        ignored = sorted(given & {"--policies", "--plot", "--workers", "--preset", "--kv-tokens", "--host-tokens",
                                  "--engine", "--live", "--sglang-url"})
        if ignored:
            _usage(f"{', '.join(ignored)} do{'es' if len(ignored) == 1 else ''} not apply with --service (the "
                   "service runs its own policy on its own workers, and live replays write no plots); leave "
                   f"{'it' if len(ignored) == 1 else 'them'} out, or replay without --service")
    else:
        ignored = sorted(given & {"--token", "--tls-cert"})
        if ignored:
            one = len(ignored) == 1
            _usage(f"{', '.join(ignored)} only appl{'ies' if one else 'y'} with --service HOST:PORT; add --service "
                   f"or leave {'it' if one else 'them'} out")
    if service or live or engine != "sim":
        if rate is not None or recorded:
            _usage("live replays run a closed loop: use --concurrency, not --rate or --recorded")
        if plot_dir:
            _usage("--plot applies to the simulated replay only (leave out --live/--engine); live replays write "
                   "--json")
        if engine != "sim" and live:
            _usage("--live is for --engine sim; --engine local/sglang always run live")
        _live(workload, names, preset, workers, concurrency, num_programs, kv_tokens, host_tokens, seed, json_out,
              engine, service, sglang_url, time_scale, token, tls_cert)
        return
    if sweep_dir:
        _sweep(workload, names, preset, workers, num_programs, kv_tokens, host_tokens, seed, sweep_dir)
        return
    setup = ReplaySetup(workload=workload, policies=names, preset=preset, workers=workers, rate_per_s=rate,
                        concurrency=concurrency, recorded=recorded, num_programs=num_programs, seed=seed,
                        kv_capacity_tokens=kv_tokens, host_capacity_tokens=host_tokens)
    try:
        programs = _check_fits(workload, num_programs, kv_tokens, preset)
        total = len(programs) * len(names)
        label = f"replaying {len(names)} polic{'y' if len(names) == 1 else 'ies'}"
        with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
            config, results, series = run(setup, progress=bar.update)
    except (AgentflowError, ValueError) as e:
        fail(e, str(e))
    click.echo(f"{config['source']}: {config['programs']} programs, {config['calls']} calls; {config['preset']}, "
               f"{config['workers']} worker(s), GPU KV {config['kv_capacity_tokens_per_worker']:,} tokens each; "
               f"arrivals {config['arrivals']}" + (f" ({min(config['concurrency'], config['programs'])} in flight)" if config['concurrency'] else ""))
    click.echo(report.table(results))
    doc = report.document(config, results)
    if json_out:
        click.echo(f"json: {report.write_json(json_out, doc)}")
    if plot_dir:
        files = report.plots(results, series, plot_dir, title=f"{config['source']} ({config['programs']} programs)")
        click.echo("plots: " + ", ".join(str(f) for f in files))


def _usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _check_fits(workload: str, num_programs: int | None, kv_tokens: int | None, preset: str) -> list:
    """The programs to replay, after checking that each call fits a worker's pool (else an error at once)."""
    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.replay.fit import check_fits
    from agentflow.runtime.workload import load_workload

    programs = load_workload(workload).programs
    programs = programs[:num_programs] if num_programs and num_programs > 0 else programs
    if kv_tokens is None or kv_tokens > 0:
        check_fits(programs, kv_tokens or make_cost_model(preset).kv_capacity_tokens)
    return programs


def _live(workload, names, preset, workers, concurrency, num_programs, kv_tokens, host_tokens, seed, json_out,
          engine, service, sglang_url, time_scale, token, tls_cert) -> None:
    import json

    from agentflow.cli._table import render
    from agentflow.runtime.replay.live_run import LiveSetup, run_live

    if "belady" in names:
        names = tuple(n for n in names if n != "belady")
        click.echo("note: belady needs the future; live replays skip it", err=True)
    setup = LiveSetup(workload=workload, policies=names, engine=engine, service=service, workers=workers,
                      sglang_url=sglang_url, preset=preset, kv_capacity_tokens=kv_tokens,
                      host_capacity_tokens=host_tokens, concurrency=concurrency or 8, num_programs=num_programs,
                      seed=seed, time_scale=time_scale, token=token, tls_cert=tls_cert)
    try:
        from agentflow.runtime.workload import load_workload

        if engine == "local" and not service:
            require_local_engine()
        if not service and (engine == "sim" or kv_tokens):  # a pool we know: a call too large would wait forever
            _check_fits(workload, num_programs, kv_tokens, preset)
        n = len(load_workload(workload).programs)
        runs = 1 if service else len(names)
        total = (min(n, num_programs) if num_programs else n) * runs
        with click.progressbar(length=total, label="replaying live", file=sys.stderr, show_pos=True) as bar:
            config, results = run_live(setup, progress=bar.update)
    except (AgentflowError, ValueError, OSError) as e:
        fail(e, str(e))
    except Exception as e:  # the service is down or refused us (grpc errors, ServiceUnavailable)
        if type(e).__name__ == "ServiceUnavailable":
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        if type(e).__module__.startswith("grpc"):
            click.echo(f"error: the service at {service} answered {e}", err=True)
            sys.exit(1)
        raise
    where = f"service {service}" if service else f"{workers} {engine} engine(s) in process"
    in_flight = min(config["concurrency"], config["programs"])  # never more than the programs there are
    click.echo(f"{config['source']}: {config['programs']} programs, {config['calls']} calls; live through {where}; "
               f"{in_flight} in flight")
    cols = ("jct_mean_s", "jct_p90_s", "ttft_mean_s", "hit_rate", "submit_p99_ms", "retries", "wall_s")
    click.echo(render(("policy",) + cols, [(p,) + tuple(r[c] for c in cols) for p, r in results.items()]))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"config": config, "results": results}, f, indent=2)
        click.echo(f"json: {json_out}")


def _sweep(workload, names, preset, workers, num_programs, kv_tokens, host_tokens, seed, out_dir) -> None:
    import json
    from pathlib import Path

    from agentflow.cli._table import render
    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.replay import sweep
    from agentflow.runtime.replay.load import RunSpec
    from agentflow.runtime.replay.run import default_concurrency
    from agentflow.runtime.workload import load_workload

    if "belady" in names:
        names = tuple(n for n in names if n != "belady")
        click.echo("note: --sweep skips belady (a reference, not a system to load)", err=True)
    n = num_programs or 100
    try:
        programs = list(load_workload(workload).programs)[:n]
    except (AgentflowError, ValueError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    kv = kv_tokens or make_cost_model(preset).kv_capacity_tokens
    conc = default_concurrency(programs, kv * workers)
    base = RunSpec(workload=workload, policy="sglang", preset=preset, num_programs=n, workers=workers,
                   kv_capacity_tokens=kv_tokens, host_capacity_tokens=host_tokens, seed=seed)
    total = len(names) * (len(sweep.CLOSED_FACTORS) + len(sweep.OPEN_FACTORS) + 4)
    with click.progressbar(length=total, label=f"sweeping {len(names)} policies", file=sys.stderr,
                           show_pos=True) as bar:
        doc = sweep.sweep(base, names, default_concurrency=conc, progress=lambda: bar.update(1))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n")
    rows = [(r["policy"], r["loop"], r["concurrency"] or "", f"{r['rate_per_min']:.2f}" if r["rate_per_min"] else "",
             f"{r['jct_mean_s']:.1f}", f"{r['jct_p95_s']:.1f}", f"{r['ttft_after_first_p99_s']:.2f}")
            for r in doc["runs"]]
    click.echo(render(("policy", "loop", "in flight", "rate/min", "JCT mean s", "JCT p95 s", "TTFT p99 s*"), rows))
    click.echo("* TTFT p99 of every call after a program's first, time parked included")
    click.echo(f"capacity at SLO (p95 JCT <= {doc['slo_p95_s']:.0f} s), programs/min: "
               + ", ".join(f"{p} {c:.2f}" for p, c in doc["capacity_per_min"].items()))
    path = sweep.plot(doc, out, title=f"{Path(workload).name} ({n} programs, {preset})")
    click.echo(f"json: {out / 'sweep.json'}\nplot: {path}")
