"""ServiceCore without a network: programs, calls, routing answers, repeats, faults, recovery.

Time is injected (a ManualClock for the scheduler, a list-backed wall clock for heartbeats)."""

from __future__ import annotations

import math

import pytest

from agentflow.runtime.clock import ManualClock
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.service.core import (
    CallRequest, Code, CoreConfig, LoadReport, ServiceCore, ServiceError, WorkerSpec,
)
from agentflow.runtime.service.journal import Journal


class Wall:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_core(journal=None, **config):
    wall = Wall()
    core = ServiceCore(CoreConfig(**config), clock=ManualClock(), journal=journal, wall=wall)
    return core, wall


def spec(worker_id: str) -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, address=f"127.0.0.1:{1000 + int(worker_id[1:])}", kv_capacity_tokens=100_000)


def sys_prefix(n=100):
    return PrefixRef(key="sys", parent=None, num_tokens=n)


def call(pid, i, *, seq=0, prefixes=None, failed=""):
    return CallRequest(program_id=pid, call_id=f"{pid}#{i}", step="think",
                       prefixes=prefixes if prefixes is not None else (sys_prefix(),), prompt_tokens=200,
                       expected_output_tokens=50, event_seq=seq, failed_worker=failed)


def test_open_program_validates_the_spec_and_is_idempotent(spec_json):
    core, _ = make_core()
    h, created = core.open_program("p", workflow_spec=spec_json)
    assert created and len(h) == 64
    assert core.open_program("p", workflow_spec=spec_json) == (h, False)
    assert core.open_program("q", workflow_hash=h)[1]  # the spec is known by its hash now
    with pytest.raises(ServiceError) as e:
        core.open_program("r", workflow_hash="0" * 64)
    assert e.value.code is Code.NOT_FOUND and e.value.field == "workflow_hash"
    with pytest.raises(ServiceError) as e:
        core.open_program("r", workflow_spec='{"name": "x", "steps": [{"kind": "nope"}]}')
    assert e.value.code is Code.INVALID_ARGUMENT and e.value.field == "workflow_spec"
    with pytest.raises(ServiceError) as e:
        core.open_program("", workflow_spec=spec_json)
    assert e.value.field == "program_id"


def test_submit_needs_a_worker_then_routes_with_hints(spec_json):
    core, _ = make_core()
    core.open_program("p", workflow_spec=spec_json)
    with pytest.raises(ServiceError) as e:
        core.submit(call("p", 0))
    assert e.value.code is Code.UNAVAILABLE
    core.register_worker(spec("w1"))
    ans = core.submit(call("p", 1))
    assert (ans.worker_id, ans.worker_address, ans.session_id) == ("w1", "127.0.0.1:1001", "p")
    assert ans.priority > 0 and math.isfinite(ans.steps_to_execution)


def test_bad_calls_name_their_field(spec_json):
    core, _ = make_core()
    core.register_worker(spec("w1"))
    core.open_program("p", workflow_spec=spec_json)
    cases = [
        (CallRequest(program_id="nope", call_id="c", step="think", prefixes=(), prompt_tokens=1), Code.NOT_FOUND,
         "program_id"),
        (CallRequest(program_id="p", call_id="", step="think", prefixes=(), prompt_tokens=1), Code.INVALID_ARGUMENT,
         "call_id"),
        (CallRequest(program_id="p", call_id="c", step="run", prefixes=(), prompt_tokens=1), Code.INVALID_ARGUMENT,
         "step"),
        (CallRequest(program_id="p", call_id="c", step="think", prefixes=(sys_prefix(500),), prompt_tokens=10),
         Code.INVALID_ARGUMENT, "prefixes[0].num_tokens"),
    ]
    for req, code, fieldname in cases:
        with pytest.raises(ServiceError) as e:
            core.submit(req)
        assert (e.value.code, e.value.field) == (code, fieldname), req
    core.submit(call("p", 0))
    with pytest.raises(ServiceError) as e:
        core.submit(call("p", 0))
    assert e.value.code is Code.ALREADY_EXISTS
    core.close("p")
    with pytest.raises(ServiceError) as e:
        core.submit(call("p", 1))
    assert (e.value.code, e.value.field) == (Code.FAILED_PRECONDITION, "program_id")
    core.close("p")  # closing twice is a repeat, not an error


def test_a_repeated_request_is_answered_not_applied(spec_json):
    core, _ = make_core()
    core.register_worker(spec("w1"))
    core.open_program("p", workflow_spec=spec_json)
    first = core.submit(call("p", 0, seq=1))
    assert core.submit(call("p", 0, seq=1)) == first
    assert list(core.sched.calls) == ["p#0"]
    core.call_started("p#0", "w1")
    core.call_finished("p#0", "w1", output_tokens=50)
    core.tool("p", step="run", tool="bash", finished=False, event_seq=2)
    core.tool("p", step="run", tool="bash", finished=False, event_seq=2)  # repeat: the loop does not advance
    pos = core.sched.programs["p"].position
    core.tool("p", step="run", tool="bash", finished=True, duration_s=2.0, event_seq=3)
    assert core.sched.programs["p"].position == pos
    with pytest.raises(ServiceError) as e:  # an old number for a call that is not in flight
        core.submit(call("p", 0, seq=1))
    assert (e.value.code, e.value.field) == (Code.FAILED_PRECONDITION, "event_seq")


