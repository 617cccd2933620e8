"""``sweep()``: options checked into a ``SweepConfig``, the resume ledger (``<out>.parts/``)
opened, the pending units run by the chosen engine, and the results table written."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from fmprobe import locks, storage
from fmprobe.devices import resolve_device
from fmprobe.errors import UsageError
from fmprobe.options import check_engine, parse_shard, split_list
from fmprobe.store import FeatureStore, open_store
from fmprobe.sweep.config import (
    PROBES,
    SweepConfig,
    build_config,
    check_columns,
    parse_C,
    parse_choices,
    parse_knn_k,
    parse_ns,
    samplers,
)
from fmprobe.sweep.ledger import Ledger, input_identities, open_ledger
from fmprobe.sweep.plan import Unit, plan_units, unit_probes
from fmprobe.sweep.results import shard_path, unit_frame, write_part, write_results
from fmprobe.sweep.splits import Split, sweep_split
from fmprobe.sweep.tasks import Task, check_policies, load_tasks
from fmprobe.sweep.units import SweepJob, execute_units


class ConvergenceWarning(UserWarning):
    """Some probes have no certified optimum (their duality gap stayed above the tolerance)."""


@dataclass
class SweepReport:
    """What one ``sweep`` call did.

    Attributes
    ----------
    out : str
        The results table written (a shard's own table under ``--shard``).
    rows : int
        Rows of that table.
    units_total, units_done_before : int
        Work units of this run (this shard's); those already on disk before the call.
    probes_fitted : int
        Probes fitted by this call.
    seconds : float
        Time of the units' loop (the whole call when nothing was left to do).
    not_converged : int
        Probes without a certified optimum (``converged`` False).
    warnings : list of str
        Aggregated warnings (also issued as ``ConvergenceWarning``).
    subgroups : str or None
        The subgroup table written for ``--group-by``.
    dry_run : bool
        Nothing was run: ``plan`` says what would be reused and computed.
    plan : dict
        With ``dry_run``: units to reuse and to compute (new, or from changed inputs), probes
        to fit, and the units to compute per feature and task.
    """

    out: str
    rows: int
    units_total: int
    units_done_before: int
    probes_fitted: int = 0
    seconds: float = 0.0
    not_converged: int = 0
    warnings: list[str] = field(default_factory=list)
    subgroups: str | None = None
    dry_run: bool = False
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def probes_per_second(self) -> float:
        return self.probes_fitted / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "probes_per_second": self.probes_per_second}

    def summary(self) -> list[str]:
        """The lines ``fmprobe sweep`` prints on stderr."""
        if self.dry_run:
            p = self.plan
            lines = [
                f"sweep --dry-run: {self.units_total} units; would reuse {p['reuse']}, compute "
                f"{p['compute']} ({p['compute_new']} never run, {p['compute_inputs_changed']} "
                f"from inputs that changed), {p['probes_to_fit']} probes"
            ]
            lines += [
                f"  {g['feature']} × {g['task']}: {g['units']} to compute"
                + (f" ({g['inputs_changed']} inputs changed)" if g["inputs_changed"] else "")
                for g in p["by_feature_task"]
            ]
            return lines
        done = self.units_done_before
        resumed = f", {done} units already done" if done else ""
        lines = [
            f"sweep: {self.probes_fitted} probes in {self.seconds:.1f} s "
            f"({self.probes_per_second:.0f} probes/s){resumed}; {self.rows} rows in {self.out}"
        ]
        if self.subgroups:
            lines.append(f"sweep: subgroup metrics in {self.subgroups}")
        return lines + [f"warning: {w}" for w in self.warnings]


def _check_workers(engine: str, workers: int | str) -> int | str:
    """``--workers``: ``auto`` or a number of local processes (1 = this process only)."""
    if workers == "auto":
        return "auto"
    try:
        count = int(workers)
    except (TypeError, ValueError):
        raise UsageError(f"--workers {workers!r}: a number of processes, or auto") from None
    if count < 1:
        raise UsageError(f"--workers {count}: at least 1 (1 = this process only), or auto")
    if count > 1 and engine != "local":
        raise UsageError(f"--workers {count} is for --engine local; Ray places its own workers")
    return count


def _run_engine(
    job: SweepJob, todo: list[Unit], *, engine: str, address: str | None, workers: int | str,
    progress: Any,
) -> int:  # fmt: skip
    if engine == "ray":
        from fmprobe.sweep.ray_engine import run_on_ray

        return run_on_ray(job, todo, address=address, progress=progress)
    if workers == "auto":
        from fmprobe.sweep.processes import available_cores, run_adaptive

        cores = available_cores()
        if cores > 1 and len(todo) > 1 and job.device == "cpu":
            return run_adaptive(job, todo, max_workers=cores, progress=progress)
        return execute_units(job, todo, progress=progress)
    if int(workers) > 1:
        from fmprobe.sweep.processes import run_in_processes

        return run_in_processes(job, todo, workers=int(workers), progress=progress)
    return execute_units(job, todo, progress=progress)


def _convergence(result: pd.DataFrame, report: SweepReport, cfg: SweepConfig) -> None:
    bad = result[(result["status"] == "ok") & (result["converged"] == False)]  # noqa: E712
    report.not_converged = len(bad)
    if len(bad):
        msg = (
            f"{len(bad)} of {int((result['status'] == 'ok').sum())} probes have no certified "
            f"optimum after max_iter={cfg.max_iter}; raise --max-iter, lower --C or scale the "
            "features (--standardize) "
            "(the `converged` column marks them)"
        )
        report.warnings.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)


def _subgroups(out_path: str, group_cols: list[str], *, store: str, labels: str | None) -> str:
    from fmprobe.stats.subgroups import subgroup_metrics

    sub = subgroup_metrics(results=out_path, group_by=group_cols, store=store, labels=labels)
    stem, _, suffix = out_path.rpartition(".")
    sub_path = f"{stem}.subgroups.{suffix}"
    write_part(sub.table, sub_path)
    return str(sub_path)


def _config(
    fs: FeatureStore, *, tasks: str | Sequence[str], labels: str | None,
    group_by: str | Sequence[str] | None, **opts: Any,
) -> tuple[SweepConfig, list[str], list[Task], Split]:  # fmt: skip
    """The checked configuration, the ``--group-by`` columns, the tasks and the test split."""
    probes = parse_choices(opts.pop("probe"), option="--probe", valid=PROBES, noun="probes")
    samplers_ = parse_choices(
        opts.pop("sampler"), option="--sampler", valid=samplers(), noun="samplers"
    )
    if opts["seeds"] < 1:
        raise UsageError(f"--seeds {opts['seeds']}: at least 1")
    if opts["folds"] < 2:
        raise UsageError(f"--folds {opts['folds']}: cross-validation needs at least 2 folds")
    if opts["split_seed"] < 0:
        raise UsageError(f"--split-seed {opts['split_seed']}: a seed is 0 or more")
    check_policies(uncertain=opts["uncertain"], blank=opts["blank"])
    task_objs, table = load_tasks(fs, split_list(tasks) or ["label"], labels=labels,
                                  uncertain=opts["uncertain"], blank=opts["blank"])  # fmt: skip
    group_cols = split_list(group_by)
    check_columns(table, [opts["split_col"], opts["group_col"], *group_cols])
    if opts["test_where"] and opts["split_col"]:
        raise UsageError("--test-where and --split-col both define the test set; pass one")
    cfg = build_config(
        fs, task_objs, features=opts.pop("features"), probes=probes, samplers_=samplers_,
        layers=opts.pop("layers"), attnpool=opts.pop("attnpool"), labels=labels,
        **{**opts, "n": parse_ns(opts["n"]), "C": parse_C(opts["C"]),
           "knn_k": parse_knn_k(opts["knn_k"], needed="knn" in probes),
           "test_where": opts["test_where"] or None},
    )  # fmt: skip
    # bad split settings fail here, not in the workers
    split = sweep_split(table, stratify=task_objs[0].codes, split_col=cfg.split_col,
                        test_frac=cfg.test_frac, group_col=cfg.group_col,
                        split_seed=cfg.split_seed, test_where=cfg.test_where)  # fmt: skip
    return cfg, group_cols, task_objs, split


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
    uncertain: str | None = None,
    blank: str = "missing",
    group_by: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    attnpool: dict[str, Any] | None = None,
    device: str | None = None,
    seeds_per_unit: int = 32,
    save_predictions: bool = False,
    engine: str = "local",
    address: str | None = None,
    shard: str | None = None,
    workers: int | str = "auto",
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> SweepReport:
    """Run probes over features × tasks × samplers × label counts × seeds into a Parquet table.

    The options are those of ``fmprobe sweep`` (see its ``--help`` and the sweep guide).
    Finished units are reused while their inputs (the feature's content, the labels, the
    split) are unchanged; ``overwrite`` discards them; ``dry_run`` only reports what would be
    reused and what computed. Another live process writing the same ``out`` is refused.

    Returns
    -------
    SweepReport

    Examples
    --------
    >>> sweep(store="digits.zarr", out="results.parquet", features="*/block11/cls",
    ...       n="10,20,50,100,all", seeds=5)  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    check_engine(engine)
    workers = _check_workers(engine, workers)
    shard_i, shard_n = parse_shard(shard)
    if seeds_per_unit < 1:
        raise UsageError(f"seeds_per_unit={seeds_per_unit}: at least 1")
    out_path = _check_out(out)
    fs = open_store(store)
    cfg, group_cols, task_objs, split = _config(
        fs, tasks=tasks, labels=labels, group_by=group_by, features=features, probe=probe,
        sampler=sampler, n=n, seeds=seeds, C=C, folds=folds, knn_k=knn_k, split_col=split_col,
        test_frac=test_frac, group_col=group_col, split_seed=split_seed,
        standardize=standardize, l2_normalize=l2_normalize, max_iter=max_iter, tol=tol,
        backend=backend, test_where=test_where, layers=layers, attnpool=attnpool,
        uncertain=uncertain, blank=blank,
    )  # fmt: skip
    save_predictions = save_predictions or bool(group_cols)  # subgroups need the kept scores
    dev = resolve_device(device)
    inputs = input_identities(fs, cfg, task_objs, split)
    units = plan_units(cfg, seeds_per_unit=seeds_per_unit)
    mine = [u for i, u in enumerate(units) if i % shard_n == shard_i]
    if dry_run:
        ledger = open_ledger(out_path, cfg, inputs, overwrite=overwrite,
                             predictions=save_predictions, write=False)  # fmt: skip
        return _dry_run(ledger, mine, cfg, out_path, overwrite=overwrite,
                        predictions=save_predictions)  # fmt: skip
    with locks.writer(out_path, "results", what=f"the sweep results {str(out_path)!r}",
                      shard=(shard_i, shard_n)):  # fmt: skip
        ledger = open_ledger(out_path, cfg, inputs, overwrite=overwrite,
                             predictions=save_predictions)  # fmt: skip
        todo = [u for u in mine if not ledger.done(u, predictions=save_predictions)]
        report = SweepReport(out=str(out_path), rows=0, units_total=len(mine),
                             units_done_before=len(mine) - len(todo))  # fmt: skip
        job = SweepJob(store=store, cfg=cfg, parts=ledger.parts,
                       predictions=ledger.predictions if save_predictions else None,
                       device=str(dev), inputs=inputs)  # fmt: skip
        t_loop = time.perf_counter()
        report.probes_fitted = _run_with_progress(job, todo, engine=engine, address=address,
                                                  workers=workers, progress=progress)  # fmt: skip
        loop_seconds = time.perf_counter() - t_loop
        if shard_n > 1:
            out_path = shard_path(out_path, shard_i, shard_n)
            report.out = str(out_path)
        result = _write_table(ledger, mine, cfg, out_path, seeds_per_unit=seeds_per_unit)
        if shard_n == 1:
            ledger.remove_stale(units)
    report.rows = len(result)
    if group_cols and shard_n == 1:
        report.subgroups = _subgroups(out_path, group_cols, store=store, labels=labels)
    report.seconds = loop_seconds if todo else time.perf_counter() - t_start
    _convergence(result, report, cfg)
    return report


def _check_out(out: str) -> str:
    """``--out``: a Parquet file's path or URL (never a folder)."""
    out = storage.local(out)
    with storage.errors(out, what="--out"):
        folder = storage.isdir(out)
    if folder:
        raise UsageError(
            f"--out {out!r} is a folder; pass the results file, e.g. {out}/results.parquet"
        )
    if not out.lower().endswith((".parquet", ".pq")):
        raise UsageError(f"--out {out!r}: the results table is Parquet; name it *.parquet")
    return out


def _run_with_progress(
    job: SweepJob, todo: list[Unit], *, engine: str, address: str | None, workers: int | str,
    progress: bool,
) -> int:  # fmt: skip
    from tqdm import tqdm

    total = sum(unit_probes(job.cfg, u) for u in todo)
    with tqdm(total=total, unit="probe", desc="sweep", file=sys.stderr,
              disable=not progress or total == 0) as bar:  # fmt: skip
        return _run_engine(job, todo, engine=engine, address=address, workers=workers,
                           progress=bar.update)  # fmt: skip


def _write_table(
    ledger: Ledger, mine: list[Unit], cfg: SweepConfig, out_path: str, *, seeds_per_unit: int
) -> pd.DataFrame:
    """The results table: this run's (or shard's) parts in plan order."""
    frames, counts = [], []
    for u in mine:
        frame = storage.read_parquet(ledger.part_path(u))
        frames.append(frame)
        counts.append((u.name, len(frame)))
    result = pd.concat(frames, ignore_index=True) if frames else unit_frame([], cfg)
    write_results(result, out_path, cfg, seeds_per_unit=seeds_per_unit, units=counts)
    return result


def _dry_run(
    ledger: Ledger, mine: list[Unit], cfg: SweepConfig, out_path: str, *, overwrite: bool,
    predictions: bool,
) -> SweepReport:  # fmt: skip
    """What the sweep would do: which units it would reuse and which it would compute (and
    why: never computed, or computed from inputs that have changed)."""
    reuse = [] if overwrite else [u for u in mine if ledger.done(u, predictions=predictions)]
    todo = [u for u in mine if u not in set(reuse)]
    changed = [u for u in todo if not overwrite and ledger.stale(u)]
    report = SweepReport(out=str(out_path), rows=0, units_total=len(mine),
                         units_done_before=len(reuse), dry_run=True)  # fmt: skip
    report.plan = {
        "reuse": len(reuse),
        "compute": len(todo),
        "compute_inputs_changed": len(changed),
        "compute_new": len(todo) - len(changed),
        "probes_to_fit": sum(unit_probes(cfg, u) for u in todo),
        "by_feature_task": _by_feature_task(todo, changed),
    }
    return report


def _by_feature_task(todo: list[Unit], changed: list[Unit]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    stale = set(changed)
    for u in todo:
        blank = {"feature": u.feature, "task": u.task, "units": 0, "inputs_changed": 0}
        g = groups.setdefault((u.feature, u.task), blank)
        g["units"] += 1
        g["inputs_changed"] += u in stale
    return list(groups.values())
