"""Pictures of a compiled step graph: Mermaid, Graphviz DOT, and a self-contained SVG.

    to_mermaid(graph)          `flowchart TD` text (GitHub, docs)
    to_dot(graph)              Graphviz DOT text (`dot -Tpng`)
    to_svg(graph, title=...)   an SVG drawn here, in pure Python: no graphviz, no matplotlib
    write_picture(graph, path) any of the above by suffix (.mmd, .dot, .svg; .png with graphviz)
    agent_colors(graph)        the agent -> colour map all three share

All three say the same thing: one node per step (LLM steps rounded, tool calls square and
light, no-ops small), coloured by agent in `graph.agents` order, edges labelled by kind
(`fork`, `p=0.30`, `default p=0.40`, `loop ≤N`, `exit`), fan-out regions grouped.

The SVG layout is a small Sugiyama-style layered drawing:

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

Text widths are estimated per character (no font metrics here); long names are cut with "…"
and kept whole in each box's <title> tooltip.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from agentflow.graph.model import END, Branch, Edge, EdgeKind, Fork, Loop, StepGraph, StepKind, StepNode

__all__ = ["PALETTE", "agent_colors", "layers", "to_dot", "to_mermaid", "to_svg", "write_picture"]

# Qualitative, light enough for dark text. Agents take them in `graph.agents` order, cycling.
PALETTE = (
    "#7eb0d5", "#fd7f6f", "#b2e061", "#bd7ebe", "#ffb55a", "#ffee65",
    "#8bd3c7", "#beb9db", "#fdcce5", "#c9b18f", "#a0c4a4", "#f2a7a2",
)
TEXT = "#1f2328"
EDGE = "#57606a"
LOOP = "#8250df"
TOOL_STROKE = "#8c959f"
NEUTRAL = "#f6f8fa"  # tool steps without an agent
NOOP_FILL = "#d0d7de"
SUFFIXES = (".svg", ".mmd", ".dot", ".png")


# ---- shared -------------------------------------------------------------------------------------


def agent_colors(graph: StepGraph) -> dict[str, str]:
    """Agent -> fill colour: `graph.agents` in order, then tool-only callers in step order."""
    names = list(graph.agents)
    for s in graph.steps.values():
        if s.agent is not None and s.agent not in names:
            names.append(s.agent)
    return {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(names)}


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


def _mix(color: str, other: str, t: float) -> str:
    """`color` moved a fraction `t` toward `other`."""
    a = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(other[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def _stroke(color: str) -> str:
    return _mix(color, "#000000", 0.45)


def _light(color: str) -> str:
    return _mix(color, "#ffffff", 0.7)


def node_ids(graph: StepGraph) -> dict[str, str]:
    """Step -> an identifier safe in Mermaid, DOT and XML: `s_` + [A-Za-z0-9_], made unique."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for s in graph.steps:
        base = "s_" + re.sub(r"[^A-Za-z0-9_]", "_", s)
        nid, k = base, 2
        while nid in used:
            nid, k = f"{base}_{k}", k + 1
        used.add(nid)
        out[s] = nid
    return out


def edge_label(graph: StepGraph, e: Edge) -> str:
    match e.kind:
        case EdgeKind.FORK:
            return "fork"
        case EdgeKind.BRANCH:
            return f"p={e.probability:.2f}"
        case EdgeKind.DEFAULT:
            return f"default p={e.probability:.2f}"
        case EdgeKind.LOOP_BACK:
            return f"loop ≤{_max_iterations(graph, e.source)}"
        case EdgeKind.LOOP_EXIT:
            return "exit"
    return ""


def _max_iterations(graph: StepGraph, source: str) -> int:
    t = graph.transitions[source]
    assert isinstance(t, Loop)
    return t.max_iterations


def _sub_label(s: StepNode) -> str:
    if s.kind is StepKind.LLM:
        return s.agent or ""
    if s.kind is StepKind.TOOL:
        return f"{s.tool}()"
    return ""


def _style_class(s: StepNode, index: dict[str, int]) -> str:
    if s.kind is StepKind.NOOP:
        return "noop"
    if s.kind is StepKind.TOOL:
        return f"tool{index[s.agent]}" if s.agent is not None else "tool"
    return f"agent{index[s.agent]}" if s.agent is not None else "tool"


