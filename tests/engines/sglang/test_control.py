"""control.py: the wire format of hints and a Decision's translation into actions (no SGLang needed).

`Recorder` below is a stand-in ControlTarget that only records calls: the thing under test is the
dispatch order and arguments; the real target (the plugin's cache) is tested in test_pins.py and
test_plugin.py against SGLang's UnifiedRadixCache.
"""

from __future__ import annotations

import json

import pytest
from agentflow.runtime.decision import (
    Decision,
    EvictionPriority,
    Pin,
    Prefetch,
    Unpin,
    UnpinReason,
)
from agentflow.runtime.engines.sglang.control import (
    PROTOCOL_VERSION,
    ControlError,
    DeclarePrefix,
    PinPrefix,
    PrefetchPrefix,
    ProgramCall,
    SetPriority,
    UnpinPrefix,
    apply_actions,
    decision_actions,
    parse_envelope,
    to_envelope,
)

ALL = [DeclarePrefix(key="k", namespace="t", num_tokens=3, token_ids=(1, 2, 3)),
       DeclarePrefix(key="r", namespace="t", num_tokens=2),
       SetPriority(key="k", priority=999), PinPrefix(key="k", program_id="7", ttl_s=2.5),
       UnpinPrefix(key=None, program_id="7", reason="pressure"), PrefetchPrefix(key="k"), ProgramCall(program_id="7")]


def test_every_action_survives_the_json_envelope():
    env = to_envelope(ALL, message_id="m1")
    assert env["protocol_version"] == PROTOCOL_VERSION
    assert [a["action_id"] for a in env["actions"]] == [f"m1.{i}" for i in range(len(ALL))]
    assert parse_envelope(json.dumps(env).encode()) == ALL


def test_other_consumers_actions_are_skipped_not_rejected():
    env = to_envelope([ProgramCall(program_id="1")], message_id="m")
    env["actions"].insert(0, {"action_id": "x", "action_type": "hicache.storage_hint", "action_version": "3",
                              "payload": {"anything": 1}})
    assert parse_envelope(env) == [ProgramCall(program_id="1")]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda e: e.update(actions="no"), "'actions' must be a list"),
    (lambda e: e.update(protocol_version="other/9"), "protocol_version"),
    (lambda e: e["actions"][0].update(action_version="2"), "version '2' is not supported"),
    (lambda e: e["actions"][0]["payload"].update(ttl_s=-1), "positive finite"),
    (lambda e: e["actions"][0]["payload"].update(ttl_s=True), "ttl_s"),
    (lambda e: e["actions"][0]["payload"].pop("key"), "'key'"),
])
def test_malformed_envelopes_are_refused_with_the_reason(mutate, message):
    env = to_envelope([PinPrefix(key="k", program_id="7", ttl_s=1.0)], message_id="m")
    mutate(env)
    with pytest.raises(ControlError, match=message):
        parse_envelope(env)


@pytest.mark.parametrize("payload", [
    {"key": "k", "namespace": "t", "num_tokens": 2, "token_ids": [1]},  # count mismatch
    {"key": "k", "namespace": "t", "num_tokens": 0},
])
def test_declarations_must_be_consistent(payload):
    env = {"protocol_version": PROTOCOL_VERSION, "message_id": "m",
           "actions": [{"action_id": "a", "action_type": "agentflow.declare", "action_version": "1",
                        "payload": payload}]}
    with pytest.raises(ControlError, match="declare"):
        parse_envelope(env)


def test_unpin_needs_a_key_or_a_program_and_a_known_reason():
    for payload, message in [({"reason": "cancelled"}, "names a key"), ({"key": "k", "reason": "bored"}, "reason")]:
        env = {"protocol_version": PROTOCOL_VERSION, "message_id": "m",
               "actions": [{"action_id": "a", "action_type": "agentflow.unpin", "action_version": "1",
                            "payload": payload}]}
        with pytest.raises(ControlError, match=message):
            parse_envelope(env)


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_actions_apply_in_order_and_a_declaration_takes_the_requests_tokens():
    r = Recorder()
    apply_actions(r, ALL, request_token_ids=(5, 6, 7, 8))
    assert r.calls == [("declare_prefix", "k", "t", (1, 2, 3), None), ("declare_prefix", "r", "t", (5, 6), None),
                       ("set_priority", "k", 999), ("pin", "k", "7", 2.5), ("unpin", None, "7", "pressure"),
                       ("prefetch", "k"), ("unpin", None, "7", "next_call")]
    r2 = Recorder()
    apply_actions(r2, [DeclarePrefix(key="r", namespace="t", num_tokens=9)], request_token_ids=(1, 2))
    assert r2.calls == []  # longer than the request: skipped like an unknown key


def test_a_declaration_carries_the_cache_salt_sglang_puts_in_the_requests_key():
    """SGLang namespaces a request's radix key by extra_key AND cache_salt: a declaration riding a
    request takes the request's salt; one with its own tokens keeps its own (or none)."""
    carried = DeclarePrefix(key="r", namespace="t", num_tokens=2)
    own = DeclarePrefix(key="k", namespace="t", num_tokens=1, token_ids=(9,), cache_salt="s2")
    bare = DeclarePrefix(key="b", namespace="t", num_tokens=1, token_ids=(9,))
    r = Recorder()
    apply_actions(r, [carried, own, bare], request_token_ids=(5, 6, 7), request_cache_salt="s1")
    assert r.calls == [("declare_prefix", "r", "t", (5, 6), "s1"), ("declare_prefix", "k", "t", (9,), "s2"),
                       ("declare_prefix", "b", "t", (9,), None)]
    env = to_envelope([own, carried], message_id="m")
    assert env["actions"][0]["payload"]["cache_salt"] == "s2" and "cache_salt" not in env["actions"][1]["payload"]
    assert parse_envelope(env) == [own, carried]
    env["actions"][0]["payload"]["cache_salt"] = 7
    with pytest.raises(ControlError, match="'cache_salt'"):
        parse_envelope(env)


def test_a_decision_becomes_unpins_then_pins_priorities_prefetches_for_this_worker_only():
    d = Decision(step=3, time_s=1.0,
                 priorities=(EvictionPriority(prefix="k", priority=900, steps_to_execution=0.1),),
                 pins=(Pin(prefix="k", worker="w1", program_id=7, ttl_s=2.0, expires_at_s=3.0, num_tokens=5),
                       Pin(prefix="k", worker="w2", program_id=8, ttl_s=2.0, expires_at_s=3.0, num_tokens=5)),
                 unpins=(Unpin(prefix="j", worker=None, program_id=6, reason=UnpinReason.TTL_EXPIRED),),
                 prefetches=(Prefetch(prefix="k", worker="w1", deadline_s=4.0, num_tokens=5),
                             Prefetch(prefix="z", worker="w2", deadline_s=4.0, num_tokens=5)))
    assert decision_actions(d, worker="w1") == [
        UnpinPrefix(key="j", program_id="6", reason="ttl_expired"), PinPrefix(key="k", program_id="7", ttl_s=2.0),
        SetPriority(key="k", priority=900), PrefetchPrefix(key="k")]
