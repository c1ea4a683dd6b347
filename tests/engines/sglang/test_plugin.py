"""plugin.py against SGLang 0.5.23's real registries, IPC codec, dispatcher and cache (CPU).

What SGLang's scheduler process would do is played by its own parts: `TypeBasedDispatcher` (the
scheduler's request dispatcher), `io_struct.msgpack_encode/decode` and `sock_send` over zmq (the
tokenizer -> scheduler socket), pickle (what `broadcast_pyobj` does between TP ranks),
`GenerateReqInput`'s own normalization (how `kv_hints` become a `KvHintsEnvelope`), the real
`SchedulerRequestReceiver._pull_raw_reqs` hooked by SGLang's `HookRegistry`. The `Scheduler`
object is a stand-in (a namespace holding `tree_cache` and `_request_dispatcher`, the only two
attributes the hooks touch): its module needs a GPU stack to import.
"""

from __future__ import annotations

import json
import pickle
import types
from array import array

import pytest

pytestmark = pytest.mark.needs_sglang

SYS = (1, 2, 3, 4)
A = SYS + (10, 11, 12)


@pytest.fixture
def plugin(sglang_caches):
    from agentflow.runtime.engines.sglang import plugin

    plugin.register()
    return plugin


def test_register_installs_every_extension_point_once(plugin):
    from agentflow.runtime.engines.sglang.policy import WorkflowStrategy
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES
    from sglang.srt.managers import io_struct
    from sglang.srt.mem_cache.registry import get_radix_cache_factory
    from sglang.srt.mem_cache.utils import get_eviction_strategy
    from sglang.srt.plugins.hook_registry import HookRegistry

    plugin.register()  # a second call (SGLang guards, but tests and re-imports do not) adds nothing
    assert isinstance(get_eviction_strategy("workflow", {}), WorkflowStrategy)
    assert RADIX_EVICTION_POLICY_CHOICES.count("workflow") == 1
    assert get_radix_cache_factory("agentflow") is plugin.make_cache
    assert io_struct._all_types.count(plugin.AgentflowControlReq) == 1
    for target, fn, kind in plugin._HOOKS:
        hooks = [(t.name, h) for t, h, _ in HookRegistry._hooks[target] if h is fn]
        assert hooks == [(kind, fn)], target


def test_a_control_message_crosses_sglangs_ipc_codec_unchanged(plugin):
    from sglang.srt.managers import io_struct

    msg = plugin.AgentflowControlReq(envelope=b'{"actions": []}', tick_s=12.5)
    back = io_struct.msgpack_decode(io_struct.msgpack_encode(msg))
    assert type(back) is plugin.AgentflowControlReq
    assert (back.envelope, back.tick_s) == (msg.envelope, msg.tick_s)


def _rank(plugin, cache):
    from sglang.utils import TypeBasedDispatcher

    scheduler = types.SimpleNamespace(tree_cache=cache, _request_dispatcher=TypeBasedDispatcher([]))
    plugin._after_init_request_dispatcher(None, scheduler)
    return scheduler


def _pull(plugin, monkeypatch, now_s, pulled):
    """The entry rank's hooked _pull_raw_reqs, then the broadcast (pickle) to every rank."""
    monkeypatch.setattr(plugin, "_clock", lambda: now_s)
    reqs = plugin._around_pull_raw_reqs(lambda receiver: pulled, None)
    return pickle.loads(pickle.dumps(reqs))


def test_every_tp_rank_applies_the_same_control_messages_and_reaps_on_the_broadcast_tick(plugin, af_cache,
                                                                                          monkeypatch):
    from agentflow.runtime.engines.sglang.control import (
        DeclarePrefix,
        PinPrefix,
        SetPriority,
        to_envelope,
    )

    ranks = [af_cache(), af_cache()]
    for d in ranks:
        d.insert(A)
        d.insert(SYS + (20, 21))
    schedulers = [_rank(plugin, d.cache) for d in ranks]
    monkeypatch.setattr(plugin, "_local_cache", ranks[0].cache)  # rank 0 is the entry rank
    env = to_envelope([DeclarePrefix(key="A", namespace="t", num_tokens=len(A), token_ids=A),
                       SetPriority(key="A", priority=900), PinPrefix(key="A", program_id="7", ttl_s=3.0)],
                      message_id="m")
    sent = plugin.AgentflowControlReq(envelope=json.dumps(env).encode())
    batch = _pull(plugin, monkeypatch, 100.0, [sent])
    assert [m.tick_s for m in batch] == [100.0, None]  # the tick goes first
    for s in schedulers:
        for m in batch:
            s._request_dispatcher(m)
    trees = [d.tree() for d in ranks]
    assert trees[0] == trees[1]
    assert {t: (p, locks) for t, p, locks in trees[0]}[A] == (900, 1)
    assert all(d.cache.next_deadline_s() == 103.0 for d in ranks)

    assert _pull(plugin, monkeypatch, 102.9, []) == []  # nothing due, nothing arrived: no tick
    batch = _pull(plugin, monkeypatch, 103.0, [])  # a deadline passed: the entry rank ticks
    assert [m.tick_s for m in batch] == [103.0]
    for s in schedulers:
        s._request_dispatcher(batch[0])
    assert all(d.cache.pins == {} for d in ranks)
    assert ranks[0].tree() == ranks[1].tree()
    assert plugin._around_pull_raw_reqs(lambda receiver: None, None) is None  # other ranks pull nothing


