"""`SimEngine`: the simulated SGLang worker behind the `Engine` interface, in (scaled) real time.

The replay (runtime/replay/engine.py) owns its clock and jumps from event to event. Here the
callers are real: the executor or the service's worker agent call `generate()` whenever their
programs need a call, and `apply()` whenever a decision arrives. So one background task plays the
worker's iterations against the wall clock, `time_scale` simulated seconds per wall second:

    generate() ──enqueue SimRequest──> worker.waiting                         (simulated time t)
                                            │
    ┌─ loop ────────────────────────────────▼────────────────────────────────────────────────┐
    │ land prefetches due by t ─> admit (scheduler's rank, then FCFS) ─> plan + run one      │
    │ iteration [t, t+dt) (the cost model's dt) ─> sleep (t+dt - now)/time_scale wall seconds │
    │ ─> publish: first tokens, tokens so far, finished calls ─> t = max(t+dt, now)           │
    │ no work: sleep until woken (a request, a decision, a cancel) or the next prefetch lands │
    └────────────────────────────────────────────────────────────────────────────────────────┘
    each generate() stream wakes on its request's progress: TokenChunk ... then GenerateResult

The worker's state is advanced when an iteration *starts* (as the replay does) and made visible
when it *ends*: a stream never sees a token before its simulated time. A request arriving during
an iteration waits for the next one (SGLang admits at iteration boundaries too). When the loop
falls behind the wall clock (Python overhead), the next iteration starts at "now", so simulated
time never runs ahead of the wall clock; with an injected clock whose sleep advances it exactly
(tests), every reported duration equals the cost model's.

Decode-only stretches can run several decode steps per wake-up (`min_wall_step_s`): at large
time scales one step is microseconds of wall time, and a wake-up per step would measure the event
loop, not the model. A request that arrives during such a stretch waits for its end (at most
`min_wall_step_s` of wall time), as the replay's multi-step iterations do.

Namespaces: a request's namespace (a tenant) keys its tokens in the caches (`namespaced`): equal
prompts of two namespaces share nothing, as with SGLang's `extra_key`.

Prefixes: keys are learnt from requests (`PrefixRef.num_tokens` leading tokens of the prompt) and
from what finished calls cached (prompt + output, `prefix_key`); a decision naming an unknown key
is ignored. Priorities are remembered per key and re-applied whenever the key's tokens are
inserted again (a decision carries only the priorities that changed), as the replay does.

Tokens: `encode_chat` is a toy tokenizer (whitespace words hashed to ids, line breaks and role
markers as special ids), *not* a real model's tokenizer; it is deterministic and invertible for
the words it has seen and for the generated words (up to runs of spaces), so an agent's next
prompt (its history plus the decoded output) starts with the previous prompt + output, exactly as
a real chat template's would.

Output: `forced_output_ids` if the request has them (replays), else the scripted `reply(request,
prompt text)` if the engine has one (tests and demos: a "model" that answers what a test needs),
else `max_new_tokens` pseudo-words seeded by the call id.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass

from agentflow.runtime.clock import Clock, MonotonicClock
from agentflow.runtime.decision import Decision
from agentflow.runtime.engines.base import (
    EngineError,
    EngineLoad,
    GenerateRequest,
    GenerateResult,
    TokenChunk,
    prefix_key,
)
from agentflow.runtime.engines.prefix_book import PrefixBook
from agentflow.runtime.engines.sim.interfaces import CostModel
from agentflow.runtime.engines.sim.radix import TOKEN_BYTES as B
from agentflow.runtime.engines.sim.radix import pack_tokens
from agentflow.runtime.engines.sim.worker import SimRequest, SimWorker
from agentflow.runtime.prefixes import PrefixRef

# ---- the toy tokenizer -------------------------------------------------------------------------
ROLE_IDS = {"system": 1, "user": 2, "assistant": 3, "tool": 4}
END_ID = 5  # closes a message
NEWLINE_ID = 6  # line breaks survive a round trip (answers with code blocks parse the same)
_WORD_BASE = 1000  # word ids start here
_WORD_SPAN = 1 << 24
# generated text draws from these words (their ids decode back to them)
_VOCAB = ("the", "agent", "reads", "code", "and", "writes", "a", "patch", "then", "runs", "tests", "plan",
          "review", "fix", "result", "answer", "because", "data", "file", "line", "function", "value",
          "check", "error", "output", "input", "model", "cache", "step", "next", "done", "ok", "yes", "no",
          "more", "less", "first", "last", "call", "tool", "search", "query", "document")


def word_id(word: str) -> int:
    """The toy tokenizer's id of one whitespace-separated word."""
    h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
    return _WORD_BASE + h % _WORD_SPAN


