"""OpenAI messages and tools <-> the text a chat template takes, and tool calls out of the output.

The local model's template (ChatML) takes `role` and string `content` only, so:

    assistant tool_calls   -> <tool_call>{"name": ..., "arguments": ...}</tool_call> lines
    tool results           -> role "tool", the content as is
    request `tools`        -> a <tools>[...]</tools> block appended to the system message
    tool_choice {function} -> the answer is opened with '<tool_call>{"name": "F", "arguments": '
                              (prefilled after the generation prompt), so the model writes arguments

and an answer's `<tool_call>...</tool_call>` blocks become `tool_calls` (arguments as the model
wrote them: like OpenAI without strict mode, they may not be valid JSON).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence

from agentflow.runtime.frontdoor.conversation import message_text

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def render_messages(messages: Sequence[Mapping], tools: Sequence[Mapping] | None) -> list[dict[str, str]]:
    out = []
    for m in messages:
        role = m["role"]
        role = "system" if role == "developer" else role
        text = message_text(m.get("content"))
        for c in m.get("tool_calls") or ():
            fn = c.get("function") or {}
            args = fn.get("arguments", "")
            args = args if isinstance(args, str) else json.dumps(args)
            # as a forced call is opened (forced_prefix), so the echo re-reads the cached answer
            text += ("\n" if text else "") + '<tool_call>{"name": ' + json.dumps(fn.get("name", "")) + \
                ', "arguments": ' + args + "}</tool_call>"
        out.append({"role": "tool" if role == "function" else role, "content": text})
    if tools:
        block = ("You may call these tools. To call one, answer with <tool_call>{\"name\": ..., \"arguments\": "
                 "{...}}</tool_call>.\n<tools>" + json.dumps([t.get("function", t) for t in tools]) + "</tools>")
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def forced_prefix(tool_choice, tools: Sequence[Mapping] | None) -> str:
    """The opening of a forced tool call, or ''."""
    if not tools or tool_choice in (None, "auto", "none"):
        return ""
    if tool_choice == "required":
        name = (tools[0].get("function") or {}).get("name", "")
    else:
        name = (tool_choice.get("function") or {}).get("name", "")
    return '<tool_call>{"name": ' + json.dumps(name) + ', "arguments": '


def _arguments(raw: str) -> str:
    """The arguments object at the start of `raw`: the balanced {...} if there is one, else all of it."""
    raw = raw.strip()
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(raw):
        if in_str:
            esc = (ch == "\\") and not esc
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return raw[: i + 1]
    return raw


def parse_tool_calls(text: str, prefix: str) -> tuple[str, list[dict]]:
    """(content, tool_calls) of an answer; `prefix` is the forced opening the model continued."""
    if prefix:
        name = json.loads(prefix[len('<tool_call>{"name": '):-len(', "arguments": ')])
        return "", [_call(name, _arguments(text))]
    calls = []
    for body in _CALL.findall(text):
        try:
            obj = json.loads(body)
        except ValueError:
            continue
        if isinstance(obj, Mapping) and isinstance(obj.get("name"), str):
            args = obj.get("arguments", {})
            calls.append(_call(obj["name"], args if isinstance(args, str) else json.dumps(args)))
    if not calls:
        return text, []
    return _CALL.sub("", text).strip(), calls


def _call(name: str, arguments: str) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": arguments}}


__all__ = ["forced_prefix", "parse_tool_calls", "render_messages"]
