"""Where each part of the SVG picture goes: a small Sugiyama-style layered layout.

`lay_out(graph)` returns a `Layout` (items with their x, layer bands with their y and height, the
routes of the forward edges, the lanes of the loops) and draws nothing: `svg.py` only reads it.
The geometry is the subtle part, so it sits apart from the markup, where it can be read and
tested on its own (`_pava` is pinned by tests/graph/test_export.py). The steps:

  1. layers: a step's layer is its longest-path depth from the entry in the graph without loop
     back edges (a DAG, by validation). A start dot sits above the entry; every edge to END
     gets its own end dot one layer below its source.
  2. long forward edges get one dummy per layer they cross, so they take part in ordering
     and get a lane of their own.
  3. order within layers: DFS discovery order, then barycenter sweeps down and up; the order
     with the fewest crossings wins.
  4. loop back edges are not part of the DAG. Each gets a *lane*: one slot per layer of its
     span, just outside the loop body in that layer (inner loops first, so nested loops nest
     outwards), on the right unless the left side crosses fewer edges. The edge leaves its
     source sideways, runs up the lane and enters its head from the same side, dashed, with
     its `≤N` label. A one-step loop is a small hook on the step's right.
  5. x: alternate passes pull each item toward the weighted mean of its neighbours above
     (or below); each layer then solves min Σ w (x - want)² subject to the order and the
     spacing exactly, as an isotonic regression (pool adjacent violators). Dummies and lanes
     weigh more, so long edges and loops run straight; finally each lane is lined up at its
     outermost slot, pushing what lies beyond it outward.
  6. y: layer bands, with more room under layers whose edges carry labels. Branch labels sit
     near the next hop (and reserve width there), since a decision's edges leave one point.

Text widths are estimated per character (`text_width`: no font metrics in pure Python), so box
sizes are known before anything is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentflow.graph.model import END, Branch, Edge, EdgeKind, StepGraph, StepKind, StepNode
from agentflow.graph.picture import edge_label, sub_label

__all__ = ["DOT_R", "Item", "Layout", "Route", "lay_out", "layers", "text_width"]

BOX_H = 40.0
NOOP_H = 20.0
DOT_R = 7.0
LAYER_GAP = 44.0
LABEL_GAP = 56.0
START_GAP = 30.0
NODE_GAP = 30.0
THIN_GAP = 14.0
LANE_W = 26.0
MAX_BOX_W = 240.0


def text_width(s: str, size: float, *, bold: bool = False) -> float:
    """A sans-serif width estimate (no font metrics in pure Python), generous rather than tight."""
    w = 0.0
    for ch in s:
        if ch in "iljtf.,:;'|!()[] ":
            w += 0.32
        elif ch in "mwMW@%":
            w += 0.88
        elif ch.isupper() or ch in "&#_<>":
            w += 0.68
        else:
            w += 0.57
    return w * size * (1.08 if bold else 1.0)


def layers(graph: StepGraph) -> dict[str, int]:
    """Longest-path depth of each step from the entry, ignoring loop back edges (entry: 0)."""
    preds: dict[str, list[str]] = {s: [] for s in graph.steps}
    for e in graph.iter_edges():
        if e.target != END and e.kind is not EdgeKind.LOOP_BACK:
            preds[e.target].append(e.source)
    depth: dict[str, int] = {}

    def visit(s: str) -> int:  # iterative DFS: graphs may be deep chains
        stack = [s]
        while stack:
            u = stack[-1]
            todo = [p for p in preds[u] if p not in depth]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            depth[u] = max((depth[p] + 1 for p in preds[u]), default=0)
        return depth[s]

    for s in graph.steps:
        if s not in depth:
            visit(s)
    return depth


@dataclass(slots=True, eq=False)
class Item:
    """One thing that takes a slot in a layer: a step box, a start or end dot, a dummy, a lane slot."""

    key: str
    kind: str  # "step", "start", "end", "dummy", "lane"
    layer: int
    width: float
    height: float
    owner: tuple[str, ...] = ()  # dummy: (source, target) of its edge; lane: (loop source,)
    label_w: float = 0.0  # room for the label of a branch edge that enters this item
    x: float = 0.0
    up: list["Item"] = field(default_factory=list)  # neighbours in the layer above
    down: list["Item"] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Route:
    """A forward edge as the chain of items it passes through, one per layer."""

    edge: Edge | None  # None: the start dot's edge
    chain: list[Item]  # source, dummies..., target


@dataclass(slots=True, eq=False)
class Layout:
    """Everything `svg.py` needs to draw: positions only, no markup."""

    items: dict[str, Item]
    rows: list[list[Item]]
    routes: list[Route]
    lanes: dict[str, list[Item]]  # loop source -> its lane slots, head layer first
    lane_side: dict[str, int]  # loop source -> +1 (lane on the right) or -1 (left)
    layer_y: list[float]  # top of each layer band
    layer_h: list[float]


def _step_size(n: StepNode) -> tuple[float, float]:
    if n.kind is StepKind.NOOP:
        return min(MAX_BOX_W, text_width(n.name, 10) + 18), NOOP_H
    w = max(text_width(n.name, 12, bold=True), text_width(sub_label(n), 10)) + 22
    return min(MAX_BOX_W, max(72.0, w)), BOX_H


def _crossings(rows: list[list[Item]]) -> int:
    """Pairs of edges that cross between adjacent layers."""
    total = 0
    for L in range(len(rows) - 1):
        below = {id(it): j for j, it in enumerate(rows[L + 1])}
        pairs = sorted((i, below[id(d)]) for i, it in enumerate(rows[L]) for d in it.down)
        for a in range(len(pairs)):
            for b in range(a + 1, len(pairs)):
                total += pairs[a][0] < pairs[b][0] and pairs[a][1] > pairs[b][1]
    return total


def _sweep(rows: list[list[Item]], down: bool) -> None:
    seq = range(1, len(rows)) if down else range(len(rows) - 2, -1, -1)
    for L in seq:
        other = {id(it): i for i, it in enumerate(rows[L - 1 if down else L + 1])}
        keyed = []
        for i, it in enumerate(rows[L]):
            ns = it.up if down else it.down
            bary = sum(other[id(n)] for n in ns) / len(ns) if ns else None
            keyed.append((bary, i, it))
        # Items without neighbours on that side keep their slot; the rest are sorted by barycenter.
        free = sorted((k for k in keyed if k[0] is not None), key=lambda k: (k[0], k[1]))
        out, j = [], 0
        for k in keyed:
            if k[0] is None:
                out.append(k[2])
            else:
                out.append(free[j][2])
                j += 1
        rows[L] = out


def _pava(want: list[float], weight: list[float], sep: list[float]) -> list[float]:
    """min Σ w (x - want)² subject to x[i+1] - x[i] >= sep[i]: isotonic regression on x - offset."""
    off = [0.0]
    for s in sep:
        off.append(off[-1] + s)
    blocks: list[list[float]] = []  # [mean, weight, count]
    for t, w, o in zip(want, weight, off):
        blocks.append([t - o, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    y = [m for m, _, c in blocks for _ in range(c)]
    return [yi + o for yi, o in zip(y, off)]


def _gap(a: Item, b: Item) -> float:
    thin = ("dummy", "lane")
    g = THIN_GAP if a.kind in thin or b.kind in thin else NODE_GAP
    return (max(a.width, a.label_w) + max(b.width, b.label_w)) / 2 + g


def _in_body(graph: StepGraph, body: frozenset[str], it: Item) -> bool:
    """Whether a layout item belongs to a loop body: its steps, the edges among them, inner loops."""
    if it.kind == "step":
        return it.key in body
    if it.kind == "dummy":
        return it.owner[0] in body and it.owner[1] in body
    if it.kind == "lane":
        return graph.loops[it.owner[0]].body <= body
    return False


def _lane_crossings(rows: list[list[Item]], span: range, at: list[int]) -> int:
    """Edges between layers of `span` that a lane inserted at slots `at` would cross."""
    n = 0
    for k, L in enumerate(span[:-1]):
        below = {id(it): j for j, it in enumerate(rows[L + 1])}
        for i, it in enumerate(rows[L]):
            for d in it.down:
                n += (i < at[k]) != (below[id(d)] < at[k + 1])
    return n


def _straighten(rows: list[list[Item]], slots: list[Item], side: int) -> None:
    """Line a lane's slots up at its outermost x, pushing whatever lies beyond outward."""
    x = max(s.x for s in slots) if side == 1 else min(s.x for s in slots)
    for s in slots:
        row = rows[s.layer]
        i = row.index(s)
        s.x = x
        if side == 1:
            for a, b in zip(row[i:], row[i + 1:]):
                b.x = max(b.x, a.x + _gap(a, b))
        else:
            for a, b in zip(row[i::-1], row[i - 1::-1] if i else []):
                b.x = min(b.x, a.x - _gap(b, a))


