"""`prefill_with_reuse`: build a prompt's KV from stored segments instead of computing all of it.

A prompt is cut by its placements into placed segments and computed gaps:

    prompt  [ prefix (exact, from the prefix cache) | gap | seg 1 | gap | seg 2 | ... | tail ]
             0                                 m     s1    s1+n1       s2    s2+n2      len-1
    step 1  cache = prefix ++ place(seg 1) ++ place(seg 2) ++ ...        (no model compute)
    step 2  ONE forward over all gap tokens at their true positions, each attending to every
            key at a position <= its own (4D mask, `forward_at`) ──> last token's logits
    step 3  cache reordered into prompt order (a gather per layer)

    place(seg at s)  K = rotate(stored_k + dev_k, +s)      (rope.py: one rotation, exact)
                     V =        stored_v + dev_v
    dev = anchors' estimate for this (namespace, kind)     (anchors.py; zero when anchors are off)

Gaps (template glue, the tail) are computed, attending to the placed KV, so the last token's
logits are computed, never copied, and only the placed spans carry estimation error. One forward
for all gaps rather than one per gap matters on CPU: a forward streams every weight once, so a
few-token forward has a large fixed cost (135M weights read per call). With `reuse_following_text`, a gap
that follows a segment is placed too (its stored KV is the same glue text seen the first time,
plus the anchors' deviation for it); the prompt's last token is always computed.

Fallback, when a present segment's anchors say "do not trust" (too few, too far, untrusted):
  * `fallback="prompt"` (KVCOMM): the whole prompt is prefilled normally (after the exact prefix)
    and every present segment's real KV becomes an anchor of its kind (the following text's too).
    The result is exact and marked `fell_back`.
  * `fallback="segment"`: only that segment is computed, in the same gap forward (the others are
    still placed), and its computed KV becomes the anchor. Cheaper, and it lets anchors be keyed
    by the segment itself: the first prompt that reads a new text computes it in context, later
    readers place it with that observed deviation (an exact-content match).

Selective recomputation (`recompute_ratio = r > 0`; CacheBlend, Yao et al., EuroSys'25, one-shot):
after step 1, a cheap pass computes the TRUE layer-1 K/V of every placed token (embeddings and
decoder layer 0 over the prompt after the prefix, attending to the prefix's exact layer-0 KV, then
layer 1's input norm, k/v projections and RoPE: about one layer of SmolLM2's 30), scores each
placed token by how far its placed layer-1 K/V is from that, and moves the ceil(r x placed) worst
out of the placed set into step 2's gap forward (computed at every layer, attending to the rest,
like head tokens):

    score(t) = |K1_placed(t) - K1_true(t)|^2 / mean_t |K1_true|^2 + (the same for V)
               (squared L2 over kv heads and dims; keys and values normalised so they weigh equally)

CacheBlend picks tokens layer by layer (a token selected at layer i is a candidate at i+1);
here the choice is made once, at layer 1, and the chosen tokens are recomputed at all layers.
Layer 0 cannot deviate (its KV depends on the token and its position only), so layer 1 is the
first layer that can tell. Selected tokens count as computed (`SegmentOutcome.num_selected`,
`ReusePrefill.selected_positions`); `num_recomputed` stays the head, so the first placed
token is never earlier than `start + num_recomputed` (what the engine's exact-prefix rule reads).

Isolation: every placement's `SegmentRef.namespace` must equal the request's namespace (else
ValueError), stored KV is looked up by (namespace, key) and checked against the prompt's tokens,
and anchors are pooled by (namespace, kind).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from agentflow.runtime.engines.local.reuse.anchors import AnchorBank, Verdict
from agentflow.runtime.engines.local.reuse.rope import inv_freq_of, rotate_keys
from agentflow.runtime.engines.local.reuse.segments import (
    SegmentKV,
    SegmentRef,
    SegmentStore,
    cache_of_kv,
    forward,
    kv_of_cache,
    neutral_slice,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Segment `ref` occupies prompt[start : start + num_tokens]; `kind` names its anchor pool
    (one slot of one template, e.g. "answer:agent2->agent4")."""

    ref: SegmentRef
    kind: str
    start: int
    num_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class ReuseConfig:
    use_anchors: bool = True  # False: plain offset realignment (rotation only, never falls back)
    reuse_following_text: bool = False  # place the glue after a segment from its stored KV too
    recompute_head_tokens: int = 0  # compute (not place) each segment's first tokens: they deviate most
    fallback: str = "prompt"  # "prompt": one untrusted segment -> full prefill; "segment": compute it alone
    recompute_ratio: float = 0.0  # compute (not place) this share of the placed tokens: those deviating most

    def __post_init__(self) -> None:
        if self.fallback not in ("prompt", "segment"):
            raise ValueError(f"fallback must be 'prompt' or 'segment' (got {self.fallback!r})")
        if self.recompute_head_tokens < 0:
            raise ValueError(f"recompute_head_tokens must be >= 0 (got {self.recompute_head_tokens})")
        if not 0.0 <= self.recompute_ratio <= 1.0:
            raise ValueError(f"recompute_ratio must be in [0, 1] (got {self.recompute_ratio})")


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentOutcome:
    ref: SegmentRef
    start: int
    num_tokens: int
    reused: bool
    reason: str  # "estimated", "plain", "missing", or the anchors' fallback reason
    num_follow_reused: int = 0
    num_recomputed: int = 0  # of the segment's tokens, computed rather than placed (its head)
    num_selected: int = 0  # of the rest, computed because their layer-1 KV deviated most (`recompute_ratio`)

    @property
    def num_reused(self) -> int:
        return self.num_tokens - self.num_recomputed - self.num_selected if self.reused else 0