def test_kv_hints_declare_keys_from_the_requests_own_tokens_and_its_admission_ends_the_programs_pins(plugin,
                                                                                                     af_cache):
    from agentflow.runtime.engines.sglang.control import (
        DeclarePrefix,
        ProgramCall,
        to_envelope,
    )
    from sglang.srt.managers.io_struct import GenerateReqInput

    d = af_cache()
    d.insert(A)
    d.cache.declare_prefix("A", "t", A)
    assert d.cache.pin("A", "7", 60.0)  # from program 7's last turn
    scheduler = _rank(plugin, d.cache)
    hints = to_envelope([DeclarePrefix(key="sys", namespace="t", num_tokens=4), ProgramCall(program_id="7")],
                        message_id="r1")
    obj = GenerateReqInput(input_ids=list(A), kv_hints=hints, sampling_params={"max_new_tokens": 2},
                           extra_key="t", priority=5)
    obj.normalize_batch_and_arguments()  # SGLang turns the JSON into its KvHintsEnvelope struct
    recv = types.SimpleNamespace(rid="r1", kv_hints=obj.kv_hints, input_ids=array("q", obj.input_ids))
    plugin._before_handle_generate_request(scheduler, recv)
    assert tuple(d.cache.keys["sys"].token_ids) == SYS and d.cache.keys["sys"].extra_key == "t"
    assert list(d.cache.pins) == [("A", "7")]  # queued, not admitted: the pin still holds the prefix
    adder = types.SimpleNamespace(tree_cache=d.cache)  # SGLang's PrefillAdder, after req.lock = ...
    plugin._after_commit_prefill_admission(None, adder, recv, None, 0)
    assert d.cache.pins == {} and d.cache.released[-1].reason == "next_call"


def test_a_bad_hint_is_logged_and_dropped_never_raised_in_the_scheduler(plugin, af_cache, caplog):
    d = af_cache()
    scheduler = _rank(plugin, d.cache)
    bad = {"protocol_version": "agentflow.kv/1", "message_id": "x",
           "actions": [{"action_id": "a", "action_type": "agentflow.pin", "action_version": "1",
                        "payload": {"key": "k", "program_id": "1", "ttl_s": -5}}]}
    plugin._before_handle_generate_request(scheduler, types.SimpleNamespace(rid="r", kv_hints=bad, input_ids=None))
    scheduler._request_dispatcher(plugin.AgentflowControlReq(envelope=b"{not json"))
    assert [r.levelname for r in caplog.records if "agentflow" in r.getMessage()] == ["ERROR", "ERROR"]
    assert d.cache.pins == {}


def test_control_messages_to_a_server_without_the_backend_are_ignored(plugin, af_cache, caplog):
    scheduler = types.SimpleNamespace(tree_cache=object(), _request_dispatcher=None)
    plugin.handle_control(scheduler, plugin.AgentflowControlReq(tick_s=1.0))
    assert "--radix-cache-backend agentflow" in caplog.text


def test_sglangs_own_cli_parser_accepts_the_documented_flags(plugin):
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(["--model-path", "m", "--radix-eviction-policy", "workflow",
                              "--radix-cache-backend", "agentflow"])
    assert (args.radix_eviction_policy, args.radix_cache_backend) == ("workflow", "agentflow")


