"""``select_indices`` (an array in, row indices out) and ``select`` (a store in, an ids CSV
out): validation, canonical row order and the strategy registry."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fmprobe.errors import FmprobeError, StoreError, UsageError, did_you_mean
from fmprobe.select.base import Picks, Problem
from fmprobe.select.clustering import (
    select_bal,
    select_fps,
    select_kmeans,
    select_typiclust,
    select_usl,
)
from fmprobe.select.compute import resolve_backend
from fmprobe.select.coverage import (
    select_coreset,
    select_probcover,
    select_random,
    select_repdiv,
)
from fmprobe.select.kmeans import KMEANS_N_INIT

_REGISTRY: dict[str, Callable[[Problem], Picks]] = {
    "random": select_random,
    "kmeans": select_kmeans,
    "typiclust": select_typiclust,
    "probcover": select_probcover,
    "coreset": select_coreset,
    "fps": select_fps,
    "repdiv": select_repdiv,
    "bal": select_bal,
    "usl": select_usl,
}
STRATEGIES: tuple[str, ...] = tuple(_REGISTRY)


@dataclass(frozen=True)
class Selection:
    """The rows a strategy picked.

    Attributes
    ----------
    indices : np.ndarray
        (budget,) int64 row indices into the features given, unique, in selection order
        (annotate the first ones first).
    scores : np.ndarray
        (budget,) float64, the strategy's score of each pick at the time it was picked
        (NaN where the strategy has none, e.g. ``random``).
    strategy : str
    info : dict
        Facts of the run worth reporting, e.g. ProbCover's ``delta`` and final ``coverage``.
    """

    indices: np.ndarray
    scores: np.ndarray
    strategy: str
    info: dict[str, float | int | str] = field(default_factory=dict)


def parse_strategy(name: str) -> str:
    """The strategy name, normalised; a one-line error with close matches if unknown."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise UsageError(
            f"--strategy {name!r} is unknown{did_you_mean(key, STRATEGIES)}; "
            f"choose one of {', '.join(STRATEGIES)}"
        )
    return key


