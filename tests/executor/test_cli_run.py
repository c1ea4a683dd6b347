"""`agentflow run` and the examples, end to end on the simulated engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import agentflow
from agentflow.cli.main import cli

from .conftest import execute, sim

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_help_names_the_options():
    out = CliRunner().invoke(cli, ["run", "--help"])
    assert out.exit_code == 0
    for opt in ("--input", "--engine", "--policy", "--programs", "--time-scale", "--json"):
        assert opt in out.output


def test_json_run_of_the_debate_file():
    out = CliRunner().invoke(cli, ["run", "examples/debate.yaml", "-i", "motion=tea beats coffee",
                                   "--time-scale", "10000", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    (prog,) = data["programs"]
    assert prog["status"] == "completed" and prog["state"] == {"motion": "tea beats coffee", "consensus": False}
    steps = [t["step"] for t in prog["timeline"]]
    assert steps == ["pro_argues", "con_answers"] * 4 + ["judge_rules"]  # no concession: all 4 rounds
    assert all(t["worker"] == "w0" and t["output_tokens"] > 0 for t in prog["timeline"])
    assert prog["timeline"][2]["cached_tokens"] > 0  # pro's second turn extends its first
    assert data["policy"] == "agentflow" and data["decisions"]["priorities"] > 0


def test_text_run_streams_and_prints_timeline_and_decisions():
    out = CliRunner().invoke(cli, ["run", "examples/debate.py", "-i", "motion=x", "--time-scale", "10000",
                                   "--policy", "kvflow"])
    assert out.exit_code == 0, out.output
    assert "── pro_argues ──" in out.output and "── judge_rules ──" in out.output  # streamed text
    assert "program debate-1: completed" in out.output
    assert "step" in out.output and "cached" in out.output and "ttft" in out.output
    assert "cache decisions" in out.output and "eviction priorities set" in out.output


def test_missing_input_fails_the_program_and_says_which():
    out = CliRunner().invoke(cli, ["run", "examples/debate.yaml", "--no-stream", "--time-scale", "10000"])
    assert out.exit_code == 1
    assert "failed" in out.output and "no 'motion'" in out.output


def test_bad_engine_and_input_are_usage_errors():
    out = CliRunner().invoke(cli, ["run", "examples/debate.yaml", "--engine", "tpu"])
    assert out.exit_code == 2 and "--engine tpu: no such engine; use sim" in out.output
    out = CliRunner().invoke(cli, ["run", "examples/debate.yaml", "-i", "novalue"])
    assert out.exit_code == 2 and "KEY=VALUE" in out.output


def test_several_programs_at_once():
    out = CliRunner().invoke(cli, ["run", "examples/debate.yaml", "-i", "motion=x", "--programs", "3",
                                   "--time-scale", "10000", "--json"])
    assert out.exit_code == 0, out.output
    progs = json.loads(out.output)["programs"]
    assert [p["status"] for p in progs] == ["completed"] * 3


def test_retrieval_example_searches_for_real(tmp_path):
    (tmp_path / "notes.md").write_text("Pins are released when the next call arrives.\n")
    (tmp_path / "pins.py").write_text('def release_pins():\n    """Release every pin of a program."""\n')
    out = CliRunner().invoke(cli, ["run", "examples/retrieval.py", "-i", "question=pins release",
                                   "-i", f"repo={tmp_path}", "--time-scale", "10000", "--json"])
    assert out.exit_code == 0, out.output
    (prog,) = json.loads(out.output)["programs"]
    assert prog["status"] == "completed"
    assert prog["outputs"]["search_docs"]["hits"][0]["path"] in ("notes.md", "pins.py")
    assert prog["outputs"]["search_code"]["hits"][0]["name"] == "release_pins"
    # the sim's answers never say "complete": two rounds (the loop's bound), then the answer
    assert [t["step"] for t in prog["timeline"]].count("plan") == 2 and prog["timeline"][-1]["step"] == "answer"


def test_swe_agent_example_acts_on_a_repository(tmp_path):
    import examples.swe_agent as swe

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    answers = iter([
        "Look first.\n```bash\ncat calc.py\n```",
        "```edit calc.py\n    return a - b\n=======\n    return a + b\n```",
        "```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n```",
    ])
    engine = sim(reply=lambda request, prompt: next(answers))
    (r,), _ = execute(swe.build(), [{"task": "add subtracts", "workdir": str(tmp_path)}], engine=engine)
    assert r.ok, r.error
    assert [t.step for t in r.timeline] == ["think", "bash", "think", "edit", "think", "bash", "submit"]
    assert r.state["submitted"] is True
    assert "+    return a + b" in r.outputs["submit"]["patch"]


def test_swe_agent_parser():
    from examples.swe_agent import parse_action

    assert parse_action("no block here", {}, "think")["action"] is None
    assert parse_action("```bash\nls -la\n```", {}, "think")["command"] == "ls -la"
    assert parse_action("```run_tests tests/test_a.py::t\n```", {}, "think")["tests"] == "tests/test_a.py::t"
    edit = parse_action("```edit a.py\nold\n=======\nnew\n```", {}, "think")
    assert (edit["action"], edit["path"], edit["old"], edit["new"]) == ("edit", "a.py", "old", "new")


def test_chatdev_example_runs_its_chain():
    from examples import chatdev

    wf = chatdev.build().compile()
    (r,), _ = execute(wf, [{"task": "a 2048 game"}], engine=sim(reply=lambda request, prompt: "<INFO> agreed"))
    assert r.ok, r.error
    llm = [t for t in r.timeline if t.kind == "llm"]
    # every dialogue concludes on its first message, so only assistants speak (and never reflect)
    assert all(t.step.endswith(".assistant") for t in llm)
    assert llm[0].step == "SelfImprove.assistant" and llm[-1].step == "Manual.assistant"
    assert r.state["DemandAnalysis.concluded"] is True


def test_agentflow_run_takes_a_file_path():
    r = agentflow.run(str(ROOT / "examples" / "debate.yaml"), {"motion": "m"}, time_scale=10_000)
    assert r.ok and len(r.timeline) == 9


@pytest.mark.slow
def test_unreachable_service_is_a_usage_error():
    """Waits out the client's 5 s connect timeout."""
    out = CliRunner().invoke(cli, ["run", "examples/debate.yaml", "-i", "motion=x", "--engine", "127.0.0.1:9"])
    assert out.exit_code == 2 and "no scheduler answers at 127.0.0.1:9" in out.output


