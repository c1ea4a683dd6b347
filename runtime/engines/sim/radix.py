"""SGLang 0.5.23's radix prefix cache, in pure Python: the simulated worker's KV index.

What this is
------------
The tree that SGLang's scheduler consults before every prefill: which leading tokens of a
prompt already have KV on the GPU, which paths are locked by running requests, and what to
evict when the pool is short. The semantics are those of 0.5.23's Python tree, read off
`mem_cache/radix_cache.py` (RadixCache) and the Python core of `unified_radix_cache.py`
(`unified_cache/unified_tree_core.py` + `components/full.py`, the tree the server really
builds), and `tests/engines/test_sglang_conformance.py` replays scenarios through this class
and both of those, asserting the same matched lengths, the same evictable/protected sizes and
the same eviction sequences. Nothing here imports torch or sglang.

The tree, with page_size 2 (keys are page-aligned token ids; each node holds a run of pages;
a child is found by its first page; `end` counts tokens from the root through the node):

    root ─[1 2 3 4]─┬─[5 6]      end 6   leaf
       end 0  end 4 └─[7 8 9 10] end 8   leaf        insert(1 2 3 4 7 8 9 10 11) stores 8 tokens:
                                                     the odd 11 is not a whole page

Behaviour kept from SGLang (each line names where it comes from)
    * Keys round down to whole pages, and so do matches (`RadixKey.page_aligned`, `match`).
    * `match_prefix` stamps one access time on the root and on every node it walks into, and
      splits a node the key ends inside; the new upper node gets its own (later) time and the
      node's priority, lock count and hit count (`_match_prefix_helper`, `_split_node`).
    * `insert(key, priority)` stamps the path the same way, raises each walked node's priority
      to `max(node.priority, priority)`, splits where the key diverges, counts a hit on every
      node of the path, and hangs the rest on a new leaf with exactly `priority`
      (`_insert_helper`). Insert never lowers a priority: `set_path_priority` exists for that.
    * `inc_lock_ref` / `dec_lock_ref` walk to the root; a node moves between the evictable and
      the protected token counts when its count leaves / returns to 0 (`inc_lock_ref`).
    * `evict(num_tokens)` heapifies every evictable leaf (unlocked, childless, not the root) by
      `(strategy.get_priority(node), ...)`, pops the smallest until `num_tokens` are freed or the
      heap is empty, and pushes a parent the moment it becomes an unlocked leaf (`evict`).
    * Strategies: `lru` = last access time; `priority` = `(node.priority, last_access_time)`
      (`evict_policy.py`). Any object with `get_priority(node)` works; the node carries the
      fields SGLang's strategies read (`priority`, `last_access_time`, `creation_time`,
      `hit_count`), so SGLang's own strategy classes run on it unchanged.
    * A namespace (SGLang's `extra_key`) keeps trees apart: equal tokens under different
      namespaces never share a node.
    * A node may carry a value, one entry per token (SGLang's `node.value`, the KV pool slot
      indices; anything sliceable works, e.g. a tensor). `insert(..., value=v)` hangs the
      uncached tail of `v` on the new leaf, a split cuts the value with the key, and `evict`
      hands each node's value back in its `Eviction` so the caller can free the slots (and its
      parent, whose chain of keys gives the evicted tokens' full path, e.g. to write them back to a
      host tier). The
      simulated worker stores no values (None everywhere).

Time
----
SGLang's RadixCache stamps `time.monotonic()`; the unified tree (the one the server runs)
stamps a global counter that grows by one per call. Only the order of stamps matters to
eviction, so the default clock here is such a counter, one per cache: a replay is
deterministic and orders exactly as the server would. Any `clock` callable may be injected
(`clock=time.monotonic`, or a simulator's clock); stamps that tie fall back to node creation
order. Stamps are taken at the same points as RadixCache's (one per match or insert for the
whole path, one per new node), so under a counter clock the two order every node the same
way. The unified tree orders nodes *on one root path* differently (it stamps the walk deeper
= newer and refreshes a split's lower half after its upper half), but two nodes on one path
are never leaves at the same time, so eviction order is the same; the conformance suite
checks this on randomized scenarios.

Where the SGLang classes differ from each other, this follows the unified tree: a split's new
upper node keeps its child's `creation_time` (RadixCache gives it a fresh one; only FIFO/FILO
strategies read it).

Speed
-----
Keys are stored as packed bytes (int64 per token, `pack_tokens`): the per-node comparison is
`query.startswith(node.key, offset)`, one memcmp with no copy, and the first differing page is
found by galloping memcmps (SGLang gallops slice compares the same way). A replay should
pack each prompt once and pass the bytes; lists, tuples and arrays of ints are packed on
every call.

SGLang heapifies every evictable leaf on each `evict`. With thousands of leaves and an evict per
admission that dominates a replay, so for the built-in strategies (whose key reads only the
node's own fields, which only this class changes) the heap persists between calls, lazily: an entry
is pushed whenever a node becomes an evictable leaf or an evictable leaf's key changes, and a
popped entry counts only if its node is still an evictable leaf and its key is still current.
The first entry that counts is the smallest current key, exactly what a fresh heapify would
pop, so eviction order is unchanged (tests compare the two). A strategy whose key reads
anything else (no `node_local = True`) gets SGLang's fresh heap on every call.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from array import array
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

TOKEN_BYTES = 8  # keys are int64 token ids (or page hashes), native byte order

TokenKey = bytes | bytearray | memoryview | Iterable[int]


def pack_tokens(tokens: TokenKey) -> bytes:
    """Token ids as the cache's key bytes (pass bytes straight back; pack lists once and reuse)."""
    if isinstance(tokens, bytes):
        if len(tokens) % TOKEN_BYTES:
            raise ValueError(f"packed key has {len(tokens)} bytes, not a multiple of {TOKEN_BYTES}")
        return tokens
    if isinstance(tokens, (bytearray, memoryview)):
        return pack_tokens(bytes(tokens))
    if isinstance(tokens, array) and tokens.typecode == "q":
        return tokens.tobytes()
    dtype = getattr(tokens, "dtype", None)  # numpy: native 64-bit integers pack as they are
    if dtype is not None and dtype.itemsize == TOKEN_BYTES and dtype.kind in "iu" and dtype.isnative:
        return tokens.tobytes()
    return array("q", tokens).tobytes()


