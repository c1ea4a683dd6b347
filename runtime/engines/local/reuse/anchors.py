"""Anchors: how a shared segment's KV deviates in a new context, learned online from real prefills.

Rotation (`rope.py`) places a segment's keys at any offset exactly, but the KV of every layer
above 0 also depends on what the tokens attended to: in agent B's prompt, the answer of agent A
sits after B's system prompt and the question, not after A's. KVCOMM's observation is that this
*deviation* `real - stored` is similar for similar segments in the same slot of the same
template, so it can be estimated from a few observed cases, the anchors.

    one pool per kind (namespace, slot), e.g. ("tenant-1", "answer:agent2->agent4")

      anchor = one observed context, all tensors position-neutral [layers, kv_heads, tokens, dim]
      ┌───────────────────────────────────────────────────────────────────────────────┐
      │ base_k/base_v     the segment's stored KV when it was observed                │
      │ dev_k/dev_v       real KV of the span in that prompt − base (layer 0 ≡ 0)     │
      │ follow_dev_k/_v   same for the text that follows the span (template glue),    │
      │                   against that text's own stored KV (None if not recorded)   │
      │ num_tokens, start (offset where it was seen), uses (how often it served)     │
      └───────────────────────────────────────────────────────────────────────────────┘

    estimate(new base):
      usable  = anchors with num_tokens >= new span (their first n tokens line up)
      d_a     = RMS distance(new base, anchor base over n tokens), layers 1.. only,
                relative to the RMS of the new base (so the scale is the model's, not ours)
      w       = softmax(-d_a / temperature)              (d_a <= exact_distance: that anchor alone)
      m       = Σ w_a dev_a[:n]                          KVCOMM's similarity-weighted deviation
      λ_l     = leave-one-out shrinkage per layer (`shrunk_mean`): how well a weighted mean of
                the other anchors predicts each anchor; 1 when they agree, 0 when they cancel
      deviation = λ_l · m                                (trust = mean λ over layers)
      fall back (None) when #usable < min_anchors, the nearest is farther than max_distance,
      entropy(w) > entropy_frac · log2(#usable), or trust < min_trust

Why the shrinkage (measured, docs/cross-agent-reuse.md): on SmolLM2 the deviation of an agent's
answer in another agent's prompt depends on the answer's content; anchors seen with other
content (other questions) agree on part of it only. KVCOMM's plain weighted sum adds their
disagreement as noise: with 2 anchors per slot its KV error is 16% *worse* than rotation alone,
and it beats rotation only from 3 anchors on; shrunk by λ the estimate is better at every pool
size (6% with 2 anchors, 11% over all). Per-token weights (KVCOMM's code weighs anchors per
token) are no better. (`bench/cross_agent_reuse.py --kv-error`.)

Replacement rule (bounded pool): at most `max_anchors` per kind; adding one to a full pool drops
the anchor that served least (`uses`), the oldest among equals — an anchor that never matched
anything is the cheapest to lose, and ties go to the stalest context.

Fallbacks become anchors: the caller (`prefill.py`) runs a full prefill and `observe(...)`s the
real KV, so the pool grows exactly where estimation was not trusted.

Memory: an anchor holds 4 tensors of the segment's size (base and deviation, K and V): for
SmolLM2-135M in fp32, 92 KiB per token, so a 100-token segment's anchor is ~9 MiB and a full pool
of 8 is ~72 MiB per kind. `max_anchors` is the knob (`AnchorPool.num_bytes` reports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class AnchorConfig:
    """Thresholds of the estimator; the defaults are justified in docs/cross-agent-reuse.md."""

    max_anchors: int = 8  # per kind; the replacement rule above bounds the pool
    min_anchors: int = 2  # fewer usable anchors: fall back (KVCOMM: "at most one" falls back)
    temperature: float = 0.1  # softmax over relative distances; lower: the nearest anchor dominates
    entropy_frac: float = 1.0  # fall back when entropy(w) > entropy_frac * log2(#usable); 1.0: never
    max_distance: float | None = None  # fall back when the nearest anchor is farther (None: never)
    min_trust: float = 0.1  # fall back when the anchors' leave-one-out trust is below this
    exact_distance: float = 1e-3  # an anchor this close is the same text in the same slot: use it as is

    def __post_init__(self) -> None:
        if self.max_anchors < 1 or self.min_anchors < 1 or self.min_anchors > self.max_anchors:
            raise ValueError(f"need 1 <= min_anchors <= max_anchors (got {self.min_anchors}, {self.max_anchors})")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature})")
        if not 0.0 <= self.entropy_frac <= 1.0:
            raise ValueError(f"entropy_frac must be in [0, 1] (got {self.entropy_frac})")
        if not 0.0 <= self.min_trust <= 1.0:
            raise ValueError(f"min_trust must be in [0, 1] (got {self.min_trust})")


@dataclass(slots=True, kw_only=True, eq=False)  # identity: tensors have no truth value
class Anchor:
    base_k: Any
    base_v: Any
    dev_k: Any
    dev_v: Any
    start: int
    seq: int
    follow_dev_k: Any = None
    follow_dev_v: Any = None
    uses: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.base_k.shape[2])

    @property
    def num_bytes(self) -> int:
        tensors = [self.base_k, self.base_v, self.dev_k, self.dev_v, self.follow_dev_k, self.follow_dev_v]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """A deviation to add to a placed segment (`dev_*` [layers, kv_heads, n, dim]) and why it was trusted."""

    dev_k: Any
    dev_v: Any
    weights: tuple[float, ...]
    distances: tuple[float, ...]
    entropy_bits: float
    trust: float = 1.0  # mean over layers 1.. of the leave-one-out shrinkage factor (1: exact match)
    follow_dev_k: Any = None  # over the shortest recorded following text among the used anchors
    follow_dev_v: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What `AnchorPool.estimate` decided: an estimate, or the reason it fell back (estimate None)."""

    estimate: Estimate | None
    reason: str  # "estimated", "too_few_anchors", "anchors_disagree", "too_far", "untrusted"
    num_usable: int = 0