def test_sglangs_cache_builder_makes_the_pin_capable_cache_on_the_python_core(plugin, monkeypatch):
    import torch
    from agentflow.runtime.engines.sglang.pins import AgentflowRadixCache
    from agentflow.runtime.engines.sglang.policy import WorkflowStrategy
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
    from sglang.srt.mem_cache.registry import TreeCacheBuildContext, create_tree_cache
    from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

    monkeypatch.setenv("AGENTFLOW_MAX_PINNED_TOKENS", "40")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # "dummy" (as SGLang's tests use) reads no model config
    args = ServerArgs(model_path="dummy", radix_cache_backend="agentflow", radix_eviction_policy="workflow")
    set_global_server_args_for_scheduler(args)
    pool = MHATokenToKVPool(size=64, page_size=1, dtype=torch.float16, head_num=1, head_dim=8, layer_num=1,
                            device="cpu", enable_memory_saver=False)
    params = CacheInitParams(
        disable=False, page_size=1, eviction_policy="workflow",
        req_to_token_pool=ReqToTokenPool(size=4, max_context_len=256, device="cpu", enable_memory_saver=False),
        token_to_kv_pool_allocator=TokenToKVPoolAllocator(size=64, dtype=torch.float16, device="cpu",
                                                          kvcache=pool, need_sort=False))
    cache = create_tree_cache(TreeCacheBuildContext(
        server_args=args, params=params, is_hybrid_swa=False, is_hybrid_ssm=False, enable_hierarchical_cache=False,
        disable_radix_cache=False, tp_worker=None, model_config=None, tp_size=1, tp_rank=0, tp_group=None))
    assert type(cache) is AgentflowRadixCache and plugin._local_cache is cache
    assert type(cache.tree_core).__name__ == "UnifiedTreeCore"
    assert isinstance(cache.tree_core.eviction_strategy, WorkflowStrategy)
    assert cache.max_pinned_tokens == 40


def test_the_control_route_refuses_a_malformed_envelope_and_dispatches_a_good_one_unchanged(plugin):
    import asyncio

    from agentflow.runtime.engines.sglang.control import SetPriority, to_envelope
    from starlette.applications import Starlette

    sent = []

    async def dispatch(msg):
        sent.append(msg)

    good = json.dumps(to_envelope([SetPriority(key="k", priority=3)], message_id="m9")).encode()
    assert asyncio.run(plugin.accept_control(b'{"actions": 5}', dispatch))[0] == 400
    assert asyncio.run(plugin.accept_control(good, dispatch)) == (200, {"accepted": 1, "message_id": "m9"})
    assert [m.envelope for m in sent] == [good]
    app = Starlette()  # FastAPI, SGLang's app class, is a Starlette
    plugin.add_routes(app)
    plugin.add_routes(app)
    assert [r.path for r in app.routes] == [plugin.CONTROL_ROUTE, plugin.INFO_ROUTE]


def test_every_hook_target_is_a_method_of_sglang_0_5_23(plugin):
    """Read from SGLang's installed sources (some of those modules need a GPU stack to import)."""
    import ast
    import importlib.util
    from pathlib import Path

    for target, _, _ in plugin._HOOKS:
        module, cls, method = target.rsplit(".", 2)
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        assert cls in classes, f"{target}: no class {cls} in {module}"
        assert any(isinstance(n, ast.FunctionDef) and n.name == method for n in classes[cls].body), target


def test_the_real_receiver_hooked_by_sglangs_registry_puts_the_tick_before_what_the_socket_held(plugin, monkeypatch):
    import zmq
    from sglang.srt.managers.io_struct import sock_send
    from sglang.srt.managers.scheduler_components import request_receiver
    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.runtime_context import get_parallel

    cls = request_receiver.SchedulerRequestReceiver
    target = f"{cls.__module__}.{cls.__name__}._pull_raw_reqs"
    monkeypatch.setattr(cls, "_pull_raw_reqs", cls._pull_raw_reqs)  # undone after the test
    HookRegistry._apply_target(target, HookRegistry._hooks[target])
    assert cls._pull_raw_reqs.__wrapped__ is not None
    monkeypatch.setattr(plugin, "_local_cache", types.SimpleNamespace(next_deadline_s=lambda: None))
    monkeypatch.setattr(plugin, "_clock", lambda: 7.0)
    ctx = zmq.Context()
    try:
        sockets = {}
        for name in ("tokenizer", "rpc"):
            pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
            pull.bind(f"inproc://{name}")
            push.connect(f"inproc://{name}")
            sockets[name] = (pull, push)
        sock_send(sockets["tokenizer"][1], plugin.AgentflowControlReq(envelope=b"{}"))
        receiver = types.SimpleNamespace(recv_from_tokenizer=sockets["tokenizer"][0], recv_from_rpc=sockets["rpc"][0],
                                         recv_limit_reached=lambda n: False)
        pulled = []
        with get_parallel().override(pp_rank=0, attn_tp_rank=0, attn_cp_rank=0):
            for _ in range(100):  # inproc delivery is asynchronous
                pulled = cls._pull_raw_reqs(receiver)
                if len(pulled) > 1:
                    break
        assert [(m.envelope, m.tick_s) for m in pulled] == [(b"", 7.0), (b"{}", None)]
    finally:
        ctx.destroy(linger=0)


