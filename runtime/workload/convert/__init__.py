"""Converters from real agent runs to the workload format, one module per source.

Each module has ``convert(inputs, *, seed, tokenizer, table, progress, licence, source_detail)``
returning a ``ConversionResult`` (header, programs, and a report of what was read, converted and
skipped, and why). ``converter(name)`` picks one; its error lists the valid names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.convert.common import (
    ConversionReport, ConversionResult, Skip, TokenCounter,
)

# format name -> (module, default licence of the public data set it was written for)
FORMATS: dict[str, tuple[str, str]] = {
    "mini-swe-agent": ("mini_swe_agent", "MIT"),
    "swe-agent": ("swe_agent", "unknown"),
    "openhands": ("openhands", "MIT"),
    "bfcl": ("bfcl", "Apache-2.0"),
    "chatdev": ("chatdev", "Apache-2.0"),
    "mooncake": ("mooncake", "Apache-2.0"),
}
# formats whose sources record no tool time at all, so they need a duration table
NEEDS_TABLE = {"mini-swe-agent", "swe-agent", "bfcl"}


def converter(name: str) -> Callable[..., ConversionResult]:
    if name not in FORMATS:
        raise WorkloadError(f"unknown format {name!r}; valid: {', '.join(sorted(FORMATS))}", field="format")
    module = importlib.import_module(f"agentflow.runtime.workload.convert.{FORMATS[name][0]}")
    return module.convert


__all__ = ["FORMATS", "NEEDS_TABLE", "ConversionReport", "ConversionResult", "Skip", "TokenCounter", "converter"]
