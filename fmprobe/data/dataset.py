"""``--data`` specs parsed into one ``Dataset`` type (``parse_data`` is the only boundary).

Every error in the input is found here, before any model is loaded, and reported as one
``DataError`` line naming what was received, what was expected and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fmprobe.data.arrays import IMAGES_KEY, ArrayFileContents, read_contents
from fmprobe.data.dicom import has_dicom_magic
from fmprobe.data.images import IMAGE_SUFFIXES
from fmprobe.data.medmnist import is_medmnist, read_layout
from fmprobe.data.pixels import short_reason
from fmprobe.data.sources import ArrayImages, FileImages, ImageSource, MemoryImages
from fmprobe.errors import DataError, did_you_mean

BUILTINS = ("builtin:digits",)
MANIFEST_SUFFIXES = (".csv", ".parquet")
ARRAY_SUFFIXES = (".h5", ".hdf5", ".npz")
KINDS = ("builtin", "folder", "manifest", "array")
DICOMDIR = "DICOMDIR"
FINGERPRINT_VERSION = "fmprobe.dataset/1"
ACCEPTED = (
    "an image folder, a manifest (.csv, .parquet), an array file (.h5, .hdf5, .npz) "
    "or builtin:digits"
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """The samples of one ``--data`` spec: ids, labels/metadata, and a way to load each image.

    Picklable: array files are opened lazily in each process, so DataLoader workers can use it.

    Attributes
    ----------
    spec : str
        The spec as the user gave it.
    kind : {"builtin", "folder", "manifest", "array"}
        Which form the spec had.
    table : pandas.DataFrame
        One row per sample, a RangeIndex: ``id`` (str) first, then label and metadata columns
        (never ``path``).
    source : ImageSource
        Where the images come from (memory, files, an array file).
    """

    spec: str
    kind: str
    table: pd.DataFrame
    source: ImageSource = field(repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")
        if list(self.table.columns[:1]) != ["id"] or "path" in self.table.columns:
            raise ValueError("a Dataset table has `id` first and no `path` column")

    def __len__(self) -> int:
        return len(self.table)

    @cached_property
    def ids(self) -> list[str]:
        """The sample ids, in table order."""
        return [str(i) for i in self.table["id"].tolist()]

    @property
    def root(self) -> str | None:
        """The absolute folder file paths are relative to, the array file, or None."""
        return self.source.root

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as an 8-bit RGB PIL image.

        Raises
        ------
        ImageReadError
            When the image cannot be decoded (the reason is the message).
        """
        return self.source.load(i)

    def fingerprint(self) -> str:
        """sha256 (hex) of the kind, the table (ids, labels, metadata) and each image's
        content identity: path and size for files (not the modification time, so that a
        copy keeps its fingerprint), the bytes for arrays. No image is decoded."""
        h = hashlib.sha256(f"{FINGERPRINT_VERSION}\0{self.kind}\n".encode())
        for chunk in _table_digest(self.table):
            h.update(chunk)
        for chunk in self.source.identity():
            h.update(chunk)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance: spec, kind, n, columns (besides ``id``) and root."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "n": len(self),
            "columns": [str(c) for c in self.table.columns if c != "id"],
            "root": self.root,
        }


def _column_digest(column: pd.Series) -> bytes:
    """Order-sensitive hashes of a column's values, stable across processes."""
    try:
        hashed = pd.util.hash_pandas_object(column, index=False)
    except TypeError:  # unhashable cells (lists, arrays): hash their text
        hashed = pd.util.hash_pandas_object(column.map(repr).astype(str), index=False)
    return np.asarray(hashed, dtype="<u8").tobytes()


def _table_digest(table: pd.DataFrame) -> Iterator[bytes]:
    yield f"{len(table)}\n".encode()
    for name in table.columns:
        column = table[name]
        kind = pd.api.types.infer_dtype(column, skipna=True)
        yield f"{name}\0{kind}\n".encode()
        yield _column_digest(column)


