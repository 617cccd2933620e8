"""``--data`` specs parsed into one ``Dataset`` type (``parse_data`` is the only boundary)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fmprobe.data.images import IMAGE_SUFFIXES, read_image, to_rgb
from fmprobe.errors import DataError, ImageReadError, did_you_mean

BUILTINS = ("builtin:digits",)
MANIFEST_SUFFIXES = (".csv", ".parquet")
ARRAY_SUFFIXES = (".h5", ".hdf5", ".npz")

# Per-process handles on array files, opened lazily so a Dataset pickles into DataLoader workers.
_ARRAY_HANDLES: dict[tuple[int, str], Any] = {}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples of one ``--data`` spec: their ids, labels/metadata and a way to load each image.

    Attributes
    ----------
    spec : str
        The spec as the user gave it.
    kind : {"builtin", "folder", "manifest", "array"}
    table : pandas.DataFrame
        One row per sample: ``id`` (str) first, then label and metadata columns.
    root : str or None
        The folder file paths are relative to (folder, manifest) or the array file.
    """

    spec: str
    kind: str
    table: pd.DataFrame
    root: str | None = None
    files: tuple[str, ...] = ()  # relative to root (folder, manifest)
    images: np.ndarray | None = field(default=None, repr=False)  # builtin, in memory

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[str]:
        return list(self.table["id"])

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as 8-bit RGB; raises ``ImageReadError`` if it cannot be decoded."""
        if self.images is not None:
            return to_rgb(self.images[i])
        if self.kind == "array":
            return to_rgb(_array_images(str(self.root))[i])
        assert self.root is not None
        return read_image(Path(self.root) / self.files[i])

    def fingerprint(self) -> str:
        """sha256 over ids, labels/metadata and each image's identity (file path and size, or
        the array bytes), without decoding images. Modification times are left out so that a
        copied dataset keeps its fingerprint."""
        h = hashlib.sha256()
        h.update(f"{self.kind}\n{len(self)}\n".encode())
        h.update(pd.util.hash_pandas_object(self.table, index=False).to_numpy().tobytes())
        h.update("\0".join(str(c) for c in self.table.columns).encode())
        if self.images is not None:
            h.update(np.ascontiguousarray(self.images).tobytes())
        elif self.kind == "array":
            images = _array_images(str(self.root))
            step = max(1, 1 << 24 // max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize))
            for start in range(0, images.shape[0], step):
                h.update(np.ascontiguousarray(images[start : start + step]).tobytes())
        else:
            assert self.root is not None
            for rel in self.files:
                try:
                    size = os.stat(Path(self.root) / rel).st_size
                except OSError:
                    size = -1
                h.update(f"{rel}\0{size}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "n": len(self),
            "columns": [c for c in self.table.columns if c != "id"],
            "root": self.root,
        }


def _array_images(path: str) -> Any:
    key = (os.getpid(), path)
    if key not in _ARRAY_HANDLES:
        if path.endswith(".npz"):
            _ARRAY_HANDLES[key] = np.load(path)["images"]
        else:
            import h5py

            _ARRAY_HANDLES[key] = h5py.File(path, "r")["images"]
    return _ARRAY_HANDLES[key]


def _check_ids(table: pd.DataFrame, where: str) -> None:
    ids = table["id"]
    dup = ids[ids.duplicated(keep=False)].unique()
    if len(dup):
        first = ", ".join(repr(d) for d in dup[:3])
        raise DataError(
            f"{where}: {len(dup)} ids occur more than once (e.g. {first}); ids must be unique "
            "(add an `id` column or rename the files)"
        )
    if len(table) == 0:
        raise DataError(f"{where}: no samples found")


def _builtin(spec: str) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)
    table = pd.DataFrame(
        {"id": [f"digits-{i:04d}" for i in range(len(images))], "label": digits.target}
    )
    return Dataset(spec=spec, kind="builtin", table=table, images=images)


def _folder(spec: str, root: Path) -> Dataset:
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(
            f"--data {spec!r}: the folder holds no image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    in_root = [f for f in files if "/" not in f]
    ids = [f.rsplit(".", 1)[0] for f in files]
    data: dict[str, Any] = {"id": ids}
    if in_root and len(in_root) != len(files):
        raise DataError(
            f"--data {spec!r}: {len(in_root)} images lie directly in the folder (e.g. "
            f"{in_root[0]!r}) beside class sub-folders; move them into a sub-folder, or use a "
            "manifest"
        )
    if not in_root:
        data["label"] = [f.split("/", 1)[0] for f in files]
    table = pd.DataFrame(data)
    _check_ids(table, f"--data {spec!r}")
    return Dataset(
        spec=spec, kind="folder", table=table, root=str(root.resolve()), files=tuple(files)
    )


def _read_manifest(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"--data {str(path)!r}: the manifest cannot be read ({reason[:160]}); "
            "expected a CSV or Parquet table with a `path` column"
        ) from None


def _manifest(spec: str, path: Path) -> Dataset:
    raw = _read_manifest(path)
    if "path" not in raw.columns:
        raise DataError(
            f"--data {spec!r}: the manifest has no `path` column{did_you_mean('path', raw.columns)}"
            f" (columns: {', '.join(map(str, raw.columns))})"
        )
    base = path.parent.resolve()
    rel = [str(p) for p in raw["path"]]
    resolved = [Path(p) if os.path.isabs(p) else base / p for p in rel]
    missing = [r for r, p in zip(rel, resolved, strict=True) if not p.is_file()]
    if missing:
        first = ", ".join(repr(m) for m in missing[:3])
        raise DataError(
            f"--data {spec!r}: {len(missing)} files listed in the manifest do not exist "
            f"(e.g. {first}); paths are relative to the manifest's folder"
        )
    ids = (
        raw["id"].astype(str)
        if "id" in raw.columns
        else pd.Series([r.rsplit(".", 1)[0] for r in rel])
    )
    table = raw.drop(columns=[c for c in ("id", "path") if c in raw.columns])
    table.insert(0, "id", ids.to_numpy())
    table = table.reset_index(drop=True)
    _check_ids(table, f"--data {spec!r}")
    files = tuple(os.path.relpath(p, base) for p in resolved)
    return Dataset(spec=spec, kind="manifest", table=table, root=str(base), files=files)


def _arrays(spec: str, path: Path) -> Dataset:
    columns: dict[str, np.ndarray] = {}
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                shape = z["images"].shape if "images" in keys else None
                columns = {k: z[k] for k in keys if k != "images" and z[k].ndim == 1}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                keys = list(f.keys())
                shape = f["images"].shape if "images" in keys else None
                columns = {
                    k: f[k][...]
                    for k in keys
                    if k != "images" and isinstance(f[k], h5py.Dataset) and f[k].ndim == 1
                }
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"--data {spec!r}: cannot read the array file ({exc})") from None
    if shape is None:
        raise DataError(
            f"--data {spec!r}: no `images` array{did_you_mean('images', keys)} "
            f"(arrays: {', '.join(keys) or 'none'})"
        )
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        raise DataError(
            f"--data {spec!r}: `images` has shape {shape}; expected (N,H,W) or (N,H,W,C)"
        )
    n = shape[0]
    for k, v in columns.items():
        if len(v) != n:
            raise DataError(f"--data {spec!r}: array {k!r} has {len(v)} rows, `images` has {n}")
    decoded = {
        k: (np.char.decode(v, "utf-8") if v.dtype.kind == "S" else v) for k, v in columns.items()
    }
    ids = decoded.pop("ids", None)
    table = pd.DataFrame(
        {"id": [str(i) for i in ids] if ids is not None else [f"{i:06d}" for i in range(n)]}
    )
    for k, v in decoded.items():
        table[k] = v
    _check_ids(table, f"--data {spec!r}")
    return Dataset(spec=spec, kind="array", table=table, root=str(path.resolve()))


def parse_data(spec: str | os.PathLike[str]) -> Dataset:
    """Parse a ``--data`` spec into a ``Dataset``.

    Parameters
    ----------
    spec : str or path
        ``builtin:digits``, an image folder, a ``.csv``/``.parquet`` manifest, or an
        ``.h5``/``.hdf5``/``.npz`` array file.

    Examples
    --------
    >>> ds = parse_data("builtin:digits")
    >>> len(ds), list(ds.table.columns)
    (1797, ['id', 'label'])
    """
    text = os.fspath(spec)
    if text.startswith("builtin:"):
        if text not in BUILTINS:
            raise DataError(
                f"--data {text!r}: unknown built-in data set{did_you_mean(text, BUILTINS)}; "
                f"available: {', '.join(BUILTINS)}"
            )
        return _builtin(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(
            f"--data {text!r} does not exist; pass a folder, a manifest, an array file or "
            "builtin:digits"
        )
    if path.is_dir():
        return _folder(text, path)
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return _manifest(text, path)
    if suffix in ARRAY_SUFFIXES:
        return _arrays(text, path)
    raise DataError(
        f"--data {text!r}: unknown format {suffix or '(no suffix)'!r}; expected an image folder, "
        f"a manifest ({', '.join(MANIFEST_SUFFIXES)}), an array file ({', '.join(ARRAY_SUFFIXES)}) "
        "or builtin:digits"
    )


__all__ = ["Dataset", "ImageReadError", "parse_data"]
