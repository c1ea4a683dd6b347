"""Issue 16's attacks, each against real servers on loopback: a scheduler with tenant-bound
credentials (auth.py), simulated workers with their own credentials, and clients of two tenants,
"acme" (the victim) and "evil" (the attacker). Each test names the attack it repeats; each failed
on the code before the fix. Faked: the GPUs (simulated workers). Real: every RPC, the journal.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import stat
import time

import grpc
import pytest

from agentflow.runtime.service.app import build_scheduler, build_worker
from agentflow.runtime.service.auth import Credentials, CredentialsError
from agentflow.runtime.service.client import ServiceClient
from agentflow.runtime.service.core import Limits
from agentflow.runtime.service.server import Transport
from agentflow.v1 import service_pb2 as pb
from agentflow.v1 import service_pb2_grpc as pbg

SCALE = 100.0
TOKENS = {
    "acme": "client-acme-0123456789abcdef",
    "evil": "client-evil-0123456789abcdef",
    "w0": "worker-w0-0123456789abcdefgh",
    "w1": "worker-w1-0123456789abcdefgh",
    "admin": "admin-0123456789abcdefghijkl",
}
TOKENS_TEXT = f"""# issue 16's test credentials
{TOKENS['acme']} client acme
{TOKENS['evil']} client evil
{TOKENS['w0']} worker w0
{TOKENS['w1']} worker w1
{TOKENS['admin']} admin
"""
CREDS = Credentials.parse(TOKENS_TEXT, source="test-tokens")


def md(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


async def status(coro):
    try:
        await coro
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


class Cluster:
    """A scheduler with credentials and two workers (w0, w1), each with its own credential."""

    def __init__(self, tmp_path, limits: Limits | None = None, workers=("w0", "w1")):
        self.tmp_path, self.limits, self.worker_ids = tmp_path, limits, workers

    async def __aenter__(self):
        self.server, _ = build_scheduler(listen="127.0.0.1:0", journal_path=str(self.tmp_path / "j.sqlite"),
                                         time_scale=SCALE, worker_timeout_s=3.0, heartbeat_interval_s=0.1,
                                         transport=Transport(credentials=CREDS), limits=self.limits)
        port = await self.server.start()
        self.addr = f"127.0.0.1:{port}"
        self.agents = [build_worker(scheduler=self.addr, engine="sim", worker_id=w, time_scale=SCALE,
                                    transport=Transport(credentials=CREDS, token=TOKENS[w])) for w in self.worker_ids]
        for a in self.agents:
            await a.start()
        for a in self.agents:
            await a.wait_registered()
        self.ch = grpc.aio.insecure_channel(self.addr)
        self.stub = pbg.SchedulerStub(self.ch)
        self._worker_channels = []
        return self

    def worker_stub(self, i: int) -> pbg.WorkerStub:
        ch = grpc.aio.insecure_channel(self.agents[i].address)
        self._worker_channels.append(ch)
        return pbg.WorkerStub(ch)

    async def __aexit__(self, *exc):
        for ch in [self.ch, *self._worker_channels]:
            await ch.close()
        for a in self.agents:
            await a.stop(0)
        await self.server.stop(0)

    async def open(self, who: str, pid: str, spec: str):
        return await self.stub.OpenProgram(pb.OpenProgramRequest(program_id=pid, workflow_spec=spec), metadata=md(who))

    async def submit(self, who: str, pid: str, cid: str, **kw):
        kw.setdefault("prompt_tokens", 200)
        return await self.stub.SubmitCall(pb.SubmitCallRequest(program_id=pid, call_id=cid, step="think", **kw),
                                          metadata=md(who))


def run(coro_fn, tmp_path, **kw):
    async def main():
        async with Cluster(tmp_path, **kw) as c:
            await coro_fn(c)

    asyncio.run(main())


# ================================================================ identities ===================
def test_credentials_come_from_a_file_or_the_environment_and_bad_ones_are_refused(tmp_path):
    f = tmp_path / "tokens"
    f.write_text(TOKENS_TEXT)
    from_file = Credentials.load(str(f), env={})
    from_env = Credentials.load(env={"AGENTFLOW_TOKENS": TOKENS_TEXT.replace("\n", ";")})
    from_env_file = Credentials.load(env={"AGENTFLOW_TOKENS_FILE": str(f)})
    for c in (from_file, from_env, from_env_file):
        acme = c.identify(f"Bearer {TOKENS['acme']}")
        assert (acme.kind, acme.tenant, acme.scope("p")) == ("client", "acme", "acme/p")
        assert c.identify(f"Bearer {TOKENS['w0']}").worker_id == "w0"
        assert c.identify(f"Bearer {TOKENS['admin']}").is_admin
        assert c.identify("Bearer nope-nope-nope-nope") is None and c.identify(None) is None
        assert c.token_for_worker("w1") == TOKENS["w1"]
    assert Credentials.load(env={}).open  # nothing configured: one trust domain
    for bad, msg in [("short client acme", "shorter than 16"),
                     (f"{TOKENS['acme']} client a/b", "needs one tenant"),
                     (f"{TOKENS['acme']} root x", "expected"),
                     (f"{TOKENS['acme']} client acme\n{TOKENS['acme']} client evil", "listed twice")]:
        with pytest.raises(CredentialsError, match=msg):
            Credentials.parse(bad, source="t")
    with pytest.raises(CredentialsError, match="cannot read the tokens file"):
        Credentials.load(str(tmp_path / "missing"), env={})


def test_a_caller_without_a_credential_is_refused(tmp_path, spec_json):
    async def attack(c: Cluster):
        code, msg = await status(c.stub.OpenProgram(pb.OpenProgramRequest(program_id="p", workflow_spec=spec_json)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await status(c.stub.Health(pb.HealthRequest(), metadata=(("authorization", "Bearer guess"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await status(c.worker_stub(0).GetState(pb.GetStateRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    run(attack, tmp_path)


# ================================================================ isolation ====================
def test_another_tenants_program_is_indistinguishable_from_a_missing_one(tmp_path, spec_json):
    """Attack: close / submit into / report tools on another tenant's program; probe its id."""

    async def attack(c: Cluster):
        assert (await c.open("acme", "p", spec_json)).created
        victim = await c.submit("acme", "p", "p#0", event_seq=1)
        results = {}
        for pid in ("p", "never-opened"):
            results[pid] = [
                await status(c.stub.CloseProgram(pb.CloseProgramRequest(program_id=pid), metadata=md("evil"))),
                await status(c.submit("evil", pid, "x#0")),
                await status(c.stub.ReportTool(pb.ReportToolRequest(program_id=pid, step="run", tool="bash"),
                                               metadata=md("evil")))]
        # the same answers, but for the id itself
        assert [(code, msg.replace("'evil/p'", "ID")) for code, msg in results["p"]] == \
               [(code, msg.replace("'evil/never-opened'", "ID")) for code, msg in results["never-opened"]]
        assert results["p"][0][0] == grpc.StatusCode.NOT_FOUND
        # opening "p" gives the attacker a program of its own: nothing says acme has one
        assert (await c.open("evil", "p", spec_json)).created
        core = c.server.core
        assert core.programs["acme/p"].tenant == "acme" and core.programs["evil/p"].tenant == "evil"
        assert "acme/p#0" in core.sched.calls  # the victim's call is untouched
        assert victim.call_id == "p#0"  # and the victim sees its own ids

    run(attack, tmp_path)


