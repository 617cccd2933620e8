"""Saved test-set predictions of a sweep (``fmprobe sweep --save-predictions``), read back for
statistics computed after the fact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe import storage
from fmprobe.errors import UsageError, first_line

KEYS = ("feature", "task", "probe", "sampler", "n", "seed")
TESTS = "tests"  # the subfolder of the test tables: a glob of the folder reads one schema


@dataclass(frozen=True)
class Predictions:
    """The saved predictions next to a results table.

    Attributes
    ----------
    results : str
        The results table the predictions belong to (a path or a URL).
    folder : str
        ``<results>.predictions``: the per-unit files, and the test tables in ``tests/``.
    table : DataFrame
        One row per fitted probe: ``feature, task, probe, sampler, n, seed, status, test,
        n_classes`` and ``scores`` (a float32 array: T values for binary tasks, T·K row-major
        for K classes).
    """

    results: str
    folder: str
    table: pd.DataFrame
    _tests: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    def test(self, name: str) -> pd.DataFrame:
        """The test table ``name``: ``id``, ``row`` (store row) and ``y`` (class code), in
        score order."""
        if name not in self._tests:
            path = storage.join(self.folder, TESTS, f"{name}.parquet")
            if not storage.exists(path):  # written by an older fmprobe, beside the units
                path = storage.join(self.folder, f"{name}.parquet")
            if not storage.exists(path):
                raise UsageError(
                    f"{path} is missing (predictions refer to it); rerun the sweep with "
                    "--save-predictions to write it again"
                )
            self._tests[name] = read_parquet(path, "rerun the sweep with --save-predictions")
        return self._tests[name]

    def scores(self, rows: pd.DataFrame) -> np.ndarray:
        """Stack the scores of ``rows`` (one test set): (S, T) for binary tasks, (S, T, K)
        for K classes."""
        k = int(rows["n_classes"].iloc[0])
        s = np.stack([np.asarray(v, dtype=np.float32) for v in rows["scores"]])
        return s if k == 2 else s.reshape(len(rows), -1, k)


def read_parquet(path: str | Path, fix: str) -> pd.DataFrame:
    """``pd.read_parquet`` of a path or a URL, a damaged or non-Parquet file a one-line
    ``UsageError``."""
    try:
        return storage.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise UsageError(
            f"{str(path)!r} is not a readable Parquet file ({first_line(exc)}); {fix}"
        ) from None


def predictions_folder(results: str | Path) -> str:
    return storage.sibling(storage.local(results), ".predictions")


def load_predictions(results: str | Path) -> Predictions:
    """Read every saved prediction of a results table.

    Parameters
    ----------
    results : path or URL
        The results table ``fmprobe sweep --out`` wrote, run with ``--save-predictions``.

    Returns
    -------
    Predictions

    Examples
    --------
    >>> p = load_predictions("out/demo/results.parquet")  # doctest: +SKIP
    >>> p.table.groupby(["feature", "task"]).size()  # doctest: +SKIP
    """
    path = storage.local(results)
    with storage.errors(path, what="results table"):
        there = storage.exists(path)
    if not there:
        raise UsageError(
            f"results table {path!r} does not exist; pass the file `fmprobe sweep --out` wrote"
        )
    try:
        storage.parquet_metadata(path)
    except Exception as exc:  # not Parquet, truncated, a directory, ...
        raise UsageError(
            f"results table {path!r} is not a readable Parquet file ({first_line(exc)}); pass the "
            "file `fmprobe sweep --out` wrote"
        ) from None
    folder = predictions_folder(path)
    parts = [storage.join(folder, n) for n in storage.listdir(folder)
             if n.endswith(".parquet") and not n.startswith("test-")]  # fmt: skip
    if not parts:
        raise UsageError(
            f"no saved predictions next to {path!r} (expected {folder}/); rerun the same "
            "`fmprobe sweep` command with --save-predictions (it adds the test-set scores)"
        )
    fix = "rerun the same `fmprobe sweep` command with --save-predictions --overwrite"
    table = pd.concat([read_parquet(p, fix) for p in parts], ignore_index=True)
    table = table.sort_values(list(KEYS), kind="stable").reset_index(drop=True)
    return Predictions(results=path, folder=folder, table=table)
