"""The learned-graph part of bench/front_door.py: a workload replayed without its declared graph.

Each call reaches the scheduler as the front door would make it: its messages are synthesised
(the agent's system prompt from the workload's system-prompt segment keys, one paragraph each; the
program's earlier turns of that agent; a new user message, or the previous call's answer quoted
whole when another agent spoke last), the program is found by conversation.ProgramTracker, the
agent is named by learner.AgentNamer, and the program opens with learner.GraphLearner's current plan
for its class. Tool gaps reach the scheduler as the replay times them (the front door reports the
same ToolStarted / ToolFinished pair). The declared-graph run is runtime/replay's own.
"""

from __future__ import annotations

import sys

from agentflow.runtime.frontdoor.conversation import ProgramTracker
from agentflow.runtime.frontdoor.learner import AgentNamer, GraphLearner
from agentflow.runtime.events import ToolFinished, ToolStarted
from agentflow.runtime.replay.engine import Replay


class _Plan:
    def __init__(self):
        self.graph = None
        self.step = None
        self.tool_step = "tool"

    def step_of(self, agent):  # the step the front door inferred for the call being submitted
        return self.step


class LearnedReplay(Replay):
    def __init__(self, arrivals, policy, cost, config, prepared, *, learn: bool = True, tools: bool = True):
        self.learn = learn  # False: a plan that never learns an agent (one catch-all loop)
        self.tools = tools  # False: no tool gaps reported (the front door as a plain proxy)
        self.learned = _Plan()
        super().__init__(arrivals, self.learned, policy, cost, config, prepared=prepared)
        if not tools:
            apply = self.sched.apply

            def without_tools(event):
                if not isinstance(event, ToolStarted | ToolFinished):
                    return apply(event)
                return None

            self.sched.apply = without_tools
        self.tracker = ProgramTracker()
        self.namer = AgentNamer()
        self.learner = GraphLearner()
        self._meta: dict = {}  # pid -> (class, plan, tracked program, last agent, turns per agent, answers)
        self.inference_misses = 0
        self.inferred_calls = 0

    def _messages(self, pid, i):
        program = self._progs[pid].program
        call = program.calls[i]
        agents = {a.name: a for a in program.agents}
        sp = agents[call.agent].system_prompt if call.agent in agents else ()
        system = "\n\n".join(getattr(s, "key", str(s)) for s in sp) or call.agent
        msgs = [{"role": "system", "content": system}]
        meta = self._meta.get(pid)
        mine = [j for j in range(i) if program.calls[j].agent == call.agent]

        def user(j):  # what call j's new message was: another agent's answer quoted, or its request
            if j > 0 and program.calls[j - 1].agent != program.calls[j].agent:
                return {"role": "user", "content": self._answer(pid, j - 1)}
            return {"role": "user", "content": f"{pid} turn {j} of {call.agent}: the request"}

        for j in mine:
            msgs += [user(j), {"role": "assistant", "content": self._answer(pid, j)}]
        msgs.append(user(i))
        return msgs, meta

    @staticmethod
    def _answer(pid, j):
        return f"the answer of call {j} of program {pid}, long enough to quote"

    def _on_arrive(self, index, program):
        pid = f"{index}:{program.id}"
        call = program.calls[0]
        agents = {a.name: a for a in program.agents}
        sp = agents[call.agent].system_prompt if call.agent in agents else ()
        system = "\n\n".join(getattr(s, "key", str(s)) for s in sp) or call.agent
        tracked, _ = self.tracker.open(None, tenant="t", now_s=self.clock.now_s())
        agent = self.namer.name(system, tracked.program_id)
        cls = f"auto:{agent}"
        plan = self.learner.plan(cls)
        from agentflow.spec import WorkflowSpec

        self.learned.graph = _graph(plan.spec_json)
        self._meta[pid] = [cls, plan, tracked, None]
        super()._on_arrive(index, program)

    def _submit(self, pid):
        prog = self._progs[pid]
        i = prog.next_call
        msgs, meta = self._messages(pid, i)
        cls, plan, tracked, prev = meta
        if i > 0:
            self.inferred_calls += 1
            if self.tracker.find("t", msgs) != tracked.program_id:
                self.inference_misses += 1
        system = msgs[0]["content"]
        agent = tracked.agents.get(system)
        if agent is None:
            agent = tracked.agents[system] = self.namer.name(system, tracked.program_id)
        if self.learn:
            self.learner.call(cls, prev, agent)
        meta[3] = agent
        self.learned.step = plan.step_of(self.learner.agent_of(cls, agent))
        # as the front door: its programs declare no end, so the working set never holds them
        self.sched.activate(pid)
        super()._submit(pid)
        self.tracker.answered(tracked, msgs, {"role": "assistant", "content": self._answer(pid, i)})

    def _program_done(self, pid):
        cls, plan, tracked, last = self._meta.pop(pid)
        self.learner.program_done(cls, last, len(self._progs[pid].program.calls))
        self.tracker.remove(tracked.program_id)
        super()._program_done(pid)


