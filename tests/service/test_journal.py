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


def test_a_closed_programs_tool_durations_move_to_the_samples_bounded_per_tool():
    j = Journal()
    j.open_program("a", "h1", "default", 0.0)
    for i in range(2 * TOOL_SAMPLES_KEPT):
        j.append("a", float(i), "tool_finished", {"step": "run", "tool": "bash", "duration_s": float(i)})
    j.append("a", 0.0, "tool_started", {"step": "run", "tool": "edit"})
    j.open_program("b", "h1", "default", 0.0)
    j.append("b", 0.0, "tool_finished", {"step": "run", "tool": "edit", "duration_s": 1.0})
    assert j.tool_samples() == []  # open programs' durations are in their events only
    j.close_program("a")
    bash = [d for t, d in j.tool_samples() if t == "bash"]
    assert len(bash) == TOOL_SAMPLES_KEPT and bash[-1] == 2 * TOOL_SAMPLES_KEPT - 1  # the newest kept
    assert {t for t, _ in j.tool_samples()} == {"bash"}
    j.close_program("b")
    assert j.tool_samples()[-1] == ("edit", 1.0)


def test_a_batch_is_one_transaction():
    j = Journal()
    j.open_program("a", "h1", "default", 0.0)
    try:
        with j.batch():
            j.append("a", 1.0, "submitted", {"call_id": "a#0"}, seq=1)
            j.append("a", 2.0, "submitted", {"call_id": "a#1"}, seq=2)
            raise RuntimeError("crash mid-batch")
    except RuntimeError:
        pass
    assert list(j.events()) == [] and j.programs()[0].last_seq == 0
    with j.batch():
        j.append("a", 1.0, "submitted", {"call_id": "a#0"}, seq=1)
    assert [e.body["call_id"] for e in j.events()] == ["a#0"]
