"""A new user's first hour (issue 18): each test runs the command the user typed and checks what
they read. Expected errors exit 2 with one line naming the problem and the fix; `-v` shows the
traceback; nothing hangs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflow.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
CHATDEV = "examples/workloads/chatdev.jsonl"
SWE = "examples/workloads/swebench-mini-swe-agent.jsonl"


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def agentflow(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, *parts: str) -> str:
    """The result is exit 2 with exactly one line on stderr, `error: ...`, containing every part."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


# ---- hangs and silent wrong behaviour ---------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("kv, live", [("10", ()), ("2000", ()), ("2000", ("--live",))])
def test_a_call_larger_than_the_pool_is_an_error_at_once(kv, live):
    line = one_line_error(agentflow("replay", CHATDEV, "--kv-tokens", kv, "--policies", "lru", *live),
                          "program 'Tetris_zhuoyundu_20240115181403' call 11",
                          "(step 'CodeReview/CodeReviewModification') needs 11,677 KV tokens",
                          f"pool holds {int(kv):,}", "Fix: --kv-tokens 11677 or more")
    assert "more calls are over it too" in line


def test_check_fits_is_its_own_function():
    from agentflow.runtime.replay.fit import CallTooLarge, check_fits, oversized_calls
    from agentflow.runtime.workload import load_workload

    programs = load_workload(ROOT / CHATDEV).programs
    check_fits(programs, 11_677)  # the largest call fits exactly
    big = oversized_calls(programs, 11_676)
    assert [(b.program, b.call, b.kv_tokens) for b in big] == [("Tetris_zhuoyundu_20240115181403", 11, 11_677)]
    with pytest.raises(CallTooLarge):
        check_fits(programs, 11_676)


def test_service_replay_refuses_flags_it_would_ignore(tmp_path):
    one_line_error(agentflow("replay", SWE, "--service", "127.0.0.1:1", "--policies", "lru,agentflow",
                             "--plot", str(tmp_path)),
                   "--plot, --policies do not apply with --service", "leave them out")
    assert not any(tmp_path.iterdir())
    one_line_error(agentflow("replay", SWE, "--token", "t"), "--token only applies with --service HOST:PORT")
    one_line_error(agentflow("replay", SWE, "--live", "--plot", str(tmp_path)),
                   "--plot applies to the simulated replay only")


@pytest.mark.timeout(120)
def test_a_live_replay_of_two_programs_says_two_in_flight():
    out = agentflow("replay", CHATDEV, "--live", "--programs", "2", "--time-scale", "1000", "--policies", "lru")
    assert out.exit_code == 0, out.output
    assert "chatdev: 2 programs, 42 calls; live through 1 sim engine(s) in process; 2 in flight" in out.stdout


# ---- errors that name the fix -----------------------------------------------------------------

TYPOS = """spec_version: 1
name: t
agents:
  - {name: a, system_prompt: hi}
steps:
  - name: s1
    kind: llm
    agnet: a
    promt: "x"
    nxt: s2
  - name: s2
    kind: llm
    agent: a
"""


