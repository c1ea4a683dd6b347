"""What every picture of a step graph says the same way: colours, node ids, edge labels.

Mermaid, DOT and the SVG must agree (same colour for an agent, same label on an edge), so the
choices they share live here, below all three: `export.py` (the text formats and the public
names) and `svg.py` (the drawing, through `layout.py`) import this module, and it imports
neither, which keeps the picture modules free of import cycles.
"""

from __future__ import annotations

import re

from agentflow.graph.model import Edge, EdgeKind, Loop, StepGraph, StepKind, StepNode

__all__ = [
    "EDGE", "LOOP", "NEUTRAL", "NOOP_FILL", "PALETTE", "TEXT", "TOOL_STROKE", "agent_colors", "darker",
    "edge_label", "max_iterations", "node_ids", "paler", "sub_label",
]

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


def agent_colors(graph: StepGraph) -> dict[str, str]:
    """Agent -> fill colour: `graph.agents` in order, then tool-only callers in step order."""
    names = list(graph.agents)
    for s in graph.steps.values():
        if s.agent is not None and s.agent not in names:
            names.append(s.agent)
    return {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(names)}


def _mix(color: str, other: str, t: float) -> str:
    """`color` moved a fraction `t` toward `other`."""
    a = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(other[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def darker(color: str) -> str:
    """The outline of a box filled with `color`: the same hue, darker."""
    return _mix(color, "#000000", 0.45)


def paler(color: str) -> str:
    """The fill of a tool step called by an agent of `color`: the same hue, paler."""
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
            return f"loop ≤{max_iterations(graph, e.source)}"
        case EdgeKind.LOOP_EXIT:
            return "exit"
    return ""


def max_iterations(graph: StepGraph, source: str) -> int:
    """The iteration limit of the loop whose back edge leaves `source`."""
    t = graph.transitions[source]
    assert isinstance(t, Loop)
    return t.max_iterations


def sub_label(s: StepNode) -> str:
    """The second line of a step's box: its agent (LLM steps) or its tool call."""
    if s.kind is StepKind.LLM:
        return s.agent or ""
    if s.kind is StepKind.TOOL:
        return f"{s.tool}()"
    return ""
