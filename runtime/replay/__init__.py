"""Replay: real agent workloads through the simulated worker cluster, one run per policy.

    planning.py   the step graph the scheduler plans with (what a user would declare, not the future)
    oracle.py     the future, for Belady's bound only
    engine.py     the discrete-event simulation: programs, tools, workers, the scheduler
    metrics.py    JCT, TTFT, hit rate, recomputed tokens, pinned memory, throughput
"""
