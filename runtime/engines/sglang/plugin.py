"""agentflow's SGLang plugin: entry point `agentflow` in the group `sglang.srt.plugins`.

SGLang calls `register()` in every process it starts (the HTTP server process before it parses
arguments, each scheduler process before it builds its cache), then applies the hooks registered
here. Nothing in SGLang is forked or edited; everything goes through its extension points:

    extension point (SGLang 0.5.23)                 what agentflow puts there
    ─────────────────────────────────────────────   ───────────────────────────────────────────────
    mem_cache.utils._EVICTION_POLICY_FACTORIES      "workflow" -> policy.WorkflowStrategy
      + add_radix_eviction_policy_choices           (so --radix-eviction-policy workflow parses)
    mem_cache.registry.register_radix_cache_backend "agentflow" -> pins.AgentflowRadixCache on the
                                                    Python tree core (--radix-cache-backend agentflow)
    managers.io_struct.hook_custom_types            AgentflowControlReq, a BaseReq that crosses the
                                                    tokenizer -> scheduler socket like any request
    HookRegistry, AFTER Scheduler.init_request_dispatcher
                                                    route AgentflowControlReq to the cache
    HookRegistry, BEFORE Scheduler.handle_generate_request
                                                    apply a request's kv_hints (control.py) ...
    HookRegistry, AFTER PrefillAdder._commit_prefill_admission
                                                    ... but end its program's pins only once the
                                                    request is admitted and locks its own prefix
    HookRegistry, AROUND SchedulerRequestReceiver._pull_raw_reqs
                                                    entry rank: put a Tick (its clock) first in
                                                    what it broadcasts to the TP ranks
    HookRegistry, AFTER TokenizerManager.__init__   HTTP process: POST /agentflow/control

Both hint paths end in `control.apply_actions` on every TP rank, in broadcast order; see
control.py for the diagram and why the clock is broadcast. Data parallelism (--dp-size > 1) routes
requests through a controller that does not know AgentflowControlReq: the control route then
reaches no scheduler, so use one server per DP rank (agentflow routes between workers itself).

Environment: AGENTFLOW_MAX_PINNED_TOKENS caps pinned tokens per rank (default: half the KV pool).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable

from agentflow.runtime.engines.sglang.control import (
    ControlError,
    ProgramCall,
    apply_actions,
    parse_envelope,
)
from agentflow.runtime.engines.sglang.policy import WorkflowStrategy
from sglang.srt.managers.io_struct import BaseReq

logger = logging.getLogger(__name__)

POLICY_NAME = "workflow"
BACKEND_NAME = "agentflow"
CONTROL_ROUTE = "/agentflow/control"


class AgentflowControlReq(BaseReq, kw_only=True):
    """Hints without a request, on the scheduler's input socket. `envelope`: control.py's JSON
    envelope (bytes, so msgpack IPC carries it untouched); `tick_s`: the entry rank's clock."""

    envelope: bytes = b""
    tick_s: float | None = None


# The cache this process's scheduler built (one per scheduler process), for the entry-rank hook.
_local_cache = None
_clock: Callable[[], float] = time.monotonic


def register() -> None:
    """The entry point. Idempotent: a second call (tests, re-imports) changes nothing."""
    _register_policy()
    _register_backend()
    _register_message_type()
    _register_hooks()


def _register_policy() -> None:
    from sglang.srt.arg_groups.choices import (
        RADIX_EVICTION_POLICY_CHOICES,
        add_radix_eviction_policy_choices,
    )
    from sglang.srt.mem_cache import utils

    utils._EVICTION_POLICY_FACTORIES[POLICY_NAME] = WorkflowStrategy
    if POLICY_NAME not in RADIX_EVICTION_POLICY_CHOICES:
        add_radix_eviction_policy_choices([POLICY_NAME])


def make_cache(ctx):
    """Radix-cache backend factory: SGLang's own construction (HiCache and all), our subclass,
    forced onto the Python tree core (custom policies and node objects need it)."""
    from agentflow.runtime.engines.sglang.pins import AgentflowRadixCache
    from sglang.srt.mem_cache.registry import create_unified_radix_cache

    global _local_cache
    ctx.params.tree_core_backend = "python"
    cap = os.environ.get("AGENTFLOW_MAX_PINNED_TOKENS")
    cls = functools.partial(AgentflowRadixCache, max_pinned_tokens=int(cap) if cap else None)
    _local_cache = create_unified_radix_cache(ctx, cache_class=cls)
    return _local_cache


def _register_backend() -> None:
    from sglang.srt.mem_cache.registry import (
        get_radix_cache_factory,
        register_radix_cache_backend,
    )

    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, make_cache)


def _register_message_type() -> None:
    from sglang.srt.managers import io_struct

    if AgentflowControlReq not in io_struct._all_types:
        io_struct.hook_custom_types(AgentflowControlReq)


# ---- scheduler side (every TP rank) ----

def _agentflow_cache(scheduler):
    from agentflow.runtime.engines.sglang.pins import AgentflowRadixCache

    cache = getattr(scheduler, "tree_cache", None)
    return cache if isinstance(cache, AgentflowRadixCache) else None