def test_decisions_reach_the_workers_that_must_apply_them(spec_json):
    core, _ = make_core()
    got: dict[str, list] = {"w1": [], "w2": []}
    for w in ("w1", "w2"):
        core.register_worker(spec(w))
        core.sinks[w] = lambda worker, d: got[worker].append(d)
    core.open_program("p", workflow_spec=spec_json)
    ans = core.submit(call("p", 0))
    core.call_started("p#0", ans.worker_id)
    hist = PrefixRef(key="p/h1", parent="sys", num_tokens=250)
    core.call_finished("p#0", ans.worker_id, output_tokens=50, cached=(sys_prefix(), hist))
    core.tool("p", step="run", tool="bash", finished=False)
    other = "w2" if ans.worker_id == "w1" else "w1"
    pins = [p for d in got[ans.worker_id] for p in d.pins]
    assert [(p.prefix, p.program_id) for p in pins] == [("p/h1", "p")]  # pinned where its KV is
    assert not [p for d in got[other] for p in d.pins]
    assert any(d.priorities for d in got[other])  # priorities go to every worker


def test_a_silent_worker_is_lost_its_pins_end_and_its_call_moves(spec_json):
    core, wall = make_core(worker_timeout_s=3.0)
    core.register_worker(spec("w1"))
    core.open_program("p", workflow_spec=spec_json)
    core.submit(call("p", 0))
    core.call_started("p#0", "w1")
    core.call_finished("p#0", "w1", output_tokens=50,
                       cached=(sys_prefix(), PrefixRef(key="p/h1", parent="sys", num_tokens=250)))
    core.tool("p", step="run", tool="bash", finished=False)
    assert core.sched.pins  # the agent's history is pinned during the tool call
    core.register_worker(spec("w2"))
    core.tool("p", step="run", tool="bash", finished=True, duration_s=2.0)
    core.submit(call("p", 1))  # the pin ends at the next call...
    core.call_started("p#1", "w1")
    wall.t = 2.0
    core.heartbeat("w2", core.workers["w2"].load)
    wall.t = 4.0
    assert core.expire_workers() == ["w1"]
    assert "w1" not in core.sched.workers and not core.sched.pins
    assert list(core.sched.waiting) == ["p#1"]  # in flight on w1: back in the queue
    retry = core.submit(call("p", 1, failed="w1"))
    assert (retry.worker_id, retry.reason) == ("w2", "retry")
    assert core.heartbeat("w1", core.workers["w2"].load) is False  # told to register again


def test_a_retry_goes_elsewhere_and_loses_the_worker_only_when_its_heartbeats_are_late(spec_json):
    # one client's word does not take a healthy worker away from everyone (issue 16); a worker
    # that is also late with its heartbeats (two intervals) is lost at once
    core, wall = make_core()
    core.register_worker(spec("w1"))
    core.register_worker(spec("w2"))
    core.open_program("p", workflow_spec=spec_json)
    first = core.submit(call("p", 0))
    core.call_started("p#0", first.worker_id)
    retry = core.submit(call("p", 0, failed=first.worker_id))
    assert retry.worker_id != first.worker_id and first.worker_id in core.workers
    core.heartbeat(retry.worker_id, LoadReport())
    wall.t += 2 * core.config.heartbeat_interval_s + 0.01
    core.heartbeat(retry.worker_id, LoadReport())
    again = core.submit(call("p", 0, failed=retry.worker_id))
    assert again.worker_id == first.worker_id and retry.worker_id in core.workers  # its heartbeat is fresh
    core.submit(call("p", 0, failed=first.worker_id))
    assert first.worker_id not in core.workers  # silent for two intervals: lost


