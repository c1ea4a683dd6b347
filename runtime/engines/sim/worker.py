"""A simulated SGLang worker: one GPU's KV pool, radix cache, host tier, queue and batch.

What it models (SGLang's scheduler loop, simplified to what decides KV traffic and time):

    waiting queue --admit--> prefill (chunked, `chunk_tokens` per iteration) --> decode --> done
         |                      |                                                  |
         |  match the prompt in the GPU radix cache; lock the matched path         |
         |  load back from the host tier what it holds beyond that (PCIe time)     |
         |  reserve KV for the rest of the prompt + the output; evict leaves       |
         |  (strategy order) when short; wait when even that is not enough         |
         |                                                                          v
         +------------------------------ insert prompt + output into the radix cache, unlock

One iteration runs a prefill chunk and one decode step for every running sequence together
(continuous batching); its duration comes from the cost model, each sequence of the chunk priced
against its own context. Pins are locks on a radix path.

The host tier is SGLang HiCache as shipped (`--enable-hierarchical-cache`, its default
`write_through` policy): every sequence inserted on the GPU is backed up to the host (its own radix
cache, ordered by the GPU's eviction strategy; a priority set on a prefix applies to both tiers, as
in SGLang's single HiRadixTree), so what the GPU evicts can be loaded back instead of recomputed.
With `charge_link` (the default) the backup has its real costs: the new tokens go device->host over
the worker's one PCIe link (link.py, a FIFO shared with load-backs and prefetches), and the GPU path
stays locked (unevictable) until the write has landed, as SGLang locks a node under write. Without
`charge_link`, writes are free and instant and each load takes its own h2d time on a link nobody
else uses (the model before issue 14). `host_capacity_tokens=0`: no host tier, no link, no writes:
SGLang without HiCache.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field

from agentflow.runtime.engines.sim.interfaces import CostModel
from agentflow.runtime.engines.sim.link import HostLink
from agentflow.runtime.engines.sim.radix import TOKEN_BYTES, RadixCache

B = TOKEN_BYTES  # keys are packed int64 token ids: token i is bytes [B*i, B*(i+1))


@dataclass(slots=True, kw_only=True)
class SimRequest:
    call_id: Hashable
    program_id: Hashable
    tokens: bytes  # prompt token ids, packed (radix.pack_tokens)
    output_ids: bytes  # what it will generate, packed (deterministic ids, so caches see sharing)
    submitted_s: float
    seen_before: int = 0  # leading prompt tokens computed earlier by anyone (for "recomputed")
    # set at admission
    gpu_hit: int = 0
    host_hit: int = 0
    node: object = None  # the locked radix node of the matched prefix
    reserved: int = 0  # private KV tokens held until the sequence is inserted
    ready_s: float = 0.0  # host load-back done
    done_prefill: int = 0  # prompt tokens prefilled so far (excluding hits)
    generated: int = 0
    first_token_s: float | None = None
    full: bytes = b""  # prompt + output, set when it finishes (what the cache now holds)

    @property
    def prompt_len(self) -> int:
        return len(self.tokens) // B

    @property
    def output_len(self) -> int:
        return len(self.output_ids) // B

    @property
    def prefill_left(self) -> int:
        return self.prompt_len - self.gpu_hit - self.host_hit - self.done_prefill


@dataclass(slots=True)
class IterationResult:
    duration_s: float
    first_tokens: list[SimRequest] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)


class SimWorker:
    def __init__(self, name: str, cost: CostModel, *, capacity_tokens: int | None = None,
                 host_capacity_tokens: int | None = None, page_size: int = 1, chunk_tokens: int = 8192,
                 max_running: int = 256, strategy: str = "lru", clock=None, charge_link: bool = True,
                 inherit_priority: bool = False):
        self.name = name
        self.cost = cost
        self.capacity = capacity_tokens if capacity_tokens is not None else cost.kv_capacity_tokens
        host = host_capacity_tokens if host_capacity_tokens is not None else cost.host_capacity_tokens
        if host < 0:
            raise ValueError(f"host_capacity_tokens must be >= 0 (got {host}); 0 means no host tier")
        self.clock = clock
        # Access times: each cache's own operation counter (deterministic; see radix.py), not `clock`.
        self.gpu = RadixCache(page_size=page_size, eviction_policy=strategy)
        # One HiRadixTree in SGLang: the host side evicts by the same strategy and priorities.
        self.host = RadixCache(page_size=page_size, eviction_policy=strategy) if host > 0 else None
        self.host_capacity = host
        self.charge_link = charge_link
        self.inherit_priority = inherit_priority
        self.link = HostLink()
        self._writes: list[tuple[float, int, object]] = []  # (lands at, seq, locked GPU node)
        self._write_seq = 0
        self._now = 0.0  # the latest time any call told us (for inserts that carry none)
        self.chunk_tokens = chunk_tokens
        self.max_running = max_running
        self.waiting: list[SimRequest] = []
        self.prefilling: list[SimRequest] = []
        self.decoding: list[SimRequest] = []
        self.private_tokens = 0
        self.busy_until: float | None = None  # an iteration is in flight until then
        self.pins: dict[str, object] = {}  # prefix key -> locked node
        self.pinned_tokens = 0
        self.evicted_tokens = 0

    # ---- memory ----------------------------------------------------------------------------
    @property
    def used_tokens(self) -> int:
        return self.gpu.total_size() + self.private_tokens

    def free_tokens(self) -> int:
        return self.capacity - self.used_tokens

    def _make_room(self, need: int) -> bool:
        short = need - self.free_tokens()
        if short > 0:
            self.evicted_tokens += sum(e.num_tokens for e in self.gpu.evict(short))
        return self.free_tokens() >= need

    def _tick(self, now: float | None) -> float:
        """Advance to `now` (never backwards): writes that have landed by then unlock their paths."""
        if now is not None and now > self._now:
            self._now = now
        writes = self._writes
        while writes and writes[0][0] <= self._now:
            _, _, node = heapq.heappop(writes)
            self.gpu.dec_lock_ref(node)
        return self._now

    def next_write_s(self) -> float | None:
        """When the next pending host write lands (its GPU path unlocks then), if any."""
        return self._writes[0][0] if self._writes else None

    def _host_insert(self, seq: bytes, node, now: float, priority: int = 0) -> None:
        """HiCache write-through: back up the tokens of `seq` the host lacks. The host holds them
        from now (a read of them hits the GPU copy, locked until the write lands, first)."""
        if self.host is None:
            return
        new = len(seq) // B - self.host.peek_prefix(seq).num_tokens
        hnode = self.host.insert(seq, priority=priority if self.inherit_priority else 0).last_node
        over = self.host.total_size() - self.host_capacity
        if over > 0 and hnode is not self.host.root:
            # SGLang makes host room from nodes no longer on the GPU: never from the copy being written
            self.host.inc_lock_ref(hnode)
            self.host.evict(over)
            self.host.dec_lock_ref(hnode)
            over = self.host.total_size() - self.host_capacity
        if over > 0:  # a sequence larger than the host tier
            self.host.evict(over)
        if new <= 0 or not self.charge_link:
            return
        lands = self.link.transfer(now, new, self.cost.d2h_tokens_per_s, to_gpu=False)
        if node is None:  # the GPU had no room to keep it: nothing to hold while it is written
            return
        self.gpu.inc_lock_ref(node)
        self._write_seq += 1
        heapq.heappush(self._writes, (lands, self._write_seq, node))

    def insert_cached(self, seq: bytes, priority: int = 0, prompt_len: int | None = None,
                      now: float | None = None) -> None:
        """Put a sequence in the GPU cache (and back it up to the host tier), evicting to make room.

        As SGLang 0.5.23 caches a finished request: the whole sequence with priority p, then the
        prompt alone with p + 1, so the output tail goes before its prompt. `now`: when (the host
        write is queued on the link then); by default the latest time the worker was told."""
        now = self._tick(now)
        peek = self.gpu.peek_prefix(seq)
        matched = peek.num_tokens
        if self.inherit_priority and peek.nodes:  # what extends a cached path is as urgent as it
            priority = max(priority, peek.nodes[-1].priority)
        node = None
        if self._make_room(len(seq) // B - matched):
            node = self.gpu.insert(seq, priority=priority).last_node
            if prompt_len:
                self.gpu.insert(seq[: prompt_len * B], priority=priority + 1)
            if node is self.gpu.root:
                node = None
        self._host_insert(seq, node, now, priority)

    def prefetch(self, now: float, tokens: bytes) -> float | None:
        """Queue a host -> GPU load of what the host holds of `tokens` beyond the GPU; the time it
        lands (then `insert_cached(tokens)`), or None when there is nothing to load."""
        now = self._tick(now)
        extra = self.host_extra(tokens)
        if extra <= 0:
            return None
        if not self.charge_link:
            return now + extra / self.cost.h2d_tokens_per_s
        return self.link.transfer(now, extra, self.cost.h2d_tokens_per_s, to_gpu=True)

    # ---- admission ---------------------------------------------------------------------------
    def admit(self, now: float, rank: dict[Hashable, int]) -> list[SimRequest]:
        """Admit waiting requests in the scheduler's order (then FCFS) while memory allows."""
        self._tick(now)
        if not self.waiting:
            return []
        self.waiting.sort(key=lambda r: (rank.get(r.call_id, 1 << 30), r.submitted_s))
        admitted = []
        while self.waiting and len(self.prefilling) + len(self.decoding) < self.max_running:
            req = self.waiting[0]
            m = self.gpu.match_prefix(req.tokens)
            node = m.last_node
            hit = min(m.num_tokens, req.prompt_len - 1)  # as SGLang: the last prompt token is computed
            host_hit = 0
            if self.host is not None:
                h = self.host.match_prefix(req.tokens).num_tokens
                host_hit = max(0, min(h, req.prompt_len - 1) - hit)
            need = req.prompt_len - hit + req.output_len
            self.gpu.inc_lock_ref(node)  # protect the hit while we make room
            if not self._make_room(need):
                self.gpu.dec_lock_ref(node)
                break  # head of line blocks, as in SGLang's FCFS admission
            self.waiting.pop(0)
            req.gpu_hit, req.host_hit, req.node, req.reserved = hit, host_hit, node, need
            if not host_hit:
                req.ready_s = now
            elif self.charge_link:  # behind whatever the link already carries
                req.ready_s = self.link.transfer(now, host_hit, self.cost.h2d_tokens_per_s, to_gpu=True)
            else:
                req.ready_s = now + host_hit / self.cost.h2d_tokens_per_s
            self.private_tokens += need
            self.prefilling.append(req)
            admitted.append(req)
        return admitted

    # ---- one iteration ------------------------------------------------------------------------
    def has_work(self) -> bool:
        """Something to run, or to wait for: a load-back, or a host write whose locked path may be
        what keeps a waiting request out (SGLang's loop polls its write acks every iteration)."""
        return bool(self.prefilling or self.decoding or (self.waiting and self._writes))

    def plan_iteration(self, now: float) -> tuple[int, int, int, int, list[tuple[SimRequest, int]]]:
        """(prefill tokens, their summed context, decode seqs, decode context, [(request, chunk)]).
        Each chunk's own context is `chunk_contexts(chunks)`."""
        budget = self.chunk_tokens
        chunks: list[tuple[SimRequest, int]] = []
        ctx = 0
        for req in self.prefilling:
            if budget <= 0:
                break
            if req.ready_s > now:  # still loading back from host memory
                continue
            n = min(budget, req.prefill_left)
            if n <= 0:
                continue
            chunks.append((req, n))
            budget -= n
            ctx += req.gpu_hit + req.host_hit + req.done_prefill + n
        prefill = self.chunk_tokens - budget
        dec_ctx = sum(r.prompt_len + r.generated for r in self.decoding)
        return prefill, ctx, len(self.decoding), dec_ctx, chunks

    @staticmethod
    def chunk_contexts(chunks: list[tuple[SimRequest, int]]) -> list[tuple[int, int]]:
        """Per planned chunk (before it runs): (its new tokens, its sequence's context through them)."""
        return [(n, req.gpu_hit + req.host_hit + req.done_prefill + n) for req, n in chunks]

    def run_iteration(self, now: float, decode_steps: int = 1) -> IterationResult:
        """Start an iteration at `now` (or `decode_steps` decode-only iterations at once)."""
        self._tick(now)
        prefill, ctx, n_dec, dec_ctx, chunks = self.plan_iteration(now)
        if chunks:
            decode_steps = 1
        dt = self.cost.iteration_time_s(prefill_tokens=prefill, prefill_context_tokens=ctx,
                                        decode_seqs=n_dec, decode_context_tokens=dec_ctx + n_dec * (decode_steps - 1) // 2,
                                        prefill_seqs=self.chunk_contexts(chunks) if len(chunks) > 1 else None)
        if dt <= 0 and not chunks and not n_dec:
            # only requests waiting on a host load-back, or on a write: idle until the first is done
            wake = min([r.ready_s for r in self.prefilling] + [self._writes[0][0]] if self._writes else
                       [r.ready_s for r in self.prefilling])
            return IterationResult(duration_s=max(0.0, wake - now))
        dt *= decode_steps
        res = IterationResult(duration_s=dt)
        end = now + dt
        for req, n in chunks:
            req.done_prefill += n
        still = []
        for req in self.prefilling:
            if req.prefill_left <= 0 and req.ready_s <= now:
                req.generated = 1  # the prefill iteration produces the first token
                req.first_token_s = end
                res.first_tokens.append(req)
                self.decoding.append(req)
            else:
                still.append(req)
        self.prefilling = still
        done = []
        fresh = {id(r) for r in res.first_tokens}
        for req in self.decoding:
            if id(req) not in fresh:
                req.generated += decode_steps
        keep = []
        for req in self.decoding:
            if req.generated >= req.output_len:
                done.append(req)
            else:
                keep.append(req)
        self.decoding = keep
        for req in done:
            self._finish(req, end)
        res.finished = done
        return res

    def decode_only_steps(self) -> int:
        """How many decode-only iterations can run before any running sequence finishes."""
        if self.prefilling or not self.decoding:
            return 1
        return max(1, min(r.output_len - r.generated for r in self.decoding))

    def _finish(self, req: SimRequest, end: float) -> None:
        self.private_tokens -= req.reserved
        seq = req.full = req.tokens + req.output_ids
        self.gpu.dec_lock_ref(req.node)
        req.node = None
        # the state moves at the iteration's start; its write to the host is queued at its end
        self.insert_cached(seq, prompt_len=req.prompt_len, now=end)

    # ---- decisions -------------------------------------------------------------------------
    def node_of(self, tokens: bytes):
        """The radix node ending exactly at the end of `tokens`, if the GPU cache holds them all
        (matching splits the node there, as SGLang does)."""
        m = self.gpu.match_prefix(tokens)
        return m.last_node if m.num_tokens == len(tokens) // B and m.num_tokens > 0 else None

    def set_priority(self, tokens: bytes, priority: int, above_tokens: int = 0) -> bool:
        """Priority of the nodes holding `tokens` beyond its first `above_tokens` (its parent
        prefix, which keeps its own). A read-only walk: setting a priority is not an access (it
        must not refresh recency) and splits nothing; the last node may run past the prefix, and
        then its tail takes the priority too. False if the cache does not hold all of `tokens`."""
        if self.host is not None:  # one tree in SGLang: the host copy carries the same priority
            hp = self.host.peek_prefix(tokens)
            if hp.num_tokens == len(tokens) // B and hp.nodes:
                self.host.set_path_priority(hp.nodes[-1], priority, above_tokens=above_tokens)
        peek = self.gpu.peek_prefix(tokens)
        if peek.num_tokens == len(tokens) // B and peek.nodes:
            self.gpu.set_path_priority(peek.nodes[-1], priority, above_tokens=above_tokens)
            return True
        return False

    def pin(self, key: str, tokens: bytes) -> bool:
        if key in self.pins:
            return True
        node = self.node_of(tokens)
        if node is None:
            return False
        self.gpu.inc_lock_ref(node)
        self.pins[key] = node
        self.pinned_tokens += len(tokens) // B
        return True

    def unpin(self, key: str, num_tokens: int) -> None:
        node = self.pins.pop(key, None)
        if node is not None:
            self.gpu.dec_lock_ref(node)
            self.pinned_tokens -= num_tokens

    def host_extra(self, tokens: bytes) -> int:
        """Tokens of `tokens` the host tier holds beyond what the GPU holds."""
        if self.host is None:
            return 0
        g = self.gpu.peek_prefix(tokens).num_tokens
        h = self.host.peek_prefix(tokens).num_tokens
        return max(0, h - g)
