"""Workflows as files: a declarative spec (pydantic; JSON or YAML) that round-trips with the builder.

    spec_version: 1
    name: swe-agent
    agents:
      - {name: coder, system_prompt: "You fix bugs.", model: llama-3.1-8b, tools: [bash]}
    tools:
      - {name: bash, impl: "mytools:run_bash", duration_hint_s: 2.0}
    steps:
      - {name: think, kind: llm, agent: coder, prompt: "{task}", next: act}
      - name: act
        kind: tool
        tool: bash
        agent: coder
        loop: {back_to: think, max_iterations: 30, expected_iterations: 12,
               while: {key: done, op: falsy}}

Each step says how it is left: `next`, `fan_out: {branches, join}`, `branch: {cases, default}`,
or `loop` (+ `next` as its exit). A join step says `join: true`. Conditions are declarative
(`{key, op, value}`) or a reference to a module-level function (`{ref: "pkg.mod:fn"}`). The
published JSON Schema is `agentflow/schemas/workflow.schema.json` (`agentflow schema`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow.conditions import Op, When, reference_of, resolve_reference
from agentflow.errors import SpecError
from agentflow.graph.model import Branch, Fork, Loop, Next, StepKind

SPEC_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConditionSpec(_Model):
    key: str
    op: Op = Op.TRUTHY
    value: Any = None


class RefSpec(_Model):
    ref: str = Field(description="a module-level function 'package.module:function' taking the state")


Condition = Union[ConditionSpec, RefSpec]


class AgentSpec(_Model):
    name: str = Field(min_length=1)
    system_prompt: str
    model: str = "default"
    tools: list[str] = []


class ToolSpec(_Model):
    name: str = Field(min_length=1)
    impl: str | None = Field(default=None, description="'package.module:function' that runs the tool")
    duration_hint_s: float | None = Field(default=None, ge=0)
    description: str = ""


class CaseSpec(_Model):
    to: str
    when: Condition | None = None
    probability: float | None = Field(default=None, ge=0, le=1)


class BranchSpec(_Model):
    cases: list[CaseSpec] = Field(min_length=1)
    default: str | None = None
    default_probability: float | None = Field(default=None, ge=0, le=1)


class FanOutSpec(_Model):
    branches: list[str] = Field(min_length=1)
    join: str | None = None


class LoopSpec(_Model):
    back_to: str
    max_iterations: int = Field(ge=1)
    expected_iterations: float | None = Field(default=None, ge=1)
    while_: Condition | None = Field(default=None, alias="while")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ErrorPolicySpec(_Model):
    retries: int = Field(default=0, ge=0, description="extra attempts after a failed one")
    on_error: str | None = Field(default=None, description="step to continue at when every attempt failed; "
                                                           "none: the program fails")
    timeout_s: float | None = Field(default=None, gt=0, description="seconds per attempt")


class _StepBase(_Model):
    name: str = Field(min_length=1)
    next: str | None = None
    fan_out: FanOutSpec | None = None
    branch: BranchSpec | None = None
    loop: LoopSpec | None = None
    join: bool = Field(default=False, description="this step is the join of a fan-out")


class LLMStepSpec(_StepBase):
    kind: Literal["llm"] = "llm"
    agent: str
    prompt: str = ""
    inputs: list[str] = []
    expected_output_tokens: int = Field(default=256, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    parse: str | None = Field(default=None, description="'package.module:function' (text, state, step) -> "
                                                        "state updates")
    conversation: str | None = Field(default=None, description="steps of one agent naming the same conversation "
                                                               "share a history; default: one per agent")
    retries: int | None = Field(default=None, ge=0)
    on_error: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)


class ToolStepSpec(_StepBase):
    kind: Literal["tool"] = "tool"
    tool: str
    agent: str | None = None
    args: dict[str, Any] = {}
    retries: int | None = Field(default=None, ge=0)
    on_error: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)


class NoopStepSpec(_StepBase):
    kind: Literal["noop"] = "noop"


StepSpec = Annotated[Union[LLMStepSpec, ToolStepSpec, NoopStepSpec], Field(discriminator="kind")]


class WorkflowSpec(_Model):
    spec_version: Literal[1] = SPEC_VERSION
    name: str = Field(min_length=1)
    description: str = ""
    entry: str | None = Field(default=None, description="first step; default: the first listed")
    agents: list[AgentSpec] = []
    tools: list[ToolSpec] = []
    errors: ErrorPolicySpec | None = Field(default=None, description="default error policy of every step")
    steps: list[StepSpec] = Field(min_length=1)

    # ---- to and from the builder ----------------------------------------------------------
    def to_workflow(self, *, resolve: bool = False):
        """A builder holding this spec. `resolve=True` imports tool and condition references now."""
        from agentflow.workflow import Workflow

        wf = Workflow(self.name, description=self.description)
        for a in self.agents:
            wf.agent(a.name, system_prompt=a.system_prompt, model=a.model, tools=a.tools)
        for t in self.tools:
            fn = _resolve(t.impl, f"tools[{t.name}].impl") if (resolve and t.impl) else None
            wf.tool(t.name, fn, duration_hint_s=t.duration_hint_s, description=t.description, impl=t.impl)
        if self.errors is not None:
            wf.error_policy(retries=self.errors.retries, on_error=self.errors.on_error,
                            timeout_s=self.errors.timeout_s)
        for s in self.steps:
            if isinstance(s, LLMStepSpec):
                parse = _resolve(s.parse, f"steps[{s.name}].parse") if (resolve and s.parse) else s.parse
                wf.llm(s.name, agent=s.agent, prompt=s.prompt, inputs=s.inputs,
                       expected_output_tokens=s.expected_output_tokens, max_tokens=s.max_tokens, parse=parse,
                       conversation=s.conversation, retries=s.retries, on_error=s.on_error, timeout_s=s.timeout_s)
            elif isinstance(s, ToolStepSpec):
                wf.call(s.name, tool=s.tool, agent=s.agent, args=s.args, retries=s.retries, on_error=s.on_error,
                        timeout_s=s.timeout_s)
            else:
                wf.noop(s.name)
        joins = {t.name for t in self.steps if t.join}  # once, not per step (compile stays linear)
        for s in self.steps:
            where = f"steps[{s.name}]"
            if s.fan_out is not None:
                wf.fan_out(s.name, s.fan_out.branches, join=s.fan_out.join)
            if s.branch is not None:
                b = s.branch
                probs = {c.to: c.probability for c in b.cases if c.probability is not None}
                if b.default is not None and b.default_probability is not None:
                    probs[b.default] = b.default_probability
                wf.branch(s.name, {c.to: _condition(c.when, f"{where}.branch", resolve) for c in b.cases},
                          default=b.default, probabilities=probs)
            if s.loop is not None:
                lp = s.loop
                wf.loop(s.name, back_to=lp.back_to, max_iterations=lp.max_iterations,
                        expected_iterations=lp.expected_iterations,
                        while_=_condition(lp.while_, f"{where}.loop.while", resolve))
            if s.next is not None:
                if s.next in joins:
                    wf.join([s.name], s.next)
                else:
                    wf.sequence(s.name, s.next)
        if self.entry is not None:
            wf.start(self.entry)
        return wf

    def compile(self, *, resolve: bool = False):
        from agentflow.errors import WorkflowValidationError

        try:
            return self.to_workflow(resolve=resolve).compile()
        except WorkflowValidationError as e:  # a file's author gets the fixes in the file's own terms
            raise WorkflowValidationError(e.workflow, [p.in_spec_syntax() for p in e.problems]) from None

    @classmethod
    def from_compiled(cls, compiled) -> "WorkflowSpec":
        g = compiled.graph
        joins = {r.join for r in g.regions.values() if r.join is not None}
        steps = []
        for name, st in compiled.steps.items():
            edges: dict[str, Any] = {"join": name in joins}
            t = g.transitions[name]
            match t:
                case Next(target=x):
                    edges["next"] = x
                case Fork(targets=xs, join=j):
                    edges["fan_out"] = FanOutSpec(branches=list(xs), join=j)
                case Branch(cases=cs, default=d, default_probability=pd):
                    edges["branch"] = BranchSpec(
                        cases=[CaseSpec(to=c.target, when=_condition_spec(c.when, f"step '{name}' case '{c.target}'"),
                                        probability=round(c.probability, 12)) for c in cs],
                        default=d, default_probability=round(pd, 12))
                case Loop(back_to=h, exit=x, max_iterations=m, expected_iterations=e, while_=w):
                    edges["loop"] = LoopSpec(back_to=h, max_iterations=m, expected_iterations=e,
                                             while_=_condition_spec(w, f"step '{name}' loop"))
                    if x is not None:
                        edges["next"] = x
            policy = dict(retries=st.retries, on_error=st.on_error, timeout_s=st.timeout_s)
            if st.kind is StepKind.LLM:
                steps.append(LLMStepSpec(name=name, agent=st.agent, prompt=st.prompt, inputs=list(st.inputs),
                                         expected_output_tokens=st.expected_output_tokens, max_tokens=st.max_tokens,
                                         parse=_parser_ref(st.parse, name), conversation=st.conversation, **policy,
                                         **edges))
            elif st.kind is StepKind.TOOL:
                steps.append(ToolStepSpec(name=name, tool=st.tool, agent=st.agent, args=dict(st.args), **policy,
                                          **edges))
            else:
                steps.append(NoopStepSpec(name=name, **edges))
        for t in compiled.tools.values():
            if t.fn is not None and t.impl is None:
                raise SpecError(f"tool '{t.name}' is a function that cannot be imported by name (a lambda or a "
                                "local function); define it at module level to write this workflow to a file")
        return cls(
            name=compiled.name, description=compiled.description, entry=compiled.entry,
            agents=[AgentSpec(name=a.name, system_prompt=a.system_prompt, model=a.model, tools=list(a.tools))
                    for a in compiled.agents.values()],
            tools=[ToolSpec(name=t.name, impl=t.impl, duration_hint_s=t.duration_hint_s, description=t.description)
                   for t in compiled.tools.values()],
            errors=_errors_spec(compiled.errors),
            steps=steps,
        )

    # ---- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data, defaults left out, keys in reading order (name, kind, what, then edges)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        steps = []
        for raw, model in zip(data["steps"], self.steps):
            first = {"name": raw.pop("name"), "kind": model.kind}  # the discriminator is never optional
            edges = {k: raw.pop(k) for k in ("join", "next", "fan_out", "branch", "loop") if k in raw}
            steps.append({**first, **raw, **edges})
        data["steps"] = steps
        return {"spec_version": SPEC_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    @classmethod
    def parse(cls, text: str, *, source: str = "<string>", fmt: str | None = None) -> "WorkflowSpec":
        fmt = fmt or ("json" if source.endswith(".json") else "yaml")
        try:
            data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise SpecError(f"not valid {fmt.upper()}: {e}", source=source) from None
        if not isinstance(data, dict):
            raise SpecError(f"a workflow file holds a mapping at top level, not {type(data).__name__}", source=source)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = _field_problems(e.errors(), data)
            if len(problems) == 1:
                field, message = problems[0]
                raise SpecError(message, source=source, field=field) from None
            lines = "\n".join(f"  - {field}: {message}" for field, message in problems)
            err = SpecError(f"{len(problems)} field errors:\n{lines}", source=source)
            err.problems = problems
            raise err from None

    @classmethod
    def json_schema(cls) -> dict:
        schema = cls.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "agentflow workflow"
        return schema


def load_workflow(path: str | Path, *, resolve: bool = False):
    """Compile the workflow in a YAML/JSON spec file, or in a Python file or module.

    A Python file defines `workflow` (a Workflow or CompiledWorkflow) or `build()` returning one.
    """
    from agentflow.workflow import CompiledWorkflow, Workflow

    p = Path(path)
    if p.suffix in (".yaml", ".yml", ".json"):
        if not p.exists():
            raise SpecError("no such file", source=str(p))
        spec = WorkflowSpec.parse(p.read_text(), source=str(p))
        if resolve:
            _add_import_roots(spec, p.resolve().parent)
        return spec.compile(resolve=resolve)
    obj = _load_python(str(path))
    if callable(getattr(obj, "build", None)):
        obj = obj.build()
    elif hasattr(obj, "workflow"):
        obj = obj.workflow
    if isinstance(obj, Workflow):
        return obj.compile()
    if isinstance(obj, CompiledWorkflow):
        return obj
    raise SpecError("defines neither `workflow` nor `build()` returning a Workflow", source=str(path))


def _load_python(target: str):
    """Import a workflow module. A .py file under the current directory (or a sys.path entry) is
    imported by its dotted name (examples/swe_agent.py -> examples.swe_agent), so the references
    its tools are written with (`examples.swe_agent:run_bash`) import again later."""
    import importlib.util
    import os
    import sys

    p = Path(target)
    if p.suffix == ".py":
        if not p.exists():
            raise SpecError("no such file", source=target)
        full = p.resolve()
        cwd = Path(os.getcwd()).resolve()
        for root in [cwd, *(Path(x).resolve() for x in sys.path if x)]:
            try:
                rel = full.relative_to(root).with_suffix("")
            except ValueError:
                continue
            parts = rel.parts
            if parts and all(part.isidentifier() for part in parts):
                if str(root) not in sys.path:
                    sys.path.insert(0, str(root))
                return _import(".".join(parts), target)
        # Outside every import root: load it under a private name (its tools then cannot be
        # written to a file by reference; spec() says so).
        name = f"_agentflow_workflow_{p.stem}"
        spec = importlib.util.spec_from_file_location(name, p)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise _import_failed(e, target) from e
        return module
    # a module name, as `python -m` finds it: the current directory first
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    if p.exists() and p.is_file():
        raise SpecError(f"unsupported file type '{p.suffix}'; a workflow is a .yaml, .yml, .json or .py file, "
                        "or a module name", source=target)
    if "/" in target or "\\" in target or not all(part.isidentifier() for part in target.split(".")):
        raise SpecError("no such file; give a .yaml/.json/.py file or a module name such as examples.debate",
                        source=target)
    return _import(target, target)


def _import(module: str, target: str):
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise SpecError(f"no such file or module '{e.name}' (looked in {os.getcwd()} and sys.path); run from "
                            "the folder that holds it, or give the file's path", source=target) from None
        raise _import_failed(e, target) from e
    except Exception as e:
        raise _import_failed(e, target) from e


def _import_failed(e: Exception, target: str) -> SpecError:
    """A workflow file that raises while it is imported: where, what, and how to see more."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
    own = [f for f in frames if Path(f.filename).name == Path(target).name] or frames
    at = f" at line {own[-1].lineno}" if own and own[-1].lineno else ""
    return SpecError(f"importing it raised {type(e).__name__}{at}: {e}; fix the file (`agentflow -v validate "
                     f"{target}` shows the traceback)", source=target)


