"""The local engine: a real transformers model on this machine's CPU behind the Engine interface.

`LocalEngine` (engine.py) serves SmolLM2-135M-Instruct (model.py) with continuous batching over
a KV slot pool (pool.py, forward.py) and SGLang's radix prefix cache with a host tier (cache.py).
Importing this package needs torch and transformers (the `local` extra); model.py's INSTALL_HINT
names what to install when they are missing.
"""

from __future__ import annotations

from agentflow.runtime.engines.local.model import (
    INSTALL_HINT,
    LoadedModel,
    load_smollm2,
    tiny_model,
)

__all__ = ["INSTALL_HINT", "LoadedModel", "LocalEngine", "load_smollm2", "tiny_model"]


def __getattr__(name: str):
    # The engine imports torch and transformers: resolve it lazily so that INSTALL_HINT and the
    # loaders (which raise EngineError naming the extra) stay importable without them.
    if name == "LocalEngine":
        from agentflow.runtime.engines.local.model import _require

        _require("torch", "transformers")
        from agentflow.runtime.engines.local.engine import LocalEngine

        return LocalEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
