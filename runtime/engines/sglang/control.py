"""The control path: what agentflow asks of an SGLang server's radix cache, and how it gets there.

A decision (runtime/decision.py) names prefixes by key. The server learns which tokens a key covers
from the requests that declare it, so later messages name keys only. Every message is a list of
*actions* in SGLang's own versioned hint format (`KvHintAction`: `action_id`, `action_type`,
`action_version`, `payload`), and travels one of two ways:

    with a request (no extra round trip)           without a request (pin at a tool call, unpin,
                                                   prefetch, priority updates)
    POST /generate {input_ids, priority,           POST /agentflow/control {envelope}
        session_id, extra_key, kv_hints}                 │ HTTP process: validate, wrap in
        │                                                │ AgentflowControlReq (plugin.py)
        ▼                                                ▼
    TokenizerManager ── zmq ──> scheduler, entry rank (TP rank 0): _pull_raw_reqs
                                  + a Tick(now_s) stamped here, once, when pins are live
                                        │ broadcast_pyobj: the SAME list, in the SAME order,
                                        ▼ to every TP rank
              rank 0        rank 1   ...   rank N-1   each runs process_input_requests:
              handle_generate_request (kv_hints)  /  dispatcher -> AgentflowControlReq
                                        │
                                        ▼
                         apply_actions(cache, actions)   (this module; identical on every rank)

Why time is broadcast too: TTL pins expire by a clock, and ranks' clocks differ. If each rank read
its own, rank 0 could release a pin one scheduling step before rank 1 and the two trees would
evict differently (SGLang asserts rank consensus on eviction). So a pin's deadline and the
reaper's "now" both come from the entry rank's Tick, which rides the broadcast with the requests.

This module is pure (no SGLang import): the client builds actions with it, the plugin parses and
applies them against any object with the `ControlTarget` methods (the pin-capable cache in
pins.py; a recording fake in tests of the wire format).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agentflow.runtime.decision import Decision

PROTOCOL_VERSION = "agentflow.kv/1"
ACTION_VERSION = "1"
UNPIN_REASONS = ("next_call", "ttl_expired", "cancelled", "worker_lost", "pressure")


class ControlError(ValueError):
    """A malformed control message (the HTTP route answers 400 and applies nothing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclarePrefix:
    """`key` is the first `num_tokens` tokens of the request it rides with (or of `token_ids`).

    The key is namespaced the way SGLang namespaces the request's own radix key: `namespace` is
    its `extra_key`, `cache_salt` its `cache_salt` (None on a declaration that rides a request:
    the request's own salt is taken)."""

    key: str
    namespace: str
    num_tokens: int
    token_ids: tuple[int, ...] | None = None  # None: take them from the carrying request
    cache_salt: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetPriority:
    key: str
    priority: int  # SGLang convention: higher is kept longer; 0 drops the key's hold on its path


@dataclass(frozen=True, slots=True, kw_only=True)
class PinPrefix:
    key: str
    program_id: str
    ttl_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UnpinPrefix:
    key: str | None  # None: every pin of program_id
    program_id: str | None
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchPrefix:
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramCall:
    """The request it rides with is `program_id`'s next call: that program's pins have done their job."""

    program_id: str


Action = DeclarePrefix | SetPriority | PinPrefix | UnpinPrefix | PrefetchPrefix | ProgramCall

_TYPE_OF = {DeclarePrefix: "agentflow.declare", SetPriority: "agentflow.priority", PinPrefix: "agentflow.pin",
            UnpinPrefix: "agentflow.unpin", PrefetchPrefix: "agentflow.prefetch", ProgramCall: "agentflow.call"}
_CLASS_OF = {v: k for k, v in _TYPE_OF.items()}


class ControlTarget(Protocol):
    """What a rank's cache offers the control path (pins.AgentflowRadixCache implements it)."""

    def declare_prefix(self, key: str, namespace: str, token_ids: Sequence[int],
                       cache_salt: str | None = None) -> None: ...
    def set_priority(self, key: str, priority: int) -> None: ...
    def pin(self, key: str, program_id: str, ttl_s: float) -> bool: ...
    def unpin(self, key: str | None, program_id: str | None, reason: str) -> int: ...
    def prefetch(self, key: str) -> int: ...
    def advance_clock(self, now_s: float) -> None: ...


# ---- wire format: SGLang's KvHintsEnvelope as plain JSON ----

def _payload(action: Action) -> dict[str, Any]:
    if isinstance(action, DeclarePrefix):
        out: dict[str, Any] = {"key": action.key, "namespace": action.namespace, "num_tokens": action.num_tokens}
        if action.token_ids is not None:
            out["token_ids"] = list(action.token_ids)
        if action.cache_salt is not None:
            out["cache_salt"] = action.cache_salt
        return out
    if isinstance(action, SetPriority):
        return {"key": action.key, "priority": action.priority}
    if isinstance(action, PinPrefix):
        return {"key": action.key, "program_id": action.program_id, "ttl_s": action.ttl_s}
    if isinstance(action, UnpinPrefix):
        return {"key": action.key, "program_id": action.program_id, "reason": action.reason}
    if isinstance(action, PrefetchPrefix):
        return {"key": action.key}
    return {"program_id": action.program_id}


def to_envelope(actions: Sequence[Action], *, message_id: str) -> dict[str, Any]:
    """The JSON envelope (`kv_hints` on a request, or the body of POST /agentflow/control)."""
    return {"protocol_version": PROTOCOL_VERSION, "message_id": message_id,
            "actions": [{"action_id": f"{message_id}.{i}", "action_type": _TYPE_OF[type(a)],
                         "action_version": ACTION_VERSION, "payload": _payload(a)}
                        for i, a in enumerate(actions)]}


def _field(payload: dict, name: str, kind: type | tuple[type, ...], where: str, *, optional: bool = False):
    value = payload.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ControlError(f"{where}: payload field {name!r} must be {kind}, got {value!r}")
    return value


def _parse_action(raw: Any, where: str) -> Action | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("payload", {}), dict):
        raise ControlError(f"{where}: an action must be an object with an object payload, got {raw!r}")
    cls = _CLASS_OF.get(raw.get("action_type"))
    if cls is None:
        return None  # another consumer's action (SGLang's storage hints): not ours to judge
    if raw.get("action_version") != ACTION_VERSION:
        raise ControlError(f"{where}: {raw.get('action_type')} version {raw.get('action_version')!r} "
                           f"is not supported (want {ACTION_VERSION!r})")
    p = raw.get("payload", {})
    if cls is DeclarePrefix:
        n = _field(p, "num_tokens", int, where)
        ids = _field(p, "token_ids", list, where, optional=True)
        if n <= 0 or (ids is not None and (len(ids) != n or not all(type(t) is int for t in ids))):
            raise ControlError(f"{where}: declare needs num_tokens > 0 and, if given, exactly that many int token_ids")
        return DeclarePrefix(key=_field(p, "key", str, where), namespace=_field(p, "namespace", str, where),
                             num_tokens=n, token_ids=None if ids is None else tuple(ids),
                             cache_salt=_field(p, "cache_salt", str, where, optional=True) or None)
    if cls is SetPriority:
        return SetPriority(key=_field(p, "key", str, where), priority=_field(p, "priority", int, where))
    if cls is PinPrefix:
        ttl = float(_field(p, "ttl_s", (int, float), where))
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ControlError(f"{where}: pin ttl_s must be a positive finite number, got {ttl!r}")
        return PinPrefix(key=_field(p, "key", str, where), program_id=_field(p, "program_id", str, where), ttl_s=ttl)
    if cls is UnpinPrefix:
        key = _field(p, "key", str, where, optional=True)
        program = _field(p, "program_id", str, where, optional=True)
        reason = p.get("reason", "cancelled")
        if key is None and program is None:
            raise ControlError(f"{where}: unpin names a key, a program_id, or both")
        if reason not in UNPIN_REASONS:
            raise ControlError(f"{where}: unpin reason {reason!r} is not one of {UNPIN_REASONS}")
        return UnpinPrefix(key=key, program_id=program, reason=reason)
    if cls is PrefetchPrefix:
        return PrefetchPrefix(key=_field(p, "key", str, where))
    return ProgramCall(program_id=_field(p, "program_id", str, where))


