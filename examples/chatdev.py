"""ChatDev's virtual software company, built from its real phase graph (ChatChainConfig.json).

ChatDev runs a *chat chain*: phases in order, each a dialogue between two roles of the company
(PhaseConfig.json says which: the assistant answers, the user instructs). A ComposedPhase
repeats its sub-phases up to `cycleNum` times, stopping early on its own condition. Mapped to
agentflow, with every role an agent:

    SimplePhase P (assistant a, user u, T turns)      P.assistant ─(concluded)─────────────────> next
                                                         ^   └─> P.user ─(loop, <= T turns)─┴──> next
      T = 1: only the assistant speaks (as in ChatDev), P.assistant ──> next
      need_reflect: when the dialogue ends without a conclusion, the CEO reflects on it with the
      Counselor (ChatDev's one-turn "Reflection": only the CEO speaks):  ... ─> P.reflect ─> next
    ComposedPhase C (cycleNum N)                      C.enter ─(not C.break)─> sub-phases ─┐
                                                         |                  ^  (loop, <= N) ┘──> next
                                                         └─(C.break: zero cycles)─────────────> next
    self_improve                                      SelfImprove.assistant (the Prompt Engineer
                                                      rewrites the task before the chain starts)

Conversations: as in ChatDev, every phase is a fresh chat: each role's history spans its phase
(`conversation=<phase key>`), and a reflection is a chat of its own.

State keys: `parse_message` (every LLM step's parser) sets `<P>.concluded` when a message carries
ChatDev's `<INFO>` marker. `<C>.break` stands for ChatDev's `break_cycle` (no unimplemented file;
review finished; tests pass): it needs the produced code, which this example does not write, so
nothing sets it here and composed phases run their cycles (a parser of your own may set it). -1 (or 0) turns means ChatDev's default of 10 (`chat_turn_limit_default`).

`build()` reads the shipped, structure-only `examples/chatdev/chain.json`: the chain of the real
run OpenBMB/ChatDev chatdev1.0 @ 31fd9944 `WareHouse/2048_THUNLP_20230822144615`, with each
phase's role names inlined, made by `chain_from_chatdev` (names and numbers only: no ChatDev
prompt text). The roles' system prompts here are our own short ones. `from_chatchain_config`
also reads ChatDev's own files (ChatChainConfig.json + PhaseConfig.json [+ RoleConfig.json]).
Regenerate the shipped file with `python -m examples.chatdev <ChatDev run dir> > examples/chatdev/chain.json`.

Planning figures, from the 27 stored ChatDev runs whose run.log records phases and cycles
(of 29: one run's configs are empty files, one log predates that format):
  * cycles. CodeCompleteAll: entered in 4 of 27 runs (the rest had no unimplemented file),
    then 1, 1, 2, 3 cycles -> P(enter) 0.15, 1.75 expected. CodeReview: ran all `cycleNum`
    cycles in 27 of 27 runs (its early exit never fired) -> expected = cycleNum. Test: entered
    in 5 of 27 (the first run passed in the rest), then 5, 5, 5, 5, 1 cycles -> P(enter) 0.19,
    4.2 expected. HumanAgentInteraction: 4 runs, 5, 5, 5, 2 cycles -> 4.25 expected.
  * turns. Of the 288 dialogues allowed more than one turn, 1 went past the first turn: one
    turn expected. The assistant's first message concludes DemandAnalysis in 20 of 27,
    LanguageChoose 27/27, CodeReviewComment 7/97, CodeReviewModification 1/97, TestErrorSummary
    0/20, TestModification 13/20; EnvironmentDoc (1 turn) never concludes, so the CEO reflects
    on it every time (26 of 26); no dialogue that reached its user's reply needed reflection.
  * output tokens: the median completion tokens of each phase and side in those logs.

KV cache, in steps-to-execution (rounds until an agent's next call; min over every possible
path, and expected under the planning figures above; tests/examples/test_chatdev.py pins them):
  * the Programmer speaks in almost every phase from Coding on (coding, completion, both sides
    of every review and test cycle): from Coding to EnvironmentDoc it is at most 1 step away
    (the boundaries between phases and cycles are noops and take no round). Keep it for the
    whole run. The Code Reviewer alternates with it through CodeReview's cycles (all
    `cycleNum` of them in the data): keep both there.
  * the CTO's last call is LanguageChoose (in Coding and EnvironmentDoc it only instructs, and
    one-turn phases let only the assistant speak): at Coding its steps-to-execution is inf.
    Free it then; the same holds for the Prompt Engineer once DemandAnalysis starts.
  * the CPO and the CEO speak at the start and again only at the end (EnvironmentDoc's
    reflection, Manual). After LanguageChoose they are 2-3 steps away at best (every loop
    could stop at once; 1 at the noops between phases) but ~20-26 in expectation through
    CodeReview (five review cycles of ~4 rounds each): offload them for the middle of the run
    and prefetch them as CodeReview ends.
  * the Software Test Engineer speaks only if the first test run fails (P 0.19), and the
    Counselor never speaks (it only instructs the CEO's reflection): neither is worth keeping.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow import Workflow, WorkloadError, when

CHATDEV_SOURCE = "OpenBMB/ChatDev branch chatdev1.0 @ 31fd9944"
LICENCE = "Apache-2.0"
FORMAT = "agentflow-chatdev-chain/1"
CHAIN_FILE = Path(__file__).resolve().parent / "chatdev" / "chain.json"
DEFAULT_TURNS = 10  # ChatDev's chat_turn_limit_default, for max_turn_step <= 0
CEO, COUNSELOR = "Chief Executive Officer", "Counselor"
END = "end"

# ---- planning figures (see the module docstring for the data behind them) ----------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CyclePlan:
    p_enter: float  # probability that the first cycle runs at all
    expected_cycles: float | None  # given that it runs; None: all cycleNum cycles


CYCLE_PLANS = {
    "CodeCompleteAll": CyclePlan(p_enter=4 / 27, expected_cycles=1.75),
    "CodeReview": CyclePlan(p_enter=1.0, expected_cycles=None),
    "Test": CyclePlan(p_enter=5 / 27, expected_cycles=4.2),
    "HumanAgentInteraction": CyclePlan(p_enter=1.0, expected_cycles=4.25),
}
DEFAULT_CYCLE_PLAN = CyclePlan(p_enter=1.0, expected_cycles=None)
ASSISTANT_CONCLUDES = {  # P(the assistant's message carries the conclusion)
    "DemandAnalysis": 20 / 27, "LanguageChoose": 1.0, "CodeReviewComment": 7 / 97,
    "CodeReviewModification": 1 / 97, "TestErrorSummary": 0.0, "TestModification": 13 / 20, "EnvironmentDoc": 0.0,
}
DEFAULT_ASSISTANT_CONCLUDES = 0.5
REFLECT_AFTER_USER = 0.0  # P(no conclusion once the user has replied): 0 of 7 in the data
EXPECTED_TURNS = 1.0  # 1 of 288 multi-turn dialogues went past its first turn
OUTPUT_TOKENS = {  # (phase, side) -> median completion tokens in the stored runs
    ("SelfImprove", "assistant"): 159, ("DemandAnalysis", "assistant"): 4, ("DemandAnalysis", "user"): 55,
    ("LanguageChoose", "assistant"): 4, ("Coding", "assistant"): 874, ("CodeComplete", "assistant"): 1521,
    ("CodeReviewComment", "assistant"): 199, ("CodeReviewComment", "user"): 5,
    ("CodeReviewModification", "assistant"): 1047, ("CodeReviewModification", "user"): 676,
    ("CodeReviewHuman", "assistant"): 725, ("TestErrorSummary", "assistant"): 302,
    ("TestErrorSummary", "user"): 317, ("TestModification", "assistant"): 1162, ("TestModification", "user"): 4,
    ("EnvironmentDoc", "assistant"): 96, ("Reflection", "assistant"): 85, ("Manual", "assistant"): 594,
}
DEFAULT_OUTPUT_TOKENS = 256

# ---- our own short texts (ChatDev's prompts are not shipped) ------------------------------------

ROLE_PROMPTS = {
    CEO: "You are the CEO of a small software company. You make the final decisions on what to build.",
    COUNSELOR: "You are the CEO's counselor. You ask the questions that bring a discussion to a decision.",
    "Chief Human Resource Officer": "You are the head of HR. You decide who works on what.",
    "Chief Product Officer": "You are the product officer. You turn requests into products and write manuals.",
    "Chief Technology Officer": "You are the CTO. You choose technologies and guide the programmers.",
    "Chief Creative Officer": "You are the creative officer. You design how the software looks.",
    "Programmer": "You are a programmer. You write complete, working code, one file at a time.",
    "Code Reviewer": "You are a code reviewer. You find the most important defect and say how to fix it.",
    "Software Test Engineer": "You are a test engineer. You run the software and report what fails and why.",
    "Prompt Engineer": "You rewrite short software requests into clear, detailed ones.",
    "User": "You are the customer who asked for the software.",
}
PHASE_GOALS = {
    "SelfImprove": "Rewrite the task as a clear, detailed software request.",
    "DemandAnalysis": "Decide which kind of product (application, website, document, ...) fits the task.",
    "LanguageChoose": "Choose the programming language.",
    "Coding": "Write the complete code, file by file.",
    "ArtDesign": "Design the images the user interface needs.",
    "ArtIntegration": "Put the designed images into the user interface.",
    "CodeComplete": "Implement what is still missing in the code.",
    "CodeReviewComment": "Review the code and give the most important comment.",
    "CodeReviewModification": "Revise the code according to the review comments.",
    "CodeReviewHuman": "Revise the code according to the customer's feedback.",
    "TestErrorSummary": "Summarize the test failures and their causes.",
    "TestModification": "Fix the code so that the tests pass.",
    "EnvironmentDoc": "Write the list of dependencies the software needs.",
    "Manual": "Write the user manual.",
    "Reflection": "Read the discussion and state the conclusion it reached.",
}


def _role_prompt(role: str) -> str:
    return ROLE_PROMPTS.get(role, f"You are the {role} of a small software company.")


def _goal(phase: str) -> str:
    return PHASE_GOALS.get(phase, f"Carry out the {phase} phase.")


# ---- the converter: ChatDev's files -> the structure-only chain ---------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise WorkloadError(f"cannot read the {what}: {e.strerror}", file=str(path)) from None
    if not text.strip():
        raise WorkloadError(f"the {what} is empty", file=str(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"not valid JSON: {e.msg}", file=str(path), line=e.lineno) from None


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"  # ChatDev's check_bool


def _int(entry: Mapping, key: str, file: str, record: str) -> int:
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise WorkloadError(f"must be an integer (got {v!r})", file=file, record=record, field=key)
    return v


def _simple(entry: Mapping, roles: Mapping[str, Mapping] | None, file: str, record: str) -> dict:
    phase = entry.get("phase")
    if not isinstance(phase, str) or not phase:
        raise WorkloadError("a phase needs a name", file=file, record=record, field="phase")
    out = {"phase": phase, "phaseType": "SimplePhase", "max_turn_step": _int(entry, "max_turn_step", file, record),
           "need_reflect": _flag(entry.get("need_reflect", False))}
    for key in ("assistant_role_name", "user_role_name"):
        name = entry.get(key) or (roles or {}).get(phase, {}).get(key)
        if not isinstance(name, str) or not name:
            raise WorkloadError(f"no {key} for phase '{phase}': give PhaseConfig.json", file=file, record=record,
                                field=key)
        out[key] = name
    return out


def _chain(data: Any, roles: Mapping[str, Mapping] | None, file: str) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get("chain"), list) or not data["chain"]:
        raise WorkloadError("needs a non-empty list 'chain'", file=file, field="chain")
    out = []
    for i, entry in enumerate(data["chain"]):
        record = f"chain[{i}]"
        kind = entry.get("phaseType") if isinstance(entry, dict) else None
        if kind == "SimplePhase":
            out.append(_simple(entry, roles, file, record))
        elif kind == "ComposedPhase":
            if not isinstance(entry.get("phase"), str) or not entry["phase"]:
                raise WorkloadError("a phase needs a name", file=file, record=record, field="phase")
            subs = entry.get("Composition")
            if not isinstance(subs, list) or not subs:
                raise WorkloadError("a ComposedPhase needs a non-empty Composition", file=file, record=record,
                                    field="Composition")
            if any(not isinstance(s, dict) or s.get("phaseType") != "SimplePhase" for s in subs):
                raise WorkloadError("a Composition holds SimplePhases only (as in ChatDev)", file=file,
                                    record=record, field="Composition")
            cycles = _int(entry, "cycleNum", file, record)
            if cycles < 1:
                raise WorkloadError(f"cycleNum must be >= 1 (got {cycles})", file=file, record=record,
                                    field="cycleNum")
            out.append({"phase": entry.get("phase"), "phaseType": "ComposedPhase", "cycleNum": cycles,
                         "Composition": [_simple(s, roles, file, f"{record}.Composition[{j}]")
                                         for j, s in enumerate(subs)]})
        else:
            raise WorkloadError(f"phaseType must be SimplePhase or ComposedPhase (got {kind!r})", file=file,
                                record=record, field="phaseType")
    return out


def chain_from_chatdev(chain_config_path: str | Path, phase_config_path: str | Path | None = None, *,
                       source: str | None = None) -> dict:
    """The structure-only chain of a ChatDev run: its ChatChainConfig with role names inlined.

    `phase_config_path` defaults to the PhaseConfig.json beside the chain config. The result
    holds names and numbers only (no prompt text); it is what `examples/chatdev/chain.json` is.
    """
    chain_path = Path(chain_config_path)
    phase_path = Path(phase_config_path) if phase_config_path else chain_path.with_name("PhaseConfig.json")
    data = _read_json(chain_path, "chat chain config")
    roles = _read_json(phase_path, "phase config")
    if not isinstance(roles, dict):
        raise WorkloadError("a phase config maps phase names to their settings", file=str(phase_path))
    return {
        "format": FORMAT,
        "source": source or f"ChatDev run {chain_path.parent.name}",
        "licence": LICENCE,
        "derived_by": "examples/chatdev.py chain_from_chatdev: names and numbers only, no prompt text",
        "self_improve": _flag(data.get("self_improve", False)) if isinstance(data, dict) else False,
        "chain": _chain(data, roles, str(chain_path)),
    }


def load_chain(chain_config_path: str | Path, phase_config_path: str | Path | None = None) -> dict:
    """A derived chain file as it is, or ChatDev's own files converted by `chain_from_chatdev`."""
    path = Path(chain_config_path)
    data = _read_json(path, "chat chain config")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return {**data, "chain": _chain(data, None, str(path))}
    return chain_from_chatdev(path, phase_config_path)


