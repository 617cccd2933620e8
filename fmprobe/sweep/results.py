"""The results of a sweep: a unit's rows as a table (its part in ``<out>.parts/``), the kept
predictions, the results table with the sweep's configuration in its Parquet metadata, and
``merge`` of the shards of an array job."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmprobe import locks, storage
from fmprobe.errors import UsageError, first_line
from fmprobe.sweep.config import SweepConfig
from fmprobe.sweep.plan import plan_units
from fmprobe.sweep.tasks import Task
from fmprobe.tables import atomic_path

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
    "train_auroc",
    "train_auprc",
    "train_logloss",
    "fit_seconds",
    "C",
    "C_selection",
    "converged",
    "n_iter",
    "status",
    "n_test",
    "n_classes",
)
FITTED = ("ok", "classes_missing")  # statuses of rows whose probe was fitted
NOT_FITTED = ("n_exceeds_pool", "n_below_classes", "k_exceeds_n")  # rows with a reason instead
SWEEP_META_KEY = b"fmprobe_sweep"


def split_text(*, test_where: str | None, split_col: str | None, test_frac: float) -> str:
    """The ``split`` column: how the test split was drawn.

    >>> split_text(test_where=None, split_col=None, test_frac=0.25)
    'frac:0.25'
    """
    if test_where:
        return f"where:{test_where}"
    return f"col:{split_col}" if split_col else f"frac:{test_frac}"


@dataclass(frozen=True)
class Provenance:
    """The columns every result row carries about how it was computed.

    Attributes
    ----------
    split : str
        ``where:COL=VALUE``, ``col:COL`` or ``frac:F``: how the test split was drawn.
    group_col : str
        The ``--group-col`` (``""`` for none).
    split_seed : int
    standardize, l2_normalize : bool
    store_fingerprint : str
        The dataset fingerprint of the data the rows were computed on.
    uncertain, blank : str
        The label policies (``""``: none; see ``fmprobe.sweep.tasks``).
    """

    split: str
    group_col: str
    split_seed: int
    standardize: bool
    l2_normalize: bool
    store_fingerprint: str
    uncertain: str = ""
    blank: str = "missing"

    @classmethod
    def of(cls, cfg: SweepConfig) -> Provenance:
        split = split_text(test_where=cfg.test_where, split_col=cfg.split_col,
                           test_frac=cfg.test_frac)  # fmt: skip
        return cls(split=split, group_col=cfg.group_col or "", split_seed=cfg.split_seed,
                   standardize=cfg.standardize, l2_normalize=cfg.l2_normalize,
                   store_fingerprint=cfg.store_fingerprint, uncertain=cfg.uncertain or "",
                   blank=cfg.blank)  # fmt: skip


def unit_frame(rows: list[dict[str, Any]], cfg: SweepConfig | Provenance) -> pd.DataFrame:
    """The result rows of a unit as a table of the results schema (``RESULT_COLUMNS``, then
    the ``Provenance`` columns and the fmprobe version), the columns built at once (one small
    frame per unit; setting columns one by one cost more than the fits at small n)."""
    from fmprobe import __version__

    prov = cfg if isinstance(cfg, Provenance) else Provenance.of(cfg)

    def get(col: str) -> list[Any]:
        return [r.get(col) for r in rows]

    def ints(col: str) -> np.ndarray:
        return np.asarray(get(col), dtype=np.int64)

    def floats(col: str) -> np.ndarray:
        return np.asarray([np.nan if v is None else v for v in get(col)], dtype=np.float64)

    n = len(rows)
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
        "train_auroc": floats("train_auroc"),
        "train_auprc": floats("train_auprc"),
        "train_logloss": floats("train_logloss"),
        "fit_seconds": floats("fit_seconds"),
        "C": floats("C"),
        "C_selection": pd.array(get("C_selection"), dtype="string"),
        "converged": pd.array(get("converged"), dtype="boolean"),
        "n_iter": pd.array(get("n_iter"), dtype="Int64"),
        "status": get("status"),
        "n_test": ints("n_test"),
        "n_classes": ints("n_classes"),
        "split": [prov.split] * n,
        "group_col": [prov.group_col] * n,
        "split_seed": np.full(n, prov.split_seed, dtype=np.int64),
        "standardize": np.full(n, prov.standardize, dtype=bool),
        "l2_normalize": np.full(n, prov.l2_normalize, dtype=bool),
        "store_fingerprint": [prov.store_fingerprint] * n,
        "uncertain": [prov.uncertain] * n,
        "blank": [prov.blank] * n,
        "fmprobe_version": [__version__] * n,
    }
    if not n:
        return pd.DataFrame({k: pd.Series([], dtype=object) for k in data})
    return pd.DataFrame(data)


def write_part(df: pd.DataFrame, path: str | Path) -> None:
    """A unit's part (or any Parquet file of the sweep's folders), written atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_predictions(
    rows: list[dict[str, Any]],
    *,
    test_rows: np.ndarray,
    y_test: np.ndarray,
    task: Task,
    ids: np.ndarray,
    folder: str,
    name: str,
) -> None:
    """``--save-predictions``: each probe's test-set scores, one row per probe.

    ``<folder>/<name>.parquet`` (``<out>.predictions/<unit part>.parquet``) holds the key
    columns (feature, task, probe, sampler, n, seed, status), ``test`` (the name of the test
    table) and ``scores``: float32, T values for binary tasks (the class-1 score), T·K
    row-major for K classes. ``tests/test-<digest>.parquet`` lists that test set in score
    order: ``id``, ``row`` (store row) and ``y`` (class code) — in a subfolder, so that a glob
    of ``<folder>/*.parquet`` (duckdb, pyarrow) reads one table of one schema.
    """
    digest = hashlib.sha256(task.name.encode() + b"|")
    digest.update(np.ascontiguousarray(test_rows, dtype=np.int64).tobytes())
    test_name = "test-" + digest.hexdigest()[:16]
    test_path = storage.join(folder, "tests", f"{test_name}.parquet")
    if not storage.exists(test_path):
        table = pd.DataFrame({"id": np.asarray(ids[test_rows]).astype(str),
                              "row": test_rows.astype(np.int64),
                              "y": y_test.astype(np.int64)})  # fmt: skip
        write_part(table, test_path)
    keys = ("feature", "task", "probe", "sampler", "n", "seed", "status")
    fitted = [r for r in rows if "_scores" in r]
    table = pd.DataFrame({k: [r[k] for r in fitted] for k in keys})
    table["test"] = test_name
    table["n_classes"] = task.n_classes
    table["scores"] = [np.asarray(r["_scores"], np.float32).ravel() for r in fitted]
    write_part(table, storage.join(folder, f"{name}.parquet"))


