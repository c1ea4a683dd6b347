"""Event scripts: drive the scheduler from a JSON Lines file and see every decision.

One event per line; `t` is the time in seconds (non-decreasing). Prefixes are written
`"key@tokens"` (cumulative tokens), each extending the one before it in the list.

    {"t": 0, "type": "worker", "worker": "w0", "kv_capacity_tokens": 100000, "h2d_tokens_per_s": 50000}
    {"t": 0, "type": "arrive", "program": "p1", "workflow": "../swe_agent.py"}   (from the script's folder)
    {"t": 0, "type": "submit", "program": "p1", "call": "c1", "step": "think",
     "prefixes": ["swe/coder:sys@1200"], "prompt_tokens": 1700}
    {"t": 0.1, "type": "start", "call": "c1", "worker": "w0"}
    {"t": 2.0, "type": "finish", "call": "c1", "worker": "w0", "output_tokens": 80,
     "cached": ["swe/coder:sys@1200", "p1/coder:h1@1780"]}
    {"t": 2.0, "type": "tool_start", "program": "p1", "step": "tests", "tool": "run_tests"}
    {"t": 13.0, "type": "tool_finish", "program": "p1", "step": "tests", "tool": "run_tests", "duration_s": 11.0}
    {"t": 13.0, "type": "moved", "worker": "w0", "key": "p1/coder:h1", "tier": "host"}
    {"t": 14.0, "type": "finish_program", "program": "p1"}      (or "cancelled": true)
    {"t": 15.0, "type": "worker_lost", "worker": "w0"}
    {"t": 16.0, "type": "step"}                                  (an explicit scheduling step)

The runner takes one scheduling step after every event (or only at "step" lines with
`every_event=False`) and keeps the decisions that say something.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.errors import WorkloadError
from agentflow.runtime.clock import ManualClock
from agentflow.runtime.decision import Decision
from agentflow.runtime.events import (
    CallFinished, CallStarted, CallSubmitted, Event, PrefixMoved, ProgramArrived, ProgramFinished, ToolFinished,
    ToolStarted, WorkerLost, WorkerUpdate,
)
from agentflow.runtime.policies import Policy
from agentflow.runtime.prefixes import PrefixRef
from agentflow.runtime.scheduler import Scheduler, SchedulerConfig

STEP = "step"


@dataclass(frozen=True, slots=True)
class ScriptLine:
    line: int
    time_s: float
    event: Event | None  # None: an explicit scheduling step


def _prefixes(items: list[str], where: str) -> tuple[PrefixRef, ...]:
    out: list[PrefixRef] = []
    for item in items:
        key, sep, tokens = str(item).rpartition("@")
        if not sep or not key or not tokens.isdigit():
            raise ValueError(f"{where}: prefix {item!r} must look like 'key@tokens'")
        out.append(PrefixRef(key=key, parent=out[-1].key if out else None, num_tokens=int(tokens)))
    return tuple(out)


def _graph_loader(base: Path | None = None) -> Callable[[str], Any]:
    """Workflows by the path the script names: relative to the script's folder (`base`), as any
    file names another; a module name (no suffix) as Python imports it."""
    from agentflow.spec import load_workflow

    cache: dict[str, Any] = {}

    def load(path: str):
        if path not in cache:
            p = Path(path)
            if base is not None and p.suffix and not p.is_absolute():
                p = base / p
                if not p.exists():
                    raise ValueError(f"workflow {path!r}: no such file {p} (a relative path is read from the "
                                     f"script's folder {base})")
            cache[path] = load_workflow(p if p.suffix else path).graph
        return cache[path]

    return load


def load_script(path: str | Path) -> list[ScriptLine]:
    """Parse an event script; errors name the file, the line and the field."""
    path = Path(path)
    if not path.exists():
        raise WorkloadError("no such file", file=str(path))
    load_graph = _graph_loader(path.parent)
    out: list[ScriptLine] = []
    last_t = 0.0
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"not valid JSON: {e.msg}", file=str(path), line=n) from None
        field = "type"
        try:
            kind = d["type"]
            field = "t"
            t = float(d.get("t", last_t))
            if t < last_t:
                raise ValueError(f"time goes back ({t} < {last_t})")
            last_t = t
            field = kind
            out.append(ScriptLine(n, t, _event(kind, d, load_graph)))
        except KeyError as e:
            raise WorkloadError(f"missing field {e.args[0]!r}", file=str(path), line=n, field=field) from None
        except (ValueError, TypeError) as e:
            raise WorkloadError(str(e), file=str(path), line=n, field=field) from None
        except Exception as e:  # a workflow that fails to load or compile
            raise WorkloadError(f"{type(e).__name__}: {e}", file=str(path), line=n, field=field) from None
    return out


def _event(kind: str, d: dict, load_graph) -> Event | None:
    match kind:
        case "step":
            return None
        case "worker":
            return WorkerUpdate(worker=d["worker"], kv_capacity_tokens=int(d["kv_capacity_tokens"]),
                                kv_used_tokens=int(d.get("kv_used_tokens", 0)),
                                host_capacity_tokens=int(d.get("host_capacity_tokens", 0)),
                                h2d_tokens_per_s=float(d.get("h2d_tokens_per_s", 0.0)),
                                prefill_tokens_per_s=float(d.get("prefill_tokens_per_s", 10_000.0)),
                                queue_depth=int(d.get("queue_depth", 0)))
        case "arrive":
            return ProgramArrived(program_id=d["program"], graph=load_graph(d["workflow"]))
        case "submit":
            return CallSubmitted(program_id=d["program"], call_id=d["call"], step=d["step"],
                                 prefixes=_prefixes(d.get("prefixes", []), "prefixes"),
                                 prompt_tokens=int(d["prompt_tokens"]),
                                 expected_output_tokens=int(d.get("expected_output_tokens", 256)))
        case "start":
            return CallStarted(call_id=d["call"], worker=d["worker"])
        case "finish":
            return CallFinished(call_id=d["call"], worker=d["worker"], output_tokens=int(d["output_tokens"]),
                                cached=_prefixes(d.get("cached", []), "cached"))
        case "tool_start":
            return ToolStarted(program_id=d["program"], step=d["step"], tool=d["tool"])
        case "tool_finish":
            return ToolFinished(program_id=d["program"], step=d["step"], tool=d["tool"],
                                duration_s=float(d["duration_s"]))
        case "finish_program":
            return ProgramFinished(program_id=d["program"], cancelled=bool(d.get("cancelled", False)))
        case "worker_lost":
            return WorkerLost(worker=d["worker"])
        case "moved":
            return PrefixMoved(worker=d["worker"], key=d["key"], tier=d["tier"])
    raise ValueError(f"unknown event type {kind!r}; valid: step, worker, arrive, submit, start, finish, "
                     "tool_start, tool_finish, finish_program, worker_lost, moved")


def run_script(lines: list[ScriptLine], policy: Policy, *, every_event: bool = True,
               config: SchedulerConfig = SchedulerConfig()) -> list[tuple[ScriptLine, Decision]]:
    """Apply the script to a fresh scheduler; return (line, decision) for non-empty decisions."""
    clock = ManualClock()
    sched = Scheduler(policy, clock=clock, config=config)
    out = []
    for sl in lines:
        clock.set(max(sl.time_s, clock.now_s()))
        if sl.event is not None:
            try:
                sched.apply(sl.event)
            except Exception as e:
                raise WorkloadError(str(e), line=sl.line) from None
        if sl.event is None or every_event:
            d = sched.step()
            if not d.empty or sl.event is None:
                out.append((sl, d))
    return out
