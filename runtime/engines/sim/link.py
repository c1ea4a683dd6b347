"""One worker's host link (PCIe): the FIFO that HiCache's loads, prefetches and writes share.

SGLang's HiCache moves KV between the GPU pool and the host pool over the GPU's own PCIe link:
load-backs of host hits at admission, prefetches, and the device->host writes of its write policy.
The simulated worker puts every such transfer on one queue, served in the order it was asked for at
the link's rate: a transfer starts when the link is free and the previous one has finished, so a
load asked for behind a write waits for the write.

One queue for both directions is a conservative choice: PCIe is full duplex and a GPU has separate
copy engines, so a real load and a real write can overlap. SGLang issues its writes and loads on
separate CUDA streams, but both compete for the same copy engines, host memory bandwidth and pinned
buffers; we charge the simpler, slower case and say so (docs/replay.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class HostLink:
    """A FIFO link: `transfer(now, tokens, rate)` returns when those tokens have crossed it."""

    free_at_s: float = 0.0  # when the last queued transfer ends
    busy_s: float = 0.0  # seconds the link has spent moving data
    h2d_tokens: int = 0  # tokens moved host -> GPU (loads, prefetches)
    d2h_tokens: int = 0  # tokens moved GPU -> host (writes)
    waited_s: float = 0.0  # seconds transfers spent queued behind earlier ones

    def transfer(self, now_s: float, num_tokens: int, tokens_per_s: float, *, to_gpu: bool) -> float:
        """Queue `num_tokens` at `now_s`; the time the last of them arrives."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0 (got {num_tokens})")
        if tokens_per_s <= 0:
            raise ValueError(f"tokens_per_s must be > 0 (got {tokens_per_s})")
        start = max(now_s, self.free_at_s)
        seconds = num_tokens / tokens_per_s
        self.waited_s += start - now_s
        self.busy_s += seconds
        self.free_at_s = start + seconds
        if to_gpu:
            self.h2d_tokens += num_tokens
        else:
            self.d2h_tokens += num_tokens
        return self.free_at_s


__all__ = ["HostLink"]
