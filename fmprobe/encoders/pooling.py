"""Pooling of one layer's tokens into one vector per image."""

from __future__ import annotations

import torch

POOLS = ("cls", "mean", "attn")


def pool_tokens(
    pool: str, *, patch: torch.Tensor, cls: torch.Tensor | None, attn: torch.Tensor | None
) -> torch.Tensor:
    """Pool ``patch`` (B, P, D) into (B, D).

    ``cls``: the class token, or the global average when there is none (CNNs, MAP-head ViTs);
    ``mean``: the mean of the patch tokens; ``attn``: the patch tokens weighted by ``attn``
    (B, P), attention weights from the model's last block or its own attention pooling.
    """
    if pool == "cls":
        return cls if cls is not None else patch.mean(dim=1)
    if pool == "mean":
        return patch.mean(dim=1)
    if pool == "attn":
        if attn is None:
            raise ValueError("attn pooling needs attention weights")
        return torch.einsum("bp,bpd->bd", attn.to(patch.dtype), patch)
    raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
