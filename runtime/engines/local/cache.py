"""The local engine's prefix cache: SGLang's radix tree over real KV slots, plus a host tier.

The tree is `engines/sim/radix.py`, the one the simulated worker runs (SGLang-conformant
matching, splitting, locking, priorities and eviction order), with a value per node: the pool
slots of its tokens. So the local engine and the simulator evict the same nodes in the same order
under the same decisions; only here the slots hold real K and V.

    device pool (SlotPool)                        host pool (SlotPool, optional)
    ┌───────────────────────────┐   evict:        ┌───────────────────────────┐
    │ tree nodes' slots  (L)    │ ──copy out────> │ host tree nodes' slots    │
    │ running requests' slots   │   load back:    │ (LRU; evicts to make room)│
    │ free                      │ <──copy in───── │                           │
    └───────────────────────────┘                 └───────────────────────────┘

Memory: `used = tree tokens + private tokens` (private: slots of running requests that are not in
the tree yet). A request reserves all it will write at admission (prompt beyond the hit plus its
output), as SGLang does, so a running request never waits for memory. When the free slots fall
short, unlocked leaves are evicted in the strategy's order; with a host tier each evicted node's KV
is first copied to host slots (write-back on eviction: SGLang HiCache's `write_back` policy) and
the host tree learns its full path. A later match that finds more tokens on the host than on the
device copies them back into fresh device slots and inserts them into the tree, so the request
computes only what neither tier holds.

Locks (SGLang's lock_ref) protect a running request's matched prefix and pinned prefixes. Slots a
request wrote that the tree already holds when it finishes (another request inserted the same
tokens meanwhile) are freed at insert, as SGLang's `cache_finished_req` does.

All of this runs on the engine's event-loop thread between model steps; the model thread only
reads and writes the slots of sequences it was handed (locked or private, never evictable).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch
from agentflow.runtime.engines.local.pool import SlotPool
from agentflow.runtime.engines.sim.radix import TOKEN_BYTES as B
from agentflow.runtime.engines.sim.radix import Eviction, Node, RadixCache

_EMPTY = torch.empty(0, dtype=torch.long)


@dataclass(slots=True)
class Hit:
    """A matched, locked prefix of a prompt."""

    node: Node  # locked; unlock with PrefixCache.unlock(hit)
    num_tokens: int  # device tokens matched (after any host load-back)
    host_tokens: int  # of those, loaded back from the host tier by this match
    slots: torch.Tensor  # device slots of the matched tokens, root first


def path_key(node: Node) -> bytes:
    """The packed tokens from the root through `node` (works on evicted nodes too)."""
    parts = []
    while node is not None and node.parent is not None:
        parts.append(node.key)
        node = node.parent
    return b"".join(reversed(parts))


def path_slots(tree: RadixCache, node: Node) -> torch.Tensor:
    values = [n.value for n in tree.path_nodes(node)]
    return torch.cat(values) if values else _EMPTY


class PrefixCache:
    def __init__(self, pool: SlotPool, *, strategy: str = "lru", host: SlotPool | None = None):
        self.pool = pool
        self.tree = RadixCache(page_size=1, eviction_policy=strategy)
        self.host = host
        self.host_tree = RadixCache(page_size=1, eviction_policy="lru") if host is not None else None
        self.private_tokens = 0  # slots held by running requests, not in the tree
        self.evicted_tokens = 0
        self.written_back_tokens = 0
        self.loaded_back_tokens = 0

    # ---- memory ----------------------------------------------------------------------------
    @property
    def used_tokens(self) -> int:
        return self.pool.num_used

    def make_room(self, num_tokens: int) -> bool:
        """Evict unlocked leaves (writing them back to the host tier) until `num_tokens` are free."""
        short = num_tokens - self.pool.num_free
        if short <= 0:
            return True
        evicted = self.tree.evict(short)
        if self.host is not None:
            for e in evicted:
                self._write_back(e)
        for e in evicted:
            self.pool.free(e.value)
            self.evicted_tokens += e.num_tokens
        return self.pool.num_free >= num_tokens

    def reserve(self, num_tokens: int) -> torch.Tensor | None:
        """Private slots for a request (evicting as needed), or None when locks leave too little."""
        if not self.make_room(num_tokens):
            return None
        slots = self.pool.alloc(num_tokens)
        self.private_tokens += num_tokens
        return slots

    def release(self, slots: torch.Tensor) -> None:
        """Free private slots (a cancelled request, or the unused tail of a finished one)."""
        self.pool.free(slots)
        self.private_tokens -= int(slots.numel())

    # ---- lookups -----------------------------------------------------------------------------
    def match(self, tokens: bytes, namespace: Hashable, *, load_back: bool = True) -> Hit:
        """Longest cached prefix of `tokens`, locked; host-tier tokens beyond the device match are
        copied back first (when `load_back` and there is room)."""
        m = self.tree.match_prefix(tokens, namespace)
        loaded = 0
        if load_back and self.host_tree is not None:
            got = self._load_back(tokens, namespace, m.last_node, m.num_tokens)
            if got:
                loaded = got
                m = self.tree.match_prefix(tokens, namespace)
        self.tree.inc_lock_ref(m.last_node)
        return Hit(node=m.last_node, num_tokens=m.num_tokens, host_tokens=loaded,
                   slots=path_slots(self.tree, m.last_node))

    def unlock(self, node: Node) -> None:
        self.tree.dec_lock_ref(node)

    def insert(self, tokens: bytes, slots: torch.Tensor, namespace: Hashable, *, own_from: int,
               priority: int = 0) -> int:
        """Hand a finished request's slots to the tree: `slots[i]` holds token i; `slots[:own_from]`
        are the tree's (its locked hit), the rest private. Private slots of tokens the tree already
        holds (another request cached them meanwhile) are freed. Returns tokens new to the tree."""
        n = len(tokens) // B
        res = self.tree.insert(tokens, priority=priority, namespace=namespace, value=slots[:n])
        dup = slots[own_from: max(own_from, res.num_prefix_tokens)]
        self.pool.free(dup)
        self.private_tokens -= n - own_from
        return n - res.num_prefix_tokens

    def resident_tokens(self, tokens: bytes, namespace: Hashable) -> int:
        return self.tree.peek_prefix(tokens, namespace).num_tokens

    def host_extra(self, tokens: bytes, namespace: Hashable) -> int:
        """Tokens of `tokens` the host tier holds beyond what the device holds."""
        if self.host_tree is None:
            return 0
        return max(0, self.host_tree.peek_prefix(tokens, namespace).num_tokens
                   - self.tree.peek_prefix(tokens, namespace).num_tokens)

    def prefetch(self, tokens: bytes, namespace: Hashable) -> int:
        """Copy host-held tokens of `tokens` back to the device now. Returns tokens loaded."""
        if self.host_extra(tokens, namespace) <= 0:
            return 0
        m = self.tree.match_prefix(tokens, namespace)
        return self._load_back(tokens, namespace, m.last_node, m.num_tokens)

    # ---- the host tier -----------------------------------------------------------------------
    def _write_back(self, e: Eviction) -> None:
        """Copy an evicted node's KV (and whatever of its path the host lacks) to host slots."""
        assert self.host is not None and self.host_tree is not None
        full = path_key(e.parent) + e.key
        n = len(full) // B
        hm = self.host_tree.match_prefix(full, e.namespace)
        if hm.num_tokens >= n:
            return
        self.host_tree.inc_lock_ref(hm.last_node)
        try:
            need = n - hm.num_tokens
            short = need - self.host.num_free
            if short > 0:
                for he in self.host_tree.evict(short):
                    self.host.free(he.value)
            dst = self.host.alloc(need)
            if dst is None:
                return  # the host tier is smaller than this path: it stays uncached
            # device slots of the whole path: the ancestors are still valid (evicted ones are freed
            # only after every write-back of this eviction round)
            src = torch.cat([_path_values(e.parent), e.value])[hm.num_tokens:]
            self.host.copy_from(dst, self.pool, src)
            value = torch.cat([torch.full((hm.num_tokens,), -1, dtype=torch.long), dst])
            self.host_tree.insert(full, namespace=e.namespace, value=value)
            self.written_back_tokens += need
        finally:
            self.host_tree.dec_lock_ref(hm.last_node)

    def _load_back(self, tokens: bytes, namespace: Hashable, dev_node: Node, dev_tokens: int) -> int:
        assert self.host is not None and self.host_tree is not None
        hm = self.host_tree.match_prefix(tokens, namespace)
        extra = hm.num_tokens - dev_tokens
        if extra <= 0:
            return 0
        self.tree.inc_lock_ref(dev_node)  # keep the device part while room is made
        try:
            if not self.make_room(extra):
                return 0
            dst = self.pool.alloc(extra)
            src = path_slots(self.host_tree, hm.last_node)[dev_tokens:hm.num_tokens]
            self.pool.copy_from(dst, self.host, src)
            prefix = path_slots(self.tree, dev_node)
            full = tokens[: hm.num_tokens * B]
            self.tree.insert(full, namespace=namespace, value=torch.cat([prefix, dst]))
            self.loaded_back_tokens += extra
            return extra
        finally:
            self.tree.dec_lock_ref(dev_node)


def _path_values(node: Node | None) -> torch.Tensor:
    values = []
    while node is not None and node.parent is not None:
        values.append(node.value)
        node = node.parent
    return torch.cat(list(reversed(values))) if values else _EMPTY


__all__ = ["Hit", "PrefixCache", "path_key", "path_slots"]