def lay_out(graph: StepGraph) -> Layout:
    """Steps 1-6 of the module docstring, in order."""
    items, routes, start, rows_n = _items(graph)
    rows = _order(start, rows_n)
    lanes, lane_side = _add_lanes(graph, items, rows)
    _assign_x(rows, lanes, lane_side)
    layer_y, layer_h = _layer_ys(rows, routes)
    return Layout(items=items, rows=rows, routes=routes, lanes=lanes, lane_side=lane_side,
                   layer_y=layer_y, layer_h=layer_h)


def _items(graph: StepGraph) -> tuple[dict[str, Item], list[Route], Item, int]:
    """Layout items (steps, start and end dots, dummies) and the routes of the forward edges."""
    depth = layers(graph)
    items: dict[str, Item] = {}
    rows_n = max(depth.values()) + 2
    for s, n in graph.steps.items():
        w, h = _step_size(n)
        items[s] = Item(s, "step", depth[s] + 1, w, h)
    start = items["\0start"] = Item("\0start", "start", 0, 2 * DOT_R, 2 * DOT_R)
    routes: list[Route] = [Route(None, [start, items[graph.entry]])]
    n_end = 0
    for e in graph.iter_edges():
        if e.kind is EdgeKind.LOOP_BACK:
            continue
        src = items[e.source]
        if e.target == END:
            dst = items[f"\0end{n_end}"] = Item(f"\0end{n_end}", "end", src.layer + 1, 2 * DOT_R + 4, 2 * DOT_R + 4)
            n_end += 1
            rows_n = max(rows_n, dst.layer + 1)
        else:
            dst = items[e.target]
        chain = [src]
        for L in range(src.layer + 1, dst.layer):
            d = Item(f"\0d{len(items)}", "dummy", L, 0.0, 0.0, owner=(e.source, e.target))
            items[d.key] = d
            chain.append(d)
        chain.append(dst)
        routes.append(Route(e, chain))
        if isinstance(graph.transitions[e.source], Branch):  # its label sits just above chain[1]
            chain[1].label_w = max(chain[1].label_w, text_width(edge_label(graph, e), 10) + 10)
    for r in routes:
        for a, b in zip(r.chain, r.chain[1:]):
            a.down.append(b)
            b.up.append(a)
    return items, routes, start, rows_n


