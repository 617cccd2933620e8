"""Tasks of a sweep: label columns of the store, or of a ``--labels`` table joined on ``id``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError, did_you_mean
from fmprobe.store import FeatureStore, read_table


@dataclass(frozen=True, eq=False)
class Task:
    """One classification task over the store's rows.

    Attributes
    ----------
    name : str
    codes : ndarray (N,) int
        Class index per store row, -1 where the label is missing (masked out).
    classes : tuple of str
        The class names; for binary tasks the second one is the positive class.
    """

    name: str
    codes: np.ndarray
    classes: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _is_missing(values: pd.Series) -> np.ndarray:
    miss = values.isna().to_numpy().copy()
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        miss |= values.astype(str).str.strip().isin(["", "nan", "None", "NA"]).to_numpy()
    return miss


def encode_task(name: str, values: pd.Series) -> Task:
    """Class codes of a label column; refuses continuous and single-class columns."""
    miss = _is_missing(values)
    present = values[~miss]
    if pd.api.types.is_float_dtype(present) and not np.all(np.mod(present.to_numpy(), 1) == 0):
        raise UsageError(
            f"task {name!r} holds non-integer numbers (e.g. {present.iloc[0]}); a task must be a "
            "class label: binarise it first (e.g. a column `{name}_high`)"
        )
    if pd.api.types.is_numeric_dtype(present):
        uniq = np.unique(present.to_numpy())
        classes = tuple(str(int(u)) if float(u).is_integer() else str(u) for u in uniq)
        codes_present = np.searchsorted(uniq, present.to_numpy())
    else:
        uniq = np.unique(present.astype(str).to_numpy())
        classes = tuple(str(u) for u in uniq)
        codes_present = np.searchsorted(uniq, present.astype(str).to_numpy())
    if len(classes) < 2:
        raise UsageError(
            f"task {name!r} has {len(classes)} class{'es' if len(classes) != 1 else ''} "
            f"({', '.join(classes) or 'no labels'}); a task needs at least two"
        )
    codes = np.full(len(values), -1, np.int64)
    codes[~miss] = codes_present
    return Task(name=name, codes=codes, classes=classes)


def load_tasks(
    store: FeatureStore, tasks: list[str], *, labels: str | None = None
) -> tuple[list[Task], pd.DataFrame]:
    """Resolve task names against the store's sample columns or a ``labels`` table.

    Returns the tasks and the table of all columns aligned with the store's rows.
    """
    table = store.samples()
    if labels is not None:
        extra = read_table(labels)
        unknown = set(extra["id"]) - set(table["id"])
        if unknown:
            raise UsageError(
                f"--labels {labels!r}: {len(unknown)} ids are not in the store "
                f"(e.g. {sorted(unknown)[:3]}); the table must use the store's ids"
            )
        extra = extra.drop_duplicates("id").set_index("id")
        overlap = [c for c in extra.columns if c in table.columns and c != "id"]
        table = table.drop(columns=overlap).join(extra, on="id")
    columns = [c for c in table.columns if c != "id"]
    out = []
    for name in tasks:
        if name not in table.columns or name == "id":
            raise UsageError(
                f"task {name!r} is not a column of the store or --labels"
                f"{did_you_mean(name, columns)} (columns: {', '.join(columns) or 'none'})"
            )
        out.append(encode_task(name, table[name]))
    return out, table
