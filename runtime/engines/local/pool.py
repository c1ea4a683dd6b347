"""KV memory of the local engine: a pool of token slots holding every layer's K and V.

One slot holds one token's keys and values for every layer (SGLang's `MHATokenToKVPool`, page
size 1). The pool is the engine's "device" memory: its size in tokens is the budget that the
prefix cache and the running requests share, and that eviction policies fight over.

    k[layer, slot, kv_head, head_dim]        v[layer, slot, kv_head, head_dim]
            slot:  0   1   2   3   4   5   6   7  ...  capacity-1
    free stack: [7 6 5 ...]  <- alloc(n) pops n indices, free(slots) pushes them back

A sequence's tokens live at arbitrary slots; the radix tree stores, for each node, the slot
index of each of its tokens (a LongTensor), and attention gathers a sequence's keys with one
`index_select` per layer. Allocation and freeing are tensor slices, never a Python loop per token.

The host tier (`HostPool`) is the same layout in a second set of tensors: evicted KV is copied
there and copied back on a hit, instead of being recomputed (SGLang's HiCache host pool). Both are
CPU tensors here; the copies are real memory copies with real costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class KVGeometry:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32

    @property
    def bytes_per_token(self) -> int:
        """K and V, every layer and KV head."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    @classmethod
    def of_model(cls, config, dtype: torch.dtype) -> KVGeometry:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(num_layers=config.num_hidden_layers, num_kv_heads=config.num_key_value_heads,
                   head_dim=head_dim, dtype=dtype)


class SlotPool:
    """`capacity_tokens` slots of K and V for every layer, with a stack allocator."""

    def __init__(self, geometry: KVGeometry, capacity_tokens: int):
        if capacity_tokens < 1:
            raise ValueError(f"capacity_tokens must be >= 1 (got {capacity_tokens})")
        g = geometry
        self.geometry = g
        self.capacity_tokens = capacity_tokens
        shape = (g.num_layers, capacity_tokens, g.num_kv_heads, g.head_dim)
        self.k = torch.zeros(shape, dtype=g.dtype)
        self.v = torch.zeros(shape, dtype=g.dtype)
        self._free = torch.arange(capacity_tokens - 1, -1, -1, dtype=torch.long)  # a stack: top at the end
        self._num_free = capacity_tokens

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_used(self) -> int:
        return self.capacity_tokens - self._num_free

    def alloc(self, num_tokens: int) -> torch.Tensor | None:
        """`num_tokens` free slot indices (a new LongTensor), or None when fewer are free."""
        if num_tokens > self._num_free:
            return None
        top = self._num_free
        self._num_free -= num_tokens
        return self._free[self._num_free: top].clone()

    def free(self, slots: torch.Tensor) -> None:
        n = int(slots.numel())
        if n == 0:
            return
        if self._num_free + n > self.capacity_tokens:
            raise RuntimeError(f"freeing {n} slots overflows the pool ({self._num_free} of "
                               f"{self.capacity_tokens} already free): a slot was freed twice")
        self._free[self._num_free: self._num_free + n] = slots
        self._num_free += n

    def copy_from(self, dst: torch.Tensor, src_pool: SlotPool, src: torch.Tensor) -> None:
        """KV of `src` slots of `src_pool` into this pool's `dst` slots (all layers, one copy each)."""
        self.k[:, dst] = src_pool.k[:, src]
        self.v[:, dst] = src_pool.v[:, src]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


__all__ = ["KVGeometry", "SlotPool"]
