"""OpenHands evaluation output (JSON Lines, one instance per line): CodeActAgent runs.

One line is one program with one agent. LLM calls are ``metrics.token_usages`` in order (the
provider's prompt/completion/cache-read counts), with ``metrics.response_latencies`` matched by
``response_id``. The conversation is one growing prefix (``history(k-1) + new``) unless the
recorded prompt shrinks, which means the condenser rewrote the context: then only the system
prompt stays shared.

Each call's tool is the action its response produced (``tool_call_metadata.model_response.id``),
and its duration is recorded: the answering observation's timestamp (``cause`` = the action's id)
minus the action's timestamp. ``finish`` has no observation and ends the program.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.convert.common import (
    ConversionReport, ConversionResult, Progress, ProgramBuilder, Skip, TokenCounter, chain_segments,
    expand_inputs, key_of, make_header, message_text, need, need_count, no_progress, read_jsonl,
    shift_arrivals,
)
from agentflow.runtime.workload.durations import DurationTable
from agentflow.runtime.workload.format import DurationSource, Program, TokenSource, ToolCall, ToolKind

_KINDS = {"run": ToolKind.BASH, "run_ipython": ToolKind.BASH, "read": ToolKind.READ, "edit": ToolKind.EDIT,
          "think": ToolKind.THINK, "finish": ToolKind.SUBMIT, "browse": ToolKind.OTHER,
          "browse_interactive": ToolKind.OTHER}


def _ts(text: str, *, file: str, record: str, field: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        raise WorkloadError(f"not an ISO timestamp (got {text!r})", file=file, record=record, field=field) from None


def convert_record(raw: dict, *, file: str, line: int, count: TokenCounter) -> Program:
    pid = str(need(raw, "instance_id", file=file, line=line))
    history = need(raw, "history", file=file, line=line, record=pid)
    metrics = need(raw, "metrics", file=file, line=line, record=pid)
    usages = need(metrics, "token_usages", file=file, line=line, record=pid, where="metrics")
    if not usages:
        raise Skip("no token usage recorded (metrics.token_usages is empty)")
    latency = {x.get("response_id"): x.get("latency") for x in metrics.get("response_latencies") or []}
    system_text = next((message_text((e.get("args") or {}).get("content")) for e in history
                        if e.get("action") == "system"), "")
    system_tokens = count(system_text) + 4 if system_text else 0
    observations = {e.get("cause"): e for e in history if e.get("observation") is not None}
    actions: dict[str, dict] = {}
    for e in history:
        meta = e.get("tool_call_metadata")
        if e.get("action") and isinstance(meta, dict):
            rid = (meta.get("model_response") or {}).get("id")
            actions.setdefault(rid, e)  # one action per response in CodeAct; the first if several
    if not history:
        raise Skip("empty history")
    arrival = _ts(history[0].get("timestamp"), file=file, record=pid, field="history[0].timestamp")
    b = ProgramBuilder(pid)
    b.agent("agent", [(f"openhands:system:{key_of(system_text)}", system_tokens)])
    prev = None
    prev_prompt = prev_output = 0
    for k, u in enumerate(usages):
        where = f"metrics.token_usages[{k}]"
        prompt = need_count(need(u, "prompt_tokens", file=file, line=line, record=pid, where=where),
                            file=file, line=line, record=pid, field=f"{where}.prompt_tokens")
        completion = need_count(need(u, "completion_tokens", file=file, line=line, record=pid, where=where),
                                file=file, line=line, record=pid, field=f"{where}.completion_tokens")
        rid = u.get("response_id")
        tool = None
        start_s = None
        action = actions.get(rid)
        lat = latency.get(rid)
        if action is not None:
            name = action["tool_call_metadata"].get("function_name") or action["action"]
            kind = _KINDS.get(action["action"], ToolKind.OTHER)
            t_action = _ts(action.get("timestamp"), file=file, record=pid, field=f"history[id={action.get('id')}]")
            if lat is not None:
                start_s = round(max(0.0, t_action - float(lat) - arrival), 3)
            obs = observations.get(action.get("id"))
            if obs is not None:
                t_obs = _ts(obs.get("timestamp"), file=file, record=pid, field=f"history[id={obs.get('id')}]")
                tool = ToolCall(name=name, kind=kind, duration_s=round(max(0.0, t_obs - t_action), 4),
                                synthetic=False)
        segments = chain_segments(prev=prev, prev_prompt=prev_prompt, prev_output=prev_output,
                                  prompt=prompt, system_tokens=system_tokens)
        cached = u.get("cache_read_tokens")
        prev = b.add(agent="agent", segments=segments, output_tokens=completion, tool=tool, start_s=start_s,
                     latency_s=round(float(lat), 4) if lat is not None else None,
                     cached_tokens=int(cached) if cached is not None else None)
        prev_prompt, prev_output = prompt, completion
    # start_s must not go backwards: calls without a matched action get none, the rest are monotone
    return b.build(arrival_s=arrival)


def convert(inputs: list[Path], *, seed: int = 0, tokenizer: TokenCounter | None = None,
            table: DurationTable | None = None, progress: Progress = no_progress, licence: str = "MIT",
            source_detail: str = "") -> ConversionResult:
    count = tokenizer or TokenCounter()
    files = expand_inputs(inputs, ("*.jsonl",))
    report = ConversionReport(source="openhands")
    programs: list[Program] = []
    records = [(f, line, raw) for f in files for line, raw in read_jsonl(f)]
    for f, line, raw in progress(records, "openhands"):
        report.num_read += 1
        try:
            programs.append(convert_record(raw, file=str(f), line=line, count=count))
        except Skip as e:
            report.skip(str(raw.get("instance_id", f"{f.name}:{line}")), e.reason)
    report.num_converted = len(programs)
    has_tools = any(c.tool for p in programs for c in p.calls)
    header = make_header(source="openhands", source_detail=source_detail, licence=licence,
                         converter="agentflow.runtime.workload.convert.openhands",
                         token_counts=TokenSource.USAGE, tokenizer=count.name,
                         durations=DurationSource.RECORDED if has_tools else DurationSource.NONE,
                         seed=None, duration_table=None,
                         notes=["prompt/output tokens and latencies from provider usage; system prompt "
                                "size from the tokenizer",
                                "tool duration = observation timestamp - action timestamp"])
    return ConversionResult(header=header, programs=shift_arrivals(programs), report=report)
