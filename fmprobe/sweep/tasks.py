"""Tasks of a sweep: label columns of the store, or of a ``--labels`` table joined on ``id``.

Label tables of radiology data sets (CheXpert, MIMIC-CXR's CheXpert labels) encode each finding
as 1 (positive), 0 (negative), −1 (uncertain) and blank (not mentioned). Two policies say what
those become, for every task column whose values are among 1, 0 and −1 (other columns are left
as they are):

``uncertain`` (what −1 becomes)
    ``"ignore"``: missing, so the row is masked out of that task (U-Ignore); ``"ones"``: positive
    (U-Ones); ``"zeros"``: negative (U-Zeros) — the three label-mapping approaches of Irvin et
    al., *CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert
    Comparison*, AAAI 2019 (arXiv:1901.07031), §Uncertainty approaches; ``"class"``: a class of
    its own. The default ``None`` leaves −1 an ordinary value, except in a column holding both
    −1 and 0, which is refused with one line asking for a policy (a third class "uncertain" is
    rarely what a CheXpert user wants, and the choice changes the results).
``blank`` (what an empty cell becomes)
    ``"missing"`` (the default, as for any table): masked out; ``"negative"``: 0.

For CheXpert-style tables fmprobe documents ``uncertain="ignore", blank="negative"``
(:data:`CHEXPERT_UNCERTAIN`, :data:`CHEXPERT_BLANK`): U-Ignore is the paper's baseline, and a
finding the report does not mention is commonly read as absent. The paper found the best
approach to differ by finding (U-Ones for atelectasis and edema), so compare them with a sweep
per policy when it matters.

Label values that differ only in case or surrounding/repeated spaces (``'Yes '`` beside
``'Yes'``) are refused rather than counted as classes, and so are duplicate ids in ``--labels``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError, did_you_mean
from fmprobe.store import FeatureStore, read_table

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros", "class")
BLANK_POLICIES = ("missing", "negative")
UNCERTAIN_VALUE = -1
CHEXPERT_UNCERTAIN = "ignore"
CHEXPERT_BLANK = "negative"
_CHEXPERT_VALUES = frozenset({-1.0, 0.0, 1.0})
_MISSING_TEXT = ("", "nan", "None", "NA")


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
    uncertain : str or None
        The uncertain-label policy applied (None: −1 left as a value; see the module).
    blank : str
        The blank-label policy applied (``"missing"`` or ``"negative"``).
    n_uncertain : int
        Rows that held −1 in a column of 1/0/−1 values (before the policy).
    n_blank : int
        Rows whose label was blank (before the policy).
    """

    name: str
    codes: np.ndarray
    classes: tuple[str, ...]
    uncertain: str | None = None
    blank: str = "missing"
    n_uncertain: int = 0
    n_blank: int = 0

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _is_missing(values: pd.Series) -> np.ndarray:
    miss = values.isna().to_numpy().copy()
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        miss |= values.astype(str).str.strip().isin(_MISSING_TEXT).to_numpy()
    return miss


def check_policies(*, uncertain: str | None, blank: str) -> None:
    """One line for an unknown ``uncertain`` or ``blank`` policy."""
    if uncertain is not None and uncertain not in UNCERTAIN_POLICIES:
        raise UsageError(
            f"--uncertain {uncertain!r}: use one of {', '.join(UNCERTAIN_POLICIES)}"
            f"{did_you_mean(uncertain, UNCERTAIN_POLICIES)}"
        )
    if blank not in BLANK_POLICIES:
        raise UsageError(
            f"--blank {blank!r}: use one of {', '.join(BLANK_POLICIES)}"
            f"{did_you_mean(blank, BLANK_POLICIES)}"
        )


