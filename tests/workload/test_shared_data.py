"""Convert every file under ../shared/data per source; check against figures computed here from the raw files."""

from __future__ import annotations

import json
import re
from datetime import datetime

import numpy as np
import pytest

from agentflow.runtime.workload.convert import converter
from agentflow.runtime.workload.format import SegmentKind, program_problems
from agentflow.runtime.workload.stats import compute_stats

pytestmark = pytest.mark.needs_shared


def convert(fmt, path, table):
    result = converter(fmt)([path], table=table, seed=0)
    for p in result.programs:
        assert program_problems(p) == [], p.id
    return result


def test_mini_swe_agent(shared, table):
    folder = shared("data/trajectories/mini-swe-agent")
    files = sorted(folder.glob("*.traj.json"))
    n_calls = prompt_sum = output_sum = 0
    for f in files:
        for m in json.loads(f.read_text())["messages"]:
            if m["role"] == "assistant":
                u = m["extra"]["response"]["usage"]
                n_calls += 1
                prompt_sum += u["prompt_tokens"]
                output_sum += u["completion_tokens"]
    r = convert("mini-swe-agent", folder, table)
    assert (r.report.num_read, r.report.num_converted, r.report.num_skipped) == (len(files), len(files), 0)
    calls = [c for p in r.programs for c in p.calls]
    assert len(calls) == n_calls
    assert sum(c.prompt_tokens for c in calls) == prompt_sum
    assert sum(c.output_tokens for c in calls) == output_sum
    s = compute_stats(r.header, r.programs)
    # notes/workloads.md over all 500 runs: calls per task p50 36, prompt p50 14.0k, growth p50 315
    assert 30 <= s.calls_per_program["p50"] <= 42
    assert 12_000 <= s.prompt_tokens_per_call["p50"] <= 16_000
    assert s.perfect_prefix_reuse > 0.9


def test_openhands_durations_match_timestamps(shared, table):
    path = shared("data/trajectories/openhands/multi_swe_bench_output.jsonl")
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    usages = [u for r in raw for u in r["metrics"]["token_usages"]]
    durations = []
    for r in raw:
        obs = {e.get("cause"): e for e in r["history"] if e.get("observation")}
        for e in r["history"]:
            if e.get("action") and e.get("tool_call_metadata") and e["id"] in obs:
                t = datetime.fromisoformat(obs[e["id"]]["timestamp"]) - datetime.fromisoformat(e["timestamp"])
                durations.append(round(t.total_seconds(), 4))
    r = convert("openhands", path, table)
    calls = [c for p in r.programs for c in p.calls]
    assert len(calls) == len(usages)
    assert sum(c.prompt_tokens for c in calls) == sum(u["prompt_tokens"] for u in usages)
    assert sorted(c.tool.duration_s for c in calls if c.tool) == sorted(durations)
    assert max(durations) > 200  # the one long build


@pytest.mark.parametrize("folder", ["data/trajectories/swe-agent-v1", "data/trajectories/swe-agent-java"])
def test_swe_agent(shared, table, folder):
    path = shared(folder)
    files = sorted(path.rglob("*.traj"))
    api_calls = 0
    sent: dict[str, int] = {}
    for f in files:
        stats = json.loads(f.read_text())["info"]["model_stats"]
        api_calls += stats["api_calls"]
        sent[f.name.removesuffix(".traj")] = sent.get(f.name.removesuffix(".traj"), 0) + (stats.get("tokens_sent") or 0)
    r = convert("swe-agent", path, table)
    assert r.report.num_read == len(files) and r.report.num_converted + r.report.num_skipped == len(files)
    calls = [c for p in r.programs for c in p.calls]
    assert abs(len(calls) - api_calls) <= 0.02 * api_calls  # requeried calls are counted by the harness only
    by_name: dict[str, int] = {}
    for p in r.programs:
        name = p.id.rsplit("/", 1)[-1]
        by_name[name] = by_name.get(name, 0) + sum(c.prompt_tokens for c in p.calls)
    for name, total in sent.items():
        if total:  # scaled to the provider's totals, up to rounding per call
            assert abs(by_name[name] - total) <= 0.01 * total, name
    if folder.endswith("v1"):
        recorded = [c.tool.duration_s for c in calls if c.tool and not c.tool.synthetic]
        assert len(recorded) == 13 and 0.1 <= float(np.median(recorded)) <= 2.0


def test_java_test_run_logs(shared):
    from agentflow.runtime.workload.convert.java_test_logs import eval_run_durations

    logs = shared("data/trajectories/swe-agent-java/test-run-logs")
    xs, missing = eval_run_durations([logs])
    assert len(xs) + missing == len(list(logs.glob("*.log")))
    assert 5 <= float(np.median(xs)) <= 20  # notes: median ~11 s


