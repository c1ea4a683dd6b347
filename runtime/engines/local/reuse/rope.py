"""RoPE offset arithmetic: storing keys position-neutral and placing them at any offset.

A Llama-family model rotates each key by its absolute position before caching it (values are not
rotated). Per frequency pair i of a head, the cached key of a token at position p is

    k_p = R(p * w_i) k          R(a) = [[cos a, -sin a], [sin a, cos a]],  w_i = inv_freq[i]

and rotations compose, R(a) R(b) = R(a + b). So a segment computed at positions [s, s + n) can be
stored *position-neutral* (rotated back by s, as if its first token sat at position 0) and placed
anywhere later by one rotation:

    prefilled in agent A's prompt            stored                     placed in agent B's prompt
    ─────────────────────────────           ──────────────            ─────────────────────────────
    [sys A ......][answer of A]              [answer of A]              [sys B ..][question ...][answer of A]
     0          s  s ........ s+n-1           0 ....... n-1              0                     p  p ..... p+n-1
                  │                           ▲        │                                       ▲
                  └──── rotate by -s ─────────┘        └────────────── rotate by +p ────────────┘

    stored_k[t]  = R(-s * w) k_real[t]          (t = 0 .. n-1; the token's own position s + t
    placed_k[t]  = R(+p * w) stored_k[t]          becomes t, then p + t)

The rotation is exact up to float rounding (about 1e-6 relative in fp32): a token's key at p + t is
bit-for-bit what the model would compute *for the same hidden state*. What rotation cannot fix is
that the hidden state itself depends on what the token attended to (the context before it): that is
the deviation the anchors estimate (`anchors.py`). Layer 0's keys and values depend on the token
alone, so after rotation they are exact.

Why our own rotation and not the model's `apply_rotary_pos_emb`: we rotate by a *difference* of
positions, on keys already cached, and we take the angles in float64 so that rotating by -s and
then +p loses nothing at positions of several thousand.
"""

from __future__ import annotations

from typing import Any


def inv_freq_of(model: Any) -> Any:
    """The model's RoPE inverse frequencies (head_dim / 2 floats), as its rotary embedding holds them.

    Only plain RoPE is supported: a scaling type that multiplies cos/sin by an attention factor
    (YaRN, LongRoPE) would apply that factor again at each rotation."""
    rotary = model.model.rotary_emb
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    if abs(scale - 1.0) > 1e-9:
        raise ValueError(f"RoPE with attention scaling {scale} cannot be re-rotated exactly; "
                         "position-neutral reuse supports plain (default/linear/dynamic-at-train-length) RoPE only")
    return rotary.inv_freq


def rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_keys(keys: Any, delta_positions: int, inv_freq: Any) -> Any:
    """Keys `[..., tokens, head_dim]` rotated by `delta_positions` (negative: back towards 0).

    HF Llama pairs dimension i with i + head_dim/2 (the `rotate_half` layout), so the angle table
    is the inverse frequencies repeated twice."""
    import torch

    if delta_positions == 0:
        return keys
    angles = float(delta_positions) * inv_freq.to(torch.float64)
    angles = torch.cat((angles, angles))
    cos = angles.cos().to(keys.dtype)
    sin = angles.sin().to(keys.dtype)
    return keys * cos + rotate_half(keys) * sin


__all__ = ["inv_freq_of", "rotate_half", "rotate_keys"]
