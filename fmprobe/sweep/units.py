"""Running work units: a unit's feature rows prepared on the device once, every (n, seed)
problem fitted in batches (``fmprobe.probes.batch``), one result row per probe variant, and
the unit's part written atomically. Any process may run any unit: the results do not depend
on who runs what (the local engine, ``--workers`` processes, Ray tasks, array-job shards)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fmprobe import storage
from fmprobe.devices import resolve_device
from fmprobe.parallel import fault_hook_for_tests
from fmprobe.probes.batch import C_GRID, fit_score_batch, training_metrics
from fmprobe.probes.logreg import kernel_max_n
from fmprobe.probes.metrics import classification_metrics
from fmprobe.store import FeatureStore, open_store, read_strings
from fmprobe.sweep.config import RANDOM_SAMPLER, SweepConfig
from fmprobe.sweep.ledger import part_name
from fmprobe.sweep.plan import Unit, label_counts, n_status, unit_label_count
from fmprobe.sweep.results import FITTED, unit_frame, write_part, write_predictions
from fmprobe.sweep.splits import Split, sweep_split
from fmprobe.sweep.subsets import nested_orders, selected_subset
from fmprobe.sweep.tasks import Task, load_tasks

CPU_CACHE_ELEMENTS = 1 << 22  # float32 feature elements per kernel-Newton batch on a CPU (16 MB)


@dataclass(frozen=True)
class SweepJob:
    """What any process (this one, a worker, a Ray task, an array-job shard) needs to run
    units of a sweep."""

    store: str
    cfg: SweepConfig
    parts: str
    predictions: str | None
    device: str
    inputs: tuple[tuple[str, str, str], ...]  # (feature, task, digest): see sweep.ledger

    def part_name(self, unit: Unit) -> str:
        """The file name (without ``.parquet``) of the unit's part and predictions."""
        return part_name(unit, self.inputs)


