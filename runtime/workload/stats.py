"""What a workload asks of a scheduler: turns, prompt sizes and growth, tool times, prefix reuse.

``perfect_prefix_reuse`` answers "what share of prompt tokens could an infinite prefix cache have
served?". It works on the runs of ``tokens.py`` (never on ids): a dict maps the hash of every run
prefix that was ever inserted to, per (origin, start), the longest next run seen there. Programs go
in arrival order, each program's calls in order; after a call its prompt and output are inserted.
Programs only share prompt parts, so interleaving them differently would only move which program
pays the first miss on a shared part.

LLM time for the tool time share is the recorded ``latency_s`` where the source has it, else a
reference cost model (uncached prefill at PREFILL_TOKENS_PER_S, decode at DECODE_TOKENS_PER_S); the
result says which.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from agentflow.runtime.workload.format import Header, Program
from agentflow.runtime.workload.tokens import Run, program_runs

PREFILL_TOKENS_PER_S = 10_000.0
DECODE_TOKENS_PER_S = 50.0


def _q(values: list[float] | np.ndarray, qs: Iterable[int]) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q}": 0.0 for q in qs}
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs}


@dataclass(slots=True, kw_only=True)
class ToolStats:
    count: int
    synthetic_share: float
    total_s: float
    quantiles_s: dict[str, float]


@dataclass(slots=True, kw_only=True)
class WorkloadStats:
    source: str
    licence: str
    num_programs: int
    num_calls: int
    calls_per_program: dict[str, float]
    prompt_tokens_per_call: dict[str, float]
    prompt_tokens_mean: float
    growth_per_turn_tokens: dict[str, float]
    output_tokens_per_call: dict[str, float]
    output_tokens_mean: float
    num_tool_calls: int
    tool_time_share: float
    llm_time: str  # recorded | modelled | mixed
    tools: dict[str, ToolStats] = field(default_factory=dict)
    perfect_prefix_reuse: float = 0.0
    provider_cached_share: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    def to_text(self) -> str:
        def num(v: float) -> str:
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"

        def qs(d: dict[str, float]) -> str:
            return " / ".join(num(v) for v in d.values())

        rows = [
            ("source", f"{self.source} ({self.licence})"),
            ("programs", f"{self.num_programs:,}"),
            ("LLM calls", f"{self.num_calls:,}"),
            ("calls per program p10/p50/p90", qs(self.calls_per_program)),
            ("prompt tokens per call p50/p90/p99", qs(self.prompt_tokens_per_call)),
            ("prompt growth per turn p50/p90", qs(self.growth_per_turn_tokens)),
            ("output tokens per call p50/p90/p99", qs(self.output_tokens_per_call)),
            ("tool calls", f"{self.num_tool_calls:,}"),
            ("tool time share", f"{self.tool_time_share:.1%} (LLM time {self.llm_time})"),
            ("perfect prefix cache reuse", f"{self.perfect_prefix_reuse:.1%} of prompt tokens"),
        ]
        if self.provider_cached_share is not None:
            rows.append(("provider-reported cached share", f"{self.provider_cached_share:.1%}"))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        if self.tools:
            lines.append("")
            lines.append("| tool | calls | synthetic | p50 s | p90 s | p99 s | max s |")
            lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for kind, t in sorted(self.tools.items(), key=lambda kv: -kv[1].count):
                q = t.quantiles_s
                lines.append(f"| {kind} | {t.count:,} | {t.synthetic_share:.0%} | {num(q['p50'])} | "
                             f"{num(q['p90'])} | {num(q['p99'])} | {num(q['p100'])} |")
        return "\n".join(lines)


def perfect_prefix_reuse(programs: list[Program]) -> tuple[int, int]:
    """(prompt tokens an infinite prefix cache serves, all prompt tokens)."""
    # boundary hash -> {(origin, start): longest run seen continuing from that boundary}
    seen: dict[int, dict[tuple, int]] = defaultdict(dict)
    reused = total = 0

    def walk(runs: list[Run], insert: bool) -> int:
        h = 0
        matched = 0
        alive = True
        for origin, start, n in runs:
            key = (origin, start)
            if alive:
                have = seen.get(h, {}).get(key, 0)
                matched += min(have, n)
                alive = have >= n
            if insert:
                slot = seen[h]
                if slot.get(key, 0) < n:
                    slot[key] = n
            elif not alive:
                break
            h = hash((h, origin, start, n))
        return matched

    for program in sorted(programs, key=lambda p: p.arrival_s):
        for prompt, output in program_runs(program):
            n = sum(r[2] for r in prompt)
            total += n
            reused += walk(prompt, insert=False)
            walk(prompt + [output] if output[2] else prompt, insert=True)
    return reused, total


def compute_stats(header: Header, programs: list[Program]) -> WorkloadStats:
    calls_per_program = [len(p.calls) for p in programs]
    prompt, output, growth = [], [], []
    tool_samples: dict[str, list[float]] = defaultdict(list)
    tool_synth: dict[str, int] = defaultdict(int)
    tool_s = llm_s = 0.0
    recorded_latency = modelled = 0
    cached = cached_total = 0
    for p in programs:
        last_by_agent: dict[str, int] = {}
        for c in p.calls:
            n = c.prompt_tokens
            prompt.append(n)
            output.append(c.output_tokens)
            if c.agent in last_by_agent:
                growth.append(n - last_by_agent[c.agent])
            last_by_agent[c.agent] = n
            if c.latency_s is not None:
                llm_s += c.latency_s
                recorded_latency += 1
            else:
                llm_s += n / PREFILL_TOKENS_PER_S + c.output_tokens / DECODE_TOKENS_PER_S
                modelled += 1
            if c.cached_tokens is not None:
                cached += c.cached_tokens
                cached_total += n
            if c.tool is not None:
                tool_samples[c.tool.kind.value].append(c.tool.duration_s)
                tool_synth[c.tool.kind.value] += int(c.tool.synthetic)
                tool_s += c.tool.duration_s
    tools = {
        kind: ToolStats(count=len(xs), synthetic_share=round(tool_synth[kind] / len(xs), 4),
                        total_s=round(sum(xs), 3), quantiles_s=_q(xs, (50, 90, 99, 100)))
        for kind, xs in tool_samples.items()
    }
    reused, total = perfect_prefix_reuse(programs)
    llm_time = "recorded" if modelled == 0 else ("modelled" if recorded_latency == 0 else "mixed")
    return WorkloadStats(
        source=header.source, licence=header.licence,
        num_programs=len(programs), num_calls=len(prompt),
        calls_per_program=_q(calls_per_program, (10, 50, 90)),
        prompt_tokens_per_call=_q(prompt, (50, 90, 99)),
        prompt_tokens_mean=round(float(np.mean(prompt)), 1) if prompt else 0.0,
        growth_per_turn_tokens=_q(growth, (50, 90)),
        output_tokens_per_call=_q(output, (50, 90, 99)),
        output_tokens_mean=round(float(np.mean(output)), 1) if output else 0.0,
        num_tool_calls=sum(len(x) for x in tool_samples.values()),
        tool_time_share=round(tool_s / (tool_s + llm_s), 4) if tool_s + llm_s > 0 else 0.0,
        llm_time=llm_time, tools=tools,
        perfect_prefix_reuse=round(reused / total, 4) if total else 0.0,
        provider_cached_share=round(cached / cached_total, 4) if cached_total else None,
    )
