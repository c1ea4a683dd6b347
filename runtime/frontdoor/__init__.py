"""The OpenAI-compatible front door: any agent gets workflow-aware KV without the DSL (docs/openai.md)."""

from agentflow.runtime.frontdoor.gateway import ChatRequest, FrontDoor, FrontDoorConfig, FrontDoorError
from agentflow.runtime.frontdoor.hints import HintError, Hints, parse_hints

__all__ = ["ChatRequest", "FrontDoor", "FrontDoorConfig", "FrontDoorError", "HintError", "Hints", "parse_hints"]
