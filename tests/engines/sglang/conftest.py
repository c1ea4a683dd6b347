"""Fixtures for the SGLang plugin tests: SGLang 0.5.23's real UnifiedRadixCache on CPU.

`af_cache(pool_tokens=..., max_pinned_tokens=...)` builds the plugin's `AgentflowRadixCache` the
way SGLang's own unit tests build UnifiedRadixCache on CPU: small real pools (`ReqToTokenPool`,
`MHATokenToKVPool`, `TokenToKVPoolAllocator`), the Python tree core, the `workflow` policy
(registered by the plugin's real `register()`). Nothing about the cache is faked; what no CPU
can run (the model, CUDA streams, HiCache's host transfers) is simply absent.
"""

from __future__ import annotations

from array import array

import pytest


class CacheDriver:
    """One rank's cache plus the few scheduler steps the tests need (insert a request's tokens
    with fresh KV slots, evict for room, read the tree back)."""

    def __init__(self, sg, *, pool_tokens: int, max_pinned_tokens: int | None, page_size: int = 1) -> None:
        import torch
        from agentflow.runtime.engines.sglang.pins import AgentflowRadixCache
        from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.unified_cache.components import ComponentType
        from sglang.srt.server_args import (
            ServerArgs,
            set_global_server_args_for_scheduler,
        )

        set_global_server_args_for_scheduler(ServerArgs(model_path="dummy", page_size=page_size))
        self.RadixKey = sg.radix_cache.RadixKey
        self.full = ComponentType.FULL
        pool = MHATokenToKVPool(size=pool_tokens, page_size=page_size, dtype=torch.float16, head_num=1,
                                head_dim=8, layer_num=1, device="cpu", enable_memory_saver=False)
        self.allocator = TokenToKVPoolAllocator(size=pool_tokens, dtype=torch.float16, device="cpu",
                                                kvcache=pool, need_sort=False)
        self.cache = AgentflowRadixCache(CacheInitParams(
            disable=False,
            req_to_token_pool=ReqToTokenPool(size=4, max_context_len=4096, device="cpu", enable_memory_saver=False),
            token_to_kv_pool_allocator=self.allocator, page_size=page_size, eviction_policy="workflow",
            tree_components=(ComponentType.FULL,), tree_core_backend="python"), max_pinned_tokens=max_pinned_tokens)
        assert type(self.cache.tree_core).__name__ == "UnifiedTreeCore", "not the Python tree core"

    def key(self, tokens, ns="t"):
        return self.RadixKey(array("q", tokens), extra_key=ns)

    def alloc(self, n: int):
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        value = self.allocator.alloc(n)
        if value is None:
            self.cache.evict(EvictParams(num_tokens=n - self.allocator.available_size()))
            value = self.allocator.alloc(n)
        assert value is not None, f"no room for {n} tokens even after eviction"
        return value

    def insert(self, tokens, *, priority: int = 0, ns: str = "t") -> int:
        """Insert `tokens` as a finished request would (fresh KV slots; duplicates are freed)."""
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams

        return self.cache.insert(InsertParams(key=self.key(tokens, ns), value=self.alloc(len(tokens)),
                                              priority=priority)).prefix_len

    def match(self, tokens, ns: str = "t") -> int:
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        return self.cache.match_prefix(MatchPrefixParams(key=self.key(tokens, ns))).device_prefix_len

    def evict(self, num_tokens: int) -> int:
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        return self.cache.evict(EvictParams(num_tokens=num_tokens)).num_tokens_evicted

    def tree(self) -> list[tuple[tuple[int, ...], int, int]]:
        """Every node as (tokens from the root, priority, lock count), sorted."""
        out, stack = [], [(n, ()) for n in self.cache.tree_core.root_node.children.values()]
        while stack:
            n, before = stack.pop()
            toks = before + tuple(n.key.token_ids[: len(n.key)])
            out.append((toks, n.priority, n.component_data[self.full].lock_ref))
            stack.extend((c, toks) for c in n.children.values())
        return sorted(out)

    def priorities(self) -> dict[tuple[int, ...], int]:
        return {toks: prio for toks, prio, _ in self.tree()}


@pytest.fixture
def af_cache(sglang_caches):
    """Factory of CacheDriver around the plugin's AgentflowRadixCache (plugin registered first)."""
    from agentflow.runtime.engines.sglang import plugin

    plugin.register()

    def make(*, pool_tokens: int = 1024, max_pinned_tokens: int | None = None) -> CacheDriver:
        return CacheDriver(sglang_caches, pool_tokens=pool_tokens, max_pinned_tokens=max_pinned_tokens)

    return make
