"""OpenTelemetry for the scheduler service: spans for programs, steps, LLM calls and tool calls; metrics
for cache hits, pinned bytes, queue depth and decisions.

    setup_telemetry(exporter="none" | "console" | "otlp", endpoint=..., service_name=...) -> Telemetry
        │  a private TracerProvider and MeterProvider: never the global ones, so tests and several
        │  services in one process do not see each other's spans
        v
    program span "invoke_workflow coder-loop"          opened at OpenProgram, closed at Close
      ├─ step span "step think"                        (program_id, step): one per visit
      │    └─ LLM call span "chat"                     call_id: routed -> finished (many RPCs later)
      └─ tool span "execute_tool bash"                 (program_id, tool call id)

A program lives across many RPCs, so spans are not tied to a Python `with` block: each kind has a
start/end pair keyed by its id (ending an id that is not open is a repeat and does nothing), and a
context manager over the pair for code that does live in one block. Parents are found by key, not
by OpenTelemetry's ambient context: an LLM call's parent is its step's open span, else its
program's, else none. Ending a program ends whatever of its spans is still open (marked
`agentflow.ended_with_program`), so a closed program leaves no span dangling.

Attribute names follow the OpenTelemetry GenAI conventions where they exist (gen_ai.operation.name,
gen_ai.usage.input_tokens, gen_ai.usage.cache_read.input_tokens, gen_ai.conversation.id, ...),
written as literals because the semconv package keeps them in an `_incubating` module; the rest
are `agentflow.*`.

Metrics (units per UCUM, as OpenTelemetry asks):

    agentflow.cache.prompt_tokens      counter  {token}     prompt tokens of finished calls
    agentflow.cache.cached_tokens      counter  {token}     of those, served from the cache
    agentflow.cache.hit_ratio          gauge    1           cached / prompt, since start
    agentflow.kv.pinned_bytes          gauge    By          per worker (agentflow.worker.id)
    agentflow.worker.queue_depth       gauge    {call}      per worker
    agentflow.scheduler.decisions      counter  {decision}  a backend's rate() gives decisions/s
    agentflow.scheduler.decision_rate  gauge    {decision}/s  over the last `rate_window_s`

Time is injected: `clock_ns` stamps span starts and ends and dates decisions (tests pin durations
and rates without sleeping); by default the wall clock.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from agentflow.errors import AgentflowError

OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-grpc"
SCOPE = "agentflow.runtime.service"

AttrValue = str | bool | int | float


class TelemetryError(AgentflowError):
    """Telemetry cannot be set up as asked: an unknown exporter, or the OTLP package is missing."""


class Exporter(enum.Enum):
    NONE = "none"  # spans and metrics are made (cheaply) and dropped: same code path as the others
    CONSOLE = "console"  # spans as JSON on stdout as they end; metrics every `export_interval_s`
    OTLP = "otlp"  # OTLP over gRPC to `endpoint` (default: $OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317)

    @classmethod
    def parse(cls, value: str | Exporter) -> Exporter:
        if isinstance(value, Exporter):
            return value
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(e.value) for e in cls)
            raise TelemetryError(f"unknown telemetry exporter {value!r}: choose one of {valid}") from None


class Telemetry:
    """Spans and metrics for one scheduler service. Thread-safe; one per service."""

    def __init__(self, *, tracer_provider: TracerProvider, meter_provider: MeterProvider,
                 clock_ns: Callable[[], int] = time.time_ns, rate_window_s: float = 10.0):
        if rate_window_s <= 0:
            raise TelemetryError(f"rate_window_s must be > 0 (got {rate_window_s})")
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.clock_ns = clock_ns
        self.rate_window_s = rate_window_s
        self._tracer = tracer_provider.get_tracer(SCOPE)
        self._lock = threading.Lock()
        self._programs: dict[str, Span] = {}
        self._steps: dict[tuple[str, str], Span] = {}
        self._calls: dict[str, tuple[str, Span]] = {}  # call_id -> (program_id, span)
        self._tools: dict[tuple[str, str], Span] = {}
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._decisions: collections.deque[tuple[int, int]] = collections.deque()  # (time ns, count)

        meter = meter_provider.get_meter(SCOPE)
        self._prompt_counter = meter.create_counter(
            "agentflow.cache.prompt_tokens", unit="{token}", description="Prompt tokens of finished LLM calls")
        self._cached_counter = meter.create_counter(
            "agentflow.cache.cached_tokens", unit="{token}", description="Prompt tokens served from the KV cache")
        meter.create_observable_gauge(
            "agentflow.cache.hit_ratio", callbacks=[self._observe_hit_ratio], unit="1",
            description="Cached prompt tokens over prompt tokens, since the service started")
        self._pinned_gauge = meter.create_gauge(
            "agentflow.kv.pinned_bytes", unit="By", description="KV cache bytes pinned on a worker")
        self._queue_gauge = meter.create_gauge(
            "agentflow.worker.queue_depth", unit="{call}", description="LLM calls waiting on a worker")
        self._decision_counter = meter.create_counter(
            "agentflow.scheduler.decisions", unit="{decision}", description="Scheduler decisions emitted")
        meter.create_observable_gauge(
            "agentflow.scheduler.decision_rate", callbacks=[self._observe_decision_rate], unit="{decision}/s",
            description="Scheduler decisions per second over the last rate window")

    # -- spans: programs --------------------------------------------------------------------------

    def start_program(self, program_id: str, workflow: str, *, attributes: Mapping[str, AttrValue] = {}) -> Span:
        """Open the program's span; a repeat (same id still open) returns the open span."""
        with self._lock:
            if program_id in self._programs:
                return self._programs[program_id]
            span = self._start(f"invoke_workflow {workflow}", None, {
                "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": workflow,
                "gen_ai.conversation.id": program_id, "agentflow.program.id": program_id, **attributes})
            self._programs[program_id] = span
            return span

    def end_program(self, program_id: str, *, error: str | None = None,
                    attributes: Mapping[str, AttrValue] = {}) -> bool:
        """Close the program's span and every span of it still open. False: it was not open."""
        with self._lock:
            span = self._programs.pop(program_id, None)
            if span is None:
                return False
            for key in [k for k in self._tools if k[0] == program_id]:
                self._end(self._tools.pop(key), None, {"agentflow.ended_with_program": True})
            for call_id in [c for c, (p, _) in self._calls.items() if p == program_id]:
                self._end(self._calls.pop(call_id)[1], None, {"agentflow.ended_with_program": True})
            for key in [k for k in self._steps if k[0] == program_id]:
                self._end(self._steps.pop(key), None, {"agentflow.ended_with_program": True})
            self._end(span, error, attributes)
            return True

    # -- spans: steps -----------------------------------------------------------------------------

    def start_step(self, program_id: str, step: str, *, agent: str | None = None,
                   attributes: Mapping[str, AttrValue] = {}) -> Span:
        """Open a step visit's span under its program. A step visited again (a loop) ends the last visit's."""
        with self._lock:
            old = self._steps.pop((program_id, step), None)
            if old is not None:
                self._end(old, None, {})
            attrs: dict[str, AttrValue] = {"agentflow.program.id": program_id, "agentflow.step.name": step}
            if agent is not None:
                attrs["gen_ai.agent.name"] = agent
            span = self._start(f"step {step}", self._programs.get(program_id), {**attrs, **attributes})
            self._steps[(program_id, step)] = span
            return span

    def end_step(self, program_id: str, step: str, *, error: str | None = None,
                 attributes: Mapping[str, AttrValue] = {}) -> bool:
        with self._lock:
            span = self._steps.pop((program_id, step), None)
            if span is None:
                return False
            self._end(span, error, attributes)
            return True

    # -- spans: LLM calls -------------------------------------------------------------------------

    def start_llm_call(self, call_id: str, worker: str, prompt_tokens: int, cached_tokens: int | None = None, *,
                       program_id: str = "", step: str | None = None, agent: str | None = None,
                       model: str | None = None, route_reason: str | None = None,
                       predicted_ttft_s: float | None = None, attributes: Mapping[str, AttrValue] = {}) -> Span:
        """Open an LLM call's span: from its routing to its end. Parent: its step's span, else its
        program's, else none (program_id "": a call outside any program)."""
        with self._lock:
            if call_id in self._calls:
                return self._calls[call_id][1]
            attrs: dict[str, AttrValue] = {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": prompt_tokens,
                                           "agentflow.call.id": call_id, "agentflow.worker.id": worker}
            if program_id:
                attrs.update({"gen_ai.conversation.id": program_id, "agentflow.program.id": program_id})
            optional = {"gen_ai.request.model": model, "gen_ai.agent.name": agent, "agentflow.step.name": step,
                        "agentflow.route.reason": route_reason, "agentflow.route.predicted_ttft_s": predicted_ttft_s}
            attrs.update({k: v for k, v in optional.items() if v is not None})
            attrs.update(_cache_attributes(prompt_tokens, cached_tokens))
            parent = self._steps.get((program_id, step)) if step is not None else None
            span = self._start(f"chat {model}" if model else "chat", parent or self._programs.get(program_id),
                               {**attrs, **attributes}, kind=SpanKind.CLIENT)
            self._calls[call_id] = (program_id, span)
            return span

    def end_llm_call(self, call_id: str, *, output_tokens: int | None = None, prompt_tokens: int | None = None,
                     cached_tokens: int | None = None, ttft_s: float | None = None,
                     finish_reason: str | None = None, error: str | None = None,
                     attributes: Mapping[str, AttrValue] = {}) -> bool:
        """Close an LLM call's span with what the worker reported; the cache figures, when given, are
        the measured ones and replace those known at routing."""
        with self._lock:
            entry = self._calls.pop(call_id, None)
            if entry is None:
                return False
            attrs: dict[str, Any] = {}
            if output_tokens is not None:
                attrs["gen_ai.usage.output_tokens"] = output_tokens
            if ttft_s is not None:
                attrs["gen_ai.response.time_to_first_chunk"] = ttft_s
            if finish_reason is not None:
                attrs["gen_ai.response.finish_reasons"] = (finish_reason,)
            if prompt_tokens is not None:
                attrs["gen_ai.usage.input_tokens"] = prompt_tokens
                attrs.update(_cache_attributes(prompt_tokens, cached_tokens))
            self._end(entry[1], error, {**attrs, **attributes})
            return True

    # -- spans: tool calls ------------------------------------------------------------------------

    def start_tool(self, program_id: str, tool: str, *, tool_call_id: str | None = None, step: str | None = None,
                   attributes: Mapping[str, AttrValue] = {}) -> Span:
        """Open a tool call's span, keyed by (program_id, tool_call_id or the tool's name)."""
        key = (program_id, tool_call_id or tool)
        with self._lock:
            if key in self._tools:
                return self._tools[key]
            attrs: dict[str, AttrValue] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                                           "agentflow.program.id": program_id}
            if tool_call_id is not None:
                attrs["gen_ai.tool.call.id"] = tool_call_id
            if step is not None:
                attrs["agentflow.step.name"] = step
            parent = self._steps.get((program_id, step)) if step is not None else None
            span = self._start(f"execute_tool {tool}", parent or self._programs.get(program_id),
                               {**attrs, **attributes})
            self._tools[key] = span
            return span

    def end_tool(self, program_id: str, tool: str, *, tool_call_id: str | None = None, error: str | None = None,
                 attributes: Mapping[str, AttrValue] = {}) -> bool:
        with self._lock:
            span = self._tools.pop((program_id, tool_call_id or tool), None)
            if span is None:
                return False
            self._end(span, error, attributes)
            return True

    # -- spans: context managers over the pairs ---------------------------------------------------

    @contextlib.contextmanager
    def program_span(self, program_id: str, workflow: str, **kw: Any) -> Iterator[Span]:
        with self._scope(self.start_program(program_id, workflow, **kw),
                         lambda error: self.end_program(program_id, error=error)) as span:
            yield span

    @contextlib.contextmanager
    def step_span(self, program_id: str, step: str, **kw: Any) -> Iterator[Span]:
        with self._scope(self.start_step(program_id, step, **kw),
                         lambda error: self.end_step(program_id, step, error=error)) as span:
            yield span

    @contextlib.contextmanager
    def llm_call_span(self, call_id: str, worker: str, prompt_tokens: int, cached_tokens: int | None = None,
                      **kw: Any) -> Iterator[Span]:
        span = self.start_llm_call(call_id, worker, prompt_tokens, cached_tokens, **kw)
        with self._scope(span, lambda error: self.end_llm_call(call_id, error=error)) as s:
            yield s

    @contextlib.contextmanager
    def tool_span(self, program_id: str, tool: str, *, tool_call_id: str | None = None, **kw: Any) -> Iterator[Span]:
        with self._scope(self.start_tool(program_id, tool, tool_call_id=tool_call_id, **kw),
                         lambda error: self.end_tool(program_id, tool, tool_call_id=tool_call_id,
                                                     error=error)) as span:
            yield span

    @contextlib.contextmanager
    def _scope(self, span: Span, end: Callable[[str | None], bool]) -> Iterator[Span]:
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc, timestamp=self.clock_ns())
            end(type(exc).__qualname__)
            raise
        end(None)

    def open_spans(self) -> dict[str, int]:
        """How many spans of each kind are open (for health checks and tests)."""
        with self._lock:
            return {"program": len(self._programs), "step": len(self._steps), "llm_call": len(self._calls),
                    "tool": len(self._tools)}

    # -- metrics ----------------------------------------------------------------------------------

    def record_hit(self, prompt_tokens: int, cached_tokens: int, *, worker: str | None = None) -> None:
        """One finished call: its prompt tokens and how many of them came from the cache."""
        if prompt_tokens < 0 or not 0 <= cached_tokens <= prompt_tokens:
            raise TelemetryError(f"record_hit: need 0 <= cached_tokens <= prompt_tokens "
                                 f"(got cached_tokens={cached_tokens}, prompt_tokens={prompt_tokens})")
        attrs = {"agentflow.worker.id": worker} if worker is not None else {}
        self._prompt_counter.add(prompt_tokens, attrs)
        self._cached_counter.add(cached_tokens, attrs)
        with self._lock:
            self._prompt_tokens += prompt_tokens
            self._cached_tokens += cached_tokens

    def set_pinned_bytes(self, worker: str, num_bytes: int) -> None:
        self._pinned_gauge.set(num_bytes, {"agentflow.worker.id": worker})

    def set_queue_depth(self, worker: str, depth: int) -> None:
        self._queue_gauge.set(depth, {"agentflow.worker.id": worker})

    def count_decisions(self, n: int = 1) -> None:
        if n < 0:
            raise TelemetryError(f"count_decisions: n must be >= 0 (got {n})")
        self._decision_counter.add(n)
        with self._lock:
            self._decisions.append((self.clock_ns(), n))

    def hit_ratio(self) -> float | None:
        """Cached over prompt tokens since start; None before any prompt token."""
        with self._lock:
            return self._cached_tokens / self._prompt_tokens if self._prompt_tokens else None

    def decision_rate(self) -> float:
        """Decisions per second over the last `rate_window_s` (by the injected clock)."""
        now = self.clock_ns()
        horizon = now - int(self.rate_window_s * 1e9)
        with self._lock:
            while self._decisions and self._decisions[0][0] <= horizon:
                self._decisions.popleft()
            return sum(n for _, n in self._decisions) / self.rate_window_s

    def _observe_hit_ratio(self, options: CallbackOptions) -> list[Observation]:
        ratio = self.hit_ratio()
        return [] if ratio is None else [Observation(ratio)]

    def _observe_decision_rate(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.decision_rate())]

    # -- lifecycle --------------------------------------------------------------------------------

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """Export what is pending now. True: handed to the exporters in time (not: a collector got it)."""
        return bool(self.tracer_provider.force_flush(timeout_ms)) and bool(self.meter_provider.force_flush(timeout_ms))

    def shutdown(self) -> None:
        """End every open span (as ended by shutdown), flush and stop both providers."""
        with self._lock:
            spans = [*self._tools.values(), *(s for _, s in self._calls.values()), *self._steps.values(),
                     *self._programs.values()]
            self._tools.clear()
            self._calls.clear()
            self._steps.clear()
            self._programs.clear()
        for span in spans:
            self._end(span, None, {"agentflow.ended_by_shutdown": True})
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    # -- helpers ----------------------------------------------------------------------------------

    def _start(self, name: str, parent: Span | None, attributes: Mapping[str, AttrValue],
               kind: SpanKind = SpanKind.INTERNAL) -> Span:
        # an explicit context: the parent we found by key, or none at all (never the ambient span)
        ctx = trace.set_span_in_context(parent) if parent is not None else otel_context.Context()
        return self._tracer.start_span(name, context=ctx, kind=kind, attributes=dict(attributes),
                                       start_time=self.clock_ns())

    def _end(self, span: Span, error: str | None, attributes: Mapping[str, Any]) -> None:
        if attributes:
            span.set_attributes(dict(attributes))
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=self.clock_ns())


