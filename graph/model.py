"""The step graph: the compiled, validated control flow of one workflow.

A workflow is a set of steps (LLM calls made by an agent, tool calls, and no-op routing
points) and, per step, at most one *transition* saying what runs after it:

    Next(target)                      sequence
    Fork(targets, join)               parallel fan-out; every target starts; `join` waits for all
    Branch(cases, default)            exactly one successor, chosen by a condition on program state
    Loop(back_to, exit, max_iter)     repeat from `back_to` while the condition holds, at most
                                      `max_iterations` times, then continue to `exit`
    (none)                            the program (or this parallel branch) ends here

Structure rules, checked at build time (each violation is a `Problem` naming the step and the fix):
  * without its loop back-edges the graph is a DAG (every cycle is a declared, bounded loop),
    and a loop's `back_to` is an ancestor of its source;
  * the branches of a fan-out are disjoint, entered only from the fork, and each one reaches
    the join (or, with no join, the end); nothing outside enters a branch. So fan-out/join
    regions nest like parentheses, which is what makes steps-to-execution tables composable
    (see `analysis.py`);
  * every step is reachable from the entry; a loop stays inside one region.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

from agentflow.errors import Problem, ProblemCode, WorkflowValidationError

_NO_LOOPS: frozenset[str] = frozenset()
END = "__end__"  # pseudo-target used in successor lists: the program (or branch) ends


class StepKind(enum.Enum):
    LLM = "llm"
    TOOL = "tool"
    NOOP = "noop"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepNode:
    name: str
    kind: StepKind
    agent: str | None = None  # LLM steps: the speaker; tool steps: the caller (optional)
    tool: str | None = None
    expected_prompt_tokens: int = 0  # new tokens this step adds to the prompt (planning only)
    expected_output_tokens: int = 0
    duration_hint_s: float | None = None  # tool steps: what the author expects (planning only)
    # LLM steps: upstream steps whose output enters this step's prompt (`{steps.<name>}` in the
    # template, then `inputs`, in order): what cross-agent KV reuse plans with (runtime/reuse_plan.py)
    inputs: tuple[str, ...] = ()


# A condition is anything callable on the program state; the spec layer gives declarative ones.
ConditionFn = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class Next:
    target: str


@dataclass(frozen=True, slots=True)
class Fork:
    targets: tuple[str, ...]
    join: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    target: str
    when: ConditionFn | None
    probability: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Branch:
    cases: tuple[Case, ...]
    default: str
    default_probability: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Loop:
    back_to: str
    exit: str | None  # None: the program ends when the loop is done
    max_iterations: int
    expected_iterations: float
    while_: ConditionFn | None = None

    @property
    def continue_probability(self) -> float:
        # Planning model: geometric number of iterations with mean `expected_iterations`.
        return 1.0 - 1.0 / self.expected_iterations


Transition = Next | Fork | Branch | Loop


class EdgeKind(enum.Enum):
    NEXT = "next"
    FORK = "fork"
    BRANCH = "branch"
    DEFAULT = "default"
    LOOP_BACK = "loop_back"
    LOOP_EXIT = "loop_exit"


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str  # may be END
    kind: EdgeKind
    probability: float  # planning probability that this edge is taken (1.0 for every fork edge)


def edges_of(name: str, transition: Transition | None) -> list[Edge]:
    match transition:
        case None:
            return []
        case Next(target=t):
            return [Edge(name, t, EdgeKind.NEXT, 1.0)]
        case Fork(targets=ts):
            return [Edge(name, t, EdgeKind.FORK, 1.0) for t in ts]
        case Branch(cases=cases, default=d, default_probability=pd):
            out = [Edge(name, c.target, EdgeKind.BRANCH, c.probability) for c in cases]
            return out + [Edge(name, d, EdgeKind.DEFAULT, pd)]
        case Loop(back_to=h, exit=x):
            p = transition.continue_probability
            return [
                Edge(name, h, EdgeKind.LOOP_BACK, p),
                Edge(name, x if x is not None else END, EdgeKind.LOOP_EXIT, 1.0 - p),
            ]
    raise TypeError(f"not a transition: {transition!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Region:
    """A fan-out/join region: the steps strictly between a fork and its join."""

    fork: str
    join: str | None
    parent: str | None  # the enclosing region's fork, None at top level
    branch_of: Mapping[str, int]  # step -> index of the fork target whose branch holds it
    depth: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopInfo:
    source: str  # the step whose transition is the Loop; names the loop
    head: str
    body: frozenset[str]  # steps on forward paths head -> source, both included
    max_iterations: int


@dataclass(frozen=True, eq=False, kw_only=True)
class StepGraph:
    """An immutable, validated step graph. Build it with `StepGraph.build`."""

    name: str
    entry: str
    steps: Mapping[str, StepNode]
    transitions: Mapping[str, Transition | None]
    agents: tuple[str, ...]  # every agent that has an LLM step, in first-appearance order
    regions: Mapping[str, Region]  # by fork step
    region_of: Mapping[str, str | None]  # step -> innermost region's fork (None: top level)
    loops: Mapping[str, LoopInfo]  # by source step
    nx_graph: nx.DiGraph = field(repr=False)
    _analysis: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        name: str,
        *,
        entry: str,
        steps: Mapping[str, StepNode],
        transitions: Mapping[str, Transition | None],
        declared_joins: Mapping[str, tuple[str, ...]] = MappingProxyType({}),
        extra_problems: list[Problem] | None = None,
    ) -> "StepGraph":
        problems = list(extra_problems or [])
        problems += _check_structure(entry, steps, transitions, declared_joins)
        if problems:
            raise WorkflowValidationError(name, problems)
        regions, region_of, more = _find_regions(steps, transitions)
        if more:
            raise WorkflowValidationError(name, more)
        loops, more = _find_loops(steps, transitions, region_of)
        if more:
            raise WorkflowValidationError(name, more)
        g = nx.DiGraph(name=name)
        for s in steps.values():
            g.add_node(s.name, kind=s.kind.value, agent=s.agent, tool=s.tool)
        for s in steps:
            for e in edges_of(s, transitions.get(s)):
                if e.target != END:
                    g.add_edge(e.source, e.target, kind=e.kind.value, probability=e.probability)
        agents: list[str] = []
        for s in _bfs_order(entry, transitions):
            a = steps[s].agent
            if steps[s].kind is StepKind.LLM and a is not None and a not in agents:
                agents.append(a)
        return cls(
            name=name,
            entry=entry,
            steps=MappingProxyType(dict(steps)),
            transitions=MappingProxyType({s: transitions.get(s) for s in steps}),
            agents=tuple(agents),
            regions=MappingProxyType(regions),
            region_of=MappingProxyType(region_of),
            loops=MappingProxyType(loops),
            nx_graph=nx.freeze(g),
        )

    # ---- queries -------------------------------------------------------------------------
    def edges(self, step: str) -> list[Edge]:
        return edges_of(step, self.transitions[step])

    def iter_edges(self) -> Iterator[Edge]:
        for s in self.steps:
            yield from self.edges(s)

    def llm_steps(self, agent: str) -> list[str]:
        return [s.name for s in self.steps.values() if s.kind is StepKind.LLM and s.agent == agent]

    def join_of(self, fork: str) -> str | None:
        return self.regions[fork].join

    def region_chain(self, step: str) -> list[str]:
        """Forks of the regions enclosing `step`, innermost first."""
        out, r = [], self.region_of[step]
        while r is not None:
            out.append(r)
            r = self.regions[r].parent
        return out

    @property
    def analysis(self):
        """Steps-to-execution tables, computed once on first use (see `analysis.py`)."""
        tables = self._analysis.get(_NO_LOOPS)
        if tables is None:
            from agentflow.graph.analysis import GraphTables

            tables = self._analysis[_NO_LOOPS] = GraphTables.compute(self)
        return tables

    def analysis_without(self, disabled_loops: frozenset[str]):
        """Tables for the same graph with some loops' back edges removed (exhausted loops)."""
        if disabled_loops not in self._analysis:
            self._analysis[disabled_loops] = self.analysis.without_loops(self, disabled_loops)
        return self._analysis[disabled_loops]


