"""Random structured workflows, seeded: for property tests and benchmarks.

A workflow is grown as nested blocks: a step, a sequence, a fan-out/join, a conditional branch
that merges again, or a bounded loop around a block. Every block it makes is valid by
construction, so any compile error it triggers is a bug in the compiler.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agentflow.conditions import when


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    num_steps: int = 30  # approximate: blocks stop growing once this many steps exist
    num_agents: int = 4
    p_fork: float = 0.12
    p_branch: float = 0.12
    p_loop: float = 0.12
    max_depth: int = 4
    max_branches: int = 3
    max_iterations: int = 4


def random_workflow(seed: int, shape: Shape = Shape(), *, name: str | None = None):
    from agentflow.workflow import Workflow

    rng = random.Random(seed)
    wf = Workflow(name or f"random-{seed}")
    agents = [f"agent{i}" for i in range(shape.num_agents)]
    for a in agents:
        wf.agent(a, system_prompt=f"You are {a}.", tools=["tool"])
    wf.tool("tool", duration_hint_s=1.0)
    counter = [0]

    def new_step(kind: str | None = None) -> str:
        counter[0] += 1
        name = f"s{counter[0]}"
        kind = kind or rng.choice(["llm", "llm", "tool"])
        if kind == "llm":
            wf.llm(name, agent=rng.choice(agents), expected_output_tokens=rng.choice([64, 128, 256]))
        elif kind == "tool":
            wf.call(name, tool="tool", agent=rng.choice(agents))
        else:
            wf.noop(name)
        return name

    def connect(exits: list[str], entry: str) -> None:
        for e in exits:
            wf.sequence(e, entry)

    def block(depth: int) -> tuple[str, list[str]]:
        r = rng.random()
        full = counter[0] >= shape.num_steps or depth >= shape.max_depth
        if full or r < 1 - (shape.p_fork + shape.p_branch + shape.p_loop):
            # a short sequence of plain steps
            n = rng.randint(1, 3)
            steps = [new_step() for _ in range(n)]
            wf.sequence(*steps) if n > 1 else None
            return steps[0], [steps[-1]]
        r -= 1 - (shape.p_fork + shape.p_branch + shape.p_loop)
        if r < shape.p_fork:
            fork = new_step(rng.choice(["llm", "noop"]))
            parts = [block(depth + 1) for _ in range(rng.randint(2, shape.max_branches))]
            join = new_step(rng.choice(["llm", "noop"]))
            wf.fan_out(fork, [e for e, _ in parts], join=join)
            for _, exits in parts:
                wf.join(exits, join)
            return fork, [join]
        r -= shape.p_fork
        if r < shape.p_branch:
            src = new_step()
            parts = [block(depth + 1) for _ in range(rng.randint(2, shape.max_branches))]
            merge = new_step("noop")
            cases = {e: when(f"go_{e}") for e, _ in parts[:-1]}
            probs = {e: round(rng.uniform(0.1, 0.9) / len(parts), 3) for e, _ in parts[:-1]}
            wf.branch(src, cases, default=parts[-1][0], probabilities=probs)
            for _, exits in parts:
                connect(exits, merge)
            return src, [merge]
        entry, exits = seq(depth + 1)
        latch = new_step()
        connect(exits, latch)
        m = rng.randint(2, shape.max_iterations)
        wf.loop(latch, back_to=entry, max_iterations=m, expected_iterations=rng.uniform(1.0, m),
                while_=when("again"))
        return entry, [latch]

    def seq(depth: int) -> tuple[str, list[str]]:
        entry, exits = block(depth)
        while counter[0] < shape.num_steps and rng.random() < 0.6:
            e2, x2 = block(depth)
            connect(exits, e2)
            exits = x2
        return entry, exits

    entry, exits = seq(0)
    while counter[0] < shape.num_steps:
        e2, x2 = block(0)
        connect(exits, e2)
        exits = x2
    wf.start(entry)
    return wf


def random_walk(graph, rng: random.Random, *, max_events: int = 10_000):
    """Yield the positions of one random run, one finished step at a time.

    Steps finish one by one (as a scheduler sees them); successors follow the planning
    probabilities; a loop repeats while iterations are left. Ends when the program does.
    """
    for _, pos in random_run(graph, rng, max_events=max_events):
        yield pos


def random_run(graph, rng: random.Random, *, max_events: int = 10_000):
    """Like `random_walk`, yielding (steps started by this event, position) pairs."""
    from agentflow.graph.model import Branch, Fork, Loop, Next
    from agentflow.graph.position import Position

    joins = {reg.join: f for f, reg in graph.regions.items() if reg.join is not None}
    active: list[str] = [graph.entry]
    waiting: set[str] = set()
    counters: dict[str, int] = {}
    for _ in range(max_events):
        if not active:
            return
        s = active.pop(rng.randrange(len(active)))
        t = graph.transitions[s]
        nxt: list[str] = []
        if isinstance(t, Next):
            nxt = [t.target]
        elif isinstance(t, Fork):
            nxt = list(t.targets)
        elif isinstance(t, Branch):
            r, acc, pick = rng.random(), 0.0, t.default
            for c in t.cases:
                acc += c.probability
                if r < acc:
                    pick = c.target
                    break
            nxt = [pick]
        elif isinstance(t, Loop):
            done = counters.get(s, 0)
            if done + 1 < t.max_iterations and rng.random() < t.continue_probability:
                counters[s] = done + 1
                nxt = [t.back_to]
            else:
                counters.pop(s, None)
                nxt = [t.exit] if t.exit is not None else []
        before = set(active)
        for x in nxt:
            (waiting.add if x in joins else active.append)(x)
        released = True
        while released:
            released = False
            for j in sorted(waiting):
                f = joins[j]
                if not any(f in graph.region_chain(x) for x in active) and \
                        not any(f in graph.region_chain(w) for w in waiting):
                    waiting.discard(j)
                    active.append(j)
                    released = True
        live = {k: v for k, v in counters.items() if graph.loops[k].body & set(active)}
        started = [x for x in active if x not in before]
        yield started, Position.of(*active, loop_iterations=live)
