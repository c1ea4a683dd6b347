"""The `workflow` eviction policy: pure functions over radix nodes, no SGLang import.

SGLang evicts the leaf with the smallest `get_priority(node)` first. Under `workflow` that key is
`(node.priority, node.last_access_time)`: the scheduler's steps-to-execution, mapped to a priority
(`decision.priority_of_steps`: due now -> 10^9, never again -> 0), decides; recency breaks ties.

What makes it a policy of its own is *who sets node.priority*. SGLang's insert only raises a
node's priority (max with the request's), and a split copies the child's onto the new parent. So
nothing would ever lower a priority, and a shared system prompt would keep whatever the last
insert left. The plugin instead sets priorities along whole paths from the keys it was told about:

    keys (priority)             radix path                          node priority set
    sys      (900)              root ─ [sys prompt] ─┬─ [hist A] ─ .. max(sys, A, B) = 999
    A = sys+hist A (999)                             │                 [hist A]: 999
    B = sys+hist B (0, done)                         └─ [hist B] ─ ..  [hist B]: floor (0)

A node is as urgent as the most urgent key whose path reaches into it (`path_priorities`), and a
node that no key reaches any more falls back to the floor (`priority_updates`): that is how
priorities come down when agents finish.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

N = TypeVar("N", bound=Hashable)

FLOOR_PRIORITY = 0  # what an insert without a priority gives (SGLang's default)


class WorkflowStrategy:
    """SGLang `EvictionStrategy` for `--radix-eviction-policy workflow` (duck-typed: SGLang calls
    only `get_priority`). Configurable through `--radix-eviction-policy-config '{}'`: no knobs."""

    def get_priority(self, node: Any) -> tuple[int, float]:
        return (node.priority, node.last_access_time)


def path_priorities(paths: Iterable[tuple[Sequence[N], int]]) -> dict[N, int]:
    """node -> the highest priority among the (path, priority) pairs whose path contains it."""
    best: dict[N, int] = {}
    for nodes, priority in paths:
        for n in nodes:
            if best.get(n, priority - 1) < priority:
                best[n] = priority
    return best


def priority_updates(wanted: Mapping[N, int], previously_set: Iterable[N], current: Mapping[N, int], *,
                     floor: int = FLOOR_PRIORITY) -> dict[N, int]:
    """The writes that make `current` agree with `wanted`: every wanted node at its priority, and
    every node set before but no longer wanted back at `floor`. Nodes already right are omitted."""
    out = {n: p for n, p in wanted.items() if current.get(n) != p}
    out.update({n: floor for n in previously_set if n not in wanted and current.get(n) != floor})
    return out


__all__ = ["FLOOR_PRIORITY", "WorkflowStrategy", "path_priorities", "priority_updates"]
