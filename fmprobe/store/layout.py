"""The store's layout constants: the metadata key, the format version, and how feature arrays
are written (so that every reader can trust what it finds)."""

from __future__ import annotations

from typing import Any

ATTR = "fmprobe"  # the key of fmprobe's metadata in every group's and array's attributes
FORMAT_VERSION = 1


def feature_array_options(dims: tuple[str, ...]) -> dict[str, Any]:
    """``create_array`` options of a feature array: named dimensions (xarray reads them),
    every chunk stored even when it holds only NaN rows (so that a missing chunk file always
    means lost data), and a CRC-32C checksum after compression (so that a damaged chunk fails
    to decode instead of decoding to other numbers)."""
    import zarr

    return {
        "dimension_names": dims,
        "compressors": (zarr.codecs.ZstdCodec(level=0), zarr.codecs.Crc32cCodec()),
        "config": {"write_empty_chunks": True},
    }
