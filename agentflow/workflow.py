"""The workflow DSL: build, then compile, then run.

    wf = Workflow("swe-agent")
    wf.agent("coder", system_prompt="You fix bugs.", model="llama-3.1-8b", tools=["bash"])
    wf.tool("bash", run_bash, duration_hint_s=2.0)
    wf.llm("think", agent="coder", prompt="{task}")
    wf.call("act", tool="bash", agent="coder")
    wf.sequence("think", "act")
    wf.loop("act", back_to="think", max_iterations=30, expected_iterations=12, while_=when("done", "falsy"))
    wf.error_policy(retries=1, timeout_s=120)   # every step: retry once, 2 minutes per attempt
    compiled = wf.compile()          # validates everything; raises WorkflowValidationError

The builder only records what the author says. `compile()` checks it all at once and reports
every problem with the step it concerns and how to fix it; the `CompiledWorkflow` it returns is
immutable and is the only thing that runs (or is planned, replayed, or sent over the wire).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agentflow.conditions import When
from agentflow.errors import Problem, ProblemCode, WorkflowError, WorkflowValidationError
from agentflow.graph.model import (
    Branch, Case, ConditionFn, Fork, Loop, Next, StepGraph, StepKind, StepNode, Transition,
    branch_probabilities,
)

P = ProblemCode
DEFAULT_OUTPUT_TOKENS = 256
CHARS_PER_TOKEN = 4  # planning estimate of prompt sizes when no tokenizer is involved
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")  # a template field, as the executor renders it (prompts.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    name: str
    system_prompt: str
    model: str = "default"
    tools: tuple[str, ...] = ()

    @property
    def system_prompt_tokens(self) -> int:
        return max(1, len(self.system_prompt) // CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    name: str
    fn: Callable[..., Any] | None = None  # sync or async; None: declared for planning only
    duration_hint_s: float | None = None
    description: str = ""
    impl: str | None = None  # "module:function", for workflows loaded from files

    @property
    def is_async(self) -> bool:
        return self.fn is not None and inspect.iscoroutinefunction(self.fn)


# An LLM step's output parser: (answer text, program state, step name) -> state updates (or None).
Parser = Callable[[str, Mapping[str, Any], str], Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorPolicy:
    """What happens when a step fails (a tool raises, a call errs, an attempt times out).

    Each attempt runs at most `timeout_s`; a failed attempt is retried up to `retries` times; if
    the last one fails too, the program continues at `on_error` (with `state["error"]` saying
    what went wrong) or, without one, fails with its state kept."""

    retries: int = 0
    on_error: str | None = None  # a later step of the same region; None: the program fails
    timeout_s: float | None = None  # per attempt; None: no limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """A step as the author wrote it (what runs); the graph keeps what planning needs."""

    name: str
    kind: StepKind
    agent: str | None = None
    tool: str | None = None
    prompt: str = ""  # LLM steps: a template over the program state, e.g. "Fix: {task}"
    inputs: tuple[str, ...] = ()  # LLM steps: upstream steps whose outputs enter this prompt
    args: Mapping[str, Any] = field(default_factory=dict)  # tool steps: keyword arguments (templates)
    expected_output_tokens: int = DEFAULT_OUTPUT_TOKENS
    max_tokens: int | None = None
    parse: Parser | str | None = None  # LLM steps: output -> state updates; a callable or "module:function"
    conversation: str | None = None  # LLM steps: the agent's history it extends (None: the agent's one history)
    retries: int | None = None  # None: the workflow's error policy
    on_error: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class CompiledWorkflow:
    """A validated, immutable workflow. Only this runs."""

    name: str
    description: str
    agents: Mapping[str, Agent]
    tools: Mapping[str, Tool]
    steps: Mapping[str, Step]
    graph: StepGraph
    errors: ErrorPolicy = ErrorPolicy()  # the workflow's default error policy

    @property
    def entry(self) -> str:
        return self.graph.entry

    def error_policy(self, step: str) -> ErrorPolicy:
        """The policy `step` runs under: its own fields, else the workflow's."""
        s = self.steps[step]
        d = self.errors
        return ErrorPolicy(retries=d.retries if s.retries is None else s.retries,
                           on_error=s.on_error if s.on_error is not None else d.on_error,
                           timeout_s=s.timeout_s if s.timeout_s is not None else d.timeout_s)

    def spec(self):
        """The declarative spec (pydantic) of this workflow; see `agentflow.spec`."""
        from agentflow.spec import WorkflowSpec

        return WorkflowSpec.from_compiled(self)


