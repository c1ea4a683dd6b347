"""The plugin against a real SGLang 0.5.23 server on CPU (scripts/sglang_cpu_server.sh).

Real: SGLang's HTTP server, tokenizer manager, scheduler (its event loop, admission, batching),
the radix cache and KV pool, its plugin loader, and SmolLM2-135M run by SGLang's torch-native
code. Stood in for: CUDA kernels (`sgl_kernel`) and torchvision, import-only; a call to either
would raise, and the log is checked for none. One server serves the whole session (conftest:
`sglang_server`), each test starts from an empty cache (`live`). The pool is 256 tokens
(conftest.POOL_TOKENS): three 100-token prompts evict what nothing holds; prompts are 50 tokens.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from agentflow.runtime.engines.sglang.control import (
    DeclarePrefix,
    PinPrefix,
    ProgramCall,
)

from tests.engines.sglang._live import cached, control, generate, pressure, priority_sequence, prompt
from tests.engines.sglang.conftest import POOL_TOKENS

pytestmark = [pytest.mark.needs_sglang, pytest.mark.needs_sglang_server]

PLUGIN_LINE = "Tree cache initialized: source=registered('agentflow') impl=AgentflowRadixCache"


def _declare(key: str, ids, *, ns: str = "t") -> DeclarePrefix:
    return DeclarePrefix(key=key, namespace=ns, num_tokens=len(ids))


def test_the_plugin_is_loaded_and_no_stand_in_was_called(live):
    log = live.log()
    assert PLUGIN_LINE in log
    assert "Failed to execute general plugin" not in log and "Failed to load plugin" not in log
    assert "StandinCalled" not in log and "import-only stand-in" not in log
    info = httpx.get(live.url + "/agentflow/info", timeout=30).json()
    assert info == {"vocab_size": 49152, "context_length": 256, "plugin": "agentflow", "policy": "workflow"}


def test_a_pinned_prefix_survives_pressure_that_evicts_an_unpinned_one(live):
    a, b = prompt(1000), prompt(2000)
    assert cached(live.url, a, hints=[_declare("A", a)]) == 0
    assert cached(live.url, b, hints=[_declare("B", b)]) == 0
    assert control(live.url, [PinPrefix(key="A", program_id="p", ttl_s=600.0)]).status_code == 200
    pressure(live.url)
    assert cached(live.url, b) == 0
    assert cached(live.url, a) == len(a) - 1


def test_priorities_order_eviction_against_recency(live):
    """A is older than B, so LRU would evict A first; A's priority 900 keeps it and B goes.
    (test_server_baseline.py runs the same sequence on stock SGLang: there A goes.)"""
    a, b = priority_sequence(live.url, hints=True)
    assert cached(live.url, b) == 0  # B first: a hit on it allocates nothing, so A's fate is already sealed
    assert cached(live.url, a) == len(a) - 1


def test_a_pin_ends_at_its_ttl(live):
    a, b = prompt(5000), prompt(6000)
    cached(live.url, a, hints=[_declare("A", a)])
    cached(live.url, b, hints=[_declare("B", b)])
    assert control(live.url, [PinPrefix(key="A", program_id="p", ttl_s=1.0),
                              PinPrefix(key="B", program_id="p", ttl_s=600.0)]).status_code == 200
    time.sleep(2.0)  # the server's own clock: the entry rank ticks once A's deadline passed
    pressure(live.url)
    assert cached(live.url, b) == len(b) - 1
    assert cached(live.url, a) == 0


def test_a_pin_ends_when_its_programs_next_call_is_admitted(live):
    a, b, x = prompt(7000), prompt(8000), prompt(9000)
    cached(live.url, a, hints=[_declare("A", a)])
    cached(live.url, b, hints=[_declare("B", b)])
    assert control(live.url, [PinPrefix(key="A", program_id="p", ttl_s=600.0),
                              PinPrefix(key="B", program_id="q", ttl_s=600.0)]).status_code == 200
    cached(live.url, x, hints=[ProgramCall(program_id="p")])  # p's next call: p's pin has done its job
    pressure(live.url)
    assert cached(live.url, b) == len(b) - 1
    assert cached(live.url, a) == 0


def test_tenants_never_share_a_prefix(live):
    x = prompt(10_000)
    assert cached(live.url, x, ns="tenant1") == 0
    assert cached(live.url, x, ns="tenant2") == 0
    assert cached(live.url, x, ns="tenant1") == len(x) - 1
    # a pin in one tenant's namespace holds nothing of another's
    cached(live.url, x, ns="tenant2", hints=[_declare("X2", x, ns="tenant2")])
    assert control(live.url, [PinPrefix(key="X2", program_id="p", ttl_s=600.0)]).status_code == 200
    pressure(live.url)
    assert cached(live.url, x, ns="tenant1") == 0
    assert cached(live.url, x, ns="tenant2") == len(x) - 1


def test_a_declared_key_carries_the_requests_cache_salt(live):
    """SGLang puts cache_salt into the request's radix key: the key declared on that request must
    name the same path, or the pin would hold nothing."""
    a = prompt(11_000)
    assert cached(live.url, a, salt="s1", hints=[_declare("A", a)]) == 0
    assert control(live.url, [PinPrefix(key="A", program_id="p", ttl_s=600.0)]).status_code == 200
    pressure(live.url)
    assert cached(live.url, a, salt="s1") == len(a) - 1
    assert cached(live.url, a) == 0  # unsalted: another namespace


BAD_PIN = {"protocol_version": "agentflow.kv/1", "message_id": "bad",
           "actions": [{"action_id": "a0", "action_type": "agentflow.pin", "action_version": "1",
                        "payload": {"key": "A", "program_id": "p", "ttl_s": -1}}]}


def test_bad_hints_and_bad_control_messages_get_400_naming_the_field_and_the_server_keeps_serving(live):
    r = httpx.post(live.url + "/agentflow/control", json=BAD_PIN, timeout=30)
    assert r.status_code == 400 and "ttl_s" in r.json()["error"]
    r = httpx.post(live.url + "/agentflow/control", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    x = prompt(12_000, 20)
    for stream in (False, True):
        body = {"input_ids": list(x), "sampling_params": {"max_new_tokens": 1}, "kv_hints": BAD_PIN, "stream": stream}
        r = httpx.post(live.url + "/generate", json=body, timeout=60)
        assert r.status_code == 400, r.text
        assert "kv_hints" in r.json()["error"] and "ttl_s" in r.json()["error"]
    bad_type = dict(BAD_PIN, actions=[dict(BAD_PIN["actions"][0], payload={"key": 5, "program_id": "p", "ttl_s": 1})])
    r = httpx.post(live.url + "/generate", json={"input_ids": list(x), "kv_hints": bad_type}, timeout=60)
    assert r.status_code == 400 and "'key'" in r.json()["error"]
    assert generate(live.url, x).status_code == 200  # still serving
    assert control(live.url, []).status_code == 200


def test_sglang_engine_streams_hits_the_cache_and_reads_loads(live):
    from agentflow.runtime.engines.base import GenerateRequest, GenerateResult, TokenChunk, prefix_chain
    from agentflow.runtime.engines.sglang.client import SGLangEngine

    ids = prompt(13_000, 60)

    async def main():
        engine = SGLangEngine(live.url, name="w1")
        try:
            results = []
            for call in ("c1", "c2"):
                req = GenerateRequest(call_id=call, program_id=1, prompt_ids=ids, max_new_tokens=3, ignore_eos=True,
                                      namespace="t", prefixes=prefix_chain("t", ids, [40, 60]))
                items = [x async for x in engine.generate(req)]
                assert all(isinstance(x, TokenChunk) for x in items[:-1]) and isinstance(items[-1], GenerateResult)
                assert sum(len(x.token_ids) for x in items[:-1]) == 3 == len(items[-1].output_ids)
                results.append(items[-1])
            load = await engine.refresh_load()
            return engine.vocab_size, results, load
        finally:
            await engine.aclose()

    vocab, (first, second), load = asyncio.run(main())
    assert vocab == 49152
    assert (first.cached_tokens, second.cached_tokens) == (0, 59)
    assert load.kv_capacity_tokens == POOL_TOKENS and load.running == 0
