"""Whether a feature array holds every chunk it should, and whether those chunks decode.

Feature arrays are written with ``write_empty_chunks`` (a chunk of NaN rows is stored like any
other) and a CRC-32C checksum after compression, so a chunk file that is missing means lost
data (never "all fill value"), and a damaged one fails its checksum instead of decoding to
wrong numbers. Arrays of older stores (without ``identity`` in their metadata) are read as
they are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import zarr

from fmprobe.errors import StoreError, first_line
from fmprobe.store.layout import ATTR


@dataclass(frozen=True)
class Damage:
    """Rows of an array that cannot be read.

    Attributes
    ----------
    key : str
        The array's path in the store.
    start, stop : int
        The rows ``start:stop`` of the damaged (or missing) chunk.
    reason : str
        ``missing`` or why the chunk does not decode.
    """

    key: str
    start: int
    stop: int
    reason: str

    def text(self) -> str:
        what = "is missing" if self.reason == "missing" else f"cannot be read ({self.reason})"
        return f"{self.key}: the chunk of rows {self.start}–{self.stop - 1} {what}"


def guarded(arr: zarr.Array) -> bool:
    """Whether ``arr`` was written with the integrity guarantees (a chunk per row block)."""
    return "identity" in arr.attrs.get(ATTR, {})


def _stored_keys(arr: zarr.Array) -> set[str]:
    from zarr.core.sync import sync

    prefix = f"{arr.path}/" if arr.path else ""

    async def keys() -> list[str]:
        return [k async for k in arr.store.list_prefix(prefix)]

    return {k[len(prefix) :] for k in sync(keys())}


def _chunk_coords(arr: zarr.Array) -> list[tuple[int, ...]]:
    grid = [-(-s // c) for s, c in zip(arr.shape, arr.chunks, strict=True)]
    return list(itertools.product(*(range(g) for g in grid)))


def missing_chunks(arr: zarr.Array, key: str) -> list[Damage]:
    """Chunks of a guarded array that are not stored (each as the rows it covers)."""
    if not guarded(arr) or arr.size == 0:
        return []
    stored = _stored_keys(arr)
    rows = arr.chunks[0]
    out = []
    for coords in _chunk_coords(arr):
        if arr.metadata.encode_chunk_key(coords) not in stored:
            start = coords[0] * rows
            out.append(Damage(key, start, min(arr.shape[0], start + rows), "missing"))
    return _merge_rows(out)


def _merge_rows(damages: list[Damage]) -> list[Damage]:
    seen: dict[tuple[int, int], Damage] = {}
    for d in damages:
        seen.setdefault((d.start, d.stop), d)
    return sorted(seen.values(), key=lambda d: d.start)


def undecodable_chunks(arr: zarr.Array, key: str) -> list[Damage]:
    """Row blocks of ``arr`` that fail to decode (each read on its own)."""
    rows = arr.chunks[0]
    out = []
    for start in range(0, arr.shape[0], rows):
        stop = min(arr.shape[0], start + rows)
        try:
            arr[start:stop]
        except Exception as exc:  # checksum mismatch, codec errors: many types
            reason = first_line(exc)
            if "checksum" in reason.lower():
                reason = "checksum mismatch: the chunk file was damaged"
            out.append(Damage(key, start, stop, reason))
    return out


def damage_error(damage: list[Damage], *, path: str, embedded: bool) -> StoreError:
    """The one line for a damaged feature: what is wrong, and how to get the rows back."""
    first = damage[0]
    more = f" (and {len(damage) - 1} more chunks)" if len(damage) > 1 else ""
    fix = (
        "rerun the same `fmprobe embed` command (with --verify for a chunk that does not "
        "decode): it re-embeds just those chunks"
        if embedded
        else "import the feature again with `fmprobe store import --overwrite`"
    )
    return StoreError(f"{path}: {first.text()}{more}; {fix}")


def read_checked(arr: zarr.Array, key: str, *, path: str, embedded: bool) -> np.ndarray:
    """The whole array, refused with one line when a chunk is missing or does not decode."""
    missing = missing_chunks(arr, key)
    if missing:
        raise damage_error(missing, path=path, embedded=embedded)
    try:
        return np.asarray(arr[...])
    except Exception:
        bad = undecodable_chunks(arr, key)
        if not bad:
            raise
        raise damage_error(bad, path=path, embedded=embedded) from None
