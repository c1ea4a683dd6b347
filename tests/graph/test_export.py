"""Pictures of step graphs: Mermaid, DOT and the pure-Python SVG (graph/export.py)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from agentflow import Workflow
from agentflow.graph.export import (
    PALETTE, _pava, agent_colors, layers, node_ids, to_dot, to_mermaid, to_svg, write_picture,
)

SVG = "{http://www.w3.org/2000/svg}"


def two_steps():
    wf = Workflow("demo")
    wf.agent("a", system_prompt="x")
    wf.llm("think", agent="a")
    wf.llm("act", agent="a")
    wf.sequence("think", "act")
    return wf.compile().graph


def loop_graph():
    wf = Workflow("demo")
    wf.agent("a", system_prompt="x", tools=["bash"])
    wf.tool("bash")
    wf.llm("think", agent="a")
    wf.call("act", tool="bash", agent="a")
    wf.sequence("think", "act")
    wf.loop("act", back_to="think", max_iterations=5, expected_iterations=3)
    return wf.compile().graph


def mid_graph():
    """A loop inside a 3-branch fan-out with a join, then a conditional branch, then an outer loop."""
    wf = Workflow("review")
    for a in ("planner", "coder", "reviewer"):
        wf.agent(a, system_prompt="x", tools=["bash"])
    wf.tool("bash")
    wf.llm("plan", agent="planner")
    wf.noop("split")
    wf.llm("code", agent="coder")
    wf.call("run", tool="bash", agent="coder")
    wf.llm("review", agent="reviewer")
    wf.call("lint", tool="bash")
    wf.noop("merge")
    wf.llm("decide", agent="planner")
    wf.llm("fix", agent="coder")
    wf.llm("report", agent="planner")
    wf.sequence("plan", "split")
    wf.fan_out("split", ["code", "review", "lint"], join="merge")
    wf.sequence("code", "run")
    wf.loop("run", back_to="code", max_iterations=8, expected_iterations=3)
    wf.join(["run", "review", "lint"], "merge")
    wf.sequence("merge", "decide")
    wf.branch("decide", {"fix": lambda s: True}, default="report", probabilities={"fix": 0.3})
    wf.sequence("fix", "report")
    wf.loop("report", back_to="plan", max_iterations=3, expected_iterations=1.5)
    return wf.compile().graph


def boxes(svg: str) -> dict[str, tuple[float, float, float, float]]:
    """Step -> (x, y, width, height) of its box, in the graph group's coordinates."""
    root = ET.fromstring(svg)
    out = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "step":
            r = g.find(f"{SVG}rect")
            out[g.get("data-step")] = tuple(float(r.get(k)) for k in ("x", "y", "width", "height"))
    return out


# ---- shared ----------------------------------------------------------------------------------


def test_agent_colors_follow_agent_order_then_tool_callers():
    wf = Workflow("c")
    for a in ("zed", "amy", "caller"):
        wf.agent(a, system_prompt="x", tools=["t"])
    wf.tool("t")
    wf.llm("one", agent="zed")
    wf.call("two", tool="t", agent="caller")
    wf.llm("three", agent="amy")
    wf.sequence("one", "two", "three")
    g = wf.compile().graph
    assert g.agents == ("zed", "amy")
    assert agent_colors(g) == {"zed": PALETTE[0], "amy": PALETTE[1], "caller": PALETTE[2]}


def test_agent_colors_cycle_through_the_palette():
    wf = Workflow("many")
    names = [f"a{i}" for i in range(len(PALETTE) + 2)]
    for a in names:
        wf.agent(a, system_prompt="x")
        wf.llm(f"s_{a}", agent=a)
    wf.sequence(*[f"s_{a}" for a in names])
    colors = agent_colors(wf.compile().graph)
    assert list(colors) == names
    assert colors[names[-1]] == PALETTE[1]


