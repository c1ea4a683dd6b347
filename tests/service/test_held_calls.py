"""Working-set admission live: the service holds a parked program's submission and answers it when
the scheduler activates the program (the core, and the batcher every gRPC submission goes through)."""

from __future__ import annotations

import asyncio

import pytest

from agentflow.runtime.service.core import Code, Held, RouteAnswer, ServiceError
from tests.service.test_core import call, make_core, spec


def _two_programs(core, spec_json):
    """Two programs on a 4,000-token worker: the working set's initial window (5% of the pool, a
    workflow whose growth is unknown) fits a's first call, not b's as well."""
    from agentflow.runtime.service.core import WorkerSpec

    core.register_worker(WorkerSpec(worker_id="w1", address="127.0.0.1:1001", kv_capacity_tokens=4_000))
    for pid in ("a", "b"):
        core.open_program(pid, workflow_spec=spec_json)


def test_a_parked_programs_submission_is_held_then_answered_when_it_is_activated(spec_json):
    core, _ = make_core(policy="agentflow")
    _two_programs(core, spec_json)
    released = []
    core.release_listeners.append(lambda cid, ans: released.append((cid, ans)))
    a0, b0 = core.submit_many([call("a", 0, seq=1), call("b", 0, seq=1)])
    assert isinstance(a0, RouteAnswer) and a0.worker_id == "w1"
    assert b0 == Held("b#0") and released == []
    assert list(core.sched.parked) == ["b"]
    # a runs two calls: its workflow's growth is known, so b is sized, and fits
    core.call_started("a#0", "w1")
    core.call_finished("a#0", "w1", output_tokens=50)
    (a1,) = core.submit_many([call("a", 1, seq=2)])
    core.call_started("a#1", "w1")
    core.call_finished("a#1", "w1", output_tokens=50)
    assert [cid for cid, _ in released] == ["b#0"]
    assert isinstance(released[0][1], RouteAnswer) and released[0][1].worker_id == "w1"
    assert not core.sched.parked


def test_closing_a_parked_program_answers_its_held_call_with_an_error(spec_json):
    core, _ = make_core(policy="agentflow")
    _two_programs(core, spec_json)
    released = []
    core.release_listeners.append(lambda cid, ans: released.append((cid, ans)))
    core.submit_many([call("a", 0, seq=1), call("b", 0, seq=1)])
    core.close("b", cancelled=True)
    ((cid, err),) = released
    assert cid == "b#0" and isinstance(err, ServiceError) and err.code is Code.FAILED_PRECONDITION
    assert err.field == "program_id"


def test_the_batcher_answers_a_held_message_when_released(spec_json):
    """The gRPC servicer's batcher: a held submission's future resolves only after the release."""
    from agentflow.runtime.service.server import SubmitBatcher

    async def main():
        core, _ = make_core(policy="agentflow")
        _two_programs(core, spec_json)
        batcher = SubmitBatcher(core)
        a0 = await batcher.submit(call("a", 0, seq=1))
        held = asyncio.ensure_future(batcher.submit(call("b", 0, seq=1)))
        await asyncio.sleep(0.05)
        assert isinstance(a0, RouteAnswer) and not held.done()
        core.call_started("a#0", "w1")
        core.call_finished("a#0", "w1", output_tokens=50)
        await batcher.submit(call("a", 1, seq=2))
        core.call_started("a#1", "w1")
        core.call_finished("a#1", "w1", output_tokens=50)
        ans = await asyncio.wait_for(held, 5)
        assert isinstance(ans, RouteAnswer) and ans.call_id == "b#0"
        await batcher.aclose()

    asyncio.run(main())
