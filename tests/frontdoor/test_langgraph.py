"""LangGraph with langchain-openai's ChatOpenAI(base_url=...) against the front door, unmodified:
a planner fans out to two researchers whose answers a writer joins. No hints: the front door
infers one program from the answers each node quotes, and learns the four agents' graph."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

import pytest

from tests.frontdoor.conftest import MODEL, TOKEN

pytest.importorskip("langgraph")
pytest.importorskip("langchain_openai")

pytestmark = pytest.mark.slow


def _graph(base_url: str):
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI
    from langgraph.graph import END, START, StateGraph

    llm = ChatOpenAI(base_url=base_url, api_key=TOKEN, model=MODEL, max_tokens=12, temperature=0, max_retries=0)

    class State(TypedDict):
        topic: str
        plan: str
        notes: Annotated[list[str], operator.add]
        report: str
        cached: Annotated[list[int], operator.add]

    def ask(system: str, *user: str):
        r = llm.invoke([SystemMessage(system), *(HumanMessage(u) for u in user)])
        return r.content, r.usage_metadata["input_token_details"].get("cache_read", 0)

    def planner(s):
        text, hit = ask("You plan research for the lab's langgraph test.", f"Plan a note about {s['topic']}.")
        return {"plan": text, "cached": [hit]}

    def researcher(side):
        def node(s):
            text, hit = ask(f"You research the {side} side of a topic.", s["plan"])
            return {"notes": [text], "cached": [hit]}
        return node

    def writer(s):
        text, hit = ask("You write the final short report.", *s["notes"])
        return {"report": text, "cached": [hit]}

    g = StateGraph(State)
    g.add_node("planner", planner)
    g.add_node("pro", researcher("pro"))
    g.add_node("con", researcher("con"))
    g.add_node("writer", writer)
    g.add_edge(START, "planner")
    g.add_edge("planner", "pro")
    g.add_edge("planner", "con")
    g.add_edge(["pro", "con"], "writer")
    g.add_edge("writer", END)
    return g.compile()


def test_a_fan_out_graph_is_one_learned_program(frontdoor):
    app = _graph(frontdoor.base_url)
    before = set(frontdoor.programs())
    first = app.invoke({"topic": "tides", "notes": [], "cached": []})
    assert first["report"] and len(first["notes"]) == 2
    new = [p for pid, p in frontdoor.programs().items() if pid not in before]
    # every node's request joined the planner's program (each quotes an earlier answer whole)
    assert [p["calls"] for p in new] == [4]
    workflow = new[0]["workflow"]
    (g,) = frontdoor.get(f"/v1/agentflow/graph?workflow={workflow}").json()["workflows"]
    assert len(g["agents"]) == 4 and sum(g["agents"].values()) == 4
    froms = {t["from"] for t in g["transitions"]}
    assert "__start__" in froms and len(g["transitions"]) == 4  # start->planner->r1->r2->writer
    second = app.invoke({"topic": "tides", "notes": [], "cached": []})
    # the second run re-reads the system prompts and the planner's prompt from the cache
    assert min(second["cached"]) > 0 and sum(second["cached"]) > sum(first["cached"])
