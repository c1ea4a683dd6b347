"""Scale a workload down so that a small model's context holds every call (SmolLM2: 8,192 tokens).

    python scripts/scale_workload.py IN OUT --context 8192 [--scale K|auto] [--programs N]
                                         [--max-calls M] [--max-tool-s S]

Every token count is divided by K (rounding up) with the format's invariants kept: a history or
output_of segment never reaches past what its call had, a system segment never past the agent's
system prompt. Then the first M calls of each of the first N programs are kept, tool durations
are capped at S seconds, and every call's prompt + output must fit `--context`: with
`--scale auto`, K is the smallest integer that makes them fit. Arrivals stay as recorded. Used by
scripts/gpu_smoke.sh and for docs/sglang.md's CPU replay; prints the settings as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def scale_program(p: dict, k: float, *, max_calls: int | None, max_tool_s: float | None) -> dict:
    div = lambda x: math.ceil(x / k)  # noqa: E731
    p = json.loads(json.dumps(p))
    if max_calls is not None:
        p["calls"] = p["calls"][:max_calls]
        if p["calls"]:
            p["calls"][-1]["tool"] = None  # the last kept call ends the program
    system = {}
    for a in p["agents"]:
        for part in a.get("system_prompt", []):
            part["num_tokens"] = div(part["num_tokens"])
        system[a["name"]] = sum(part["num_tokens"] for part in a.get("system_prompt", []))
    prompt, out = [], []
    for c in p["calls"]:
        out_c = max(1, div(c["output_tokens"]))
        for s in c["segments"]:
            t = div(s["num_tokens"])
            if s["kind"] == "system":
                t = min(t, system[c["agent"]])
            elif s["kind"] == "history":
                t = min(t, prompt[s["call"]] + out[s["call"]])
            elif s["kind"] == "output_of":
                t = min(t, out[s["call"]])
            s["num_tokens"] = t
        prompt.append(sum(s["num_tokens"] for s in c["segments"]))
        out.append(out_c)
        c["output_tokens"] = out_c
        if c.get("cached_tokens") is not None:
            c["cached_tokens"] = min(div(c["cached_tokens"]), prompt[-1])
        if max_tool_s is not None and c.get("tool") and c["tool"].get("duration_s") is not None:
            c["tool"]["duration_s"] = min(c["tool"]["duration_s"], max_tool_s)
    return p


def longest_call(p: dict, k: float, max_calls: int | None) -> int:
    q = scale_program(p, k, max_calls=max_calls, max_tool_s=None)
    return max((sum(s["num_tokens"] for s in c["segments"]) + c["output_tokens"] for c in q["calls"]), default=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--context", type=int, required=True, help="tokens a call (prompt + output) may use")
    ap.add_argument("--scale", default="auto", help="divide token counts by K, or 'auto' (smallest K that fits)")
    ap.add_argument("--programs", type=int, default=None)
    ap.add_argument("--max-calls", type=int, default=None)
    ap.add_argument("--max-tool-s", type=float, default=None)
    args = ap.parse_args(argv)
    if args.context < 16:
        ap.error(f"--context must be >= 16 (got {args.context})")
    with open(args.src) as f:
        header = json.loads(f.readline())
        programs = [json.loads(line) for line in f if line.strip()]
    programs = programs[: args.programs] if args.programs else programs
    if args.scale == "auto":
        k = 1
        while any(longest_call(p, k, args.max_calls) > args.context for p in programs):
            k += 1
    else:
        try:
            k = float(args.scale)
        except ValueError:
            ap.error(f"--scale must be a number or 'auto' (got {args.scale!r})")
        if not k >= 1:
            ap.error(f"--scale must be >= 1 (got {k})")
    scaled = [scale_program(p, k, max_calls=args.max_calls, max_tool_s=args.max_tool_s) for p in programs]
    too_long = [p["id"] for p in programs if longest_call(p, k, args.max_calls) > args.context]
    if too_long:
        print(f"scale_workload.py: at scale {k:g} programs {too_long[:5]} still exceed --context {args.context}; "
              "raise --scale or use --scale auto", file=sys.stderr)
        return 2
    header["num_programs"] = len(scaled)
    header["notes"] = header.get("notes", []) + [
        f"token counts divided by {k:g}, first {args.max_calls or 'all'} calls, tool time capped at "
        f"{args.max_tool_s if args.max_tool_s is not None else 'none'} s (scripts/scale_workload.py)"]
    with open(args.dst, "w") as g:
        g.write(json.dumps(header) + "\n")
        for p in scaled:
            g.write(json.dumps(p) + "\n")
    print(json.dumps({"scale": k, "programs": len(scaled), "calls": sum(len(p["calls"]) for p in scaled),
                      "longest_call_tokens": max((longest_call(p, 1, None) for p in scaled), default=0),
                      "context": args.context}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
