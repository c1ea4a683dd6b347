"""What a replay measures, per policy.

    jct_*_s                    job completion time: program arrival -> its last call (or tool) done
    ttft_*_s                   time to first token of each LLM call: submission -> first token (time a
                               call was held while its program was parked counts)
    ttft_after_first_p99_s     the same over every call but each program's first
    start_wait_*_s             program arrival -> its first call admitted by the engine (queueing, or
                               parked by program admission)
    prefix_hit_rate            prompt tokens found in the GPU cache / all prompt tokens
    host_hit_rate              prompt tokens loaded back from host memory / all prompt tokens
    recomputed_prefill_tokens  prompt tokens prefilled again although they had been computed before
                               (by this program or another): what a perfect cache would have saved
    pinned_gib_s               GiB of KV held by pins, integrated over time
    throughput_programs_per_min  programs finished / makespan
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _q(xs: list[float], p: float) -> float:
    return float(np.quantile(np.asarray(xs), p)) if xs else 0.0


@dataclass(slots=True)
class Recorder:
    kv_bytes_per_token: int
    jct_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    ttft_later_s: list[float] = field(default_factory=list)  # calls after each program's first
    start_wait_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    gpu_hit_tokens: int = 0
    host_hit_tokens: int = 0
    recomputed_tokens: int = 0
    prefilled_tokens: int = 0
    pinned_token_s: float = 0.0
    first_arrival_s: float | None = None
    last_finish_s: float = 0.0
    programs: int = 0
    # time series for plots: (t, hit rate so far, pinned GiB now)
    series: list[tuple[float, float, float]] = field(default_factory=list)
    _pinned_tokens: int = 0
    _pinned_since_s: float = 0.0

    def arrival(self, t: float) -> None:
        if self.first_arrival_s is None or t < self.first_arrival_s:
            self.first_arrival_s = t

    def program_done(self, arrival_s: float, t: float) -> None:
        self.jct_s.append(t - arrival_s)
        self.last_finish_s = max(self.last_finish_s, t)
        self.programs += 1

    def call_prefilled(self, *, prompt: int, gpu_hit: int, host_hit: int, seen_before: int) -> None:
        """`seen_before`: how many of the prompt's leading tokens had been computed earlier."""
        self.prompt_tokens += prompt
        self.gpu_hit_tokens += gpu_hit
        self.host_hit_tokens += host_hit
        computed = prompt - gpu_hit - host_hit
        self.prefilled_tokens += computed
        self.recomputed_tokens += max(0, seen_before - gpu_hit - host_hit)

    def first_token(self, submitted_s: float, t: float, *, first_call: bool = False) -> None:
        self.ttft_s.append(t - submitted_s)
        if not first_call:
            self.ttft_later_s.append(t - submitted_s)

    def program_started(self, arrival_s: float, t: float) -> None:
        self.start_wait_s.append(t - arrival_s)

    def pinned(self, t: float, tokens: int) -> None:
        """The number of pinned tokens changes to `tokens` at time t."""
        self.pinned_token_s += self._pinned_tokens * (t - self._pinned_since_s)
        self._pinned_tokens, self._pinned_since_s = tokens, t

    def sample(self, t: float) -> None:
        hit = self.gpu_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        self.series.append((t, hit, self._pinned_tokens * self.kv_bytes_per_token / 2**30))

    def summary(self) -> dict[str, float]:
        self.pinned(self.last_finish_s, self._pinned_tokens)
        span = max(1e-9, self.last_finish_s - (self.first_arrival_s or 0.0))
        return {
            "programs": self.programs,
            "jct_mean_s": float(np.mean(self.jct_s)) if self.jct_s else 0.0,
            "jct_p50_s": _q(self.jct_s, 0.5),
            "jct_p95_s": _q(self.jct_s, 0.95),
            "jct_p99_s": _q(self.jct_s, 0.99),
            "ttft_mean_s": float(np.mean(self.ttft_s)) if self.ttft_s else 0.0,
            "ttft_p50_s": _q(self.ttft_s, 0.5),
            "ttft_p95_s": _q(self.ttft_s, 0.95),
            "ttft_p99_s": _q(self.ttft_s, 0.99),
            "ttft_after_first_p99_s": _q(self.ttft_later_s, 0.99),
            "start_wait_mean_s": float(np.mean(self.start_wait_s)) if self.start_wait_s else 0.0,
            "start_wait_p99_s": _q(self.start_wait_s, 0.99),
            "prefix_hit_rate": self.gpu_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            "host_hit_rate": self.host_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            "recomputed_prefill_tokens": self.recomputed_tokens,
            "prefilled_tokens": self.prefilled_tokens,
            "pinned_gib_s": self.pinned_token_s * self.kv_bytes_per_token / 2**30,
            "throughput_programs_per_min": self.programs / span * 60.0,
            "makespan_s": span,
        }
