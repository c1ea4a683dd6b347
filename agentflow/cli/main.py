"""`agentflow`: the console entry point. Subcommands register here, one module each."""

from __future__ import annotations

import importlib

import click

# (module, attribute) of each subcommand; imported lazily so `agentflow --help` stays fast
# and a subcommand's heavy imports (torch, grpc) load only when it runs.
_SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "plan": ("agentflow.cli.plan", "plan", "Compile a workflow; print its step graph and steps-to-execution table."),
    "validate": ("agentflow.cli.plan", "validate", "Validate a workflow file or module and report every problem."),
    "schema": ("agentflow.cli.plan", "schema", "Print the JSON Schema of the workflow spec format."),
    "run": ("agentflow.cli.run", "run", "Run a workflow for real on an engine (local model, simulated worker, or a service)."),
    "replay": ("agentflow.cli.replay", "replay", "Replay a workload through the simulated cluster; compare every policy side by side."),
    "schedule": ("agentflow.cli.schedule", "schedule", "Run a script of events through the scheduler; print its decisions."),
    "serve": ("agentflow.cli.serve", "serve", "Start the scheduler service (gRPC) that clients and GPU workers talk to."),
    "worker": ("agentflow.cli.serve", "worker", "Start a worker agent beside an engine (sim, local or sglang) and register it."),
    "workload": ("agentflow.cli.workload", "workload", "Convert real agent runs into replayable workloads; print their statistics."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _SUBCOMMANDS:
            return None
        module, attr, _ = _SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `-v` works after the subcommand too (`agentflow plan x.py -v`), except where the
        # subcommand has its own -v (serve, worker: log level)
        if args and args[0] not in ("serve", "worker"):
            cut = args.index("--") if "--" in args else len(args)
            if any(a in ("-v", "--verbose") for a in args[1:cut]):
                args = [args[0], *(a for a in args[1:cut] if a not in ("-v", "--verbose")), *args[cut:]]
                args.insert(0, "--verbose")
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        from agentflow.cli._errors import expected_errors

        with expected_errors(bool(ctx.params.get("verbose"))):
            return super().invoke(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentflow-sched", prog_name="agentflow")
@click.option("-v", "--verbose", is_flag=True, help="Show the traceback of an error (else one line, exit status 2).")
def cli(verbose: bool) -> None:
    """agentflow: a workflow-aware orchestrator for multi-agent LLM programs."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