def unpack_tokens(key: bytes) -> tuple[int, ...]:
    """The token ids of packed key bytes."""
    return tuple(memoryview(key).cast("q"))


class Node:
    """One run of pages in the tree. Read its fields; mutate it only through RadixCache."""

    __slots__ = ("id", "parent", "children", "key", "num_tokens", "end", "namespace", "lock_ref",
                 "priority", "last_access_time", "creation_time", "hit_count", "evicted", "value")

    def __init__(self, node_id: int, parent: Node | None, key: bytes, end: int, namespace: Hashable,
                 priority: int, now: Any):
        self.id = node_id
        self.parent = parent
        self.children: dict[Any, Node] = {}
        self.key = key
        self.num_tokens = len(key) // TOKEN_BYTES
        self.end = end  # tokens from the root through this node
        self.namespace = namespace
        self.lock_ref = 0
        self.priority = priority
        self.last_access_time = now
        self.creation_time = now
        self.hit_count = 0
        self.evicted = False
        self.value: Any = None  # one entry per token of `key` (pool slots), or None

    @property
    def start(self) -> int:
        """Tokens from the root up to (not including) this node."""
        return self.end - self.num_tokens

    def tokens(self) -> tuple[int, ...]:
        return unpack_tokens(self.key)

    def __repr__(self) -> str:
        head = self.tokens()[:6]
        more = "..." if self.num_tokens > 6 else ""
        return (f"Node(id={self.id}, tokens[{self.start}:{self.end}]={list(head)}{more}, "
                f"lock_ref={self.lock_ref}, priority={self.priority}, t={self.last_access_time})")


class EvictionStrategy(Protocol):
    """SGLang's `EvictionStrategy`. Set a class attribute `node_local = True` only when the key
    reads nothing but the node's own `priority`, `last_access_time`, `hit_count` and
    `creation_time` (fields only RadixCache changes): it then keeps a lazy heap instead of
    heapifying every leaf on each evict (see the module docstring)."""

    def get_priority(self, node: Node) -> Any:
        """Sort key of an evictable leaf: the smallest is evicted first."""


class LRUStrategy:
    """SGLang's `lru`: least recently accessed first."""

    name = "lru"
    node_local = True  # the key reads only the node's own fields (see RadixCache._push)

    def get_priority(self, node: Node) -> Any:
        return node.last_access_time


class PriorityStrategy:
    """SGLang's `priority`: lowest priority first, least recently accessed among equals."""

    name = "priority"
    node_local = True

    def get_priority(self, node: Node) -> Any:
        return (node.priority, node.last_access_time)


