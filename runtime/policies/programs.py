"""Which programs are active: working-set admission, so the KV pool stops thrashing.

Eviction and pins decide *which* KV stays when the pool is short; they cannot help when the
programs in flight need more KV between their calls than the pool holds. Then every policy
thrashes: each program's history is evicted before its next call and prefilled again, and
throughput falls as more programs are in flight (on the shipped SWE-bench workload without a host
tier: 2.83 programs/min with 16 in flight, 1.66 with 68). The classic cure is Denning's: run a
process only while the sum of the active processes' working sets fits in memory, and find the
fit by watching the fault rate (page-fault-frequency control).

Here a program is *active* (its calls are routed and admitted, its KV kept) or *parked* (its next
call is held by the scheduler at the call boundary; nothing of it runs). The policy is two pure
functions over a snapshot:

    plan(snap, budget)  -> which parked programs to activate now
        projected footprint of a program = its largest context now (an agent's last prompt +
        output; a held call's prompt) + the growth still to come: per-call growth of the
        program's context x expected remaining calls x `growth_share`, both learned online
        (`runtime/remaining_work.py`; the graph's expected remaining calls until enough programs
        have finished). With `growth_share` 0.5 a footprint is the mean context over the rest of
        the program's life: what it holds on average, as the sum over programs at different ages
        is what the pool holds.
        Parked programs are activated in arrival order while the active footprints plus theirs fit
        the budget; the head of the line is never skipped for a smaller one, so a program's wait is
        bounded by the completions ahead of it (nothing starves). At least one program is always
        active, so a program larger than the budget still runs (alone).

    next_budget(budget, fault_share, ...) -> the budget for the next control interval
        fault share = GPU time spent re-prefilling or reloading context a program had already
        built (its previous call's prompt + output), over elapsed worker time; or, if larger, the
        stall share: the time active programs' calls (after each one's first) waited for the
        engine, over elapsed time x active programs. Stalls are where over-commitment shows once a
        host tier makes faults cheap: reloads cost little GPU time, but calls queue for room in a
        pool that pinned and running programs fill (on the shipped SWE-bench workload with the
        host tier, faults alone let every program in, and the TTFT p99 of later calls doubled).
        Above `fault_share_high` the budget shrinks; below `fault_share_low`, while programs wait,
        it grows. It starts at the cluster's KV pool and stays within [floor, ceiling] x pool.

No constant here is per workload: the same thresholds run every workload and preset, and the
budget moves to where each one stops faulting. Programs are parked only before they start: an
active program is never held between its calls (its TTFT would pay for it), so the budget bounds
what is admitted, and completions bring the active set down to it.

`AdmitAll` (every engine's default) activates everything at once; `StaticCap(n)` is the reference
a hindsight search tunes (the best n for one workload and load, found by running them all).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agentflow.runtime.state import ProgramState, Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkingSetConfig:
    fault_share_high: float = 0.15  # above: too many programs share the pool; shrink
    fault_share_low: float = 0.05  # below (and programs wait): room for more; grow
    shrink: float = 0.95  # active footprint x this, per interval while faulting
    grow: float = 1.03  # budget x this per interval while not faulting and programs wait
    grow_idle: float = 1.10  # ... and x this while faults are under a quarter of fault_share_low
    growth_share: float = 0.5  # share of the remaining growth a footprint counts (1: the final context)
    unsized_share: float = 0.05  # of the budget: the initial window for a workflow whose growth is not known yet
    interval_s: float = 30.0  # control interval
    stall_weight: float = 1.0  # a stalled share of the active programs' time counts as this share of faults
    floor: float = 0.1  # budget never below floor x pool
    ceiling: float = 8.0  # nor above ceiling x pool (pool + host tier can hold more than the pool)

    def __post_init__(self):
        if not 0 <= self.fault_share_low < self.fault_share_high <= 1:
            raise ValueError("working set: need 0 <= fault_share_low < fault_share_high <= 1 "
                             f"(got {self.fault_share_low}, {self.fault_share_high})")
        if not 0 < self.shrink < 1 < self.grow:
            raise ValueError(f"working set: need 0 < shrink < 1 < grow (got {self.shrink}, {self.grow})")
        if self.interval_s <= 0:
            raise ValueError(f"working set: interval_s must be > 0 (got {self.interval_s})")
        if not 0 < self.floor <= 1 <= self.ceiling:
            raise ValueError(f"working set: need 0 < floor <= 1 <= ceiling (got {self.floor}, {self.ceiling})")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramPlan:
    activate: tuple[Hashable, ...] = ()


class ProgramAdmission(Protocol):
    name: str
    holds: bool  # False: every program is active from its arrival (no call is ever held)
    control_interval_s: float | None  # how often the scheduler calls next_budget; None: never (no budget)
    growth_share: float  # the share of remaining growth a footprint counts (what the budget is compared with)

    def plan(self, snap: Snapshot, parked: Sequence[Hashable], budget_tokens: float) -> ProgramPlan:
        """Which of `parked` (in arrival order) to activate now."""

    def next_budget(self, budget_tokens: float, *, fault_share: float, waiting_tokens: float | None,
                    pool_tokens: float, active_tokens: float, stall_share: float = 0.0) -> float:
        """The budget for the next control interval."""


class _NoBudget:
    control_interval_s = None
    growth_share = 1.0

    def next_budget(self, budget_tokens: float, **_) -> float:
        return budget_tokens


def footprint_tokens(snap: Snapshot, prog: ProgramState, growth_share: float = 1.0) -> float:
    """Projected KV a program holds over the rest of its life: its largest context now (an agent's
    last prompt + output, or a submitted call's prompt + expected output), plus `growth_share` x the
    growth to come (learned per-call growth of the program's context x expected remaining calls).
    The largest context, not the sum over its agents: contexts an agent will not extend again are
    evicted without a fault (a ChatDev phase starts a new conversation), and the measured faults
    correct the budget where a program keeps several agents' contexts alive."""
    now = max(prog.context_tokens.values(), default=0)
    for c in prog.calls:  # submitted, not finished
        call = snap.calls.get(c)
        if call is not None:
            now = max(now, call.prompt_tokens + call.expected_output_tokens)
    wf = prog.graph.name
    remaining = snap.remaining.remaining_calls(wf, prog.turn) if snap.remaining is not None else None
    if remaining is None:
        remaining = snap.index.estimate(prog.program_id).remaining_calls
    growth = (snap.remaining.growth_per_call(wf) if snap.remaining is not None else None) or 0.0
    if not math.isfinite(remaining):
        remaining = 0.0
    return now + growth_share * growth * max(0.0, remaining)


def _sized(snap: Snapshot, prog: ProgramState) -> bool:
    if snap.remaining is None:
        return True
    return snap.remaining.growth_per_call(prog.graph.name) is not None


def active_footprint_tokens(snap: Snapshot, growth_share: float = 1.0) -> float:
    return sum(footprint_tokens(snap, p, growth_share) for p in snap.programs.values() if p.active)


class AdmitAll(_NoBudget):
    name = "all"
    holds = False

    def plan(self, snap: Snapshot, parked: Sequence[Hashable], budget_tokens: float) -> ProgramPlan:
        return ProgramPlan(activate=tuple(parked))


class StaticCap(_NoBudget):
    """At most `max_active` programs active; FCFS. A reference, tuned in hindsight per workload."""

    holds = True

    def __init__(self, max_active: int):
        if max_active < 1:
            raise ValueError(f"max_active must be >= 1 (got {max_active})")
        self.max_active = max_active
        self.name = f"cap{max_active}"

    def plan(self, snap: Snapshot, parked: Sequence[Hashable], budget_tokens: float) -> ProgramPlan:
        room = self.max_active - sum(1 for p in snap.programs.values() if p.active)
        return ProgramPlan(activate=tuple(parked[:max(0, room)]))


class WorkingSet:
    name = "working-set"
    holds = True

    def __init__(self, config: WorkingSetConfig = WorkingSetConfig()):
        self.config = config
        self.control_interval_s = config.interval_s
        self.growth_share = config.growth_share

    def plan(self, snap: Snapshot, parked: Sequence[Hashable], budget_tokens: float) -> ProgramPlan:
        if not parked:
            return ProgramPlan()
        share = self.config.growth_share
        active = [p for p in snap.programs.values() if p.active]
        used = sum(footprint_tokens(snap, p, share) for p in active)
        out = []
        for pid in parked:
            prog = snap.programs[pid]
            need = footprint_tokens(snap, prog, share)
            if active or out:
                # A workflow whose context growth is not known yet cannot be sized (its footprint is
                # its context now): its programs fill at most `unsized_share` of the budget, a small
                # initial window as TCP's, until one of them has made two calls.
                limit = budget_tokens if _sized(snap, prog) else self.config.unsized_share * budget_tokens
                if used + need > limit:
                    break  # FCFS: the head is never skipped for a smaller program behind it
            out.append(pid)
            used += need
        return ProgramPlan(activate=tuple(out))

    def next_budget(self, budget_tokens: float, *, fault_share: float, waiting_tokens: float | None,
                    pool_tokens: float, active_tokens: float, stall_share: float = 0.0) -> float:
        """The budget for the next interval. `waiting_tokens`: the footprint of the first parked
        program (None: none waits). Shrinking starts from what is active now, not from the budget: the
        active set only falls as programs finish, so faults go on for a while after the budget is
        right, and compounding on the budget would overshoot far below it. Growing needs a program
        that the budget holds back (the active footprints plus its own exceed it)."""
        cfg = self.config
        fault_share = max(fault_share, cfg.stall_weight * stall_share)
        if fault_share > cfg.fault_share_high:
            budget_tokens = min(budget_tokens, active_tokens) * cfg.shrink
        elif (fault_share < cfg.fault_share_low and waiting_tokens is not None
              and active_tokens + waiting_tokens > budget_tokens):
            budget_tokens *= cfg.grow_idle if fault_share < cfg.fault_share_low / 4 else cfg.grow
        return min(cfg.ceiling * pool_tokens, max(cfg.floor * pool_tokens, budget_tokens))


__all__ = ["AdmitAll", "ProgramAdmission", "ProgramPlan", "StaticCap", "WorkingSet", "WorkingSetConfig",
           "active_footprint_tokens", "footprint_tokens"]
