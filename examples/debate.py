"""A two-agent debate with a judge: pro and con alternate for up to 4 rounds, then the judge decides.

    pro ──> con ──loop while not `consensus`, at most 4 rounds──> judge
     ^               |
     └───────────────┘

Each round the proponent argues and the opponent answers; `parse_answer` sets `consensus` when
the opponent's answer concedes, which ends the debate early. The judge reads both sides' last turns and rules. `debate.yaml` is the same program
written as a workflow file.

KV cache, in steps-to-execution (rounds until an agent's next LLM call):
  * while `pro` speaks, `con` is 1 step away, and while `con` speaks, `pro` is: both debaters'
    histories are hot, alternating every step; keep both.
  * the judge is 2 steps away at best (pro, con, then consensus ends the debate), ~2 x 3 = 6 in
    expectation (3 rounds expected): its system prompt is small and it runs once, so it is the
    first to let go and the one to prefetch when the debate nears its end.
  * in the last round (3 rounds done), `pro` can never speak again once `con` is speaking
    (steps-to-execution inf): its KV can be freed then, one step before the judge starts.
Token counts are the author's planning guesses (about 300 tokens a turn); no real runs exist here.
"""

from __future__ import annotations

from agentflow import Workflow, when

MAX_ROUNDS = 4
EXPECTED_ROUNDS = 3.0


def parse_answer(text: str, state, step: str) -> dict:
    """The opponent's answer: `consensus` once it concedes ("I concede")."""
    return {"consensus": "concede" in text.lower()}


def build() -> Workflow:
    wf = Workflow("debate", description="Pro and con debate for up to 4 rounds; a judge decides.")
    wf.agent("pro", system_prompt="You argue FOR the motion. Answer the other side's strongest point, concisely.")
    wf.agent("con", system_prompt="You argue AGAINST the motion. Answer the other side's strongest point, "
                                  "concisely. Say 'I concede' if you are persuaded.")
    wf.agent("judge", system_prompt="You judge a debate. Weigh the arguments, not the style, and rule "
                                    "for one side with a one-paragraph reason.")
    wf.llm("pro_argues", agent="pro", prompt="Motion: {motion}", inputs=["con_answers"], expected_output_tokens=300)
    wf.llm("con_answers", agent="con", prompt="Motion: {motion}", inputs=["pro_argues"], expected_output_tokens=300,
           parse=parse_answer)
    wf.llm("judge_rules", agent="judge", prompt="Motion: {motion}\nRule on the debate.",
           inputs=["pro_argues", "con_answers"], expected_output_tokens=200)
    wf.sequence("pro_argues", "con_answers")
    wf.loop("con_answers", back_to="pro_argues", max_iterations=MAX_ROUNDS, expected_iterations=EXPECTED_ROUNDS,
            while_=when("consensus", "falsy"), exit="judge_rules")
    return wf
