"""Prints the figures docs/fidelity.md and tests/engines/local/test_real_model.py quote: how far
the local engine's next-token logits through its cache are from a cold prefill of the same prompt.

    .venv/bin/python scripts/reuse_exactness.py     # one JSON line

Cases (the same as the tests, which assert each below 1e-4): a cold prefill against transformers'
own forward; a full hit; a partial hit after the prefix's tail was evicted; a load-back from the
host tier; and, for scale, transformers itself continuing a prompt from its DynamicCache against
one full forward.
"""

from __future__ import annotations

import json

import torch

from agentflow.runtime.engines.local.engine import LocalEngine
from agentflow.runtime.engines.local.model import load_smollm2

TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, Berlin the "
        "capital of Germany and Rome the capital of Italy. The largest planet of the solar system is")


def diff(a, b) -> float:
    return float((a - b).abs().max().item())


def main() -> None:
    m = load_smollm2()
    ids = m.tokenizer(TEXT)["input_ids"]
    with torch.inference_mode():
        full = m.model(torch.tensor([ids])).logits[0, -1].float()
        head = m.model(torch.tensor([ids[:-1]]), use_cache=True)
        cont = m.model(torch.tensor([ids[-1:]]), past_key_values=head.past_key_values).logits[0, -1].float()

    eng = LocalEngine(m, kv_capacity_tokens=512, chunk_tokens=24)
    cold, _, _ = eng.next_token_logits(ids)
    hit, _, _ = eng.next_token_logits(ids)

    eng = LocalEngine(m, kv_capacity_tokens=len(ids) + 8, strategy="lru")
    cold2, _, _ = eng.next_token_logits(ids)
    eng.next_token_logits(ids[:20] + [11, 12, 13])
    eng.cache.make_room(eng.pool.num_free + 1)  # evicts ids' tail (least recently used)
    part, dev_part, _ = eng.next_token_logits(ids)

    eng = LocalEngine(m, kv_capacity_tokens=len(ids) + 8, host_capacity_tokens=256)
    cold3, _, _ = eng.next_token_logits(ids)
    warm, _, _ = eng.next_token_logits(ids)
    eng.cache.make_room(eng.pool.capacity_tokens)  # everything unlocked goes to the host
    back, _, host_back = eng.next_token_logits(ids)

    print(json.dumps({
        "prompt_tokens": len(ids), "logit_abs_max": round(float(full.abs().max()), 2),
        "cold_vs_transformers": diff(cold, full), "full_hit_vs_cold": diff(hit, cold),
        "partial_hit_vs_cold": diff(part, cold2), "partial_hit_cached_tokens": dev_part,
        "host_load_back_vs_cold": diff(back, cold3), "host_load_back_equals_device_hit": bool(torch.equal(back, warm)),
        "host_tokens_loaded": host_back, "transformers_dynamic_cache_vs_full": diff(cont, full),
    }))


if __name__ == "__main__":
    main()
