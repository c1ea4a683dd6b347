"""`agentflow replay`: a workload through the simulated cluster, every policy side by side."""

from __future__ import annotations

import sys

import click

from agentflow.errors import AgentflowError


@click.command()
@click.argument("workload", type=click.Path(dir_okay=False))
@click.option("--policies", default="lru,kvflow,continuum,agentflow,belady", show_default=True,
              help="Comma-separated: lru, kvflow, continuum, agentflow, belady.")
@click.option("--preset", default="llama-3.1-8b-h100", show_default=True, help="Model and GPU cost-model preset.")
@click.option("--workers", type=int, default=1, show_default=True, help="Simulated GPU workers.")
@click.option("--rate", type=float, default=None, help="Poisson arrivals at R programs per second.")
@click.option("--concurrency", type=int, default=None,
              help="Closed loop with N programs in flight (default: enough to oversubscribe the GPU KV pool 2x).")
@click.option("--recorded", is_flag=True, help="Arrivals as recorded in the workload.")
@click.option("--programs", "num_programs", type=int, default=None, help="Replay only the first N programs.")
@click.option("--kv-tokens", type=int, default=None, help="GPU KV pool per worker, in tokens (default: the preset's).")
@click.option("--host-tokens", type=int, default=None, help="Host KV tier per worker, in tokens (0: none).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write results as JSON here.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Write plots (JCT CDF, cache over time, per-policy bars) into this folder.")
def replay(workload, policies, preset, workers, rate, concurrency, recorded, num_programs, kv_tokens, host_tokens,
           seed, json_out, plot_dir) -> None:
    """Replay WORKLOAD (a workload file, see `agentflow workload`) through a simulated SGLang
    cluster once per policy, and compare them side by side: job completion time, time to first
    token, prefix hit rate, recomputed prefill, pinned memory, throughput."""
    from agentflow.runtime.policies import POLICY_NAMES
    from agentflow.runtime.replay import report
    from agentflow.runtime.replay.run import ReplaySetup, run

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    bad = [p for p in names if p not in POLICY_NAMES]
    if bad:
        click.echo(f"error: unknown polic{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)}; "
                   f"valid: {', '.join(POLICY_NAMES)}", err=True)
        sys.exit(2)
    if sum(x is not None and x is not False for x in (rate, concurrency, recorded or None)) > 1:
        click.echo("error: choose one of --rate, --concurrency, --recorded", err=True)
        sys.exit(2)
    setup = ReplaySetup(workload=workload, policies=names, preset=preset, workers=workers, rate_per_s=rate,
                        concurrency=concurrency, recorded=recorded, num_programs=num_programs, seed=seed,
                        kv_capacity_tokens=kv_tokens, host_capacity_tokens=host_tokens)
    try:
        from agentflow.runtime.workload import load_workload

        n = len(load_workload(workload).programs)
        total = (min(n, num_programs) if num_programs else n) * len(names)
        with click.progressbar(length=total, label=f"replaying {len(names)} policies", file=sys.stderr,
                               show_pos=True) as bar:
            config, results, series = run(setup, progress=bar.update)
    except (AgentflowError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"{config['source']}: {config['programs']} programs, {config['calls']} calls; {config['preset']}, "
               f"{config['workers']} worker(s), GPU KV {config['kv_capacity_tokens_per_worker']:,} tokens each; "
               f"arrivals {config['arrivals']}" + (f" ({config['concurrency']} in flight)" if config['concurrency'] else ""))
    click.echo(report.table(results))
    doc = report.document(config, results)
    if json_out:
        click.echo(f"json: {report.write_json(json_out, doc)}")
    if plot_dir:
        files = report.plots(results, series, plot_dir, title=f"{config['source']} ({config['programs']} programs)")
        click.echo("plots: " + ", ".join(str(f) for f in files))
