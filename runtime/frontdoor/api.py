"""The OpenAI-compatible HTTP surface (Starlette): validation at the edge, then gateway.FrontDoor.

    POST /v1/chat/completions     stream (SSE) or not; tools / tool_calls; usage with
                                  prompt_tokens_details.cached_tokens
    POST /v1/completions          a prompt string (or token ids), stream or not
    GET  /v1/models               the served model
    GET  /health                  liveness (no token needed; says nothing about programs)
    GET  /metrics                 Prometheus text
    GET  /v1/agentflow/programs   the programs tracked now (debug)
    GET  /v1/agentflow/graph      the learned graphs: agents, transitions, tool gaps, steps-to-execution
    POST /v1/agentflow/workflows  register a declared workflow (YAML or JSON text) under its name

Every route but /health asks `auth.caller_for` who calls (the service's credentials: a client
token is its tenant; /metrics is an admin's). Errors are OpenAI's error objects, with
`param` naming the field.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentflow.runtime.frontdoor.auth import Forbidden, Unauthorized, caller_for, credentials_for
from agentflow.runtime.frontdoor.gateway import Answer, ChatRequest, FrontDoor, FrontDoorError
from agentflow.runtime.frontdoor.hints import HintError, parse_hints
from agentflow.runtime.service.auth import Credentials

try:  # orjson where it is installed (several times json's speed), else json: the same JSON out
    import orjson

    _loads, _dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover
    _loads = json.loads

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_MESSAGES = 1024
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ROLE_SET = frozenset(_ROLES)


def _error(status: int, message: str, *, param: str | None = None, code: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": code if status < 500 else "server_error",
                                   "param": param, "code": code}}, status_code=status)


def _bad(field: str, message: str) -> FrontDoorError:
    return FrontDoorError(400, field, message)


def _int(body, key, lo, hi, default):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(key, f"must be an integer in [{lo}, {hi}] (got {v!r})")
    return v


def _float(body, key, lo, hi, default):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise _bad(key, f"must be a number in [{lo}, {hi}] (got {v!r})")
    return float(v)


def _common(body: Mapping, front: FrontDoor) -> dict:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "is required (see /v1/models)")
    if model != front.config.model_id:
        raise FrontDoorError(404, "model", f"the model '{model}' does not exist here; this server serves "
                             f"'{front.config.model_id}'", code="model_not_found")
    if _int(body, "n", 1, 1, 1) != 1:
        raise _bad("n", "only n=1 is supported")
    cap = front.config.max_tokens_cap
    mt = _int(body, "max_completion_tokens", 1, cap, None)
    mt = mt if mt is not None else _int(body, "max_tokens", 1, cap, front.config.default_max_tokens)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop):
        stop = tuple(stop)
    else:
        raise _bad("stop", "must be a string or a list of at most 4 non-empty strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed", f"must be an integer (got {seed!r})")
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise _bad("stream", "must be a boolean")
    return {"max_tokens": mt, "temperature": _float(body, "temperature", 0.0, 2.0, 1.0),
            "top_p": _float(body, "top_p", 1e-9, 1.0, 1.0), "seed": seed, "stop": stop}


def _messages(body: Mapping) -> tuple:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "must be a non-empty list")
    if len(msgs) > MAX_MESSAGES:
        raise _bad("messages", f"at most {MAX_MESSAGES} messages (got {len(msgs)})")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in _ROLE_SET:
            raise _bad(f"messages[{i}].role", f"must be one of {', '.join(_ROLES)}")
        c = m.get("content")
        if type(c) is str and "tool_calls" not in m:  # the common message: nothing more to check
            continue
        if isinstance(c, list):
            for j, part in enumerate(c):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"messages[{i}].content[{j}]", "only text parts are supported")
        elif c is not None and not isinstance(c, str):
            raise _bad(f"messages[{i}].content", "must be a string, a list of text parts, or null")
        tc = m.get("tool_calls")
        if tc is not None:
            if not isinstance(tc, list) or not all(isinstance(x, dict) and isinstance(x.get("function"), dict)
                                                   for x in tc):
                raise _bad(f"messages[{i}].tool_calls", "must be a list of {id, type, function: {name, arguments}}")
    return tuple(msgs)


def _tools(body: Mapping) -> tuple[tuple, object]:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list) or len(tools) > 128:
        raise _bad("tools", "must be a list of at most 128 tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}].function.name", "every tool needs a function with a name")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none", "required"):
        name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        if name not in {t["function"]["name"] for t in tools}:
            raise _bad("tool_choice", "must be auto, none, required, or {type: function, function: {name}} of "
                       "a tool in `tools`")
    if choice == "required" and not tools:
        raise _bad("tool_choice", "'required' needs `tools`")
    return tuple(tools), choice


def _usage(a: Answer) -> dict:
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": a.cached_tokens}}


def _agentflow(a: Answer) -> dict:
    return {"program_id": a.program_id, "agent": a.agent, "step": a.step, "worker": a.worker}


def build_app(front: FrontDoor, *, token: str | None = None, credentials: Credentials | None = None):
    """The ASGI app: the two completion routes on a lean path (below), the rest through Starlette.
    Callers are the service's credentials' (auth.py); `token` alone: one shared admin token."""
    metrics = front.metrics
    creds = credentials_for(token, credentials)
    children: dict = {}  # label values -> the metric's child (labels() costs more than inc())

    def _count(endpoint: str, status: int) -> None:
        if metrics is not None:
            key = ("r", endpoint, status)
            if key not in children:
                children[key] = metrics.requests.labels(endpoint, str(status))
            children[key].inc()

    async def handle(headers: Mapping[str, str], raw: bytes, endpoint: str):
        """One completion request (headers with lower-case names, the raw body): the JSON bytes
        of a whole answer, or a Response (an error, a stream)."""
        try:
            tenant = caller_for(headers.get("authorization"), creds).tenant
            if len(raw) > MAX_BODY_BYTES:
                raise FrontDoorError(413, None, f"the body exceeds {MAX_BODY_BYTES} bytes")
            try:
                body = _loads(raw)
            except ValueError:
                raise _bad("body", "is not valid JSON") from None
            if not isinstance(body, dict):
                raise _bad("body", "must be a JSON object")
            hints = parse_hints(body, headers)
            common = _common(body, front)
            if endpoint == "chat":
                tools, choice = _tools(body)
                req = ChatRequest(messages=_messages(body), tools=tools, tool_choice=choice, **common)
            else:
                p = body.get("prompt")
                if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
                    p = p[0]
                if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                    p = tuple(p)
                elif not isinstance(p, str) or not p:
                    raise _bad("prompt", "must be a non-empty string (or one list of token ids)")
                req = ChatRequest(prompt=p, **common)
            if metrics is not None:
                key = ("h", hints.source)
                if key not in children:
                    children[key] = metrics.hint_source.labels(hints.source)
                children[key].inc()
            stream = bool(body.get("stream"))
            opts = body.get("stream_options") or {}
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            gen = front.complete(req, hints, tenant=tenant)
            if not stream:
                ans = None
                async for item in gen:
                    if isinstance(item, Answer):
                        ans = item
                _count(endpoint, 200)
                return _dumps(_full(endpoint, front, ans))
            first = await _first(gen)  # errors before the first byte are still HTTP errors
        except (Unauthorized, Forbidden) as exc:
            _count(endpoint, exc.status)
            return _error(exc.status, str(exc), code=exc.code)
        except HintError as exc:
            _count(endpoint, 400)
            return _error(400, str(exc), param=exc.field, code="invalid_hint")
        except FrontDoorError as exc:
            _count(endpoint, exc.status)
            return _error(exc.status, str(exc), param=exc.field, code=exc.code)
        _count(endpoint, 200)
        # tool calls, and where a stop string cuts the text, are known only at the end
        buffer = (bool(req.tools) and req.tool_choice != "none") or bool(req.stop)
        return StreamingResponse(_sse(endpoint, front, first, gen, buffer, include_usage),
                                 media_type="text/event-stream")

    def _routed(endpoint: str):
        async def route(request: Request):
            out = await handle(request.headers, await request.body(), endpoint)
            return out if isinstance(out, Response) else Response(out, media_type="application/json")
        return route

    chat, completions = _routed("chat"), _routed("completions")

    def _authed(fn, *, admin_only: bool = False):
        async def wrapped(request: Request):
            try:
                caller = caller_for(request.headers.get("authorization"), creds)
            except (Unauthorized, Forbidden) as exc:
                return _error(exc.status, str(exc), code=exc.code)
            if admin_only and not caller.admin:
                return _error(403, "only an admin credential may read this (service-wide figures cover every "
                              "tenant); a client sees its own programs at /v1/agentflow/programs",
                              code="permission_denied")
            request.state.caller = caller
            return await fn(request)
        return wrapped

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": front.config.model_id, "object": "model",
                                                         "created": 0, "owned_by": "agentflow"}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def metrics_route(request: Request):
        body = metrics.render() if metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def programs(request: Request):
        return JSONResponse({"programs": front.programs(request.state.caller.sees())[:1000]})

    async def graph(request: Request):
        sees = request.state.caller.sees()
        return JSONResponse({"workflows": front.learner.snapshot(request.query_params.get("workflow"), tenant=sees),
                             "declared": front.declared(sees)})

    async def workflows(request: Request):
        raw = (await request.body()).decode(errors="replace")
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
        try:
            caller = request.state.caller  # an admin's is every tenant's; a client's is its own
            name = front.register_workflow(raw, source="request body", tenant=None if caller.admin else caller.tenant)
        except FrontDoorError as exc:
            return _error(exc.status, str(exc), param=exc.field, code=exc.code)
        return JSONResponse({"name": name})

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", _authed(models), methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", _authed(metrics_route, admin_only=True), methods=["GET"]),
              Route("/v1/agentflow/programs", _authed(programs), methods=["GET"]),
              Route("/v1/agentflow/graph", _authed(graph), methods=["GET"]),
              Route("/v1/agentflow/workflows", _authed(workflows), methods=["POST"])]
    star = Starlette(routes=routes)
    hot = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}

    async def app(scope, receive, send):
        # The completion routes skip Starlette's middleware, routing and Request/Response objects:
        # at thousands of requests per second they were a fifth of a request's CPU. Same answers,
        # same errors (a stream or an error is still a Starlette Response, sent as ASGI).
        endpoint = hot.get(scope.get("path")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            return await star(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}  # ASGI: lower-case
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:  # bounded as it arrives, not after
                _count(endpoint, 413)
                return await _error(413, f"the body exceeds {MAX_BODY_BYTES} bytes")(scope, receive, send)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        out = await handle(headers, chunks[0] if len(chunks) == 1 else b"".join(chunks), endpoint)
        if isinstance(out, Response):
            return await out(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    app.starlette = star
    return app


def _hex(n: int) -> str:
    """n random hex digits: response ids name an answer, they guard nothing (uuid4 cost more)."""
    return f"{random.getrandbits(4 * n):0{n}x}"


async def _first(gen):
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None


def _full(endpoint: str, front: FrontDoor, a: Answer) -> dict:
    created = int(time.time())
    if endpoint == "chat":
        msg = {"role": "assistant", "content": a.text if not a.tool_calls else (a.text or None)}
        if a.tool_calls:
            msg["tool_calls"] = a.tool_calls
        return {"id": "chatcmpl-" + a.call_id.rsplit("-", 1)[-1] + _hex(8), "object": "chat.completion",
                "created": created, "model": front.config.model_id,
                "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": a.finish_reason}],
                "usage": _usage(a), "agentflow": _agentflow(a)}
    return {"id": "cmpl-" + _hex(16), "object": "text_completion", "created": created,
            "model": front.config.model_id,
            "choices": [{"index": 0, "text": a.text, "logprobs": None, "finish_reason": a.finish_reason}],
            "usage": _usage(a), "agentflow": _agentflow(a)}


async def _sse(endpoint: str, front: FrontDoor, first, gen, buffer: bool, include_usage: bool):
    cid = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + _hex(24)
    created = int(time.time())
    model = front.config.model_id
    obj = "chat.completion.chunk" if endpoint == "chat" else "text_completion"

    def chunk(delta: dict | str, finish=None, usage=None, extra=None) -> str:
        if endpoint == "chat":
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        out = {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]}
        if usage is not None:
            out["usage"] = usage
        if extra:
            out.update(extra)
        return "data: " + _dumps(out).decode() + "\n\n"

    def usage_only(a: Answer) -> str:
        return "data: " + _dumps({"id": cid, "object": obj, "created": created, "model": model, "choices": [],
                                  "usage": _usage(a)}).decode() + "\n\n"

    try:
        async for out in _events(endpoint, gen, first, buffer, include_usage, chunk, usage_only):
            yield out
    finally:
        await gen.aclose()  # a client gone mid-stream: the call ends (the engine cancels it) now, not at GC


async def _events(endpoint, gen, first, buffer, include_usage, chunk, usage_only):
    if endpoint == "chat":
        yield chunk({"role": "assistant", "content": ""})
    item, ans = first, None
    sent = ""
    while item is not None:
        if isinstance(item, Answer):
            ans = item
        elif not buffer:
            yield chunk({"content": item} if endpoint == "chat" else item)
            sent += item
        try:
            item = await gen.__anext__()
        except StopAsyncIteration:
            item = None
    if ans is None:
        return
    if buffer or ans.text != sent:
        rest = ans.text[len(sent):] if ans.text.startswith(sent) else ""
        if buffer:
            rest = ans.text
        if endpoint == "chat":
            delta = {}
            if rest:
                delta["content"] = rest
            if ans.tool_calls:
                delta["tool_calls"] = [dict(c, index=i) for i, c in enumerate(ans.tool_calls)]
            if delta:
                yield chunk(delta)
        elif rest:
            yield chunk(rest)
    yield chunk({} if endpoint == "chat" else "", finish=ans.finish_reason, extra={"agentflow": _agentflow(ans)})
    if include_usage:
        yield usage_only(ans)
    yield "data: [DONE]\n\n"


__all__ = ["MAX_BODY_BYTES", "build_app"]
