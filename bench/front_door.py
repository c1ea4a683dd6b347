"""bench/front_door.py: what the OpenAI front door costs, and what its learned graphs keep.

    flock /work/bench.lock .venv/bin/python bench/front_door.py --json

Each server runs in its own process (uvicorn as `agentflow serve --openai` runs it, with the
zero-cost engine below); the load generator is a lean keep-alive HTTP/1.1 client in this process.

  added_latency_p50_ms / _p99_ms  one chat request at a time over loopback HTTP, alternating: the
                                  front door (hints, program inference, learning, the scheduler's
                                  submit and routing, call reports, metrics) in front of the engine,
                                  minus the engine alone served by a bare Starlette app on the same
                                  uvicorn (the quantiles' difference)
  requests_per_s                  chat requests per second at saturation (--concurrency keep-alive
                                  connections), counted by the server (first to last answer);
                                  requests_per_s_client: the client's count; server_cpu_ms_per_request:
                                  the server process's CPU; engine_alone: the same for the bare app
  asgi_*                          the ASGI app called in process (no socket, no HTTP parsing): CPU per
                                  request at saturation, scheduling steps per request, and, one
                                  request at a time, the CPU the front door adds to the engine alone
                                  (CPU time does not depend on the neighbours' load; wall time does)
  learned_gain_share_swe/_chatdev the shipped workloads replayed without their declared graphs through
                                  the front door's inference and learner (bench/front_door_replay.py):
                                  (JCT control - JCT learned) / (JCT control - JCT declared), the
                                  control being the front door with no hints and nothing learned;
                                  tool_gap_share_*: the tool gaps alone; graph_share_*: the rest.
                                  None: the declared graph gains nothing over the control
  loadavg_start / _end            /proc/loadavg around the run (the machine is shared)

FRONT_DOOR_PROFILE=FILE writes a cProfile of the front door's server process; FRONT_DOOR_PROFILE_ASGI=
tottime prints where one in-process request's CPU goes; FRONT_DOOR_STEP_S sets the batcher's step interval
(development aids; at 4 ms instead of 1 ms: 958 instead of 1,139 requests/s, p50 +1.7 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agentflow.runtime.engines.base import EngineLoad, GenerateResult, TokenChunk  # noqa: E402


class ZeroCostEngine:
    """The Engine interface at no cost: word ids, one output token at once."""

    def __init__(self, name="zero"):
        self.name = name

    def encode_chat(self, messages):
        ids = []
        for m in messages:
            ids.append(1)
            ids += [hash(w) % 30000 + 100 for w in m["content"].split()]
        return ids + [2]

    def encode_text(self, text):
        return [hash(w) % 30000 + 100 for w in text.split()]

    def decode(self, ids):
        return "ok"

    async def generate(self, req):
        yield TokenChunk(call_id=req.call_id, token_ids=(7,), text="ok")
        yield GenerateResult(call_id=req.call_id, output_ids=(7,), text="ok", prompt_tokens=len(req.prompt_ids),
                             cached_tokens=0, finish_reason="stop", cached=tuple(req.prefixes))

    def apply(self, decision):
        pass

    def load(self):
        return EngineLoad(kv_capacity_tokens=1_000_000, kv_used_tokens=0)

    async def aclose(self):
        pass


def _bare_app(engine):
    """The engine alone, served as a minimal OpenAI-style app (Starlette, as most are)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from agentflow.runtime.engines.base import GenerateRequest

    n = [0]

    async def chat(request: Request):
        body = await request.json()
        ids = engine.encode_chat(body["messages"])
        n[0] += 1
        result = None
        async for item in engine.generate(GenerateRequest(call_id=str(n[0]), program_id="p", prompt_ids=tuple(ids),
                                                          max_new_tokens=body.get("max_tokens", 1))):
            if isinstance(item, GenerateResult):
                result = item
        return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": 1}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def _counted(app):
    """The app, with the server's own count of what it answered: GET /__bench/reset zeroes it,
    GET /__bench/stats says requests, first and last answer (monotonic s) and this process's CPU."""
    st = {"n": 0, "first": 0.0, "last": 0.0, "cpu0": time.process_time()}

    async def wrapped(scope, receive, send):
        path = scope.get("path", "")
        if path.startswith("/__bench/"):
            if path == "/__bench/reset":
                st.update(n=0, first=0.0, last=0.0, cpu0=time.process_time())
            out = json.dumps({"requests": st["n"], "first_s": st["first"], "last_s": st["last"],
                              "cpu_s": time.process_time() - st["cpu0"]}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
            await send({"type": "http.response.body", "body": out})
            return
        await app(scope, receive, send)
        now = time.monotonic()
        st["n"] += 1
        st["last"] = now
        if st["n"] == 1:
            st["first"] = now

    return wrapped


async def _serve_forever(kind: str, journal: str, port_file: str) -> None:
    """A server process: the front door (kind 'front') or the engine alone ('bare'), on loopback."""
    import signal

    import uvicorn

    from agentflow.runtime.frontdoor.server import _Server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sched = fd = None
    if kind == "front":
        from agentflow.runtime.frontdoor.api import build_app
        from agentflow.runtime.frontdoor.gateway import FrontDoorConfig
        from agentflow.runtime.frontdoor.server import OpenAIServer
        from agentflow.runtime.service.app import build_scheduler

        sched, _ = build_scheduler(journal_path=":memory:" if journal == "none" else journal)
        if journal == "none":  # the front door in process with a core that keeps no journal
            sched.core.journal = None
        await sched.start()
        fd = OpenAIServer(sched, [ZeroCostEngine()], listen="127.0.0.1:0",
                          config=FrontDoorConfig(model_id="agentflow-sim", max_in_flight=4096,
                                                 step_interval_s=float(os.environ.get("FRONT_DOOR_STEP_S", "0.001"))))
        await fd.front.start()
        app = build_app(fd.front, token=None)
    else:
        app = _bare_app(ZeroCostEngine("bare"))
    srv = _Server(uvicorn.Config(_counted(app), host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                 access_log=False))
    task = asyncio.ensure_future(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    proto = srv.servers[0].sockets[0]
    with open(port_file + ".tmp", "w") as f:
        f.write(json.dumps({"port": proto.getsockname()[1], "http": srv.config.http_protocol_class.__name__,
                            "loop": type(loop).__module__}))
    os.replace(port_file + ".tmp", port_file)
    await stop.wait()
    srv.should_exit = True
    await task
    if fd is not None:
        await fd.front.stop()
        await sched.stop(1.0)


class _Server:
    """A server process started for the bench (and stopped with it)."""

    def __init__(self, kind: str, journal: str, tmp: str):
        import subprocess

        self.port_file = os.path.join(tmp, f"{kind}.port")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_serve", kind, "--journal", journal,
                                      "--_port-file", self.port_file])
        deadline = time.monotonic() + 60
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} server did not start")
            time.sleep(0.05)
        with open(self.port_file) as f:
            info = json.load(f)
        self.port, self.http, self.loop = info["port"], info["http"], info["loop"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class _Conn:
    """A lean HTTP/1.1 keep-alive client connection (the load generator must not be the bottleneck)."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(b"%s %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (method.encode(), path.encode(), len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        i = head.lower().find(b"content-length:")
        if i < 0:
            raise RuntimeError(f"status {status}, no content-length: {head[:200]!r}")
        n = int(head[i + 15:head.index(b"\r\n", i)])
        return status, await self.reader.readexactly(n)

    async def post(self, body: bytes) -> None:
        status, out = await self.request("POST", "/v1/chat/completions", body)
        if status != 200:
            raise RuntimeError(f"status {status}: {out[:200]!r}")

    async def stats(self, reset: bool = False) -> dict:
        c = await _Conn(self.port).open()  # a fresh one: an idle keep-alive connection is closed after 5 s
        try:
            return json.loads((await c.request("GET", "/__bench/reset" if reset else "/__bench/stats"))[1])
        finally:
            c.close()

    def close(self):
        self.writer.close()


def _body(i: int, turn: int) -> dict:
    msgs = [{"role": "system", "content": "You are agent number seven of the benchmark."}]
    for t in range(turn):
        msgs += [{"role": "user", "content": f"program {i} turn {t}"}, {"role": "assistant", "content": "ok"}]
    msgs.append({"role": "user", "content": f"program {i} turn {turn}"})
    return {"model": "agentflow-sim", "messages": msgs, "max_tokens": 1, "temperature": 0}


def _q(xs, p):
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]


def _bodies(n: int, base: int) -> list[bytes]:
    # programs of 8 turns (500 at a time), each turn extending the last: agent traffic, not one-shots;
    # every 4,000 requests 500 new programs (no request repeats an earlier one)
    return [json.dumps(_body(base + (i // 4000) * 500 + i % 500, (i % 4000) // 500)).encode() for i in range(n)]


async def _latency(front: _Server, bare: _Server, n: int) -> dict:
    """One request at a time, alternating between the front door and the engine alone."""
    cf, cb = await _Conn(front.port).open(), await _Conn(bare.port).open()
    bodies = _bodies(n + 50, 0)
    front_ms, bare_ms = [], []
    for i, body in enumerate(bodies):  # the first 50 pairs warm up
        for c, out in ((cf, front_ms), (cb, bare_ms)):
            t = time.perf_counter()
            await c.post(body)
            if i >= 50:
                out.append((time.perf_counter() - t) * 1000)
    cf.close(), cb.close()
    return {"front_door_p50_ms": round(_q(front_ms, 50), 3), "front_door_p99_ms": round(_q(front_ms, 99), 3),
            "engine_alone_p50_ms": round(_q(bare_ms, 50), 3), "engine_alone_p99_ms": round(_q(bare_ms, 99), 3),
            "added_latency_p50_ms": round(_q(front_ms, 50) - _q(bare_ms, 50), 3),
            "added_latency_p99_ms": round(_q(front_ms, 99) - _q(bare_ms, 99), 3)}


async def _saturate(server: _Server, n: int, concurrency: int, base: int) -> dict:
    """`concurrency` keep-alive connections sending `n` requests in all, as fast as answered:
    requests/s from the client's clock and from the server's own count (first to last answer)."""
    conns = [await _Conn(server.port).open() for _ in range(concurrency)]
    ctl = _Conn(server.port)
    bodies = _bodies(n, base)
    nxt = iter(range(n))
    await ctl.stats(reset=True)
    cpu0 = time.process_time()

    async def run(c):
        for i in nxt:
            await c.post(bodies[i])

    t = time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    wall = time.perf_counter() - t
    client_cpu = time.process_time() - cpu0
    st = await ctl.stats()
    for c in conns:
        c.close()
    span = st["last_s"] - st["first_s"]
    return {"requests_per_s_client": round(n / wall, 1),
            "requests_per_s_server": round((st["requests"] - 1) / span, 1) if span > 0 else None,
            "server_cpu_ms_per_request": round(st["cpu_s"] / st["requests"] * 1000, 4),
            "client_cpu_ms_per_request": round(client_cpu / n * 1000, 4)}


async def _asgi_cpu(n: int, journal: str) -> dict:
    """The ASGI apps called in process as uvicorn calls them (no socket, no HTTP parsing): CPU per
    request of the front door at saturation (64 at a time) and, one at a time, front door vs the
    engine alone. CPU time does not depend on the neighbours' load; wall time does."""
    from agentflow.runtime.frontdoor.api import build_app
    from agentflow.runtime.frontdoor.gateway import FrontDoorConfig
    from agentflow.runtime.frontdoor.server import OpenAIServer
    from agentflow.runtime.service.app import build_scheduler

    sched, _ = build_scheduler(journal_path=":memory:" if journal == "none" else journal)
    if journal == "none":
        sched.core.journal = None
    fd = OpenAIServer(sched, [ZeroCostEngine()], listen="127.0.0.1:0",
                      config=FrontDoorConfig(model_id="agentflow-sim", max_in_flight=4096))
    await fd.front.start()
    app = build_app(fd.front, token=None)
    bodies = _bodies(n, 20_000)
    sem = asyncio.Semaphore(64)

    async def one(a, i):
        async with sem:
            status = []

            async def receive():
                return {"type": "http.request", "body": bodies[i], "more_body": False}

            async def send(message):
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                     "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
                     "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
            await a(scope, receive, send)
            if status != [200]:
                raise RuntimeError(f"status {status}")

    cpu = time.process_time()
    await asyncio.gather(*(one(app, i) for i in range(n)))
    cpu = time.process_time() - cpu
    flushes, submitted = fd.front.batcher.flushes, fd.front.batcher.submitted
    bare_app = _bare_app(ZeroCostEngine("bare2"))
    bodies = _bodies(n, 40_000)
    cpu_front, cpu_bare = [], []
    prof = None
    if os.environ.get("FRONT_DOOR_PROFILE_ASGI"):  # development: where one request's CPU goes
        import cProfile

        prof = cProfile.Profile()
    for i in range(min(n, 2000)):
        for a, out in ((app, cpu_front), (bare_app, cpu_bare)):
            if prof and a is app:
                prof.enable()
            c0 = time.process_time()
            await one(a, i)
            out.append(time.process_time() - c0)
            if prof and a is app:
                prof.disable()
    if prof:
        import pstats

        pstats.Stats(prof, stream=sys.stderr).sort_stats(os.environ["FRONT_DOOR_PROFILE_ASGI"]).print_stats(40)
    await fd.front.stop()
    await sched.stop(1.0)
    return {"asgi_cpu_ms_per_request": round(cpu / n * 1000, 4),
            "asgi_scheduler_steps_per_request": round(flushes / submitted, 4),
            "asgi_added_cpu_ms_per_request": round((sum(cpu_front) - sum(cpu_bare)) / len(cpu_front) * 1000, 4),
            "asgi_engine_alone_cpu_ms_per_request": round(sum(cpu_bare) / len(cpu_bare) * 1000, 4)}


def _loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def latency_and_throughput(n_latency: int, n_throughput: int, concurrency: int, journal: str, tmp: str) -> dict:
    out: dict = {"journal": journal}
    front, bare = _Server("front", journal, tmp), _Server("bare", journal, tmp)
    try:
        out["http"], out["event_loop"] = front.http, front.loop
        out.update(asyncio.run(_latency(front, bare, n_latency)))
        sat = asyncio.run(_saturate(front, n_throughput, concurrency, 10_000))
        out["requests_per_s"] = sat["requests_per_s_server"]
        out.update(sat)
        out["engine_alone"] = asyncio.run(_saturate(bare, n_throughput, concurrency, 10_000))
    finally:
        front.stop()
        bare.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--requests", type=int, default=1000, help="latency: requests per path")
    ap.add_argument("--saturation-requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=64, help="saturation: keep-alive connections")
    ap.add_argument("--baseline", default="lru", help="the policy the gain is measured from")
    ap.add_argument("--policy", default="agentflow", help="the workflow-aware policy")
    ap.add_argument("--swe-programs", type=int, default=None, help="the first N SWE-bench programs (default all)")
    ap.add_argument("--chatdev-kv-tokens", type=int, default=30_000,
                    help="ChatDev's KV pool: at the preset's 418k tokens all 27 programs fit and no policy gains "
                         "(at 20k the replay's declared run does not finish: it ticks for ever)")
    ap.add_argument("--journal", default="file",
                    help="the scheduler's journal: 'file' (a SQLite file, as `agentflow serve` runs), ':memory:' "
                         "(SQLite in memory), 'none' (a core that keeps no journal: the front door embedded)")
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--never-held", action="store_true",
                    help="replay also the declared graph with its programs never held by the working set")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--_serve", choices=["front", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--_port-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._serve:
        prof_path = os.environ.get("FRONT_DOOR_PROFILE")  # a cProfile of the server process, for development
        if prof_path and args._serve == "front":
            import cProfile

            cProfile.runctx("asyncio.run(_serve_forever(args._serve, args.journal, args._port_file))", globals(),
                            {"args": args}, prof_path)
        else:
            asyncio.run(_serve_forever(args._serve, args.journal, args._port_file))
        return
    from front_door_replay import learned_share

    import tempfile

    out: dict = {"loadavg_start": _loadavg(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        journal = os.path.join(tmp, "journal.sqlite") if args.journal == "file" else args.journal
        if not args.skip_http:
            out.update(latency_and_throughput(args.requests, args.saturation_requests, args.concurrency, journal, tmp))
        out.update(asyncio.run(_asgi_cpu(args.saturation_requests, journal)))
        out["journal"] = "file (serve's default)" if args.journal == "file" else args.journal
    if not args.skip_replay:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "workloads")
        swe = learned_share(os.path.join(root, "swebench-mini-swe-agent.jsonl"), baseline=args.baseline,
                            policy=args.policy, num_programs=args.swe_programs, never_held=args.never_held)
        chat = learned_share(os.path.join(root, "chatdev.jsonl"), baseline=args.baseline, policy=args.policy,
                             kv_capacity_tokens=args.chatdev_kv_tokens, concurrency=27, never_held=args.never_held)
        for name, r in (("swe", swe), ("chatdev", chat)):
            out[f"learned_gain_share_{name}"] = r["learned_gain_share"]  # None: the declared graph gains nothing
            out[f"tool_gap_share_{name}"] = r["tool_gap_share"]
            out[f"graph_share_{name}"] = r["graph_share"]
        out["swe"] = swe
        out["chatdev"] = chat
        out["baseline"], out["policy"] = args.baseline, args.policy
    out["loadavg_end"] = _loadavg()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
