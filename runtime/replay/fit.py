"""Will every call of a workload fit a worker's GPU KV pool? Checked before a replay starts.

A call holds its whole prompt and its output in the pool while it runs (the engine reserves
prompt - hit + output tokens, and the hit itself is pool memory). A call larger than the pool can
never be admitted: the worker's FCFS admission would wait for it forever while the replay's
clock runs on. This is an error at once, naming the call, its size and the pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agentflow.errors import AgentflowError


class CallTooLarge(AgentflowError, ValueError):
    """A call that needs more KV tokens than a worker's GPU pool holds."""


@dataclass(frozen=True, slots=True)
class Oversized:
    program: str
    call: int
    step: str | None
    prompt_tokens: int
    output_tokens: int

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


def oversized_calls(programs: Iterable, kv_capacity_tokens: int) -> list[Oversized]:
    """Every call whose prompt + output exceeds `kv_capacity_tokens` (one worker's pool), largest first."""
    out = [Oversized(p.id, c.index, c.step, c.prompt_tokens, c.output_tokens)
           for p in programs for c in p.calls if c.prompt_tokens + c.output_tokens > kv_capacity_tokens]
    return sorted(out, key=lambda o: -o.kv_tokens)


def check_fits(programs: Iterable, kv_capacity_tokens: int, *, flag: str = "--kv-tokens") -> None:
    """Raise CallTooLarge if any call can never fit one worker's GPU KV pool of `kv_capacity_tokens`."""
    programs = list(programs)
    big = oversized_calls(programs, kv_capacity_tokens)
    if not big:
        return
    top = big[0]
    step = f" (step '{top.step}')" if top.step else ""
    others = f"; {len(big) - 1} more calls are over it too" if len(big) > 1 else ""
    raise CallTooLarge(
        f"program '{top.program}' call {top.call}{step} needs {top.kv_tokens:,} KV tokens (prompt "
        f"{top.prompt_tokens:,} + output {top.output_tokens:,}) but a worker's GPU KV pool holds "
        f"{kv_capacity_tokens:,}{others}: it could never run. Fix: {flag} {top.kv_tokens} or more "
        f"(or leave {flag} out for the preset's pool)")


__all__ = ["CallTooLarge", "Oversized", "check_fits", "oversized_calls"]