# --- checks shared by every form -------------------------------------------------------------


def _examples(values: Sequence[object], n: int = 3) -> str:
    return ", ".join(repr(v) for v in values[:n])


def _check_table(table: pd.DataFrame, *, where: str) -> pd.DataFrame:
    if len(table) == 0:
        raise DataError(f"{where}: no samples found; the data must hold at least one image")
    ids = table["id"]
    dup = ids[ids.duplicated(keep=False)].unique().tolist()
    if dup:
        raise DataError(
            f"{where}: {len(dup)} ids occur more than once (e.g. {_examples(dup)}); ids must "
            "be unique: fix the `id` values or rename the files"
        )
    return table.reset_index(drop=True)


def _strip_suffix(path: str) -> str:
    return posixpath.splitext(path)[0]


# --- builtin ---------------------------------------------------------------------------------


def _builtin(spec: str) -> Dataset:
    if spec not in BUILTINS:
        raise DataError(
            f"--data {spec!r}: unknown built-in data set{did_you_mean(spec, BUILTINS)}; "
            f"available: {', '.join(BUILTINS)}"
        )
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(np.asarray(digits.images) * 255.0 / 16.0).astype(np.uint8)
    table = pd.DataFrame(
        {
            "id": [f"digits-{i:04d}" for i in range(len(images))],
            "label": np.asarray(digits.target, dtype=np.int64),
        }
    )
    return Dataset(spec=spec, kind="builtin", table=table, source=MemoryImages(images))


# --- folder ----------------------------------------------------------------------------------


