"""The feature store: one Zarr v3 group per dataset, one sub-group per model.

Layout (documented in the README; readable with ``zarr.open_group`` alone)::

    STORE/                       attrs["fmprobe"] = {"format_version", "dataset": {...}}
      samples/id                 (N,) str      sample ids, the row order of every feature
      samples/<column>           (N,)          labels and metadata
      <model>/                   attrs["fmprobe"] = {"kind": "model", model spec, layers, ...}
        _done                    (n_chunks,) bool  resume ledger, one chunk per entry
        _error                   (N,) str      "" or why the image could not be read
        block<i>/cls|mean|attn   (N, D)        pooled features (NaN rows: unreadable images)
        block<i>/tokens          (N, P, D)     patch tokens, float16 (``--tokens``)
      <imported name>            (N, D)        features brought in by ``store import``
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from fmprobe import storage
from fmprobe.errors import StoreError, did_you_mean, first_line
from fmprobe.store.integrity import read_checked
from fmprobe.store.layout import ATTR


@dataclass(frozen=True)
class FeatureInfo:
    """One feature of a store, as listed by ``fmprobe store info``."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    model: str | None  # the model group, None for imported features
    layer: int | None
    pool: str | None
    imported: bool
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "model": self.model,
            "layer": self.layer,
            "pool": self.pool,
            "imported": self.imported,
            "complete": self.complete,
        }


class FeatureStore:
    """A handle on a feature store directory (or fsspec URL).

    Use ``open_store`` / ``create_store`` rather than the constructor.
    """

    def __init__(self, root: zarr.Group, path: str) -> None:
        self.root = root
        self.path = path

    # --- dataset-level ------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.root.attrs.get(ATTR, {}))

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("dataset", {}).get("fingerprint", ""))

    @property
    def n(self) -> int:
        return int(self.root["samples/id"].shape[0])

    @property
    def ids(self) -> np.ndarray:
        return read_strings(self.root["samples/id"])

    def samples(self) -> pd.DataFrame:
        """The ``id``, label and metadata columns, one row per sample, in store order."""
        group = self.root["samples"]
        assert isinstance(group, zarr.Group)
        order = list(group.attrs.get(ATTR, {}).get("columns", {}))
        data = {"id": self.ids}
        for name in order:
            if name != "id":
                arr = group[name]
                data[name] = read_strings(arr) if arr.dtype.kind == "T" else np.asarray(arr[:])
        return pd.DataFrame(data)

    # --- features -----------------------------------------------------------------------------
    def models(self) -> list[str]:
        return sorted(
            name for name, g in self.root.groups() if g.attrs.get(ATTR, {}).get("kind") == "model"
        )

    def model_meta(self, model: str) -> dict[str, Any]:
        return dict(self.root[model].attrs.get(ATTR, {}))

    def model_complete(self, model: str) -> bool:
        return bool(np.all(self.root[f"{model}/_done"][:]))

    def features(self) -> list[FeatureInfo]:
        out = []
        complete = {m: self.model_complete(m) for m in self.models()}
        for key, node in self.root.members(max_depth=None):
            meta = node.attrs.get(ATTR, {})
            if not isinstance(node, zarr.Array) or meta.get("kind") != "feature":
                continue
            model = meta.get("model")
            out.append(
                FeatureInfo(
                    key=key,
                    shape=tuple(int(s) for s in node.shape),
                    dtype=str(node.dtype),
                    model=model,
                    layer=meta.get("layer"),
                    pool=meta.get("pool"),
                    imported=bool(meta.get("imported", False)),
                    complete=complete.get(model, True) if model else True,
                )
            )
        pool_order = {"cls": 0, "mean": 1, "attn": 2, "tokens": 3}
        return sorted(
            out,
            key=lambda f: (
                f.model or f.key,
                f.layer if f.layer is not None else -1,
                pool_order.get(f.pool or "", 9),
                f.key,
            ),
        )

    def feature(self, key: str) -> zarr.Array:
        """The array of feature ``key``; a clear error for unknown or unfinished features."""
        known = {f.key: f for f in self.features()}
        if key not in known:
            raise StoreError(
                f"feature {key!r} is not in {self.path}{did_you_mean(key, known)}; "
                f"list them with `fmprobe store info {self.path}`"
            )
        if not known[key].complete:
            raise StoreError(
                f"feature {key!r} is not finished (its embed run stopped part-way); "
                "rerun the same `fmprobe embed` command to complete it"
            )
        arr = self.root[key]
        assert isinstance(arr, zarr.Array)
        return arr

    def read_feature(self, key: str) -> np.ndarray:
        """Load feature ``key`` as a numpy array (rows in store order); a chunk that is missing
        or does not decode is refused with one line naming the rows and the fix."""
        arr = self.feature(key)
        embedded = arr.attrs.get(ATTR, {}).get("model") is not None
        return read_checked(arr, key, path=self.path, embedded=embedded)

    def feature_identity(self, key: str) -> str:
        """What names the content of feature ``key``: the generation written with it (a new one
        whenever it is embedded or imported anew), or for arrays of older stores a digest of
        their bytes. Results computed from a feature are valid while its identity holds."""
        arr = self.feature(key)
        identity = arr.attrs.get(ATTR, {}).get("identity")
        if identity:
            return str(identity)
        digest = hashlib.sha256(np.ascontiguousarray(self.read_feature(key)).tobytes())
        return "sha256:" + digest.hexdigest()

    def errors(self, model: str) -> pd.DataFrame:
        """Rows of ``model`` whose image could not be read: columns ``id`` and ``reason``."""
        err = read_strings(self.root[f"{model}/_error"])
        bad = np.flatnonzero(err != "")
        return pd.DataFrame({"id": self.ids[bad], "reason": err[bad]})


