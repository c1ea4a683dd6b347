"""The workload file format: JSON Lines, one header line, then one line per program.

Why segments
------------
A prefix cache cares about *which* tokens a prompt shares with tokens that were on the GPU before,
not what they say. So a call's prompt is stored as an ordered list of segments, each a token count
plus where those tokens come from:

    system     the first ``num_tokens`` of the calling agent's system prompt (its ``PromptPart`` s;
               parts with the same ``key`` are the same tokens in every program of the file)
    history    the first ``num_tokens`` of call ``call``'s full sequence (its prompt, then its output):
               the program's own context so far
    output_of  the first ``num_tokens`` of call ``call``'s output: another agent reading it
    new        ``num_tokens`` fresh tokens (a task, an observation, a tool result)

A mini-swe-agent turn is ``[history(call=k-1), new]``; a ChatDev reviewer reading the programmer's
code is ``[system, new, output_of(call=j)]``. ``tokens.py`` turns this into token ids with the same
sharing; no token contents are ever stored, only numbers and names.

Versioning: ``Header.version`` is an integer bumped on any incompatible change; readers refuse a
version they do not know (``WorkloadError`` naming the field) instead of guessing.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow.errors import WorkloadError

FORMAT_NAME = "agentflow-workload"
FORMAT_VERSION = 1


class SegmentKind(str, enum.Enum):
    SYSTEM = "system"
    HISTORY = "history"
    OUTPUT_OF = "output_of"
    NEW = "new"


class TokenSource(str, enum.Enum):
    """Where a file's token counts come from."""

    USAGE = "usage"  # the provider's usage records (prompt/completion tokens)
    TOKENIZER = "tokenizer"  # counted from text by the header's ``tokenizer``
    MIXED = "mixed"  # totals from usage, split into segments by the tokenizer
    TRACE = "trace"  # a request trace's own lengths (Mooncake)


class DurationSource(str, enum.Enum):
    """Where a file's tool durations come from."""

    RECORDED = "recorded"
    SYNTHETIC = "synthetic"  # drawn from a fitted table with the header's seed
    MIXED = "mixed"
    NONE = "none"  # no tool calls


class ToolKind(str, enum.Enum):
    """Coarse tool classes: the unit the duration table is fitted and sampled by."""

    BASH = "bash"  # a shell command
    READ = "read"  # view a file
    EDIT = "edit"  # change a file
    SEARCH = "search"
    TEST = "test"  # a build or test run
    THINK = "think"  # a no-op tool that only records a thought
    SUBMIT = "submit"
    FUNCTION = "function"  # an in-process function (BFCL)
    RUN = "run"  # run the produced program (ChatDev's test phase)
    USER = "user"  # a human turn between requests (Mooncake)
    OTHER = "other"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Header(_Model):
    """The first line of a workload file."""

    format: Literal["agentflow-workload"] = FORMAT_NAME
    version: int = FORMAT_VERSION
    source: str = Field(description="source kind, e.g. 'mini-swe-agent'")
    source_detail: str = Field("", description="upstream repository @ commit and path, or the inputs")
    licence: str = Field(description="licence of the source data (SPDX id, or 'none stated')")
    converter: str = Field(description="converter that wrote the file")
    converter_version: str
    token_counts: TokenSource
    tokenizer: str | None = Field(None, description="tokenizer used for counts not from usage")
    durations: DurationSource
    seed: int | None = Field(None, description="seed of every synthetic draw in this file")
    duration_table: str | None = Field(None, description="table synthetic durations were drawn from")
    num_programs: int = Field(ge=0, description="program lines that follow; a shorter file is truncated")
    notes: list[str] = Field(default_factory=list, description="what is synthetic or estimated, and why")


class PromptPart(_Model):
    key: str = Field(description="same key = same tokens, in every program of the file")
    num_tokens: int = Field(ge=0)


class Agent(_Model):
    name: str
    system_prompt: list[PromptPart] = Field(default_factory=list)

    @property
    def system_prompt_tokens(self) -> int:
        return sum(p.num_tokens for p in self.system_prompt)


