"""`AgentflowRadixCache`: SGLang's UnifiedRadixCache plus pins with TTL and path priorities.

Registered by the plugin as the radix-cache backend `agentflow` (`--radix-cache-backend agentflow`);
every TP rank builds its own, and every rank receives the same control actions in the same order
(control.py), so all of them stay identical. The subclass adds state beside the tree and never
changes how the tree itself matches, inserts or evicts:

  keys      key -> RadixKey (tokens + namespace), learnt from declarations; bounded, oldest
            unreferenced key forgotten first. Decisions name keys; tokens cross the wire once.
  pins      (key, program) -> a TreeLock on the key's deepest device node, until its deadline
            (broadcast clock + ttl_s), the program's next call, or an unpin. A locked path is
            never evicted; that is the pin. The union of pinned paths is capped at
            `max_pinned_tokens`: a pin that would exceed it is refused (pin() returns False).
  priorities key -> priority for the keys the scheduler still cares about (> floor). Before
            every eviction walk (and right after a priority change) each node on those keys'
            paths gets the highest priority among the keys reaching into it, and nodes no key
            reaches any more drop back to the floor (policy.py). Inserts since the last walk
            (new nodes get only the request's priority) mark the priorities dirty.

    time ──tick──tick─────────tick────────────tick──>   (entry rank's clock, broadcast)
    pin (A, P), ttl 5 s │<──── A locked ─────>│ reaped at the first tick >= deadline,
                        └─ or earlier: P's next request admitted (reason "next_call"), an unpin

Cost: a priority refresh walks every live key's path (read-only dict lookups and C-level slice
compares), O(live keys x path depth), only when priorities changed or something was inserted
since the last eviction.
"""

from __future__ import annotations

import logging
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from agentflow.runtime.engines.sglang.policy import (
    FLOOR_PRIORITY,
    path_priorities,
    priority_updates,
)
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class PinRecord:
    key: str
    program_id: str
    node_id: int  # the lock's anchor: the key's deepest device node when pinned
    lock: object  # SGLang's TreeLock
    num_tokens: int  # device tokens the key matched when pinned
    expires_at_s: float  # on the broadcast clock


@dataclass(frozen=True, slots=True, kw_only=True)
class Released:
    key: str
    program_id: str
    reason: str  # control.UNPIN_REASONS


