"""Fixtures of the local engine's tests: tiny random models. The real SmolLM2 (`smollm2`, one per
session, shared with the executor's and the service's tests) is in tests/conftest.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny():
    """A random 2-layer Llama (meaningless text; mechanics only). No tokenizer: prompts are ids."""
    from agentflow.runtime.engines.local.model import tiny_model

    return tiny_model(layers=2, hidden=64, heads=4, kv_heads=2, seed=0)
