"""Our radix cache alone, on tiny trees: exact structure, sizes, eviction order (no sglang needed).

tests/engines/test_sglang_conformance.py checks the same behaviour against SGLang's classes.
"""

from __future__ import annotations

import random
from array import array

import numpy as np
import pytest

from agentflow.runtime.engines.sim.radix import (
    LRUStrategy,
    RadixCache,
    make_eviction_strategy,
    pack_tokens,
    unpack_tokens,
)


def tree(cache: RadixCache) -> dict:
    """The tree as nested {tokens: subtree}, for exact structure assertions."""

    def walk(node):
        return {child.tokens(): walk(child) for child in sorted(node.children.values(), key=lambda n: n.key)}

    return walk(cache.root)


def evicted_tokens(evictions) -> list[tuple[int, ...]]:
    return [e.tokens() for e in evictions]


def check_invariants(cache: RadixCache) -> None:
    """Sizes, leaf set and positions agree with a walk of the whole tree."""
    evictable = protected = 0
    leaves = set()
    stack = [cache.root]
    while stack:
        node = stack.pop()
        for child in node.children.values():
            assert child.parent is node and not child.evicted
            assert child.start == node.end and child.num_tokens > 0
            assert child.num_tokens % cache.page_size == 0
            assert child.lock_ref >= 0 and (node is cache.root or node.lock_ref >= child.lock_ref)
            if child.lock_ref:
                protected += child.num_tokens
            else:
                evictable += child.num_tokens
            if not child.children and not child.lock_ref:
                leaves.add(child)
            stack.append(child)
    assert (evictable, protected) == (cache.evictable_size(), cache.protected_size())
    assert leaves == set(cache.evictable_leaves())


# ---- keys ----

def test_pack_round_trips_lists_arrays_numpy_and_bytes():
    key = pack_tokens([1, 2, 70_000, 2**40])
    assert unpack_tokens(key) == (1, 2, 70_000, 2**40)
    assert pack_tokens(array("q", [1, 2, 70_000, 2**40])) == key
    assert pack_tokens(np.array([1, 2, 70_000, 2**40], dtype=np.int64)) == key
    assert pack_tokens(key) is key
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_tokens(b"abc")