# ---- validation ------------------------------------------------------------------------------


def _bfs_order(entry: str, transitions: Mapping[str, Transition | None]) -> list[str]:
    seen, order, queue = {entry}, [], [entry]
    while queue:
        s = queue.pop(0)
        order.append(s)
        for e in edges_of(s, transitions.get(s)):
            if e.target != END and e.target not in seen and e.target in transitions:
                seen.add(e.target)
                queue.append(e.target)
    return order


def _forward_graph(steps, transitions) -> nx.DiGraph:
    """The graph without its loop back edges: a DAG once every cycle is a declared loop."""
    fwd = nx.DiGraph()
    fwd.add_nodes_from(steps)
    for s in steps:
        for e in edges_of(s, transitions.get(s)):
            if e.target != END and e.kind is not EdgeKind.LOOP_BACK:
                fwd.add_edge(s, e.target)
    return fwd


def _check_structure(
    entry: str,
    steps: Mapping[str, StepNode],
    transitions: Mapping[str, Transition | None],
    declared_joins: Mapping[str, tuple[str, ...]],
) -> list[Problem]:
    P = ProblemCode
    problems: list[Problem] = []
    if not steps:
        return [Problem(code=P.EMPTY_WORKFLOW, step=None, message="the workflow has no steps",
                        fix="add at least one step with llm(...) or call(...)",
                        fix_spec="add at least one step with `kind: llm` or `kind: tool` under steps:")]
    if entry not in steps:
        problems.append(Problem(code=P.UNKNOWN_STEP, step=entry, message="the entry step does not exist",
                                fix=f"start at one of: {', '.join(sorted(steps))}"))
        return problems
    for s, node in steps.items():
        for i in node.inputs:
            if i not in steps:
                problems.append(Problem(
                    code=P.UNKNOWN_STEP, step=s, message=f"its prompt reads the output of unknown step '{i}'",
                    fix=f"name a step of the graph in its inputs (steps: {', '.join(sorted(steps))})"))
    for s in steps:
        t = transitions.get(s)
        for e in edges_of(s, t):
            if e.target != END and e.target not in steps:
                problems.append(Problem(
                    code=P.UNKNOWN_STEP, step=s,
                    message=f"its {e.kind.value} edge goes to unknown step '{e.target}'",
                    fix="define that step first, or correct the name"))
        if isinstance(t, Branch):
            total = sum(c.probability for c in t.cases) + t.default_probability
            bad = [c.probability for c in t.cases if not 0.0 <= c.probability <= 1.0]
            if bad or not 0.0 <= t.default_probability <= 1.0 or abs(total - 1.0) > 1e-6:
                got = [f"{c.target} {c.probability:g}" for c in t.cases] + [f"default {t.default} "
                                                                            f"{t.default_probability:g}"]
                problems.append(Problem(
                    code=P.BAD_PROBABILITY, step=s,
                    message=f"branch probabilities must each lie in [0, 1] and sum to 1 (got {', '.join(got)}; "
                            f"sum {total:.3g})",
                    fix="give probabilities for some cases that sum to at most 1; the rest share the remainder"))
        if isinstance(t, Loop):
            if t.max_iterations < 1:
                problems.append(Problem(code=P.BAD_LOOP, step=s,
                                        message=f"max_iterations must be >= 1 (got {t.max_iterations})",
                                        fix="bound the loop with a positive max_iterations"))
            elif not 1.0 <= t.expected_iterations <= t.max_iterations:
                problems.append(Problem(
                    code=P.BAD_LOOP, step=s,
                    message=f"expected_iterations {t.expected_iterations:g} is outside [1, {t.max_iterations}]",
                    fix="give an expected iteration count between 1 and max_iterations"))
        if isinstance(t, Fork) and len(set(t.targets)) != len(t.targets):
            problems.append(Problem(code=P.BAD_FAN_OUT, step=s, message="a fan-out lists a branch twice",
                                    fix="list each branch start once"))
        if isinstance(t, Fork) and len(t.targets) < 1:
            problems.append(Problem(code=P.BAD_FAN_OUT, step=s, message="a fan-out with no branches",
                                    fix="give at least one branch start"))
    if problems:
        return problems

    # Joins declared by the author must belong to a fan-out.
    fork_joins = {t.join: s for s, t in transitions.items() if isinstance(t, Fork) and t.join is not None}
    for j, preds in declared_joins.items():
        if j not in fork_joins:
            problems.append(Problem(
                code=P.JOIN_WITHOUT_FAN_OUT, step=j,
                message=f"joins {list(preds)} but no fan-out names it as its join",
                fix=f"declare the parallel split with fan_out(<step>, [...], join='{j}')",
                fix_spec=f"declare the parallel split on its step: `fan_out: {{branches: [...], join: {j}}}`"))

    # Every cycle must be a declared loop: the graph minus loop back-edges is a DAG.
    fwd = _forward_graph(steps, transitions)
    for scc in nx.strongly_connected_components(fwd):
        if len(scc) > 1 or any(fwd.has_edge(s, s) for s in scc):
            cycle = [u for u, _ in nx.find_cycle(fwd.subgraph(scc))]
            first = cycle[0]
            problems.append(Problem(
                code=P.UNBOUNDED_CYCLE, step=first,
                message=f"the cycle {' -> '.join(cycle + [first])} has no iteration bound",
                fix=f"declare its back edge as a loop: loop('{cycle[-1]}', back_to='{first}', max_iterations=N)",
                fix_spec=f"declare its back edge as a loop: on step {cycle[-1]}, `loop: {{back_to: {first}, "
                         "max_iterations: N}` instead of its next/branch edge back"))
    if problems:
        return problems
    for s, t in transitions.items():
        if isinstance(t, Loop) and t.back_to != s and t.back_to in steps and not nx.has_path(fwd, t.back_to, s):
            problems.append(Problem(
                code=P.BAD_LOOP, step=s,
                message=f"loops back to '{t.back_to}', which does not come before it",
                fix="loop back to a step on the path that leads to this one"))

    reachable = set(_bfs_order(entry, transitions))
    for s in steps:
        if s in reachable:
            continue
        if s in fork_joins and s not in declared_joins:  # named as a join, but no branch leads into it
            ends = [_branch_end(b, transitions) for b in transitions[fork_joins[s]].targets]
            problems.append(Problem(
                code=P.UNREACHABLE_STEP, step=s,
                message=f"it is the join of fan-out '{fork_joins[s]}', but no branch leads into it",
                fix=f"lead the last step of each branch into it: join({ends}, '{s}')",
                fix_spec=f"give the last step of each branch ({', '.join(ends)}) `next: {s}`, and mark {s} "
                         "with `join: true`"))
            continue
        problems.append(Problem(
            code=P.UNREACHABLE_STEP, step=s, message=f"no path from the entry '{entry}' reaches it",
            fix="connect it with sequence/fan_out/branch, or remove it",
            fix_spec="connect it from another step with next, fan_out or branch, or remove it"))
    return problems


