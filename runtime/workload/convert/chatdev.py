"""ChatDev runs (``<run>/run.log`` + ``ChatChainConfig.json``): a real multi-agent program.

One run directory is one program. ChatDev walks a phase graph (``ChatChainConfig.json``); each
phase is a chat between two agents (``[RolePlaying]`` names them and their system prompts). Every
``[OpenAI_Usage_Info Receive]`` is an LLM call with the provider's prompt/completion tokens; the
next speaker line (``Programmer: **Code Reviewer<->Programmer on : CodeReviewComment, turn 0**``)
says which agent made it, in which phase.

Sharing, as ChatDev builds its prompts:

- system: each agent's system prompt is ``{chatdev_prompt}`` (the same for every agent of every
  run) + its role text (the same for that role in every run) + the task (this run only), so it is
  three parts with those scopes;
- history: an agent's later call in the same chat extends its previous prompt and answer;
- output_of: an agent reads the other agent's latest answer in the chat, and a phase whose prompt
  has ``{codes}`` / ``{comments}`` / ``{error_summary}`` reads the latest output of the phase that
  produces it (the programmer's code, the reviewer's comments, the test summary).

The usage gives each prompt's total; its split into those segments comes from the tokenizer and
the new text is the remainder. The test phase runs the produced software: that is a ``run`` tool
whose duration is the recorded time from the step before ``[Test Reports]`` to it (1 s clock).
The log writes dates as YYYY-DD-MM (sometimes YYYY-MM-DD); each stamp takes the reading closest
to the previous one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.convert.common import (
    ConversionReport, ConversionResult, Progress, ProgramBuilder, Skip, TokenCounter, expand_inputs,
    key_of, make_header, no_progress, read_json,
)
from agentflow.runtime.workload.format import DurationSource, Program, SegmentKind, TokenSource, ToolCall, ToolKind

_ENTRY = re.compile(r"^\[(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) INFO\] ?(.*)$")
_ROW = re.compile(r"^\| \*\*(\w+)\*\* \| (.*) \|$")
_PHASE = re.compile(r"on : (\w+), turn (\d+)")
# placeholder in a phase prompt -> phases whose latest output fills it
FEEDS = {
    "{codes}": ("Coding", "CodeComplete", "CodeReviewModification", "TestModification", "CodeReviewHuman",
                "CODING", "REVIEWING_MODIFICATION"),  # the last two: the older AgentTech logs' phase types
    "{comments}": ("CodeReviewComment", "REVIEWING_COMMENT"),
    "{error_summary}": ("TestErrorSummary",),
}
# the older logs name phase types, not prompts: what each one's opening message reads
AGENTTECH_READS = {"REVIEWING_COMMENT": "{codes}", "REVIEWING_MODIFICATION": "{comments} {codes}"}


@dataclass
class _Entry:
    ts: float
    head: str
    body: list[str]


def _parse_ts(m: re.Match, prev: float | None) -> float:
    y, a, b, hh, mm, ss = (int(m.group(i)) for i in range(1, 7))
    options = []
    for month, day in ((b, a), (a, b)):  # YYYY-DD-MM first: the usual ChatDev layout
        try:
            options.append(datetime(y, month, day, hh, mm, ss).timestamp())
        except ValueError:
            pass
    if not options:
        raise ValueError("no valid date")
    return options[0] if prev is None else min(options, key=lambda t: abs(t - prev))


def parse_log(path: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    prev = None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise WorkloadError(f"cannot read: {e.strerror}", file=str(path)) from None
    for lineno, line in enumerate(lines, start=1):
        m = _ENTRY.match(line)
        if m:
            try:
                prev = _parse_ts(m, prev)
            except ValueError:
                raise WorkloadError(f"bad timestamp {line[:25]!r}", file=str(path), line=lineno) from None
            entries.append(_Entry(ts=prev, head=m.group(7), body=[]))
        elif entries:
            entries[-1].body.append(line)
    return entries


def _table(body: list[str]) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in map(_ROW.match, body) if m}


def _numbers(body: list[str]) -> dict[str, int]:
    out = {}
    for line in body:
        k, _, v = line.partition(":")
        if v.strip().lstrip("-").isdigit():
            out[k.strip()] = int(v.strip())
    return out


@dataclass
class _Chat:
    assistant: str
    user: str
    phase_prompt: str
    calls: list[int] = field(default_factory=list)  # program call indices, in order


def _phase_steps(run_dir: Path) -> dict[str, str]:
    """Phase -> step name from the phase graph: ``Composed/Simple`` inside loops, else the phase."""
    config = run_dir / "ChatChainConfig.json"
    if not config.exists():
        return {}
    chain = read_json(config).get("chain") or []
    steps = {}
    for node in chain:
        steps[node.get("phase")] = node.get("phase")
        for inner in node.get("Composition") or []:
            steps[inner.get("phase")] = f"{node.get('phase')}/{inner.get('phase')}"
    return steps


def convert_run(log: Path, *, count: TokenCounter, formats: dict[str, str] | None = None) -> Program:
    """One run. `formats` (if given) learns run -> "agenttech-usage" / "agenttech-counted" for the older logs."""
    run_dir = log.parent
    pid = run_dir.name
    entries = parse_log(log)
    if not entries:
        raise Skip("empty run.log")
    if not any("[OpenAI_Usage_Info Receive]" in e.head for e in entries):
        if any(_AT_SPEAKER.match(_plain(e.head)) for e in entries):
            return convert_agenttech_run(log, entries, count=count, formats=formats)
        raise Skip("run.log has no token usage records (an older ChatDev log format)")
    steps = _phase_steps(run_dir)
    b = ProgramBuilder(pid)
    templates: dict[str, str] = {}  # role -> system prompt template
    background = ""
    task = ""
    chat: _Chat | None = None
    chatting: dict[str, str] = {}
    pending: list[tuple[float, float | None, int, int]] = []  # (receive ts, send ts, prompt, completion)
    send_ts: float | None = None
    last_by_phase: dict[str, int] = {}
    t0 = entries[0].ts
    unassigned = 0
    for k, e in enumerate(entries):
        head = e.head
        if head.startswith("System: **[chatting]**"):
            chatting = _table(e.body)
        elif head.startswith("System: **[RolePlaying]**"):
            t = _table(e.body)
            a, u = t.get("assistant_role_name", "?"), t.get("user_role_name", "?")
            templates.setdefault(a, t.get("assistant_role_prompt", ""))
            templates.setdefault(u, t.get("user_role_prompt", ""))
            task = t.get("task_prompt", task)
            chat = _Chat(assistant=a, user=u, phase_prompt=chatting.get("phase_prompt", ""))
            chatting = {}
        elif head.endswith("**[Start Chat]**") and not background:
            text = "\n".join(e.body).strip()
            if text.startswith("["):
                cut = re.search(r"\s?You are ", text)
                background = text[1:cut.start()] if cut else ""
        elif "**[OpenAI_Usage_Info Send]**" in head:
            send_ts = e.ts
        elif "**[OpenAI_Usage_Info Receive]**" in head:
            n = _numbers(e.body)
            if "prompt_tokens" not in n or "completion_tokens" not in n:
                raise WorkloadError("usage record without prompt_tokens/completion_tokens", file=str(log),
                                    record=pid, field="OpenAI_Usage_Info Receive")
            if n["prompt_tokens"] < 0 or n["completion_tokens"] < 0:
                raise WorkloadError("impossible value: negative token count", file=str(log), record=pid,
                                    field="prompt_tokens")
            pending.append((e.ts, send_ts, n["prompt_tokens"], n["completion_tokens"]))
            send_ts = None
        elif "**[Test Reports]**" in head and b.calls and k > 0:
            last = b.calls[-1]
            b.calls[-1] = last.model_copy(update={"tool": ToolCall(
                name="run_software", kind=ToolKind.RUN, duration_s=max(0.0, e.ts - entries[k - 1].ts),
                synthetic=False)})
        elif pending and ":" in head and not head.split(":", 1)[1].strip().startswith("**["):
            speaker = head.split(":", 1)[0].strip()
            if speaker not in templates:
                continue
            received, sent, prompt, completion = pending.pop(0)
            pm = _PHASE.search(head)
            phase = pm.group(1) if pm else "Preprocessing"
            if speaker not in b.agents:
                tpl = templates[speaker]
                head_t, _, tail_t = tpl.partition("{task}")
                role_text = head_t.replace("{chatdev_prompt}", "").strip()
                b.agent(speaker, [(f"chatdev:background:{key_of(background)}", count(background)),
                                  (f"chatdev:role:{key_of(speaker, role_text)}", count(role_text)),
                                  (f"chatdev:{key_of(pid)}:task:{key_of(speaker)}",
                                   count(task + tail_t) if "{task}" in tpl else 0)])
            segments = _segments(b, chat, speaker, prompt, last_by_phase)
            index = b.add(agent=speaker, segments=segments, output_tokens=completion, step=steps.get(phase, phase),
                          start_s=round((sent if sent is not None else received) - t0, 3),
                          latency_s=round(received - sent, 3) if sent is not None else None)
            last_by_phase[phase] = index
            if chat is not None and speaker in (chat.assistant, chat.user):
                chat.calls.append(index)
    unassigned = len(pending)
    if unassigned:
        raise Skip(f"{unassigned} usage records have no speaker line after them")
    # Runs were recorded months apart: their clock offsets say nothing about load, so all arrive at 0.
    return b.build(arrival_s=0.0)


# ---- the older AgentTech log format (mid-2023) ---------------------------------------------------
# `PhaseType: PhaseType.CODING`, `AI Assistant (Programmer) sys message:` + a SystemMessage repr,
# `Task prompt:`, the phase's opening message `AI User (Chief Technology Officer):`, usage as
# `[OpenAI_Usage_Info]` (on some runs none at all), and each answer as `[0] AI Assistant (Programmer):`.
# Lines carry ANSI colour codes.

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_AT_SPEAKER = re.compile(r"^\[(\d+)\] AI (Assistant|User) \((.+)\):$")
_AT_SYS = re.compile(r"^AI (Assistant|User) \((.+)\) sys message:$")
_AT_OPENING = re.compile(r"^AI User \((.+)\):$")
_AT_CONTENT = re.compile(r"content=(\'.*\'|\".*\")\)\s*$", re.S)


def _plain(text: str) -> str:
    return _ANSI.sub("", text).strip()


def _system_content(body: list[str]) -> tuple[str, str, str]:
    """(company background, role text, task text) of a logged SystemMessage repr."""
    import ast

    raw = "\n".join(body).strip()
    m = _AT_CONTENT.search(raw)
    try:
        content = ast.literal_eval(m.group(1)) if m else raw
    except (ValueError, SyntaxError):
        content = raw
    meta = re.search(r"'agenttech_prompt': (\'(?:[^'\\]|\\.)*\'|\"(?:[^\"\\]|\\.)*\")", raw)
    try:
        background = ast.literal_eval(meta.group(1)) if meta else ""
    except (ValueError, SyntaxError):
        background = ""
    rest = content[len(background):] if background and content.startswith(background) else content
    task = re.search(r"'task': (\'(?:[^'\\]|\\.)*\'|\"(?:[^\"\\]|\\.)*\")", raw)
    try:
        task_text = ast.literal_eval(task.group(1)) if task else ""
    except (ValueError, SyntaxError):
        task_text = ""
    cut = rest.find(task_text) if task_text else -1
    return (background, rest[:cut], rest[cut:]) if cut >= 0 else (background, rest, "")


def convert_agenttech_run(log: Path, entries: list[_Entry], *, count: TokenCounter,
                          formats: dict[str, str] | None = None) -> Program:
    """A run in the older AgentTech format. Usage records, where the log has them, give each call's
    prompt and output totals (as in the current format); where it has none, both are counted from
    the logged text with `count`: the output is the answer; the prompt is the agent's system
    prompt and the phase's opening message on its first turn in a chat, else its previous prompt
    and answer plus the other agent's latest answer (how ChatDev's role-playing builds them)."""
    run_dir = log.parent
    pid = run_dir.name
    has_usage = any(_plain(e.head) == "[OpenAI_Usage_Info]" for e in entries)
    if not has_usage and not any(_AT_SYS.match(_plain(e.head)) for e in entries):
        raise Skip("run.log has neither usage records nor prompts (an older log of answers only): "
                   "prompt sizes cannot be counted")
    config = run_dir / "ChatChainConfig.json"
    steps = _phase_steps(run_dir) if config.exists() and config.stat().st_size else {}
    b = ProgramBuilder(pid)
    system: dict[str, tuple[str, str, str]] = {}
    roles: dict[str, str] = {}  # "Assistant"/"User" -> role of the current chat
    chat: _Chat | None = None
    opening = ""
    phase = "Preprocessing"
    pending: list[tuple[int, int]] = []
    t0 = entries[0].ts
    last_by_phase: dict[str, int] = {}
    for e in entries:
        head = _plain(e.head)
        if head.startswith("PhaseType: PhaseType."):
            phase = head.removeprefix("PhaseType: PhaseType.")
            roles, chat, opening = {}, None, ""
        elif m := _AT_SYS.match(head):
            side, role = m.group(1), m.group(2)
            system.setdefault(role, _system_content(e.body))
            roles[side] = role
            if "Assistant" in roles and "User" in roles:
                chat = _Chat(assistant=roles["Assistant"], user=roles["User"],
                             phase_prompt=AGENTTECH_READS.get(phase, ""))
        elif m := _AT_OPENING.match(head):
            opening = "\n".join(e.body).strip()
        elif head == "[OpenAI_Usage_Info]":
            n = _numbers(e.body)
            if "prompt_tokens" not in n or "completion_tokens" not in n:
                raise WorkloadError("usage record without prompt_tokens/completion_tokens", file=str(log),
                                    record=pid, field="OpenAI_Usage_Info")
            if n["prompt_tokens"] < 0 or n["completion_tokens"] < 0:
                raise WorkloadError("impossible value: negative token count", file=str(log), record=pid,
                                    field="prompt_tokens")
            pending.append((n["prompt_tokens"], n["completion_tokens"]))
        elif m := _AT_SPEAKER.match(head):
            speaker = m.group(3)
            if speaker not in b.agents:
                background, role_text, task_text = system.get(speaker, ("", "", ""))
                b.agent(speaker, [(f"chatdev:background:{key_of(background)}", count(background)),
                                  (f"chatdev:role:{key_of(speaker, role_text)}", count(role_text)),
                                  (f"chatdev:{key_of(pid)}:task:{key_of(speaker)}", count(task_text))])
            step = steps.get(phase, phase)
            if has_usage:
                # usage records the answer did not show (a reflection) are calls of the same speaker
                records = pending or [(0, 0)]
                pending = []
            else:
                records = [(_counted_prompt(b, chat, speaker, opening, count), count("\n".join(e.body).strip()))]
            for prompt, completion in records:
                segments = _segments(b, chat, speaker, prompt, last_by_phase)
                index = b.add(agent=speaker, segments=segments, output_tokens=completion, step=step,
                              start_s=round(e.ts - t0, 3))
                last_by_phase[phase] = index
                if chat is not None and speaker in (chat.assistant, chat.user):
                    chat.calls.append(index)
    if pending:
        raise Skip(f"{len(pending)} usage records have no speaker line after them")
    program = b.build(arrival_s=0.0)
    if formats is not None:
        formats[pid] = "agenttech-usage" if has_usage else "agenttech-counted"
    return program


def _format_notes(formats: dict[str, str], tokenizer: str) -> list[str]:
    """What the header says about runs in the older log format."""
    usage = sorted(r for r, f in formats.items() if f == "agenttech-usage")
    counted = sorted(r for r, f in formats.items() if f == "agenttech-counted")
    out = []
    if usage:
        out.append(f"older AgentTech-format logs ({', '.join(usage)}): totals from their [OpenAI_Usage_Info] "
                   "records, phases named by PhaseType, no send times (no latencies)")
    if counted:
        out.append(f"logs without usage records ({', '.join(counted)}): prompt and output tokens counted from "
                   f"the logged text with {tokenizer}; a prompt is its agent's system prompt and the phase's "
                   "opening message on its first turn, else its previous prompt and answer and the other agent's "
                   "latest answer")
    return out


def _counted_prompt(b: ProgramBuilder, chat: _Chat | None, speaker: str, opening: str, count: TokenCounter) -> int:
    """A prompt's size from the logged text, for a run without usage records."""
    in_chat = chat is not None and speaker in (chat.assistant, chat.user)
    mine = [i for i in (chat.calls if in_chat else []) if b.calls[i].agent == speaker]
    others = [i for i in (chat.calls if in_chat else []) if b.calls[i].agent != speaker
              and (not mine or i > mine[-1])]
    reply = b.calls[others[-1]].output_tokens if others else 0
    if mine:
        return b.full_tokens(mine[-1]) + reply
    return b.agents[speaker].system_prompt_tokens + (count(opening) if not others else 0) + reply


