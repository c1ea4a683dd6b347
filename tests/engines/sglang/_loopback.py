"""A loopback HTTP server (aiohttp) that speaks SGLang 0.5.23's API for the endpoints SGLangEngine uses.

What is real: the HTTP server and socket; SGLang's `/generate` schema gate
(`generate_contract_error`) and request parsing by its own `GenerateReqInput` (whose normalization
turns `kv_hints` into SGLang's `KvHintsEnvelope`); `/detokenize` parsing by SGLang's
`DetokenizeRequest`; the radix cache (the plugin's `AgentflowRadixCache` over SGLang's
`UnifiedRadixCache`, small CPU pools); the plugin's scheduler hooks (kv_hints at arrival and at
admission, the control dispatcher, the entry rank's tick); the control route's logic
(`plugin.accept_control`) and SGLang's msgpack IPC codec between "tokenizer" and "scheduler";
`/v1/loads` built from SGLang's `LoadSnapshot`; `/flush_cache` resets the cache and its pool.

What is fake: **the model's output** (token i of a reply is `1000 + (sum(prompt) + i) % 1000`, one
SSE event per token, SGLang's default cumulative `output_ids`; its text is "t<id> t<id> ..."), and
the scheduler loop around the cache (one request at a time: match and lock the prompt's cached
prefix, "generate", insert prompt + output, unlock; what SGLang's scheduler does for a finished
request, without batching).
"""

from __future__ import annotations

import asyncio
import json
import types
from array import array
from typing import Self

from aiohttp import web


class LoopbackSGLang:
    def __init__(self, driver, *, clock=None, token_delay_s: float = 0.0, vocab_size: int = 49_152) -> None:
        from agentflow.runtime.engines.sglang import plugin
        from sglang.utils import TypeBasedDispatcher

        self.plugin = plugin
        self.driver = driver  # conftest.CacheDriver: the cache and its pools
        self.cache = driver.cache
        self.scheduler = types.SimpleNamespace(tree_cache=self.cache, _request_dispatcher=TypeBasedDispatcher([]))
        plugin._after_init_request_dispatcher(None, self.scheduler)
        self.clock = clock or (lambda: 0.0)
        self.token_delay_s = token_delay_s
        self.vocab_size = vocab_size  # what GET /agentflow/info answers (the plugin's route)
        self.generate_bodies: list[dict] = []
        self.control_bodies: list[dict] = []
        self.aborted: set[str] = set()
        self.running = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    # ---- the "scheduler": everything that arrives goes through the entry rank's broadcast ----

    def _ingest(self, pulled: list) -> None:
        from sglang.srt.managers import io_struct

        pulled = [io_struct.msgpack_decode(io_struct.msgpack_encode(m)) for m in pulled]  # the zmq socket
        self.plugin._local_cache = self.cache
        self.plugin._clock = self.clock
        for m in self.plugin._around_pull_raw_reqs(lambda receiver: pulled, None):
            self.scheduler._request_dispatcher(m)

    # ---- endpoints ----

    async def generate(self, request: web.Request) -> web.StreamResponse:
        from sglang.srt.entrypoints.api_contract import generate_contract_error
        from sglang.srt.managers.io_struct import GenerateReqInput

        body = await request.json()
        self.generate_bodies.append(body)
        if (error := generate_contract_error(body)) is not None:  # SGLang's schema gate, as its route runs it
            return web.json_response({"error": error}, status=400)
        try:
            obj = GenerateReqInput(**body)
            obj.normalize_batch_and_arguments()
        except ValueError as exc:  # as SGLang's http_server answers a bad request
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        prompt = list(obj.input_ids)
        self._ingest([])  # the tick that precedes a request in its broadcast batch
        req = types.SimpleNamespace(rid=obj.rid, kv_hints=obj.kv_hints, input_ids=array("q", prompt))
        self.plugin._before_handle_generate_request(self.scheduler, req)
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        match = self.cache.match_prefix(MatchPrefixParams(key=self.driver.key(prompt, obj.extra_key)))
        lock = self.cache.lock(match.last_device_node)  # admitted: the request holds its prefix
        self.plugin._after_commit_prefill_admission(None, types.SimpleNamespace(tree_cache=self.cache), req)
        n = obj.sampling_params.get("max_new_tokens", 16)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        out: list[int] = []
        reason = {"type": "length", "length": n}
        self.running += 1
        try:
            for i in range(n):
                if obj.rid in self.aborted:
                    reason = {"type": "abort", "message": "aborted"}
                    break
                await asyncio.sleep(self.token_delay_s)
                out.append(1000 + (sum(prompt) + i) % 1000)
                meta = {"id": obj.rid, "finish_reason": reason if i == n - 1 else None,
                        "prompt_tokens": len(prompt), "completion_tokens": len(out),
                        "cached_tokens": match.device_prefix_len}
                text = " ".join(f"t{t}" for t in out) if i == n - 1 else None  # SGLang: text at the end
                await response.write(b"data: " + json.dumps({"text": text, "output_ids": out, "meta_info": meta})
                                     .encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        finally:
            self.running -= 1
            self.driver.insert(prompt + out, priority=obj.priority or 0, ns=obj.extra_key)
            self.cache.unlock(lock)
        return response

    async def control(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.control_bodies.append(json.loads(body))

        async def dispatch(msg) -> None:
            self._ingest([msg])

        status, content = await self.plugin.accept_control(body, dispatch)
        return web.json_response(content, status=status)

    async def loads(self, request: web.Request) -> web.Response:
        from sglang.srt.managers.load_snapshot import LoadSnapshot

        used = self.driver.allocator.size - self.driver.allocator.available_size()
        snap = LoadSnapshot(dp_rank=0, num_running_reqs=self.running, num_waiting_reqs=0, num_used_tokens=used,
                            max_total_num_tokens=self.driver.allocator.size)
        return web.json_response({"version": "0.5.23", "loads": [snap.to_dict()]})

    async def flush_cache(self, request: web.Request) -> web.Response:
        if self.running:  # SGLang refuses to flush with requests in flight
            return web.Response(status=400, text="Cache not flushed: requests are running")
        self.cache.reset()
        self.driver.allocator.clear()
        return web.Response(text="Cache flushed.")

    async def detokenize(self, request: web.Request) -> web.Response:
        from sglang.srt.entrypoints.openai.protocol import DetokenizeRequest

        req = DetokenizeRequest(**await request.json())  # SGLang's schema for /detokenize
        return web.json_response({"text": " ".join(f"t{t}" for t in req.tokens)})  # the fake model's text

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response({"vocab_size": self.vocab_size, "context_length": 8192, "plugin": "agentflow",
                                  "policy": "workflow"})

    async def abort(self, request: web.Request) -> web.Response:
        self.aborted.add((await request.json())["rid"])
        return web.json_response({})

    # ---- lifecycle ----

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.add_routes([web.post("/generate", self.generate), web.post("/agentflow/control", self.control),
                        web.get("/v1/loads", self.loads), web.post("/abort_request", self.abort),
                        web.post("/flush_cache", self.flush_cache), web.post("/detokenize", self.detokenize),
                        web.get("/agentflow/info", self.info)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
