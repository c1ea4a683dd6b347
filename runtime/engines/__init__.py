"""Engines: what runs LLM calls and applies the scheduler's decisions.

    sim/      a simulated SGLang worker cluster (the embedded default): a radix prefix cache with
              SGLang's semantics (radix.py), a GPU cost model calibrated from measured operator
              times (costmodel.py), a discrete-event worker with continuous batching, chunked
              prefill, a host tier and prefetch (worker.py), a cluster behind a router.
    (later)   local: a real small model on this CPU; sglang: real SGLang servers through a plugin.

All of them import the same scheduler and policies (agentflow.runtime.scheduler / .policies).
"""
