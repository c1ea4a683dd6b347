"""The plugin's cache (pins.AgentflowRadixCache) on SGLang 0.5.23's real UnifiedRadixCache, CPU pools.

Path priorities, the `workflow` eviction order, pins with TTL and their reaper (driven by explicit
ticks: the broadcast clock, so no test sleeps), the pin cap and the key registry. Token ids are
small ints; "t" is the namespace (extra_key) unless a test says otherwise.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.needs_sglang

SYS = (1, 2, 3, 4)
A = SYS + (10, 11, 12)
B = SYS + (20, 21, 22)


def _two_agents(af_cache, **kw):
    d = af_cache(**kw)
    d.insert(A)
    d.insert(B)
    c = d.cache
    c.declare_prefix("sys", "t", SYS)
    c.declare_prefix("A", "t", A)
    c.declare_prefix("B", "t", B)
    return d, c


def test_the_workflow_policy_is_what_the_tree_evicts_by(af_cache):
    d = af_cache()
    from agentflow.runtime.engines.sglang.policy import WorkflowStrategy

    assert isinstance(d.cache.tree_core.eviction_strategy, WorkflowStrategy)


def test_a_shared_prefix_is_as_urgent_as_its_most_urgent_user_and_comes_down_when_it_finishes(af_cache):
    d, c = _two_agents(af_cache)
    c.set_priority("A", 999)
    c.set_priority("B", 500)
    assert d.priorities() == {SYS: 999, A: 999, B: 500}
    c.set_priority("A", 0)  # agent A finished: only B still reaches into the system prompt
    assert d.priorities() == {SYS: 500, A: 0, B: 500}
    c.set_priority("B", 0)
    assert d.priorities() == {SYS: 0, A: 0, B: 0}
    c.set_priority("sys", 7)  # a key may cover only part of others' paths
    assert d.priorities() == {SYS: 7, A: 0, B: 0}


def test_insert_only_raises_but_the_plugin_lowers_along_the_whole_path(af_cache):
    d, c = _two_agents(af_cache)
    d.insert(A + (13,), priority=5000)  # SGLang's insert: max(node, 5000) along the path
    assert d.priorities()[SYS] == 5000
    c.set_priority("A", 10)  # the scheduler's view wins on every node a live key reaches
    assert d.priorities() == {SYS: 10, A: 10, B: 0, A + (13,): 5000}


def test_nodes_inserted_under_a_live_key_get_its_priority_before_the_next_eviction(af_cache):
    d = af_cache(pool_tokens=64)
    c = d.cache
    c.declare_prefix("A", "t", A + (13, 14))  # declared before its tail is in the tree
    c.set_priority("A", 900)
    d.insert(A)  # splits nothing; the new nodes carry only the request's priority (0)
    d.insert(B)
    assert d.priorities() == {SYS: 0, A: 0, B: 0}
    assert d.evict(3) == 3  # the refresh runs first: B's tail (priority 0) goes, not A's
    assert d.priorities() == {SYS: 900, A: 900}


def test_eviction_follows_priority_then_recency(af_cache):
    d, c = _two_agents(af_cache)
    c.set_priority("B", 800)
    c.set_priority("A", 400)
    assert d.evict(1) == 3  # one leaf at a time, whole nodes: A's tail (400) before B's (800)
    assert sorted(d.priorities()) == [SYS, B]


def test_a_pin_holds_a_path_until_its_ttl_and_the_reaper_ends_it(af_cache):
    d, c = _two_agents(af_cache)
    assert c.pin("A", "p1", 5.0)
    assert c.pinned_tokens() == len(A)
    assert d.evict(100) == 3  # only B's unpinned tail can go
    assert sorted(d.priorities()) == [SYS, A]
    c.advance_clock(4.999)
    assert len(c.pins) == 1
    c.advance_clock(5.0)
    assert c.pins == {} and [r.reason for r in c.released] == ["ttl_expired"]
    assert d.evict(100) == len(A)


def test_the_programs_next_call_or_an_unpin_ends_a_pin_early(af_cache):
    from agentflow.runtime.engines.sglang.control import (
        ProgramCall,
        UnpinPrefix,
        apply_actions,
    )

    d, c = _two_agents(af_cache)
    assert c.pin("A", "p1", 60.0) and c.pin("B", "p2", 60.0)
    apply_actions(c, [ProgramCall(program_id="p1")])
    assert list(c.pins) == [("B", "p2")] and c.released[-1].reason == "next_call"
    apply_actions(c, [UnpinPrefix(key="B", program_id=None, reason="pressure")])
    assert c.pins == {} and c.released[-1].reason == "pressure"
    assert d.tree() and all(locks == 0 for _, _, locks in d.tree())


def test_re_pinning_moves_the_deadline_and_holds_one_lock(af_cache):
    d, c = _two_agents(af_cache)
    assert c.pin("A", "p1", 5.0)
    c.advance_clock(4.0)
    assert c.pin("A", "p1", 5.0)
    assert c.next_deadline_s() == 9.0
    assert {toks: locks for toks, _, locks in d.tree()}[A] == 1
    c.advance_clock(8.0)
    assert len(c.pins) == 1


def test_pinned_tokens_count_a_shared_prefix_once_and_the_cap_refuses_a_pin_over_it(af_cache):
    _, c = _two_agents(af_cache, max_pinned_tokens=len(A) + 2)
    assert c.pin("A", "p1", 5.0)
    assert not c.pin("B", "p2", 5.0)  # 7 + 3 new tokens > 9
    assert c.pin("sys", "p2", 5.0)  # already inside A's pinned path: costs nothing
    assert c.pinned_tokens() == len(A)
    assert set(c.pins) == {("A", "p1"), ("sys", "p2")}


def test_unknown_or_absent_keys_change_nothing(af_cache):
    d, c = _two_agents(af_cache)
    before = d.tree()
    c.set_priority("nope", 900)
    assert not c.pin("nope", "p1", 5.0)
    c.declare_prefix("gone", "t", (77, 78))  # known key, tokens not on the device
    assert not c.pin("gone", "p1", 5.0)
    assert c.prefetch("A") == 0  # no host tier (HiCache) on this cache: nothing to load back
    assert d.tree() == before


def test_namespaces_keep_identical_tokens_apart(af_cache):
    d = af_cache()
    d.insert(A, ns="tenant1")
    assert d.match(A, ns="tenant2") == 0
    d.cache.declare_prefix("A2", "tenant2", A)
    assert not d.cache.pin("A2", "p", 5.0)  # tenant2 has nothing cached to pin
    assert d.match(A, ns="tenant1") == len(A)


def test_the_key_registry_is_bounded_but_keeps_keys_in_use(af_cache):
    d = af_cache()
    c = d.cache
    c.max_keys = 2
    d.insert(A)
    c.declare_prefix("A", "t", A)
    c.set_priority("A", 5)
    c.declare_prefix("x", "t", (1,))
    c.declare_prefix("y", "t", (2,))
    assert list(c.keys) == ["A", "y"]  # x, the oldest unused key, was forgotten; A has a priority


def test_a_node_split_off_a_prioritized_path_comes_down_with_it(af_cache):
    d, c = _two_agents(af_cache)
    c.set_priority("A", 900)
    d.insert((1, 2, 99))  # splits the system prompt: the new node [1, 2] copies 900 from its child
    assert d.priorities()[(1, 2)] == 900
    c.set_priority("A", 0)
    assert set(d.priorities().values()) == {0}


OTHER = (30, 31, 32, 33, 34, 35, 36)  # shares no token with A


@pytest.mark.parametrize("is_eagle", [False, True])
def test_declared_keys_match_sglangs_own_keys_under_eagle_and_a_cache_salt(af_cache, is_eagle):
    """SGLang namespaces a request's radix key by extra_key and cache_salt, and under EAGLE stores
    bigrams: a key built otherwise names no path, and its pin and priority silently do nothing."""
    d = af_cache(pool_tokens=64, is_eagle=is_eagle)
    c = d.cache
    d.insert(A, salt="s1")
    d.insert(OTHER)
    c.declare_prefix("A", "t", A, cache_salt="s1")
    c.declare_prefix("A-unsalted", "t", A)
    c.declare_prefix("B", "t", OTHER)
    length = len(A) - 1 if is_eagle else len(A)  # bigrams: one fewer than tokens
    assert [len(c.key_path("A")), len(c.key_path("A-unsalted"))] == [1, 0]
    assert c.pin("A", "p", 5.0) and not c.pin("A-unsalted", "p", 5.0)
    assert c.pins[("A", "p")].num_tokens == length
    c.set_priority("B", 900)
    assert [n.priority for n in c.key_path("B")] == [900]
    assert d.evict(64) == length  # A is pinned: only B can go
    assert (d.match(A, salt="s1"), d.match(A), d.match(OTHER)) == (length, 0, 0)