class NeverHeldReplay(Replay):
    """The declared graph, its programs never held by the working set (as the front door's): what
    the declared graph gains without program admission."""

    def _submit(self, pid):
        self.sched.activate(pid)
        super()._submit(pid)


_GRAPHS: dict = {}


def _graph(spec_json: str):
    g = _GRAPHS.get(spec_json)
    if g is None:
        from agentflow.spec import WorkflowSpec

        g = _GRAPHS[spec_json] = WorkflowSpec.parse(spec_json, source="learned", fmt="json").compile().graph
    return g


def learned_share(workload: str, *, baseline: str = "lru", policy: str = "agentflow", num_programs: int | None = None,
                  kv_capacity_tokens: int | None = None, concurrency: int | None = None,
                  preset: str = "llama-3.1-8b-h100", never_held: bool = False) -> dict:
    """Mean JCT of five runs of one workload, and where the gain comes from:

        baseline      `baseline` policy (lru): what an engine does alone
        declared      `policy` with the declared (planning) graph and the tool events
        learned       `policy` through the front door: the graph it learns, the tool gaps it sees
        control       `policy` through the front door with no hints and nothing learned: a plan
                      of one catch-all step, no tool gaps reported
        tool_gaps     the control plus the tool gaps (start, finish and duration): no graph
        declared_never_held  (never_held=True) the declared run with its programs never held by
                      the working set, as the front door's never are: the admission's part

    learned_gain_share = (control - learned) / (control - declared): of what the declared graph
    gains over the front door knowing nothing, the share the front door's learning keeps.
    tool_gap_share is the same for tool gaps alone; graph_share = learned_gain_share - tool_gap_share."""
    import time

    from agentflow.runtime.engines.sim.costmodel import make_cost_model
    from agentflow.runtime.replay.engine import ReplayConfig
    from agentflow.runtime.replay.planning import planning_graph
    from agentflow.runtime.replay.run import default_concurrency
    from agentflow.runtime.workload import ClosedLoop, load_workload

    wl = load_workload(workload)
    programs = list(wl.programs[:num_programs] if num_programs else wl.programs)
    cost = make_cost_model(preset)
    kv = kv_capacity_tokens or cost.kv_capacity_tokens
    conc = concurrency or default_concurrency(programs, kv)
    rc = ReplayConfig(kv_capacity_tokens=kv_capacity_tokens)
    declared = planning_graph(programs, name=f"replay-{wl.header.source}")
    prepared: dict = {}
    out = {"programs": len(programs), "kv_capacity_tokens": kv, "concurrency": conc}
    t0 = time.perf_counter()
    runs = [("baseline", baseline, None, None), ("declared", policy, None, None), ("learned", policy, True, True),
            ("control", policy, False, False), ("tool_gaps", policy, False, True)]
    if never_held:
        runs.append(("declared_never_held", policy, None, False))
    for label, name, learn, tools in runs:
        arrivals = ClosedLoop(programs, num_in_flight=conc)
        if learn is not None:
            sim = LearnedReplay(arrivals, name, cost, rc, prepared, learn=learn, tools=tools)
        else:
            sim = (NeverHeldReplay if tools is False else Replay)(arrivals, declared, name, cost, rc, prepared=prepared)
        t = time.perf_counter()
        out[f"jct_mean_s_{label}"] = round(sim.run()["jct_mean_s"], 3)
        out[f"wall_s_{label}"] = round(time.perf_counter() - t, 1)
        print(f"  {workload.rsplit('/', 1)[-1]} {label}: JCT {out[f'jct_mean_s_{label}']} s ({out[f'wall_s_{label}']} s)", file=sys.stderr)
        if learn:
            out["inference_accuracy"] = round(1 - sim.inference_misses / max(1, sim.inferred_calls), 4)
            out["learned_plans_built"] = sim.learner.plans_built
    ctl = out["jct_mean_s_control"]
    gain_declared = ctl - out["jct_mean_s_declared"]
    out["declared_gain_over_control_s"] = round(gain_declared, 3)
    out["declared_gain_over_baseline_s"] = round(out["jct_mean_s_baseline"] - out["jct_mean_s_declared"], 3)
    out["learned_gain_over_control_s"] = round(ctl - out["jct_mean_s_learned"], 3)
    if gain_declared > 0:
        out["learned_gain_share"] = round((ctl - out["jct_mean_s_learned"]) / gain_declared, 4)
        out["tool_gap_share"] = round((ctl - out["jct_mean_s_tool_gaps"]) / gain_declared, 4)
        out["graph_share"] = round(out["learned_gain_share"] - out["tool_gap_share"], 4)
    else:  # the declared graph gains nothing over the control: there is no gain to keep
        out["learned_gain_share"] = out["tool_gap_share"] = out["graph_share"] = None
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


__all__ = ["LearnedReplay", "NeverHeldReplay", "learned_share"]
