"""`agentflow workload`: convert real agent runs into replayable workloads; print their statistics."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import click

from agentflow.cli._errors import fail
from agentflow.errors import WorkloadError


def _fail(err: WorkloadError) -> None:
    fail(err, str(err))


def _progress(enabled: bool):
    def wrap(items, label):
        if not enabled or len(items) < 2:
            return items

        def gen():
            with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
                yield from bar
        return gen()
    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def workload() -> None:
    """Convert real agent runs into replayable workloads; print their statistics."""


@workload.command()
@click.option("--format", "fmt", required=True, metavar="F",
              help="Source format: mini-swe-agent, swe-agent, openhands, bfcl, chatdev, mooncake.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Workload file to write (JSON Lines).")
@click.option("--seed", default=0, show_default=True, help="Seed of every synthetic draw (tool durations).")
@click.option("--tokenizer", default="heuristic", show_default=True,
              help="Token counter where the source has no usage: 'heuristic', 'smollm2' (SmolLM2's real tokenizer, offline) or 'hf:PATH/tokenizer.json'.")
@click.option("--durations", "table_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Duration table for synthetic tool times (default: the one shipped in the package).")
@click.option("--licence", help="Licence of the source data, written to the header.")
@click.option("--source-detail", default="", help="Where the data came from (repository @ commit, path).")
@click.option("--limit", type=int, help="Convert only the first N programs (for quick looks).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def convert(fmt: str, inputs: tuple[Path, ...], output: Path, seed: int, tokenizer: str, table_path: Path | None,
            licence: str | None, source_detail: str, limit: int | None, progress: bool) -> None:
    """Convert INPUT files or directories of format F into one workload file.

    Prints how many programs were read, converted and skipped, and why.
    """
    from agentflow.runtime.workload.convert import FORMATS, NEEDS_TABLE, TokenCounter, converter
    from agentflow.runtime.workload.durations import load_table
    from agentflow.runtime.workload.format import write_workload

    try:
        run = converter(fmt)
        table = load_table(table_path) if (table_path or fmt in NEEDS_TABLE) else None
        result = run(list(inputs), seed=seed, tokenizer=TokenCounter(tokenizer), table=table,
                     progress=_progress(progress), licence=licence or FORMATS[fmt][1],
                     source_detail=source_detail)
    except WorkloadError as e:
        _fail(e)
    programs = result.programs[:limit] if limit else result.programs
    if limit and len(programs) < len(result.programs):
        result.report.notes.append(f"--limit {limit}: wrote {len(programs)} of {len(result.programs)}")
    n = write_workload(output, result.header, programs)
    click.echo(result.report.to_text(), err=True)
    click.echo(f"wrote {n} programs to {output}", err=True)


@workload.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line instead of a table.")
def stats(file: Path, as_json: bool) -> None:
    """Print a workload's statistics: calls, prompt sizes and growth, tool times, prefix reuse."""
    from agentflow.runtime.workload.format import load_workload
    from agentflow.runtime.workload.stats import compute_stats

    try:
        w = load_workload(file)
    except WorkloadError as e:
        _fail(e)
    s = compute_stats(w.header, w.programs)
    click.echo(s.to_json() if as_json else s.to_text())


@workload.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Check a workload file; print the first problem (file, line, record, field) or 'ok'."""
    from agentflow.runtime.workload.format import load_workload

    try:
        w = load_workload(file)
    except WorkloadError as e:
        _fail(e)
    click.echo(f"ok: {file}: {len(w.programs)} programs, {sum(len(p.calls) for p in w.programs)} calls")


@workload.command()
def schema() -> None:
    """Print the JSON Schema of the header and program records."""
    from agentflow.runtime.workload.format import workload_json_schema

    click.echo(json.dumps(workload_json_schema(), indent=1))


@workload.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Duration table to write (JSON).")
@click.option("--java-test-logs", "java_logs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Also fit 'test' from SWE-bench-java harness logs (unlicensed: never for shipped tables).")
@click.option("--source", default="", help="What the samples come from, for the table's header.")
@click.option("--licence", default="", help="Licence(s) of the sources, for the table's header.")
def durations(files: tuple[Path, ...], output: Path, java_logs: tuple[Path, ...], source: str, licence: str) -> None:
    """Fit per-tool-kind duration distributions from the recorded tool times in workload FILES."""
    from agentflow.runtime.workload.durations import describe, fit_table
    from agentflow.runtime.workload.format import load_workload

    samples: dict[str, list[float]] = defaultdict(list)
    sources = []
    try:
        for f in files:
            w = load_workload(f)
            sources.append(f"{w.header.source} ({w.header.licence})")
            for p in w.programs:
                for c in p.calls:
                    if c.tool is not None and not c.tool.synthetic:
                        samples[c.tool.kind.value].append(c.tool.duration_s)
        if java_logs:
            from agentflow.runtime.workload.convert.java_test_logs import eval_run_durations

            xs, missing = eval_run_durations(list(java_logs))
            samples["test"].extend(xs)
            sources.append("swe-agent-java test-run logs (no licence: development only)")
            click.echo(f"java logs: {len(xs)} test runs, {missing} logs without a complete run", err=True)
        if not samples:
            raise WorkloadError("no recorded (non-synthetic) tool durations in the inputs", field="tool")
    except WorkloadError as e:
        _fail(e)
    table = fit_table(dict(samples), source=source or "; ".join(sources), licence=licence,
                      notes=("empirical quantiles per tool kind, sampled by inverse CDF (log-linear)",
                             "fitted by `agentflow workload durations` from recorded tool times only"))
    table.save(output)
    for kind, d in sorted(table.distributions.items()):
        click.echo(f"{kind:>8}: {describe(d)}", err=True)
    click.echo(f"wrote {output}", err=True)