@dataclass(slots=True, kw_only=True)
class ReusePrefill:
    logits: Any  # last prompt token's logits [vocab]
    cache: Any  # HF DynamicCache holding the whole prompt
    outcomes: tuple[SegmentOutcome, ...]
    num_prompt_tokens: int
    num_prefix_tokens: int  # copied exact from the prefix cache
    num_reused_tokens: int  # placed from stored segments (and following text)
    num_computed_tokens: int  # run through the model
    fell_back: bool
    selected_positions: tuple[int, ...] = ()  # placed tokens moved to the gap forward (`recompute_ratio`)

    @property
    def num_segment_tokens(self) -> int:
        return sum(o.num_tokens for o in self.outcomes)


def follow_ref(placement: Placement) -> SegmentRef:
    """Where the glue text after a segment of this kind is stored (first time seen, position-neutral)."""
    return SegmentRef(namespace=placement.ref.namespace, key=f"follow:{placement.kind}")


def _check(prompt_ids: Sequence[int], placements: Sequence[Placement], namespace: str, num_prefix: int) -> None:
    last = num_prefix
    for p in placements:
        if p.ref.namespace != namespace:
            raise ValueError(f"placement {p.ref.key!r} is in namespace {p.ref.namespace!r}, the request in "
                             f"{namespace!r}: KV is never reused across namespaces")
        if p.num_tokens <= 0 or p.start < last:
            raise ValueError(f"placements must be sorted, non-empty, after the prefix and not overlap "
                             f"(segment {p.ref.key!r} at [{p.start}, {p.end}), previous end {last})")
        last = p.end
    if last >= len(prompt_ids):
        raise ValueError(f"the prompt's last token must be computed (a segment ends at {last}, prompt has "
                         f"{len(prompt_ids)} tokens)")


def _gap_end(placements: Sequence[Placement], i: int, num_prompt: int) -> int:
    return placements[i + 1].start if i + 1 < len(placements) else num_prompt - 1


def _append(cache: Any, keys: Any, values: Any) -> None:
    for layer in range(keys.shape[0]):
        cache.update(keys[layer].unsqueeze(0), values[layer].unsqueeze(0), layer)


