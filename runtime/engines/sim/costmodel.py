"""The GPU cost model of a simulated SGLang worker: one batch iteration's time, KV geometry, transfers.

One iteration (see interfaces.py) runs a prefill chunk and one decode step together, on
`m = prefill_tokens + decode_seqs` tokens. Its time is

    layers x (the nine measured per-layer operators on m tokens)     measured: vidur curves
  + layers x (2 all-reduces of m x hidden bf16, when TP > 1)         measured: vidur send/recv, H100
  + embedding on m tokens                                            measured: vidur curve
  + LM head + final norm + sampling on the sequences that sample     derived: pooled GEMM curve
  + layers x prefill attention (causal, over the chunk's context)    derived: FLOPs / (peak x eff)
  + layers x decode attention (read every decoding sequence's KV)    derived: bytes / (HBM x eff)
  + a fixed per-iteration overhead (scheduler, launch, sync)         assumed

"Measured" terms come from curves fitted to Microsoft vidur's operator profiles (calibration.py;
the coefficients ship in data/vidur_coefficients.json). vidur has no attention measurements, so
attention is a roofline on the GPU's datasheet figures with stated efficiencies; every constant here
is listed, with its source, in docs/cost-model.md.

Prefill attention, one sequence: a chunk of P new tokens after C - P cached ones attends causally to
P x (C - P/2) (query, key) pairs, 4 x heads x head_dim flops each (QK^T and PV). A chunk holding
several sequences (`prefill_seqs`, interfaces.py) is priced sequence by sequence: each attends only to
its own context (one varlen kernel per layer, so one launch floor). Without `prefill_seqs` the chunk
is one sequence of the summed lengths, exact for one sequence; for k sequences that would count the
cross terms, e.g. two 1000-token chunks over 5000 and 1000 tokens priced as 2000 over 6000: twice the
pairs.

Memory follows SGLang: the KV pool is what `mem_fraction_static` of the GPU leaves after the weights
(`model_runner.profile_max_num_token`), with `mem_fraction_static` from SGLang's own heuristic; the
host tier is HiCache's default `hicache_ratio` (2.0) times the device pool.

Hot path. The simulator calls `iteration_time_s` for every batch, so the token-count-dependent part
(the linear layers, all-reduces, embedding and LM head) is tabulated once per model for every m up to
a chunk plus a full decode batch; attention is a few float operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from agentflow.runtime.engines.sim.calibration import (
    LAYER_OPS, Calibration, GpuCalibration, ModelShape, load_calibration)

MIB = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSpec:
    """Datasheet figures of one GPU (dense bf16, no sparsity) and its links."""

    name: str
    calibration: str  # key of the fitted curves in the coefficients file
    peak_bf16_flops: float
    hbm_bytes_per_s: float
    memory_mib: int  # as nvidia-smi reports it; SGLang sizes its memory from this figure
    pcie_bytes_per_s: float  # effective, per direction, per GPU (its own x16 link)
    nvlink_bytes_per_s: float  # nominal, per direction, per GPU


H100_SXM = GpuSpec(name="H100 SXM 80GB", calibration="h100", peak_bf16_flops=989.4e12,
                   hbm_bytes_per_s=3.35e12, memory_mib=81559, pcie_bytes_per_s=50e9,
                   nvlink_bytes_per_s=450e9)
A100_SXM = GpuSpec(name="A100 SXM 80GB", calibration="a100", peak_bf16_flops=312e12,
                   hbm_bytes_per_s=2.039e12, memory_mib=81920, pcie_bytes_per_s=25e9,
                   nvlink_bytes_per_s=300e9)


@dataclass(frozen=True, slots=True, kw_only=True)
class Assumptions:
    """The constants that are not fitted to measurements (sources in docs/cost-model.md)."""

    prefill_attention_flops_efficiency: float = 0.5  # of peak dense bf16 (FlashAttention-3/-2 range)
    decode_attention_bandwidth_efficiency: float = 0.7  # of peak HBM bandwidth (paged decode kernels)
    attention_kernel_floor_s: float = 5e-6  # per layer, per attention kernel launched
    sampling_bandwidth_efficiency: float = 0.7  # fp32 logits read by softmax / top-p
    iteration_overhead_s: float = 1e-3  # scheduler + launch + sync not hidden by overlap scheduling
    cuda_context_mib: int = 512  # CUDA context, cuBLAS and NCCL before SGLang measures free memory
    chunked_prefill_size: int = 8192  # SGLang's default on 35-160 GB GPUs
    cuda_graph_max_bs: int = 256  # SGLang's default for an 80 GB GPU (enters the memory reserve)
    max_decode_batch: int = 1024  # tabulated decode batch beyond a chunk (larger m is computed)
    mem_fraction_static: float | None = None  # None: SGLang's heuristic (sglang_mem_fraction_static)
    hicache_ratio: float = 2.0  # SGLang's default host pool / device pool


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    name: str
    model: ModelShape
    gpu: GpuSpec
    tp: int
    note: str
    assumptions: Assumptions = field(default_factory=Assumptions)


LLAMA_31_8B = ModelShape(name="Llama-3.1-8B", num_layers=32, hidden_size=4096, intermediate_size=14336,
                         num_heads=32, num_kv_heads=8, vocab_size=128256, num_params=8_030_261_248)
LLAMA_31_70B = ModelShape(name="Llama-3.1-70B", num_layers=80, hidden_size=8192, intermediate_size=28672,
                          num_heads=64, num_kv_heads=8, vocab_size=128256, num_params=70_553_706_496)
LLAMA_3_8B = replace(LLAMA_31_8B, name="Meta-Llama-3-8B")
LLAMA_3_70B = replace(LLAMA_31_70B, name="Meta-Llama-3-70B")

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(name="llama-3.1-8b-h100", model=LLAMA_31_8B, gpu=H100_SXM, tp=1,
           note="derived: H100 curves fitted on Llama-2-7B/70B, applied to Llama-3.1-8B's shapes"),
    Preset(name="llama-3.1-70b-4xh100", model=LLAMA_31_70B, gpu=H100_SXM, tp=4,
           note="layer shapes measured at TP=4 (Llama-2-70B has the same layers); all-reduce from "
                "vidur's H100 NVLink send/recv"),
    Preset(name="llama-3-8b-a100", model=LLAMA_3_8B, gpu=A100_SXM, tp=1,
           note="fitted on its own measurements (vidur, A100, Meta-Llama-3-8B)"),
    Preset(name="llama-3-70b-a100", model=LLAMA_3_70B, gpu=A100_SXM, tp=4,
           note="fitted on its own measurements (vidur, A100, Meta-Llama-3-70B); all-reduce from "
                "H100 NVLink fit scaled to NVLink 3"),
)}
DEFAULT_PRESET = "llama-3.1-8b-h100"


def sglang_mem_fraction_static(*, gpu_memory_mib: int, tp: int, chunked_prefill_size: int,
                               cuda_graph_max_bs: int) -> float:
    """SGLang's default `mem_fraction_static` (server_args `_handle_gpu_memory_settings`, MiB)."""
    reserved = 512 + max(chunked_prefill_size, 2048) * 1.5 + tp / 8 * 1024 + cuda_graph_max_bs * 2
    if gpu_memory_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_memory_mib - reserved) / gpu_memory_mib, 3)


