"""`ServiceBackend`: programs run through the scheduler service instead of a scheduler here.

    ProgramRun ──> ServiceBackend ──> client: ServiceClient (gRPC)  or  InProcessClient
      open_program(id, wf, tenant,    open_program(id, wf.spec().to_json(), tenant=...,
                   share)                          share_kv_across_programs=...)
      call(request, step, spans, ...) run_call(CallRequest(+ input_spans), request, on_chunk)
                                        -> (route + its reuse hints, result)
      tool(id, step, ...)             tool(id, step=..., tool=..., finished=..., duration_s=...)
      close_program(id, cancelled)    close_program(id, cancelled=...)

The service routes each call, runs it on a worker and applies its own decisions there, so this
backend keeps no decision log (`decisions` is None). Prompts are tokenized here with a local copy
of the served model's tokenizer (`tokenizer.encode_chat`: e.g. a `SimEngine` for simulated
workers, a `LocalEngine` for local ones), since prefix keys are cut on token ids. The workflow
travels as its spec, so its tools must be importable by reference (module-level functions).

Cross-agent KV reuse: the executor's input spans go with each submission, the program's tenant
and opt-in with its opening (the scheduler's namespace_for is then the requests'
`reuse_namespace`); the service answers each call with its reuse hints, and the client hands them
to the worker with the call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from agentflow.runtime.engines.base import GenerateRequest, GenerateResult, TokenChunk
from agentflow.runtime.reuse_plan import InputSpan
from agentflow.workflow import CompiledWorkflow


class ServiceBackend:
    decisions = None  # the service applies its decisions on its workers
    run_tag: str | None = None  # set: the executor's program ids carry it (fresh per run)

    def __init__(self, client: Any, *, tokenizer: Any, tenant: str = "", share_kv_across_programs: bool = False):
        self.client = client  # ServiceClient or InProcessClient; the caller opens and closes it
        self.tokenizer = tokenizer
        # used when open_program is not told (the executor tells it its own: namespace, opt-in)
        self.tenant = tenant
        self.share_kv_across_programs = share_kv_across_programs
        self.owns_client = False  # connect_service's backends close their client with themselves

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.tokenizer.encode_chat(messages)

    async def open_program(self, program_id: Hashable, workflow: CompiledWorkflow, *, tenant: str | None = None,
                           share_kv_across_programs: bool | None = None) -> None:
        share = self.share_kv_across_programs if share_kv_across_programs is None else share_kv_across_programs
        await self.client.open_program(str(program_id), workflow.spec().to_json(), tenant=tenant or self.tenant,
                                       share_kv_across_programs=share)

    async def call(self, request: GenerateRequest, *, step: str, expected_output_tokens: int,
                   on_chunk: Callable[[TokenChunk], None] | None = None,
                   input_spans: Sequence[InputSpan] = ()) -> tuple[str, GenerateResult]:
        from agentflow.runtime.service.core import CallRequest

        call = CallRequest(program_id=str(request.program_id), call_id=str(request.call_id), step=step,
                           prefixes=request.prefixes, prompt_tokens=len(request.prompt_ids),
                           expected_output_tokens=expected_output_tokens, input_spans=tuple(input_spans))
        route, result = await self.client.run_call(call, request, on_chunk=on_chunk)
        return route.worker_id, result

    async def tool(self, program_id: Hashable, *, step: str, tool: str, finished: bool,
                   duration_s: float = 0.0) -> None:
        await self.client.tool(str(program_id), step=step, tool=tool, finished=finished, duration_s=duration_s)

    async def close_program(self, program_id: Hashable, *, cancelled: bool = False) -> None:
        await self.client.close_program(str(program_id), cancelled=cancelled)

    async def tick(self) -> None:
        return None  # the service keeps its own time

    async def aclose(self) -> None:
        if self.owns_client:
            await self.client.close()


async def connect_service(address: str, *, tokenizer: str = "sim", token: str | None = None,
                          timeout_s: float = 5.0) -> ServiceBackend:
    """A backend on the scheduler service at `address` (`agentflow serve`), tokenizing like its
    workers: `tokenizer` "sim" (simulated workers) or "local" (local-model workers)."""
    from agentflow.runtime.executor.executor import make_engine
    from agentflow.runtime.executor.records import ExecutionError
    from agentflow.runtime.service.client import ServiceClient, ServiceUnavailable
    from agentflow.runtime.service.server import Transport

    client = ServiceClient(address, transport=Transport(token=token) if token else Transport())
    try:
        await client.connect(timeout_s)
    except ServiceUnavailable as e:
        await client.close()
        raise ExecutionError(str(e)) from None
    except BaseException:
        await client.close()
        raise
    backend = ServiceBackend(client, tokenizer=make_engine(tokenizer))
    backend.owns_client = True
    backend.run_tag = uuid.uuid4().hex[:8]  # fresh program ids per run (the service remembers closed ones)
    return backend


__all__ = ["ServiceBackend", "connect_service"]
