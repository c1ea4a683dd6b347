"""mini-swe-agent trajectories (``*.traj.json``), formats ``mini-swe-agent-1`` and ``-1.1``.

One file is one program with one agent. Every assistant message is an LLM call whose
``extra.response.usage`` gives its prompt and completion tokens (the provider's counts). The
conversation is one growing prefix, so call k's prompt is ``history(k-1) + new``:

- history = the previous prompt plus the previous visible answer. Reasoning tokens
  (``completion_tokens_details.reasoning_tokens``) are generated but not sent back, so when a
  call reasoned only its prompt is history and its visible answer is new text, as a prefix cache
  saw it.
- new = the rest of the recorded prompt (the observation, or a format-error message).

The system prompt's size is not in the usage; it is counted with the tokenizer.

What follows a call: its bash command, when it ran one (exactly one action). Format 1 records
only when each LLM call was created (1 s resolution), so tool durations are drawn from the fitted
table (synthetic); format 1.1 stamps each observation, so duration = observation timestamp -
assistant timestamp (recorded; it includes the harness's own overhead).
"""

from __future__ import annotations

import re
from pathlib import Path

from agentflow.runtime.workload.convert.common import (
    ConversionReport, ConversionResult, Progress, ProgramBuilder, Skip, TokenCounter, chain_segments,
    expand_inputs, key_of, make_header, message_text, need, need_count, no_progress, program_rng,
    read_json, shift_arrivals, tool_name,
)
from agentflow.runtime.workload.durations import DurationTable
from agentflow.runtime.workload.format import DurationSource, Program, TokenSource, ToolCall, ToolKind
from agentflow.errors import WorkloadError

FORMATS = ("mini-swe-agent-1", "mini-swe-agent-1.1")
_BASH_BLOCK = re.compile(r"```(?:bash|mswea_bash_command)\s*\n(.*?)\n```", re.DOTALL)
_SUBMIT = ("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT", "MINI_SWE_AGENT_FINAL_OUTPUT")


def _usage(msg: dict) -> dict | None:
    extra = msg.get("extra") or {}
    response = extra.get("response") or {}
    return response.get("usage") if isinstance(response, dict) else None


def _commands(msg: dict, fmt: str) -> list[str]:
    extra = msg.get("extra") or {}
    if fmt == "mini-swe-agent-1.1" and isinstance(extra.get("actions"), list):
        return [a.get("command", "") for a in extra["actions"] if isinstance(a, dict)]
    blocks = _BASH_BLOCK.findall(message_text(msg.get("content")))
    return blocks if len(blocks) == 1 else []


def _kind(command: str) -> ToolKind:
    return ToolKind.SUBMIT if any(s in command for s in _SUBMIT) else ToolKind.BASH