def _references(spec: WorkflowSpec) -> list[str]:
    """Every 'module:function' a spec names: tools, parsers, conditions."""
    refs = [t.impl for t in spec.tools if t.impl]
    for st in spec.steps:
        if isinstance(st, LLMStepSpec) and st.parse:
            refs.append(st.parse)
        conds = [c.when for c in st.branch.cases] if st.branch else []
        conds += [st.loop.while_] if st.loop else []
        refs += [c.ref for c in conds if isinstance(c, RefSpec)]
    return refs


def _add_import_roots(spec: WorkflowSpec, base: Path) -> None:
    """Make the modules a spec file names importable. As `python -m` would, from the current
    directory first; else from the file's own folder or the nearest folder above it that holds
    the module (examples/debate.yaml names examples.debate, found above examples/), so a workflow
    file runs from any directory."""
    import importlib.util
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for ref in _references(spec):
        top = ref.partition(":")[0].split(".")[0]
        if not top.isidentifier():
            continue
        try:
            if importlib.util.find_spec(top) is not None:
                continue
        except (ImportError, ValueError):
            continue
        for folder in (base, *base.parents):
            if (folder / top / "__init__.py").exists() or (folder / top).is_dir() or (folder / f"{top}.py").exists():
                sys.path.append(str(folder))
                importlib.invalidate_caches()
                break


