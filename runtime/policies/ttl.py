"""Time-to-live of a pin at a tool call (Continuum-style).

When an agent's turn ends in a tool call, keeping its prefix on the GPU saves re-prefilling it
when the tool returns, and costs the memory it holds meanwhile. With D the tool's duration
(learned online, `tool_stats.py`), B the benefit of a hit and c the holding cost per second:

    tau* = argmax_tau  P(D <= tau) * B  -  c * E[min(D, tau)]

(Continuum writes the cost as tau; the pin is released as soon as the next call arrives, so the
memory is held for min(D, tau), not tau.) The objective only changes at the observed durations,
so the candidates are the sorted samples and 0 (no pin).

    B = w * (time to rebuild the prefix + eta * mean queueing delay now)
        rebuild = tokens / prefill rate, or tokens / host-to-GPU rate if a host copy exists
        w = probability that this agent is called again (from the step graph; 1 if unknown)
    c = hold_cost_weight * (prefix tokens / worker KV capacity) * (1 + calls waiting)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agentflow.runtime.state import PrefixState, ProgramState, Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class TtlConfig:
    max_ttl_s: float = 60.0
    eta: float = 1.0  # weight of the queueing delay a hit saves
    hold_cost_weight: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TtlChoice:
    ttl_s: float
    p_return: float  # P(the tool finishes within the TTL)
    benefit_s: float
    value_s: float  # expected saving minus expected holding cost


def choose_ttl(samples_s, *, benefit_s: float, cost_per_s: float, max_ttl_s: float,
               prefix_sums=None) -> TtlChoice:
    """Maximise P(D <= tau) * B - c * E[min(D, tau)] over tau in {0} + samples (sorted).

    Vectorised: with n sorted samples x and prefix sums S, at tau = x[i] (the last of a run of
    equal values) P = (i+1)/n and E[min(D, tau)] = (S[i] + tau * (n-i-1)) / n."""
    xs = np.asarray(samples_s, dtype=float)
    n = len(xs)
    none = TtlChoice(ttl_s=0.0, p_return=0.0, benefit_s=benefit_s, value_s=0.0)
    if n == 0 or benefit_s <= 0:
        return none
    sums = np.cumsum(xs) if prefix_sums is None else prefix_sums
    i = np.arange(n)
    last_of_run = np.ones(n, dtype=bool)
    last_of_run[:-1] = xs[1:] != xs[:-1]  # evaluate a repeated value once, with all its mass
    ok = last_of_run & (xs <= max_ttl_s)
    if not ok.any():
        return none
    p = (i + 1) / n
    value = p * benefit_s - cost_per_s * (sums + xs * (n - i - 1)) / n
    value = np.where(ok, value, -np.inf)
    best = int(np.argmax(value))  # the first (shortest) TTL among equal values
    if value[best] <= 0:
        return none
    return TtlChoice(ttl_s=float(xs[best]), p_return=float(p[best]), benefit_s=benefit_s,
                     value_s=float(value[best]))


class TtlPolicy(Protocol):
    name: str

    def choose(self, snap: Snapshot, program: ProgramState, prefix: PrefixState, tool: str,
               agent: str) -> TtlChoice | None:
        """How long to pin `prefix` while `program` runs `tool`; None or ttl 0: do not pin."""


class NoPins:
    name = "none"

    def choose(self, snap, program, prefix, tool, agent) -> TtlChoice | None:
        return None


def _benefit_and_cost(snap: Snapshot, program: ProgramState, prefix: PrefixState, cfg: TtlConfig):
    worker = snap.workers.get(program.worker) if program.worker else None
    tokens = prefix.num_tokens
    prefill = worker.prefill_tokens_per_s if worker else 10_000.0
    rebuild_s = tokens / prefill
    if worker and worker.h2d_tokens_per_s > 0 and prefix.tiers.get(worker.worker) == "host":
        rebuild_s = min(rebuild_s, tokens / worker.h2d_tokens_per_s)
    waits = [snap.time_s - snap.calls[c].submitted_s for c in snap.waiting[:64]]
    queue_s = sum(waits) / len(waits) if waits else 0.0
    capacity = worker.kv_capacity_tokens if worker else max(tokens, 1) * 10
    cost = cfg.hold_cost_weight * (tokens / max(capacity, 1)) * (1 + len(snap.waiting))
    return rebuild_s + cfg.eta * queue_s, cost


class ContinuumTtl:
    """Continuum: pin at every tool call, TTL from the tool's learned durations; knows no graph."""

    name = "continuum"

    def __init__(self, config: TtlConfig = TtlConfig()):
        self.config = config

    def choose(self, snap, program, prefix, tool, agent) -> TtlChoice | None:
        benefit, cost = _benefit_and_cost(snap, program, prefix, self.config)
        xs, sums = snap.tool_stats.arrays(tool)
        return choose_ttl(xs, benefit_s=benefit, cost_per_s=cost, max_ttl_s=self.config.max_ttl_s, prefix_sums=sums)


class WorkflowTtl:
    """agentflow: Continuum's rule, weighted by the probability the agent runs again (from the
    step graph), and only when it is the agent's very next step: if other steps come first the
    eviction priority, not a pin, keeps its prefix."""

    name = "workflow"

    def __init__(self, config: TtlConfig = TtlConfig()):
        self.config = config

    def choose(self, snap, program, prefix, tool, agent) -> TtlChoice | None:
        steps, p_again, _ = snap.agent_steps(program.program_id, agent)
        if math.isinf(steps) or steps > 1 or p_again <= 0:
            return None
        benefit, cost = _benefit_and_cost(snap, program, prefix, self.config)
        xs, sums = snap.tool_stats.arrays(tool)
        return choose_ttl(xs, benefit_s=p_again * benefit, cost_per_s=cost, max_ttl_s=self.config.max_ttl_s,
                          prefix_sums=sums)
