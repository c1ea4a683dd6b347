#!/usr/bin/env bash
# GPU smoke test of agentflow on a real SGLang 0.5.23 server (docs/sglang.md records what it printed).
#
#   1. installs agentflow with the `sglang` extra (SGLang with its own CUDA torch) into $VENV;
#   2. scales the SWE-bench workload (examples/workloads/swebench-mini-swe-agent.jsonl) down by
#      TOKEN_SCALE so that a small model's context holds every prompt, and checks it;
#   3. per policy, starts a fresh server with a small model and a capped KV pool (so eviction
#      matters), replays the workload through it (`agentflow replay --engine sglang`), stops it:
#        lru        plain SGLang: --radix-eviction-policy lru (the baseline, no plugin flags)
#        agentflow  the plugin: --radix-cache-backend agentflow --radix-eviction-policy workflow
#      and checks the plugin's control route answers before replaying under `agentflow`;
#   4. prints one JSON object: the GPU, the settings, and each run's results.
#
# Usage: scripts/gpu_smoke.sh            (from anywhere; needs an NVIDIA GPU and nvidia-smi)
# Environment (defaults in brackets):
#   MODEL [Qwen/Qwen2.5-0.5B-Instruct]  a Hugging Face id, or a local directory on offline machines
#   VENV [.venv-gpu]   PORT [30000]   PROGRAMS [8]   CONCURRENCY [8]   TOKEN_SCALE [4]
#   KV_TOKENS [32768]  the server's --max-total-tokens
#   CONTEXT [32768]    the server's --context-length
#   HICACHE [0]        1: add --enable-hierarchical-cache (host tier; makes prefetch do something)
#   WHEELHOUSE []      a directory of wheels: install offline (pip --no-index --find-links)
#   SKIP_INSTALL [0]   1: use $VENV as it is
#   OUT [a temp dir]   where the scaled workload, server logs and JSON results are kept
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
VENV=${VENV:-$ROOT/.venv-gpu}
PORT=${PORT:-30000}
PROGRAMS=${PROGRAMS:-8}
CONCURRENCY=${CONCURRENCY:-8}
TOKEN_SCALE=${TOKEN_SCALE:-4}
KV_TOKENS=${KV_TOKENS:-32768}
CONTEXT=${CONTEXT:-32768}
HICACHE=${HICACHE:-0}
WHEELHOUSE=${WHEELHOUSE:-}
SKIP_INSTALL=${SKIP_INSTALL:-0}
OUT=${OUT:-$(mktemp -d)}
URL="http://127.0.0.1:$PORT"
WORKLOAD_IN="$ROOT/examples/workloads/swebench-mini-swe-agent.jsonl"
mkdir -p "$OUT"
log() { echo "gpu_smoke: $*" >&2; }

command -v nvidia-smi >/dev/null || { log "no nvidia-smi: this script needs an NVIDIA GPU"; exit 2; }
GPU=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1)
log "GPU: $GPU; results and logs in $OUT"

# ---- 1. install ----
if [[ "$SKIP_INSTALL" != 1 ]]; then
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
    [[ -n "$WHEELHOUSE" ]] && PIP+=(--no-index --find-links "$WHEELHOUSE")
    start=$SECONDS
    "${PIP[@]}" -e "$ROOT[sglang]"  # SGLang's own dependencies: its CUDA torch, flashinfer, sgl-kernel
    log "installed agentflow[sglang] in $((SECONDS - start)) s"
fi
PY="$VENV/bin/python"
AF="$VENV/bin/agentflow"
"$PY" - <<'EOF'
from importlib.metadata import entry_points, version
eps = [ep.value for ep in entry_points(group="sglang.srt.plugins") if ep.name == "agentflow"]
assert eps == ["agentflow.runtime.engines.sglang.plugin:register"], f"plugin entry point missing: {eps}"
print(f"gpu_smoke: sglang {version('sglang')}, plugin entry point {eps[0]}", flush=True)
EOF