@dataclass
class PoolData:
    """A feature's rows for one task, on the device.

    Attributes
    ----------
    X_pool, y_pool : Tensor (P, D), ndarray (P,)
        The training pool's rows and class codes.
    X_test, y_test : Tensor (T, D), Tensor (T,)
        The test rows and class codes.
    pool_mean : Tensor (D,)
    pool, test : ndarray
        Store rows of the pool and of the test set.
    """

    X_pool: torch.Tensor
    y_pool: np.ndarray
    X_test: torch.Tensor
    y_test: torch.Tensor
    pool_mean: torch.Tensor
    pool: np.ndarray
    test: np.ndarray
    _centred: tuple[torch.Tensor, torch.Tensor] | None = None

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool and test rows minus the pool mean (exact for a probe with an unpenalised
        intercept, and better conditioned), computed once per feature and task."""
        if self._centred is None:
            self._centred = (self.X_pool - self.pool_mean, self.X_test - self.pool_mean)
        return self._centred


def prepare_pool(
    X: np.ndarray, task: Task, split: Split, *, l2_normalize: bool, device: torch.device
) -> PoolData:
    """The pool and test rows of ``task`` with a label and finite features, on ``device``."""
    finite = np.isfinite(X).all(1)
    ok = (task.codes >= 0) & finite
    pool = split.train[ok[split.train]]
    test = split.test[ok[split.test]]
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    if l2_normalize:
        Xt = torch.nn.functional.normalize(Xt, dim=1)
    X_pool = Xt[torch.as_tensor(pool, device=device)]
    return PoolData(
        X_pool=X_pool,
        y_pool=task.codes[pool],
        X_test=Xt[torch.as_tensor(test, device=device)],
        y_test=torch.as_tensor(task.codes[test], device=device),
        pool_mean=X_pool.mean(0) if len(pool) else torch.zeros(X.shape[1], device=device),
        pool=pool,
        test=test,
    )


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


@dataclass(frozen=True)
class _UnitContext:
    """What every batch of a unit shares."""

    unit: Unit
    data: PoolData
    task: Task
    cfg: SweepConfig
    X_src: torch.Tensor
    X_test: torch.Tensor
    base: dict[str, Any]


def _batch_rows(
    ctx: _UnitContext, *, n: int, seeds: tuple[int, ...], idx: np.ndarray
) -> list[dict[str, Any]]:
    """Fit and score the (n, seed) problems of ``seeds`` as one batch; one row per variant."""
    data, task = ctx.data, ctx.task
    y_np = data.y_pool[idx]
    Xb = _gather_rows(ctx.X_src, idx)
    r = fit_score_batch(Xb, y_np, ctx.X_test, data.y_test, n_classes=task.n_classes,
                        seeds=seeds, settings=ctx.cfg.probe_settings(ctx.unit.probe))  # fmt: skip
    per_probe = r.seconds / (len(seeds) * len(r.variants))
    rows: list[dict[str, Any]] = []
    for v, name in enumerate(r.variants):
        k = int(name[3:]) if ctx.unit.probe == "knn" else 0
        if k > n:  # more neighbours asked for than there are labels
            rows += [{**ctx.base, "probe": name, "n": n, "seed": seed, "status": "k_exceeds_n"}
                     for seed in seeds]  # fmt: skip
            continue
        met = {k: val.double().cpu().numpy() for k, val in r.metrics[v].items()}
        tr = {k: val.double().cpu().numpy() for k, val in r.train_metrics[v].items()}
        test_scores = r.scores[v].to(torch.float32).cpu().numpy()
        for b, seed in enumerate(seeds):
            rows.append(
                {
                    **ctx.base,
                    "probe": name,
                    "n": n,
                    "seed": seed,
                    "n_pos": int((y_np[b] == 1).sum()) if task.n_classes == 2 else None,
                    "auroc": float(met["auroc"][b]),
                    "auprc": float(met["auprc"][b]),
                    "balanced_accuracy": float(met["balanced_accuracy"][b]),
                    "train_auroc": float(tr["auroc"][b]),
                    "train_auprc": float(tr["auprc"][b]),
                    "train_logloss": float(tr["logloss"][b]),
                    "fit_seconds": per_probe,
                    "C": float(r.C[b]) if r.C is not None else None,
                    "C_selection": r.C_selection[b],
                    "converged": bool(r.converged[b]),
                    "n_iter": int(r.n_iter[b]),
                    "status": r.status,
                    "_scores": test_scores[b],  # (T,) or (T, K): kept by --save-predictions
                }
            )
    return rows


def _fit_subsets(
    ctx: _UnitContext, *, n: int, seeds: tuple[int, ...], idx: np.ndarray
) -> list[dict[str, Any]]:
    """Fit the problems whose training subsets ``idx`` (B, n) hold every class as one batch;
    a subset that misses classes (possible with cold-start samplers, which never look at
    labels) is fitted alone on the classes it has, and scores zero for the others."""
    y_np = ctx.data.y_pool[idx]
    full = np.array([len(np.unique(y)) == ctx.task.n_classes for y in y_np])
    if full.all():
        return _batch_rows(ctx, n=n, seeds=seeds, idx=idx)
    rows: list[dict[str, Any]] = []
    if full.any():
        kept = tuple(s for s, f in zip(seeds, full, strict=True) if f)
        rows += _batch_rows(ctx, n=n, seeds=kept, idx=idx[full])
    for b in np.flatnonzero(~full):
        rows += _batch_rows(ctx, n=n, seeds=(seeds[b],), idx=idx[b : b + 1])
    variants = ctx.cfg.probe_settings(ctx.unit.probe).variants
    order = {(name, s): i for i, (name, s) in enumerate((v, s) for v in variants for s in seeds)}
    return sorted(rows, key=lambda r: order[(r["probe"], r["seed"])])


def _batch_step(cfg: SweepConfig, unit: Unit, data: PoolData, n: int, batch_limit: int) -> int:
    """Problems per batch at label count ``n``."""
    limit = batch_limit
    if (
        data.X_pool.device.type == "cpu"
        and unit.probe == "logreg"
        and n <= kernel_max_n(data.X_pool.device)
    ):
        # on a CPU a kernel-Newton batch whose rows stay in cache beats a large one
        # (measured, D=768: n=500 44 probes/s at B=2 vs 19 at B=32; n=100, one thread:
        # ~300 probes/s at a 4 MB limit, ~370 at 16 MB). Larger n is solved problem by
        # problem in numpy: the batch only shares the test-set product.
        limit = min(limit, CPU_CACHE_ELEMENTS)
    per_problem = n * data.X_pool.shape[1] * (len(C_GRID) * cfg.folds if cfg.C == "auto" else 1)
    return max(1, limit // max(1, per_problem))


def _unit_ns(cfg: SweepConfig, unit: Unit, pool_size: int) -> list[int]:
    n = unit_label_count(cfg, unit, pool_size)
    return [] if n is None else [n]


def run_unit(
    unit: Unit, data: PoolData, task: Task, cfg: SweepConfig, *, batch_limit: int
) -> Iterator[dict[str, Any]]:
    """Fit every (n, seed) problem of a unit; yield one result row per probe variant."""
    pool_size = len(data.y_pool)
    # the orderings up to the plan's largest n: every unit of a seed shares them (nested)
    n_max = min(pool_size, max(label_counts(cfg, pool_size)))
    random = unit.sampler == RANDOM_SAMPLER
    orders = nested_orders(data.y_pool, unit.seeds, n_max) if random else {}
    variants = cfg.probe_settings(unit.probe).variants
    base = {"feature": unit.feature, "task": task.name, "sampler": unit.sampler,
            "n_test": len(data.y_test), "n_classes": task.n_classes}  # fmt: skip
    X_src, X_test = data.centred() if unit.probe == "logreg" else (data.X_pool, data.X_test)
    ctx = _UnitContext(unit, data, task, cfg, X_src, X_test, base)
    pool_key = hashlib.sha256(np.ascontiguousarray(data.pool).tobytes()).hexdigest()
    for n in _unit_ns(cfg, unit, pool_size):
        status = n_status(n, pool_size, task, unit.sampler)
        if status != "ok":
            for seed in unit.seeds:
                for name in variants:
                    yield {**base, "probe": name, "n": n, "seed": seed, "status": status}
            continue
        step, start = _batch_step(cfg, unit, data, n, batch_limit), 0
        while start < len(unit.seeds):
            seeds = unit.seeds[start : start + step]
            if random:
                idx = np.stack([orders[s][:n] for s in seeds])
            else:
                key = (unit.feature, cfg.l2_normalize, pool_key)
                idx = np.stack([selected_subset(data.X_pool, strategy=unit.sampler, n=n,
                                                seed=s, cache_key=key) for s in seeds])  # fmt: skip
            try:
                rows = _fit_subsets(ctx, n=n, seeds=seeds, idx=idx)
            except torch.OutOfMemoryError:
                if len(seeds) == 1:
                    raise
                step = max(1, len(seeds) // 2)  # the device is full: retry in halves
                if data.X_pool.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            yield from rows
            start += len(seeds)


def _batch_limit(device: torch.device) -> int:
    """Feature elements per batch: on a GPU from its free memory (the Gram matrices, fold
    copies and scores of a batch take several times the features' size; an out-of-memory
    error still halves the batch and retries), on a CPU a fixed 64 M."""
    if device.type != "cuda":
        return 1 << 26
    free, _ = torch.cuda.mem_get_info(device)
    return max(1 << 20, int(free) // (4 * 16))


def _token_data(task: Task, split: Split, device: torch.device, unreadable: np.ndarray) -> PoolData:
    """The pool and test rows of a task for a probe that reads tokens, not pooled features
    (rows without a label, or whose image was unreadable, left out)."""
    ok = (task.codes >= 0) & ~unreadable
    pool = split.train[ok[split.train]]
    test = split.test[ok[split.test]]
    empty = torch.zeros(0, device=device)
    return PoolData(X_pool=empty, y_pool=task.codes[pool], X_test=empty,
                    y_test=torch.as_tensor(task.codes[test], device=device), pool_mean=empty,
                    pool=pool, test=test)  # fmt: skip


def _attnpool_unit(
    unit: Unit,
    fs: FeatureStore,
    data: PoolData,
    task: Task,
    cfg: SweepConfig,
    device: torch.device,
    progress: Any,
) -> Iterator[dict[str, Any]]:
    """The attention-pooling probe's (n, seed) problems of a unit: for each n, every seed's
    problem trained at once on the stored tokens (streamed from the store)."""
    from fmprobe.probes.attnpool import AttnPoolConfig, attnpool_scores, fit_attnpool

    model, blocks, _ = unit.feature.split("/")
    tokens = [fs.root[f"{model}/{b}/tokens"] for b in blocks.split("+")]
    config = AttnPoolConfig(**json.loads(cfg.attnpool or "{}"))
    pool_size = len(data.pool)
    n_max = min(pool_size, max(label_counts(cfg, pool_size)))
    orders = nested_orders(data.y_pool, unit.seeds, n_max)
    base = {"feature": unit.feature, "task": task.name, "sampler": unit.sampler,
            "n_test": len(data.test), "n_classes": task.n_classes, "probe": "attnpool"}  # fmt: skip
    for n in _unit_ns(cfg, unit, pool_size):
        status = n_status(n, pool_size, task, unit.sampler)
        if status != "ok":
            for seed in unit.seeds:
                yield {**base, "n": n, "seed": seed, "status": status}
            continue
        t0 = time.perf_counter()
        idx = np.stack([orders[s][:n] for s in unit.seeds])
        fitted = fit_attnpool(tokens=tokens, train_rows=data.pool[idx], y_train=data.y_pool[idx],
                             n_classes=task.n_classes, seeds=list(unit.seeds), config=config,
                             device=device)  # fmt: skip
        infos = fitted.problems
        scores = attnpool_scores(fitted, tokens=tokens, rows=data.test)
        sc = torch.as_tensor(scores, device=device)
        met = classification_metrics(sc, data.y_test, n_classes=task.n_classes, threshold=0.0)
        m = {k: v.double().cpu().numpy() for k, v in met.items()}
        # the training rows' own scores: every problem scores the union, each keeps its rows
        union, where = np.unique(data.pool[idx], return_inverse=True)
        own = attnpool_scores(fitted, tokens=tokens, rows=union)
        own_t = torch.as_tensor(own[np.arange(len(idx))[:, None], where.reshape(idx.shape)])
        y_own = torch.as_tensor(data.y_pool[idx])
        tr = training_metrics(own_t, y_own, n_fit=task.n_classes, probe="attnpool", threshold=0.0)
        t = {k: v.double().cpu().numpy() for k, v in tr.items()}
        per_probe = (time.perf_counter() - t0) / len(unit.seeds)
        for b, seed in enumerate(unit.seeds):
            y_b = data.y_pool[idx[b]]
            yield {
                **base, "n": n, "seed": seed, "status": "ok",
                "n_pos": int((y_b == 1).sum()) if task.n_classes == 2 else None,
                "auroc": float(m["auroc"][b]), "auprc": float(m["auprc"][b]),
                "balanced_accuracy": float(m["balanced_accuracy"][b]),
                "train_auroc": float(t["auroc"][b]), "train_auprc": float(t["auprc"][b]),
                "train_logloss": float(t["logloss"][b]),
                "fit_seconds": per_probe, "C": None, "C_selection": "none",
                "converged": True, "n_iter": int(infos[b].steps),
                "_scores": np.asarray(scores[b], np.float32),
            }  # fmt: skip
        if progress is not None:
            progress(len(unit.seeds))


class UnitRunner:
    """Runs the units of one job, keeping its state between calls: the store, tasks and
    split, and the last feature read (a worker process that runs a job's units a few at a
    time reads each feature once, not once per call)."""

    def __init__(self, job: SweepJob) -> None:
        self.job = job
        cfg = job.cfg
        self.fs = open_store(job.store)
        task_objs, table = load_tasks(self.fs, list(cfg.tasks), labels=cfg.labels,
                                      uncertain=cfg.uncertain, blank=cfg.blank)  # fmt: skip
        self.split = sweep_split(
            table, stratify=task_objs[0].codes, split_col=cfg.split_col,
            test_frac=cfg.test_frac, group_col=cfg.group_col, split_seed=cfg.split_seed,
            test_where=cfg.test_where,
        )  # fmt: skip
        self.dev = resolve_device(job.device)
        self.batch_limit = _batch_limit(self.dev)
        self.tasks_by_name = {t.name: t for t in task_objs}
        self.cache: dict[tuple[str, str], PoolData] = {}
        self.X_cache: dict[str, np.ndarray] = {}

    def run(self, units: Sequence[Unit], *, progress: Any = None) -> int:
        """Run ``units``, each written as its Parquet part (atomically, after its predictions
        when kept); returns the number of probes fitted."""
        job, cfg, fs = self.job, self.job.cfg, self.fs
        fitted = 0
        for unit in units:
            task = self.tasks_by_name[unit.task]
            if unit.probe == "attnpool":
                err = read_strings(fs.root[f"{unit.feature.split('/')[0]}/_error"])
                data = _token_data(task, self.split, self.dev, np.asarray(err != ""))
                rows = list(_attnpool_unit(unit, fs, data, task, cfg, self.dev, progress))
            else:
                data = self._data(unit, task)
                rows = []
                for row in run_unit(unit, data, task, cfg, batch_limit=self.batch_limit):
                    rows.append(row)
                    if progress is not None:
                        progress(1)
            if job.predictions:  # before the results part, which marks the unit done
                write_predictions(rows, test_rows=data.test, y_test=data.y_test.cpu().numpy(),
                                  task=task, ids=fs.ids, folder=job.predictions,
                                  name=job.part_name(unit))  # fmt: skip
            for row in rows:
                row.pop("_scores", None)
            write_part(
                unit_frame(rows, cfg), storage.join(job.parts, f"{job.part_name(unit)}.parquet")
            )
            fitted += sum(1 for r in rows if r["status"] in FITTED)
            fault_hook_for_tests()
        return fitted

    def _data(self, unit: Unit, task: Task) -> PoolData:
        if unit.feature not in self.X_cache:
            self.X_cache.clear()
            self.X_cache[unit.feature] = self.fs.read_feature(unit.feature).astype(np.float32)
        key = (unit.feature, unit.task)
        if key not in self.cache:
            self.cache.clear()
            self.cache[key] = prepare_pool(
                self.X_cache[unit.feature], task, self.split,
                l2_normalize=self.job.cfg.l2_normalize, device=self.dev,
            )  # fmt: skip
        return self.cache[key]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch and the BLAS libraries on one thread, restored afterwards. A sweep's CPU work is a
    stream of small operations (solver steps, sorts, row bookkeeping): split over threads, each
    waits for the slowest at every operation, and stalls as soon as anything else runs on the
    machine (measured, n ≤ 100 with other jobs on both cores: 53–74 probes/s on two threads,
    466 on one). The parallelism is in processes instead (``--workers``)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def execute_units(job: SweepJob, units: Sequence[Unit], *, progress: Any = None) -> int:
    """The local engine: run ``units`` in this process; returns the number of probes fitted.
    On a CPU everything runs on one thread (``one_thread``); a GPU sweep keeps torch's threads
    (they only feed the device)."""
    cpu = resolve_device(job.device).type == "cpu"
    try:
        with one_thread() if cpu else contextlib.nullcontext():
            return UnitRunner(job).run(units, progress=progress)
    finally:
        _GATHER.__dict__.pop("buf", None)  # the batch buffer outlives a sweep only in workers
