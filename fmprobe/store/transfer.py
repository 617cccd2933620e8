"""Features computed elsewhere in (``store import``) and out (``store export``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from fmprobe import tables
from fmprobe.errors import StoreError, UsageError, first_line
from fmprobe.store.core import ATTR, FeatureStore, open_store, store_exists
from fmprobe.store.layout import feature_array_options
from fmprobe.store.write import add_columns, create_store

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")


def _read_matrix(path: Path, dataset: str | None) -> np.ndarray:
    if not path.is_file():
        raise UsageError(f"--features {str(path)!r} does not exist")
    try:
        matrix = _load_matrix(path, dataset)
    except UsageError:
        raise
    except Exception as exc:  # a damaged file: numpy and h5py raise many types
        raise UsageError(f"--features {str(path)!r} cannot be read ({first_line(exc)})") from None
    if matrix.dtype.kind not in "fiub":
        raise UsageError(
            f"--features {str(path)!r} holds {matrix.dtype} values; features must be numbers "
            "(float or int)"
        )
    return matrix


def _load_matrix(path: Path, dataset: str | None) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            arrays = {k: v for k, v in f.items() if isinstance(v, h5py.Dataset) and v.ndim >= 2}
            if dataset is None:
                if len(arrays) != 1:
                    raise UsageError(
                        f"--features {str(path)!r} holds {len(arrays)} 2-D datasets "
                        f"({', '.join(arrays) or 'none'}); name one with --dataset"
                    )
                dataset = next(iter(arrays))
            if dataset not in arrays:
                raise UsageError(f"--dataset {dataset!r} not in {path}; it has {list(arrays)}")
            return np.asarray(arrays[dataset][...])
    raise UsageError(f"--features {str(path)!r}: expected a .npy or .h5/.hdf5 file")


def read_table(path: str | Path, *, what: str = "--labels") -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table whose ``id`` column names the samples (as strings)."""
    return tables.read_table(path, what=what, id_column=True)


def import_features(
    store: str | Path,
    *,
    name: str,
    features: str | Path,
    labels: str | Path,
    dataset: str | None = None,
    overwrite: bool = False,
) -> FeatureStore:
    """Bring embeddings computed elsewhere into ``store`` as feature ``name``.

    ``labels`` is a table whose rows match the matrix rows; its ``id`` column names them and its
    other columns become labels/metadata. A new store is created if ``store`` does not exist;
    otherwise the ids must be the store's (in any order) and rows are reordered to match.
    """
    if not name or set(name) - _NAME_OK or name.startswith(("/", "_", "samples")):
        raise UsageError(
            f"--name {name!r}: use letters, digits, '.', '_', '-' and '/' (e.g. uni/last/cls); "
            "it may not start with '_', '/' or 'samples'"
        )
    matrix = _read_matrix(Path(features), dataset)
    table = read_table(labels)
    if matrix.ndim not in (2, 3) or matrix.shape[0] != len(table):
        raise UsageError(
            f"--features has shape {matrix.shape} but --labels has {len(table)} rows; "
            "the matrix must be (rows, dim) with one row per table row"
        )
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        raise UsageError(f"--labels has {len(dup)} duplicate ids (first: {dup.iloc[0]!r})")
    sha = hashlib.sha256(np.ascontiguousarray(matrix).tobytes()).hexdigest()
    if not store_exists(store):
        digest = hashlib.sha256(
            pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()
        ).hexdigest()
        fs = create_store(
            store,
            table=table,
            dataset={
                "fingerprint": digest,
                "kind": "imported",
                "spec": str(labels),
                "n": len(table),
            },
        )
        order = np.arange(len(table))
    else:
        fs = open_store(store, mode="a")
        ids = fs.ids
        pos = pd.Series(np.arange(len(table)), index=table["id"].to_numpy())
        missing = set(ids) - set(pos.index)
        extra = set(pos.index) - set(ids)
        if missing or extra:
            raise StoreError(
                f"--labels ids do not match the store's {len(ids)} samples "
                f"({len(missing)} missing, {len(extra)} not in the store); "
                "import into a new store or fix the table"
            )
        order = pos.loc[ids].to_numpy()
        add_columns(fs, table.iloc[order].reset_index(drop=True))
    _replaceable(fs, name, overwrite=overwrite)
    data = matrix[order]
    dims = ("sample", "feature") if data.ndim == 2 else ("sample", "token", "feature")
    fill = 0 if data.dtype.kind in "iub" else np.nan
    arr = fs.root.create_array(
        name, shape=data.shape, dtype=data.dtype, fill_value=fill, overwrite=True,
        chunks=(min(len(data), 4096), *data.shape[1:]), **feature_array_options(dims),
    )  # fmt: skip
    arr[...] = data
    arr.attrs[ATTR] = {
        "kind": "feature",
        "imported": True,
        "identity": "sha256:" + sha,
        "source": str(Path(features).resolve()),
        "sha256": sha,
        "model": None,
        "layer": None,
        "pool": None,
    }
    return fs


def _replaceable(fs: FeatureStore, name: str, *, overwrite: bool) -> None:
    """``name`` may be written: new, or an imported feature replaced with ``overwrite``."""
    if name not in fs.root:
        if any(name.startswith(f"{m}/") for m in fs.models()):
            raise StoreError(
                f"--name {name!r} lies inside the model group {name.split('/')[0]!r} written by "
                "fmprobe embed; pick another name"
            )
        return
    node = fs.root[name]
    meta = node.attrs.get(ATTR, {})
    if isinstance(node, zarr.Group) or meta.get("kind") != "feature" or not meta.get("imported"):
        what = "a model group written by fmprobe embed" if meta.get("kind") == "model" else (
            "an embedded feature" if meta.get("kind") == "feature" else "a group of the store"
        )  # fmt: skip
        raise StoreError(
            f"--name {name!r} is {what}, not an imported feature: store import never replaces "
            "it; pick another name (replace embedded features with `fmprobe embed --overwrite`)"
        )
    if not overwrite:
        raise StoreError(f"{name!r} already exists in {fs.path}; pass --overwrite to replace it")


def export_feature(
    store: str | Path, *, key: str, out: str | Path, table: str | Path | None = None
) -> Path:
    """Write feature ``key`` to ``out`` (.npy, or .h5 with ``ids`` and the sample columns);
    ``table`` optionally writes the samples table (CSV/Parquet) beside a .npy. Every file is
    written to a temporary name and renamed into place."""
    out = Path(out)
    if out.suffix not in (".npy", ".h5", ".hdf5"):
        raise UsageError(f"--out {str(out)!r}: expected a .npy or .h5/.hdf5 file")
    if table is not None:
        tables.table_format(table, what="--table")
    fs = open_store(store)
    data = fs.read_feature(key)
    samples = fs.samples()
    with tables.atomic_path(out, what="--out") as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, data)
        else:
            _write_h5(tmp, data, samples, key)
    if table is not None:
        tables.write_table(samples, table, what="--table")
    return out


def _write_h5(path: Path, data: np.ndarray, samples: pd.DataFrame, key: str) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=data)
        for col in samples.columns:
            values = samples[col].to_numpy()
            if values.dtype.kind in "UOT":
                f.create_dataset(col if col != "id" else "ids", data=values.astype("S"))
            else:
                f.create_dataset(col, data=values)
        f.attrs["feature"] = key