@pytest.mark.parametrize("names, expected", [
    (["plan/draft", "write code", "a-b"], ["s_plan_draft", "s_write_code", "s_a_b"]),
    (["a b", "a/b", "a_b"], ["s_a_b", "s_a_b_2", "s_a_b_3"]),
    (["end", "x.y"], ["s_end", "s_x_y"]),
])
def test_node_ids_are_sanitized_and_unique(names, expected):
    wf = Workflow("ids")
    wf.agent("a", system_prompt="x")
    for n in names:
        wf.llm(n, agent="a")
    wf.sequence(*names)
    g = wf.compile().graph
    assert list(node_ids(g).values()) == expected
    mermaid, dot = to_mermaid(g), to_dot(g)
    for nid in expected:
        assert re.search(rf"^    {nid}\(\[", mermaid, re.M)
        assert re.search(rf"^  {nid} \[label=", dot, re.M)


def test_layers_are_longest_path_depth_without_back_edges():
    g = mid_graph()
    d = layers(g)
    chain = ("plan", "split", "code", "run", "merge", "decide", "fix", "report")
    assert [d[s] for s in chain] == list(range(len(chain)))
    assert d["review"] == d["lint"] == 2  # short branches start with the others
    assert layers(loop_graph()) == {"think": 0, "act": 1}


# ---- Mermaid ---------------------------------------------------------------------------------


def test_mermaid_two_steps_exactly():
    assert to_mermaid(two_steps()) == (
        "---\n"
        'title: "demo"\n'
        "---\n"
        "flowchart TD\n"
        '    s_think(["think<br/>a"])\n'
        '    s_act(["act<br/>a"])\n'
        "    s_think --> s_act\n"
        "    classDef agent0 fill:#7eb0d5,stroke:#456175,color:#1f2328\n"
        "    class s_think,s_act agent0\n"
    )


def test_mermaid_shapes_and_edge_labels():
    text = to_mermaid(loop_graph())
    assert '    s_act[["act<br/>bash()"]]' in text
    assert '    s_act -.->|"loop ≤5"| s_think' in text
    assert '    s_act -->|"exit"| terminal' in text
    assert "classDef tool0 fill:" in text and "class s_act tool0" in text
    mid = to_mermaid(mid_graph())
    assert '    s_split(("split"))' in mid
    assert '    s_split -->|"fork"| s_code' in mid
    assert '    s_decide -->|"p=0.30"| s_fix' in mid
    assert '    s_decide -->|"default p=0.70"| s_report' in mid
    assert 'subgraph r_split["fan-out: split"]' in mid
    # every step is declared once, and sits in the fan-out's subgraph when it is inside it
    block = mid.split('subgraph r_split["fan-out: split"]\n')[1].split("    end\n")[0]
    assert sorted(line.strip() for line in block.splitlines()) == ["s_code", "s_lint", "s_review", "s_run"]


def test_mermaid_escapes_labels():
    wf = Workflow('q"uote')
    wf.agent("a", system_prompt="x")
    wf.llm('say "hi" <b> & #1', agent="a")
    text = to_mermaid(wf.compile().graph)
    assert 'title: "q\\"uote"' in text
    assert '(["say #quot;hi#quot; #lt;b#gt; #amp; #35;1<br/>a"])' in text


# ---- DOT -------------------------------------------------------------------------------------

NODE = re.compile(r"^\s*(\w+) \[label=")
EDGE = re.compile(r"^\s*(\w+) -> (\w+)(?: \[(.*)\])?;$")


def test_dot_structure():
    g = mid_graph()
    text = to_dot(g)
    assert text.startswith('digraph "review" {') and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    nodes = [m.group(1) for line in text.splitlines() if (m := NODE.match(line))]
    edges = [m.groups() for line in text.splitlines() if (m := EDGE.match(line))]
    assert sorted(nodes) == sorted([*node_ids(g).values(), "terminal"])
    assert len(edges) == len(list(g.iter_edges()))
    back = [e for e in edges if e[2] and "style=dashed" in e[2]]
    assert [(a, b) for a, b, _ in back] == [("s_run", "s_code"), ("s_report", "s_plan")]
    assert all("constraint=false" in attrs and 'label="loop ≤' in attrs for _, _, attrs in back)
    assert ("s_decide", "s_fix", 'label="p=0.30"') in edges
    assert "subgraph cluster_split {" in text and "  s_code;" in text


def test_dot_fills_by_agent_and_escapes():
    wf = Workflow("esc")
    wf.agent("a", system_prompt="x")
    wf.llm('say "hi" \\n', agent="a")
    text = to_dot(wf.compile().graph)
    assert 'label="say \\"hi\\" \\\\n\\na"' in text
    assert f'fillcolor="{PALETTE[0]}"' in text