def _condition(c: Condition | None, where: str, resolve: bool):
    if c is None:
        return None
    if isinstance(c, ConditionSpec):
        return When(c.key, c.op, c.value)
    if resolve:
        return _resolve(c.ref, where)
    return _LazyRef(c.ref)


class _LazyRef:
    """A condition reference imported on first use, so planning never imports user code."""

    __slots__ = ("ref", "_fn")

    def __init__(self, ref: str):
        self.ref, self._fn = ref, None

    def __call__(self, state):
        if self._fn is None:
            self._fn = resolve_reference(self.ref)
        return self._fn(state)

    def __eq__(self, other):
        return isinstance(other, _LazyRef) and other.ref == self.ref

    def __hash__(self):
        return hash(self.ref)


def _condition_spec(fn, where: str) -> Condition | None:
    if fn is None:
        return None
    if isinstance(fn, When):
        return ConditionSpec(key=fn.key, op=fn.op, value=fn.value)
    if isinstance(fn, _LazyRef):
        return RefSpec(ref=fn.ref)
    ref = reference_of(fn)
    if ref is None:
        raise SpecError(f"the condition of {where} is a lambda or local function; use agentflow.when(...) or a "
                        "module-level function to write this workflow to a file")
    return RefSpec(ref=ref)


def _parser_ref(parse, step: str) -> str | None:
    if parse is None or isinstance(parse, str):
        return parse
    ref = reference_of(parse)
    if ref is None:
        raise SpecError(f"the parser of step '{step}' is a lambda or local function; define it at module level "
                        "to write this workflow to a file")
    return ref


