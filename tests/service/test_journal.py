"""The journal keeps exactly what a restart needs: open programs' events, in order; closing deletes."""

from __future__ import annotations

from agentflow.runtime.service.journal import TOOL_SAMPLES_KEPT, Journal


def test_events_survive_reopen_in_order_and_close_deletes(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.put_workflow("h1", "{}")
    j.open_program("a", "h1", "default", 1.0)
    j.open_program("b", "h1", "t2", 2.0)
    j.append("a", 1.5, "submitted", {"call_id": "a#0"}, seq=1)
    j.append("b", 2.5, "submitted", {"call_id": "b#0"}, seq=1)
    j.append("a", 3.0, "tool_started", {"step": "tool"}, seq=2)
    j.close()

    j = Journal(path)  # a new process opening the same file
    assert j.workflows() == {"h1": "{}"}
    assert [(p.program_id, p.tenant, p.last_seq) for p in j.programs()] == [("a", "default", 2), ("b", "t2", 1)]
    assert [(e.program_id, e.kind, e.t_s) for e in j.events()] == [
        ("a", "submitted", 1.5), ("b", "submitted", 2.5), ("a", "tool_started", 3.0)]
    j.close_program("a")
    assert [p.program_id for p in j.programs()] == ["b"]
    assert [e.program_id for e in j.events()] == ["b"]
    assert j.counts() == {"workflows": 1, "programs": 1, "events": 1, "tool_samples": 0}


def test_tool_samples_are_bounded_per_tool():
    j = Journal()
    for i in range(2 * TOOL_SAMPLES_KEPT):
        j.tool_sample("bash", float(i))
    j.tool_sample("edit", 1.0)
    samples = j.tool_samples()
    bash = [d for t, d in samples if t == "bash"]
    assert len(bash) == TOOL_SAMPLES_KEPT and bash[-1] == 2 * TOOL_SAMPLES_KEPT - 1  # the newest kept
    assert ("edit", 1.0) in samples