def _region_children(graph: StepGraph) -> tuple[dict[str | None, list[str]], dict[str | None, list[str]]]:
    """(region fork or None -> steps directly in it, region fork or None -> child region forks)."""
    steps: dict[str | None, list[str]] = {None: []}
    kids: dict[str | None, list[str]] = {None: []}
    for f in graph.regions:
        steps.setdefault(f, [])
        kids.setdefault(f, [])
    for s in graph.steps:
        steps[graph.region_of[s]].append(s)
    for f, r in graph.regions.items():
        kids[r.parent].append(f)
    return steps, kids


# ---- Mermaid ------------------------------------------------------------------------------------


def _mm_text(s: str) -> str:
    """Text for inside a quoted Mermaid label: entity codes for what Mermaid would parse."""
    s = s.replace("#", "#35;")
    for ch, code in (('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("&", "#amp;"), ("`", "#96;"), ("|", "#124;")):
        s = s.replace(ch, code)
    return s


def to_mermaid(graph: StepGraph) -> str:
    """A Mermaid `flowchart TD` of the graph; fan-out regions are subgraphs."""
    ids = node_ids(graph)
    colors = agent_colors(graph)
    index = {a: i for i, a in enumerate(colors)}
    lines = ["---", f"title: {json.dumps(graph.name, ensure_ascii=False)}", "---", "flowchart TD"]

    def node(s: str, pad: str) -> str:
        n = graph.steps[s]
        text = _mm_text(s) + (f"<br/>{_mm_text(_sub_label(n))}" if _sub_label(n) else "")
        shape = {StepKind.LLM: ('(["', '"])'), StepKind.TOOL: ('[["', '"]]'), StepKind.NOOP: ('(("', '"))')}
        a, b = shape[n.kind]
        return f"{pad}{ids[s]}{a}{text}{b}"

    members, kids = _region_children(graph)

    def region(f: str, pad: str) -> None:
        lines.append(f'{pad}subgraph r_{ids[f][2:]}["fan-out: {_mm_text(f)}"]')
        for s in members[f]:
            lines.append(f"{pad}    {ids[s]}")
        for k in kids[f]:
            region(k, pad + "    ")
        lines.append(f"{pad}end")

    for s in graph.steps:
        lines.append(node(s, "    "))
    for f in kids[None]:
        region(f, "    ")
    has_end = False
    for e in graph.iter_edges():
        target = "terminal" if e.target == END else ids[e.target]
        has_end |= e.target == END
        label = edge_label(graph, e)
        arrow = "-.->" if e.kind is EdgeKind.LOOP_BACK else "-->"
        lines.append(f"    {ids[e.source]} {arrow}" + (f'|"{_mm_text(label)}"|' if label else "") + f" {target}")
    if has_end:
        lines.append('    terminal((("END")))')
    by_class: dict[str, list[str]] = {}
    for s, n in graph.steps.items():
        by_class.setdefault(_style_class(n, index), []).append(ids[s])
    defs = {"noop": f"fill:{NOOP_FILL},stroke:{TOOL_STROKE},color:{TEXT}",
            "tool": f"fill:{NEUTRAL},stroke:{TOOL_STROKE},color:{TEXT}",
            "terminal": f"fill:{TEXT},stroke:{TEXT},color:#ffffff"}
    for a, i in index.items():
        c = colors[a]
        defs[f"agent{i}"] = f"fill:{c},stroke:{_stroke(c)},color:{TEXT}"
        defs[f"tool{i}"] = f"fill:{_light(c)},stroke:{TOOL_STROKE},color:{TEXT}"
    used = sorted(by_class, key=lambda k: list(defs).index(k))
    for k in used:
        lines.append(f"    classDef {k} {defs[k]}")
    for k in used:
        lines.append(f"    class {','.join(by_class[k])} {k}")
    if has_end:
        lines.append(f"    classDef terminal {defs['terminal']}")
        lines.append("    class terminal terminal")
    return "\n".join(lines) + "\n"


# ---- DOT ----------------------------------------------------------------------------------------


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: StepGraph) -> str:
    """Graphviz DOT of the graph: fan-out regions are clusters, loop back edges dashed."""
    ids = node_ids(graph)
    colors = agent_colors(graph)
    lines = [
        f"digraph {_dot_str(graph.name)} {{",
        f"  graph [rankdir=TB, label={_dot_str(graph.name)}, labelloc=t, fontname=Helvetica, nodesep=0.35];",
        f'  node [fontname=Helvetica, fontsize=11, fontcolor="{TEXT}", style=filled, penwidth=1.2];',
        f'  edge [fontname=Helvetica, fontsize=9, color="{EDGE}", fontcolor="{EDGE}"];',
    ]

    def node(s: str, pad: str) -> str:
        n = graph.steps[s]
        sub = _sub_label(n)
        label = _dot_str(s + ("\n" + sub if sub else ""))
        c = colors.get(n.agent) if n.agent is not None else None
        if n.kind is StepKind.LLM:
            stroke = _stroke(c) if c else TOOL_STROKE
            attrs = f'shape=box, style="rounded,filled", fillcolor="{c or NEUTRAL}", color="{stroke}"'
        elif n.kind is StepKind.TOOL:
            attrs = f'shape=box, fillcolor="{_light(c) if c else NEUTRAL}", color="{TOOL_STROKE}"'
        else:
            attrs = f'shape=circle, fixedsize=false, fontsize=9, fillcolor="{NOOP_FILL}", color="{TOOL_STROKE}"'
        return f"{pad}{ids[s]} [label={label}, {attrs}];"

    members, kids = _region_children(graph)

    def region(f: str, pad: str) -> None:
        lines.append(f"{pad}subgraph cluster_{ids[f][2:]} {{")
        lines.append(f'{pad}  label={_dot_str("fan-out: " + f)}; style="rounded,dashed"; color="#afb8c1"; '
                     f'fontsize=9; fontcolor="{EDGE}";')
        for s in members[f]:
            lines.append(f"{pad}  {ids[s]};")
        for k in kids[f]:
            region(k, pad + "  ")
        lines.append(f"{pad}}}")

    for s in graph.steps:
        lines.append(node(s, "  "))
    for f in kids[None]:
        region(f, "  ")
    has_end = False
    for e in graph.iter_edges():
        target = "terminal" if e.target == END else ids[e.target]
        has_end |= e.target == END
        attrs = []
        label = edge_label(graph, e)
        if label:
            attrs.append(f"label={_dot_str(label)}")
        if e.kind is EdgeKind.LOOP_BACK:
            attrs.append(f'style=dashed, constraint=false, color="{LOOP}", fontcolor="{LOOP}"')
        elif e.kind is EdgeKind.FORK:
            attrs.append("penwidth=1.6")
        lines.append(f"  {ids[e.source]} -> {target}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    if has_end:
        lines.append(f'  terminal [label="", shape=doublecircle, width=0.18, fillcolor="{TEXT}", color="{TEXT}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- SVG layout ---------------------------------------------------------------------------------

BOX_H = 40.0
NOOP_H = 20.0
DOT_R = 7.0
LAYER_GAP = 44.0
LABEL_GAP = 56.0
START_GAP = 30.0
NODE_GAP = 30.0
THIN_GAP = 14.0
LANE_W = 26.0
MARGIN = 24.0
MAX_BOX_W = 240.0


def _text_w(s: str, size: float, *, bold: bool = False) -> float:
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


def _fit(s: str, size: float, width: float, *, bold: bool = False) -> str:
    if _text_w(s, size, bold=bold) <= width:
        return s
    while s and _text_w(s + "…", size, bold=bold) > width:
        s = s[:-1]
    return s + "…"


@dataclass(slots=True, eq=False)
class _Item:
    key: str
    kind: str  # "step", "start", "end", "dummy", "lane"
    layer: int
    width: float
    height: float
    owner: tuple[str, ...] = ()  # dummy: (source, target) of its edge; lane: (loop source,)
    label_w: float = 0.0  # room for the label of a branch edge that enters this item
    x: float = 0.0
    up: list["_Item"] = field(default_factory=list)  # neighbours in the layer above
    down: list["_Item"] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Route:
    edge: Edge | None  # None: the start dot's edge
    chain: list[_Item]  # source, dummies..., target


@dataclass(slots=True, eq=False)
class _Layout:
    items: dict[str, _Item]
    rows: list[list[_Item]]
    routes: list[_Route]
    lanes: dict[str, list[_Item]]  # loop source -> its lane slots, head layer first
    lane_side: dict[str, int]  # loop source -> +1 (lane on the right) or -1 (left)
    layer_y: list[float]  # top of each layer band
    layer_h: list[float]


def _step_size(n: StepNode) -> tuple[float, float]:
    if n.kind is StepKind.NOOP:
        return min(MAX_BOX_W, _text_w(n.name, 10) + 18), NOOP_H
    w = max(_text_w(n.name, 12, bold=True), _text_w(_sub_label(n), 10)) + 22
    return min(MAX_BOX_W, max(72.0, w)), BOX_H


def _crossings(rows: list[list[_Item]]) -> int:
    """Pairs of edges that cross between adjacent layers."""
    total = 0
    for L in range(len(rows) - 1):
        below = {id(it): j for j, it in enumerate(rows[L + 1])}
        pairs = sorted((i, below[id(d)]) for i, it in enumerate(rows[L]) for d in it.down)
        for a in range(len(pairs)):
            for b in range(a + 1, len(pairs)):
                total += pairs[a][0] < pairs[b][0] and pairs[a][1] > pairs[b][1]
    return total


def _sweep(rows: list[list[_Item]], down: bool) -> None:
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


def _gap(a: _Item, b: _Item) -> float:
    thin = ("dummy", "lane")
    g = THIN_GAP if a.kind in thin or b.kind in thin else NODE_GAP
    return (max(a.width, a.label_w) + max(b.width, b.label_w)) / 2 + g


def _in_body(graph: StepGraph, body: frozenset[str], it: _Item) -> bool:
    """Whether a layout item belongs to a loop body: its steps, the edges among them, inner loops."""
    if it.kind == "step":
        return it.key in body
    if it.kind == "dummy":
        return it.owner[0] in body and it.owner[1] in body
    if it.kind == "lane":
        return graph.loops[it.owner[0]].body <= body
    return False


def _lane_crossings(rows: list[list[_Item]], span: range, at: list[int]) -> int:
    """Edges between layers of `span` that a lane inserted at slots `at` would cross."""
    n = 0
    for k, L in enumerate(span[:-1]):
        below = {id(it): j for j, it in enumerate(rows[L + 1])}
        for i, it in enumerate(rows[L]):
            for d in it.down:
                n += (i < at[k]) != (below[id(d)] < at[k + 1])
    return n


def _straighten(rows: list[list[_Item]], slots: list[_Item], side: int) -> None:
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


def _layout(graph: StepGraph) -> _Layout:
    items, routes, start, rows_n = _items(graph)
    rows = _order(start, rows_n)
    lanes, lane_side = _add_lanes(graph, items, rows)
    _assign_x(rows, lanes, lane_side)
    layer_y, layer_h = _layer_ys(rows, routes)
    return _Layout(items=items, rows=rows, routes=routes, lanes=lanes, lane_side=lane_side,
                   layer_y=layer_y, layer_h=layer_h)


def _items(graph: StepGraph) -> tuple[dict[str, _Item], list[_Route], _Item, int]:
    """Layout items (steps, start and end dots, dummies) and the routes of the forward edges."""
    depth = layers(graph)
    items: dict[str, _Item] = {}
    rows_n = max(depth.values()) + 2
    for s, n in graph.steps.items():
        w, h = _step_size(n)
        items[s] = _Item(s, "step", depth[s] + 1, w, h)
    start = items["\0start"] = _Item("\0start", "start", 0, 2 * DOT_R, 2 * DOT_R)
    routes: list[_Route] = [_Route(None, [start, items[graph.entry]])]
    n_end = 0
    for e in graph.iter_edges():
        if e.kind is EdgeKind.LOOP_BACK:
            continue
        src = items[e.source]
        if e.target == END:
            dst = items[f"\0end{n_end}"] = _Item(f"\0end{n_end}", "end", src.layer + 1, 2 * DOT_R + 4, 2 * DOT_R + 4)
            n_end += 1
            rows_n = max(rows_n, dst.layer + 1)
        else:
            dst = items[e.target]
        chain = [src]
        for L in range(src.layer + 1, dst.layer):
            d = _Item(f"\0d{len(items)}", "dummy", L, 0.0, 0.0, owner=(e.source, e.target))
            items[d.key] = d
            chain.append(d)
        chain.append(dst)
        routes.append(_Route(e, chain))
        if isinstance(graph.transitions[e.source], Branch):  # its label sits just above chain[1]
            chain[1].label_w = max(chain[1].label_w, _text_w(edge_label(graph, e), 10) + 10)
    for r in routes:
        for a, b in zip(r.chain, r.chain[1:]):
            a.down.append(b)
            b.up.append(a)
    return items, routes, start, rows_n


def _order(start: _Item, rows_n: int) -> list[list[_Item]]:
    """Rows of items: DFS discovery order, then barycenter sweeps; the fewest crossings win."""
    rows: list[list[_Item]] = [[] for _ in range(rows_n)]
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


def _add_lanes(graph: StepGraph, items: dict[str, _Item], rows: list[list[_Item]]
               ) -> tuple[dict[str, list[_Item]], dict[str, int]]:
    """Loop lanes, inner loops first: one slot per layer, just outside the loop body, on the
    right unless the left crosses fewer edges."""
    lanes: dict[str, list[_Item]] = {}
    lane_side: dict[str, int] = {}
    for src, info in sorted(graph.loops.items(), key=lambda kv: (len(kv[1].body), kv[0])):
        span = range(items[info.head].layer, items[src].layer + 1)
        inside = [[i for i, it in enumerate(rows[L]) if _in_body(graph, info.body, it)] for L in span]
        right = [max(ix, default=len(rows[L]) - 1) + 1 for ix, L in zip(inside, span)]
        left = [min(ix, default=0) for ix in inside]
        side = 1
        if len(span) > 1 and _lane_crossings(rows, span, left) < _lane_crossings(rows, span, right):
            side = -1
        slots: list[_Item] = []
        for L, at in zip(span, right if side == 1 else left):
            width = LANE_W if len(span) > 1 else 30 + _text_w(f"≤{info.max_iterations}", 10)
            lane = _Item(f"\0lane{src}\0{L}", "lane", L, width, 0.0, owner=(src,))
            rows[L].insert(at, lane)
            if slots:
                slots[-1].down.append(lane)
                lane.up.append(slots[-1])
            slots.append(lane)
        lanes[src], lane_side[src] = slots, side
    return lanes, lane_side


def _assign_x(rows: list[list[_Item]], lanes: dict[str, list[_Item]], lane_side: dict[str, int]) -> None:
    """Pack, then alternate weighted-mean passes, each layer solved exactly under its spacing."""
    for row in rows:
        x = 0.0
        for i, it in enumerate(row):
            x += _gap(row[i - 1], it) if i else 0.0
            it.x = x
    thin = ("dummy", "lane")

    def w_of(a: _Item, b: _Item) -> float:
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


def _layer_ys(rows: list[list[_Item]], routes: list[_Route]) -> tuple[list[float], list[float]]:
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


# ---- SVG drawing --------------------------------------------------------------------------------


def _e(s: str) -> str:
    return html.escape(s, quote=True)


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _spread(n: int, width: float) -> list[float]:
    """Offsets of n ports across a box side of `width`, centred, at most 14 apart."""
    if n <= 1:
        return [0.0] * n
    step = min(14.0, width * 0.7 / (n - 1))
    return [(i - (n - 1) / 2) * step for i in range(n)]


def _curve(points: list[tuple[float, float]]) -> str:
    """Through the points, vertical tangents at each: S-curves between layers, lines within."""
    (x0, y0), d = points[0], [f"M{_f(points[0][0])},{_f(points[0][1])}"]
    for x1, y1 in points[1:]:
        if abs(x1 - x0) < 0.5:
            d.append(f"L{_f(x1)},{_f(y1)}")
        else:
            ym = (y0 + y1) / 2
            d.append(f"C{_f(x0)},{_f(ym)} {_f(x1)},{_f(ym)} {_f(x1)},{_f(y1)}")
        x0, y0 = x1, y1
    return " ".join(d)


def _rounded(points: list[tuple[float, float]], r: float = 10.0) -> str:
    """A polyline with its corners rounded off."""
    d = [f"M{_f(points[0][0])},{_f(points[0][1])}"]
    for (ax, ay), (bx, by), (cx, cy) in zip(points, points[1:], points[2:]):
        l1, l2 = abs(bx - ax) + abs(by - ay), abs(cx - bx) + abs(cy - by)
        rr = min(r, l1 / 2, l2 / 2)
        px = bx - (bx - ax) / l1 * rr if l1 else bx
        py = by - (by - ay) / l1 * rr if l1 else by
        qx = bx + (cx - bx) / l2 * rr if l2 else bx
        qy = by + (cy - by) / l2 * rr if l2 else by
        d.append(f"L{_f(px)},{_f(py)} Q{_f(bx)},{_f(by)} {_f(qx)},{_f(qy)}")
    d.append(f"L{_f(points[-1][0])},{_f(points[-1][1])}")
    return " ".join(d)


def _label(x: float, y: float, text: str, color: str, *, anchor: str = "middle") -> str:
    """An edge label on a white plate, so the line under it does not show through."""
    w = _text_w(text, 10) + 4
    x0 = x - w / 2 if anchor == "middle" else x - 2
    return (f'<g class="edge-label"><rect x="{_f(x0)}" y="{_f(y - 6.5)}" width="{_f(w)}" height="13" rx="2" '
            f'fill="#ffffff" fill-opacity="0.9"/><text x="{_f(x)}" y="{_f(y + 3.5)}" text-anchor="{anchor}" '
            f'font-size="10" fill="{color}">{_e(text)}</text></g>')


def to_svg(graph: StepGraph, *, title: str | None = None) -> str:
    """A self-contained SVG picture of the graph (layout: see the module docstring)."""
    lay = _layout(graph)
    colors = agent_colors(graph)
    ids = node_ids(graph)
    title = graph.name if title is None else title
    mid = re.sub(r"[^A-Za-z0-9_-]", "_", graph.name)  # marker ids, unique per graph in one page

    # Where everything is: centre x, centre y of each item.
    def cy(it: _Item) -> float:
        return lay.layer_y[it.layer] + lay.layer_h[it.layer] / 2

    joins = {r.join for r in graph.regions.values() if r.join is not None}

    def bottom(it: _Item) -> float:
        y = cy(it) + it.height / 2
        if it.kind == "step":
            t = graph.transitions[it.key]
            y += 8 if isinstance(t, Fork) else 9 if isinstance(t, Branch) else 0
        return y

    def top(it: _Item) -> float:
        return cy(it) - it.height / 2 - (8 if it.key in joins and it.kind == "step" else 0)

    # Edge paths (ports spread along the box sides, ordered by where the edge goes).
    out_port: dict[int, float] = {}
    in_port: dict[int, float] = {}
    by_src: dict[int, list[_Route]] = {}
    by_dst: dict[int, list[_Route]] = {}
    for r in lay.routes:
        by_src.setdefault(id(r.chain[0]), []).append(r)
        by_dst.setdefault(id(r.chain[-1]), []).append(r)
    for group, port, nxt in ((by_src, out_port, 1), (by_dst, in_port, -2)):
        for rs in group.values():
            owner = rs[0].chain[0] if nxt == 1 else rs[0].chain[-1]
            branchy = owner.kind == "step" and isinstance(graph.transitions[owner.key], Branch) and nxt == 1
            rs = sorted(rs, key=lambda r: r.chain[nxt].x)
            for r, off in zip(rs, [0.0] * len(rs) if branchy else _spread(len(rs), owner.width)):
                port[id(r)] = owner.x + off

    body: list[str] = []
    labels: list[str] = []
    xs: list[float] = []  # horizontal extent of everything drawn, for the canvas
    for r in lay.routes:
        a, b = r.chain[0], r.chain[-1]
        pts = [(out_port[id(r)], bottom(a))]
        for d in r.chain[1:-1]:
            pts += [(d.x, lay.layer_y[d.layer]), (d.x, lay.layer_y[d.layer] + lay.layer_h[d.layer])]
        pts.append((in_port[id(r)], top(b) - 1))
        body.append(f'<path d="{_curve(pts)}" fill="none" stroke="{EDGE}" stroke-width="1.3" '
                    f'marker-end="url(#{mid}-arrow)"/>')
        text = edge_label(graph, r.edge) if r.edge is not None and r.edge.kind is not EdgeKind.FORK else ""
        if text:
            # Branch labels near the next hop (their fan starts at one point); others near the source.
            (x0, y0), (x1, y1) = pts[0], pts[1]
            t = 0.74 if r.edge.kind in (EdgeKind.BRANCH, EdgeKind.DEFAULT) else 0.4
            lx, ly = x0 + (x1 - x0) * (3 * t * t - 2 * t ** 3), y0 + (y1 - y0) * (1.5 * t * (1 - t) + t ** 3)
            labels.append(_label(lx, ly, text, EDGE))
            xs += [lx - _text_w(text, 10) / 2 - 3, lx + _text_w(text, 10) / 2 + 3]

    for src, slots in lay.lanes.items():
        s_it, h_it = lay.items[src], lay.items[graph.loops[src].head]
        side = lay.lane_side[src]
        text = f"≤{_max_iterations(graph, src)}"
        lx = slots[0].x
        xs += [lx - slots[0].width / 2, lx + slots[0].width / 2]
        if s_it is h_it:  # a one-step loop: a small hook on its right side, the label beside it
            x0, y0 = s_it.x + s_it.width / 2, cy(s_it)
            d = _rounded([(x0, y0 + 8), (x0 + 16, y0 + 8), (x0 + 16, y0 - 8), (x0 + 1, y0 - 8)], 6.0)
            labels.append(_label(x0 + 20, y0, text, LOOP, anchor="start"))
        else:  # out of the source's side, along the lane, into the head's side
            sx, hx = s_it.x + side * s_it.width / 2, h_it.x + side * (h_it.width / 2 + 1)
            d = _rounded([(sx, cy(s_it)), (lx, cy(s_it)), (lx, cy(h_it)), (hx, cy(h_it))], 10.0)
            labels.append(_label(lx, (cy(s_it) + cy(h_it)) / 2, text, LOOP))
        body.append(f'<path d="{d}" fill="none" stroke="{LOOP}" stroke-width="1.3" stroke-dasharray="6 4" '
                    f'marker-end="url(#{mid}-loop)"/>')

    nodes: list[str] = []
    for it in lay.items.values():
        x, y = it.x, cy(it)
        if it.kind == "start":
            nodes.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(DOT_R)}" fill="{TEXT}">'
                         f"<title>start</title></circle>")
        elif it.kind == "end":
            nodes.append(f'<g><title>end</title><circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(DOT_R + 2)}" fill="#ffffff" '
                         f'stroke="{TEXT}" stroke-width="1.5"/><circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(DOT_R - 2)}" '
                         f'fill="{TEXT}"/></g>')
        elif it.kind == "step":
            nodes.append(_step_svg(graph, graph.steps[it.key], ids[it.key], x, y, it.width, it.height, colors, joins))
        if it.kind in ("step", "start", "end"):
            xs += [x - it.width / 2, x + it.width / 2]

    # Canvas: title and legend on top, the drawing below.
    left, right = min(xs), max(xs)
    legend, legend_h = _legend(graph, colors, max(right - left, 320.0))
    width = max(right - left, legend[1]) + 2 * MARGIN
    top_h = MARGIN + (26 if title else 0) + legend_h + 18
    height = top_h + lay.layer_y[-1] + lay.layer_h[-1] + MARGIN
    dx, dy = MARGIN - left, top_h
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" font-family="Helvetica, Arial, sans-serif" fill="{TEXT}">',
        f"<title>{_e(title or graph.name)}</title>",
        "<defs>",
        f'<marker id="{mid}-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE}"/></marker>',
        f'<marker id="{mid}-loop" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{LOOP}"/></marker>',
        "</defs>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    if title:
        head.append(f'<text x="{_f(MARGIN)}" y="{_f(MARGIN + 17.5)}" font-size="16" font-weight="bold">'
                    f'{_e(title)}</text>')
    head.append(f'<g class="legend" transform="translate({_f(MARGIN)},{_f(MARGIN + (26 if title else 0))})">')
    head += legend[0]
    head.append("</g>")
    head.append(f'<g class="graph" transform="translate({_f(dx)},{_f(dy)})">')
    return "\n".join(head + body + nodes + labels + ["</g>", "</svg>"]) + "\n"


def _step_svg(graph: StepGraph, n: StepNode, nid: str, x: float, y: float, w: float, h: float,
              colors: dict[str, str], joins: set[str | None]) -> str:
    c = colors.get(n.agent) if n.agent is not None else None
    x0, y0 = x - w / 2, y - h / 2
    out = [f'<g class="step" id="{nid}" data-step="{_e(n.name)}" data-kind="{n.kind.value}">',
           f"<title>{_e(n.name)}{' — ' + _e(_sub_label(n)) if _sub_label(n) else ''}</title>"]
    if n.kind is StepKind.NOOP:
        out.append(f'<rect x="{_f(x0)}" y="{_f(y0)}" width="{_f(w)}" height="{_f(h)}" rx="{_f(h / 2)}" '
                   f'fill="{NOOP_FILL}" stroke="{TOOL_STROKE}"/>')
        out.append(f'<text x="{_f(x)}" y="{_f(y + 3.5)}" text-anchor="middle" '
                   f'font-size="10">{_e(_fit(n.name, 10, w - 10))}</text>')
    else:
        if n.kind is StepKind.LLM:
            fill, stroke, rx, extra = c or NEUTRAL, _stroke(c) if c else TOOL_STROKE, 12, ""
        else:
            fill, stroke, rx, extra = _light(c) if c else NEUTRAL, TOOL_STROKE, 3, ""
        if n.name == graph.entry:
            extra = ' stroke-width="2"'
        out.append(f'<rect x="{_f(x0)}" y="{_f(y0)}" width="{_f(w)}" height="{_f(h)}" rx="{rx}" '
                   f'fill="{fill}" stroke="{stroke}"{extra}/>')
        if n.kind is StepKind.TOOL:  # subroutine bars, as in flowcharts
            for bx in (x0 + 5, x0 + w - 5):
                out.append(f'<line x1="{_f(bx)}" y1="{_f(y0)}" x2="{_f(bx)}" y2="{_f(y0 + h)}" '
                           f'stroke="{TOOL_STROKE}"/>')
        out.append(f'<text x="{_f(x)}" y="{_f(y - 2.8)}" text-anchor="middle" '
                   f'font-size="12" font-weight="bold">{_e(_fit(n.name, 12, w - 14, bold=True))}</text>')
        sub = _sub_label(n)
        style = ' font-family="Menlo, Consolas, monospace"' if n.kind is StepKind.TOOL else ""
        out.append(f'<text x="{_f(x)}" y="{_f(y + 12.5)}" text-anchor="middle" '
                   f'font-size="10" fill="#424a53"{style}>{_e(_fit(sub, 10, w - 14))}</text>')
    t = graph.transitions[n.name]
    if isinstance(t, Fork):  # a fan-out bar: every branch starts
        out.append(f'<rect x="{_f(x - w * 0.4)}" y="{_f(y + h / 2 + 4)}" width="{_f(w * 0.8)}" height="4" '
                   f'rx="1" fill="{TEXT}"/>')
    elif isinstance(t, Branch):  # a decision diamond: exactly one case
        yb = y + h / 2
        out.append(f'<path d="M{_f(x)},{_f(yb)} L{_f(x + 6)},{_f(yb + 5)} L{_f(x)},{_f(yb + 10)} '
                   f'L{_f(x - 6)},{_f(yb + 5)} z" fill="#ffffff" stroke="{TEXT}"/>')
    if n.name in joins:  # a join bar: waits for all branches
        out.append(f'<rect x="{_f(x - w * 0.4)}" y="{_f(y - h / 2 - 8)}" width="{_f(w * 0.8)}" height="4" '
                   f'rx="1" fill="{TEXT}"/>')
    out.append("</g>")
    return "\n".join(out)


def _legend(graph: StepGraph, colors: dict[str, str], width: float) -> tuple[tuple[list[str], float], float]:
    """((svg elements, used width), height): agent swatches, then the key to shapes, wrapped."""
    entries: list[tuple[str, str, float]] = []  # (svg of the swatch at 0,0, text, text x)
    for a, c in colors.items():
        entries.append((f'<rect x="0" y="-7" width="22" height="14" rx="5" fill="{c}" stroke="{_stroke(c)}"/>', a, 28))
    kinds = {s.kind for s in graph.steps.values()}
    if StepKind.TOOL in kinds:
        entries.append((f'<rect x="0" y="-7" width="22" height="14" rx="1" fill="{NEUTRAL}" stroke="{TOOL_STROKE}"/>'
                        f'<line x1="3" y1="-7" x2="3" y2="7" stroke="{TOOL_STROKE}"/>'
                        f'<line x1="19" y1="-7" x2="19" y2="7" stroke="{TOOL_STROKE}"/>', "tool call", 28))
    if graph.loops:
        entries.append((f'<line x1="0" y1="0" x2="22" y2="0" stroke="{LOOP}" stroke-width="1.5" '
                        f'stroke-dasharray="6 4"/>', "loop back (≤ max iterations)", 28))
    if graph.regions:
        entries.append((f'<rect x="0" y="-2" width="22" height="4" rx="1" fill="{TEXT}"/>', "fan-out / join", 28))
    out: list[str] = []
    x = y = used = 0.0
    for swatch, text, tx in entries:
        w = tx + _text_w(text, 11) + 18
        if x > 0 and x + w > width:
            x, y = 0.0, y + 20
        out.append(f'<g class="legend-entry" transform="translate({_f(x)},{_f(y + 7)})">{swatch}'
                   f'<text x="{tx}" y="4" font-size="11">{_e(text)}</text></g>')
        x += w
        used = max(used, x - 18)
    return (out, used), (y + 14 if entries else 0.0)


# ---- files --------------------------------------------------------------------------------------


def write_picture(graph: StepGraph, path: str | Path) -> Path:
    """Write a picture of `graph`, in the format its suffix names; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png" and shutil.which("dot") is None:
        raise ValueError(f"cannot write '{path}': .png needs the graphviz 'dot' binary on PATH; "
                         f"use one of .svg, .mmd, .dot, or install graphviz")
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot write '{path}': unknown picture suffix '{path.suffix}'; "
                         f"use one of {', '.join(SUFFIXES)} (.png needs graphviz)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        subprocess.run(["dot", "-Tpng", "-o", str(path)], input=to_dot(graph).encode(), check=True)
    else:
        text = {".svg": to_svg, ".mmd": to_mermaid, ".dot": to_dot}[suffix](graph)
        path.write_text(text, encoding="utf-8")
    return path
