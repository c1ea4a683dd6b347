"""The front door's calls through the service core: one scheduling step per event-loop turn.

A front-door request costs the service three events: its submission, and (for an embedded engine)
the call's start and finish; a tool gap adds two more. Applied one at a time, each took a
scheduling step and a journal transaction of its own. Here they queue, and one flush applies them:

    submissions of concurrent requests ──┐
    call started / finished reports ─────┼─> flush (next loop turn) ─> core.batch():
    tool started / finished reports ─────┘      reports (no step each), then submit_many
                                                 (one step, one routing snapshot), one commit

A flush runs on the loop turn after the first submission queues (everything ready to run in that
turn joins it), so a lone request waits for nothing; under load flushes are at least
`min_interval_s` apart (1 ms), so a step serves every request that arrived meanwhile. A step's cost
grows with what it plans over (programs, prefixes whose users moved), not with the calls it
carries. Reports alone wait up to `report_delay_s` (2 ms) for a submission to ride with; every
submission's step sees every report made before it (the order in which they queued), so a pin a
tool gap asks for is in place before any later call is routed.

Submissions of a parked program are held by the core (working-set admission) and answered through
its release listeners, as the gRPC SubmitBatcher's are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentflow.runtime.service.core import CallRequest, Code, Held, ServiceCore, ServiceError

log = logging.getLogger("agentflow.openai")


class CallBatcher:
    def __init__(self, core: ServiceCore, *, report_delay_s: float = 0.002, min_interval_s: float = 0.001,
                 max_batch: int = 512):
        self.core = core
        self.report_delay_s = report_delay_s
        self.min_interval_s = min_interval_s
        self.max_batch = max_batch
        self._subs: list[tuple[CallRequest, asyncio.Future]] = []
        self._reports: list[tuple] = []  # (method name, args, kwargs)
        self._held: dict[str, asyncio.Future] = {}
        self._handle: asyncio.Handle | None = None
        self._due = 0.0  # loop time the scheduled flush runs at
        self._last = -1.0  # loop time of the last flush
        self.flushes = 0  # scheduling steps this batcher took (submissions and report-only flushes)
        self.submitted = 0
        core.release_listeners.append(self._on_release)

    # ---------------------------------------------------------------- queueing
    def submit(self, call: CallRequest) -> asyncio.Future:
        """A future of the call's RouteAnswer or ServiceError (a held call's: when it is released)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._subs.append((call, fut))
        self._schedule(loop, self._last + self.min_interval_s)
        return fut

    def report(self, method: str, *args, **kwargs) -> None:
        """A core report (`call_started`, `call_finished`, `call_failed`, `tool`), applied at the next flush."""
        self._reports.append((method, args, kwargs))
        loop = asyncio.get_running_loop()
        self._schedule(loop, loop.time() + self.report_delay_s)

    def _schedule(self, loop, at: float) -> None:
        """A flush at loop time `at` (the next turn when that has passed), unless one comes sooner."""
        if self._handle is not None:
            if self._due <= at:
                return
            self._handle.cancel()
        now = loop.time()
        self._due = max(at, now)
        self._handle = loop.call_soon(self._flush) if at <= now else loop.call_at(at, self._flush)

    def _on_release(self, call_id: str, answer) -> None:
        fut = self._held.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(answer)

    # ---------------------------------------------------------------- applying
    def apply_reports(self) -> None:
        """Apply the queued reports now, without a step (before the front door opens or closes a
        program itself: its reports go first)."""
        reports, self._reports = self._reports, []
        for method, args, kwargs in reports:
            try:
                if method == "tool":
                    self.core.tool(*args, take_step=False, **kwargs)
                elif method == "call_failed":
                    self.core.call_failed(*args, **kwargs)
                else:
                    getattr(self.core, method)(*args, step=False, **kwargs)
            except ServiceError as exc:  # its program closed under it, the worker was declared lost
                log.info("%s %s: %s", method, args[:1], exc)
            except Exception:  # a bug in one report must not lose the others
                log.exception("%s %s failed", method, args[:1])

    def _flush(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        subs, self._subs = self._subs[:self.max_batch], self._subs[self.max_batch:]
        if self._subs:  # more than one batch waits: the rest after this one
            self._schedule(loop, self._last + self.min_interval_s)
        self.flushes += 1
        try:
            with self.core.batch():
                self.apply_reports()
                if not subs:
                    self.core.tick()
                    return
                for call, _ in subs:
                    # Front-door programs declare no end (they expire when idle), so the working set
                    # could park a new one for ever behind idle ones: they are never held.
                    if call.program_id in self.core.sched.programs:
                        self.core.sched.activate(call.program_id)
                answers = self.core.submit_many([c for c, _ in subs])
        except ServiceError as exc:  # the journal refused the batch: nothing of it was applied
            answers = [exc] * len(subs)
        except Exception as exc:  # a bug must fail these calls, not the front door
            log.exception("front-door batch failed")
            answers = [ServiceError(Code.INTERNAL, f"the scheduler could not apply it ({exc})")] * len(subs)
        self.submitted += len(subs)
        for (call, fut), ans in zip(subs, answers):
            if isinstance(ans, Held):
                self._held[call.call_id] = fut
            elif not fut.done():
                fut.set_result(ans)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        if self._reports:
            self.apply_reports()
        with contextlib.suppress(ValueError):
            self.core.release_listeners.remove(self._on_release)
        for fut in list(self._held.values()) + [f for _, f in self._subs]:
            if not fut.done():
                fut.set_result(ServiceError(Code.UNAVAILABLE, "the front door is stopping"))
        self._held.clear()
        self._subs.clear()


__all__ = ["CallBatcher"]
