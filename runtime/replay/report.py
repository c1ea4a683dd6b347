"""A replay's results: the side-by-side table, the JSON document, the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = [
    ("jct_mean_s", "JCT mean s", "{:.1f}"),
    ("jct_p95_s", "JCT p95 s", "{:.1f}"),
    ("ttft_mean_s", "TTFT mean s", "{:.2f}"),
    ("ttft_p99_s", "TTFT p99 s", "{:.2f}"),
    ("prefix_hit_rate", "GPU hit", "{:.1%}"),
    ("host_hit_rate", "host hit", "{:.1%}"),
    ("recomputed_prefill_tokens", "recomputed tok", "{:,.0f}"),
    ("pinned_gib_s", "pinned GiB*s", "{:,.0f}"),
    ("throughput_programs_per_min", "programs/min", "{:.2f}"),
]


def table(results: dict[str, dict[str, float]], baseline: str | None = None) -> str:
    """Policies side by side; with the baseline present (default: `sglang`, else `lru`), JCT and
    recomputation ratios against it."""
    from agentflow.cli._table import render

    if baseline is None:
        baseline = "sglang" if "sglang" in results else "lru"
    base = results.get(baseline)
    headers = ["policy"] + [c[1] for c in COLUMNS]
    if base is not None:
        headers += [f"JCT vs {baseline}", f"recomputed vs {baseline}"]
    rows = []
    for name, r in results.items():
        row = [name] + [fmt.format(r[key]) for key, _, fmt in COLUMNS]
        if base is not None:
            row.append(_ratio(base["jct_mean_s"], r["jct_mean_s"]))
            row.append(_ratio(r["recomputed_prefill_tokens"], base["recomputed_prefill_tokens"], inverse=True))
        rows.append(row)
    return render(headers, rows, align="l" + "r" * (len(headers) - 1))


def _ratio(a: float, b: float, inverse: bool = False) -> str:
    """a/b as 'N.NNx' (JCT: how many times faster than the baseline)."""
    if b <= 0:
        return "-" if a <= 0 else "inf"
    return f"{a / b:.2f}x"


def document(config: dict[str, Any], results: dict[str, dict[str, float]]) -> dict[str, Any]:
    def clean(v):
        return None if isinstance(v, float) and (math.isinf(v) or math.isnan(v)) else v

    return {"config": config,
            "policies": {name: {k: clean(v) for k, v in r.items() if not k.startswith("_")}
                         for name, r in results.items()}}


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def plots(results: dict[str, dict[str, Any]], series: dict[str, dict[str, list]], out_dir: str | Path,
          title: str) -> list[Path]:
    """JCT CDF, GPU hit rate and pinned memory over time, per-policy bars. PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(results)
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        jct = np.sort(np.asarray(series[name]["jct_s"]))
        if len(jct):
            ax.plot(jct, np.arange(1, len(jct) + 1) / len(jct), label=name, color=colors[name])
    ax.set_xlabel("job completion time (s)")
    ax.set_ylabel("share of programs")
    ax.set_title(f"JCT CDF: {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    files.append(_save(fig, out / "jct_cdf.png"))

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for name in names:
        s = series[name]["timeline"]
        if s:
            t, hit, pinned = zip(*s)
            a1.plot(t, hit, label=name, color=colors[name])
            a2.plot(t, pinned, label=name, color=colors[name])
    a1.set_ylabel("GPU prefix hit rate (cumulative)")
    a2.set_ylabel("pinned KV (GiB)")
    a2.set_xlabel("simulated time (s)")
    a1.set_title(f"Cache over time: {title}")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend()
    files.append(_save(fig, out / "cache_over_time.png"))

    metrics = [("jct_mean_s", "mean JCT (s)"), ("ttft_mean_s", "mean TTFT (s)"),
               ("recomputed_prefill_tokens", "recomputed prefill tokens"), ("prefix_hit_rate", "GPU prefix hit rate")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.8))
    for ax, (key, label) in zip(axes, metrics):
        vals = [results[n][key] for n in names]
        ax.bar(names, vals, color=[colors[n] for n in names])
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    files.append(_save(fig, out / "policies.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
