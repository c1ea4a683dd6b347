"""Calibration of the GPU cost model: operator work, the curve fit, the shipped coefficients.

What is measured. Microsoft vidur profiled, on real GPUs, every operator of one transformer layer
except attention (`../shared/calibration/vidur`, MIT): RMSNorm x2, the QKV projection, RoPE, the
output projection, the gated-MLP up projection (gate and up fused, 2 x intermediate wide), SiLU-and-
multiply, the down projection, the residual add, and the embedding lookup, at 259-451 token counts
and tensor-parallel degrees 1, 2, 4, 8; H100 for Llama-2-7B and -70B, A100 for Llama-3-8B and -70B.
It also measured NCCL send/recv between two H100s of one DGX node (NVLink).

The curve. Each operator's median time is fitted, per GPU and per operator, as a smooth roofline

    t = t0 + (tf^k + tb^k)^(1/k),   tf = flops * s_per_flop,   tb = bytes * s_per_byte

where flops and bytes are what the operator must do on one GPU for `num_tokens` tokens at that
tensor-parallel degree (`op_work`, from the layer's shapes: a GEMM [M x K] @ [K x N] does 2MKN flops
and moves 2(KN + MK + MN) bytes in bf16). Small batches are bound by the weight read, large ones by
the flops, t0 is the kernel's floor, and k (fitted, 1 < k) sets how sharp the corner between the two
is (k = 1 adds them, k -> inf takes the larger). Element-wise operators have no flops term. Fitting
on work rather than on `num_tokens` is what lets a curve move to shapes that were not measured
(Llama-3.1-8B on H100: vidur measured Llama-2 there) and to the LM head, which vidur did not profile
(it takes the curve pooled over the four GEMMs). The fit minimises squared relative error
(t_pred / t_meas - 1) with Nelder-Mead on log-coefficients; each power-of-two bucket of
`num_tokens` weighs the same, because vidur sampled large batches densely (every 32 tokens) and
small ones sparsely (1, 2, 4, 8, 16), and decode steps live at the small end.

The data. The fitted coefficients (numbers only, with their source named) ship in
`data/vidur_coefficients.json` so the project runs without ../shared; `scripts/fit_cost_model.py`
regenerates that file from the CSVs and prints the fit error, which the file also records.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

COEFFICIENTS_FORMAT = "agentflow.vidur-coefficients"
COEFFICIENTS_VERSION = 1
BF16_BYTES = 2

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")
LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
MEASURED_OPS = LAYER_OPS + ("emb",)  # emb runs once per forward, not per layer
POOLED_GEMM = "gemm"  # the curve fitted on all four GEMMs; the LM head uses it


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """The shapes of a Llama-style decoder (bf16)."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    num_params: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# What vidur measured (shapes from the models' config.json; vidur's CSVs pad Llama-2's vocabulary).
MEASURED_MODELS = {
    "Llama-2-7b-hf": ModelShape(name="Llama-2-7b-hf", num_layers=32, hidden_size=4096,
                                intermediate_size=11008, num_heads=32, num_kv_heads=32,
                                vocab_size=32000, num_params=6_738_415_616),
    "Llama-2-70b-hf": ModelShape(name="Llama-2-70b-hf", num_layers=80, hidden_size=8192,
                                 intermediate_size=28672, num_heads=64, num_kv_heads=8,
                                 vocab_size=32000, num_params=68_976_648_192),
    "Meta-Llama-3-8B": ModelShape(name="Meta-Llama-3-8B", num_layers=32, hidden_size=4096,
                                  intermediate_size=14336, num_heads=32, num_kv_heads=8,
                                  vocab_size=128256, num_params=8_030_261_248),
    "Meta-Llama-3-70B": ModelShape(name="Meta-Llama-3-70B", num_layers=80, hidden_size=8192,
                                   intermediate_size=28672, num_heads=64, num_kv_heads=8,
                                   vocab_size=128256, num_params=70_553_706_496),
}
# (gpu, model) -> CSV under the vidur folder.
MEASURED_FILES = {
    ("h100", "Llama-2-7b-hf"): "compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv",
    ("h100", "Llama-2-70b-hf"): "compute/h100/meta-llama/Llama-2-70b-hf/mlp.csv",
    ("a100", "Meta-Llama-3-8B"): "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv",
    ("a100", "Meta-Llama-3-70B"): "compute/a100/meta-llama/Meta-Llama-3-70B/mlp.csv",
}
SEND_RECV_FILE = "network/h100_dgx/send_recv.csv"


