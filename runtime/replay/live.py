"""A workload replayed live: real RPCs, real engines, wall-clock time (scaled for simulated ones).

The discrete-event replay (engine.py) owns its clock; this one does not. Each program is a task:

    open program ─> for each call: submit (scheduler routes it) ─> run it on the routed worker
                    (prompt ids and the recorded output, forced) ─> tool: report start, sleep its
                    recorded duration, report end ─> next call ─> close program

Time: simulated engines run `time_scale` simulated seconds per wall second, and so do the
scheduler's clock and the tool sleeps here, so every duration reported (JCT, TTFT) is in the
workload's seconds and compares with the in-process replay of the same workload.

Token ids come from the same generator as the in-process replay (`workload.tokens`), and prefix
keys are content addresses (`prefix_key`), so a call's history prefix is the previous call's
prompt + output that its worker reported cached, with no bookkeeping here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agentflow.runtime.engines.base import GenerateRequest, prefix_chain
from agentflow.runtime.replay.planning import PlanningGraph
from agentflow.runtime.service.core import CallRequest
from agentflow.runtime.workload.format import Program, SegmentKind
from agentflow.runtime.workload.tokens import DEFAULT_VOCAB_SIZE, TokenIds, program_runs


@dataclass(frozen=True, slots=True)
class LiveCall:
    agent: str
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    boundaries: tuple[int, ...]  # cacheable prefix ends (system prompt, history), ascending
    tool: str | None  # the tool call after it, if any
    tool_duration_s: float


def prepare(program: Program, index: int, ids: TokenIds) -> list[LiveCall]:
    """The token ids of a program's calls, as the in-process replay builds them."""
    runs = program_runs(program, instance=index)
    out = []
    for i, call in enumerate(program.calls):
        p_runs, o_run = runs[i]
        prompt = tuple(np.asarray(ids.ids(p_runs)).tolist())
        output = tuple(np.asarray(ids.ids([o_run])).tolist()) or (0,)
        bounds, n = set(), 0
        for seg in call.segments:
            n += seg.num_tokens
            if seg.kind in (SegmentKind.SYSTEM, SegmentKind.HISTORY) and n > 0:
                bounds.add(min(n, len(prompt)))
        tool = call.tool.kind.value if call.tool is not None else None
        out.append(LiveCall(agent=call.agent, prompt_ids=prompt, output_ids=output, boundaries=tuple(sorted(bounds)),
                            tool=tool, tool_duration_s=call.tool.duration_s if call.tool is not None else 0.0))
    return out


@dataclass(slots=True)
class LiveStats:
    jct_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)  # wall milliseconds per SubmitCall
    prompt_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0
    retries: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, float]:
        def pct(xs, q):
            return float(np.percentile(xs, q)) if xs else math.nan

        return {
            "programs": len(self.jct_s), "calls": self.calls,
            "jct_mean_s": float(np.mean(self.jct_s)) if self.jct_s else math.nan,
            "jct_p50_s": pct(self.jct_s, 50), "jct_p90_s": pct(self.jct_s, 90),
            "ttft_mean_s": float(np.mean(self.ttft_s)) if self.ttft_s else math.nan,
            "ttft_p90_s": pct(self.ttft_s, 90),
            "hit_rate": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            "submit_p50_ms": pct(self.submit_ms, 50), "submit_p99_ms": pct(self.submit_ms, 99),
            "retries": self.retries, "wall_s": self.wall_s,
        }


class LiveReplay:
    """Replays programs through a `ServiceClient` (runtime/service/client.py) or an
    `InProcessClient` (runtime/service/inprocess.py): the same calls either way."""

    def __init__(self, programs: list[Program], plan: PlanningGraph, client, *, time_scale: float = 1.0,
                 num_in_flight: int = 8, seed: int = 0, namespace: str = "default", run_id: str = "r",
                 on_progress: Callable[[int], None] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE):
        from agentflow.spec import WorkflowSpec

        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0 (got {time_scale})")
        if num_in_flight < 1:
            raise ValueError(f"num_in_flight must be >= 1 (got {num_in_flight})")
        self.programs = programs
        self.plan = plan
        self.client = client
        self.time_scale = time_scale
        self.num_in_flight = num_in_flight
        self.namespace = namespace
        self.run_id = run_id
        self.on_progress = on_progress
        self.ids = TokenIds(seed=seed, vocab_size=vocab_size)  # a real model's engine: its vocabulary
        self.spec = WorkflowSpec.from_compiled(plan.workflow).to_json()
        self.stats = LiveStats()
        self._t0 = 0.0

    def now_s(self) -> float:
        """Workload seconds since the replay began."""
        return (time.monotonic() - self._t0) * self.time_scale

    async def run(self) -> dict[str, float]:
        """Closed loop: `num_in_flight` programs at a time, the next one starting when one ends."""
        self._t0 = time.monotonic()
        queue = list(enumerate(self.programs))
        queue.reverse()

        async def lane():
            while queue:
                index, program = queue.pop()
                await self._program(index, program)
                if self.on_progress is not None:
                    self.on_progress(1)

        await asyncio.gather(*(lane() for _ in range(min(self.num_in_flight, len(self.programs)))))
        self.stats.wall_s = time.monotonic() - self._t0
        self.stats.retries = self.client.retries
        self.stats.submit_ms = list(self.client.submit_ms)
        return self.stats.summary()

    async def _program(self, index: int, program: Program) -> None:
        pid = f"{self.run_id}:{index}:{program.id}"
        calls = prepare(program, index, self.ids)
        start = self.now_s()
        await self.client.open_program(pid, self.spec, tenant=self.namespace)
        try:
            await self._calls(pid, calls)
        except BaseException:  # a replay that fails leaves no program open on the service
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close_program(pid, cancelled=True), 5.0)
            raise
        await self.client.close_program(pid)
        self.stats.jct_s.append(self.now_s() - start)

    async def _calls(self, pid: str, calls) -> None:
        for i, c in enumerate(calls):
            refs = prefix_chain(self.namespace, c.prompt_ids, c.boundaries)
            call = CallRequest(program_id=pid, call_id=f"{pid}#{i}", step=self.plan.step_of(c.agent), prefixes=refs,
                               prompt_tokens=len(c.prompt_ids), expected_output_tokens=len(c.output_ids))
            gen = GenerateRequest(call_id=call.call_id, program_id=pid, prompt_ids=c.prompt_ids,
                                  max_new_tokens=len(c.output_ids), ignore_eos=True, forced_output_ids=c.output_ids,
                                  prefixes=refs, namespace=self.namespace)
            _, result = await self.client.run_call(call, gen)
            self.stats.calls += 1
            self.stats.ttft_s.append(result.ttft_s)
            self.stats.prompt_tokens += result.prompt_tokens
            self.stats.cached_tokens += result.cached_tokens
            if c.tool is not None and i + 1 < len(calls):
                await self.client.tool(pid, step=self.plan.tool_step, tool=c.tool, finished=False)
                await asyncio.sleep(c.tool_duration_s / self.time_scale)
                await self.client.tool(pid, step=self.plan.tool_step, tool=c.tool, finished=True,
                                       duration_s=c.tool_duration_s)


__all__ = ["LiveCall", "LiveReplay", "LiveStats", "prepare"]
