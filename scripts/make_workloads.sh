#!/usr/bin/env bash
# Regenerate the shipped workloads in examples/workloads/ from ../shared/data with the CLI.
#
# Only MIT and Apache-2.0 sources go into shipped files. The SWE-agent Java set has no licence:
# it is never converted here (use it only in tests and development statistics).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${AGENTFLOW_SHARED:-$ROOT/../shared}/data
OUT=$ROOT/examples/workloads
if [[ -x "$ROOT/.venv/bin/agentflow" ]]; then AF="$ROOT/.venv/bin/agentflow"; else AF=agentflow; fi
SEED=${SEED:-0}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"

# 1. Real tool durations: OpenHands (action -> observation timestamps) and SWE-agent v1
#    (execution_time). A bootstrap table from OpenHands lets the SWE-agent 0.x files in the same
#    folder convert; only recorded (non-synthetic) durations are fitted.
"$AF" workload convert --format openhands "$DATA/trajectories/openhands" -o "$TMP/openhands.jsonl" --no-progress \
  --source-detail "All-Hands-AI/OpenHands @ 156d0686, evaluation/benchmarks/multi_swe_bench/examples/output.jsonl"
"$AF" workload durations "$TMP/openhands.jsonl" -o "$TMP/bootstrap.json" --licence MIT
"$AF" workload convert --format swe-agent "$DATA/trajectories/swe-agent-v1" -o "$TMP/swe-agent-v1.jsonl" \
  --durations "$TMP/bootstrap.json" --licence MIT --no-progress --source-detail "SWE-agent/SWE-agent @ 3ea751c0"
"$AF" workload durations "$TMP/openhands.jsonl" "$TMP/swe-agent-v1.jsonl" -o "$OUT/tool_durations.json" \
  --source "OpenHands @ 156d0686 multi_swe_bench example output (MIT); SWE-agent @ 3ea751c0 v1 trajectories (MIT)" \
  --licence MIT
# The package carries the same table: converters draw synthetic durations from it by default.
cp "$OUT/tool_durations.json" "$ROOT/runtime/workload/data/tool_durations.json"

# 2. The shipped workloads.
"$AF" workload convert --format mini-swe-agent "$DATA/trajectories/mini-swe-agent" \
  -o "$OUT/swebench-mini-swe-agent.jsonl" --durations "$OUT/tool_durations.json" --seed "$SEED" --licence MIT \
  --source-detail "gruckion/mini-swe-agent @ d12a71af, swebench_results/20251118_gemini-3-pro-74pct/trajs (SWE-bench Verified, Gemini 3 Pro)"
"$AF" workload convert --format bfcl "$DATA/bfcl" -o "$OUT/bfcl-multi-turn.jsonl" \
  --durations "$OUT/tool_durations.json" --seed "$SEED" --licence Apache-2.0 \
  --source-detail "ShishirPatil/gorilla @ 6ea57973, berkeley-function-call-leaderboard/bfcl_eval/data (BFCL v4 multi-turn)"
"$AF" workload convert --format chatdev "$DATA/workflows/chatdev" -o "$OUT/chatdev.jsonl" --licence Apache-2.0 \
  --source-detail "OpenBMB/ChatDev branch chatdev1.0 @ 31fd9944, WareHouse/"

for f in swebench-mini-swe-agent bfcl-multi-turn chatdev; do
  echo "== $f"
  "$AF" workload stats "$OUT/$f.jsonl"
done
du -ch "$OUT"/* | tail -1
