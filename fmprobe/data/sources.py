"""Where a ``Dataset``'s images come from: memory, files below a folder, or an array file.

Each source loads image ``i`` as 8-bit RGB and yields the bytes of its content identity for the
dataset fingerprint, without decoding any image.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from fmprobe.data.arrays import IMAGES_KEY, LazyArray
from fmprobe.data.images import read_image
from fmprobe.data.pixels import to_rgb


class ImageSource(Protocol):
    """The images of a dataset, in table order."""

    @property
    def root(self) -> str | None:
        """The folder paths are relative to, or the array file; None for memory."""
        ...

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as 8-bit RGB; raises ``ImageReadError`` when it cannot be decoded."""
        ...

    def identity(self) -> Iterator[bytes]:
        """Bytes identifying the content of every image, cheap to compute."""
        ...


def _array_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    return f"{dtype.newbyteorder('<').str}{shape}\n".encode()


@dataclass(frozen=True, eq=False)
class MemoryImages:
    """Images held in memory as one (N, H, W[, C]) array (the built-in data sets)."""

    images: np.ndarray = field(repr=False)

    @property
    def root(self) -> str | None:
        return None

    def load(self, i: int) -> Image.Image:
        return to_rgb(self.images[i])

    def identity(self) -> Iterator[bytes]:
        data = np.ascontiguousarray(self.images, dtype=self.images.dtype.newbyteorder("<"))
        yield _array_header(data.shape, data.dtype)
        yield data.tobytes()


@dataclass(frozen=True)
class FileImages:
    """Image files, each at ``root / path`` (an absolute path stays as it is).

    The identity of a file is its path as listed (relative to ``root`` where it was given so)
    and its size in bytes: a copy of the data keeps it, a re-encoded image changes it.
    """

    folder: str
    paths: tuple[str, ...]

    @property
    def root(self) -> str | None:
        return self.folder

    def load(self, i: int) -> Image.Image:
        return read_image(Path(self.folder) / self.paths[i])

    def identity(self) -> Iterator[bytes]:
        for rel in self.paths:
            try:
                size = os.stat(Path(self.folder) / rel).st_size
            except OSError:
                size = -1
            yield f"{rel}\0{size}\n".encode()


@dataclass(frozen=True)
class ArrayImages:
    """Image arrays of an ``.npz`` or HDF5 file, opened lazily in each process: ``images``, or
    several arrays one after the other (MedMNIST's ``train_images``, ``val_images``,
    ``test_images``), so that row ``i`` of the dataset is row ``i - offset`` of one of them."""

    path: str
    arrays: tuple[LazyArray, ...] = field(repr=False, compare=False)
    offsets: tuple[int, ...] = (0,)

    @classmethod
    def open(
        cls, path: str, keys: tuple[str, ...] = (IMAGES_KEY,), counts: tuple[int, ...] = ()
    ) -> ArrayImages:
        """``keys`` in order; ``counts`` (rows per key) are needed when there are several."""
        offsets = tuple(int(o) for o in np.cumsum((0, *counts[:-1]))) if counts else (0,)
        return cls(path=path, arrays=tuple(LazyArray(path, k) for k in keys), offsets=offsets)

    @property
    def root(self) -> str | None:
        return self.path

    def load(self, i: int) -> Image.Image:
        k = bisect.bisect_right(self.offsets, i) - 1
        return to_rgb(self.arrays[k][i - self.offsets[k]])

    def identity(self) -> Iterator[bytes]:
        for array in self.arrays:
            first = True
            for block in array.chunks():
                if first:
                    yield _array_header(block.shape[1:], block.dtype)
                    first = False
                yield block.tobytes()