def test_recovery_rebuilds_open_programs_from_the_journal(tmp_path, spec_json):
    path = tmp_path / "journal.sqlite"
    core, _ = make_core(Journal(path))
    core.register_worker(spec("w1"))
    for pid in ("a", "b", "c"):
        core.open_program(pid, workflow_spec=spec_json)
    core.submit(call("a", 0, seq=1))
    core.call_started("a#0", "w1")
    core.call_finished("a#0", "w1", output_tokens=50,
                       cached=(sys_prefix(), PrefixRef(key="a/h1", parent="sys", num_tokens=250)))
    core.tool("a", step="run", tool="bash", finished=False, event_seq=2)
    core.tool("a", step="run", tool="bash", finished=True, duration_s=2.5, event_seq=3)
    core.submit(call("b", 0, seq=1))
    core.close("c")
    before = {p: core.sched.steps_to_execution(p) for p in ("a", "b")}
    core.journal.close()

    again, _ = make_core(Journal(path))
    assert again.recover() == 2
    assert set(again.programs) == {"a", "b"}
    assert {p: again.sched.steps_to_execution(p) for p in ("a", "b")} == before
    assert list(again.sched.calls) == ["b#0"] and list(again.sched.waiting) == ["b#0"]
    assert again.sched.tool_stats.count("bash") == 1  # from a's events (open), counted once
    assert again.sched.prefixes["a/h1"].num_tokens == 250
    with pytest.raises(ServiceError) as e:  # closed before the restart: still closed
        again.submit(call("c", 0))
    assert e.value.code is Code.NOT_FOUND  # (the closed set is not journaled: it is gone with c's rows)
    again.register_worker(spec("w1"))
    assert again.submit(call("b", 0, seq=1)).worker_id == "w1"  # a repeat after the restart: answered again


def test_telemetry_sees_the_program_its_steps_calls_tools_and_decisions(spec_json):
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agentflow.runtime.service.telemetry import setup_telemetry

    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tel = setup_telemetry("none", service_name="core-test", span_exporter=spans, metric_reader=reader)
    wall = Wall()
    core = ServiceCore(CoreConfig(), clock=ManualClock(), wall=wall, telemetry=tel)
    core.register_worker(spec("w1"))
    core.heartbeat("w1", LoadReport(queue_depth=3, pinned_tokens=10))
    core.open_program("p", workflow_spec=spec_json)
    ans = core.submit(call("p", 0))
    core.call_started("p#0", ans.worker_id)
    core.call_finished("p#0", "w1", output_tokens=50, prompt_tokens=200, cached_tokens=150, ttft_s=0.1)
    core.tool("p", step="run", tool="bash", finished=False)
    core.tool("p", step="run", tool="bash", finished=True, duration_s=2.0)
    core.close("p")
    tel.force_flush()
    done = {s.name: s for s in spans.get_finished_spans()}
    assert set(done) == {"invoke_workflow coder-loop", "step think", "chat", "step run", "execute_tool bash"}
    root = done["invoke_workflow coder-loop"]
    assert done["step think"].parent.span_id == root.context.span_id
    chat = done["chat"]
    assert chat.parent.span_id == done["step think"].context.span_id
    assert chat.attributes["agentflow.worker.id"] == "w1" and chat.attributes["gen_ai.usage.input_tokens"] == 200
    assert chat.attributes["gen_ai.usage.cache_read.input_tokens"] == 150
    assert done["execute_tool bash"].parent.span_id == done["step run"].context.span_id
    assert tel.hit_ratio() == 0.75
    metrics = {m.name: m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics}
    assert metrics["agentflow.worker.queue_depth"].data.data_points[0].value == 3
    assert metrics["agentflow.kv.pinned_bytes"].data.data_points[0].value == 10 * 131_072
    assert metrics["agentflow.scheduler.decisions"].data.data_points[0].value == core.decisions > 0


def test_a_failed_or_cancelled_call_leaves_the_queue_and_the_workers_load(spec_json):
    core, _ = make_core()
    core.register_worker(spec("w1"))
    core.open_program("p", workflow_spec=spec_json)
    ans = core.submit(call("p", 0))
    assert core.workers["w1"].in_flight == 1 and list(core.sched.waiting) == ["p#0"]
    assert core.call_failed("p#0", ans.worker_id, "CancelledError")
    assert not core.sched.calls and not core.sched.waiting and core.workers["w1"].in_flight == 0
    assert not core.call_failed("p#0", "w1")  # over already: nothing to do
    assert core.submit(call("p", 1)).worker_id == "w1"  # the program goes on


def test_after_recovery_a_worker_that_never_registers_again_is_lost_after_the_timeout(tmp_path, spec_json):
    path = tmp_path / "journal.sqlite"
    core, _ = make_core(Journal(path), worker_timeout_s=3.0)
    core.register_worker(spec("w1"))
    core.register_worker(spec("w2"))
    core.open_program("a", workflow_spec=spec_json)
    ans = core.submit(call("a", 0, seq=1))
    core.call_started("a#0", ans.worker_id)
    core.journal.close()

    again, wall = make_core(Journal(path), worker_timeout_s=3.0)
    again.recover()
    other = "w2" if ans.worker_id == "w1" else "w1"
    again.register_worker(spec(other))  # the other worker comes back, the call's does not
    assert again.sched.calls["a#0"].worker == ans.worker_id and "a#0" not in again.sched.waiting
    wall.t = 2.0
    assert again.expire_workers() == []  # still within the timeout
    wall.t = 3.5
    again.heartbeat(other, LoadReport())
    assert again.expire_workers() == [ans.worker_id]
    assert "a#0" in again.sched.waiting and again.sched.calls["a#0"].worker is None
    assert again.expire_workers() == []  # once
