"""Workflow hints on an OpenAI request: all optional, validated at the edge, mapped to one `Hints`.

Where a hint may come from, highest precedence first (docs/openai.md has the table):

    extra_body={"agentflow": {"program_id", "agent", "step", "workflow", "last_step"}}   native
    x-agentflow-program-id / -agent / -step / -workflow / -last-step headers               native
    "job_id", "is_last_step"                                                             Continuum
    "session_id"                                                                         SGLang
    "agent_hints": {"priority"}  or  "nvext": {"agent_hints": {"priority"}}                Dynamo

A malformed hint is the client's error: `HintError` names the field (the HTTP layer answers 400).
Keys nobody knows inside those objects, and unknown `x-agentflow-*` headers, are ignored and
counted (`Hints.unknown_keys`), never an error: a newer client must keep working here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_HINT_CHARS = 256
_NATIVE = ("program_id", "agent", "step", "workflow", "last_step")
_HEADER = "x-agentflow-"


class HintError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class Hints:
    program_id: str | None = None
    agent: str | None = None
    step: str | None = None
    workflow: str | None = None
    last_step: bool = False
    priority: int | None = None  # Dynamo's agent_hints.priority: the engine's eviction priority
    source: str = "none"  # where the program id came from: agentflow, header, continuum, sglang, none
    unknown_keys: int = 0


def _text(value, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and field in ("job_id", "session_id"):
        value = str(value)  # Continuum's and SGLang's ids may be numbers
    if not isinstance(value, str):
        raise HintError(field, f"must be a string (got {type(value).__name__})")
    if not value or len(value) > MAX_HINT_CHARS:
        raise HintError(field, f"must be 1 to {MAX_HINT_CHARS} characters (got {len(value)})")
    if not value.isprintable():
        raise HintError(field, "must be printable text (no control characters)")
    return value


def _flag(value, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise HintError(field, f"must be a boolean (got {value!r})")


def _priority(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise HintError(field, f"must be an integer (got {value!r})")
    if not -(2**31) <= int(value) < 2**31:
        raise HintError(field, "must fit in 32 bits")
    return int(value)


def parse_hints(body: Mapping, headers: Mapping[str, str]) -> Hints:
    """The hints of one request body (a parsed JSON object) and its headers (lower-case names)."""
    unknown = 0
    got: dict = {}
    src = "none"
    native = body.get("agentflow")
    if native is not None:
        if not isinstance(native, dict):
            raise HintError("agentflow", f"must be an object (got {type(native).__name__})")
        for k, v in native.items():
            if k not in _NATIVE:
                unknown += 1
            elif v is not None:
                got[k] = (v, f"agentflow.{k}")
        if "program_id" in got:
            src = "agentflow"
    for name, value in headers.items():
        if not name.startswith(_HEADER):
            continue
        k = name[len(_HEADER):].replace("-", "_")
        if k not in _NATIVE:
            unknown += 1
        elif k not in got:
            got[k] = (value, name)
            if k == "program_id":
                src = "header"
    if "program_id" not in got:
        if body.get("job_id") is not None:
            got["program_id"] = (body["job_id"], "job_id")
            src = "continuum"
        elif body.get("session_id") is not None:
            got["program_id"] = (body["session_id"], "session_id")
            src = "sglang"
    if "last_step" not in got and body.get("is_last_step") is not None:
        got["last_step"] = (body["is_last_step"], "is_last_step")
    priority = None
    for path, obj in (("agent_hints", body.get("agent_hints")),
                      ("nvext.agent_hints", (body.get("nvext") or {}).get("agent_hints")
                       if isinstance(body.get("nvext"), dict) else None)):
        if obj is None:
            continue
        if not isinstance(obj, dict):
            raise HintError(path, f"must be an object (got {type(obj).__name__})")
        for k, v in obj.items():
            if k == "priority" and v is not None:
                priority = _priority(v, f"{path}.priority")
            elif k != "priority":
                unknown += 1
    out = {k: (_flag(v, f) if k == "last_step" else _text(v, f)) for k, (v, f) in got.items()}
    return Hints(**out, priority=priority, source=src, unknown_keys=unknown)


__all__ = ["HintError", "Hints", "MAX_HINT_CHARS", "parse_hints"]