# ---- 2. the scaled workload ----
WORKLOAD="$OUT/swebench-scaled.jsonl"
"$PY" - "$WORKLOAD_IN" "$WORKLOAD" "$TOKEN_SCALE" "$PROGRAMS" <<'EOF'
"""Divide every token count by K (rounding up) and keep the format's invariants: a history or
output_of segment never reaches past what its call had, a system segment never past the prompt
parts. Tool durations and arrivals stay as recorded."""
import json, math, sys
src, dst, k, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
div = lambda x: math.ceil(x / k)
with open(src) as f, open(dst, "w") as g:
    header = json.loads(f.readline())
    header["num_programs"] = n
    header["notes"] = header.get("notes", []) + [f"token counts divided by {k:g} (scripts/gpu_smoke.sh)"]
    g.write(json.dumps(header) + "\n")
    for line in list(f)[:n]:
        p = json.loads(line)
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
        g.write(json.dumps(p) + "\n")
EOF
"$AF" workload validate "$WORKLOAD" >&2
"$AF" workload stats "$WORKLOAD" >&2

# ---- 3. one server per policy ----
SERVER_PID=
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

start_server() {  # start_server NAME EXTRA_FLAGS...
    local name=$1; shift
    local flags=(--model-path "$MODEL" --host 127.0.0.1 --port "$PORT" --max-total-tokens "$KV_TOKENS"
                 --context-length "$CONTEXT" --log-level warning "$@")
    [[ "$HICACHE" == 1 ]] && flags+=(--enable-hierarchical-cache)
    log "starting SGLang ($name): ${flags[*]}"
    "$PY" -m sglang.launch_server "${flags[@]}" >"$OUT/server-$name.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 600); do
        if curl -sf "$URL/health" >/dev/null; then log "server up"; return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 1
    done
    tail -n 60 "$OUT/server-$name.log" >&2
    log "the $name server did not come up"; exit 1
}

replay() {  # replay POLICY
    local policy=$1 start=$SECONDS
    "$AF" replay "$WORKLOAD" --engine sglang --sglang-url "$URL" --policies "$policy" \
        --concurrency "$CONCURRENCY" --json "$OUT/result-$policy.json" >&2
    log "$policy replayed in $((SECONDS - start)) s"
}

start_server lru --radix-eviction-policy lru
replay lru
stop_server

# The Python tree core is forced by the agentflow backend; the variable is set as well so that a
# missing backend fails loudly (unknown policy) instead of silently falling back.
export SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python
start_server agentflow --radix-cache-backend agentflow --radix-eviction-policy workflow
probe=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/agentflow/control" -H 'content-type: application/json' \
        -d '{"protocol_version": "agentflow.kv/1", "message_id": "gpu-smoke-probe", "actions": []}')
[[ "$probe" == 200 ]] || { log "POST /agentflow/control answered $probe: the plugin is not loaded"; exit 1; }
grep -q "AgentflowRadixCache\|agentflow" "$OUT/server-agentflow.log" || log "note: the server log does not name the plugin (log level warning)"
replay agentflow
stop_server

# ---- 4. the results ----
"$PY" - "$OUT" "$GPU" "$MODEL" "$TOKEN_SCALE" "$PROGRAMS" "$CONCURRENCY" "$KV_TOKENS" "$HICACHE" <<'EOF'
import json, sys
out, gpu, model, scale, programs, conc, kv, hicache = sys.argv[1:]
runs = {p: json.load(open(f"{out}/result-{p}.json")) for p in ("lru", "agentflow")}
print(json.dumps({"gpu": gpu, "model": model, "workload": "swebench-mini-swe-agent", "token_scale": float(scale),
                  "programs": int(programs), "concurrency": int(conc), "kv_tokens": int(kv),
                  "hicache": hicache == "1", "runs": runs}, indent=1))
EOF
