#!/usr/bin/env bash
# The one command that generates agentflow/v1/*_pb2*.py from protos/ (grpcio-tools pinned in
# pyproject's test extra). tests/service/test_protos.py runs it into a temporary folder and fails
# when the committed files differ: regenerate with `bash scripts/gen_protos.sh [.venv]`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
OUT="${2:-.}"
"$VENV/bin/python" -m grpc_tools.protoc -I protos --python_out="$OUT" --pyi_out="$OUT" \
    --grpc_python_out="$OUT" protos/agentflow/v1/service.proto