def convert_file(path: Path, *, seed: int, count: TokenCounter, table: DurationTable) -> tuple[Program, int, int]:
    """One trajectory -> (program, tool calls with recorded duration, with synthetic duration)."""
    name = str(path)
    data = read_json(path)
    fmt = need(data, "trajectory_format", file=name)
    if fmt not in FORMATS:
        raise WorkloadError(f"unknown trajectory format {fmt!r}; this converter reads {', '.join(FORMATS)}",
                            file=name, field="trajectory_format")
    pid = str(data.get("instance_id") or path.name.removesuffix(".traj.json"))
    messages = need(data, "messages", file=name, record=pid)
    if not messages or messages[0].get("role") != "system":
        raise Skip("first message is not a system prompt")
    system_text = message_text(messages[0].get("content"))
    system_tokens = count(system_text) + 4
    b = ProgramBuilder(pid)
    b.agent("agent", [(f"mini-swe-agent:system:{key_of(system_text)}", system_tokens)])
    rng = program_rng(seed, pid)
    t0: float | None = None
    prev: int | None = None
    prev_prompt = prev_output = 0
    prev_reasoned = False
    recorded = synthetic = 0
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not assistants:
        raise Skip("no assistant messages")
    for n, i in enumerate(assistants):
        msg = messages[i]
        usage = _usage(msg)
        where = f"messages[{i}].extra.response.usage"
        if usage is None:
            raise Skip(f"an assistant message has no provider usage ({where})")
        prompt = need_count(need(usage, "prompt_tokens", file=name, record=pid, where=where),
                            file=name, record=pid, field=f"{where}.prompt_tokens")
        completion = need_count(need(usage, "completion_tokens", file=name, record=pid, where=where),
                                file=name, record=pid, field=f"{where}.completion_tokens")
        reasoning = int(((usage.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None:
            cached = usage.get("cache_read_input_tokens")
        segments = chain_segments(prev=prev, prev_prompt=prev_prompt, prev_output=prev_output,
                                  prompt=prompt, system_tokens=system_tokens, output_in_history=not prev_reasoned)
        extra = msg.get("extra") or {}
        response = extra.get("response") or {}
        created = response.get("created") or extra.get("timestamp")
        if created is not None and t0 is None:
            t0 = float(created)
        tool = None
        commands = _commands(msg, fmt)
        if commands:
            cmd = commands[0]
            kind = _kind(cmd)
            observed = [m for m in messages[i + 1: assistants[n + 1] if n + 1 < len(assistants) else None]
                        if m.get("role") in ("user", "tool") and "timestamp" in (m.get("extra") or {})]
            if fmt == "mini-swe-agent-1.1" and observed and "timestamp" in extra:
                duration = max(0.0, float(observed[-1]["extra"]["timestamp"]) - float(extra["timestamp"]))
                tool = ToolCall(name=tool_name(cmd), kind=kind, duration_s=round(duration, 4), synthetic=False)
                recorded += 1
            else:
                tool = ToolCall(name=tool_name(cmd), kind=kind, duration_s=table.sample(kind, rng),
                                synthetic=True)
                synthetic += 1
        prev = b.add(agent="agent", segments=segments, output_tokens=completion, tool=tool,
                     start_s=round(float(created) - t0, 3) if created is not None and t0 is not None else None,
                     cached_tokens=int(cached) if cached is not None else None)
        prev_prompt, prev_output, prev_reasoned = prompt, completion, reasoning > 0
    return b.build(arrival_s=t0 or 0.0), recorded, synthetic


def convert(inputs: list[Path], *, seed: int = 0, tokenizer: TokenCounter | None = None,
            table: DurationTable, progress: Progress = no_progress, licence: str = "MIT",
            source_detail: str = "") -> ConversionResult:
    count = tokenizer or TokenCounter()
    files = expand_inputs(inputs, ("*.traj.json",))
    report = ConversionReport(source="mini-swe-agent")
    programs: list[Program] = []
    recorded = synthetic = 0
    for path in progress(files, "mini-swe-agent"):
        report.num_read += 1
        try:
            program, r, s = convert_file(path, seed=seed, count=count, table=table)
        except Skip as e:
            report.skip(path.name, e.reason)
            continue
        programs.append(program)
        recorded += r
        synthetic += s
    report.num_converted = len(programs)
    durations = (DurationSource.NONE if recorded + synthetic == 0 else DurationSource.RECORDED if synthetic == 0
                 else DurationSource.SYNTHETIC if recorded == 0 else DurationSource.MIXED)
    notes = ["prompt and output tokens from provider usage; system prompt size from the tokenizer",
             "reasoning tokens are generated but not sent back: after a reasoning call only its "
             "prompt is history"]
    if synthetic:
        notes.append(f"{synthetic} tool durations drawn from the fitted table (format 1 records none)")
    header = make_header(source="mini-swe-agent", source_detail=source_detail, licence=licence,
                         converter="agentflow.runtime.workload.convert.mini_swe_agent",
                         token_counts=TokenSource.USAGE, tokenizer=count.name, durations=durations,
                         seed=seed if synthetic else None,
                         duration_table=table.source if synthetic else None, notes=notes)
    return ConversionResult(header=header, programs=shift_arrivals(programs), report=report)
