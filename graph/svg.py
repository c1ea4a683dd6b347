"""The SVG picture of a step graph, drawn in pure Python: no graphviz, no matplotlib.

`to_svg` reads positions from `layout.lay_out` and only turns them into markup: edge paths
(ports spread along the box sides, S-curves between layers, rounded loop lanes), step boxes
(shape by step kind, fill by agent, fan-out and join bars, decision diamonds), edge labels on
white plates, and a title and legend on top. Everything is escaped, marker ids are unique per
graph, and the output is deterministic, so pictures can be diffed and pinned in tests. Long
names are cut with "…" (widths are estimated, see `layout.text_width`) and kept whole in each
box's <title> tooltip.
"""

from __future__ import annotations

import html
import re

from agentflow.graph.layout import DOT_R, Item, Route, lay_out, text_width
from agentflow.graph.model import Branch, EdgeKind, Fork, StepGraph, StepKind, StepNode
from agentflow.graph.picture import (
    EDGE, LOOP, NEUTRAL, NOOP_FILL, TEXT, TOOL_STROKE, agent_colors, darker, edge_label, max_iterations,
    node_ids, paler, sub_label,
)

__all__ = ["to_svg"]

MARGIN = 24.0


def _fit(s: str, size: float, width: float, *, bold: bool = False) -> str:
    if text_width(s, size, bold=bold) <= width:
        return s
    while s and text_width(s + "…", size, bold=bold) > width:
        s = s[:-1]
    return s + "…"


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
    w = text_width(text, 10) + 4
    x0 = x - w / 2 if anchor == "middle" else x - 2
    return (f'<g class="edge-label"><rect x="{_f(x0)}" y="{_f(y - 6.5)}" width="{_f(w)}" height="13" rx="2" '
            f'fill="#ffffff" fill-opacity="0.9"/><text x="{_f(x)}" y="{_f(y + 3.5)}" text-anchor="{anchor}" '
            f'font-size="10" fill="{color}">{_e(text)}</text></g>')


def to_svg(graph: StepGraph, *, title: str | None = None) -> str:
    """A self-contained SVG picture of the graph (layout: see layout.py)."""
    lay = lay_out(graph)
    colors = agent_colors(graph)
    ids = node_ids(graph)
    title = graph.name if title is None else title
    mid = re.sub(r"[^A-Za-z0-9_-]", "_", graph.name)  # marker ids, unique per graph in one page

    # Where everything is: centre x, centre y of each item.
    def cy(it: Item) -> float:
        return lay.layer_y[it.layer] + lay.layer_h[it.layer] / 2

    joins = {r.join for r in graph.regions.values() if r.join is not None}

    def bottom(it: Item) -> float:
        y = cy(it) + it.height / 2
        if it.kind == "step":
            t = graph.transitions[it.key]
            y += 8 if isinstance(t, Fork) else 9 if isinstance(t, Branch) else 0
        return y

    def top(it: Item) -> float:
        return cy(it) - it.height / 2 - (8 if it.key in joins and it.kind == "step" else 0)

    # Edge paths (ports spread along the box sides, ordered by where the edge goes).
    out_port: dict[int, float] = {}
    in_port: dict[int, float] = {}
    by_src: dict[int, list[Route]] = {}
    by_dst: dict[int, list[Route]] = {}
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
            xs += [lx - text_width(text, 10) / 2 - 3, lx + text_width(text, 10) / 2 + 3]

    for src, slots in lay.lanes.items():
        s_it, h_it = lay.items[src], lay.items[graph.loops[src].head]
        side = lay.lane_side[src]
        text = f"≤{max_iterations(graph, src)}"
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
           f"<title>{_e(n.name)}{' — ' + _e(sub_label(n)) if sub_label(n) else ''}</title>"]
    if n.kind is StepKind.NOOP:
        out.append(f'<rect x="{_f(x0)}" y="{_f(y0)}" width="{_f(w)}" height="{_f(h)}" rx="{_f(h / 2)}" '
                   f'fill="{NOOP_FILL}" stroke="{TOOL_STROKE}"/>')
        out.append(f'<text x="{_f(x)}" y="{_f(y + 3.5)}" text-anchor="middle" '
                   f'font-size="10">{_e(_fit(n.name, 10, w - 10))}</text>')
    else:
        if n.kind is StepKind.LLM:
            fill, stroke, rx, extra = c or NEUTRAL, darker(c) if c else TOOL_STROKE, 12, ""
        else:
            fill, stroke, rx, extra = paler(c) if c else NEUTRAL, TOOL_STROKE, 3, ""
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
        sub = sub_label(n)
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
        entries.append((f'<rect x="0" y="-7" width="22" height="14" rx="5" fill="{c}" stroke="{darker(c)}"/>', a, 28))
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
        w = tx + text_width(text, 11) + 18
        if x > 0 and x + w > width:
            x, y = 0.0, y + 20
        out.append(f'<g class="legend-entry" transform="translate({_f(x)},{_f(y + 7)})">{swatch}'
                   f'<text x="{tx}" y="4" font-size="11">{_e(text)}</text></g>')
        x += w
        used = max(used, x - 18)
    return (out, used), (y + 14 if entries else 0.0)
