"""bench/front_door.py: what the OpenAI front door costs, and what its learned graphs keep.

    .venv/bin/python bench/front_door.py --json

  added_latency_p50_ms / _p99_ms  one chat request at a time over loopback HTTP: the front door
                                  (hints, program inference, learning, the scheduler's submit and
                                  routing, call reports, metrics) in front of a zero-cost engine,
                                  minus the same requests to a bare Starlette + uvicorn app that
                                  tokenizes and calls the same engine directly (the engine alone,
                                  served the same way). Requests alternate between the two.
  requests_per_s                  chat requests answered per second at saturation (64 concurrent),
                                  the zero-cost engine, engine time excluded: through the ASGI app
                                  in process (no socket); requests_per_s_http: over loopback HTTP
                                  with the client in the same process (a lower bound: the client
                                  shares the 2 cores)
  learned_gain_share_swe/_chatdev the shipped workloads replayed without their declared graphs
                                  through the front door's inference (bench/front_door_replay.py):
                                  (JCT baseline - JCT policy learned) / (JCT baseline - JCT policy
                                  declared), mean JCT, simulated H100
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


async def _serve(app):
    import uvicorn

    from agentflow.runtime.frontdoor.server import _Server

    srv = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False))
    task = asyncio.ensure_future(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    return srv, task, srv.servers[0].sockets[0].getsockname()[1]


def _body(i: int, turn: int) -> dict:
    msgs = [{"role": "system", "content": "You are agent number seven of the benchmark."}]
    for t in range(turn):
        msgs += [{"role": "user", "content": f"program {i} turn {t}"}, {"role": "assistant", "content": "ok"}]
    msgs.append({"role": "user", "content": f"program {i} turn {turn}"})
    return {"model": "agentflow-sim", "messages": msgs, "max_tokens": 1, "temperature": 0}


async def latency_and_throughput(n_latency: int, n_throughput: int, journal: str) -> dict:
    import httpx

    from agentflow.runtime.frontdoor.gateway import FrontDoorConfig
    from agentflow.runtime.frontdoor.server import OpenAIServer
    from agentflow.runtime.service.app import build_scheduler

    sched, _ = build_scheduler(journal_path=journal)
    await sched.start()
    fd = OpenAIServer(sched, [ZeroCostEngine()], listen="127.0.0.1:0",
                      config=FrontDoorConfig(model_id="agentflow-sim", max_in_flight=4096))
    port = await fd.start()
    bare, bare_task, bare_port = await _serve(_bare_app(ZeroCostEngine("bare")))
    front_ms, bare_ms = [], []
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(n_latency + 50):  # 50 warm-up pairs
            body = _body(i % 200, (i // 200) % 8)
            for url, out in ((f"http://127.0.0.1:{port}/v1/chat/completions", front_ms),
                             (f"http://127.0.0.1:{bare_port}/v1/chat/completions", bare_ms)):
                t = time.perf_counter()
                r = await c.post(url, json=body)
                dt = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if i >= 50:
                    out.append(dt)
        # saturation over HTTP
        sem = asyncio.Semaphore(64)

        async def one(i):
            async with sem:
                (await c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                              json=_body(10_000 + i % 500, (i // 500) % 8))
                 ).raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n_throughput)))
        rps_http = n_throughput / (time.perf_counter() - t)
    # saturation in process: the ASGI app called as uvicorn calls it (no socket, no HTTP client),
    # 64 requests at a time; wall time and this process's CPU time
    from agentflow.runtime.frontdoor.api import build_app

    app = build_app(fd.front, token=None)
    # programs of 8 turns (500 at a time), each turn extending the last: agent traffic, not one-shots
    bodies = [json.dumps(_body(20_000 + i % 500, (i // 500) % 8)).encode() for i in range(n_throughput)]
    sem = asyncio.Semaphore(64)

    async def one_asgi(a, i):
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

    t, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_asgi(app, i) for i in range(n_throughput)))
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    rps = n_throughput / wall
    # the same requests, one at a time, to the front door and to the bare app: CPU per request
    # (what latency is on an idle core; wall times on this shared machine carry the neighbours' load)
    bare_app = _bare_app(ZeroCostEngine("bare2"))
    cpu_front, cpu_bare = [], []
    for i in range(min(n_throughput, 2000)):
        for a, out in ((app, cpu_front), (bare_app, cpu_bare)):
            c0 = time.process_time()
            await one_asgi(a, i)
            out.append(time.process_time() - c0)
    bare.should_exit = True
    await bare_task
    await fd.stop()
    await sched.stop(1.0)

    def q(xs, p):
        return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]

    return {"front_door_p50_ms": round(q(front_ms, 50), 3), "front_door_p99_ms": round(q(front_ms, 99), 3),
            "engine_alone_p50_ms": round(q(bare_ms, 50), 3), "engine_alone_p99_ms": round(q(bare_ms, 99), 3),
            "added_latency_p50_ms": round(q(front_ms, 50) - q(bare_ms, 50), 3),
            "added_latency_p99_ms": round(q(front_ms, 99) - q(bare_ms, 99), 3),
            "requests_per_s": round(rps, 1), "cpu_ms_per_request": round(cpu / n_throughput * 1000, 3),
            "added_cpu_ms_per_request": round((sum(cpu_front) - sum(cpu_bare)) / len(cpu_front) * 1000, 3),
            "journal": journal,
            "requests_per_s_http": round(rps_http, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--requests", type=int, default=1000, help="latency: requests per path")
    ap.add_argument("--saturation-requests", type=int, default=4000)
    ap.add_argument("--baseline", default="lru", help="the policy the gain is measured from")
    ap.add_argument("--policy", default="agentflow", help="the workflow-aware policy")
    ap.add_argument("--swe-programs", type=int, default=None, help="the first N SWE-bench programs (default all)")
    ap.add_argument("--chatdev-kv-tokens", type=int, default=20_000,
                    help="ChatDev's KV pool: at the preset's 418k tokens all 27 programs fit and no policy gains")
    ap.add_argument("--journal", default=None,
                    help="the scheduler's journal (default: a file, as `agentflow serve` runs; ':memory:' for SQLite in memory)")
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--control", action="store_true",
                    help="also replay with a plan that learns nothing (one catch-all agent): how much of the "
                         "gain needs no graph")
    args = ap.parse_args()
    from front_door_replay import learned_share

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        journal = args.journal or os.path.join(tmp, "journal.sqlite")
        out = asyncio.run(latency_and_throughput(args.requests, args.saturation_requests, journal))
        if not args.journal:
            out["journal"] = "file (serve's default)"
    out["cores"] = os.cpu_count()
    if not args.skip_replay:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "workloads")
        swe = learned_share(os.path.join(root, "swebench-mini-swe-agent.jsonl"), baseline=args.baseline,
                            policy=args.policy, num_programs=args.swe_programs, control=args.control)
        chat = learned_share(os.path.join(root, "chatdev.jsonl"), baseline=args.baseline, policy=args.policy,
                             kv_capacity_tokens=args.chatdev_kv_tokens, concurrency=27, control=args.control)
        out["learned_gain_share_swe"] = swe["learned_gain_share"]
        out["learned_gain_share_chatdev"] = chat["learned_gain_share"]
        out["swe"] = swe
        out["chatdev"] = chat
        out["baseline"], out["policy"] = args.baseline, args.policy
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
