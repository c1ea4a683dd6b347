"""Where a program's next LLM call runs: session affinity, cache affinity and load, in one pure function.

`route(request, workers, config)` is a policy: it reads a snapshot (the call, each worker's load and
which of the call's prefixes each worker holds) and returns a `RouteChoice`; it changes nothing. The
service (core.py) applies it. The design follows DualMap (ICLR'26: two hash candidates per key,
SLO-aware choice between them, hotspot moves, hash rings that remap little) adapted to programs:

    request ──> routing key ──> HRW hash A ──> primary   ─┐
      │         (program id)    HRW hash B ──> secondary ─┼─> candidates ──> predicted TTFT each
      │                         (+ a worker that already  ─┘                  (queue + uncached prefill)
      │                          holds the program's own KV)
      └─> current worker? ── within SLO, not overloaded ──> STICKY
                          └─ else: best other worker, moved to only when its TTFT, the session's
                             recompute included, beats staying by `min_move_saving_s`, or when the
                             current one is overloaded and the other within SLO ──> MIGRATED
                                                                   (else STICKY anyway)

Why the key is the program, not the prompt's first prefix. Many programs share one system prompt;
a router that hashes (or matches) the longest cached prefix sends them all to the worker that
computed it first: the known collapse of prefix-only routers. A program's own KV (its history) is
the only KV that ties it to one worker, and every history prefix of the program is its own, so the
program id names it from the program's first call (which has no history yet) to its last. The
shared system prompt still counts in the predicted TTFT (a worker that lacks it prefills it), but
never in the affinity that picks between the two candidates: after one miss per worker every worker
holds it, so attracting sessions with it would buy one prefill at the price of a hotspot.

Choosing between the candidates (no current worker):

    affinity pick = the candidate holding most of the program's own tokens (beyond the shared
                    prefixes: `num_shared_prefixes`, by default prefixes[0]);
                    tie -> the less loaded (queueing delay only, cache excluded); tie -> hash order
    affinity pick within SLO and not overloaded            -> AFFINITY
    else the candidate with the lowest predicted TTFT that is not overloaded and within SLO -> LOAD
    else (both candidates are hotspots) every healthy worker, lowest predicted TTFT        -> LOAD

Two candidates, not one: with one hash, a key's worker is fixed and a hot worker stays hot; with the
better of two the most loaded worker carries O(ln ln n) instead of O(ln n / ln ln n) over the mean
("power of two choices"). Rendezvous (highest-random-weight) hashing gives each key a ranking of
all workers; a joining worker takes a key only where it ranks first (1/(n+1) of the keys), a
leaving worker gives up only its own keys. Hash B picks the best worker other than hash A's choice,
so the two candidates always differ.

Predicted TTFT, in seconds, on worker w (all work over w's prefill rate):

    queue_s   = (queue_depth * queued_call_tokens + running * running_call_tokens) / prefill_tokens_per_s
    prefill_s = (prompt tokens not on w's GPU; host-tier tokens at host_hit_cost_fraction) / prefill_tokens_per_s

    prefixes (cumulative tokens, root first):  [ sys 1,200 ][ own history 9,600 ][ new ]  prompt 10,000
    held on w:                                   gpu          host
    prefill tokens = 0 + (9,600 - 1,200) * 0.1 + (10,000 - 9,600) = 1,240

A worker is overloaded when its queue reaches `overload_queue_depth`, or when its pins leave too little
memory for this call: pinned_tokens + the call's new tokens + its expected output above
`overload_kv_fraction` of the capacity (the call would wait for pins to expire or break them).
kv_used_tokens is not a signal: a radix cache is full by design and evicts on demand.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agentflow.errors import AgentflowError


class RoutingError(AgentflowError):
    """The router was given input it cannot route: a malformed request or worker list."""


class NoWorkerError(RoutingError):
    """No healthy worker to route to (none registered, or all unhealthy or excluded)."""


class RouteReason(enum.Enum):
    STICKY = "sticky"  # the program's current worker (holds its KV), kept
    AFFINITY = "affinity"  # no current worker: the candidate holding the program's KV (or its primary)
    LOAD = "load"  # the affinity pick would break the SLO: chosen by predicted TTFT
    MIGRATED = "migrated"  # moved off an overloaded current worker: the move costs less than it saves
    ONLY_ONE = "only_one"  # one healthy worker: nothing to choose


class Role(enum.Enum):
    """Why a worker was considered."""

    CURRENT = "current"
    PRIMARY = "primary"  # the routing key's first-ranked worker under hash A
    SECONDARY = "secondary"  # its first-ranked worker under hash B, other than the primary
    HOLDER = "holder"  # holds the most of the program's own KV, though not a hash candidate
    ESCAPE = "escape"  # any other healthy worker, considered when every candidate is a hotspot


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig:
    ttft_slo_s: float = 2.0
    overload_queue_depth: int = 32  # calls waiting on a worker: at this many it is a hotspot
    overload_kv_fraction: float = 0.95  # pins + this call above this share of KV capacity: a hotspot
    # A queued call's prefill and a running call's share of each step (decode interference), in
    # prefill tokens: the load part of the predicted TTFT, since a worker reports counts, not tokens.
    queued_call_tokens: int = 2048
    running_call_tokens: int = 128
    host_hit_cost_fraction: float = 0.1  # reloading a host-tier token costs this much of prefilling it
    min_move_saving_s: float = 0.05  # hysteresis: a move must save at least this much TTFT
    hash_seeds: tuple[str, str] = ("dualmap-a", "dualmap-b")

    def __post_init__(self) -> None:
        if self.ttft_slo_s <= 0:
            raise RoutingError(f"RouterConfig.ttft_slo_s must be > 0 (got {self.ttft_slo_s})")
        if self.overload_queue_depth < 1:
            raise RoutingError(f"RouterConfig.overload_queue_depth must be >= 1 (got {self.overload_queue_depth})")
        if not 0 < self.overload_kv_fraction <= 1:
            raise RoutingError(f"RouterConfig.overload_kv_fraction must be in (0, 1] (got {self.overload_kv_fraction})")
        if self.queued_call_tokens < 0 or self.running_call_tokens < 0:
            raise RoutingError("RouterConfig.queued_call_tokens and running_call_tokens must be >= 0")
        if not 0 <= self.host_hit_cost_fraction <= 1:
            raise RoutingError(
                f"RouterConfig.host_hit_cost_fraction must be in [0, 1] (got {self.host_hit_cost_fraction})")
        if self.min_move_saving_s < 0:
            raise RoutingError(f"RouterConfig.min_move_saving_s must be >= 0 (got {self.min_move_saving_s})")
        if len(self.hash_seeds) != 2 or self.hash_seeds[0] == self.hash_seeds[1]:
            raise RoutingError(f"RouterConfig.hash_seeds must be two different strings (got {self.hash_seeds!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLoad:
    name: str
    queue_depth: int  # calls waiting for admission
    running: int  # calls in the running batch
    kv_capacity_tokens: int  # 0: unknown (no memory check)
    kv_used_tokens: int
    prefill_tokens_per_s: float
    pinned_tokens: int = 0
    healthy: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRequest:
    program_id: str  # "" for a call outside any program: the key is then its deepest prefix
    current_worker: str | None  # where the program's KV is (sticky), None for its first call
    prompt_tokens: int
    # (key, cumulative tokens) root first: prefixes[0] is the shared system prompt, then the program's own
    prefixes: tuple[tuple[str, int], ...] = ()
    held: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # key -> {worker: "gpu" | "host"}
    expected_output_tokens: int = 0
    # How many leading prefixes are shared with other programs (system prompt segments): they count
    # in the predicted TTFT but never in the affinity that picks between candidates.
    num_shared_prefixes: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Alternative:
    """One worker the router considered, with its prediction."""

    worker: str
    role: Role
    predicted_ttft_s: float
    queue_s: float
    prefill_s: float
    cached_tokens: int  # prompt tokens on this worker's GPU (host-tier tokens not counted)
    own_cached_tokens: int  # gpu or host, the program's own (beyond the shared prefixes)
    overloaded: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteChoice:
    worker: str
    reason: RouteReason
    predicted_ttft_s: float
    routing_key: str
    alternatives: tuple[Alternative, ...]  # every worker considered, the chosen one included
    # MIGRATED only: the TTFT the move saves (queueing avoided, as if the KV were already there), and
    # its cost: recomputing on the new worker the KV the old one held. Moved when saving - cost >= min_move_saving_s.
    move_saving_s: float = 0.0
    move_cost_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# Hashing: rendezvous (highest random weight) rankings, one per seed.


def _weights(seed: str, key: str, workers: Sequence[str]) -> list[int]:
    """Each worker's rendezvous weight for `key`: the first 8 bytes of blake2b("seed\0key\0worker").
    The "seed\0key\0" part is hashed once and copied per worker (the same digests, half the work)."""
    head = hashlib.blake2b(f"{seed}\x00{key}\x00".encode(), digest_size=8)
    out = []
    for w in workers:
        h = head.copy()
        h.update(w.encode())
        out.append(int.from_bytes(h.digest(), "big"))
    return out


def candidates(key: str, workers: Sequence[str], config: RouterConfig = RouterConfig()) -> tuple[str, ...]:
    """The key's primary (best under hash A) and secondary (best under hash B among the rest).

    One worker: a 1-tuple. Depends only on the key and the set of names, not their order."""
    if not workers:
        return ()
    return _candidates(key, tuple(sorted(workers)), tuple(config.hash_seeds))


# A session's calls ask again and again for the same key over the same workers: remember the
# answer (2 x workers hashes each) rather than rehash; bounded, so a long-lived service forgets.
@functools.lru_cache(maxsize=1 << 16)
def _candidates(key: str, workers: tuple[str, ...], seeds: tuple[str, str]) -> tuple[str, ...]:
    seed_a, seed_b = seeds
    primary = max(zip(_weights(seed_a, key, workers), workers))[1]
    rest = [w for w in workers if w != primary]
    if not rest:
        return (primary,)
    return primary, max(zip(_weights(seed_b, key, rest), rest))[1]


def routing_key(request: RouteRequest) -> str:
    """The program id; a call outside any program is keyed by its deepest prefix (its own text)."""
    if request.program_id:
        return f"program:{request.program_id}"
    if request.prefixes:
        return f"prefix:{request.prefixes[-1][0]}"
    return "prefix:"


# ---------------------------------------------------------------------------------------------
# Predictions.


def _validate(request: RouteRequest, workers: Sequence[WorkerLoad]) -> None:
    if request.prompt_tokens < 0:
        raise RoutingError(f"RouteRequest.prompt_tokens must be >= 0 (got {request.prompt_tokens})")
    if request.expected_output_tokens < 0:
        raise RoutingError(
            f"RouteRequest.expected_output_tokens must be >= 0 (got {request.expected_output_tokens})")
    if request.num_shared_prefixes < 0:
        raise RoutingError(f"RouteRequest.num_shared_prefixes must be >= 0 (got {request.num_shared_prefixes})")
    last = 0
    for i, (key, num_tokens) in enumerate(request.prefixes):
        if num_tokens < last or num_tokens > request.prompt_tokens:
            raise RoutingError(f"RouteRequest.prefixes[{i}] ({key!r}): cumulative tokens must be non-decreasing "
                               f"and at most prompt_tokens={request.prompt_tokens} (got {num_tokens} after {last})")
        last = num_tokens
    seen: set[str] = set()
    for w in workers:
        if w.name in seen:
            raise RoutingError(f"worker {w.name!r} is listed twice")
        seen.add(w.name)
        if w.healthy and w.prefill_tokens_per_s <= 0:
            raise RoutingError(f"worker {w.name!r}: prefill_tokens_per_s must be > 0 (got {w.prefill_tokens_per_s})")


def _held_tokens(request: RouteRequest, worker: str) -> tuple[int, int, int]:
    """(gpu tokens, host tokens, own tokens) of the prompt that `worker` holds.

    A radix cache holds a path from the root, so only the unbroken run of held prefixes from the
    root counts: a deeper prefix behind a missing one cannot be reused as a prefix."""
    gpu = host = 0
    prev = 0
    num_shared = min(request.num_shared_prefixes, len(request.prefixes))
    shared = request.prefixes[num_shared - 1][1] if num_shared else 0
    for key, num_tokens in request.prefixes:
        tier = request.held.get(key, {}).get(worker)
        if tier is None:
            break
        seg = num_tokens - prev
        if tier == "gpu":
            gpu += seg
        elif tier == "host":
            host += seg
        else:
            raise RoutingError(f"RouteRequest.held[{key!r}][{worker!r}] must be 'gpu' or 'host' (got {tier!r})")
        prev = num_tokens
    own = max(0, prev - shared)
    return gpu, host, own


def _queue_s(w: WorkerLoad, config: RouterConfig) -> float:
    work = w.queue_depth * config.queued_call_tokens + w.running * config.running_call_tokens
    return work / w.prefill_tokens_per_s


def _predict(request: RouteRequest, w: WorkerLoad, config: RouterConfig, role: Role = Role.PRIMARY) -> Alternative:
    gpu, host, own = _held_tokens(request, w.name)
    missing = request.prompt_tokens - gpu - host
    prefill_s = (missing + host * config.host_hit_cost_fraction) / w.prefill_tokens_per_s
    queue_s = _queue_s(w, config)
    overloaded = w.queue_depth >= config.overload_queue_depth
    if w.kv_capacity_tokens > 0:
        need = w.pinned_tokens + missing + host + request.expected_output_tokens
        overloaded = overloaded or need > config.overload_kv_fraction * w.kv_capacity_tokens
    return Alternative(worker=w.name, role=role, predicted_ttft_s=queue_s + prefill_s, queue_s=queue_s,
                       prefill_s=prefill_s, cached_tokens=gpu, own_cached_tokens=own, overloaded=overloaded)


def _ok(a: Alternative, config: RouterConfig) -> bool:
    return not a.overloaded and a.predicted_ttft_s <= config.ttft_slo_s


def _by_ttft(alts: Sequence[Alternative]) -> Alternative:
    # min() keeps the first of equals: callers list candidates in hash order
    return min(alts, key=lambda a: (a.overloaded, a.predicted_ttft_s))


# ---------------------------------------------------------------------------------------------
# The policy.


def route(request: RouteRequest, workers: Sequence[WorkerLoad], config: RouterConfig = RouterConfig()) -> RouteChoice:
    """Pick the worker for one call. Pure: same inputs, same choice. Raises NoWorkerError if none is healthy."""
    _validate(request, workers)
    healthy = {w.name: w for w in workers if w.healthy}
    if not healthy:
        raise NoWorkerError(f"no healthy worker to route program {request.program_id!r} to "
                            f"({len(workers)} listed, all unhealthy)" if workers else
                            f"no worker to route program {request.program_id!r} to: none is registered")
    key = routing_key(request)
    if len(healthy) == 1:
        (w,) = healthy.values()
        alt = _predict(request, w, config)
        return RouteChoice(worker=w.name, reason=RouteReason.ONLY_ONE, predicted_ttft_s=alt.predicted_ttft_s,
                           routing_key=key, alternatives=(alt,))

    ranked = candidates(key, sorted(healthy), config)
    roles: dict[str, Role] = {}
    current = request.current_worker if request.current_worker in healthy else None
    if current is not None:
        roles[current] = Role.CURRENT
    for name, role in zip(ranked, (Role.PRIMARY, Role.SECONDARY)):
        roles.setdefault(name, role)
    # Only a worker named in `held` can hold any of the prompt: the others hold own = 0, and are
    # never the holder (first of equals by name), so they need no look here.
    holders = sorted({w for tiers in request.held.values() for w in tiers if w in healthy})
    if holders:
        own = {n: _held_tokens(request, n)[2] for n in holders}
        holder = max(holders, key=own.__getitem__)
        if own[holder] > 0:
            roles.setdefault(holder, Role.HOLDER)
    # Each worker is predicted once, in its role (most routes look at 2 or 3 workers).
    considered = [_predict(request, healthy[n], config, r) for n, r in roles.items()]

    if current is not None:
        return _sticky_or_move(request, considered, healthy, key, config)

    affinity = max(considered, key=lambda a: (a.own_cached_tokens, -a.queue_s, -list(roles).index(a.worker)))
    if _ok(affinity, config):
        return _choice(affinity, RouteReason.AFFINITY, key, considered)
    ok = [a for a in considered if _ok(a, config)]
    if ok:
        return _choice(_by_ttft(ok), RouteReason.LOAD, key, considered)
    considered += [_predict(request, healthy[n], config, Role.ESCAPE) for n in sorted(healthy) if n not in roles]
    return _choice(_by_ttft(considered), RouteReason.LOAD, key, considered)


def _choice(a: Alternative, reason: RouteReason, key: str, considered: Sequence[Alternative], **move) -> RouteChoice:
    return RouteChoice(worker=a.worker, reason=reason, predicted_ttft_s=a.predicted_ttft_s, routing_key=key,
                       alternatives=tuple(considered), **move)


def _sticky_or_move(request: RouteRequest, considered: list[Alternative], healthy: Mapping[str, WorkerLoad],
                    key: str, config: RouterConfig) -> RouteChoice:
    """Stay on the current worker unless it is a hotspot and a move saves more than it costs.

    The move's cost is the session's KV, recomputed on the new worker (the tokens it held here and
    not there, over the new worker's prefill rate); the target's predicted TTFT already includes
    that prefill, so the move pays off when that TTFT beats staying by `min_move_saving_s`. Off an
    overloaded worker, any target within the SLO will do."""
    cur = considered[0]  # roles list CURRENT first
    if _ok(cur, config):
        return _choice(cur, RouteReason.STICKY, key, considered)
    others = [a for a in considered if a.worker != cur.worker]
    if not any(_ok(a, config) for a in others):
        seen = {a.worker for a in considered}
        considered += [_predict(request, healthy[n], config, Role.ESCAPE) for n in sorted(healthy) if n not in seen]
        others = [a for a in considered if a.worker != cur.worker]
    target = _by_ttft(others)
    gpu_here, host_here, _ = _held_tokens(request, cur.worker)
    gpu_there, host_there, _ = _held_tokens(request, target.worker)
    recompute = max(0, gpu_here + host_here - gpu_there - host_there)
    cost_s = recompute / healthy[target.worker].prefill_tokens_per_s
    saving_s = cur.predicted_ttft_s - target.predicted_ttft_s + cost_s  # what the move saves, before its cost
    # An overloaded worker's TTFT is a lower bound (it ignores waiting for pins to expire or for a
    # place in a long queue): off one, any target within the SLO is a good move.
    escape = cur.overloaded and _ok(target, config)
    if target.overloaded or not (escape or saving_s - cost_s >= config.min_move_saving_s):
        return _choice(cur, RouteReason.STICKY, key, considered)
    return _choice(target, RouteReason.MIGRATED, key, considered, move_saving_s=saving_s, move_cost_s=cost_s)
