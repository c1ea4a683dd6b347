"""Prefixes as the scheduler sees them: named, nested token ranges, never the tokens.

A prompt is a chain of segments; every segment ends a cacheable prefix (the whole prompt up to
it), which is what a radix cache holds as a path from its root:

    [system prompt of coder] [history of program 17 up to turn 3] [new text]
     key "swe/coder:sys"      key "p17/coder:h3"                    (not cached before the call)
     1,200 tokens             +8,400 tokens (cumulative 9,600)

A prefix is *used* by agents: the system prompt of (workflow "swe", agent "coder") by every
program of that workflow; a program's history only by that program's agent. A prefix is as urgent
as its most urgent user.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixRef:
    key: str  # unique within a namespace; engines map it to their radix nodes
    parent: str | None  # the prefix this one extends (None: starts at the root)
    num_tokens: int  # cumulative: all tokens from the root through this prefix
    namespace: str = "default"  # tenant or workflow isolation; part of every cache key

    def __post_init__(self) -> None:
        if self.num_tokens < 0:
            raise ValueError(f"prefix {self.key!r}: num_tokens must be >= 0 (got {self.num_tokens})")


@dataclass(frozen=True, slots=True)
class Use:
    """Who needs a prefix: one program's agent, or (program_id None) every program's."""

    workflow: str
    agent: str
    program_id: Hashable | None = None


def system_prefix(workflow: str, agent: str, num_tokens: int, *, namespace: str = "default") -> PrefixRef:
    return PrefixRef(key=f"{workflow}/{agent}:sys", parent=None, num_tokens=num_tokens, namespace=namespace)


def history_prefix(program_id: Hashable, agent: str, turn: int, parent: PrefixRef, added_tokens: int) -> PrefixRef:
    return PrefixRef(key=f"p{program_id}/{agent}:h{turn}", parent=parent.key,
                     num_tokens=parent.num_tokens + added_tokens, namespace=parent.namespace)
