"""The debate's steps-to-execution: the debaters alternate; the judge waits for the last round."""

from __future__ import annotations

import math

import pytest

from agentflow import Position, estimate
from examples.debate import EXPECTED_ROUNDS, MAX_ROUNDS, build

INF = math.inf
LAST = {"con_answers": MAX_ROUNDS - 1}  # rounds done when the last one runs


@pytest.fixture(scope="module")
def graph():
    return build().compile().graph


@pytest.mark.parametrize("active, loops, expected", [
    # while pro speaks, con is next; the judge could follow con at once (consensus)
    ("pro_argues", {}, {"pro": 0, "con": 1, "judge": 2}),
    ("con_answers", {}, {"pro": 1, "con": 0, "judge": 1}),
    # the last round: no way back, so pro can never speak again once con is speaking
    ("pro_argues", LAST, {"pro": 0, "con": 1, "judge": 2}),
    ("con_answers", LAST, {"pro": INF, "con": 0, "judge": 1}),
    ("judge_rules", {}, {"pro": INF, "con": INF, "judge": 0}),
])
def test_steps_to_execution(graph, active, loops, expected):
    assert estimate(graph, Position.of(active, loop_iterations=loops)).steps_to_execution() == expected


def test_expected_steps_follow_the_planned_rounds(graph):
    start = estimate(graph, Position.of("pro_argues"))
    assert start.expected_steps()["judge"] == pytest.approx(2 * EXPECTED_ROUNDS)  # two turns a round
    assert start.remaining_calls == pytest.approx(2 * EXPECTED_ROUNDS + 1)
    last = estimate(graph, Position.of("pro_argues", loop_iterations=LAST))
    assert last.expected_steps()["judge"] == 2  # exact: the debate must end after this round
    assert last.remaining_calls == 3
