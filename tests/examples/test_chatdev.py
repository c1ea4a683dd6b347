"""ChatDev's chat chain: the shipped chain, its steps-to-execution, and every real run's config."""

from __future__ import annotations

import json
import math

import pytest

from agentflow import Position, WorkloadError, estimate
from agentflow.graph import Loop
from agentflow.graph.exact import exact_steps_min
from examples.chatdev import (
    CEO, CHAIN_FILE, CHATDEV_SOURCE, COUNSELOR, DEFAULT_TURNS, build, chain_from_chatdev, from_chatchain_config,
)

INF = math.inf
PE, CPO, CTO, PROG, CR, STE = ("Prompt Engineer", "Chief Product Officer", "Chief Technology Officer",
                               "Programmer", "Code Reviewer", "Software Test Engineer")
REFERENCE_RUN = "2048_THUNLP_20230822144615"


def composed_loops(compiled) -> dict[str, int]:
    """ComposedPhase -> its loop's max_iterations (the loop that checks `<phase>.break`)."""
    return {t.while_.key.removesuffix(".break"): t.max_iterations for t in compiled.graph.transitions.values()
            if isinstance(t, Loop) and t.while_.key.endswith(".break")}


def roles_of(chain: list[dict], phase_roles: dict, self_improve: bool) -> set[str]:
    simple = [p for e in chain for p in ([e] if e["phaseType"] == "SimplePhase" else e["Composition"])]
    roles = {phase_roles[p["phase"]][k] for p in simple for k in ("assistant_role_name", "user_role_name")}
    if any(str(p["need_reflect"]).lower() == "true" for p in simple):
        roles |= {CEO, COUNSELOR}
    if self_improve:
        roles |= {PE, "User"}
    return roles


@pytest.fixture(scope="module")
def compiled():
    return build().compile()


# ---- the shipped chain ------------------------------------------------------------------------


def test_shipped_chain_is_structure_only_with_its_source():
    data = json.loads(CHAIN_FILE.read_text())
    assert data["source"] == f"{CHATDEV_SOURCE}, WareHouse/{REFERENCE_RUN}"
    assert data["licence"] == "Apache-2.0"
    allowed = {"phase", "phaseType", "max_turn_step", "need_reflect", "assistant_role_name", "user_role_name",
               "cycleNum", "Composition"}

    def keys(entries):
        for e in entries:
            yield from e
            yield from keys(e.get("Composition", []))

    assert set(keys(data["chain"])) <= allowed  # names and numbers: no prompt text


def test_shipped_chain_structure(compiled):
    g = compiled.graph
    assert set(compiled.agents) == {PE, "User", CPO, CEO, COUNSELOR, CTO, PROG, CR, STE}
    assert g.agents == (PE, CPO, CTO, CEO, PROG, CR, STE)  # those that ever speak; User and Counselor only instruct
    assert composed_loops(compiled) == {"CodeCompleteAll": 20, "CodeReview": 5, "Test": 5}
    turns = {s: t.max_iterations for s, t in g.transitions.items()
             if isinstance(t, Loop) and t.while_.key.endswith(".concluded")}
    assert turns == {"DemandAnalysis.user": 2, "LanguageChoose.user": 2, "CodeReviewComment.user": DEFAULT_TURNS,
                     "CodeReviewModification.user": DEFAULT_TURNS, "TestErrorSummary.user": DEFAULT_TURNS,
                     "TestModification.user": DEFAULT_TURNS}  # max_turn_step -1: ChatDev's default, 10
    review = g.transitions["CodeReview.cycle_end"]
    assert review.expected_iterations == 5  # every real run did all its review cycles


def exact_min(graph, active: str, loops=None) -> dict[str, float]:
    """The brute-force reference, searched 20 rounds deep: the chain's loops (20 CodeComplete cycles,
    10-turn dialogues) make the full search take minutes. Every finite pin here is <= 5, so it is
    checked exactly; an inf pin is checked as "not within 20 rounds" (that it is never, follows
    from the chain: no edge leads back to an earlier phase)."""
    return exact_steps_min(graph, frozenset({active}), loops, max_rounds=20)


def row(pe, cpo, cto, ceo, prog, cr, ste):
    return {PE: pe, CPO: cpo, CTO: cto, CEO: ceo, PROG: prog, CR: cr, STE: ste}


