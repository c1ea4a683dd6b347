"""The local engine's side of cross-agent reuse: finished outputs kept position-neutral, hints applied.

    call A finishes ──keep()──> outputs[(namespace, "call:A")] = A's output KV, keys rotated back
                                to position 0 (a SegmentStore: bounded, least recently used out)
    Decision.reuse  ──add()───> pending hints by target call (bounded); or the request's own
    (request.reuse)             hints (the scheduler service sends them with the call)
    call B admitted ──plan()──> for each hint of B that applies: a Placement + the span's KV
                                (cut out of A's output, rotated back to 0 again)
    model thread    ──prefill()─> prefill_with_reuse(prefix KV from the radix hit, placements)
                                  -> KV of the whole prompt written into B's private slots

    B's prompt   [ radix hit (exact) | gap | A's output span (placed) | gap ... | last token ]
                 0              cached     s                                  prompt_len-1
                 └──── exact ─────────────┘ first placed token: everything from here on
                                            (gaps, B's output too) attended to approximate KV

The hard rule: approximate KV never enters the prefix cache. `exact_tokens` is the first placed
position; the engine inserts only `[0, exact_tokens)` into the radix tree when the call
finishes and frees the rest, so a later prefix hit is always exactly computed KV.

Hints that do not apply are skipped and counted by reason, never an error: the source's output
is not held (never kept, evicted, another engine ran it), the namespace differs (the request's
`reuse_namespace` or the source's), the span runs out of the output or into the prompt's last
token, the prompt's tokens there are not the output's, the span starts inside the radix hit (the
exact KV is already there), or it overlaps a span placed before it.

Why the hint names its source by call id (`reuse_plan.call_segment_key`) and not by content: the
scheduler never sees token ids. The engine holds them, and `SegmentStore.get` checks the prompt's
tokens against the output's before anything is placed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentflow.runtime.engines.local.reuse.anchors import AnchorBank, AnchorConfig
from agentflow.runtime.engines.local.reuse.prefill import Placement, ReuseConfig, ReusePrefill, prefill_with_reuse
from agentflow.runtime.engines.local.reuse.rope import inv_freq_of, rotate_keys
from agentflow.runtime.engines.local.reuse.segments import SegmentKV, SegmentRef, SegmentStore, kv_of_cache
from agentflow.runtime.reuse_plan import ReuseHint

# What `prefill_with_reuse` runs with unless the engine is told otherwise: plain offset
# realignment with each segment's first 4 tokens recomputed, and the 5% of the other placed
# tokens whose layer-1 KV deviates most (CacheBlend-style): the configuration that met all four
# of the benchmark's targets, twice (docs/cross-agent-reuse.md, run 4). Not anchors: they are kept
# per namespace and slot, and with the default namespace (one program) a slot is read once per
# program, so the anchors would never reach `min_anchors` and every read would be computed in
# full. Anchors pay off when a namespace's slots recur (workflows that share KV across their
# programs, loops): pass `ReuseConfig(fallback="segment", recompute_head_tokens=4)` there.
DEFAULT_REUSE_CONFIG = ReuseConfig(use_anchors=False, recompute_head_tokens=4, recompute_ratio=0.05)

SKIP_REASONS = ("no_namespace", "namespace", "source_missing", "out_of_range", "tokens_differ", "in_prefix",
                "overlap")


@dataclass(slots=True, kw_only=True)
class ReuseStats:
    """Counters of one engine (`LocalEngine.reuse_stats`)."""

    num_hints: int = 0  # hints received (Decision.reuse) for calls that then ran here
    num_placed: int = 0  # of those, segments placed from a kept output
    num_fallbacks: int = 0  # segments the anchors did not trust: computed in context instead
    num_reused_tokens: int = 0  # prompt tokens placed (not computed)
    num_computed_tokens: int = 0  # prompt tokens computed in reuse prefills (gaps, heads, fallbacks)
    num_prefills: int = 0  # prompts prefilled with reuse
    num_outputs_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> hints skipped

    def to_dict(self) -> dict[str, Any]:
        return {"num_hints": self.num_hints, "num_placed": self.num_placed, "num_fallbacks": self.num_fallbacks,
                "num_reused_tokens": self.num_reused_tokens, "num_computed_tokens": self.num_computed_tokens,
                "num_prefills": self.num_prefills, "num_outputs_kept": self.num_outputs_kept,
                "skipped": dict(self.skipped)}


@dataclass(slots=True, kw_only=True)
class ReusePlan:
    """What one admitted call will place: its placements and their KV (a store of its own)."""

    namespace: str
    placements: list[Placement]
    store: SegmentStore
    num_prefix_tokens: int  # the radix hit, copied exact
    result: ReusePrefill | None = None  # set by prefill() (model thread)

    @property
    def exact_tokens(self) -> int | None:
        """Leading prompt tokens whose KV is exact after the prefill (None: all of them)."""
        if self.result is None or self.result.fell_back:
            return None
        placed = [o.start + o.num_recomputed for o in self.result.outcomes if o.reused]
        return min(placed) if placed else None


def _output_key(call_id: Hashable) -> str:
    return f"call:{call_id!r}"


class OutputReuse:
    """Kept outputs, pending hints, anchors and counters of one engine (event-loop thread, except
    `prefill`, which runs in the model thread on the call's own slots)."""

    def __init__(self, model: Any, pool: Any, *, config: ReuseConfig = DEFAULT_REUSE_CONFIG,
                 anchors: AnchorConfig | None = None, capacity_tokens: int = 16_384, max_pending_calls: int = 4096,
                 max_anchor_namespaces: int = 64, min_tokens: int = 4):
        self.model = model
        self.pool = pool
        self.config = config
        self.inv_freq = inv_freq_of(model)
        self.outputs = SegmentStore(capacity_tokens=capacity_tokens)
        self.bank = AnchorBank(config=anchors or AnchorConfig())
        self.max_anchor_namespaces = max_anchor_namespaces
        self._anchor_namespaces: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.stats = ReuseStats()
        self.max_pending_calls = max_pending_calls
        self.min_tokens = min_tokens  # a shorter placed span is not worth a reuse prefill
        self._pending: OrderedDict[Hashable, list[ReuseHint]] = OrderedDict()
        self._namespace_of: OrderedDict[Hashable, str] = OrderedDict()  # kept call -> its namespace

    # ---- decisions ---------------------------------------------------------------------------
    def add(self, hints: Iterable[ReuseHint]) -> None:
        """Hints for calls not yet admitted (from Decision.reuse or with the request itself:
        the same hint from both is kept once)."""
        for h in hints:
            pending = self._pending.setdefault(h.target_call_id, [])
            if h not in pending:
                pending.append(h)
            self._pending.move_to_end(h.target_call_id)
        while len(self._pending) > self.max_pending_calls:  # hints for calls that never came here
            self._pending.popitem(last=False)

    def has_hints(self, call_id: Hashable) -> bool:
        return call_id in self._pending

    # ---- finished calls ----------------------------------------------------------------------
    def keep(self, call_id: Hashable, namespace: str | None, output_ids: Sequence[int], slots: Any,
             start: int) -> None:
        """Keep a finished call's output KV position-neutral: `output_ids[i]`'s KV is in
        `slots[i]` at position `start + i` (only outputs that were fed back have KV)."""
        self._pending.pop(call_id, None)
        if namespace is None or not output_ids:
            return
        n = len(output_ids)
        k = self.pool.k[:, slots[:n]].permute(0, 2, 1, 3)  # [layers, slots, heads, dim] -> [layers, heads, T, dim]
        v = self.pool.v[:, slots[:n]].permute(0, 2, 1, 3)
        seg = SegmentKV(token_ids=tuple(output_ids), keys=rotate_keys(k, -start, self.inv_freq).contiguous(),
                        values=v.contiguous())
        self.outputs.put(SegmentRef(namespace=namespace, key=_output_key(call_id)), seg)
        self._namespace_of[call_id] = namespace
        while len(self._namespace_of) > max(1024, len(self.outputs)):
            self._namespace_of.popitem(last=False)
        self.stats.num_outputs_kept += 1

    def forget(self, call_id: Hashable) -> None:
        """A call that will not run here after all (cancelled before admission)."""
        self._pending.pop(call_id, None)

    # ---- admission ---------------------------------------------------------------------------
    def plan(self, call_id: Hashable, namespace: str | None, prompt_ids: Sequence[int],
             num_prefix_tokens: int) -> ReusePlan | None:
        """Placements for an admitted call's hints that apply (None if none does); counts the rest."""
        hints = sorted(self._pending.pop(call_id, ()), key=lambda h: h.target_offset)
        if not hints:
            return None
        self.stats.num_hints += len(hints)
        store = SegmentStore(capacity_tokens=max(1, sum(h.num_tokens for h in hints)))
        placements: list[Placement] = []
        for h in hints:
            why = self._skip_reason(h, namespace, prompt_ids, num_prefix_tokens, placements)
            if why is not None:
                self.stats.skipped[why] = self.stats.skipped.get(why, 0) + 1
                continue
            src = self.outputs.get(SegmentRef(namespace=h.namespace, key=_output_key(h.source_call_id)))
            lo, n = h.source_offset, min(h.num_tokens, src.num_tokens - h.source_offset)
            k = rotate_keys(src.keys[:, :, lo:lo + n], -lo, self.inv_freq)  # the span's first token to 0
            ref = SegmentRef(namespace=h.namespace, key=h.key)
            store.put(ref, SegmentKV(token_ids=src.token_ids[lo:lo + n], keys=k, values=src.values[:, :, lo:lo + n]))
            placements.append(Placement(ref=ref, kind=h.kind, start=h.target_offset, num_tokens=n))
        if not placements:
            return None
        self._anchor_namespaces[namespace] = None  # anchors are per namespace: bound how many are kept
        self._anchor_namespaces.move_to_end(namespace)
        while len(self._anchor_namespaces) > self.max_anchor_namespaces:
            old, _ = self._anchor_namespaces.popitem(last=False)
            self.bank.drop_namespace(old)
        return ReusePlan(namespace=namespace, placements=placements, store=store, num_prefix_tokens=num_prefix_tokens)

    def _skip_reason(self, h: ReuseHint, namespace: str | None, prompt_ids: Sequence[int], num_prefix: int,
                     placed: list[Placement]) -> str | None:
        if namespace is None:
            return "no_namespace"
        if h.namespace != namespace:
            return "namespace"
        held = self._namespace_of.get(h.source_call_id)
        if held is not None and held != namespace:
            return "namespace"
        src = self.outputs.get(SegmentRef(namespace=h.namespace, key=_output_key(h.source_call_id)))
        if src is None:
            return "source_missing"
        # the output's last token has no KV (it was sampled, never fed): a span that ends with it
        # is placed without it, and that token is computed with the gaps
        lo, at = h.source_offset, h.target_offset
        n = min(h.num_tokens, src.num_tokens - lo) if h.num_tokens - (src.num_tokens - lo) <= 1 else h.num_tokens
        if n < self.min_tokens or lo < 0 or at < 0 or lo + n > src.num_tokens or at + n >= len(prompt_ids):
            return "out_of_range"
        if tuple(prompt_ids[at:at + n]) != src.token_ids[lo:lo + n]:
            return "tokens_differ"
        if at < num_prefix:
            return "in_prefix"
        if placed and at < placed[-1].end:
            return "overlap"
        return None

    # ---- the model thread --------------------------------------------------------------------
    def prefill(self, plan: ReusePlan, prompt_ids: Sequence[int], slots: Any) -> Any:
        """Prefill the whole prompt with reuse; write its KV to `slots[m:len]` (m: the exact prefix,
        already in `slots[:m]`). Returns the last token's logits (float32)."""
        m = plan.num_prefix_tokens
        prefix_kv = None
        if m > 0:
            prefix_kv = (self.pool.k[:, slots[:m]].permute(0, 2, 1, 3), self.pool.v[:, slots[:m]].permute(0, 2, 1, 3))
        res = prefill_with_reuse(self.model, prompt_ids, plan.placements, store=plan.store, bank=self.bank,
                                 namespace=plan.namespace, config=self.config, prefix_kv=prefix_kv)
        keys, values = kv_of_cache(res.cache)  # [layers, heads, T, dim], prompt order
        dst = slots[m:len(prompt_ids)]
        self.pool.k[:, dst] = keys[:, :, m:].permute(0, 2, 1, 3).to(self.pool.k.dtype)
        self.pool.v[:, dst] = values[:, :, m:].permute(0, 2, 1, 3).to(self.pool.v.dtype)
        plan.result = res
        return res.logits.float()

    def account(self, plan: ReusePlan) -> int:
        """(event loop, after the step) Count a finished reuse prefill; returns its reused tokens."""
        res = plan.result
        if res is None:
            return 0
        s = self.stats
        s.num_prefills += 1
        s.num_placed += sum(1 for o in res.outcomes if o.reused)
        s.num_fallbacks += sum(1 for o in res.outcomes if not o.reused)
        s.num_reused_tokens += res.num_reused_tokens
        s.num_computed_tokens += res.num_computed_tokens
        return res.num_reused_tokens


__all__ = ["DEFAULT_REUSE_CONFIG", "SKIP_REASONS", "OutputReuse", "ReusePlan", "ReuseStats"]
