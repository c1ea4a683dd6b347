"""The SWE agent: its loop's steps-to-execution, and its tool functions on a scratch directory."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess

import pytest

from agentflow import Position, estimate
from agentflow.graph import Branch, Loop
from agentflow.graph.exact import exact_steps_min
from examples.swe_agent import (
    EXPECTED_ITERATIONS, MAX_ITERATIONS, SUBMIT_SENTINEL, build, edit_file, git_diff, run_bash, run_tests,
)

INF = math.inf
LAST = {"observe": MAX_ITERATIONS - 1}


@pytest.fixture(scope="module")
def compiled():
    return build().compile()


def test_structure(compiled):
    g = compiled.graph
    assert g.agents == ("coder",)
    think = g.transitions["think"]
    assert isinstance(think, Branch)
    assert {c.target: c.probability for c in think.cases} == {"bash": 0.69, "edit": 0.20, "tests": 0.08}
    assert think.default == "observe" and think.default_probability == pytest.approx(0.03)
    loop = g.transitions["observe"]
    assert isinstance(loop, Loop)
    assert (loop.back_to, loop.exit, loop.max_iterations, loop.expected_iterations) == (
        "think", "submit", MAX_ITERATIONS, EXPECTED_ITERATIONS)
    assert loop.while_({"submitted": False}) and not loop.while_({"submitted": True})
    assert [compiled.tools[t].is_async for t in ("bash", "edit", "run_tests")] == [False, False, True]


# A tool takes one round; `observe` is a noop (zero rounds), so `think` starts the round after the tool.
@pytest.mark.parametrize("active, loops, coder", [
    ("think", {}, 0),
    ("bash", {}, 1),       # bash (1 round), observe (0), think
    ("tests", {}, 1),      # the same through the test runner
    ("observe", {}, 0),    # a noop: its back edge leads to think in the same round
    ("bash", {"observe": MAX_ITERATIONS - 2}, 1),  # one iteration left: the back edge still exists
    ("bash", LAST, INF),   # the step limit: no more turns (submit is a tool call, not the coder's LLM step)
    ("submit", {}, INF),
])
def test_steps_to_execution(compiled, active, loops, coder):
    assert estimate(compiled.graph, Position.of(active, loop_iterations=loops)).steps_to_execution() == {
        "coder": coder}
    assert exact_steps_min(compiled.graph, frozenset({active}), loops) == {"coder": coder}


def test_expected_calls_match_the_data(compiled):
    assert estimate(compiled.graph, Position.of("think")).remaining_calls == pytest.approx(EXPECTED_ITERATIONS)


# ---- the tools --------------------------------------------------------------------------------


def test_run_bash(tmp_path):
    out = run_bash("echo hi && echo oops >&2 && exit 3", cwd=str(tmp_path))
    assert out == {"returncode": 3, "output": "hi\noops\n", "submitted": False}
    assert run_bash(f"echo {SUBMIT_SENTINEL}", cwd=str(tmp_path))["submitted"] is True
    slow = run_bash("sleep 5", cwd=str(tmp_path), timeout_s=0.2)
    assert slow["returncode"] is None and "timed out" in slow["output"]
    long = run_bash("python3 -c 'print(\"x\" * 50000)'", cwd=str(tmp_path))
    assert len(long["output"]) < 10_100 and "elided" in long["output"]


def test_edit_file(tmp_path):
    assert edit_file("a.py", "", "x = 1\ny = 1\n", cwd=str(tmp_path)) == {"ok": True, "path": "a.py"}
    assert edit_file("a.py", "x = 1", "x = 2", cwd=str(tmp_path))["ok"]
    assert (tmp_path / "a.py").read_text() == "x = 2\ny = 1\n"
    assert "occurs 2 times" in edit_file("a.py", "= ", "=", cwd=str(tmp_path))["error"]
    assert "occurs 0 times" in edit_file("a.py", "zzz", "", cwd=str(tmp_path))["error"]
    assert "outside" in edit_file("../evil.py", "", "x", cwd=str(tmp_path))["error"]
    assert "no such file" in edit_file("b.py", "x", "y", cwd=str(tmp_path))["error"]
    assert "exists" in edit_file("a.py", "", "x", cwd=str(tmp_path))["error"]


def test_run_tests(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_ok():\n    assert True\n\ndef test_bad():\n    assert False\n")
    passed = asyncio.run(run_tests("test_one.py::test_ok", cwd=str(tmp_path)))
    assert passed["passed"] is True and passed["returncode"] == 0
    failed = asyncio.run(run_tests("", cwd=str(tmp_path)))
    assert failed["passed"] is False and "1 failed, 1 passed" in failed["output"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_diff(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("one\n")
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    edit_file("a.txt", "one", "two", cwd=str(tmp_path))
    edit_file("new.txt", "", "new\n", cwd=str(tmp_path))
    patch = git_diff(cwd=str(tmp_path))["patch"]
    assert "-one\n+two" in patch and "+new" in patch
