"""Array files (``.npz``, ``.h5``/``.hdf5``): their contents listed without loading the images,
and a lazily opened, per-process handle on the ``images`` array.

An uncompressed ``.npz`` member is memory-mapped, so that DataLoader workers share the page
cache instead of each holding a copy; a compressed one is loaded once per process. HDF5 files
are opened read-only once per process, never inherited across ``fork``.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NPZ_SUFFIX = ".npz"
HDF5_SUFFIXES = (".h5", ".hdf5")
IMAGES_KEY = "images"
SPLITS = ("train", "val", "test")  # MedMNIST's ``<split>_images`` / ``<split>_labels``
LABELS_SUFFIX = "labels"
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # PKZIP local file header, 30 bytes
_CHUNK_BYTES = 1 << 26


@dataclass(frozen=True)
class ArrayInfo:
    """Shape and dtype of one array in a file, read from its header."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class ArrayFileContents:
    """What an array file holds: every array's header, the 1-D arrays' values.

    Attributes
    ----------
    infos : dict
        Key → :class:`ArrayInfo` for every array at the top level of the file.
    columns : dict
        Key → values (strings decoded to ``str``) for every 1-D array other than ``images``.
    matrices : dict
        Key → values for every 2-D numeric label array (a key ``labels`` or ending in
        ``_labels``: MedMNIST's (N, 1) and multi-label (N, K) arrays).
    """

    infos: dict[str, ArrayInfo]
    columns: dict[str, np.ndarray] = field(repr=False)
    matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def is_npz(path: Path | str) -> bool:
    return str(path).lower().endswith(NPZ_SUFFIX)


def read_contents(path: Path) -> ArrayFileContents:
    """List the arrays of an ``.npz`` or HDF5 file and read its 1-D arrays (not the images).

    Raises
    ------
    OSError, ValueError, zipfile.BadZipFile, KeyError
        From numpy or h5py when the file cannot be read; the caller words the error.
    """
    return _npz_contents(path) if is_npz(path) else _hdf5_contents(path)


def is_image_key(key: str) -> bool:
    """``images`` or MedMNIST's ``<split>_images``."""
    return key == IMAGES_KEY or key in {f"{s}_{IMAGES_KEY}" for s in SPLITS}


def _is_label_matrix(key: str, info: ArrayInfo) -> bool:
    is_labels = key == LABELS_SUFFIX or key.endswith("_" + LABELS_SUFFIX)
    return is_labels and len(info.shape) == 2 and info.dtype.kind in "uifb"


def _decode_strings(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "S" or (
        values.dtype.kind == "O" and len(values) and isinstance(values[0], bytes)
    ):
        return np.array([v.decode("utf-8") for v in values], dtype=object)
    return values


def _npz_member_info(zf: zipfile.ZipFile, name: str) -> ArrayInfo:
    with zf.open(name) as f:
        shape, _, dtype = _read_npy_header(f)
    return ArrayInfo(shape=shape, dtype=dtype)


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _npz_contents(path: Path) -> ArrayFileContents:
    infos: dict[str, ArrayInfo] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".npy"):
                infos[name[: -len(".npy")]] = _npz_member_info(zf, name)
    wanted = [
        k
        for k, info in infos.items()
        if not is_image_key(k) and len(info.shape) == 1 and not info.dtype.hasobject
    ]
    with np.load(path, allow_pickle=False) as z:
        columns = {k: _decode_strings(np.asarray(z[k])) for k in wanted}
        matrices = {k: np.asarray(z[k]) for k, i in infos.items() if _is_label_matrix(k, i)}
    return ArrayFileContents(infos=infos, columns=columns, matrices=matrices)


def _hdf5_contents(path: Path) -> ArrayFileContents:
    import h5py

    infos: dict[str, ArrayInfo] = {}
    columns: dict[str, np.ndarray] = {}
    matrices: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        for key, node in f.items():
            if not isinstance(node, h5py.Dataset):
                continue
            infos[key] = ArrayInfo(shape=tuple(node.shape), dtype=node.dtype)
            if _is_label_matrix(key, infos[key]):
                matrices[key] = np.asarray(node[...])
            if is_image_key(key) or node.ndim != 1:
                continue
            if h5py.check_string_dtype(node.dtype) is not None:
                columns[key] = np.asarray(node.asstr()[...], dtype=object)
            else:
                columns[key] = _decode_strings(np.asarray(node[...]))
    return ArrayFileContents(infos=infos, columns=columns, matrices=matrices)


def _npz_memmap(path: str, name: str) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npz`` member; None when it is compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
        f.seek(header[-2] + header[-1], os.SEEK_CUR)  # file name and extra field
        shape, fortran, dtype = _read_npy_header(f)
        offset = f.tell()
    if dtype.hasobject:
        return None
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


class LazyArray:
    """One array of an array file (``images`` by default), opened on first use in each process.

    Pickles as its path and key only, so that a copy sent to a DataLoader worker opens its own
    handle.

    Parameters
    ----------
    path : str
        An ``.npz`` or HDF5 file.
    key : str
        The array's name in the file.
    """

    def __init__(self, path: str, key: str = IMAGES_KEY) -> None:
        self.path = path
        self.key = key
        self._pid: int | None = None
        self._array: Any = None
        self._file: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.key = state["path"], state.get("key", IMAGES_KEY)
        self._pid, self._array, self._file = None, None, None

    def _open(self) -> Any:
        if self._pid == os.getpid():
            return self._array
        if is_npz(self.path):
            self._array = _npz_memmap(self.path, self.key + ".npy")
            if self._array is None:
                with np.load(self.path, allow_pickle=False) as z:
                    self._array = z[self.key]
        else:
            import h5py

            self._file = h5py.File(self.path, "r")
            self._array = self._file[self.key]
        self._pid = os.getpid()
        return self._array

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._open()[i])

    def chunks(self) -> Iterator[np.ndarray]:
        """The array in row blocks of about 64 MiB, little-endian and C-contiguous."""
        array = self._open()
        row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
        step = max(1, _CHUNK_BYTES // row_bytes)
        for start in range(0, int(array.shape[0]), step):
            block = np.asarray(array[start : start + step])
            yield np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<"))
