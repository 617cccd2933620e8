"""``fmprobe sweep``: probes over features × tasks × samplers × label counts × seeds.

The plan is cut into work units (one feature, task, probe and sampler, a block of seeds); each
unit's rows are written as one Parquet part (atomically) in ``<out>.parts/``, which is the
resume ledger; the results table ``<out>`` is the parts merged in plan order.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fmprobe.devices import resolve_device
from fmprobe.errors import UsageError, did_you_mean
from fmprobe.options import parse_shard
from fmprobe.parallel import fault_hook_for_tests
from fmprobe.probes.backends import check_backend, fit_logreg_with
from fmprobe.probes.logreg import batched_mv, kernel_max_n
from fmprobe.probes.metrics import auroc, classification_metrics, multiclass_auroc
from fmprobe.probes.simple import knn_scores, ridge_fit_predict
from fmprobe.store import FeatureStore, open_store
from fmprobe.store.core import read_strings
from fmprobe.sweep.splits import Split, fold_masks, make_split, nested_order
from fmprobe.sweep.tasks import Task, load_tasks

PROBES = ("logreg", "ridge", "knn", "attnpool")
RANDOM_SAMPLER = "random"  # stratified, nested across n (sweep.splits.nested_order)


def samplers() -> tuple[str, ...]:
    """``random`` (stratified, nested) and every cold-start strategy of ``fmprobe select``."""
    from fmprobe.select import STRATEGIES

    return (RANDOM_SAMPLER, *(s for s in STRATEGIES if s != RANDOM_SAMPLER))


CPU_CACHE_ELEMENTS = 1 << 22  # float32 feature elements per kernel-Newton batch on a CPU (16 MB)
C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 10))  # sklearn LogisticRegressionCV's Cs=10
RESULT_COLUMNS = (
    "feature",
    "task",
    "probe",
    "sampler",
    "n",
    "seed",
    "n_pos",
    "auroc",
    "auprc",
    "balanced_accuracy",
    "fit_seconds",
    "C",
    "C_selection",
    "converged",
    "n_iter",
    "status",
    "n_test",
    "n_classes",
)


class ConvergenceWarning(UserWarning):
    """Some probes stopped at ``max_iter`` before reaching the tolerance."""


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep's results (recorded beside them; a rerun must match)."""

    features: tuple[str, ...]
    tasks: tuple[str, ...]
    probes: tuple[str, ...]
    samplers: tuple[str, ...]
    n: tuple[int | str, ...]
    seeds: int
    C: float | str
    folds: int
    knn_k: tuple[int, ...]
    split_col: str | None
    test_frac: float
    group_col: str | None
    split_seed: int
    labels: str | None
    standardize: bool
    l2_normalize: bool
    max_iter: int
    tol: float
    store_fingerprint: str
    backend: str = "torch"
    test_where: str | None = None
    attnpool: str | None = None  # AttnPoolConfig fields as JSON (probe attnpool)

    def digest(self) -> str:
        d = asdict(self)
        # settings added later count only when set: older sweeps keep their digest (and resume)
        for k, default in (("backend", "torch"), ("test_where", None), ("attnpool", None)):
            if d[k] == default:
                del d[k]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SweepReport:
    out: str
    rows: int
    units_total: int
    units_done_before: int
    probes_fitted: int = 0
    seconds: float = 0.0
    not_converged: int = 0
    warnings: list[str] = field(default_factory=list)
    subgroups: str | None = None  # the subgroup table written for --group-by

    @property
    def probes_per_second(self) -> float:
        return self.probes_fitted / self.seconds if self.seconds > 0 else 0.0


# --- parsing ------------------------------------------------------------------------------------


