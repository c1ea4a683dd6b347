"""The shipped workloads load, name their source and licence, and stay small and numbers-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentflow.runtime.workload import load_workload

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "workloads"
FILES = {"swebench-mini-swe-agent.jsonl": "MIT", "bfcl-multi-turn.jsonl": "Apache-2.0", "chatdev.jsonl": "Apache-2.0"}


@pytest.mark.parametrize("name, licence", sorted(FILES.items()))
def test_shipped_workload(name, licence):
    w = load_workload(SHIPPED / name)
    assert w.header.licence == licence and w.header.source_detail
    assert w.programs and "java" not in w.header.source_detail.lower()


def test_shipped_size_and_table():
    total = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.is_file())
    assert total < 5 * 1024 * 1024
    table = json.loads((SHIPPED / "tool_durations.json").read_text())
    assert "java" not in table["source"].lower() and table["licence"] == "MIT"
    packaged = Path(__file__).resolve().parents[2] / "runtime" / "workload" / "data" / "tool_durations.json"
    assert packaged.read_text() == (SHIPPED / "tool_durations.json").read_text()