def shard_path(out: str, i: int, n: int) -> str:
    """Shard I of N writes ``results.shard-I-of-N.parquet`` beside ``results.parquet``.

    >>> shard_path("s3://b/results.parquet", 2, 8)
    's3://b/results.shard-2-of-8.parquet'
    """
    stem, dot, suffix = out.rpartition(".")
    return f"{stem}.shard-{i}-of-{n}.{suffix}" if dot else f"{out}.shard-{i}-of-{n}"


def write_results(
    df: pd.DataFrame,
    path: str | Path,
    cfg: SweepConfig,
    *,
    seeds_per_unit: int,
    units: Sequence[tuple[str, int]],
) -> None:
    """The results table, with the sweep's configuration and its units (name and row count, in
    the table's order) in the Parquet metadata, so that ``merge`` can check that shards belong
    together and order their rows as one run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tbl = pa.Table.from_pandas(df, preserve_index=False)
    meta = json.dumps(
        {"digest": cfg.digest(), "config": asdict(cfg), "seeds_per_unit": seeds_per_unit,
         "units": [list(u) for u in units]},
        default=str,
    )  # fmt: skip
    tbl = tbl.replace_schema_metadata(
        {**(tbl.schema.metadata or {}), SWEEP_META_KEY: meta.encode()}
    )
    with atomic_path(path, what="--out") as tmp:
        pq.write_table(tbl, tmp)


def _read_shard(path: str) -> tuple[dict[str, Any], pd.DataFrame]:
    with storage.errors(path, what="sweep merge:"):
        if not storage.exists(path):
            raise UsageError(f"sweep merge: {path!r} does not exist")
    try:
        md = storage.parquet_metadata(path)
        frame = storage.read_parquet(path)
    except Exception as exc:  # a damaged or foreign file: pyarrow raises several types
        raise UsageError(
            f"sweep merge: {path!r} is not a readable Parquet table ({first_line(exc)})"
        ) from None
    if SWEEP_META_KEY not in md:
        raise UsageError(f"sweep merge: {path!r} is not a table written by fmprobe sweep")
    return json.loads(md[SWEEP_META_KEY]), frame


def merge(*, parts: Sequence[str], out: str) -> pd.DataFrame:
    """Merge the tables of ``sweep --shard I/N`` runs into the table one run would have
    written (same rows, same order). Shards of different sweeps, a unit in two shards, or a
    missing unit are refused with a one-line error.

    Examples
    --------
    >>> merge(parts=["r.shard-0-of-2.parquet", "r.shard-1-of-2.parquet"],
    ...       out="r.parquet")  # doctest: +SKIP
    """
    if not parts:
        raise UsageError("sweep merge: give the shard tables to merge, e.g. r.shard-*.parquet")
    metas, frames = zip(*(_read_shard(p) for p in parts), strict=True)
    if len({m["digest"] for m in metas}) > 1:
        raise UsageError("sweep merge: the tables come from sweeps with different settings")
    cfg = SweepConfig.from_dict(metas[0]["config"])
    per_unit = int(metas[0]["seeds_per_unit"])
    plan = [u.name for u in plan_units(cfg, seeds_per_unit=per_unit)]
    rank = {name: i for i, name in enumerate(plan)}
    seen: dict[str, int] = {}
    unit_of, frames_out = [], []
    for m, frame in zip(metas, frames, strict=True):
        listed = [(str(name), int(count)) for name, count in m.get("units", [])]
        if sum(c for _, c in listed) != len(frame):
            raise UsageError("sweep merge: a table's rows do not match its units; rerun that shard")
        for name, count in listed:
            if name not in rank:
                raise UsageError("sweep merge: rows that are not in the sweep's plan")
            if name in seen:
                raise UsageError(
                    "sweep merge: a unit appears in more than one table (the same shard twice?)"
                )
            seen[name] = count
            unit_of += [rank[name]] * count
        frames_out.append(frame)
    missing = len(plan) - len(seen)
    if missing:
        raise UsageError(
            f"sweep merge: {missing} of {len(plan)} work units are in none of the tables; "
            "run the missing shards (or the sweep without --shard) first"
        )
    df = pd.concat(frames_out, ignore_index=True)
    # one run's order: plan units in order, rows within a unit as they were written
    order = np.lexsort((np.arange(len(df)), np.asarray(unit_of)))
    df = df.iloc[order].reset_index(drop=True)
    units = sorted(seen.items(), key=lambda u: rank[u[0]])
    with locks.writer(out, "results", what=f"the sweep results {out!r}"):
        write_results(df, out, cfg, seeds_per_unit=per_unit, units=units)
    return df
