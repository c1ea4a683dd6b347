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


# One look per policy: colour, line style and marker differ, so lines that coincide stay readable
# in print and for colour-blind readers.
_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "x")]
PERCENTILES = (50, 95, 99)


def percentiles(xs: list[float], ps=PERCENTILES) -> dict[int, float]:
    """p50/p95/p99 (by default) of `xs`; zeros for an empty list."""
    import numpy as np

    return {p: float(np.percentile(np.asarray(xs), p)) if len(xs) else 0.0 for p in ps}


def _hidden_under(names: list[str], curves: dict[str, tuple],
                  tolerance: float = 0.01) -> dict[str, list[tuple[str, bool]]]:
    """Policy -> [(a later-drawn policy whose curve lies on top of its own, everywhere?)]: within
    `tolerance` of the panel's range at every point (or at 90% of them: mostly hidden)."""
    import numpy as np

    ys = [y for t, y in curves.values() if len(y)]
    span = (max(float(np.max(y)) for y in ys) - min(float(np.min(y)) for y in ys)) if ys else 0.0
    out: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        t, y = curves[name]
        if not len(t):
            continue
        for later in names[i + 1:]:
            t2, y2 = curves[later]
            if not len(t2):
                continue
            lo, hi = max(t[0], t2[0]), min(t[-1], t2[-1])
            grid = np.linspace(lo, hi, 200) if hi > lo else np.array([lo])
            gap = np.abs(np.interp(grid, t, y) - np.interp(grid, t2, y2))
            close = gap <= tolerance * max(span, 1e-12)
            if close.all():
                out.setdefault(name, []).append((later, True))
            elif close.mean() >= 0.9:  # on top of it for 90% of the time
                out.setdefault(name, []).append((later, False))
    return out


