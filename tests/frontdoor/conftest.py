"""One front door per test module: `agentflow serve --openai`'s objects (the gRPC scheduler, the
OpenAI server, an embedded local engine running SmolLM2 on this CPU) on loopback, on an event loop
in a background thread, so the synchronous clients (the openai SDK, LangGraph, mini-swe-agent) call
it as they would call any server."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from tests.conftest import require_modules

TOKEN = "frontdoor-test-token"
MODEL = "SmolLM2-135M-Instruct"


class RunningFrontDoor:
    def __init__(self, model):
        self.model = model
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.base_url = ""
        self.server = None
        self.sched = None

    def start(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        return self

    async def _start(self):
        from agentflow.runtime.engines.local import LocalEngine
        from agentflow.runtime.frontdoor.gateway import FrontDoorConfig
        from agentflow.runtime.frontdoor.server import OpenAIServer
        from agentflow.runtime.service.app import build_scheduler

        self.sched, _ = build_scheduler(journal_path=":memory:")
        await self.sched.start()
        engine = LocalEngine(self.model, name="local0")
        self.server = OpenAIServer(self.sched, [engine], listen="127.0.0.1:0", token=TOKEN,
                                   config=FrontDoorConfig(model_id=MODEL))
        port = await self.server.start()
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def call(self, fn):
        """Run fn() on the server's loop (reads its state between requests)."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self):
        async def _stop():
            await self.server.stop()
            await self.sched.stop(1.0)
        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # ---- what the server says over HTTP --------------------------------------------------------
    def get(self, path: str):
        import httpx

        r = httpx.get(self.base_url.removesuffix("/v1") + path, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=30)
        r.raise_for_status()
        return r

    def metric(self, name: str, labels: str = "") -> float:
        text = self.get("/metrics").text
        m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def programs(self) -> dict:
        return {p["program_id"]: p for p in self.get("/v1/agentflow/programs").json()["programs"]}


@pytest.fixture(scope="module")
def frontdoor(smollm2):
    require_modules("starlette", "uvicorn", "prometheus_client", "openai")
    fd = RunningFrontDoor(smollm2).start()
    try:
        yield fd
    finally:
        fd.stop()
