"""Mooncake request traces (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``).

A trace has requests, not programs: ``hash_ids`` name each 512-token block of the prompt, and
requests that start with the same ids share that prefix. Sessions are inferred from the leading
blocks:

- a request *continues* the latest earlier request p it shares the most leading blocks with when
  it extends every full block of p (p's last block is partial, so it rehashes once extended) and
  p is still the last request of its session; it becomes the next call of p's session, its history
  is the shared blocks;
- otherwise it starts a new session (program), and the leading blocks it shares with earlier
  requests of other sessions (a common system prompt) become that program's shared prompt parts,
  keyed by block id, so every session that starts with them shares their token ids.

Only block-granular sharing is kept (the trace cannot say more); sharing that begins inside
another session's private blocks (a branch of a conversation) is counted as new text, and the
converter reports how many prompt tokens that loses against the trace's own block reuse.

Between two calls of a session the trace records only the gap between their arrivals, which holds
the recorded system's LLM latency and the user's think time; it is stored as a ``user`` tool with
that duration (recorded; an upper bound on think time), and ``start_s`` keeps the exact times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agentflow.runtime.workload.convert.common import (
    ConversionReport, ConversionResult, Progress, ProgramBuilder, expand_inputs, make_header, need,
    need_count, no_progress, read_jsonl,
)
from agentflow.runtime.workload.format import DurationSource, Program, SegmentKind, TokenSource, ToolCall, ToolKind
from agentflow.errors import WorkloadError

BLOCK_TOKENS = 512


@dataclass
class _Request:
    line: int
    t_s: float
    input_tokens: int
    output_tokens: int
    blocks: list[int]


@dataclass
class _Session:
    requests: list[int] = field(default_factory=list)
    shared_lead: int = 0  # leading blocks of the first request kept as shared parts


def infer_sessions(reqs: list[_Request]) -> tuple[list[_Session], list[int]]:
    """Sessions, and for each request the number of leading blocks it shares with its parent."""
    children: dict[tuple[int, int], int] = {}  # (node, block) -> node; node 0 is the root
    last_at: dict[int, int] = {}  # node -> latest request through it
    session_of: dict[int, int] = {}
    sessions: list[_Session] = []
    shared = [0] * len(reqs)
    for r, req in enumerate(reqs):
        node, depth, parent = 0, 0, None
        for h in req.blocks:
            nxt = children.get((node, h))
            if nxt is None:
                break
            node, depth, parent = nxt, depth + 1, last_at[nxt]
        shared[r] = depth
        cont = False
        if parent is not None:
            p = reqs[parent]
            s = sessions[session_of[parent]]
            cont = (depth >= max(1, len(p.blocks) - 1) and s.requests[-1] == parent
                    and req.input_tokens >= p.input_tokens)
        if cont:
            session_of[r] = session_of[parent]
            sessions[session_of[r]].requests.append(r)
        else:
            session_of[r] = len(sessions)
            sessions.append(_Session(requests=[r]))
        node = 0
        for h in req.blocks:
            nxt = children.get((node, h))
            if nxt is None:
                nxt = len(last_at) + 1
                children[(node, h)] = nxt
            last_at[nxt] = r
            node = nxt
    # Second pass: a block prefix is shared when requests of two sessions or more start with it
    # (earlier or later ones). A session's first request keeps those leading blocks as parts.
    first_session: dict[int, int] = {}
    multi: set[int] = set()
    for r, req in enumerate(reqs):
        node = 0
        for h in req.blocks:
            node = children[(node, h)]
            first = first_session.setdefault(node, session_of[r])
            if first != session_of[r]:
                multi.add(node)
    for s in sessions:
        node = 0
        for h in reqs[s.requests[0]].blocks:
            node = children[(node, h)]
            if node not in multi:
                break
            s.shared_lead += 1
    return sessions, shared


def convert(inputs: list[Path], *, seed: int = 0, tokenizer=None, table=None, progress: Progress = no_progress,
            licence: str = "Apache-2.0", source_detail: str = "") -> ConversionResult:
    files = expand_inputs(inputs, ("*.jsonl",))
    report = ConversionReport(source="mooncake", unit="requests")
    programs: list[Program] = []
    total = trace_reuse = 0
    for f in files:
        name = str(f)
        reqs: list[_Request] = []
        for line, raw in read_jsonl(f):
            rec = f"request {line}"
            ids = need(raw, "hash_ids", file=name, line=line, record=rec)
            n_in = need_count(need(raw, "input_length", file=name, line=line, record=rec), file=name, line=line,
                              record=rec, field="input_length")
            n_out = need_count(need(raw, "output_length", file=name, line=line, record=rec), file=name, line=line,
                               record=rec, field="output_length")
            ts = need(raw, "timestamp", file=name, line=line, record=rec)
            if not isinstance(ts, (int, float)) or ts < 0:
                raise WorkloadError(f"impossible value: timestamp {ts!r}", file=name, line=line, record=rec,
                                    field="timestamp")
            if reqs and ts < reqs[-1].t_s * 1000:
                raise WorkloadError(f"request out of order: timestamp {ts} before {reqs[-1].t_s * 1000:g}",
                                    file=name, line=line, record=rec, field="timestamp")
            if not (len(ids) - 1) * BLOCK_TOKENS < n_in <= len(ids) * BLOCK_TOKENS and not (n_in == 0 == len(ids)):
                raise WorkloadError(f"{len(ids)} blocks cannot hold {n_in} tokens", file=name, line=line,
                                    record=rec, field="hash_ids")
            reqs.append(_Request(line=line, t_s=ts / 1000.0, input_tokens=n_in, output_tokens=n_out,
                                 blocks=[int(h) for h in ids]))
        report.num_read += len(reqs)
        sessions, shared = infer_sessions(reqs)
        seen_blocks: set[int] = set()
        for req in reqs:  # the trace's own perfect block reuse, to report what the sessions keep
            trace_reuse += min(sum(1 for h in req.blocks if h in seen_blocks) * BLOCK_TOKENS, req.input_tokens)
            seen_blocks.update(req.blocks)
        stem = f.name.removesuffix(".jsonl")
        for s_index, s in enumerate(progress(sessions, f"mooncake {f.name}")):
            b = ProgramBuilder(f"{stem}/{s_index}")
            first = reqs[s.requests[0]]
            lead = [(f"mooncake:{stem}:block:{h}", min(BLOCK_TOKENS, first.input_tokens - i * BLOCK_TOKENS))
                    for i, h in enumerate(first.blocks[:s.shared_lead])]
            b.agent("user", lead)
            t0 = first.t_s
            for k, r in enumerate(s.requests):
                req = reqs[r]
                if k == 0:
                    sys_n = sum(n for _, n in lead)
                    segs = [(SegmentKind.SYSTEM, sys_n, None), (SegmentKind.NEW, req.input_tokens - sys_n, None)]
                else:
                    # whole blocks only: the parent's last, partial block rehashes once extended
                    hist = min(shared[r] * BLOCK_TOKENS, req.input_tokens, reqs[s.requests[k - 1]].input_tokens)
                    segs = [(SegmentKind.HISTORY, hist, k - 1), (SegmentKind.NEW, req.input_tokens - hist, None)]
                    prev = b.calls[k - 1]
                    b.calls[k - 1] = prev.model_copy(update={"tool": ToolCall(
                        name="user", kind=ToolKind.USER, duration_s=round(req.t_s - reqs[s.requests[k - 1]].t_s, 3),
                        synthetic=False)})
                b.add(agent="user", segments=segs, output_tokens=req.output_tokens, start_s=round(req.t_s - t0, 3))
                total += req.input_tokens
            programs.append(b.build(arrival_s=t0))
    report.num_converted = len(programs)
    report.notes.append(f"{report.num_read} requests -> {len(programs)} sessions (programs)")
    header = make_header(source="mooncake", source_detail=source_detail, licence=licence,
                         converter="agentflow.runtime.workload.convert.mooncake",
                         token_counts=TokenSource.TRACE, tokenizer=None, durations=DurationSource.RECORDED,
                         seed=None, duration_table=None,
                         notes=["sessions inferred from shared leading 512-token blocks; history and shared "
                                "parts are block-granular",
                                "'user' tool = gap between a session's request arrivals (recorded LLM "
                                "latency + think time)",
                                f"trace block reuse {trace_reuse} prompt tokens of {total}"])
    return ConversionResult(header=header, programs=programs, report=report)
