"""The local engine's KV pool and prefix cache on a tiny random Llama: eviction order (lru and
priority), priorities along a path, pins, the host tier, prefetch, namespaces, memory accounting.

Each case drives the engine's own prefill path (`next_token_logits`: match, load-back, chunked
prefill, insert) on a pool of a few dozen tokens and asserts exactly which prefixes survive.
"""

from __future__ import annotations

import pytest
import torch
from agentflow.runtime.decision import (
    Decision,
    EvictionPriority,
    Pin,
    Prefetch,
    Unpin,
    UnpinReason,
)
from agentflow.runtime.engines.base import EngineError, prefix_chain, prefix_key
from agentflow.runtime.engines.local.engine import LocalEngine
from agentflow.runtime.engines.local.pool import KVGeometry, SlotPool
from agentflow.runtime.engines.sim.radix import pack_tokens


def prompt(first: int, n: int = 10) -> list[int]:
    """n token ids starting at `first` (distinct first tokens: separate branches of the tree)."""
    return list(range(first, first + n))


def make(tiny, **kw) -> LocalEngine:
    kw.setdefault("kv_capacity_tokens", 40)
    kw.setdefault("chunk_tokens", 8)  # several chunks per prompt: chunked prefill is exercised
    return LocalEngine(tiny, **kw)


def resident(eng: LocalEngine, ids, ns: str = "default") -> int:
    return eng.cache.resident_tokens(pack_tokens(ids), ns)


def check_accounting(eng: LocalEngine) -> None:
    c = eng.cache
    assert eng.pool.num_used == c.tree.total_size() + c.private_tokens
    assert c.private_tokens == 0  # idle engine


def ref(ids, ns="default"):
    return prefix_chain(ns, ids, [len(ids)])[0]


def test_slot_pool_allocates_and_frees_without_overlap():
    pool = SlotPool(KVGeometry(num_layers=2, num_kv_heads=1, head_dim=4), 8)
    a, b = pool.alloc(5), pool.alloc(3)
    assert sorted(torch.cat([a, b]).tolist()) == list(range(8))
    assert pool.alloc(1) is None and pool.num_free == 0
    pool.free(a[:2])
    assert pool.num_free == 2 and sorted(pool.alloc(2).tolist()) == sorted(a[:2].tolist())
    with pytest.raises(RuntimeError, match="freed twice"):
        pool.free(torch.arange(9))


def test_lru_evicts_the_least_recently_used_prompt(tiny):
    eng = make(tiny, strategy="lru")
    a, b, c = prompt(100), prompt(200), prompt(300)
    for p in (a, b, c):
        eng.next_token_logits(p)
    assert eng.next_token_logits(a)[1] == 9  # a hit refreshes a: b is now the oldest
    eng.next_token_logits(prompt(400, 15))  # needs 15 of 10 free: one prompt goes
    assert [resident(eng, p) for p in (a, b, c)] == [10, 0, 10]
    check_accounting(eng)


def test_priority_strategy_evicts_the_lowest_priority_first(tiny):
    eng = make(tiny, strategy="priority")
    a, b, c = prompt(100), prompt(200), prompt(300)
    for p in (a, b, c):
        eng.next_token_logits(p, prefixes=[ref(p)])
    eng.apply(Decision(step=1, time_s=0.0, priorities=(
        EvictionPriority(prefix=ref(a).key, priority=5, steps_to_execution=1.0),
        EvictionPriority(prefix=ref(b).key, priority=1, steps_to_execution=9.0),
        EvictionPriority(prefix=ref(c).key, priority=3, steps_to_execution=3.0),
        EvictionPriority(prefix="never-seen", priority=7, steps_to_execution=0.0))))  # ignored
    eng.next_token_logits(prompt(400, 15))
    assert [resident(eng, p) for p in (a, b, c)] == [10, 0, 10]
    # d went in as SGLang caches a finished prompt (priority 1 < c's 3): it goes before c
    eng.next_token_logits(prompt(500, 15))
    assert [resident(eng, p) for p in (a, b, c, prompt(400, 15))] == [10, 0, 10, 0]
    check_accounting(eng)


def test_a_prefix_priority_sets_only_the_nodes_above_its_parent(tiny):
    eng = make(tiny, strategy="priority", kv_capacity_tokens=30)
    sys_ = prompt(100, 6)
    x, y = sys_ + prompt(200, 6), sys_ + prompt(300, 6)
    chain_x = prefix_chain("default", x, [6, 12])
    chain_y = prefix_chain("default", y, [6, 12])
    eng.next_token_logits(x, prefixes=chain_x)
    eng.next_token_logits(y, prefixes=chain_y)
    eng.apply(Decision(step=1, time_s=0.0, priorities=(
        EvictionPriority(prefix=chain_x[0].key, priority=9, steps_to_execution=0.0),
        EvictionPriority(prefix=chain_x[1].key, priority=1, steps_to_execution=5.0),
        EvictionPriority(prefix=chain_y[1].key, priority=2, steps_to_execution=4.0))))
    tree = eng.cache.tree
    nodes = tree.peek_prefix(pack_tokens(x), "default").nodes
    assert [(n.num_tokens, n.priority) for n in nodes] == [(6, 9), (6, 1)]
    eng.next_token_logits(prompt(400, 16))  # 18 used + 16 > 30: evicts 4+, x's tail first (priority 1)
    assert (resident(eng, x), resident(eng, y)) == (6, 12)


