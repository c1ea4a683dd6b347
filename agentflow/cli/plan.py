"""`agentflow plan`, `agentflow validate`, `agentflow schema`: workflows before they run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from agentflow.cli._errors import fail
from agentflow.cli._table import render
from agentflow.errors import SpecError, WorkflowValidationError


def _load(path: str):
    from agentflow.spec import load_workflow

    try:
        return load_workflow(path)
    except (SpecError, WorkflowValidationError) as e:
        fail(e, str(e))


def _edges_text(graph, step: str) -> str:
    from agentflow.graph.model import Branch, Fork, Loop, Next

    t = graph.transitions[step]
    match t:
        case None:
            return "end"
        case Next(target=x):
            return x
        case Fork(targets=xs, join=j):
            return f"parallel {', '.join(xs)}" + (f" -> join {j}" if j else "")
        case Branch(cases=cs, default=d, default_probability=pd):
            parts = [f"{c.target} ({c.probability:.0%})" for c in cs] + [f"else {d} ({pd:.0%})"]
            return "branch " + ", ".join(parts)
        case Loop(back_to=h, exit=x, max_iterations=m, expected_iterations=e):
            return f"loop to {h} (max {m}, ~{e:g}) then {x or 'end'}"
    return "?"


def plan_tables(compiled) -> dict:
    """The step graph and, for each step taken as the active position, every agent's values."""
    from agentflow.graph.position import Position, estimate

    g = compiled.graph
    rows = []
    for step in g.steps:
        est = estimate(g, Position.of(step))
        rows.append({
            "step": step,
            "steps_min": {a: _num(v) for a, v in est.steps_to_execution().items()},
            "steps_expected": {a: _num(v) for a, v in est.expected_steps().items()},
            "hit_probability": {a: round(float(p), 4) for a, p in zip(est.agents, est.hit_probability)},
            "remaining_calls": round(est.remaining_calls, 3),
            "remaining_tokens": round(est.remaining_tokens, 1),
        })
    return {
        "workflow": g.name,
        "entry": g.entry,
        "agents": list(g.agents),
        "steps": [
            {"name": s, "kind": n.kind.value, "agent": n.agent, "tool": n.tool, "then": _edges_text(g, s)}
            for s, n in g.steps.items()
        ],
        "steps_to_execution": rows,
    }


def _num(v: float) -> float | None:
    return None if math.isinf(v) else round(float(v), 4)


@click.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option("--picture", "picture", type=click.Path(dir_okay=False), default=None,
              help="Write the graph here: .svg (default out/<file name>.svg, e.g. out/debate.yaml.svg), "
                   ".mmd (Mermaid) or .dot.")
@click.option("--no-picture", is_flag=True, help="Do not write a picture.")
@click.option("--json", "as_json", is_flag=True, help="Print the tables as one JSON line.")
@click.option("--expected/--no-expected", default=True, show_default=True,
              help="Show the expected value next to the minimum.")
def plan(workflow: str, picture: str | None, no_picture: bool, as_json: bool, expected: bool) -> None:
    """Compile WORKFLOW (.py, .yaml, .json, or a module) and print its step graph and
    steps-to-execution table.

    Each row takes one step as the program's position; each cell is how many steps away that
    agent's next LLM call is: the minimum over every possible path, and (in parentheses) the
    expected value under the workflow's planning probabilities, given that the agent runs
    again. "-" means the agent never runs again from there: its KV can be evicted.
    """
    compiled = _load(workflow)
    g = compiled.graph
    data = plan_tables(compiled)
    pic_path = None
    if not no_picture:
        from agentflow.graph.export import write_picture

        target = Path(picture) if picture else Path("out") / f"{_safe(Path(workflow).name)}.svg"
        try:
            pic_path = write_picture(g, target)
        except OSError as e:
            fail(e, f"cannot write the picture {target}: {e.strerror or e}; choose another --picture path, "
                    "or --no-picture")
        except ValueError as e:  # a format we cannot write
            fail(e, str(e))
        data["picture"] = str(pic_path)
    if as_json:
        click.echo(json.dumps(data, separators=(",", ":")))
        return
    n_llm = sum(1 for s in g.steps.values() if s.kind.value == "llm")
    click.echo(f"workflow {g.name}: {len(g.steps)} steps ({n_llm} LLM), {len(g.agents)} agents, "
               f"{len(g.regions)} fan-outs, {len(g.loops)} loops; entry {g.entry}")
    if compiled.description:
        click.echo(compiled.description)
    click.echo()
    click.echo("Step graph")
    click.echo(render(["step", "kind", "agent", "tool", "then"],
                      [[s["name"], s["kind"], s["agent"] or "", s["tool"] or "", s["then"]] for s in data["steps"]]))
    click.echo()
    click.echo("Steps to each agent's next LLM call, with the program at <step>" +
               (" (min, expected in parentheses)" if expected else ""))
    headers = ["step", *g.agents, "calls left"]
    body = []
    for row in data["steps_to_execution"]:
        cells = [row["step"]]
        for a in g.agents:
            lo, ex = row["steps_min"][a], row["steps_expected"][a]
            if lo is None:
                cells.append("-")
            elif expected and ex is not None and abs(ex - lo) > 0.005:
                cells.append(f"{lo:g} ({ex:.1f})")
            else:
                cells.append(f"{lo:g}")
        cells.append(f"{row['remaining_calls']:.1f}")
        body.append(cells)
    click.echo(render(headers, body, align="l" + "r" * (len(headers) - 1)))
    if pic_path is not None:
        click.echo()
        click.echo(f"picture: {pic_path}")


@click.command()
@click.argument("workflows", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(workflows: tuple[str, ...]) -> None:
    """Compile each workflow file and report every problem (exit status 1 if any)."""
    from agentflow.spec import load_workflow

    failed = 0
    for path in workflows:
        try:
            c = load_workflow(path)
        except (SpecError, WorkflowValidationError) as e:
            failed += 1
            click.echo(f"{path}: INVALID\n{e}", err=True)
            continue
        click.echo(f"{path}: ok ({c.name}: {len(c.graph.steps)} steps, {len(c.graph.agents)} agents)")
    if failed:
        sys.exit(1)


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to a file instead of stdout.")
def schema(output: str | None) -> None:
    """Print the JSON Schema of the workflow spec format (YAML/JSON workflow files)."""
    from agentflow.spec import WorkflowSpec

    text = json.dumps(WorkflowSpec.json_schema(), indent=2) + "\n"
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