def _errors_spec(policy) -> ErrorPolicySpec | None:
    if policy.retries == 0 and policy.on_error is None and policy.timeout_s is None:
        return None
    return ErrorPolicySpec(retries=policy.retries, on_error=policy.on_error, timeout_s=policy.timeout_s)


def _resolve(ref: str, where: str):
    try:
        return resolve_reference(ref)
    except ValueError as e:
        raise SpecError(str(e), field=where) from None


def _fields_at(loc: tuple) -> list[str] | None:
    """The field names (as written in a file) of the spec model at `loc`, or None if unknown."""
    import types
    import typing

    cur: Any = WorkflowSpec
    for part in loc:
        while True:  # unwrap Annotated, Optional/Union and list to what `part` indexes
            origin = typing.get_origin(cur)
            if origin is Annotated:
                cur = typing.get_args(cur)[0]
            elif origin is list and isinstance(part, int):
                cur = typing.get_args(cur)[0]
                break
            elif origin in (Union, types.UnionType):
                models = [a for a in typing.get_args(cur) if isinstance(a, type) and issubclass(a, BaseModel)]
                pick = [m for m in models if m.__name__ == part or
                        getattr(m.model_fields.get("kind"), "default", None) == part]
                if pick:
                    cur = pick[0]
                    part = None  # the variant's tag is consumed
                    break
                if len(models) == 1:
                    cur = models[0]
                    continue
                return None
            else:
                break
        if part is None or isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        fields = {f.alias or name: f for name, f in cur.model_fields.items()}
        if part not in fields:
            return None
        cur = fields[part].annotation
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return [f.alias or name for name, f in cur.model_fields.items()]
    return None


