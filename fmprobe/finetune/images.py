"""Images by row for training and scoring: decoded and preprocessed with the model's own
transform in a thread pool, kept in memory up to a budget, flipped on request; and the frozen
readout tokens of rows (``FeatureSource``) for the linear head."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from fmprobe.data import Dataset
from fmprobe.errors import FmprobeError

FEATURE_BLOCK = 64  # rows per forward pass of the frozen readout (fixed: results never depend
# on which rows a process happened to need)


def _workers() -> int:
    return min(8, max(1, (os.cpu_count() or 1) - 1))


def _load(dataset: Dataset, transform: Callable[[Any], torch.Tensor], i: int) -> torch.Tensor:
    return transform(dataset.load(i))


def readability(
    dataset: Dataset, transform: Callable[[Any], torch.Tensor], rows: Sequence[int]
) -> dict[int, str]:
    """The rows among ``rows`` whose image cannot be decoded and preprocessed, with the reason
    (as ``fmprobe embed`` records them: such rows have no features in a store, so the sweep's
    pools leave them out, and so does the fine-tune's)."""

    def probe(i: int) -> str:
        try:
            _load(dataset, transform, i)
        except Exception as exc:  # decoders raise many types; embed records them all
            return str(exc) or type(exc).__name__
        return ""

    with ThreadPoolExecutor(_workers()) as pool:
        reasons = list(pool.map(probe, [int(i) for i in rows]))
    return {int(i): r for i, r in zip(rows, reasons, strict=True) if r}


class ImageSource:
    """Preprocessed images of ``dataset`` by row.

    Parameters
    ----------
    dataset : Dataset
    transform : callable
        PIL image → (3, H, W) float tensor (the encoder's own preprocessing).
    device : torch.device
        Where ``get`` puts its batches.
    cache_bytes : int
        Preprocessed images (float32, on the CPU) kept for later epochs and units up to this
        size; beyond it, rows are decoded again when needed.
    channels_last : bool
        Batches in channels-last memory format (CNNs on CUDA).
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable[[Any], torch.Tensor],
        *,
        device: torch.device,
        cache_bytes: int = 1 << 30,
        channels_last: bool = False,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.device = device
        self.cache_bytes = cache_bytes
        self.channels_last = channels_last
        self.cache: dict[int, torch.Tensor] = {}
        self.cached_bytes = 0
        self.pool = ThreadPoolExecutor(_workers())

    def _tensors(self, rows: Sequence[int]) -> list[torch.Tensor]:
        missing = [r for r in dict.fromkeys(rows) if r not in self.cache]
        try:
            loaded = list(self.pool.map(lambda i: _load(self.dataset, self.transform, i), missing))
        except Exception as exc:
            raise FmprobeError(
                f"an image of {self.dataset.spec!r} could not be read although it was readable "
                f"when the run started ({exc}); check the files and rerun"
            ) from None
        fresh = dict(zip(missing, loaded, strict=True))
        for r, t in fresh.items():
            size = t.numel() * t.element_size()
            if self.cached_bytes + size <= self.cache_bytes:
                self.cache[r] = t
                self.cached_bytes += size
        return [self.cache[r] if r in self.cache else fresh[r] for r in rows]

    def get(
        self, rows: Sequence[int] | np.ndarray, flips: np.ndarray | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) images of ``rows`` on the device; ``flips`` (B, 2) bool flips sample b
        horizontally where ``flips[b, 0]`` and vertically where ``flips[b, 1]``."""
        x = torch.stack(self._tensors([int(r) for r in rows]))
        if flips is not None:
            for axis, dim in ((0, -1), (1, -2)):
                sel = torch.as_tensor(np.flatnonzero(flips[:, axis]), dtype=torch.long)
                if len(sel):
                    x[sel] = torch.flip(x[sel], dims=[dim])
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class FeatureSource:
    """The frozen readout tokens of rows, computed once (in fixed blocks of row order) by
    ``features`` over ``images``: what the linear head trains on, as the sweep's probes train
    on stored features.

    Parameters
    ----------
    images : ImageSource
    features : callable
        (B, 3, H, W) → (B, D), the frozen model's readout (run without gradients).
    rows : sequence of int
        Every row that will be asked for (the pools and test sets).
    amp : bool
        bf16 autocast for the forward passes.
    """

    def __init__(
        self,
        images: ImageSource,
        features: Callable[[torch.Tensor], torch.Tensor],
        *,
        rows: Sequence[int] | np.ndarray,
        amp: bool,
    ) -> None:
        from contextlib import nullcontext

        order = np.unique(np.asarray(rows, dtype=np.int64))
        self.index = {int(r): i for i, r in enumerate(order)}
        self.device = images.device
        out = []
        ctx = torch.autocast(images.device.type, dtype=torch.bfloat16) if amp else nullcontext()
        with torch.no_grad():
            for lo in range(0, len(order), FEATURE_BLOCK):
                with ctx:
                    f = features(images.get(order[lo : lo + FEATURE_BLOCK]))
                out.append(f.float())
        width = out[0].shape[1] if out else 0
        self.X = torch.cat(out) if out else torch.zeros(0, width, device=self.device)

    def get(
        self, rows: Sequence[int] | np.ndarray, flips: np.ndarray | None = None
    ) -> torch.Tensor:
        """(B, D) tokens of ``rows`` (``flips`` is ignored: the features are fixed)."""
        idx = torch.as_tensor([self.index[int(r)] for r in rows], device=self.device)
        return self.X[idx]