def relative_distance(base_k: Any, base_v: Any, other_k: Any, other_v: Any) -> float:
    """RMS difference of two position-neutral KVs over layers 1.. (layer 0 never deviates),
    relative to the RMS of the first; keys and values weigh equally."""
    num = ((base_k[1:] - other_k[1:]).pow(2).mean() + (base_v[1:] - other_v[1:]).pow(2).mean()).item()
    den = (base_k[1:].pow(2).mean() + base_v[1:].pow(2).mean()).item()
    return math.sqrt(num / max(den, 1e-30))


def softmax_weights(distances: list[float], temperature: float) -> list[float]:
    logits = [-d / temperature for d in distances]
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def entropy_bits(weights: list[float]) -> float:
    return -sum(w * math.log2(w) for w in weights if w > 0)


class AnchorPool:
    """Anchors of one kind (one slot of one template in one namespace); bounded, updated online."""

    def __init__(self, config: AnchorConfig | None = None):
        self.config = config or AnchorConfig()
        self.anchors: list[Anchor] = []
        self._seq = 0
        # per span length n: the usable anchors' tensors stacked, and their leave-one-out λ with
        # uniform weights; rebuilt only when the pool changes (estimate is on the TTFT path)
        self._prepared: dict[int, tuple[int, list[Anchor], Any, Any, Any, Any, Any, Any]] = {}

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def num_bytes(self) -> int:
        return sum(a.num_bytes for a in self.anchors)

    def observe(self, *, base_k: Any, base_v: Any, real_k: Any, real_v: Any, start: int,
                follow_base: tuple[Any, Any] | None = None, follow_real: tuple[Any, Any] | None = None) -> Anchor:
        """Record one real context: `base_*` the stored segment KV, `real_*` the same span's KV
        from a full prefill, both position-neutral; optionally the following text's (stored, real)."""
        if base_k.shape != real_k.shape or base_v.shape != real_v.shape:
            raise ValueError(f"base and real KV of a span must have one shape (got {tuple(base_k.shape)} "
                             f"and {tuple(real_k.shape)})")
        dev_k, dev_v = real_k - base_k, real_v - base_v
        dev_k[0].zero_()  # layer 0 sees only its own token: rotation alone is exact there
        dev_v[0].zero_()
        fk = fv = None
        if follow_base is not None and follow_real is not None:
            fk, fv = follow_real[0] - follow_base[0], follow_real[1] - follow_base[1]
            fk[0].zero_()
            fv[0].zero_()
        anchor = Anchor(base_k=base_k.clone(), base_v=base_v.clone(), dev_k=dev_k, dev_v=dev_v, start=start,
                        seq=self._seq, follow_dev_k=fk, follow_dev_v=fv)
        self._seq += 1
        self._prepared.clear()
        if len(self.anchors) >= self.config.max_anchors:
            victim = min(self.anchors, key=lambda a: (a.uses, a.seq))
            self.anchors.remove(victim)
        self.anchors.append(anchor)
        return anchor

    def _prepare(self, n: int) -> tuple[int, list[Anchor], Any, Any, Any, Any, Any, Any]:
        """Stacked tensors of the anchors usable for a span of n tokens, and their λ (uniform
        weights: measured weights are near uniform, entropy 0.96-1.0 of the maximum)."""
        import torch

        hit = self._prepared.get(n)
        if hit is not None:
            return hit
        usable = [a for a in self.anchors if a.num_tokens >= n]
        bk = torch.stack([a.base_k[1:, :, :n] for a in usable])
        bv = torch.stack([a.base_v[1:, :, :n] for a in usable])
        dk = torch.stack([a.dev_k[:, :, :n] for a in usable])
        dv = torch.stack([a.dev_v[:, :, :n] for a in usable])
        uniform = [1.0 / len(usable)] * len(usable)
        _, lam_k = shrunk_mean(list(dk), uniform)
        _, lam_v = shrunk_mean(list(dv), uniform)
        entry = self._prepared[n] = (n, usable, bk, bv, dk, dv, lam_k, lam_v)
        return entry

    def estimate(self, base_k: Any, base_v: Any) -> Verdict:
        """The deviation for a new context of a segment whose stored KV is `base_*`, or a fallback."""
        cfg = self.config
        n = int(base_k.shape[2])
        usable = [a for a in self.anchors if a.num_tokens >= n]
        if len(usable) < cfg.min_anchors:
            return Verdict(estimate=None, reason="too_few_anchors", num_usable=len(usable))
        _, usable, bk, bv, dk, dv, lam_k, lam_v = self._prepare(n)
        num = (bk - base_k[1:]).pow(2).mean(dim=(1, 2, 3, 4)) + (bv - base_v[1:]).pow(2).mean(dim=(1, 2, 3, 4))
        den = max((base_k[1:].pow(2).mean() + base_v[1:].pow(2).mean()).item(), 1e-30)
        distances = [math.sqrt(x / den) for x in num.tolist()]
        if cfg.max_distance is not None and min(distances) > cfg.max_distance:
            return Verdict(estimate=None, reason="too_far", num_usable=len(usable))
        weights = softmax_weights(distances, cfg.temperature)
        h = entropy_bits(weights)
        if len(usable) > 1 and h > cfg.entropy_frac * math.log2(len(usable)) + 1e-12:
            return Verdict(estimate=None, reason="anchors_disagree", num_usable=len(usable))
        nearest = min(range(len(usable)), key=distances.__getitem__)
        if distances[nearest] <= cfg.exact_distance:  # the same text seen in this slot: its deviation as is
            weights = [1.0 if i == nearest else 0.0 for i in range(len(usable))]
            lam_k = lam_v = torch_ones_like(lam_k)
        wt = dk.new_tensor(weights)
        dev_k = _scaled(torch_einsum_mean(wt, dk), lam_k)
        dev_v = _scaled(torch_einsum_mean(wt, dv), lam_v)
        trust = float((lam_k[1:].mean() + lam_v[1:].mean()) / 2) if dev_k.shape[0] > 1 else 1.0
        if trust < cfg.min_trust:
            return Verdict(estimate=None, reason="untrusted", num_usable=len(usable))
        fk = fv = None
        if all(a.follow_dev_k is not None for a in usable):
            m = min(int(a.follow_dev_k.shape[2]) for a in usable)
            fk = _scaled(sum(w * a.follow_dev_k[:, :, :m] for w, a in zip(weights, usable, strict=True)), lam_k)
            fv = _scaled(sum(w * a.follow_dev_v[:, :, :m] for w, a in zip(weights, usable, strict=True)), lam_v)
        for w, a in zip(weights, usable, strict=True):
            if w >= 1.0 / (2 * len(usable)):  # counts as having served: protected from replacement
                a.uses += 1
        est = Estimate(dev_k=dev_k, dev_v=dev_v, weights=tuple(weights), distances=tuple(distances),
                       entropy_bits=h, trust=trust, follow_dev_k=fk, follow_dev_v=fv)
        return Verdict(estimate=est, reason="estimated", num_usable=len(usable))


