"""Fixtures of the cross-agent reuse tests: a tiny random Llama (mechanics only; no GPU, no hub).

A 4-layer model with 4 query / 2 KV heads, head_dim 16: big enough for layers above 0 to make a
segment's KV depend on its context (what anchors correct), small enough to prefill in milliseconds.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_lm():
    from agentflow.runtime.engines.local.model import tiny_model

    return tiny_model(layers=4, hidden=64, heads=4, kv_heads=2, seed=0)