def _cache_attributes(prompt_tokens: int, cached_tokens: int | None) -> dict[str, AttrValue]:
    if cached_tokens is None:
        return {}
    attrs: dict[str, AttrValue] = {"gen_ai.usage.cache_read.input_tokens": cached_tokens}
    if prompt_tokens > 0:
        attrs["agentflow.cache.hit_ratio"] = cached_tokens / prompt_tokens
    return attrs


def setup_telemetry(exporter: str | Exporter = "none", endpoint: str | None = None, service_name: str = "agentflow",
                    *, span_exporter: SpanExporter | None = None, metric_reader: MetricReader | None = None,
                    console_out: IO[str] | None = None, export_interval_s: float = 10.0, export_timeout_s: float = 5.0,
                    clock_ns: Callable[[], int] = time.time_ns, rate_window_s: float = 10.0,
                    resource_attributes: Mapping[str, AttrValue] = {}) -> Telemetry:
    """Build a Telemetry with its own providers.

    `exporter` picks where spans and metrics go; `span_exporter` and `metric_reader` add one more
    destination each (tests pass the SDK's InMemorySpanExporter and InMemoryMetricReader). Spans
    are exported as each ends (SimpleSpanProcessor) for "console" and in the background in batches
    (BatchSpanProcessor) for "otlp"; metrics every `export_interval_s`, and on force_flush()."""
    kind = Exporter.parse(exporter)
    if endpoint is not None and kind is not Exporter.OTLP:
        raise TelemetryError(f"an endpoint ({endpoint!r}) is only used by the 'otlp' exporter, not {kind.value!r}")
    resource = Resource.create({"service.name": service_name, **resource_attributes})
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    interval_ms = export_interval_s * 1000
    if kind is Exporter.CONSOLE:
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        out = console_out if console_out is not None else _stdout()
        tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(service_name=service_name,
                                                                                   out=out)))
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=out),
                                                     export_interval_millis=interval_ms))
    elif kind is Exporter.OTLP:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise TelemetryError(f"the 'otlp' telemetry exporter needs the {OTLP_PACKAGE} package "
                                 f"(pip install {OTLP_PACKAGE}): {exc}") from None
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # the exporters' own timeout bounds their retries: an unreachable collector must not stall
        # a flush or the service's shutdown for long
        tracer_provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout_s),
            export_timeout_millis=export_timeout_s * 1000))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, timeout=export_timeout_s),
                                                     export_interval_millis=interval_ms,
                                                     export_timeout_millis=export_timeout_s * 1000))
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if metric_reader is not None:
        readers.append(metric_reader)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider, clock_ns=clock_ns,
                     rate_window_s=rate_window_s)


def _stdout() -> IO[str]:
    import sys

    return sys.stdout
