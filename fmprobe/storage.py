"""Where fmprobe reads and writes: local paths and fsspec URLs (``s3://bucket/x.zarr``,
``gs://…``, ``file://…``) behind one small set of functions.

Options for a URL's filesystem come from the usual environment (``AWS_ENDPOINT_URL``, the
credentials chain) and from ``--storage-options JSON`` (kept in ``FMPROBE_STORAGE_OPTIONS``,
so worker processes and Ray tasks on this machine see them too).

Writes are atomic everywhere: a local file is written to a temporary name and renamed; an
object is written with a single PUT (an object store shows an object only once its upload is
complete), so a reader never sees half a file, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fmprobe.errors import FmprobeError, UsageError, first_line

OPTIONS_ENV = "FMPROBE_STORAGE_OPTIONS"
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
            "abfs": "adlfs", "abfss": "adlfs"}  # fmt: skip


def is_url(path: str | Path) -> bool:
    """A URL of a filesystem other than this machine's (``file://`` counts as local).

    >>> is_url("s3://bucket/x.zarr"), is_url("/data/x.zarr"), is_url("file:///data/x.zarr")
    (True, False, False)
    """
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local(path: str | Path) -> str:
    """A local path without its ``file://`` prefix (URLs unchanged)."""
    return str(path).removeprefix("file://")


def storage_options() -> dict[str, Any]:
    """The options given with ``--storage-options`` (or ``FMPROBE_STORAGE_OPTIONS``)."""
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--storage-options is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise UsageError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def set_storage_options(options: dict[str, Any] | None) -> None:
    """Use ``options`` for every URL of this process and of the processes it starts."""
    if options:
        os.environ[OPTIONS_ENV] = json.dumps(options)


def filesystem(path: str | Path) -> tuple[Any, str]:
    """The fsspec filesystem of ``path`` and the path within it; a missing backend is one line
    naming the package to install."""
    from fsspec.core import url_to_fs

    text = local(path)
    try:
        return url_to_fs(text, **(storage_options() if is_url(text) else {}))
    except (ImportError, ValueError) as exc:
        scheme = text.split("://", 1)[0]
        package = BACKENDS.get(scheme)
        if package is None and isinstance(exc, ValueError):
            raise UsageError(f"{text!r}: unknown storage protocol {scheme!r}") from None
        raise UsageError(
            f"{text!r} needs the fsspec backend for {scheme}://: pip install "
            f"{package or 'the fsspec implementation for ' + scheme} (or fmprobe[s3] for S3)"
        ) from None


@contextlib.contextmanager
def errors(path: str | Path, *, what: str) -> Iterator[None]:
    """Storage failures as one line: a missing bucket or file, denied access, no space."""
    try:
        yield
    except (UsageError, FmprobeError):
        raise
    except FileNotFoundError as exc:
        raise UsageError(
            f"{what} {str(path)!r} does not exist ({first_line(exc)}); check the path, and for "
            "object storage the bucket's name"
        ) from None
    except PermissionError as exc:
        raise UsageError(
            f"{what} {str(path)!r}: access denied ({first_line(exc)}); check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_PROFILE, or --storage-options)"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FmprobeError(
                f"no space left on the device while writing {str(path)!r}; finished work is "
                "kept: free space and rerun the same command"
            ) from None
        raise


def missing_bucket(path: str | Path) -> str | None:
    """For a URL of object storage, the bucket's name when that bucket does not exist."""
    text = local(path)
    if not is_url(text):
        return None
    fs, p = filesystem(text)
    bucket = p.split("/", 1)[0]
    try:
        return None if fs.exists(bucket) else bucket
    except (OSError, ValueError):
        return None


def join(base: str | Path, *names: str) -> str:
    """``base/name/...`` for a path or a URL.

    >>> join("s3://b/r.parquet.parts", "u.parquet")
    's3://b/r.parquet.parts/u.parquet'
    """
    out = str(base).rstrip("/")
    for name in names:
        out = f"{out}/{name}"
    return out


def sibling(path: str | Path, suffix: str) -> str:
    """``path`` with ``suffix`` appended to its name (``r.parquet`` → ``r.parquet.parts``)."""
    return str(path).rstrip("/") + suffix


def exists(path: str | Path) -> bool:
    fs, p = filesystem(path)
    return bool(fs.exists(p))


def isdir(path: str | Path) -> bool:
    fs, p = filesystem(path)
    return bool(fs.isdir(p))


def listdir(path: str | Path) -> list[str]:
    """The names (not paths) in folder ``path``; empty when it does not exist."""
    fs, p = filesystem(path)
    try:
        return sorted(os.path.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
    except FileNotFoundError:
        return []


def makedirs(path: str | Path) -> None:
    fs, p = filesystem(path)
    fs.makedirs(p, exist_ok=True)


def remove(path: str | Path) -> None:
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(p)


def remove_tree(path: str | Path) -> None:
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def read_text(path: str | Path) -> str:
    fs, p = filesystem(path)
    with fs.open(p, "r") as f:
        return str(f.read())


@contextlib.contextmanager
def atomic_write(path: str | Path, *, what: str = "output") -> Iterator[Path]:
    """A local temporary file to write; on success it becomes ``path`` in one step (a rename
    beside it, or a single upload for a URL). On failure nothing is left under ``path``."""
    text = local(path)
    if not is_url(text):
        target = Path(text)
        if target.is_dir():
            raise UsageError(f"{what} {text!r} is a folder; pass a file path")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"{what} {text!r}: cannot create its folder ({exc.strerror})"
            ) from None
        tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        with errors(text, what=what):
            try:
                yield tmp
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return
    import tempfile

    fs, p = filesystem(text)
    with tempfile.TemporaryDirectory(prefix="fmprobe-") as tmpdir:
        tmp = Path(tmpdir) / Path(p).name
        yield tmp
        with errors(text, what=what):
            fs.put_file(str(tmp), p)


def create_exclusive(path: str | Path, data: bytes) -> bool:
    """Write ``path`` only if it does not exist (``O_EXCL`` locally, a conditional PUT on
    object storage); returns whether this call created it."""
    text = local(path)
    if not is_url(text):
        Path(text).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(text, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    fs, p = filesystem(text)
    try:
        fs.pipe_file(p, data, mode="create")
    except FileExistsError:
        return False
    return True


def read_parquet(path: str | Path) -> Any:
    """``pandas.read_parquet`` of a path or a URL."""
    import pandas as pd

    text = local(path)
    return pd.read_parquet(text, **({"storage_options": storage_options()} if is_url(text) else {}))


def parquet_metadata(path: str | Path) -> dict[bytes, bytes]:
    """The key-value metadata of a Parquet file's schema (a path or a URL)."""
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    with fs.open(p, "rb") as f:
        return dict(pq.read_schema(f).metadata or {})
