"""The command line: every subcommand has --help; plan, validate and schema on the examples."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from agentflow.cli.main import _SUBCOMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["examples/swe_agent.py", "examples/chatdev.py", "examples/retrieval.py", "examples/debate.py",
            "examples/debate.yaml"]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("name", sorted(_SUBCOMMANDS))
def test_every_subcommand_has_help(name):
    out = CliRunner().invoke(cli, [name, "--help"])
    assert out.exit_code == 0 and "Usage:" in out.output


@pytest.mark.parametrize("example", EXAMPLES)
def test_plan_prints_the_graph_and_table_and_writes_a_picture(example, tmp_path):
    pic = tmp_path / "g.svg"
    out = CliRunner().invoke(cli, ["plan", example, "--picture", str(pic)])
    assert out.exit_code == 0, out.output
    assert "Step graph" in out.output and "Steps to each agent's next LLM call" in out.output
    ElementTree.fromstring(pic.read_text())  # a well-formed SVG


def test_plan_json_is_one_line_with_the_table():
    out = CliRunner().invoke(cli, ["plan", "examples/debate.py", "--json", "--no-picture"])
    assert out.exit_code == 0
    (line,) = out.output.strip().splitlines()
    data = json.loads(line)
    by_step = {r["step"]: r["steps_min"] for r in data["steps_to_execution"]}
    assert by_step["con_answers"] == {"pro": 1.0, "con": 0.0, "judge": 1.0}
    assert by_step["judge_rules"]["pro"] is None  # never again


def test_plan_and_validate_report_a_broken_workflow():
    out = CliRunner().invoke(cli, ["plan", "examples/broken.yaml", "--no-picture"])
    assert out.exit_code == 2 and "unknown agent" in out.output
    out = CliRunner().invoke(cli, ["validate", "examples/debate.yaml", "examples/broken.yaml"])
    assert out.exit_code == 1
    assert "examples/debate.yaml: ok" in out.output and "examples/broken.yaml: INVALID" in out.output


def test_schema_command_prints_the_published_schema():
    out = CliRunner().invoke(cli, ["schema"])
    published = json.loads((ROOT / "agentflow/schemas/workflow.schema.json").read_text())
    assert json.loads(out.output) == published