def _order(start: Item, rows_n: int) -> list[list[Item]]:
    """Rows of items: DFS discovery order, then barycenter sweeps; the fewest crossings win."""
    rows: list[list[Item]] = [[] for _ in range(rows_n)]
    seen: set[int] = set()
    stack = [start]
    while stack:
        it = stack.pop()
        if id(it) in seen:
            continue
        seen.add(id(it))
        rows[it.layer].append(it)
        stack.extend(reversed(it.down))
    best, best_c = [list(r) for r in rows], _crossings(rows)
    for _ in range(6):
        for down in (True, False):
            _sweep(rows, down)
            c = _crossings(rows)
            if c < best_c:
                best, best_c = [list(r) for r in rows], c
        if best_c == 0:
            break
    return best


def _add_lanes(graph: StepGraph, items: dict[str, Item], rows: list[list[Item]]
               ) -> tuple[dict[str, list[Item]], dict[str, int]]:
    """Loop lanes, inner loops first: one slot per layer, just outside the loop body, on the
    right unless the left crosses fewer edges."""
    lanes: dict[str, list[Item]] = {}
    lane_side: dict[str, int] = {}
    for src, info in sorted(graph.loops.items(), key=lambda kv: (len(kv[1].body), kv[0])):
        span = range(items[info.head].layer, items[src].layer + 1)
        inside = [[i for i, it in enumerate(rows[L]) if _in_body(graph, info.body, it)] for L in span]
        right = [max(ix, default=len(rows[L]) - 1) + 1 for ix, L in zip(inside, span)]
        left = [min(ix, default=0) for ix in inside]
        side = 1
        if len(span) > 1 and _lane_crossings(rows, span, left) < _lane_crossings(rows, span, right):
            side = -1
        slots: list[Item] = []
        for L, at in zip(span, right if side == 1 else left):
            width = LANE_W if len(span) > 1 else 30 + text_width(f"≤{info.max_iterations}", 10)
            lane = Item(f"\0lane{src}\0{L}", "lane", L, width, 0.0, owner=(src,))
            rows[L].insert(at, lane)
            if slots:
                slots[-1].down.append(lane)
                lane.up.append(slots[-1])
            slots.append(lane)
        lanes[src], lane_side[src] = slots, side
    return lanes, lane_side