def parse_envelope(envelope: Any) -> list[Action]:
    """Our actions out of a KvHintsEnvelope (dict, JSON text, or SGLang's struct); others are skipped."""
    if isinstance(envelope, (bytes, str)):
        try:
            envelope = json.loads(envelope)
        except ValueError as exc:
            raise ControlError(f"control message is not JSON: {exc}") from None
    if not isinstance(envelope, dict):  # SGLang's KvHintsEnvelope / KvHintAction msgspec structs
        envelope = {"protocol_version": getattr(envelope, "protocol_version", None),
                    "message_id": getattr(envelope, "message_id", ""),
                    "actions": [{"action_id": a.action_id, "action_type": a.action_type,
                                 "action_version": a.action_version, "payload": dict(a.payload)}
                                for a in getattr(envelope, "actions", ())]}
    actions = envelope.get("actions")
    if not isinstance(actions, list):
        raise ControlError(f"envelope {envelope.get('message_id')!r}: 'actions' must be a list")
    ours = [_parse_action(raw, f"envelope {envelope.get('message_id')!r} action {i}") for i, raw in enumerate(actions)]
    if any(a is not None for a in ours) and envelope.get("protocol_version") != PROTOCOL_VERSION:
        raise ControlError(f"envelope protocol_version {envelope.get('protocol_version')!r}: "
                           f"agentflow actions need {PROTOCOL_VERSION!r}")
    return [a for a in ours if a is not None]


