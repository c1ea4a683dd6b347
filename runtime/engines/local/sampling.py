"""Choosing each sequence's next token from its logits: forced, greedy, or temperature / top-p.

A pure function of the logits and each row's choice, run in the model thread after the forward.
Sampling draws from a per-request `torch.Generator`, so a seeded request yields the same text
whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# (forced token or None, temperature, top_p, generator): temperature 0 is greedy
Choice = tuple[int | None, float, float, torch.Generator | None]


def pick_tokens(logits: torch.Tensor, choices: Sequence[Choice]) -> list[int]:
    """One token per row of `logits` (rows, vocab)."""
    if logits.shape[0] != len(choices):
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(choices)} choices")
    greedy = logits.argmax(dim=-1).tolist() if len(choices) else []
    out = []
    for i, (forced, temperature, top_p, gen) in enumerate(choices):
        if forced is not None:
            out.append(int(forced))
        elif temperature <= 0:
            out.append(int(greedy[i]))
        else:
            out.append(sample(logits[i], temperature=temperature, top_p=top_p, generator=gen))
    return out


def sample(logits: torch.Tensor, *, temperature: float, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> int:
    """Nucleus sampling: the smallest set of most likely tokens whose probability reaches `top_p`."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # a token is kept if the mass before it is short
        keep[0] = True
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        pick = torch.multinomial(sorted_p, 1, generator=generator)
        return int(idx[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


__all__ = ["pick_tokens", "sample"]
