"""The contracts between the simulated worker's parts (each part lives in a module of its own).

CostModel (costmodel.py): how long one batch iteration of an SGLang worker takes.
    One iteration of continuous batching with chunked prefill runs, together,
      * a prefill chunk: `prefill_tokens` new tokens, attending over `prefill_context_tokens`
        tokens in total (the cached prefix plus the chunk itself, summed over the sequences in
        the chunk); `prefill_seqs`, optional, lists each sequence's (new tokens, context through
        them), so that each is priced against its own context (without it the chunk is priced as
        one sequence of the totals, exact for one sequence), and
      * one decode step for `decode_seqs` sequences whose contexts total `decode_context_tokens`.
    It also knows the KV geometry and the transfer rates of its hardware preset.

RadixCache (radix.py): SGLang's radix prefix cache, on token ids (or page keys).
    match_prefix(key) -> (matched length, last node); insert(key, priority) splits nodes as
    SGLang does; inc_lock_ref / dec_lock_ref lock a path (a locked path is a pin: never evicted);
    evict(num_tokens) evicts unlocked leaves smallest-priority-first from a heap ordered by the
    active strategy's `get_priority(node)` (LRU: last access time; priority: (priority, last access)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class CostModel(Protocol):
    name: str  # preset name, e.g. "llama-3.1-8b-h100"
    kv_bytes_per_token: int
    kv_capacity_tokens: int  # GPU KV pool after weights and activations, for this preset
    host_capacity_tokens: int  # host (CPU DRAM) tier available for KV
    h2d_tokens_per_s: float  # host -> GPU KV transfer rate (PCIe)
    d2h_tokens_per_s: float  # GPU -> host (HiCache write-back), same link

    def iteration_time_s(self, *, prefill_tokens: int, prefill_context_tokens: int, decode_seqs: int,
                         decode_context_tokens: int,
                         prefill_seqs: Sequence[tuple[int, int]] | None = None) -> float:
        """Seconds for one batch iteration (see the module docstring). 0 work -> 0 s."""

    def prefill_time_s(self, num_tokens: int, cached_tokens: int = 0) -> float:
        """Seconds to prefill `num_tokens` new tokens after `cached_tokens` cached ones, alone."""
