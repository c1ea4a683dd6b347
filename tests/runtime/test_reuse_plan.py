"""Reuse hints from a compiled workflow: which finished call's output sits where in a new prompt,
under the isolation rule. Pure functions, exact tables."""

from __future__ import annotations

import pytest
from agentflow.runtime.reuse_plan import (
    FinishedCall,
    ReuseHint,
    SharedText,
    find_span,
    input_steps,
    namespace_for,
    plan_reuse,
    segment_key,
)

from agentflow.workflow import Workflow

NS = namespace_for(tenant="t1", workflow="debate", program_id=7, share_across_programs=False)


def debate():
    """Three solvers in parallel, a judge that reads all three (two via inputs, one via a template)."""
    wf = Workflow("debate")
    for a in ("s1", "s2", "s3", "judge"):
        wf.agent(a, system_prompt=f"You are {a}.")
    wf.noop("start")
    for s in ("s1", "s2", "s3"):
        wf.llm(f"solve_{s}", agent=s, prompt="Solve: {task}")
    wf.llm("judge", agent="judge", prompt="Task: {task}\nFirst: {steps.solve_s3}", inputs=["solve_s1", "solve_s2"])
    wf.fan_out("start", ["solve_s1", "solve_s2", "solve_s3"], join="judge")
    wf.join(["solve_s1", "solve_s2", "solve_s3"], "judge")
    return wf.compile()


def test_input_steps_reads_inputs_and_template_references():
    assert input_steps(debate()) == {"judge": ("solve_s3", "solve_s1", "solve_s2")}


def test_namespace_rule():
    assert namespace_for(tenant="t1", workflow="w", program_id=3, share_across_programs=False) == "t1/wf:w/p:3"
    assert namespace_for(tenant="t1", workflow="w", program_id=3, share_across_programs=True) == "t1/wf:w"
    assert segment_key("a", [1, 2, 3]) != segment_key("b", [1, 2, 3])
    assert segment_key("a", [1, 2, 3]) == segment_key("a", [1, 2, 3])


@pytest.mark.parametrize(("hay", "needle", "expected"), [
    ([0, 1, 2, 3, 4, 5, 6], [2, 3, 4], (2, 0, 3)),
    ([0, 1, 9, 3, 4, 5, 6], [2, 3, 4, 5], (3, 1, 3)),  # first token merged away: trimmed
    ([0, 1, 2, 3, 4, 9, 6], [2, 3, 4, 5], (2, 0, 3)),  # last token merged away
    ([0, 1, 2, 3, 4, 5, 6], [7, 8, 9], None),
    ([5, 5, 1, 5, 1, 2], [5, 1, 2], (3, 0, 3)),
])
def test_find_span(hay, needle, expected):
    assert find_span(hay, needle, max_trim=1, min_tokens=3) == expected


def test_plan_hints_for_the_judge():
    flows = input_steps(debate())
    task = tuple(range(1000, 1020))
    outs = {"solve_s1": tuple(range(2000, 2012)), "solve_s2": tuple(range(3000, 3012)),
            "solve_s3": tuple(range(4000, 4012))}
    prompt = [1, 2, *task, 5, *outs["solve_s3"], 6, *outs["solve_s1"], 7, *outs["solve_s2"], 8, 9]
    finished = [FinishedCall(call_id=i, step=s, namespace=NS, output_ids=o) for i, (s, o) in enumerate(outs.items())]
    finished.append(FinishedCall(call_id=99, step="solve_s1", namespace="t2/wf:debate/p:7", output_ids=(1, 2)))
    hints = plan_reuse(target_step="judge", prompt_ids=prompt, namespace=NS, flows=flows, finished=finished,
                       shared=[SharedText(name="task", namespace=NS, token_ids=task)])
    assert [(h.kind, h.source_call_id, h.target_offset, h.num_tokens) for h in hints] == [
        ("state:task->judge", None, 2, 20),
        ("solve_s3->judge", 2, 23, 12),
        ("solve_s1->judge", 0, 36, 12),
        ("solve_s2->judge", 1, 49, 12),
    ]
    assert all(isinstance(h, ReuseHint) and h.namespace == NS for h in hints)
    assert hints[1].key == segment_key(NS, outs["solve_s3"])


