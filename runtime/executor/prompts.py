"""Prompts: templates over the program state, agent conversations, and their cacheable prefixes.

An LLM step's prompt is its agent's conversation plus one new user message:

    [system: agent.system_prompt] [user] [assistant] [user] [assistant] ... [user: this step]
     └─ prefix 1: system prompt ┘ └──────── prefix 2: the agent's history ────┘

The user message is the step's `prompt` template rendered over the state, followed by the new
outputs of the steps named in `inputs` (those produced since this step last ran, so a loop
does not repeat old observations). When the call succeeds, the user message and the answer
join the conversation, so the agent's next prompt starts with this one plus its answer: a
prefix the engine has just cached.

Prefix boundaries come from the engine's own tokens, whatever its chat template: the system
prefix ends where `encode_chat([system])` stops agreeing with the prompt, the history prefix
where the previous prompt + answer does. Keys are content addresses (`prefix_key`), so two
programs of a workflow share their agents' system-prompt keys and nothing else.

Templates: `{key}` reads `state[key]`, `{a.b}` reads `state["a"]["b"]`, `{steps.name}` reads
the last output of step `name`; `{{` and `}}` are literal braces. A tool argument that is
exactly one `{key}` passes the value itself (a list stays a list), anything else is text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentflow.runtime.executor.records import ExecutionError

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][\w\-/#]*(?:\.[\w\-/#]+)*")


def _lookup(path: str, state: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    if path.startswith("steps."):
        name = path[len("steps."):]
        if name not in outputs:
            raise ExecutionError(f"template reads {{{path}}}, but step '{name}' has no output yet")
        return outputs[name]
    if path in state:  # keys may hold dots themselves ("CodeReview.break")
        return state[path]
    head, *rest = path.split(".")
    if head not in state:
        raise ExecutionError(f"template reads {{{path}}}, but the state has no '{head}' "
                             f"(state keys: {', '.join(sorted(map(str, state))) or 'none'}; "
                             f"give it as an input)")
    value = state[head]
    for part in rest:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            raise ExecutionError(f"template reads {{{path}}}, but '{part}' is not in it")
    return value


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def render(template: str, state: Mapping[str, Any], outputs: Mapping[str, Any]) -> str:
    def sub(m: re.Match) -> str:
        whole = m.group(0)
        if whole == "{{":
            return "{"
        if whole == "}}":
            return "}"
        path = m.group(1).strip()
        if not _NAME.fullmatch(path):
            raise ExecutionError(f"template field {whole!r} is not a state key or steps.<name>")
        return as_text(_lookup(path, state, outputs))

    return _FIELD.sub(sub, template)


def render_arg(value: Any, state: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        m = _FIELD.fullmatch(value)
        if m and m.group(1) is not None and _NAME.fullmatch(m.group(1).strip()):
            return _lookup(m.group(1).strip(), state, outputs)
        return render(value, state, outputs)
    if isinstance(value, Mapping):
        return {k: render_arg(v, state, outputs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_arg(v, state, outputs) for v in value]
    return value


def user_message(template: str, inputs: Sequence[tuple[str, Any]], state: Mapping[str, Any],
                 outputs: Mapping[str, Any]) -> str:
    """The step's rendered prompt, then each new input as `[step]` + its output."""
    parts = [render(template, state, outputs).strip()] if template else []
    for name, out in inputs:
        parts.append(f"[{name}]\n{as_text(out).strip()}")
    text = "\n\n".join(p for p in parts if p)
    return text or "(continue)"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix: slice comparisons (C speed) in a binary search, since
    conversations run to 10^5 tokens and one is compared per call."""
    a, b = tuple(a), tuple(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo]; a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def boundaries(prompt: Sequence[int], system_ids: Sequence[int], history_ids: Sequence[int] | None) -> list[int]:
    """Ascending prefix ends: the system prompt's, then the history's (when it extends it)."""
    out: list[int] = []
    s = common_prefix(system_ids, prompt)
    if s > 0:
        out.append(s)
    if history_ids:
        h = common_prefix(history_ids, prompt)
        if h > (out[-1] if out else 0):
            out.append(h)
    return out


__all__ = ["as_text", "boundaries", "common_prefix", "render", "render_arg", "user_message"]
