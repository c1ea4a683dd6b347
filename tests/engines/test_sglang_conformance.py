"""Our RadixCache against SGLang 0.5.23's real RadixCache and UnifiedRadixCache (Python tree core).

Every scenario is replayed step by step through the three caches; after each step they must
agree on the step's result (matched / already-cached length and the node it ends at, or the
evicted nodes in order), on the evictable, protected and total token counts, on the order in
which `evict` would take the current leaves, and on the whole tree (each node's tokens, lock
count, priority and hit count).

Time: RadixCache stamps `time.monotonic()`; the test swaps its module's `time` for a counter
(one tick per call), so no two stamps tie and the order is the order of operations, as in
UnifiedRadixCache, whose stamps already come from a global counter. Our cache uses its own
counter. The three never see the same numbers, only the same order, which is all eviction
reads; the leaf-order check after every step asserts the strategy keys never tie.

SGLang's classes are built on CPU the way its own unit tests build them: RadixCache with a
stand-in allocator (`.device`, `.free_segment`) and token ids as values; UnifiedRadixCache with
small real CPU pools, a fresh KV slot for every inserted token (it frees the duplicates itself).
"""

from __future__ import annotations

import itertools
import random
import time
import types
from array import array

import pytest

from agentflow.runtime.engines.sim.radix import RadixCache

pytestmark = pytest.mark.needs_sglang

POOL_TOKENS = 1 << 15


# ---- three caches behind one small interface ----

def _sglang_path_info(node, key_of, parent_of, root):
    """(namespace, start, tokens) of an SGLang node: where it sits and what it holds."""
    if node is root:
        return (None, 0, ())
    key = key_of(node)
    start, cur = 0, parent_of(node)
    while cur is not root:
        start += len(key_of(cur))
        cur = parent_of(cur)
    return (key.extra_key, start, tuple(key.token_ids[: len(key)]))


class Ours:
    name = "agentflow"

    def __init__(self, sg, page_size, policy):
        self.cache = RadixCache(page_size=page_size, eviction_policy=policy)

    @staticmethod
    def info(node):
        return (node.namespace, node.start, node.tokens())

    def insert(self, tokens, priority, ns):
        r = self.cache.insert(tokens, priority, namespace=ns)
        return r.num_prefix_tokens, r.last_node

    def match(self, tokens, ns):
        r = self.cache.match_prefix(tokens, namespace=ns)
        return r.num_tokens, r.last_node

    def lock(self, node):
        self.cache.inc_lock_ref(node)
        return node

    def unlock(self, receipt):
        self.cache.dec_lock_ref(receipt)

    def evict(self, num_tokens):
        return [(e.namespace, e.start, e.tokens()) for e in self.cache.evict(num_tokens)]

    def sizes(self):
        c = self.cache
        return c.evictable_size(), c.protected_size(), c.total_size()

    def leaf_order(self):
        get = self.cache.strategy.get_priority
        leaves = self.cache.evictable_leaves()
        keys = [get(n) for n in leaves]
        assert len(set(keys)) == len(keys), f"{self.name}: tied eviction keys {keys}"
        return [self.info(n) for n in leaves]

    def snapshot(self):
        out, stack = [], list(self.cache.root.children.values())
        while stack:
            n = stack.pop()
            out.append(self.info(n) + (n.lock_ref, n.priority, n.hit_count))
            stack.extend(n.children.values())
        return sorted(out, key=repr)


