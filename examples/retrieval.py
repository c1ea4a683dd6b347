"""Parallel retrieval, then synthesis, with a bounded second round when the answer falls short.

                  ┌─> search_docs    ─> read_docs    ─┐
    plan ─fan-out─┼─> search_code    ─> read_code    ─┼─> synthesize ─> check ─┬─(complete)──────> answer
     ^            └─> search_history ─> read_history ─┘                        └─> another_round ─┘
     └──────────────────────── one more round, at most (2 rounds in all) ───────────┘

The planner turns the question into search queries (`docs_query`, `code_query`, `history_query`
in the state, read from its answer by `parse_plan`; the question itself where a line is missing); three retrievers run in parallel over a local code base: full-text search in its
files, Python symbols (functions and classes, with their docstrings), and git history. Each
search result is read by its own summarizer agent. The synthesizer drafts an answer from the
three summaries, a critic checks it (`verdict` = "complete" or what is missing), and if it
falls short (`parse_verdict`) the planner gets one more round before the synthesizer writes the final answer.

KV cache, in steps-to-execution (see tests/examples/test_retrieval.py for the exact figures):
  * while `plan` runs, the three readers are 2 steps away (search, then read) and run at the
    same time: they are the ones to keep or prefetch; the synthesizer is 3 steps away, the
    critic 4.
  * the synthesizer speaks twice (draft, final answer) with the critic in between: it is 1 step
    away at `check`; keep it through the check.
  * the planner waits through the whole fan-out (4 steps away while the searches run, 1 at
    `check`: `another_round` is a noop and takes no round) and, in the second round, never
    runs again: at `check` with one round done its steps-to-execution is inf, like every
    reader's; free them.
Planning figures are the author's guesses (no real runs of this pipeline are stored): half the
drafts fail the check, and with a loop of at most 2 iterations planned at 2 the second round
happens with probability 0.5 x 0.5 = 0.25.
"""

from __future__ import annotations

import ast
import asyncio
import os
from pathlib import Path

from agentflow import Workflow, when

MAX_HITS = 20
MAX_FILE_BYTES = 1_000_000
SKIP_DIRS = {".git", ".hg", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache",
             "build", "dist"}
TEXT_SUFFIXES = {".md", ".rst", ".txt", ".py", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini", ".proto"}


def _terms(query: str) -> list[str]:
    return [t for t in query.lower().split() if t]


def _files(root: Path, suffixes: set[str]):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.suffix in suffixes and p.stat().st_size <= MAX_FILE_BYTES:
                yield p


def search_text(query: str, root: str = ".", max_hits: int = MAX_HITS) -> dict:
    """Full-text search of the text files under `root`: the lines holding the most query terms.

    Returns {hits: [{path, line, text}]}, best first (ties in file order).
    """
    terms, base, scored = _terms(query), Path(root), []
    for p in _files(base, TEXT_SUFFIXES):
        try:
            lines = p.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines, 1):
            low = line.lower()
            score = sum(t in low for t in terms)
            if score:
                scored.append((-score, str(p.relative_to(base)), i, line.strip()[:200]))
    scored.sort()
    return {"hits": [{"path": path, "line": i, "text": text} for _, path, i, text in scored[:max_hits]]}


