"""policy.py: the pure parts of the `workflow` eviction policy (no SGLang needed)."""

from __future__ import annotations

import types

import pytest
from agentflow.runtime.engines.sglang.policy import (
    WorkflowStrategy,
    path_priorities,
    priority_updates,
)


@pytest.mark.parametrize(("paths", "want"), [
    ([], {}),
    ([(("s", "a"), 5)], {"s": 5, "a": 5}),
    ([(("s", "a"), 5), (("s", "b"), 9)], {"s": 9, "a": 5, "b": 9}),  # shared: its most urgent user
    ([(("s", "a"), 9), (("s", "a", "x"), 2)], {"s": 9, "a": 9, "x": 2}),  # a longer key does not lower
    ([(("s",), 0), (("s", "a"), -3)], {"s": 0, "a": -3}),
])
def test_path_priorities_take_the_max_over_the_keys_reaching_a_node(paths, want):
    assert path_priorities(paths) == want


@pytest.mark.parametrize(("wanted", "before", "current", "want"), [
    ({"s": 9}, [], {"s": 0}, {"s": 9}),
    ({"s": 9}, ["s"], {"s": 9}, {}),  # already right: no write
    ({"s": 5}, ["s", "a"], {"s": 9, "a": 9}, {"s": 5, "a": 0}),  # a's key is gone: back to the floor
    ({}, ["a"], {"a": 0}, {}),
])
def test_priority_updates_write_only_what_changes(wanted, before, current, want):
    assert priority_updates(wanted, before, current) == want


def test_the_strategy_orders_by_priority_then_recency():
    nodes = [types.SimpleNamespace(name=n, priority=p, last_access_time=t)
             for n, p, t in [("old-hot", 9, 1.0), ("new-cold", 0, 5.0), ("old-cold", 0, 2.0), ("new-hot", 9, 6.0)]]
    order = sorted(nodes, key=WorkflowStrategy().get_priority)
    assert [n.name for n in order] == ["old-cold", "new-cold", "old-hot", "new-hot"]
