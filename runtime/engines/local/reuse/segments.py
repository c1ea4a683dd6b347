"""Shared segments: position-neutral KV of text that several prompts contain, and where it lives.

A *segment* is a run of tokens that reaches more than one prompt (the user question, an agent's
answer, a retrieved document). Its KV is kept here position-neutral (`rope.py`): keys rotated
back so the segment's first token sits at position 0, values as computed.

    SegmentStore[(namespace, key)] -> SegmentKV(token_ids, keys[L,H,T,D], values[L,H,T,D])

Two ways to fill it, both position-neutral:

  * `base_kv(...)`: the segment prefilled alone after a short fixed *stub* (e.g. the chat
    template's user header). Without a stub the segment's first token becomes an attention sink
    (its hidden state is nothing like the same token's mid-prompt state); with it, the base is
    the same whatever prompt the segment came from, which is what anchors compare.
  * `neutral_slice(...)`: cut a span out of a real prompt's KV and rotate it back (anchors use
    this for the "real" side of a deviation).

Isolation: the namespace is part of every key (`SegmentRef`), so text shared by two tenants is
still two entries; a lookup also checks the token ids, so a key reused for other text misses
instead of serving stale KV.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.runtime.engines.local.reuse.rope import inv_freq_of, rotate_keys


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentRef:
    namespace: str  # tenant, or a workflow that opted in to sharing
    key: str  # e.g. "p17/answer:critic" (content-addressed keys work too)


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentKV:
    """Position-neutral KV of one segment: keys rotated to start at position 0."""

    token_ids: tuple[int, ...]
    keys: Any  # torch.Tensor [layers, kv_heads, num_tokens, head_dim]
    values: Any  # same shape

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


# ---- tensors <-> HF caches ----------------------------------------------------------------------


def kv_of_cache(cache: Any) -> tuple[Any, Any]:
    """(keys, values) `[layers, kv_heads, tokens, head_dim]` of a batch-1 HF DynamicCache."""
    import torch

    keys = torch.stack([layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return keys, values


def cache_of_kv(model: Any, keys: Any, values: Any) -> Any:
    """A batch-1 HF DynamicCache holding `keys`/`values` `[layers, kv_heads, tokens, head_dim]`."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer in range(keys.shape[0]):
        cache.update(keys[layer].unsqueeze(0), values[layer].unsqueeze(0), layer)
    return cache


def forward(model: Any, token_ids: Sequence[int], cache: Any = None, *, last_only: bool = False) -> tuple[Any, Any]:
    """Run `token_ids` after `cache` (which grows in place; a new one if None): (logits[T, V], cache).
    `last_only`: logits of the last token only ([1, V]; skips the LM head for the others)."""
    import torch
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1 if last_only else 0)
    return out.logits[0], out.past_key_values


def neutral_slice(keys: Any, values: Any, start: int, end: int, inv_freq: Any) -> tuple[Any, Any]:
    """Span [start, end) of a prompt's KV, keys rotated back by `start` (position-neutral)."""
    return rotate_keys(keys[:, :, start:end], -start, inv_freq), values[:, :, start:end]


def base_kv(model: Any, token_ids: Sequence[int], stub_ids: Sequence[int] = ()) -> SegmentKV:
    """The segment's base KV: prefilled alone after `stub_ids`, stub cut off, position-neutral."""
    _, cache = forward(model, [*stub_ids, *token_ids])
    keys, values = kv_of_cache(cache)
    k, v = neutral_slice(keys, values, len(stub_ids), len(stub_ids) + len(token_ids), inv_freq_of(model))
    return SegmentKV(token_ids=tuple(token_ids), keys=k.contiguous(), values=v.contiguous())


class SegmentStore:
    """Position-neutral segment KV by (namespace, key), least recently used out past a token budget."""

    def __init__(self, *, capacity_tokens: int = 65_536):
        if capacity_tokens <= 0:
            raise ValueError(f"capacity_tokens must be > 0 (got {capacity_tokens})")
        self.capacity_tokens = capacity_tokens
        self._entries: OrderedDict[SegmentRef, SegmentKV] = OrderedDict()
        self._num_tokens = 0

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, ref: SegmentRef) -> bool:
        return ref in self._entries

    def put(self, ref: SegmentRef, segment: SegmentKV) -> None:
        old = self._entries.pop(ref, None)
        if old is not None:
            self._num_tokens -= old.num_tokens
        self._entries[ref] = segment
        self._num_tokens += segment.num_tokens
        while self._num_tokens > self.capacity_tokens and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._num_tokens -= evicted.num_tokens

    def get(self, ref: SegmentRef, token_ids: Sequence[int] | None = None) -> SegmentKV | None:
        """The segment, or None when absent or when it holds other tokens than `token_ids`."""
        seg = self._entries.get(ref)
        if seg is None or (token_ids is not None and seg.token_ids != tuple(token_ids)):
            return None
        self._entries.move_to_end(ref)
        return seg

    def drop_namespace(self, namespace: str) -> int:
        """Forget every segment of a namespace (tenant gone, workflow finished); returns how many."""
        refs = [r for r in self._entries if r.namespace == namespace]
        for r in refs:
            self._num_tokens -= self._entries.pop(r).num_tokens
        return len(refs)


__all__ = ["SegmentKV", "SegmentRef", "SegmentStore", "base_kv", "cache_of_kv", "forward", "kv_of_cache",
           "neutral_slice"]
