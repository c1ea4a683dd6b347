"""Import SGLang 0.5.23's radix-cache classes on a CPU machine, for the conformance tests.

Why a shim: `sglang.srt.mem_cache` reaches, through `memory_pool` -> `sglang.srt.configs` ->
`multimodal/internvl_utils.py` and `configs/deepseek_ocr.py`, a module-level
`import torchvision.transforms` / `from torchvision.transforms import InterpolationMode`.
Nothing on the radix tree's code path calls into it, but PyPI has no CPU build of torchvision
and the CUDA one would pull several GB of CUDA packages. So, before sglang is imported, and only
if the real package is not installed, `install()` puts a stub `torchvision` package into
`sys.modules`: empty modules whose attributes are inert placeholders (calling one raises).

One more step keeps the stub from leaking: transformers decides once (an `lru_cache`d
`is_torchvision_available()`, a `find_spec` underneath) whether torchvision exists and, if so,
imports `torchvision.transforms.v2` for its image processors. `install()` asks that question
*before* inserting the stub, so transformers caches the true answer (False) and never touches
the stub. Once sglang's cache modules are imported the stub leaves `sys.modules` again
(`remove()`): the modules that imported it keep their references, and any later
`import torchvision` in the same test session fails as it would without the shim. That is all
the shim does; it never replaces a real torchvision.

`import_sglang()` returns the handful of SGLang objects the tests use, importing them once,
with the Python tree core selected for `UnifiedRadixCache`
(`SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python`, as the SGLang note explains: custom eviction
policies and node objects need it). It raises ImportError when sglang is not installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from functools import lru_cache

SGLANG_VERSION = "0.5.23"
_STUBBED = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
            "torchvision.io", "torchvision.ops", "torchvision.models", "torchvision.utils",
            "torchvision.datasets")


class _Placeholder:
    """Stands for any torchvision attribute: callable, subscriptable, never used by the tree."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a test stub (tests/engines/_sglang_shims.py): "
                           "torchvision is not installed")

    def __getattr__(self, attr: str) -> "_Placeholder":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self._name}.{attr}")

    def __getitem__(self, item) -> "_Placeholder":
        return self

    def __mro_entries__(self, bases):  # `class X(torchvision.Something)` still defines a class
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self.__name__}.{attr}")


def install() -> bool:
    """Insert the torchvision stub into sys.modules, unless a real torchvision is importable."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return False
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()  # cache the true answer (False) before the stub exists
    for name in _STUBBED:
        module = _StubModule(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        module.__path__ = []
        module.__version__ = "0.0.0+agentflow-stub"
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    return True


def remove() -> None:
    """Take the stub (and only the stub) out of sys.modules again."""
    for name in _STUBBED:
        if isinstance(sys.modules.get(name), _StubModule):
            del sys.modules[name]


@lru_cache(maxsize=1)
def import_sglang() -> types.SimpleNamespace:
    """The SGLang objects the conformance tests use (ImportError without sglang)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("sglang")
    except PackageNotFoundError as exc:
        raise ImportError("sglang is not installed: run scripts/install_sglang_cpu.sh .venv") from exc
    if found != SGLANG_VERSION:
        raise ImportError(f"sglang {found} is installed; the conformance suite pins {SGLANG_VERSION}")
    os.environ["SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND"] = "python"
    stubbed = install()
    try:
        from sglang.srt.mem_cache import radix_cache, unified_radix_cache
    finally:
        if stubbed:
            remove()
    return types.SimpleNamespace(radix_cache=radix_cache, unified_radix_cache=unified_radix_cache)
