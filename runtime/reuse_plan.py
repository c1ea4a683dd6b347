"""Which text of a new prompt another call already prefilled: cross-agent reuse hints (pure).

The step graph says which step's output flows into which prompt (`Step.inputs` and
`{steps.<name>}` references in a template). When a step is about to run, each of those inputs
was produced by a finished call of the same program, whose KV the engine holds (or can
recompute once) position-neutral. The scheduler turns that into hints; the engine's
`prefill_with_reuse` places the segments and corrects them with anchors.

    finished calls                           target prompt (token ids)
    ┌───────────────────────┐                ┌────────────────────────────────────────────────┐
    │ call 7  step "solve"  │── output ids ──│ [sys B][task ...][glue][output of 7][glue]...  │
    │ call 9  step "review" │──┐             │                        ▲ target_offset          │
    └───────────────────────┘  └─ ... ───────│ ....................[output of 9]..............│
                                             └────────────────────────────────────────────────┘
    hint = ReuseHint(key=segment_key(ns, ids), namespace=ns, kind="solve->judge",
                     source_call_id=7, source_step="solve", target_offset=o, num_tokens=n)

Offsets are found by searching the output's token ids in the prompt: the executor renders the
output's *text* into the prompt and the tokenizer may merge a token across the boundary, so a
match may drop up to `max_trim` tokens at either end of the output (the hint then covers the
tokens that do match). Shared state text (the task) can be offered the same way as a
`SharedText`.

Isolation (the rule, enforced here and again in the engine): a hint only ever names a finished
call of the same namespace. `namespace_for` builds it: a tenant's programs share nothing unless
their workflow opted in, in which case the namespace is the (tenant, workflow) pair. The
namespace is part of the segment key, so even identical text in two namespaces is two entries.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ReuseHint:
    """Reuse `num_tokens` tokens of `source_call_id`'s output at `target_offset` of the new prompt."""

    key: str  # segment key: content address within the namespace (`segment_key`)
    namespace: str
    kind: str  # anchor slot: "<source step>-><target step>" (or "state:<name>-><target step>")
    source_call_id: Hashable | None  # None for shared state text
    source_step: str | None
    target_offset: int
    num_tokens: int
    source_offset: int = 0  # where in the source output the reused span starts (after a trim)
    target_call_id: Hashable | None = None  # the call whose prompt this is (a Decision carries many)


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishedCall:
    """A finished call, as reuse planning sees it. `plan_reuse` searches its `output_ids`; the
    scheduler never sees token ids, and `hints_from_spans` needs only `num_output_tokens`
    (defaults to `len(output_ids)`)."""

    call_id: Hashable
    step: str
    namespace: str
    output_ids: tuple[int, ...] = ()
    num_output_tokens: int = -1

    def __post_init__(self) -> None:
        if self.num_output_tokens < 0:
            object.__setattr__(self, "num_output_tokens", len(self.output_ids))


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedText:
    """Program state text that several prompts contain (the task, a retrieved document)."""

    name: str
    namespace: str
    token_ids: tuple[int, ...]


def namespace_for(*, tenant: str, workflow: str, program_id: Hashable, share_across_programs: bool) -> str:
    """The isolation namespace: per program unless the workflow opted in to cross-program sharing."""
    if share_across_programs:
        return f"{tenant}/wf:{workflow}"
    return f"{tenant}/wf:{workflow}/p:{program_id}"


def segment_key(namespace: str, token_ids: Sequence[int]) -> str:
    h = hashlib.blake2b(namespace.encode(), digest_size=8)
    h.update(b"\0")
    h.update(array("q", token_ids).tobytes())
    return "s" + h.hexdigest()


def call_segment_key(namespace: str, call_id: Hashable, source_offset: int, num_tokens: int) -> str:
    """Key of `num_tokens` output tokens of `call_id` from `source_offset`, named without the ids
    (the scheduler's hints): the engine that ran the call holds its output ids and checks them
    against the prompt when it places the segment, so a stale or wrong key misses, never misplaces."""
    h = hashlib.blake2b(namespace.encode(), digest_size=8)
    h.update(b"\0")
    h.update(f"{call_id!r}\0{source_offset}\0{num_tokens}".encode())
    return "o" + h.hexdigest()


def input_steps(compiled: Any) -> dict[str, tuple[str, ...]]:
    """step -> upstream steps whose outputs enter its prompt, from a CompiledWorkflow or a StepGraph:
    the graph's `StepNode.inputs`, which `Workflow.compile` fills (`{steps.<name>}` references in
    the template, then `Step.inputs`, in order, without repeats: `agentflow.workflow.step_inputs`)."""
    graph = getattr(compiled, "graph", compiled)
    return {name: node.inputs for name, node in graph.steps.items() if getattr(node, "inputs", ())}


