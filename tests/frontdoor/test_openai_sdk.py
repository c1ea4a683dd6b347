"""The openai SDK against `agentflow serve --openai` with SmolLM2: sync, async, streaming, tool
calls, hints, errors. Short generations, greedy (temperature 0) so outputs can be compared."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.frontdoor.conftest import MODEL, TOKEN

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


def _client(fd, key=TOKEN):
    return openai.OpenAI(base_url=fd.base_url, api_key=key, max_retries=0)


def test_turns_join_one_program_and_hit_the_cache(frontdoor):
    c = _client(frontdoor)
    msgs = [{"role": "system", "content": "You are a terse assistant for test_turns."},
            {"role": "user", "content": "Name a colour."}]
    r1 = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0)
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "Name another one."}]
    r2 = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0)
    pid = r1.model_extra["agentflow"]["program_id"]
    assert r2.model_extra["agentflow"]["program_id"] == pid  # inferred: the second extends the first
    assert r1.usage.prompt_tokens_details.cached_tokens == 0  # a system prompt nobody sent before
    # turn 2 re-reads turn 1's prompt (and answer) from the cache: OpenAI's field, in tokens
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens
    assert r2.usage.prompt_tokens_details.cached_tokens < r2.usage.prompt_tokens
    prog = frontdoor.programs()[pid]
    assert prog["inferred"] and prog["calls"] == 2 and prog["workflow"].startswith("auto:default:a-")
    assert frontdoor.metric("agentflow_openai_inferred_joins_total") >= 1
    assert frontdoor.metric("agentflow_cache_hit_rate") > 0


def test_hints_name_the_program_and_leave_the_output_alone(frontdoor):
    c = _client(frontdoor)
    msgs = [{"role": "user", "content": "Write one word about rivers."}]
    plain = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    native = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0,
                                       extra_body={"agentflow": {"program_id": "job-7", "agent": "writer",
                                                                 "last_step": True, "future_key": 1}})
    continuum = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0,
                                          extra_body={"job_id": "job-8", "is_last_step": True,
                                                      "agent_hints": {"priority": 5}})
    header = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0,
                                       extra_headers={"x-agentflow-program-id": "job-9", "x-agentflow-last-step": "1"})
    texts = {r.choices[0].message.content for r in (plain, native, continuum, header)}
    assert len(texts) == 1 and texts != {""}
    assert native.model_extra["agentflow"]["program_id"] == "oa:default:job-7"
    assert native.model_extra["agentflow"]["agent"] == "writer"
    assert continuum.model_extra["agentflow"]["program_id"] == "oa:default:job-8"
    assert header.model_extra["agentflow"]["program_id"] == "oa:default:job-9"
    # last_step closed them; the unknown key was counted, not refused
    assert not {"oa:default:job-7", "oa:default:job-8", "oa:default:job-9"} & set(frontdoor.programs())
    assert frontdoor.metric("agentflow_openai_unknown_hint_keys_total") >= 1
    assert frontdoor.metric("agentflow_openai_hint_source_total", '{source="continuum"}') >= 1


@pytest.mark.parametrize("extra, field", [
    ({"agentflow": {"last_step": "perhaps"}}, "agentflow.last_step"),
    ({"agentflow": {"program_id": 12}}, "agentflow.program_id"),
    ({"agentflow": "p1"}, "agentflow"),
    ({"agent_hints": {"priority": "high"}}, "agent_hints.priority"),
    ({"session_id": ""}, "session_id"),
])
def test_bad_hints_are_400_naming_the_field(frontdoor, extra, field):
    with pytest.raises(openai.BadRequestError) as e:
        _client(frontdoor).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=2, extra_body=extra)
    assert e.value.body["param"] == field


def test_edge_errors(frontdoor):
    c = _client(frontdoor)
    with pytest.raises(openai.AuthenticationError):
        _client(frontdoor, key="wrong").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    assert [m.id for m in c.models.list()] == [MODEL]
    assert frontdoor.get("/health").json() == {"status": "ok"}


def test_async_streaming_matches_the_plain_answer(frontdoor):
    async def run():
        c = openai.AsyncOpenAI(base_url=frontdoor.base_url, api_key=TOKEN, max_retries=0)
        msgs = [{"role": "user", "content": "Count: one, two,"}]
        plain = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
        stream = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})
        parts, usage, finish = [], None, None
        async for ch in stream:
            if ch.usage is not None:
                usage = ch.usage
            for choice in ch.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        comp = await c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                          temperature=0)
        await c.close()
        return plain, "".join(parts), usage, finish, comp

    plain, streamed, usage, finish, comp = asyncio.run(run())
    assert streamed == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == plain.usage.prompt_tokens - 1  # all but the last token
    assert comp.choices[0].text and comp.usage.completion_tokens <= 4


def test_a_tool_gap_pins_and_is_learned(frontdoor):
    c = _client(frontdoor)
    tools = [{"type": "function", "function": {"name": "list_files", "description": "List the files in a folder",
                                               "parameters": {"type": "object",
                                                              "properties": {"path": {"type": "string"}}}}}]
    msgs = [{"role": "system", "content": "You are a coding agent for test_tool_gap."},
            {"role": "user", "content": "What is in the src folder?"}]
    r1 = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0, tools=tools,
                                   tool_choice={"type": "function", "function": {"name": "list_files"}})
    call = r1.choices[0].message.tool_calls[0]
    assert r1.choices[0].finish_reason == "tool_calls" and call.function.name == "list_files"
    pid = r1.model_extra["agentflow"]["program_id"]
    assert frontdoor.programs()[pid]["waiting_on_tools"] == ["list_files"]
    # the tool-start report rides with the front door's next scheduling step (batcher.py: within
    # its report delay, 2 ms, when no other request comes first)
    deadline = time.monotonic() + 5
    while True:
        pins = frontdoor.call(lambda: [p for p in frontdoor.sched.core.sched.pins.values() if p.program_id == pid])
        if pins or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(pins) == 1 and pins[0].tool == "list_files" and pins[0].num_tokens > r1.usage.prompt_tokens
    # the engine holds the KV that exists: the prompt and all of the answer but its last token
    assert frontdoor.metric("agentflow_pinned_tokens", '{worker="local0"}') >= pins[0].num_tokens - 1
    gaps = frontdoor.metric("agentflow_openai_tool_gaps_total")
    msgs += [r1.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "main.py util.py"}]
    r2 = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0, tools=tools)
    assert r2.model_extra["agentflow"]["program_id"] == pid
    # the pinned sequence was still there: at least the first prompt is a hit (the answer too
    # when the client echoes it as the model wrote it)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 1
    assert frontdoor.metric("agentflow_openai_tool_gaps_total") == gaps + 1
    assert not frontdoor.call(lambda: [p for p in frontdoor.sched.core.sched.pins.values() if p.program_id == pid])
    workflow = frontdoor.programs()[pid]["workflow"]
    (g,) = frontdoor.get(f"/v1/agentflow/graph?workflow={workflow}").json()["workflows"]
    assert g["tool_gaps"]["list_files"]["n"] == 1
    assert {"from": "__start__", "to": frontdoor.programs()[pid]["last_agent"], "count": 1} in g["transitions"]


def test_a_client_gone_mid_stream_ends_its_call(frontdoor):
    import time

    c = _client(frontdoor)
    stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell a long story."}],
                                       max_tokens=200, temperature=0, stream=True,
                                       extra_body={"agentflow": {"program_id": "gone-mid-stream"}})
    got = [ch for _, ch in zip(range(3), stream)]
    stream.close()
    assert len(got) == 3
    pid = "oa:default:gone-mid-stream"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        calls = frontdoor.call(lambda: [k for k, v in frontdoor.sched.core.sched.calls.items() if v.program_id == pid])
        if not calls and frontdoor.programs()[pid]["in_flight"] == 0:
            break
        time.sleep(0.1)
    assert not calls and frontdoor.programs()[pid]["in_flight"] == 0
    # and the server serves the next request as before
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("length", "stop")
