"""Waiting calls in admission order, kept incrementally across scheduling steps.

The admission policies give each waiting call a key that does not change while it waits
(`runtime/policies/admission.py`), so the order can be kept as the calls come and go instead of
being recomputed: a call is inserted when it starts waiting and removed when it stops, and a
step reads the first `limit` entries. Before, each step sorted every waiting call (a key
function call per call per step), so a burst of thousands of submissions or closes cost a pass
over all of them per step: quadratic.

    entries  (key, seq, call_id), sorted    seq: when the call started waiting, so equal keys
                                            go in that order (what a stable sort gives)
    live     call_id -> its entry

A sorted list, not a heap: reading the first `limit` entries is a slice (a heap must pop and
push them back, every step), and an insertion or removal is a binary search plus one memmove,
cheap at the sizes a scheduler holds (tens of thousands of waiting calls).
A call whose key changes (its program's attained service, under fair share) moves, keeping its
seq. (key, seq) is unique, so the call ids themselves are never compared.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Hashable

Entry = tuple[tuple, int, Hashable]


class AdmissionQueue:
    def __init__(self) -> None:
        self._order: list[Entry] = []
        self._live: dict[Hashable, Entry] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, call_id: Hashable) -> bool:
        return call_id in self._live

    def push(self, call_id: Hashable, key: tuple) -> None:
        """`call_id` starts waiting (again: it goes behind the calls already waiting with its key)."""
        self.discard(call_id)
        self._insert((key, next(self._seq), call_id))

    def rekey(self, call_id: Hashable, key: tuple) -> None:
        """A waiting call's key changed; its place among equal keys (its seq) stays."""
        old = self._live[call_id]
        if old[0] != key:
            self._remove(old)
            self._insert((key, old[1], call_id))

    def discard(self, call_id: Hashable) -> None:
        old = self._live.pop(call_id, None)
        if old is not None:
            self._remove(old)

    def first(self, limit: int) -> list[Hashable]:
        """Up to `limit` waiting calls, smallest key first (ties: first waiting first)."""
        return [e[2] for e in self._order[:limit]]

    def _insert(self, entry: Entry) -> None:
        self._live[entry[2]] = entry
        bisect.insort(self._order, entry)

    def _remove(self, entry: Entry) -> None:
        i = bisect.bisect_left(self._order, entry)
        del self._order[i]
        self._live.pop(entry[2], None)


__all__ = ["AdmissionQueue"]
