"""agentflow.graph: compiled step graphs and steps-to-execution.

    StepGraph          the validated control flow of one workflow (model.py)
    GraphTables        per-step steps-to-execution tables (analysis.py)
    Position           a running program's active steps and loop counts (position.py)
    estimate()         a position's steps-to-execution, per agent, and its remaining work
    ProgramIndex       the minimum over many running programs, kept incrementally (tracker.py)
    exact_steps_min()  brute-force reference for tests (exact.py)
    to_mermaid / to_dot / to_svg   pictures of a graph (export.py)
"""

from agentflow.graph.model import (
    END, Branch, Case, Edge, EdgeKind, Fork, Loop, LoopInfo, Next, Region, StepGraph, StepKind, StepNode,
)
from agentflow.graph.analysis import INF, GraphTables
from agentflow.graph.position import Position, ProgramEstimate, estimate
from agentflow.graph.tracker import AgentKey, ProgramIndex

__all__ = [
    "END", "INF", "AgentKey", "Branch", "Case", "Edge", "EdgeKind", "Fork", "GraphTables", "Loop", "LoopInfo",
    "Next", "Position", "ProgramEstimate", "ProgramIndex", "Region", "StepGraph", "StepKind", "StepNode",
    "estimate",
]
