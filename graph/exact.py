"""Exact minimum steps-to-execution by brute force: the reference the tables are tested against.

It shares nothing with `analysis.py` but the graph: it simulates synchronous rounds over
*token states*. Every active step holds a token; each round every running token moves to
one successor (any branch case; a loop's back edge while iterations are left, or its exit),
a fork splits it, and tokens that reach a join wait there until no token is left inside
that fork's branches, then merge. A breadth-first search over all choices gives, per agent,
the first round in which one of its LLM steps holds a token. Exponential; for tests only.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentflow.graph.model import END, Branch, Fork, Loop, Next, StepGraph, StepKind

INF = float("inf")


def exact_steps_min(
    graph: StepGraph, active: frozenset[str], loop_iterations: Mapping[str, int] | None = None,
    *, max_rounds: int = 200,
) -> dict[str, float]:
    joins = {reg.join: f for f, reg in graph.regions.items() if reg.join is not None}
    counters0 = tuple(sorted((loop_iterations or {}).items()))
    start = (tuple(sorted((s, False) for s in active)), counters0)
    best = {a: INF for a in graph.agents}
    frontier = {start}
    seen = {start}
    for rnd in range(max_rounds):
        for tokens, _ in frontier:
            for s, waiting in tokens:
                node = graph.steps[s]
                if not waiting and node.kind is StepKind.LLM and best.get(node.agent, 0) == INF:
                    best[node.agent] = rnd
        if all(v < INF for v in best.values()):
            break
        nxt = set()
        for state in frontier:
            for succ in _advance(graph, state, joins):
                if succ not in seen:
                    seen.add(succ)
                    nxt.add(succ)
        if not nxt:
            break
        frontier = nxt
    return best


def _in_region(graph: StepGraph, step: str, fork: str) -> bool:
    return fork in graph.region_chain(step)


def _advance(graph: StepGraph, state, joins):
    tokens, counters = state
    # Each running token's options: list of (new tokens, counter updates)
    options_per_token = []
    waiting_tokens = [t for t in tokens if t[1]]
    for s, waiting in tokens:
        if waiting:
            continue
        t = graph.transitions[s]
        opts = []
        match t:
            case None:
                opts.append(((), {}))
            case Next(target=x):
                opts.append(((x,), {}))
            case Fork(targets=xs):
                opts.append((tuple(xs), {}))
            case Branch(cases=cs, default=d):
                for c in cs:
                    opts.append(((c.target,), {}))
                opts.append(((d,), {}))
            case Loop(back_to=h, exit=x, max_iterations=m):
                done = dict(counters).get(s, 0)
                if done + 1 < m:
                    opts.append(((h,), {s: done + 1}))
                opts.append(((x,) if x is not None else (), {s: None}))
        options_per_token.append(opts)
    combos = [((), {})]
    for opts in options_per_token:
        combos = [(c[0] + o[0], {**c[1], **o[1]}) for c in combos for o in opts]
    for moved, upd in combos:
        cnt = dict(counters)
        for k, v in upd.items():
            if v is None:
                cnt.pop(k, None)
            else:
                cnt[k] = v
        toks = [(s, True) for s, _ in waiting_tokens]
        toks += [(s, s in joins) for s in moved if s != END]
        # Release joins whose fork region holds no running or waiting token any more.
        changed = True
        while changed:
            changed = False
            for j, f in joins.items():
                if any(s == j and w for s, w in toks):
                    if not any(_in_region(graph, s, f) for s, _ in toks):
                        toks = [x for x in toks if x != (j, True)] + [(j, False)]
                        changed = True
        yield (tuple(sorted(set(toks))), tuple(sorted(cnt.items())))
