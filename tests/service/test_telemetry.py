"""Telemetry (telemetry.py) with the real OpenTelemetry SDK: exact spans (names, parents, attributes,
times from an injected clock) through the SDK's InMemorySpanExporter, exact metric values through its
InMemoryMetricReader, the console exporter into a buffer, and OTLP to a real loopback gRPC collector."""

from __future__ import annotations

import io
import json
import sys
import time
from concurrent import futures

import grpc
import pytest
from agentflow.runtime.service.telemetry import (
    OTLP_PACKAGE,
    TelemetryError,
    setup_telemetry,
)
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agentflow.errors import AgentflowError

S = 1_000_000_000  # ns


class Clock:
    """Injected nanosecond clock: tests set `t` in seconds."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> int:
        return int(self.t * S)


@pytest.fixture
def tel():
    clock = Clock()
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    t = setup_telemetry("none", service_name="svc-test", span_exporter=spans, metric_reader=reader, clock_ns=clock)
    t.test_clock, t.test_spans, t.test_reader = clock, spans, reader
    yield t
    t.shutdown()


def finished(tel) -> dict:
    return {s.name: s for s in tel.test_spans.get_finished_spans()}


def metrics(tel) -> dict:
    """{metric name: {(sorted attribute items): value}} from one collection."""
    out: dict = {}
    data = tel.test_reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = {tuple(sorted(p.attributes.items())): p.value for p in m.data.data_points}
    return out


def test_span_tree_of_one_program(tel):
    clock = tel.test_clock
    tel.start_program("p1", "coder-loop")
    clock.t = 1.0
    tel.start_step("p1", "think", agent="coder")
    clock.t = 1.5
    tel.start_llm_call("c1", program_id="p1", step="think", agent="coder", worker="w2", prompt_tokens=1000,
                       cached_tokens=750, model="qwen", route_reason="sticky", predicted_ttft_s=0.025)
    clock.t = 3.0
    assert tel.end_llm_call("c1", output_tokens=40, ttft_s=0.03, finish_reason="stop")
    assert tel.end_step("p1", "think")
    clock.t = 3.5
    tel.start_tool("p1", "bash", tool_call_id="t1", step="run")  # step "run" has no open span: under the program
    clock.t = 5.5
    assert tel.end_tool("p1", "bash", tool_call_id="t1")
    clock.t = 6.0
    assert tel.end_program("p1")

    got = finished(tel)
    assert set(got) == {"invoke_workflow coder-loop", "step think", "chat qwen", "execute_tool bash"}
    prog, step, call, tool = (got[n] for n in ("invoke_workflow coder-loop", "step think", "chat qwen",
                                                 "execute_tool bash"))
    assert prog.parent is None
    assert step.parent.span_id == prog.context.span_id
    assert call.parent.span_id == step.context.span_id
    assert tool.parent.span_id == prog.context.span_id
    assert len({s.context.trace_id for s in got.values()}) == 1
    assert (prog.start_time, prog.end_time) == (0, 6 * S)
    assert (call.start_time, call.end_time) == (int(1.5 * S), 3 * S)
    assert (tool.start_time, tool.end_time) == (int(3.5 * S), int(5.5 * S))
    assert dict(prog.attributes) == {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "coder-loop",
                                     "gen_ai.conversation.id": "p1", "agentflow.program.id": "p1"}
    assert dict(step.attributes) == {"agentflow.program.id": "p1", "agentflow.step.name": "think",
                                     "gen_ai.agent.name": "coder"}
    assert call.kind is SpanKind.CLIENT
    assert dict(call.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.conversation.id": "p1", "gen_ai.usage.input_tokens": 1000,
        "agentflow.call.id": "c1", "agentflow.program.id": "p1", "agentflow.worker.id": "w2",
        "gen_ai.request.model": "qwen", "gen_ai.agent.name": "coder", "agentflow.step.name": "think",
        "agentflow.route.reason": "sticky", "agentflow.route.predicted_ttft_s": 0.025,
        "gen_ai.usage.cache_read.input_tokens": 750, "agentflow.cache.hit_ratio": 0.75,
        "gen_ai.usage.output_tokens": 40, "gen_ai.response.time_to_first_chunk": 0.03,
        "gen_ai.response.finish_reasons": ("stop",)}
    assert dict(tool.attributes) == {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "bash",
                                     "agentflow.program.id": "p1", "gen_ai.tool.call.id": "t1",
                                     "agentflow.step.name": "run"}
    assert all(s.status.status_code is StatusCode.UNSET for s in got.values())
    assert prog.resource.attributes["service.name"] == "svc-test"
    assert tel.open_spans() == {"program": 0, "step": 0, "llm_call": 0, "tool": 0}


def test_measured_cache_figures_replace_the_routing_ones(tel):
    tel.start_llm_call("c1", "w1", 1000, 900)  # outside any program: a root span, no conversation id
    tel.end_llm_call("c1", prompt_tokens=1000, cached_tokens=250, output_tokens=5)
    (span,) = tel.test_spans.get_finished_spans()
    assert span.name == "chat" and span.parent is None
    assert "gen_ai.conversation.id" not in span.attributes and span.attributes["agentflow.worker.id"] == "w1"
    assert (span.attributes["gen_ai.usage.cache_read.input_tokens"], span.attributes["agentflow.cache.hit_ratio"]) \
        == (250, 0.25)


def test_ending_a_program_ends_its_open_spans_and_repeats_do_nothing(tel):
    tel.start_program("p1", "wf")
    first = tel.start_program("p1", "wf")  # a repeated OpenProgram
    assert tel.start_program("p1", "wf") is first
    tel.start_step("p1", "think")
    tel.start_llm_call("c1", program_id="p1", step="think", worker="w1", prompt_tokens=10)
    tel.start_tool("p1", "bash")
    tel.start_program("p2", "wf")
    assert tel.open_spans() == {"program": 2, "step": 1, "llm_call": 1, "tool": 1}
    assert tel.end_program("p1")
    assert not tel.end_program("p1") and not tel.end_llm_call("c1") and not tel.end_step("p1", "think")
    assert tel.open_spans() == {"program": 1, "step": 0, "llm_call": 0, "tool": 0}
    ended = {s.name: s.attributes.get("agentflow.ended_with_program") for s in tel.test_spans.get_finished_spans()}
    assert ended == {"execute_tool bash": True, "chat": True, "step think": True, "invoke_workflow wf": None}


def test_a_step_visited_again_ends_the_last_visit(tel):
    tel.start_program("p1", "wf")
    tel.test_clock.t = 1.0
    tel.start_step("p1", "think")
    tel.test_clock.t = 2.0
    tel.start_step("p1", "think")  # the loop came back
    tel.test_clock.t = 3.0
    tel.end_step("p1", "think")
    visits = sorted((s.start_time, s.end_time) for s in tel.test_spans.get_finished_spans())
    assert visits == [(1 * S, 2 * S), (2 * S, 3 * S)]


def test_context_managers_mark_errors_and_reraise(tel):
    with tel.program_span("p1", "wf") as prog:
        with tel.step_span("p1", "think"), tel.llm_call_span("c1", "w1", 10, 0, program_id="p1", step="think"):
            pass
        with pytest.raises(KeyError), tel.tool_span("p1", "bash", tool_call_id="t9"):
            raise KeyError("boom")
        assert prog.is_recording()
    got = finished(tel)
    tool = got["execute_tool bash"]
    assert tool.status.status_code is StatusCode.ERROR and tool.attributes["error.type"] == "KeyError"
    assert [e.name for e in tool.events] == ["exception"]
    assert got["chat"].parent.span_id == got["step think"].context.span_id
    assert got["invoke_workflow wf"].status.status_code is StatusCode.UNSET


def test_providers_are_private_and_ambient_spans_are_not_parents():
    """Two services in one process: each sees only its own spans; the global provider is untouched."""
    a_spans, b_spans = InMemorySpanExporter(), InMemorySpanExporter()
    a = setup_telemetry(span_exporter=a_spans, service_name="a")
    b = setup_telemetry(span_exporter=b_spans, service_name="b")
    outside = TracerProvider()
    try:
        with outside.get_tracer("other").start_as_current_span("ambient"):
            a.start_program("p", "wf")
            a.end_program("p")
        b.start_program("q", "wf")
        b.end_program("q")
        assert [s.name for s in a_spans.get_finished_spans()] == ["invoke_workflow wf"]
        assert a_spans.get_finished_spans()[0].parent is None
        assert [s.attributes["agentflow.program.id"] for s in b_spans.get_finished_spans()] == ["q"]
        assert trace.get_tracer_provider() not in (a.tracer_provider, b.tracer_provider)
    finally:
        a.shutdown()
        b.shutdown()
        outside.shutdown()


def test_metrics_exact_values(tel):
    assert "agentflow.cache.hit_ratio" not in metrics(tel) or metrics(tel)["agentflow.cache.hit_ratio"] == {}
    tel.record_hit(1000, 750, worker="w1")
    tel.record_hit(1000, 250, worker="w2")
    tel.record_hit(2000, 1000)
    tel.set_pinned_bytes("w1", 3 << 30)
    tel.set_pinned_bytes("w1", 1 << 30)  # a gauge: the last value
    tel.set_pinned_bytes("w2", 0)
    tel.set_queue_depth("w1", 7)
    tel.count_decisions(3)
    tel.count_decisions()
    got = metrics(tel)
    w1, w2 = (("agentflow.worker.id", "w1"),), (("agentflow.worker.id", "w2"),)
    assert got["agentflow.cache.prompt_tokens"] == {w1: 1000, w2: 1000, (): 2000}
    assert got["agentflow.cache.cached_tokens"] == {w1: 750, w2: 250, (): 1000}
    assert got["agentflow.cache.hit_ratio"] == {(): 0.5}
    assert got["agentflow.kv.pinned_bytes"] == {w1: 1 << 30, w2: 0}
    assert got["agentflow.worker.queue_depth"] == {w1: 7}
    assert got["agentflow.scheduler.decisions"] == {(): 4}
    assert tel.hit_ratio() == 0.5


def test_decision_rate_over_a_sliding_window(tel):
    clock = tel.test_clock  # window: 10 s
    for second in range(20):
        clock.t = float(second)
        tel.count_decisions(2 if second < 10 else 5)
    clock.t = 19.5  # the window (9.5, 19.5] holds seconds 10..19: 10 x 5 decisions
    assert tel.decision_rate() == 5.0
    assert metrics(tel)["agentflow.scheduler.decision_rate"] == {(): 5.0}
    clock.t = 100.0
    assert tel.decision_rate() == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: setup_telemetry("jaeger"), "'none', 'console', 'otlp'"),
    (lambda: setup_telemetry("console", endpoint="http://x:4317"), "only used by the 'otlp'"),
])
def test_setup_errors_name_the_options(call, match):
    with pytest.raises(TelemetryError, match=match):
        call()
    assert issubclass(TelemetryError, AgentflowError)


def test_bad_metric_input_raises(tel):
    with pytest.raises(TelemetryError, match="cached_tokens <= prompt_tokens"):
        tel.record_hit(10, 11)
    with pytest.raises(TelemetryError):
        tel.count_decisions(-1)


def test_console_exporter_writes_spans_as_they_end():
    out = io.StringIO()
    t = setup_telemetry("console", service_name="svc", console_out=out, export_interval_s=3600)
    try:
        t.start_program("p1", "wf")
        t.end_program("p1")
        span = json.loads(out.getvalue())
        assert (span["name"], span["attributes"]["agentflow.program.id"]) == ("invoke_workflow wf", "p1")
        t.record_hit(10, 5)
        t.force_flush()
        assert "agentflow.cache.prompt_tokens" in out.getvalue()
    finally:
        t.shutdown()


def test_otlp_without_its_package_names_it(monkeypatch):
    """The package is installed here; its absence is simulated by hiding the module."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(TelemetryError, match=OTLP_PACKAGE):
        setup_telemetry("otlp", endpoint="http://127.0.0.1:1")


