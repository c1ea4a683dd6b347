"""Exact minimum steps-to-execution by brute force: the reference the tables are tested against.

It shares nothing with `analysis.py` but the graph: it simulates synchronous rounds over
*token states*. Every active step holds a token; each round every token on an LLM or tool step
moves to one successor (any branch case; a loop's back edge while iterations are left, or its
exit), a fork splits it, and tokens that reach a join wait there until no token is left inside
that fork's branches, then merge. Noop steps take no time: a token reaching one moves on within
the same round. A breadth-first search over all choices gives, per agent, the first round in
which one of its LLM steps holds a token. Exponential; for tests only.
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
    counters0 = dict(loop_iterations or {})
    frontier = set(_settle(graph, [(s, False) for s in active], counters0, joins))
    seen = set(frontier)
    best = {a: INF for a in graph.agents}
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


def _options(graph: StepGraph, s: str, counters: dict[str, int]):
    """(successor steps, counter updates) for each way a token at `s` can move on."""
    t = graph.transitions[s]
    match t:
        case None:
            return [((), {})]
        case Next(target=x):
            return [((x,), {})]
        case Fork(targets=xs):
            return [(tuple(xs), {})]
        case Branch(cases=cs, default=d):
            return [((c.target,), {}) for c in cs] + [((d,), {})]
        case Loop(back_to=h, exit=x, max_iterations=m):
            done = counters.get(s, 0)
            opts = []
            if done + 1 < m:
                opts.append(((h,), {s: done + 1}))
            opts.append(((x,) if x is not None else (), {s: None}))
            return opts
    raise TypeError(t)


def _apply(counters: dict[str, int], upd: dict[str, int | None]) -> dict[str, int]:
    out = dict(counters)
    for k, v in upd.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _settle(graph: StepGraph, tokens: list[tuple[str, bool]], counters: dict[str, int], joins, depth: int = 0):
    """Release joins and move tokens through noop steps until only LLM/tool steps (and waiting
    joins) hold tokens. Yields every way that can end."""
    toks = [(s, w or s in joins) if s != END else None for s, w in tokens]
    toks = [t for t in toks if t is not None]
    changed = True
    while changed:  # a join whose fork region is empty starts
        changed = False
        for j, f in joins.items():
            if (j, True) in toks and not any(_in_region(graph, s, f) for s, _ in toks):
                toks = [x for x in toks if x != (j, True)] + [(j, False)]
                changed = True
    toks = sorted(set(toks))
    for i, (s, waiting) in enumerate(toks):
        if not waiting and graph.steps[s].kind is StepKind.NOOP:
            if depth > 100:
                return  # a loop of noops only: no progress is possible
            rest = toks[:i] + toks[i + 1:]
            for succ, upd in _options(graph, s, counters):
                yield from _settle(graph, rest + [(x, False) for x in succ], _apply(counters, upd), joins, depth + 1)
            return
    yield (tuple(toks), tuple(sorted(counters.items())))


def _advance(graph: StepGraph, state, joins):
    tokens, counters = state
    counters = dict(counters)
    waiting = [(s, True) for s, w in tokens if w]
    running = [s for s, w in tokens if not w]
    combos = [((), {})]
    for s in running:
        combos = [(c[0] + o[0], {**c[1], **o[1]}) for c in combos for o in _options(graph, s, counters)]
    for moved, upd in combos:
        yield from _settle(graph, waiting + [(x, False) for x in moved], _apply(counters, upd), joins)
