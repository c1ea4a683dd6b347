"""`agentflow schedule`: run a script of events through the scheduler and show its decisions."""

from __future__ import annotations

import json
import math

import click

from agentflow.cli._errors import fail
from agentflow.errors import WorkloadError


def _when(x: float) -> str:
    return "not needed again" if math.isinf(x) else f"next needed in {x:g} step{'' if x == 1 else 's'}"


def describe(decision) -> list[str]:
    """A decision in words, one line per item."""
    out = []
    for p in decision.pins:
        out.append(f"pin    {p.prefix} ({p.num_tokens} tokens) on {p.worker} for {p.ttl_s:.2f} s")
    for u in decision.unpins:
        out.append(f"unpin  {u.prefix} ({u.reason.value})")
    for p in decision.priorities:
        out.append(f"keep   {p.prefix}: {_when(p.steps_to_execution)} -> priority {p.priority}")
    for p in decision.prefetches:
        out.append(f"fetch  {p.prefix} to {p.worker} by t={p.deadline_s:.2f} s ({p.num_tokens} tokens)")
    if decision.admit:
        out.append("admit  " + ", ".join(map(str, decision.admit)))
    for r in decision.routes:
        out.append(f"route  {r.call_id} -> {', '.join(r.workers) or 'anywhere'}")
    return out


@click.command()
@click.argument("script", type=click.Path(dir_okay=False))
@click.option("--policy", default="agentflow", show_default=True,
              help="lru, kvflow, continuum or agentflow (belady needs a workload's future).")
@click.option("--only-steps", is_flag=True, help="Decide only at explicit {\"type\": \"step\"} lines.")
@click.option("--json", "as_json", is_flag=True, help="One JSON decision per line.")
def schedule(script: str, policy: str, only_steps: bool, as_json: bool) -> None:
    """Run SCRIPT (JSON Lines events, see runtime/script.py) through the scheduler and print
    each decision: pins and unpins, eviction priorities, prefetches, admission order, routes."""
    from agentflow.runtime.policies import make_policy
    from agentflow.runtime.script import load_script, run_script

    try:
        pol = make_policy(policy)
        results = run_script(load_script(script), pol, every_event=not only_steps)
    except (WorkloadError, ValueError) as e:
        fail(e, f"{script}: {e}" if not str(e).startswith(script) else str(e))
    for line, decision in results:
        if as_json:
            click.echo(json.dumps({"line": line.line, **decision.to_dict()}, default=str))
            continue
        click.echo(f"t={decision.time_s:6.2f}s  line {line.line}")
        for text in describe(decision):
            click.echo(f"    {text}")
