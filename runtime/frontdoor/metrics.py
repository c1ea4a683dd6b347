"""/metrics: the front door's and the scheduler's state in Prometheus' text format (prometheus-client).

Counters and histograms are updated as requests finish; gauges (queue depth, pinned bytes,
programs, learned graphs) are read from the live objects at scrape time, so they are never stale.
Every label takes values from a fixed set or from the workers (operator-controlled), never from a
client: a client cannot grow the number of series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_JCT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class FrontDoorMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("agentflow_openai_requests", "OpenAI requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("agentflow_openai_prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.cached_tokens = Counter("agentflow_openai_cached_tokens",
                                     "Prompt tokens served from the device KV cache", registry=r)
        self.completion_tokens = Counter("agentflow_openai_completion_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("agentflow_openai_ttft_seconds", "Time to first token (engine-measured)",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.jct = Histogram("agentflow_openai_program_jct_seconds",
                             "Program completion time: its first request to its last answer", buckets=_JCT_BUCKETS,
                             registry=r)
        self.hint_source = Counter("agentflow_openai_hint_source", "Requests by where their program id came from",
                                   ["source"], registry=r)
        self.front = None

    def bind(self, front) -> None:
        self.front = front
        self.registry.register(_Live(front))

    def answered(self, ans) -> None:
        self.prompt_tokens.inc(ans.prompt_tokens)
        self.cached_tokens.inc(ans.cached_tokens)
        self.completion_tokens.inc(ans.completion_tokens)
        self.ttft.observe(ans.ttft_s)

    def program_done(self, jct_s: float) -> None:
        self.jct.observe(max(0.0, jct_s))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    def __init__(self, front):
        self.front = front

    def collect(self):
        f = self.front
        core = f.core
        c = f.metrics
        prompt = c.prompt_tokens._value.get()
        cached = c.cached_tokens._value.get()
        g = GaugeMetricFamily("agentflow_cache_hit_rate", "Cached share of prompt tokens served by the front door")
        g.add_metric([], cached / prompt if prompt else 0.0)
        yield g
        q = GaugeMetricFamily("agentflow_queue_depth", "Waiting calls per worker (last report)", labels=["worker"])
        pb = GaugeMetricFamily("agentflow_pinned_bytes", "KV bytes pinned per worker (last report)", labels=["worker"])
        pt = GaugeMetricFamily("agentflow_pinned_tokens", "KV tokens pinned per worker (last report)", labels=["worker"])
        for name, w in core.workers.items():
            load = w.load
            if name in f.engines:
                load = f.engines[name].load()
            per_token = f.config.kv_bytes_per_token or _bytes_per_token(f.engines.get(name)) or core.config.kv_bytes_per_token
            q.add_metric([name], load.queue_depth)
            pb.add_metric([name], load.pinned_tokens * per_token)
            pt.add_metric([name], load.pinned_tokens)
        yield q
        yield pb
        yield pt
        pins = GaugeMetricFamily("agentflow_scheduler_pins", "Prefixes the scheduler holds pinned now")
        pins.add_metric([], len(core.sched.pins))
        yield pins
        progs = GaugeMetricFamily("agentflow_programs", "Programs the front door tracks: active (a call in flight), "
                                  "parked (waiting on tools), idle", labels=["state"])
        n = {"active": 0, "parked": 0, "idle": 0}
        for p in f.tracker.programs.values():
            n["active" if p.in_flight else "parked" if p.tool_calls_at_s is not None else "idle"] += 1
        for k, v in n.items():
            progs.add_metric([k], v)
        yield progs
        inf = CounterMetricFamily("agentflow_openai_inferred_joins", "Requests joined to a program by content")
        inf.add_metric([], f.tracker.inferred_joins)
        yield inf
        gaps = CounterMetricFamily("agentflow_openai_tool_gaps", "Tool gaps closed (tool_calls -> results)")
        gaps.add_metric([], f.tool_gaps)
        yield gaps
        unk = CounterMetricFamily("agentflow_openai_unknown_hint_keys", "Hint keys ignored (unknown)")
        unk.add_metric([], f.unknown_hint_keys)
        yield unk
        wf = GaugeMetricFamily("agentflow_learned_workflows", "Workflow classes learned from traffic")
        wf.add_metric([], len(f.learner.classes))
        yield wf
        tr = GaugeMetricFamily("agentflow_learned_transitions", "Distinct agent->agent transitions learned")
        tr.add_metric([], sum(len(cs.transitions) for cs in f.learner.classes.values()))
        yield tr


def _bytes_per_token(engine) -> int | None:
    geo = getattr(engine, "geometry", None)
    return getattr(geo, "bytes_per_token", None) if geo is not None else None


__all__ = ["FrontDoorMetrics"]