def read_strings(array: zarr.Array) -> np.ndarray:
    """A Zarr string array as a fixed-width numpy ``str`` array (via object: numpy's
    variable-width StringDType does not cast to ``str`` directly)."""
    return np.asarray(array[...], dtype=object).astype(str)


def zarr_group(path: str | Path, *, mode: str) -> zarr.Group:
    """``zarr.open_group`` of a local path or an fsspec URL (with ``--storage-options``)."""
    text = storage.local(path)
    if storage.is_url(text):
        storage.filesystem(text)  # a missing backend is one line, before zarr's own message
        return zarr.open_group(text, mode=mode, storage_options=storage.storage_options())
    return zarr.open_group(text, mode=mode)


def open_store(path: str | Path, *, mode: str = "r") -> FeatureStore:
    """Open an existing store (a local path or an fsspec URL); a clear error when ``path`` is
    not one."""
    path = storage.local(path)
    with storage.errors(path, what="--store"):
        there = store_exists(path)
    if not there:
        bucket = storage.missing_bucket(path)
        if bucket is not None:
            raise StoreError(
                f"--store {path!r}: the bucket {bucket!r} does not exist; check its name (and "
                "AWS_ENDPOINT_URL for a local server), or create it"
            )
        raise StoreError(
            f"no feature store at {path!r}; create one with `fmprobe embed --store {path} ...` "
            "or `fmprobe store import`"
        )
    try:
        root = zarr_group(path, mode=mode)
        meta = root.attrs.get(ATTR)
        has_ids = "samples" in root and "id" in root["samples"]
    except Exception as exc:  # a damaged zarr.json raises JSON, key or value errors
        raise StoreError(
            f"{path!r} is not a readable Zarr group ({first_line(exc)}); pass a feature store, or "
            "rebuild it with `fmprobe embed --overwrite`"
        ) from None
    if meta is None or not has_ids:
        what = (
            "its samples/id array is missing" if meta is not None else "it has no fmprobe metadata"
        )
        raise StoreError(
            f"{path!r} is a Zarr group but not a complete fmprobe feature store ({what}); "
            "rebuild it with `fmprobe embed --overwrite` or `fmprobe store import`"
        )
    return FeatureStore(root, path)


def store_exists(path: str | Path) -> bool:
    """Whether ``path`` (a local path or a URL) holds a Zarr group."""
    return storage.exists(storage.join(storage.local(path), "zarr.json"))
