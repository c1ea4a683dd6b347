"""`agentflow serve --openai HOST:PORT`: the front door and its embedded worker, from CLI settings."""

from __future__ import annotations

from agentflow.runtime.frontdoor.gateway import FrontDoorConfig
from agentflow.runtime.frontdoor.server import OpenAIServer, split_listen

MODEL_IDS = {"local": "SmolLM2-135M-Instruct", "sim": "agentflow-sim"}


def build_openai(scheduler, listen: str, *, engine: str = "local", token: str | None = None,
                 workflows=()) -> OpenAIServer:
    split_listen(listen)  # a bad address fails before the model loads
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"{exc.name} is missing: pip install 'agentflow-sched[openai]'") from None
    from agentflow.runtime.service.app import make_engine

    eng = make_engine(engine, name=f"embedded-{engine}")
    # the scheduler's credentials (--tokens-file: each client token is its tenant; --token: one admin)
    creds = getattr(getattr(scheduler, "authenticator", None), "credentials", None)
    return OpenAIServer(scheduler, [eng], listen=listen, config=FrontDoorConfig(model_id=MODEL_IDS[engine]),
                        token=None if creds is not None else token, credentials=creds, workflows=tuple(workflows))


__all__ = ["MODEL_IDS", "build_openai"]