def _whole(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _row_keys(x: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each row's bytes: sorting on it gives an order that does not depend
    on the order the rows came in."""
    data = np.ascontiguousarray(x)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little")
            for r in data
        ),
        dtype=np.uint64,
        count=len(data),
    )


def _exclude_mask(exclude: np.ndarray | None, n: int) -> np.ndarray:
    if exclude is None:
        return np.zeros(n, dtype=bool)
    ex = np.asarray(exclude)
    if ex.dtype == bool:
        if ex.shape != (n,):
            raise UsageError(f"exclude mask has shape {ex.shape}; expected ({n},), one per row")
        return ex.copy()
    if ex.size and (ex.dtype.kind not in "iu" or ex.min() < 0 or ex.max() >= n):
        raise UsageError(f"exclude must be a boolean mask or row indices in 0..{n - 1}")
    mask = np.zeros(n, dtype=bool)
    mask[ex.astype(np.int64)] = True
    return mask


def select_indices(
    features: np.ndarray | torch.Tensor,
    *,
    budget: int,
    strategy: str,
    seed: int = 0,
    exclude: np.ndarray | None = None,
    k: int | None = None,
    delta: float | None = None,
    n_init: int = KMEANS_N_INIT,
    device: str | None = None,
    backend: str | None = None,
) -> Selection:
    """Pick ``budget`` rows of ``features`` to label first.

    Parameters
    ----------
    features : (N, D) array or tensor
        One embedding per row; rows with a NaN or inf (unreadable images) are never picked.
    budget : int
        How many rows to pick, 1 <= budget <= rows available (N minus excluded and unreadable).
    strategy : str
        One of ``STRATEGIES``: random, kmeans, typiclust, probcover, coreset, fps, repdiv,
        bal, usl (docs/methods/selection.md says what each implements).
    seed : int
        Non-negative; seeds random picks and k-means initialisations; equal seeds give equal
        picks.
    exclude : (N,) bool array or int array of row indices, optional
        Rows already labelled: never picked, but they count as covered / as centers.
    k : int, optional
        ProbCover only: k-means clusters (the expected number of classes) used to choose the
        radius; default 10.
    delta : float, optional
        ProbCover only: the ball radius on L2-normalised features, instead of choosing it.
    n_init : int
        k-means seedings (kmeans, typiclust, fps, bal, usl and ProbCover's radius), the
        partition of lowest inertia kept (see :mod:`fmprobe.select.kmeans`); default 3.
    device : str, optional
        cpu, cuda or cuda:N (default: CUDA when present).
    backend : {"faiss", "torch"}, optional
        Nearest-neighbour engine (default: faiss when importable, torch otherwise).

    Returns
    -------
    Selection
        ``indices`` (budget,) int64, unique, in selection order; ``scores`` (budget,) float.

    The picked set does not depend on the order of the rows: rows are put in a canonical order
    (by a digest of their bytes) before any seeded or tie-broken step. Rows with identical
    features are interchangeable; which of them is picked follows their order.

    Examples
    --------
    >>> import numpy as np
    >>> from fmprobe.select import select_indices
    >>> x = np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32)
    >>> sel = select_indices(x, budget=10, strategy="typiclust", seed=0)
    >>> sel.indices.shape, len(set(sel.indices.tolist()))
    ((10,), 10)
    """
    name = parse_strategy(strategy)
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise UsageError(f"features have shape {x.shape}; expected a non-empty (rows, dim) matrix")
    if x.dtype.kind not in "fiu":
        raise UsageError(f"features have dtype {x.dtype}; expected numbers")
    x = x.astype(np.float32, copy=False)
    n = len(x)
    labelled = _exclude_mask(exclude, n)
    finite = np.isfinite(x).all(1)
    available = int((finite & ~labelled).sum())
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise UsageError(f"--budget {budget!r}: expected a positive integer")
    if budget > available:
        raise UsageError(
            f"--budget {budget} is more than the {available} rows available ({n} rows, "
            f"{int(labelled.sum())} excluded, {int((~finite).sum())} unreadable); "
            "lower --budget"
        )
    if not _whole(seed) or seed < 0:
        raise UsageError(f"--seed {seed!r}: expected a non-negative integer, e.g. 0")
    if not _whole(n_init) or n_init < 1:
        raise UsageError(f"--n-init {n_init!r}: expected a positive integer, e.g. 3")
    if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
        raise UsageError(f"--k {k!r}: expected a positive integer")
    if delta is not None and not (np.isfinite(delta) and delta > 0):
        raise UsageError(f"--delta {delta!r}: expected a positive radius")
    be = resolve_backend(device, backend)
    rows = np.flatnonzero(finite)
    order = rows[np.argsort(_row_keys(x[rows]), kind="stable")]
    problem = Problem(
        x=np.ascontiguousarray(x[order]),
        labelled=labelled[order],
        budget=int(budget),
        seed=int(seed),
        backend=be,
        k=None if k is None else int(k),
        delta=None if delta is None else float(delta),
        n_init=int(n_init),
    )
    picks = _REGISTRY[name](problem)
    idx = order[picks.indices]
    if len(idx) != budget or len(np.unique(idx)) != budget or labelled[idx].any():
        raise FmprobeError(
            f"internal error: {name} returned {len(idx)} rows ({len(np.unique(idx))} unique) "
            f"for a budget of {budget}; please report it"
        )
    info = {**picks.info, "backend": be.name}
    return Selection(
        indices=idx.astype(np.int64),
        scores=np.asarray(picks.scores, dtype=np.float64),
        strategy=name,
        info=info,
    )


OUT_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class SelectReport:
    """What ``select`` did; ``to_dict()`` is the ``--json`` output (NaN scores as null).

    Attributes
    ----------
    store, feature, strategy : str
    budget, seed, n_init : int
    rows, excluded, unreadable : int
        Rows of the store, rows excluded (already labelled) and rows with non-finite features.
    out : str or None
        The table written (CSV or Parquet), if any.
    seconds : float
    ids : tuple of str
        The picks in selection order (rank 1 first).
    scores : tuple of float
        The strategy's score of each pick (NaN where it has none).
    info : dict
        The strategy's facts (e.g. ProbCover's ``delta``) and the ``backend``.
    """

    store: str
    feature: str
    strategy: str
    budget: int
    seed: int
    n_init: int
    rows: int
    excluded: int
    unreadable: int
    out: str | None
    seconds: float
    ids: tuple[str, ...]
    scores: tuple[float, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return asdict(self) | {
            "ids": list(self.ids),
            "scores": [clean(v) for v in self.scores],
            "info": {k: clean(v) for k, v in self.info.items()},
        }


def _check_out(out: str | Path) -> Path:
    path = Path(out)
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise UsageError(
            f"--out {str(out)!r}: expected a .csv or .parquet file name (the suffix chooses)"
        )
    if path.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory; name a .csv or .parquet file")
    return path


def select(
    *,
    store: str | Path,
    feature: str,
    budget: int,
    strategy: str,
    seed: int = 0,
    exclude: str | Path | None = None,
    out: str | Path | None = None,
    k: int | None = None,
    delta: float | None = None,
    n_init: int = KMEANS_N_INIT,
    device: str | None = None,
) -> SelectReport:
    """Pick ``budget`` samples of a feature store to label first; write them to ``out``.

    Reads feature ``feature`` (a ``<model>/<layer>/<pool>`` key) of ``store``, skips the ids
    listed in the ``id`` column of ``exclude`` (CSV/Parquet, already labelled) and writes a
    table with columns ``id``, ``rank`` (1 = label first) and ``score`` (see
    ``select_indices``): Parquet when ``out`` ends in ``.parquet``, CSV when in ``.csv``,
    written to a temporary name and renamed into place. Rows are taken in order of their ids,
    so the picks do not depend on the store's row order.

    Examples
    --------
    >>> report = select(store="digits.zarr", feature="timm-vit_tiny_patch16_224/block11/cls",
    ...                 budget=20, strategy="typiclust", out="ids.csv")  # doctest: +SKIP
    """
    from fmprobe.store import open_store, read_table
    from fmprobe.tables import write_table

    t0 = time.perf_counter()
    name = parse_strategy(strategy)
    path = None if out is None else _check_out(out)
    fs = open_store(store)
    arr = fs.feature(feature)
    if len(arr.shape) != 2:
        raise StoreError(
            f"feature {feature!r} has shape {tuple(arr.shape)}; select needs pooled (rows, dim) "
            "features such as .../cls or .../mean, not patch tokens"
        )
    ids = fs.ids
    order = np.argsort(ids, kind="stable")
    x = fs.read_feature(feature)[order]  # a missing or damaged chunk is refused
    ids = ids[order]
    mask = np.zeros(len(ids), dtype=bool)
    if exclude is not None:
        done = read_table(exclude)["id"].astype(str).to_numpy()
        pos = np.searchsorted(ids, done)
        known = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == done)
        if not known.all():
            bad = done[~known]
            raise UsageError(
                f"--exclude {str(exclude)!r}: {len(bad)} ids are not in the store "
                f"(first: {bad[0]!r}); list only ids of {fs.path}"
            )
        mask[pos] = True
    sel = select_indices(
        x,
        budget=budget,
        strategy=name,
        seed=seed,
        exclude=mask,
        k=k,
        delta=delta,
        n_init=n_init,
        device=device,
    )
    picked = ids[sel.indices]
    if path is not None:
        table = pd.DataFrame(
            {"id": picked, "rank": np.arange(1, len(picked) + 1), "score": sel.scores}
        )
        write_table(table, path, what="--out")
    return SelectReport(
        store=str(store),
        feature=feature,
        strategy=name,
        budget=int(budget),
        seed=int(seed),
        n_init=int(n_init),
        rows=len(ids),
        excluded=int(mask.sum()),
        unreadable=int((~np.isfinite(x).all(1)).sum()),
        out=None if path is None else str(path),
        seconds=time.perf_counter() - t0,
        ids=tuple(str(i) for i in picked),
        scores=tuple(float(v) for v in sel.scores),
        info=sel.info,
    )
