"""The local engine on the real SmolLM2-135M: prefix reuse is exact, and it writes real text.

Exactness. A prompt's next-token logits through the cache (a full hit, a partial hit after part
of the prefix was evicted, a load-back from the host tier) are compared with the same prompt
prefilled cold. Reused keys and values are bit-identical to recomputed ones (asserted: the load-back
equals the device hit bit for bit); what remains is fp32 rounding of the linear layers, whose CPU
kernels block differently for a different number of rows (a cold prefill feeds 37 rows, a hit 1).
Measured (`scripts/reuse_exactness.py` prints them): full hit 2e-5 to 4e-5, partial hit 0.0, host
load-back 4e-5 on logits of magnitude ~20; transformers itself shows 4e-5 to 5e-5 between one full
prefill and the same prompt continued from its DynamicCache. The bound is 1e-4.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from agentflow.runtime.engines.base import GenerateRequest, GenerateResult, TokenChunk
from agentflow.runtime.engines.local.engine import LocalEngine
from agentflow.runtime.engines.sim.radix import pack_tokens

TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, Berlin the "
        "capital of Germany and Rome the capital of Italy. The largest planet of the solar system is")
TOL = 1e-4


@pytest.fixture(scope="module")
def ids(smollm2):
    return smollm2.tokenizer(TEXT)["input_ids"]


@pytest.fixture(scope="module")
def hf_logits(smollm2, ids):
    with torch.inference_mode():
        return smollm2.model(torch.tensor([ids])).logits[0, -1].float()


def test_a_cold_prefill_matches_transformers(smollm2, ids, hf_logits):
    eng = LocalEngine(smollm2, kv_capacity_tokens=512, chunk_tokens=24)  # three chunks
    logits, dev, host = eng.next_token_logits(ids)
    assert (dev, host) == (0, 0)
    assert (logits - hf_logits).abs().max().item() < TOL
    assert smollm2.tokenizer.decode([int(logits.argmax())]).strip() == "Jupiter"


def test_a_full_hit_gives_the_cold_logits(smollm2, ids):
    eng = LocalEngine(smollm2, kv_capacity_tokens=512)
    cold, _, _ = eng.next_token_logits(ids)
    hit, dev, host = eng.next_token_logits(ids)
    assert (dev, host) == (len(ids) - 1, 0)
    assert (hit - cold).abs().max().item() < TOL
    assert int(hit.argmax()) == int(cold.argmax())


def test_a_partial_hit_after_eviction_gives_the_cold_logits(smollm2, ids):
    eng = LocalEngine(smollm2, kv_capacity_tokens=len(ids) + 8, strategy="lru")
    cold, _, _ = eng.next_token_logits(ids)
    other = ids[:20] + [11, 12, 13]  # shares 20 tokens; its branch is newer than ids' tail
    eng.next_token_logits(other)
    eng.cache.make_room(eng.pool.num_free + 1)  # evicts the least recently used leaf: ids' tail
    assert eng.cache.resident_tokens(pack_tokens(ids), "default") == 20
    part, dev, host = eng.next_token_logits(ids)
    assert (dev, host) == (20, 0)
    assert (part - cold).abs().max().item() < TOL


def test_a_host_load_back_gives_the_device_hit_logits_bit_for_bit(smollm2, ids):
    eng = LocalEngine(smollm2, kv_capacity_tokens=len(ids) + 8, host_capacity_tokens=256)
    cold, _, _ = eng.next_token_logits(ids)
    warm, _, _ = eng.next_token_logits(ids)
    eng.cache.make_room(eng.pool.capacity_tokens)  # everything unlocked goes to the host
    assert eng.cache.tree.total_size() == 0
    back, dev, host = eng.next_token_logits(ids)
    assert (dev, host) == (0, len(ids) - 1)
    assert torch.equal(back, warm)
    assert (back - cold).abs().max().item() < TOL


def test_chat_generation_writes_real_text_and_streams_it(smollm2):
    eng = LocalEngine(smollm2, kv_capacity_tokens=1024)
    prompt = eng.encode_chat([{"role": "user", "content": "What is the capital of France?"}])

    async def run():
        chunks, result = [], None
        async for item in eng.generate(GenerateRequest(call_id="q", program_id=0, prompt_ids=tuple(prompt),
                                                       max_new_tokens=16)):
            if isinstance(item, TokenChunk):
                chunks.append(item)
            else:
                result = item
        await eng.aclose()
        return chunks, result

    chunks, result = asyncio.run(run())
    assert isinstance(result, GenerateResult)
    assert "Paris" in result.text
    assert result.finish_reason == "stop" and result.output_ids[-1] == smollm2.tokenizer.eos_token_id
    assert "".join(c.text for c in chunks) == result.text
    assert sum(len(c.token_ids) for c in chunks) == len(result.output_ids)
    assert result.prompt_tokens == len(prompt) and result.ttft_s <= result.duration_s
