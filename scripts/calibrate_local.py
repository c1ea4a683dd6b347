"""Time the local engine's steps on this CPU and fit the `smollm2-135m-cpu` cost-model preset.

    .venv/bin/python scripts/calibrate_local.py            # writes runtime/engines/sim/data/smollm2-135m-cpu.json
    .venv/bin/python scripts/calibrate_local.py --quick --out /tmp/cal.json --json

What runs: the real engine (LocalEngine, SmolLM2-135M, fp32, its default pool and chunk size)
serving forced-output requests (random token ids, so no prefix is shared and every step does the
work its shape says) in three sweeps, each step's (prefill tokens P, their context C, decoding
sequences D, their context K, seconds) logged by the engine itself:

    prefill   one request of L tokens (L up to 3k): chunks of P <= chunk at growing C
    decode    D requests of L tokens decoding together (D up to 16, D*L up to 8k)
    mixed     a long prompt arriving while D requests decode: steps with both

The fit (MeasuredCostModel in costmodel.py) minimises squared relative error by weighted least
squares, non-negative coefficients (active set). Half the sweeps' repeats are held out: the file
records the error on the steps the fit saw and on those it did not. Timings on a shared machine are
noisy (the file records the load average); rerun on a quiet machine for the shipped numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runtime/engines/sim/data/smollm2-135m-cpu.json"
FEATURES = ("overhead_s", "s_per_prefill_token", "s_per_prefill", "s_per_attention_pair",
            "s_per_prefill_context_token", "s_per_decode_seq", "s_per_decode_context_token")


def features(p: int, c: int, d: int, k: int) -> list[float]:
    ctx = max(c, p)
    return [1.0, p, 1.0 if p else 0.0, p * (ctx - p / 2.0), ctx if p else 0.0, d, k]


def nnls_relative(rows: np.ndarray, t: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """argmin sum w ((rows @ x) / t - 1)^2 subject to x >= 0 (drop the most negative, refit)."""
    sw = np.ones_like(t) if w is None else np.sqrt(w)
    a = rows / t[:, None] * sw[:, None]
    b = sw
    active = list(range(rows.shape[1]))
    while True:
        x_a, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (x_a >= 0).all():
            x = np.zeros(rows.shape[1])
            x[active] = x_a
            return x
        active.pop(int(np.argmin(x_a)))


def robust_fit(rows: np.ndarray, t: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Least absolute relative error (IRLS over nnls_relative): a step slowed by a busy neighbour
    weighs as one bad point, not as its square."""
    x = nnls_relative(rows, t)
    for _ in range(iterations):
        x = nnls_relative(rows, t, 1.0 / np.maximum(rel_errors(rows, t, x), 0.02))
    return x