def torch_ones_like(t: Any) -> Any:
    import torch

    return torch.ones_like(t)


def torch_einsum_mean(w: Any, stack: Any) -> Any:
    import torch

    return torch.einsum("a,alhtd->lhtd", w, stack)


def _scaled(t: Any, lam: Any) -> Any:
    return t * lam.view(-1, *([1] * (t.dim() - 1)))


def shrunk_mean(devs: list[Any], weights: list[float]) -> tuple[Any, Any]:
    """The weighted mean of the anchors' deviations, shrunk per layer by how well such a mean
    predicts an anchor it did not see (leave-one-out):

        m_-a   = Σ_{b≠a} w_b dev_b / Σ_{b≠a} w_b
        λ_l    = clip( Σ_a w_a <dev_a, m_-a>_l / Σ_a w_a |m_-a|²_l , 0, 1 )      per layer l
        result = λ_l · Σ_a w_a dev_a

    λ is the least-squares scale of "predict an anchor from the others": near 1 when anchors
    agree (a systematic deviation of the slot), near 0 when they are noise around zero (the
    deviation depends on the content; adding it would do harm, see docs). With one anchor of
    weight 1 (an exact match), λ is 1. Returns (result, λ[layers])."""
    import torch

    stack = torch.stack(devs)  # [A, L, H, T, D]
    w = torch.tensor(weights, dtype=stack.dtype)
    mean = torch.einsum("a,alhtd->lhtd", w, stack)
    num_layers = stack.shape[1]
    if max(weights) >= 1.0 - 1e-9 or len(devs) < 2:
        return mean, torch.ones(num_layers, dtype=stack.dtype)
    num = torch.zeros(num_layers, dtype=torch.float64)
    den = torch.zeros(num_layers, dtype=torch.float64)
    for a in range(len(devs)):
        rest = float(1.0 - w[a])
        if rest <= 1e-12:
            continue
        loo = (mean - w[a] * stack[a]) / rest
        num += float(w[a]) * (stack[a] * loo).sum(dim=(1, 2, 3)).double()
        den += float(w[a]) * (loo * loo).sum(dim=(1, 2, 3)).double()
    lam = (num / den.clamp_min(1e-30)).clamp(0.0, 1.0).to(stack.dtype)
    return _scaled(mean, lam), lam


@dataclass(slots=True)
class AnchorBank:
    """Pools by (namespace, kind): the namespace is part of the key, so tenants never share anchors."""

    config: AnchorConfig = field(default_factory=AnchorConfig)
    pools: dict[tuple[str, str], AnchorPool] = field(default_factory=dict)

    def pool(self, namespace: str, kind: str) -> AnchorPool:
        key = (namespace, kind)
        p = self.pools.get(key)
        if p is None:
            p = self.pools[key] = AnchorPool(self.config)
        return p

    def drop_namespace(self, namespace: str) -> int:
        keys = [k for k in self.pools if k[0] == namespace]
        for k in keys:
            del self.pools[k]
        return len(keys)

    @property
    def num_bytes(self) -> int:
        return sum(p.num_bytes for p in self.pools.values())


__all__ = ["Anchor", "AnchorBank", "AnchorConfig", "AnchorPool", "Estimate", "Verdict", "entropy_bits",
           "relative_distance", "shrunk_mean", "softmax_weights"]