class SGLangRadix:
    """sglang.srt.mem_cache.radix_cache.RadixCache with a stand-in allocator."""

    name = "sglang RadixCache"

    def __init__(self, sg, page_size, policy):
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams

        self.m = sg.radix_cache
        self.allocator = types.SimpleNamespace(device="cpu", free_segment=lambda value, start_pos=0: None)
        self.cache = self.m.RadixCache(CacheInitParams(
            disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=self.allocator,
            page_size=page_size, eviction_policy=policy))
        self.evicted = []
        delete_leaf = self.cache._delete_leaf

        def record_and_delete(node):
            self.evicted.append(self.info(node))
            delete_leaf(node)

        self.cache._delete_leaf = record_and_delete

    def info(self, node):
        return _sglang_path_info(node, lambda n: n.key, lambda n: n.parent, self.cache.root_node)

    def key(self, tokens, ns):
        return self.m.RadixKey(array("q", tokens), extra_key=ns)

    def insert(self, tokens, priority, ns):
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams

        r = self.cache.insert(InsertParams(key=self.key(tokens, ns), priority=priority))
        return r.prefix_len, r.last_device_node

    def match(self, tokens, ns):
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        r = self.cache.match_prefix(MatchPrefixParams(key=self.key(tokens, ns)))
        return r.device_prefix_len, r.last_device_node

    def lock(self, node):
        self.cache.inc_lock_ref(node)
        return node

    def unlock(self, receipt):
        self.cache.dec_lock_ref(receipt)

    def evict(self, num_tokens):
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        self.evicted = []
        result = self.cache.evict(EvictParams(num_tokens=num_tokens))
        assert result.num_tokens_evicted == sum(len(e[2]) for e in self.evicted)
        return self.evicted

    def sizes(self):
        c = self.cache
        return c.evictable_size(), c.protected_size(), c.total_size()

    def leaf_order(self):
        get = self.cache.eviction_strategy.get_priority
        leaves = sorted(self.cache.evictable_leaves, key=get)
        keys = [get(n) for n in leaves]
        assert len(set(keys)) == len(keys), f"{self.name}: tied eviction keys {keys}"
        return [self.info(n) for n in leaves]

    def snapshot(self):
        out, stack = [], list(self.cache.root_node.children.values())
        while stack:
            n = stack.pop()
            out.append(self.info(n) + (n.lock_ref, n.priority, n.hit_count))
            stack.extend(n.children.values())
        return sorted(out, key=repr)