def _field_problems(errors: list[dict], data: Any) -> list[tuple[str, str]]:
    """Every field error as (path, message), typos with a did-you-mean. A misspelt field (`agnet`)
    is one problem, not two: its 'unknown field' error absorbs the 'missing' error of the field it
    was meant to be."""
    import difflib

    # a union (a condition: {key...} or {ref...}) reports each variant's errors: keep the closest
    # variant's, the one with the fewest errors, at each place
    by_variant: dict[tuple, dict[str, list]] = {}
    plain = []
    for err in errors:
        loc = tuple(err["loc"])
        cut = next((i for i, p in enumerate(loc) if isinstance(p, str) and p[:1].isupper()), None)
        if cut is None:
            plain.append(err)
        else:
            by_variant.setdefault(loc[:cut], {}).setdefault(loc[cut], []).append(err)
    for variants in by_variant.values():
        plain += min(variants.values(), key=len)
    missing: dict[tuple, set[str]] = {}
    for err in plain:
        if err["type"] == "missing":
            missing.setdefault(tuple(err["loc"][:-1]), set()).add(str(err["loc"][-1]))
    out: list[tuple[tuple, str, str, str]] = []  # (loc, error type, path, message)
    absorbed: set[tuple] = set()
    for err in plain:
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            name = str(loc[-1])
            parent = loc[:-1]
            options = _fields_at(parent) or []
            close = difflib.get_close_matches(name, sorted(missing.get(parent, set())) or options, n=1, cutoff=0.6) \
                or difflib.get_close_matches(name, options, n=1, cutoff=0.6)
            if close:
                absorbed.add(parent + (close[0],))
                out.append((loc, kind, _loc(loc, data), f"unknown field '{name}'; did you mean '{close[0]}'?"))
            else:
                valid = f"; valid fields: {', '.join(options)}" if options else ""
                out.append((loc, kind, _loc(loc, data), f"unknown field '{name}'{valid}"))
            continue
        ctx = err.get("ctx") or {}
        msg = err["msg"]
        if kind in ("literal_error", "enum", "union_tag_invalid"):
            given = err.get("input") if kind != "union_tag_invalid" else ctx.get("tag")
            expected = [x.strip(" '\"") for x in str(ctx.get("expected_tags") or ctx.get("expected") or "")
                        .replace(" or ", ",").split(",") if x.strip(" '\"")]
            close = difflib.get_close_matches(str(given), expected, n=1, cutoff=0.5) if expected else []
            msg = f"'{given}' is not one of {', '.join(expected)}" + (f"; did you mean '{close[0]}'?" if close else "")
        out.append((loc, kind, _loc(loc, data) + (".kind" if kind == "union_tag_invalid" else ""), msg))
    return [(path, msg) for loc, kind, path, msg in out if not (kind == "missing" and loc in absorbed)]


def _loc(loc: tuple, data: Any) -> str:
    """pydantic's error location as a readable path, with step names instead of indices."""
    out, cur = "", data
    for part in loc:
        if isinstance(part, int):
            name = cur[part].get("name") if isinstance(cur, list) and part < len(cur) and isinstance(cur[part], dict) else None
            out += f"[{part}]" + (f"({name})" if name else "")
            cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
        else:
            if part in ("llm", "tool", "noop") and isinstance(cur, dict) and cur.get("kind") == part:
                continue  # the discriminator adds the variant name; the user never wrote it
            if part[:1].isupper():
                continue  # a union's variant (ConditionSpec, RefSpec); the user never wrote it
            out += ("." if out else "") + str(part)
            cur = cur.get(part) if isinstance(cur, dict) else None
    return out
