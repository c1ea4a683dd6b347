"""BFCL v4 multi-turn tasks (``BFCL_v4_multi_turn_*.json``) as function-calling programs.

BFCL ships tasks and ground-truth answers, not recorded runs, so a program is the run a model
that answers exactly the ground truth would make, following BFCL's own inference loop: per user
turn, one LLM call per ground-truth function call (its output is that call, its tool is that
function, whose result comes back in the next prompt), then one closing call that answers in
text. The conversation is one growing prefix.

Token counts come from the tokenizer (BFCL records no usage). The system prompt is the tool
documentation of the task's classes, one shared part per class (``multi_turn_func_doc/``), so
tasks using the same classes share it; functions a task holds back (``missed_function``) are
removed from their class part and arrive as new text in the turn that adds them. Unknown sizes are
constants, marked synthetic in the header: a tool result is RESULT_TOKENS, a closing answer
CLOSING_TOKENS. BFCL's tools run in-process (no recorded time): durations are drawn from the
fitted table's ``read`` distribution (file reads and edits, ~10 ms, the closest recorded kind),
seeded, and marked synthetic.

``possible_answer/<same file name>`` and ``multi_turn_func_doc/`` are found beside the input.
"""

from __future__ import annotations

import json
from pathlib import Path

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.convert.common import (
    MESSAGE_OVERHEAD_TOKENS, ConversionReport, ConversionResult, Progress, ProgramBuilder, Skip, TokenCounter,
    expand_inputs, key_of, make_header, message_text, need, no_progress, program_rng, read_jsonl,
)
from agentflow.runtime.workload.durations import DurationTable
from agentflow.runtime.workload.format import (
    DurationSource, Program, SegmentKind, TokenSource, ToolCall, ToolKind,
)

RESULT_TOKENS = 32
CLOSING_TOKENS = 24
# BFCL's class names -> files in multi_turn_func_doc/ (from bfcl_eval's constants).
CLASS_DOC = {
    "GorillaFileSystem": "gorilla_file_system.json", "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json", "TwitterAPI": "posting_api.json", "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json", "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json", "WebSearchAPI": "web_search.json",
    "MemoryAPI_kv": "memory_kv.json", "MemoryAPI_vector": "memory_vector.json",
    "MemoryAPI_rec_sum": "memory_rec_sum.json",
}