# ---- the workflow -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Phase:
    key: str  # unique step-name prefix
    phase: str
    assistant: str
    user: str
    turns: int
    reflect: bool

    @property
    def entry(self) -> str:
        return f"{self.key}.assistant"


def _phase(entry: Mapping, key: str) -> _Phase:
    turns = entry["max_turn_step"]
    return _Phase(key=key, phase=entry["phase"], assistant=entry["assistant_role_name"],
                  user=entry["user_role_name"], turns=turns if turns > 0 else DEFAULT_TURNS,
                  reflect=entry["need_reflect"])


def parse_message(text: str, state, step: str) -> dict:
    """A dialogue message: `<phase key>.concluded` when it carries ChatDev's `<INFO>` marker."""
    if "<INFO>" not in text:
        return {}
    return {f"{step.rsplit('.', 1)[0]}.concluded": True}


class _ChainBuilder:
    def __init__(self, wf: Workflow, role_prompts: Mapping[str, str]):
        self.wf = wf
        self.role_prompts = role_prompts
        self.end_used = False
        self.keys: dict[str, int] = {}
        self.roles: set[str] = set()

    def key(self, phase: str) -> str:
        n = self.keys[phase] = self.keys.get(phase, 0) + 1
        return phase if n == 1 else f"{phase}#{n}"

    def agent(self, role: str) -> None:
        if role not in self.roles:  # a role is declared once, however often it speaks
            self.roles.add(role)
            self.wf.agent(role, system_prompt=self.role_prompts.get(role) or _role_prompt(role))

    def target(self, after: str | None) -> str:
        if after is None:
            self.end_used = True
            return END
        return after

    def dialogue(self, p: _Phase, after: str | None) -> None:
        wf = self.wf
        self.agent(p.assistant)
        self.agent(p.user)
        concluded, open_ = when(f"{p.key}.concluded"), when(f"{p.key}.concluded", "falsy")
        p_concl = ASSISTANT_CONCLUDES.get(p.phase, DEFAULT_ASSISTANT_CONCLUDES)
        a = wf.llm(p.entry, agent=p.assistant, prompt=f"Task: {{task}}\n{_goal(p.phase)}",
                   inputs=[f"{p.key}.user"] if p.turns > 1 else [],
                   expected_output_tokens=OUTPUT_TOKENS.get((p.phase, "assistant"), DEFAULT_OUTPUT_TOKENS),
                   parse=parse_message, conversation=p.key)
        if p.turns == 1:
            if p.reflect:
                r = self.reflection(p, [a], after)
                wf.branch(a, {r: open_}, default=self.target(after), probabilities={r: 1.0 - p_concl})
            elif after is not None:
                wf.sequence(a, after)
            return
        u = wf.llm(f"{p.key}.user", agent=p.user,
                   prompt=f"Task: {{task}}\nAs {p.user}, answer the {p.assistant}. Goal: {_goal(p.phase)}",
                   inputs=[a], expected_output_tokens=OUTPUT_TOKENS.get((p.phase, "user"), DEFAULT_OUTPUT_TOKENS),
                   parse=parse_message, conversation=p.key)
        done = self.target(after)
        wf.branch(a, {done: concluded}, default=u, probabilities={done: p_concl})
        exit_ = after
        if p.reflect:
            exit_ = wf.noop(f"{p.key}.check")
            r = self.reflection(p, [a, u], after)
            wf.branch(exit_, {r: open_}, default=self.target(after), probabilities={r: REFLECT_AFTER_USER})
        wf.loop(u, back_to=a, max_iterations=p.turns, expected_iterations=EXPECTED_TURNS, while_=open_, exit=exit_)

    def reflection(self, p: _Phase, inputs: list[str], after: str | None) -> str:
        self.agent(CEO)
        self.agent(COUNSELOR)
        r = self.wf.llm(f"{p.key}.reflect", agent=CEO, prompt=f"Phase {p.phase}. {_goal('Reflection')}",
                        inputs=inputs, expected_output_tokens=OUTPUT_TOKENS[("Reflection", "assistant")],
                        parse=parse_message, conversation=f"{p.key}.reflect")
        if after is not None:
            self.wf.sequence(r, after)
        return r

    def composed(self, key: str, entry: Mapping, subs: list[_Phase], after: str | None) -> None:
        wf = self.wf
        cycles = entry["cycleNum"]
        plan = CYCLE_PLANS.get(entry["phase"], DEFAULT_CYCLE_PLAN)
        expected = cycles if plan.expected_cycles is None else min(plan.expected_cycles, cycles)
        going_on = when(f"{key}.break", "falsy")
        enter = wf.noop(f"{key}.enter")
        wf.branch(enter, {subs[0].entry: going_on}, default=self.target(after),
                  probabilities={subs[0].entry: plan.p_enter})
        last = subs[-1]
        # The cycle's loop needs a step of its own to leave by; the last dialogue's assistant is
        # one when it speaks alone and unconditionally, else a no-op closes the cycle.
        alone = last.turns == 1 and not last.reflect
        closing = last.entry if alone else f"{key}.cycle_end"
        for i, p in enumerate(subs):
            self.dialogue(p, subs[i + 1].entry if i + 1 < len(subs) else None if alone else closing)
        if not alone:
            wf.noop(closing)
        wf.loop(closing, back_to=subs[0].entry, max_iterations=cycles, expected_iterations=expected,
                while_=going_on, exit=after)