def _segments(b: ProgramBuilder, chat: _Chat | None, speaker: str, prompt: int,
              last_by_phase: dict[str, int]) -> list[tuple[SegmentKind, int, int | None]]:
    left = prompt
    segs: list[tuple[SegmentKind, int, int | None]] = []

    def take(kind: SegmentKind, n: int, call: int | None) -> None:
        nonlocal left
        n = max(0, min(n, left))
        segs.append((kind, n, call))
        left -= n

    in_chat = chat is not None and speaker in (chat.assistant, chat.user)
    mine = [i for i in (chat.calls if in_chat else []) if b.calls[i].agent == speaker]
    if mine:
        take(SegmentKind.HISTORY, b.full_tokens(mine[-1]), mine[-1])
    else:
        take(SegmentKind.SYSTEM, b.agents[speaker].system_prompt_tokens, None)
        for placeholder, phases in FEEDS.items():
            if in_chat and placeholder in chat.phase_prompt:
                sources = [last_by_phase[p] for p in phases if p in last_by_phase]
                if sources:
                    j = max(sources)
                    take(SegmentKind.OUTPUT_OF, b.calls[j].output_tokens, j)
    others = [i for i in (chat.calls if in_chat else []) if b.calls[i].agent != speaker
              and (not mine or i > mine[-1])]
    reply = others[-1] if others else None
    reply_n = min(b.calls[reply].output_tokens, left) if reply is not None else 0
    new = left - reply_n
    segs.append((SegmentKind.NEW, new, None))
    if reply is not None:
        segs.append((SegmentKind.OUTPUT_OF, reply_n, reply))
    return segs