def _normal_form(value: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", value).split()).casefold()


def _check_near_duplicates(name: str, labels: np.ndarray) -> None:
    """Refuse label values that are one value written several ways ('Yes ', 'yes', 'Yes')."""
    groups: dict[str, list[str]] = {}
    for value in np.unique(labels):
        groups.setdefault(_normal_form(str(value)), []).append(str(value))
    clashes = [sorted(g) for g in groups.values() if len(g) > 1]
    if clashes:
        shown = "; ".join(" / ".join(repr(v) for v in g) for g in clashes[:4])
        more = f" (and {len(clashes) - 4} more)" if len(clashes) > 4 else ""
        raise UsageError(
            f"task {name!r} has labels that differ only in case or spaces: {shown}{more}; make "
            "each one value in the table (e.g. strip spaces and use one spelling)"
        )


def _apply_policies(
    name: str, numbers: np.ndarray, miss: np.ndarray, *, uncertain: str | None, blank: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """A column of 1/0/−1 (and blanks) after the policies: (values, missing mask, n uncertain)."""
    values, miss = numbers.copy(), miss.copy()
    is_u = ~miss & (values == UNCERTAIN_VALUE)
    n_u = int(is_u.sum())
    if uncertain is None and n_u and (values[~miss] == 0).any():
        raise UsageError(
            f"task {name!r} holds 1, 0 and -1 ({n_u} rows of -1: uncertain, as in CheXpert); "
            "choose what -1 means: --uncertain ignore|ones|zeros (U-Ignore, U-Ones, U-Zeros), "
            "or --uncertain class to keep it a class of its own"
        )
    if uncertain == "ignore":
        miss |= is_u
    elif uncertain in ("ones", "zeros"):
        values[is_u] = 1.0 if uncertain == "ones" else 0.0
    if blank == "negative":
        values[miss & ~is_u] = 0.0
        miss &= is_u
    return values, miss, n_u


def encode_task(
    name: str, values: pd.Series, *, uncertain: str | None = None, blank: str = "missing"
) -> Task:
    """Class codes of a label column; refuses continuous and single-class columns.

    Parameters
    ----------
    name : str
        The column's name (for messages).
    values : pandas.Series (N,)
        The labels, one per store row; blanks (NaN, "", "NA") are missing.
    uncertain : {None, "ignore", "ones", "zeros", "class"}
        What −1 becomes in a column of 1/0/−1 values (see the module docstring).
    blank : {"missing", "negative"}
        What a blank becomes in a column of 1/0/−1 values; other columns keep blanks missing.

    Returns
    -------
    Task

    Raises
    ------
    UsageError
        Non-integer numbers, fewer than two classes, labels that differ only in case or
        spaces, a 1/0/−1 column without an ``uncertain`` policy, an unknown policy.

    Examples
    --------
    >>> s = pd.Series([1, 0, -1, None, 1])
    >>> t = encode_task("Edema", s, uncertain="ignore", blank="negative")
    >>> t.classes, t.codes.tolist(), t.n_uncertain, t.n_blank
    (('0', '1'), [1, 0, -1, 0, 1], 1, 1)
    >>> encode_task("Edema", s, uncertain="ones").codes.tolist()
    [1, 0, 1, -1, 1]
    """
    check_policies(uncertain=uncertain, blank=blank)
    miss = _is_missing(values)
    present = values[~miss]
    if pd.api.types.is_float_dtype(present) and not np.all(np.mod(present.to_numpy(), 1) == 0):
        raise UsageError(
            f"task {name!r} holds non-integer numbers (e.g. {present.iloc[0]}); a task must be a "
            f"class label: binarise it first (e.g. a column `{name}_high`)"
        )
    n_blank, n_u = int(miss.sum()), 0
    numeric = pd.api.types.is_numeric_dtype(present)
    if numeric and set(np.unique(present.to_numpy(dtype=float))) <= _CHEXPERT_VALUES:
        raw = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        full = np.where(miss, np.nan, raw)
        full, miss, n_u = _apply_policies(name, full, miss, uncertain=uncertain, blank=blank)
        present = pd.Series(full[~miss])
    if numeric:
        uniq = np.unique(present.to_numpy())
        classes = tuple(str(int(u)) if float(u).is_integer() else str(u) for u in uniq)
        codes_present = np.searchsorted(uniq, present.to_numpy())
    else:
        text = present.astype(str).to_numpy()
        _check_near_duplicates(name, text)
        uniq = np.unique(text)
        classes = tuple(str(u) for u in uniq)
        codes_present = np.searchsorted(uniq, text)
    if len(classes) < 2:
        raise UsageError(
            f"task {name!r} has {len(classes)} class{'es' if len(classes) != 1 else ''} "
            f"({', '.join(classes) or 'no labels'}); a task needs at least two"
        )
    codes = np.full(len(values), -1, np.int64)
    codes[~miss] = codes_present
    return Task(
        name=name,
        codes=codes,
        classes=classes,
        uncertain=uncertain,
        blank=blank,
        n_uncertain=n_u,
        n_blank=n_blank,
    )


def _read_labels(labels: str, store_ids: pd.Series) -> pd.DataFrame:
    extra = read_table(labels)
    ids = extra["id"]
    dup = ids[ids.duplicated(keep=False)].unique().tolist()
    if dup:
        shown = ", ".join(repr(v) for v in dup[:3])
        raise UsageError(
            f"--labels {labels!r}: {len(dup)} ids occur on more than one row (e.g. {shown}); "
            "give each id one row"
        )
    unknown = set(ids) - set(store_ids)
    if unknown:
        raise UsageError(
            f"--labels {labels!r}: {len(unknown)} ids are not in the store "
            f"(e.g. {sorted(unknown)[:3]}); the table must use the store's ids"
        )
    return extra.set_index("id")


def load_tasks(
    store: FeatureStore,
    tasks: list[str],
    *,
    labels: str | None = None,
    uncertain: str | None = None,
    blank: str = "missing",
) -> tuple[list[Task], pd.DataFrame]:
    """Resolve task names against the store's sample columns or a ``labels`` table.

    Parameters
    ----------
    store : FeatureStore
    tasks : list of str
        Column names.
    labels : path, optional
        A CSV/Parquet table with an ``id`` column (the store's ids, each on one row); its
        columns replace the store's of the same name.
    uncertain, blank : str
        The label policies of :func:`encode_task`, applied to every task.

    Returns
    -------
    tasks : list of Task
    table : pandas.DataFrame
        Every column aligned with the store's rows (the raw labels, before the policies).

    Examples
    --------
    >>> tasks, table = load_tasks(store, ["Edema"], labels="chexpert.csv",
    ...                           uncertain="ignore", blank="negative")  # doctest: +SKIP
    """
    check_policies(uncertain=uncertain, blank=blank)
    table = store.samples()
    if labels is not None:
        extra = _read_labels(labels, table["id"])
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
        out.append(encode_task(name, table[name], uncertain=uncertain, blank=blank))
    return out, table
