"""mini-swe-agent (from PyPI, unmodified: its DefaultAgent, its text-based LiteLLM model and its
default.yaml settings) pointed at the front door on a toy repository. SmolLM2-135M cannot solve
the task; what is tested is the serving: every step of the run joins one inferred program, and
later steps re-read the conversation from the cache.

The one thing not taken as shipped is the environment: the agent's commands come from a 135M model,
so they run through a whitelist (ls, cat, pwd, echo, grep) in the toy repository, not a shell."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
import yaml

from tests.frontdoor.conftest import MODEL, TOKEN

pytest.importorskip("minisweagent")

pytestmark = pytest.mark.slow
ALLOWED = {"ls", "cat", "pwd", "echo", "grep"}


class WhitelistEnvironment:
    """mini-swe-agent's Environment protocol, running only harmless commands."""

    def __init__(self, cwd: str):
        self.cwd = cwd

    def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict:
        argv = shlex.split(action.get("command", "") or "true", posix=True) or ["true"]
        if argv[0] not in ALLOWED or any(c in action.get("command", "") for c in ";|&><`$"):
            return {"output": f"command not allowed here: {argv[0]}", "returncode": 127, "exception_info": ""}
        p = subprocess.run(argv, cwd=self.cwd, capture_output=True, text=True, timeout=10)
        return {"output": p.stdout + p.stderr, "returncode": p.returncode, "exception_info": ""}

    def get_template_vars(self, **kwargs) -> dict:
        return {"cwd": self.cwd, "system": "Linux", "release": "", "version": "", "machine": "", **kwargs}

    def serialize(self) -> dict:
        return {"info": {"environment_type": "whitelist"}}


def test_mini_swe_agent_runs_one_program_with_cache_hits(frontdoor, tmp_path, monkeypatch):
    import minisweagent
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.models.litellm_textbased_model import LitellmTextbasedModel

    monkeypatch.setenv("MSWEA_COST_TRACKING", "ignore_errors")
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (tmp_path / "README.md").write_text("A calculator. add() should add.\n")
    cfg = yaml.safe_load(open(os.path.join(os.path.dirname(minisweagent.__file__), "config", "default.yaml")))
    model = LitellmTextbasedModel(model_name=f"openai/{MODEL}", cost_tracking="ignore_errors",
                                  model_kwargs={"api_base": frontdoor.base_url, "api_key": TOKEN,
                                                "max_tokens": 24, "temperature": 0.0},
                                  **{k: v for k, v in cfg["model"].items() if k != "model_kwargs"})
    agent = DefaultAgent(model, WhitelistEnvironment(str(tmp_path)),
                         **(cfg["agent"] | {"step_limit": 3, "cost_limit": 0.0}))
    before = set(frontdoor.programs())
    cached_before = frontdoor.metric("agentflow_openai_cached_tokens_total")
    result = agent.run("Fix add() in calc.py so that it adds.")
    assert result["exit_status"] in ("LimitsExceeded", "RepeatedFormatError", "Submitted")
    new = [p for pid, p in frontdoor.programs().items() if pid not in before]
    assert len(new) == 1 and new[0]["inferred"] and new[0]["calls"] == agent.n_calls >= 2
    assert frontdoor.metric("agentflow_openai_cached_tokens_total") - cached_before > 100  # the long system prompt, again