def test_a_pinned_prefix_survives_pressure_until_unpinned(tiny):
    eng = make(tiny, strategy="lru")
    a, b = prompt(100), prompt(200)
    eng.next_token_logits(a, prefixes=[ref(a)])
    eng.next_token_logits(b, prefixes=[ref(b)])
    pin = Pin(prefix=ref(a).key, worker=None, program_id=1, ttl_s=5.0, expires_at_s=5.0, num_tokens=10)
    eng.apply(Decision(step=1, time_s=0.0, pins=(pin,)))
    assert eng.load().pinned_tokens == 10
    eng.next_token_logits(prompt(300, 25))  # 20 used + 25 > 40: a is the LRU leaf, but pinned
    assert (resident(eng, a), resident(eng, b)) == (10, 0)
    with pytest.raises(EngineError, match="no room"):
        eng.next_token_logits(prompt(400, 35))  # only a pin's worth short: the pin holds
    eng.apply(Decision(step=2, time_s=1.0, unpins=(
        Unpin(prefix=ref(a).key, worker=None, program_id=1, reason=UnpinReason.NEXT_CALL),)))
    assert eng.load().pinned_tokens == 0
    eng.next_token_logits(prompt(400, 35))
    assert resident(eng, a) == 0
    check_accounting(eng)


def test_decisions_for_another_worker_are_ignored(tiny):
    eng = make(tiny, name="w1")
    a = prompt(100)
    eng.next_token_logits(a, prefixes=[ref(a)])
    eng.apply(Decision(step=1, time_s=0.0, pins=(
        Pin(prefix=ref(a).key, worker="w2", program_id=1, ttl_s=5.0, expires_at_s=5.0, num_tokens=10),)))
    assert eng.load().pinned_tokens == 0


def test_evicted_kv_is_written_back_to_the_host_and_loaded_back_exactly(tiny):
    eng = make(tiny, strategy="lru", host_capacity_tokens=64)
    a, b = prompt(100, 12), prompt(200, 12)
    cold, _, _ = eng.next_token_logits(a)
    warm, dev, _ = eng.next_token_logits(a)  # a device hit: one token computed on the cached 11
    assert dev == 11
    eng.next_token_logits(b)
    eng.next_token_logits(prompt(300, 30))  # evicts a (LRU) to the host
    assert resident(eng, a) == 0 and eng.cache.written_back_tokens >= 12
    logits, dev, host = eng.next_token_logits(a)
    assert (dev, host) == (0, 11)  # 11 of 12 loaded back (the last prompt token is computed)
    assert torch.equal(logits, warm)  # bit for bit: the same KV values, the same computation
    assert torch.allclose(logits, cold, rtol=0, atol=1e-5)  # cold: 12 rows per GEMM, not 1
    check_accounting(eng)


def test_prefetch_loads_a_prefix_back_before_its_call(tiny):
    eng = make(tiny, strategy="lru", host_capacity_tokens=64, name="w0")
    a = prompt(100, 12)
    eng.next_token_logits(a, prefixes=[ref(a)])
    eng.next_token_logits(prompt(300, 30))
    assert resident(eng, a) == 0
    eng.apply(Decision(step=1, time_s=0.0, prefetches=(
        Prefetch(prefix=ref(a).key, worker="elsewhere", deadline_s=1.0, num_tokens=12),)))
    assert resident(eng, a) == 0  # not for this worker
    eng.apply(Decision(step=2, time_s=0.0, prefetches=(
        Prefetch(prefix=ref(a).key, worker="w0", deadline_s=1.0, num_tokens=12),)))
    assert resident(eng, a) == 12 and eng.cache.loaded_back_tokens == 12
    assert eng.next_token_logits(a)[1:] == (11, 0)  # now a device hit


def test_namespaces_never_share_kv(tiny):
    eng = make(tiny)
    a = prompt(100)
    eng.next_token_logits(a, namespace="tenant-1")
    assert eng.next_token_logits(a, namespace="tenant-2")[1] == 0
    assert eng.next_token_logits(a, namespace="tenant-1")[1] == 9
    assert prefix_key("tenant-1", a) != prefix_key("tenant-2", a)


def test_partial_hit_reuses_the_shared_prefix_and_frees_duplicates(tiny):
    eng = make(tiny, kv_capacity_tokens=64)
    base = prompt(100, 8)
    eng.next_token_logits(base + [1, 2, 3])
    _, dev, _ = eng.next_token_logits(base + [4, 5, 6, 7])
    assert dev == 8
    assert eng.cache.tree.total_size() == 8 + 3 + 4
    check_accounting(eng)


def test_a_prompt_larger_than_the_pool_is_an_error(tiny):
    eng = make(tiny)
    with pytest.raises(EngineError, match="raise kv_capacity_tokens"):
        eng.next_token_logits(prompt(100, 41))
