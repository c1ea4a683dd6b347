"""Tenancy at the front door: the service's credentials (a tokens file) bind each API key to its
tenant. A real scheduler and OpenAI server on loopback, the sim engine (`--openai-engine sim`);
real HTTP requests."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import require_modules

A, B = "tenant-a-token-0123456789", "tenant-b-token-0123456789"
WORKER, ADMIN = "worker-token-0123456789ab", "admin-token-0123456789abc"
TOKENS = f"{A} client tenant-a\n{B} client tenant-b\n{WORKER} worker w1\n{ADMIN} admin\n"


def _run(check):
    require_modules("starlette", "uvicorn", "prometheus_client", "httpx")
    import httpx

    from agentflow.runtime.frontdoor.cli import build_openai
    from agentflow.runtime.service.app import build_scheduler
    from agentflow.runtime.service.auth import Credentials
    from agentflow.runtime.service.server import Transport

    async def main():
        sched, _ = build_scheduler(journal_path=":memory:",
                                   transport=Transport(credentials=Credentials.parse(TOKENS, source="test")))
        await sched.start()
        fd = build_openai(sched, "127.0.0.1:0", engine="sim")
        port = await fd.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                return await check(c)
        finally:
            await fd.stop()
            await sched.stop(1.0)

    return asyncio.run(main())


def _h(token):
    return {"Authorization": f"Bearer {token}"}


def _chat(text, **extra):
    return {"model": "agentflow-sim", "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "system", "content": "You are the tenancy test agent."},
                         {"role": "user", "content": text}], **extra}


def test_each_key_is_its_tenant_and_sees_only_its_own_programs():
    async def check(c):
        ra = await c.post("/v1/chat/completions", headers=_h(A), json=_chat("a", agentflow={"program_id": "same"}))
        rb = await c.post("/v1/chat/completions", headers=_h(B), json=_chat("b", agentflow={"program_id": "same"}))
        assert ra.status_code == rb.status_code == 200
        # the same program id names two programs, one per tenant
        assert ra.json()["agentflow"]["program_id"] == "oa:tenant-a:same"
        assert rb.json()["agentflow"]["program_id"] == "oa:tenant-b:same"
        # an undeclared program of tenant b (inferred from its conversation)
        rb2 = await c.post("/v1/chat/completions", headers=_h(B), json=_chat("b alone"))
        pb2 = rb2.json()["agentflow"]["program_id"]
        seen_a = {p["program_id"] for p in (await c.get("/v1/agentflow/programs", headers=_h(A))).json()["programs"]}
        seen_b = {p["program_id"] for p in (await c.get("/v1/agentflow/programs", headers=_h(B))).json()["programs"]}
        seen_admin = {p["program_id"] for p in
                      (await c.get("/v1/agentflow/programs", headers=_h(ADMIN))).json()["programs"]}
        assert seen_a == {"oa:tenant-a:same"}
        assert seen_b == {"oa:tenant-b:same", pb2}
        assert seen_admin == seen_a | seen_b
        graph_a = (await c.get("/v1/agentflow/graph", headers=_h(A))).json()["workflows"]
        assert graph_a and all(g["workflow"].split(":")[1] == "tenant-a" for g in graph_a)
        # asking for another tenant's class by name shows nothing
        cls_b = next(g["workflow"] for g in (await c.get("/v1/agentflow/graph", headers=_h(B))).json()["workflows"])
        assert (await c.get(f"/v1/agentflow/graph?workflow={cls_b}", headers=_h(A))).json()["workflows"] == []
        # /metrics holds every tenant's traffic: an admin's only
        assert (await c.get("/metrics", headers=_h(A))).status_code == 403
        m = await c.get("/metrics", headers=_h(ADMIN))
        assert m.status_code == 200 and "agentflow_openai_requests_total" in m.text
        assert "tenant-a" not in m.text and "same" not in m.text  # labels never carry client-chosen values
        # a worker's credential makes no requests; a wrong key none either
        w = await c.post("/v1/chat/completions", headers=_h(WORKER), json=_chat("w"))
        assert w.status_code == 403 and w.json()["error"]["code"] == "permission_denied"
        assert (await c.post("/v1/chat/completions", headers=_h("nope-0123456789abcdef"), json=_chat("x"))
                ).status_code == 401
        assert (await c.get("/v1/agentflow/programs")).status_code == 401

    _run(check)


def test_a_tenants_declared_workflow_is_its_own():
    spec = ("spec_version: 1\nname: tenancy-flow\nagents:\n  - {name: coder, system_prompt: You write code.}\n"
            "steps:\n  - {name: write, kind: llm, agent: coder, prompt: go}\n")

    async def check(c):
        r = await c.post("/v1/agentflow/workflows", headers=_h(A), content=spec)
        assert r.status_code == 200, r.text
        assert (await c.get("/v1/agentflow/graph", headers=_h(A))).json()["declared"] == ["tenancy-flow"]
        assert (await c.get("/v1/agentflow/graph", headers=_h(B))).json()["declared"] == []
        # tenant b naming it gets a learned class of that name, not tenant a's workflow
        rb = await c.post("/v1/chat/completions", headers=_h(B),
                          json=_chat("b", agentflow={"program_id": "p", "workflow": "tenancy-flow"}))
        ra = await c.post("/v1/chat/completions", headers=_h(A),
                          json=_chat("a", agentflow={"program_id": "p", "workflow": "tenancy-flow", "agent": "coder"}))
        assert rb.status_code == ra.status_code == 200
        progs_b = (await c.get("/v1/agentflow/programs", headers=_h(B))).json()["programs"]
        progs_a = (await c.get("/v1/agentflow/programs", headers=_h(A))).json()["programs"]
        assert [p["declared"] for p in progs_b] == [False] and [p["declared"] for p in progs_a] == [True]
        assert ra.json()["agentflow"]["step"] == "write"

    _run(check)
