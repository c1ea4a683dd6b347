#!/usr/bin/env bash
# Install SGLang 0.5.23's Python code into VENV_DIR on a CPU-only machine, for the conformance
# suite (tests/engines/test_sglang_conformance.py) and for a real SGLang server on CPU
# (scripts/sglang_cpu_server.sh, tests/engines/sglang/test_server.py), as
# ../shared/notes/sglang-0.5.23.md and ../shared/notes/sglang-cpu-server.md say:
#   * sglang itself with --no-deps: its own metadata pins torch 2.14.1 and pulls several GB of CUDA
#     packages, none of which the radix tree needs;
#   * the CPU build of torch 2.13.0 (constraints-cpu.txt; never a CUDA torch) and the short list of
#     pure-Python packages that importing RadixCache and UnifiedRadixCache needs;
#   * triton 3.7.1 (the release paired with torch 2.13): `sglang.srt.utils.common` imports it at
#     module level and hundreds of modules decorate kernels with `@triton.jit` at import time, so
#     the real wheel (~0.6 GB, it imports fine without a GPU) is safer than a stub.
#   * the server's own pure-Python packages (SERVER below: HTTP app, grammar backend, hashing, ...),
#     pinned where SGLang pins them; none pulls CUDA.
# GPU-only modules are not installed but stood in for: torchvision (no CPU wheel) in-process by
# tests/engines/_sglang_shims.py, and for the server torchvision and sgl_kernel by the import-only
# packages in scripts/sglang_cpu/standins/ (each documents what it fakes and why).
# Idempotent: does nothing when everything is already there at the pinned versions.
# Usage: scripts/install_sglang_cpu.sh VENV_DIR        (e.g. .venv)
set -euo pipefail

VENV=${1:?usage: scripts/install_sglang_cpu.sh VENV_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$VENV/bin/python"
[[ -x "$PY" ]] || { echo "install_sglang_cpu.sh: $PY not found (make the venv first)" >&2; exit 2; }

# Pinned ones are checked by version; the rest only for presence.
PINNED=(torch==2.13.0 transformers==5.19.0 sentencepiece==0.2.1 compressed-tensors==0.18.0
        apache-tvm-ffi==0.1.11 openai==2.8.0 triton==3.7.1)
UNPINNED=(numpy msgspec pydantic orjson psutil pybase64 requests packaging pillow starlette pyzmq
          tqdm IPython aiohttp dill gguf partial_json_parser)
# What `python -m sglang.launch_server` imports beyond the cache classes (measured: each one was
# an ImportError on the way to "The server is fired up and ready to roll!").
SERVER=(xgrammar==0.2.7 soundfile==0.13.1 annotated-doc easydict einops fastapi interegular
        prometheus-client python-multipart setproctitle uvicorn uvloop xxhash zstandard)
SGLANG=sglang==0.5.23

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

installed() {  # exit 0 when every requirement given is installed (pinned ones at their version)
    "$PY" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if want and have.split("+")[0] != want:
        sys.exit(1)
EOF
}

verify() {  # import the two cache classes the way the tests do, on a CPU torch (output -> $LOG)
    (cd "$ROOT" && "$PY" -W ignore -c '
import torch
assert torch.version.cuda is None, f"a CUDA torch ({torch.__version__}) is installed; want the CPU build"
from tests.engines._sglang_shims import import_sglang
sg = import_sglang()
sg.radix_cache.RadixCache, sg.unified_radix_cache.UnifiedRadixCache
import fastapi, uvicorn, uvloop, xgrammar, setproctitle  # the server
') >"$LOG" 2>&1
}

if installed "$SGLANG" "${PINNED[@]}" "${UNPINNED[@]}" "${SERVER[@]}" && verify; then
    echo "install_sglang_cpu.sh: $SGLANG already installed in $VENV"
    exit 0
fi

start=$SECONDS
pip_install() {  # quiet; pip's output is shown only when it fails
    if ! "$PY" -m pip install -q --disable-pip-version-check "$@" >"$LOG" 2>&1; then
        grep -v "^WARNING: Location" "$LOG" | tail -n 40 >&2
        echo "install_sglang_cpu.sh: pip install $* failed" >&2
        exit 1
    fi
}
pip_install -c "$ROOT/constraints-cpu.txt" "${PINNED[@]}" "${UNPINNED[@]}" "${SERVER[@]}"
pip_install --no-deps "$SGLANG"
if ! verify; then
    tail -n 40 "$LOG" >&2
    echo "install_sglang_cpu.sh: sglang installed but its cache classes do not import" >&2
    exit 1
fi
echo "install_sglang_cpu.sh: installed $SGLANG (CPU) into $VENV in $((SECONDS - start)) s"
