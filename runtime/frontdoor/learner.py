"""The step graph of programs that declare nothing, learned from their traffic.

Agents. An agent is its system prompt, less what changes from program to program: the prompt's
paragraphs (split at blank lines) that recur in more than one program name it. ChatDev's
"background + role + this task" prompts name the role; a coding agent's fixed prompt names itself.

    paragraph digests ──seen in ≥ 2 programs──> stable ──hash──> agent key "a-3f09c1d2e4"

A program's workflow class is its first agent (or its `workflow` hint, when that names no
registered workflow). Per class the learner counts:

    calls per agent              the branch probabilities of the plan below
    agent -> agent transitions   (START -> first agent, last agent -> END): the learned graph,
                                 exposed in /metrics and /v1/agentflow/graph
    calls per finished program   the loop's expected iterations
    tool gaps, per tool          answer with tool_calls -> the request carrying their results:
                                 the scheduler's tool statistics (pin TTLs) get each gap as
                                 ToolFinished(duration_s)

The scheduler plans with a `StepGraph` (DAGs with declared loops), which cannot hold a first-order
transition matrix, so the plan it is given has the shape the replay's planning graph has
(runtime/replay/planning.py): one agent -> llm, tool, loop; several -> a branch over the agents
weighted by their share of calls, then the tool step, in a loop. Agents first seen after a
program opened map to the catch-all `other` step of its graph. The plan is rebuilt only when the
agent set changes or the call count crosses a power of two, so the scheduler compiles few graphs.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

START, END = "__start__", "__end__"
OTHER = "other"
TOOL_STEP = "tool"
MAX_LEARNED_ITERATIONS = 1_000_000


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


class AgentNamer:
    """Agent keys from system prompts (bounded: the paragraph table is an LRU map)."""

    def __init__(self, max_paragraphs: int = 100_000):
        self.max_paragraphs = max_paragraphs
        self._seen: OrderedDict[bytes, tuple[str, int]] = OrderedDict()  # digest -> (last program, programs)

    def name(self, system_text: str, program_id: str) -> str:
        if not system_text.strip():
            return "default"
        digests = [_digest(p) for p in paragraphs(system_text)]
        stable = []
        for d in digests:
            last, n = self._seen.get(d, ("", 0))
            if last != program_id:
                n += 1
            self._seen[d] = (program_id, n)
            self._seen.move_to_end(d)
            if n >= 2:
                stable.append(d)
        while len(self._seen) > self.max_paragraphs:
            self._seen.popitem(last=False)
        return "a-" + hashlib.blake2b(b"".join(stable or digests), digest_size=5).hexdigest()


@dataclass(slots=True, kw_only=True)
class GapStats:
    n: int = 0
    mean_s: float = 0.0
    max_s: float = 0.0

    def add(self, gap_s: float) -> None:
        self.n += 1
        self.mean_s += (gap_s - self.mean_s) / self.n
        self.max_s = max(self.max_s, gap_s)


@dataclass(slots=True, kw_only=True)
class ClassStats:
    name: str
    agent_calls: Counter = field(default_factory=Counter)
    transitions: Counter = field(default_factory=Counter)  # (from, to) -> count
    programs_done: int = 0
    calls_done: int = 0  # calls of finished programs
    max_calls: int = 0
    tool_gaps: dict[str, GapStats] = field(default_factory=dict)
    plan: LearnedPlan | None = None
    plan_version: tuple = ()
    plan_serial: int = 0  # the scheduler indexes workflows by name: each plan gets its own


@dataclass(frozen=True, slots=True, kw_only=True)
class LearnedPlan:
    name: str
    spec_json: str
    llm_step: dict  # agent -> its LLM step
    tool_step: str = TOOL_STEP

    def step_of(self, agent: str) -> str:
        s = self.llm_step.get(agent)
        if s is None:
            s = self.llm_step.get(OTHER) or next(iter(self.llm_step.values()))
        return s


@dataclass(frozen=True, slots=True, kw_only=True)
class LearnerLimits:
    max_classes: int = 256
    max_agents: int = 32  # per class; later ones count as `other`
    max_tools: int = 64  # per class


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)[:64] or "agent"


class GraphLearner:
    def __init__(self, limits: LearnerLimits = LearnerLimits()):
        self.limits = limits
        self.classes: OrderedDict[str, ClassStats] = OrderedDict()
        self.plans_built = 0

    def _cls(self, name: str) -> ClassStats:
        c = self.classes.get(name)
        if c is None:
            c = self.classes[name] = ClassStats(name=name)
            while len(self.classes) > self.limits.max_classes:
                self.classes.popitem(last=False)
        self.classes.move_to_end(name)
        return c

    def agent_of(self, cls: str, agent: str) -> str:
        """The agent as the class counts it: known ones, new ones while there is room, else `other`."""
        c = self._cls(cls)
        if agent in c.agent_calls or len(c.agent_calls) < self.limits.max_agents:
            return agent
        return OTHER

    def call(self, cls: str, prev_agent: str | None, agent: str) -> None:
        c = self._cls(cls)
        agent = self.agent_of(cls, agent)
        c.agent_calls[agent] += 1
        c.transitions[(prev_agent or START, agent)] += 1

    def tool_gap(self, cls: str, tool: str, gap_s: float) -> None:
        c = self._cls(cls)
        if tool not in c.tool_gaps and len(c.tool_gaps) >= self.limits.max_tools:
            tool = OTHER
        c.tool_gaps.setdefault(tool, GapStats()).add(gap_s)

    def program_done(self, cls: str, last_agent: str | None, num_calls: int) -> None:
        c = self._cls(cls)
        if last_agent is not None:
            c.transitions[(self.agent_of(cls, last_agent), END)] += 1
        c.programs_done += 1
        c.calls_done += num_calls
        c.max_calls = max(c.max_calls, num_calls)

    def plan(self, cls: str) -> LearnedPlan:
        """The plan a program of this class opens with (cached; rebuilt as described above)."""
        c = self._cls(cls)
        agents = tuple(sorted(c.agent_calls))
        version = (agents, int(math.log2(c.calls_done + 1)), int(math.log2(c.programs_done + 1)))
        if c.plan is None or version != c.plan_version:
            c.plan_serial += 1
            c.plan, c.plan_version = self._build(c), version
            self.plans_built += 1
        return c.plan

    def _build(self, c: ClassStats) -> LearnedPlan:
        from agentflow.spec import WorkflowSpec
        from agentflow.workflow import Workflow

        counts = Counter({a: n for a, n in c.agent_calls.items() if a != OTHER})
        agents = [a for a, _ in counts.most_common()]
        mean_calls = c.calls_done / c.programs_done if c.programs_done else 4.0
        # the scheduler enforces a loop's bound, and nothing bounds an undeclared program's length
        max_calls = MAX_LEARNED_ITERATIONS
        mean_calls = max(1.0, min(float(max_calls), mean_calls))
        wf = Workflow(_safe(f"learned-{c.name}") + f"-v{c.plan_serial}", description="learned from traffic by the OpenAI front door")
        wf.tool(TOOL_STEP, duration_hint_s=None)
        steps = {}
        if len(agents) <= 1:
            (only,) = agents or [OTHER]
            wf.agent(only, system_prompt=only, tools=[TOOL_STEP])
            steps[only] = wf.llm(f"llm:{_safe(only)}", agent=only)
            wf.call(TOOL_STEP, tool=TOOL_STEP)
            wf.noop("next")
            wf.sequence(steps[only], TOOL_STEP, "next")
            wf.loop("next", back_to=steps[only], max_iterations=max_calls, expected_iterations=mean_calls)
        else:
            agents.append(OTHER)
            counts[OTHER] = max(1, c.agent_calls.get(OTHER, 0))
            total = sum(counts[a] for a in agents)
            for a in agents:
                wf.agent(a, system_prompt=a, tools=[TOOL_STEP])
                steps[a] = wf.llm(f"llm:{_safe(a)}", agent=a)
            wf.call(TOOL_STEP, tool=TOOL_STEP)
            wf.noop("next")
            wf.noop("speak")
            first, *rest = agents
            wf.branch("speak", {steps[a]: None for a in rest}, default=steps[first],
                      probabilities={steps[a]: round(counts[a] / total, 6) for a in rest})
            for a in agents:
                wf.sequence(steps[a], TOOL_STEP)
            wf.sequence(TOOL_STEP, "next")
            wf.loop("next", back_to="speak", max_iterations=max_calls, expected_iterations=mean_calls)
        spec = WorkflowSpec.from_compiled(wf.compile()).to_json()
        return LearnedPlan(name=c.name, spec_json=spec, llm_step=steps)

    def snapshot(self, cls: str | None = None, *, tenant: str | None = None) -> list[dict]:
        """The learned graphs, for the debug endpoint (a tenant's: class names are kind:tenant:...)."""
        out = []
        for c in self.classes.values():
            if cls is not None and c.name != cls:
                continue
            if tenant is not None and c.name.split(":")[1:2] != [tenant]:
                continue
            out.append({"workflow": c.name, "programs_done": c.programs_done,
                        "agents": dict(c.agent_calls),
                        "transitions": [{"from": a, "to": b, "count": n} for (a, b), n in sorted(c.transitions.items())],
                        "tool_gaps": {t: {"n": g.n, "mean_s": round(g.mean_s, 6), "max_s": round(g.max_s, 6)}
                                      for t, g in c.tool_gaps.items()},
                        "steps_to_execution": steps_to_execution(c)})
        return out


def steps_to_execution(c: ClassStats, *, max_steps: int = 64) -> dict[str, float]:
    """Expected calls until each agent's next call, from the first-order transition matrix learned
    (from the program's start; absorbing at END: inf when it is never reached). Value iteration."""
    agents = sorted(a for a in c.agent_calls)
    out_n: Counter = Counter()
    for (a, _), n in c.transitions.items():
        out_n[a] += n
    res = {}
    for target in agents:
        h = {a: 0.0 for a in agents}  # expected steps to reach target from a, truncated at max_steps
        reach = {a: 0.0 for a in agents}
        for _ in range(max_steps):
            nh, nr = {}, {}
            for a in agents + [START]:
                if not out_n[a]:
                    nh[a], nr[a] = 0.0, 0.0
                    continue
                e = r = 0.0
                for (x, b), n in c.transitions.items():
                    if x != a:
                        continue
                    p = n / out_n[a]
                    if b == target:
                        r += p
                        e += p
                    elif b != END:
                        r += p * reach.get(b, 0.0)
                        e += p * (reach.get(b, 0.0) + h.get(b, 0.0))
                nh[a], nr[a] = e, r
            h, reach = nh, nr
        r0 = reach.get(START, 0.0)
        res[target] = round(h[START] / r0, 4) if r0 > 1e-9 else math.inf
    return res


__all__ = ["AgentNamer", "ClassStats", "GraphLearner", "LearnedPlan", "LearnerLimits", "OTHER", "TOOL_STEP",
           "paragraphs", "steps_to_execution"]