def _full_prefill_and_observe(model: Any, prompt_ids: Sequence[int], placements: Sequence[Placement],
                              segments: list[SegmentKV | None], store: SegmentStore, bank: AnchorBank,
                              inv_freq: Any, record_follow: bool, prefix_kv: tuple[Any, Any] | None) -> tuple[Any, Any]:
    """The exact path: prefill everything after the (exact) prefix; every present segment's real
    KV becomes an anchor of its kind."""
    m = 0 if prefix_kv is None else int(prefix_kv[0].shape[2])
    cache = cache_of_kv(model, *prefix_kv) if prefix_kv is not None else None
    logits, cache = forward(model, prompt_ids[m:], cache, last_only=True)
    keys, values = kv_of_cache(cache)
    for i, (p, seg) in enumerate(zip(placements, segments, strict=True)):
        if seg is None:
            continue
        real_k, real_v = neutral_slice(keys, values, p.start, p.end, inv_freq)
        follow_base = follow_real = None
        gap_end = _gap_end(placements, i, len(prompt_ids))
        if record_follow and gap_end > p.end:
            glue = prompt_ids[p.end:gap_end]
            follow_real = neutral_slice(keys, values, p.end, gap_end, inv_freq)
            stored = store.get(follow_ref(p), glue)
            if stored is None:  # first time this glue is seen: it becomes the stored base
                stored = SegmentKV(token_ids=tuple(glue), keys=follow_real[0].clone(), values=follow_real[1].clone())
                store.put(follow_ref(p), stored)
            follow_base = (stored.keys, stored.values)
        bank.pool(p.ref.namespace, p.kind).observe(base_k=seg.keys, base_v=seg.values, real_k=real_k, real_v=real_v,
                                                   start=p.start, follow_base=follow_base, follow_real=follow_real)
    return logits[-1], cache


