"""`agentflow replay --sweep`: JCT against load for each policy, and capacity at SLO, as a plot.

    closed loop   concurrency at 1/4, 1/2, 1 and 2 x the default (2x the KV pool in flight)
    open loop     Poisson rates at 1/4 ... 5/4 of the baseline's saturation (its closed-loop throughput)
    capacity      per policy, the highest rate with p95 JCT <= 2 x the unloaded p95 (load.capacity_at_slo)

The plot has two panels: mean and p95 JCT against closed-loop concurrency, and p95 JCT against the
open-loop rate with the SLO as a line and each policy's capacity marked on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from agentflow.runtime.replay.load import RunSpec, capacity_at_slo, run_many, run_one

CLOSED_FACTORS = (0.25, 0.5, 1.0, 2.0)
OPEN_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25)


def sweep(base: RunSpec, policies: Sequence[str], *, default_concurrency: int, processes: int | None = None,
          capacity_steps: int = 4, progress: Callable[[], None] | None = None) -> dict:
    closed = [replace(base, policy=p, concurrency=max(1, round(default_concurrency * f)), rate_per_s=None,
                      tag=f"closed x{f}") for f in CLOSED_FACTORS for p in policies]
    sat = run_one(replace(base, policy="sglang", concurrency=default_concurrency, rate_per_s=None))
    rate0 = sat["throughput_programs_per_min"] / 60.0
    opened = [replace(base, policy=p, rate_per_s=rate0 * f, concurrency=None, tag=f"open x{f}")
              for f in OPEN_FACTORS for p in policies]

    def tick(_spec, _res):
        if progress:
            progress()

    res = run_many(closed + opened, processes=processes, on_done=tick)
    cap = capacity_at_slo(base, policies, steps=capacity_steps, processes=processes, progress=progress)
    rows = []
    for s, r in zip(closed + opened, res):
        rows.append({"policy": s.policy, "loop": "closed" if s.rate_per_s is None else "open",
                     "concurrency": s.concurrency, "rate_per_min": s.rate_per_s * 60 if s.rate_per_s else None,
                     "jct_mean_s": r["jct_mean_s"], "jct_p95_s": r["jct_p95_s"],
                     "ttft_after_first_p99_s": r["ttft_after_first_p99_s"], "start_wait_p99_s": r["start_wait_p99_s"],
                     "throughput_programs_per_min": r["throughput_programs_per_min"]})
    return {"runs": rows, "slo_p95_s": next(iter(cap.values())).slo_p95_s,
            "capacity_per_min": {p: c.rate_per_s * 60 for p, c in cap.items()},
            "saturation_per_min": rate0 * 60}


def plot(doc: dict, out_dir: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = doc["runs"]
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    colors = dict(zip(policies, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    markers = dict(zip(policies, "osD^vP*X"))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for p in policies:
        cl = sorted((r for r in runs if r["policy"] == p and r["loop"] == "closed"), key=lambda r: r["concurrency"])
        x = [r["concurrency"] for r in cl]
        a1.plot(x, [r["jct_mean_s"] for r in cl], marker=markers[p], color=colors[p], label=f"{p} mean")
        a1.plot(x, [r["jct_p95_s"] for r in cl], marker=markers[p], color=colors[p], linestyle="--", alpha=0.7,
                label=f"{p} p95")
        op = sorted((r for r in runs if r["policy"] == p and r["loop"] == "open"), key=lambda r: r["rate_per_min"])
        a2.plot([r["rate_per_min"] for r in op], [r["jct_p95_s"] for r in op], marker=markers[p], color=colors[p],
                label=p)
        c = doc["capacity_per_min"].get(p, 0.0)
        if c > 0:
            a2.axvline(c, color=colors[p], linestyle=":", alpha=0.8)
            a2.text(c, 0.03, f" {p}: {c:.2f}/min", transform=a2.get_xaxis_transform(), rotation=90, va="bottom",
                    ha="right", fontsize=8, color=colors[p])
    a2.axhline(doc["slo_p95_s"], color="black", linewidth=1, label=f"SLO: p95 {doc['slo_p95_s']:.0f} s")
    a1.set_xlabel("programs in flight (closed loop)")
    a1.set_ylabel("JCT (s)")
    a1.set_title("JCT vs concurrency")
    a2.set_xlabel("arrival rate (programs/min, Poisson)")
    a2.set_ylabel("p95 JCT (s)")
    a2.set_title("p95 JCT vs rate; dotted: capacity at SLO")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = out / "jct_vs_load.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["CLOSED_FACTORS", "OPEN_FACTORS", "plot", "sweep"]