_STRATEGIES: dict[str, Callable[[], EvictionStrategy]] = {"lru": LRUStrategy, "priority": PriorityStrategy}


def make_eviction_strategy(name: str) -> EvictionStrategy:
    """The built-in strategy called `name` (case-insensitive)."""
    try:
        return _STRATEGIES[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; valid: {', '.join(_STRATEGIES)}, "
                         "or pass an object with get_priority(node)") from None


@dataclass(frozen=True, slots=True)
class MatchResult:
    num_tokens: int  # cached tokens of the key, whole pages (SGLang's device_prefix_len)
    last_node: Node  # deepest node of the match (the root when nothing matched): lock this


@dataclass(frozen=True, slots=True)
class InsertResult:
    num_prefix_tokens: int  # tokens of the key that were already cached (SGLang's prefix_len)
    last_node: Node  # the node that ends the inserted key (the root for an empty key)


@dataclass(frozen=True, slots=True)
class PrefixPeek:
    num_tokens: int  # cached tokens of the key, whole pages
    nodes: tuple[Node, ...]  # root-first nodes holding them; the last may hold more than matched


@dataclass(frozen=True, slots=True)
class Eviction:
    """One evicted node, in the order `evict` removed them."""

    node_id: int
    namespace: Hashable
    start: int  # tokens from the root before the node
    num_tokens: int
    key: bytes  # the node's own tokens, packed
    priority: int
    last_access_time: Any
    value: Any = None  # the node's value (its pool slots, to free), None when it had none
    parent: Any = None  # the node's parent at eviction (its key and ancestors stay readable)

    def tokens(self) -> tuple[int, ...]:
        return unpack_tokens(self.key)


