#!/usr/bin/env bash
# Install SGLang 0.5.23's Python code into VENV_DIR on a CPU-only machine, for the conformance
# suite (tests/engines/test_sglang_conformance.py), as ../shared/notes/sglang-0.5.23.md says:
#   * sglang itself with --no-deps: its own metadata pins torch 2.14.1 and pulls several GB of CUDA
#     packages, none of which the radix tree needs;
#   * the CPU build of torch 2.13.0 (constraints-cpu.txt; never a CUDA torch) and the short list of
#     pure-Python packages that importing RadixCache and UnifiedRadixCache needs;
#   * triton 3.7.1 (the release paired with torch 2.13): `sglang.srt.utils.common` imports it at
#     module level and hundreds of modules decorate kernels with `@triton.jit` at import time, so
#     the real wheel (~0.6 GB, it imports fine without a GPU) is safer than a stub.
# torchvision (no CPU wheel) is stubbed by tests/engines/_sglang_shims.py instead of installed.
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
') >"$LOG" 2>&1
}

if installed "$SGLANG" "${PINNED[@]}" "${UNPINNED[@]}" && verify; then
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
pip_install -c "$ROOT/constraints-cpu.txt" "${PINNED[@]}" "${UNPINNED[@]}"
pip_install --no-deps "$SGLANG"
if ! verify; then
    tail -n 40 "$LOG" >&2
    echo "install_sglang_cpu.sh: sglang installed but its cache classes do not import" >&2
    exit 1
fi
echo "install_sglang_cpu.sh: installed $SGLANG (CPU) into $VENV in $((SECONDS - start)) s"