def test_otlp_exports_to_a_loopback_collector():
    """A real OTLP/gRPC collector on 127.0.0.1 receives the spans and the metrics."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    from opentelemetry.proto.collector.metrics.v1 import (
        metrics_service_pb2,
        metrics_service_pb2_grpc,
    )
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    received: dict[str, list] = {"spans": [], "metrics": []}

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received["spans"] += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            received["metrics"] += [m.name for rm in request.resource_metrics for sm in rm.scope_metrics
                                    for m in sm.metrics]
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    t = setup_telemetry("otlp", endpoint=f"http://127.0.0.1:{port}", service_name="svc", export_interval_s=3600)
    try:
        t.start_program("p1", "wf")
        t.start_llm_call("c1", program_id="p1", worker="w1", prompt_tokens=100, cached_tokens=60)
        t.end_llm_call("c1", output_tokens=3)
        t.end_program("p1")
        t.record_hit(100, 60)
        assert t.force_flush()
        by_name = {s.name: s for s in received["spans"]}
        assert set(by_name) == {"invoke_workflow wf", "chat"}
        assert by_name["chat"].parent_span_id == by_name["invoke_workflow wf"].span_id
        assert {"agentflow.cache.prompt_tokens", "agentflow.cache.hit_ratio"} <= set(received["metrics"])
    finally:
        t.shutdown()
        server.stop(grace=None)


def test_an_unreachable_collector_stalls_nothing_for_long():
    """Port 9 on loopback refuses connections: flush and shutdown end within the export timeout."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    t = setup_telemetry("otlp", endpoint="http://127.0.0.1:9", export_interval_s=3600, export_timeout_s=0.3)
    t.start_program("p1", "wf")
    t.end_program("p1")
    t.record_hit(10, 5)
    start = time.monotonic()
    t.force_flush(1000)
    t.shutdown()
    assert time.monotonic() - start < 3.0
