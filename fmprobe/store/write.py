"""The write side of the feature store: creating it for a dataset, a model's group (its layout
and its ``_done`` ledger), and the chunk writes that embed makes.

A chunk's feature rows are written first and its ledger entry last (Zarr writes each chunk
file atomically), so a reader that trusts the ledger never sees half a chunk, and a killed
writer loses only the chunks in flight.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from fmprobe import storage
from fmprobe.errors import StoreError
from fmprobe.parallel import fault_hook_for_tests
from fmprobe.store.core import FeatureStore, open_store, store_exists, zarr_group
from fmprobe.store.integrity import Damage, missing_chunks, undecodable_chunks
from fmprobe.store.layout import ATTR, FORMAT_VERSION, feature_array_options


def _write_column(group: zarr.Group, name: str, col: pd.Series) -> str:
    """One ``samples/<name>`` array; returns the column's pandas dtype (recorded)."""
    n = len(col)
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy()
        if values.dtype == object:
            values = values.astype(np.float64)
    else:
        values = np.asarray(["" if pd.isna(v) else str(v) for v in col], dtype=str)
    dtype: Any = str if values.dtype.kind == "U" else values.dtype
    arr = group.create_array(
        name, shape=(n,), chunks=(max(1, min(n, 65536)),), dtype=dtype, dimension_names=("sample",)
    )
    arr[:] = values
    return str(col.dtype)


def write_samples(root: zarr.Group, table: pd.DataFrame) -> None:
    """``samples/<column>`` arrays from ``table`` (``id`` first), their dtypes recorded."""
    group = root.create_group("samples", overwrite=True)
    columns = {str(name): _write_column(group, str(name), table[name]) for name in table.columns}
    group.attrs[ATTR] = {"columns": columns}


def add_columns(fs: FeatureStore, table: pd.DataFrame) -> list[str]:
    """Add the columns of ``table`` (rows in store order, ``id`` first) that the store's samples
    lack; a column it has with other values is refused. Returns the names added."""
    have = fs.samples()
    added = []
    for name in table.columns:
        if name == "id":
            continue
        if name in have.columns:
            same = have[name].astype(str).to_numpy() == table[name].astype(str).to_numpy()
            if not same.all():
                raise StoreError(
                    f"--labels column {name!r} differs from the store's column of that name in "
                    f"{int((~same).sum())} rows; rename it, or import into a new store"
                )
            continue
        added.append(str(name))
    if added:
        group = fs.root["samples"]
        columns = dict(group.attrs.get(ATTR, {}).get("columns", {}))
        for name in added:  # each column its own array; the listing last, once they exist
            columns[name] = _write_column(group, name, table[name])
        group.attrs[ATTR] = {**group.attrs.get(ATTR, {}), "columns": columns}
    return added


def create_store(
    path: str | Path, *, table: pd.DataFrame, dataset: dict[str, Any], overwrite: bool = False
) -> FeatureStore:
    """Create a store for a dataset (``table``: ``id`` first, then labels and metadata) at a
    local path or an fsspec URL. The fmprobe metadata is written last: a store without it is
    one whose creation did not finish."""
    from fmprobe import __version__

    path = storage.local(path)
    if overwrite:
        storage.remove_tree(path)
    root = zarr_group(path, mode="w-")
    write_samples(root, table)
    # the ids once more as the root's ``sample`` coordinate: xarray's DataTree hands it down to
    # every group, so each feature opens with its rows named
    _write_column(root, "sample", table["id"])
    root.attrs[ATTR] = {
        "format_version": FORMAT_VERSION,
        "created_by": f"fmprobe {__version__}",
        "dataset": dataset,
    }
    return FeatureStore(root, path)


