"""`LocalEngine`: a real model (SmolLM2-135M by default) served on this CPU behind the `Engine` interface.

It is a small SGLang: continuous batching over a token-slot KV pool with a radix prefix cache,
the same policy interface as the simulated worker, and an optional host tier.

    generate() ──> waiting ──admit──> running ──step──> ... ──finish──> cache the sequence
                    │ (rank from the     │ one step = one packed forward (forward.py):
                    │  last Decision,    │ a prefill chunk of the prompts being read and one
                    │  then FCFS)        │ decode token for every other running sequence
                    │                    │
                    └ match the prompt in the radix tree (cache.py): lock the hit, load back what
                      the host tier holds beyond it, reserve slots for the rest of the prompt and
                      the whole output (evicting unlocked leaves when short; wait when even that
                      is not enough: head of line blocks, as SGLang's FCFS admission)

Threads. The event loop owns every piece of state: the tree, the allocator, the queues. A step's
forward runs in one worker thread (one step at a time), so the loop stays responsive; it touches
only the pool slots of the sequences it was handed, which are locked or private and so never
evicted or freed under it. Hence `apply()` (pins, priorities, prefetches: tree metadata, plus
copies into fresh slots) takes effect at once even while a step runs; a cancelled request's slots
are freed only once the step that may be writing them has returned.

What is cached. A finished sequence caches the tokens whose KV exists: the prompt and all outputs
but the last (the last token was sampled, never fed). Like SGLang 0.5.23, the sequence goes in
with priority 0 and its prompt with 1 (the output tail goes first), then the request's and the
decisions' priorities are applied along the path. Keys name token ranges the engine learns from
requests (`GenerateRequest.prefixes`) and from what it reports cached (`prefix_key`); a decision
naming a key it never saw is ignored. The namespace is the tree's root split: two namespaces never
share a node.

Cross-agent reuse (`Decision.reuse`, or `GenerateRequest.reuse` when the hints come with the call,
as through the scheduler service; reuse/outputs.py). A finished call's output KV is also kept
position-neutral under its request's `reuse_namespace`; a later call with hints whose spans hold
that output is prefilled with `prefill_with_reuse` (the radix hit as exact prefix) instead of the
packed forward. Its KV from the first placed token on is approximate, so only the part before it
enters the tree when it finishes: a prefix hit is always exactly computed KV.

Outputs. Greedy (temperature 0), or sampled with temperature / top-p from a per-request generator
(`seed`); `forced_output_ids` feeds the given tokens whatever the model predicts (replays and
benchmarks: every policy does the same work), still computing their logits as real serving would.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

try:
    import torch
    import transformers  # noqa: F401 - forward.py's modules
except ImportError as exc:  # the local extra is missing: say which one to install
    from agentflow.runtime.engines.base import EngineError
    from agentflow.runtime.engines.local.model import INSTALL_HINT

    raise EngineError(f"the local engine needs torch and transformers ({exc}): {INSTALL_HINT}") from exc

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
from agentflow.runtime.engines.local.cache import Hit, PrefixCache
from agentflow.runtime.engines.local.forward import PackedForward, Segment
from agentflow.runtime.engines.local.model import LoadedModel
from agentflow.runtime.engines.local.pool import KVGeometry, SlotPool
from agentflow.runtime.engines.local.reuse.anchors import AnchorConfig
from agentflow.runtime.engines.local.reuse.outputs import DEFAULT_REUSE_CONFIG, OutputReuse, ReusePlan, ReuseStats
from agentflow.runtime.engines.local.reuse.prefill import ReuseConfig
from agentflow.runtime.engines.prefix_book import PrefixBook
from agentflow.runtime.engines.local.sampling import pick_tokens
from agentflow.runtime.engines.sim.radix import TOKEN_BYTES as B
from agentflow.runtime.engines.sim.radix import pack_tokens
from agentflow.runtime.prefixes import PrefixRef

DEFAULT_KV_CAPACITY_TOKENS = 8192  # 360 MiB of fp32 KV for SmolLM2-135M (45 KiB per token)


@dataclass(slots=True, eq=False)
class _Seq:
    request: GenerateRequest
    tokens: bytes  # the prompt, packed
    max_new: int
    submitted_s: float
    changed: asyncio.Event | None = None  # None: driven synchronously (next_token_logits)
    order: int = 0
    generator: torch.Generator | None = None
    # set at admission
    hit: Hit | None = None
    cached: int = 0  # prompt tokens served from the cache (device, incl. loaded back)
    host_tokens: int = 0  # of those, loaded back from the host tier
    slots: torch.Tensor | None = None  # [0, cached): the tree's; then private, to the last KV we write
    computed: int = 0  # tokens with KV in the pool
    admitted_s: float | None = None
    # progress
    output: list[int] = field(default_factory=list)
    first_token_s: float | None = None
    finished_s: float | None = None
    finish_reason: str | None = None
    cancelled: bool = False
    error: str | None = None
    logits: torch.Tensor | None = None  # the last logits (next_token_logits)
    # cross-agent reuse (reuse/outputs.py)
    reuse: ReusePlan | None = None  # set at admission when hints apply; cleared once prefilled
    exact_tokens: int | None = None  # leading tokens with exact KV (None: all); only these are cached
    reused_tokens: int = 0

    @property
    def prompt_len(self) -> int:
        return len(self.tokens) // B

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_len


class LocalEngine:
    """A transformers causal LM on this machine's CPU with its own KV pool and prefix cache."""

    def __init__(self, model: LoadedModel | None = None, *, name: str = "local0",
                 kv_capacity_tokens: int = DEFAULT_KV_CAPACITY_TOKENS, host_capacity_tokens: int = 0,
                 strategy: str = "lru", chunk_tokens: int = 512, max_running: int = 32,
                 clock: Clock | None = None, prefill_tokens_per_s: float | None = None,
                 h2d_tokens_per_s: float | None = None, max_known_prefixes: int = 65536,
                 reuse: ReuseConfig | None = DEFAULT_REUSE_CONFIG, reuse_anchors: AnchorConfig | None = None,
                 reuse_capacity_tokens: int = 16_384):
        if model is None:
            from agentflow.runtime.engines.local.model import load_smollm2

            model = load_smollm2()
        if chunk_tokens < 1 or max_running < 1:
            raise ValueError(f"chunk_tokens and max_running must be >= 1 (got {chunk_tokens}, {max_running})")
        self.name = name
        self.loaded = model
        self.tokenizer = model.tokenizer
        dtype = next(model.model.parameters()).dtype
        self.geometry = KVGeometry.of_model(model.config, dtype)
        self.pool = SlotPool(self.geometry, kv_capacity_tokens)
        host = SlotPool(self.geometry, host_capacity_tokens) if host_capacity_tokens > 0 else None
        self.cache = PrefixCache(self.pool, strategy=strategy, host=host)
        self.forward = PackedForward(model.model, self.pool)
        self.chunk_tokens = chunk_tokens
        self.max_running = max_running
        measured = _measured_rates(model.name)  # the calibration of this model on this CPU, if any
        self.prefill_tokens_per_s = prefill_tokens_per_s or measured.get("prefill_tokens_per_s", 1000.0)
        self.h2d_tokens_per_s = h2d_tokens_per_s or (measured.get("h2d_tokens_per_s", 0.0) if host else 0.0)
        eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
        self.eos_token_id: int | None = eos
        self._clock = clock or MonotonicClock()
        self._order = itertools.count()
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []
        self._by_call: dict[Hashable, _Seq] = {}
        self._rank: dict[Hashable, int] = {}
        self._cancelled: list[_Seq] = []  # running sequences to drop once the step returns
        self._pins: dict[str, object] = {}  # key -> locked node
        self.book = PrefixBook(max_known_prefixes, pinned=lambda key: key in self._pins)
        self._pinned_tokens = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"local-engine-{name}")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._in_step = False
        self._closed = False
        self.steps = 0
        self.step_log: list[tuple[int, int, int, int, float]] | None = None  # calibration: see log_steps
        # told (call id, device-hit tokens, host-loaded tokens) when a request is admitted: the moment
        # a call starts, with what it found (the scheduler's CallStarted; its working set counts faults
        # from these). Called after each admission round, never from inside it.
        self.admission_listeners: list[Callable[[Hashable, int, int], None]] = []
        # cross-agent KV reuse (Decision.reuse); None: hints are ignored and no output is kept
        self.reuse = (OutputReuse(model.model, self.pool, config=reuse, anchors=reuse_anchors,
                                  capacity_tokens=reuse_capacity_tokens) if reuse is not None else None)

    # ---- tokens --------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if self.tokenizer is None:
            raise EngineError(f"engine {self.name}: model {self.loaded.name} has no tokenizer")
        enc = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        return [int(i) for i in ids]

    def decode(self, token_ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    # ---- generate ------------------------------------------------------------------------------
    def _new_seq(self, request: GenerateRequest, changed: asyncio.Event | None) -> _Seq:
        if self._closed:
            raise EngineError(f"engine {self.name} is closed")
        if not request.prompt_ids:
            raise EngineError(f"call {request.call_id!r}: empty prompt")
        forced = request.forced_output_ids
        max_new = len(forced) if forced else request.max_new_tokens
        if max_new < 1:
            raise EngineError(f"call {request.call_id!r}: max_new_tokens must be >= 1 (got {max_new})")
        need = len(request.prompt_ids) + max_new - 1
        if need > self.pool.capacity_tokens:
            raise EngineError(f"call {request.call_id!r} needs {need} KV tokens; the pool of {self.name} "
                              f"holds {self.pool.capacity_tokens} (raise kv_capacity_tokens)")
        tokens = pack_tokens(request.prompt_ids)
        self.book.learn(request.prefixes, request.namespace, tokens)  # raises on a prefix longer than the prompt
        gen = None
        if request.temperature > 0 and not forced:
            gen = torch.Generator()
            gen.manual_seed(request.seed if request.seed is not None else torch.seed())
        seq = _Seq(request=request, tokens=tokens, max_new=max_new, submitted_s=self._clock.now_s(),
                   changed=changed, order=next(self._order), generator=gen)
        return seq

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk | GenerateResult]:
        if request.call_id in self._by_call:
            raise EngineError(f"call {request.call_id!r} is already running on {self.name}")
        seq = self._new_seq(request, asyncio.Event())
        if request.reuse and self.reuse is not None:  # hints that came with the call (the service's
            # answer): registered before it can be admitted, exactly as apply() registers Decision.reuse
            self.reuse.add(h if h.target_call_id == request.call_id else replace(h, target_call_id=request.call_id)
                           for h in request.reuse)
        self._by_call[request.call_id] = seq
        self._waiting.append(seq)
        self._kick()
        sent, text_sent, done = 0, "", False
        try:
            while True:
                await seq.changed.wait()
                seq.changed.clear()
                if seq.error is not None:
                    raise EngineError(seq.error)
                if len(seq.output) > sent:
                    new = tuple(seq.output[sent:])
                    sent = len(seq.output)
                    text = self.decode(seq.output)
                    chunk_text = text[len(text_sent):] if text.startswith(text_sent) else ""
                    text_sent = text
                    yield TokenChunk(call_id=request.call_id, token_ids=new, text=chunk_text)
                if seq.finished_s is not None:
                    done = True
                    yield self._result(seq)
                    return
        finally:
            self._by_call.pop(request.call_id, None)
            if not done:
                self._cancel(seq)

    def _result(self, seq: _Seq) -> GenerateResult:
        req = seq.request
        out = tuple(seq.output)
        full = tuple(req.prompt_ids) + out
        parent = req.prefixes[-1].key if req.prefixes else None
        full_ref = PrefixRef(key=prefix_key(req.namespace, full), parent=parent, num_tokens=len(full),
                             namespace=req.namespace)
        cached = tuple(req.prefixes) + (full_ref,)
        if seq.exact_tokens is not None:  # only the exact part was cached (reused KV never is)
            cached = tuple(r for r in req.prefixes if r.num_tokens <= seq.exact_tokens)
        return GenerateResult(
            call_id=req.call_id, output_ids=out, text=self.decode(out), prompt_tokens=seq.prompt_len,
            cached_tokens=seq.cached - seq.host_tokens, host_tokens=seq.host_tokens,
            reused_tokens=seq.reused_tokens,
            queued_s=(seq.admitted_s or seq.submitted_s) - seq.submitted_s,
            ttft_s=(seq.first_token_s or seq.finished_s) - seq.submitted_s,
            duration_s=seq.finished_s - seq.submitted_s, finish_reason=seq.finish_reason or "length",
            cached=cached)

    def _cancel(self, seq: _Seq) -> None:
        """Drop a request: out of the queue now; a running one's slots once no step uses them."""
        seq.cancelled = True
        if self.reuse is not None:
            self.reuse.forget(seq.request.call_id)
        if seq in self._waiting:
            self._waiting.remove(seq)
        elif seq in self._running:
            if self._in_step:
                self._cancelled.append(seq)
            else:
                self._drop(seq)
        self._kick()

    def _drop(self, seq: _Seq) -> None:
        if seq in self._running:
            self._running.remove(seq)
            self.cache.release(seq.slots[seq.cached:])
            self.cache.unlock(seq.hit.node)
            seq.hit = None
            seq.finish_reason = "cancelled"

    # ---- the loop ------------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # apply() from sync code: the next generate() starts the loop
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=f"local-engine-{self.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            self._admit()
            if not self._running:
                if not self._waiting:
                    self._task = None
                    return
                await self._wake.wait()  # blocked on memory: an unpin or a cancel wakes us
                continue
            batch = self._plan()
            self._in_step = True
            try:
                t0 = self._clock.now_s()
                picked = await loop.run_in_executor(self._executor, self._compute, batch)
                dt = self._clock.now_s() - t0
            except Exception as e:  # noqa: BLE001 - the model failed: fail the running requests, keep serving
                for seq in list(self._running):
                    seq.error = f"engine {self.name}: model step failed: {e!r}"
                    self._drop(seq)
                    if seq.changed is not None:
                        seq.changed.set()
                continue
            finally:
                self._in_step = False
            self._log_step(batch, dt)
            self._commit(batch, picked)
            for seq in self._cancelled:
                self._drop(seq)
            self._cancelled.clear()

    # ---- admission -----------------------------------------------------------------------------
    def _admit(self) -> None:
        if not self._waiting:
            return
        self._waiting.sort(key=lambda s: (self._rank.get(s.request.call_id, 1 << 30), s.order))
        admitted = []
        while self._waiting and len(self._running) < self.max_running:
            if not self._admit_one(self._waiting[0]):
                break  # head of line blocks
            seq = self._waiting.pop(0)
            self._running.append(seq)
            admitted.append(seq)
        for seq in admitted:  # listeners may apply a decision: only once the round is done
            for listener in self.admission_listeners:
                listener(seq.request.call_id, seq.cached - seq.host_tokens, seq.host_tokens)

    def _admit_one(self, seq: _Seq) -> bool:
        ns = seq.request.namespace
        hit = self.cache.match(seq.tokens, ns)
        cached = min(hit.num_tokens, seq.prompt_len - 1)  # the last prompt token is computed (logits)
        need = seq.prompt_len - cached + seq.max_new - 1
        own = self.cache.reserve(need)
        if own is None:
            self.cache.unlock(hit.node)
            return False
        seq.hit, seq.cached, seq.computed = hit, cached, cached
        seq.host_tokens = max(0, cached - (hit.num_tokens - hit.host_tokens))
        seq.slots = torch.cat([hit.slots[:cached], own])
        seq.admitted_s = self._clock.now_s()
        if self.reuse is not None and self.reuse.has_hints(seq.request.call_id):
            req = seq.request
            seq.reuse = self.reuse.plan(req.call_id, req.reuse_namespace, req.prompt_ids, cached)
        return True

    # ---- one step ------------------------------------------------------------------------------
    def _plan(self) -> list[tuple[_Seq, Segment]]:
        """Every decoding sequence's next token, then prompt chunks up to `chunk_tokens` (oldest first)."""
        batch = []
        budget = self.chunk_tokens
        for seq in self._running:
            if not seq.prefilling:
                pos = seq.prompt_len + len(seq.output) - 1
                batch.append((seq, Segment(token_ids=(seq.output[-1],), start=pos, slots=seq.slots,
                                           want_logits=True)))
        for seq in self._running:
            if seq.prefilling and budget > 0:
                # a prompt with placed segments is prefilled in one go (prefill_with_reuse)
                n = seq.prompt_len - seq.computed
                if seq.reuse is None:
                    n = min(budget, n)
                ids = seq.request.prompt_ids[seq.computed: seq.computed + n]
                batch.append((seq, Segment(token_ids=ids, start=seq.computed, slots=seq.slots,
                                           want_logits=seq.computed + n == seq.prompt_len)))
                budget -= n
        return batch

    def _compute(self, batch: list[tuple[_Seq, Segment]]) -> list[tuple[int | None, torch.Tensor | None]]:
        """(model thread) The forward, then a token for each segment that produced logits. Prompts
        with placed segments go through `prefill_with_reuse` instead of the packed forward."""
        reusing = [seq.reuse is not None and seg.start < seq.prompt_len for seq, seg in batch]
        if not any(reusing):
            logits = self.forward([s for _, s in batch])
        else:
            packed = [s for (_, s), r in zip(batch, reusing, strict=True) if not r]
            rows = iter(self.forward(packed) if packed else ())
            picked_rows = []
            for (seq, seg), r in zip(batch, reusing, strict=True):
                if r:
                    picked_rows.append(self.reuse.prefill(seq.reuse, seq.request.prompt_ids, seq.slots))
                elif seg.want_logits:
                    picked_rows.append(next(rows))
            logits = torch.stack(picked_rows)
        out: list[tuple[int | None, torch.Tensor | None]] = []
        rows = [(seq, seg) for seq, seg in batch if seg.want_logits]
        tokens = pick_tokens(logits, [self._choice(seq) for seq, _ in rows])
        it = iter(zip(tokens, logits, strict=True))
        for _, seg in batch:
            if seg.want_logits:
                tok, row = next(it)
                out.append((tok, row))
            else:
                out.append((None, None))
        return out

    def _choice(self, seq: _Seq) -> tuple[int | None, float, float, torch.Generator | None]:
        req = seq.request
        forced = req.forced_output_ids
        if forced:
            return forced[len(seq.output)], 0.0, 1.0, None
        return None, req.temperature, req.top_p, seq.generator

    def _commit(self, batch: list[tuple[_Seq, Segment]], picked) -> None:
        now = self._clock.now_s()
        self.steps += 1
        for (seq, seg), (tok, row) in zip(batch, picked, strict=True):
            if seq.cancelled or seq.hit is None:
                continue
            seq.computed = seg.start + len(seg.token_ids)
            if seq.reuse is not None and not seq.prefilling:  # its reuse prefill just ran
                seq.reused_tokens = self.reuse.account(seq.reuse)
                seq.exact_tokens = seq.reuse.exact_tokens
                seq.reuse = None
            if tok is None:
                continue
            seq.logits = row
            seq.output.append(tok)
            if seq.first_token_s is None:
                seq.first_token_s = now
            stop = (tok == self.eos_token_id and not seq.request.ignore_eos
                    and not seq.request.forced_output_ids)
            if stop or len(seq.output) >= seq.max_new:
                seq.finish_reason = "stop" if stop else "length"
                seq.finished_s = now
                self._finish(seq)
            if seq.changed is not None:
                seq.changed.set()

    def _finish(self, seq: _Seq) -> None:
        """Cache what the sequence computed, free the rest, unlock its hit."""
        self._running.remove(seq)
        req, ns = seq.request, seq.request.namespace
        n = seq.computed
        full = seq.tokens + pack_tokens(seq.output[:-1]) if len(seq.output) > 1 else seq.tokens
        full = full[: n * B]
        if self.reuse is not None:  # its output KV, position-neutral, for later prompts that contain it
            self.reuse.keep(req.call_id, req.reuse_namespace, seq.output[: n - seq.prompt_len],
                            seq.slots[seq.prompt_len:], seq.prompt_len)
        exact = n if seq.exact_tokens is None else seq.exact_tokens  # reused KV never enters the tree
        self.cache.insert(full[: exact * B], seq.slots, ns, own_from=seq.cached, priority=0)
        self.cache.release(seq.slots[exact:])  # approximate KV, and outputs never written (an early stop)
        # the prompt outlives its tail
        self.cache.tree.insert(seq.tokens[: min(exact, seq.prompt_len) * B], priority=1, namespace=ns)
        self.cache.unlock(seq.hit.node)
        seq.hit = None
        above = self._held_tokens(req.prefixes[-1]) if req.prefixes else 0
        key = prefix_key(ns, tuple(req.prompt_ids) + tuple(seq.output))
        if exact == n:
            self.book.remember(key, ns, full, len(full) // B, above)
        if req.priority is not None:
            self._set_priority(ns, full, req.priority, above)
        for ref in req.prefixes:  # the sequence was just inserted: its prefixes keep their priorities
            self._apply_priority(ref.key)

    # ---- synchronous use (tests, calibration) ------------------------------------------------
    def next_token_logits(self, prompt_ids: Sequence[int], *, namespace: str = "default",
                          prefixes: Sequence[PrefixRef] = ()) -> tuple[torch.Tensor, int, int]:
        """Logits after `prompt_ids`, through the cache exactly as a request's prefill (match, host
        load-back, chunked prefill, insert). Returns (logits, device-cached tokens, host-loaded tokens).
        Only while no generate() is running."""
        if self._running or self._waiting:
            raise EngineError("next_token_logits needs an idle engine")
        req = GenerateRequest(call_id=("logits", next(self._order)), program_id=None, prompt_ids=tuple(prompt_ids),
                              max_new_tokens=1, namespace=namespace, forced_output_ids=(0,),
                              prefixes=tuple(prefixes))
        seq = self._new_seq(req, None)
        if not self._admit_one(seq):
            raise EngineError(f"no room for a {seq.prompt_len}-token prompt")
        self._running.append(seq)
        while seq.finished_s is None:
            batch = self._plan()
            t0 = self._clock.now_s()
            picked = self._compute(batch)
            self._log_step(batch, self._clock.now_s() - t0)
            self._commit(batch, picked)
        return seq.logits, seq.cached - seq.host_tokens, seq.host_tokens

    def log_steps(self, on: bool = True) -> None:
        """Record (prefill tokens, prefill context, decode seqs, decode context, seconds) per step."""
        self.step_log = [] if on else None

    def _log_step(self, batch, dt: float) -> None:
        if self.step_log is None:
            return
        pre = pre_ctx = dec = dec_ctx = 0
        for seq, seg in batch:
            n = len(seg.token_ids)
            if seg.start >= seq.prompt_len:  # a decode token
                dec += 1
                dec_ctx += seg.start + 1
            else:
                pre += n
                pre_ctx += seg.start + n
        self.step_log.append((pre, pre_ctx, dec, dec_ctx, dt))

    # ---- prefixes ------------------------------------------------------------------------------
    def _held_tokens(self, ref: PrefixRef) -> int:
        """Tokens of `ref` this engine holds KV for. A prefix that ends with a previous call's output
        (its history) is one token shorter here than declared: that call's last token was sampled,
        never fed, so its KV first exists in the call that reads it, and the node this call adds
        starts there. A priority set above the declared length would then miss that node: the
        newest part of every history would keep the insert's priority."""
        known = self.book.get(ref.key)
        return min(ref.num_tokens, known.num_tokens) if known is not None else ref.num_tokens

    def _set_priority(self, namespace: str, tokens: bytes, priority: int, above_tokens: int) -> bool:
        """Priority of the nodes holding `tokens` beyond `above_tokens` (read-only walk: no access,
        no split; as the simulated worker's set_priority)."""
        peek = self.cache.tree.peek_prefix(tokens, namespace)
        if peek.nodes and peek.num_tokens == len(tokens) // B:
            self.cache.tree.set_path_priority(peek.nodes[-1], priority, above_tokens=above_tokens)
            return True
        return False

    def _apply_priority(self, key: str) -> None:
        known = self.book.get(key)
        if known is not None and known.priority is not None:
            self._set_priority(known.namespace, known.tokens(), known.priority, known.parent_tokens)

    def _pin(self, key: str) -> None:
        known = self.book.get(key)
        if key in self._pins or known is None or not known.num_tokens:
            return
        ns, tokens = known.namespace, known.tokens()
        m = self.cache.tree.match_prefix(tokens, ns)
        if m.num_tokens == len(tokens) // B:
            self.cache.tree.inc_lock_ref(m.last_node)
            self._pins[key] = m.last_node
            self._pinned_tokens += m.num_tokens

    def _unpin(self, key: str) -> None:
        node = self._pins.pop(key, None)
        if node is not None:
            self.cache.tree.dec_lock_ref(node)
            self._pinned_tokens -= node.end

    # ---- decisions -----------------------------------------------------------------------------
    def apply(self, decision: Decision) -> None:
        """Unpins, pins, priorities (shallow first, each above its parent), prefetches (host ->
        device copies, done now), and the admission order. Routes are the caller's business."""
        mine = (None, self.name)
        for u in decision.unpins:
            if u.worker in mine:
                self._unpin(u.prefix)
        for pin in decision.pins:
            if pin.worker in mine:
                self._pin(pin.prefix)
        for pr in sorted(decision.priorities, key=lambda x: self.book.depth(x.prefix)):
            if self.book.set_priority(pr.prefix, pr.priority) is not None:
                self._apply_priority(pr.prefix)
        for f in decision.prefetches:
            known = self.book.get(f.prefix)
            if (f.worker == self.name and known is not None and self.cache.host is not None
                    and self.cache.prefetch(known.tokens(), known.namespace)):
                self._apply_priority(f.prefix)
        if decision.reuse and self.reuse is not None:
            self.reuse.add(decision.reuse)  # applied when the target call is admitted
        if decision.admit:
            self._rank = {c: i for i, c in enumerate(decision.admit)}
        if decision.unpins or decision.admit:
            self._kick()

    @property
    def reuse_stats(self) -> ReuseStats:
        """Cross-agent reuse counters: hints, placed segments, reused vs computed tokens, skips by reason."""
        return self.reuse.stats if self.reuse is not None else ReuseStats()

    def load(self) -> EngineLoad:
        resident = ()
        if len(self.book) <= 256:  # "if cheap to list": a walk per key, and heartbeats ask often
            resident = tuple(k for k, kp in self.book.items()
                             if kp.num_tokens and self.cache.resident_tokens(kp.tokens(), kp.namespace) >= kp.num_tokens)
        host = self.cache.host
        return EngineLoad(kv_capacity_tokens=self.pool.capacity_tokens, kv_used_tokens=self.pool.num_used,
                          host_capacity_tokens=host.capacity_tokens if host is not None else 0,
                          h2d_tokens_per_s=self.h2d_tokens_per_s, prefill_tokens_per_s=self.prefill_tokens_per_s,
                          queue_depth=len(self._waiting), running=len(self._running),
                          pinned_tokens=self._pinned_tokens, cached_prefixes=resident)

    async def aclose(self) -> None:
        self._closed = True
        for seq in self._waiting + self._running:
            seq.error = f"engine {self.name} closed"
            if seq.changed is not None:
                seq.changed.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def __repr__(self) -> str:
        return (f"LocalEngine({self.name!r}, model={self.loaded.name!r}, "
                f"kv_capacity_tokens={self.pool.capacity_tokens})")


def _measured_rates(model_name: str) -> dict[str, float]:
    """What load() reports before anything is measured: the shipped calibration's rates (the
    scheduler prices a lost prefix with them), for the model it was measured on."""
    from agentflow.runtime.engines.local.model import MODEL_NAME

    if model_name != MODEL_NAME:
        return {}
    try:
        from agentflow.runtime.engines.sim.costmodel import make_cost_model

        cm = make_cost_model("smollm2-135m-cpu")
    except (OSError, ValueError, KeyError):
        return {}
    return {"prefill_tokens_per_s": 2048 / cm.prefill_time_s(2048), "h2d_tokens_per_s": cm.h2d_tokens_per_s}


__all__ = ["DEFAULT_KV_CAPACITY_TOKENS", "LocalEngine"]
