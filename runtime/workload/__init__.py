"""Workloads: real agent runs as replayable programs.

A workload file (JSON Lines; see ``format.py`` and docs/workloads.md) is a header and one record
per program: its arrival, its agents and their system prompts (as shared parts), and its calls in
order. Each call's prompt is a list of segments (system, history, output_of, new) with token
counts; then the tokens it generates and the tool that follows it (name, kind, duration, whether
the duration is synthetic). No token contents are stored.

The surface later layers use::

    from agentflow.runtime.workload import load_workload, token_ids, TokenIds

    workload = load_workload("examples/workloads/swebench-mini.jsonl")
    ids = TokenIds(seed=0)                       # one per replay: shared parts drawn once
    for program in workload.programs:
        for i, call in enumerate(program.calls):
            prompt = token_ids(program, i, ids=ids)      # np.ndarray[int64], same sharing as recorded
            # ... run the call for call.output_tokens tokens, then wait call.tool.duration_s

- ``load_workload(path) -> Workload`` / ``iter_workload(path)``: read and check a file; bad input
  raises ``WorkloadError`` naming the file, line, record and field.
- ``write_workload(path, header, programs)``, ``workload_json_schema()``.
- ``token_ids`` / ``output_token_ids`` / ``program_runs`` / ``TokenIds``: deterministic ids.
- ``arrival_spec``, ``recorded_arrivals``, ``poisson_arrivals``, ``ClosedLoop``: when programs start.
- ``DurationTable``, ``fit_table``, ``load_table``: per-tool duration distributions.
- ``compute_stats`` / ``perfect_prefix_reuse``: what ``agentflow workload stats`` prints.
- ``convert.converter(name)``: the converters behind ``agentflow workload convert``.
"""

from __future__ import annotations

from agentflow.runtime.workload.arrivals import (
    ArrivalKind, ArrivalSpec, ClosedLoop, arrival_spec, open_loop_arrivals, poisson_arrivals, recorded_arrivals,
)
from agentflow.runtime.workload.durations import DurationTable, ToolDistribution, fit_table, load_table
from agentflow.runtime.workload.format import (
    FORMAT_NAME, FORMAT_VERSION, Agent, Call, DurationSource, Header, Program, PromptPart, Segment, SegmentKind,
    TokenSource, ToolCall, ToolKind, Workload, iter_workload, load_workload, workload_json_schema, write_workload,
)
from agentflow.runtime.workload.stats import WorkloadStats, compute_stats, perfect_prefix_reuse
from agentflow.runtime.workload.tokens import TokenIds, output_token_ids, program_runs, token_ids

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION",
    "Agent", "ArrivalKind", "ArrivalSpec", "Call", "ClosedLoop", "DurationSource", "DurationTable", "Header",
    "Program", "PromptPart", "Segment", "SegmentKind", "TokenIds", "TokenSource", "ToolCall", "ToolDistribution",
    "ToolKind", "Workload", "WorkloadStats",
    "arrival_spec", "compute_stats", "fit_table", "iter_workload", "load_table", "load_workload",
    "open_loop_arrivals", "output_token_ids", "perfect_prefix_reuse", "poisson_arrivals", "program_runs",
    "recorded_arrivals", "token_ids", "workload_json_schema", "write_workload",
]
