"""Shared machinery of the import-only stand-ins in this folder (see README.md beside it).

A stand-in is a package whose every attribute, and every submodule, exists at import time, and
whose every callable raises `StandinCalled` naming itself. So `from sgl_kernel import x` and
`import torchvision.transforms.v2` succeed, and the first *use* of one fails loudly instead of
computing something wrong. Nothing here is ever imported by agentflow itself: only the SGLang
server that scripts/sglang_cpu_server.sh starts has this folder on its PYTHONPATH.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class StandinCalled(RuntimeError):
    """A GPU-only function was called on the CPU test server: the stand-in cannot compute it."""


class Placeholder:
    """Any attribute of a stand-in: callable (raises), subscriptable, usable as a base class."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise StandinCalled(f"{self._name} was called, but it is an import-only stand-in "
                            "(scripts/sglang_cpu/standins): the real one needs a GPU build")

    def __getattr__(self, attr: str) -> "Placeholder":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Placeholder(f"{self._name}.{attr}")

    def __getitem__(self, item) -> "Placeholder":
        return self

    def __mro_entries__(self, bases):  # `class X(torchvision.Something)` still defines a class
        return (object,)

    def __repr__(self) -> str:
        return f"<stand-in {self._name}>"


class StandinModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Placeholder(f"{self.__name__}.{attr}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes every `ROOT.sub.module` importable as another StandinModule."""

    def __init__(self, root: str, version: str) -> None:
        self.root, self.version = root, version

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.root + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = StandinModule(spec.name)
        module.__path__ = []
        module.__version__ = self.version
        return module

    def exec_module(self, module) -> None:
        parent, _, child = module.__name__.rpartition(".")
        setattr(sys.modules[parent], child, module)


def make_package(name: str, version: str) -> None:
    """Turn the already-imported package `name` (its __init__ calls this) into a stand-in."""
    package = sys.modules[name]
    package.__class__ = StandinModule
    package.__version__ = version
    if not any(isinstance(f, _Finder) and f.root == name for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(name, version))
