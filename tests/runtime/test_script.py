"""Event scripts and `agentflow schedule`: the worked examples of docs/scheduler.md, pinned."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflow.cli.main import cli
from agentflow.errors import WorkloadError
from agentflow.runtime.decision import UnpinReason
from agentflow.runtime.policies import make_policy
from agentflow.runtime.script import load_script, run_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "examples" / "scripts"


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the CLI tests name files from the root (scripts name workflows from their folder)


def decisions(name, policy="agentflow"):
    return {line.line: d for line, d in run_script(load_script(SCRIPTS / name), make_policy(policy))}


def test_coding_agent_pins_through_tests_then_expires_and_prefetches():
    d = decisions("coding_agent.jsonl")
    (pin,) = d[7].pins  # tests start: the coder's history is pinned
    assert pin.prefix == "p1/coder:h1" and pin.ttl_s == pytest.approx(11.0 * 2.71828 ** 1.534, rel=1e-3)
    assert [(u.prefix, u.reason) for u in d[9].unpins] == [("p1/coder:h1", UnpinReason.NEXT_CALL)]
    (pin2,) = d[12].pins  # bash: a shorter prior (2 s hint), a shorter TTL
    assert pin2.ttl_s == pytest.approx(2.0 * 2.71828 ** 1.534, rel=1e-3)
    assert [u.reason for u in d[13].unpins] == [UnpinReason.TTL_EXPIRED]  # bash ran past it
    (fetch,) = d[14].prefetches  # the engine demoted the prefix; the coder is due next
    assert (fetch.prefix, fetch.worker) == ("p1/coder:h2", "w0")
    assert {p.prefix: p.priority for p in d[19].priorities} == {
        "p1/coder:h1": 0, "p1/coder:h2": 0, "p1/coder:h3": 0, "swe-agent/coder:sys": 0}


def test_shared_prompt_is_as_urgent_as_its_most_urgent_user():
    d = decisions("shared_prompt.jsonl")
    assert {p.prefix: p.steps_to_execution for p in d[8].priorities}["org/policy"] == 1  # coder in a tool
    assert {p.prefix: p.steps_to_execution for p in d[9].priorities}["org/policy"] == 0  # the debate speaks
    never = {p.prefix for p in d[18].priorities if p.priority == 0}
    assert never == {"deb1/con:h1", "deb1/pro:h1"}  # the judge rules: pro and con are done
    assert "org/policy" not in never  # still in use by the judge


def test_lru_decides_nothing_about_eviction_on_the_same_script():
    d = decisions("coding_agent.jsonl", "lru")
    assert all(not x.priorities and not x.pins and not x.prefetches for x in d.values())


@pytest.mark.parametrize("text, where, message", [
    ('{"t": 0, "type": "nope"}\n', "line 1", "unknown event type 'nope'"),
    ('{"t": 0, "type": "worker"}\n', "line 1", "missing field 'worker'"),
    ('{"t": 5, "type": "step"}\n{"t": 1, "type": "step"}\n', "line 2", "time goes back"),
    ('{"t": 0, "type": "submit", "program": 1, "call": 1, "step": "s", "prompt_tokens": 5, "prefixes": ["x"]}\n',
     "line 1", "must look like 'key@tokens'"),
    ("{not json\n", "line 1", "not valid JSON"),
])
def test_bad_scripts_name_the_line(tmp_path, text, where, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(WorkloadError) as info:
        load_script(path)
    assert f"bad.jsonl:{where.split()[1]}" in str(info.value)
    assert message in str(info.value)


def test_schedule_command_prints_decisions_and_fails_cleanly():
    runner = CliRunner()
    out = runner.invoke(cli, ["schedule", "examples/scripts/coding_agent.jsonl"])
    assert out.exit_code == 0, out.output
    assert "pin    p1/coder:h1 (1780 tokens) on w0" in out.output
    assert "unpin  p1/coder:h2 (ttl_expired)" in out.output
    bad = runner.invoke(cli, ["schedule", "examples/scripts/coding_agent.jsonl", "--policy", "magic"])
    assert bad.exit_code == 2 and "unknown policy 'magic'" in bad.output
    js = runner.invoke(cli, ["schedule", "examples/scripts/shared_prompt.jsonl", "--json"])
    assert js.exit_code == 0 and js.output.splitlines()[0].startswith('{"line": ')
