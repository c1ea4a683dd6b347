"""SWE-agent trajectories (``*.traj``), 0.x and v1.

One file is one program with one agent. Neither format records per-call usage, only totals
(``info.model_stats.tokens_sent`` / ``tokens_received``), so each call's prompt is rebuilt from the
messages and counted with the tokenizer, then every count in the file is scaled so prompts sum to
``tokens_sent`` and outputs to ``tokens_received`` (the provider's totals). A replayed run
(``tokens_sent`` = 0) keeps the tokenizer's counts.

- 0.x: ``history`` is every message; call k's prompt is the messages before the k-th assistant
  message of the primary agent (demonstrations included: they are in the prompt).
- v1: ``trajectory[k].messages`` is the history after step k, so the prompt of call k is that list
  without step k's own answer and observation. v1's history processors rewrite old observations,
  so the shared prefix of consecutive prompts is measured message by message, not assumed.

Tools: the first word of ``action`` (``open``, ``edit``, ``python``, ``submit``). v1 records
``execution_time`` per step (recorded); 0.x records no time, so durations come from the fitted
table (synthetic).
"""

from __future__ import annotations

import json
from pathlib import Path

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.convert.common import (
    MESSAGE_OVERHEAD_TOKENS, ConversionReport, ConversionResult, Progress, ProgramBuilder, Skip, TokenCounter,
    expand_inputs, key_of, make_header, message_text, need, no_progress, program_rng, read_json,
    shift_arrivals, tool_name,
)
from agentflow.runtime.workload.durations import DurationTable
from agentflow.runtime.workload.format import (
    DurationSource, Program, SegmentKind, TokenSource, ToolCall, ToolKind,
)

_KINDS = {
    "open": ToolKind.READ, "goto": ToolKind.READ, "scroll_up": ToolKind.READ, "scroll_down": ToolKind.READ,
    "cat": ToolKind.READ, "edit": ToolKind.EDIT, "insert": ToolKind.EDIT, "create": ToolKind.EDIT,
    "str_replace_editor": ToolKind.EDIT, "find_file": ToolKind.SEARCH, "search_dir": ToolKind.SEARCH,
    "search_file": ToolKind.SEARCH, "grep": ToolKind.SEARCH, "find": ToolKind.SEARCH,
    "submit": ToolKind.SUBMIT,
}


def _msg_key(m: dict) -> str:
    return json.dumps([m.get("role"), message_text(m.get("content"))])


def _calls_0x(data: dict, *, file: str, pid: str) -> list[tuple[list[dict], dict, dict | None]]:
    """(prompt messages, answer message, trajectory step) per call, from a 0.x ``history``."""
    history = need(data, "history", file=file, record=pid)
    steps = data.get("trajectory") or []
    agent = next((m.get("agent") for m in history if m.get("agent")), None)
    history = [m for m in history if m.get("agent", agent) == agent]
    out = []
    for i, m in enumerate(history):
        if m.get("role") == "assistant" and not m.get("is_demo"):
            step = steps[len(out)] if len(out) < len(steps) else None
            out.append((history[:i], m, step))
    return out


def _calls_v1(data: dict, *, file: str, pid: str) -> list[tuple[list[dict], dict, dict | None]]:
    out = []
    for k, step in enumerate(need(data, "trajectory", file=file, record=pid)):
        messages = step.get("messages")
        if not isinstance(messages, list):
            raise WorkloadError("v1 step without messages", file=file, record=pid, field=f"trajectory[{k}].messages")
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise Skip(f"trajectory[{k}] has no assistant message")
        out.append((messages[:last], messages[last], step))
    return out


