"""The format's checks and errors, token-id sharing, stats, durations and arrivals on tiny cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from agentflow.cli.workload import workload as cli
from agentflow.errors import WorkloadError
from agentflow.runtime.workload import (
    Header, Program, TokenIds, arrival_spec, ClosedLoop, compute_stats, fit_table, load_workload,
    output_token_ids, perfect_prefix_reuse, poisson_arrivals, token_ids, workload_json_schema, write_workload,
)
from agentflow.runtime.workload.format import DurationSource, TokenSource, ToolKind

HEADER = Header(source="test", licence="MIT", converter="hand", converter_version="1", num_programs=0,
                token_counts=TokenSource.USAGE, durations=DurationSource.NONE)


def prog(pid="p", arrival_s=0.0, calls=None, agents=None):
    agents = agents or [{"name": "a", "system_prompt": [{"key": "sys", "num_tokens": 4}]},
                        {"name": "b", "system_prompt": [{"key": "sys", "num_tokens": 4},
                                                        {"key": "b", "num_tokens": 2}]}]
    calls = calls or [
        {"index": 0, "agent": "a", "segments": [{"kind": "system", "num_tokens": 4}, {"kind": "new", "num_tokens": 3}],
         "output_tokens": 2, "tool": {"name": "ls", "kind": "bash", "duration_s": 1.0, "synthetic": False}},
        {"index": 1, "agent": "a", "segments": [{"kind": "history", "num_tokens": 9, "call": 0},
                                                 {"kind": "new", "num_tokens": 1}], "output_tokens": 2},
        {"index": 2, "agent": "b", "segments": [{"kind": "system", "num_tokens": 6},
                                                 {"kind": "output_of", "num_tokens": 2, "call": 1}],
         "output_tokens": 1},
    ]
    return Program.model_validate({"id": pid, "arrival_s": arrival_s, "agents": agents, "calls": calls})


def write_lines(tmp_path, lines, name="w.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def good_lines(n=2):
    header = HEADER.model_copy(update={"num_programs": n}).model_dump_json()
    return [header] + [prog(f"p{i}").model_dump_json(exclude_none=True) for i in range(n)]


# ------------------------------------------------------------------ token ids


def test_token_ids_reproduce_the_sharing():
    p, q = prog("p"), prog("q")
    ids = TokenIds(seed=7)
    c0, c1, c2 = (token_ids(p, i, ids=ids) for i in range(3))
    out0, out1 = output_token_ids(p, 0, ids=ids), output_token_ids(p, 1, ids=ids)
    assert len(c0) == 7 and len(c1) == 10 and len(c2) == 8
    assert np.array_equal(c1[:9], np.concatenate([c0, out0]))  # history = prompt + output of call 0
    assert np.array_equal(c2[:4], c0[:4])  # the shared system part, across agents
    assert np.array_equal(c2[6:], out1)  # output_of call 1
    assert np.array_equal(token_ids(q, 0, ids=ids)[:4], c0[:4])  # shared across programs
    assert not np.array_equal(token_ids(q, 0, ids=ids)[4:], c0[4:])  # new text is private
    assert np.array_equal(token_ids(p, 1, seed=7), c1)  # deterministic
    assert not np.array_equal(token_ids(p, 1, seed=8), c1)
    assert not np.array_equal(token_ids(p, 1, seed=7, instance=1)[4:], c1[4:])  # a second copy
    assert c1.min() >= 16 and c1.max() < 32_000


def test_stream_prefix_is_stable_when_grown():
    ids = TokenIds(seed=1)
    short = ids.ids([(("part", "k"), 0, 5)]).copy()
    ids.ids([(("part", "k"), 0, 5000)])
    assert np.array_equal(ids.ids([(("part", "k"), 0, 5)]), short)
    assert np.array_equal(TokenIds(seed=1).ids([(("part", "k"), 0, 5)]), short)


# ------------------------------------------------------------------ stats


def test_perfect_prefix_reuse_exact():
    # p: call0 all new (7); call1 reuses call0's prompt + output (9 of 10); call2 (agent b) reuses
    # the 4-token 'sys' part of its 6-token system prompt, not part 'b' nor call1's output.
    # q (later): call0 reuses 'sys' (4); call1 9; call2 the whole system prompt 'sys' + 'b' (6).
    reused, total = perfect_prefix_reuse([prog("p"), prog("q", arrival_s=1.0)])
    assert (reused, total) == ((0 + 9 + 4) + (4 + 9 + 6), 50)


def test_compute_stats_tiny():
    s = compute_stats(HEADER, [prog("p")])
    assert s.num_programs == 1 and s.num_calls == 3
    assert s.growth_per_turn_tokens["p50"] == 3.0  # agent a: 7 -> 10
    assert s.tools["bash"].count == 1 and s.tools["bash"].quantiles_s["p50"] == 1.0
    assert s.perfect_prefix_reuse == round(13 / 25, 4)
    assert json.loads(s.to_json())["num_calls"] == 3


# ------------------------------------------------------------------ reading, writing, bad input


def test_roundtrip_and_schema(tmp_path):
    path = tmp_path / "w.jsonl"
    write_workload(path, HEADER, [prog("p"), prog("q")])
    w = load_workload(path)
    assert w.header.num_programs == 2 and [p.id for p in w.programs] == ["p", "q"]
    assert w.programs[0] == prog("p")
    schema = workload_json_schema()
    assert set(schema) >= {"header", "program"}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(path.read_text().splitlines()[1]), schema["program"])


def _bad(tmp_path, lines):
    with pytest.raises(WorkloadError) as e:
        load_workload(write_lines(tmp_path, lines))
    return e.value


def mutate(line, fn):
    raw = json.loads(line)
    fn(raw)
    return json.dumps(raw)


def test_truncated_file(tmp_path):
    e = _bad(tmp_path, good_lines(2)[:2])
    assert (e.record, e.field) == ("header", "num_programs") and "truncated" in str(e)


def test_truncated_line(tmp_path):
    lines = good_lines(2)
    e = _bad(tmp_path, lines[:2] + [lines[2][: len(lines[2]) // 2]])
    assert e.line == 3 and "not valid JSON" in str(e) and e.file.endswith("w.jsonl")


def test_wrong_format(tmp_path):
    e = _bad(tmp_path, ['{"trajectory_format": "mini-swe-agent-1"}'])
    assert (e.line, e.field) == (1, "format")


def test_missing_field(tmp_path):
    lines = good_lines(1)
    lines[1] = mutate(lines[1], lambda r: r["calls"][1].pop("output_tokens"))
    e = _bad(tmp_path, lines)
    assert (e.line, e.record, e.field) == (2, "p0", "calls[1].output_tokens")


def test_negative_tokens(tmp_path):
    lines = good_lines(1)
    lines[1] = mutate(lines[1], lambda r: r["calls"][0]["segments"][1].update(num_tokens=-4))
    e = _bad(tmp_path, lines)
    assert (e.line, e.record, e.field) == (2, "p0", "calls[0].segments[1].num_tokens")
    assert "-4" in str(e)


@pytest.mark.parametrize("change, field", [
    (lambda r: r["calls"][1].update(index=5), "calls[1].index"),
    (lambda r: r["calls"][1]["segments"][0].update(call=2), "calls[1].segments[0].call"),
    (lambda r: r["calls"][1]["segments"][0].update(num_tokens=99), "calls[1].segments[0].num_tokens"),
    (lambda r: r["calls"][2].update(agent="zed"), "calls[2].agent"),
])
def test_impossible_values(tmp_path, change, field):
    lines = good_lines(1)
    lines[1] = mutate(lines[1], change)
    e = _bad(tmp_path, lines)
    assert (e.line, e.record, e.field) == (2, "p0", field)


def test_calls_out_of_time_order(tmp_path):
    lines = good_lines(1)

    def times(r):
        r["calls"][0]["start_s"] = 5.0
        r["calls"][1]["start_s"] = 1.0
    lines[1] = mutate(lines[1], times)
    e = _bad(tmp_path, lines)
    assert e.field == "calls[1].start_s" and "out of order" in str(e)


def test_converter_bad_inputs(tmp_path, table, fixtures):
    from agentflow.runtime.workload.convert import converter

    raw = json.loads((fixtures / "mini" / "tiny-1.traj.json").read_text())
    raw["messages"][4]["extra"]["response"]["usage"]["prompt_tokens"] = -3
    (tmp_path / "neg.traj.json").write_text(json.dumps(raw))
    with pytest.raises(WorkloadError) as e:
        converter("mini-swe-agent")([tmp_path / "neg.traj.json"], table=table)
    assert e.value.record == "tiny-1" and e.value.field == "messages[4].extra.response.usage.prompt_tokens"
    (tmp_path / "cut.traj.json").write_text(json.dumps(raw)[:200])
    with pytest.raises(WorkloadError) as e:
        converter("mini-swe-agent")([tmp_path / "cut.traj.json"], table=table)
    assert e.value.file.endswith("cut.traj.json") and e.value.line == 1
    raw["trajectory_format"] = "something-else"
    (tmp_path / "fmt.traj.json").write_text(json.dumps(raw))
    with pytest.raises(WorkloadError) as e:
        converter("mini-swe-agent")([tmp_path / "fmt.traj.json"], table=table)
    assert e.value.field == "trajectory_format"
    (tmp_path / "m.jsonl").write_text('{"timestamp": 0, "input_length": 10, "hash_ids": [1]}\n')
    with pytest.raises(WorkloadError) as e:
        converter("mooncake")([tmp_path / "m.jsonl"])
    assert (e.value.line, e.value.field) == (1, "output_length")
    with pytest.raises(WorkloadError, match="valid: bfcl, chatdev"):
        converter("nope")


def test_skips_are_reported_not_dropped(tmp_path, table, fixtures):
    from agentflow.runtime.workload.convert import converter

    raw = json.loads((fixtures / "mini" / "tiny-1.traj.json").read_text())
    del raw["messages"][2]["extra"]
    (tmp_path / "a.traj.json").write_text(json.dumps(raw))
    (tmp_path / "b.traj.json").write_text((fixtures / "mini" / "tiny-1.traj.json").read_text())
    r = converter("mini-swe-agent")([tmp_path], table=table)
    assert (r.report.num_read, r.report.num_converted, r.report.num_skipped) == (2, 1, 1)
    assert "a.traj.json" in r.report.to_text() and "no provider usage" in r.report.to_text()


# ------------------------------------------------------------------ durations and arrivals


def test_duration_table_fit_and_sample(tmp_path):
    t = fit_table({"bash": [1.0, 2.0, 3.0, 4.0], "edit": [0.01]}, source="s", licence="MIT")
    assert set(t.distributions) == {"bash", "*"}  # edit has too few samples: pooled
    assert t.distributions["bash"].quantile(0.5) == pytest.approx(2.5, rel=0.02)
    assert t.for_kind(ToolKind.EDIT).kind == "*"
    a = t.sample(ToolKind.BASH, np.random.default_rng(3))
    assert a == t.sample(ToolKind.BASH, np.random.default_rng(3)) and 1.0 <= a <= 4.0
    t.save(tmp_path / "t.json")
    from agentflow.runtime.workload.durations import load_table
    assert load_table(tmp_path / "t.json").distributions["bash"] == t.distributions["bash"]


def test_shipped_table_loads():
    from agentflow.runtime.workload.durations import load_table
    t = load_table()
    assert {"bash", "edit", "read", "*"} <= set(t.distributions)
    assert "MIT" in t.licence


def test_arrivals():
    ps = [prog(f"p{i}") for i in range(4)]
    a = poisson_arrivals(ps, rate_per_s=2.0, seed=1)
    assert [t for t, _ in a] == [t for t, _ in poisson_arrivals(ps, rate_per_s=2.0, seed=1)]
    assert a[0][0] == 0.0 and all(x[0] <= y[0] for x, y in zip(a, a[1:]))
    loop = ClosedLoop(ps, num_in_flight=2)
    assert [p.id for _, p in loop.start()] == ["p0", "p1"]
    assert [(t, p.id) for t, p in loop.on_finish(3.0)] == [(3.0, "p2")]
    with pytest.raises(WorkloadError, match="valid: recorded, poisson, closed-loop"):
        arrival_spec("bursty")
    with pytest.raises(WorkloadError) as e:
        arrival_spec("poisson")
    assert e.value.field == "rate_per_s"


# ------------------------------------------------------------------ CLI


@pytest.mark.parametrize("sub", [[], ["convert"], ["stats"], ["schema"], ["validate"], ["durations"]])
def test_every_subcommand_has_help(sub):
    result = CliRunner().invoke(cli, sub + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_cli_convert_stats_json(tmp_path, fixtures):
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(cli, ["convert", "--format", "openhands", str(fixtures / "openhands"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "read 1 programs, converted 1 programs, skipped 0" in r.output
    r = CliRunner().invoke(cli, ["stats", str(out), "--json"])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 1
    assert json.loads(r.output)["num_calls"] == 3
    bad = write_lines(tmp_path, good_lines(2)[:2], "bad.jsonl")
    r = CliRunner().invoke(cli, ["stats", str(bad)])
    assert r.exit_code == 2 and "num_programs" in r.output
