"""Embedding the pending chunks of one shard in this process: DataLoader workers decode and
preprocess, the encoder runs batch by batch (batches never straddle a chunk), and a writer
thread writes each complete chunk while the next batches run."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr

from fmprobe.data import Dataset
from fmprobe.encoders import Encoder, pool_tokens
from fmprobe.errors import ImageReadError
from fmprobe.store.write import ChunkBuffer, write_chunk


class _Rows(torch.utils.data.Dataset[tuple[int, torch.Tensor | None, str]]):
    """Decoding and preprocessing, run in DataLoader workers."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(self.dataset.load(i)), ""
        except ImageReadError as exc:
            return i, None, str(exc) or "unreadable"
        except Exception as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(
    items: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, list[int], list[str]]:
    rows = [i for i, _, _ in items]
    ok = [i for i, t, _ in items if t is not None]
    tensors = [t for _, t, _ in items if t is not None]
    errors = [e for _, _, e in items]
    return rows, (torch.stack(tensors) if tensors else None), ok, errors


def _batches(
    chunks: Sequence[int], *, n: int, chunk_rows: int, batch_size: int
) -> Iterator[list[int]]:
    for c in chunks:
        start, stop = c * chunk_rows, min(n, (c + 1) * chunk_rows)
        for b in range(start, stop, batch_size):
            yield list(range(b, min(stop, b + batch_size)))


@dataclass(frozen=True)
class ShardRun:
    """How to run the pending chunks of one shard.

    Attributes
    ----------
    layers : tuple of int
        Resolved block indices to store.
    pools : tuple of str
        Pools to store per layer.
    tokens : bool
        Also store the patch tokens.
    embedding : bool
        Also store the model's published embedding (``<model>/embedding``).
    batch_size, chunk_rows : int
        Images per forward pass; rows per chunk (a batch never straddles a chunk).
    device : torch.device
    num_workers : int or None
        DataLoader decoding workers (None: cores − 1, at most 8).
    strict : bool
        Fail on the first unreadable image instead of recording it.
    amp : bool
        bf16 autocast on CUDA.
    progress : bool
        A progress bar on stderr.
    """

    layers: tuple[int, ...]
    pools: tuple[str, ...]
    tokens: bool
    embedding: bool
    batch_size: int
    chunk_rows: int
    device: torch.device
    num_workers: int | None
    strict: bool
    amp: bool
    progress: bool


def embed_chunks(
    encoder: Encoder,
    dataset: Dataset,
    group: zarr.Group,
    *,
    pending: Sequence[int],
    run: ShardRun,
    label: str,
) -> tuple[int, float]:
    """Embed the chunks ``pending`` of ``group``; returns (rows embedded, loop seconds)."""
    from tqdm import tqdm

    n = len(dataset)
    cuda = run.device.type == "cuda"
    workers = run.num_workers
    if workers is None:
        workers = min(8, max(0, (os.cpu_count() or 1) - 1))
    batches = list(_batches(pending, n=n, chunk_rows=run.chunk_rows, batch_size=run.batch_size))
    loader = torch.utils.data.DataLoader(
        _Rows(dataset, encoder.transform),
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=False,
    )
    channels_last = cuda and encoder.cls_source == "global_average"
    if channels_last:
        encoder.model.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and run.amp else nullcontext()
    paths = [f"block{i}/{p}" for i in run.layers for p in run.pools]
    paths += [f"block{i}/tokens" for i in run.layers] if run.tokens else []
    paths += ["embedding"] if run.embedding else []
    shapes = {p: tuple(group[p].shape[1:]) for p in paths}
    bar = tqdm(
        total=sum(len(b) for b in batches), unit="img", desc=label, file=sys.stderr,
        disable=not run.progress,
    )  # fmt: skip
    writer = ThreadPoolExecutor(max_workers=1)
    in_flight: list[Future[None]] = []
    buffers: dict[int, ChunkBuffer] = {}
    embedded, t0 = 0, time.perf_counter()
    try:
        for rows, x, ok, errors in loader:
            c = rows[0] // run.chunk_rows
            buf = buffers.get(c)
            if buf is None:
                start = c * run.chunk_rows
                size = min(n, start + run.chunk_rows) - start
                buf = buffers[c] = ChunkBuffer.empty(shapes, start=start, size=size)
            _record_errors(buf, rows, errors, dataset=dataset, strict=run.strict)
            if x is not None:
                with torch.inference_mode(), autocast:
                    _embed_batch(encoder, x, np.asarray(ok) - buf.start, buf, run,
                                 channels_last=channels_last)  # fmt: skip
            buf.filled += len(rows)
            bar.update(len(rows))
            if buf.filled == buf.size:
                in_flight = [f for f in in_flight if not f.done()]
                while len(in_flight) >= 2:
                    in_flight.pop(0).result()
                in_flight.append(writer.submit(write_chunk, group, c, buffers.pop(c)))
                embedded += buf.size
    finally:
        for f in in_flight:
            f.result()
        writer.shutdown()
        bar.close()
    return embedded, time.perf_counter() - t0


def _record_errors(
    buf: ChunkBuffer, rows: Sequence[int], errors: Sequence[str], *, dataset: Dataset, strict: bool
) -> None:
    for r, e in zip(rows, errors, strict=True):
        if e:
            if strict:
                raise ImageReadError(
                    f"image {dataset.ids[r]!r} could not be read ({e}); "
                    "rerun without --strict to skip and record unreadable images"
                )
            buf.errors[r - buf.start] = e


def _embed_batch(
    encoder: Encoder,
    x: torch.Tensor,
    local: np.ndarray,
    buf: ChunkBuffer,
    run: ShardRun,
    *,
    channels_last: bool,
) -> None:
    """One forward pass; its pooled features (and tokens) into the chunk's buffers at rows
    ``local``."""
    x = x.to(run.device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = encoder.forward(x, run.layers, attn="attn" in run.pools, embedding=run.embedding)
    if run.embedding and out.embedding is not None:
        buf.pooled["embedding"][local] = out.embedding.float().cpu().numpy()
    attn = out.attn.float() if out.attn is not None else None
    for li, layer in enumerate(run.layers):
        patch = out.patch[li].float()
        layer_cls = out.cls[li]
        cls = layer_cls.float() if layer_cls is not None else None
        for p in run.pools:
            vec = pool_tokens(p, patch=patch, cls=cls, attn=attn)
            buf.pooled[f"block{layer}/{p}"][local] = vec.cpu().numpy()
        if run.tokens:
            buf.tokens[f"block{layer}/tokens"][local] = out.patch[li].half().cpu().numpy()
