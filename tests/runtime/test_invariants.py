"""Safety invariants of the scheduler under randomised (seeded) event sequences.

Programs of random workflows (no fan-out, so one step at a time) run against two workers with
small KV pools; calls finish, tools take random times, engines demote prefixes to host memory,
a program is sometimes cancelled, a worker is sometimes lost. After every scheduling step:
  * pinned tokens on each worker never exceed the cap, and equal the sum of its pins;
  * no pin outlives its TTL by more than one step;
  * the admission order (kept incrementally) is the policy's order computed from scratch;
programs are parked by the working-set admission only while some program is active (no deadlock);
and at the end every pin has ended and every submitted call was admitted (nothing starves). `agentflow-all` is the agentflow preset with
every program active at once (no working set), so pins and pressure are exercised at full load.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from agentflow.graph.model import Branch, Loop, Next, StepKind
from agentflow.graph.synthetic import Shape, random_workflow
from agentflow.runtime.clock import ManualClock
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, PrefixMoved, ProgramArrived, ProgramFinished, ToolFinished,
    ToolStarted, WorkerLost, WorkerUpdate,
)
from agentflow.runtime.policies import AdmitAll, FairShareConfig, make_policy
from agentflow.runtime.prefixes import history_prefix, system_prefix
from agentflow.runtime.scheduler import Scheduler, SchedulerConfig


def next_step(graph, step, counters, rng):
    t = graph.transitions[step]
    if t is None:
        return None
    if isinstance(t, Next):
        return t.target
    if isinstance(t, Branch):
        r, acc = rng.random(), 0.0
        for c in t.cases:
            acc += c.probability
            if r < acc:
                return c.target
        return t.default
    if isinstance(t, Loop):
        done = counters.get(step, 0)
        if done + 1 < t.max_iterations and rng.random() < t.continue_probability:
            counters[step] = done + 1
            return t.back_to
        counters.pop(step, None)
        return t.exit
    raise AssertionError(t)


@pytest.mark.parametrize("policy", ["agentflow", "agentflow-all", "continuum", "kvflow"])
@pytest.mark.parametrize("seed", range(4))
def test_invariants_hold_under_random_events(policy, seed):
    run_random(policy, seed)


def test_the_random_runs_exercise_pins_pressure_and_prefetch():
    """Guard against invariants that hold only because nothing happened."""
    totals: dict[str, int] = {}
    for policy in ("agentflow", "agentflow-all", "continuum"):
        for seed in range(4):
            for k, v in run_random(policy, seed).items():
                totals[f"{policy}.{k}"] = totals.get(f"{policy}.{k}", 0) + v
    assert totals["agentflow-all.pins"] >= 2 and totals["continuum.pins"] >= 8
    assert totals["continuum.pressure"] + totals["agentflow-all.pressure"] >= 1
    assert totals["agentflow-all.prefetches"] >= 1
    # the working set held programs back and let them go again
    assert totals["agentflow.activated"] >= 10 and totals["agentflow-all.activated"] == 0


def _policy(name: str, fair):
    if name == "agentflow-all":
        return replace(make_policy("agentflow", fair_share=fair), programs=AdmitAll())
    return make_policy(name, fair_share=fair) if name == "agentflow" else make_policy(name)


def run_random(policy: str, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    clock = ManualClock()
    cap = 0.3
    fair = FairShareConfig() if seed % 2 else None
    sched = Scheduler(_policy(policy, fair), clock=clock, config=SchedulerConfig(pin_cap_share=cap))
    workers = ["w0", "w1"]
    for w in workers:
        sched.apply(WorkerUpdate(worker=w, kv_capacity_tokens=10_000, h2d_tokens_per_s=20_000.0))
    graphs = [random_workflow(seed * 7 + i, Shape(num_steps=12, num_agents=3, p_fork=0.0), name=f"wf{i}")
              .compile().graph for i in range(3)]
    programs: dict[int, dict] = {}
    submitted: set = set()
    admitted: set = set()
    engine_pins: set = set()
    next_pid = 0
    pending: list[tuple[float, int, tuple]] = []  # (time, seq, action)
    seq = 0

    def schedule(dt, action):
        nonlocal seq
        seq += 1
        pending.append((clock.now_s() + dt, seq, action))

    def start_step(pid):
        p = programs[pid]
        g = p["graph"]
        while p["step"] is not None and g.steps[p["step"]].kind is StepKind.NOOP:
            p["step"] = next_step(g, p["step"], p["loops"], rng)
        step = p["step"]
        if step is None:
            sched.apply(ProgramFinished(program_id=pid))
            del programs[pid]
            return
        node = g.steps[step]
        if node.kind is StepKind.LLM:
            agent = node.agent
            sys_ref = system_prefix(g.name, agent, 500)
            prev = p["hist"].get(agent, sys_ref)
            p["turn"] += 1
            cid = (pid, p["turn"])
            refs = (sys_ref,) if prev is sys_ref else (sys_ref, prev)
            sched.apply(CallSubmitted(program_id=pid, call_id=cid, step=step, prefixes=refs,
                                      prompt_tokens=prev.num_tokens + 300, expected_output_tokens=50))
            submitted.add(cid)
            p["pending_call"] = (cid, agent, prev)
        else:
            sched.apply(ToolStarted(program_id=pid, step=step, tool=node.tool or "tool"))
            schedule(rng.expovariate(1 / 2.0), ("tool_done", pid, step, node.tool or "tool"))

    running: dict = {}
    counts = {"pins": 0, "pressure": 0, "prefetches": 0, "activated": 0}
    for i in range(600):
        r = rng.random() if i < 400 else 1.0  # after 400 rounds: no new arrivals, cancellations, faults
        if len(programs) < 6 and r < 0.1:
            g = rng.choice(graphs)
            pid = next_pid
            next_pid += 1
            sched.apply(ProgramArrived(program_id=pid, graph=g))
            programs[pid] = {"graph": g, "step": g.entry, "loops": {}, "hist": {}, "turn": 0}
            start_step(pid)
        elif r < 0.13 and programs:
            pid = rng.choice(sorted(programs))
            if programs[pid].get("pending_call") is None:
                sched.apply(ProgramFinished(program_id=pid, cancelled=True))
                del programs[pid]
                pending[:] = [x for x in pending if x[2][1] != pid]
        elif r < 0.25 and sched.prefixes:
            key = rng.choice(sorted(sched.prefixes))
            for w in list(sched.prefixes[key].tiers):
                sched.apply(PrefixMoved(worker=w, key=key, tier=rng.choice(["host", "host", "none"])))
        elif r < 0.255 and len(sched.workers) == 2:
            lost = rng.choice(workers)
            sched.apply(WorkerLost(worker=lost))
            sched.apply(WorkerUpdate(worker=lost, kv_capacity_tokens=10_000, h2d_tokens_per_s=20_000.0))
            for cid, (w, pid) in list(running.items()):
                if w == lost:  # the engine lost it too; the scheduler re-queued it
                    del running[cid]
        # advance time to the next pending action, if any is due
        clock.advance(rng.uniform(0.0, 0.5))
        pending.sort()
        while pending and pending[0][0] <= clock.now_s():
            _, _, action = pending.pop(0)
            kind, pid = action[0], action[1]
            if pid not in programs:
                continue
            p = programs[pid]
            if kind == "tool_done":
                _, _, step, tool = action
                sched.apply(ToolFinished(program_id=pid, step=step, tool=tool, duration_s=2.0))
                p["step"] = next_step(p["graph"], step, p["loops"], rng)
                start_step(pid)
            elif kind == "call_done":
                _, _, cid, agent, prev, worker = action
                if cid not in running:
                    continue
                del running[cid]
                hist = history_prefix(pid, agent, p["turn"], prev, 350)
                p["hist"][agent] = hist
                sched.apply(CallFinished(call_id=cid, worker=worker, output_tokens=50,
                                         cached=(system_prefix(p["graph"].name, agent, 500), hist)))
                p["pending_call"] = None
                p["step"] = next_step(p["graph"], p["step"], p["loops"], rng)
                start_step(pid)
        dec = sched.step()
        # an engine that applies each decision's unpins, then its pins, holds exactly the scheduler's pins
        for u in dec.unpins:
            engine_pins.discard(u.prefix)
        engine_pins.update(p.prefix for p in dec.pins)
        assert engine_pins == set(sched.pins)
        if dec.admit:  # the order kept incrementally is the policy's order computed from scratch
            assert list(dec.admit) == sched.policy.admission.order(sched.snapshot(), sched.config.admit_limit)
        counts["pins"] += len(dec.pins)
        counts["prefetches"] += len(dec.prefetches)
        counts["activated"] += len(dec.activated)
        counts["pressure"] += sum(1 for u in dec.unpins if u.reason.value == "pressure")
        # an engine with two slots per worker admits in the decision's order
        for cid in dec.admit:
            if len(running) >= 4 or cid in running or cid not in sched.calls:
                continue
            pid = cid[0]
            worker = next((w for r in dec.routes if r.call_id == cid for w in r.workers), None) or rng.choice(workers)
            sched.apply(CallStarted(call_id=cid, worker=worker))
            admitted.add(cid)
            running[cid] = (worker, pid)
            _, agent, prev = programs[pid]["pending_call"]
            schedule(rng.uniform(0.1, 1.0), ("call_done", pid, cid, agent, prev, worker))
        # ---- invariants after every step ----
        now = clock.now_s()
        for w, state in sched.workers.items():
            pinned = sum(pin.num_tokens for pin in sched.pins.values() if pin.worker == w)
            assert state.pinned_tokens == pinned
            assert pinned <= cap * state.kv_capacity_tokens
        for pin in sched.pins.values():
            assert pin.expires_at_s > now, "a pin outlived its TTL past a step"
        # parked programs wait only behind active ones (which finish): never all parked
        assert not sched.parked or any(p.active for p in sched.programs.values()), "parked with none active"
    # 200 rounds without arrivals or faults: every call submitted since was admitted (no starvation)
    assert not sched.waiting, f"calls still waiting after the drain: {list(sched.waiting)[:5]}"
    for pid in list(programs):
        sched.apply(ProgramFinished(program_id=pid, cancelled=True))
    sched.step()
    assert sched.pins == {} and all(w.pinned_tokens == 0 for w in sched.workers.values())
    assert not sched.waiting and not sched.calls
    return counts