def test_bfcl(shared, table):
    folder = shared("data/bfcl")
    n_tasks = n_calls = n_fn = 0
    for f in sorted(folder.glob("BFCL_v4_multi_turn_*.json")):
        for line in (folder / "possible_answer" / f.name).read_text().splitlines():
            truth = json.loads(line)["ground_truth"]
            n_tasks += 1
            n_fn += sum(len(t) for t in truth)
            n_calls += sum(len(t) + 1 for t in truth)
    r = convert("bfcl", folder, table)
    assert (r.report.num_read, r.report.num_converted) == (n_tasks, n_tasks)
    calls = [c for p in r.programs for c in p.calls]
    assert len(calls) == n_calls and sum(1 for c in calls if c.tool) == n_fn


def test_chatdev(shared, table):
    folder = shared("data/workflows/chatdev")
    logs = sorted(folder.glob("*/run.log"))
    with_usage = prompt_sum = n_calls = 0
    for log in logs:
        text = log.read_text(errors="replace")
        # the current format's records, and the older AgentTech logs' `[OpenAI_Usage_Info]`
        found = re.findall(r"\[OpenAI_Usage_Info(?: Receive\]\*\*|\])\nprompt_tokens: (\d+)", text)
        with_usage += bool(found)
        n_calls += len(found)
        prompt_sum += sum(int(x) for x in found)
    r = convert("chatdev", folder, table)
    assert (r.report.num_read, r.report.num_converted) == (len(logs), with_usage) == (29, 28)
    assert r.report.num_skipped == len(logs) - with_usage  # one log of answers only: no prompt to count
    calls = [c for p in r.programs for c in p.calls]
    assert len(calls) == n_calls and sum(c.prompt_tokens for c in calls) == prompt_sum
    assert any("AgentTech" in n and "Website_THUNLP_20230725154612" in n for n in r.header.notes)
    kinds = {s.kind for c in calls for s in c.segments}
    assert SegmentKind.OUTPUT_OF in kinds and SegmentKind.HISTORY in kinds


@pytest.mark.parametrize("name", ["conversation_trace.jsonl", "synthetic_trace.jsonl"])
def test_mooncake(shared, table, name):
    path = shared(f"data/mooncake/{name}")
    reqs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seen: set[int] = set()
    block_reuse = 0
    for q in reqs:
        block_reuse += min(sum(512 for h in q["hash_ids"] if h in seen), q["input_length"])
        seen.update(q["hash_ids"])
    total = sum(q["input_length"] for q in reqs)
    r = convert("mooncake", path, table)
    calls = [c for p in r.programs for c in p.calls]
    assert len(calls) == len(reqs) and r.report.num_read == len(reqs)
    assert sum(c.prompt_tokens for c in calls) == total
    assert sum(c.output_tokens for c in calls) == sum(q["output_length"] for q in reqs)
    s = compute_stats(r.header, r.programs)
    # sessions keep (almost) all the block reuse the trace itself shows
    assert abs(s.perfect_prefix_reuse - block_reuse / total) < 0.03


def test_chatdev_log_without_usage_is_counted_with_the_tokenizer(shared, table, tmp_path):
    """An older log whose usage records are gone: sizes come from the logged text, and the header says so."""
    from agentflow.runtime.workload.convert.common import TokenCounter

    src = shared("data/workflows/chatdev/Website_THUNLP_20230725154612")
    run = tmp_path / "Website_THUNLP_20230725154612"
    run.mkdir()
    (run / "ChatChainConfig.json").write_text((src / "ChatChainConfig.json").read_text())
    text = (src / "run.log").read_text(errors="replace")
    stripped = re.sub(r"\[[^\]]*INFO\] \[OpenAI_Usage_Info\]\n(?:[a-z_]+: \d+\n)+", "", text)
    assert "OpenAI_Usage_Info" not in stripped
    (run / "run.log").write_text(stripped)
    count = TokenCounter("heuristic")
    r = converter("chatdev")([tmp_path], table=table, seed=0, tokenizer=count)
    (p,) = r.programs
    answers = re.findall(r"\[\d+\] AI (?:Assistant|User) \([^)]+\):\n(.*?)(?=\n\[\d{4}-|\Z)", stripped, re.S)
    assert len(p.calls) == len(answers) == 13
    assert [c.output_tokens for c in p.calls] == [count(a.strip()) for a in answers]
    first = p.calls[0]  # the CPO's first turn: its system prompt + the CEO's opening message
    assert first.segments[0].kind is SegmentKind.SYSTEM
    assert any("counted from the logged text with heuristic" in n for n in r.header.notes)
    assert r.header.tokenizer == count.name