def prefill_with_reuse(model: Any, prompt_ids: Sequence[int], placements: Sequence[Placement], *,
                       store: SegmentStore, bank: AnchorBank, namespace: str,
                       config: ReuseConfig | None = None, prefix_kv: tuple[Any, Any] | None = None) -> ReusePrefill:
    """Prefill `prompt_ids`, placing stored segments where `placements` say (see the module doc).

    `prefix_kv`: exact (keys, values) `[layers, kv_heads, m, dim]` of `prompt_ids[:m]` from a
    prefix cache, copied in first. Returns the last token's logits and the full cache."""
    cfg = config or ReuseConfig()
    num_prefix = 0 if prefix_kv is None else int(prefix_kv[0].shape[2])
    placements = list(placements)
    _check(prompt_ids, placements, namespace, num_prefix)
    inv_freq = inv_freq_of(model)
    segments = [store.get(p.ref, prompt_ids[p.start:p.end]) for p in placements]
    verdicts: list[Verdict | None] = [None] * len(placements)
    if cfg.use_anchors:
        for i, (p, seg) in enumerate(zip(placements, segments, strict=True)):
            if seg is not None:
                verdicts[i] = bank.pool(p.ref.namespace, p.kind).estimate(seg.keys, seg.values)
        if cfg.fallback == "prompt" and any(v is not None and v.estimate is None for v in verdicts):
            logits, cache = _full_prefill_and_observe(model, prompt_ids, placements, segments, store, bank, inv_freq,
                                                      cfg.reuse_following_text, prefix_kv)
            outcomes = tuple(SegmentOutcome(ref=p.ref, start=p.start, num_tokens=p.num_tokens, reused=False,
                                            reason="missing" if seg is None else (v.reason if v else "missing"))
                             for p, seg, v in zip(placements, segments, verdicts, strict=True))
            return ReusePrefill(logits=logits, cache=cache, outcomes=outcomes, num_prompt_tokens=len(prompt_ids),
                                num_prefix_tokens=num_prefix, num_reused_tokens=0,
                                num_computed_tokens=len(prompt_ids) - num_prefix, fell_back=True)

    # Assemble: the prefix, then every placed span (cache order = prompt order so far, holes left
    # for the gaps); then ONE forward over all gap tokens at their true positions (see
    # `forward_at`); finally the cache is put back in prompt order.
    keys_parts: list[Any] = []
    values_parts: list[Any] = []
    positions: list[int] = []
    if prefix_kv is not None:
        keys_parts.append(prefix_kv[0])
        values_parts.append(prefix_kv[1])
        positions.extend(range(num_prefix))
    placed = [False] * len(prompt_ids)
    placed[:num_prefix] = [True] * num_prefix
    reused = 0
    outcomes: list[SegmentOutcome] = []
    observe_after: list[tuple[Placement, SegmentKV]] = []
    for i, (p, seg, verdict) in enumerate(zip(placements, segments, verdicts, strict=True)):
        if seg is None:
            outcomes.append(SegmentOutcome(ref=p.ref, start=p.start, num_tokens=p.num_tokens, reused=False,
                                           reason="missing"))
            continue
        if verdict is not None and verdict.estimate is None:  # segment fallback: computed with the gaps
            outcomes.append(SegmentOutcome(ref=p.ref, start=p.start, num_tokens=p.num_tokens, reused=False,
                                           reason=verdict.reason))
            observe_after.append((p, seg))
            continue
        est = verdict.estimate if verdict is not None else None
        head = min(cfg.recompute_head_tokens, p.num_tokens)  # computed with the gaps instead
        k, v = seg.keys[:, :, head:], seg.values[:, :, head:]
        if est is not None:
            k, v = k + est.dev_k[:, :, head:], v + est.dev_v[:, :, head:]
        keys_parts.append(rotate_keys(k, p.start, inv_freq))  # neutral token t sits at t: +start
        values_parts.append(v)
        positions.extend(range(p.start + head, p.end))
        placed[p.start + head:p.end] = [True] * (p.num_tokens - head)
        reused += p.num_tokens - head
        num_follow = 0
        if cfg.reuse_following_text:
            gap_end = _gap_end(placements, i, len(prompt_ids))
            glue = prompt_ids[p.end:gap_end]
            stored = store.get(follow_ref(p), glue) if glue else None
            if stored is not None:
                fk, fv = stored.keys, stored.values
                if est is not None and est.follow_dev_k is not None and est.follow_dev_k.shape[2] >= len(glue):
                    fk, fv = fk + est.follow_dev_k[:, :, :len(glue)], fv + est.follow_dev_v[:, :, :len(glue)]
                keys_parts.append(rotate_keys(fk, p.end, inv_freq))
                values_parts.append(fv)
                positions.extend(range(p.end, gap_end))
                placed[p.end:gap_end] = [True] * len(glue)
                num_follow = len(glue)
                reused += num_follow
        outcomes.append(SegmentOutcome(ref=p.ref, start=p.start, num_tokens=p.num_tokens, reused=True,
                                       reason="estimated" if est is not None else "plain",
                                       num_follow_reused=num_follow, num_recomputed=head))
    cache = None
    selected: list[int] = []
    if keys_parts:
        import torch

        keys, values = torch.cat(keys_parts, dim=2), torch.cat(values_parts, dim=2)
        if cfg.recompute_ratio > 0 and len(positions) > num_prefix:
            selected = select_deviating(model, prompt_ids, positions[num_prefix:], keys[1, :, num_prefix:],
                                        values[1, :, num_prefix:], cfg.recompute_ratio, prefix_kv)
            chosen = set(selected)
            keep = [i for i, t in enumerate(positions) if t not in chosen]
            keys, values = keys[:, :, keep], values[:, :, keep]
            positions = [positions[i] for i in keep]
            for t in selected:
                placed[t] = False
            reused -= len(selected)
            outcomes = [_count_selected(o, chosen) for o in outcomes]
        cache = cache_of_kv(model, keys, values)
    gap_positions = [t for t in range(len(prompt_ids)) if not placed[t]]
    logits, cache = forward_at(model, [prompt_ids[t] for t in gap_positions], gap_positions, cache, positions)
    if observe_after:  # the computed spans become anchors (their context: the prompt as placed)
        keys, values = kv_of_cache(cache)
        for p, seg in observe_after:
            real_k, real_v = neutral_slice(keys, values, p.start, p.end, inv_freq)
            bank.pool(p.ref.namespace, p.kind).observe(base_k=seg.keys, base_v=seg.values, real_k=real_k,
                                                       real_v=real_v, start=p.start)
    return ReusePrefill(logits=logits, cache=cache, outcomes=tuple(outcomes), num_prompt_tokens=len(prompt_ids),
                        num_prefix_tokens=num_prefix, num_reused_tokens=reused,
                        num_computed_tokens=len(gap_positions), fell_back=False,
                        selected_positions=tuple(selected))


