"""The prefix book both engines keep: tokens per key, parent length, priority, a bound that spares pins."""

from __future__ import annotations

import pytest

from agentflow.runtime.engines.base import EngineError, prefix_chain
from agentflow.runtime.engines.prefix_book import PrefixBook
from agentflow.runtime.engines.sim.radix import pack_tokens, unpack_tokens


def test_learns_each_declared_prefix_over_the_shared_prompt():
    ids = list(range(1, 11))
    refs = prefix_chain("t", ids, (4, 10))
    book = PrefixBook()
    book.learn(refs, "t", pack_tokens(ids))
    root, hist = (book.get(r.key) for r in refs)
    assert unpack_tokens(root.tokens()) == (1, 2, 3, 4) and root.parent_tokens == 0
    assert unpack_tokens(hist.tokens()) == tuple(ids) and hist.parent_tokens == 4 and hist.namespace == "t"
    assert book.depth(refs[1].key) == 4 and book.depth("unknown") == 0
    assert book.set_priority(refs[0].key, 7).priority == 7 and book.set_priority("unknown", 7) is None
    with pytest.raises(EngineError, match="covers 11 tokens of a 10-token prompt"):
        book.learn(prefix_chain("t", ids + [0], (11,)), "t", pack_tokens(ids))


def test_the_bound_forgets_the_least_recently_used_key_that_is_not_pinned():
    pinned = {"a"}
    book = PrefixBook(2, pinned=lambda k: k in pinned)
    seq = pack_tokens([1, 2, 3])
    for key in ("a", "b", "c"):
        book.remember(key, "t", seq, 3, 0)
    assert [k for k, _ in book.items()] == ["a", "c"]  # b went; a is pinned
    book.remember("a", "t", seq, 3, 0)  # a use moves it to the back
    pinned.clear()
    book.remember("d", "t", seq, 3, 0)
    assert [k for k, _ in book.items()] == ["a", "d"]
