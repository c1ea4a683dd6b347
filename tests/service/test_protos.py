"""The generated gRPC code is what scripts/gen_protos.sh makes from protos/ (CI fails when stale)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    venv = Path(sys.executable).parent.parent
    subprocess.run(["bash", str(ROOT / "scripts/gen_protos.sh"), str(venv), str(tmp_path)], check=True, cwd=ROOT)
    names = ["service_pb2.py", "service_pb2.pyi", "service_pb2_grpc.py"]
    stale = [n for n in names if not filecmp.cmp(tmp_path / "agentflow/v1" / n, ROOT / "agentflow/v1" / n,
                                                 shallow=False)]
    assert not stale, f"agentflow/v1/{stale} differ from protos/: run `bash scripts/gen_protos.sh`"


def test_messages_round_trip():
    from agentflow.v1 import service_pb2 as pb

    m = pb.SubmitCallRequest(program_id="p", call_id="c", step="s", prompt_tokens=3,
                             prefixes=[pb.Prefix(key="k", num_tokens=2, namespace="t")])
    back = pb.SubmitCallRequest.FromString(m.SerializeToString())
    assert back == m and back.prefixes[0].key == "k"