def find_span(haystack: Sequence[int], needle: Sequence[int], *, start: int = 0,
              max_trim: int = 1, min_tokens: int = 8) -> tuple[int, int, int] | None:
    """(offset in haystack, offset in needle, length) of the first occurrence of `needle` at or after
    `start`, allowing up to `max_trim` tokens dropped at each end; None if absent or too short."""
    h = list(haystack)
    for trim in range(max_trim + 1):
        for lo in range(trim + 1):
            hi = len(needle) - (trim - lo)
            part = list(needle[lo:hi])
            if len(part) < min_tokens:
                continue
            first = part[0]
            i = start
            while True:
                try:
                    i = h.index(first, i)
                except ValueError:
                    break
                if h[i:i + len(part)] == part:
                    return i, lo, len(part)
                i += 1
    return None


def plan_reuse(*, target_step: str, prompt_ids: Sequence[int], namespace: str,
               flows: Mapping[str, Sequence[str]], finished: Iterable[FinishedCall],
               shared: Iterable[SharedText] = (), min_tokens: int = 8, max_trim: int = 1,
               target_call_id: Hashable | None = None) -> tuple[ReuseHint, ...]:
    """Hints for the segments of `prompt_ids` (the prompt of a call of `target_step`) that finished
    calls (the latest call of each input step) or shared state texts already hold, sorted by
    offset and non-overlapping. Anything from another namespace is ignored."""
    latest: dict[str, FinishedCall] = {}
    for call in finished:
        if call.namespace == namespace:
            latest[call.step] = call  # the last one wins: a loop's newest output
    candidates: list[tuple[str, Hashable | None, str | None, Sequence[int]]] = []
    for text in shared:
        if text.namespace == namespace:
            candidates.append((f"state:{text.name}->{target_step}", None, None, text.token_ids))
    for src in flows.get(target_step, ()):
        call = latest.get(src)
        if call is not None:
            candidates.append((f"{src}->{target_step}", call.call_id, src, call.output_ids))
    hints: list[ReuseHint] = []
    for kind, call_id, step, ids in candidates:
        found = find_span(prompt_ids, ids, max_trim=max_trim, min_tokens=min_tokens)
        if found is None:
            continue
        at, lo, n = found
        if any(at < h.target_offset + h.num_tokens and h.target_offset < at + n for h in hints):
            continue  # overlaps a span already claimed (the same text twice): the first wins
        hints.append(ReuseHint(key=segment_key(namespace, ids[lo:lo + n]), namespace=namespace, kind=kind,
                               source_call_id=call_id, source_step=step, target_offset=at, num_tokens=n,
                               source_offset=lo, target_call_id=target_call_id))
    # the engine computes the prompt's last token itself (its logits start the answer)
    hints = [h for h in hints if h.target_offset + h.num_tokens < len(prompt_ids)]
    return tuple(sorted(hints, key=lambda h: h.target_offset))


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpan:
    """Where the executor rendered an input's output into a prompt (token offsets), so a scheduler
    that never sees token ids can still plan: what `CallSubmitted.input_spans` carries.

        source output   [o0 o1 o2 ............ o(k-1)]        (the producing call's output ids)
                            └ source_offset ─┐
        target prompt   [sys ..][glue][o1 o2 ... ][glue]...    prompt[target_offset : +num_tokens]
                                      └ target_offset           == output[source_offset : +num_tokens]
    """

    source_step: str
    target_offset: int
    num_tokens: int
    source_offset: int = 0  # where in the source output the span starts (a token merged at the boundary)


def hints_from_spans(*, target_call_id: Hashable, target_step: str, namespace: str, prompt_tokens: int,
                     flows: Mapping[str, Sequence[str]], spans: Iterable[InputSpan],
                     finished: Iterable[FinishedCall], min_tokens: int = 8) -> tuple[ReuseHint, ...]:
    """`plan_reuse` without token ids: the executor says where each input landed; the latest
    finished call of that step (same namespace) is the source. A span is dropped (never an error)
    when its step is not an input of `target_step`, no call of it finished, it is shorter than
    `min_tokens`, it runs past the source's output or into the prompt's last token, or it overlaps
    a span kept before it (spans are taken in prompt order). Keys are `call_segment_key`s."""
    latest: dict[str, FinishedCall] = {}
    for call in finished:
        if call.namespace == namespace:
            latest[call.step] = call
    allowed = set(flows.get(target_step, ()))
    hints: list[ReuseHint] = []
    for span in sorted(spans, key=lambda s: s.target_offset):
        call = latest.get(span.source_step)
        if (call is None or span.source_step not in allowed or span.num_tokens < min_tokens
                or span.source_offset < 0 or span.target_offset < 0
                or span.source_offset + span.num_tokens > call.num_output_tokens
                or span.target_offset + span.num_tokens >= prompt_tokens
                or any(span.target_offset < h.target_offset + h.num_tokens for h in hints)):
            continue
        hints.append(ReuseHint(key=call_segment_key(namespace, call.call_id, span.source_offset, span.num_tokens),
                               namespace=namespace, kind=f"{span.source_step}->{target_step}",
                               source_call_id=call.call_id, source_step=span.source_step,
                               target_offset=span.target_offset, num_tokens=span.num_tokens,
                               source_offset=span.source_offset, target_call_id=target_call_id))
    return tuple(hints)


__all__ = ["FinishedCall", "InputSpan", "ReuseHint", "SharedText", "call_segment_key", "find_span",
           "hints_from_spans", "input_steps", "namespace_for", "plan_reuse", "segment_key"]