def test_other_namespaces_are_never_hinted():
    flows = input_steps(debate())
    out = tuple(range(2000, 2012))
    prompt = [1, *out, 2, 3]
    other = [FinishedCall(call_id=1, step="solve_s1", namespace="t2/wf:debate/p:7", output_ids=out)]
    assert plan_reuse(target_step="judge", prompt_ids=prompt, namespace=NS, flows=flows, finished=other) == ()
    shared = [SharedText(name="task", namespace="t2/wf:debate", token_ids=out)]
    assert plan_reuse(target_step="judge", prompt_ids=prompt, namespace=NS, flows=flows, finished=[],
                      shared=shared) == ()


def test_latest_call_wins_short_outputs_skipped_and_last_token_kept():
    flows = {"judge": ("solve_s1", "solve_s2")}
    old, new = tuple(range(10, 30)), tuple(range(50, 70))
    prompt = [1, *new, 2, *range(80, 83), 3, *range(90, 100)]
    finished = [FinishedCall(call_id=1, step="solve_s1", namespace=NS, output_ids=old),
                FinishedCall(call_id=2, step="solve_s1", namespace=NS, output_ids=new),
                FinishedCall(call_id=3, step="solve_s2", namespace=NS, output_ids=tuple(range(80, 83)))]
    hints = plan_reuse(target_step="judge", prompt_ids=prompt, namespace=NS, flows=flows, finished=finished)
    assert [(h.source_call_id, h.target_offset, h.num_tokens) for h in hints] == [(2, 1, 20)]  # 3 tokens: too short
    ending = [1, *new]  # a span that ends the prompt is dropped: the engine computes the last token
    assert plan_reuse(target_step="judge", prompt_ids=ending, namespace=NS, flows=flows, finished=finished) == ()


def test_hints_from_spans_without_token_ids():
    """The scheduler's path: no token ids anywhere, sources named by call id, offset and length."""
    from agentflow.runtime.reuse_plan import InputSpan, call_segment_key, hints_from_spans

    flows = input_steps(debate())
    finished = [FinishedCall(call_id=5, step="solve_s1", namespace=NS, num_output_tokens=12),
                FinishedCall(call_id=6, step="solve_s2", namespace=NS, num_output_tokens=13),
                FinishedCall(call_id=7, step="solve_s3", namespace="other", num_output_tokens=12)]
    spans = [InputSpan(source_step="solve_s2", target_offset=40, num_tokens=12, source_offset=1),
             InputSpan(source_step="solve_s1", target_offset=20, num_tokens=12),
             InputSpan(source_step="solve_s3", target_offset=60, num_tokens=12),  # other namespace
             InputSpan(source_step="solve_s1", target_offset=25, num_tokens=12)]  # overlaps the first
    hints = hints_from_spans(target_call_id="c9", target_step="judge", namespace=NS, prompt_tokens=80, flows=flows,
                             spans=spans, finished=finished)
    assert [(h.source_call_id, h.source_offset, h.target_offset, h.num_tokens, h.target_call_id, h.kind)
            for h in hints] == [(5, 0, 20, 12, "c9", "solve_s1->judge"), (6, 1, 40, 12, "c9", "solve_s2->judge")]
    assert hints[0].key == call_segment_key(NS, 5, 0, 12)
    assert call_segment_key(NS, 5, 0, 12) != call_segment_key("t2/wf:debate/p:7", 5, 0, 12)  # namespace in the key
    assert FinishedCall(call_id=1, step="s", namespace=NS, output_ids=(1, 2, 3)).num_output_tokens == 3


@pytest.mark.parametrize(("span", "why"), [
    (dict(target_offset=20, num_tokens=7), "shorter than min_tokens"),
    (dict(target_offset=20, num_tokens=12, source_offset=1), "runs past the source's 12 output tokens"),
    (dict(target_offset=68, num_tokens=12), "reaches the prompt's last token (80 tokens)"),
    (dict(target_offset=-1, num_tokens=12), "negative offset"),
])
def test_hints_from_spans_drops_spans_that_do_not_fit(span, why):
    from agentflow.runtime.reuse_plan import InputSpan, hints_from_spans

    finished = [FinishedCall(call_id=5, step="solve_s1", namespace=NS, num_output_tokens=12)]
    hints = hints_from_spans(target_call_id="c9", target_step="judge", namespace=NS, prompt_tokens=80,
                             flows=input_steps(debate()), spans=[InputSpan(source_step="solve_s1", **span)],
                             finished=finished)
    assert hints == (), why
