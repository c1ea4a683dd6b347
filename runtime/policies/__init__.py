"""Scheduling policies: small pure functions over a `Snapshot`, bundled into named presets.

A preset is a system as its users run it: the scheduling policies and the one engine setting that
changes what they can do, the host KV tier (SGLang's default has none; `--enable-hierarchical-cache`
adds one, with its write-back and PCIe costs).

    preset          eviction priority   pin at tool call  prefetch   admission order   programs      host tier
    -------------   -----------------   ----------------  --------   ---------------   -----------   ---------
    sglang          engine LRU          none              none       call FCFS         all           no
    sglang-hicache  engine LRU          none              none       call FCFS         all           yes
    kvflow          workflow (KVFlow)   none              workflow   call FCFS         all           yes
    continuum       engine LRU          Continuum TTL     none       program FCFS      all           no
    agentflow       workflow            workflow TTL      workflow   program FCFS*     working set   yes
    belady          clairvoyant (MIN)   none              none       call FCFS         all           yes
    lru             engine LRU          none              none       call FCFS         all           as configured

* with a bound: a call that has waited 10 s goes ahead of those that have not.

KVFlow's own baseline is SGLang with HiCache, and its prefetch needs the host tier; Continuum runs
on vLLM without offload. `belady` bounds eviction only: it admits every program at once, so a
policy that also decides admission may beat it (the hindsight references in `bench/admission.py`
bound that). The scheduler (`agentflow.runtime.scheduler`) applies them; the simulated worker, the
local engine and the SGLang plugin import these same objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentflow.runtime.policies.admission import (
    AdmissionPolicy, CallFcfs, FairShare, FairShareConfig, ProgramFcfs,
)
from agentflow.runtime.policies.eviction import (
    BeladyEviction, EvictionPolicy, FutureOracle, LruEviction, WorkflowEviction,
)
from agentflow.runtime.policies.programs import (
    AdmitAll, ProgramAdmission, ProgramPlan, StaticCap, WorkingSet, WorkingSetConfig, footprint_tokens,
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
    programs: ProgramAdmission = AdmitAll()
    host_tier: bool | None = None  # the engine's host KV tier: on, off, or None (as the run configures)


POLICY_NAMES = ("sglang", "sglang-hicache", "kvflow", "continuum", "agentflow", "belady")
ALL_POLICY_NAMES = POLICY_NAMES + ("lru",)


def make_policy(
    name: str,
    *,
    oracle: FutureOracle | None = None,
    ttl: TtlConfig = TtlConfig(),
    prefetch: PrefetchConfig = PrefetchConfig(),
    fair_share: FairShareConfig | None = None,
    working_set: WorkingSetConfig = WorkingSetConfig(),
) -> Policy:
    """A preset by name. `belady` needs an `oracle` that knows the future (a replayed workload)."""
    if name in ("sglang", "sglang-hicache", "lru"):
        host = {"sglang": False, "sglang-hicache": True, "lru": None}[name]
        return Policy(name=name, eviction=LruEviction(), ttl=NoPins(), prefetch=NoPrefetch(), admission=CallFcfs(),
                      host_tier=host)
    if name == "kvflow":
        return Policy(name=name, eviction=WorkflowEviction(), ttl=NoPins(), prefetch=WorkflowPrefetch(prefetch),
                      admission=CallFcfs(), host_tier=True)
    if name == "continuum":
        return Policy(name=name, eviction=LruEviction(), ttl=ContinuumTtl(ttl), prefetch=NoPrefetch(),
                      admission=ProgramFcfs(), host_tier=False)
    if name == "agentflow":
        # program FCFS, with no call of an active program waiting more than 10 s behind others
        admission = FairShare(fair_share) if fair_share is not None else ProgramFcfs(max_wait_s=10.0)
        return Policy(name=name, eviction=WorkflowEviction(), ttl=WorkflowTtl(ttl),
                      prefetch=WorkflowPrefetch(prefetch), admission=admission, programs=WorkingSet(working_set),
                      host_tier=True)
    if name == "belady":
        if oracle is None:
            raise ValueError("policy 'belady' reads the future: pass oracle=... (a replayed workload provides one)")
        return Policy(name=name, eviction=BeladyEviction(oracle), ttl=NoPins(), prefetch=NoPrefetch(),
                      admission=CallFcfs(), host_tier=True)
    raise ValueError(f"unknown policy {name!r}; valid: {', '.join(ALL_POLICY_NAMES)}")


__all__ = [
    "ALL_POLICY_NAMES", "POLICY_NAMES", "AdmissionPolicy", "AdmitAll", "ProgramAdmission", "ProgramPlan",
    "StaticCap", "WorkingSet", "WorkingSetConfig", "footprint_tokens", "BeladyEviction", "CallFcfs", "ContinuumTtl",
    "EvictionPolicy", "FairShare",
    "FairShareConfig", "FutureOracle", "LruEviction", "NoPins", "NoPrefetch", "Policy", "PrefetchConfig",
    "PrefetchPolicy", "ProgramFcfs", "TtlChoice", "TtlConfig", "TtlPolicy", "WorkflowEviction", "WorkflowPrefetch",
    "WorkflowTtl", "choose_ttl", "make_policy",
]
