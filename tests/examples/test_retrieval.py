"""The retrieval pipeline: parallel readers, the synthesizer's two turns, the bounded second round."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess

import pytest

from agentflow import Position, estimate
from agentflow.graph.exact import exact_steps_min
from examples.retrieval import build, search_history, search_symbols, search_text

INF = math.inf
AGENTS = ("planner", "docs_reader", "code_reader", "history_reader", "synthesizer", "critic")


@pytest.fixture(scope="module")
def graph():
    return build().compile().graph


def row(*values):
    return dict(zip(AGENTS, values))


# LLM and tool steps take one round each; the one noop, `another_round`, takes none: from `check`
# (1 round) the planner's `plan` starts at once through it. The fork (`plan`) and the join
# (`synthesize`) are LLM steps and take their round as before.
@pytest.mark.parametrize("active, loops, expected", [
    # plan (1), search (1), read: readers at 2, synthesize at 3, check at 4
    (("plan",), {}, row(0, 2, 2, 2, 3, 4)),
    # search (1), read (1), synthesize 2, check 3, another_round (0) -> plan at 4
    (("search_docs", "search_code", "search_history"), {}, row(4, 1, 1, 1, 2, 3)),
    # the code branch is one step behind: the join waits for it (synthesize at 2), plan at 4
    (("read_docs", "search_code", "read_history"), {}, row(4, 0, 1, 0, 2, 3)),
    # the code branch has ended: synthesize 1, check 2, plan 3, and its reader's next call is in
    # the second round: search_code 4, read_code 5
    (("read_docs", "read_history"), {}, row(3, 0, 5, 0, 1, 2)),
    # synthesize (1), check (1), another_round (0): plan at 2, the readers at 4
    (("synthesize",), {}, row(2, 4, 4, 4, 0, 1)),
    # check (1): plan at 1 through the noop, the readers at 3; answer at 1
    (("check",), {}, row(1, 3, 3, 3, 1, 0)),
    # second round: no third, so the planner and the readers are done for good
    (("check",), {"another_round": 1}, row(INF, INF, INF, INF, 1, 0)),
    # the noop itself: plan (back edge) or answer (exit) start in this same round
    (("another_round",), {}, row(0, 2, 2, 2, 0, 4)),
    (("another_round",), {"another_round": 1}, row(INF, INF, INF, INF, 0, INF)),
    (("answer",), {}, row(INF, INF, INF, INF, 0, INF)),
])
def test_steps_to_execution(graph, active, loops, expected):
    assert graph.agents == AGENTS
    assert estimate(graph, Position.of(*active, loop_iterations=loops)).steps_to_execution() == expected
    assert exact_steps_min(graph, frozenset(active), loops) == expected


def test_planned_calls(graph):
    # One round: plan, 3 reads, synthesize, check, answer = 7 calls; each repeat adds 6. A round
    # repeats with P 0.5 x 0.5 = 0.25, and the planning model is geometric (the bound of 2 rounds
    # applies only once the loop is exhausted): 1 / (1 - 0.25) = 4/3 rounds expected.
    assert estimate(graph, Position.of("plan")).remaining_calls == pytest.approx(7 + 6 / 3)
    # in the second round the bound holds: exactly the rest of this round
    assert estimate(graph, Position.of("plan", loop_iterations={"another_round": 1})).remaining_calls == 7


def test_search_tools(tmp_path):
    (tmp_path / "notes.md").write_text("The cache keeps hot prefixes.\nNothing here.\n")
    (tmp_path / "cache.py").write_text('class PrefixCache:\n    """Keeps hot prefixes."""\n\n'
                                       'def evict():\n    """Drop the coldest prefix."""\n')
    hits = search_text("hot prefixes", root=str(tmp_path))["hits"]
    assert hits[0] == {"path": "cache.py", "line": 2, "text": '"""Keeps hot prefixes."""'}
    assert {"path": "notes.md", "line": 1, "text": "The cache keeps hot prefixes."} in hits
    names = [h["name"] for h in search_symbols("cache prefix", root=str(tmp_path))["hits"]]
    assert names == ["PrefixCache", "evict"]  # a name match ranks before a docstring match


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_search_history(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for msg in ("Add prefix cache", "Fix eviction order in the prefix cache", "Docs"):
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", msg], cwd=tmp_path, check=True)
    hits = asyncio.run(search_history("prefix CACHE", root=str(tmp_path)))["hits"]
    assert [h["subject"] for h in hits] == ["Fix eviction order in the prefix cache", "Add prefix cache"]
    outside = asyncio.run(search_history("x", root=str(tmp_path / "..")))
    assert outside["hits"] == [] or "error" not in outside  # /tmp may itself be inside a repository