def _branch_end(start: str, transitions) -> str:
    """The last step of a straight branch (follow `next` edges), or a placeholder where it splits."""
    seen, s = {start}, start
    while isinstance(transitions.get(s), Next) and transitions[s].target in transitions and \
            transitions[s].target not in seen:
        s = transitions[s].target
        seen.add(s)
    return s if transitions.get(s) is None else f"<last step after {s}>"


def _find_regions(steps, transitions) -> tuple[dict[str, Region], dict[str, str | None], list[Problem]]:
    P = ProblemCode
    problems: list[Problem] = []
    forks = {s: t for s, t in transitions.items() if isinstance(t, Fork)}
    preds: dict[str, set[str]] = {s: set() for s in steps}
    for s in steps:
        for e in edges_of(s, transitions.get(s)):
            if e.target != END:
                preds[e.target].add(s)
    members: dict[str, dict[str, int]] = {}
    for f, t in forks.items():
        branch_of: dict[str, int] = {}
        for i, b in enumerate(t.targets):
            seen, stack = {b}, [b]
            while stack:
                u = stack.pop()
                out = edges_of(u, transitions.get(u)) or [Edge(u, END, EdgeKind.NEXT, 1.0)]
                for e in out:
                    if e.target == END:
                        if t.join is not None:
                            problems.append(Problem(
                                code=P.BAD_FAN_OUT, step=u,
                                message=f"branch '{b}' of fan-out '{f}' ends here without reaching its join '{t.join}'",
                                fix=f"lead this branch into '{t.join}'"))
                        continue
                    if e.target == t.join or e.target in seen:
                        continue
                    if e.target == f:
                        problems.append(Problem(
                            code=P.BAD_LOOP, step=u,
                            message=f"loops back to fan-out '{f}' from inside its own branch",
                            fix="put the loop around the whole fan-out/join, from the join or later"))
                        continue
                    seen.add(e.target)
                    stack.append(e.target)
            for u in seen:
                if u in branch_of:
                    other = t.targets[branch_of[u]]
                    problems.append(Problem(
                        code=P.BAD_FAN_OUT, step=u,
                        message=f"branches '{other}' and '{b}' of fan-out '{f}' both reach it",
                        fix=(f"make it the join: fan_out('{f}', [...], join='{u}')" if t.join is None
                             else "keep parallel branches disjoint until the join")))
                else:
                    branch_of[u] = i
        for u in branch_of:
            outside = [p for p in preds[u] if p != f and p not in branch_of]
            if outside:
                problems.append(Problem(
                    code=P.BAD_FAN_OUT, step=u,
                    message=f"inside a branch of fan-out '{f}' but also entered from '{outside[0]}' outside it",
                    fix="enter parallel branches only through their fan-out"))
        if t.join is not None:
            stray = [p for p in preds[t.join] if p not in branch_of and p != f]
            if stray:
                problems.append(Problem(
                    code=P.JOIN_WITHOUT_FAN_OUT, step=t.join,
                    message=f"is the join of fan-out '{f}' but is also entered from '{stray[0]}' outside its branches",
                    fix="enter a join only from the ends of its fan-out's branches"))
        members[f] = branch_of
    if problems:
        return {}, {}, _dedupe(problems)
    # Innermost region: regions nest, so the smallest region holding a step is its innermost.
    region_of: dict[str, str | None] = {s: None for s in steps}
    for f in sorted(members, key=lambda f: -len(members[f])):
        for u in members[f]:
            region_of[u] = f
    regions: dict[str, Region] = {}
    for f in forks:
        parent = region_of[f]
        depth, r = 0, parent
        while r is not None:
            depth += 1
            r = region_of[r]
        regions[f] = Region(fork=f, join=forks[f].join, parent=parent,
                            branch_of=MappingProxyType(members[f]), depth=depth)
    for f, reg in regions.items():
        if reg.join is not None and region_of[reg.join] != reg.parent:
            problems.append(Problem(
                code=P.BAD_FAN_OUT, step=reg.join,
                message=f"the join of fan-out '{f}' lies in a different parallel branch than the fan-out",
                fix="close a fan-out inside the branch that opened it"))
    return regions, region_of, problems