# ---- application on one rank ----

def apply_actions(target: ControlTarget, actions: Iterable[Action], *,
                  request_token_ids: Sequence[int] | None = None, request_cache_salt: str | None = None) -> None:
    """Apply actions in order. A declaration without token ids takes them, and its cache salt,
    from the carrying request; a declaration that needs them and has none is skipped (as an
    unknown key would be)."""
    for a in actions:
        if isinstance(a, DeclarePrefix):
            ids = a.token_ids if a.token_ids is not None else (
                None if request_token_ids is None or len(request_token_ids) < a.num_tokens
                else request_token_ids[: a.num_tokens])
            salt = a.cache_salt if a.cache_salt is not None or a.token_ids is not None else request_cache_salt
            if ids is not None:
                target.declare_prefix(a.key, a.namespace, ids, salt or None)
        elif isinstance(a, SetPriority):
            target.set_priority(a.key, a.priority)
        elif isinstance(a, PinPrefix):
            target.pin(a.key, a.program_id, a.ttl_s)
        elif isinstance(a, UnpinPrefix):
            target.unpin(a.key, a.program_id, a.reason)
        elif isinstance(a, PrefetchPrefix):
            target.prefetch(a.key)
        elif isinstance(a, ProgramCall):
            target.unpin(None, a.program_id, "next_call")


# ---- a Decision as actions (client side) ----

def decision_actions(decision: Decision, *, worker: str) -> list[Action]:
    """The parts of `decision` that concern `worker` (or no worker), in the order they must apply:
    unpins first (they free room), then pins, priorities, prefetches. Admission order and routes
    are the caller's (SGLang admits by its own queue policy)."""
    mine = (None, worker)
    out: list[Action] = []
    out += [UnpinPrefix(key=u.prefix, program_id=str(u.program_id), reason=u.reason.value)
            for u in decision.unpins if u.worker in mine]
    out += [PinPrefix(key=p.prefix, program_id=str(p.program_id), ttl_s=p.ttl_s)
            for p in decision.pins if p.worker in mine and p.ttl_s > 0]
    out += [SetPriority(key=p.prefix, priority=p.priority) for p in decision.priorities]
    out += [PrefetchPrefix(key=f.prefix) for f in decision.prefetches if f.worker == worker]
    return out


def program_key(program_id: Hashable) -> str:
    """Programs travel as strings (JSON); the scheduler's ids may be ints."""
    return str(program_id)


__all__ = [
    "ACTION_VERSION",
    "PROTOCOL_VERSION",
    "UNPIN_REASONS",
    "Action",
    "ControlError",
    "ControlTarget",
    "DeclarePrefix",
    "PinPrefix",
    "PrefetchPrefix",
    "ProgramCall",
    "SetPriority",
    "UnpinPrefix",
    "apply_actions",
    "decision_actions",
    "parse_envelope",
    "program_key",
    "to_envelope",
]