class Segment(_Model):
    kind: SegmentKind
    num_tokens: int = Field(ge=0)
    call: int | None = Field(None, ge=0, description="program-local call index (history, output_of)")


class ToolCall(_Model):
    name: str = Field(description="tool name as the source recorded it (a name, never arguments)")
    kind: ToolKind = ToolKind.OTHER
    duration_s: float = Field(ge=0)
    synthetic: bool = Field(description="drawn from a fitted distribution, not recorded")


class Call(_Model):
    index: int = Field(ge=0, description="position in the program; must equal the list position")
    agent: str
    step: str | None = Field(None, description="workflow step or phase, where the source names one")
    segments: list[Segment]
    output_tokens: int = Field(ge=0)
    tool: ToolCall | None = Field(None, description="what follows the call: a tool, or nothing")
    start_s: float | None = Field(None, ge=0, description="recorded start, seconds after arrival")
    latency_s: float | None = Field(None, ge=0, description="recorded LLM response time")
    cached_tokens: int | None = Field(None, ge=0, description="prompt tokens the provider served from cache")

    @property
    def prompt_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)


class Program(_Model):
    id: str
    arrival_s: float = Field(ge=0)
    agents: list[Agent]
    calls: list[Call]


class Workload(_Model):
    header: Header
    programs: list[Program]


# --------------------------------------------------------------------------- checks across fields


def program_problems(program: Program) -> list[tuple[str, str]]:
    """Every impossible value pydantic cannot see alone, as (field path, message) pairs."""
    problems: list[tuple[str, str]] = []
    agents = {a.name: a for a in program.agents}
    if len(agents) != len(program.agents):
        problems.append(("agents", "agent names must be unique"))
    full_tokens: list[int] = []  # prompt + output of each call so far
    last_start = -1.0
    for i, call in enumerate(program.calls):
        where = f"calls[{i}]"
        if call.index != i:
            problems.append((f"{where}.index", f"call out of order: expected {i}, got {call.index}"))
        agent = agents.get(call.agent)
        if agent is None:
            problems.append((f"{where}.agent", f"unknown agent {call.agent!r}"))
        if call.start_s is not None:
            if call.start_s < last_start:
                problems.append((f"{where}.start_s", f"call out of order: starts at {call.start_s} s, "
                                 f"before the previous call ({last_start} s)"))
            last_start = call.start_s
        for k, seg in enumerate(call.segments):
            sw = f"{where}.segments[{k}]"
            if seg.kind in (SegmentKind.HISTORY, SegmentKind.OUTPUT_OF):
                if seg.call is None:
                    problems.append((f"{sw}.call", f"a {seg.kind.value} segment needs a call index"))
                    continue
                if seg.call >= i:
                    problems.append((f"{sw}.call", f"call out of order: refers to call {seg.call}, "
                                     f"not before call {i}"))
                    continue
                ref = program.calls[seg.call]
                limit = full_tokens[seg.call] if seg.kind is SegmentKind.HISTORY else ref.output_tokens
                if seg.num_tokens > limit:
                    problems.append((f"{sw}.num_tokens", f"{seg.num_tokens} exceeds the {limit} tokens "
                                     f"call {seg.call} has"))
            elif seg.call is not None:
                problems.append((f"{sw}.call", f"a {seg.kind.value} segment takes no call index"))
            if seg.kind is SegmentKind.SYSTEM and agent is not None:
                if seg.num_tokens > agent.system_prompt_tokens:
                    problems.append((f"{sw}.num_tokens", f"{seg.num_tokens} exceeds agent {agent.name!r}'s "
                                     f"{agent.system_prompt_tokens}-token system prompt"))
        full_tokens.append(call.prompt_tokens + call.output_tokens)
    return problems


# --------------------------------------------------------------------------- reading and writing


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _raise_validation(err: ValidationError, *, file: str, line: int, record: str | None) -> None:
    first = err.errors()[0]
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    raise WorkloadError(f"{first['msg']}{shown}", file=file, line=line, record=record,
                        field=_field_path(first["loc"]) or None) from None