def _find_loops(steps, transitions, region_of) -> tuple[dict[str, LoopInfo], list[Problem]]:
    fwd = _forward_graph(steps, transitions)
    loops, problems = {}, []
    for s, t in transitions.items():
        if not isinstance(t, Loop):
            continue
        if region_of[t.back_to] != region_of[s]:
            problems.append(Problem(
                code=ProblemCode.BAD_LOOP, step=s,
                message=f"loops back to '{t.back_to}' across a fan-out/join boundary",
                fix="keep a loop inside one parallel branch, or around a whole fan-out/join"))
            continue
        body = (nx.descendants(fwd, t.back_to) | {t.back_to}) & (nx.ancestors(fwd, s) | {s})
        loops[s] = LoopInfo(source=s, head=t.back_to, body=frozenset(body), max_iterations=t.max_iterations)
    return loops, problems


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.code, p.step, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def branch_probabilities(n_cases: int, given: Mapping[int, float]) -> tuple[list[float], float]:
    """Cases without a probability, and the default, share what the given ones leave."""
    rest = 1.0 - sum(given.values())
    n_free = n_cases + 1 - len(given)
    share = rest / n_free if n_free else 0.0
    probs = [given.get(i, share) for i in range(n_cases)]
    default = share if n_free else rest
    # 1 - 0.97 is 0.030000000000000027: round away float noise so specs read as written
    probs = [round(p, 12) for p in probs]
    default = round(default, 12)
    if math.isclose(default, 0.0, abs_tol=1e-12):
        default = 0.0
    return probs, default