def _count_selected(o: SegmentOutcome, chosen: set[int]) -> SegmentOutcome:
    """`o` with the selected tokens of its span (head excluded: never placed) and of its placed
    following text counted as computed."""
    if not o.reused:
        return o
    end = o.start + o.num_tokens
    in_span = sum(1 for t in range(o.start + o.num_recomputed, end) if t in chosen)
    in_follow = sum(1 for t in range(end, end + o.num_follow_reused) if t in chosen)
    if not in_span and not in_follow:
        return o
    return replace(o, num_selected=in_span, num_follow_reused=o.num_follow_reused - in_follow)


def deviation_scores(placed_k: Any, placed_v: Any, true_k: Any, true_v: Any) -> Any:
    """Per token, how far the placed KV is from the true one: `[kv_heads, tokens, head_dim]` in,
    `[tokens]` out; squared L2 over heads and dims, keys and values each divided by the true
    tensor's mean squared norm per token (so that keys and values weigh equally)."""
    dk = (placed_k - true_k).pow(2).sum(dim=(0, 2))
    dv = (placed_v - true_v).pow(2).sum(dim=(0, 2))
    nk = true_k.pow(2).sum(dim=(0, 2)).mean().clamp_min(1e-30)
    nv = true_v.pow(2).sum(dim=(0, 2)).mean().clamp_min(1e-30)
    return dk / nk + dv / nv


def select_deviating(model: Any, prompt_ids: Sequence[int], positions: Sequence[int], placed_k: Any, placed_v: Any,
                     ratio: float, prefix_kv: tuple[Any, Any] | None = None) -> list[int]:
    """The ceil(ratio x len(positions)) placed positions whose layer-1 KV (`placed_k`/`placed_v`,
    `[kv_heads, len(positions), head_dim]`, keys rotated at their positions) deviates most from
    the true layer-1 KV (`true_layer1_kv`), in ascending order."""
    import torch

    num = min(len(positions), math.ceil(ratio * len(positions) - 1e-9))
    if num <= 0:
        return []
    true_k, true_v = true_layer1_kv(model, prompt_ids, positions, prefix_kv)
    scores = deviation_scores(placed_k, placed_v, true_k, true_v)
    top = torch.topk(scores, num, sorted=True).indices.tolist()
    return sorted(positions[i] for i in top)