def rel_errors(rows: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.abs(rows @ x / t - 1.0)


def summary(err: np.ndarray) -> dict:
    return {"steps": int(err.size), "mean_pct": round(float(err.mean()) * 100, 2),
            "median_pct": round(float(np.median(err)) * 100, 2),
            "p90_pct": round(float(np.percentile(err, 90)) * 100, 2), "max_pct": round(float(err.max()) * 100, 2)}


async def sweep(eng, quick: bool, rng: random.Random) -> None:
    from agentflow.runtime.engines.base import GenerateRequest

    n = [0]

    def request(length: int, out: int) -> GenerateRequest:
        n[0] += 1
        return GenerateRequest(call_id=f"cal{n[0]}", program_id=n[0], max_new_tokens=out,
                               prompt_ids=tuple(rng.randrange(100, 40000) for _ in range(length)),
                               forced_output_ids=tuple(rng.randrange(100, 40000) for _ in range(out)))

    async def drain(r):
        async for _ in eng.generate(r):
            pass

    lengths = (16, 128, 512, 1500) if quick else (16, 64, 256, 512, 1024, 2048, 3072)
    for length in lengths:
        await drain(request(length, 2))
    # Decode: D requests share an L-token prompt but its last token, so each prefills one token and
    # the sweep times decode steps at full contexts without paying D prefills.
    batches = (1, 4, 12) if quick else (1, 2, 4, 8, 16)
    contexts = (64, 512) if quick else (32, 256, 1024, 2048)
    for length in contexts:
        base = request(length, 1)
        await drain(base)
        for d in batches:
            if d * (length + 16) > 7000:
                continue
            reqs = [request(1, 8 if quick else 16) for _ in range(d)]
            reqs = [replace(r, prompt_ids=base.prompt_ids[:-1] + (rng.randrange(100, 40000),)) for r in reqs]
            await asyncio.gather(*(drain(r) for r in reqs))
    for d in ((2,) if quick else (2, 8)):  # a prompt arrives while others decode
        tasks = [asyncio.create_task(drain(request(256, 24))) for _ in range(d)]
        await asyncio.sleep(0.3)
        await drain(request(1200, 2))
        await asyncio.gather(*tasks)


async def sweep_warmup(eng, rng: random.Random) -> None:
    from agentflow.runtime.engines.base import GenerateRequest

    ids = tuple(rng.randrange(100, 40000) for _ in range(64))
    r = GenerateRequest(call_id=f"warm{rng.random()}", program_id=0, prompt_ids=ids, max_new_tokens=4,
                        forced_output_ids=(101, 102, 103, 104))
    async for _ in eng.generate(r):
        pass


def measure_copy_rate(eng, num_tokens: int = 1024, repeats: int = 5) -> float:
    """Tokens per second of a pool-to-pool KV copy (all layers): the host tier's load-back rate."""
    import torch
    from agentflow.runtime.engines.local.pool import SlotPool

    host = SlotPool(eng.geometry, num_tokens)
    src = torch.arange(num_tokens)
    eng.cache.make_room(num_tokens)
    dst = eng.pool.alloc(num_tokens)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        eng.pool.copy_from(dst, host, src)
        best = min(best, time.perf_counter() - t0)
    eng.pool.free(dst)
    return num_tokens / best


async def calibrate(args) -> dict:
    import torch
    from agentflow.runtime.engines.local.engine import (
        DEFAULT_KV_CAPACITY_TOKENS,
        LocalEngine,
    )
    from agentflow.runtime.engines.local.model import load_smollm2

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_smollm2("float32")
    eng = LocalEngine(lm, kv_capacity_tokens=DEFAULT_KV_CAPACITY_TOKENS, chunk_tokens=args.chunk_tokens)
    rng = random.Random(args.seed)
    eng.log_steps(True)
    for _ in range(3):  # warm-up: allocator, kernels, thread pool
        await sweep_warmup(eng, rng)
    repeats = []
    for _ in range(args.repeats):
        eng.log_steps(True)
        await sweep(eng, args.quick, rng)
        repeats.append(list(eng.step_log))
    rate = measure_copy_rate(eng)
    await eng.aclose()

    fit_steps = [s for i, r in enumerate(repeats) for s in r if i % 2 == 0 or len(repeats) == 1]
    held = [s for i, r in enumerate(repeats) for s in r if i % 2 == 1]
    rows = np.array([features(*s[:4]) for s in fit_steps])
    t = np.array([s[4] for s in fit_steps])
    x = robust_fit(rows, t)
    fit_err = summary(rel_errors(rows, t, x))
    held_err = None
    if held:
        hr = np.array([features(*s[:4]) for s in held])
        held_err = summary(rel_errors(hr, np.array([s[4] for s in held]), x))
    g = eng.geometry
    return {
        "format": "agentflow.measured-cost-model", "version": 1,
        "name": "smollm2-135m-cpu", "model": lm.name, "dtype": lm.dtype,
        "engine": "agentflow.runtime.engines.local.LocalEngine",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "load_average": [round(v, 2) for v in os.getloadavg()]},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "scripts/calibrate_local.py" + (" --quick" if args.quick else "") + f" --threads {args.threads}",
        "kv_bytes_per_token": g.bytes_per_token, "kv_capacity_tokens": DEFAULT_KV_CAPACITY_TOKENS,
        "host_capacity_tokens": 2 * DEFAULT_KV_CAPACITY_TOKENS, "chunk_tokens": args.chunk_tokens,
        "h2d_tokens_per_s": round(rate), "d2h_tokens_per_s": round(rate),
        "coefficients": dict(zip(FEATURES, (float(f"{v:.6g}") for v in x), strict=True)),
        "fit_error": {"fit": fit_err, "held_out": held_err},
        "steps": [[int(v) for v in s[:4]] + [round(s[4], 5)] for s in fit_steps + held],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="a smaller sweep (about a minute)")
    ap.add_argument("--repeats", type=int, default=2, help="sweeps timed; odd ones are held out")
    ap.add_argument("--chunk-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine two threads stall on each other)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    data = asyncio.run(calibrate(args))
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    line = {"out": str(args.out), "coefficients": data["coefficients"], "fit_error": data["fit_error"],
            "h2d_tokens_per_s": data["h2d_tokens_per_s"], "load_average": data["machine"]["load_average"]}
    print(json.dumps(line) if args.json else json.dumps(line, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
