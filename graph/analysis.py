"""Steps-to-execution tables: per step, how far each agent's next LLM call is.

Definitions (the contract the scheduler relies on)
--------------------------------------------------
Time is counted in *rounds*: every active LLM or tool step takes one round, a noop (routing or
joining) step takes none, parallel branches advance together, and a join starts when the last
of its live branches ends. For a step
`v` and an agent `a`:

  dmin[v, a]   the fewest rounds from `v` starting until an LLM step of `a` starts
               (0 if `v` is one); over every structurally possible path: any branch case,
               any loop back edge that has iterations left.  inf: `a` can never run again.
  hit[v, a]    the probability, under the planning probabilities (branch probabilities;
               a loop repeats with p = 1 - 1/expected_iterations), that `a` runs again.
  dexp[v, a]   the expected rounds until then, *given* that it does (inf if hit is 0).

The graph is cut into *regions*: the top level, and for each fork the steps strictly between
it and its join. Tables are local to a step's innermost region (a path stops at the region's
exit, the join). A fork is then a single macro step of its parent region:

      fork F ──┬─ b1 ─ ... ─┐
               ├─ b2 ─ ... ─┼──> join J         dmin[F] = min( min_i r + dmin[b_i],
               └─ b3 ─ ... ─┘                              r + max_i exit_min[b_i] + dmin[J] )
                                                r = rounds of F itself (1, or 0 for a noop)

so a region only needs its nested regions' results at their branch starts. Within a region,
strongly connected components are exactly the bounded loops; each one is a small linear
system (expected values) or a Bellman-Ford relaxation (minimum), solved in reverse
topological order of the condensation.

For a running program with several active steps (see `position.py`) the rows of its active
steps are combined: a min over them, and a join's start time is the max over its live
branches' exit times. Combining a few precomputed rows is what makes an update incremental.

Approximations, stated: parallel branches' expected times combine by max (E[max] >= max E);
an agent hit inside several branches takes the hit-weighted mean time; loop iteration counts
beyond "exhausted or not" are not modelled (`StepGraph.analysis_without`).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from agentflow.graph.model import END, EdgeKind, Fork, StepGraph, StepKind, edges_of

INF = float("inf")
_EXIT = "__exit__"


@dataclass(frozen=True, eq=False, kw_only=True)
class GraphTables:
    agents: tuple[str, ...]
    agent_index: dict[str, int]
    index: dict[str, int]  # step -> row
    dmin: np.ndarray  # (steps, agents)
    hit: np.ndarray  # (steps, agents)
    dexp: np.ndarray  # (steps, agents)
    exit_min: np.ndarray  # (steps,) rounds until the region's exit (join start, or program end)
    exit_exp: np.ndarray  # (steps,)
    rem_calls: np.ndarray  # (steps,) expected LLM calls from this step (inclusive) to the region exit
    rem_tokens: np.ndarray  # (steps,) expected prompt + output tokens of those calls
    disabled_loops: frozenset[str]
    macro: dict  # per fork: what its branches contribute (kept to re-solve loop bodies)

    def row(self, step: str) -> int:
        return self.index[step]

    @property
    def stacked(self) -> np.ndarray:
        """(steps, 3, agents): dmin, dexp, 1 - hit; one gather serves a combination."""
        s = self.__dict__.get("_stacked")
        if s is None:
            s = np.stack([self.dmin, self.dexp, 1.0 - self.hit], axis=1)
            object.__setattr__(self, "_stacked", s)
        return s

    @property
    def exits(self) -> tuple[list[float], list[float]]:
        """exit_min and exit_exp as Python lists: read one value at a time on the hot path."""
        s = self.__dict__.get("_exits")
        if s is None:
            s = (self.exit_min.tolist(), self.exit_exp.tolist())
            object.__setattr__(self, "_exits", s)
        return s

    @property
    def remaining(self) -> np.ndarray:
        """(steps, 2): expected remaining calls and tokens."""
        s = self.__dict__.get("_remaining")
        if s is None:
            s = np.stack([self.rem_calls, self.rem_tokens], axis=1)
            object.__setattr__(self, "_remaining", s)
        return s

    @classmethod
    def compute(cls, graph: StepGraph) -> "GraphTables":
        return _Computation(graph, frozenset()).run()

    def without_loops(self, graph: StepGraph, disabled: frozenset[str]) -> "GraphTables":
        """Tables where the loops in `disabled` have no iterations left.

        Only rows of steps inside those loops' bodies change: a step outside a body reaches
        the loop, if at all, through its head, i.e. afresh with every iteration available.
        So the bodies are re-solved with the back edges removed, reading the original rows
        at the loop exits; the cost is the size of the bodies, not of the graph.
        """
        comp = _Computation(graph, disabled, base=self)
        by_region: dict[str | None, set[str]] = {}
        for loop in disabled:
            for s in graph.loops[loop].body:
                if graph.region_of[s] == graph.region_of[loop]:
                    by_region.setdefault(graph.region_of[loop], set()).add(s)
        for region, members in by_region.items():
            exit_step = graph.regions[region].join if region is not None else None
            comp.solve_region([s for s in graph.steps if s in members], exit_step=exit_step)
        return comp.finish()


class _Computation:
    def __init__(self, graph: StepGraph, disabled: frozenset[str], base: GraphTables | None = None):
        self.g = graph
        self.disabled = disabled
        self.agents = graph.agents
        self.A = len(self.agents)
        self.aidx = {a: i for i, a in enumerate(self.agents)}
        self.index = {s: i for i, s in enumerate(graph.steps)}
        n = len(graph.steps)
        self.dmin = np.full((n, self.A), INF)
        self.hit = np.zeros((n, self.A))
        self.g_ = np.zeros((n, self.A))  # E[T * 1{hit}]
        self.exit_min = np.full(n, INF)  # relaxed down; every step reaches its exit (validated)
        self.exit_exp = np.zeros(n)
        self.rem_calls = np.zeros(n)
        self.rem_tokens = np.zeros(n)
        self.own = np.zeros((n, self.A), dtype=bool)
        for s, node in graph.steps.items():
            if node.kind is StepKind.LLM and node.agent is not None:
                self.own[self.index[s], self.aidx[node.agent]] = True
        # Fork macro data, filled when the fork's own region has been solved.
        self.macro: dict[str, dict] = {}
        if base is not None:  # start from solved tables; only some rows will be re-solved
            self.dmin, self.hit = base.dmin.copy(), base.hit.copy()
            self.g_ = np.where(base.hit > 0, base.hit * np.where(np.isinf(base.dexp), 0.0, base.dexp), 0.0)
            self.exit_min, self.exit_exp = base.exit_min.copy(), base.exit_exp.copy()
            self.rem_calls, self.rem_tokens = base.rem_calls.copy(), base.rem_tokens.copy()
            self.macro = base.macro

    # -- successors inside a region ------------------------------------------------------
    def succ(self, v: str, exit_step: str | None):
        """[(target or _EXIT, probability, rounds, possible_for_min)] of `v` inside its region."""
        if v in self.macro:
            m = self.macro[v]
            j = m["join"]
            return [(_EXIT if j is None or j == exit_step else j, 1.0, None, True)]
        # A step takes one round; a noop (routing, joining) takes none: its successors start when it does.
        rounds = 0.0 if self.g.steps[v].kind is StepKind.NOOP else 1.0
        if self.g.transitions[v] is None:
            return [(_EXIT, 1.0, rounds, True)]
        out = []
        for e in edges_of(v, self.g.transitions[v]):
            p, possible = e.probability, True
            if e.kind is EdgeKind.LOOP_BACK:
                loop = self.g.loops[v]
                if v in self.disabled or loop.max_iterations <= 1:
                    continue
            if e.kind is EdgeKind.LOOP_EXIT and (v in self.disabled or self.g.loops[v].max_iterations <= 1):
                p = 1.0
            t = _EXIT if (e.target == END or e.target == exit_step) else e.target
            out.append((t, p, rounds, possible))
        return out

    def run(self) -> GraphTables:
        g = self.g
        # Innermost regions first; the top level (None) last.
        order = sorted(g.regions.values(), key=lambda r: -r.depth)
        for reg in order:
            members = [s for s in reg.branch_of if g.region_of[s] == reg.fork]
            self.solve_region(members, exit_step=reg.join)
            self.make_macro(reg.fork)
        top = [s for s in g.steps if g.region_of[s] is None]
        self.solve_region(top, exit_step=None)
        return self.finish()

    def finish(self) -> GraphTables:
        with np.errstate(invalid="ignore", divide="ignore"):
            dexp = np.where(self.hit > 1e-12, self.g_ / np.maximum(self.hit, 1e-300), INF)
        dexp = np.where(self.own, 0.0, dexp)
        for arr in (self.dmin, self.hit, dexp, self.exit_min, self.exit_exp, self.rem_calls, self.rem_tokens):
            arr.flags.writeable = False  # rows are shared by every program's estimate
        return GraphTables(
            agents=self.agents, agent_index=self.aidx, index=self.index,
            dmin=self.dmin, hit=np.clip(self.hit, 0.0, 1.0), dexp=dexp,
            exit_min=self.exit_min, exit_exp=self.exit_exp,
            rem_calls=self.rem_calls, rem_tokens=self.rem_tokens,
            disabled_loops=self.disabled, macro=self.macro,
        )

    def make_macro(self, fork: str):
        t = self.g.transitions[fork]
        assert isinstance(t, Fork)
        rows = [self.index[b] for b in t.targets]
        start = 0.0 if self.g.steps[fork].kind is StepKind.NOOP else 1.0  # branches start after the fork
        h = self.hit[rows]  # (branches, A)
        hi = 1.0 - np.prod(1.0 - h, axis=0)
        sh = h.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            d_branch = np.where(h > 0, self.g_[rows] / np.maximum(h, 1e-300), 0.0)
            d_in = np.where(sh > 0, (h * (start + d_branch)).sum(axis=0) / np.maximum(sh, 1e-300), 0.0)
        self.macro[fork] = {
            "join": t.join,
            "inside_min": (start + self.dmin[rows]).min(axis=0),
            "hit_in": hi,
            "d_in": d_in,
            "len_min": start + float(self.exit_min[rows].max()),
            "len_exp": start + float(self.exit_exp[rows].max()),
            "rem_calls": float(self.rem_calls[rows].sum()),
            "rem_tokens": float(self.rem_tokens[rows].sum()),
        }

    # -- one region ------------------------------------------------------------------------
    def solve_region(self, members: list[str], exit_step: str | None):
        sub = nx.DiGraph()
        sub.add_nodes_from(members)
        succs = {v: self.succ(v, exit_step) for v in members}
        inside = set(members)
        rows = [self.index[v] for v in members]
        self.dmin[rows] = INF  # relaxation only lowers values: start re-solved rows from the top
        self.exit_min[rows] = INF
        for v, lst in succs.items():
            for t, _, _, _ in lst:
                if t in inside:  # others are solved already (or are the exit)
                    sub.add_edge(v, t)
        cond = nx.condensation(sub)
        order = {v: i for i, v in enumerate(members)}
        for c in reversed(list(nx.topological_sort(cond))):
            comp = sorted(cond.nodes[c]["members"], key=order.__getitem__)
            cyclic = len(comp) > 1 or sub.has_edge(comp[0], comp[0])
            self.solve_component(comp, succs, cyclic)

    def _len(self, v, rounds, kind):
        if rounds is not None:
            return rounds
        return self.macro[v]["len_min" if kind == "min" else "len_exp"]

    def solve_component(self, comp: list[str], succs, cyclic: bool):
        idx, own = self.index, self.own
        inside = set(comp)
        # ---- minimum rounds (Bellman-Ford; one pass when acyclic) ----------------------
        for _ in range(len(comp) if cyclic else 1):
            for v in comp:
                r = idx[v]
                best = np.full(self.A, INF)
                em = INF
                for t, _, rounds, possible in succs[v]:
                    if not possible:
                        continue
                    ln = self._len(v, rounds, "min")
                    if t == _EXIT:
                        em = min(em, ln)
                    else:
                        best = np.minimum(best, ln + self.dmin[idx[t]])
                        em = min(em, ln + self.exit_min[idx[t]])
                if v in self.macro:
                    best = np.minimum(best, self.macro[v]["inside_min"])
                self.dmin[r] = np.where(own[r], 0.0, best)
                self.exit_min[r] = em
        # ---- expected values: x = b + M x over the component -----------------------------
        m = len(comp)
        pos = {v: i for i, v in enumerate(comp)}
        # Transition matrix inside the component and known parts from outside.
        Mbase = np.zeros((m, m))
        for v in comp:
            for t, p, rounds, _ in succs[v]:
                if t in inside:
                    Mbase[pos[v], pos[t]] += p
        # Scalars (agent independent): exit rounds, remaining calls and tokens.
        b_exit, b_calls, b_tokens = np.zeros(m), np.zeros(m), np.zeros(m)
        for v in comp:
            i, node = pos[v], self.g.steps[v]
            is_llm = node.kind is StepKind.LLM
            b_calls[i] = 1.0 if is_llm else 0.0
            b_tokens[i] = (node.expected_prompt_tokens + node.expected_output_tokens) if is_llm else 0.0
            if v in self.macro:
                b_calls[i] += self.macro[v]["rem_calls"]
                b_tokens[i] += self.macro[v]["rem_tokens"]
            for t, p, rounds, _ in succs[v]:
                ln = self._len(v, rounds, "exp")
                b_exit[i] += p * ln
                if t != _EXIT and t not in inside:
                    b_exit[i] += p * self.exit_exp[idx[t]]
                    b_calls[i] += p * self.rem_calls[idx[t]]
                    b_tokens[i] += p * self.rem_tokens[idx[t]]
        if cyclic:
            lhs = np.eye(m) - Mbase
            sol = np.linalg.solve(lhs, np.stack([b_exit, b_calls, b_tokens], axis=1))
        else:
            sol = np.stack([b_exit, b_calls, b_tokens], axis=1)
        for v in comp:
            r, i = idx[v], pos[v]
            self.exit_exp[r], self.rem_calls[r], self.rem_tokens[r] = sol[i]
        # Hit probabilities and E[T * 1{hit}], per agent (rows differ where the agent speaks).
        A = self.A
        if A == 0:
            return
        bh, bg = np.zeros((m, A)), np.zeros((m, A))
        keep = np.ones((m, A))  # 1 - P(hit right here), scales the row's continuation
        for v in comp:
            i, r = pos[v], idx[v]
            if v in self.macro:
                mac = self.macro[v]
                keep[i] = 1.0 - mac["hit_in"]
                bh[i] += mac["hit_in"]
                bg[i] += mac["hit_in"] * mac["d_in"]
            keep[i] = np.where(own[r], 0.0, keep[i])
            bh[i] = np.where(own[r], 1.0, bh[i])
            bg[i] = np.where(own[r], 0.0, bg[i])
            for t, p, rounds, _ in succs[v]:
                if t == _EXIT or t in inside:
                    continue
                ln = self._len(v, rounds, "exp")
                bh[i] += keep[i] * p * self.hit[idx[t]]
                bg[i] += keep[i] * p * (self.g_[idx[t]] + ln * self.hit[idx[t]])
        if not cyclic:
            h, gg = bh, bg
        else:
            h, gg = np.zeros((m, A)), np.zeros((m, A))
            lens = np.zeros((m, m))
            for v in comp:
                for t, p, rounds, _ in succs[v]:
                    if t in inside:
                        lens[pos[v], pos[t]] = self._len(v, rounds, "exp")
            for a in range(A):
                M = Mbase * keep[:, a][:, None]
                lhs = np.eye(m) - M
                h[:, a] = np.linalg.solve(lhs, bh[:, a])
                # g = bg + M (g + lens * h)  ->  (I - M) g = bg + (M * lens) h
                gg[:, a] = np.linalg.solve(lhs, bg[:, a] + (M * lens) @ h[:, a])
        for v in comp:
            self.hit[idx[v]] = h[pos[v]]
            self.g_[idx[v]] = gg[pos[v]]