@pytest.mark.slow
def test_run_through_a_real_scheduler_service_on_loopback(tmp_path):
    """`agentflow serve` and one simulated worker on loopback (real gRPC), the CLI in a subprocess."""
    import sys

    import anyio

    from agentflow.runtime.service.app import build_scheduler, build_worker

    async def go():
        server, _ = build_scheduler(listen="127.0.0.1:0", journal_path=str(tmp_path / "j.sqlite"), time_scale=1000.0)
        port = await server.start()
        worker = build_worker(scheduler=f"127.0.0.1:{port}", engine="sim", worker_id="w0", time_scale=1000.0)
        await worker.start()
        await worker.wait_registered()
        try:
            done = await anyio.run_process(
                [sys.executable, "-m", "agentflow", "run", "examples/debate.yaml", "-i", "motion=x",
                 "--engine", f"127.0.0.1:{port}", "--json"], check=False, cwd=ROOT)
        finally:
            await worker.stop()
            await server.stop(0)
        return done

    done = anyio.run(go)
    assert done.returncode == 0, done.stderr.decode()
    (prog,) = json.loads(done.stdout)["programs"]
    assert prog["status"] == "completed" and len(prog["timeline"]) == 9
    assert {t["worker"] for t in prog["timeline"]} == {"w0"}
    assert prog["timeline"][2]["cached_tokens"] > 0  # the worker's cache served pro's history