def true_layer1_kv(model: Any, prompt_ids: Sequence[int], positions: Sequence[int],
                   prefix_kv: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """Layer 1's true K and V at `positions` (ascending, after the prefix), `[kv_heads, n, head_dim]`,
    keys rotated at their positions, as a full prefill of `prompt_ids` computes them.

    Layer 0's K/V depend on the token and its position only, so they are computed for every token
    from the prefix's end to the last position (the prefix's are `prefix_kv`'s layer 0, exact);
    queries, attention, o_proj and MLP run only for `positions`, then layer 1's input norm and
    k/v projections and RoPE. The model's own modules (as `forward.py`), GQA through SDPA."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    base = model.model
    cfg = model.config
    H, KH = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    m = 0 if prefix_kv is None else int(prefix_kv[0].shape[2])
    end = positions[-1] + 1
    n = end - m
    rows = torch.tensor([t - m for t in positions], dtype=torch.long)
    layer0, layer1 = base.layers[0], base.layers[1]
    attn0, attn1 = layer0.self_attn, layer1.self_attn
    with torch.inference_mode():
        x = base.embed_tokens(torch.tensor([list(prompt_ids[m:end])], dtype=torch.long))  # [1, n, hidden]
        cos, sin = base.rotary_emb(x, torch.arange(m, end)[None])
        h = layer0.input_layernorm(x)
        k = attn0.k_proj(h).view(1, n, KH, D).transpose(1, 2)
        v = attn0.v_proj(h).view(1, n, KH, D).transpose(1, 2)
        x, h = x[:, rows], h[:, rows]
        cos_q, sin_q = cos[:, rows], sin[:, rows]
        q = attn0.q_proj(h).view(1, len(rows), H, D).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q[:, :1], cos_q, sin_q)
        k, _ = apply_rotary_pos_emb(k, k[:, :1], cos, sin)
        if prefix_kv is not None:
            k = torch.cat([prefix_kv[0][0].unsqueeze(0).to(k.dtype), k], dim=2)
            v = torch.cat([prefix_kv[1][0].unsqueeze(0).to(v.dtype), v], dim=2)
        mask = torch.arange(end)[None, :] <= torch.tensor(list(positions))[:, None]  # key position <= query's
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn0.scaling, enable_gqa=True)
        x = x + attn0.o_proj(o.transpose(1, 2).reshape(1, len(rows), H * D))
        x = x + layer0.mlp(layer0.post_attention_layernorm(x))
        h1 = layer1.input_layernorm(x)
        k1 = attn1.k_proj(h1).view(1, len(rows), KH, D).transpose(1, 2)
        v1 = attn1.v_proj(h1).view(1, len(rows), KH, D).transpose(1, 2)
        k1, _ = apply_rotary_pos_emb(k1, k1[:, :1], cos_q, sin_q)
    return k1[0], v1[0]


def forward_at(model: Any, token_ids: Sequence[int], positions: Sequence[int], cache: Any,
               cache_positions: Sequence[int]) -> tuple[Any, Any]:
    """Run `token_ids` at explicit, ascending `positions` after a cache whose entries sit at
    `cache_positions` (ascending within the placed spans, but the gaps between them are missing):
    one forward pass, each new token attending to every cached or new token at a position <= its
    own. Returns the last token's logits and the cache reordered into position order.

        cache order   [prefix 0..m-1][seg1 s1..][seg2 s2..] | new: [gap a..][gap b..][tail ..]
        mask row of a gap token at position p: attend to keys with position <= p (4D float mask)

    RoPE only ever sees true positions (`position_ids`), and attention is order-free given the
    mask, so this equals running the gaps one by one in prompt order (tests: `test_prefill.py`)."""
    import torch
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    num_cached = len(cache_positions)
    q = torch.tensor(list(positions), dtype=torch.long)
    k = torch.cat([torch.tensor(list(cache_positions), dtype=torch.long), q])
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((1, 1, len(q), len(k)), dtype=dtype)
    mask.masked_fill_(k[None, :] > q[:, None], torch.finfo(dtype).min)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(token_ids)], dtype=torch.long), position_ids=q[None, :],
                    attention_mask=mask, past_key_values=cache, use_cache=True,
                    cache_position=torch.arange(num_cached, num_cached + len(q)), logits_to_keep=1)
    cache = out.past_key_values
    order = torch.argsort(k)
    if not torch.equal(order, torch.arange(len(k))):
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(2, order)
            layer.values = layer.values.index_select(2, order)
    return out.logits[0, -1], cache


__all__ = ["Placement", "ReuseConfig", "ReusePrefill", "SegmentOutcome", "deviation_scores", "follow_ref",
           "forward_at", "prefill_with_reuse", "select_deviating", "true_layer1_kv"]
