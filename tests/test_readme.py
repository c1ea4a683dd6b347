"""README's Quickstart: exactly two command lines, and .ci/run runs the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_has_exactly_two_command_lines():
    lines = quickstart_lines()
    assert len(lines) == 2
    assert "agentflow " in lines[0] and "pytest" not in lines[0]
    assert "pytest" in lines[1] and "[test" in lines[1]
    for line in lines:
        assert "constraints-cpu.txt" in line  # never let pip pull a CUDA torch here


def test_ci_runs_readme_test_line():
    ci = (ROOT / ".ci" / "run").read_text()
    assert quickstart_lines()[1] in ci.splitlines()


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
