"""The TTL at a tool call: choose_ttl on exact duration histories, and the duration model."""

from __future__ import annotations

import pytest

from agentflow.runtime.policies import choose_ttl
from agentflow.runtime.tool_stats import ToolStats, ToolStatsConfig


def test_pin_through_the_whole_distribution_when_holding_is_cheap():
    c = choose_ttl([1.0, 2.0, 3.0, 10.0], benefit_s=5.0, cost_per_s=0.01, max_ttl_s=60)
    assert c.ttl_s == 10.0 and c.p_return == 1.0
    assert c.value_s == pytest.approx(5.0 - 0.01 * 4.0)  # E[min(D, 10)] = mean = 4


def test_skip_the_tail_when_it_costs_more_than_it_saves():
    # tau=3: P=0.75, E[min(D,3)] = (1+2+3+3)/4 = 2.25 -> 0.75*2 - 0.3*2.25 = 0.825
    # tau=10: P=1, E = 4 -> 2 - 1.2 = 0.8  (the 10 s tail is not worth holding for)
    c = choose_ttl([1.0, 2.0, 3.0, 10.0], benefit_s=2.0, cost_per_s=0.3, max_ttl_s=60)
    assert c.ttl_s == 3.0
    assert c.value_s == pytest.approx(0.825)


def test_no_pin_when_nothing_pays():
    c = choose_ttl([5.0, 6.0], benefit_s=0.1, cost_per_s=1.0, max_ttl_s=60)
    assert c.ttl_s == 0.0 and c.value_s == 0.0


def test_max_ttl_caps_the_choice():
    c = choose_ttl([1.0, 100.0], benefit_s=50.0, cost_per_s=0.0001, max_ttl_s=30)
    assert c.ttl_s == 1.0 and c.p_return == 0.5


def test_repeated_values_count_with_all_their_mass():
    c = choose_ttl([2.0, 2.0, 2.0, 9.0], benefit_s=4.0, cost_per_s=0.5, max_ttl_s=60)
    # tau=2: 0.75*4 - 0.5*2 = 2.0 ; tau=9: 4 - 0.5*(6+9)/4 = 2.125
    assert c.ttl_s == 9.0 and c.value_s == pytest.approx(2.125)


def test_duration_model_prior_then_global_then_per_tool():
    stats = ToolStats(ToolStatsConfig(min_samples=3, prior_median_s=3.0))
    stats.hint("build", 60.0)
    assert stats.source("bash") == "prior"
    assert stats.samples("bash")[7] == pytest.approx(3.0)  # the prior's median
    assert stats.samples("build")[7] == pytest.approx(60.0)  # the workflow's hint
    for d in (0.5, 0.6, 0.7):
        stats.observe("read", d)
    assert stats.source("bash") == "global"  # 3 samples overall, none of bash
    assert stats.samples("bash") == [0.5, 0.6, 0.7]
    for d in (4.0, 5.0, 6.0):
        stats.observe("bash", d)
    assert stats.source("bash") == "tool"
    assert stats.samples("bash") == [4.0, 5.0, 6.0]
    assert stats.cdf("bash", 5.0) == pytest.approx(2 / 3)
    assert stats.remaining_mean_s("bash", 4.5) == pytest.approx(1.0)  # mean(5, 6) - 4.5


def test_bad_durations_are_rejected():
    stats = ToolStats()
    with pytest.raises(ValueError, match="finite number >= 0"):
        stats.observe("bash", -1.0)
    with pytest.raises(ValueError):
        stats.observe("bash", float("nan"))
