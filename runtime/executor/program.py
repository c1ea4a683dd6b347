"""One program, run for real: walk the compiled step graph, run each step, tell the scheduler.

    backend.open_program                                  (the scheduler: ProgramArrived)
    run_from(entry):
      step ──LLM──> backend.call: routed, run, streamed ─> (worker, result)
      │             (CallSubmitted -> route, CallStarted ... CallFinished(cached prefixes))
      ├──tool─> backend.tool(started) ─> fn(**args) (async, or sync in a worker thread)
      │         ─> backend.tool(finished, measured wall seconds)
      └──noop─> nothing (no event: the scheduler passes noops through)
      then the step's transition:
        Next     -> the target
        Fork     -> each branch concurrently (an anyio task group) up to the join; then the join
        Branch   -> the first case whose condition holds on the state, else the default
        Loop     -> back while `while_` holds and fewer than max_iterations passes ran; else exit
    backend.close_program (cancelled=True when cancelled: the scheduler drops its pins)

Errors. A failed attempt (the tool raised, the engine erred, the attempt ran past `timeout_s`)
is recorded in the timeline and retried up to `retries` times. When every attempt failed, the
program continues at the step's `on_error` target with `state["error"]` = {step, error,
attempts}, or, with no route, ends FAILED with its state and outputs as they were. A failure in
one fan-out branch cancels its siblings. A call that did not finish (error, timeout, cancel) is
closed at the scheduler with a CallFinished that caches nothing (the backend does that).

State. The state starts as the inputs. A tool that returns a mapping updates it; an LLM step's
`parse(text, state, step)` may return updates. Every step's last output is kept in `outputs`
(templates read it as `{steps.name}`). Fan-out branches share the one state: give them
different keys.

Loop counts are the executor's own, kept the way the scheduler's position counts them (at most
max_iterations passes through the body; a count ends when its loop is left), so the two never
disagree about where a program is.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from agentflow.conditions import resolve_reference
from agentflow.graph.model import Branch, Fork, Loop, Next, StepKind
from agentflow.runtime.engines.base import GenerateRequest, TokenChunk, prefix_chain
from agentflow.runtime.executor.prompts import boundaries, render_arg, user_message
from agentflow.runtime.reuse_plan import InputSpan, find_span, namespace_for
from agentflow.runtime.executor.records import (
    ExecutionError, ProgramStatus, RunResult, StepFailed, StepRecord, TokenEvent, describe,
)
from agentflow.workflow import CompiledWorkflow, Step

if TYPE_CHECKING:
    from agentflow.runtime.executor.executor import Executor

PREVIEW_CHARS = 120


class ProgramRun:
    def __init__(self, ex: Executor, wf: CompiledWorkflow, program_id: Hashable, inputs: Mapping[str, Any],
                 on_token: Callable[[TokenEvent], None] | None = None):
        self.ex = ex
        self.wf = wf
        self.program_id = program_id
        self.state: dict[str, Any] = dict(inputs)
        self.outputs: dict[str, Any] = {}
        self.timeline: list[StepRecord] = []
        self.on_token = on_token
        self._iterations: dict[str, int] = {}  # loop source -> completed passes back
        # (agent, conversation) -> messages so far, and its last prompt + answer in tokens
        self._conversations: dict[tuple[str, str | None], list[dict[str, str]]] = {}
        self._history: dict[tuple[str, str | None], tuple[int, ...]] = {}
        self._system_ids: dict[str, list[int]] = {}
        self._output_ids: dict[str, tuple[int, ...]] = {}  # LLM step -> its last output's ids (reuse spans)
        self._clock = 0  # orders outputs, for "new inputs since this step last ran"
        self._produced: dict[str, int] = {}
        self._last_ran: dict[str, int] = {}
        self._calls = 0
        self.status = ProgramStatus.COMPLETED
        self.error: str | None = None
        self.failed_step: str | None = None
        self.start_s = ex.now_s()
        self.end_s = self.start_s

    # ---- the program ---------------------------------------------------------------------------
    async def run(self) -> RunResult:
        # the tenant and opt-in of the requests' reuse_namespace: the scheduler derives the same one
        await self.ex.backend.open_program(self.program_id, self.wf, tenant=self.ex.namespace,
                                           share_kv_across_programs=getattr(self.ex, "share_kv_across_programs", False))
        cancelled = anyio.get_cancelled_exc_class()
        try:
            await self._run_from(self.wf.entry, None)
        except StepFailed as e:
            self.status, self.error, self.failed_step = ProgramStatus.FAILED, str(e), e.step
        except ExecutionError as e:
            self.status, self.error = ProgramStatus.FAILED, str(e)
        except cancelled:
            self.status, self.error = ProgramStatus.CANCELLED, "cancelled"
            raise
        except Exception as e:  # noqa: BLE001  (a scheduler or engine fault ends this program, not all)
            self.status, self.error = ProgramStatus.FAILED, f"internal error: {describe(e)}"
        except BaseException:
            self.status, self.error = ProgramStatus.CANCELLED, "cancelled"
            raise
        finally:
            self.end_s = self.ex.now_s()
            with anyio.CancelScope(shield=True):
                await self.ex.backend.close_program(self.program_id,
                                                    cancelled=self.status is ProgramStatus.CANCELLED)
        return self.result()

    def result(self) -> RunResult:
        return RunResult(program_id=self.program_id, workflow=self.wf.name, status=self.status, state=self.state,
                         outputs=self.outputs, timeline=self.timeline, error=self.error,
                         failed_step=self.failed_step, start_s=self.start_s, end_s=self.end_s,
                         decisions=self.ex.decision_summary(self.program_id))

    async def _run_from(self, step: str | None, stop: str | None) -> None:
        """Run from `step` until the path ends or reaches `stop` (the join of the enclosing fork)."""
        g = self.wf.graph
        while step is not None and step != stop:
            routed = await self._run_step(step)
            if routed is not None:
                self._leave_loops_for(routed)
                step = routed
                continue
            match g.transitions[step]:
                case None:
                    return
                case Next(target=t):
                    step = t
                case Fork(targets=ts, join=j):
                    await self._fork(ts, j)
                    step = j
                case Branch(cases=cases, default=d):
                    step = next((c.target for c in cases if c.when is not None and c.when(self.state)), d)
                case Loop(back_to=h, exit=x, max_iterations=m, while_=w):
                    n = self._iterations.get(step, 0)
                    if n + 1 < m and (w is None or w(self.state)):
                        self._iterations[step] = n + 1
                        step = h
                    else:
                        self._iterations.pop(step, None)
                        step = x

    async def _fork(self, targets: tuple[str, ...], join: str | None) -> None:
        failure: list[BaseException] = []

        async def branch(start: str, scope: anyio.CancelScope) -> None:
            try:
                await self._run_from(start, join)
            except (StepFailed, ExecutionError) as e:  # one branch failed: stop its siblings
                failure.append(e)
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for t in targets:
                tg.start_soon(branch, t, tg.cancel_scope)
        if failure:
            raise failure[0]

    def _leave_loops_for(self, target: str) -> None:
        for src in list(self._iterations):
            if target not in self.wf.graph.loops[src].body:
                del self._iterations[src]

    # ---- one step, under its error policy ------------------------------------------------------
    async def _run_step(self, name: str) -> str | None:
        """Run a step; None when it succeeded, its error route when every attempt failed."""
        step = self.wf.steps[name]
        if step.kind is StepKind.NOOP:
            return None
        policy = self.wf.error_policy(name)
        attempts = policy.retries + 1
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                scope = anyio.fail_after(policy.timeout_s) if policy.timeout_s else nullcontext()
                with scope:
                    if step.kind is StepKind.LLM:
                        await self._llm(step, attempt)
                    else:
                        await self._tool(step, attempt)
                return None
            except ExecutionError:
                raise  # the program is wrong, not the attempt: retrying cannot help
            except Exception as e:  # noqa: BLE001  (a tool may raise anything; the policy decides)
                last = e
                if isinstance(e, TimeoutError):  # the scope cancelled the attempt: say why
                    for r in reversed(self.timeline):
                        if r.step == name and r.attempt == attempt:
                            r.status, r.error = "timeout", f"timed out after {policy.timeout_s:g} s"
                            break
        assert last is not None
        if policy.on_error is not None:
            self.state["error"] = {"step": name, "error": describe(last), "attempts": attempts}
            return policy.on_error
        raise StepFailed(name, attempts, last)

    @property
    def _reuse_namespace(self) -> str:
        return namespace_for(tenant=self.ex.namespace, workflow=self.wf.name, program_id=self.program_id,
                             share_across_programs=getattr(self.ex, "share_kv_across_programs", False))

    def _record(self, step: Step, attempt: int, **kw) -> StepRecord:
        r = StepRecord(program_id=self.program_id, step=step.name, kind=step.kind.value, agent=step.agent,
                       tool=step.tool, attempt=attempt, start_s=self.ex.now_s(), **kw)
        self.timeline.append(r)
        return r

    def _produce(self, name: str, output: Any) -> None:
        self._clock += 1
        self.outputs[name] = output
        self._produced[name] = self._clock

    # ---- tools ---------------------------------------------------------------------------------
    async def _tool(self, step: Step, attempt: int) -> None:
        tool = self.wf.tools[step.tool]
        fn = tool.fn
        if fn is None:
            if tool.impl is None:
                raise ExecutionError(f"step '{step.name}': tool '{tool.name}' has no implementation "
                                     "(give a function, or impl='module:function')")
            try:
                fn = resolve_reference(tool.impl)
            except ValueError as e:
                raise ExecutionError(f"step '{step.name}': {e}") from None
        args = {k: render_arg(v, self.state, self.outputs) for k, v in step.args.items()}
        rec = self._record(step, attempt)
        backend = self.ex.backend
        await backend.tool(self.program_id, step=step.name, tool=tool.name, finished=False)
        t0 = self.ex.now_s()
        try:
            if tool.is_async:
                result = await fn(**args)
            else:
                result = await anyio.to_thread.run_sync(partial(fn, **args), abandon_on_cancel=True)
        except BaseException as e:
            rec.status, rec.error = _status_of(e), describe(e)
            raise
        finally:
            rec.end_s = self.ex.now_s()
            with anyio.CancelScope(shield=True):
                await backend.tool(self.program_id, step=step.name, tool=tool.name, finished=True,
                                   duration_s=max(0.0, rec.end_s - t0))
        rec.preview = _preview(result)
        if isinstance(result, Mapping):
            self.state.update(result)
        self._produce(step.name, result)

    # ---- LLM calls -----------------------------------------------------------------------------
    def _messages(self, step: Step) -> tuple[list[dict[str, str]], dict[str, str], int]:
        agent = self.wf.agents[step.agent]
        key = (agent.name, step.conversation)
        conv = self._conversations.get(key)
        if conv is None:
            conv = self._conversations[key] = [{"role": "system", "content": agent.system_prompt}]
        since = self._last_ran.get(step.name, 0)
        fresh = [(i, self.outputs[i]) for i in step.inputs if self._produced.get(i, 0) > since]
        user = {"role": "user", "content": user_message(step.prompt, fresh, self.state, self.outputs)}
        return conv, user, self._clock

    async def _llm(self, step: Step, attempt: int) -> None:
        ex, backend = self.ex, self.ex.backend
        conv, user, marker = self._messages(step)
        messages = [*conv, user]
        ids = tuple(backend.encode_chat(messages))
        sys_ids = self._system_ids.get(step.agent)
        if sys_ids is None:
            sys_ids = self._system_ids[step.agent] = list(backend.encode_chat(conv[:1]))
        history = (step.agent, step.conversation)
        refs = prefix_chain(ex.namespace, ids, boundaries(ids, sys_ids, self._history.get(history)))
        self._calls += 1
        call_id = f"{self.program_id}/{step.name}#{self._calls}"
        max_new = max(1, step.max_tokens or step.expected_output_tokens or 1)
        rec = self._record(step, attempt, call_id=call_id, prompt_tokens=len(ids))
        request = GenerateRequest(call_id=call_id, program_id=self.program_id, prompt_ids=ids,
                                  max_new_tokens=max_new, prefixes=refs, namespace=ex.namespace,
                                  reuse_namespace=self._reuse_namespace)
        spans = input_spans(ids, self.wf.graph.steps[step.name].inputs, self._output_ids,
                            start=refs[-1].num_tokens if refs else 0)
        n_out = 0

        def chunk(item: TokenChunk) -> None:
            nonlocal n_out
            n_out += len(item.token_ids)
            if self.on_token is not None:
                self.on_token(TokenEvent(program_id=self.program_id, step=step.name, call_id=call_id,
                                         text=item.text, token_ids=item.token_ids))

        try:
            rec.worker, result = await backend.call(request, step=step.name,
                                                    expected_output_tokens=step.expected_output_tokens,
                                                    on_chunk=chunk, input_spans=spans)
        except BaseException as e:
            rec.status, rec.error, rec.end_s, rec.output_tokens = _status_of(e), describe(e), ex.now_s(), n_out
            raise
        rec.end_s = ex.now_s()
        rec.cached_tokens, rec.host_tokens = result.cached_tokens, result.host_tokens
        rec.reused_tokens = result.reused_tokens
        rec.output_tokens = len(result.output_ids)
        rec.queued_s, rec.ttft_s, rec.engine_s = result.queued_s, result.ttft_s, result.duration_s
        rec.preview = _preview(result.text)
        conv.extend([user, {"role": "assistant", "content": result.text}])
        self._history[history] = ids + tuple(result.output_ids)
        self._last_ran[step.name] = marker  # outputs produced from here on are new to it
        self._produce(step.name, result.text)
        self._output_ids[step.name] = tuple(result.output_ids)
        if step.parse is not None:
            self._parse(step, result.text)

    def _parse(self, step: Step, text: str) -> None:
        fn = step.parse
        if isinstance(fn, str):
            try:
                fn = resolve_reference(fn)
            except ValueError as e:
                raise ExecutionError(f"step '{step.name}': parse: {e}") from None
        updates = fn(text, self.state, step.name)
        if updates:
            self.state.update(updates)


def input_spans(prompt_ids: Sequence[int], inputs: Sequence[str], output_ids: Mapping[str, Sequence[int]], *,
                start: int = 0, max_trim: int = 2, min_tokens: int = 8) -> tuple[InputSpan, ...]:
    """Where each input step's last output sits in the prompt, in tokens (searched from `start`:
    the new user message, after the cached prefixes). The output was rendered as *text* and the
    prompt re-tokenized, so a match may drop up to `max_trim` tokens at the ends (a token merged
    at a boundary, an end-of-sequence token the text does not show). Inputs not found are left out."""
    spans = []
    for name in inputs:
        out = output_ids.get(name)
        if not out:
            continue
        found = find_span(prompt_ids, out, start=start, max_trim=max_trim, min_tokens=min_tokens)
        if found is not None:
            at, lo, n = found
            spans.append(InputSpan(source_step=name, target_offset=at, num_tokens=n, source_offset=lo))
    return tuple(spans)


def _status_of(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    return "cancelled" if isinstance(e, anyio.get_cancelled_exc_class()) else "error"


def _preview(value: Any) -> str:
    from agentflow.runtime.executor.prompts import as_text

    text = " ".join(as_text(value).split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


__all__ = ["ProgramRun"]