class _Docs:
    """Function docs per class, from ``multi_turn_func_doc/`` beside the input."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.by_class: dict[str, dict[str, str]] = {}

    def functions(self, cls: str) -> dict[str, str]:
        if cls not in self.by_class:
            fname = CLASS_DOC.get(cls)
            if fname is None:
                raise Skip(f"unknown BFCL class {cls}")
            path = self.folder / fname
            if not path.exists():
                raise WorkloadError("function docs missing (expected beside the input)", file=str(path))
            self.by_class[cls] = {d["name"]: json.dumps(d, sort_keys=True) for _, d in read_jsonl(path)}
        return self.by_class[cls]


def _answers(path: Path) -> dict[str, list[list[str]]]:
    answer_path = path.parent / "possible_answer" / path.name
    if not answer_path.exists():
        raise WorkloadError("ground truth missing: expected possible_answer/ beside the input",
                            file=str(answer_path))
    out = {}
    for line, raw in read_jsonl(answer_path):
        out[str(need(raw, "id", file=str(answer_path), line=line))] = need(
            raw, "ground_truth", file=str(answer_path), line=line, record=str(raw.get("id")))
    return out


def convert_task(raw: dict, truth: list[list[str]], docs: _Docs, *, seed: int, count: TokenCounter,
                 table: DurationTable) -> Program:
    pid = str(raw["id"])
    questions = raw["question"]
    if len(questions) != len(truth):
        raise Skip("question and ground-truth turn counts differ")
    missed = {int(t): names for t, names in (raw.get("missed_function") or {}).items()}
    held_back = {n for names in missed.values() for n in names}
    parts = []
    for cls in raw.get("involved_classes") or []:
        funcs = docs.functions(cls)
        kept = [text for n, text in sorted(funcs.items()) if n not in held_back]
        removed = sorted(set(funcs) & held_back)
        key = f"bfcl:doc:{cls}" + (f":minus:{key_of(*removed)}" if removed else "")
        parts.append((key, count("".join(kept))))
    b = ProgramBuilder(pid)
    b.agent("assistant", parts)
    system_tokens = sum(n for _, n in parts)
    all_docs = {n: t for cls in raw.get("involved_classes") or [] for n, t in docs.functions(cls).items()}
    rng = program_rng(seed, pid)
    read_dist = table.for_kind(ToolKind.READ)
    prev = None
    pending = 0  # new tokens waiting for the next prompt (a user turn, a tool result)
    for t, (turn, calls) in enumerate(zip(questions, truth)):
        pending += sum(count(message_text(m.get("content"))) + MESSAGE_OVERHEAD_TOKENS for m in turn)
        pending += sum(count(all_docs.get(n, "")) for n in missed.get(t, []))
        outputs = [(count(c) + MESSAGE_OVERHEAD_TOKENS, c.split("(", 1)[0].strip()) for c in calls]
        outputs.append((CLOSING_TOKENS, None))
        for output_tokens, fname in outputs:
            if prev is None:
                segments = [(SegmentKind.SYSTEM, system_tokens, None), (SegmentKind.NEW, pending, None)]
            else:
                segments = [(SegmentKind.HISTORY, b.full_tokens(prev), prev), (SegmentKind.NEW, pending, None)]
            tool = None
            if fname is not None:
                tool = ToolCall(name=fname or "function", kind=ToolKind.FUNCTION,
                                duration_s=round(float(read_dist.sample(rng)), 4), synthetic=True)
            prev = b.add(agent="assistant", segments=segments, output_tokens=output_tokens, tool=tool,
                         step=f"turn {t}")
            pending = RESULT_TOKENS + MESSAGE_OVERHEAD_TOKENS if fname is not None else 0
    return b.build(arrival_s=0.0)


def convert(inputs: list[Path], *, seed: int = 0, tokenizer: TokenCounter | None = None,
            table: DurationTable, progress: Progress = no_progress, licence: str = "Apache-2.0",
            source_detail: str = "") -> ConversionResult:
    count = tokenizer or TokenCounter()
    files = [f for f in expand_inputs(inputs, ("BFCL_*multi_turn*.json",)) if f.parent.name != "possible_answer"]
    report = ConversionReport(source="bfcl")
    programs: list[Program] = []
    tasks = []
    for f in files:
        answers = _answers(f)
        docs = _Docs(f.parent / "multi_turn_func_doc")
        for line, raw in read_jsonl(f):
            for key in ("id", "question"):
                need(raw, key, file=str(f), line=line, record=str(raw.get("id")))
            tasks.append((f, line, raw, answers.get(str(raw["id"])), docs))
    for f, line, raw, truth, docs in progress(tasks, "bfcl"):
        report.num_read += 1
        try:
            if truth is None:
                raise Skip("no ground truth in possible_answer/")
            programs.append(convert_task(raw, truth, docs, seed=seed, count=count, table=table))
        except Skip as e:
            report.skip(str(raw["id"]), e.reason)
    report.num_converted = len(programs)
    header = make_header(source="bfcl", source_detail=source_detail, licence=licence,
                         converter="agentflow.runtime.workload.convert.bfcl",
                         token_counts=TokenSource.TOKENIZER, tokenizer=count.name,
                         durations=DurationSource.SYNTHETIC, seed=seed, duration_table=table.source,
                         notes=["BFCL has tasks and ground truth, no recorded runs: each program is the run "
                                "of a model answering exactly the ground truth, one call per function call "
                                "plus one closing call per turn",
                                f"synthetic sizes: tool result {RESULT_TOKENS} tokens, closing answer "
                                f"{CLOSING_TOKENS} tokens",
                                "tool durations drawn from the table's 'read' distribution (in-process "
                                "functions; BFCL records no time)",
                                "no arrival times: every program arrives at 0 (replay with poisson or "
                                "closed-loop arrivals)"])
    return ConversionResult(header=header, programs=programs, report=report)
