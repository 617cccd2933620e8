"""Pooling of one layer's tokens into one vector per image."""

from __future__ import annotations

from collections.abc import Callable

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


def published_embedding(
    kind: str,
    *,
    final: torch.Tensor,
    num_prefix: int,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A preset's published embedding from the model's final output ``final``.

    ``final`` is the last block's output after the model's final norm: tokens (B, N, D) with
    the ``num_prefix`` class and register tokens first, or a CNN's feature map. ``kind``
    ``"cls"`` gives ``final[:, 0]``; ``"cls+mean"`` the class token concatenated with the mean
    of the patch tokens (prefix and registers excluded), (B, 2D); ``"head"`` the model's own
    pooling ``head(final)`` (global average pool, CLIP projection, attention-pooling head).

    >>> t = torch.arange(12.0).reshape(1, 4, 3)  # class, one register, two patches
    >>> published_embedding("cls+mean", final=t, num_prefix=2).tolist()
    [[0.0, 1.0, 2.0, 7.5, 8.5, 9.5]]
    """
    if kind == "cls":
        return final[:, 0]
    if kind == "cls+mean":
        return torch.cat([final[:, 0], final[:, num_prefix:].mean(dim=1)], dim=-1)
    if kind == "head":
        if head is None:
            raise ValueError("a 'head' embedding needs the model's pooling head")
        return head(final)
    raise ValueError(f"unknown embedding kind {kind!r}")
