"""What an engine knows about prefix keys: the tokens each names, the key it extends, its priority.

Decisions name prefixes by key only (runtime/engines/base.py); an engine learns which tokens a key
covers from the requests that carry it, and from the sequences its finished calls cached. The
simulated and the local engine keep the same book:

    key ──> KnownPrefix(namespace, seq, num_tokens, parent_tokens, priority)
             seq[:num_tokens] are the key's tokens (seq is the request's packed prompt, shared by
             every key learnt from it, not copied); parent_tokens: the length of the key it extends,
             so a priority is set on its own nodes only (SGLang's `set_path_priority(above=)`)

Priorities are remembered per key because a decision carries only the priorities that changed,
while an engine's insert of the same tokens later (the next call's prompt) must re-apply them.
The book is bounded: past `max_keys`, the least recently used key that is not pinned goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from agentflow.runtime.engines.base import EngineError
from agentflow.runtime.engines.sim.radix import TOKEN_BYTES as B
from agentflow.runtime.prefixes import PrefixRef


@dataclass(slots=True)
class KnownPrefix:
    namespace: str
    seq: bytes  # packed token ids that start with this prefix
    num_tokens: int
    parent_tokens: int  # tokens of the prefix this one extends (0: a root)
    priority: int | None = None  # the last priority a decision gave it

    def tokens(self) -> bytes:
        return self.seq if len(self.seq) == self.num_tokens * B else self.seq[: self.num_tokens * B]


class PrefixBook:
    def __init__(self, max_keys: int = 65536, *, pinned: Callable[[str], bool] = lambda key: False):
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1 (got {max_keys})")
        self.max_keys = max_keys
        self._pinned = pinned
        self._known: OrderedDict[str, KnownPrefix] = OrderedDict()

    def learn(self, refs: Sequence[PrefixRef], namespace: str, seq: bytes) -> None:
        """The prefixes a request declares (root first) over its packed prompt `seq`."""
        parent = 0
        for ref in refs:
            if ref.num_tokens > len(seq) // B:
                raise EngineError(f"prefix {ref.key!r} covers {ref.num_tokens} tokens of a "
                                  f"{len(seq) // B}-token prompt")
            self.remember(ref.key, ref.namespace or namespace, seq, ref.num_tokens, parent)
            parent = ref.num_tokens

    def remember(self, key: str, namespace: str, seq: bytes, num_tokens: int, parent_tokens: int) -> KnownPrefix:
        known = self._known.get(key)
        if known is not None:
            self._known.move_to_end(key)
            return known
        known = self._known[key] = KnownPrefix(namespace=namespace, seq=seq, num_tokens=num_tokens,
                                               parent_tokens=parent_tokens)
        while len(self._known) > self.max_keys:
            old = next((k for k in self._known if not self._pinned(k)), None)
            if old is None:
                break  # everything is pinned: keep over the bound rather than forget a pin's tokens
            del self._known[old]
        return known

    def get(self, key: str) -> KnownPrefix | None:
        return self._known.get(key)

    def set_priority(self, key: str, priority: int) -> KnownPrefix | None:
        known = self._known.get(key)
        if known is not None:
            known.priority = priority
        return known

    def depth(self, key: str) -> int:
        """Parent length: decisions apply priorities shallow first (a child is set above its parent)."""
        known = self._known.get(key)
        return known.parent_tokens if known is not None else 0

    def __contains__(self, key: object) -> bool:
        return key in self._known

    def __len__(self) -> int:
        return len(self._known)

    def items(self) -> Iterator[tuple[str, KnownPrefix]]:
        return iter(list(self._known.items()))


__all__ = ["KnownPrefix", "PrefixBook"]
