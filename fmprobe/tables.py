"""Tables in and out: one suffix rule for every stage that reads a CSV/Parquet table (a path or
an fsspec URL), and atomic writes for every file fmprobe writes for a user (``storage``: a
temporary name renamed into place, or one upload, so that a crash or a full disk never leaves
half a file under the final name)."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from fmprobe import storage
from fmprobe.errors import FmprobeError, UsageError, first_line

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: str | Path, *, what: str = "table") -> str:
    """``csv``, ``tsv`` or ``parquet`` from the suffix; anything else is one line.

    >>> table_format("results.parquet"), table_format("ids.CSV")
    ('parquet', 'csv')
    """
    fmt = TABLE_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{what} {str(path)!r}: unknown suffix {Path(path).suffix!r}; use .csv, .tsv or "
            ".parquet"
        )
    return fmt


def read_table(path: str | Path, *, what: str = "table", id_column: bool = False) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table (by suffix), from a path or a URL.

    Parameters
    ----------
    path : str or Path
        A local path or an fsspec URL (``s3://bucket/labels.csv``).
    what : str
        How messages name the input (``"--labels"``, ``"RESULTS"``, ...).
    id_column : bool
        The table must have an ``id`` column; it is read as strings.

    A missing, unreadable or damaged file is one line naming it (``UsageError``).
    """
    fmt = table_format(path, what=what)
    text = storage.local(path)
    with storage.errors(text, what=what):
        if storage.isdir(text):
            raise UsageError(f"{what} {text!r} is a folder; pass a .csv or .parquet file")
        if not storage.exists(text):
            raise UsageError(f"{what} {text!r} does not exist")
    options = {"storage_options": storage.storage_options()} if storage.is_url(text) else {}
    try:
        if fmt == "parquet":
            table = pd.read_parquet(text, **options)
        else:
            table = pd.read_csv(text, sep="\t" if fmt == "tsv" else ",", **options)
    except Exception as exc:  # the readers raise many types for a damaged file
        raise UsageError(f"{what} {text!r} cannot be read as {fmt} ({first_line(exc)})") from None
    if id_column:
        if "id" not in table.columns:
            raise UsageError(f"{what} {text!r} has no 'id' column (columns: {list(table.columns)})")
        table["id"] = table["id"].astype(str)
    return table


@contextlib.contextmanager
def atomic_path(path: str | Path, *, what: str = "output") -> Iterator[Path]:
    """Yield a local temporary path; on success it becomes ``path`` in one step (renamed
    beside it, or uploaded as one object to a URL). On any failure nothing is left under
    ``path``; a full disk or a read-only folder is one line (``FmprobeError``, exit code 1).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text()
    'done'
    """
    try:
        with storage.atomic_write(path, what=what) as tmp:
            yield tmp
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise FmprobeError(f"cannot write {str(path)!r} ({exc.strerror})") from None
        raise


def write_table(df: pd.DataFrame, path: str | Path, *, what: str = "output") -> str:
    """Write ``df`` as CSV, TSV or Parquet (by suffix), atomically. Returns the path."""
    fmt = table_format(path, what=what)
    with atomic_path(path, what=what) as tmp:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if fmt == "tsv" else ",")
    return str(path)
