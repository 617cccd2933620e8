"""``fmprobe store info``: what a store holds, as a documented summary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmprobe.store.core import FeatureInfo, open_store
from fmprobe.store.integrity import Damage, missing_chunks, undecodable_chunks


@dataclass(frozen=True)
class ModelInfo:
    """One model group of a store.

    Attributes
    ----------
    key : str
        The group's name (the first part of its feature keys).
    spec : str or None
        The ``--model`` it was embedded with.
    weights : dict or None
        The weights' identity (kind, source, sha256).
    layers : list of int
        Resolved block indices.
    pools : list of str
    chunks_done, chunks : int
        Ledger entries done, and in all.
    unreadable : list of (id, reason)
        Images that could not be read (their rows are NaN).
    """

    key: str
    spec: str | None
    weights: dict[str, Any] | None
    layers: list[int]
    pools: list[str]
    chunks_done: int
    chunks: int
    unreadable: list[tuple[str, str]]

    @property
    def complete(self) -> bool:
        return self.chunks_done == self.chunks


@dataclass(frozen=True)
class StoreInfo:
    """A store's dataset, columns, models and features (``fmprobe store info``)."""

    path: str
    n_samples: int
    dataset: dict[str, Any]
    columns: list[str]
    models: list[ModelInfo]
    features: list[FeatureInfo]
    damaged: list[Damage]
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``store info --json``."""
        return {
            "path": self.path,
            "n_samples": self.n_samples,
            "dataset": self.dataset,
            "columns": self.columns,
            "models": [
                {
                    "key": m.key,
                    "spec": m.spec,
                    "weights": m.weights,
                    "layers": m.layers,
                    "pools": m.pools,
                    "chunks_done": m.chunks_done,
                    "chunks": m.chunks,
                    "unreadable": len(m.unreadable),
                    "unreadable_ids": [{"id": i, "reason": r} for i, r in m.unreadable],
                }
                for m in self.models
            ],
            "features": [f.to_dict() for f in self.features],
            "damaged": [
                {"key": d.key, "start": d.start, "stop": d.stop, "reason": d.reason}
                for d in self.damaged
            ],
            "verified": self.verified,
        }

    def text(self, *, max_unreadable: int = 10) -> str:
        """The human-readable listing of ``store info``."""
        ds = self.dataset
        lines = [
            f"{self.path}: {self.n_samples} samples from {ds.get('spec')} ({ds.get('kind')})",
            f"columns: {', '.join(self.columns) or '(none)'}",
        ]
        for m in self.models:
            state = "complete" if m.complete else f"{m.chunks_done}/{m.chunks} chunks"
            kind = (m.weights or {}).get("kind")
            lines.append(
                f"model {m.key}: {m.spec} [{kind}] layers {m.layers} {state}, "
                f"{len(m.unreadable)} unreadable"
            )
            for i, reason in m.unreadable[:max_unreadable]:
                lines.append(f"  unreadable {i}: {reason}")
            if len(m.unreadable) > max_unreadable:
                lines.append(f"  … {len(m.unreadable) - max_unreadable} more (--json lists all)")
        width = max((len(f.key) for f in self.features), default=10)
        for f in self.features:
            shape = "×".join(str(s) for s in f.shape)
            flag = "" if f.complete else "  (incomplete)"
            flag += "  (imported)" if f.imported else ""
            lines.append(f"  {f.key:<{width}}  {shape:>14}  {f.dtype}{flag}")
        lines += [f"damaged: {d.text()}" for d in self.damaged]
        if self.verified and not self.damaged:
            lines.append("verified: every chunk is present and passes its checksum")
        return "\n".join(lines)


def store_info(store: str | Path, *, verify: bool = False) -> StoreInfo:
    """Summarise the store at ``store``: dataset, columns, models (complete or not, unreadable
    images) and features with their shapes. A feature is complete when its model's ledger is
    and every chunk it should hold is stored; ``verify`` also reads every chunk (checksums).

    Examples
    --------
    >>> store_info("digits.zarr").features[0].shape  # doctest: +SKIP
    (1797, 192)
    """
    fs = open_store(store)
    models = []
    for m in fs.models():
        meta = fs.model_meta(m)
        done = np.asarray(fs.root[f"{m}/_done"][:])
        models.append(
            ModelInfo(
                key=m,
                spec=meta.get("model", {}).get("spec"),
                weights=meta.get("model", {}).get("weights"),
                layers=list(meta.get("layers") or []),
                pools=list(meta.get("pools") or []),
                chunks_done=int(done.sum()),
                chunks=int(done.size),
                unreadable=list(fs.errors(m).itertuples(index=False, name=None)),
            )
        )
    features, damaged = [], []
    for f in fs.features():
        arr = fs.root[f.key]
        found = missing_chunks(arr, f.key) if f.complete else []
        if verify and f.complete and not found:
            found = undecodable_chunks(arr, f.key)
        damaged += found
        features.append(dataclasses.replace(f, complete=f.complete and not found))
    return StoreInfo(
        path=fs.path,
        n_samples=fs.n,
        dataset=fs.meta.get("dataset", {}),
        columns=[c for c in fs.samples().columns if c != "id"],
        models=models,
        features=features,
        damaged=damaged,
        verified=verify,
    )
