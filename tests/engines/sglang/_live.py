"""Small helpers for the tests against a real SGLang server (conftest.start_server).

Prompts are token ids drawn from disjoint ranges, so that no two share a radix node unless a
test says so; `cached_tokens` is SGLang's own `meta_info.cached_tokens` (what the radix cache
hit). SGLang always computes a prompt's last token, so a full hit on an N-token prompt is N-1.
"""

from __future__ import annotations

import httpx
from agentflow.runtime.engines.sglang.control import Action, to_envelope


def prompt(start: int, num_tokens: int = 50) -> tuple[int, ...]:
    return tuple(range(start, start + num_tokens))


def generate(url: str, ids, *, ns: str = "t", hints: list[Action] | None = None, salt: str | None = None,
             stream: bool = False, message_id: str = "g") -> httpx.Response:
    body = {"input_ids": list(ids), "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
            "extra_key": ns, "stream": stream}
    if hints is not None:
        body["kv_hints"] = to_envelope(hints, message_id=message_id)
    if salt is not None:
        body["cache_salt"] = salt
    return httpx.post(url + "/generate", json=body, timeout=120)


def cached(url: str, ids, **kw) -> int:
    """Send the prompt (one output token) and return how many of its tokens the cache held."""
    r = generate(url, ids, **kw)
    assert r.status_code == 200, r.text
    return int(r.json()["meta_info"]["cached_tokens"])


def control(url: str, actions: list[Action], *, message_id: str = "c") -> httpx.Response:
    return httpx.post(url + "/agentflow/control", json=to_envelope(actions, message_id=message_id), timeout=60)


def pressure(url: str, *, starts=(20_000, 21_000, 22_000), num_tokens: int = 100) -> None:
    """Overfill the tests' 256-token pool with unrelated prompts (each evicts what nothing holds)."""
    for s in starts:
        cached(url, prompt(s, num_tokens))


def priority_sequence(url: str, *, hints: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A (60 tokens) then B (60), declared, A given priority 900 riding its own request's kv_hints
    (a stock server ignores them); then F1 (100) fills the 256-token pool to ~225 and F2 (40) must
    evict exactly one 60-token leaf: the least recent (A) under LRU, the lowest priority (B) under
    `workflow`. Returns (A, B); the caller checks B first (a hit on B evicts nothing)."""
    from agentflow.runtime.engines.sglang.control import DeclarePrefix, SetPriority

    a, b = prompt(3000, 60), prompt(4000, 60)
    cached(url, a, hints=[DeclarePrefix(key="A", namespace="t", num_tokens=60), SetPriority(key="A", priority=900)]
           if hints else None)
    cached(url, b, hints=[DeclarePrefix(key="B", namespace="t", num_tokens=60)] if hints else None)
    cached(url, prompt(20_000, 100))
    cached(url, prompt(21_000, 40))
    return a, b