def parse_header(text: str, *, file: str = "<string>", line: int = 1) -> Header:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"not valid JSON: {e.msg}", file=file, line=line, record="header") from None
    if not isinstance(raw, dict):
        raise WorkloadError("the header must be a JSON object", file=file, line=line, record="header")
    if raw.get("format") != FORMAT_NAME:
        raise WorkloadError(f"not an {FORMAT_NAME} file (format is {raw.get('format')!r}); convert the "
                            "source first with `agentflow workload convert`", file=file, line=line,
                            record="header", field="format")
    if raw.get("version") != FORMAT_VERSION:
        raise WorkloadError(f"unknown version {raw.get('version')!r}; this reader knows {FORMAT_VERSION}",
                            file=file, line=line, record="header", field="version")
    try:
        return Header.model_validate(raw)
    except ValidationError as e:
        _raise_validation(e, file=file, line=line, record="header")
        raise  # unreachable


def parse_program(text: str, *, file: str = "<string>", line: int = 0) -> Program:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"not valid JSON (truncated line?): {e.msg}", file=file, line=line) from None
    record = str(raw.get("id")) if isinstance(raw, dict) and "id" in raw else None
    try:
        program = Program.model_validate(raw)
    except ValidationError as e:
        _raise_validation(e, file=file, line=line, record=record)
        raise
    problems = program_problems(program)
    if problems:
        field, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WorkloadError(message + more, file=file, line=line, record=program.id, field=field)
    return program


def iter_workload(path: str | Path) -> tuple[Header, Iterator[Program]]:
    """The header, and an iterator over the programs (checked one by one, streamed)."""
    path = Path(path)
    name = str(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as e:
        raise WorkloadError(f"cannot open: {e.strerror}", file=name) from None
    first = handle.readline()
    if not first.strip():
        handle.close()
        raise WorkloadError("empty file: expected a header line", file=name, line=1, record="header")
    header = parse_header(first, file=name)

    def programs() -> Iterator[Program]:
        count = 0
        seen: set[str] = set()
        with handle:
            for lineno, text in enumerate(handle, start=2):
                if not text.strip():
                    continue
                program = parse_program(text, file=name, line=lineno)
                if program.id in seen:
                    raise WorkloadError("duplicate program id", file=name, line=lineno, record=program.id,
                                        field="id")
                seen.add(program.id)
                count += 1
                yield program
        if count != header.num_programs:
            raise WorkloadError(f"truncated or padded file: the header promises {header.num_programs} "
                                f"programs, found {count}", file=name, record="header", field="num_programs")

    return header, programs()


def load_workload(path: str | Path) -> Workload:
    """Read and check a whole workload file; errors name the file, line, record and field."""
    header, programs = iter_workload(path)
    return Workload(header=header, programs=list(programs))


def _dump(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json", exclude_none=True, exclude_defaults=False),
                      separators=(",", ":"))


def dumps_program(program: Program) -> str:
    data = program.model_dump(mode="json", exclude_none=True)
    return json.dumps(data, separators=(",", ":"))


def write_workload(path: str | Path, header: Header, programs: Iterable[Program]) -> int:
    """Write a header and programs; returns the number of programs written."""
    programs = list(programs)
    ids = [p.id for p in programs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise WorkloadError("duplicate program id", file=str(path), record=dup, field="id")
    header = header.model_copy(update={"num_programs": len(programs)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.write(_dump(header) + "\n")
        for program in programs:
            out.write(dumps_program(program) + "\n")
    return len(programs)


def workload_json_schema() -> dict[str, Any]:
    """JSON Schema of both record kinds: ``header`` (line 1) and ``program`` (every other line)."""
    return {
        "$comment": f"{FORMAT_NAME} version {FORMAT_VERSION}: JSON Lines; line 1 is a header, "
                    "every other line a program",
        "header": Header.model_json_schema(),
        "program": Program.model_json_schema(),
    }