# Every phase's assistant/user turn is an LLM step (one round); `<C>.enter`, `<C>.cycle_end` and
# `<P>.check` are noops (zero rounds), so leaving a phase or a cycle costs no round of its own.
# A branch case with planning probability 0 (e.g. CodeReview.enter -> Test.enter, EnvironmentDoc
# concluding) is still structurally possible, so the minimum may take it.
@pytest.mark.parametrize("active, loops, expected", [
    # SelfImprove (1), DemandAnalysis.assistant at 1 (CPO), its user at 2 (CEO) / LanguageChoose at 2
    # (CTO), Coding at 3; Coding (1), then CodeCompleteAll.enter, CodeReview.enter (noops): the
    # reviewer at 4; or on through Test.enter to TestErrorSummary at 4, its user (STE) at 5
    ("SelfImprove.assistant", {}, row(0, 1, 2, 2, 3, 4, 5)),
    ("DemandAnalysis.assistant", {}, row(INF, 0, 1, 1, 2, 3, 4)),
    # the CTO's last call is LanguageChoose: in Coding it only instructs. Coding (1), then through
    # the noop enters CodeReviewComment, TestErrorSummary or EnvironmentDoc start at 1; the tester's
    # reply, EnvironmentDoc's reflect (CEO) or Manual (CPO) at 2
    ("Coding.assistant", {}, row(INF, 2, INF, 2, 0, 1, 2)),
    # comment (1), concluded: modification at 1, concluded: cycle_end, Test.enter (noops) at 2:
    # EnvironmentDoc / TestErrorSummary at 2, then Manual, reflect, the tester's turn at 3
    ("CodeReviewComment.assistant", {}, row(INF, 3, INF, 3, 1, 0, 3)),
    # last review cycle, turns left: the reviewer may speak again in this dialogue (at 1); the
    # exit through cycle_end and Test.enter (noops) reaches EnvironmentDoc / TestErrorSummary at 1
    ("CodeReviewModification.user", {"CodeReview.cycle_end": 4}, row(INF, 2, INF, 2, 0, 1, 2)),
    # turns exhausted, cycles left: the reviewer opens the next cycle, at 1 (cycle_end is a noop)
    ("CodeReviewModification.user", {"CodeReviewModification.user": 9}, row(INF, 2, INF, 2, 0, 1, 2)),
    # both exhausted: the reviewer is done for good
    ("CodeReviewModification.user", {"CodeReview.cycle_end": 4, "CodeReviewModification.user": 9},
     row(INF, 2, INF, 2, 0, INF, 2)),
    # the last test cycle's noop end: EnvironmentDoc (the programmer) starts in this same round
    ("Test.cycle_end", {"Test.cycle_end": 4}, row(INF, 1, INF, 1, 0, INF, INF)),
    ("EnvironmentDoc.reflect", {}, row(INF, 1, INF, 0, INF, INF, INF)),
])
def test_steps_to_execution(compiled, active, loops, expected):
    assert estimate(compiled.graph, Position.of(active, loop_iterations=loops)).steps_to_execution() == expected
    assert exact_min(compiled.graph, active, loops) == expected


def test_programmer_stays_close_from_coding_to_environment_doc(compiled):
    # The programmer speaks in every phase from Coding on, and the phase boundaries are noops:
    # it is 1 round away while the reviewer or the tester speaks, 0 at its own turns and at the
    # noops (enter, cycle_end) that can lead straight to one of them. Was 2 when noops took a round.
    steps = list(compiled.steps)
    middle = steps[steps.index("Coding.assistant"):steps.index("EnvironmentDoc.assistant") + 1]
    far = {s: estimate(compiled.graph, Position.of(s)).steps_to_execution()[PROG] for s in middle}
    assert max(far.values()) == 1, far
    assert far == {s: exact_min(compiled.graph, s)[PROG] for s in middle}


def test_expected_steps_tell_the_middle_of_the_run_apart(compiled):
    e = estimate(compiled.graph, Position.of("CodeReviewComment.assistant")).expected_steps()
    # The programmer: the comment's user turn at 1 (P 0.928), else modification at 1 and its user
    # at 2; X = 0.928 + 0.072 * (2 + 0.0103 * 0.8 X)  ->  X = 1.0728.
    assert e[PROG] < 1.1
    assert e[PROG] == pytest.approx(1.0728, abs=1e-3)
    # The CPO: min 3, but five review cycles expected first (geometric, mean 5), each
    # comment 1 + 0.928 user + modification 1 + 0.990 user = 3.918 rounds (cycle_end is a noop):
    # 19.59; then the test cycles with P 5/27, 4.2 x (1 + 1 + 1 + 0.35) rounds: 2.61; then
    # EnvironmentDoc and its reflection: 2. About 24.2, some 8 times the minimum.
    assert e[CPO] > 20
    assert e[CPO] == pytest.approx(5 * 3.9175 + 5 / 27 * 4.2 * 3.35 + 2, abs=1e-2)