def handle_control(scheduler, req: AgentflowControlReq) -> None:
    """Apply one control message on this rank (the dispatcher calls it; it answers nothing)."""
    cache = _agentflow_cache(scheduler)
    if cache is None:
        logger.warning("agentflow control message ignored: start the server with --radix-cache-backend %s",
                       BACKEND_NAME)
        return
    if req.tick_s is not None:
        cache.advance_clock(req.tick_s)
    if req.envelope:
        try:
            apply_actions(cache, parse_envelope(req.envelope))
        except ControlError as exc:  # the HTTP route validated it; never let one message stop a rank
            logger.error("agentflow control message dropped: %s", exc)
    return


def _after_init_request_dispatcher(result, scheduler, *args, **kwargs):
    dispatcher = scheduler._request_dispatcher
    dispatcher._mapping[AgentflowControlReq] = functools.partial(handle_control, scheduler)
    dispatcher._mro_cache.clear()


def _request_actions(req) -> list:
    hints = getattr(req, "kv_hints", None)
    if hints is None:
        return []
    try:
        return parse_envelope(hints)
    except ControlError as exc:  # the request still runs; only its hints are lost
        logger.error("agentflow kv_hints of %s dropped: %s", getattr(req, "rid", "?"), exc)
        return []


def _before_handle_generate_request(scheduler, recv_req, *args, **kwargs):
    """A request arrived (every rank, broadcast order): declarations, priorities, pins apply now;
    "this is program P's next call" waits for admission (below)."""
    cache = _agentflow_cache(scheduler)
    if cache is not None:
        actions = [a for a in _request_actions(recv_req) if not isinstance(a, ProgramCall)]
        apply_actions(cache, actions, request_token_ids=recv_req.input_ids)


def _after_commit_prefill_admission(result, adder, req, *args, **kwargs):
    """The request was admitted and holds its own lock on its cached prefix: only now do the
    program's pins end (released at arrival, a queued request's prefix could be evicted first)."""
    from agentflow.runtime.engines.sglang.pins import AgentflowRadixCache

    cache = getattr(adder, "tree_cache", None)
    if isinstance(cache, AgentflowRadixCache) and cache.pins:
        apply_actions(cache, [a for a in _request_actions(req) if isinstance(a, ProgramCall)])


def _around_pull_raw_reqs(original, receiver, *args, **kwargs):
    """On the entry rank (the one that pulls from the socket; others get None), put a Tick first
    in what is about to be broadcast: when anything arrived, or when a pin's deadline passed."""
    reqs = original(receiver, *args, **kwargs)
    cache = _local_cache
    if not isinstance(reqs, list) or cache is None:
        return reqs
    now = _clock()
    deadline = cache.next_deadline_s()
    if reqs or (deadline is not None and deadline <= now):
        reqs.insert(0, AgentflowControlReq(tick_s=now))
    return reqs


# ---- HTTP side ----

async def accept_control(body: bytes, dispatch: Callable[[AgentflowControlReq], Awaitable[None]]) -> tuple[int, dict]:
    """The route's logic, apart from the web framework: validate the envelope (400 and nothing
    applied when malformed), then hand it on unchanged. Returns (HTTP status, JSON body)."""
    try:
        actions = parse_envelope(body)
    except ControlError as exc:
        return 400, {"error": str(exc)}
    await dispatch(AgentflowControlReq(envelope=body))
    return 200, {"accepted": len(actions), "message_id": json.loads(body).get("message_id")}


async def control_route(request):
    """POST /agentflow/control on SGLang's FastAPI app: to the scheduler through the tokenizer
    manager's own socket (the path every request takes)."""
    from sglang.srt.entrypoints.http_server import get_global_state
    from starlette.responses import JSONResponse

    manager = get_global_state().tokenizer_manager
    manager.auto_create_handle_loop()
    status, content = await accept_control(await request.body(), manager._async_dispatch_to_scheduler)
    return JSONResponse(status_code=status, content=content)


def add_routes(app) -> None:
    if not any(getattr(r, "path", None) == CONTROL_ROUTE for r in app.routes):
        app.add_route(CONTROL_ROUTE, control_route, methods=["POST"])


def _after_tokenizer_manager_init(result, *args, **kwargs):
    http = sys.modules.get("sglang.srt.entrypoints.http_server")
    if http is not None:  # an offline Engine has a TokenizerManager but no HTTP app
        add_routes(http.app)


_HOOKS = (
    ("sglang.srt.managers.scheduler.Scheduler.init_request_dispatcher", _after_init_request_dispatcher, "AFTER"),
    ("sglang.srt.managers.scheduler.Scheduler.handle_generate_request", _before_handle_generate_request, "BEFORE"),
    ("sglang.srt.managers.schedule_policy.PrefillAdder._commit_prefill_admission", _after_commit_prefill_admission,
     "AFTER"),
    ("sglang.srt.managers.scheduler_components.request_receiver.SchedulerRequestReceiver._pull_raw_reqs",
     _around_pull_raw_reqs, "AROUND"),
    ("sglang.srt.managers.tokenizer_manager.TokenizerManager.__init__", _after_tokenizer_manager_init, "AFTER"),
)


def _register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, fn, kind in _HOOKS:
        if not any(h is fn for _, h, _ in HookRegistry._hooks.get(target, ())):
            HookRegistry.register(target, fn, HookType[kind])


__all__ = [
    "BACKEND_NAME",
    "CONTROL_ROUTE",
    "POLICY_NAME",
    "AgentflowControlReq",
    "accept_control",
    "add_routes",
    "control_route",
    "handle_control",
    "make_cache",
    "register",
]