@dataclass(frozen=True, slots=True, kw_only=True)
class IterationCost:
    """One iteration's seconds, by part."""

    linear_s: float  # per-layer operators, embedding
    allreduce_s: float
    lm_head_s: float  # LM head, final norm, sampling
    attention_prefill_s: float
    attention_decode_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return (self.linear_s + self.allreduce_s + self.lm_head_s + self.attention_prefill_s
                + self.attention_decode_s + self.overhead_s)


PrefillSeqs = Sequence[tuple[int, int]]  # per sequence of a chunk: (its new tokens, its context through them)


def _prefill_seqs(prefill_tokens: int, prefill_context_tokens: int,
                  prefill_seqs: PrefillSeqs | None) -> PrefillSeqs:
    """The chunk's sequences, checked against the totals; without them, one sequence of the totals."""
    if not prefill_seqs:
        return ((prefill_tokens, prefill_context_tokens),) if prefill_tokens else ()
    if any(p < 0 or c < 0 for p, c in prefill_seqs):
        raise ValueError(f"prefill_seqs counts must be >= 0 (got {list(prefill_seqs)})")
    total = sum(p for p, _ in prefill_seqs)
    if total != prefill_tokens:
        raise ValueError(f"prefill_seqs hold {total} new tokens but prefill_tokens={prefill_tokens}; "
                         "pass the chunk's sequences exactly")
    return prefill_seqs


