"""A SWE-style coding agent: one agent in a bounded tool loop over bash, file edits and tests.

    think ──branch on `action`──┬─> bash  ──┐
      ^                         ├─> edit  ──┤
      |                         ├─> tests ──┤
      |                         └─(none)────┴─> observe ──loop while not `submitted`──> submit
      └──────────────── at most 50 times ──────────┘

`think` is the coder's LLM call; `parse_action` reads its answer into the program state (`action`
one of "bash" / "edit" / "run_tests", plus that action's arguments: `command`; `path`, `old`,
`new`; `tests`) from one fenced block: ```bash <command>```, ```run_tests <node ids>```, or
```edit <path> NEWLINE <old> NEWLINE======= NEWLINE <new>```. An answer with no valid action goes straight to `observe`, which hands the
format error back (as mini-swe-agent does). The agent submits with the bash command
`echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT ...`; `run_bash` then reports `submitted: True`,
the loop stops, and `submit` collects the patch with `git diff`.

Planning figures, from real runs (see the project's notes on workloads):
  * iterations: mini-swe-agent (Gemini 3 Pro, SWE-bench Verified) makes p10/p50/p90 = 22/36/66
    LLM calls per task: expected 36, bounded here at 50 (the real step limit is 250).
  * branch probabilities: the 8,232 commands of the 200 stored mini-swe-agent runs, classified
    by what they do: plain shell (reading, searching, running scripts, and the submission)
    0.69, file edits (`sed -i`, heredocs) 0.20, test runs (pytest, runtests.py) 0.08, no valid
    action 0.03.
  * durations: bash ~2 s (0.6 s in OpenHands runs, 3.8-5.9 s mean in Claude Code), edits
    0.05 s, test runs 11 s (median of SWE-bench-java test logs, p90 25 s).
  * output tokens per call: mean 256 (median 87) over the same 8,232 calls.

KV cache: there is one agent and one conversation, each prompt the previous one plus an answer
and an observation (~14k tokens at the median, growing ~300 tokens a turn). While a tool runs
the coder is 1 step away (the tool's round; `observe` is a noop and takes none), so its prefix
should stay: dropping it costs a prefill of the whole history, far more than the few seconds a
bash call or an edit takes.
A test run (11 s median, minutes in the tail) is where a TTL policy may consider offloading to
host memory. Once the loop is exhausted or `submitted` is set, the coder is never needed again
(steps-to-execution inf at `submit`): free its KV at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from agentflow import Workflow, when

SUBMIT_SENTINEL = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"  # mini-swe-agent's submission marker
MAX_OUTPUT_CHARS = 10_000
MAX_ITERATIONS = 50
EXPECTED_ITERATIONS = 36  # p50 LLM calls per task, mini-swe-agent on SWE-bench Verified
ACTION_PROBABILITIES = {"bash": 0.69, "edit": 0.20, "tests": 0.08}  # no valid action: the rest, 0.03

SYSTEM_PROMPT = (
    "You are a careful software engineer fixing an issue in the repository in your working "
    "directory. Each turn, think briefly, then choose exactly one action: `bash` (a shell "
    "command), `edit` (replace one unique snippet of a file) or `run_tests` (pytest node ids). "
    f"When the fix is done and tested, submit with the bash command `echo {SUBMIT_SENTINEL}`."
)


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    half = MAX_OUTPUT_CHARS // 2
    return f"{text[:half]}\n[... {len(text) - MAX_OUTPUT_CHARS} characters elided ...]\n{text[-half:]}"


def run_bash(command: str, cwd: str = ".", timeout_s: float = 60.0) -> dict:
    """Run a shell command in `cwd`, killing it (and its children) after `timeout_s` seconds.

    Returns {returncode, output, submitted}; `output` is stdout and stderr together, clipped to
    10,000 characters; `submitted` is true when the output starts with the submission marker.
    """
    with subprocess.Popen(["bash", "-c", command], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return {"returncode": None, "output": _clip(out) + f"\n[timed out after {timeout_s:g} s]",
                    "submitted": False}
    return {"returncode": proc.returncode, "output": _clip(out),
            "submitted": out.lstrip().startswith(SUBMIT_SENTINEL)}


def edit_file(path: str, old: str, new: str, cwd: str = ".") -> dict:
    """Replace the single occurrence of `old` with `new` in `path` (relative to `cwd`).

    An empty `old` creates the file, which must not exist yet. Refuses paths outside `cwd` and
    snippets that occur zero or several times. Returns {ok, path} or {ok: False, error}.
    """
    root = Path(cwd).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        return {"ok": False, "error": f"{path} is outside the working directory"}
    if old == "":
        if target.exists():
            return {"ok": False, "error": f"{path} exists; give the snippet to replace"}
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(new)
        return {"ok": True, "path": path}
    if not target.is_file():
        return {"ok": False, "error": f"no such file: {path}"}
    text = target.read_text()
    count = text.count(old)
    if count != 1:
        return {"ok": False, "error": f"the snippet occurs {count} times in {path}; give one that occurs once"}
    target.write_text(text.replace(old, new, 1))
    return {"ok": True, "path": path}


async def run_tests(tests: str = "", cwd: str = ".", timeout_s: float = 600.0) -> dict:
    """Run pytest in `cwd` on `tests` (space-separated node ids; every test when empty).

    Uses the interpreter running agentflow. Returns {passed, returncode, output}.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *shlex.split(tests), cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = await proc.communicate()
        return {"passed": False, "returncode": None,
                "output": _clip(out.decode(errors="replace")) + f"\n[timed out after {timeout_s:g} s]"}
    return {"passed": proc.returncode == 0, "returncode": proc.returncode,
            "output": _clip(out.decode(errors="replace"))}


