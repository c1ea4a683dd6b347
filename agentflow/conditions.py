"""Conditions on a program's state, for branches and loops.

Any callable `state -> bool` works in the builder. `when(...)` builds a *declarative* one that
also survives a trip through a workflow file; a module-level function survives as a
`module:function` reference; a lambda cannot be written to a file (the spec says so).
"""

from __future__ import annotations

import enum
import importlib
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class Op(enum.Enum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    TRUTHY = "truthy"
    FALSY = "falsy"
    IN = "in"
    NOT_IN = "not_in"


_BINARY: dict[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: operator.eq, Op.NE: operator.ne, Op.LT: operator.lt, Op.LE: operator.le,
    Op.GT: operator.gt, Op.GE: operator.ge,
    Op.IN: lambda x, v: x in v, Op.NOT_IN: lambda x, v: x not in v,
}


@dataclass(frozen=True, slots=True)
class When:
    """`state[key] <op> value`; a missing key reads as None."""

    key: str
    op: Op = Op.TRUTHY
    value: Any = None

    def __call__(self, state: Mapping[str, Any]) -> bool:
        x = state.get(self.key)
        if self.op is Op.TRUTHY:
            return bool(x)
        if self.op is Op.FALSY:
            return not x
        try:
            return bool(_BINARY[self.op](x, self.value))
        except TypeError:
            return False  # e.g. None < 3: a missing value never satisfies an ordering

    def __str__(self) -> str:
        if self.op in (Op.TRUTHY, Op.FALSY):
            return f"{'' if self.op is Op.TRUTHY else 'not '}{self.key}"
        return f"{self.key} {self.op.value} {self.value!r}"


def when(key: str, op: str | Op = Op.TRUTHY, value: Any = None) -> When:
    """A declarative condition: `when("tests_passed", "eq", False)`, `when("done")`."""
    if isinstance(op, str):
        try:
            op = Op(op)
        except ValueError:
            raise ValueError(f"unknown condition op {op!r}; valid: {', '.join(o.value for o in Op)}") from None
    return When(key, op, value)


def reference_of(fn: Callable) -> str | None:
    """`module:qualname` for an importable module-level function, else None."""
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qual or "<" in qual or module == "__main__" or module.startswith("_agentflow_workflow_"):
        return None
    return f"{module}:{qual}"


def resolve_reference(ref: str) -> Callable:
    """Import `module:qualname`. Raises ValueError naming what could not be found."""
    module, _, qual = ref.partition(":")
    if not module or not qual:
        raise ValueError(f"reference {ref!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import module '{module}' for {ref!r}: {e}") from None
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module '{module}' has no '{qual}' (from {ref!r})") from None
    if not callable(obj):
        raise ValueError(f"{ref!r} is not callable")
    return obj
