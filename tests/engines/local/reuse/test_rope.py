"""RoPE offset arithmetic on a real (tiny, random) HF Llama: rotations compose, and a segment's
keys cut from one prompt and re-placed at another offset equal what the model computes there
wherever the hidden state does not depend on the context (layer 0)."""

from __future__ import annotations

import pytest
import torch
from agentflow.runtime.engines.local.reuse import (
    forward,
    inv_freq_of,
    kv_of_cache,
    neutral_slice,
    rotate_keys,
)


@pytest.mark.parametrize(("a", "b"), [(5, 7), (-12, 12), (1000, -3), (0, 4096)])
def test_rotations_compose(tiny_lm, a, b):
    inv = inv_freq_of(tiny_lm.model)
    torch.manual_seed(0)
    k = torch.randn(2, 3, 5, inv.numel() * 2)
    torch.testing.assert_close(rotate_keys(rotate_keys(k, a, inv), b, inv), rotate_keys(k, a + b, inv),
                               atol=1e-5, rtol=1e-5)


def test_rotation_by_zero_is_identity_and_norm_preserving(tiny_lm):
    inv = inv_freq_of(tiny_lm.model)
    k = torch.randn(1, 2, 4, inv.numel() * 2)
    assert rotate_keys(k, 0, inv) is k
    torch.testing.assert_close(rotate_keys(k, 37, inv).norm(dim=-1), k.norm(dim=-1))


def test_segment_moved_between_prompts_is_exact_at_layer_0(tiny_lm):
    """The same 6 tokens after a 3-token and after an 11-token prefix: position-neutral layer-0
    keys and values agree; above layer 0 they differ (the deviation anchors estimate)."""
    model = tiny_lm.model
    inv = inv_freq_of(model)
    seg = [101, 202, 303, 404, 505, 606]
    pa, pb = [7, 8, 9], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    ka, va = kv_of_cache(forward(model, pa + seg)[1])
    kb, vb = kv_of_cache(forward(model, pb + seg)[1])
    na = neutral_slice(ka, va, len(pa), len(pa) + len(seg), inv)
    nb = neutral_slice(kb, vb, len(pb), len(pb) + len(seg), inv)
    torch.testing.assert_close(na[0][0], nb[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(na[1][0], nb[1][0], atol=1e-6, rtol=1e-6)
    assert (na[0][1:] - nb[0][1:]).abs().max() > 1e-3
    # placing A's neutral keys at B's offset reproduces B's real layer-0 keys
    torch.testing.assert_close(rotate_keys(na[0], len(pb), inv)[0], kb[0, :, len(pb):], atol=1e-5, rtol=1e-5)