def _list_images(root: Path) -> list[str]:
    """Image files below ``root`` (relative POSIX paths, sorted), skipping hidden entries.

    A file is an image by its suffix, or, whatever its name, by the ``DICM`` magic of a DICOM
    file (PACS exports name files by UID or number); only those 132 bytes are read. A
    ``DICOMDIR`` (the index of a DICOM medium, no image) is left out.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or name.upper() == DICOMDIR:
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES or has_dicom_magic(Path(dirpath) / name):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def _file_id(rel: str) -> str:
    """The relative path without an image suffix; other names are kept whole (a DICOM file
    named ``1.2.840.113619.2.55.3.2831164355.320`` keeps its last part)."""
    stem, suffix = posixpath.splitext(rel)
    return stem if suffix.lower() in IMAGE_SUFFIXES else rel


def _folder(spec: str, root: Path) -> Dataset:
    where = f"--data {spec!r}"
    files = _list_images(root)
    if not files:
        raise DataError(
            f"{where}: the folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}, "
            "or DICOM files of any name); point --data at the folder of images or pass a manifest"
        )
    loose = [f for f in files if "/" not in f]
    data: dict[str, Any] = {"id": [_file_id(f) for f in files]}
    if loose and len(loose) != len(files):
        raise DataError(
            f"{where}: {len(loose)} images lie directly in the folder (e.g. {_examples(loose)})"
            " beside class sub-folders; move them into a sub-folder, or use a manifest"
        )
    if not loose:
        data["label"] = [f.split("/", 1)[0] for f in files]
    table = _check_table(pd.DataFrame(data), where=where)
    source = FileImages(folder=str(root.resolve()), paths=tuple(files))
    return Dataset(spec=spec, kind="folder", table=table, source=source)


# --- manifest --------------------------------------------------------------------------------


def _read_manifest(path: Path, *, where: str, text_columns: Iterable[str]) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=dict.fromkeys(text_columns, str))
    except Exception as exc:
        raise DataError(
            f"{where}: the manifest {str(path)!r} cannot be read ({short_reason(exc)}); "
            "expected a CSV or Parquet table with a `path` column"
        ) from None


def _require_column(raw: pd.DataFrame, name: str, *, where: str, role: str) -> None:
    if name not in raw.columns:
        columns = [str(c) for c in raw.columns]
        raise DataError(
            f"{where}: the manifest has no `{name}` column{did_you_mean(name, columns)} "
            f"(columns: {', '.join(columns) or 'none'}); add one holding {role}"
        )


def _manifest_paths(raw: pd.DataFrame, *, path_col: str, where: str) -> list[str]:
    values = raw[path_col]
    blank = values.isna() | (values.astype(str).str.strip() == "")
    if blank.any():
        rows = [int(r) + 2 for r in np.flatnonzero(blank.to_numpy())]  # 1-based, after header
        raise DataError(
            f"{where}: {int(blank.sum())} rows have an empty `{path_col}` (lines "
            f"{_examples(rows)}); every row needs an image path"
        )
    return [str(v) for v in values]


def _check_files_exist(paths: list[str], base: Path, *, where: str) -> None:
    missing = [p for p in paths if not (base / p).is_file()]
    if missing:
        raise DataError(
            f"{where}: {len(missing)} of {len(paths)} files listed in the manifest do not "
            f"exist (e.g. {_examples(missing)}); paths are relative to the manifest's folder "
            f"{str(base)!r}"
        )


def _manifest_ids(raw: pd.DataFrame, paths: list[str], *, id_col: str, where: str) -> list[str]:
    if id_col not in raw.columns:
        if id_col != "id":
            _require_column(raw, id_col, where=where, role="the sample ids")
        return [_strip_suffix(p) for p in paths]
    values = raw[id_col]
    if values.isna().any():
        raise DataError(
            f"{where}: {int(values.isna().sum())} rows have an empty `{id_col}`; give every row "
            "an id, or drop the column to use the paths"
        )
    return [str(v) for v in values]


def _manifest(spec: str, path: Path, *, id_col: str, path_col: str) -> Dataset:
    where = f"--data {spec!r}"
    raw = _read_manifest(path, where=where, text_columns=(id_col, path_col))
    _require_column(raw, path_col, where=where, role="image paths")
    paths = _manifest_paths(raw, path_col=path_col, where=where)
    base = path.resolve().parent
    _check_files_exist(paths, base, where=where)
    ids = _manifest_ids(raw, paths, id_col=id_col, where=where)
    table = raw.drop(columns=[c for c in (id_col, path_col) if c in raw.columns])
    clash = [c for c in ("id", "path") if c in table.columns]
    if clash:
        raise DataError(
            f"{where}: the manifest has a `{clash[0]}` column besides the id column "
            f"`{id_col}` and path column `{path_col}`; rename it"
        )
    table.insert(0, "id", ids)
    table = _check_table(table, where=where)
    source = FileImages(folder=str(base), paths=tuple(paths))
    return Dataset(spec=spec, kind="manifest", table=table, source=source)


# --- array files -----------------------------------------------------------------------------


def _read_array_file(path: Path, *, where: str) -> ArrayFileContents:
    try:
        return read_contents(path)
    except Exception as exc:
        raise DataError(
            f"{where}: the array file cannot be read ({short_reason(exc)}); expected an .npz "
            "from numpy.savez or an HDF5 file with an `images` array"
        ) from None


def _check_images(contents: ArrayFileContents, *, where: str) -> int:
    keys = list(contents.infos)
    info = contents.infos.get(IMAGES_KEY)
    if info is None:
        raise DataError(
            f"{where}: no `images` array{did_you_mean(IMAGES_KEY, keys)} "
            f"(arrays: {', '.join(keys) or 'none'}); store the images as `images`"
        )
    shape, dtype = info.shape, info.dtype
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        raise DataError(
            f"{where}: `images` has shape {shape}; expected (N,H,W) or (N,H,W,C) with C 1 or 3"
        )
    if dtype.kind not in "uifb":
        raise DataError(
            f"{where}: `images` has dtype {dtype}; expected uint8, uint16 or float numbers"
        )
    return int(shape[0])


def _check_columns(contents: ArrayFileContents, n: int, *, where: str) -> None:
    for key, info in contents.infos.items():
        if key == IMAGES_KEY or len(info.shape) != 1:
            continue
        if info.shape[0] != n:
            raise DataError(
                f"{where}: array {key!r} has {info.shape[0]} rows but `images` has {n}; "
                "every 1-D array must have one entry per image"
            )
        if info.dtype.hasobject and key not in contents.columns:
            raise DataError(
                f"{where}: array {key!r} holds Python objects; save it as a numeric, str or "
                "bytes array"
            )


def _array_id_key(columns: dict[str, np.ndarray], *, id_col: str, where: str) -> str | None:
    candidates = [k for k in dict.fromkeys((id_col, "ids")) if k in columns]
    if len(candidates) > 1:
        raise DataError(
            f"{where}: both `{candidates[0]}` and `{candidates[1]}` arrays present; keep one "
            "as the sample ids"
        )
    key = candidates[0] if candidates else None
    clash = [c for c in ("id", "path") if c in columns and c != key]
    if clash:
        raise DataError(
            f"{where}: an array named `{clash[0]}` besides the ids "
            f"(`{key or 'ids'}`); rename it, the names `id` and `path` are reserved"
        )
    return key


def _medmnist(spec: str, path: Path, contents: ArrayFileContents) -> Dataset:
    layout = read_layout(contents, path=path, where=f"--data {spec!r}")
    source = ArrayImages.open(str(path.resolve()), keys=layout.keys, counts=layout.counts)
    return Dataset(spec=spec, kind="array", table=layout.table, source=source)


def _arrays(spec: str, path: Path, *, id_col: str) -> Dataset:
    where = f"--data {spec!r}"
    contents = _read_array_file(path, where=where)
    if is_medmnist(contents):
        return _medmnist(spec, path, contents)
    n = _check_images(contents, where=where)
    _check_columns(contents, n, where=where)
    columns = dict(contents.columns)
    id_key = _array_id_key(columns, id_col=id_col, where=where)
    ids = columns.pop(id_key) if id_key else np.array([f"{i:06d}" for i in range(n)])
    table = pd.DataFrame({"id": [str(i) for i in ids.tolist()]})
    for key, values in columns.items():
        table[key] = values
    table = _check_table(table, where=where)
    source = ArrayImages.open(str(path.resolve()))
    return Dataset(spec=spec, kind="array", table=table, source=source)


# --- the boundary ----------------------------------------------------------------------------


def parse_data(
    spec: str | os.PathLike[str], *, id_col: str = "id", path_col: str = "path"
) -> Dataset:
    """Parse a ``--data`` spec into a ``Dataset``.

    Parameters
    ----------
    spec : str or path
        ``builtin:digits``; a folder of images (sub-folders are the ``label``); a
        ``.csv``/``.parquet`` manifest; or an ``.h5``/``.hdf5``/``.npz`` array file.
    id_col : str
        The manifest column holding the sample ids (default ``id``; without it, ids are the
        paths without suffix). For array files, the ids array is ``id_col`` or ``ids``.
    path_col : str
        The manifest column holding the image paths, relative to the manifest's folder or
        absolute.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        One line naming the problem and the fix: path not found, unknown format, manifest
        unreadable or without the path column, duplicate ids, files listed but missing, no
        samples, an array file without ``images`` or with a column of the wrong length.

    Examples
    --------
    >>> ds = parse_data("builtin:digits")
    >>> len(ds), list(ds.table.columns)
    (1797, ['id', 'label'])
    """
    text = os.fspath(spec)
    if text.startswith("builtin:"):
        return _builtin(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"--data {text!r} does not exist; pass {ACCEPTED}")
    if path.is_dir():
        return _folder(text, path)
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return _manifest(text, path, id_col=id_col, path_col=path_col)
    if suffix in ARRAY_SUFFIXES:
        return _arrays(text, path, id_col=id_col)
    raise DataError(
        f"--data {text!r}: unknown format {suffix or '(no suffix)'!r}; expected {ACCEPTED}"
    )


__all__ = ["ARRAY_SUFFIXES", "BUILTINS", "MANIFEST_SUFFIXES", "Dataset", "parse_data"]