def convert_file(path: Path, *, seed: int, count: TokenCounter, table: DurationTable,
                 prefix: str = "") -> tuple[Program, int, int, str]:
    name = str(path)
    data = read_json(path)
    pid = prefix + path.name.removesuffix(".traj")
    traj = need(data, "trajectory", file=name, record=pid)
    is_v1 = bool(traj) and isinstance(traj[0], dict) and "messages" in traj[0]
    calls = _calls_v1(data, file=name, pid=pid) if is_v1 else _calls_0x(data, file=name, pid=pid)
    if not calls:
        raise Skip("no LLM calls")
    stats = (data.get("info") or {}).get("model_stats") or {}
    sizes: dict[str, int] = {}

    def size(m: dict) -> int:
        k = _msg_key(m)
        if k not in sizes:
            sizes[k] = count(message_text(m.get("content"))) + MESSAGE_OVERHEAD_TOKENS
        return sizes[k]

    est_prompts = [sum(size(m) for m in prompt) for prompt, _, _ in calls]
    est_outputs = [size(ans) for _, ans, _ in calls]
    sent, received = stats.get("tokens_sent") or 0, stats.get("tokens_received") or 0
    # Scale to the provider's totals where recorded: the split is the tokenizer's, the sum is theirs.
    p_scale = sent / sum(est_prompts) if sent and sum(est_prompts) else 1.0
    o_scale = received / sum(est_outputs) if received and sum(est_outputs) else 1.0
    system = calls[0][0][0] if calls[0][0] and calls[0][0][0].get("role") == "system" else None
    system_tokens = round(size(system) * p_scale) if system else 0
    b = ProgramBuilder(pid)
    b.agent("agent", [(f"swe-agent:system:{key_of(message_text(system.get('content')))}", system_tokens)]
            if system else [])
    rng = program_rng(seed, pid)
    recorded = synthetic = 0
    prev_seq: list[str] = []
    for k, (prompt_msgs, answer, step) in enumerate(calls):
        keys = [_msg_key(m) for m in prompt_msgs]
        prompt = round(est_prompts[k] * p_scale)
        output = max(1, round(est_outputs[k] * o_scale))
        if k == 0:
            sys_n = min(system_tokens, prompt)
            segments = [(SegmentKind.SYSTEM, sys_n, None), (SegmentKind.NEW, prompt - sys_n, None)]
        else:
            shared = 0
            while shared < min(len(keys), len(prev_seq)) and keys[shared] == prev_seq[shared]:
                shared += 1
            hist = round(sum(size(m) for m in prompt_msgs[:shared]) * p_scale)
            if shared == len(prev_seq):  # the previous answer is in this prompt, unchanged
                hist = min(b.full_tokens(k - 1), prompt)
            hist = min(hist, prompt, b.full_tokens(k - 1))
            segments = [(SegmentKind.HISTORY, hist, k - 1), (SegmentKind.NEW, prompt - hist, None)]
        action = (step or {}).get("action") or answer.get("action") or ""
        tool = None
        if action.strip():
            tname = tool_name(action, default="bash")
            kind = _KINDS.get(tname, ToolKind.BASH)
            seconds = (step or {}).get("execution_time")
            if seconds is not None:
                tool = ToolCall(name=tname, kind=kind, duration_s=round(float(seconds), 4), synthetic=False)
                recorded += 1
            else:
                tool = ToolCall(name=tname, kind=kind, duration_s=table.sample(kind, rng), synthetic=True)
                synthetic += 1
        b.add(agent="agent", segments=segments, output_tokens=output, tool=tool)
        prev_seq = keys + [_msg_key(answer)]
    return b.build(arrival_s=0.0), recorded, synthetic, "v1" if is_v1 else "0.x"


def convert(inputs: list[Path], *, seed: int = 0, tokenizer: TokenCounter | None = None,
            table: DurationTable, progress: Progress = no_progress, licence: str = "unknown",
            source_detail: str = "") -> ConversionResult:
    count = tokenizer or TokenCounter()
    files = expand_inputs(inputs, ("*.traj",))
    report = ConversionReport(source="swe-agent")
    programs: list[Program] = []
    recorded = synthetic = 0
    versions: dict[str, int] = {}
    # Runs of several models share instance names: then the folder (the model) is part of the id.
    many = len({f.parent for f in files}) > 1
    for path in progress(files, "swe-agent"):
        report.num_read += 1
        try:
            program, r, s, version = convert_file(path, seed=seed, count=count, table=table,
                                                  prefix=f"{path.parent.name}/" if many else "")
        except Skip as e:
            report.skip(path.name, e.reason)
            continue
        programs.append(program)
        recorded += r
        synthetic += s
        versions[version] = versions.get(version, 0) + 1
    report.num_converted = len(programs)
    report.notes.append("formats: " + ", ".join(f"{v} x{n}" for v, n in sorted(versions.items())))
    durations = (DurationSource.NONE if recorded + synthetic == 0 else DurationSource.RECORDED if synthetic == 0
                 else DurationSource.SYNTHETIC if recorded == 0 else DurationSource.MIXED)
    header = make_header(source="swe-agent", source_detail=source_detail, licence=licence,
                         converter="agentflow.runtime.workload.convert.swe_agent",
                         token_counts=TokenSource.MIXED, tokenizer=count.name, durations=durations,
                         seed=seed if synthetic else None, duration_table=table.source if synthetic else None,
                         notes=["per-call tokens counted from the messages with the tokenizer, scaled per "
                                "program to the provider's tokens_sent / tokens_received totals",
                                "no recorded arrival times: every program arrives at 0"]
                         + ([f"{synthetic} tool durations drawn from the fitted table (0.x records none)"]
                            if synthetic else []))
    return ConversionResult(header=header, programs=shift_arrivals(programs), report=report)