def git_diff(cwd: str = ".") -> dict:
    """The patch of every change in the git work tree at `cwd`, new files included: {patch}."""
    subprocess.run(["git", "add", "-A"], cwd=cwd, check=True, capture_output=True, timeout=60)
    done = subprocess.run(["git", "diff", "--cached"], cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60)
    return {"patch": done.stdout}


_BLOCK = re.compile(r"```(bash|edit|run_tests)[ \t]*([^\n]*)\n?(.*?)```", re.DOTALL)


def parse_action(text: str, state, step: str) -> dict:
    """The coder's answer -> its action and arguments (the first fenced block), or action None."""
    m = _BLOCK.search(text)
    none = {"action": None, "command": "", "path": "", "old": "", "new": "", "tests": ""}
    if m is None:
        return none
    kind, head, body = m.group(1), m.group(2).strip(), m.group(3)
    if kind == "bash":
        return none | {"action": "bash", "command": (head + "\n" + body).strip()}
    if kind == "run_tests":
        return none | {"action": "run_tests", "tests": (head + " " + body).strip()}
    old, sep, new = body.partition("\n=======\n")
    if not head or not sep:
        return none
    return none | {"action": "edit", "path": head, "old": old, "new": new.removesuffix("\n")}


def build() -> Workflow:
    wf = Workflow("swe-agent", description="One coding agent in a bounded loop over bash, edits and tests.")
    wf.agent("coder", system_prompt=SYSTEM_PROMPT, tools=["bash", "edit", "run_tests", "git_diff"])
    wf.tool("bash", run_bash, duration_hint_s=2.0)
    wf.tool("edit", edit_file, duration_hint_s=0.05)
    wf.tool("run_tests", run_tests, duration_hint_s=11.0)
    wf.tool("git_diff", git_diff, duration_hint_s=0.2)

    wf.llm("think", agent="coder", prompt="Fix this issue:\n{task}", inputs=["bash", "edit", "tests"],
           expected_output_tokens=256, parse=parse_action)
    wf.call("bash", tool="bash", agent="coder", args={"command": "{command}", "cwd": "{workdir}"})
    wf.call("edit", tool="edit", agent="coder",
            args={"path": "{path}", "old": "{old}", "new": "{new}", "cwd": "{workdir}"})
    wf.call("tests", tool="run_tests", agent="coder", args={"tests": "{tests}", "cwd": "{workdir}"})
    wf.noop("observe")  # the tool's output (or the format error) returns to the coder
    wf.call("submit", tool="git_diff", agent="coder", args={"cwd": "{workdir}"})

    wf.branch("think", {"bash": when("action", "eq", "bash"), "edit": when("action", "eq", "edit"),
                        "tests": when("action", "eq", "run_tests")},
              default="observe", probabilities=ACTION_PROBABILITIES)
    wf.sequence("bash", "observe")
    wf.sequence("edit", "observe")
    wf.sequence("tests", "observe")
    wf.loop("observe", back_to="think", max_iterations=MAX_ITERATIONS, expected_iterations=EXPECTED_ITERATIONS,
            while_=when("submitted", "falsy"), exit="submit")
    return wf