class SGLangUnified:
    """sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache, Python tree core, CPU pools."""

    name = "sglang UnifiedRadixCache"

    def __init__(self, sg, page_size, policy):
        import torch
        from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
        from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.unified_cache.components import ComponentType
        from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

        set_global_server_args_for_scheduler(ServerArgs(model_path="dummy", page_size=page_size))
        self.m = sg.unified_radix_cache
        self.full = ComponentType.FULL
        pool = MHATokenToKVPool(size=POOL_TOKENS, page_size=page_size, dtype=torch.float16, head_num=1,
                                head_dim=8, layer_num=1, device="cpu", enable_memory_saver=False)
        if page_size == 1:
            self.allocator = TokenToKVPoolAllocator(size=POOL_TOKENS, dtype=torch.float16, device="cpu",
                                                    kvcache=pool, need_sort=False)
        else:
            self.allocator = PagedTokenToKVPoolAllocator(size=POOL_TOKENS, page_size=page_size,
                                                         dtype=torch.float16, device="cpu", kvcache=pool,
                                                         need_sort=False)
        self.page_size = page_size
        self.cache = self.m.UnifiedRadixCache(CacheInitParams(
            disable=False,
            req_to_token_pool=ReqToTokenPool(size=4, max_context_len=1024, device="cpu", enable_memory_saver=False),
            token_to_kv_pool_allocator=self.allocator, page_size=page_size, eviction_policy=policy,
            tree_components=(ComponentType.FULL,), tree_core_backend="python"))
        self.core = self.cache.tree_core
        assert type(self.core).__name__ == "UnifiedTreeCore", "not the Python tree core"
        self.evicted = []
        remove_leaf = self.core._remove_leaf_from_parent

        def record_and_remove(node):
            self.evicted.append(self.info(node))
            remove_leaf(node)

        self.core._remove_leaf_from_parent = record_and_remove

    def info(self, node):
        if isinstance(node, int):
            node = self.core.node_by_id(node)
        return _sglang_path_info(node, lambda n: n.key, lambda n: n.parent, self.core.root_node)

    def key(self, tokens, ns):
        return self.m.RadixKey(array("q", tokens), extra_key=ns)

    def insert(self, tokens, priority, ns):
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams

        value = self.allocator.alloc(len(tokens) // self.page_size * self.page_size)
        r = self.cache.insert(InsertParams(key=self.key(tokens, ns), value=value, priority=priority))
        return r.prefix_len, r.last_device_node

    def match(self, tokens, ns):
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        r = self.cache.match_prefix(MatchPrefixParams(key=self.key(tokens, ns)))
        return r.device_prefix_len, r.last_device_node

    def lock(self, node_id):
        return node_id, self.cache.inc_lock_ref(node_id).to_dec_params()

    def unlock(self, receipt):
        self.cache.dec_lock_ref(*receipt)

    def evict(self, num_tokens):
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        self.evicted = []
        result = self.cache.evict(EvictParams(num_tokens=num_tokens))
        assert result.num_tokens_evicted == sum(len(e[2]) for e in self.evicted)
        return self.evicted

    def sizes(self):
        c = self.cache
        return c.evictable_size(), c.protected_size(), c.total_size()[0]

    def leaf_order(self):
        get = self.core.eviction_strategy.get_priority
        leaves = sorted(self.core.evictable_device_leaves, key=get)
        keys = [get(n) for n in leaves]
        assert len(set(keys)) == len(keys), f"{self.name}: tied eviction keys {keys}"
        return [self.info(n) for n in leaves]

    def snapshot(self):
        out, stack = [], list(self.core.root_node.children.values())
        while stack:
            n = stack.pop()
            cd = n.component_data[self.full]
            assert cd.value is not None  # no host tier: an evicted node leaves the tree
            out.append(self.info(n) + (cd.lock_ref, n.priority, n.hit_count))
            stack.extend(n.children.values())
        return sorted(out, key=repr)


@pytest.fixture
def sglang_ticks(sglang_caches, monkeypatch):
    """RadixCache's `time.monotonic()` becomes a counter: stamps never tie, order = operation order."""
    tick = itertools.count()
    fake = types.SimpleNamespace(monotonic=lambda: float(next(tick)), perf_counter=time.perf_counter,
                                 time=time.time)
    monkeypatch.setattr(sglang_caches.radix_cache, "time", fake)
    return sglang_caches


# ---- the replay ----

def replay(sg, ops, *, page_size, policy):
    """Run `ops` through the three caches, asserting they agree after every step."""
    caches = [Ours(sg, page_size, policy), SGLangRadix(sg, page_size, policy), SGLangUnified(sg, page_size, policy)]
    handles = [{} for _ in caches]  # name -> node, per cache
    locks = [{} for _ in caches]  # name -> receipts, per cache
    for step, op in enumerate(ops):
        kind, args = op[0], op[1:]
        outcomes = []
        for cache, named, held in zip(caches, handles, locks):
            if kind == "insert":
                tokens, priority, ns, name = args
                length, node = cache.insert(tokens, priority, ns)
                named[name] = node
                outcome = (length, cache.info(node))
            elif kind == "match":
                tokens, ns, name = args
                length, node = cache.match(tokens, ns)
                named[name] = node
                outcome = (length, cache.info(node))
            elif kind == "lock":
                (name,) = args
                held.setdefault(name, []).append(cache.lock(named[name]))
                outcome = None
            elif kind == "unlock":
                (name,) = args
                cache.unlock(held[name].pop())
                outcome = None
            elif kind == "evict":
                (num_tokens,) = args
                outcome = cache.evict(num_tokens)
            else:
                raise AssertionError(f"unknown op {op!r}")
            outcomes.append((outcome, cache.sizes(), cache.leaf_order(), cache.snapshot()))
        ours = outcomes[0]
        for cache, theirs in zip(caches[1:], outcomes[1:]):
            for what, a, b in zip(("result", "sizes (evictable, protected, total)", "leaf eviction order",
                                   "tree"), ours, theirs):
                assert a == b, (f"step {step} {op!r}: {what} differs\n  agentflow: {a}\n  {cache.name}: {b}")
    return caches[0].cache


# ---- hand-written scenarios (token ids; each token becomes a whole page for page_size > 1) ----

S = [100, 101, 102, 103, 104, 105]  # a shared system prompt
SCENARIOS = {
    "split_on_insert": [
        ("insert", [1, 2, 3, 4, 5, 6, 7, 8], 0, None, "a"),
        ("insert", [1, 2, 3, 4, 20, 21, 22, 23], 0, None, "b"),
        ("evict", 1),
        ("insert", [1, 2, 3, 4, 5, 6, 7, 8], 0, None, "a"),
        ("evict", 100),
    ],
    "split_on_match": [
        ("insert", [1, 2, 3, 4, 5, 6, 7, 8], 0, None, "a"),
        ("insert", [9, 9, 9], 0, None, "c"),
        ("match", [1, 2, 3, 4, 5, 99], None, "m"),
        ("match", [1, 2], None, "m2"),
        ("evict", 1),
        ("evict", 1),
        ("evict", 1),
        ("evict", 100),
    ],
    "lru_follows_access": [
        ("insert", [1, 1, 1], 0, None, "x"),
        ("insert", [2, 2, 2], 0, None, "y"),
        ("insert", [3, 3, 3], 0, None, "z"),
        ("match", [1, 1, 1, 4], None, "mx"),
        ("evict", 3),
        ("match", [2, 2], None, "my"),
        ("evict", 2),
        ("evict", 2),
        ("evict", 2),
    ],
    "lock_is_a_pin": [
        ("insert", S + [1, 2, 3], 0, None, "b1"),
        ("insert", S + [4, 5, 6], 0, None, "b2"),
        ("insert", S + [7, 8, 9], 0, None, "b3"),
        ("match", S + [4, 5, 6, 7], None, "m2"),
        ("lock", "m2"),
        ("lock", "m2"),
        ("evict", 100),
        ("unlock", "m2"),
        ("evict", 100),
        ("insert", S + [1, 2], 0, None, "b1"),
        ("unlock", "m2"),
        ("evict", 4),
        ("evict", 100),
    ],
    "shared_prefix_many_branches": [
        ("insert", S + [1, 2, 3, 4], 0, None, "p1"),
        ("insert", S + [1, 2, 7, 8, 9], 0, None, "p2"),
        ("insert", S + [5, 6], 0, None, "p3"),
        ("insert", S[:3] + [50, 51], 0, None, "p4"),
        ("insert", S + [1, 2, 3, 4, 10, 11], 0, None, "p5"),
        ("match", S + [1, 2, 7, 8], None, "m"),
        ("lock", "m"),
        ("match", S + [5], None, "m3"),
        ("evict", 3),
        ("evict", 1),
        ("unlock", "m"),
        ("match", S[:3] + [50, 51, 52], None, "m4"),
        ("evict", 6),
        ("evict", 100),
    ],
    "parent_becomes_leaf": [
        ("insert", [1, 2, 3, 4], 0, None, "a"),
        ("insert", [1, 2, 5, 6], 0, None, "b"),
        ("insert", [7, 8], 0, None, "c"),
        ("match", [7, 8], None, "mc"),
        ("evict", 5),
        ("evict", 100),
    ],
    "priority_orders_eviction": [
        ("insert", S + [1, 2, 3], 5, None, "hi"),
        ("insert", S + [4, 5, 6], 0, None, "lo"),
        ("insert", [9, 9, 9, 9], 2, None, "mid"),
        ("match", S + [4, 5, 6], None, "m"),
        ("evict", 3),
        ("evict", 4),
        ("evict", 100),
    ],
    "insert_only_raises_priority": [
        ("insert", [1, 2, 3, 4], 5, None, "a"),
        ("insert", [1, 2, 3, 4], 1, None, "a"),
        ("insert", [1, 2, 7, 8], 3, None, "b"),
        ("insert", [6, 6], 4, None, "c"),
        ("evict", 2),
        ("evict", 2),
        ("evict", 100),
    ],
    "split_inherits_priority": [
        ("insert", [1, 2, 3, 4, 5, 6], 7, None, "a"),
        ("match", [1, 2, 3, 9], None, "m"),
        ("insert", [8, 8, 8], 1, None, "b"),
        ("insert", [1, 2, 3, 4, 5, 6, 7], 0, None, "a2"),
        ("evict", 1),
        ("evict", 3),
        ("evict", 100),
    ],
    "namespaces_keep_trees_apart": [
        ("insert", [1, 2, 3, 4], 0, None, "a"),
        ("insert", [1, 2, 3, 4], 0, "tenant-b", "b"),
        ("insert", [1, 2, 9], 0, "tenant-b", "b2"),
        ("match", [1, 2, 3], "tenant-c", "none"),
        ("match", [1, 2, 3], None, "ma"),
        ("lock", "ma"),
        ("evict", 3),
        ("unlock", "ma"),
        ("evict", 100),
    ],
    "evict_nothing_and_everything": [
        ("evict", 5),
        ("insert", [1, 2, 3], 0, None, "a"),
        ("evict", 0),
        ("match", [], None, "empty"),
        ("insert", [], 0, None, "empty2"),
        ("evict", 10_000),
        ("match", [1, 2, 3], None, "gone"),
    ],
}


def _pages(tokens, page_size):
    """Each token becomes one whole page of distinct ids, so structure stays the same."""
    return [t * page_size + i for t in tokens for i in range(page_size)]


def _scale(ops, page_size):
    out = []
    for op in ops:
        if op[0] in ("insert", "match"):
            out.append((op[0], _pages(op[1], page_size)) + tuple(op[2:]))
        elif op[0] == "evict":
            out.append(("evict", op[1] * page_size))
        else:
            out.append(op)
    return out


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("policy", ["lru", "priority"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_matches_sglang(sglang_ticks, scenario, policy, page_size):
    replay(sglang_ticks, _scale(SCENARIOS[scenario], page_size), page_size=page_size, policy=policy)


def test_unaligned_keys_round_down_to_pages(sglang_ticks):
    """page_size 4: keys and matches that end or diverge mid-page count whole pages only."""
    ops = [
        ("insert", list(range(1, 11)), 0, None, "a"),  # 10 tokens -> 8 cached
        ("match", list(range(1, 7)) + [99, 99], None, "m"),  # diverges in page 2 -> 4
        ("insert", [1, 2, 3], 0, None, "short"),  # less than a page: nothing
        ("insert", list(range(1, 9)) + [50, 51, 52, 53, 54], 0, None, "b"),
        ("match", list(range(1, 9)) + [50, 51, 52], None, "m2"),  # 8 + partial page -> 8
        ("evict", 1),
        ("evict", 100),
    ]
    replay(sglang_ticks, ops, page_size=4, policy="lru")


# ---- randomized scenarios ----

def random_ops(seed, *, page_size, num_steps):
    """Seeded operations over overlapping sequences: shared prompts, branches, re-visits."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(1000, 1100) for _ in range(rng.randrange(2, 7) * page_size)] for _ in range(3)]
    sequences: list[list[int]] = []
    named: list[str] = []
    locked: list[str] = []
    ops = []
    for step in range(num_steps):
        r = rng.random()
        if r < 0.4 or not sequences:
            if sequences and rng.random() < 0.6:  # branch off a known sequence
                base = rng.choice(sequences)
                base = base[: rng.randrange(0, len(base) + 1)]
            else:
                base = list(rng.choice(prompts))
            seq = base + [rng.randrange(0, 60) for _ in range(rng.randrange(0, 4 * page_size + 3))]
            sequences.append(seq)
            ns = "t1" if rng.random() < 0.15 else None
            ops.append(("insert", seq, rng.choice([0, 0, 1, 2, 5]), ns, f"n{step}"))
            named.append(f"n{step}")
        elif r < 0.65:
            seq = rng.choice(sequences)
            seq = seq[: rng.randrange(0, len(seq) + 1)] + ([rng.randrange(0, 60)] if rng.random() < 0.5 else [])
            ops.append(("match", seq, None, f"n{step}"))
            named.append(f"n{step}")
        elif r < 0.75 and named:
            name = rng.choice(named[-6:])  # recent nodes: most are still cached
            ops.append(("lock", name))
            locked.append(name)
        elif r < 0.85 and locked:
            ops.append(("unlock", locked.pop(rng.randrange(len(locked)))))
        else:
            ops.append(("evict", rng.randrange(1, 12 * page_size)))
    return ops


def _drop_stale(ops, page_size, policy):
    """Keep only the ops our cache can take (no lock on an evicted node); SGLang must agree on the rest."""
    cache = RadixCache(page_size=page_size, eviction_policy=policy)
    nodes, held, kept = {}, {}, []
    for op in ops:
        kind = op[0]
        if kind == "insert":
            nodes[op[4]] = cache.insert(op[1], op[2], namespace=op[3]).last_node
        elif kind == "match":
            nodes[op[3]] = cache.match_prefix(op[1], namespace=op[2]).last_node
        elif kind == "lock":
            if nodes[op[1]].evicted:
                continue
            cache.inc_lock_ref(nodes[op[1]])
            held[op[1]] = held.get(op[1], 0) + 1
        elif kind == "unlock":
            if not held.get(op[1]):
                continue
            cache.dec_lock_ref(nodes[op[1]])
            held[op[1]] -= 1
        else:
            cache.evict(op[1])
        kept.append(op)
    return kept


@pytest.mark.parametrize("page_size", [1, 2])
@pytest.mark.parametrize("policy", ["lru", "priority"])
@pytest.mark.parametrize("seed", range(12))
def test_random_scenario_matches_sglang(sglang_ticks, seed, policy, page_size):
    ops = _drop_stale(random_ops(seed, page_size=page_size, num_steps=200), page_size, policy)
    cache = replay(sglang_ticks, ops, page_size=page_size, policy=policy)
    assert cache.total_size() > 0 or any(op[0] == "evict" for op in ops)