def open_or_create_store(
    path: str, *, table: pd.DataFrame, dataset: dict[str, Any], overwrite: bool
) -> FeatureStore:
    """The store of a dataset at ``path``: created when missing (or left unfinished by a killed
    creator), opened when it was made from the same data (``dataset["fingerprint"]``), refused
    (or, with ``overwrite``, rebuilt) when the data changed. Call it under ``creation_lock``."""
    if not store_exists(path):
        if not storage.is_url(path) and storage.listdir(path):
            raise StoreError(f"--store {path!r} exists and is not a feature store; pick a new path")
        return create_store(path, table=table, dataset=dataset)
    if ATTR not in zarr_group(path, mode="r").attrs:  # its creator was killed half-way
        return create_store(path, table=table, dataset=dataset, overwrite=True)
    fs = open_store(path, mode="a")
    fingerprint = dataset["fingerprint"]
    if fs.fingerprint != fingerprint:
        if not overwrite:
            raise StoreError(
                f"the dataset {dataset.get('spec')!r} changed since {path!r} was made "
                f"(fingerprint {fingerprint[:12]} vs {fs.fingerprint[:12]}); use a new --store, "
                "or pass --overwrite to rebuild this one from scratch"
            )
        return create_store(path, table=table, dataset=dataset, overwrite=True)
    return fs


CLAIM_STALE_SECONDS = 600.0  # an object-storage creation claim older than this was abandoned