def from_chatchain_config(chain_config_path: str | Path, phase_config_path: str | Path | None = None,
                          role_config_path: str | Path | None = None) -> Workflow:
    """A Workflow from ChatDev's ChatChainConfig.json (+ PhaseConfig.json, by default the one beside
    it) or from a derived chain file like `examples/chatdev/chain.json`.

    With `role_config_path` (ChatDev's RoleConfig.json) the roles get ChatDev's own system
    prompts; without it, our short ones.
    """
    chain = load_chain(chain_config_path, phase_config_path)
    role_prompts: dict[str, str] = {}
    if role_config_path is not None:
        raw = _read_json(Path(role_config_path), "role config")
        if not isinstance(raw, dict):
            raise WorkloadError("a role config maps role names to prompt lines", file=str(role_config_path))
        role_prompts = {r: "\n".join(v) if isinstance(v, list) else str(v) for r, v in raw.items()}
    wf = Workflow("chatdev", description=f"ChatDev's chat chain ({chain['source']})")
    b = _ChainBuilder(wf, role_prompts)
    units: list[tuple[str, Any]] = []
    if chain.get("self_improve"):
        units.append(("simple", _Phase(key=b.key("SelfImprove"), phase="SelfImprove", assistant="Prompt Engineer",
                                       user="User", turns=1, reflect=False)))
    for entry in chain["chain"]:
        if entry["phaseType"] == "SimplePhase":
            units.append(("simple", _phase(entry, b.key(entry["phase"]))))
        else:
            key = b.key(entry["phase"])
            units.append(("composed", (key, entry, [_phase(s, b.key(s["phase"])) for s in entry["Composition"]])))
    entries = [u.entry if kind == "simple" else f"{u[0]}.enter" for kind, u in units]
    for i, (kind, unit) in enumerate(units):
        after = entries[i + 1] if i + 1 < len(units) else None
        if kind == "simple":
            b.dialogue(unit, after)
        else:
            b.composed(*unit, after)
    if b.end_used:
        wf.noop(END)
    wf.start(entries[0])
    return wf


def build() -> Workflow:
    return from_chatchain_config(CHAIN_FILE)


def main(argv: list[str] | None = None) -> int:
    """`python -m examples.chatdev RUN_DIR`: print the derived chain of a ChatDev run (as chain.json)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m examples.chatdev CHATDEV_RUN_DIR  (holding ChatChainConfig.json and "
              "PhaseConfig.json)", file=sys.stderr)
        return 2
    run = Path(args[0])
    chain = chain_from_chatdev(run / "ChatChainConfig.json",
                               source=f"{CHATDEV_SOURCE}, WareHouse/{run.resolve().name}")
    print(json.dumps(chain, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
