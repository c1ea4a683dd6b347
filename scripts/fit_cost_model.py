#!/usr/bin/env python
"""Regenerate runtime/engines/sim/data/vidur_coefficients.json from vidur's measured operator times.

    python scripts/fit_cost_model.py                      # reads ../shared/calibration/vidur
    python scripts/fit_cost_model.py --vidur DIR --out FILE
    python scripts/fit_cost_model.py --check              # fit, print, and fail if the shipped file differs

Prints the fit error (per model, GPU and tensor-parallel degree; in-sample and leave-one-model-out)
as the Markdown tables that docs/cost-model.md carries. See calibration.py for the method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agentflow.runtime.engines.sim import calibration as cal

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDUR = ROOT.parent / "shared" / "calibration" / "vidur"
DEFAULT_OUT = ROOT / "runtime" / "engines" / "sim" / "data" / "vidur_coefficients.json"


def build(vidur: Path) -> cal.Calibration:
    sets = cal.load_measured(vidur)
    gpus = {gpu: cal.fit_gpu(gpu, sets) for gpu in sorted({s.gpu for s in sets})}
    latency, bandwidth = cal.fit_p2p(*cal.read_send_recv(vidur / cal.SEND_RECV_FILE))
    h100 = gpus["h100"]
    gpus["h100"] = cal.GpuCalibration(gpu=h100.gpu, fitted_on=h100.fitted_on, curves=h100.curves,
                                      p2p_latency_s=latency, p2p_bytes_per_s=bandwidth)
    fit_error = [row for s in sets for row in cal.set_errors(gpus[s.gpu], s)]
    holdout = []
    for s in sets:  # predict each model from a fit on the other model of the same GPU only
        others = [o for o in sets if o.gpu == s.gpu and o is not s]
        holdout += cal.set_errors(cal.fit_gpu(s.gpu, others), s, label="holdout")
    commit = (vidur / "COMMIT").read_text().strip() if (vidur / "COMMIT").exists() else "unknown"
    source = {
        "name": "microsoft/vidur profiling data", "commit": commit,
        "licence": "MIT, Copyright (c) Microsoft Corporation",
        "url": "https://github.com/microsoft/vidur",
        "files": ", ".join(sorted(cal.MEASURED_FILES.values()) + [cal.SEND_RECV_FILE]),
        "note": "numbers only: coefficients fitted to vidur's median operator times by "
                "scripts/fit_cost_model.py",
    }
    return cal.Calibration(source=source, gpus=gpus, fit_error=tuple(fit_error),
                           holdout_error=tuple(holdout))


def error_table(rows) -> str:
    lines = ["| set | fitted on | TP | rows | per-op mean % | per-op p95 % | per-layer mean % "
             "| per-layer p95 % | per-layer max % | per-layer bias at <= 128 tokens % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['gpu']} {r['model']} | {' + '.join(r['fitted_on'])} | {r['tp']} | {r['rows']} "
                     f"| {r['op_mean_pct']:.1f} | {r['op_p95_pct']:.1f} | {r['layer_mean_pct']:.1f} "
                     f"| {r['layer_p95_pct']:.1f} | {r['layer_max_pct']:.1f} "
                     f"| {r['layer_small_batch_bias_pct']:+.1f} |")
    return "\n".join(lines)


def curve_table(c: cal.Calibration) -> str:
    lines = ["| GPU | operator | t0 (us) | effective TFLOP/s | effective TB/s | k |",
             "|---|---|---:|---:|---:|---:|"]
    for gname, g in c.gpus.items():
        for op, curve in g.curves.items():
            r = cal.effective_rates(curve)
            lines.append(f"| {gname} | {op} | {r['t0_us']:.1f} | {r['tflops']:.0f} | {r['tb_per_s']:.2f} "
                         f"| {curve.k:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vidur", type=Path, default=DEFAULT_VIDUR)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if --out differs")
    args = ap.parse_args(argv)
    if not args.vidur.is_dir():
        print(f"fit_cost_model: no vidur data at {args.vidur}", file=sys.stderr)
        return 2
    c = build(args.vidur)
    text = json.dumps(cal.calibration_to_json(c), indent=1) + "\n"
    print("## Fitted curves\n\n" + curve_table(c))
    h = c.gpus["h100"]
    print(f"\nH100 NVLink send/recv: latency {h.p2p_latency_s * 1e6:.2f} us, "
          f"bandwidth {h.p2p_bytes_per_s / 1e9:.0f} GB/s")
    print("\n## Fit error (in-sample)\n\n" + error_table(c.fit_error))
    print("\n## Leave-one-model-out\n\n" + error_table(c.holdout_error))
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"\n{args.out}: {'up to date' if same else 'DIFFERS'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