class AgentflowRadixCache(UnifiedRadixCache):
    def __init__(self, params, *, max_pinned_tokens: int | None = None, max_keys: int = 65_536) -> None:
        # Set before super().__init__, which calls reset().
        self.max_pinned_tokens = max_pinned_tokens  # None: a fraction of the pool, set below
        self.max_keys = max_keys
        super().__init__(params)
        if self.max_pinned_tokens is None:
            self.max_pinned_tokens = self.token_to_kv_pool_allocator.size // 2
        self.released: list[Released] = []  # the last reasons, for logs and tests (bounded)

    def reset(self) -> None:
        super().reset()  # a new tree: every lock and node is gone
        self.now_s = 0.0
        self.keys: OrderedDict[str, RadixKey] = OrderedDict()
        self.pins: dict[tuple[str, str], PinRecord] = {}
        self.key_priority: dict[str, int] = {}
        self._prioritized: set = set()  # nodes we set a priority on, and the keys that asked for it
        self._prioritized_keys: set[str] = set()
        self._dirty = False

    # ---- SGLang hooks: insert marks priorities stale, eviction refreshes them first ----

    def insert(self, params):
        result = super().insert(params)
        self._dirty = self._dirty or bool(self.key_priority)
        return result

    def _evict(self, params, available_size_targets=None, *, allocation_reclaim_satisfied=None):
        if self._dirty:
            self.refresh_priorities()
        return super()._evict(params, available_size_targets,
                              allocation_reclaim_satisfied=allocation_reclaim_satisfied)

    def evict_host(self, *args, **kwargs):
        if self._dirty:
            self.refresh_priorities()
        return super().evict_host(*args, **kwargs)

    # ---- control.ControlTarget ----

    def advance_clock(self, now_s: float) -> None:
        """The broadcast clock moved (a Tick): reap the pins whose deadline it reached."""
        self.now_s = max(self.now_s, now_s)
        self.reap()

    def radix_key(self, token_ids: Sequence[int], namespace: str | None, cache_salt: str | None = None) -> RadixKey:
        """The key SGLang itself builds for a request with these tokens (cache_finished_req,
        cache_unfinished_req): raw token ids, the request's extra_key and cache_salt, and bigram
        mode when the tree runs EAGLE (`tree_core.is_eagle`). A key built any other way names a
        different path, and hints on it silently do nothing."""
        return RadixKey(array("q", token_ids), namespace or None, is_bigram=bool(self.tree_core.is_eagle),
                        cache_salt=cache_salt or None)

    def declare_prefix(self, key: str, namespace: str, token_ids: Sequence[int], cache_salt: str | None = None) -> None:
        self.keys[key] = self.radix_key(token_ids, namespace, cache_salt)
        self.keys.move_to_end(key)
        if key in self.key_priority:
            self._dirty = True
        held = {k for k, _ in self.pins} | set(self.key_priority)
        while len(self.keys) > self.max_keys:
            old = next((k for k in self.keys if k not in held), None)
            if old is None:
                break
            del self.keys[old]

    def set_priority(self, key: str, priority: int) -> None:
        if key not in self.keys:
            return  # a key this worker never saw (it lives elsewhere): ignored, as base.Engine says
        if priority > FLOOR_PRIORITY:
            self.key_priority[key] = priority
        else:
            self.key_priority.pop(key, None)
        self.refresh_priorities()

    def pin(self, key: str, program_id: str, ttl_s: float) -> bool:
        rk = self.keys.get(key)
        if rk is None:
            return False
        match = self.match_prefix(MatchPrefixParams(key=rk))
        if match.device_prefix_len == 0:
            return False  # nothing of it on the device: nothing to hold
        node_id = match.last_device_node
        old = self.pins.pop((key, program_id), None)
        extra = self._tokens_beyond_pins(node_id)
        if self.pinned_tokens() + extra > self.max_pinned_tokens:
            if old is not None:
                self.pins[(key, program_id)] = old  # keep the pin it already had
            logger.info("agentflow: pin of %s refused: %d pinned + %d > cap %d", key, self.pinned_tokens(),
                        extra, self.max_pinned_tokens)
            return False
        lock = self.lock(node_id)
        if old is not None:
            self.unlock(old.lock)
        self.pins[(key, program_id)] = PinRecord(key=key, program_id=program_id, node_id=node_id, lock=lock,
                                                 num_tokens=match.device_prefix_len,
                                                 expires_at_s=self.now_s + ttl_s)
        return True

    def unpin(self, key: str | None, program_id: str | None, reason: str) -> int:
        gone = [k for k in self.pins if (key is None or k[0] == key) and (program_id is None or k[1] == program_id)]
        for k in gone:
            self._release(k, reason)
        return len(gone)

    def prefetch(self, key: str) -> int:
        """Start loading the key's host-resident tail back to the GPU (HiCache); tokens started.
        Without a host tier (no --enable-hierarchical-cache) there is nothing to load: 0."""
        rk = self.keys.get(key)
        if rk is None or self.cache_controller is None:
            return 0
        match = self.match_prefix(MatchPrefixParams(key=rk))
        if match.host_hit_length <= 0 or not self.load_back(match.best_match_node):
            return 0
        self.ready_to_load_host_cache()
        return match.host_hit_length

    # ---- the reaper and the cap ----

    def reap(self) -> list[Released]:
        """End every pin whose deadline the broadcast clock has reached (deadline order)."""
        due = sorted((r.expires_at_s, k) for k, r in self.pins.items() if r.expires_at_s <= self.now_s)
        return [self._release(k, "ttl_expired") for _, k in due]

    def next_deadline_s(self) -> float | None:
        return min((r.expires_at_s for r in self.pins.values()), default=None)

    def _release(self, k: tuple[str, str], reason: str) -> Released:
        record = self.pins.pop(k)
        self.unlock(record.lock)
        out = Released(key=record.key, program_id=record.program_id, reason=reason)
        self.released = (self.released + [out])[-256:]
        return out

    def _path(self, node_id: int) -> list:
        core = self.tree_core
        node, out = core.node_by_id(node_id), []
        while node is not None and node is not core.root_node:
            out.append(node)
            node = node.parent
        return out

    def pinned_tokens(self) -> int:
        """Tokens on the union of pinned paths (a shared system prompt counts once)."""
        seen: set[int] = set()
        total = 0
        for r in self.pins.values():
            for n in self._path(r.node_id):
                if n.id in seen:
                    break  # the rest of this path is already counted
                seen.add(n.id)
                total += len(n.key)
        return total

    def _tokens_beyond_pins(self, node_id: int) -> int:
        pinned = {n.id for r in self.pins.values() for n in self._path(r.node_id)}
        return sum(len(n.key) for n in self._path(node_id) if n.id not in pinned)

    # ---- path priorities ----

    def key_path(self, key: str) -> list:
        """Nodes the key's tokens reach into, root side first; read-only (no split, no touch)."""
        rk = self.keys[key].page_aligned(self.tree_core.page_size)
        page = self.tree_core.page_size
        node, offset, out = self.tree_core.root_node, 0, []
        while offset < len(rk):
            child = node.children.get(rk.child_key_at(offset, page))
            if child is None:
                break
            out.append(child)
            n = child.key.match_at(rk, offset, page_size=page)
            if n < len(child.key):
                break
            offset += n
            node = child
        return out

    def refresh_priorities(self) -> None:
        """Set every node's priority from the live keys' paths (see the module docstring).

        What was set before is found again two ways: the nodes themselves (those still in the
        tree), and the paths of the keys that were live then, walked now, because a split since
        then put a new node on such a path with a copy of the old priority."""
        arena = self.tree_core._node_arena
        wanted = path_priorities((self.key_path(k), p) for k, p in self.key_priority.items())
        before = {n for n in self._prioritized if arena.get(n.id) is n}
        before.update(n for k in self._prioritized_keys - self.key_priority.keys() if k in self.keys
                      for n in self.key_path(k))
        for n, p in priority_updates(wanted, before, {n: n.priority for n in (*wanted, *before)}).items():
            n.priority = p
        self._prioritized = set(wanted)
        self._prioritized_keys = set(self.key_priority)
        self._dirty = False


__all__ = ["AgentflowRadixCache", "PinRecord", "Released"]