_VOCAB_IDS = tuple(word_id(w) for w in _VOCAB)


def namespaced(prompt: bytes, namespace: str) -> bytes:
    """The packed prompt as the caches key it in `namespace`: its first token is replaced by a hash of
    the namespace and that token, so that sequences of different namespaces part at their first
    token and never share a cached node (SGLang's `extra_key` does the same inside its radix tree: one
    tenant neither hits on, nor learns from its hits whether, another tenant's prompt is cached);
    the length, and so every cost, is unchanged. The default namespace keeps the tokens as they are."""
    if not prompt or namespace in ("", "default"):
        return prompt
    head = hashlib.blake2b(namespace.encode() + b"\0" + prompt[:B], digest_size=B).digest()
    return head + prompt[B:]


def pseudo_output(call_id: Hashable, num_tokens: int) -> tuple[int, ...]:
    """Deterministic 'generated' ids for a call: words of a small vocabulary, seeded by the call id."""
    seed = int.from_bytes(hashlib.blake2b(repr(call_id).encode(), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    return tuple(rng.choice(_VOCAB_IDS) for _ in range(max(1, num_tokens)))


@dataclass(slots=True)
class _Pending:
    """One generate() stream: its request and what the loop has published of it."""

    request: GenerateRequest
    sim: SimRequest
    output_ids: tuple[int, ...]
    changed: asyncio.Event
    error: str | None = None  # the engine closed under it
    admitted_s: float | None = None
    visible_tokens: int = 0  # generated tokens whose iteration has ended
    finished_s: float | None = None


class SimEngine:
    """A simulated SGLang worker (one GPU) serving `generate()` calls in scaled real time."""

    def __init__(self, *, name: str = "w0", cost: CostModel, capacity_tokens: int | None = None,
                 host_capacity_tokens: int | None = None, page_size: int = 1, chunk_tokens: int = 8192,
                 max_running: int = 256, strategy: str = "lru", time_scale: float = 1.0,
                 clock: Clock | None = None, sleep: Callable[[float], Awaitable[None]] | None = None,
                 min_wall_step_s: float = 0.002, max_known_prefixes: int = 65536,
                 reply: Callable[[GenerateRequest, str], str] | None = None, charge_link: bool = True):
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0 (got {time_scale})")
        self.name = name
        self.cost = cost
        self.time_scale = float(time_scale)
        self.worker = SimWorker(name, cost, capacity_tokens=capacity_tokens, host_capacity_tokens=host_capacity_tokens,
                                page_size=page_size, chunk_tokens=chunk_tokens, max_running=max_running,
                                strategy=strategy, charge_link=charge_link)
        self._clock = clock or MonotonicClock()  # wall time; scaled by time_scale
        self._sleep = sleep or asyncio.sleep  # wall seconds
        self._wall0 = self._clock.now_s()
        self._t = 0.0  # simulated time the loop has reached
        self.min_wall_step_s = min_wall_step_s
        self.prefill_tokens_per_s = 8192 / max(1e-9, cost.prefill_time_s(8192))
        self._pending: dict[Hashable, _Pending] = {}
        self._rank: dict[Hashable, int] = {}
        # prefix key -> (a packed sequence that starts with it, its length in tokens); oldest first
        self.book = PrefixBook(max_known_prefixes, pinned=lambda key: key in self.worker.pins)
        self._transfers: list[tuple[float, str]] = []  # (lands at, simulated s; prefix key)
        self._words: dict[int, str] = dict(zip(_VOCAB_IDS, _VOCAB, strict=True))
        self._ids: dict[str, int] = dict(zip(_VOCAB, _VOCAB_IDS, strict=True))
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.iterations = 0
        self.reply = reply  # a scripted "model": prompt text -> answer text (tests, demos)
        # told (call id, device-hit tokens, host-hit tokens) when a request is admitted (LocalEngine's hook)
        self.admission_listeners: list[Callable[[Hashable, int, int], None]] = []

    # ---- time --------------------------------------------------------------------------------
    def now_s(self) -> float:
        """Simulated seconds since the engine started."""
        return max(self._t, (self._clock.now_s() - self._wall0) * self.time_scale)

    # ---- tokens ------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Toy chat template: per message [role id] words... [END]; then [assistant id] (the
        generation prompt). Not a real tokenizer: whitespace words hashed to ids."""
        ids: list[int] = []
        for m in messages:
            role = m.get("role", "user")
            if role not in ROLE_IDS:
                raise EngineError(f"unknown chat role {role!r}; valid: {', '.join(ROLE_IDS)}")
            ids.append(ROLE_IDS[role])
            ids.extend(self._encode_text(m.get("content", "")))
            ids.append(END_ID)
        ids.append(ROLE_IDS["assistant"])
        return ids

    def _encode_text(self, text: str) -> list[int]:
        ids = self._ids
        out: list[int] = []
        for n, line in enumerate(text.strip().split("\n")):
            if n:
                out.append(NEWLINE_ID)
            for w in line.split():
                i = ids.get(w)
                if i is None:  # hash each distinct word once: prompts re-encode whole conversations
                    i = ids[w] = word_id(w)
                    self._words.setdefault(i, w)
                out.append(i)
        return out

    def decode(self, token_ids: Sequence[int]) -> str:
        """Words joined by spaces, line breaks kept (role and end markers dropped)."""
        out: list[str] = []
        for i in token_ids:
            if i == NEWLINE_ID:
                out.append("\n")
            elif i >= _WORD_BASE:
                word = self._words.get(i, f"<{i}>")
                out.append(word if not out or out[-1] == "\n" else " " + word)
        return "".join(out)

    # ---- generate ----------------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk | GenerateResult]:
        # request.reuse / reuse_namespace (cross-agent KV reuse) are ignored: the simulated worker holds no KV
        if self._closed:
            raise EngineError(f"engine {self.name} is closed")
        if not request.prompt_ids:
            raise EngineError(f"call {request.call_id!r}: empty prompt")
        if request.call_id in self._pending:
            raise EngineError(f"call {request.call_id!r} is already running on {self.name}")
        prompt = namespaced(pack_tokens(request.prompt_ids), request.namespace)
        out_ids = request.forced_output_ids or self._output_of(request)
        sim = SimRequest(call_id=request.call_id, program_id=request.program_id, tokens=prompt,
                         output_ids=pack_tokens(out_ids), submitted_s=self.now_s())
        self.book.learn(request.prefixes, request.namespace, prompt)
        p = _Pending(request=request, sim=sim, output_ids=tuple(out_ids), changed=asyncio.Event())
        self._pending[request.call_id] = p
        self.worker.waiting.append(sim)
        self._kick()
        sent = 0
        done = False
        try:
            while True:
                await p.changed.wait()
                p.changed.clear()
                if p.error is not None:
                    raise EngineError(p.error)
                if p.visible_tokens > sent:
                    new = out_ids[sent:p.visible_tokens]
                    sent = p.visible_tokens
                    yield TokenChunk(call_id=request.call_id, token_ids=tuple(new), text=self._chunk_text(new))
                if p.finished_s is not None:
                    done = True
                    yield self._result(p, out_ids)
                    return
        finally:
            self._pending.pop(request.call_id, None)
            if not done:
                self._cancel(sim)

    def _output_of(self, request: GenerateRequest) -> tuple[int, ...]:
        """What the call "generates": the scripted reply (cut to max_new_tokens), else
        `max_new_tokens` pseudo-words seeded by the call id."""
        if self.reply is not None:
            ids = self._encode_text(self.reply(request, self.decode(request.prompt_ids)))
            if ids:
                return tuple(ids[: max(1, request.max_new_tokens)])
        return pseudo_output(request.call_id, request.max_new_tokens)

    def _chunk_text(self, ids: Sequence[int]) -> str:
        return "".join("\n" if i == NEWLINE_ID else " " + self._words.get(i, f"<{i}>") for i in ids)

    def _result(self, p: _Pending, out_ids: tuple[int, ...]) -> GenerateResult:
        sim, req = p.sim, p.request
        full = tuple(req.prompt_ids) + tuple(out_ids)
        parent = req.prefixes[-1].key if req.prefixes else None
        full_ref = PrefixRef(key=prefix_key(req.namespace, full), parent=parent, num_tokens=len(full),
                             namespace=req.namespace)
        return GenerateResult(
            call_id=req.call_id, output_ids=tuple(out_ids), text=self.decode(out_ids),
            prompt_tokens=sim.prompt_len, cached_tokens=sim.gpu_hit, host_tokens=sim.host_hit,
            queued_s=(p.admitted_s or sim.submitted_s) - sim.submitted_s,
            ttft_s=(sim.first_token_s or p.finished_s) - sim.submitted_s,
            duration_s=p.finished_s - sim.submitted_s, finish_reason="length",
            cached=tuple(req.prefixes) + (full_ref,))

    def _cancel(self, sim: SimRequest) -> None:
        """Drop a request wherever it is; its private KV is freed (the partial sequence is not
        cached: SGLang would keep the computed part in its tree, an optimisation left out)."""
        w = self.worker
        if any(r is sim for r in w.waiting):
            w.waiting = [r for r in w.waiting if r is not sim]
        for name in ("prefilling", "decoding"):
            lst = getattr(w, name)
            if any(r is sim for r in lst):
                setattr(w, name, [r for r in lst if r is not sim])
                w.private_tokens -= sim.reserved
                sim.reserved = 0
                if sim.node is not None:
                    w.gpu.dec_lock_ref(sim.node)
                    sim.node = None
        self._kick()  # memory came free: waiting calls may fit

    # ---- the loop ----------------------------------------------------------------------------
    def _kick(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            if self._closed:
                return
            try:
                self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-engine-{self.name}")
            except RuntimeError:  # no running loop (apply() from sync code): the next generate() starts it
                self._task = None

    async def _run(self) -> None:
        w = self.worker
        while True:
            self._wake.clear()
            self._t = self.now_s()
            self._land_transfers()
            for sim in w.admit(self._t, self._rank):
                p = self._pending.get(sim.call_id)
                if p is not None:
                    p.admitted_s = self._t
                for listener in self.admission_listeners:  # as LocalEngine's: the call starts now
                    listener(sim.call_id, sim.gpu_hit, sim.host_hit)
            if not w.has_work():
                if not w.waiting and not self._transfers:
                    self._task = None
                    return  # idle: the next generate() starts a new loop
                await self._idle()
                continue
            start = self._t
            res = w.run_iteration(start, decode_steps=self._decode_steps(start))
            self.iterations += 1
            end = start + res.duration_s
            await self._sleep_until(end)
            self._t = max(end, self.now_s())
            for sim in res.finished:
                self._on_finished(sim, end)
            self._publish(end)

    def _decode_steps(self, now: float) -> int:
        steps = self.worker.decode_only_steps()
        if steps <= 1:
            return 1
        _, _, n_dec, dec_ctx, _ = self.worker.plan_iteration(now)
        one = self.cost.iteration_time_s(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=n_dec,
                                         decode_context_tokens=dec_ctx)
        if one <= 0:
            return steps
        return max(1, min(steps, int(self.min_wall_step_s * self.time_scale / one)))

    async def _sleep_until(self, t_s: float) -> None:
        wall = (t_s - self.now_s()) / self.time_scale
        if wall > 0:
            await self._sleep(wall)
        else:
            await asyncio.sleep(0)  # let streams and callers run between iterations

    async def _idle(self) -> None:
        """Wait for a wake-up, or until the next prefetch lands or host write frees its KV."""
        dues = [t for t, _ in self._transfers]
        write = self.worker.next_write_s()
        if write is not None and self.worker.waiting:  # a path locked under write may be what blocks
            dues.append(write)
        if not dues:
            await self._wake.wait()
            return
        due = min(dues)
        sleeper = asyncio.ensure_future(self._sleep_until(due))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker):
                t.cancel()

    def _publish(self, end: float) -> None:
        for p in self._pending.values():
            sim = p.sim
            visible = min(sim.generated, sim.output_len)
            if visible > p.visible_tokens or p.finished_s is not None:
                p.visible_tokens = visible
                p.changed.set()

    def _on_finished(self, sim: SimRequest, end: float) -> None:
        p = self._pending.get(sim.call_id)
        if p is None:
            return  # cancelled while its last iteration ran: the sequence is cached all the same
        p.finished_s = end
        p.visible_tokens = sim.output_len
        req = p.request
        full = sim.full
        key = prefix_key(req.namespace, tuple(req.prompt_ids) + p.output_ids)
        last = req.prefixes[-1] if req.prefixes else None
        self.book.remember(key, req.namespace, full, len(full) // B, last.num_tokens if last else 0)
        if req.priority is not None:
            self.worker.set_priority(full, req.priority, last.num_tokens if last else 0)
        for ref in req.prefixes:  # the sequence was just inserted: its prefixes keep their priorities
            self._apply_priority(ref.key)
        p.changed.set()

    # ---- prefixes ------------------------------------------------------------------------------
    def _tokens(self, key: str) -> bytes | None:
        known = self.book.get(key)
        return known.tokens() if known is not None else None

    def _apply_priority(self, key: str) -> None:
        known = self.book.get(key)
        if known is not None and known.priority is not None:
            self.worker.set_priority(known.tokens(), known.priority, known.parent_tokens)

    def _land_transfers(self) -> None:
        if not self._transfers:
            return
        now = self.now_s()
        due = [k for t, k in self._transfers if t <= now]
        if not due:
            return
        self._transfers = [(t, k) for t, k in self._transfers if t > now]
        for key in due:
            tokens = self._tokens(key)
            if tokens is not None:
                self.worker.insert_cached(tokens, now=now)
                self._apply_priority(key)

    # ---- decisions -----------------------------------------------------------------------------
    def apply(self, decision: Decision) -> None:
        """The replay's semantics for this worker: unpins, pins, priorities (shallow first, each
        above its parent), prefetches (host -> GPU transfers that land after the h2d time), and
        the admission order. Routes are the caller's business (it chose this engine).
        `decision.reuse` (cross-agent KV reuse hints) is ignored: the simulated worker has no KV
        to place; only the local engine applies it."""
        mine = (None, self.name)
        w = self.worker
        self._land_transfers()
        for u in decision.unpins:
            if u.worker in mine:
                known = self.book.get(u.prefix)
                w.unpin(u.prefix, known.num_tokens if known is not None else 0)
        for pin in decision.pins:
            tokens = self._tokens(pin.prefix)
            if pin.worker in mine and tokens is not None:
                w.pin(pin.prefix, tokens)
        for pr in sorted(decision.priorities, key=lambda x: self.book.depth(x.prefix)):
            if self.book.set_priority(pr.prefix, pr.priority) is not None:
                self._apply_priority(pr.prefix)
        now = self.now_s()
        for f in decision.prefetches:
            tokens = self._tokens(f.prefix)
            if f.worker != self.name or tokens is None:
                continue
            if all(k != f.prefix for _, k in self._transfers):
                lands = w.prefetch(now, tokens)  # on the worker's one host link, behind its writes
                if lands is not None:
                    self._transfers.append((lands, f.prefix))
        if decision.admit:
            self._rank = {c: i for i, c in enumerate(decision.admit)}
        if decision.unpins or decision.admit or decision.prefetches:
            self._kick()

    def load(self) -> EngineLoad:
        w = self.worker
        self._land_transfers()
        resident = ()
        if len(self.book) <= 256:  # "if cheap to list": a peek per key, and heartbeats ask often
            resident = tuple(k for k, kp in self.book.items()
                             if kp.num_tokens and w.gpu.peek_prefix(kp.tokens()).num_tokens >= kp.num_tokens)
        return EngineLoad(kv_capacity_tokens=w.capacity, kv_used_tokens=w.used_tokens,
                          host_capacity_tokens=w.host_capacity, h2d_tokens_per_s=self.cost.h2d_tokens_per_s,
                          prefill_tokens_per_s=self.prefill_tokens_per_s, queue_depth=len(w.waiting),
                          running=len(w.prefilling) + len(w.decoding), pinned_tokens=w.pinned_tokens,
                          cached_prefixes=resident)

    async def aclose(self) -> None:
        self._closed = True
        for p in self._pending.values():
            p.error = f"engine {self.name} closed"
            p.changed.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def __repr__(self) -> str:
        return f"SimEngine({self.name!r}, cost={self.cost.name!r}, time_scale={self.time_scale})"


__all__ = ["END_ID", "NEWLINE_ID", "ROLE_IDS", "SimEngine", "pseudo_output", "word_id"]
