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
    HookRegistry, AROUND SchedulerRequestReceiver._split_work_and_control_reqs
                                                    DP attention: keep our messages in order
                                                    with the requests (see below)
    HookRegistry, AFTER TokenizerManager.__init__   HTTP process: POST /agentflow/control,
                                                    GET /agentflow/info (vocab size), and ...
    http_server.generate_contract_error (wrapped    ... a /generate whose kv_hints carry a
      by that hook, once)                           malformed agentflow action gets 400

Both hint paths end in `control.apply_actions` on every TP rank, in broadcast order; see
control.py for the diagram and why the clock is broadcast.

Data parallelism (--dp-size > 1): the DP controller dispatches requests to one DP rank each and
sends every message type it does not know (AgentflowControlReq among them) to *every* DP rank
(its dispatcher's fallback, `send_control_message`). A control message therefore reaches every
DP rank's tree; keys a rank never saw are ignored there. With DP attention
(--enable-dp-attention), each DP group's entry rank splits what it pulled into "work" (requests)
and "control" (everything else) and puts control *after* work, so a pin sent before a request
would apply after it, and the Tick that stamps a batch's clock would come after the requests it
stamps; and control goes out from global rank 0 over the whole TP group, so other groups' Ticks
would be lost. The AROUND hook on `_split_work_and_control_reqs` keeps AgentflowControlReq in the
work list at its arrival position: each DP group broadcasts its own copy, in arrival order, with
its own Tick, to its own ranks (which share one tree).

A failed load is loud: if register() fails, the plugin still claims its names (`workflow`,
`agentflow`) with factories that raise `PluginLoadError` naming the original error, so a server
started with `--radix-eviction-policy workflow` or `--radix-cache-backend agentflow` refuses to
start with that message instead of silently serving stock SGLang (SGLang's loader itself only
logs a plugin's exception and goes on).

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
INFO_ROUTE = "/agentflow/info"


class AgentflowControlReq(BaseReq, kw_only=True):
    """Hints without a request, on the scheduler's input socket. `envelope`: control.py's JSON
    envelope (bytes, so msgpack IPC carries it untouched); `tick_s`: the entry rank's clock."""

    envelope: bytes = b""
    tick_s: float | None = None


# The cache this process's scheduler built (one per scheduler process), for the entry-rank hook.
_local_cache = None
_clock: Callable[[], float] = time.monotonic


class PluginLoadError(RuntimeError):
    """The plugin could not register itself in this SGLang: its policy and backend refuse to run."""


# The error register() met in this process, if any (the refusing factories raise it again).
load_error: str | None = None


def register() -> None:
    """The entry point. Idempotent: a second call (tests, re-imports) changes nothing.

    On failure: log it, claim the plugin's names with factories that refuse (naming the error),
    and re-raise (SGLang's loader logs it once more and goes on without us)."""
    global load_error
    try:
        _register_policy()
        _register_backend()
        _register_message_type()
        _register_hooks()
        load_error = None
    except Exception as exc:
        load_error = f"{type(exc).__name__}: {exc}"
        logger.error("agentflow plugin failed to load (%s): the '%s' eviction policy and the '%s' radix-cache "
                     "backend will refuse to start", load_error, POLICY_NAME, BACKEND_NAME)
        _register_refusal(load_error)
        raise


def _refuse(error: str) -> Callable:
    def factory(*args, **kwargs):
        raise PluginLoadError(f"agentflow plugin failed to load: {error}. Start the server without "
                              f"--radix-eviction-policy {POLICY_NAME} / --radix-cache-backend {BACKEND_NAME}, "
                              "or fix the plugin's environment (docs/sglang.md)")
    return factory


def _register_refusal(error: str) -> None:
    """Best effort: whatever of SGLang's registries still works gets a refusing entry (a backend
    registered before the failure is `make_cache`, which refuses by itself once load_error is set)."""
    for step in (lambda: _add_policy(_refuse(error)), lambda: _add_backend(_refuse(error))):
        try:
            step()
        except Exception as exc:  # that registry is what broke: SGLang's CLI will reject the name
            logger.error("agentflow plugin: could not register a refusal either: %s: %s", type(exc).__name__, exc)


def eviction_policy_factories() -> dict:
    """SGLang's private eviction-policy registry, `mem_cache.utils._EVICTION_POLICY_FACTORIES`.

    The only place the plugin touches it. SGLang 0.5.23 has no public way to add a policy: the
    dict maps a policy name to a factory called as `factory(**config)` by `get_eviction_strategy`.
    This checks that shape (a dict holding SGLang's own `lru` and `priority` factories) and raises
    PluginLoadError when a newer SGLang changed it, instead of writing into something else;
    tests/engines/sglang/test_plugin.py pins the same contract."""
    from sglang.srt.mem_cache import utils

    registry = getattr(utils, "_EVICTION_POLICY_FACTORIES", None)
    if not isinstance(registry, dict) or not {"lru", "priority"} <= registry.keys() \
            or not all(callable(f) for f in registry.values()) or not callable(getattr(utils, "get_eviction_strategy", None)):
        raise PluginLoadError("sglang.srt.mem_cache.utils._EVICTION_POLICY_FACTORIES is not the dict of policy "
                              f"factories SGLang 0.5.23 has (found {type(registry).__name__}): this SGLang "
                              "changed its private eviction-policy registry; update plugin.eviction_policy_factories")
    return registry


def _add_policy(factory: Callable) -> None:
    from sglang.srt.arg_groups.choices import (
        RADIX_EVICTION_POLICY_CHOICES,
        add_radix_eviction_policy_choices,
    )

    eviction_policy_factories()[POLICY_NAME] = factory
    if POLICY_NAME not in RADIX_EVICTION_POLICY_CHOICES:
        add_radix_eviction_policy_choices([POLICY_NAME])


def _register_policy() -> None:
    _add_policy(WorkflowStrategy)


def make_cache(ctx):
    """Radix-cache backend factory: SGLang's own construction (HiCache and all), our subclass,
    forced onto the Python tree core (custom policies and node objects need it)."""
    from agentflow.runtime.engines.sglang.pins import AgentflowRadixCache
    from sglang.srt.mem_cache.registry import create_unified_radix_cache

    global _local_cache
    if load_error is not None:
        _refuse(load_error)()
    ctx.params.tree_core_backend = "python"
    cap = os.environ.get("AGENTFLOW_MAX_PINNED_TOKENS")
    cls = functools.partial(AgentflowRadixCache, max_pinned_tokens=int(cap) if cap else None)
    _local_cache = create_unified_radix_cache(ctx, cache_class=cls)
    return _local_cache


def _add_backend(factory: Callable) -> None:
    from sglang.srt.mem_cache import registry

    if registry.get_radix_cache_factory(BACKEND_NAME) is None:
        registry.register_radix_cache_backend(BACKEND_NAME, factory)


def _register_backend() -> None:
    _add_backend(make_cache)


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
        apply_actions(cache, actions, request_token_ids=recv_req.input_ids,
                      request_cache_salt=getattr(recv_req, "cache_salt", None))


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


def _around_split_work_and_control_reqs(original, receiver, recv_reqs, *args, **kwargs):
    """DP attention only (SGLang calls the split only then): our messages ride the work list at
    their arrival position, so they keep their order with requests and stay in this DP group."""
    work, control = original(receiver, recv_reqs, *args, **kwargs)
    if not any(isinstance(r, AgentflowControlReq) for r in control):
        return work, control
    ours_or_work = {id(r) for r in work} | {id(r) for r in control if isinstance(r, AgentflowControlReq)}
    return ([r for r in recv_reqs if id(r) in ours_or_work],
            [r for r in control if not isinstance(r, AgentflowControlReq)])


# ---- HTTP side ----

def kv_hints_error(body) -> str | None:
    """What is wrong with a /generate body's agentflow actions in `kv_hints` (None: nothing).
    Other consumers' actions are not judged here; SGLang's own contract check runs first."""
    if not isinstance(body, dict) or not body.get("kv_hints"):
        return None
    hints = body["kv_hints"]
    for i, one in enumerate(hints if isinstance(hints, list) else [hints]):
        try:
            parse_envelope(one)
        except ControlError as exc:
            return f"kv_hints{f'[{i}]' if isinstance(hints, list) else ''}: {exc}"
    return None


def _with_hints_check(contract_error: Callable) -> Callable:
    if getattr(contract_error, "_agentflow", False):
        return contract_error

    def checked(body):
        return contract_error(body) or kv_hints_error(body)

    checked._agentflow = True
    return checked



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


async def info_route(request):
    """GET /agentflow/info: what a client must know about the served model to talk to it safely
    (token ids at or above `vocab_size` crash SGLang's embedding; clients never send them)."""
    from sglang.srt.entrypoints.http_server import get_global_state
    from starlette.responses import JSONResponse

    manager = get_global_state().tokenizer_manager
    return JSONResponse({"vocab_size": int(manager.model_config.vocab_size),
                         "context_length": int(manager.model_config.context_len),
                         "plugin": BACKEND_NAME, "policy": POLICY_NAME})


def add_routes(app) -> None:
    if not any(getattr(r, "path", None) == CONTROL_ROUTE for r in app.routes):
        app.add_route(CONTROL_ROUTE, control_route, methods=["POST"])
    if not any(getattr(r, "path", None) == INFO_ROUTE for r in app.routes):
        app.add_route(INFO_ROUTE, info_route, methods=["GET"])


def _after_tokenizer_manager_init(result, *args, **kwargs):
    http = sys.modules.get("sglang.srt.entrypoints.http_server")
    if http is not None:  # an offline Engine has a TokenizerManager but no HTTP app
        add_routes(http.app)
        # /generate's schema gate, looked up by name at each request: malformed agentflow
        # kv_hints get SGLang's own 400 {"error": ...} before the request is queued.
        http.generate_contract_error = _with_hints_check(http.generate_contract_error)


_HOOKS = (
    ("sglang.srt.managers.scheduler.Scheduler.init_request_dispatcher", _after_init_request_dispatcher, "AFTER"),
    ("sglang.srt.managers.scheduler.Scheduler.handle_generate_request", _before_handle_generate_request, "BEFORE"),
    ("sglang.srt.managers.schedule_policy.PrefillAdder._commit_prefill_admission", _after_commit_prefill_admission,
     "AFTER"),
    ("sglang.srt.managers.scheduler_components.request_receiver.SchedulerRequestReceiver._pull_raw_reqs",
     _around_pull_raw_reqs, "AROUND"),
    ("sglang.srt.managers.scheduler_components.request_receiver.SchedulerRequestReceiver."
     "_split_work_and_control_reqs", _around_split_work_and_control_reqs, "AROUND"),
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
    "INFO_ROUTE",
    "POLICY_NAME",
    "AgentflowControlReq",
    "PluginLoadError",
    "accept_control",
    "add_routes",
    "control_route",
    "eviction_policy_factories",
    "handle_control",
    "info_route",
    "kv_hints_error",
    "make_cache",
    "register",
]