def _binned(t, y, bins: int = 400, how: str = "mean"):
    """At most `bins` points per line: a long replay sampled every 0.5 s has thousands, whose
    spikes hide each other. Per bin: the mean (pinned memory) or the last value (a cumulative rate)."""
    import numpy as np

    if len(t) <= bins:
        return t, y
    edges = np.linspace(t[0], t[-1], bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    keep = np.unique(idx)
    if how == "last":
        last = np.searchsorted(idx, keep, side="right") - 1
        return t[last], y[last]
    sums = np.bincount(idx, weights=y, minlength=bins)[keep]
    counts = np.bincount(idx, minlength=bins)[keep]
    return (edges[keep] + edges[keep + 1]) / 2, sums / counts


def plots(results: dict[str, dict[str, Any]], series: dict[str, dict[str, list]], out_dir: str | Path,
          title: str, baseline: str | None = None) -> list[Path]:
    """PNG files: JCT CDF; GPU hit rate and pinned memory over time; per-policy bars with values
    and the ratio to the baseline (default: `sglang`, else `lru`); TTFT and JCT p50/p95/p99 per policy."""
    if baseline is None:
        baseline = "sglang" if "sglang" in results else "lru"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(results)
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    styles = {n: _STYLES[i % len(_STYLES)] for i, n in enumerate(names)}
    files = []

    def line(ax, name, x, y, label):
        ls, marker = styles[name]
        ax.plot(x, y, label=label, color=colors[name], linestyle=ls, marker=marker, markevery=max(1, len(x) // 8),
                markersize=5, linewidth=1.6)

    # JCT CDF
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cdfs = {}
    for name in names:
        jct = np.sort(np.asarray(series[name]["jct_s"]))
        cdfs[name] = (jct, np.arange(1, len(jct) + 1) / max(1, len(jct)))
    hidden = _hidden_under(names, cdfs)
    for name in names:
        if len(cdfs[name][0]):
            line(ax, name, *cdfs[name], _legend(name, hidden))
    ax.set_xlabel("job completion time (s)")
    ax.set_ylabel("share of programs")
    ax.set_title(f"JCT CDF: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "jct_cdf.png"))

    # cache over time
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    hits, pins = {}, {}
    for name in names:
        s = series[name]["timeline"]
        t, hit, pinned = (np.asarray(x) for x in zip(*s)) if s else (np.array([]),) * 3
        hits[name], pins[name] = _binned(t, hit, how="last"), _binned(t, pinned, how="mean")
    binned = any(len(series[n]["timeline"]) > 400 for n in names)
    for ax, curves, what in ((a1, hits, "hit rate"), (a2, pins, "pinned KV")):
        shown = [n for n in names if curves is not pins or np.any(curves[n][1])]
        hidden = _hidden_under(shown, {n: curves[n] for n in shown})
        drawn = False
        for name in names:
            t, y = curves[name]
            if not len(t):
                continue
            if curves is pins and not np.any(y):
                continue  # never pins: named in the legend note below, not drawn as a line at 0
            line(ax, name, t, y, _legend(name, hidden))
            drawn = True
        never = [n for n in names if curves is pins and len(curves[n][0]) and not np.any(curves[n][1])]
        if curves is pins and never:
            ax.plot([], [], " ", label=f"no pins: {', '.join(never)}")
        if drawn:
            ax.legend(fontsize=8, loc="best")
        else:
            _none(ax, "none: no policy pinned any KV" if curves is pins else "none: no samples")
            if never:
                ax.legend(fontsize=8, loc="upper right")
    a1.set_ylabel("GPU prefix hit rate (cumulative)")
    a2.set_ylabel("pinned KV (GiB" + (", mean per bin)" if binned else ")"))
    a2.set_xlabel("simulated time (s)")
    a1.set_title(f"Cache over time: {title}")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    files.append(_save(fig, out / "cache_over_time.png"))

    # per-policy bars: the value on each bar, and its ratio to the baseline
    base = baseline if baseline in results else None
    metrics = [("jct_mean_s", "mean JCT (s)", "{:.1f}"), ("ttft_mean_s", "mean TTFT (s)", "{:.2f}"),
               ("recomputed_prefill_tokens", "recomputed prefill tokens", "{:,.0f}"),
               ("prefix_hit_rate", "GPU prefix hit rate", "{:.1%}")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4.2))
    for ax, (key, label, fmt) in zip(axes, metrics):
        vals = [float(results[n][key]) for n in names]
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        if not any(vals):
            ax.set_xticks(range(len(names)), names)
            _none(ax, "none (0 for every policy)")
            continue
        bars = ax.bar(names, vals, color=[colors[n] for n in names])
        texts = []
        for n, v in zip(names, vals):
            t = fmt.format(v)
            if base is not None and n != base:
                b = float(results[base][key])
                t += f"\n{v / b:.2f}x {base}" if b else ""
            texts.append(t)
        ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
        ax.set_ylim(0, max(vals) * 1.25)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title + (f" (ratios: value / {base}'s)" if base else ""))
    files.append(_save(fig, out / "policies.png"))

    # tail latency: TTFT and JCT p50/p95/p99 per policy
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(PERCENTILES)
    shades = {50: 0.45, 95: 0.75, 99: 1.0}
    for ax, key, label in ((axes[0], "ttft_s", "TTFT (s)"), (axes[1], "jct_s", "JCT (s)")):
        ps = {n: percentiles(series[n].get(key, [])) for n in names}
        if not any(v for d in ps.values() for v in d.values()):
            ax.set_title(label)
            _none(ax, "none recorded")
            continue
        x = np.arange(len(names))
        for j, p in enumerate(PERCENTILES):
            vals = [ps[n][p] for n in names]
            bars = ax.bar(x + (j - 1) * width, vals, width, label=f"p{p}", alpha=shades[p],
                          color=[colors[n] for n in names], edgecolor="black", linewidth=0.4,
                          hatch={50: "", 95: "//", 99: "xx"}[p])
            ax.bar_label(bars, labels=[_short(v) for v in vals], fontsize=6, padding=1, rotation=90)
        ax.set_xticks(x, names, rotation=30)
        every = [v for d in ps.values() for v in d.values()]
        top, low = max(every), min((v for v in every if v > 0), default=0.0)
        if low > 0 and top / low > 20:  # a tail 20x the median: a log axis keeps both readable
            ax.set_yscale("log")
            ax.set_ylim(low / 2, top * 4)
            scale = " (log scale)"
        else:
            ax.set_ylim(0, top * 1.2)
            scale = ""
        ax.set_title(f"{label}: p50 / p95 / p99{scale}", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Latency percentiles: {title}")
    files.append(_save(fig, out / "latency_percentiles.png"))
    return files


def _legend(name: str, hidden: dict[str, list[tuple[str, bool]]]) -> str:
    full = [o for o, everywhere in hidden.get(name, []) if everywhere]
    most = [o for o, everywhere in hidden.get(name, []) if not everywhere]
    notes = ([f"hidden under {', '.join(full)}"] if full else []) + ([f"mostly under {', '.join(most)}"] if most else [])
    return f"{name} ({'; '.join(notes)})" if notes else name


def _short(v: float) -> str:
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def _none(ax, text: str) -> None:
    """An empty panel says so, instead of an axis from -0.04 to 0.04."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.35")
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