# ---- reading files ----------------------------------------------------------------------------


def test_derived_chain_needs_role_names(tmp_path):
    path = tmp_path / "chain.json"
    path.write_text(json.dumps({"format": "agentflow-chatdev-chain/1", "source": "x", "chain": [
        {"phase": "Coding", "phaseType": "SimplePhase", "max_turn_step": 1, "need_reflect": False}]}))
    with pytest.raises(WorkloadError, match="assistant_role_name"):
        from_chatchain_config(path)


@pytest.mark.parametrize("chain, message", [
    ([], "non-empty list 'chain'"),
    ([{"phase": "X", "phaseType": "Nested"}], "phaseType"),
    ([{"phase": "C", "phaseType": "ComposedPhase", "cycleNum": 0, "Composition": [
        {"phase": "Coding", "phaseType": "SimplePhase", "max_turn_step": 1, "need_reflect": "False"}]}], "cycleNum"),
    ([{"phase": "Coding", "phaseType": "SimplePhase", "max_turn_step": "1", "need_reflect": "False"}],
     "must be an integer"),
])
def test_malformed_chatdev_configs(tmp_path, chain, message):
    (tmp_path / "ChatChainConfig.json").write_text(json.dumps({"chain": chain}))
    (tmp_path / "PhaseConfig.json").write_text(json.dumps(
        {"Coding": {"assistant_role_name": PROG, "user_role_name": CTO, "phase_prompt": ["..."]}}))
    with pytest.raises(WorkloadError, match=message):
        from_chatchain_config(tmp_path / "ChatChainConfig.json")


def test_empty_config_file_is_an_error(tmp_path):
    (tmp_path / "ChatChainConfig.json").write_text("")
    with pytest.raises(WorkloadError, match="empty"):
        from_chatchain_config(tmp_path / "ChatChainConfig.json")


# ---- the real ChatDev runs (../shared) --------------------------------------------------------


@pytest.mark.needs_shared
def test_shipped_chain_is_what_the_converter_makes(shared):
    run = shared(f"data/workflows/chatdev/{REFERENCE_RUN}")
    made = chain_from_chatdev(run / "ChatChainConfig.json", source=f"{CHATDEV_SOURCE}, WareHouse/{REFERENCE_RUN}")
    assert json.loads(CHAIN_FILE.read_text()) == made
    real = from_chatchain_config(run / "ChatChainConfig.json", run / "PhaseConfig.json").compile()
    assert real.spec().steps == build().compile().spec().steps


@pytest.mark.needs_shared
def test_every_real_run_builds(shared):
    root = shared("data/workflows/chatdev")
    runs = sorted(p for p in root.iterdir() if (p / "ChatChainConfig.json").is_file())
    built = 0
    for run in runs:
        chain_path = run / "ChatChainConfig.json"
        if chain_path.stat().st_size == 0:  # one stored run has empty config files
            with pytest.raises(WorkloadError, match="empty"):
                from_chatchain_config(chain_path)
            continue
        config = json.loads(chain_path.read_text())
        phase_roles = json.loads((run / "PhaseConfig.json").read_text())
        compiled = from_chatchain_config(chain_path, role_config_path=run / "RoleConfig.json").compile()
        self_improve = str(config.get("self_improve", "False")).lower() == "true"
        assert set(compiled.agents) == roles_of(config["chain"], phase_roles, self_improve), run.name
        assert composed_loops(compiled) == {e["phase"]: e["cycleNum"] for e in config["chain"]
                                            if e["phaseType"] == "ComposedPhase"}, run.name
        role_prompts = json.loads((run / "RoleConfig.json").read_text())
        assert compiled.agents[PROG].system_prompt == "\n".join(role_prompts[PROG])
        built += 1
    assert built >= 28, f"only {built} of {len(runs)} ChatDev runs built"