class Workflow:
    """Builder of a multi-agent program. Methods return the step name so calls can chain."""

    def __init__(self, name: str, *, description: str = ""):
        if not name or not isinstance(name, str):
            raise WorkflowError("a workflow needs a non-empty name")
        self.name = name
        self.description = description
        self._agents: dict[str, Agent] = {}
        self._tools: dict[str, Tool] = {}
        self._steps: dict[str, Step] = {}
        self._entry: str | None = None
        self._next: dict[str, str] = {}
        self._fork: dict[str, Fork] = {}
        self._branch: dict[str, tuple[list[tuple[str, ConditionFn | None]], str | None, dict[str, float]]] = {}
        self._loop: dict[str, dict[str, Any]] = {}
        self._joins: dict[str, tuple[str, ...]] = {}
        self._problems: list[Problem] = []  # found while building; reported by compile()
        self._errors = ErrorPolicy()

    # ---- what has been declared (read-only) -----------------------------------------------
    @property
    def agents(self) -> Mapping[str, Agent]:
        return MappingProxyType(self._agents)

    @property
    def tools(self) -> Mapping[str, Tool]:
        return MappingProxyType(self._tools)

    @property
    def steps(self) -> Mapping[str, Step]:
        return MappingProxyType(self._steps)

    # ---- declarations ---------------------------------------------------------------------
    def agent(self, name: str, *, system_prompt: str, model: str = "default", tools: Iterable[str] = ()) -> str:
        if name in self._agents:
            self._dup("agent", name)
        self._agents[name] = Agent(name=name, system_prompt=system_prompt, model=model, tools=tuple(tools))
        return name

    def tool(self, name: str, fn: Callable[..., Any] | None = None, *, duration_hint_s: float | None = None,
             description: str = "", impl: str | None = None) -> str:
        if name in self._tools:
            self._dup("tool", name)
        if duration_hint_s is not None and duration_hint_s < 0:
            self._problems.append(Problem(code=P.BAD_VALUE, step=None,
                                          message=f"tool '{name}' has a negative duration hint",
                                          fix="give duration_hint_s in seconds, >= 0"))
        if fn is not None and impl is None:
            from agentflow.conditions import reference_of

            impl = reference_of(fn)
        self._tools[name] = Tool(name=name, fn=fn, duration_hint_s=duration_hint_s,
                                 description=description or (inspect.getdoc(fn) or "" if fn else ""), impl=impl)
        return name

    def llm(self, name: str, *, agent: str, prompt: str = "", inputs: Iterable[str] = (),
            expected_output_tokens: int = DEFAULT_OUTPUT_TOKENS, max_tokens: int | None = None,
            parse: Parser | str | None = None, conversation: str | None = None, retries: int | None = None,
            on_error: str | None = None, timeout_s: float | None = None) -> str:
        """An LLM call by `agent`. `prompt` is a template over the program state (`{key}`,
        `{steps.<name>}`); `inputs` are upstream steps whose new outputs follow it; `parse` turns
        the answer into state updates; steps of one agent naming the same `conversation` share a
        history (default: all of the agent's steps share one); `retries`/`on_error`/`timeout_s`
        override the workflow's error policy."""
        if expected_output_tokens < 0:
            self._problems.append(Problem(code=P.BAD_VALUE, step=name,
                                          message="expected_output_tokens is negative", fix="give a count >= 0"))
        self._check_policy(name, retries, timeout_s)
        return self._add(Step(name=name, kind=StepKind.LLM, agent=agent, prompt=prompt, inputs=tuple(inputs),
                              expected_output_tokens=expected_output_tokens, max_tokens=max_tokens, parse=parse,
                              conversation=conversation, retries=retries, on_error=on_error, timeout_s=timeout_s))

    def call(self, name: str, *, tool: str, agent: str | None = None, args: Mapping[str, Any] | None = None,
             retries: int | None = None, on_error: str | None = None, timeout_s: float | None = None) -> str:
        """A tool call. `args` are keyword arguments; string values are templates over the state
        (a value that is exactly `{key}` passes the state's value itself, not its text)."""
        self._check_policy(name, retries, timeout_s)
        return self._add(Step(name=name, kind=StepKind.TOOL, tool=tool, agent=agent, args=dict(args or {}),
                              expected_output_tokens=0, retries=retries, on_error=on_error, timeout_s=timeout_s))

    def error_policy(self, *, retries: int = 0, on_error: str | None = None, timeout_s: float | None = None) -> None:
        """The default error policy of every LLM and tool step (a step's own fields win)."""
        self._check_policy(None, retries, timeout_s)
        self._errors = ErrorPolicy(retries=retries, on_error=on_error, timeout_s=timeout_s)

    def noop(self, name: str) -> str:
        """A step that does nothing: a routing point for branches and loops."""
        return self._add(Step(name=name, kind=StepKind.NOOP, expected_output_tokens=0))

    def start(self, step: str) -> None:
        """Set the entry step (default: the first step added)."""
        self._entry = step

    # ---- edges ----------------------------------------------------------------------------
    def sequence(self, *steps: str) -> None:
        for a, b in zip(steps, steps[1:]):
            self._set_next(a, b)

    def fan_out(self, source: str, branches: Iterable[str], *, join: str | None = None) -> None:
        """Start every branch after `source`; `join` runs once all of them have ended."""
        self._claim(source, "fan_out")
        self._fork[source] = Fork(targets=tuple(branches), join=join)

    def join(self, ends: Iterable[str], step: str) -> None:
        """Lead the last step of each parallel branch into `step`, the join of their fan-out."""
        ends = tuple(ends)
        for e in ends:
            self._set_next(e, step)
        self._joins[step] = tuple(self._joins.get(step, ())) + ends

    def branch(self, source: str, cases: Mapping[str, ConditionFn | When], *, default: str | None = None,
               probabilities: Mapping[str, float] | None = None) -> None:
        """After `source`, go to the first case whose condition holds, else to `default`.

        `cases` maps target step -> condition. `probabilities` (target -> p) are for planning;
        targets without one share what is left equally with the default.
        """
        self._claim(source, "branch")
        self._branch[source] = (list(cases.items()), default, dict(probabilities or {}))

    def loop(self, source: str, *, back_to: str, max_iterations: int, expected_iterations: float | None = None,
             while_: ConditionFn | When | None = None, exit: str | None = None) -> None:
        """After `source`, repeat from `back_to` while `while_` holds, at most `max_iterations` times.

        `expected_iterations` (default: half the maximum, at least 1) is for planning. The loop
        continues to `exit` (or to what `sequence(source, ...)` says) when done.
        """
        if source in self._loop or source in self._fork or source in self._branch:
            self._conflict(source, "loop")
        if expected_iterations is None:
            expected_iterations = max(1.0, max_iterations / 2) if max_iterations >= 1 else 1.0
        self._loop[source] = dict(back_to=back_to, max_iterations=max_iterations,
                                  expected_iterations=float(expected_iterations), while_=while_)
        if exit is not None:
            self._set_next(source, exit)

    def subworkflow(self, name: str, workflow: "Workflow | CompiledWorkflow") -> tuple[str, list[str]]:
        """Inline another workflow as steps named `name/<step>`.

        Returns (entry, exits): connect into the entry and out of each exit. Agents and tools
        are shared by name; the same name must mean the same definition.
        """
        sub = workflow.compile() if isinstance(workflow, Workflow) else workflow
        for a in sub.agents.values():
            if a.name in self._agents and self._agents[a.name] != a:
                self._problems.append(Problem(
                    code=P.DUPLICATE_NAME, step=name,
                    message=f"sub-workflow '{sub.name}' defines agent '{a.name}' differently from this workflow",
                    fix="rename one of them, or use the same definition"))
            self._agents.setdefault(a.name, a)
        for t in sub.tools.values():
            self._tools.setdefault(t.name, t)
        q = lambda s: f"{name}/{s}"  # noqa: E731
        for s in sub.steps.values():
            # the sub-workflow's own default policy, if it set one, travels with its steps
            pol = sub.error_policy(s.name) if sub.errors != ErrorPolicy() and s.kind is not StepKind.NOOP else s
            self._add(Step(name=q(s.name), kind=s.kind, agent=s.agent, tool=s.tool, prompt=s.prompt,
                           inputs=tuple(q(i) for i in s.inputs), args=s.args,
                           expected_output_tokens=s.expected_output_tokens, max_tokens=s.max_tokens,
                           parse=s.parse, conversation=q(s.conversation) if s.conversation else None,
                           retries=pol.retries, on_error=q(pol.on_error) if pol.on_error else None,
                           timeout_s=pol.timeout_s))
        exits = []
        for s, t in sub.graph.transitions.items():
            match t:
                case None:
                    exits.append(q(s))
                case Next(target=x):
                    self._set_next(q(s), q(x))
                case Fork(targets=xs, join=j):
                    self.fan_out(q(s), [q(x) for x in xs], join=q(j) if j else None)
                case Branch(cases=cs, default=d, default_probability=_):
                    self.branch(q(s), {q(c.target): c.when for c in cs}, default=q(d),
                                probabilities={q(c.target): c.probability for c in cs})
                case Loop(back_to=h, exit=x, max_iterations=m, expected_iterations=e, while_=w):
                    self.loop(q(s), back_to=q(h), max_iterations=m, expected_iterations=e, while_=w,
                              exit=q(x) if x else None)
                    if x is None:
                        exits.append(q(s))
        for j, ends in sub_joins(sub).items():
            self._joins[q(j)] = tuple(q(e) for e in ends)
        return q(sub.entry), exits

    # ---- compile --------------------------------------------------------------------------
    def compile(self) -> CompiledWorkflow:
        problems = list(self._problems)
        problems += self._check_names()
        transitions: dict[str, Transition | None] = {}
        for s in self._steps:
            transitions[s] = self._transition(s, problems)
        nodes = {s: self._node(step) for s, step in self._steps.items()}
        entry = self._entry or (next(iter(self._steps)) if self._steps else "")
        problems += self._check_error_targets_exist()
        graph = StepGraph.build(self.name, entry=entry, steps=nodes, transitions=transitions,
                                declared_joins=self._joins, extra_problems=problems)
        late = self._check_error_routes(graph)
        if late:
            raise WorkflowValidationError(self.name, late)
        return CompiledWorkflow(
            name=self.name, description=self.description,
            agents=MappingProxyType(dict(self._agents)), tools=MappingProxyType(dict(self._tools)),
            steps=MappingProxyType(dict(self._steps)), graph=graph, errors=self._errors,
        )

    # ---- error policies -------------------------------------------------------------------
    def _check_policy(self, step: str | None, retries: int | None, timeout_s: float | None) -> None:
        if retries is not None and (not isinstance(retries, int) or retries < 0):
            self._problems.append(Problem(code=P.BAD_VALUE, step=step,
                                          message=f"retries must be >= 0 (got {retries!r})",
                                          fix="give the number of extra attempts, 0 for none"))
        if timeout_s is not None and not timeout_s > 0:
            self._problems.append(Problem(code=P.BAD_VALUE, step=step,
                                          message=f"timeout_s must be > 0 (got {timeout_s!r})",
                                          fix="give seconds per attempt, or None for no limit",
                                          fix_spec="give seconds per attempt, or leave timeout_s out for no limit"))

    def _routes(self):
        """(step, its error route) for every LLM and tool step that has one."""
        for s in self._steps.values():
            if s.kind is StepKind.NOOP:
                continue
            target = s.on_error if s.on_error is not None else self._errors.on_error
            if target is not None:
                yield s.name, target

    def _check_error_targets_exist(self) -> list[Problem]:
        return [Problem(code=P.UNKNOWN_STEP, step=s, message=f"its on_error route goes to unknown step '{t}'",
                        fix=f"route errors to an existing step (steps: {', '.join(sorted(self._steps))})")
                for s, t in self._routes() if t not in self._steps]

    def _check_error_routes(self, graph: StepGraph) -> list[Problem]:
        """An error route skips ahead: to a step after the failed one (never back, so a failing
        program always ends), in the same fan-out branch (so joins still count their branches)."""
        import networkx as nx

        fwd = nx.DiGraph()
        fwd.add_nodes_from(graph.steps)
        fwd.add_edges_from((u, v) for u, v, k in graph.nx_graph.edges(data="kind") if k != "loop_back")
        out = []
        for s, t in self._routes():
            if t == s or not nx.has_path(fwd, s, t):
                out.append(Problem(code=P.BAD_VALUE, step=s,
                                   message=f"its on_error route to '{t}' does not lead forward",
                                   fix="route errors to a step that comes after this one (a recovery or final step)"))
            elif graph.region_of[s] != graph.region_of[t]:
                out.append(Problem(code=P.BAD_VALUE, step=s,
                                   message=f"its on_error route to '{t}' leaves its fan-out branch",
                                   fix="route errors to a step inside the same parallel branch"))
        return out

    # ---- internals ------------------------------------------------------------------------
    def _add(self, step: Step) -> str:
        if step.name in self._steps:
            self._dup("step", step.name)
            return step.name
        if not step.name or step.name.startswith("__"):
            self._problems.append(Problem(code=P.BAD_VALUE, step=step.name or "<empty>",
                                          message="step names must be non-empty and not start with '__'",
                                          fix="rename the step"))
        self._steps[step.name] = step
        return step.name

    def _dup(self, what: str, name: str) -> None:
        self._problems.append(Problem(code=P.DUPLICATE_NAME, step=name if what == "step" else None,
                                      message=f"{what} '{name}' is defined twice",
                                      fix=f"give each {what} a unique name"))

    def _claim(self, source: str, how: str) -> None:
        if source in self._next or source in self._fork or source in self._branch:
            self._conflict(source, how)

    def _conflict(self, source: str, how: str) -> None:
        self._problems.append(Problem(
            code=P.CONFLICTING_EDGES, step=source,
            message=f"{how} adds a second way to leave this step",
            fix="a step has one successor kind: sequence, fan_out, branch, or loop (+ its exit); "
                "put a noop step in between to combine them"))

    def _set_next(self, a: str, b: str) -> None:
        if a in self._fork or a in self._branch or (a in self._next and self._next[a] != b):
            self._conflict(a, f"an edge to '{b}'")
            return
        self._next[a] = b

    def _transition(self, s: str, problems: list[Problem]) -> Transition | None:
        if s in self._fork:
            return self._fork[s]
        if s in self._branch:
            cases, default, probs = self._branch[s]
            targets = [t for t, _ in cases]
            if default is None:
                problems.append(Problem(code=P.NO_DEFAULT_BRANCH, step=s,
                                        message=f"branch to {targets} has no default",
                                        fix="add default='<step>' for when no condition holds",
                                        fix_spec="add `default: <step>` to its branch, for when no condition holds"))
                default = targets[0] if targets else s
            outside = {t: p for t, p in probs.items() if not 0.0 <= p <= 1.0}
            if outside:
                problems.append(Problem(code=P.BAD_PROBABILITY, step=s,
                                        message="probability " + ", ".join(f"{p:g} for '{t}'" for t, p in
                                                                           outside.items()) + " lies outside [0, 1]",
                                        fix="give each probability between 0 and 1, together they sum to at most "
                                            "1; cases without one share the remainder"))
                probs = {t: p for t, p in probs.items() if t not in outside}
            elif sum(probs.values()) > 1.0 + 1e-9:
                problems.append(Problem(code=P.BAD_PROBABILITY, step=s,
                                        message=f"the probabilities given sum to {sum(probs.values()):g}, more than 1",
                                        fix="lower them so that they sum to at most 1; cases without one share "
                                            "the remainder"))
                probs = {}
            unknown = [t for t in probs if t not in targets and t != default]
            if unknown:
                problems.append(Problem(code=P.BAD_PROBABILITY, step=s,
                                        message=f"probability given for {unknown}, which is not a case of this branch",
                                        fix=f"give probabilities only for {targets + [default]}"))
            given = {i: probs[t] for i, t in enumerate(targets) if t in probs}
            if default in probs:
                p_cases, _ = branch_probabilities(len(targets), given)
                rest = 1.0 - probs[default] - sum(given.values())
                free = [i for i in range(len(targets)) if i not in given]
                p_cases = [given.get(i, rest / len(free) if free else 0.0) for i in range(len(targets))]
                p_default = probs[default] if free else round(1.0 - sum(p_cases), 12)
            else:
                p_cases, p_default = branch_probabilities(len(targets), given)
            return Branch(cases=tuple(Case(target=t, when=w, probability=p) for (t, w), p in zip(cases, p_cases)),
                          default=default, default_probability=p_default)
        if s in self._loop:
            d = self._loop[s]
            return Loop(back_to=d["back_to"], exit=self._next.get(s), max_iterations=d["max_iterations"],
                        expected_iterations=d["expected_iterations"], while_=d["while_"])
        if s in self._next:
            return Next(self._next[s])
        return None

    def _node(self, step: Step) -> StepNode:
        prompt_tokens = 0
        if step.kind is StepKind.LLM:
            prompt_tokens = max(1, len(step.prompt) // CHARS_PER_TOKEN) if step.prompt else 0
        hint = self._tools[step.tool].duration_hint_s if step.tool in self._tools else None
        return StepNode(name=step.name, kind=step.kind, agent=step.agent, tool=step.tool,
                        expected_prompt_tokens=prompt_tokens, expected_output_tokens=step.expected_output_tokens,
                        duration_hint_s=hint, inputs=step_inputs(step, self._steps))

    def _check_names(self) -> list[Problem]:
        out: list[Problem] = []
        agents, tools = sorted(self._agents), sorted(self._tools)
        for a in self._agents.values():
            for t in a.tools:
                if t not in self._tools:
                    out.append(Problem(code=P.UNKNOWN_TOOL, step=None,
                                       message=f"agent '{a.name}' may call tool '{t}', which is not defined",
                                       fix=f"define it with tool('{t}', fn) or remove it (tools: {tools or 'none'})",
                                       fix_spec=f"add `- {{name: {t}, impl: 'module:function'}}` under tools: or "
                                                f"remove it (tools: {tools or 'none'})"))
        for s in self._steps.values():
            if s.kind is StepKind.LLM and s.agent not in self._agents:
                out.append(Problem(code=P.UNKNOWN_AGENT, step=s.name, message=f"unknown agent '{s.agent}'",
                                   fix=f"define it with agent('{s.agent}', ...) or use one of: {agents or 'none'}",
                                   fix_spec=f"add `- {{name: {s.agent}, system_prompt: ...}}` under agents: or use "
                                            f"one of: {agents or 'none'}"))
            if s.kind is StepKind.TOOL:
                if s.tool not in self._tools:
                    out.append(Problem(code=P.UNKNOWN_TOOL, step=s.name, message=f"unknown tool '{s.tool}'",
                                       fix=f"define it with tool('{s.tool}', fn) or use one of: {tools or 'none'}",
                                       fix_spec=f"add `- {{name: {s.tool}, impl: 'module:function'}}` under tools: "
                                                f"or use one of: {tools or 'none'}"))
                if s.agent is not None:
                    if s.agent not in self._agents:
                        out.append(Problem(code=P.UNKNOWN_AGENT, step=s.name, message=f"unknown agent '{s.agent}'",
                                           fix=f"define it or use one of: {agents or 'none'}"))
                    elif s.tool in self._tools and s.tool not in self._agents[s.agent].tools:
                        out.append(Problem(code=P.TOOL_NOT_ALLOWED, step=s.name,
                                           message=f"agent '{s.agent}' may not call tool '{s.tool}'",
                                           fix=f"add '{s.tool}' to agent('{s.agent}', tools=[...])",
                                           fix_spec=f"add {s.tool} to the `tools: [...]` of agent {s.agent}"))
            for i in s.inputs:
                if i not in self._steps:
                    out.append(Problem(code=P.UNKNOWN_STEP, step=s.name, message=f"reads the output of unknown step '{i}'",
                                       fix="name an existing upstream step in inputs=[...]",
                                       fix_spec="name an existing upstream step in `inputs: [...]`"))
        return out


def step_inputs(step: Step, known: Container[str]) -> tuple[str, ...]:
    """Upstream steps whose output enters `step`'s prompt: `{steps.<name>}` references in its
    template (read as the executor renders them: `{{` and `}}` are literal braces), then its
    `inputs`, in order, without repeats. Names not in `known` are left out: an unknown `inputs`
    entry is reported by `compile()`, and an unknown template reference fails when rendered."""
    out: list[str] = []
    refs = [m.group(1).strip()[len("steps."):] for m in _FIELD.finditer(step.prompt or "")
            if m.group(1) is not None and m.group(1).strip().startswith("steps.")]
    for name in (*refs, *step.inputs):
        if name in known and name not in out:
            out.append(name)
    return tuple(out)


def sub_joins(compiled: CompiledWorkflow) -> dict[str, tuple[str, ...]]:
    """The joins of a compiled workflow, with the branch ends that lead into them."""
    out: dict[str, tuple[str, ...]] = {}
    for reg in compiled.graph.regions.values():
        if reg.join is not None:
            out[reg.join] = tuple(p for p in compiled.graph.nx_graph.predecessors(reg.join) if p in reg.branch_of)
    return out