# ---- SVG -------------------------------------------------------------------------------------


def test_svg_is_well_formed_with_one_box_per_step_and_a_legend():
    g = mid_graph()
    svg = to_svg(g, title="Code review")
    assert svg == to_svg(mid_graph(), title="Code review")  # deterministic
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert sorted(boxes(svg)) == sorted(g.steps)
    legend = [t.text for e in root.iter(f"{SVG}g") if e.get("class") == "legend-entry" for t in e.iter(f"{SVG}text")]
    assert legend[:3] == ["planner", "coder", "reviewer"]
    assert "tool call" in legend
    assert any(t.text == "Code review" for t in root.iter(f"{SVG}text"))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "≤8" in texts and "≤3" in texts and "p=0.30" in texts


def test_svg_boxes_do_not_overlap_and_follow_the_layers():
    g = mid_graph()
    b = boxes(to_svg(g))
    names = sorted(b)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            (x1, y1, w1, h1), (x2, y2, w2, h2) = b[p], b[q]
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, (p, q)
    chain = ["plan", "split", "code", "run", "merge", "decide", "fix", "report"]
    tops = [b[s][1] for s in chain]
    assert tops == sorted(tops) and len(set(tops)) == len(tops)


def test_svg_draws_back_edges_dashed_and_colours_boxes_by_agent():
    svg = to_svg(loop_graph())
    root = ET.fromstring(svg)
    dashed = [p for p in root.iter(f"{SVG}path") if p.get("stroke-dasharray")]
    assert len(dashed) == 1 and dashed[0].get("marker-end", "").endswith("-loop)")
    think = next(g for g in root.iter(f"{SVG}g") if g.get("data-step") == "think")
    assert think.find(f"{SVG}rect").get("fill") == PALETTE[0]
    assert any(t.text == "≤5" for t in root.iter(f"{SVG}text"))


def test_svg_escapes_names():
    wf = Workflow("<x> & y")
    wf.agent("ag<ent>", system_prompt="x")
    wf.llm("a<b&c", agent="ag<ent>")
    wf.llm('q"uote', agent="ag<ent>")
    wf.sequence("a<b&c", 'q"uote')
    svg = to_svg(wf.compile().graph)
    assert "a&lt;b&amp;c" in svg and "<x>" not in svg
    root = ET.fromstring(svg)
    assert sorted(boxes(svg)) == sorted(["a<b&c", 'q"uote'])
    assert root.find(f"{SVG}title").text == "<x> & y"


def test_svg_single_step_and_self_loop():
    wf = Workflow("one")
    wf.agent("a", system_prompt="x")
    wf.llm("only", agent="a")
    assert list(boxes(to_svg(wf.compile().graph))) == ["only"]
    wf.loop("only", back_to="only", max_iterations=2)
    svg = to_svg(wf.compile().graph)
    assert "≤2" in svg and list(boxes(svg)) == ["only"]


def test_pava_solves_spacing_exactly():
    assert _pava([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [10.0, 10.0]) == [-10.0, 0.0, 10.0]
    assert _pava([0.0, 50.0], [1.0, 1.0], [10.0]) == [0.0, 50.0]  # already apart: unchanged
    assert _pava([0.0, 0.0], [3.0, 1.0], [8.0]) == [-2.0, 6.0]  # the heavier one moves less


# ---- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, render", [(".svg", to_svg), (".mmd", to_mermaid), (".dot", to_dot)])
def test_write_picture_by_suffix(tmp_path, suffix, render):
    g = loop_graph()
    path = write_picture(g, tmp_path / "deep" / "dir" / f"demo{suffix}")
    assert path.read_text(encoding="utf-8") == render(g)


def test_write_picture_png_needs_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr("agentflow.graph.export.shutil.which", lambda name: None)
    with pytest.raises(ValueError, match=r"\.svg, \.mmd, \.dot"):
        write_picture(loop_graph(), tmp_path / "demo.png")
    assert not (tmp_path / "demo.png").exists()


def test_write_picture_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"'\.gif'.*\.svg, \.mmd, \.dot"):
        write_picture(loop_graph(), tmp_path / "demo.gif")
