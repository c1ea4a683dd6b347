"""The step graph a replayed program is planned with.

A workload records what programs *did*; the scheduler must plan with what a user would
*declare*: the program's workflow, not its future. So a replay builds one planning graph per
workload (never per program) from its structure and statistics:

    one agent (coding agents, function calling):      think --> tool --+
                                                        ^-------------+   loop, at most the
                                                                          longest program's
                                                                          calls, expected: the mean
    several agents, structure unknown (ChatDev):      speak ---> branch to any agent's step, with
                                                        its share of calls as the probability,
                                                        then a tool step, in the same loop

The first is exactly what examples/swe_agent.py declares; the second knows who speaks how
often but not in which order, a deliberately weak plan (a declared workflow would do better).
Each call maps to the LLM step of its agent; each tool call to the tool step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from agentflow.graph.model import StepGraph
from agentflow.runtime.workload.format import Program


@dataclass(frozen=True, slots=True)
class PlanningGraph:
    graph: StepGraph
    llm_step: dict[str, str]  # agent -> its LLM step
    tool_step: str
    workflow: object = None  # the CompiledWorkflow it came from (a service is sent its spec)

    def step_of(self, agent: str) -> str:
        return self.llm_step[agent]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name) or "agent"


def planning_graph(programs: list[Program], *, name: str = "replay") -> PlanningGraph:
    from agentflow.workflow import Workflow

    if not programs:
        raise ValueError("a workload with no programs has nothing to plan")
    counts = Counter(c.agent for p in programs for c in p.calls)
    agents = [a for a, _ in counts.most_common()]
    calls = [len(p.calls) for p in programs]
    max_calls = max(max(calls), 1)
    mean_calls = max(1.0, min(float(max_calls), sum(calls) / len(calls)))
    wf = Workflow(name, description="planning graph of a replayed workload")
    wf.tool("tool", duration_hint_s=None)
    steps = {}
    for a in agents:
        wf.agent(a, system_prompt=a, tools=["tool"])
        steps[a] = wf.llm(f"llm:{_safe(a)}", agent=a)
    wf.call("tool", tool="tool")
    wf.noop("next")
    if len(agents) == 1:
        (only,) = agents
        wf.sequence(steps[only], "tool", "next")
        wf.loop("next", back_to=steps[only], max_iterations=max_calls, expected_iterations=mean_calls)
    else:
        total = sum(counts.values())
        wf.noop("speak")
        first, *rest = agents
        wf.branch("speak", {steps[a]: None for a in rest}, default=steps[first],
                  probabilities={steps[a]: round(counts[a] / total, 6) for a in rest})
        for a in agents:
            wf.sequence(steps[a], "tool")
        wf.sequence("tool", "next")
        wf.loop("next", back_to="speak", max_iterations=max_calls, expected_iterations=mean_calls)
    compiled = wf.compile()
    return PlanningGraph(graph=compiled.graph, llm_step=steps, tool_step="tool", workflow=compiled)