class RadixCache:
    """A radix tree of token ids (or page hashes) with SGLang's matching, locking and eviction.

    Sizes count tokens. `page_size` tokens make a page; keys and matches round down to pages.
    """

    def __init__(self, *, page_size: int = 1, eviction_policy: str | EvictionStrategy = "lru",
                 clock: Callable[[], Any] | None = None):
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be an int >= 1 (got {page_size!r})")
        self.page_size = page_size
        self._page_bytes = page_size * TOKEN_BYTES
        self.strategy = (make_eviction_strategy(eviction_policy) if isinstance(eviction_policy, str)
                         else eviction_policy)
        if not callable(getattr(self.strategy, "get_priority", None)):
            raise TypeError(f"eviction policy {eviction_policy!r} has no get_priority(node)")
        self._get_priority = self.strategy.get_priority
        self._lazy_heap = getattr(self.strategy, "node_local", False) is True
        self._clock = clock if clock is not None else itertools.count().__next__
        self.reset()

    # ---- state ----

    def reset(self) -> None:
        """Empty the tree (locks included)."""
        self._ids = itertools.count()
        self._root = Node(next(self._ids), None, b"", 0, None, -sys.maxsize, self._clock())
        self._root.lock_ref = 1
        self._evictable_leaves: set[Node] = set()
        self._heap: list[tuple[Any, int, Node]] = []  # lazy eviction heap (node-local strategies)
        self._evictable_size = 0
        self._protected_size = 0

    @property
    def root(self) -> Node:
        return self._root

    def evictable_size(self) -> int:
        """Tokens in unlocked nodes (what evict can free, leaf by leaf)."""
        return self._evictable_size

    def protected_size(self) -> int:
        """Tokens in locked nodes (pinned: never evicted)."""
        return self._protected_size

    def total_size(self) -> int:
        """Tokens in the tree."""
        return self._evictable_size + self._protected_size

    def evictable_leaves(self) -> list[Node]:
        """The leaves evict would consider now, in the order it would take them."""
        return [n for _, _, n in sorted(self._heap_entries())]

    def path_nodes(self, node: Node) -> list[Node]:
        """Root-first nodes from the root's child down to `node` (empty for the root)."""
        path = []
        while node is not self._root:
            path.append(node)
            node = node.parent
        path.reverse()
        return path

    def peek_prefix(self, key: TokenKey, namespace: Hashable = None) -> PrefixPeek:
        """Which nodes hold a prefix of `key`, read-only: no split, no access time, no hit."""
        key = self._aligned(key)
        node, off, n, nodes = self._root, 0, len(key), []
        while off < n:
            child = node.children.get(self._child_key(key, off, node, namespace))
            if child is None:
                break
            m = self._match_len(child.key, key, off)
            nodes.append(child)
            off += m
            if m < len(child.key):
                break
            node = child
        return PrefixPeek(off // TOKEN_BYTES, tuple(nodes))

    # ---- SGLang's operations ----

    def match_prefix(self, key: TokenKey, namespace: Hashable = None) -> MatchResult:
        """The longest cached prefix of `key` (whole pages); splits the node it ends inside."""
        key = self._aligned(key)
        if not key:
            return MatchResult(0, self._root)
        now = self._clock()
        node = self._root
        node.last_access_time = now
        off, n = 0, len(key)
        while off < n:
            child = node.children.get(self._child_key(key, off, node, namespace))
            if child is None:
                break
            child.last_access_time = now
            if child in self._evictable_leaves:
                self._push(child)
            m = self._match_len(child.key, key, off)
            off += m
            if m < len(child.key):
                node = self._split(child, m)
                break
            node = child
        return MatchResult(off // TOKEN_BYTES, node)

    def insert(self, key: TokenKey, priority: int | None = 0, namespace: Hashable = None,
               value: Any = None) -> InsertResult:
        """Cache `key` (whole pages). Walked nodes' priorities rise to `priority`; none falls.

        `value` (one entry per token of `key`, sliceable) is stored on the new leaf only, as its
        slice `value[num_prefix_tokens:]`: entries for tokens already cached stay with the
        nodes that hold them (the caller frees its duplicates, as SGLang's `cache_finished_req`)."""
        key = self._aligned(key)
        priority = 0 if priority is None else priority
        now = self._clock()
        node = self._root
        node.last_access_time = now
        if priority > node.priority:
            node.priority = priority
        off, n = 0, len(key)
        while off < n:
            child = node.children.get(self._child_key(key, off, node, namespace))
            if child is None:
                break
            child.last_access_time = now
            m = self._match_len(child.key, key, off)
            off += m
            if m < len(child.key):
                if child in self._evictable_leaves:  # the lower half keeps the new stamp
                    self._push(child)
                child = self._split(child, m)
            if priority > child.priority:
                child.priority = priority
            child.hit_count += 1
            if child in self._evictable_leaves:
                self._push(child)
            node = child
        if off < n:
            leaf = Node(next(self._ids), node, key[off:], node.end + (n - off) // TOKEN_BYTES,
                        node.namespace if node is not self._root else namespace, priority, self._clock())
            leaf.hit_count = 1
            if value is not None:
                leaf.value = value[off // TOKEN_BYTES: n // TOKEN_BYTES]
            node.children[self._child_key(key, off, node, namespace)] = leaf
            self._evictable_size += leaf.num_tokens
            self._update_leaf_status(node)
            self._update_leaf_status(leaf)
            return InsertResult(off // TOKEN_BYTES, leaf)
        return InsertResult(off // TOKEN_BYTES, node)

    def inc_lock_ref(self, node: Node) -> int:
        """Lock the path root..node (a pin). Returns the change of the evictable size (<= 0)."""
        self._check_in_tree(node)
        delta = 0
        while node is not self._root:
            if node.lock_ref == 0:
                self._evictable_size -= node.num_tokens
                self._protected_size += node.num_tokens
                delta -= node.num_tokens
            node.lock_ref += 1
            self._update_leaf_status(node)
            node = node.parent
        return delta

    def dec_lock_ref(self, node: Node) -> int:
        """Undo one inc_lock_ref(node). Returns the change of the evictable size (>= 0)."""
        self._check_in_tree(node)
        delta = 0
        while node is not self._root:
            if node.lock_ref == 0:
                raise RuntimeError(f"dec_lock_ref on an unlocked path at {node!r}")
            if node.lock_ref == 1:
                self._evictable_size += node.num_tokens
                self._protected_size -= node.num_tokens
                delta += node.num_tokens
            node.lock_ref -= 1
            self._update_leaf_status(node)
            node = node.parent
        return delta

    def evict(self, num_tokens: int) -> list[Eviction]:
        """Evict unlocked leaves, smallest strategy key first, until `num_tokens` are freed."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0 (got {num_tokens})")
        get_priority = self._get_priority
        lazy = self._lazy_heap
        if lazy:
            heap = self._heap
            if len(heap) > 2 * len(self._evictable_leaves) + 256:
                heap[:] = self._heap_entries()
                heapq.heapify(heap)
        else:
            heap = self._heap_entries()
            heapq.heapify(heap)
        leaves = self._evictable_leaves
        evicted: list[Eviction] = []
        freed = 0
        while freed < num_tokens and heap:
            key, _, x = heapq.heappop(heap)
            if lazy and (x not in leaves or key != get_priority(x)):
                continue  # stale: the node left the leaves, or its key changed (a newer entry exists)
            freed += x.num_tokens
            parent = x.parent
            del parent.children[self._child_key(x.key, 0, parent, x.namespace)]
            self._evictable_size -= x.num_tokens
            self._evictable_leaves.discard(x)
            x.evicted = True
            self._update_leaf_status(parent)
            evicted.append(Eviction(x.id, x.namespace, x.start, x.num_tokens, x.key, x.priority,
                                    x.last_access_time, x.value, parent))
            if not lazy and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (get_priority(parent), parent.id, parent))
            # (lazy: _update_leaf_status(parent) above pushed it the moment it became a leaf)
        return evicted

    # ---- what SGLang lacks ----

    def set_path_priority(self, node: Node, priority: int, *, above_tokens: int = 0) -> None:
        """Set (not raise) the priority of every node from `node` up to the root's child, or only
        of those that start at or after `above_tokens` tokens from the root.

        SGLang's insert only raises priorities; a policy that lowers them, or keeps a shared
        prefix as urgent as its most urgent user, assigns them along the path with this. With
        `above_tokens` = the length of a parent prefix, a prefix sets only the nodes it adds, so
        a shared parent keeps its own (higher) priority.
        """
        self._check_in_tree(node)
        while node is not self._root and node.start >= above_tokens:
            node.priority = priority
            if node in self._evictable_leaves:
                self._push(node)
            node = node.parent

    # ---- internals ----

    def _aligned(self, key: TokenKey) -> bytes:
        key = pack_tokens(key)
        cut = len(key) % self._page_bytes
        return key[: len(key) - cut] if cut else key

    def _child_key(self, key: bytes, off: int, parent: Node, namespace: Hashable) -> Any:
        page = key[off: off + self._page_bytes]
        # Namespaces split the tree at the root; below it every node shares its parent's.
        return page if parent is not self._root or namespace is None else (namespace, page)

    def _match_len(self, node_key: bytes, key: bytes, off: int) -> int:
        """Bytes of node_key equal to key[off:], in whole pages."""
        if key.startswith(node_key, off):
            return len(node_key)
        # Gallop over pages for the first difference (one memcmp per step, no copies).
        unit = self._page_bytes
        limit = min(len(node_key), len(key) - off)
        view = memoryview(node_key)
        lo, step = 0, unit
        while lo < limit:
            hi = min(lo + step, limit)
            if not key.startswith(view[lo:hi], off + lo):
                while hi - lo > unit:
                    mid = lo + (hi - lo) // (2 * unit) * unit
                    if key.startswith(view[lo:mid], off + lo):
                        lo = mid
                    else:
                        hi = mid
                return lo
            lo = hi
            step *= 2
        return lo

    def _split(self, child: Node, m: int) -> Node:
        """Cut `child` after m bytes; the new upper node takes its place and is returned."""
        parent = child.parent
        upper_end = child.end - (len(child.key) - m) // TOKEN_BYTES
        upper = Node(next(self._ids), parent, child.key[:m], upper_end, child.namespace, child.priority,
                     self._clock())
        upper.creation_time = child.creation_time
        upper.lock_ref = child.lock_ref
        upper.hit_count = child.hit_count
        if child.value is not None:
            cut = m // TOKEN_BYTES
            upper.value, child.value = child.value[:cut], child.value[cut:]
        parent.children[self._child_key(upper.key, 0, parent, child.namespace)] = upper
        child.key = child.key[m:]
        child.num_tokens = len(child.key) // TOKEN_BYTES
        child.parent = upper
        upper.children[child.key[: self._page_bytes]] = child
        return upper

    def _update_leaf_status(self, node: Node) -> None:
        if node.lock_ref == 0 and not node.children and node is not self._root:
            if node not in self._evictable_leaves:
                self._evictable_leaves.add(node)
                self._push(node)
        else:
            self._evictable_leaves.discard(node)

    def _push(self, node: Node) -> None:
        """Record an evictable leaf's current key in the lazy heap."""
        if self._lazy_heap:
            heapq.heappush(self._heap, (self._get_priority(node), node.id, node))

    def _heap_entries(self) -> list[tuple[Any, int, Node]]:
        get_priority = self._get_priority
        return [(get_priority(n), n.id, n) for n in self._evictable_leaves]

    def _check_in_tree(self, node: Node) -> None:
        if node.evicted:
            raise RuntimeError(f"{node!r} was evicted")
