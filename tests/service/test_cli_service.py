"""The commands a user types: `agentflow serve`, `agentflow worker`, `agentflow replay --service`,
as real processes on loopback (simulated workers: no GPU here), and the in-process live replay."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
SCALE = "200"


def _agentflow(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentflow", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), **kw)


def _read_until(proc: subprocess.Popen, pattern: str, count: int = 1, timeout_s: float = 60) -> list[str]:
    found, deadline = [], time.monotonic() + timeout_s
    while len(found) < count and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(pattern, line)
        if m:
            found.append(m.group(1))
    assert len(found) == count, f"expected {count} x {pattern!r} from {proc.args}"
    return found


@pytest.mark.slow
def test_serve_worker_and_replay_through_the_service(tmp_path):
    sched = _agentflow("serve", "--listen", "127.0.0.1:0", "--journal", str(tmp_path / "j.sqlite"),
                       "--time-scale", SCALE, "--policy", "agentflow")
    workers = None
    try:
        addr = _read_until(sched, r"scheduler on (\S+)")[0]
        workers = _agentflow("worker", "--scheduler", addr, "--engine", "sim", "--count", "2", "--id", "sim",
                             "--time-scale", SCALE)
        assert sorted(_read_until(workers, r"agentflow worker (\S+)", count=2)) == ["sim-0", "sim-1"]
        out = tmp_path / "live.json"
        r = subprocess.run([sys.executable, "-m", "agentflow", "replay", str(WORKLOAD), "--service", addr,
                            "--programs", "4", "--concurrency", "4", "--time-scale", SCALE, "--json", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "live through service" in r.stdout and "agentflow" in r.stdout
        doc = json.loads(out.read_text())
        res = doc["results"]["agentflow"]  # the service's policy
        assert doc["config"]["mode"] == "service" and res["programs"] == 4 and res["calls"] > 4
        assert res["jct_mean_s"] > 0 and 0 < res["hit_rate"] <= 1
        # graceful drain on SIGTERM: the scheduler exits 0 and says so
        sched.send_signal(signal.SIGTERM)
        assert sched.wait(15) == 0
        assert "draining" in sched.stderr.read()
    finally:
        for p in (workers, sched):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_replay_service_unreachable_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "agentflow", "replay", str(WORKLOAD), "--service", "127.0.0.1:1",
                        "--programs", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "error:" in r.stderr and "127.0.0.1:1" in r.stderr


def test_live_replay_in_process_on_simulated_workers(tmp_path):
    from click.testing import CliRunner

    from agentflow.cli.main import cli

    out = tmp_path / "live.json"
    r = CliRunner().invoke(cli, ["replay", str(WORKLOAD), "--engine", "sim", "--live", "--workers", "2",
                                  "--programs", "3", "--concurrency", "3", "--time-scale", SCALE,
                                  "--policies", "lru,agentflow,belady", "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert list(doc["results"]) == ["lru", "agentflow"]  # belady needs the future: skipped, with a note
    assert all(v["programs"] == 3 for v in doc["results"].values())
