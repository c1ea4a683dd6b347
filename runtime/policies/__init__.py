"""Scheduling policies: small pure functions over a `Snapshot`, bundled into named presets.

    preset      eviction priority    pin at tool call   prefetch    admission order
    ---------   ------------------   ----------------   ---------   ----------------------
    lru         engine LRU           none               none        call FCFS
    kvflow      workflow (KVFlow)    none               workflow    call FCFS
    continuum   engine LRU           Continuum TTL      none        program FCFS, pinned first
    agentflow   workflow             workflow TTL       workflow    program FCFS (or fair share)
    belady      clairvoyant (MIN)    none               none        call FCFS   (a bound, needs the future)

The scheduler (`agentflow.runtime.scheduler`) applies them; the simulated worker, the local
engine and the SGLang plugin import these same objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentflow.runtime.policies.admission import (
    AdmissionPolicy, CallFcfs, FairShare, FairShareConfig, ProgramFcfs,
)
from agentflow.runtime.policies.eviction import (
    BeladyEviction, EvictionPolicy, FutureOracle, LruEviction, WorkflowEviction,
)
from agentflow.runtime.policies.prefetch import NoPrefetch, PrefetchConfig, PrefetchPolicy, WorkflowPrefetch
from agentflow.runtime.policies.ttl import (
    ContinuumTtl, NoPins, TtlChoice, TtlConfig, TtlPolicy, WorkflowTtl, choose_ttl,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    name: str
    eviction: EvictionPolicy
    ttl: TtlPolicy
    prefetch: PrefetchPolicy
    admission: AdmissionPolicy


POLICY_NAMES = ("lru", "kvflow", "continuum", "agentflow", "belady")


def make_policy(
    name: str,
    *,
    oracle: FutureOracle | None = None,
    ttl: TtlConfig = TtlConfig(),
    prefetch: PrefetchConfig = PrefetchConfig(),
    fair_share: FairShareConfig | None = None,
) -> Policy:
    """A preset by name. `belady` needs an `oracle` that knows the future (a replayed workload)."""
    if name == "lru":
        return Policy(name=name, eviction=LruEviction(), ttl=NoPins(), prefetch=NoPrefetch(), admission=CallFcfs())
    if name == "kvflow":
        return Policy(name=name, eviction=WorkflowEviction(), ttl=NoPins(), prefetch=WorkflowPrefetch(prefetch),
                      admission=CallFcfs())
    if name == "continuum":
        return Policy(name=name, eviction=LruEviction(), ttl=ContinuumTtl(ttl), prefetch=NoPrefetch(),
                      admission=ProgramFcfs())
    if name == "agentflow":
        admission = FairShare(fair_share) if fair_share is not None else ProgramFcfs()
        return Policy(name=name, eviction=WorkflowEviction(), ttl=WorkflowTtl(ttl),
                      prefetch=WorkflowPrefetch(prefetch), admission=admission)
    if name == "belady":
        if oracle is None:
            raise ValueError("policy 'belady' reads the future: pass oracle=... (a replayed workload provides one)")
        return Policy(name=name, eviction=BeladyEviction(oracle), ttl=NoPins(), prefetch=NoPrefetch(),
                      admission=CallFcfs())
    raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICY_NAMES)}")


__all__ = [
    "POLICY_NAMES", "AdmissionPolicy", "BeladyEviction", "CallFcfs", "ContinuumTtl", "EvictionPolicy", "FairShare",
    "FairShareConfig", "FutureOracle", "LruEviction", "NoPins", "NoPrefetch", "Policy", "PrefetchConfig",
    "PrefetchPolicy", "ProgramFcfs", "TtlChoice", "TtlConfig", "TtlPolicy", "WorkflowEviction", "WorkflowPrefetch",
    "WorkflowTtl", "choose_ttl", "make_policy",
]
