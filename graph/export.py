"""Pictures of a compiled step graph: Mermaid, Graphviz DOT, and a self-contained SVG.

    to_mermaid(graph)          `flowchart TD` text (GitHub, docs)
    to_dot(graph)              Graphviz DOT text (`dot -Tpng`)
    to_svg(graph, title=...)   an SVG drawn in pure Python: no graphviz, no matplotlib (svg.py)
    write_picture(graph, path) any of the above by suffix (.mmd, .dot, .svg; .png with graphviz)
    agent_colors(graph)        the agent -> colour map all three share (picture.py)
    layers(graph)              the longest-path depth of each step, as the SVG lays it out (layout.py)

All three say the same thing: one node per step (LLM steps rounded, tool calls square and
light, no-ops small), coloured by agent in `graph.agents` order, edges labelled by kind
(`fork`, `p=0.30`, `default p=0.40`, `loop ≤N`, `exit`), fan-out regions grouped.

This module is the one place to import pictures from. The two text formats live here: each is
one short pass over the steps and edges, since Mermaid and Graphviz do their own layout. The SVG
has to do its layout itself, which is the bulk of the work, so it lives apart: `layout.py` places
everything, `svg.py` draws it, and `picture.py` holds what all the formats share (colours, node
ids, edge labels), below them all so nothing imports in a cycle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from agentflow.graph.layout import _pava, layers  # noqa: F401  (_pava: its solver test imports it from here)
from agentflow.graph.model import END, EdgeKind, StepGraph, StepKind, StepNode
from agentflow.graph.picture import (
    EDGE, LOOP, NEUTRAL, NOOP_FILL, PALETTE, TEXT, TOOL_STROKE, agent_colors, darker, edge_label, node_ids, paler,
    sub_label,
)
from agentflow.graph.svg import to_svg

__all__ = ["PALETTE", "agent_colors", "layers", "to_dot", "to_mermaid", "to_svg", "write_picture"]

SUFFIXES = (".svg", ".mmd", ".dot", ".png")


# ---- helpers ------------------------------------------------------------------------------------


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
        text = _mm_text(s) + (f"<br/>{_mm_text(sub_label(n))}" if sub_label(n) else "")
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
        defs[f"agent{i}"] = f"fill:{c},stroke:{darker(c)},color:{TEXT}"
        defs[f"tool{i}"] = f"fill:{paler(c)},stroke:{TOOL_STROKE},color:{TEXT}"
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
        sub = sub_label(n)
        label = _dot_str(s + ("\n" + sub if sub else ""))
        c = colors.get(n.agent) if n.agent is not None else None
        if n.kind is StepKind.LLM:
            stroke = darker(c) if c else TOOL_STROKE
            attrs = f'shape=box, style="rounded,filled", fillcolor="{c or NEUTRAL}", color="{stroke}"'
        elif n.kind is StepKind.TOOL:
            attrs = f'shape=box, fillcolor="{paler(c) if c else NEUTRAL}", color="{TOOL_STROKE}"'
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
