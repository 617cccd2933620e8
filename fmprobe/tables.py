"""Tables in and out: one suffix rule for every stage that reads a CSV/Parquet table, and
atomic writes for every file fmprobe writes for a user (a temporary name in the same folder,
renamed into place, so that a crash or a full disk never leaves half a file under the final
name)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

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
    """Read a CSV, TSV or Parquet table (by suffix).

    Parameters
    ----------
    path : str or Path
    what : str
        How messages name the input (``"--labels"``, ``"RESULTS"``, ...).
    id_column : bool
        The table must have an ``id`` column; it is read as strings.

    A missing, unreadable or damaged file is one line naming it (``UsageError``).
    """
    path = Path(path)
    fmt = table_format(path, what=what)
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; pass a .csv or .parquet file")
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    try:
        if fmt == "parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",")
    except Exception as exc:  # the readers raise many types for a damaged file
        first = first_line(exc)
        raise UsageError(f"{what} {str(path)!r} cannot be read as {fmt} ({first})") from None
    if id_column:
        if "id" not in table.columns:
            raise UsageError(
                f"{what} {str(path)!r} has no 'id' column (columns: {list(table.columns)})"
            )
        table["id"] = table["id"].astype(str)
    return table


@contextlib.contextmanager
def atomic_path(path: str | Path, *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was; a full disk
    or a read-only folder is one line (``FmprobeError``, exit code 1).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text()
    'done'
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; pass a file path")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"{what} {str(path)!r}: cannot create its folder ({exc.strerror})"
        ) from None
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno == errno.ENOSPC:
            raise FmprobeError(
                f"no space left on the device while writing {str(path)!r}; nothing was written "
                "under that name: free space and rerun the same command"
            ) from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise FmprobeError(f"cannot write {str(path)!r} ({exc.strerror})") from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_table(df: pd.DataFrame, path: str | Path, *, what: str = "output") -> Path:
    """Write ``df`` as CSV, TSV or Parquet (by suffix), atomically. Returns the path."""
    path = Path(path)
    fmt = table_format(path, what=what)
    with atomic_path(path, what=what) as tmp:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if fmt == "tsv" else ",")
    return path
