"""Tiny workflows and an event driver for scheduler tests."""

from __future__ import annotations

from agentflow import Workflow
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, ProgramArrived, ToolFinished, ToolStarted, WorkerUpdate,
)
from agentflow.runtime.prefixes import PrefixRef, history_prefix, system_prefix


def coding_agent(name: str = "swe", *, max_iterations: int = 10, expected: float = 4.0):
    """think (coder) -> act (bash) -> back to think, at most `max_iterations` times; then review."""
    wf = Workflow(name)
    wf.agent("coder", system_prompt="You fix bugs.", tools=["bash"])
    wf.agent("reviewer", system_prompt="You review.")
    wf.tool("bash", duration_hint_s=2.0)
    wf.llm("think", agent="coder")
    wf.call("act", tool="bash", agent="coder")
    wf.llm("review", agent="reviewer")
    wf.sequence("think", "act")
    wf.loop("act", back_to="think", max_iterations=max_iterations, expected_iterations=expected, exit="review")
    return wf.compile().graph


class Driver:
    """Feeds a scheduler the events of programs the way an engine would, with a manual clock."""

    def __init__(self, sched, clock, workers=("w0",), capacity=100_000, h2d=0.0):
        self.s, self.clock = sched, clock
        self.sys_tokens = 1_000
        self.turn: dict = {}
        self.history: dict = {}
        self.n = 0
        for w in workers:
            sched.apply(WorkerUpdate(worker=w, kv_capacity_tokens=capacity, h2d_tokens_per_s=h2d))

    def arrive(self, pid, graph):
        self.s.apply(ProgramArrived(program_id=pid, graph=graph))
        self.turn[pid] = 0

    def call(self, pid, graph, step, *, worker="w0", new_tokens=500, output=100, finish=True):
        """Submit, start and (optionally) finish one LLM call; returns its call id."""
        agent = graph.steps[step].agent
        sys_ref = system_prefix(graph.name, agent, self.sys_tokens)
        prev = self.history.get((pid, agent), sys_ref)
        self.turn[pid] += 1
        cid = f"{pid}:{self.turn[pid]}"
        prefixes = (sys_ref,) if prev is sys_ref else (sys_ref, prev)
        self.s.apply(CallSubmitted(program_id=pid, call_id=cid, step=step, prefixes=prefixes,
                                   prompt_tokens=prev.num_tokens + new_tokens, expected_output_tokens=output))
        self.s.apply(CallStarted(call_id=cid, worker=worker))
        if finish:
            self.finish(pid, graph, cid, agent, worker, new_tokens, output, prev)
        return cid

    def finish(self, pid, graph, cid, agent, worker, new_tokens, output, prev):
        sys_ref = system_prefix(graph.name, agent, self.sys_tokens)
        hist = history_prefix(pid, agent, self.turn[pid], prev, new_tokens + output)
        self.history[(pid, agent)] = hist
        self.s.apply(CallFinished(call_id=cid, worker=worker, output_tokens=output, cached=(sys_ref, hist)))

    def tool(self, pid, step, tool="bash"):
        self.s.apply(ToolStarted(program_id=pid, step=step, tool=tool))

    def tool_done(self, pid, step, duration_s, tool="bash"):
        self.s.apply(ToolFinished(program_id=pid, step=step, tool=tool, duration_s=duration_s))

    def deepest(self, pid, agent) -> PrefixRef:
        return self.history[(pid, agent)]