def test_a_failed_registration_is_loud_the_policy_and_backend_refuse_naming_the_error(plugin, monkeypatch):
    """SGLang's loader logs a plugin's exception and serves on without it; ours leaves refusing
    factories behind, so `--radix-eviction-policy workflow` / `--radix-cache-backend agentflow`
    stop the server with the original error instead of silently running stock SGLang."""
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES
    from sglang.srt.mem_cache.registry import get_radix_cache_factory
    from sglang.srt.mem_cache.utils import get_eviction_strategy

    def broken():
        raise AttributeError("HookRegistry has no attribute 'register'")

    monkeypatch.setattr(plugin, "_register_hooks", broken)
    with pytest.raises(AttributeError):
        plugin.register()
    try:
        assert "workflow" in RADIX_EVICTION_POLICY_CHOICES  # the CLI parses it, so the refusal is what it meets
        for build in (lambda: get_eviction_strategy("workflow", {}),
                      lambda: get_radix_cache_factory("agentflow")(types.SimpleNamespace())):
            with pytest.raises(plugin.PluginLoadError, match="failed to load: AttributeError: HookRegistry has no"):
                build()
    finally:
        monkeypatch.undo()
        plugin.register()  # a good registration restores everything
    from agentflow.runtime.engines.sglang.policy import WorkflowStrategy

    assert plugin.load_error is None and isinstance(get_eviction_strategy("workflow", {}), WorkflowStrategy)


def test_sglangs_private_eviction_policy_registry_has_the_shape_the_plugin_writes(plugin, monkeypatch):
    """The one place the plugin writes a private SGLang dict. If a newer SGLang renames it or
    changes what it holds or how get_eviction_strategy calls it, this fails (and so does the plugin,
    loudly, at registration)."""
    from sglang.srt.mem_cache import utils

    registry = plugin.eviction_policy_factories()
    assert registry is utils._EVICTION_POLICY_FACTORIES
    assert {"lru", "lfu", "fifo", "mru", "filo", "priority"} <= registry.keys()
    seen = {}
    monkeypatch.setitem(registry, "probe", lambda **config: seen.setdefault("config", config) or object())
    utils.get_eviction_strategy("probe", {"a": 1})
    assert seen["config"] == {"a": 1}  # factory(**config), as the plugin's docs say
    monkeypatch.setattr(utils, "_EVICTION_POLICY_FACTORIES", ["lru"])
    with pytest.raises(plugin.PluginLoadError, match="changed its private eviction-policy registry"):
        plugin.eviction_policy_factories()


def test_with_dp_attention_our_messages_keep_their_place_among_requests(plugin, monkeypatch):
    """SGLang's DP-attention split puts every non-request message after the requests; the hook
    (applied by SGLang's HookRegistry) keeps ours where they arrived, so a tick still stamps the
    requests after it and a pin sent before a request applies before it."""
    from sglang.srt.managers.io_struct import FlushCacheReqInput, TokenizedGenerateReqInput
    from sglang.srt.managers.scheduler_components.request_receiver import SchedulerRequestReceiver
    from sglang.srt.plugins.hook_registry import HookRegistry

    cls = SchedulerRequestReceiver
    target = f"{cls.__module__}.{cls.__name__}._split_work_and_control_reqs"
    monkeypatch.setattr(cls, "_split_work_and_control_reqs", cls._split_work_and_control_reqs)  # undone after
    HookRegistry._apply_target(target, HookRegistry._hooks[target])
    def request(rid):
        return TokenizedGenerateReqInput(rid=rid, input_text="", input_ids=[1, 2], input_embeds=None, mm_inputs=None,
                                         token_type_ids=None, sampling_params=None, return_logprob=False,
                                         logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None, stream=False)

    r1, r2 = request("r1"), request("r2")
    tick, pin = plugin.AgentflowControlReq(tick_s=1.0), plugin.AgentflowControlReq(envelope=b"{}")
    flush = FlushCacheReqInput()
    work, control = SchedulerRequestReceiver._split_work_and_control_reqs(None, [tick, r1, pin, flush, r2])
    assert [id(x) for x in work] == [id(tick), id(r1), id(pin), id(r2)]
    assert control == [flush]  # SGLang's own control messages: untouched