def gemm_dims(op: str, shape: ModelShape, tp: int) -> tuple[int, int]:
    """(K, N) of a GEMM on one GPU: column-parallel layers split N, row-parallel ones split K."""
    h, d = shape.hidden_size, shape.head_dim
    if op == "attn_pre_proj":
        return h, (shape.num_heads + 2 * shape.num_kv_heads) * d // tp
    if op == "attn_post_proj":
        return shape.num_heads * d // tp, h
    if op == "mlp_up_proj":
        return h, 2 * shape.intermediate_size // tp
    if op == "mlp_down_proj":
        return shape.intermediate_size // tp, h
    if op == "lm_head":
        return h, -(-shape.vocab_size // tp)
    raise ValueError(f"not a GEMM: {op!r}; valid: {', '.join(GEMM_OPS + ('lm_head',))}")


def op_work(op: str, shape: ModelShape, tp: int, num_tokens):
    """(flops, bytes) of one operator on one GPU for `num_tokens` tokens (scalars or arrays)."""
    m = np.asarray(num_tokens, dtype=float)
    b = BF16_BYTES
    if op in GEMM_OPS or op == "lm_head":
        k, n = gemm_dims(op, shape, tp)
        return 2.0 * m * k * n, b * (k * n + m * k + m * n)
    h = shape.hidden_size
    if op in ("input_layernorm", "post_attention_layernorm", "emb"):  # read + write a row
        nbytes = 2 * b * m * h
    elif op == "attn_rope":  # read + write q and k
        nbytes = 2 * b * m * (shape.num_heads + shape.num_kv_heads) * shape.head_dim / tp
    elif op == "mlp_act":  # read gate and up, write their product
        nbytes = 3 * b * m * shape.intermediate_size / tp
    elif op == "add":  # two reads, one write
        nbytes = 3 * b * m * h
    else:
        raise ValueError(f"unknown operator {op!r}; valid: {', '.join(MEASURED_OPS + ('lm_head',))}")
    return np.zeros_like(m), nbytes


@dataclass(frozen=True, slots=True, kw_only=True)
class OpCurve:
    """t = t0_s + ((flops * s_per_flop)^k + (bytes * s_per_byte)^k)^(1/k)."""

    t0_s: float
    s_per_flop: float
    s_per_byte: float
    k: float = 1.0

    def time_s(self, flops, nbytes):
        tf = np.asarray(flops, dtype=float) * self.s_per_flop
        tb = np.asarray(nbytes, dtype=float) * self.s_per_byte
        if not self.s_per_flop:
            return self.t0_s + tb
        return self.t0_s + (tf**self.k + tb**self.k) ** (1.0 / self.k)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuCalibration:
    """The fitted curves of one GPU type, plus its NCCL point-to-point fit where measured."""

    gpu: str
    fitted_on: tuple[str, ...]
    curves: Mapping[str, OpCurve]  # MEASURED_OPS + POOLED_GEMM
    p2p_latency_s: float | None = None
    p2p_bytes_per_s: float | None = None

    def op_time_s(self, op: str, shape: ModelShape, tp: int, num_tokens):
        curve = self.curves[POOLED_GEMM if op == "lm_head" else op]
        return curve.time_s(*op_work(op, shape, tp, num_tokens))

    def layer_time_s(self, shape: ModelShape, tp: int, num_tokens):
        return sum(self.op_time_s(op, shape, tp, num_tokens) for op in LAYER_OPS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    source: Mapping[str, str]
    gpus: Mapping[str, GpuCalibration]
    fit_error: tuple[Mapping, ...] = ()
    holdout_error: tuple[Mapping, ...] = ()

    def gpu(self, name: str) -> GpuCalibration:
        if name not in self.gpus:
            raise ValueError(f"no calibration for GPU {name!r}; valid: {', '.join(sorted(self.gpus))}")
        return self.gpus[name]


# ---- measurements ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasuredSet:
    """One vidur CSV: median times (seconds) per operator, one entry per profiled row."""

    gpu: str
    shape: ModelShape
    tp: np.ndarray
    num_tokens: np.ndarray
    median_s: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.gpu}/{self.shape.name}"


def read_measured_set(path: str | Path, *, gpu: str, model: str) -> MeasuredSet:
    """Read one vidur operator CSV, checking that its shape columns are the model's."""
    shape = MEASURED_MODELS[model]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        got = (int(r["n_head"]), int(r["n_kv_head"]), int(r["n_embd"]), int(r["n_expanded_embd"]))
        want = (shape.num_heads, shape.num_kv_heads, shape.hidden_size, shape.intermediate_size)
        if got != want:
            raise ValueError(f"{path}: row shape {got} is not {model}'s {want}")
    return MeasuredSet(
        gpu=gpu, shape=shape,
        tp=np.array([int(r["num_tensor_parallel_workers"]) for r in rows]),
        num_tokens=np.array([int(r["num_tokens"]) for r in rows]),
        median_s={op: np.array([float(r[f"time_stats.{op}.median"]) * 1e-3 for r in rows])
                  for op in MEASURED_OPS},
    )


def read_send_recv(path: str | Path, *, devices_per_node: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, median seconds) of vidur's NCCL send/recv; devices_per_node=2 is intra-node NVLink."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["devices_per_node"]) == devices_per_node]
    return (np.array([float(r["size"]) for r in rows]),  # vidur records bytes (elements x 2)
            np.array([float(r["time_stats.send_recv.median"]) * 1e-3 for r in rows]))


def load_measured(vidur_dir: str | Path) -> list[MeasuredSet]:
    root = Path(vidur_dir)
    return [read_measured_set(root / rel, gpu=gpu, model=model)
            for (gpu, model), rel in MEASURED_FILES.items()]


# ---- fitting --------------------------------------------------------------------------------


def fit_relative(columns: Sequence[np.ndarray], t: np.ndarray) -> np.ndarray:
    """Non-negative c minimising sum((X c / t - 1)^2), X = [1, *columns] (linear least squares)."""
    x = np.column_stack([np.ones_like(t), *columns]) / t[:, None]
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    x = x / scale
    active = list(range(x.shape[1]))
    while True:
        c_active, *_ = np.linalg.lstsq(x[:, active], np.ones_like(t), rcond=None)
        if (c_active >= 0).all():
            break
        del active[int(np.argmin(c_active))]
    c = np.zeros(x.shape[1])
    c[active] = c_active
    return c / scale


def _nelder_mead(f, x0: np.ndarray, *, step: float, iters: int = 4000, tol: float = 1e-13) -> np.ndarray:
    """Plain Nelder-Mead (reflect 1, expand 2, contract 1/2, shrink 1/2); deterministic."""
    simplex = [x0] + [x0 + step * e for e in np.eye(len(x0))]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if values[-1] - values[0] < tol:
            break
        centre = np.mean(simplex[:-1], axis=0)
        reflected = centre + (centre - simplex[-1])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centre + 2.0 * (centre - simplex[-1])
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centre + 0.5 * (simplex[-1] - centre)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


# Nelder-Mead works on log(t0 / 1us), log(s_per_flop * 1e15), log(s_per_byte * 1e12), log(k - 1).
_UNITS = np.array([1e-6, 1e-15, 1e-12])


def _curve(theta: np.ndarray) -> OpCurve:
    t0, per_flop, per_byte = np.exp(theta[:3]) * _UNITS
    k = 1.0 + float(np.exp(theta[3])) if len(theta) > 3 else 1.0
    return OpCurve(t0_s=float(t0), s_per_flop=float(per_flop) if len(theta) > 3 else 0.0,
                   s_per_byte=float(per_byte), k=k)


def fit_curve(flops: np.ndarray, nbytes: np.ndarray, t: np.ndarray,
              weight: np.ndarray | None = None) -> OpCurve:
    """The curve minimising the weighted mean squared relative error."""
    w = np.ones_like(t) if weight is None else weight
    has_flops = bool(flops.any())

    def loss(theta):
        return float(np.sum(w * (_curve(theta).time_s(flops, nbytes) / t - 1.0) ** 2) / w.sum())

    if has_flops:  # start near a Hopper/Ampere GEMM: 5 us floor, ~1000 TFLOP/s, ~3 TB/s; k from 1.4-3
        starts = [np.log([5.0, 1.0, 0.3, k1]) for k1 in (0.4, 1.0, 2.0)]
    else:
        t0, per_byte = fit_relative([nbytes], t)  # the linear fit is the starting point
        starts = [np.log([max(t0, 1e-7) / 1e-6, 1.0, max(per_byte, 1e-16) / 1e-12])]
    best = None
    for start in starts:
        theta = _nelder_mead(loss, start, step=0.5)
        theta = _nelder_mead(loss, theta, step=0.1)
        if best is None or loss(theta) < loss(best):
            best = theta
    return _curve(best)


def _bucket_weights(num_tokens: np.ndarray) -> np.ndarray:
    """1 / (rows in the same power-of-two bucket of num_tokens): each bucket weighs the same."""
    bucket = np.floor(np.log2(num_tokens)).astype(int)
    _, inverse, counts = np.unique(bucket, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def _work_and_times(sets: Iterable[MeasuredSet], ops: Sequence[str]):
    fl, nb, t, w = [], [], [], []
    for s in sets:
        for op in ops:
            for tp in np.unique(s.tp):
                sel = s.tp == tp
                f, b = op_work(op, s.shape, int(tp), s.num_tokens[sel])
                fl.append(np.broadcast_to(f, b.shape))
                nb.append(b)
                t.append(s.median_s[op][sel])
                w.append(_bucket_weights(s.num_tokens[sel]))
    return np.concatenate(fl), np.concatenate(nb), np.concatenate(t), np.concatenate(w)


def fit_gpu(gpu: str, sets: Sequence[MeasuredSet]) -> GpuCalibration:
    """Per-operator curves on every set of this GPU, plus the pooled GEMM curve."""
    sets = [s for s in sets if s.gpu == gpu]
    if not sets:
        raise ValueError(f"no measured sets for GPU {gpu!r}")
    curves = {op: fit_curve(*_work_and_times(sets, [op])) for op in MEASURED_OPS}
    curves[POOLED_GEMM] = fit_curve(*_work_and_times(sets, GEMM_OPS))
    return GpuCalibration(gpu=gpu, fitted_on=tuple(s.shape.name for s in sets), curves=curves)


def fit_p2p(nbytes: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(latency_s, bytes_per_s) of t = latency + bytes / bandwidth (linear, relative error)."""
    latency, per_byte = fit_relative([nbytes], t)
    return float(latency), float(1.0 / per_byte)


# ---- fit error ------------------------------------------------------------------------------


def _abs_pct(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(pred / meas - 1.0) * 100.0


SMALL_BATCH_TOKENS = 128  # decode-sized batches: the signed per-layer error here is reported apart


def set_errors(cal: GpuCalibration, s: MeasuredSet, *, label: str = "fit") -> list[dict]:
    """Per (model, GPU, TP): mean and p95 absolute % error of per-op and per-layer times, and the
    mean signed per-layer error at <= SMALL_BATCH_TOKENS tokens (the decode regime's bias)."""
    out = []
    for tp in np.unique(s.tp):
        sel = s.tp == tp
        m = s.num_tokens[sel]
        op_err = np.concatenate([_abs_pct(cal.op_time_s(op, s.shape, int(tp), m), s.median_s[op][sel])
                                 for op in MEASURED_OPS])
        layer_meas = sum(s.median_s[op][sel] for op in LAYER_OPS)
        layer_signed = (cal.layer_time_s(s.shape, int(tp), m) / layer_meas - 1.0) * 100.0
        layer_err = np.abs(layer_signed)
        out.append({
            "kind": label, "gpu": s.gpu, "model": s.shape.name, "tp": int(tp),
            "fitted_on": list(cal.fitted_on), "rows": int(sel.sum()),
            "op_mean_pct": round(float(op_err.mean()), 2),
            "op_p95_pct": round(float(np.percentile(op_err, 95)), 2),
            "layer_mean_pct": round(float(layer_err.mean()), 2),
            "layer_p95_pct": round(float(np.percentile(layer_err, 95)), 2),
            "layer_max_pct": round(float(layer_err.max()), 2),
            "layer_small_batch_bias_pct": round(float(layer_signed[m <= SMALL_BATCH_TOKENS].mean()), 2),
        })
    return out


# ---- the shipped file -----------------------------------------------------------------------


def calibration_to_json(cal: Calibration) -> dict:
    return {
        "format": COEFFICIENTS_FORMAT, "version": COEFFICIENTS_VERSION,
        "source": dict(cal.source),
        "curve": "t_s = t0_s + ((flops * s_per_flop)^k + (bytes * s_per_byte)^k)^(1/k), per GPU and "
                 "operator; flops and bytes per GPU from op_work() in calibration.py",
        "gpus": {name: {
            "fitted_on": list(g.fitted_on),
            "p2p_latency_s": g.p2p_latency_s, "p2p_bytes_per_s": g.p2p_bytes_per_s,
            "curves": {op: {"t0_s": c.t0_s, "s_per_flop": c.s_per_flop, "s_per_byte": c.s_per_byte,
                             "k": c.k}
                       for op, c in g.curves.items()},
        } for name, g in cal.gpus.items()},
        "fit_error": [dict(r) for r in cal.fit_error],
        "holdout_error": [dict(r) for r in cal.holdout_error],
    }


def calibration_from_json(raw: Mapping, *, name: str = "<json>") -> Calibration:
    if raw.get("format") != COEFFICIENTS_FORMAT or raw.get("version") != COEFFICIENTS_VERSION:
        raise ValueError(f"{name}: not a {COEFFICIENTS_FORMAT} v{COEFFICIENTS_VERSION} file")
    gpus = {}
    for gname, g in raw["gpus"].items():
        curves = {op: OpCurve(**c) for op, c in g["curves"].items()}
        missing = set(MEASURED_OPS + (POOLED_GEMM,)) - set(curves)
        if missing:
            raise ValueError(f"{name}: gpus.{gname}.curves lacks {', '.join(sorted(missing))}")
        gpus[gname] = GpuCalibration(gpu=gname, fitted_on=tuple(g["fitted_on"]), curves=curves,
                                     p2p_latency_s=g.get("p2p_latency_s"),
                                     p2p_bytes_per_s=g.get("p2p_bytes_per_s"))
    return Calibration(source=raw["source"], gpus=gpus, fit_error=tuple(raw.get("fit_error", ())),
                       holdout_error=tuple(raw.get("holdout_error", ())))


@cache
def load_calibration() -> Calibration:
    """The coefficients shipped in the package (data/vidur_coefficients.json)."""
    text = resources.files("agentflow.runtime.engines.sim").joinpath(
        "data/vidur_coefficients.json").read_text(encoding="utf-8")
    return calibration_from_json(json.loads(text), name="data/vidur_coefficients.json")


def effective_rates(curve: OpCurve) -> dict[str, float]:
    """A curve in readable units: floor in us, effective TFLOP/s and TB/s (inf where unused)."""
    return {"t0_us": curve.t0_s * 1e6,
            "tflops": 1e-12 / curve.s_per_flop if curve.s_per_flop else math.inf,
            "tb_per_s": 1e-12 / curve.s_per_byte if curve.s_per_byte else math.inf}