def test_validate_reports_every_field_error_with_path_and_did_you_mean(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text(TYPOS)
    out = agentflow("validate", str(f))
    assert out.exit_code == 1
    assert out.stderr.splitlines() == [
        f"{f}: INVALID",
        f"{f}: 3 field errors:",
        "  - steps[0](s1).agnet: unknown field 'agnet'; did you mean 'agent'?",
        "  - steps[0](s1).promt: unknown field 'promt'; did you mean 'prompt'?",
        "  - steps[0](s1).nxt: unknown field 'nxt'; did you mean 'next'?",
    ]


def test_unsupported_picture_format_and_unwritable_path_are_one_line(tmp_path):
    one_line_error(agentflow("plan", "examples/debate.py", "--picture", str(tmp_path / "d.png")),
                   ".png needs the graphviz 'dot' binary", "use one of .svg, .mmd, .dot")
    one_line_error(agentflow("plan", "examples/debate.py", "--picture", "/proc/x.svg"),
                   "cannot write the picture /proc/x.svg", "choose another --picture path, or --no-picture")


def test_verbose_shows_the_traceback():
    for args in (("-v", "plan", "examples/debate.py", "--picture", "/proc/x.svg"),
                 ("plan", "examples/debate.py", "--picture", "/proc/x.svg", "-v")):
        out = agentflow(*args)
        assert isinstance(out.exception, FileNotFoundError), (args, out.output)


def test_run_local_without_the_extra_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    one_line_error(agentflow("run", "examples/debate.yaml", "-i", "motion=x", "--engine", "local"),
                   "the local engine needs torch", "pip install -c constraints-cpu.txt 'agentflow-sched[local]'")
    one_line_error(agentflow("replay", CHATDEV, "--engine", "local", "--programs", "1", "--policies", "lru"),
                   "the local engine needs torch", "pip install -c constraints-cpu.txt 'agentflow-sched[local]'")


def test_validate_a_python_file_that_raises_on_import(tmp_path):
    f = tmp_path / "raises.py"
    f.write_text("x = 1\nraise RuntimeError('boom')\n")
    out = agentflow("validate", str(f))
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.stderr.splitlines() == [
        f"{f}: INVALID",
        f"{f}: importing it raised RuntimeError at line 2: boom; fix the file (`agentflow -v validate {f}` shows "
        "the traceback)"]
    bad = agentflow("plan", str(f))
    one_line_error(bad, "importing it raised RuntimeError at line 2: boom")


def test_misleading_messages_are_fixed(tmp_path):
    one_line_error(agentflow("run", "examples/debate.yaml", "--engine", "gpu"),
                   "--engine gpu: no such engine; use sim", "local", "HOST:PORT of a running `agentflow serve`")
    one_line_error(agentflow("replay", CHATDEV, "--concurrency", "-5"), "--concurrency must be >= 1 (got -5)")
    out = agentflow("schedule", "examples/scripts/coding_agent.jsonl")
    assert out.exit_code == 0 and "never steps" not in out.output
    assert "keep   p1/coder:h1: not needed again -> priority 0" in out.output
    assert "keep   p1/coder:h1: next needed in 1 step -> priority" in out.output


def test_a_yaml_file_gets_fixes_in_yaml():
    out = agentflow("validate", "examples/broken.yaml")
    assert out.exit_code == 1
    assert "add `- {name: moderator, system_prompt: ...}` under agents:" in out.stderr
    assert "add `default: <step>` to its branch" in out.stderr
    assert "`loop: {back_to: pro_argues, max_iterations: N}`" in out.stderr
    assert "agent('moderator'" not in out.stderr and "default='" not in out.stderr


def test_a_forgotten_join_and_a_bad_probability(tmp_path):
    f = tmp_path / "wf.py"
    f.write_text("from agentflow import Workflow, when\n"
                 "wf = Workflow('nj')\nwf.agent('a', system_prompt='x')\n"
                 "for s in ('plan', 'r1', 'r2', 'write'):\n    wf.llm(s, agent='a')\n"
                 "wf.fan_out('plan', ['r1', 'r2'], join='write')\nworkflow = wf\n")
    out = agentflow("validate", str(f))
    assert "[unreachable-step] step 'write': it is the join of fan-out 'plan', but no branch leads into it. " \
           "Fix: lead the last step of each branch into it: join(['r1', 'r2'], 'write')" in out.stderr
    f.write_text("from agentflow import Workflow, when\nwf = Workflow('pb')\nwf.agent('a', system_prompt='x')\n"
                 "for s in ('s', 'x', 'y'):\n    wf.llm(s, agent='a')\n"
                 "wf.branch('s', {'x': when('k')}, default='y', probabilities={'x': 1.5})\nworkflow = wf\n")
    out = agentflow("validate", str(f))
    assert "probability 1.5 for 'x' lies outside [0, 1]" in out.stderr and "got sum 1" not in out.stderr


# ---- paths and names --------------------------------------------------------------------------

def test_files_resolve_paths_against_the_file_that_names_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    out = agentflow("schedule", str(ROOT / "examples/scripts/coding_agent.jsonl"))
    assert out.exit_code == 0, out.output
    assert "pin    p1/coder:h1 (1780 tokens) on w0" in out.output
    out = agentflow("run", str(ROOT / "examples/debate.yaml"), "-i", "motion=x", "--json", "--time-scale", "10000")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["programs"][0]["status"] == "completed"


def test_a_script_names_a_missing_workflow_relative_to_itself(tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text('{"t": 0, "type": "arrive", "program": "p", "workflow": "nope.py"}\n')
    one_line_error(agentflow("schedule", str(script)), "s.jsonl:1 arrive", f"no such file {tmp_path / 'nope.py'}",
                   "read from the script's folder")


def test_plan_takes_a_module_name():
    out = agentflow("plan", "examples.debate", "--no-picture")
    assert out.exit_code == 0, out.output
    assert out.output.startswith("workflow debate: 3 steps")
    one_line_error(agentflow("plan", "examples.nope", "--no-picture"), "no such file or module 'examples.nope'")


def test_debate_py_and_yaml_write_different_pictures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for f in ("examples/debate.py", "examples/debate.yaml"):
        assert agentflow("plan", f).exit_code == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["debate.py.svg", "debate.yaml.svg"]


def test_worker_ids_are_engine_at_host_port():
    from agentflow.runtime.service.app import default_worker_id

    assert default_worker_id("sim", "127.0.0.1:7071") == "sim@127.0.0.1:7071"
    assert default_worker_id("local", "0.0.0.0:7072").endswith(":7072")  # this machine's name
    assert default_worker_id("sim", "127.0.0.1:0").startswith("sim@127.0.0.1-")  # unbound: unique
    assert "ENGINE@HOST:PORT" in agentflow("worker", "--help").output


def test_docs_use_the_service_default_port():
    assert "50051" not in (ROOT / "docs/executor.md").read_text()
    assert "127.0.0.1:7070" in agentflow("serve", "--help").output


# ---- plots --------------------------------------------------------------------------------------

def test_plots_label_values_and_say_none(tmp_path):
    from agentflow.runtime.replay import report

    out = agentflow("replay", SWE, "--programs", "4", "--concurrency", "4", "--policies", "lru,agentflow",
                    "--plot", str(tmp_path))
    assert out.exit_code == 0, out.output
    for f in ("jct_cdf.png", "cache_over_time.png", "policies.png", "latency_percentiles.png"):
        assert (tmp_path / f).stat().st_size > 5000
    assert report.percentiles([1.0, 2.0, 3.0, 4.0, 100.0]) == {50: 3.0, 95: pytest.approx(80.8), 99: pytest.approx(96.16)}


def test_plot_panels_draw_values_ratios_and_none(tmp_path, monkeypatch):
    """What the figures hold: bar labels with the ratio to lru, 'none' on an all-zero panel, a legend
    entry naming a hidden line and the policies that never pin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agentflow.runtime.replay import report

    seen = []
    monkeypatch.setattr(report, "_save", lambda fig, path: seen.append((path.name, fig)) or path)
    results = {n: {"jct_mean_s": j, "ttft_mean_s": 1.0, "recomputed_prefill_tokens": 0, "prefix_hit_rate": 0.5}
               for n, j in (("lru", 100.0), ("kvflow", 100.0), ("agentflow", 94.0))}
    line = [(0.0, 0.1, 0.0), (1.0, 0.2, 0.0), (2.0, 0.3, 0.0)]
    series = {n: {"jct_s": [1.0, 2.0], "ttft_s": [0.1, 0.2, 5.0], "timeline": list(line)} for n in results}
    series["agentflow"]["timeline"] = [(0.0, 0.1, 1.0), (1.0, 0.5, 2.0), (2.0, 0.6, 0.0)]
    report.plots(results, series, tmp_path, title="t")
    figs = dict(seen)
    texts = lambda fig: [t.get_text() for ax in fig.axes for t in ax.texts]  # noqa: E731
    bars = figs["policies.png"]
    assert "94.0\n0.94x lru" in texts(bars) and "none (0 for every policy)" in texts(bars)
    cache = figs["cache_over_time.png"]
    labels = [t.get_text() for ax in cache.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "lru (hidden under kvflow)" in labels and "no pins: lru, kvflow" in labels
    assert len(figs["latency_percentiles.png"].axes[0].patches) == 9  # 3 policies x p50/p95/p99
    for _, fig in seen:
        plt.close(fig)


# ---- benchmarks measure the product --------------------------------------------------------------

def test_cross_agent_reuse_benchmark_defaults_to_the_products_configuration():
    import argparse
    import importlib.util
    import sys

    from tests.conftest import require_modules

    require_modules("torch")
    from agentflow.runtime.engines.local.reuse.outputs import DEFAULT_REUSE_CONFIG

    spec = importlib.util.spec_from_file_location("bench_cross_agent_reuse_cli", ROOT / "bench/cross_agent_reuse.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    args = bench.resolve_defaults(argparse.Namespace(recompute_head=None, recompute_ratio=None))
    assert (args.recompute_head, args.recompute_ratio) == (DEFAULT_REUSE_CONFIG.recompute_head_tokens,
                                                           DEFAULT_REUSE_CONFIG.recompute_ratio) == (4, 0.05)
    assert DEFAULT_REUSE_CONFIG.use_anchors is False  # and the headline condition is anchors off unless --anchors
    kept = bench.resolve_defaults(argparse.Namespace(recompute_head=0, recompute_ratio=0.0))
    assert (kept.recompute_head, kept.recompute_ratio) == (0, 0.0)