def convert(inputs: list[Path], *, seed: int = 0, tokenizer: TokenCounter | None = None, table=None,
            progress: Progress = no_progress, licence: str = "Apache-2.0", source_detail: str = "") -> ConversionResult:
    count = tokenizer or TokenCounter()
    logs = expand_inputs([p / "run.log" if Path(p).is_dir() and (Path(p) / "run.log").exists() else p
                          for p in inputs], ("run.log",))
    report = ConversionReport(source="chatdev")
    programs: list[Program] = []
    formats: dict[str, str] = {}
    for log in progress(logs, "chatdev"):
        report.num_read += 1
        try:
            programs.append(convert_run(log, count=count, formats=formats))
        except Skip as e:
            report.skip(log.parent.name, e.reason)
    report.num_converted = len(programs)
    has_tools = any(c.tool for p in programs for c in p.calls)
    header = make_header(source="chatdev", source_detail=source_detail, licence=licence,
                         converter="agentflow.runtime.workload.convert.chatdev",
                         token_counts=TokenSource.MIXED, tokenizer=count.name,
                         durations=DurationSource.RECORDED if has_tools else DurationSource.NONE,
                         seed=None, duration_table=None,
                         notes=["prompt totals and outputs from provider usage; their split into system / "
                                "history / output_of / new from the tokenizer, new text is the remainder",
                                "run_software durations and latencies from the log's 1 s timestamps",
                                "runs were recorded months apart: every program arrives at 0",
                                *_format_notes(formats, count.name)])
    for note in _format_notes(formats, count.name):
        report.notes.append(note)
    return ConversionResult(header=header, programs=programs, report=report)