def test_only_the_worker_a_call_was_routed_to_reports_it(tmp_path, spec_json):
    """Attack: finish another tenant's in-flight call, with any worker id, negative output_tokens."""

    async def attack(c: Cluster):
        await c.open("acme", "p", spec_json)
        ans = await c.submit("acme", "p", "p#0", event_seq=1)
        cid, routed = "acme/p#0", ans.worker_id
        other = "w1" if routed == "w0" else "w0"
        finished = pb.ReportCallRequest.FINISHED
        # a client of another tenant: not a worker, and its ids are its own
        code, _ = await status(c.stub.ReportCall(pb.ReportCallRequest(call_id=cid, worker_id=routed, kind=finished,
                                                                      output_tokens=5), metadata=md("evil")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        await c.stub.ReportCall(pb.ReportCallRequest(call_id="p#0", kind=pb.ReportCallRequest.FAILED),
                                metadata=md("evil"))  # names evil/p#0: nothing of acme's
        # another worker: the call is not its; a worker naming another worker id: refused
        code, _ = await status(c.stub.ReportCall(pb.ReportCallRequest(call_id=cid, worker_id=other, kind=finished),
                                                 metadata=md(other)))
        assert code == grpc.StatusCode.NOT_FOUND
        code, msg = await status(c.stub.ReportCall(pb.ReportCallRequest(call_id=cid, worker_id=routed, kind=finished),
                                                   metadata=md(other)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and msg.startswith("worker_id:")
        # the right worker, a negative count: refused, naming the field
        code, msg = await status(c.stub.ReportCall(pb.ReportCallRequest(call_id=cid, worker_id=routed, kind=finished,
                                                                        output_tokens=-7), metadata=md(routed)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("output_tokens:")
        assert cid in c.server.core.sched.calls  # still in flight after every attempt
        await c.stub.ReportCall(pb.ReportCallRequest(call_id=cid, worker_id=routed, kind=finished, output_tokens=5),
                                metadata=md(routed))
        assert cid not in c.server.core.sched.calls

    run(attack, tmp_path)


def test_a_worker_id_cannot_be_taken_over(tmp_path):
    """Attack: re-register w0 with the attacker's address so the victim's next Generate goes there."""

    async def attack(c: Cluster):
        info = pb.WorkerInfo(worker_id="w0", address="127.0.0.1:6666", kv_capacity_tokens=1000)
        before = c.server.core.workers["w0"].spec.address
        for who in ("evil", "w1"):
            code, msg = await status(c.stub.RegisterWorker(pb.RegisterWorkerRequest(info=info), metadata=md(who)))
            assert code == grpc.StatusCode.PERMISSION_DENIED and msg.startswith("worker_id:")
            code, _ = await status(c.stub.Heartbeat(pb.HeartbeatRequest(worker_id="w0"), metadata=md(who)))
            assert code == grpc.StatusCode.PERMISSION_DENIED
        assert c.server.core.workers["w0"].spec.address == before

    run(attack, tmp_path)


def test_decision_streams_cannot_be_hijacked(tmp_path, spec_json):
    """Attack: a second WatchDecisions(w0) took every decision of w0's, for good."""

    async def attack(c: Cluster):
        for who in ("evil", "w1"):
            stream = c.stub.WatchDecisions(pb.WatchDecisionsRequest(worker_id="w0"), metadata=md(who))
            code, _ = await status(stream.read())
            assert code == grpc.StatusCode.PERMISSION_DENIED
        await c.open("acme", "p", spec_json)
        w0 = c.agents[0]

        async def decide(i):  # a new prefix: every worker hears its priority
            await c.submit("acme", "p", f"p#{i}", prefixes=[pb.Prefix(key=f"k{i}", num_tokens=100)])
            cid = f"acme/p#{i}"
            await c.stub.ReportCall(pb.ReportCallRequest(
                call_id=cid, worker_id=c.server.core.call_worker[cid], kind=pb.ReportCallRequest.FINISHED,
                output_tokens=1), metadata=md(c.server.core.call_worker[cid]))

        # w0's own credential may hold a second stream: both get every decision
        second = c.stub.WatchDecisions(pb.WatchDecisionsRequest(worker_id="w0"), metadata=md("w0"))
        before = w0.decisions_applied
        await decide(0)
        assert isinstance(await asyncio.wait_for(second.read(), 5), pb.WorkerDecision)
        second.cancel()
        await asyncio.sleep(0.2)
        mid = w0.decisions_applied
        assert mid > before
        await decide(1)
        deadline = time.monotonic() + 5
        while w0.decisions_applied == mid and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert w0.decisions_applied > mid  # still hears after the other stream left

    run(attack, tmp_path)


def test_generate_and_get_state_answer_within_the_callers_tenant(tmp_path, spec_json):
    """Attack: list every tenant's prefix keys with GetState; probe them through Generate."""

    async def attack(c: Cluster):
        w = c.worker_stub(0)
        await c.open("acme", "p", spec_json)
        ans = await c.submit("acme", "p", "p#0", prefixes=[pb.Prefix(key="k", num_tokens=100, namespace="acme")])
        stub = c.worker_stub(0 if ans.worker_id == "w0" else 1)
        req = pb.GenerateRequest(call_id="p#0", program_id="p", prompt_ids=list(range(1, 201)), max_new_tokens=4,
                                 namespace="acme", hints=ans.hints, ignore_eos=True)
        events = [e async for e in stub.Generate(req, metadata=md("acme"))]
        assert events[-1].HasField("result")
        owner = c.agents[0 if ans.worker_id == "w0" else 1]
        admin_view = await (c.worker_stub(0 if ans.worker_id == "w0" else 1)).GetState(pb.GetStateRequest(),
                                                                                        metadata=md("admin"))
        assert admin_view.cached_prefixes  # the operator sees keys
        evil_view = await stub.GetState(pb.GetStateRequest(), metadata=md("evil"))
        assert list(evil_view.cached_prefixes) == []  # a client sees none
        assert owner is not None
        for field_, bad in [("namespace", dict(namespace="acme")),
                            ("prefixes[0].namespace", dict(prefixes=[pb.Prefix(key="k", num_tokens=100,
                                                                                namespace="acme")]))]:
            probe = pb.GenerateRequest(call_id="x", program_id="q", prompt_ids=[1, 2, 3], max_new_tokens=1, **bad)
            code, msg = await status(_drain(stub.Generate(probe, metadata=md("evil"))))
            assert code == grpc.StatusCode.PERMISSION_DENIED and msg.startswith(field_ + ":")
        code, _ = await status(w.ApplyHints(pb.WorkerDecision(), metadata=md("evil")))
        assert code == grpc.StatusCode.PERMISSION_DENIED

    run(attack, tmp_path)


async def _drain(stream):
    return [e async for e in stream]


def test_journal_is_private_to_its_owner(tmp_path, spec_json):
    async def attack(c: Cluster):
        await c.open("acme", "p", spec_json)
        for f in tmp_path.glob("j.sqlite*"):
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f

    run(attack, tmp_path)


# ================================================================ one client, not the others ====
def _raw(channel, method: str):
    return channel.unary_unary(f"/agentflow.v1.Scheduler/{method}", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)


def test_every_field_is_checked_at_the_edge_naming_it_and_others_keep_submitting(tmp_path, spec_json):
    """Attack: a registration with a negative rate broke every client's SubmitCall; NaN, negative
    time scale, 2^63-1 capacity, "not an address" were accepted; -5 output tokens blamed on
    prompt_tokens; 3.5 MB ids journaled; tool durations of 1e308 learned; nested JSON and invalid
    UTF-8 answered UNKNOWN."""

    async def attack(c: Cluster):
        await c.open("acme", "p", spec_json)
        good = dict(worker_id="w1", address="127.0.0.1:7001", kv_capacity_tokens=100_000)
        bad_infos = [("info.prefill_tokens_per_s", dict(prefill_tokens_per_s=-1)),
                     ("info.prefill_tokens_per_s", dict(prefill_tokens_per_s=math.nan)),
                     ("info.h2d_tokens_per_s", dict(h2d_tokens_per_s=math.inf)),
                     ("info.time_scale", dict(time_scale=-1)),
                     ("info.kv_capacity_tokens", dict(kv_capacity_tokens=2 ** 63 - 1)),
                     ("info.address", dict(address="not an address")),
                     ("info.worker_id", dict(worker_id="w1" + "x" * 300))]
        for fieldname, override in bad_infos:
            info = pb.WorkerInfo(**{**good, **override})
            code, msg = await status(c.stub.RegisterWorker(pb.RegisterWorkerRequest(info=info), metadata=md("admin")))
            assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, fieldname), (override, msg)
        assert (await c.submit("acme", "p", "p#0")).worker_id  # clients still submit
        cases = [("expected_output_tokens", dict(expected_output_tokens=-5)),
                 ("prompt_tokens", dict(prompt_tokens=-1)),
                 ("call_id", dict(prefixes=[], prompt_tokens=5, event_seq=0)),
                 ("event_seq", dict(event_seq=-3))]
        for fieldname, kw in cases:
            cid = "c" * 3_500_000 if fieldname == "call_id" else "c1"
            code, msg = await status(c.submit("acme", "p", cid, **kw))
            assert (code, msg.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, fieldname), msg[:200]
        code, msg = await status(c.stub.ReportTool(pb.ReportToolRequest(
            program_id="p", step="run", tool="bash", finished=True, duration_s=1e308), metadata=md("acme")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("duration_s:")
        assert 1e308 not in c.server.core.sched.tool_stats.samples("bash")  # nothing learned from it
        code, msg = await status(c.open("acme", "deep", '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("workflow_spec:")
        # invalid UTF-8 in program_id (field 1 of OpenProgramRequest), sent as raw bytes
        raw = b"\x0a\x03\xff\xfe\xfd"
        code, msg = await status(_raw(c.ch, "OpenProgram")(raw, metadata=md("acme")))
        assert (code, msg) == (grpc.StatusCode.INVALID_ARGUMENT, "program_id: is not valid UTF-8")
        raw = b"\x0a\x01p\x12\x02c1\x22\x04\x0a\x02\xc3\x28"  # prefixes[0].key
        code, msg = await status(_raw(c.ch, "SubmitCall")(raw, metadata=md("acme")))
        assert (code, msg) == (grpc.StatusCode.INVALID_ARGUMENT, "prefixes[0].key: is not valid UTF-8")
        assert not any(len(k) > 1000 for k in c.server.core.programs)
        assert c.server.core.journal.counts()["programs"] == 1

    run(attack, tmp_path)


def test_a_bad_call_fails_alone_not_its_batch_mates(tmp_path, spec_json):
    """Attack: backwards prefixes, or a call past a loop's max_iterations, failed every call of the
    same scheduling batch with UNAVAILABLE and left them queued."""

    async def attack(c: Cluster):
        for pid in ("p", "q"):
            await c.open("acme", pid, spec_json)
        # p runs its loop to the bound (4 iterations): think, then the tool, four times
        for i in range(4):
            ans = await c.submit("acme", "p", f"p#{i}")
            await c.stub.ReportCall(pb.ReportCallRequest(call_id=f"acme/p#{i}", worker_id=ans.worker_id, output_tokens=1,
                                                         kind=pb.ReportCallRequest.FINISHED), metadata=md(ans.worker_id))
            for finished in (False, True):
                await c.stub.ReportTool(pb.ReportToolRequest(program_id="p", step="run", tool="bash", finished=finished,
                                                             duration_s=1.0), metadata=md("acme"))
        backwards = [pb.Prefix(key="a", num_tokens=100), pb.Prefix(key="b", parent="a", num_tokens=50)]
        batch = pb.SubmitCallBatch(calls=[
            pb.SubmitCallRequest(program_id="q", call_id="q#0", step="think", prompt_tokens=200),
            pb.SubmitCallRequest(program_id="q", call_id="q#1", step="think", prompt_tokens=200, prefixes=backwards),
            pb.SubmitCallRequest(program_id="p", call_id="p#4", step="think", prompt_tokens=200),  # past the loop
        ])

        async def one():
            yield batch

        (resp,) = [r async for r in c.stub.SubmitCallBatches(one(), metadata=md("acme"))]
        ok, back, past = resp.answers
        assert ok.worker_id and not ok.error
        assert back.error.startswith("prefixes[1].num_tokens:")
        assert back.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert past.error.startswith("step:") and "iterations" in past.error
        assert past.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        core = c.server.core
        assert "acme/q#0" in core.call_worker and "acme/q#1" not in core.sched.calls and \
               "acme/p#4" not in core.sched.calls

    run(attack, tmp_path)


def _chain_spec(n: int) -> str:
    return json.dumps({"name": f"chain{n}", "agents": [{"name": "a", "system_prompt": "x"}],
                       "steps": [{"kind": "llm", "name": f"s{i}", "agent": "a",
                                  **({"next": f"s{i + 1}"} if i + 1 < n else {})} for i in range(n)]})


def test_a_large_spec_is_refused_and_a_heavy_compile_leaves_the_service_answering(tmp_path):
    """Attack: a valid 20,000-step chain (1.4 MB) blocked every RPC for 73 s; both workers were lost."""

    async def attack(c: Cluster):
        t = time.monotonic()
        code, msg = await status(c.open("evil", "big", _chain_spec(20_000)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.endswith("bytes; at most 1048576")
        code, msg = await status(c.open("evil", "long", _chain_spec(3_000)))  # under 1 MiB, too many steps
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg == "workflow_spec: has 3000 steps; at most 2000"
        assert time.monotonic() - t < 10  # refused by counting, not compiled
        # the largest allowed compiles in a thread: Health keeps answering meanwhile
        opening = asyncio.ensure_future(c.open("evil", "ok", _chain_spec(2_000)))
        answered = 0
        while not opening.done():
            await asyncio.wait_for(c.stub.Health(pb.HealthRequest(), metadata=md("acme")), 2.0)
            answered += 1
            await asyncio.sleep(0.01)
        assert (await opening).created and answered >= 3
        assert set(c.server.core.workers) == {"w0", "w1"}

    run(attack, tmp_path)


def test_compile_is_linear_in_the_steps():
    """The spec -> graph compile was quadratic (10k steps: 11 s). Linear: 4x the steps, < 8x the time
    (best of two runs each; quadratic would be 16x)."""
    from agentflow.runtime.service.core import compile_workflow

    lim = Limits(max_workflow_steps=10_000, max_spec_bytes=10_000_000)

    def best(n):
        spec = _chain_spec(n)
        out = []
        for _ in range(2):
            t = time.perf_counter()
            compile_workflow(spec, lim)
            out.append(time.perf_counter() - t)
        return min(out)

    small, large = best(500), best(2_000)
    assert large / small < 8.0, (small, large)


def test_quotas_idle_expiry_and_a_clients_word_against_a_worker(tmp_path, spec_json):
    """Attack: 50,000 programs opened and never closed grew memory and journal forever; any client
    declared a healthy worker failed."""

    async def attack(c: Cluster):
        for i in range(3):
            await c.open("evil", f"p{i}", spec_json)
        code, msg = await status(c.open("evil", "p3", spec_json))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in msg
        assert (await c.open("acme", "p0", spec_json)).created  # another tenant's quota is its own
        ans = await c.submit("evil", "p0", "c0", event_seq=1)
        retry = await c.submit("evil", "p0", "c0", failed_worker=ans.worker_id)
        assert retry.worker_id != ans.worker_id and ans.worker_id in c.server.core.workers  # still registered
        # idle programs expire (program_idle_s=1): memory, journal rows and quota come back
        deadline = time.monotonic() + 10
        while c.server.core.programs and time.monotonic() < deadline:
            await c.stub.Health(pb.HealthRequest(), metadata=md("admin"))
            await asyncio.sleep(0.2)
        assert not c.server.core.programs and c.server.core.journal.counts()["programs"] == 0
        assert (await c.open("evil", "p9", spec_json)).created

    run(attack, tmp_path, limits=Limits(max_programs_per_tenant=3, program_idle_s=1.0))


# ================================================================ faults =======================
def test_disk_full_is_retryable_and_memory_stays_as_the_journal_says(tmp_path, spec_json):
    """Attack: with the disk full, SQLite's error reached clients as UNKNOWN and memory and journal
    diverged. The journal's file is held at its size (SQLite's max_page_count: what a full disk
    does to it), then given room again."""

    async def attack(c: Cluster):
        core = c.server.core
        await c.open("acme", "p", spec_json)
        db = core.journal._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        # fill what is left of the last pages, then the next write fails
        failures = []
        for i in range(200):
            fat = [pb.Prefix(key=f"{i}-{j}-" + "x" * 240, num_tokens=10 * j) for j in range(16)]
            code, msg = await status(c.submit("acme", "p", f"p#{i}", prefixes=fat))
            if code != grpc.StatusCode.OK:
                failures.append((code, msg))
                break
        assert failures and failures[0][0] == grpc.StatusCode.UNAVAILABLE and "journal" in failures[0][1]
        assert f"acme/p#{i}" not in core.sched.calls and core.journal_failures == 1
        # memory is what the journal holds: a scheduler recovered from it has the same calls
        from agentflow.runtime.clock import ManualClock
        from agentflow.runtime.service.core import ServiceCore
        from agentflow.runtime.service.journal import Journal

        twin = ServiceCore(core.config, clock=ManualClock(), journal=Journal(tmp_path / "j.sqlite"))
        twin.recover()
        assert set(twin.sched.calls) == set(core.sched.calls) and set(twin.programs) == set(core.programs) == {"acme/p"}
        twin.journal.close()
        db.execute("PRAGMA max_page_count = 1073741823")  # space returns
        assert (await c.open("acme", "q", spec_json)).created
        assert (await c.submit("acme", "q", "q#0")).worker_id

    run(attack, tmp_path)


@pytest.mark.slow
def test_killing_every_worker_holds_the_calls_until_new_workers_register(tmp_path):
    """Attack: with every worker killed, `replay --service` exited within a second and left its
    programs open forever. Now calls wait (limits.worker_wait_s) and finish on new workers."""
    from agentflow.runtime.replay.live import LiveReplay
    from agentflow.runtime.replay.planning import planning_graph
    from agentflow.runtime.workload import load_workload
    from pathlib import Path

    workload = Path(__file__).resolve().parents[2] / "examples/workloads/swebench-mini-swe-agent.jsonl"

    async def attack(c: Cluster):
        programs = list(load_workload(workload).programs[:4])
        client = ServiceClient(c.addr, transport=Transport(token=TOKENS["acme"]))
        replay = LiveReplay(programs, planning_graph(programs), client, time_scale=SCALE, num_in_flight=4)
        task = asyncio.ensure_future(replay.run())
        deadline = time.monotonic() + 30
        while replay.stats.calls < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for a in c.agents:
            await a.stop(0)
        await asyncio.sleep(4.0)  # past the worker timeout: both are lost, calls wait
        assert not task.done() and not c.server.core.workers
        fresh = [build_worker(scheduler=c.addr, engine="sim", worker_id=w, time_scale=SCALE,
                              transport=Transport(credentials=CREDS, token=TOKENS[w])) for w in ("w0", "w1")]
        for a in fresh:
            await a.start()
        summary = await asyncio.wait_for(task, 120)
        assert summary["programs"] == 4 and not c.server.core.programs  # every one finished and closed
        await client.close()
        c.agents = fresh

    run(attack, tmp_path)


def test_every_run_gets_fresh_program_ids(tmp_path):
    """Attack: fixed ids (debate-1, r:{i}:{id}) made a second `agentflow run --engine HOST:PORT` or
    `replay --service` fail with FAILED_PRECONDITION."""
    from pathlib import Path

    from agentflow.runtime.executor.executor import Executor
    from agentflow.runtime.executor.service import connect_service
    from agentflow.runtime.replay.live_run import LiveSetup, run_live

    root = Path(__file__).resolve().parents[2]
    workload = str(root / "examples/workloads/swebench-mini-swe-agent.jsonl")

    async def attack(c: Cluster):
        c.server.core.config  # noqa: B018
        from tests.service.conftest import coding_workflow

        for _ in range(2):
            backend = await connect_service(c.addr, token=TOKENS["acme"])
            async with Executor(backend=backend) as ex:
                handle = await ex.start(coding_workflow(), {})
                await handle.result()
            await backend.aclose()
        assert len(c.server.core.closed) == 2  # two programs, two ids

    run(attack, tmp_path)

    async def serve_only():
        async with Cluster(tmp_path / "r") as c:
            loop = asyncio.get_running_loop()
            for _ in range(2):
                setup = LiveSetup(workload=workload, service=c.addr, num_programs=1, concurrency=1,
                                  time_scale=SCALE, token=TOKENS["acme"])
                _, results = await loop.run_in_executor(None, run_live, setup)
                assert next(iter(results.values()))["programs"] == 1

    (tmp_path / "r").mkdir()
    asyncio.run(serve_only())


# ================================================================ startup, as the user runs it ==
def _agentflow(*args, env=None, timeout_s=30):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "agentflow", *args], capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def _one_line_error(r, *needles):
    """A non-zero exit whose stderr ends with one `error: ...` line (a worker may first say it started)."""
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert r.returncode != 0 and "Traceback" not in r.stderr and errors == lines[-1:], r.stderr[-2000:]
    assert lines[-1].startswith("error: ") and len(lines) <= 2, r.stderr[-2000:]
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def test_startup_failures_are_one_clear_line(tmp_path):
    """Attack: a corrupt journal, a journal in a missing directory, --tls-cert without --tls-key, a
    bad tokens file: tracebacks, or a start."""
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    _one_line_error(_agentflow("serve", "--listen", "127.0.0.1:0", "--journal", str(corrupt)),
                    str(corrupt), "move it aside", "--journal")
    missing = tmp_path / "nope" / "j.sqlite"
    _one_line_error(_agentflow("serve", "--listen", "127.0.0.1:0", "--journal", str(missing)),
                    "does not exist", str(tmp_path / "nope"))
    cert = tmp_path / "cert.pem"
    cert.write_text("not really")
    _one_line_error(_agentflow("serve", "--listen", "127.0.0.1:0", "--journal", ":memory:", "--tls-cert", str(cert)),
                    "--tls-key")
    bad = tmp_path / "tokens"
    bad.write_text("short client acme\n")
    _one_line_error(_agentflow("serve", "--listen", "127.0.0.1:0", "--journal", ":memory:", "--tokens-file", str(bad)),
                    f"{bad}:1", "shorter than 16")


def test_a_taken_port_and_a_wrong_worker_token_end_with_one_line(tmp_path):
    """Attack: a second `agentflow serve` (or worker) on a taken port started and split the
    connections; a worker with a wrong token retried forever, silently."""
    import re
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS_TEXT)
    first = subprocess.Popen([sys.executable, "-m", "agentflow", "serve", "--listen", f"127.0.0.1:{port}",
                              "--journal", str(tmp_path / "j.sqlite"), "--tokens-file", str(tokens)],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = first.stderr.readline()
        assert re.search(r"agentflow scheduler on \S+", line) and "5 credential(s)" in line, line
        _one_line_error(_agentflow("serve", "--listen", f"127.0.0.1:{port}", "--journal", ":memory:"),
                        f"127.0.0.1:{port}", "taken")
        _one_line_error(_agentflow("worker", "--scheduler", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{port}",
                                   "--id", "w0", "--tokens-file", str(tokens)), "taken")
        r = _agentflow("worker", "--scheduler", f"127.0.0.1:{port}", "--id", "w0", "--tokens-file", str(tokens),
                       "--token", "wrong-token-0123456789")
        _one_line_error(r, "refused worker 'w0'", "UNAUTHENTICATED")
        r = _agentflow("worker", "--scheduler", f"127.0.0.1:{port}", "--id", "w1", "--tokens-file", str(tokens),
                       "--token", TOKENS["w0"])  # another worker's credential
        _one_line_error(r, "PERMISSION_DENIED")
        r = _agentflow("worker", "--scheduler", f"127.0.0.1:{port}", "--id", "w9", "--tokens-file", str(tokens))
        _one_line_error(r, "no 'worker w9' line")
    finally:
        first.terminate()
        first.wait(10)


def test_mtls_certificate_names_are_identities(tmp_path, spec_json):
    """mTLS identities (the scheduler side): a client certificate named "client:acme" is tenant acme;
    one signed by the CA with another name is nobody; no certificate: no connection."""
    _certificates(tmp_path, {"srv": "localhost", "acme": "client:acme", "bogus": "somebody"})
    t = lambda n: str(tmp_path / n)  # noqa: E731

    async def main():
        server, _ = build_scheduler(listen="127.0.0.1:0", time_scale=SCALE, transport=Transport(
            tls_cert=t("srv.pem"), tls_key=t("srv.key"), client_ca=t("ca.pem")))
        port = await server.start()
        addr = f"127.0.0.1:{port}"
        try:
            acme = Transport(tls_cert=t("ca.pem"), tls_key=t("acme.key"), client_cert=t("acme.pem")).channel(addr)
            bogus = Transport(tls_cert=t("ca.pem"), tls_key=t("bogus.key"), client_cert=t("bogus.pem")).channel(addr)
            none = Transport(tls_cert=t("ca.pem")).channel(addr)
            resp = await pbg.SchedulerStub(acme).OpenProgram(pb.OpenProgramRequest(program_id="p",
                                                                                   workflow_spec=spec_json))
            assert resp.created and server.core.programs["acme/p"].tenant == "acme"
            code, _ = await status(pbg.SchedulerStub(bogus).Health(pb.HealthRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = await status(pbg.SchedulerStub(none).Health(pb.HealthRequest(), timeout=3))
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            for ch in (acme, bogus, none):
                await ch.close()
        finally:
            await server.stop(0)

    asyncio.run(main())


# ================================================================ tenants inside the scheduler ==
def _tool_scoped(tenant: str, tool: str) -> str:
    from agentflow.runtime.scheduler import tool_scope

    return tool_scope(tenant) + tool


def test_a_tenant_cannot_read_hits_from_or_share_prefix_state_with_another(tmp_path, spec_json):
    """Attack: evil names acme's prefix key (and sends acme's prompt) to learn from `reuse_prefixes`
    and from its own `cached_tokens` whether acme's prompt is cached, and to become a user of
    acme's prefix (its eviction priority, its pins). One worker, so both calls meet there."""

    async def attack(c: Cluster):
        core = c.server.core
        w = c.worker_stub(0)
        prompt = list(range(1, 201))
        key = pb.Prefix(key="shared-k", num_tokens=150, namespace="")

        async def call(who, pid, cid):
            ans = await c.submit(who, pid, cid, prefixes=[key])
            req = pb.GenerateRequest(call_id=cid, program_id=pid, prompt_ids=prompt, max_new_tokens=4,
                                     hints=ans.hints, ignore_eos=True, prefixes=[key])
            events = [e async for e in w.Generate(req, metadata=md(who))]
            return ans, events[-1].result

        await c.open("acme", "p", spec_json)
        await call("acme", "p", "p#0")
        await c.stub.ReportTool(pb.ReportToolRequest(program_id="p", step="run", tool="bash", finished=False),
                                metadata=md("acme"))
        await c.stub.ReportTool(pb.ReportToolRequest(program_id="p", step="run", tool="bash", finished=True,
                                                     duration_s=1.0), metadata=md("acme"))
        acme_again, acme_res = await call("acme", "p", "p#1")
        assert list(acme_again.hints.reuse_prefixes) == ["shared-k"]  # acme's own: named as acme named it
        assert acme_res.cached_tokens > 0  # the prompt is cached

        await c.open("evil", "q", spec_json)
        evil_ans, evil_res = await call("evil", "q", "q#0")
        assert list(evil_ans.hints.reuse_prefixes) == []  # nothing of acme's reaches evil's answer
        assert evil_res.cached_tokens == 0  # and the cache does not hit on acme's tokens
        # inside the scheduler: two prefixes, each used by its own tenant's program only
        acme_pre, evil_pre = core.sched.prefixes["acme/shared-k"], core.sched.prefixes["evil/shared-k"]
        assert {p for ps in acme_pre.users.values() for p in ps} == {"acme/p"}
        assert {p for ps in evil_pre.users.values() for p in ps} == {"evil/q"}
        assert "shared-k" not in core.sched.prefixes
        # on the worker: evil's declaration did not take acme's entry
        book = c.agents[0].engine.book
        assert book.get("acme/shared-k").namespace == "acme" and book.get("evil/shared-k").namespace == "evil"

    run(attack, tmp_path, workers=("w0",))


def test_a_tenants_pins_reach_its_worker_and_no_other_tenant_can_take_or_end_them(tmp_path, spec_json):
    """Attack: evil claims the key of acme's cached conversation (its content address, which evil
    can compute from the prompt) and starts a tool first, to hold the pin slot acme's program needs
    and end it at its own next call. Each tenant's pin is its own; acme's reaches the worker's engine
    under the engine's own name for the sequence."""
    from agentflow.runtime.decision import UnpinReason

    spec = spec_json
    async def attack(c: Cluster):
        core, agent = c.server.core, c.agents[0]
        ended = []
        unpin = core.sched._unpin
        core.sched._unpin = lambda key, reason: (ended.append((key, reason)), unpin(key, reason))
        w = c.worker_stub(0)
        await c.open("acme", "p", spec)
        sys_prefix = [pb.Prefix(key="sys", num_tokens=100)]
        ans = await c.submit("acme", "p", "p#0", prefixes=sys_prefix)
        req = pb.GenerateRequest(call_id="p#0", program_id="p", prompt_ids=list(range(1, 201)), max_new_tokens=8,
                                 hints=ans.hints, ignore_eos=True, prefixes=sys_prefix)
        res = [e async for e in w.Generate(req, metadata=md("acme"))][-1].result
        full = res.cached[-1].key  # the engine's content address of acme's prompt + output
        await c.open("evil", "q", spec)
        await c.submit("evil", "q", "q#0", prefixes=[pb.Prefix(key=full, num_tokens=150)])
        done = pb.ReportCallRequest(call_id="evil/q#0", worker_id="w0", kind=pb.ReportCallRequest.FINISHED,
                                    output_tokens=8, cached=[pb.Prefix(key=full, num_tokens=150)])
        await c.stub.ReportCall(done, metadata=md("w0"))
        for who, pid in (("evil", "q"), ("acme", "p")):  # evil's tool starts first
            await c.stub.ReportTool(pb.ReportToolRequest(program_id=pid, step="run", tool="bash", finished=False),
                                    metadata=md(who))
        for _ in range(100):
            if agent.engine.worker.pinned_tokens > 0:
                break
            await asyncio.sleep(0.02)
        assert f"acme/{full}" in core.sched.pins and f"evil/{full}" in core.sched.pins
        assert core.sched.pins[f"acme/{full}"].program_id == "acme/p"
        assert agent.engine.worker.pinned_tokens >= 208  # acme's sequence, pinned on the worker's engine
        await c.submit("evil", "q", "q#1")  # evil's next call ends evil's pin, and only that
        assert (f"evil/{full}", UnpinReason.NEXT_CALL) in ended
        # acme's pin ends at its TTL (the clock runs 100x here), never by evil's doing
        assert all(r is UnpinReason.TTL_EXPIRED for k, r in ended if k.startswith("acme/"))

    run(attack, tmp_path, workers=("w0",))


def _other_spec(name: str, agent: str = "intruder", tool_hint_s: float | None = None) -> str:
    """A workflow of the same name as conftest's, with another agent."""
    from agentflow.spec import WorkflowSpec
    from agentflow.workflow import Workflow

    wf = Workflow(name)
    wf.tool("bash", duration_hint_s=tool_hint_s)
    wf.agent(agent, system_prompt="x", tools=["bash"])
    wf.llm("think", agent=agent)
    wf.call("run", tool="bash")
    wf.sequence("think", "run")
    return WorkflowSpec.from_compiled(wf.compile()).to_json()


def test_same_named_workflows_of_two_tenants_learn_apart(tmp_path, spec_json):
    """Attack: evil opens a workflow of the name acme uses (to be refused as acme's name, or to
    share its statistics), then teaches the scheduler that "bash" runs 600 s and that the workflow
    ends after one call, to spoil acme's pin times and remaining-work estimates."""

    async def attack(c: Cluster):
        core = c.server.core
        resp = await c.stub.OpenProgram(pb.OpenProgramRequest(program_id="x", workflow_spec=_other_spec("coder-loop")),
                                        metadata=md("evil"))
        assert resp.created  # the name is evil's own: not refused as taken, nor a hint that acme uses it
        await c.stub.CloseProgram(pb.CloseProgramRequest(program_id="x"), metadata=md("evil"))
        for i in range(30):
            pid = f"e{i}"
            await c.open("evil", pid, spec_json)
            if i < 6:
                await c.submit("evil", pid, f"{pid}#0")
            for finished in (False, True):
                await c.stub.ReportTool(pb.ReportToolRequest(program_id=pid, step="run", tool="bash", finished=finished,
                                                             duration_s=600.0), metadata=md("evil"))
            await c.stub.CloseProgram(pb.CloseProgramRequest(program_id=pid), metadata=md("evil"))
        await c.open("acme", "p", spec_json)
        await c.open("acme", "p-other", _other_spec("other-name"))
        ans = await c.submit("acme", "p", "p#0", prefixes=[pb.Prefix(key="sys", num_tokens=100)])
        await c.stub.ReportCall(pb.ReportCallRequest(call_id="acme/p#0", worker_id=ans.worker_id,
                                                     kind=pb.ReportCallRequest.FINISHED, output_tokens=8,
                                                     cached=[pb.Prefix(key="sys", num_tokens=100)]),
                                metadata=md(ans.worker_id))
        await c.stub.ReportTool(pb.ReportToolRequest(program_id="p", step="run", tool="bash", finished=False),
                                metadata=md("acme"))
        sched = core.sched
        for _ in range(100):  # the pin rides with the scheduler's next step: wait for it (5 s at most)
            if "acme/sys" in sched.pins:
                break
            await asyncio.sleep(0.05)
        wf = sched.programs["acme/p"].graph.name
        assert sched.remaining.remaining_calls(wf, 1) is None  # nothing learned from evil's programs
        assert sched.remaining.num_finished(sched.programs["evil/e0"].graph.name if "evil/e0" in sched.programs
                                            else "evil/coder-loop") >= 5
        pin = sched.pins.get("acme/sys")
        assert pin is not None  # acme's tool is expected to return soon (its hint, 2 s): its prefix is pinned
        assert pin.expires_at_s - pin.pinned_at_s < 60.0  # chosen from acme's durations, not evil's 600 s
        assert sched.tool_stats.count(_tool_scoped("evil", "bash")) == 30
        assert sched.tool_stats.count(_tool_scoped("acme", "bash")) == 0

    run(attack, tmp_path)


def _certificates(tmp_path, names: dict[str, str]) -> None:
    """A test CA and, for each file name, a certificate with that common name (SAN 127.0.0.1)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=test-ca")
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in names.items():
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext")


def test_mtls_on_the_worker_link_and_a_worker_certificate_is_only_its_own_id(tmp_path, spec_json):
    """mTLS on the worker side: worker w0 registers with its certificate ("worker:w0"), serves its own
    endpoint with it and asks clients for theirs; a call of tenant acme runs there end to end (acme's
    certificate on both hops, w0's report accepted as w0's). Attacks: a worker certificate of
    another id ("worker:w9") or a client's ("client:acme") registering as w1, and a worker
    certificate calling Generate, are refused; no certificate gets no connection."""
    _certificates(tmp_path, {"srv": "localhost", "w0": "worker:w0", "w9": "worker:w9", "acme": "client:acme"})
    t = lambda n: str(tmp_path / n)  # noqa: E731

    def worker(wid: str, cert: str):
        return build_worker(scheduler=addr, engine="sim", worker_id=wid, time_scale=SCALE,
                            transport=Transport(tls_cert=t("ca.pem"), tls_key=t(f"{cert}.key"),
                                                client_cert=t(f"{cert}.pem"), client_ca=t("ca.pem")))

    async def main():
        nonlocal addr
        server, _ = build_scheduler(listen="127.0.0.1:0", time_scale=SCALE, heartbeat_interval_s=0.1,
                                    transport=Transport(tls_cert=t("srv.pem"), tls_key=t("srv.key"),
                                                        client_ca=t("ca.pem")))
        addr = f"127.0.0.1:{await server.start()}"
        agents = []
        channels = []
        try:
            w0 = worker("w0", "w0")
            agents.append(w0)
            await w0.start()
            await w0.wait_registered()
            for cert in ("w9", "acme"):  # another worker's certificate, a client's: never worker w1
                impostor = worker("w1", cert)
                agents.append(impostor)
                await impostor.start()
                why = await asyncio.wait_for(impostor.failed, 10)
                assert "PERMISSION_DENIED" in why and "w1" in why
            assert set(server.core.workers) == {"w0"}

            acme = Transport(tls_cert=t("ca.pem"), tls_key=t("acme.key"), client_cert=t("acme.pem"))
            sched = acme.channel(addr)
            channels.append(sched)
            stub = pbg.SchedulerStub(sched)
            await stub.OpenProgram(pb.OpenProgramRequest(program_id="p", workflow_spec=spec_json))
            ans = await stub.SubmitCall(pb.SubmitCallRequest(program_id="p", call_id="p#0", step="think",
                                                             prompt_tokens=200))
            assert ans.worker_id == "w0" and ans.worker_address == w0.address
            to_worker = acme.channel(ans.worker_address)  # the worker's own endpoint, over mTLS
            channels.append(to_worker)
            req = pb.GenerateRequest(call_id="p#0", program_id="p", prompt_ids=list(range(1, 201)),
                                     max_new_tokens=4, hints=ans.hints, ignore_eos=True)
            events = [e async for e in pbg.WorkerStub(to_worker).Generate(req)]
            assert events[-1].result.prompt_tokens == 200
            assert "acme/p#0" not in server.core.sched.calls  # w0's FINISHED report, as w0, was accepted

            w9 = Transport(tls_cert=t("ca.pem"), tls_key=t("w9.key"), client_cert=t("w9.pem")).channel(w0.address)
            none = Transport(tls_cert=t("ca.pem")).channel(w0.address)
            channels += [w9, none]
            code, msg = await status(_drain(pbg.WorkerStub(w9).Generate(req)))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "worker credential" in msg
            code, _ = await status(pbg.WorkerStub(none).GetState(pb.GetStateRequest(), timeout=3))
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            for ch in channels:
                await ch.close()
            for a in agents:
                await a.stop(0)
            await server.stop(0)

    addr = ""
    asyncio.run(main())
