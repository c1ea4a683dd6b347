"""Per-tool duration distributions: fitted on recorded tool times, sampled with a seed.

Tool times are heavy-tailed (a bash call is usually 0.1-1 s, a build can take minutes), so a mean
is the wrong summary and a parametric fit is fragile on a few dozen samples. A distribution here is
the empirical quantile function on a fixed grid, sampled by inverse CDF with log-linear
interpolation between grid points (durations are positive and spread over decades). A lognormal
(mu, sigma) is reported beside it for people, not used for sampling.

Sampling goes by ``ToolKind``: a kind with too few samples falls back to the pooled distribution
of every recorded tool ("*"), and the table says which kinds it fitted and from what.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.format import ToolKind

TABLE_FORMAT = "agentflow-tool-durations"
TABLE_VERSION = 1
POOLED = "*"
# Quantile grid of a fitted distribution: dense in the tail, where the cost of a wrong TTL lives.
GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MIN_SAMPLES = 3
# Durations below this are clock noise; the log-space interpolation needs them positive.
FLOOR_S = 1e-4


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolDistribution:
    kind: str  # a ToolKind value, or "*"
    num_samples: int
    quantiles_s: tuple[float, ...]  # at GRID
    mean_s: float
    lognormal_mu: float
    lognormal_sigma: float

    def quantile(self, q: float) -> float:
        logs = np.log(np.maximum(self.quantiles_s, FLOOR_S))
        return float(np.exp(np.interp(q, GRID, logs)))

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        u = rng.random(size)
        logs = np.log(np.maximum(self.quantiles_s, FLOOR_S))
        out = np.exp(np.interp(u, GRID, logs))
        return float(out) if size is None else out


def fit_distribution(kind: str, samples_s: list[float]) -> ToolDistribution:
    if not samples_s:
        raise WorkloadError(f"no duration samples for tool kind {kind!r}", field="samples")
    x = np.asarray(samples_s, dtype=float)
    if (x < 0).any():
        raise WorkloadError(f"negative duration for tool kind {kind!r}", field="duration_s")
    logs = np.log(np.maximum(x, FLOOR_S))
    return ToolDistribution(
        kind=kind, num_samples=len(x),
        quantiles_s=tuple(round(float(v), 6) for v in np.quantile(x, GRID)),
        mean_s=round(float(x.mean()), 6),
        lognormal_mu=round(float(logs.mean()), 6),
        lognormal_sigma=round(float(logs.std()), 6),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DurationTable:
    source: str
    licence: str
    distributions: dict[str, ToolDistribution] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def for_kind(self, kind: ToolKind) -> ToolDistribution:
        dist = self.distributions.get(kind.value) or self.distributions.get(POOLED)
        if dist is None:
            raise WorkloadError(f"duration table has no {kind.value!r} and no pooled distribution",
                                field="distributions")
        return dist

    def sample(self, kind: ToolKind, rng: np.random.Generator) -> float:
        return round(float(self.for_kind(kind).sample(rng)), 4)

    def to_json(self) -> dict:
        return {
            "format": TABLE_FORMAT, "version": TABLE_VERSION, "source": self.source,
            "licence": self.licence, "grid": list(GRID), "notes": list(self.notes),
            "distributions": {k: {**asdict(d), "quantiles_s": list(d.quantiles_s)}
                              for k, d in sorted(self.distributions.items())},
        }

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")


def fit_table(samples_by_kind: dict[str, list[float]], *, source: str, licence: str,
              notes: tuple[str, ...] = ()) -> DurationTable:
    """Fit each kind with at least MIN_SAMPLES samples, and the pooled "*" from all of them."""
    dists: dict[str, ToolDistribution] = {}
    pooled: list[float] = []
    for kind, xs in sorted(samples_by_kind.items()):
        pooled.extend(xs)
        if len(xs) >= MIN_SAMPLES:
            dists[kind] = fit_distribution(kind, xs)
    if pooled:
        dists[POOLED] = fit_distribution(POOLED, pooled)
    return DurationTable(source=source, licence=licence, distributions=dists, notes=notes)


def load_table(path: str | Path | None = None) -> DurationTable:
    """A table from a file, or (no path) the one shipped in the package."""
    if path is None:
        text = resources.files("agentflow.runtime.workload").joinpath("data/tool_durations.json").read_text()
        name = "agentflow/runtime/workload/data/tool_durations.json"
    else:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise WorkloadError(f"cannot read duration table: {e.strerror}", file=name) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"not valid JSON: {e.msg}", file=name, line=e.lineno) from None
    if raw.get("format") != TABLE_FORMAT or raw.get("version") != TABLE_VERSION:
        raise WorkloadError(f"not a {TABLE_FORMAT} v{TABLE_VERSION} file", file=name, field="format")
    dists = {}
    for kind, d in raw.get("distributions", {}).items():
        try:
            q = tuple(float(v) for v in d["quantiles_s"])
            if len(q) != len(GRID) or any(b < a for a, b in zip(q, q[1:])) or q[0] < 0:
                raise ValueError("quantiles_s must be non-decreasing, non-negative, one per grid point")
            dists[kind] = ToolDistribution(
                kind=kind, num_samples=int(d["num_samples"]), quantiles_s=q, mean_s=float(d["mean_s"]),
                lognormal_mu=float(d["lognormal_mu"]), lognormal_sigma=float(d["lognormal_sigma"]))
        except (KeyError, TypeError, ValueError) as e:
            raise WorkloadError(str(e), file=name, record=kind, field="distributions") from None
    return DurationTable(source=raw.get("source", ""), licence=raw.get("licence", ""),
                         distributions=dists, notes=tuple(raw.get("notes", ())))


def describe(dist: ToolDistribution) -> str:
    return (f"n={dist.num_samples} p50={dist.quantile(0.5):.3g}s p90={dist.quantile(0.9):.3g}s "
            f"max={dist.quantiles_s[-1]:.3g}s lognormal(mu={dist.lognormal_mu:.2f}, "
            f"sigma={dist.lognormal_sigma:.2f})")
