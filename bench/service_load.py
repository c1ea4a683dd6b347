"""The scheduler service under load, on loopback: submission throughput and latency, and what
the service costs a replay compared with the same replay in process.

Processes (all on this machine, real gRPC over loopback):

    this process (clients) ──gRPC──> `agentflow serve` (scheduler, subprocess)
            │                              ▲ register / heartbeat / report / watch decisions
            └──────────gRPC Generate──> `agentflow worker --engine sim --count 8` (subprocess)

1. Submission throughput at saturation (after a warm-up round, `--rounds` rounds; the median is
   reported): open `--load-programs` programs, then submit one LLM call for each over `--streams`
   SubmitCallBatches streams, each keeping `--window` batches of `--batch` calls outstanding,
   against the scheduler and its 8 registered workers.
   `submit_rps` = submissions answered per wall second (`saturated_p50_ms` / `saturated_p99_ms`:
   what a call waits there, mostly queueing behind the outstanding ones, Little's law).
   Latency at a moderate load: `--latency-clients` clients each sending unary SubmitCalls one at
   a time for `--latency-programs` new programs, each call then reported started (untimed, as its
   worker would: the queue stays short); `submit_p99_ms` is their 99th percentile.
2. The same replay both ways, side by side: `--programs` SWE-bench programs (examples/workloads),
   `--in-flight` at a time, simulated workers at `--time-scale` simulated seconds per wall second:
   (a) through the service (client here, scheduler and workers in their subprocesses), and
   (b) in process (`InProcessClient`: the same core and 8 SimEngines, no RPC).
   `jct_ratio_vs_inprocess` = mean JCT (a) / mean JCT (b), both in workload seconds.

Authorization is on (issue 16), as a shared service runs: the scheduler and the workers read a
tokens file (docs/service.md, "Security"); the load and latency clients hold a client credential
of tenant "bench", so every id they send is scoped to it; the latency test reports each call
STARTED with the routed worker's own credential, as that worker would. `--no-auth` runs the same
without credentials (an open service), for comparison.

    python bench/service_load.py --json
Targets: submit_rps >= 5000, submit_p99_ms <= 10, jct_ratio_vs_inprocess <= 1.05.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# credentials (main() fills them when authorization is on)
CLIENT_TOKEN: str | None = None
CLIENT_MD: tuple = ()
WORKER_MD: dict[str, tuple] = {}
SCOPE = ""  # how the service names a client's ids: "bench/" (its tenant) with authorization on
WORKLOAD = ROOT / "examples/workloads/swebench-mini-swe-agent.jsonl"
PY = sys.executable


def _spawn(args: list[str]) -> subprocess.Popen:
    """Start `python -m agentflow ARGS` (it reports where it listens on stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([PY, "-m", "agentflow", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env)


def _wait_lines(proc: subprocess.Popen, pattern: str, count: int, timeout_s: float = 60.0) -> list[str]:
    found, deadline = [], time.monotonic() + timeout_s
    while len(found) < count:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"process exited ({proc.poll()}) before printing {count} x {pattern!r}")
        m = re.search(pattern, line)
        if m:
            found.append(m.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {pattern!r}")
    return found


def _first_calls(pids: list[str], step: str) -> list:
    """Each program's first call: a shared 1,000-token system prompt + 200 tokens of its own."""
    from agentflow.runtime.engines.base import prefix_chain
    from agentflow.v1 import service_pb2 as pb

    sys_ids = list(range(10, 1010))
    reqs = []
    for i, pid in enumerate(pids):
        ids = sys_ids + [5000 + i] * 200
        refs = prefix_chain("default", ids, (1000, 1200))
        reqs.append(pb.SubmitCallRequest(
            program_id=pid, call_id=f"{pid}#0", step=step, prompt_tokens=len(ids), expected_output_tokens=100,
            event_seq=1, prefixes=[pb.Prefix(key=r.key, parent=r.parent or "", num_tokens=r.num_tokens,
                                             namespace=r.namespace) for r in refs]))
    return reqs


async def _bounded(rpc, requests, limit: int = 64) -> None:
    """`rpc(request)` for each request, at most `limit` in flight (thousands of opens or closes; a
    gRPC call starts when it is created, so each is created only once its turn comes)."""
    sem = asyncio.Semaphore(limit)

    async def one(r):
        async with sem:
            await rpc(r)

    await asyncio.gather(*(one(r) for r in requests))


@contextlib.asynccontextmanager
async def _programs(addr: str, plan, n_programs: int, tag: str):
    """A channel, `n_programs` programs opened (the spec sent once, then its hash) and each one's
    first call ready to submit; on exit the programs are closed (cancelled) and the channel too."""
    import grpc

    from agentflow.v1 import service_pb2 as pb
    from agentflow.v1 import service_pb2_grpc as pbg

    spec, step = _spec_and_step(plan)
    ch = grpc.aio.insecure_channel(addr)
    stub = pbg.SchedulerStub(ch)
    pids = [f"{tag}-{i}" for i in range(n_programs)]
    h = (await stub.OpenProgram(pb.OpenProgramRequest(program_id=pids[0], workflow_spec=spec),
                                metadata=CLIENT_MD)).workflow_hash
    await _bounded(lambda r: stub.OpenProgram(r, metadata=CLIENT_MD),
                   [pb.OpenProgramRequest(program_id=p, workflow_hash=h) for p in pids[1:]])
    try:
        yield stub, _first_calls(pids, step)
    finally:
        await _bounded(lambda r: stub.CloseProgram(r, metadata=CLIENT_MD),
                       [pb.CloseProgramRequest(program_id=p, cancelled=True) for p in pids])
        await ch.close()


async def submit_latency(addr: str, plan, n_programs: int, concurrency: int, tag: str = "lat") -> dict:
    """Unary SubmitCall, `concurrency` clients each submitting one call at a time: the latency a
    call sees at a moderate load (not at saturation, where it is queueing by Little's law)."""
    from agentflow.v1 import service_pb2 as pb

    lat_ms: list[float] = []

    async def client(stub, items):
        for m in items:
            t = time.perf_counter()
            ans = await stub.SubmitCall(m, metadata=CLIENT_MD)
            lat_ms.append((time.perf_counter() - t) * 1000.0)
            # as the routed worker would (untimed): the call starts, so the queue stays as short
            # as it is in a service that keeps up (a moderate load, not a backlog)
            await stub.ReportCall(pb.ReportCallRequest(call_id=SCOPE + m.call_id, worker_id=ans.worker_id,
                                                       kind=pb.ReportCallRequest.STARTED),
                                  metadata=WORKER_MD.get(ans.worker_id, ()))

    async with _programs(addr, plan, n_programs, tag) as (stub, reqs):
        t0 = time.perf_counter()
        await asyncio.gather(*(client(stub, reqs[i::concurrency]) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"unary_rps": len(reqs) / wall, "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99))}


def _spec_and_step(plan) -> tuple[str, str]:
    from agentflow.spec import WorkflowSpec

    return WorkflowSpec.from_compiled(plan.workflow).to_json(), next(iter(plan.llm_step.values()))


async def submit_load(addr: str, plan, n_programs: int, streams: int, window: int, batch: int = 1,
                      tag: str = "load") -> dict:
    """Saturation: `streams` SubmitCallBatches streams, each with `window` batches of `batch` calls
    in flight."""
    from agentflow.v1 import service_pb2 as pb

    lat_ms: list[float] = []
    errors = 0

    async def run_stream(stub, items):
        # `window` batches of `batch` calls in flight per stream; a call's latency is its batch's
        nonlocal errors
        sent_at: list[float] = []
        credits = asyncio.Semaphore(window)

        async def gen():
            for k in range(0, len(items), batch):
                await credits.acquire()
                sent_at.append(time.perf_counter())
                yield pb.SubmitCallBatch(calls=items[k:k + batch])

        i = 0
        async for resp in stub.SubmitCallBatches(gen(), metadata=CLIENT_MD):
            ms = (time.perf_counter() - sent_at[i]) * 1000.0
            i += 1
            lat_ms.extend([ms] * len(resp.answers))
            errors += sum(1 for a in resp.answers if a.error)
            credits.release()

    async with _programs(addr, plan, n_programs, tag) as (stub, reqs):  # closed after: a clean scheduler
        t0 = time.perf_counter()
        await asyncio.gather(*(run_stream(stub, reqs[i::streams]) for i in range(streams)))
        wall = time.perf_counter() - t0
    return {"submit_rps": len(reqs) / wall, "submit_p50_ms": float(np.percentile(lat_ms, 50)),
            "submit_p99_ms": float(np.percentile(lat_ms, 99)), "submit_errors": errors, "submissions": len(reqs)}


async def replay_service(addr: str, programs, plan, args) -> dict:
    from agentflow.runtime.replay.live import LiveReplay
    from agentflow.runtime.service.client import ServiceClient

    from agentflow.runtime.service.server import Transport

    client = ServiceClient(addr, transport=Transport(token=CLIENT_TOKEN))
    try:
        return await LiveReplay(programs, plan, client, time_scale=args.time_scale, num_in_flight=args.in_flight,
                                run_id="svc").run()
    finally:
        await client.close()


async def replay_in_process(programs, plan, args) -> dict:
    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.engines.sim.engine import SimEngine
    from agentflow.runtime.replay.live import LiveReplay
    from agentflow.runtime.service.inprocess import InProcessClient

    engines = [SimEngine(name=f"sim-{i}", cost=make_cost_model(args.preset), capacity_tokens=args.kv_tokens,
                         strategy="priority", time_scale=args.time_scale) for i in range(args.workers)]
    client = InProcessClient(engines, policy=args.policy, time_scale=args.time_scale)
    try:
        return await LiveReplay(programs, plan, client, time_scale=args.time_scale, num_in_flight=args.in_flight,
                                run_id="inproc").run()
    finally:
        await client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--load-programs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3, help="saturation rounds (after a warm-up); the median is reported")
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--window", type=int, default=2, help="batches in flight per stream")
    ap.add_argument("--batch", type=int, default=128,
                    help="calls per SubmitCallBatch message (a gateway or an executor with many programs)")
    ap.add_argument("--latency-programs", type=int, default=1000)
    ap.add_argument("--latency-clients", type=int, default=2)
    ap.add_argument("--programs", type=int, default=48)
    ap.add_argument("--in-flight", type=int, default=24)
    # 5, not faster: both replays run in scaled wall-clock time, so every wall millisecond of RPC,
    # of waiting for a core (client, scheduler and 8 workers share two here) counts `time_scale`
    # times in workload seconds; at 10 that magnification alone moved the ratio by +-5% run to run
    ap.add_argument("--time-scale", type=float, default=5.0,
                    help="simulated seconds per wall second (both runs; lower = less CPU-bound, slower)")
    ap.add_argument("--preset", default="llama-3.1-8b-h100")
    ap.add_argument("--kv-tokens", type=int, default=None)
    ap.add_argument("--policy", default="agentflow")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--no-auth", action="store_true", help="an open service (no credentials), for comparison")
    args = ap.parse_args()

    from agentflow.runtime.replay.planning import planning_graph
    from agentflow.runtime.workload import load_workload

    programs = list(load_workload(WORKLOAD).programs[: args.programs])
    plan = planning_graph(programs)
    tmp = tempfile.mkdtemp(prefix="agentflow-bench-")
    auth: list[str] = []
    if not args.no_auth:
        import secrets

        global CLIENT_TOKEN, CLIENT_MD, SCOPE
        CLIENT_TOKEN, SCOPE = secrets.token_urlsafe(24), "bench/"
        CLIENT_MD = (("authorization", f"Bearer {CLIENT_TOKEN}"),)
        lines = [f"{CLIENT_TOKEN} client bench"]
        for i in range(args.workers):
            tok = secrets.token_urlsafe(24)
            WORKER_MD[f"sim-{i}"] = (("authorization", f"Bearer {tok}"),)
            lines.append(f"{tok} worker sim-{i}")
        tokens = Path(tmp) / "tokens"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)
        auth = ["--tokens-file", str(tokens)]
    sched = workers = None
    try:
        sched = _spawn(["serve", "--listen", "127.0.0.1:0", "--journal", f"{tmp}/journal.sqlite",
                        "--policy", args.policy, "--time-scale", str(args.time_scale), *auth,
                        # one tenant holds every load program here (2,000 at once; the default quota is 1,000)
                        "--max-programs-per-tenant", str(max(1000, 2 * args.load_programs))])
        addr = _wait_lines(sched, r"scheduler on (\S+)", 1)[0]
        wargs = ["worker", "--scheduler", addr, "--engine", "sim", "--count", str(args.workers), "--id", "sim",
                 "--preset", args.preset, "--time-scale", str(args.time_scale), *auth]
        if args.kv_tokens:
            wargs += ["--kv-tokens", str(args.kv_tokens)]
        workers = _spawn(wargs)
        _wait_lines(workers, r"agentflow worker (\S+)", args.workers)
        time.sleep(0.5)  # first heartbeats
        asyncio.run(submit_load(addr, plan, 512, args.streams, args.window, args.batch, tag="warmup"))
        rounds = [asyncio.run(submit_load(addr, plan, args.load_programs, args.streams, args.window, args.batch,
                                          tag=f"load{r}")) for r in range(args.rounds)]
        load = sorted(rounds, key=lambda x: x["submit_rps"])[len(rounds) // 2]  # the median round
        lat = asyncio.run(submit_latency(addr, plan, args.latency_programs, args.latency_clients))
        svc = asyncio.run(replay_service(addr, programs, plan, args))
    finally:
        for p in (workers, sched):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    inproc = asyncio.run(replay_in_process(programs, plan, args))
    out = {
        "submit_rps": round(load["submit_rps"], 1), "submit_p99_ms": round(lat["p99_ms"], 3),
        "jct_ratio_vs_inprocess": round(svc["jct_mean_s"] / inproc["jct_mean_s"], 4),
        "submit_p50_ms": round(lat["p50_ms"], 3), "unary_rps": round(lat["unary_rps"], 1),
        "saturated_p50_ms": round(load["submit_p50_ms"], 3), "saturated_p99_ms": round(load["submit_p99_ms"], 3),
        "submissions": load["submissions"], "submit_errors": load["submit_errors"],
        "submit_rps_rounds": [round(r["submit_rps"], 1) for r in rounds],
        "batch": args.batch, "streams": args.streams, "window": args.window,
        "service_jct_mean_s": round(svc["jct_mean_s"], 3), "inprocess_jct_mean_s": round(inproc["jct_mean_s"], 3),
        "service_hit_rate": round(svc["hit_rate"], 4), "inprocess_hit_rate": round(inproc["hit_rate"], 4),
        "replay_submit_p99_ms": round(svc["submit_p99_ms"], 3), "programs": len(programs),
        "workers": args.workers, "time_scale": args.time_scale, "policy": args.policy,
        "authorization": not args.no_auth,
        "wall_s": {"service": round(svc["wall_s"], 1), "inprocess": round(inproc["wall_s"], 1)},
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>26}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