def search_symbols(query: str, root: str = ".", max_hits: int = MAX_HITS) -> dict:
    """Python functions and classes under `root` whose name or docstring holds a query term.

    Returns {hits: [{path, line, kind, name, doc}]}, names matching first.
    """
    terms, base, scored = _terms(query), Path(root), []
    for p in _files(base, {".py"}):
        try:
            tree = ast.parse(p.read_text(errors="replace"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = (ast.get_docstring(node) or "").split("\n\n")[0]
                in_name = sum(t in node.name.lower() for t in terms)
                in_doc = sum(t in doc.lower() for t in terms)
                if in_name or in_doc:
                    kind = "class" if isinstance(node, ast.ClassDef) else "function"
                    path = str(p.relative_to(base))
                    scored.append((-in_name, -in_doc, path, node.lineno, kind, node.name, doc[:200]))
    scored.sort()
    return {"hits": [{"path": path, "line": line, "kind": kind, "name": name, "doc": doc}
                     for _, _, path, line, kind, name, doc in scored[:max_hits]]}


async def search_history(query: str, root: str = ".", max_hits: int = MAX_HITS, timeout_s: float = 30.0) -> dict:
    """Commits in the git repository at `root` whose message holds every query term.

    Returns {hits: [{commit, date, subject}]}, newest first; {hits: [], error} outside a repository.
    """
    args = ["git", "log", f"-n{max_hits}", "-i", "--all-match", "--format=%h%x09%as%x09%s"]
    args += [f"--grep={t}" for t in _terms(query)]
    proc = await asyncio.create_subprocess_exec(*args, cwd=root, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"hits": [], "error": f"git log timed out after {timeout_s:g} s"}
    if proc.returncode != 0:
        return {"hits": [], "error": err.decode(errors="replace").strip()}
    hits = []
    for line in out.decode(errors="replace").splitlines():
        commit, date, subject = line.split("\t", 2)
        hits.append({"commit": commit, "date": date, "subject": subject})
    return {"hits": hits}


QUERY_KEYS = {"docs": "docs_query", "code": "code_query", "history": "history_query"}


def parse_plan(text: str, state, step: str) -> dict:
    """The planner's answer, lines `docs: ...`, `code: ...`, `history: ...` -> the three queries.
    A query the answer lacks falls back to the question itself."""
    found = {}
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        key = QUERY_KEYS.get(head.strip().strip("-*` ").lower())
        if sep and key and rest.strip():
            found[key] = rest.strip()
    return {key: found.get(key, state.get("question", "")) for key in QUERY_KEYS.values()}


def parse_verdict(text: str, state, step: str) -> dict:
    """The critic's answer -> `verdict`: "complete", or what it says is missing."""
    words = text.strip().split()
    first = words[0].strip(".,:;!'\"").lower() if words else ""
    return {"verdict": "complete" if first == "complete" else text.strip()}


READERS = {  # retriever: (tool, its function, query key in the state, reader agent, what it reads)
    "docs": ("search_text", search_text, "docs_query", "docs_reader", "text search hits"),
    "code": ("search_symbols", search_symbols, "code_query", "code_reader", "Python definitions"),
    "history": ("search_history", search_history, "history_query", "history_reader", "commit messages"),
}
DURATION_HINT_S = {"search_text": 0.5, "search_symbols": 1.0, "search_history": 0.1}  # a mid-sized repository


def build() -> Workflow:
    wf = Workflow("retrieval", description="Plan, retrieve from three sources in parallel, synthesize, check.")
    wf.agent("planner", system_prompt="You turn a question about a code base into three short search queries: "
                                      "for its documents, its Python definitions, and its commit history.")
    wf.agent("synthesizer", system_prompt="You answer questions about a code base from the evidence given, "
                                          "citing file paths and commits. Say what the evidence does not cover.")
    wf.agent("critic", system_prompt="You check an answer against its question. Reply 'complete', or name "
                                     "what is missing in one sentence.")
    for source, (tool, fn, _, reader, what) in READERS.items():
        wf.agent(reader, system_prompt=f"You read {what} and summarize, in at most five bullet points, what "
                                       f"bears on the question. Cite where each point comes from.", tools=[tool])
        wf.tool(tool, fn, duration_hint_s=DURATION_HINT_S[tool])

    wf.llm("plan", agent="planner", prompt="Question: {question}\nAnswer with three lines: docs: <query>, "
                                         "code: <query>, history: <query>.", inputs=["check"],
           expected_output_tokens=80, parse=parse_plan)
    ends = []
    for source, (tool, _, query_key, reader, _) in READERS.items():
        wf.call(f"search_{source}", tool=tool, agent=reader, args={"query": f"{{{query_key}}}", "root": "{repo}"})
        ends.append(wf.llm(f"read_{source}", agent=reader, prompt="Question: {question}",
                           inputs=[f"search_{source}"], expected_output_tokens=200))
        wf.sequence(f"search_{source}", f"read_{source}")
    wf.llm("synthesize", agent="synthesizer", prompt="Question: {question}", inputs=ends, expected_output_tokens=400)
    wf.llm("check", agent="critic", prompt="Question: {question}", inputs=["synthesize"], expected_output_tokens=30,
           parse=parse_verdict)
    wf.noop("another_round")
    wf.llm("answer", agent="synthesizer", prompt="Write the final answer.", inputs=["check"],
           expected_output_tokens=400)

    wf.fan_out("plan", [f"search_{s}" for s in READERS], join="synthesize")
    wf.join(ends, "synthesize")
    wf.sequence("synthesize", "check")
    wf.branch("check", {"answer": when("verdict", "eq", "complete")}, default="another_round",
              probabilities={"answer": 0.5})
    wf.loop("another_round", back_to="plan", max_iterations=2, expected_iterations=2.0, exit="answer")
    return wf
