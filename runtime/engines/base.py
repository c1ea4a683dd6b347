"""The one interface every engine implements: the simulated worker, the local model, SGLang.

    executor / worker agent / replay                      engine
    ───────────────────────────────                       ─────────────────────────────────
    GenerateRequest(prompt ids, prefixes, hints) ──────>  generate(): an async stream of
                                                           TokenChunk ... then one GenerateResult
    Decision (priorities, pins, unpins, prefetches) ───>  apply(): mutate its cache, never block
    <───────────────────────────────────────────────────  load(): EngineLoad (capacity, use, queue)

Prefixes are named by key (`runtime.prefixes.PrefixRef`); an engine learns which tokens a key
covers from the requests that carry it (the first `num_tokens` of that request's prompt), so a
Decision that names a key can be applied without shipping tokens again. A key the engine has not
seen is ignored (the decision may be about a prefix that lives on another worker).

Keys are content addresses when the caller does not choose them: `prefix_key(namespace, ids)`.
The namespace (tenant, or a workflow that opted in to sharing) is hashed into every key, so two
tenants never share a cache entry even for identical text.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agentflow.runtime.decision import Decision
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.reuse_plan import ReuseHint


def prefix_key(namespace: str, token_ids: Sequence[int]) -> str:
    """Content address of a token prefix within a namespace (16 hex digits)."""
    h = hashlib.blake2b(namespace.encode(), digest_size=8)
    h.update(b"\0")
    h.update(array("q", token_ids).tobytes())
    return "c" + h.hexdigest()


def prefix_chain(namespace: str, token_ids: Sequence[int], boundaries: Sequence[int]) -> tuple[PrefixRef, ...]:
    """PrefixRefs for `token_ids[:b]` at each boundary b (ascending, > 0), each extending the one before."""
    refs: list[PrefixRef] = []
    parent = None
    last = 0
    for b in boundaries:
        if b <= last or b > len(token_ids):
            raise ValueError(f"prefix boundaries must ascend within the prompt (got {list(boundaries)}, "
                             f"prompt of {len(token_ids)} tokens)")
        key = prefix_key(namespace, token_ids[:b])
        refs.append(PrefixRef(key=key, parent=parent, num_tokens=b, namespace=namespace))
        parent, last = key, b
    return tuple(refs)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateRequest:
    call_id: Hashable
    program_id: Hashable
    prompt_ids: tuple[int, ...]  # the whole prompt, tokenized (engines with a tokenizer: `encode_chat`)
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # for sampled generation
    ignore_eos: bool = False  # generate exactly max_new_tokens (replays and benchmarks)
    forced_output_ids: tuple[int, ...] | None = None  # replays: the output to "generate" (sim engines)
    prefixes: tuple[PrefixRef, ...] = ()  # cacheable prefixes of the prompt, root first
    namespace: str = "default"  # isolation: part of every cache key
    priority: int | None = None  # eviction priority for what this request inserts (SGLang convention)
    session_id: str | None = None
    # cross-agent KV reuse (reuse_plan.namespace_for): an engine that reuses KV keeps this call's
    # output under it and places only KV of the same namespace here (Decision.reuse); None: neither
    reuse_namespace: str | None = None
    # this call's cross-agent reuse hints, travelling with it (the scheduler service's SubmitCall
    # answer): an engine that reuses KV registers them on submission, as if from Decision.reuse;
    # engines that do not (sim, SGLang) ignore them
    reuse: tuple[ReuseHint, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenChunk:
    call_id: Hashable
    token_ids: tuple[int, ...]
    text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateResult:
    call_id: Hashable
    output_ids: tuple[int, ...]
    text: str
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the device cache
    host_tokens: int = 0  # prompt tokens loaded back from the host tier
    reused_tokens: int = 0  # prompt tokens placed from another call's output KV (cross-agent reuse)
    queued_s: float = 0.0  # submit -> admitted
    ttft_s: float = 0.0  # submit -> first token
    duration_s: float = 0.0  # submit -> last token
    finish_reason: str = "length"  # "length", "stop", "cancelled"
    cached: tuple[PrefixRef, ...] = ()  # prefixes the engine now holds (the prompt's and prompt+output)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineLoad:
    """What a worker reports; the fields of runtime.events.WorkerUpdate."""

    kv_capacity_tokens: int
    kv_used_tokens: int
    host_capacity_tokens: int = 0
    h2d_tokens_per_s: float = 0.0
    prefill_tokens_per_s: float = 10_000.0
    queue_depth: int = 0
    running: int = 0
    pinned_tokens: int = 0
    cached_prefixes: tuple[str, ...] = field(default=())  # keys resident on the device, if cheap to list


class EngineError(Exception):
    """An engine could not run a request (bad input, out of memory it cannot free, engine gone)."""


async def collect(stream: AsyncIterator[TokenChunk | GenerateResult], *, where: str, call_id: Hashable,
                  on_chunk: Callable[[TokenChunk], None] | None = None) -> GenerateResult:
    """Drain a `generate()` stream (an engine's, or a worker's over gRPC): hand each chunk to
    `on_chunk`, return the result; a stream that ends without one is an error naming `where`."""
    result = None
    async for item in stream:
        if isinstance(item, GenerateResult):
            result = item
        elif on_chunk is not None:
            on_chunk(item)
    if result is None:
        raise RuntimeError(f"{where} ended call {call_id} without a result")
    return result


@runtime_checkable
class Engine(Protocol):
    name: str

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat (with the model's chat template and the generation prompt)."""

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk | GenerateResult]:
        """Stream the output: zero or more TokenChunk, then exactly one GenerateResult.
        Cancelling the consuming task cancels the request and frees its private KV."""

    def apply(self, decision: Decision) -> None:
        """Apply a decision's priorities, pins, unpins and prefetches (those naming this engine's
        worker, or no worker) and its admission order. Keys it does not know are ignored."""

    def load(self) -> EngineLoad: ...

    async def aclose(self) -> None: ...


__all__ = ["Engine", "EngineError", "EngineLoad", "GenerateRequest", "GenerateResult", "TokenChunk", "collect",
           "prefix_chain", "prefix_key"]