def _split_list(value: str | Sequence[Any] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def parse_ns(value: str | Sequence[int | str]) -> tuple[int | str, ...]:
    out: list[int | str] = []
    for item in _split_list(value):
        if item == "all":
            out.append("all")
            continue
        try:
            n = int(item)
        except ValueError:
            raise UsageError(f"--n {item!r}: use label counts such as 10,20,50,all") from None
        if n < 1:
            raise UsageError(f"--n {n}: label counts must be at least 1")
        out.append(n)
    if not out:
        raise UsageError("--n is empty; e.g. --n 10,20,50,all")
    return tuple(dict.fromkeys(out))


def resolve_features(store: FeatureStore, patterns: str | Sequence[str]) -> tuple[str, ...]:
    """Feature keys from comma lists or globs; token features are left to attention probes."""
    infos = [f for f in store.features() if f.pool != "tokens" and len(f.shape) == 2]
    keys = [f.key for f in infos]
    chosen: list[str] = []
    for pat in _split_list(patterns) or ["*"]:
        hits = [k for k in keys if fnmatch.fnmatchcase(k, pat)]
        if not hits:
            raise UsageError(
                f"--features {pat!r} matches no feature of {store.path}{did_you_mean(pat, keys)}; "
                f"list them with `fmprobe store info {store.path}`"
            )
        chosen += [h for h in hits if h not in chosen]
    incomplete = [f.key for f in infos if f.key in chosen and not f.complete]
    if incomplete:
        raise UsageError(
            f"feature {incomplete[0]!r} is unfinished; rerun its `fmprobe embed` first"
        )
    return tuple(chosen)


def resolve_token_features(
    store: FeatureStore, patterns: str | Sequence[str], layers: str | Sequence[int] | None
) -> tuple[str, ...]:
    """``--probe attnpool``: ``--features`` globs select models with stored patch tokens,
    ``--layers`` which of their stored layers to combine (default: all). Returns names
    ``<model>/block2+block5+…/attnpool`` (the results' ``feature``)."""
    infos = [f for f in store.features() if f.pool == "tokens" and f.model is not None]
    stored: dict[str, list[int]] = {}
    for f in infos:
        stored.setdefault(str(f.model), []).append(int(f.layer or 0))
    if not stored:
        raise UsageError(
            f"--probe attnpool needs patch tokens and {store.path} has none; "
            "embed with `fmprobe embed --tokens`"
        )
    models = sorted(stored)
    chosen: list[str] = []
    for pat in _split_list(patterns) or ["*"]:
        head = pat.split("/")[0]
        hits = [m for m in models if fnmatch.fnmatchcase(m, pat) or fnmatch.fnmatchcase(m, head)]
        if not hits:
            raise UsageError(
                f"--features {pat!r} matches no model with stored tokens"
                f"{did_you_mean(pat, models)}; models with tokens: {', '.join(models)}"
            )
        chosen += [h for h in hits if h not in chosen]
    try:
        want = None if layers in (None, "", "all") else [int(v) for v in _split_list(layers)]
    except ValueError:
        raise UsageError(
            f"--layers {layers!r}: comma list of block indices, e.g. 2,5,8,11"
        ) from None
    names = []
    for m in chosen:
        have = sorted(stored[m])
        use = have if want is None else want
        missing = [i for i in use if i not in have]
        if missing:
            raise UsageError(
                f"--layers: {m} has no stored tokens of block {missing[0]}; stored: "
                f"{', '.join(map(str, have))}"
            )
        if not all(f.complete for f in infos if f.model == m):
            raise UsageError(f"the tokens of {m!r} are unfinished; rerun its `fmprobe embed` first")
        names.append(f"{m}/{'+'.join(f'block{i}' for i in use)}/attnpool")
    return tuple(names)


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    feature: str
    task: str
    probe: str
    sampler: str
    seeds: tuple[int, ...]

    @property
    def name(self) -> str:
        seeds = f"{self.seeds[0]}-{self.seeds[-1]}"
        text = f"{self.feature}|{self.task}|{self.probe}|{self.sampler}|{seeds}"
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def plan_units(cfg: SweepConfig, *, seeds_per_unit: int) -> list[Unit]:
    seeds = list(range(cfg.seeds))
    blocks = [tuple(seeds[i : i + seeds_per_unit]) for i in range(0, len(seeds), seeds_per_unit)]
    return [
        Unit(f, t, p, s, b)
        for f in cfg.features
        for t in cfg.tasks
        for p in cfg.probes
        for s in cfg.samplers
        for b in blocks
    ]


# --- one unit -----------------------------------------------------------------------------------


@dataclass
class _Data:
    """A feature's rows for one task, on the device."""

    X_pool: torch.Tensor  # (P, D) training pool
    y_pool: np.ndarray  # (P,)
    X_test: torch.Tensor  # (T, D)
    y_test: torch.Tensor  # (T,)
    pool_mean: torch.Tensor  # (D,)
    pool: np.ndarray  # (P,) store rows of the pool
    test: np.ndarray  # (T,) store rows of the test set
    _centred: tuple[torch.Tensor, torch.Tensor] | None = None

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool and test rows minus the pool mean (exact for a probe with an unpenalised
        intercept, and better conditioned), computed once per feature and task."""
        if self._centred is None:
            self._centred = (self.X_pool - self.pool_mean, self.X_test - self.pool_mean)
        return self._centred


def _prepare(
    X: np.ndarray, task: Task, split: Split, *, l2_normalize: bool, device: torch.device
) -> _Data:
    finite = np.isfinite(X).all(1)
    ok = (task.codes >= 0) & finite
    pool = split.train[ok[split.train]]
    test = split.test[ok[split.test]]
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    if l2_normalize:
        Xt = torch.nn.functional.normalize(Xt, dim=1)
    X_pool = Xt[torch.as_tensor(pool, device=device)]
    return _Data(
        X_pool=X_pool,
        y_pool=task.codes[pool],
        X_test=Xt[torch.as_tensor(test, device=device)],
        y_test=torch.as_tensor(task.codes[test], device=device),
        pool_mean=X_pool.mean(0) if len(pool) else torch.zeros(X.shape[1], device=device),
        pool=pool,
        test=test,
    )


def _standardise(
    Xb: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-problem z-scoring from the problem's own training rows (no test statistics)."""
    m = torch.ones(Xb.shape[:2], device=Xb.device) if mask is None else mask.float()
    cnt = m.sum(1, keepdim=True).clamp_min(1)
    mu = (Xb * m[..., None]).sum(1) / cnt
    var = (((Xb - mu[:, None]) ** 2) * m[..., None]).sum(1) / cnt
    sd = var.sqrt().clamp_min(1e-12)
    return (Xb - mu[:, None]) / sd[:, None], mu, sd


def _scores(
    probe: str,
    Xb: torch.Tensor,
    yb: torch.Tensor,
    X_eval: torch.Tensor,
    C: torch.Tensor,
    *,
    n_classes: int,
    mask: torch.Tensor | None,
    standardize: bool,
    knn_k: Sequence[int],
    max_iter: int,
    tol: float,
    backend: str = "torch",
) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Fit B problems and score ``X_eval`` ((T, D) shared, or (B, T, D) per problem).

    Returns per-variant scores (one per k for kNN), and convergence flags / iteration counts.
    """
    if probe == "knn":
        if X_eval.dim() == 3:
            raise ValueError("kNN has no hyper-parameter to cross-validate")
        return knn_scores(Xb, yb, X_eval, ks=knn_k, n_classes=n_classes, mask=mask), None, None
    mu = sd = None
    if standardize:
        Xb, mu, sd = _standardise(Xb, mask)
    if probe == "ridge":
        if X_eval.dim() == 2 and mu is None:
            return (
                [ridge_fit_predict(Xb, yb, X_eval, C, n_classes=n_classes, mask=mask)],
                None,
                None,
            )
        Xe = X_eval if X_eval.dim() == 3 else X_eval.expand(Xb.shape[0], -1, -1)
        if mu is not None and sd is not None:
            Xe = (Xe - mu[:, None]) / sd[:, None]
        per_problem = [
            ridge_fit_predict(
                Xb[i : i + 1],
                yb[i : i + 1],
                Xe[i],
                C[i : i + 1],
                n_classes=n_classes,
                mask=None if mask is None else mask[i : i + 1],
            )[0]
            for i in range(Xb.shape[0])
        ]
        return [torch.stack(per_problem)], None, None
    fit = fit_logreg_with(
        backend, Xb, yb, C, n_classes=n_classes, mask=mask, max_iter=max_iter, tol=tol
    )
    coef, intercept = fit.coef, fit.intercept
    if mu is not None and sd is not None:
        # the same linear function on raw features: w/σ, b - μ·(w/σ)
        coef = coef / sd.to(coef.dtype)[:, :, None]
        intercept = intercept - torch.einsum("bd,bdk->bk", mu.to(coef.dtype), coef)
    # scoring in float32: the test-set product is the largest cost at small n, and AUROC
    # only needs the ranking (float32 ties are handled exactly by the metrics)
    X_eval = X_eval.to(torch.float32)
    coef32 = coef.to(torch.float32)
    z = (
        torch.einsum("td,bdk->btk", X_eval, coef32)
        if X_eval.dim() == 2
        else batched_mv(X_eval, coef32)
    )
    z = z + intercept.to(torch.float32)[:, None, :]
    # binary: the logit ranks as the probability does; multinomial: one-vs-rest AUROC needs the
    # class probabilities (softmax), as scikit-learn's predict_proba gives them
    out = z[..., 0] if z.shape[-1] == 1 else torch.softmax(z, dim=-1)
    return [out], fit.converged, fit.n_iter


def _val_metric(
    scores: torch.Tensor, y: torch.Tensor, held_out: torch.Tensor, n_classes: int
) -> torch.Tensor:
    if n_classes == 2:
        return auroc(scores, y, held_out)
    return multiclass_auroc(scores, y, held_out)


def _choose_C(
    probe: str,
    Xb: torch.Tensor,
    yb: torch.Tensor,
    y_np: np.ndarray,
    *,
    n_classes: int,
    folds: int,
    seeds: Sequence[int],
    standardize: bool,
    max_iter: int,
    tol: float,
    backend: str = "torch",
) -> tuple[torch.Tensor, str]:
    """k-fold CV over ``C_GRID`` inside each subsample: every fold and grid point in one batch.
    Returns the chosen C per problem (ties: the smaller C) and how it was chosen."""
    B, n, _ = Xb.shape
    counts = np.array([np.bincount(y_np[b], minlength=n_classes).min() for b in range(B)])
    k = int(min(folds, counts.min())) if counts.size else 0
    if k < 2:
        return torch.ones(B, dtype=torch.float64, device=Xb.device), "fallback"
    masks = np.stack([fold_masks(y_np[b], k=k, seed=int(seeds[b])) for b in range(B)])  # (B,k,n)
    G = len(C_GRID)
    held = torch.as_tensor(masks, device=Xb.device)[:, :, None, :].expand(B, k, G, n).reshape(-1, n)
    Xr = Xb[:, None, None].expand(B, k, G, n, Xb.shape[2]).reshape(-1, n, Xb.shape[2])
    yr = yb[:, None, None].expand(B, k, G, n).reshape(-1, n)
    Cr = (
        torch.tensor(C_GRID, dtype=torch.float64, device=Xb.device)[None, None]
        .expand(B, k, G)
        .reshape(-1)
    )
    scores, _, _ = _scores(
        probe,
        Xr,
        yr,
        Xr,
        Cr,
        n_classes=n_classes,
        mask=~held,
        standardize=standardize,
        knn_k=(),
        max_iter=max_iter,
        tol=tol,
        backend=backend,
    )
    metric = _val_metric(scores[0], yr, held, n_classes).reshape(B, k, G)
    mean = torch.nan_to_num(metric, nan=-1.0).mean(1)
    best = torch.argmax(mean, dim=1)  # first maximum: the smallest C among ties
    return Cr.reshape(B, k, G)[:, 0, :].gather(1, best[:, None])[:, 0], "cv"


def _label_counts(cfg: SweepConfig, pool_size: int) -> list[int]:
    """The plan's label counts for a pool (``all`` = the pool), each once, in plan order."""
    return list(dict.fromkeys(pool_size if n == "all" else int(n) for n in cfg.n))


def _n_status(n: int, pool_size: int, task: Task, sampler: str) -> str:
    """``ok``, or why (n, seed) problems of this label count are not fitted."""
    if n > pool_size:
        return "n_exceeds_pool"
    if n < task.n_classes and sampler == RANDOM_SAMPLER:
        # (a cold-start sampler's budget may be below the class count: it is fitted on the
        # classes it happens to pick, as an annotator's first labels would be)
        return "n_below_classes"
    return "ok"


def run_unit(
    unit: Unit,
    data: _Data,
    task: Task,
    cfg: SweepConfig,
    *,
    batch_limit: int,
) -> Iterator[dict[str, Any]]:
    """Fit every (n, seed) problem of a unit; yield one result row per probe variant."""
    pool_size = len(data.y_pool)
    ns = _label_counts(cfg, pool_size)
    n_max = min(pool_size, max(ns))
    orders = (
        _nested_orders(data.y_pool, unit.seeds, n_max) if unit.sampler == RANDOM_SAMPLER else {}
    )
    probe_names = [f"knn{k}" for k in cfg.knn_k] if unit.probe == "knn" else [unit.probe]
    base = {
        "feature": unit.feature,
        "task": task.name,
        "sampler": unit.sampler,
        "n_test": len(data.y_test),
        "n_classes": task.n_classes,
    }
    device = data.X_pool.device
    X_src, X_test = data.centred() if unit.probe == "logreg" else (data.X_pool, data.X_test)
    for n in ns:
        status = _n_status(n, pool_size, task, unit.sampler)
        if status != "ok":
            for seed in unit.seeds:
                for name in probe_names:
                    yield {**base, "probe": name, "n": n, "seed": seed, "status": status}
            continue
        limit = batch_limit
        if device.type == "cpu" and unit.probe == "logreg" and n <= kernel_max_n(device):
            # on a CPU a kernel-Newton batch whose rows stay in cache beats a large one
            # (measured, D=768: n=500 44 probes/s at B=2 vs 19 at B=32); at n=100 one thread
            # did ~300 probes/s at a 4 MB limit (13 seeds), ~370 at 16 MB (a 32-seed unit).
            # (Larger n is solved problem by problem in numpy: the batch only shares the
            # test-set product.)
            limit = min(limit, CPU_CACHE_ELEMENTS)
        per_problem = n * data.X_pool.shape[1] * (len(C_GRID) * cfg.folds if cfg.C == "auto" else 1)
        step = max(1, limit // max(1, per_problem))
        start = 0
        while start < len(unit.seeds):
            seeds = unit.seeds[start : start + step]
            if unit.sampler == RANDOM_SAMPLER:
                idx = np.stack([orders[s][:n] for s in seeds])
            else:
                idx = np.stack([_selected(unit, data, cfg, n=n, seed=s) for s in seeds])
            try:
                rows = _fit_subsets(unit, data, task, cfg, n=n, seeds=seeds, idx=idx,
                                    X_src=X_src, X_test=X_test, base=base,
                                    probe_names=probe_names)  # fmt: skip
            except torch.OutOfMemoryError:
                if len(seeds) == 1:
                    raise
                step = max(1, len(seeds) // 2)  # the device is full: retry in halves
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            yield from rows
            start += len(seeds)


_SELECTIONS: dict[tuple[Any, ...], np.ndarray] = {}
_ORDERS: dict[tuple[str, int, int], np.ndarray] = {}
_ORDERS_SIZE = [0]  # elements held in _ORDERS
ORDERS_CACHE_ELEMENTS = 1 << 23  # 64 MB of cached orderings per process at most


def _nested_orders(labels: np.ndarray, seeds: Sequence[int], n_max: int) -> dict[int, np.ndarray]:
    """``nested_order(labels, seed=s, n_max=n_max)`` for each seed, kept for the process: every
    feature of a sweep draws the same subsets of a task's pool (a seed's ordering costs ~0.15 ms
    for a 10,000-row pool, about a tenth of a probe's time at n ≤ 100)."""
    key = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    out = {}
    for s in seeds:
        if (key, s, n_max) not in _ORDERS:
            order = nested_order(labels, seed=s, n_max=n_max)
            order.flags.writeable = False  # shared by every later unit of the process
            if _ORDERS_SIZE[0] + len(order) > ORDERS_CACHE_ELEMENTS:
                _ORDERS.clear()
                _ORDERS_SIZE[0] = 0
            _ORDERS[(key, s, n_max)] = order
            _ORDERS_SIZE[0] += len(order)
        out[s] = _ORDERS[(key, s, n_max)]
    return out


def _selected(unit: Unit, data: _Data, cfg: SweepConfig, *, n: int, seed: int) -> np.ndarray:
    """Pool positions that the cold-start strategy ``unit.sampler`` picks for budget ``n`` on
    the unit's feature (label-free: computed once per process for every task sharing the pool).
    """
    from fmprobe.select import select_indices

    pool_key = hashlib.sha256(np.ascontiguousarray(data.pool).tobytes()).hexdigest()
    key = (unit.feature, unit.sampler, cfg.l2_normalize, pool_key, n, seed)
    if key not in _SELECTIONS:
        if len(_SELECTIONS) > 4096:
            _SELECTIONS.clear()
        sel = select_indices(
            data.X_pool, budget=n, strategy=unit.sampler, seed=seed, device=str(data.X_pool.device)
        )
        _SELECTIONS[key] = np.asarray(sel.indices, dtype=np.int64)
    return _SELECTIONS[key]


def _fit_subsets(
    unit: Unit,
    data: _Data,
    task: Task,
    cfg: SweepConfig,
    *,
    n: int,
    seeds: tuple[int, ...],
    idx: np.ndarray,
    X_src: torch.Tensor,
    X_test: torch.Tensor,
    base: dict[str, Any],
    probe_names: list[str],
) -> list[dict[str, Any]]:
    """Fit the problems whose training subsets ``idx`` (B, n) hold every class as one batch;
    a subset that misses classes (possible with cold-start samplers, which never look at
    labels) is fitted alone on the classes it has, and scores zero for the others."""
    K = task.n_classes
    y_np = data.y_pool[idx]
    full = np.array([len(np.unique(y)) == K for y in y_np])

    def fit(sub_seeds: tuple[int, ...], sub_idx: np.ndarray) -> list[dict[str, Any]]:
        return _fit_batch(unit, data, task, cfg, n=n, seeds=sub_seeds, idx=sub_idx,
                          X_src=X_src, X_test=X_test, base=base,
                          probe_names=probe_names)  # fmt: skip

    if full.all():
        return fit(seeds, idx)
    rows: list[dict[str, Any]] = []
    if full.any():
        rows += fit(tuple(s for s, f in zip(seeds, full, strict=True) if f), idx[full])
    for b in np.flatnonzero(~full):
        rows += fit((seeds[b],), idx[b : b + 1])
    order = {
        (name, s): i for i, (name, s) in enumerate((nm, s) for nm in probe_names for s in seeds)
    }
    return sorted(rows, key=lambda r: order[(r["probe"], r["seed"])])


def _expand_classes(
    scores: torch.Tensor, present: np.ndarray, n_classes: int, *, probability: bool
) -> torch.Tensor:
    """Scores of a problem fitted on the classes ``present`` only, as (B, T, n_classes) class
    scores: absent classes score 0 (they are never predicted and rank last)."""
    if scores.dim() == 2:  # two classes present: one score for the second of them
        p1 = torch.sigmoid(scores) if not probability else scores
        scores = torch.stack([1 - p1, p1], dim=-1)
    out = torch.zeros(*scores.shape[:2], n_classes, dtype=scores.dtype, device=scores.device)
    out[..., torch.as_tensor(present, device=scores.device)] = scores
    return out


_GATHER = threading.local()


def _gather_rows(X_src: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """``X_src[idx]`` as a (B, n, D) tensor. On a CPU it is written into a buffer this thread
    reuses from batch to batch (valid until its next call): a fresh tensor of a large batch
    costs more in page faults than in copying (measured, 32 × 2,000 × 768 float32 rows: 118 ms
    fresh, 23 ms into the reused buffer)."""
    flat = torch.as_tensor(idx.reshape(-1), device=X_src.device)
    if X_src.device.type != "cpu":
        return X_src[flat].view(*idx.shape, X_src.shape[1])
    rows, D = len(flat), X_src.shape[1]
    buf = getattr(_GATHER, "buf", None)
    if buf is None or buf.dtype != X_src.dtype or buf.shape[1] != D or buf.shape[0] < rows:
        buf = _GATHER.buf = torch.empty(rows, D, dtype=X_src.dtype)
    out = buf[:rows]
    torch.index_select(X_src, 0, flat, out=out)
    return out.view(*idx.shape, D)


def _fit_batch(
    unit: Unit,
    data: _Data,
    task: Task,
    cfg: SweepConfig,
    *,
    n: int,
    seeds: tuple[int, ...],
    idx: np.ndarray,
    X_src: torch.Tensor,
    X_test: torch.Tensor,
    base: dict[str, Any],
    probe_names: list[str],
) -> list[dict[str, Any]]:
    """Fit and score the (n, seed) problems of ``seeds`` as one batch; one row per variant."""
    device = data.X_pool.device
    status = "ok"
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    y_np = data.y_pool[idx]
    Xb = _gather_rows(X_src, idx)
    # every problem of a batch holds the same classes; a cold-start subset may miss some
    present = np.unique(y_np[0])
    n_fit = len(present) if len(present) < task.n_classes else task.n_classes
    if n_fit < task.n_classes:
        status = "classes_missing"
        y_np = np.searchsorted(present, y_np)
    yb = torch.as_tensor(y_np, device=device)
    selection = "fixed"
    if unit.probe == "knn":
        C = torch.ones(len(seeds), dtype=torch.float64, device=device)
        selection = "none"
    elif cfg.C == "auto" and n_fit >= 2:
        C, selection = _choose_C(
            unit.probe,
            Xb,
            yb,
            y_np,
            n_classes=n_fit,
            folds=cfg.folds,
            seeds=seeds,
            standardize=cfg.standardize,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            backend=cfg.backend,
        )
    else:
        C = torch.full((len(seeds),), float(cfg.C), dtype=torch.float64, device=device)
    if n_fit >= 2:
        variants, conv, iters = _scores(
            unit.probe,
            Xb,
            yb,
            X_test,
            C,
            n_classes=n_fit,
            mask=None,
            standardize=cfg.standardize,
            knn_k=cfg.knn_k,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            backend=cfg.backend,
        )
    else:  # one class labelled: no classifier, every test row scores the same
        status = "single_class"
        shape = (len(seeds), len(X_test)) + (() if task.n_classes == 2 else (1,))
        variants = [torch.ones(shape, dtype=torch.float32, device=device)] * len(probe_names)
        conv = iters = None
    if n_fit < task.n_classes and task.n_classes > 2:
        variants = [
            _expand_classes(v, present, task.n_classes, probability=unit.probe == "knn")
            for v in variants
        ]
    elif status == "single_class":  # binary task, one class: a constant score of class 1
        variants = [torch.zeros_like(v) for v in variants]
    threshold = 0.5 if unit.probe == "knn" else 0.0
    metrics = [
        classification_metrics(s, data.y_test, n_classes=task.n_classes, threshold=threshold)
        for s in variants
    ]
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_probe = (time.perf_counter() - t0) / (len(seeds) * len(variants))
    for v, name in enumerate(probe_names):
        met = {k: val.double().cpu().numpy() for k, val in metrics[v].items()}
        test_scores = variants[v].to(torch.float32).cpu().numpy()
        for b, seed in enumerate(seeds):
            rows.append(
                {
                    **base,
                    "probe": name,
                    "n": n,
                    "seed": seed,
                    "n_pos": int((data.y_pool[idx[b]] == 1).sum()) if task.n_classes == 2 else None,
                    "auroc": float(met["auroc"][b]),
                    "auprc": float(met["auprc"][b]),
                    "balanced_accuracy": float(met["balanced_accuracy"][b]),
                    "fit_seconds": per_probe,
                    "C": float(C[b]) if unit.probe != "knn" else None,
                    "C_selection": selection,
                    "converged": bool(conv[b]) if conv is not None else True,
                    "n_iter": int(iters[b]) if iters is not None else 0,
                    "status": status,
                    "_scores": test_scores[b],  # (T,) or (T, K): kept by --save-predictions
                }
            )
    return rows


# --- the whole sweep ----------------------------------------------------------------------------


def _batch_limit(device: torch.device) -> int:
    """Feature elements per batch: on a GPU from its free memory (the Gram matrices, fold
    copies and scores of a batch take several times the features' size; an out-of-memory
    error still halves the batch and retries), on a CPU a fixed 64 M."""
    if device.type != "cuda":
        return 1 << 26
    free, _ = torch.cuda.mem_get_info(device)
    return max(1 << 20, int(free) // (4 * 16))


def _frame(rows: list[dict[str, Any]], cfg: SweepConfig) -> pd.DataFrame:
    """The result rows of a unit as a table: the columns built at once (one small frame per
    unit; setting columns one by one cost more than the fits at small n)."""
    from fmprobe import __version__

    def get(col: str) -> list[Any]:
        return [r.get(col) for r in rows]

    def ints(col: str) -> np.ndarray:
        return np.asarray(get(col), dtype=np.int64)

    def floats(col: str) -> np.ndarray:
        return np.asarray([np.nan if v is None else v for v in get(col)], dtype=np.float64)

    n = len(rows)
    split = (
        f"where:{cfg.test_where}"
        if cfg.test_where
        else f"col:{cfg.split_col}"
        if cfg.split_col
        else f"frac:{cfg.test_frac}"
    )
    data: dict[str, Any] = {
        "feature": get("feature"),
        "task": get("task"),
        "probe": get("probe"),
        "sampler": get("sampler"),
        "n": ints("n"),
        "seed": ints("seed"),
        "n_pos": pd.array(get("n_pos"), dtype="Int64"),
        "auroc": floats("auroc"),
        "auprc": floats("auprc"),
        "balanced_accuracy": floats("balanced_accuracy"),
        "fit_seconds": floats("fit_seconds"),
        "C": floats("C"),
        "C_selection": pd.array(get("C_selection"), dtype="string"),
        "converged": pd.array(get("converged"), dtype="boolean"),
        "n_iter": pd.array(get("n_iter"), dtype="Int64"),
        "status": get("status"),
        "n_test": ints("n_test"),
        "n_classes": ints("n_classes"),
        "split": [split] * n,
        "group_col": [cfg.group_col or ""] * n,
        "split_seed": np.full(n, cfg.split_seed, dtype=np.int64),
        "standardize": np.full(n, cfg.standardize, dtype=bool),
        "l2_normalize": np.full(n, cfg.l2_normalize, dtype=bool),
        "store_fingerprint": [cfg.store_fingerprint] * n,
        "fmprobe_version": [__version__] * n,
    }
    if not n:
        return pd.DataFrame({k: pd.Series([], dtype=object) for k in data})
    return pd.DataFrame(data)


FITTED = ("ok", "classes_missing")  # statuses of rows whose probe was fitted


def _write_predictions(
    rows: list[dict[str, Any]],
    data: _Data,
    task: Task,
    fs: FeatureStore,
    folder: Path,
    unit: Unit,
) -> None:
    """``--save-predictions``: each probe's test-set scores, one row per probe.

    ``<out>.predictions/<unit>.parquet`` holds the key columns (feature, task, probe, sampler,
    n, seed, status), ``test`` (the name of the test table) and ``scores``: float32, T values
    for binary tasks (the class-1 score), T·K row-major for K classes. ``test-<digest>.parquet``
    lists that test set in score order: ``id``, ``row`` (store row) and ``y`` (class code).
    """
    digest = hashlib.sha256(task.name.encode() + b"|")
    digest.update(np.ascontiguousarray(data.test, dtype=np.int64).tobytes())
    test_name = "test-" + digest.hexdigest()[:16]
    test_path = folder / f"{test_name}.parquet"
    if not test_path.exists():
        ids = fs.ids[data.test]
        _write_atomic(
            pd.DataFrame({
                "id": np.asarray(ids).astype(str),
                "row": data.test.astype(np.int64),
                "y": data.y_test.cpu().numpy().astype(np.int64),
            }),
            test_path,
        )  # fmt: skip
    keys = ("feature", "task", "probe", "sampler", "n", "seed", "status")
    fitted = [r for r in rows if "_scores" in r]
    table = pd.DataFrame({k: [r[k] for r in fitted] for k in keys})
    table["test"] = test_name
    table["n_classes"] = task.n_classes
    table["scores"] = [np.asarray(r["_scores"], np.float32).ravel() for r in fitted]
    _write_atomic(table, folder / f"{unit.name}.parquet")


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


ENGINES = ("local", "ray")


def shard_path(out: Path, i: int, n: int) -> Path:
    """Shard I of N writes ``results.shard-I-of-N.parquet`` beside ``results.parquet``."""
    return out.with_name(f"{out.stem}.shard-{i}-of-{n}{out.suffix}")


def _attnpool_json(value: dict[str, Any] | None) -> str:
    """AttnPoolConfig's fields (``--attnpool``), checked, as canonical JSON for the config."""
    from fmprobe.probes.attnpool import AttnPoolConfig

    fields = dict(value or {})
    known = set(AttnPoolConfig.__dataclass_fields__)
    for k in fields:
        if k not in known:
            raise UsageError(f"--attnpool: unknown setting {k!r}{did_you_mean(k, known)}")
    AttnPoolConfig(**fields)  # validates
    return json.dumps(fields, sort_keys=True)


def parse_test_where(value: str | None, table: pd.DataFrame) -> tuple[str, str] | None:
    """``COL=VALUE`` → (COL, VALUE), the column checked against the table."""
    if not value:
        return None
    col, sep, val = str(value).partition("=")
    if not sep or not col:
        raise UsageError(f"--test-where {value!r}: expected COL=VALUE, e.g. scanner=siemens")
    if col not in table.columns:
        raise UsageError(
            f"--test-where: column {col!r} is not in the store or --labels"
            f"{did_you_mean(col, table.columns)}"
        )
    values = table[col].astype(str)
    if not (values == val).any():
        shown = ", ".join(sorted(values.unique())[:10])
        raise UsageError(f"--test-where {value!r}: no row has {col} = {val!r} (values: {shown})")
    if (values == val).all():
        raise UsageError(f"--test-where {value!r}: every row matches; nothing is left to train on")
    return col, val


def make_sweep_split(
    cfg: SweepConfig, fs: FeatureStore, task_objs: list[Task], table: pd.DataFrame
) -> Split:
    """The sweep's one test split: ``--test-where`` (out-of-domain), ``--split-col``, or a
    stratified (grouped) ``--test-frac``."""
    where = parse_test_where(cfg.test_where, table)
    if where is not None:
        col, val = where
        is_test = (table[col].astype(str) == val).to_numpy()
        return Split(
            train=np.flatnonzero(~is_test),
            test=np.flatnonzero(is_test),
            method=f"where:{col}={val}",
            seed=cfg.split_seed,
        )
    return make_split(
        n_rows=fs.n,
        stratify=task_objs[0].codes,
        split_values=table[cfg.split_col].to_numpy() if cfg.split_col else None,
        split_col=cfg.split_col,
        groups=table[cfg.group_col].to_numpy() if cfg.group_col else None,
        group_col=cfg.group_col,
        test_frac=cfg.test_frac,
        seed=cfg.split_seed,
    )


@dataclass(frozen=True)
class SweepJob:
    """What any process (this one, a Ray worker, an array-job shard) needs to run units."""

    store: str
    cfg: SweepConfig
    parts: str
    predictions: str | None
    device: str


def unit_probes(cfg: SweepConfig, unit: Unit) -> int:
    """The result rows of a unit: its seeds × label counts × probe variants (one per kNN k)."""
    return len(unit.seeds) * len(cfg.n) * (len(cfg.knn_k) if unit.probe == "knn" else 1)


def execute_units(job: SweepJob, units: Sequence[Unit], *, progress: Any = None) -> int:
    """Run ``units`` in this process, each written as its Parquet part (atomically, after its
    predictions when kept); returns the number of probes fitted. Units are independent, so any
    process may run any of them: the results do not depend on who runs what."""
    from threadpoolctl import threadpool_limits

    try:
        # numpy's BLAS (OpenBLAS) on one thread: its products here are per problem and small,
        # and its spinning threads would compete with torch's (measured, n = 100, in-process:
        # 394 probes/s with both libraries on 2 threads, 670 with OpenBLAS on one)
        with threadpool_limits(1, user_api="blas"):
            return UnitRunner(job).run(units, progress=progress)
    finally:
        _GATHER.__dict__.pop("buf", None)  # the batch buffer outlives a sweep only in workers


class UnitRunner:
    """``execute_units`` with its state kept between calls: the store, tasks and split of a
    job, and the last feature read (a worker process that runs a job's units a few at a time
    reads each feature once, not once per call)."""

    def __init__(self, job: SweepJob) -> None:
        self.job = job
        cfg = job.cfg
        self.fs = open_store(job.store)
        task_objs, table = load_tasks(self.fs, list(cfg.tasks), labels=cfg.labels)
        self.split = make_sweep_split(cfg, self.fs, task_objs, table)
        self.dev = resolve_device(job.device)
        self.batch_limit = _batch_limit(self.dev)
        self.tasks_by_name = {t.name: t for t in task_objs}
        self.cache: dict[tuple[str, str], _Data] = {}
        self.X_cache: dict[str, np.ndarray] = {}

    def run(self, units: Sequence[Unit], *, progress: Any = None) -> int:
        job, cfg, fs, dev = self.job, self.job.cfg, self.fs, self.dev
        parts, preds = Path(job.parts), Path(job.predictions) if job.predictions else None
        fitted = 0
        for unit in units:
            task = self.tasks_by_name[unit.task]
            if unit.probe == "attnpool":
                unreadable = _unreadable(fs, unit.feature.split("/")[0])
                data = _token_data(task, self.split, dev, unreadable)
                rows = list(_attnpool_unit(unit, fs, data, task, cfg, dev, progress))
            else:
                data = self._data(unit, task)
                rows = []
                for row in run_unit(unit, data, task, cfg, batch_limit=self.batch_limit):
                    rows.append(row)
                    if progress is not None:
                        progress(1)
            if preds is not None:  # before the results part, which marks the unit done
                _write_predictions(rows, data, task, fs, preds, unit)
            for row in rows:
                row.pop("_scores", None)
            _write_atomic(_frame(rows, cfg), parts / f"{unit.name}.parquet")
            fitted += sum(1 for r in rows if r["status"] in FITTED)
            fault_hook_for_tests()
        return fitted

    def _data(self, unit: Unit, task: Task) -> _Data:
        if unit.feature not in self.X_cache:
            self.X_cache.clear()
            self.X_cache[unit.feature] = self.fs.read_feature(unit.feature).astype(np.float32)
        key = (unit.feature, unit.task)
        if key not in self.cache:
            self.cache.clear()
            self.cache[key] = _prepare(
                self.X_cache[unit.feature],
                task,
                self.split,
                l2_normalize=self.job.cfg.l2_normalize,
                device=self.dev,
            )
        return self.cache[key]


def _token_data(
    task: Task, split: Split, device: torch.device, unreadable: np.ndarray | None = None
) -> _Data:
    """The pool and test rows of a task for a probe that reads tokens, not pooled features
    (rows without a label, or whose image was unreadable, left out)."""
    ok = task.codes >= 0
    if unreadable is not None:
        ok = ok & ~unreadable
    pool = split.train[ok[split.train]]
    test = split.test[ok[split.test]]
    empty = torch.zeros(0, device=device)
    return _Data(X_pool=empty, y_pool=task.codes[pool], X_test=empty,
                 y_test=torch.as_tensor(task.codes[test], device=device), pool_mean=empty,
                 pool=pool, test=test)  # fmt: skip


def _unreadable(fs: FeatureStore, model: str) -> np.ndarray:
    """(N,) True where the model's embed recorded the image as unreadable (NaN tokens)."""
    err = read_strings(fs.root[f"{model}/_error"])
    return np.asarray(err != "")


def _attnpool_unit(
    unit: Unit,
    fs: FeatureStore,
    data: _Data,
    task: Task,
    cfg: SweepConfig,
    device: torch.device,
    progress: Any,
) -> Iterator[dict[str, Any]]:
    """The attention-pooling probe's (n, seed) problems of a unit: for each n, every seed's
    problem trained at once on the stored tokens (streamed from the store)."""
    from fmprobe.probes.attnpool import AttnPoolConfig, fit_predict_attnpool

    model, blocks, _ = unit.feature.split("/")
    tokens = [fs.root[f"{model}/{b}/tokens"] for b in blocks.split("+")]
    config = AttnPoolConfig(**json.loads(cfg.attnpool or "{}"))
    pool_size = len(data.pool)
    ns = _label_counts(cfg, pool_size)
    n_max = min(pool_size, max(ns))
    orders = _nested_orders(data.y_pool, unit.seeds, n_max)
    base = {"feature": unit.feature, "task": task.name, "sampler": unit.sampler,
            "n_test": len(data.test), "n_classes": task.n_classes, "probe": "attnpool"}  # fmt: skip
    for n in ns:
        status = _n_status(n, pool_size, task, unit.sampler)
        if status != "ok":
            for seed in unit.seeds:
                yield {**base, "n": n, "seed": seed, "status": status}
            continue
        t0 = time.perf_counter()
        idx = np.stack([orders[s][:n] for s in unit.seeds])
        scores, infos = fit_predict_attnpool(
            tokens=tokens, train_rows=data.pool[idx], y_train=data.y_pool[idx],
            test_rows=data.test, n_classes=task.n_classes, seeds=list(unit.seeds),
            config=config, device=device,
        )  # fmt: skip
        sc = torch.as_tensor(scores, device=device)
        met = classification_metrics(sc, data.y_test, n_classes=task.n_classes, threshold=0.0)
        m = {k: v.double().cpu().numpy() for k, v in met.items()}
        per_probe = (time.perf_counter() - t0) / len(unit.seeds)
        for b, seed in enumerate(unit.seeds):
            y_b = data.y_pool[idx[b]]
            yield {
                **base, "n": n, "seed": seed, "status": "ok",
                "n_pos": int((y_b == 1).sum()) if task.n_classes == 2 else None,
                "auroc": float(m["auroc"][b]), "auprc": float(m["auprc"][b]),
                "balanced_accuracy": float(m["balanced_accuracy"][b]),
                "fit_seconds": per_probe, "C": None, "C_selection": "none",
                "converged": True, "n_iter": int(infos[b].steps),
                "_scores": np.asarray(scores[b], np.float32),
            }  # fmt: skip
        if progress is not None:
            progress(len(unit.seeds))


SWEEP_META_KEY = b"fmprobe_sweep"


def _write_results(df: pd.DataFrame, path: Path, cfg: SweepConfig, *, seeds_per_unit: int) -> None:
    """The results table, with the sweep's configuration in the Parquet metadata (so that
    ``merge`` can check that shards belong together and order their rows as one run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tbl = pa.Table.from_pandas(df, preserve_index=False)
    meta = json.dumps(
        {"digest": cfg.digest(), "config": asdict(cfg), "seeds_per_unit": seeds_per_unit},
        default=str,
    )
    tbl = tbl.replace_schema_metadata(
        {**(tbl.schema.metadata or {}), SWEEP_META_KEY: meta.encode()}
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(tbl, tmp)
    os.replace(tmp, path)


def merge(*, parts: Sequence[str], out: str) -> pd.DataFrame:
    """Merge the tables of ``sweep --shard I/N`` runs into the table one run would have
    written (same rows, same order). Shards of different sweeps, a unit in two shards, or a
    missing unit are refused with a one-line error.

    Examples
    --------
    >>> merge(parts=["r.shard-0-of-2.parquet", "r.shard-1-of-2.parquet"],
    ...       out="r.parquet")  # doctest: +SKIP
    """
    import pyarrow.parquet as pq

    if not parts:
        raise UsageError("sweep merge: give the shard tables to merge, e.g. r.shard-*.parquet")
    metas, frames = [], []
    for p in parts:
        if not Path(p).is_file():
            raise UsageError(f"sweep merge: {p!r} does not exist")
        md = pq.read_schema(p).metadata or {}
        if SWEEP_META_KEY not in md:
            raise UsageError(f"sweep merge: {p!r} is not a table written by fmprobe sweep")
        metas.append(json.loads(md[SWEEP_META_KEY]))
        frames.append(pd.read_parquet(p))
    digests = {m["digest"] for m in metas}
    if len(digests) > 1:
        raise UsageError("sweep merge: the tables come from sweeps with different settings")
    c = metas[0]["config"]
    cfg = SweepConfig(**{
        **c,
        **{k: tuple(c[k]) for k in ("features", "tasks", "probes", "samplers", "n", "knn_k")},
    })  # fmt: skip
    units = plan_units(cfg, seeds_per_unit=int(metas[0]["seeds_per_unit"]))
    rank = {}
    for i, u in enumerate(units):
        for seed in u.seeds:
            rank[(u.feature, u.task, u.probe, u.sampler, seed)] = i
    df = pd.concat(frames, ignore_index=True)
    base_probe = df["probe"].where(~df["probe"].str.startswith("knn"), "knn")
    key = list(zip(df["feature"], df["task"], base_probe, df["sampler"], df["seed"], strict=True))
    unit_of = np.array([rank.get(k, -1) for k in key])
    if (unit_of < 0).any():
        raise UsageError("sweep merge: rows that are not in the sweep's plan")
    dup = df.assign(_u=unit_of).duplicated(["_u", "probe", "n", "seed"])
    if dup.any():
        raise UsageError(
            "sweep merge: a unit appears in more than one table (the same shard twice?)"
        )
    missing = len(units) - len(set(unit_of.tolist()))
    if missing:
        raise UsageError(
            f"sweep merge: {missing} of {len(units)} work units are in none of the tables; "
            "run the missing shards (or the sweep without --shard) first"
        )
    # one run's order: plan units in order, rows within a unit as they were written
    df = df.assign(_u=unit_of, _i=np.arange(len(df))).sort_values(["_u", "_i"], kind="stable")
    df = df.drop(columns=["_u", "_i"]).reset_index(drop=True)
    _write_results(df, Path(out), cfg, seeds_per_unit=int(metas[0]["seeds_per_unit"]))
    return df


def sweep(
    *,
    store: str,
    out: str,
    features: str | Sequence[str] = "*",
    tasks: str | Sequence[str] = "label",
    probe: str | Sequence[str] = "logreg",
    sampler: str | Sequence[str] = "random",
    n: str | Sequence[int | str] = "10,20,50,100,all",
    seeds: int = 5,
    C: float | str = 1.0,
    folds: int = 5,
    knn_k: str | Sequence[int] = "1,5,20",
    split_col: str | None = None,
    test_frac: float = 0.25,
    group_col: str | None = None,
    split_seed: int = 0,
    labels: str | None = None,
    standardize: bool = False,
    l2_normalize: bool = False,
    max_iter: int = 500,
    tol: float = 1e-5,
    backend: str = "torch",
    test_where: str | None = None,
    group_by: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    attnpool: dict[str, Any] | None = None,
    device: str | None = None,
    seeds_per_unit: int = 32,
    save_predictions: bool = False,
    engine: str = "local",
    address: str | None = None,
    shard: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> SweepReport:
    """Run probes over features × tasks × samplers × label counts × seeds into a Parquet table.

    Examples
    --------
    >>> sweep(store="digits.zarr", out="results.parquet", features="*/block11/cls",
    ...       n="10,20,50,100,all", seeds=5)  # doctest: +SKIP
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    if engine not in ENGINES:
        raise UsageError(
            f"--engine {engine!r}{did_you_mean(engine, ENGINES)}: one of {', '.join(ENGINES)}"
        )
    shard_i, shard_n = parse_shard(shard)
    if workers < 1:
        raise UsageError(f"--workers {workers}: at least 1 (1 = this process only)")
    if workers > 1 and engine != "local":
        raise UsageError(f"--workers {workers} is for --engine local; Ray places its own workers")
    fs = open_store(store)
    probes = tuple(_split_list(probe))
    bad = [p for p in probes if p not in PROBES]
    if bad or not probes:
        raise UsageError(f"--probe {bad[0] if bad else ''!r}: valid probes are {', '.join(PROBES)}")
    samplers_ = tuple(_split_list(sampler))
    valid = samplers()
    bad = [s for s in samplers_ if s not in valid]
    if bad or not samplers_:
        raise UsageError(
            f"--sampler {bad[0] if bad else ''!r}{did_you_mean(bad[0], valid) if bad else ''}: "
            f"valid samplers are {', '.join(valid)}"
        )
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: at least 1")
    if isinstance(C, str) and C != "auto":
        try:
            C = float(C)
        except ValueError:
            raise UsageError(f"--C {C!r}: a positive number or 'auto'") from None
    if not isinstance(C, str) and not C > 0:
        raise UsageError(f"--C {C}: must be positive (or 'auto')")
    try:
        ks = tuple(sorted({int(k) for k in _split_list(knn_k)}))
    except ValueError:
        raise UsageError(f"--knn-k {knn_k!r}: comma list of integers, e.g. 1,5,20") from None
    if "knn" in probes and (not ks or ks[0] < 1):
        raise UsageError("--knn-k needs positive integers, e.g. 1,5,20")
    task_objs, table = load_tasks(fs, _split_list(tasks) or ["label"], labels=labels)
    group_cols = _split_list(group_by)
    for col in (split_col, group_col, *group_cols):
        if col is not None and col not in table.columns:
            raise UsageError(
                f"column {col!r} is not in the store or --labels{did_you_mean(col, table.columns)}"
            )
    if test_where and split_col:
        raise UsageError("--test-where and --split-col both define the test set; pass one")
    if group_cols:
        save_predictions = True  # subgroup metrics are computed from the kept scores
    if "attnpool" in probes:
        if len(probes) > 1:
            raise UsageError(
                "--probe attnpool reads patch tokens, the other probes pooled features: "
                "run attnpool in a sweep of its own"
            )
        if samplers_ != (RANDOM_SAMPLER,):
            raise UsageError("--probe attnpool draws random (stratified, nested) subsets only")
        feature_keys = resolve_token_features(fs, features, layers)
        attn_json = _attnpool_json(attnpool)
    else:
        feature_keys = resolve_features(fs, features)
        attn_json = None
    cfg = SweepConfig(
        features=feature_keys,
        tasks=tuple(t.name for t in task_objs),
        probes=probes,
        samplers=samplers_,
        n=parse_ns(n),
        seeds=seeds,
        C=C,
        folds=folds,
        knn_k=ks,
        split_col=split_col,
        test_frac=test_frac,
        group_col=group_col,
        split_seed=split_seed,
        labels=labels,
        standardize=standardize,
        l2_normalize=l2_normalize,
        max_iter=max_iter,
        tol=tol,
        store_fingerprint=fs.fingerprint,
        backend=check_backend(backend),
        test_where=test_where or None,
        attnpool=attn_json,
    )
    make_sweep_split(cfg, fs, task_objs, table)  # bad split settings fail here, not in workers
    dev = resolve_device(device)
    out_path = Path(out)
    parts = out_path.with_name(out_path.name + ".parts")
    meta_path = parts / "config.json"
    if parts.exists() and meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("digest") != cfg.digest():
            if not overwrite:
                raise UsageError(
                    f"{out} holds results of a sweep with other settings; pass a new --out, or "
                    "--overwrite to start again"
                )
            for p in parts.glob("*.parquet"):
                p.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(
        json.dumps({"digest": cfg.digest(), "config": asdict(cfg)}, indent=2, default=str)
    )
    units = plan_units(cfg, seeds_per_unit=seeds_per_unit)
    preds = out_path.with_name(out_path.name + ".predictions")
    if save_predictions:
        preds.mkdir(exist_ok=True)
    mine = [u for i, u in enumerate(units) if i % shard_n == shard_i]
    todo = [
        u
        for u in mine
        if not (parts / f"{u.name}.parquet").exists()
        or (save_predictions and not (preds / f"{u.name}.parquet").exists())
    ]
    report = SweepReport(
        out=str(out_path), rows=0, units_total=len(mine), units_done_before=len(mine) - len(todo)
    )
    total = sum(unit_probes(cfg, u) for u in todo)
    bar = tqdm(total=total, unit="probe", desc="sweep", file=sys.stderr,
               disable=not progress or total == 0)  # fmt: skip
    job = SweepJob(
        store=store,
        cfg=cfg,
        parts=str(parts),
        predictions=str(preds) if save_predictions else None,
        device=str(dev),
    )
    t_loop = time.perf_counter()
    if engine == "ray":
        from fmprobe.sweep.ray_engine import run_on_ray

        report.probes_fitted = run_on_ray(job, todo, address=address, progress=bar.update)
    elif workers > 1:
        from fmprobe.sweep.processes import run_in_processes

        report.probes_fitted = run_in_processes(job, todo, workers=workers, progress=bar.update)
    else:
        report.probes_fitted = execute_units(job, todo, progress=bar.update)
    bar.close()
    loop_seconds = time.perf_counter() - t_loop
    if shard_n > 1:
        out_path = shard_path(out_path, shard_i, shard_n)
        report.out = str(out_path)
    frames = [pd.read_parquet(parts / f"{u.name}.parquet") for u in mine]
    result = pd.concat(frames, ignore_index=True) if frames else _frame([], cfg)
    _write_results(result, out_path, cfg, seeds_per_unit=seeds_per_unit)
    report.rows = len(result)
    if group_cols and shard_n == 1:
        from fmprobe.stats.subgroups import subgroup_metrics

        sub = subgroup_metrics(results=out_path, group_by=group_cols, store=store, labels=labels)
        sub_path = out_path.with_name(f"{out_path.stem}.subgroups{out_path.suffix}")
        _write_atomic(sub.table, sub_path)
        report.subgroups = str(sub_path)
    report.seconds = loop_seconds if todo else time.perf_counter() - t_start
    bad_conv = result[(result["status"] == "ok") & (result["converged"] == False)]  # noqa: E712
    report.not_converged = len(bad_conv)
    if len(bad_conv):
        msg = (
            f"{len(bad_conv)} of {int((result['status'] == 'ok').sum())} probes stopped at "
            f"max_iter={max_iter} before tol={tol}; raise --max-iter or lower --C "
            "(the `converged` column marks them)"
        )
        report.warnings.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    return report
