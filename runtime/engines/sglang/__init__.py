"""agentflow on a real SGLang 0.5.23 server (docs/sglang.md).

    client.py   SGLangEngine: the Engine interface over SGLang's HTTP API (needs httpx, not sglang)
    control.py  the hint vocabulary (SGLang's kv_hints envelope), validation, application on a rank
    policy.py   the `workflow` eviction strategy and the pure path-priority rules
    pins.py     AgentflowRadixCache: UnifiedRadixCache + pins with TTL, reaper, cap, path priorities
    plugin.py   the `sglang.srt.plugins` entry point that registers all of it inside the server

pins.py and plugin.py import SGLang; nothing here imports them, so the client and the pure modules
load on machines without SGLang.
"""
