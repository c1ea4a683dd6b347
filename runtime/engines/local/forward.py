"""One model step over many sequences: a packed forward on the pool's KV slots.

Continuous batching as SGLang runs it: every running sequence contributes a segment of new
tokens to one step (a prefill chunk of its prompt, or the one token it decodes), and the segments
are packed into one row of tokens, so every linear layer (QKV, O, MLP: the bulk of the work) runs
once per step on all of them:

    segments   seq A: prompt chunk [p0 .. p5]   seq B: decode [t7]   seq C: decode [t3]
    packed x   [ a0 a1 a2 a3 a4 a5 | b7 | c3 ]           positions [ 40..45 | 107 | 63 ]
    new slots  [ A.slots[40:46]    | B.slots[107] | C.slots[63] ]     (K, V written there)
    attention  per segment: its queries over its context, gathered from the pool by slot index
               A: q[0:6]  x  K[A.slots[0:46]]   (causal inside the chunk)
               B: q[6:7]  x  K[B.slots[0:108]]
    logits     only rows that end a prompt or decode (the LM head is 49k wide: never on all rows)

Attention runs per segment (no padding): a sequence's attention never sees another's keys, and
its numbers do not depend on who else is in the batch. The modules are the transformers model's
own (norms, projections, MLP, RoPE tables, LM head); only the attention call and the cache are
ours. Keys are stored after RoPE, at absolute positions, so a cached prefix's keys are exactly
those a full prefill computes: reusing them is exact (tests pin the logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from agentflow.runtime.engines.local.pool import SlotPool
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


@dataclass(slots=True, kw_only=True)
class Segment:
    """New tokens of one sequence in a step."""

    token_ids: Sequence[int]
    start: int  # position of the first new token (tokens before it are in the pool)
    slots: torch.Tensor  # the sequence's slots for positions [0, start + len(token_ids))
    want_logits: bool  # return the last token's logits


class PackedForward:
    """Runs a Llama-architecture transformers model on segments whose KV lives in a SlotPool."""

    def __init__(self, model, pool: SlotPool):
        self.model = model
        base = model.model
        self.embed = base.embed_tokens
        self.layers = list(base.layers)
        self.norm = base.norm
        self.rotary = base.rotary_emb
        self.lm_head = model.lm_head
        cfg = model.config
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.pool = pool

    @torch.inference_mode()
    def __call__(self, segments: Sequence[Segment]) -> torch.Tensor:
        """Write every segment's new K and V to its slots; return logits (float32) of the last token
        of each segment with `want_logits`, in order, as a (rows, vocab) tensor."""
        if not segments:
            raise ValueError("a step needs at least one segment")
        ids, pos, new_slots, ctx_slots = [], [], [], []
        spans = []  # (query offset, query length, context offset, context length)
        q_off = c_off = 0
        for s in segments:
            n = len(s.token_ids)
            ctx = s.start + n
            if n < 1 or s.slots.numel() < ctx:
                raise ValueError(f"segment of {n} tokens at {s.start} has {s.slots.numel()} slots")
            ids.extend(s.token_ids)
            pos.append(torch.arange(s.start, ctx))
            new_slots.append(s.slots[s.start:ctx])
            ctx_slots.append(s.slots[:ctx])
            spans.append((q_off, n, c_off, ctx))
            q_off += n
            c_off += ctx
        ids_t = torch.tensor(ids, dtype=torch.long).unsqueeze(0)
        pos_t = torch.cat(pos).unsqueeze(0)
        write = torch.cat(new_slots)
        gather = torch.cat(ctx_slots)
        masks = [_chunk_mask(n, ctx) if n > 1 else None for _, n, _, ctx in spans]

        x = self.embed(ids_t)  # (1, N, hidden)
        cos, sin = self.rotary(x, pos_t)
        N = ids_t.shape[1]
        H, KH, D = self.num_heads, self.num_kv_heads, self.head_dim
        pool_k, pool_v = self.pool.k, self.pool.v
        for li, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, N, H, D).transpose(1, 2)
            k = attn.k_proj(h).view(1, N, KH, D).transpose(1, 2)
            v = attn.v_proj(h).view(1, N, KH, D)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            pool_k[li].index_copy_(0, write, k[0].transpose(0, 1))
            pool_v[li].index_copy_(0, write, v[0])
            keys = pool_k[li].index_select(0, gather)  # (total context, KH, D)
            values = pool_v[li].index_select(0, gather)
            outs = []
            for (qo, n, co, ctx), mask in zip(spans, masks, strict=True):
                ks = keys[co:co + ctx].transpose(0, 1).unsqueeze(0)
                vs = values[co:co + ctx].transpose(0, 1).unsqueeze(0)
                outs.append(F.scaled_dot_product_attention(q[:, :, qo:qo + n], ks, vs, attn_mask=mask,
                                                           scale=self.scaling, enable_gqa=True))
            o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, N, H * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        rows = [qo + n - 1 for (qo, n, _, _), s in zip(spans, segments, strict=True) if s.want_logits]
        if not rows:
            return torch.empty(0, self.lm_head.out_features)
        last = x[0, rows]
        return self.lm_head(self.norm(last)).float()


def _chunk_mask(num_new: int, ctx: int) -> torch.Tensor:
    """Causal mask of `num_new` queries at the end of a `ctx`-token context: query i sees keys
    0 .. ctx - num_new + i."""
    q = torch.arange(ctx - num_new, ctx).unsqueeze(1)
    return torch.arange(ctx).unsqueeze(0) <= q


__all__ = ["PackedForward", "Segment"]