def _assign_x(rows: list[list[Item]], lanes: dict[str, list[Item]], lane_side: dict[str, int]) -> None:
    """Pack, then alternate weighted-mean passes, each layer solved exactly under its spacing."""
    for row in rows:
        x = 0.0
        for i, it in enumerate(row):
            x += _gap(row[i - 1], it) if i else 0.0
            it.x = x
    thin = ("dummy", "lane")

    def w_of(a: Item, b: Item) -> float:
        if a.kind == b.kind == "lane":
            return 20.0
        return 8.0 if a.kind in thin and b.kind in thin else 2.0 if a.kind in thin or b.kind in thin else 1.0

    for it_n in range(10):
        order = range(len(rows)) if it_n % 2 == 0 else range(len(rows) - 1, -1, -1)
        for L in order:
            row = rows[L]
            if not row:
                continue
            want, weight = [], []
            for it in row:
                ns = it.up if it_n % 2 == 0 else it.down
                ns = ns or (it.down if it_n % 2 == 0 else it.up)
                if ns:
                    ws = [w_of(it, n) for n in ns]
                    want.append(sum(n.x * w for n, w in zip(ns, ws)) / sum(ws))
                    weight.append(sum(ws))
                else:
                    want.append(it.x)
                    weight.append(0.1)
            xs = _pava(want, weight, [_gap(a, b) for a, b in zip(row, row[1:])])
            for it, x in zip(row, xs):
                it.x = x
    for _ in range(2):
        for src, slots in lanes.items():
            _straighten(rows, slots, lane_side[src])


def _layer_ys(rows: list[list[Item]], routes: list[Route]) -> tuple[list[float], list[float]]:
    """Top and height of each layer band."""
    layer_h = [max((it.height for it in row), default=0.0) for row in rows]
    # Gaps: room for edge labels below layers whose edges carry them, more below a decision.
    gap = [LAYER_GAP] * len(rows)
    gap[0] = START_GAP
    for r in routes:
        src = r.chain[0]
        if r.edge is not None and r.edge.kind not in (EdgeKind.NEXT, EdgeKind.FORK):
            gap[src.layer] = max(gap[src.layer], LABEL_GAP + (10 if r.edge.kind is not EdgeKind.LOOP_EXIT else 0))
    layer_y, y = [], 0.0
    for h, g in zip(layer_h, gap):
        layer_y.append(y)
        y += h + g
    return layer_y, layer_h
