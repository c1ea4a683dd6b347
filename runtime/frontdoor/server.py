"""Running the front door beside the scheduler's gRPC port: one event loop, one ServiceCore.

`OpenAIServer(scheduler_server, engines, listen=...)`: the gRPC server's core and its SubmitBatcher
(the same submit path as SubmitCall), the embedded engines registered as workers, uvicorn serving
the Starlette app on `listen`. Workers registered over gRPC are reached with their Generate RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentflow.runtime.frontdoor.api import build_app
from agentflow.runtime.frontdoor.gateway import FrontDoor, FrontDoorConfig
from agentflow.runtime.frontdoor.metrics import FrontDoorMetrics

log = logging.getLogger("agentflow.openai")


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--openai must be HOST:PORT (got {listen!r}), e.g. 127.0.0.1:8000")
    return host, int(port)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        # the process's signals belong to `agentflow serve` (a graceful drain of both ports), not uvicorn
        def capture_signals(self):
            return contextlib.nullcontext()

        def install_signal_handlers(self) -> None:
            pass

    return Server


def _Server(config):
    return _server_class()(config)


class OpenAIServer:
    def __init__(self, scheduler, engines, *, listen: str = "127.0.0.1:8000", config: FrontDoorConfig = FrontDoorConfig(),
                 token: str | None = None, workflows: tuple[str, ...] = (), serve_engines: bool = True,
                 credentials=None):
        self.scheduler = scheduler  # a SchedulerServer (started first) or None: the core alone
        self.host, self.port = split_listen(listen)
        self.metrics = FrontDoorMetrics()
        self.token = token
        # who may call: the given credentials, else the shared token, else the scheduler's own
        # (--tokens-file: each client token is its tenant), else open
        auth = getattr(scheduler, "authenticator", None)
        self.credentials = credentials if credentials is not None else (
            None if token else getattr(auth, "credentials", None))
        self.front = FrontDoor(scheduler.core, engines, config=config, metrics=self.metrics, serve_engines=serve_engines)
        self._tokenizers = list(engines)
        self.metrics.bind(self.front)
        for path in workflows:
            from pathlib import Path

            self.front.register_workflow(Path(path).read_text(), source=path)
        self._server = None
        self._task: asyncio.Task | None = None
        self._client = None

    async def start(self) -> int:
        import uvicorn

        servicer = getattr(self.scheduler, "servicer", None)
        if servicer is not None:
            from agentflow.runtime.service.client import ServiceClient

            self._client = ServiceClient(self.scheduler.target, transport=self.scheduler.transport)
            self.front.remote = self._client.generate
        await self.front.start()
        app = build_app(self.front, token=self.token, credentials=self.credentials)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off",
                                access_log=False)
        self._server = _Server(config)
        self._task = asyncio.ensure_future(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it (a port in use)
                raise OSError(f"cannot listen on {self.host}:{self.port}")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10.0)
        await self.front.stop()
        if self._client is not None:
            await self._client.close()
        for e in self._tokenizers:
            await e.aclose()


__all__ = ["OpenAIServer", "split_listen"]
