"""`agentflow run`: run a workflow for real and show its text, its timeline and the cache decisions."""

from __future__ import annotations

import json
import sys

import click

from agentflow.cli._errors import fail, require_local_engine
from agentflow.errors import AgentflowError


def _parse_input(pairs: tuple[str, ...]) -> dict:
    """k=v pairs; a v that reads as JSON (numbers, true, lists...) is that value, else text."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--input")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, metavar="KEY=VALUE",
              help="A program input (repeat). VALUE is JSON if it parses as JSON, else text.")
@click.option("--engine", default="sim", show_default=True, metavar="sim|local|HOST:PORT",
              help="sim: the simulated SGLang worker in scaled real time; local: the local model; "
                   "HOST:PORT: the scheduler service (`agentflow serve`) and its workers.")
@click.option("--tokenizer", default="sim", show_default=True, type=click.Choice(["sim", "local"]),
              help="--engine HOST:PORT: the served model's tokenizer (sim workers: sim; local workers: local).")
@click.option("--token", default=None, help="--engine HOST:PORT: the service's bearer token.")
@click.option("--policy", default="agentflow", show_default=True,
              type=click.Choice(["lru", "kvflow", "continuum", "agentflow"]), help="The scheduler's cache policy.")
@click.option("--programs", "num_programs", type=int, default=1, show_default=True,
              help="Run N copies of the program at once, through one scheduler.")
@click.option("--time-scale", type=float, default=100.0, show_default=True,
              help="--engine sim: simulated seconds per wall second.")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Print generated text as it streams (one program only).")
@click.option("--json", "json_out", is_flag=True, help="Print the results as one JSON object instead.")
def run(file, inputs, engine, tokenizer, token, policy, num_programs, time_scale, stream, json_out) -> None:
    """Run the workflow in FILE (.yaml/.json/.py, or a module) on an engine: LLM steps generate,
    tools run, the scheduler decides what the cache keeps. Prints each program's answer, a
    per-step timeline and the cache decisions taken."""
    import anyio

    from agentflow.runtime.executor import ENGINE_KINDS, Executor, compile_workflow, make_engine

    from agentflow.runtime.engines.base import EngineError

    if num_programs < 1:
        click.echo(f"error: --programs must be >= 1 (got {num_programs})", err=True)
        sys.exit(2)
    if not time_scale > 0:
        click.echo(f"error: --time-scale must be > 0 (got {time_scale:g})", err=True)
        sys.exit(2)
    service = engine not in ENGINE_KINDS and ":" in engine
    if engine not in ENGINE_KINDS and not service:
        click.echo(f"error: --engine {engine}: no such engine; use sim (simulated GPU worker), local (the local model) "
                   "or HOST:PORT of a running `agentflow serve` (e.g. 127.0.0.1:7070)", err=True)
        sys.exit(2)
    try:
        if engine == "local":  # the extra and the model wheel, before anything starts
            require_local_engine()
        values = _parse_input(inputs)
        wf = compile_workflow(file)
        eng = None if service else make_engine(engine, policy=policy, time_scale=time_scale)
    except (AgentflowError, EngineError, ValueError) as e:
        fail(e, str(e))
    printer = _Streamer() if stream and not json_out and num_programs == 1 else None

    async def go():
        if service:
            from agentflow.runtime.executor.service import connect_service

            ex = Executor(backend=await connect_service(engine, tokenizer=tokenizer, token=token))
        else:
            ex = Executor(eng, policy=policy)
        try:
            async with ex:
                results = await ex.run_many(wf, [values] * num_programs, on_token=printer)
                return results, ex.decisions.summary()
        finally:
            if eng is not None:
                await eng.aclose()

    try:
        results, decisions = anyio.run(go)
    except (AgentflowError, EngineError) as e:  # e.g. no service answers at HOST:PORT
        fail(e, str(e))
    if printer is not None:
        printer.end()
    if json_out:
        click.echo(json.dumps({"workflow": wf.name, "engine": engine if eng is None else eng.name, "policy": policy,
                               "programs": [r.to_dict() for r in results], "decisions": decisions.to_dict()},
                              default=str))
    else:
        _report(results, decisions, show_text=printer is None, service=service)
    sys.exit(0 if all(r.ok for r in results) else 1)


class _Streamer:
    """Prints tokens as they come, with a header whenever the speaking step changes."""

    def __init__(self) -> None:
        self.current = None

    def __call__(self, ev) -> None:
        key = (ev.program_id, ev.call_id)
        if key != self.current:
            if self.current is not None:
                click.echo()
            click.echo(click.style(f"── {ev.step} ──", bold=True))
            self.current = key
        click.echo(ev.text, nl=False)

    def end(self) -> None:
        if self.current is not None:
            click.echo()


TTFT_NOTE = "ttft: engine time from submission to first token (simulated seconds on --engine sim)"


def _report(results, decisions, *, show_text: bool, service: bool = False) -> None:
    from agentflow.cli._table import render

    for r in results:
        click.echo()
        head = f"program {r.program_id}: {r.status.value}"
        if r.error:
            head += f" ({r.error})"
        click.echo(click.style(head, bold=True))
        if show_text and r.text:
            click.echo(f"answer: {r.text}")
        rows = []
        for t in r.timeline:
            rows.append([t.step, t.kind, t.agent or "", t.attempt, f"{t.start_s:.3f}", f"{t.duration_s:.3f}",
                         t.worker or "", t.prompt_tokens if t.kind == "llm" else "",
                         t.cached_tokens if t.kind == "llm" else "", t.output_tokens if t.kind == "llm" else "",
                         "" if t.ttft_s is None else f"{t.ttft_s:.3f}", t.status])
        click.echo(render(["step", "kind", "agent", "try", "start s", "wall s", "worker", "prompt", "cached",
                           "output", "ttft s*", "status"], rows, align="llllrrlrrrrl"))
        prompt = sum(t.prompt_tokens for t in r.timeline if t.kind == "llm")
        cached = sum(t.cached_tokens for t in r.timeline if t.kind == "llm")
        reused = sum(t.reused_tokens for t in r.timeline if t.kind == "llm")
        if prompt:
            click.echo(f"prompt tokens {prompt}, served from cache {cached} ({cached / prompt:.0%})"
                       + (f", placed from other agents' outputs {reused} ({reused / prompt:.0%})" if reused else ""))
        click.echo(f"* {TTFT_NOTE}")
    click.echo()
    click.echo(click.style("cache decisions", bold=True))
    if not decisions.decisions and service:
        click.echo("taken by the service on its workers (see its journal and telemetry)")
        return
    unpins = ", ".join(f"{k} {v}" for k, v in sorted(decisions.unpins.items())) or "none"
    click.echo(f"decisions {decisions.decisions}: eviction priorities set {decisions.priorities}, "
               f"pins {decisions.pins}, unpins {sum(decisions.unpins.values())} ({unpins}), "
               f"prefetches {decisions.prefetches}, admission orders {decisions.admissions}")
    for line in decisions.lines[:40]:
        click.echo("  " + line)
    if len(decisions.lines) > 40:
        click.echo(f"  ... {len(decisions.lines) - 40} more")