@pytest.mark.parametrize("page_size", [1, 3, 4])
def test_match_length_finds_the_first_differing_page(page_size):
    """The galloping comparison against a token-by-token loop, long and short keys."""
    rng = random.Random(page_size)
    cache = RadixCache(page_size=page_size)
    for _ in range(300):
        n = rng.choice([page_size, 5 * page_size, 40 * page_size, 2000 * page_size])
        a = [rng.randrange(5) for _ in range(n)]
        b = a[: rng.randrange(n + 1)] + [rng.randrange(5) for _ in range(rng.randrange(n))]
        b = b[: len(b) // page_size * page_size]
        same = 0
        while same < min(len(a), len(b)) and a[same] == b[same]:
            same += 1
        want = same // page_size * page_size
        off = rng.randrange(0, 3) * page_size
        got = cache._match_len(pack_tokens(a), pack_tokens([7] * off + b), off * 8)
        assert got // 8 == want


# ---- insert, match, split ----

def test_insert_then_match_splits_where_the_key_ends():
    cache = RadixCache()
    r = cache.insert([1, 2, 3, 4])
    assert r.num_prefix_tokens == 0 and r.last_node.tokens() == (1, 2, 3, 4)
    m = cache.match_prefix([1, 2, 9])
    assert m.num_tokens == 2 and m.last_node.tokens() == (1, 2)
    assert tree(cache) == {(1, 2): {(3, 4): {}}}  # a match splits, as SGLang's does
    assert [n.tokens() for n in cache.path_nodes(r.last_node)] == [(1, 2), (3, 4)]
    assert (r.last_node.start, r.last_node.end) == (2, 4)
    check_invariants(cache)


def test_insert_splits_at_divergence_and_counts_the_cached_prefix():
    cache = RadixCache()
    cache.insert([1, 2, 3, 4])
    r = cache.insert([1, 2, 5, 6, 7])
    assert r.num_prefix_tokens == 2 and r.last_node.tokens() == (5, 6, 7)
    assert tree(cache) == {(1, 2): {(3, 4): {}, (5, 6, 7): {}}}
    again = cache.insert([1, 2, 5, 6, 7])
    assert again.num_prefix_tokens == 5 and again.last_node is r.last_node
    inner = cache.insert([1, 2, 5])
    assert inner.num_prefix_tokens == 3 and tree(cache) == {(1, 2): {(3, 4): {}, (5,): {(6, 7): {}}}}
    assert cache.total_size() == cache.evictable_size() == 7
    check_invariants(cache)


def test_hit_counts_follow_sglang():
    cache = RadixCache()
    a = cache.insert([1, 2, 3]).last_node
    assert a.hit_count == 1
    cache.insert([1, 2, 3])
    cache.match_prefix([1, 2, 3])  # a match is no hit
    assert a.hit_count == 2
    cache.insert([1, 4])
    upper = cache.path_nodes(a)[0]
    assert upper.tokens() == (1,) and upper.hit_count == 3 and a.hit_count == 2  # the split copied 2


def test_page_size_rounds_keys_and_matches_down():
    cache = RadixCache(page_size=2)
    r = cache.insert([1, 2, 3, 4, 5])
    assert r.last_node.tokens() == (1, 2, 3, 4) and cache.total_size() == 4
    assert cache.match_prefix([1, 2, 3, 9]).num_tokens == 2  # diverges inside page 2
    assert tree(cache) == {(1, 2): {(3, 4): {}}}
    assert cache.match_prefix([1, 3, 3, 4]).num_tokens == 0  # no child starts with page (1, 3)
    short = cache.match_prefix([1])
    assert short.num_tokens == 0 and short.last_node is cache.root
    assert cache.insert([7]).last_node is cache.root and cache.total_size() == 4
    check_invariants(cache)


def test_peek_prefix_is_read_only():
    cache = RadixCache()
    leaf = cache.insert([1, 2, 3, 4]).last_node
    t = leaf.last_access_time
    peek = cache.peek_prefix([1, 2, 3, 9])
    assert peek.num_tokens == 3 and peek.nodes == (leaf,)  # the last node holds more than matched
    assert tree(cache) == {(1, 2, 3, 4): {}} and leaf.last_access_time == t and leaf.hit_count == 1
    assert cache.peek_prefix([5]).nodes == ()


def test_namespaces_never_share_nodes():
    cache = RadixCache()
    cache.insert([1, 2, 3])
    b = cache.insert([1, 2, 3], namespace="tenant-b")
    assert b.num_prefix_tokens == 0 and b.last_node.namespace == "tenant-b"
    assert cache.match_prefix([1, 2], namespace="tenant-c").num_tokens == 0
    assert cache.match_prefix([1, 2], namespace="tenant-b").last_node.namespace == "tenant-b"
    assert cache.total_size() == 6
    assert {e.namespace for e in cache.evict(100)} == {None, "tenant-b"}


# ---- locks ----

def test_lock_moves_the_path_to_protected_and_pins_it():
    cache = RadixCache()
    cache.insert([1, 2, 3, 4])
    b = cache.insert([1, 2, 5, 6]).last_node
    assert cache.inc_lock_ref(b) == -4  # (5 6) and (1 2) leave the evictable count
    assert (cache.evictable_size(), cache.protected_size()) == (2, 4)
    assert cache.inc_lock_ref(b) == 0  # a second lock moves nothing
    assert evicted_tokens(cache.evict(100)) == [(3, 4)]
    assert tree(cache) == {(1, 2): {(5, 6): {}}}
    assert cache.dec_lock_ref(b) == 0 and cache.evict(100) == []
    assert cache.dec_lock_ref(b) == 4 and (cache.evictable_size(), cache.protected_size()) == (4, 0)
    assert evicted_tokens(cache.evict(100)) == [(5, 6), (1, 2)]
    assert b.evicted
    with pytest.raises(RuntimeError, match="evicted"):
        cache.inc_lock_ref(b)
    check_invariants(cache)


def test_dec_lock_ref_on_an_unlocked_path_raises():
    cache = RadixCache()
    node = cache.insert([1, 2]).last_node
    with pytest.raises(RuntimeError, match="unlocked"):
        cache.dec_lock_ref(node)


def test_locking_the_root_is_a_no_op():
    cache = RadixCache()
    cache.insert([1])
    assert cache.inc_lock_ref(cache.root) == 0 and cache.dec_lock_ref(cache.root) == 0


def test_a_split_node_keeps_its_lock_count():
    cache = RadixCache()
    leaf = cache.insert([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(leaf)
    upper = cache.match_prefix([1, 2]).last_node
    assert upper.lock_ref == 1 and leaf.lock_ref == 1 and cache.protected_size() == 4
    cache.dec_lock_ref(leaf)
    assert upper.lock_ref == 0 and cache.evictable_size() == 4
    check_invariants(cache)


# ---- eviction ----

def test_lru_evicts_least_recently_used_leaves_first():
    cache = RadixCache()
    for key in ([1, 1], [2, 2], [3, 3]):
        cache.insert(key)
    cache.match_prefix([1, 1])
    assert [n.tokens() for n in cache.evictable_leaves()] == [(2, 2), (3, 3), (1, 1)]
    assert evicted_tokens(cache.evict(1)) == [(2, 2)]  # whole leaves: 2 tokens freed for 1 asked
    assert evicted_tokens(cache.evict(3)) == [(3, 3), (1, 1)]
    assert cache.evict(5) == [] and cache.total_size() == 0


def test_a_parent_that_becomes_a_leaf_joins_the_same_eviction():
    cache = RadixCache()
    cache.insert([1, 2, 3])
    cache.insert([1, 2, 4])  # (1 2) is stamped with this insert, after (3)
    cache.insert([9])
    evicted = cache.evict(4)
    assert evicted_tokens(evicted) == [(3,), (4,), (1, 2)]  # (1 2) is older than (9): it goes first
    assert [(e.start, e.num_tokens) for e in evicted] == [(2, 1), (2, 1), (0, 2)]
    assert tree(cache) == {(9,): {}}


def test_evict_zero_does_nothing_and_negative_raises():
    cache = RadixCache()
    cache.insert([1])
    assert cache.evict(0) == [] and cache.total_size() == 1
    with pytest.raises(ValueError):
        cache.evict(-1)


def test_priority_evicts_low_priority_first_then_lru():
    cache = RadixCache(eviction_policy="priority")
    cache.insert([1, 1], priority=5)
    cache.insert([2, 2], priority=0)
    cache.insert([3, 3], priority=0)
    cache.match_prefix([2, 2])
    assert evicted_tokens(cache.evict(100)) == [(3, 3), (2, 2), (1, 1)]


def test_insert_only_raises_priority_and_a_split_inherits_it():
    cache = RadixCache(eviction_policy="priority")
    a = cache.insert([1, 2, 3, 4], priority=5).last_node
    cache.insert([1, 2, 3, 4], priority=1)
    assert a.priority == 5
    b = cache.insert([1, 2, 7], priority=3).last_node
    upper = cache.path_nodes(b)[0]
    assert upper.tokens() == (1, 2) and upper.priority == 5 and b.priority == 3 and a.priority == 5
    cache.insert([1, 2, 8], priority=9)
    assert upper.priority == 9  # raised by the walk


def test_set_path_priority_lowers_a_whole_path():
    cache = RadixCache(eviction_policy="priority")
    a = cache.insert([1, 2, 3], priority=5).last_node
    cache.insert([1, 2, 4], priority=5)
    cache.insert([9, 9], priority=1)
    cache.set_path_priority(a, 0)
    assert [n.priority for n in cache.path_nodes(a)] == [0, 0]
    assert evicted_tokens(cache.evict(1)) == [(3,)]
    assert evicted_tokens(cache.evict(100)) == [(9, 9), (4,), (1, 2)]


def test_injected_clock_ties_fall_back_to_creation_order():
    now = [0.0]
    cache = RadixCache(clock=lambda: now[0])
    cache.insert([3])
    cache.insert([1])
    cache.insert([2])  # all stamped 0.0
    now[0] = 1.0
    cache.match_prefix([3])
    assert evicted_tokens(cache.evict(100)) == [(1,), (2,), (3,)]


def test_strategies_by_name_or_object():
    assert isinstance(make_eviction_strategy("LRU"), LRUStrategy)
    with pytest.raises(ValueError, match="valid: lru, priority"):
        RadixCache(eviction_policy="belady")

    class MostRecentFirst:
        def get_priority(self, node):
            return -node.last_access_time

    cache = RadixCache(eviction_policy=MostRecentFirst())
    cache.insert([1])
    cache.insert([2])
    assert evicted_tokens(cache.evict(1)) == [(2,)]
    with pytest.raises(TypeError):
        RadixCache(eviction_policy=object())


def test_reset_empties_the_tree():
    cache = RadixCache()
    node = cache.insert([1, 2]).last_node
    cache.inc_lock_ref(node)
    cache.reset()
    assert cache.total_size() == 0 and cache.root.children == {} and cache.evictable_leaves() == []


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("seed", range(4))
def test_random_operations_keep_the_books(seed, page_size):
    rng = random.Random(seed)
    cache = RadixCache(page_size=page_size, eviction_policy=rng.choice(["lru", "priority"]))
    seqs, locked = [], []
    for _ in range(400):
        r = rng.random()
        if r < 0.4 or not seqs:
            base = rng.choice(seqs)[: rng.randrange(50)] if seqs and rng.random() < 0.7 else []
            seqs.append(base + [rng.randrange(8) for _ in range(rng.randrange(1, 20))])
            cache.insert(seqs[-1], rng.randrange(4))
        elif r < 0.6:
            node = cache.match_prefix(rng.choice(seqs)).last_node
            if rng.random() < 0.5:
                cache.inc_lock_ref(node)
                locked.append(node)
        elif r < 0.75 and locked:
            cache.dec_lock_ref(locked.pop(rng.randrange(len(locked))))
        else:
            before = cache.evictable_size()
            freed = sum(e.num_tokens for e in cache.evict(rng.randrange(30)))
            assert cache.evictable_size() == before - freed
        check_invariants(cache)


class _FreshHeapPriority:
    """The priority key without `node_local`: RadixCache then heapifies afresh on every evict."""

    def get_priority(self, node):
        return (node.priority, node.last_access_time)


@pytest.mark.parametrize("seed", range(6))
def test_lazy_heap_evicts_exactly_like_a_fresh_heapify(seed):
    rng = random.Random(seed)
    lazy, fresh = RadixCache(eviction_policy="priority"), RadixCache(eviction_policy=_FreshHeapPriority())
    assert lazy._lazy_heap and not fresh._lazy_heap
    seqs, locked = [], []
    for _ in range(600):
        r = rng.random()
        if r < 0.35 or not seqs:
            if seqs and rng.random() < 0.3:  # a re-insert: stamps and may raise a leaf's priority
                seq = rng.choice(seqs)
            else:
                base = rng.choice(seqs)[: rng.randrange(30)] if seqs and rng.random() < 0.7 else []
                seq = base + [rng.randrange(6) for _ in range(rng.randrange(1, 12))]
                seqs.append(seq)
            p = rng.randrange(4)
            for c in (lazy, fresh):
                c.insert(seq, p)
        elif r < 0.55:
            seq = rng.choice(seqs)
            results = [c.match_prefix(seq) for c in (lazy, fresh)]
            if rng.random() < 0.4:
                for c, res in zip((lazy, fresh), results):
                    c.inc_lock_ref(res.last_node)
                locked.append(tuple(res.last_node for res in results))
        elif r < 0.65 and locked:
            for c, node in zip((lazy, fresh), locked.pop(rng.randrange(len(locked)))):
                c.dec_lock_ref(node)
        elif r < 0.75:
            seq, p = rng.choice(seqs), rng.randrange(4)
            for c in (lazy, fresh):
                nodes = c.peek_prefix(seq).nodes
                if nodes:
                    c.set_path_priority(nodes[-1], p)
        else:
            n = rng.randrange(25)
            assert [(e.start, e.tokens()) for e in lazy.evict(n)] == [(e.start, e.tokens()) for e in fresh.evict(n)]
        assert lazy.evictable_size() == fresh.evictable_size()
        assert tree(lazy) == tree(fresh)
