"""MedMNIST's one-file layout: ``train_images``, ``val_images``, ``test_images`` and
``<split>_labels`` in one ``.npz`` (MedMNIST v2 and MedMNIST+ at every size), read as one
table with a ``split`` column (``train`` / ``val`` / ``test``: the official split).

Rows are the splits one after the other, ids ``<split>-<row>`` (``train-000000``). Labels of
shape (N, 1) become one ``label`` column; multi-label arrays (N, K) become K columns named as
MedMNIST's ``INFO`` names them (ChestMNIST's 14 findings), else ``label_0`` .. ``label_{K-1}``.
Any other ``<split>_<name>`` array of one value per row becomes a column ``name``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe.data.arrays import IMAGES_KEY, LABELS_SUFFIX, SPLITS, ArrayFileContents
from fmprobe.errors import DataError

SPLIT_COLUMN = "split"
# MedMNIST v2 ``INFO[flag]["label"]`` of its one multi-label data set (medmnist/info.py)
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "chestmnist": (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
        "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
        "pleural", "hernia",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class MedMNISTLayout:
    """What :func:`read_layout` found: the table, and the image arrays in row order.

    Attributes
    ----------
    table : pandas.DataFrame
        ``id``, ``split``, then the label and other columns; one row per image.
    keys : tuple of str
        The image arrays (``train_images``, ...) in row order.
    counts : tuple of int
        Rows of each.
    """

    table: pd.DataFrame
    keys: tuple[str, ...]
    counts: tuple[int, ...]


def is_medmnist(contents: ArrayFileContents) -> bool:
    """True for MedMNIST's layout: ``<split>_images`` arrays and no ``images``."""
    names = set(contents.infos)
    return IMAGES_KEY not in names and any(f"{s}_{IMAGES_KEY}" in names for s in SPLITS)


def _flag(path: Path) -> str:
    """``chestmnist`` of ``chestmnist.npz`` and of MedMNIST+'s ``chestmnist_224.npz``."""
    return re.sub(r"_\d+$", "", path.stem.lower())


def _label_names(path: Path, k: int) -> list[str]:
    if k == 1:
        return ["label"]
    names = LABEL_NAMES.get(_flag(path))
    return list(names) if names and len(names) == k else [f"label_{j}" for j in range(k)]


def _check_image_arrays(contents: ArrayFileContents, splits: list[str], *, where: str) -> None:
    shapes = {s: contents.infos[f"{s}_{IMAGES_KEY}"].shape for s in splits}
    for split, shape in shapes.items():
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise DataError(
                f"{where}: `{split}_images` has shape {shape}; expected (N,H,W) or (N,H,W,C) "
                "with C 1 or 3 (3-D volumes such as MedMNIST's *3D sets are not images)"
            )
        if contents.infos[f"{split}_{IMAGES_KEY}"].dtype.kind not in "uifb":
            raise DataError(f"{where}: `{split}_images` is not numeric; expected uint8 images")
    if len({shape[1:] for shape in shapes.values()}) > 1:
        listed = ", ".join(f"{s}_images {shape}" for s, shape in shapes.items())
        raise DataError(f"{where}: the splits' images differ in size ({listed}); use one size")


def _split_columns(
    contents: ArrayFileContents, path: Path, splits: list[str], counts: list[int], *, where: str
) -> dict[str, np.ndarray]:
    """``<split>_<name>`` columns (1-D) and label arrays (2-D) of every split, one entry or
    row per image; other arrays (e.g. a 2-D ``train_embeddings``) are left out."""
    readable = set(contents.columns) | set(contents.matrices)
    names = sorted(
        {k.split("_", 1)[1] for k in readable if "_" in k and k.split("_", 1)[0] in splits}
    )
    out: dict[str, np.ndarray] = {}
    for name in names:
        keys = [f"{s}_{name}" for s in splits]
        parts: list[np.ndarray] = []
        for key, n in zip(keys, counts, strict=True):
            part = contents.matrices.get(key, contents.columns.get(key))
            if part is None or len(part) != n:
                held = f"has {len(part)} rows" if part is not None else "is missing"
                raise DataError(
                    f"{where}: `{key}` {held} but `{key.split('_')[0]}_images` has {n} images; "
                    f"every split needs its `<split>_{name}` with one entry per image"
                )
            parts.append(part)
        values = np.concatenate(parts)
        if values.ndim == 2:
            columns = _label_names(path, values.shape[1]) if name == LABELS_SUFFIX else [
                f"{name}_{j}" for j in range(values.shape[1])
            ]  # fmt: skip
            out.update({c: values[:, j] for j, c in enumerate(columns)})
        else:
            out[name] = values
    return out


def read_layout(contents: ArrayFileContents, *, path: Path, where: str) -> MedMNISTLayout:
    """The table and image arrays of a MedMNIST-layout file (see the module docstring).

    Raises
    ------
    DataError
        Images that are not 2-D, splits of different image sizes or arrays, a per-split
        array of the wrong length.
    """
    splits = [s for s in SPLITS if f"{s}_{IMAGES_KEY}" in contents.infos]
    _check_image_arrays(contents, splits, where=where)
    counts = [int(contents.infos[f"{s}_{IMAGES_KEY}"].shape[0]) for s in splits]
    table = pd.DataFrame(
        {
            "id": [f"{s}-{i:06d}" for s, n in zip(splits, counts, strict=True) for i in range(n)],
            SPLIT_COLUMN: np.repeat(splits, counts),
        }
    )
    for name, values in _split_columns(contents, path, splits, counts, where=where).items():
        if name in table.columns or name == "path":
            raise DataError(
                f"{where}: the arrays `<split>_{name}` would make a column `{name}`, a name "
                "fmprobe reserves; rename them"
            )
        table[name] = values
    keys = tuple(f"{s}_{IMAGES_KEY}" for s in splits)
    return MedMNISTLayout(table=table, keys=keys, counts=tuple(counts))