@contextlib.contextmanager
def creation_lock(store: str) -> Iterator[None]:
    """Held while a store and a model group are created or checked, so that shards started at
    once create them once. Locally: an exclusive ``flock`` on a file beside the store (the
    kernel releases it when its process dies). On object storage: a claim object beside the
    store, taken with a conditional create (``If-None-Match``), removed afterwards; a claim
    older than ``CLAIM_STALE_SECONDS`` (its holder was killed) is taken over."""
    store = storage.local(store)
    if storage.is_url(store):
        with _claim(storage.sibling(store, ".creating")):
            yield
        return
    import fcntl

    path = os.path.abspath(store.rstrip("/")) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _claim(path: str, *, poll: float = 0.5) -> Iterator[None]:
    import json
    import time

    while not storage.create_exclusive(path, json.dumps({"t": time.time()}).encode()):
        try:
            age = time.time() - float(json.loads(storage.read_text(path))["t"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue  # released, or being written: try again
        if age > CLAIM_STALE_SECONDS:
            storage.remove(path)
            continue
        time.sleep(poll)
    try:
        yield
    finally:
        storage.remove(path)


@dataclass(frozen=True)
class GroupLayout:
    """The arrays of one model's group: per layer, its token count and width.

    Attributes
    ----------
    layers : tuple of int
        Resolved block indices.
    widths : tuple of int
        Feature width D of each layer.
    tokens_per_layer : tuple of int
        Patch positions P of each layer (the ``tokens`` arrays are (N, P, D)).
    pools : tuple of str
        Pools stored per layer (``cls``, ``mean``, ``attn``).
    tokens : bool
        Whether the patch tokens are stored.
    dtype : str
        Storage dtype of the pooled features.
    chunk_rows : int
        Rows per chunk: the unit of resume.
    embedding_width : int or None
        Width of the model's published embedding (``<model>/embedding``), None for none.
    embedding_recipe : dict or None
        How that embedding is made (the preset's recipe), recorded in its metadata.
    """

    layers: tuple[int, ...]
    widths: tuple[int, ...]
    tokens_per_layer: tuple[int, ...]
    pools: tuple[str, ...]
    tokens: bool
    dtype: str
    chunk_rows: int
    embedding_width: int | None = None
    embedding_recipe: dict[str, Any] | None = None


def create_model_group(
    fs: FeatureStore, key: str, *, layout: GroupLayout, meta: dict[str, Any]
) -> zarr.Group:
    """Create (or replace) the group ``key``: the ledger, the error column, every feature
    array of ``layout`` (NaN-filled), and ``meta`` as the group's metadata."""
    n, rows = fs.n, layout.chunk_rows
    group = fs.root.create_group(key, overwrite=True)
    n_chunks = -(-n // rows)
    group.create_array("_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False,
                       dimension_names=("chunk",))  # fmt: skip
    group.create_array("_error", shape=(n,), chunks=(rows,), dtype=str, dimension_names=("sample",))

    generation = "gen:" + uuid.uuid4().hex  # a new one whenever the group is made anew

    def feature(name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
                dims: tuple[str, ...], **attrs: Any) -> None:  # fmt: skip
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=np.nan,
                                 **feature_array_options(dims))  # fmt: skip
        arr.attrs[ATTR] = {"kind": "feature", "model": key, "identity": generation, **attrs}

    for layer, d, p in zip(layout.layers, layout.widths, layout.tokens_per_layer, strict=True):
        for pool in layout.pools:
            feature(f"block{layer}/{pool}", (n, d), (rows, d), layout.dtype,
                    ("sample", "feature"), layer=layer, pool=pool)  # fmt: skip
        if layout.tokens:
            feature(f"block{layer}/tokens", (n, p, d), (min(rows, 64), p, d), "float16",
                    ("sample", "token", "feature"), layer=layer, pool="tokens")  # fmt: skip
    if layout.embedding_width is not None:
        w = layout.embedding_width
        feature("embedding", (n, w), (rows, w), layout.dtype, ("sample", "embedding"),
                layer=None, pool="embedding", recipe=layout.embedding_recipe)  # fmt: skip
    group.attrs[ATTR] = {"kind": "model", "generation": generation, **meta}
    return group


def repair_ledger(group: zarr.Group, *, verify: bool = False) -> list[Damage]:
    """Mark as not done every ledger chunk whose rows are missing from one of the group's
    feature arrays (with ``verify``, also those whose rows do not decode), so that the embed
    that resumes the group re-embeds exactly them. Returns what was found."""
    done = np.asarray(group["_done"][:])
    rows = int(group.attrs.get(ATTR, {}).get("chunk_rows") or group["_error"].chunks[0])
    found: list[Damage] = []
    for path, arr in group.members(max_depth=None):
        if not isinstance(arr, zarr.Array) or arr.attrs.get(ATTR, {}).get("kind") != "feature":
            continue
        found += missing_chunks(arr, path)
        if verify:
            found += undecodable_chunks(arr, path)
    bad = sorted({c for d in found for c in range(d.start // rows, -(-d.stop // rows))})
    bad = [c for c in bad if done[c]]
    for c in bad:
        group["_done"][c] = False
    return found


@dataclass
class ChunkBuffer:
    """One chunk's rows as they are embedded, until the chunk is complete and written."""

    start: int
    size: int
    pooled: dict[str, np.ndarray]  # array path → (size, D) float32
    tokens: dict[str, np.ndarray]  # array path → (size, P, D) float16
    errors: np.ndarray = field(init=False)
    filled: int = 0

    def __post_init__(self) -> None:
        self.errors = np.full(self.size, "", dtype=object)

    @classmethod
    def empty(cls, shapes: dict[str, tuple[int, ...]], *, start: int, size: int) -> ChunkBuffer:
        """NaN-filled buffers for arrays of row shapes ``shapes`` (path → (D,) or (P, D))."""
        pooled, tokens = {}, {}
        for p, shape in shapes.items():
            if len(shape) == 1:
                pooled[p] = np.full((size, *shape), np.nan, np.float32)
            else:
                tokens[p] = np.full((size, *shape), np.nan, np.float16)
        return cls(start=start, size=size, pooled=pooled, tokens=tokens)


def write_chunk(group: zarr.Group, chunk: int, buf: ChunkBuffer) -> None:
    """Write a complete chunk's rows, then mark it done in the ledger (last, so that a chunk
    counts as done only once its data is on disk)."""
    stop = buf.start + buf.size
    for path, values in {**buf.pooled, **buf.tokens}.items():
        arr = group[path]
        arr[buf.start : stop] = values.astype(arr.dtype)
    group["_error"][buf.start : stop] = np.asarray(buf.errors, dtype=str)
    group["_done"][chunk] = True
    fault_hook_for_tests()
