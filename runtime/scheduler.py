"""The program-level scheduler: events in, one `Decision` per scheduling step out.

    events ──apply()──> state (programs, calls, prefixes, pins, workers) + ProgramIndex
                                 │
    step() ──> snapshot ──> policy (pure) ──> Decision: admit order, eviction priorities,
                                               pins / unpins, prefetches, routes

It is engine-agnostic (the simulated worker, the local engine, the SGLang plugin and the gRPC
service all feed it events and apply its decisions) and deterministic: time comes from an
injected clock, iteration orders are insertion orders, and nothing is random.

Work per step is proportional to what changed since the previous step (the dirty prefixes and
programs), not to the number of live programs.

Safety rules (each one tested under randomised event sequences):
  * pinned tokens on a worker never exceed `pin_cap_share` of its KV pool: a new pin that does not
    fit displaces pins of lower expected payoff, or is not made;
  * when the first call in admission order cannot fit on its worker, pins there are released,
    lowest expected payoff first (payoff = P(the tool returns within the pin's remaining time,
    given how long it has run) x the pin's benefit), until it fits or none are left;
  * every pin ends: at its TTL (checked every step, so it outlives it by less than one step), at
    the program's next call, when the program ends or is cancelled, or when its worker is lost;
  * no call waits forever: admission orders are FCFS by call or program, or fair share with aging.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Hashable
from collections import OrderedDict
from dataclasses import dataclass, replace
from types import MappingProxyType

from agentflow.errors import PositionError
from agentflow.graph.model import StepGraph, StepKind
from agentflow.graph.position import Position, enter_step
from agentflow.graph.tracker import ProgramIndex
from agentflow.runtime.admission_queue import AdmissionQueue
from agentflow.runtime.clock import Clock
from agentflow.runtime.decision import (
    Decision, EvictionPriority, Pin, Prefetch, Route, Unpin, UnpinReason, priority_of_steps,
)
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, Event, PrefixMoved, ProgramArrived, ProgramFinished, ToolFinished,
    ToolStarted, WorkerLost, WorkerUpdate,
)
from agentflow.runtime.policies import Policy
from agentflow.runtime.policies.admission import overdue_key
from agentflow.runtime.policies.programs import active_footprint_tokens, footprint_tokens
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.remaining_work import RemainingWork, RemainingWorkConfig
from agentflow.runtime.reuse_book import ReuseBook
from agentflow.runtime.state import (
    CallState, PinState, PrefixState, ProgramState, Snapshot, ToolCall, WorkerState,
)
from agentflow.runtime.tool_stats import ToolStats, ToolStatsConfig


class SchedulerError(PositionError):
    """An event the scheduler cannot apply (unknown program or call, a duplicate)."""


DEFAULT_TENANT = "default"
TOOL_SCOPE_SEP = "\x1f"  # tenant<SEP>tool: a separator no printable tool name holds
_TENANT_GRAPHS_KEPT = 4096


def tool_scope(tenant: str | None) -> str:
    """What a program's tool names are prefixed with in the learned statistics: nothing in the
    default tenant (one trust domain: in-process runs, replays, an open service), else the tenant,
    so that one tenant's tool durations never shape another's time-to-live or prefetch timing."""
    return "" if not tenant or tenant == DEFAULT_TENANT else f"{tenant}{TOOL_SCOPE_SEP}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    pin_cap_share: float = 0.5  # pinned tokens never exceed this share of a worker's KV pool
    admit_limit: int = 64  # how many waiting calls an admission order lists
    tool_stats: ToolStatsConfig = ToolStatsConfig()
    remaining_work: RemainingWorkConfig = RemainingWorkConfig()


class Scheduler:
    def __init__(self, policy: Policy, *, clock: Clock, config: SchedulerConfig = SchedulerConfig()):
        self.policy = policy
        self.clock = clock
        self.config = config
        self.index = ProgramIndex()
        self.tool_stats = ToolStats(config.tool_stats)
        self.programs: dict[Hashable, ProgramState] = {}
        self.calls: dict[Hashable, CallState] = {}
        self.waiting: dict[Hashable, None] = {}  # insertion-ordered set
        self._queue = AdmissionQueue()  # the same calls, in the policy's admission order
        self.prefixes: dict[str, PrefixState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.pins: dict[str, PinState] = {}
        self._pin_heap: list[tuple[float, str, int]] = []  # (expires_at_s, prefix, serial)
        self._pin_serial: dict[str, int] = {}
        self._pins_of: dict[Hashable, set[str]] = {}  # program -> its pinned prefixes
        self._step = 0
        self._dirty_prefixes: set[str] = set()
        self._dirty_programs: dict[Hashable, None] = {}
        self._pin_requests: dict[Hashable, None] = {}
        self._unpins: list[Unpin] = []
        self._new_calls: list[Hashable] = []
        self._waiting_changed = False
        self._prefetched: set[tuple[str, str]] = set()
        self._by_load: list[str] | None = None  # workers, least loaded first (per step)
        self._users_of: dict[tuple[Hashable, str], set[str]] = {}  # (program, agent) -> prefix keys
        self._shared: dict[tuple[str, str], set[str]] = {}  # (workflow, agent) -> keys with >1 program
        self.reuse = ReuseBook()  # cross-agent KV reuse: what it needs of programs and calls (reuse_book.py)
        # Program admission (policies/programs.py): parked programs in arrival order, their held calls,
        # the working-set budget and the fault time measured in the current control interval.
        self.remaining = RemainingWork(config.remaining_work)
        self.parked: dict[Hashable, None] = {}
        self._held: dict[Hashable, list[Hashable]] = {}
        self.budget_tokens: float | None = None
        self._fault_s = 0.0
        self._stall_s = 0.0
        self._new_pins: dict[str, Pin] = {}  # made in the current step, not yet in a decision
        self._overdue: set[Hashable] = set()  # waiting calls past the admission policy's max_wait_s
        self._by_submission: list[tuple[float, int, Hashable]] = []  # heap of waiting calls (lazy deletes)
        self._seq = itertools.count()
        self._window_start_s: float | None = None
        self._programs_changed = False
        self.faults = {"fault_tokens": 0, "reload_tokens": 0, "fault_s": 0.0, "stall_s": 0.0}  # totals, for reports
        # Tenants (ProgramArrived.tenant): a workflow is (tenant, name), so what is learned or kept per
        # workflow (steps-to-execution groups, remaining work, a prefix's users) and per tool (durations)
        # is per tenant too; the default tenant keeps the plain names.
        self._tool_scope: dict[Hashable, str] = {}  # program -> its tool-name scope (tool_scope)
        self._tenant_graphs: OrderedDict[tuple[str, int], tuple[StepGraph, StepGraph]] = OrderedDict()

    # ================================================================ events ==================
    def apply(self, event: Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a scheduler event: {event!r}")
        handler(self, event)
        self.reuse.observe(event)  # after the handler: an event it rejected is not recorded

    def _tenant_graph(self, graph: StepGraph, tenant: str) -> StepGraph:
        """The graph as this tenant's workflow: named "tenant/name" (tenant names hold no "/"), so
        two tenants' workflows of the same name never share a group, statistics or prefix users.
        The copy shares the graph's analysis caches."""
        if not tenant or tenant == DEFAULT_TENANT:
            return graph
        key = (tenant, id(graph))
        hit = self._tenant_graphs.get(key)
        if hit is not None and hit[0] is graph:
            self._tenant_graphs.move_to_end(key)
            return hit[1]
        mine = replace(graph, name=f"{tenant}/{graph.name}")
        self._tenant_graphs[key] = (graph, mine)
        if len(self._tenant_graphs) > _TENANT_GRAPHS_KEPT:
            self._tenant_graphs.popitem(last=False)
        return mine

    def _arrived(self, e: ProgramArrived) -> None:
        if e.program_id in self.programs:
            raise SchedulerError(f"program {e.program_id!r} arrived twice")
        g = self._tenant_graph(e.graph, e.tenant)
        pos = Position.start(g)
        now = self.clock.now_s()
        self.programs[e.program_id] = prog = ProgramState(program_id=e.program_id, graph=g, arrival_s=now,
                                                          position=pos)
        if self.policy.programs.holds:
            self.parked[e.program_id] = None
            self._programs_changed = True
        else:
            prog.active, prog.activated_s = True, now
        self.index.add(e.program_id, g, pos)
        scope = self._tool_scope[e.program_id] = tool_scope(e.tenant)
        for node in g.steps.values():
            if node.kind is StepKind.TOOL and node.tool:
                self.tool_stats.hint(scope + node.tool, node.duration_hint_s)
        self._dirty_programs[e.program_id] = None

    def _move(self, prog: ProgramState, step: str) -> None:
        old = self.index.estimate(prog.program_id)
        # A step that already began and starts once more loops back to itself.
        prog.position = enter_step(prog.graph, prog.position, step, again=step in prog.started)
        prog.started = (prog.started & prog.position.active) | {step}
        new = self.index.advance(prog.program_id, prog.position)
        changed = (old.steps_min != new.steps_min).nonzero()[0]
        wf = prog.graph.name
        for i in changed.tolist():
            agent = new.agents[i]
            self._dirty_prefixes.update(self._users_of.get((prog.program_id, agent), ()))
            self._dirty_prefixes.update(self._shared.get((wf, agent), ()))
        self._dirty_programs[prog.program_id] = None

    def _use(self, prog: ProgramState, agent: str, ref: PrefixRef, now: float) -> PrefixState:
        pre = self.prefixes.get(ref.key)
        if pre is None:
            pre = self.prefixes[ref.key] = PrefixState(ref=ref, users={}, last_used_s=now)
        pre.last_used_s = now
        wf = prog.graph.name
        programs = pre.users.setdefault((wf, agent), set())
        if prog.program_id not in programs:
            programs.add(prog.program_id)
            if len(programs) == 2:
                self._shared.setdefault((wf, agent), set()).add(ref.key)
        self._users_of.setdefault((prog.program_id, agent), set()).add(ref.key)
        prog.prefixes.add(ref.key)
        self._dirty_prefixes.add(ref.key)
        return pre

    def _submitted(self, e: CallSubmitted) -> None:
        prog = self._program(e.program_id)
        if e.call_id in self.calls:
            raise SchedulerError(f"call {e.call_id!r} submitted twice")
        node = prog.graph.steps.get(e.step)
        if node is None or node.kind is not StepKind.LLM:
            raise SchedulerError(f"program {e.program_id!r}: '{e.step}' is not an LLM step of '{prog.graph.name}'")
        now = self.clock.now_s()
        was_pinned = bool(self._pins_of.get(prog.program_id))
        self._release_program_pins(prog.program_id, UnpinReason.NEXT_CALL)
        self._move(prog, e.step)
        for ref in e.prefixes:
            self._use(prog, node.agent, ref, now)
        self.calls[e.call_id] = CallState(call_id=e.call_id, program_id=e.program_id, step=e.step, agent=node.agent,
                                          prefixes=tuple(e.prefixes), prompt_tokens=e.prompt_tokens,
                                          expected_output_tokens=e.expected_output_tokens, submitted_s=now,
                                          was_pinned=was_pinned)
        prog.calls.add(e.call_id)
        if prog.active:
            self._enqueue(e.call_id, prog)
        else:  # parked: held at the call boundary until the program is activated
            self._held.setdefault(e.program_id, []).append(e.call_id)
            self._programs_changed = True
        prog.turn += 1
        prog.last_agent = node.agent
        prog.tool = None
        self._pin_requests.pop(prog.program_id, None)

    def _enqueue(self, call_id: Hashable, prog: ProgramState) -> None:
        self.waiting[call_id] = None
        self._overdue.discard(call_id)
        if self.policy.admission.max_wait_s is not None:
            heapq.heappush(self._by_submission, (self.calls[call_id].submitted_s, next(self._seq), call_id))
        self._queue.push(call_id, self.policy.admission.key(self.calls[call_id], prog))
        self._waiting_changed = True
        self._new_calls.append(call_id)

    def _started(self, e: CallStarted) -> None:
        call = self._call(e.call_id)
        call.started_s = self.clock.now_s()
        call.worker = e.worker
        if e.gpu_hit_tokens is not None:
            self._count_fault(call, e)
        prog = self.programs[call.program_id]
        if prog.active and prog.turn > 1 and call.submitted_s >= (prog.activated_s or 0.0):
            # An active program's call after its first waited this long for the engine: a stall. With a
            # host tier, over-commitment shows here more than in faults: a reload is cheap, but calls
            # wait for room in a pool that pinned and running programs fill.
            stall = max(0.0, call.started_s - call.submitted_s)
            self._stall_s += stall
            self.faults["stall_s"] += stall
        if call.program_id in self.parked:  # an engine ran a held call anyway: the program is active
            self._activate(call.program_id, self.clock.now_s())
        if self.waiting.pop(e.call_id, 0) is None:
            self._waiting_changed = True
            self._queue.discard(e.call_id)
            self._overdue.discard(e.call_id)
        self.programs[call.program_id].worker = e.worker

    def _finished(self, e: CallFinished) -> None:
        call = self._call(e.call_id)
        prog = self.programs[call.program_id]
        now = self.clock.now_s()
        if self.waiting.pop(e.call_id, 0) is None:
            self._waiting_changed = True
            self._queue.discard(e.call_id)
            self._overdue.discard(e.call_id)
        del self.calls[e.call_id]
        prog.calls.discard(e.call_id)
        prog.attained_tokens += call.prompt_tokens + e.output_tokens
        before = prog.last_context_tokens
        prog.context_tokens[call.agent] = prog.last_context_tokens = call.prompt_tokens + e.output_tokens
        if before is not None:  # how much longer this call's context is than the program's previous one
            self.remaining.observe_growth(prog.graph.name, prog.last_context_tokens - before)
        self._programs_changed = True
        for c in prog.calls:  # a key may depend on the program's attained service: its waiting calls re-keyed
            if c in self.waiting and c not in self._overdue:
                self._queue.rekey(c, self.policy.admission.key(self.calls[c], prog))
                self._waiting_changed = True
        prog.worker = e.worker
        for ref in e.cached:
            pre = self._use(prog, call.agent, ref, now)
            pre.tiers[e.worker] = "gpu"
            pre.built = True
        deepest = (e.cached or call.prefixes or (None,))[-1]
        if deepest is not None:
            prog.agent_prefix[call.agent] = deepest.key

    def _tool_started(self, e: ToolStarted) -> None:
        prog = self._program(e.program_id)
        self._move(prog, e.step)
        node = prog.graph.steps[e.step]
        agent = node.agent or prog.last_agent
        prog.tool = ToolCall(tool=self._tool_scope.get(e.program_id, "") + e.tool, step=e.step, agent=agent,
                             started_s=self.clock.now_s())
        if agent is not None:
            self._pin_requests[prog.program_id] = None

    def _tool_finished(self, e: ToolFinished) -> None:
        prog = self._program(e.program_id)
        self.tool_stats.observe(self._tool_scope.get(e.program_id, "") + e.tool, e.duration_s)
        if prog.tool is not None and prog.tool.step == e.step:
            prog.tool = None
        self._dirty_programs[prog.program_id] = None

    def _program_finished(self, e: ProgramFinished) -> None:
        prog = self._program(e.program_id)
        self._release_program_pins(e.program_id, UnpinReason.CANCELLED)
        wf = prog.graph.name
        for key in prog.prefixes:
            pre = self.prefixes.get(key)
            if pre is None:
                continue
            for (w, agent), programs in list(pre.users.items()):
                if w == wf and e.program_id in programs:
                    programs.discard(e.program_id)
                    if len(programs) == 1:
                        self._shared.get((w, agent), set()).discard(key)
                    if not programs:
                        del pre.users[(w, agent)]
            self._dirty_prefixes.add(key)
        for agent in prog.graph.agents:
            self._users_of.pop((e.program_id, agent), None)
            self._dirty_prefixes.update(self._shared.get((wf, agent), ()))
        for c in prog.calls:
            self.calls.pop(c, None)
            if self.waiting.pop(c, 0) is None:
                self._waiting_changed = True
                self._queue.discard(c)
                self._overdue.discard(c)
        self.index.remove(e.program_id)
        if not e.cancelled and e.program_id not in self.parked:  # a cancelled (or never started) program's
            # length says nothing of how long programs run
            self.remaining.program_finished(wf, prog.turn)
        self.parked.pop(e.program_id, None)
        self._held.pop(e.program_id, None)
        self._programs_changed = True
        del self.programs[e.program_id]
        self._tool_scope.pop(e.program_id, None)
        self._dirty_programs.pop(e.program_id, None)
        self._pin_requests.pop(e.program_id, None)

    def _worker_update(self, e: WorkerUpdate) -> None:
        w = self.workers.get(e.worker)
        pinned = w.pinned_tokens if w else 0
        self.workers[e.worker] = WorkerState(
            worker=e.worker, kv_capacity_tokens=e.kv_capacity_tokens, kv_used_tokens=e.kv_used_tokens,
            host_capacity_tokens=e.host_capacity_tokens, h2d_tokens_per_s=e.h2d_tokens_per_s,
            prefill_tokens_per_s=e.prefill_tokens_per_s, queue_depth=e.queue_depth, pinned_tokens=pinned)

    def _worker_lost(self, e: WorkerLost) -> None:
        for key, pin in list(self.pins.items()):
            if pin.worker == e.worker:
                self._unpin(key, UnpinReason.WORKER_LOST)
        self.workers.pop(e.worker, None)
        for pre in self.prefixes.values():
            pre.tiers.pop(e.worker, None)
        for prog in self.programs.values():
            if prog.worker == e.worker:
                prog.worker = None
        for call in self.calls.values():
            if call.worker == e.worker:  # in flight there: back to the queue, to be retried elsewhere
                call.worker, call.started_s = None, None
                self._enqueue(call.call_id, self.programs[call.program_id])

    def _prefix_moved(self, e: PrefixMoved) -> None:
        pre = self.prefixes.get(e.key)
        if pre is None:
            return
        if e.tier == "none":
            pre.tiers.pop(e.worker, None)
        elif e.tier in ("gpu", "host"):
            pre.tiers[e.worker] = e.tier
        else:
            raise SchedulerError(f"prefix {e.key!r}: tier must be 'gpu', 'host' or 'none' (got {e.tier!r})")
        self._prefetched.discard((e.key, e.worker))
        if e.tier == "host":  # its users may want it back before their next call
            for programs in pre.users.values():
                for pid in programs:
                    self._dirty_programs[pid] = None

    # ================================================================ pins ====================
    def _unpin(self, key: str, reason: UnpinReason) -> None:
        pin = self.pins.pop(key)
        self._pin_serial.pop(key, None)
        mine = self._pins_of.get(pin.program_id)
        if mine is not None:
            mine.discard(key)
            if not mine:
                del self._pins_of[pin.program_id]
        if pin.worker in self.workers:
            self.workers[pin.worker].pinned_tokens -= pin.num_tokens
        if self._new_pins.pop(key, None) is not None:
            # pinned in this very step (pins give way to the head of the line after step 2 made them):
            # the pin has reached no engine, so it is dropped, not undone. An unpin in the same
            # decision would reach the engine before the pin (engines apply unpins first) and the
            # pin would outlive the scheduler's record of it, holding its KV for ever.
            return
        self._unpins.append(Unpin(prefix=key, worker=pin.worker, program_id=pin.program_id, reason=reason))

    def _release_program_pins(self, program_id: Hashable, reason: UnpinReason) -> None:
        for key in sorted(self._pins_of.get(program_id, ())):
            self._unpin(key, reason)

    def _payoff(self, pin: PinState, now: float) -> float:
        """Expected saving still to come: P(tool ends before expiry | it has run so far) x benefit."""
        xs = self.tool_stats.samples(pin.tool)
        elapsed = now - pin.pinned_at_s
        gone = bisect.bisect_right(xs, elapsed)
        alive = len(xs) - gone
        if alive <= 0:
            return 0.0
        within = bisect.bisect_right(xs, pin.expires_at_s - pin.pinned_at_s) - gone
        return max(0, within) / alive * pin.benefit_s

    def _make_room(self, worker: WorkerState, tokens: int, now: float, min_payoff: float,
                   reason: UnpinReason) -> bool:
        """Release pins on `worker` (lowest payoff first, only below `min_payoff`) until `tokens` fit
        under the cap. True if they fit."""
        cap = self.config.pin_cap_share * worker.kv_capacity_tokens
        if worker.pinned_tokens + tokens <= cap:
            return True
        pins = sorted((self._payoff(p, now), k) for k, p in self.pins.items() if p.worker == worker.worker)
        for payoff, key in pins:
            if payoff >= min_payoff:
                break
            self._unpin(key, reason)
            if worker.pinned_tokens + tokens <= cap:
                return True
        return worker.pinned_tokens + tokens <= cap

    def _pin(self, snap: Snapshot, pid: Hashable, now: float) -> Pin | None:
        prog = self.programs.get(pid)
        if prog is None or prog.tool is None or prog.tool.agent is None:
            return None
        key = prog.agent_prefix.get(prog.tool.agent)
        pre = self.prefixes.get(key) if key else None
        if pre is None or key in self.pins:
            return None
        choice = self.policy.ttl.choose(snap, prog, pre, prog.tool.tool, prog.tool.agent)
        if choice is None or choice.ttl_s <= 0:
            return None
        worker = self.workers.get(prog.worker) if prog.worker else None
        if worker is not None and not self._make_room(worker, pre.num_tokens, now, choice.value_s,
                                                      UnpinReason.PRESSURE):
            return None
        expires = now + choice.ttl_s
        self.pins[key] = PinState(prefix=key, worker=prog.worker, program_id=pid, agent=prog.tool.agent,
                                  tool=prog.tool.tool, num_tokens=pre.num_tokens, pinned_at_s=now,
                                  expires_at_s=expires, benefit_s=choice.benefit_s)
        self._pins_of.setdefault(pid, set()).add(key)
        serial = self._pin_serial[key] = self._pin_serial.get(key, 0) + 1
        heapq.heappush(self._pin_heap, (expires, key, serial))
        if worker is not None:
            worker.pinned_tokens += pre.num_tokens
        return Pin(prefix=key, worker=prog.worker, program_id=pid, ttl_s=choice.ttl_s, expires_at_s=expires,
                   num_tokens=pre.num_tokens)

    # ================================================================ step ====================
    def snapshot(self) -> Snapshot:
        return Snapshot(
            time_s=self.clock.now_s(), programs=MappingProxyType(self.programs),
            calls=MappingProxyType(self.calls), waiting=tuple(self.waiting),
            prefixes=MappingProxyType(self.prefixes), workers=MappingProxyType(self.workers),
            pins=MappingProxyType(self.pins), index=self.index, tool_stats=self.tool_stats,
            remaining=self.remaining,
        )

    def step(self) -> Decision:
        now = self.clock.now_s()
        self._step += 1
        # 1. Pins past their TTL end now (so none outlives it by more than one step).
        while self._pin_heap and self._pin_heap[0][0] <= now:
            _, key, serial = heapq.heappop(self._pin_heap)
            if key in self.pins and self._pin_serial.get(key) == serial:
                self._unpin(key, UnpinReason.TTL_EXPIRED)
        snap = self.snapshot()
        # 2. New pins for programs that just started a tool call.
        self._new_pins = {}
        for pid in self._pin_requests:
            pin = self._pin(snap, pid, now)
            if pin is not None:
                self._new_pins[pin.prefix] = pin
        self._pin_requests.clear()
        # 3. Programs: the working-set budget's control, then parked programs made active.
        activated = self._admit_programs(snap, now) if self.policy.programs.holds else ()
        # 4. Admission order; if its head does not fit on its worker, pins there give way.
        admit: tuple[Hashable, ...] = ()
        self._promote_overdue(now)
        if self._waiting_changed and self.waiting:
            # the policy's order (`order(snap, limit)`), kept incrementally: see admission_queue.py
            admit = tuple(self._queue.first(self.config.admit_limit))
            self._relieve_pressure(admit[0], now)
        self._waiting_changed = False
        # 5. Eviction priorities of prefixes whose users moved.
        priorities = []
        if self._dirty_prefixes:
            for key in sorted(self._dirty_prefixes):
                pre = self.prefixes.get(key)
                if pre is None:
                    continue
                steps = self.policy.eviction.steps(snap, pre)
                if steps is None:
                    continue
                pr = priority_of_steps(steps)
                if pr != pre.priority:
                    pre.priority = pr
                    priorities.append(EvictionPriority(prefix=key, priority=pr, steps_to_execution=steps))
            self._dirty_prefixes.clear()
        # 6. Prefetches for programs whose state changed (each prefix requested once per stay on host).
        prefetches: list[Prefetch] = []
        if self._dirty_programs:
            for p in self.policy.prefetch.prefetches(snap, self._dirty_programs):
                if (p.prefix, p.worker) not in self._prefetched:
                    self._prefetched.add((p.prefix, p.worker))
                    prefetches.append(p)
            self._dirty_programs.clear()
        # 7. Routes for calls that need a worker.
        self._by_load = None
        routes = tuple(self._route(c) for c in self._new_calls if c in self.calls)
        self._new_calls.clear()
        unpins, self._unpins = tuple(self._unpins), []
        pins, self._new_pins = tuple(self._new_pins.values()), {}
        return Decision(step=self._step, time_s=now, admit=admit, priorities=tuple(priorities), pins=pins,
                        unpins=unpins, prefetches=tuple(prefetches), routes=routes,
                        reuse=self.reuse.hints(), activated=activated)

    def _promote_overdue(self, now: float) -> None:
        """Calls that have waited longer than the admission policy's bound go first, oldest first.
        A heap by submission time finds them (a held call is enqueued when its program is activated,
        after calls submitted later)."""
        bound = self.policy.admission.max_wait_s
        if bound is None:
            return
        by_age = self._by_submission
        while by_age and now - by_age[0][0] > bound:
            _, _, c = heapq.heappop(by_age)
            if c in self.waiting and c not in self._overdue:  # (calls that stopped waiting are left here)
                self._overdue.add(c)
                self._queue.rekey(c, overdue_key(self.calls[c]))
                self._waiting_changed = True

    # ================================================================ programs =================
    def _count_fault(self, call: CallState, e: CallStarted) -> None:
        """A fault: the call's deepest prefix that an engine had already held (a finished call cached
        it), less what the engine still held on the GPU: prefilled again or loaded back. A prompt that
        does not extend an earlier one (a new conversation) faults on nothing."""
        built = 0
        for ref in call.prefixes:
            pre = self.prefixes.get(ref.key)
            if pre is not None and pre.built:
                built = max(built, ref.num_tokens)
        built = min(call.prompt_tokens - 1, built)
        fault = max(0, built - e.gpu_hit_tokens)
        if fault <= 0:
            return
        reload = min(fault, e.host_hit_tokens or 0)
        w = self.workers.get(e.worker)
        prefill = w.prefill_tokens_per_s if w else 10_000.0
        h2d = w.h2d_tokens_per_s if w and w.h2d_tokens_per_s > 0 else prefill
        secs = (fault - reload) / max(prefill, 1e-9) + reload / max(h2d, 1e-9)
        self._fault_s += secs
        self.faults["fault_tokens"] += fault - reload
        self.faults["reload_tokens"] += reload
        self.faults["fault_s"] += secs

    def _admit_programs(self, snap: Snapshot, now: float) -> tuple[Hashable, ...]:
        pool = sum(w.kv_capacity_tokens for w in self.workers.values())
        policy = self.policy.programs
        if pool > 0 and policy.control_interval_s is not None:
            if self.budget_tokens is None:
                self.budget_tokens, self._window_start_s, self._fault_s = float(pool), now, 0.0
            elapsed = now - self._window_start_s
            if elapsed >= policy.control_interval_s:
                share = self._fault_s / (elapsed * max(1, len(self.workers)))
                n_active = sum(1 for p in self.programs.values() if p.active)
                stall = self._stall_s / (elapsed * max(1, n_active))
                gs = policy.growth_share
                head = footprint_tokens(snap, self.programs[next(iter(self.parked))], gs) if self.parked else None
                budget = policy.next_budget(self.budget_tokens, fault_share=share, stall_share=stall, waiting_tokens=head,
                                 pool_tokens=pool, active_tokens=active_footprint_tokens(snap, gs))
                self._programs_changed |= budget != self.budget_tokens
                self.budget_tokens, self._window_start_s, self._fault_s, self._stall_s = budget, now, 0.0, 0.0
        if not (self.parked and self._programs_changed):
            return ()
        self._programs_changed = False
        if pool <= 0:  # no worker has told its pool: nothing to size programs against
            activate = tuple(self.parked)
        else:
            budget = self.budget_tokens if self.budget_tokens is not None else math.inf
            activate = policy.plan(snap, tuple(self.parked), budget).activate
        for pid in activate:
            self._activate(pid, now)
        return activate

    def activate(self, pid: Hashable) -> None:
        """Make a parked program active now, whatever the admission policy says (a caller that
        cannot hold its calls: a program with no end signal would be parked for ever behind others)."""
        if pid in self.parked:
            self._activate(pid, self.clock.now_s())

    def _activate(self, pid: Hashable, now: float) -> None:
        prog = self.programs[pid]
        del self.parked[pid]
        prog.active, prog.activated_s = True, now
        for c in self._held.pop(pid, ()):
            call = self.calls.get(c)
            if call is not None and call.started_s is None:
                self._enqueue(c, prog)

    def _relieve_pressure(self, call_id: Hashable, now: float) -> None:
        call = self.calls[call_id]
        prog = self.programs[call.program_id]
        worker = self.workers.get(prog.worker) if prog.worker else None
        if worker is None:
            return
        cached = max((p.num_tokens for p in call.prefixes if p.key in self.prefixes
                      and self.prefixes[p.key].tiers.get(worker.worker) == "gpu"), default=0)
        need = call.prompt_tokens + call.expected_output_tokens - cached
        free = worker.kv_capacity_tokens - worker.kv_used_tokens
        if need <= free:
            return
        pins = sorted((self._payoff(p, now), k) for k, p in self.pins.items()
                      if p.worker == worker.worker and p.program_id != call.program_id)
        for _, key in pins:
            free += self.pins[key].num_tokens
            self._unpin(key, UnpinReason.PRESSURE)
            if need <= free:
                return

    def _route(self, call_id: Hashable) -> Route:
        """Preference: the program's worker (its KV is there), then workers holding the call's
        deepest prefix, then the least loaded. The service replaces this with DualMap routing."""
        call = self.calls[call_id]
        prog = self.programs[call.program_id]
        prefs: list[str] = []
        if prog.worker in self.workers:
            prefs.append(prog.worker)
        for ref in reversed(call.prefixes):
            pre = self.prefixes.get(ref.key)
            if pre is None:
                continue
            for w, tier in sorted(pre.tiers.items(), key=lambda kv: (kv[1] != "gpu", kv[0])):
                if w in self.workers and w not in prefs:
                    prefs.append(w)
        if self._by_load is None:  # once per step: loads change with worker reports, not per call
            ws = self.workers
            self._by_load = sorted(ws, key=lambda w: (ws[w].queue_depth,
                                                      ws[w].kv_used_tokens / max(1, ws[w].kv_capacity_tokens), w))
        rest = [w for w in self._by_load if w not in prefs]
        return Route(call_id=call_id, workers=tuple(prefs + rest))

    # ================================================================ helpers =================
    def _program(self, pid: Hashable) -> ProgramState:
        prog = self.programs.get(pid)
        if prog is None:
            raise SchedulerError(f"program {pid!r} is not known (did it arrive? has it finished?)")
        return prog

    def _call(self, cid: Hashable) -> CallState:
        call = self.calls.get(cid)
        if call is None:
            raise SchedulerError(f"call {cid!r} is not known (was it submitted? has it finished?)")
        return call

    @property
    def pinned_tokens(self) -> dict[str, int]:
        return {w: s.pinned_tokens for w, s in self.workers.items()}

    def steps_to_execution(self, program_id: Hashable) -> dict[str, float]:
        return self.index.estimate(program_id).steps_to_execution()


_HANDLERS = {
    ProgramArrived: Scheduler._arrived, CallSubmitted: Scheduler._submitted, CallStarted: Scheduler._started,
    CallFinished: Scheduler._finished, ToolStarted: Scheduler._tool_started, ToolFinished: Scheduler._tool_finished,
    ProgramFinished: Scheduler._program_finished, WorkerUpdate: Scheduler._worker_update,
    WorkerLost: Scheduler._worker_lost, PrefixMoved: Scheduler._prefix_moved,
}

__all__ = ["DEFAULT_TENANT", "Scheduler", "SchedulerConfig", "SchedulerError", "TOOL_SCOPE_SEP", "tool_scope"]