def _chunked_prefill_time_s(model, num_tokens: int, cached_tokens: int, chunk: int) -> float:
    """A prefill alone on a worker, in chunks of `chunk` tokens, priced by `model.iteration_time_s`."""
    if num_tokens < 0 or cached_tokens < 0:
        raise ValueError(f"num_tokens and cached_tokens must be >= 0 (got {num_tokens}, {cached_tokens})")
    total, done = 0.0, 0
    while done < num_tokens:
        p = min(chunk, num_tokens - done)
        total += model.iteration_time_s(prefill_tokens=p, prefill_context_tokens=cached_tokens + done + p,
                                        decode_seqs=0, decode_context_tokens=0)
        done += p
    return total


class VidurCostModel:
    """The CostModel (interfaces.py) of one preset: vidur-fitted linear layers, roofline attention."""

    def __init__(self, preset: Preset, calibration: Calibration | None = None):
        cal = calibration if calibration is not None else load_calibration()
        self.preset = preset
        self.name = preset.name
        m, g, tp, a = preset.model, preset.gpu, preset.tp, preset.assumptions
        self._curves: GpuCalibration = cal.gpu(g.calibration)
        self._p2p_latency_s, self._p2p_bytes_per_s = _p2p(cal, g)

        # KV geometry: K and V, every layer, every KV head, bf16.
        self.kv_bytes_per_token = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2
        self.kv_bytes_per_token_per_gpu = self.kv_bytes_per_token // tp
        self.weight_bytes_per_gpu = m.num_params * 2 // tp
        self.mem_fraction_static = a.mem_fraction_static if a.mem_fraction_static is not None else \
            sglang_mem_fraction_static(gpu_memory_mib=g.memory_mib, tp=tp,
                                       chunked_prefill_size=a.chunked_prefill_size,
                                       cuda_graph_max_bs=a.cuda_graph_max_bs)
        usable = (g.memory_mib - a.cuda_context_mib) * MIB
        self.kv_pool_bytes_per_gpu = int(usable * self.mem_fraction_static) - self.weight_bytes_per_gpu
        if self.kv_pool_bytes_per_gpu <= 0:
            raise ValueError(f"preset {preset.name!r}: weights ({self.weight_bytes_per_gpu / 2**30:.1f} GiB"
                             f" per GPU) leave no KV pool; raise tp or mem_fraction_static")
        self.kv_capacity_tokens = self.kv_pool_bytes_per_gpu // self.kv_bytes_per_token_per_gpu
        self.host_capacity_tokens = int(a.hicache_ratio * self.kv_capacity_tokens)
        # Each GPU moves its 1/tp share of every token's KV over its own PCIe link.
        self.h2d_tokens_per_s = g.pcie_bytes_per_s / self.kv_bytes_per_token_per_gpu
        self.d2h_tokens_per_s = g.pcie_bytes_per_s / self.kv_bytes_per_token_per_gpu

        # Attention constants, per layer, per GPU.
        heads = m.num_heads // tp
        self._attn_flops_per_pair = 4.0 * heads * m.head_dim
        self._kv_bytes_per_layer_token = self.kv_bytes_per_token_per_gpu / m.num_layers
        self._qo_bytes_per_token = 2 * heads * m.head_dim * 2
        self._prefill_flops_per_s = g.peak_bf16_flops * a.prefill_attention_flops_efficiency
        self._decode_bytes_per_s = g.hbm_bytes_per_s * a.decode_attention_bandwidth_efficiency
        self._attn_floor_s = m.num_layers * a.attention_kernel_floor_s

        size = a.chunked_prefill_size + a.max_decode_batch + 1
        tokens = np.arange(size, dtype=float)
        self._linear, self._allreduce = self._linear_parts(tokens)
        self._lm_head = self._lm_head_part(tokens)

    # ---- token-count-dependent parts (tabulated) ---------------------------------------------

    def _linear_parts(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, tp = self.preset.model, self.preset.tp
        per_layer = sum(self._curves.op_time_s(op, m, tp, tokens) for op in LAYER_OPS)
        linear = m.num_layers * per_layer + self._curves.op_time_s("emb", m, tp, tokens)
        allreduce = np.zeros_like(tokens)
        if tp > 1:  # two per layer (after attention, after MLP); ring bus traffic 2(p-1)/p x size
            nbytes = tokens * m.hidden_size * 2
            one = self._p2p_latency_s + 2 * (tp - 1) / tp * nbytes / self._p2p_bytes_per_s
            allreduce = 2 * m.num_layers * one
        return np.where(tokens > 0, linear, 0.0), np.where(tokens > 0, allreduce, 0.0)

    def _lm_head_part(self, seqs: np.ndarray) -> np.ndarray:
        m, tp, a = self.preset.model, self.preset.tp, self.preset.assumptions
        logits_bytes = seqs * -(-m.vocab_size // tp) * 4 * 2  # fp32 logits written, then read
        t = (self._curves.op_time_s("lm_head", m, tp, seqs)
             + self._curves.op_time_s("input_layernorm", m, tp, seqs)
             + logits_bytes / (self.preset.gpu.hbm_bytes_per_s * a.sampling_bandwidth_efficiency))
        return np.where(seqs > 0, t, 0.0)

    # ---- the CostModel protocol --------------------------------------------------------------

    def iteration_cost(self, *, prefill_tokens: int, prefill_context_tokens: int, decode_seqs: int,
                       decode_context_tokens: int, prefill_seqs: PrefillSeqs | None = None) -> IterationCost:
        if min(prefill_tokens, prefill_context_tokens, decode_seqs, decode_context_tokens) < 0:
            raise ValueError("iteration token counts must be >= 0 (got prefill_tokens="
                             f"{prefill_tokens}, prefill_context_tokens={prefill_context_tokens}, "
                             f"decode_seqs={decode_seqs}, decode_context_tokens={decode_context_tokens})")
        seqs = _prefill_seqs(prefill_tokens, prefill_context_tokens, prefill_seqs)
        n = prefill_tokens + decode_seqs
        if n == 0:
            return IterationCost(linear_s=0.0, allreduce_s=0.0, lm_head_s=0.0, attention_prefill_s=0.0,
                                 attention_decode_s=0.0, overhead_s=0.0)
        if n < len(self._linear):
            linear, allreduce = float(self._linear[n]), float(self._allreduce[n])
        else:  # beyond the table: compute (rare; a batch larger than a chunk plus max_decode_batch)
            lin, ar = self._linear_parts(np.array([float(n)]))
            linear, allreduce = float(lin[0]), float(ar[0])
        sampling = decode_seqs + (1 if prefill_tokens else 0)
        lm_head = float(self._lm_head[sampling] if sampling < len(self._lm_head)
                        else self._lm_head_part(np.array([float(sampling)]))[0])
        layers = self.preset.model.num_layers
        prefill_attn = decode_attn = 0.0
        if prefill_tokens:
            # one varlen kernel per layer over the chunk's sequences: each attends to its own context
            pairs = nbytes = 0.0
            for p_i, c_i in seqs:
                p, ctx = float(p_i), float(max(c_i, p_i))
                pairs += p * (ctx - p / 2.0)
                nbytes += self._kv_bytes_per_layer_token * (ctx + p) + self._qo_bytes_per_token * p
            flops = self._attn_flops_per_pair * pairs
            prefill_attn = self._attn_floor_s + layers * max(flops / self._prefill_flops_per_s,
                                                             nbytes / self._decode_bytes_per_s)
        if decode_seqs:
            ctx = float(max(decode_context_tokens, decode_seqs))
            flops = self._attn_flops_per_pair * ctx
            nbytes = (self._kv_bytes_per_layer_token * (ctx + decode_seqs)
                      + self._qo_bytes_per_token * decode_seqs)
            decode_attn = self._attn_floor_s + layers * max(flops / self._prefill_flops_per_s,
                                                            nbytes / self._decode_bytes_per_s)
        return IterationCost(linear_s=linear, allreduce_s=allreduce, lm_head_s=lm_head,
                             attention_prefill_s=prefill_attn, attention_decode_s=decode_attn,
                             overhead_s=self.preset.assumptions.iteration_overhead_s)

    def iteration_time_s(self, *, prefill_tokens: int, prefill_context_tokens: int, decode_seqs: int,
                         decode_context_tokens: int, prefill_seqs: PrefillSeqs | None = None) -> float:
        return self.iteration_cost(prefill_tokens=prefill_tokens,
                                   prefill_context_tokens=prefill_context_tokens,
                                   decode_seqs=decode_seqs,
                                   decode_context_tokens=decode_context_tokens,
                                   prefill_seqs=prefill_seqs).total_s

    def prefill_time_s(self, num_tokens: int, cached_tokens: int = 0) -> float:
        """Alone on the worker, in chunks of `chunked_prefill_size` as SGLang runs it."""
        return _chunked_prefill_time_s(self, num_tokens, cached_tokens, self.preset.assumptions.chunked_prefill_size)

    def transfer_time_s(self, num_tokens: int, *, to_gpu: bool = True) -> float:
        """Seconds to move `num_tokens` tokens of KV between host and GPU (PCIe, effective rate)."""
        return num_tokens / (self.h2d_tokens_per_s if to_gpu else self.d2h_tokens_per_s)

    def __repr__(self) -> str:
        return (f"VidurCostModel({self.name!r}, kv_capacity_tokens={self.kv_capacity_tokens}, "
                f"host_capacity_tokens={self.host_capacity_tokens})")


def _p2p(cal: Calibration, gpu: GpuSpec) -> tuple[float, float]:
    """NCCL point-to-point latency and bandwidth: measured on H100 NVLink; elsewhere, the H100 fit
    with its bandwidth scaled by the NVLink generation's nominal ratio."""
    own = cal.gpu(gpu.calibration)
    if own.p2p_latency_s is not None and own.p2p_bytes_per_s is not None:
        return own.p2p_latency_s, own.p2p_bytes_per_s
    ref = cal.gpu(H100_SXM.calibration)
    if ref.p2p_latency_s is None or ref.p2p_bytes_per_s is None:
        raise ValueError("the calibration has no NVLink send/recv fit to derive an all-reduce from")
    return ref.p2p_latency_s, ref.p2p_bytes_per_s * gpu.nvlink_bytes_per_s / H100_SXM.nvlink_bytes_per_s


def preset_names() -> list[str]:
    return sorted(PRESETS)


# ---- measured presets: a real engine on this machine's CPU --------------------------------------

class MeasuredCostModel:
    """The CostModel of an engine whose steps were timed (scripts/calibrate_local.py): the local
    engine (runtime/engines/local) serving SmolLM2-135M on a CPU. A step's seconds, fitted by
    weighted least squares (relative error) on hundreds of real steps, are

        overhead + a*P + b*[P > 0] + c*P*(C - P/2) + d*C + e*D + f*K

    with P prefill tokens over C context tokens (summed over the chunk's sequences), D decoding
    sequences over K context tokens: the linear layers and the LM head per packed row (a, e; the
    LM head runs once per prefill that ends and once per decode row), causal attention pairs (c),
    the KV gathered from the pool per context token (d, f). KV geometry, the pool and the host tier
    are the engine's defaults, so a replay with this preset simulates that engine.

    With `prefill_seqs`, the pairs term sums P_i x (C_i - P_i/2) over the chunk's sequences (each
    attends to its own context); the other terms are linear in P and C, so sums are exact for them.
    The calibration sweeps prefill one sequence per step (their prefill and mixed steps), so the
    fitted `c` is a per-sequence coefficient."""

    def __init__(self, name: str, data: dict):
        self.name = name
        self.data = data
        c = data["coefficients"]
        self._k = (c["overhead_s"], c["s_per_prefill_token"], c["s_per_prefill"], c["s_per_attention_pair"],
                   c["s_per_prefill_context_token"], c["s_per_decode_seq"], c["s_per_decode_context_token"])
        self.kv_bytes_per_token = int(data["kv_bytes_per_token"])
        self.kv_capacity_tokens = int(data["kv_capacity_tokens"])
        self.host_capacity_tokens = int(data["host_capacity_tokens"])
        self.h2d_tokens_per_s = float(data["h2d_tokens_per_s"])
        self.d2h_tokens_per_s = float(data["d2h_tokens_per_s"])
        self.chunk_tokens = int(data["chunk_tokens"])
        self.fit_error = data.get("fit_error", {})

    def iteration_time_s(self, *, prefill_tokens: int, prefill_context_tokens: int, decode_seqs: int,
                         decode_context_tokens: int, prefill_seqs: PrefillSeqs | None = None) -> float:
        if min(prefill_tokens, prefill_context_tokens, decode_seqs, decode_context_tokens) < 0:
            raise ValueError("iteration token counts must be >= 0")
        p, d = prefill_tokens, decode_seqs
        if p == 0 and d == 0:
            return 0.0
        seqs = _prefill_seqs(prefill_tokens, prefill_context_tokens, prefill_seqs)
        t0, a, b, c, dc, e, f = self._k
        ctx = max(prefill_context_tokens, p)
        pairs = sum(p_i * (max(c_i, p_i) - p_i / 2.0) for p_i, c_i in seqs)
        return (t0 + a * p + (b if p else 0.0) + c * pairs + dc * (ctx if p else 0)
                + e * d + f * decode_context_tokens)

    def prefill_time_s(self, num_tokens: int, cached_tokens: int = 0) -> float:
        """Alone on the engine, in chunks of the engine's `chunk_tokens`."""
        return _chunked_prefill_time_s(self, num_tokens, cached_tokens, self.chunk_tokens)

    def transfer_time_s(self, num_tokens: int, *, to_gpu: bool = True) -> float:
        return num_tokens / (self.h2d_tokens_per_s if to_gpu else self.d2h_tokens_per_s)

    def __repr__(self) -> str:
        return f"MeasuredCostModel({self.name!r}, kv_capacity_tokens={self.kv_capacity_tokens})"


# name -> the measurement file under data/ (written by scripts/calibrate_local.py)
MEASURED_PRESETS: dict[str, str] = {"smollm2-135m-cpu": "smollm2-135m-cpu.json"}


def load_measured(name: str) -> dict:
    import json
    from importlib import resources

    text = resources.files("agentflow.runtime.engines.sim").joinpath("data", MEASURED_PRESETS[name]).read_text()
    data = json.loads(text)
    if data.get("format") != "agentflow.measured-cost-model":
        raise ValueError(f"{MEASURED_PRESETS[name]} is not an agentflow.measured-cost-model file")
    return data


def all_preset_names() -> list[str]:
    """The GPU presets (preset_names) and the measured ones."""
    return sorted(set(PRESETS) | set(MEASURED_PRESETS))


def make_cost_model(name: str = DEFAULT_PRESET, *, calibration: Calibration | None = None,
                    **assumptions) -> VidurCostModel | MeasuredCostModel:
    """The cost model of a named preset; keyword arguments override its Assumptions fields."""
    if name in MEASURED_PRESETS:
        if assumptions:
            raise ValueError(f"preset {name!r} is measured: it has no assumptions to override")
        return MeasuredCostModel(name, load_measured(name))
    if name not in PRESETS:
        raise ValueError(f"unknown cost-model preset {name!r}; valid: {', '.join(all_preset_names())}")
    preset = PRESETS[name]
    if assumptions:
        valid = set(Assumptions.__dataclass_fields__)
        bad = sorted(set(assumptions) - valid)
        if bad:
            raise ValueError(f"unknown assumption(s) {', '.join(bad)}; valid: {', '.join(sorted(valid))}")
        preset = replace(preset, assumptions=replace(preset.assumptions, **assumptions))
    return VidurCostModel(preset, calibration)


__all__ = ["A100_SXM", "Assumptions", "DEFAULT_PRESET", "GpuSpec", "H100_SXM", "IterationCost",
           "MEASURED_PRESETS", "MeasuredCostModel", "PRESETS", "PrefillSeqs", "Preset", "VidurCostModel",
           "all_preset_names", "load_measured", "make_cost_model", "preset_names",
           "sglang_mem_fraction_static"]
