"""The replay: a workload's programs through the simulated cluster, under one policy.

Discrete events on one clock (a heap ordered by time, then insertion):

    arrive(program)         -> ProgramArrived; its first call is submitted
    submit(program, i)      -> CallSubmitted; the call joins its routed worker's queue
    iteration(worker)       -> a batch iteration ends: first tokens, finished calls (CallFinished)
    tool_done(program, i)   -> ToolFinished; call i+1 is submitted (or the program ends)
    transfer(worker, key)   -> a prefetch from host memory lands on the GPU

After every event the scheduler takes one step and the engine applies its Decision: eviction
priorities and pins go to the workers' radix caches, prefetches start transfers, the admission
order ranks the queues, routes pick workers. The scheduler and the policies are the same objects
the live runtime uses (agentflow.runtime.scheduler / .policies).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from agentflow.runtime.clock import ManualClock
from agentflow.runtime.decision import priority_of_steps
from agentflow.runtime.engines.sim.interfaces import CostModel
from agentflow.runtime.engines.sim.radix import TOKEN_BYTES as B
from agentflow.runtime.engines.sim.radix import pack_tokens
from agentflow.runtime.engines.sim.worker import SimRequest, SimWorker
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, PrefixMoved, ProgramArrived, ProgramFinished, ToolFinished,
    ToolStarted, WorkerUpdate,
)
from agentflow.runtime.policies import Policy, make_policy
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.replay.metrics import Recorder
from agentflow.runtime.replay.oracle import ReplayOracle, program_paths
from agentflow.runtime.replay.planning import PlanningGraph
from agentflow.runtime.scheduler import Scheduler, SchedulerConfig
from agentflow.runtime.workload.format import Program, SegmentKind
from agentflow.runtime.workload.tokens import TokenIds, _take, program_runs


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayConfig:
    workers: int = 1
    kv_capacity_tokens: int | None = None  # per worker; None: the preset's
    host_capacity_tokens: int | None = None  # per worker; None: the preset's; 0: no host tier
    charge_host_link: bool = True  # HiCache's writes and loads share one PCIe link (False: free writes)
    page_size: int = 1
    chunk_tokens: int = 8192
    max_running: int = 256
    seed: int = 0
    sample_every_s: float = 5.0


@dataclass(slots=True)
class _Prog:
    program: Program
    arrival_s: float
    index: int  # position in the replay (instance id for token ids)
    calls: list  # per call: (prompt ids, output ids, [(key, n) prefix boundaries], full key, seen)
    next_call: int = 0


def _key(runs) -> str:
    return "k" + hashlib.blake2b(repr(runs).encode(), digest_size=8).hexdigest()


class Replay:
    def __init__(self, arrivals, plan: PlanningGraph, policy: str | Policy,
                 cost: CostModel, config: ReplayConfig = ReplayConfig(),
                 on_progress: Callable[[int], None] | None = None, prepared: dict | None = None):
        self.plan = plan
        self.cost = cost
        self.config = config
        self.clock = ManualClock()
        self.oracle = ReplayOracle(llm_time_s_per_call=1.0)
        # a preset by name, or a Policy built by the caller (e.g. a preset with another admission order)
        if isinstance(policy, Policy):
            pol = policy
        else:
            pol = make_policy(policy, oracle=self.oracle) if policy == "belady" else make_policy(policy)
        self.policy_name = policy = pol.name
        self.sched = Scheduler(pol, clock=self.clock, config=SchedulerConfig())
        strategy = "lru" if pol.eviction.name == "lru" else "priority"
        now = self.clock.now_s
        # The host tier is part of the system a preset stands for (SGLang's default has none); a size
        # given in the config applies to presets that have one.
        host = config.host_capacity_tokens
        if pol.host_tier is False:
            host = 0
        self.host_capacity_tokens = host if host is not None else cost.host_capacity_tokens
        self.workers = {
            f"w{i}": SimWorker(f"w{i}", cost, capacity_tokens=config.kv_capacity_tokens,
                               host_capacity_tokens=self.host_capacity_tokens, page_size=config.page_size,
                               chunk_tokens=config.chunk_tokens, max_running=config.max_running,
                               strategy=strategy, clock=now, charge_link=config.charge_host_link,
                               inherit_priority=policy == "belady")
            for i in range(config.workers)
        }
        self.rec = Recorder(kv_bytes_per_token=cost.kv_bytes_per_token)
        self.ids = TokenIds(seed=config.seed)
        self.prepared = prepared if prepared is not None else {}
        self.arrivals = arrivals
        self.on_progress = on_progress
        self._heap: list = []
        self._seq = 0
        self._progs: dict[Hashable, _Prog] = {}
        self._reqs: dict[Hashable, SimRequest] = {}
        # prefix key -> (a packed sequence that starts with it, its length in tokens); sliced on use
        self._tokens_of: dict[str, tuple[bytes, int]] = {}
        self._seen: set[str] = set()  # prefix keys computed at least once (for "recomputed")
        # The current eviction priority of each prefix, and its parent's length: re-applied whenever
        # the prefix is inserted again (decisions only carry priorities that changed).
        self._prio: dict[str, int] = {}
        self._parent_len: dict[str, int] = {}
        self._rank: dict[Hashable, int] = {}
        self._next_sample = 0.0
        # constant per cost model: what the scheduler prices a lost prefix with
        self._prefill_tokens_per_s = 8192 / max(1e-9, cost.prefill_time_s(8192))
        self.events = 0

    # ---- event queue -------------------------------------------------------------------------
    def _push(self, t: float, kind: str, *payload) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def run(self) -> dict[str, float]:
        for w in self.workers.values():
            self.sched.apply(WorkerUpdate(worker=w.name, kv_capacity_tokens=w.capacity,
                                          host_capacity_tokens=w.host_capacity,
                                          h2d_tokens_per_s=self.cost.h2d_tokens_per_s,
                                          prefill_tokens_per_s=self._prefill_tokens_per_s))
        # a fixed list of (time, program), or a closed loop that admits a program per finish
        self._loop = None if isinstance(self.arrivals, list) else self.arrivals
        self._n_arrived = 0
        for t, program in (self.arrivals if self._loop is None else self._loop.start()):
            self._push(t, "arrive", self._n_arrived, program)
            self._n_arrived += 1
        while self._heap or self._stalled():
            if not self._heap:  # calls wait behind pins and nothing else is due: wake at the first expiry
                expiry = min((p.expires_at_s for p in self.sched.pins.values()), default=self.clock.now_s() + 1.0)
                self._push(max(expiry, self.clock.now_s()), "tick")
            t, _, kind, payload = heapq.heappop(self._heap)
            self.clock.set(max(t, self.clock.now_s()))
            getattr(self, f"_on_{kind}")(*payload)
            self.events += 1
            self._decide()
            if self.clock.now_s() >= self._next_sample:
                self.rec.sample(self.clock.now_s())
                self._next_sample = self.clock.now_s() + self.config.sample_every_s
        return self.rec.summary()

    def _stalled(self) -> bool:
        return any(w.waiting or w.has_work() for w in self.workers.values())

    def _on_tick(self) -> None:
        for w in self.workers.values():
            self._kick(w)

    # ---- programs and calls ------------------------------------------------------------------
    def _prepare(self, index: int, program: Program) -> list:
        """Per call: packed prompt and output ids, prefix boundaries, the full sequence's key.
        Shared by the runs of every policy (`prepared`), since ids depend only on the seed."""
        cached = self.prepared.get(index)
        if cached is not None:
            return cached
        out = []
        runs = program_runs(program, instance=index)
        for i, call in enumerate(program.calls):
            p_runs, o_run = runs[i]
            prompt = pack_tokens(self.ids.ids(p_runs))
            output = pack_tokens(self.ids.ids([o_run]))
            bounds, n = [], 0
            for seg in call.segments:
                n += seg.num_tokens
                if seg.kind in (SegmentKind.SYSTEM, SegmentKind.HISTORY) and n > 0:
                    bounds.append(n)
            prefixes = []
            for b in sorted(set(bounds)):
                prefixes.append((_key(_take(p_runs, b)), b))
            full_runs = list(p_runs) + [o_run]
            full_key = _key(full_runs)
            out.append((prompt, output, prefixes, full_key))
        self.prepared[index] = out
        return out

    def _on_arrive(self, index: int, program: Program) -> None:
        pid = f"{index}:{program.id}"
        prog = _Prog(program=program, arrival_s=self.clock.now_s(), index=index,
                     calls=self._prepare(index, program))
        self._progs[pid] = prog
        self.rec.arrival(self.clock.now_s())
        self.sched.apply(ProgramArrived(program_id=pid, graph=self.plan.graph))
        self._submit(pid)

    def _refs(self, prefixes: list[tuple[str, int]]) -> tuple[PrefixRef, ...]:
        refs, parent, parent_len = [], None, 0
        for key, n in prefixes:
            refs.append(PrefixRef(key=key, parent=parent, num_tokens=n))
            self._parent_len.setdefault(key, parent_len)
            parent, parent_len = key, n
        return tuple(refs)

    def _apply_priority(self, key: str, workers) -> None:
        p = self._prio.get(key)
        tokens = self._tokens(key) if p is not None else None
        if tokens is None:
            return
        for w in workers:
            w.set_priority(tokens, p, self._parent_len.get(key, 0))

    def _submit(self, pid: Hashable) -> None:
        prog = self._progs[pid]
        i = prog.next_call
        call = prog.program.calls[i]
        prompt, output, prefixes, _ = prog.calls[i]
        for key, n in prefixes:
            self._tokens_of.setdefault(key, (prompt, n))
        seen = max((n for key, n in prefixes if key in self._seen), default=0)
        cid = f"{pid}#{i}"
        if not output:  # every call generates at least one token
            output = pack_tokens([0])
        req = SimRequest(call_id=cid, program_id=pid, tokens=prompt, output_ids=output,
                         submitted_s=self.clock.now_s(), seen_before=seen)
        self._reqs[cid] = req
        self.sched.apply(CallSubmitted(program_id=pid, call_id=cid, step=self.plan.step_of(call.agent),
                                       prefixes=self._refs(prefixes), prompt_tokens=req.prompt_len,
                                       expected_output_tokens=req.output_len))
        self._project(pid)

    def _project(self, pid: Hashable, next_at_s: float | None = None) -> None:
        """Tell Belady's oracle this program's future (only the belady policy reads it): its next
        call is read at `next_at_s` (default now: it was just submitted), later ones after their
        LLM and tool times. Called on every submission and every tool start."""
        if self.policy_name != "belady":
            return
        prog = self._progs[pid]
        if not self.oracle.learnt(pid):
            calls = prog.program.calls
            llm_s, tool_s = [], []
            for j, (prompt, output, prefixes, _) in enumerate(prog.calls):
                call = calls[j]
                if call.latency_s is not None:  # as recorded
                    llm_s.append(call.latency_s)
                else:  # the call alone on a worker, its history cached
                    n, cached = len(prompt) // B, max((m for _, m in prefixes), default=0)
                    step = self.cost.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=1,
                                                      decode_context_tokens=n)
                    llm_s.append(self.cost.prefill_time_s(n - cached, cached) + len(output) // B * step)
                tool_s.append(call.tool.duration_s if call.tool is not None and j + 1 < len(calls) else 0.0)
            self.oracle.learn(pid, program_paths(prog.calls, B), llm_s, tool_s)
        self.oracle.refresh(pid, prog.next_call, self.clock.now_s() if next_at_s is None else next_at_s)
        if prog.next_call > 0:
            # The sequence the last call just cached sits in the caches with insert's priority (0):
            # give it its next use now, before this event's admissions evict (the scheduler's
            # decision, which carries the same value, comes after them).
            key = prog.calls[prog.next_call - 1][3]
            self._prio[key] = priority_of_steps(self.oracle.next_use_at_s(key))
            self._apply_priority(key, self.workers.values())

    # ---- workers -----------------------------------------------------------------------------
    def _kick(self, w: SimWorker) -> None:
        now = self.clock.now_s()
        if w.busy_until is not None:
            return
        admitted = w.admit(now, self._rank)
        for req in admitted:
            self.sched.apply(CallStarted(call_id=req.call_id, worker=w.name, gpu_hit_tokens=req.gpu_hit,
                                         host_hit_tokens=req.host_hit))
            self.rec.call_prefilled(prompt=req.prompt_len, gpu_hit=req.gpu_hit, host_hit=req.host_hit,
                                    seen_before=req.seen_before)
            if req.call_id.endswith("#0"):  # a program's first call: the wait before it started
                self.rec.program_started(self._progs[req.program_id].arrival_s, now)
        if not w.has_work():
            return
        steps = w.decode_only_steps()
        if steps > 1 and self._heap:  # do not run past the next event: it may change the batch
            prefill, ctx, n_dec, dec_ctx, _ = w.plan_iteration(now)
            one = self.cost.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=n_dec,
                                             decode_context_tokens=dec_ctx)
            room = self._heap[0][0] - now
            steps = max(1, min(steps, int(room / one) if one > 0 else steps))
        res = w.run_iteration(now, decode_steps=steps)
        w.busy_until = now + res.duration_s
        self._push(w.busy_until, "iteration", w.name, res)

    def _on_iteration(self, name: str, res) -> None:
        w = self.workers[name]
        w.busy_until = None
        for req in res.first_tokens:
            self.rec.first_token(req.submitted_s, req.first_token_s, first_call=req.call_id.endswith("#0"))
        for req in res.finished:
            self._call_done(w, req)
        self.sched.apply(WorkerUpdate(worker=w.name, kv_capacity_tokens=w.capacity, kv_used_tokens=w.used_tokens,
                                      host_capacity_tokens=w.host_capacity,
                                      h2d_tokens_per_s=self.cost.h2d_tokens_per_s,
                                      prefill_tokens_per_s=self._prefill_tokens_per_s, queue_depth=len(w.waiting)))
        self._kick(w)

    def _call_done(self, w: SimWorker, req: SimRequest) -> None:
        pid = req.program_id
        prog = self._progs[pid]
        i = prog.next_call
        _, _, prefixes, full_key = prog.calls[i]
        full = req.full  # built once by the worker when it cached the sequence
        self._tokens_of[full_key] = (full, len(full) // B)
        for key, _ in prefixes:
            self._seen.add(key)
        self._seen.add(full_key)
        cached = self._refs(prefixes + [(full_key, len(full) // B)])
        for key, _ in prefixes:  # the sequence was just inserted: its prefixes keep their priorities
            self._apply_priority(key, (w,))
        del self._reqs[req.call_id]
        self.sched.apply(CallFinished(call_id=req.call_id, worker=w.name, output_tokens=req.output_len,
                                      cached=cached))
        call = prog.program.calls[i]
        prog.next_call += 1
        if call.tool is not None and prog.next_call < len(prog.program.calls):
            self.sched.apply(ToolStarted(program_id=pid, step=self.plan.tool_step, tool=call.tool.kind.value))
            self._push(self.clock.now_s() + call.tool.duration_s, "tool_done", pid, call.tool.kind.value,
                       call.tool.duration_s)
            self._project(pid, self.clock.now_s() + call.tool.duration_s)  # the next call's time is known now
        elif prog.next_call < len(prog.program.calls):
            self._submit(pid)
        else:
            self._program_done(pid)

    def _on_tool_done(self, pid: Hashable, tool: str, duration_s: float) -> None:
        self.sched.apply(ToolFinished(program_id=pid, step=self.plan.tool_step, tool=tool, duration_s=duration_s))
        self._submit(pid)

    def _program_done(self, pid: Hashable) -> None:
        prog = self._progs.pop(pid)
        self.rec.program_done(prog.arrival_s, self.clock.now_s())
        self.sched.apply(ProgramFinished(program_id=pid))
        self.oracle.forget(pid)
        if self._loop is not None:
            for t, program in self._loop.on_finish(self.clock.now_s()):
                self._push(t, "arrive", self._n_arrived, program)
                self._n_arrived += 1
        if self.on_progress is not None:
            self.on_progress(1)

    def _tokens(self, key: str) -> bytes | None:
        entry = self._tokens_of.get(key)
        if entry is None:
            return None
        seq, n = entry
        return seq if len(seq) == n * B else seq[: n * B]

    def _on_transfer(self, name: str, key: str) -> None:
        w = self.workers[name]
        tokens = self._tokens(key)
        if tokens is None:
            return
        w.insert_cached(tokens)
        self._apply_priority(key, (w,))
        self.sched.apply(PrefixMoved(worker=name, key=key, tier="gpu"))
        self._kick(w)

    # ---- decisions ---------------------------------------------------------------------------
    def _decide(self) -> None:
        d = self.sched.step()
        if d.empty:
            return
        now = self.clock.now_s()
        for u in d.unpins:
            w = self.workers.get(u.worker) if u.worker else None
            if w is not None:
                w.unpin(u.prefix, self._tokens_of.get(u.prefix, (b"", 0))[1])
        for p in d.pins:
            w = self.workers.get(p.worker) if p.worker else None
            tokens = self._tokens(p.prefix)
            if w is not None and tokens is not None:
                w.pin(p.prefix, tokens)
        if d.pins or d.unpins:
            self.rec.pinned(now, sum(w.pinned_tokens for w in self.workers.values()))
        if d.unpins:  # memory came free: queued calls may fit now
            for w in self.workers.values():
                if w.waiting:
                    self._kick(w)
        for pr in sorted(d.priorities, key=lambda x: self._parent_len.get(x.prefix, 0)):  # shallow first
            self._prio[pr.prefix] = pr.priority
            self._apply_priority(pr.prefix, self.workers.values())
        for f in d.prefetches:
            w = self.workers.get(f.worker)
            tokens = self._tokens(f.prefix)
            if w is None or tokens is None:
                continue
            lands = w.prefetch(now, tokens)  # on the worker's one host link, behind its writes
            if lands is not None:
                self._push(lands, "transfer", w.name, f.prefix)
        if d.admit:
            self._rank = {c: i for i, c in enumerate(d.admit)}
        for r in d.routes:
            req = self._reqs.get(r.call_id)
            if req is None:
                continue
            name = r.workers[0] if r.workers else next(iter(self.workers))
            w = self.workers[name]
            w.waiting.append(req)
            self._kick(w)
        if d.admit:
            for w in self.workers.values():
                if w.waiting:
                    self._kick(w)
