"""Saved test-set predictions of a sweep (``fmprobe sweep --save-predictions``), read back for
statistics computed after the fact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError

KEYS = ("feature", "task", "probe", "sampler", "n", "seed")


@dataclass(frozen=True)
class Predictions:
    """The saved predictions next to a results table.

    Attributes
    ----------
    results : Path
        The results table the predictions belong to.
    folder : Path
        ``<results>.predictions``.
    table : DataFrame
        One row per fitted probe: ``feature, task, probe, sampler, n, seed, status, test,
        n_classes`` and ``scores`` (a float32 array: T values for binary tasks, T·K row-major
        for K classes).
    """

    results: Path
    folder: Path
    table: pd.DataFrame
    _tests: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    def test(self, name: str) -> pd.DataFrame:
        """The test table ``name``: ``id``, ``row`` (store row) and ``y`` (class code), in
        score order."""
        if name not in self._tests:
            path = self.folder / f"{name}.parquet"
            if not path.exists():
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


def read_parquet(path: Path, fix: str) -> pd.DataFrame:
    """``pd.read_parquet``, a damaged or non-Parquet file a one-line ``UsageError``."""
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{str(path)!r} is not a readable Parquet file ({first}); {fix}") from None


def predictions_folder(results: str | Path) -> Path:
    path = Path(results)
    return path.with_name(path.name + ".predictions")


def load_predictions(results: str | Path) -> Predictions:
    """Read every saved prediction of a results table.

    Parameters
    ----------
    results : path
        The results table ``fmprobe sweep --out`` wrote, run with ``--save-predictions``.

    Returns
    -------
    Predictions

    Examples
    --------
    >>> p = load_predictions("out/demo/results.parquet")  # doctest: +SKIP
    >>> p.table.groupby(["feature", "task"]).size()  # doctest: +SKIP
    """
    path = Path(results)
    if not path.exists():
        raise UsageError(
            f"results table {str(path)!r} does not exist; pass the file `fmprobe sweep --out` wrote"
        )
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as exc:  # not Parquet, truncated, a directory, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(
            f"results table {str(path)!r} is not a readable Parquet file ({first}); pass the "
            "file `fmprobe sweep --out` wrote"
        ) from None
    folder = predictions_folder(path)
    parts = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("test-"))
    if not parts:
        raise UsageError(
            f"no saved predictions next to {str(path)!r} (expected {folder.name}/); rerun the same "
            "`fmprobe sweep` command with --save-predictions (it adds the test-set scores)"
        )
    fix = "rerun the same `fmprobe sweep` command with --save-predictions --overwrite"
    table = pd.concat([read_parquet(p, fix) for p in parts], ignore_index=True)
    table = table.sort_values(list(KEYS), kind="stable").reset_index(drop=True)
    return Predictions(results=path, folder=folder, table=table)
