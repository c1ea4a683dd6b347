"""`SGLangEngine`: the `Engine` interface (runtime/engines/base.py) over a real SGLang server's HTTP API.

    executor / worker agent          SGLangEngine                        SGLang server + plugin
    ───────────────────────          ────────────                        ──────────────────────
    generate(GenerateRequest) ─────> POST /generate (stream, SSE) ─────> input_ids, sampling_params,
                                       kv_hints: declare the prompt's      priority, session_id,
                                       prefix keys + "program's call"      extra_key = namespace
    <── TokenChunk ... GenerateResult <── data: {output_ids, meta_info} ... data: [DONE]
    apply(Decision) ─ never blocks ──> queue ─> POST /agentflow/control (one sender task, in order)
    load() ─ never blocks ───────────> last GET /v1/loads (refreshed after each call, refresh_load())

Why keys travel once: a request declares its prefix keys by length (the server takes the tokens
from its own input_ids), so a later decision names the key alone. A key the server cannot know
yet (the prompt+output of a finished call, from `GenerateResult.cached`) carries its tokens the
first time a decision names it. A decision's other keys are ignored, as base.Engine says.

Isolation: every request goes out with `extra_key = request.namespace`, which SGLang puts into
every radix key, so two tenants never share a node even for identical tokens.

What is not used: SGLang's gRPC server (`--grpc-port`) streams the same generate output but its
`.proto` is not in the 0.5.23 wheel and it has no route for our control messages; HTTP carries
both with one client. Admission order (Decision.admit) stays with SGLang's own queue policy;
routes are the caller's (it chose this engine).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
from agentflow.runtime.decision import Decision
from agentflow.runtime.engines.base import (
    EngineError,
    EngineLoad,
    GenerateRequest,
    GenerateResult,
    TokenChunk,
    prefix_key,
)
from agentflow.runtime.engines.sglang.control import (
    Action,
    DeclarePrefix,
    ProgramCall,
    decision_actions,
    program_key,
    to_envelope,
)
from agentflow.runtime.prefixes import PrefixRef

CONTROL_PATH = "/agentflow/control"
_FINISH = {"length": "length", "stop": "stop", "abort": "cancelled"}


class SGLangEngine:
    """One SGLang server. `name` is the worker name decisions use; `tokenizer` (a Hugging Face
    tokenizer of the served model) gives encode_chat/decode without a round trip; `vocab_size`
    (default: the server's, fetched before the first request) bounds the token ids it sends."""

    def __init__(self, base_url: str, *, name: str = "sglang", tokenizer: Any = None, vocab_size: int | None = None,
                 timeout_s: float = 600.0, transport: httpx.AsyncBaseTransport | None = None,
                 max_known_keys: int = 65_536, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        # Token ids the server can embed are below it; one at or above it crashes SGLang's
        # scheduler (IndexError in the embedding), so none is ever sent. None: asked from the
        # server before the first request (fetch_vocab_size).
        self.vocab_size: int | None = vocab_size
        self.base_url = base_url.rstrip("/")
        self.tokenizer = tokenizer
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)
        self._sync_timeout_s = timeout_s
        self._clock = clock
        self._ids = itertools.count()
        # Keys the server was told about (by a request or a control message), and tokens of keys
        # it was not told about yet (prompt+output of finished calls): both bounded.
        self._declared: OrderedDict[str, None] = OrderedDict()
        self._undeclared: OrderedDict[str, tuple[str, tuple[int, ...]]] = OrderedDict()
        self._max_known_keys = max_known_keys
        self._pins: dict[tuple[str, str], tuple[float, int]] = {}  # (key, program) -> (expires, tokens)
        self._control: asyncio.Queue[dict] | None = None
        self._sender: asyncio.Task | None = None
        self._load: dict[str, Any] = {}
        self._inflight = 0
        self._closed = False
        self.last_control_error: str | None = None

    # ---- tokens ----

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if self.tokenizer is None:
            raise EngineError(f"engine {self.name}: encode_chat needs SGLangEngine(tokenizer=...) "
                              "(the served model's tokenizer); SGLang's /tokenize applies no chat template")
        return list(self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True))

    def decode(self, token_ids: Sequence[int]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(list(token_ids))
        r = httpx.post(f"{self.base_url}/detokenize", json={"tokens": list(token_ids)}, timeout=self._sync_timeout_s)
        r.raise_for_status()
        return r.json()["text"]

    # ---- the served model's vocabulary ----

    async def fetch_vocab_size(self) -> int:
        """The served model's vocabulary size (its embedding's rows), from the server: the plugin's
        GET /agentflow/info, else (stock SGLang) the `vocab_size` in the config.json of the model
        folder that GET /model_info names, when that folder is on this machine. EngineError when
        neither answers: pass SGLangEngine(vocab_size=...)."""
        if self.vocab_size is not None:
            return self.vocab_size
        try:
            r = await self._client.get("/agentflow/info")
            if r.status_code == 200 and isinstance(r.json().get("vocab_size"), int):
                self.vocab_size = r.json()["vocab_size"]
                return self.vocab_size
            r = await self._client.get("/model_info")
            folder = r.json().get("model_path") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            raise EngineError(f"engine {self.name}: cannot ask {self.base_url} for its vocabulary size "
                              f"({type(exc).__name__}: {exc}); pass SGLangEngine(vocab_size=...)") from exc
        size = _config_vocab_size(folder) if isinstance(folder, str) else None
        if size is None:
            raise EngineError(f"engine {self.name}: {self.base_url} tells no vocabulary size (no /agentflow/info, "
                              f"model {folder!r} not readable here); pass SGLangEngine(vocab_size=...)")
        self.vocab_size = size
        return size

    def _check_ids(self, request: GenerateRequest) -> None:
        vocab = self.vocab_size
        assert vocab is not None
        bad = next((t for t in request.prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise EngineError(f"engine {self.name}: prompt_ids of call {request.call_id} hold token id {bad}, "
                              f"outside the served model's vocabulary [0, {vocab}); not sent (SGLang would crash)")

    # ---- generate ----

    def _remember(self, table: OrderedDict, key: str, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max_known_keys:
            table.popitem(last=False)

    def request_body(self, request: GenerateRequest, rid: str) -> dict[str, Any]:
        """The /generate body (SGLang's GenerateReqInput fields)."""
        actions: list[Action] = [DeclarePrefix(key=p.key, namespace=request.namespace, num_tokens=p.num_tokens)
                                 for p in request.prefixes if 0 < p.num_tokens <= len(request.prompt_ids)]
        actions.append(ProgramCall(program_id=program_key(request.program_id)))
        sampling: dict[str, Any] = {"max_new_tokens": request.max_new_tokens, "temperature": request.temperature,
                                    "top_p": request.top_p, "ignore_eos": request.ignore_eos}
        if request.seed is not None:
            sampling["sampling_seed"] = request.seed
        body: dict[str, Any] = {"rid": rid, "input_ids": list(request.prompt_ids), "sampling_params": sampling,
                                "stream": True, "extra_key": request.namespace,
                                "kv_hints": to_envelope(actions, message_id=rid)}
        if request.priority is not None:
            body["priority"] = request.priority
        if request.session_id is not None:
            body["session_id"] = request.session_id
        return body

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk | GenerateResult]:
        # request.reuse / reuse_namespace (cross-agent KV reuse) are ignored: SGLang has no API to place KV
        # other than as a prefix (as for Decision.reuse)
        if self._closed:
            raise EngineError(f"engine {self.name} is closed")
        if self.vocab_size is None:
            await self.fetch_vocab_size()
        self._check_ids(request)
        rid = f"af-{request.call_id}-{next(self._ids)}"
        body = self.request_body(request, rid)
        for p in request.prefixes:
            self._remember(self._declared, p.key, None)
            self._undeclared.pop(p.key, None)
        start = self._clock()
        first_s: float | None = None
        out_ids: list[int] = []
        text = ""
        meta: dict[str, Any] = {}
        self._inflight += 1
        try:
            async with self._client.stream("POST", "/generate", json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    raise EngineError(f"engine {self.name}: /generate answered {response.status_code}: {text[:500]}")
                async for data in _sse_events(response):
                    if "error" in data:
                        raise EngineError(f"engine {self.name}: {data['error']}")
                    meta = data.get("meta_info") or {}
                    ids = data.get("output_ids") or []
                    # SGLang streams cumulative ids by default, deltas with --incremental-streaming-output;
                    # meta_info.completion_tokens is cumulative either way.
                    cumulative = len(ids) == meta.get("completion_tokens", -1)
                    new = ids[len(out_ids):] if cumulative else ids
                    if isinstance(data.get("text"), str):  # the whole text so far, or a delta
                        text = data["text"] if cumulative else text + data["text"]
                    if new:
                        if first_s is None:
                            first_s = self._clock()
                        out_ids.extend(new)
                        yield TokenChunk(call_id=request.call_id, token_ids=tuple(new))
        except asyncio.CancelledError:
            asyncio.ensure_future(self._abort(rid))  # the disconnect aborts too; this makes it prompt
            raise
        except httpx.HTTPError as exc:
            raise EngineError(f"engine {self.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._inflight -= 1
        yield self._result(request, tuple(out_ids), text, meta, start, first_s)
        await self.refresh_load()

    def _result(self, request: GenerateRequest, out_ids: tuple[int, ...], text: str, meta: dict, start: float,
                first_s: float | None) -> GenerateResult:
        end = self._clock()
        full = tuple(request.prompt_ids) + out_ids
        parent = request.prefixes[-1].key if request.prefixes else None
        full_ref = PrefixRef(key=prefix_key(request.namespace, full), parent=parent, num_tokens=len(full),
                             namespace=request.namespace)
        if full_ref.key not in self._declared:
            self._remember(self._undeclared, full_ref.key, (request.namespace, full))
        details = meta.get("cached_tokens_details") or {}
        reason = meta.get("finish_reason")
        reason = reason.get("type") if isinstance(reason, dict) else reason
        return GenerateResult(
            call_id=request.call_id, output_ids=out_ids,
            text=self.tokenizer.decode(list(out_ids)) if self.tokenizer is not None else text,
            prompt_tokens=int(meta.get("prompt_tokens", len(request.prompt_ids))),
            cached_tokens=int(details.get("device", meta.get("cached_tokens", 0))),
            host_tokens=int(details.get("host", 0)),
            queued_s=float(meta.get("queue_time", 0.0) or 0.0),
            ttft_s=(first_s if first_s is not None else end) - start, duration_s=end - start,
            finish_reason=_FINISH.get(reason, "stop" if reason else "length"),
            cached=tuple(request.prefixes) + (full_ref,))

    async def _abort(self, rid: str) -> None:
        try:
            await self._client.post("/abort_request", json={"rid": rid})
        except httpx.HTTPError:
            pass

    # ---- decisions ----

    def control_actions(self, decision: Decision) -> list[Action]:
        """The control actions `decision` means for this server: keys it cannot know are dropped,
        keys it does not know yet are declared (with their tokens) first."""
        known = []
        for a in decision_actions(decision, worker=self.name):
            key = getattr(a, "key", None)
            if key is None or key in self._declared:
                known.append(a)
            elif key in self._undeclared:
                ns, ids = self._undeclared.pop(key)
                self._remember(self._declared, key, None)
                known += [DeclarePrefix(key=key, namespace=ns, num_tokens=len(ids), token_ids=ids), a]
        return known

    def apply(self, decision: Decision) -> None:
        """Queue the decision's control message; one sender task posts them in order. Never blocks
        inside an event loop; without one (a synchronous caller) it posts directly.
        `decision.reuse` (cross-agent KV reuse hints) is ignored: SGLang has no API for placing
        KV anywhere but as a prefix; only the local engine applies it."""
        actions = self.control_actions(decision)
        self._track_pins(decision)
        if not actions or self._closed:
            return
        envelope = to_envelope(actions, message_id=f"{self.name}-d{decision.step}-{next(self._ids)}")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._post_sync(envelope)
            return
        if self._control is None:
            self._control = asyncio.Queue()
            self._sender = asyncio.get_running_loop().create_task(self._send_controls())
        self._control.put_nowait(envelope)

    def _post_sync(self, envelope: dict) -> None:
        r = httpx.post(self.base_url + CONTROL_PATH, json=envelope, timeout=self._sync_timeout_s)
        if r.status_code != 200:
            self.last_control_error = f"{r.status_code}: {r.text[:500]}"

    async def _send_controls(self) -> None:
        assert self._control is not None
        while True:
            envelope = await self._control.get()
            try:
                r = await self._client.post(CONTROL_PATH, json=envelope)
                if r.status_code != 200:
                    self.last_control_error = f"{r.status_code}: {r.text[:500]}"
            except httpx.HTTPError as exc:  # a lost hint costs cache hits, never correctness
                self.last_control_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._control.task_done()

    async def flush(self) -> None:
        """Wait until every queued control message was posted."""
        if self._control is not None:
            await self._control.join()

    def _track_pins(self, decision: Decision) -> None:
        now = self._clock()
        for u in decision.unpins:
            if u.worker in (None, self.name):
                for k in [k for k in self._pins if k[0] == u.prefix and k[1] == program_key(u.program_id)]:
                    del self._pins[k]
        for p in decision.pins:
            if p.worker in (None, self.name) and p.prefix in self._declared:
                self._pins[(p.prefix, program_key(p.program_id))] = (now + p.ttl_s, p.num_tokens)

    # ---- load ----

    async def refresh_load(self) -> EngineLoad:
        try:
            r = await self._client.get("/v1/loads")
            if r.status_code == 200:
                loads = r.json().get("loads") or []
                self._load = loads[0] if len(loads) == 1 else _sum_loads(loads)
        except httpx.HTTPError:
            pass  # keep the last snapshot
        return self.load()

    def load(self) -> EngineLoad:
        """The last /v1/loads snapshot (refresh_load() fetches one) plus what this client knows:
        calls it has in flight, and the tokens of pins it asked for that have not expired (an
        upper bound: the server refuses pins over its cap and counts a shared prefix once).
        /v1/loads reports no host tier, so host_capacity_tokens stays 0. Before any snapshot
        (a worker registering its engine: it needs the pool's size), this one call fetches one
        synchronously; every later call returns at once."""
        if not self._load and not self._closed:
            self._load_sync()
        now = self._clock()
        self._pins = {k: v for k, v in self._pins.items() if v[0] > now}
        d = self._load
        running = int(d.get("num_running_reqs", 0))
        waiting = int(d.get("num_waiting_reqs", 0))
        return EngineLoad(kv_capacity_tokens=int(d.get("max_total_num_tokens", 0)),
                          kv_used_tokens=int(d.get("num_used_tokens", 0)),
                          queue_depth=max(waiting, self._inflight - running),
                          running=running, pinned_tokens=sum(t for _, t in self._pins.values()))

    def _load_sync(self) -> None:
        try:
            r = httpx.get(self.base_url + "/v1/loads", timeout=min(10.0, self._sync_timeout_s))
            if r.status_code == 200:
                loads = r.json().get("loads") or []
                self._load = loads[0] if len(loads) == 1 else _sum_loads(loads)
        except (httpx.HTTPError, ValueError):
            pass  # unknown until refresh_load() succeeds

    async def flush_cache(self) -> bool:
        """SGLang's POST /flush_cache: empty the radix cache (and the plugin's pins and keys with
        it), e.g. between two replays on one server. False when the server refuses (busy)."""
        await self.flush()
        r = await self._client.post("/flush_cache")
        if r.status_code == 200:
            self._declared.clear()
            self._undeclared.clear()
            self._pins.clear()
        return r.status_code == 200

    async def aclose(self) -> None:
        self._closed = True
        if self._sender is not None:
            await self.flush()
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._client.aclose()


async def _sse_events(response: httpx.Response) -> AsyncIterator[dict]:
    """`data: {...}` events of an SSE stream, until `data: [DONE]`."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        yield json.loads(payload)


def _config_vocab_size(folder: str) -> int | None:
    from pathlib import Path

    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for c in (config, config.get("text_config") or {}):
        if isinstance(c.get("vocab_size"), int):
            return c["vocab_size"]
    return None


def _sum_loads(loads: list[dict]) -> dict:
    keys = ("num_running_reqs", "num_waiting_reqs", "num_used_tokens", "max_total_num_tokens")
    return {k: sum(int(x.get(k, 0)) for x in loads) for k in keys}


__all__ = ["CONTROL_PATH", "SGLangEngine"]
