"""Pixel arrays to 8-bit RGB: the linear maps every reader shares (PIL files, DICOM, arrays).

Data deeper than 8 bits is mapped linearly to 0..255 in float from a range (by default the
image's own min..max), so the signal is never clipped away nor left in the low bits; a constant
image maps to 0. 8-bit data is left as it is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from fmprobe.errors import ImageReadError


def short_reason(exc: BaseException, *, limit: int = 200) -> str:
    """An exception's message on one line (or its type name), at most ``limit`` characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_unit(values: np.ndarray, *, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``values`` linearly from ``lo..hi`` to 0..1 (float64), clipped.

    Parameters
    ----------
    values : numpy.ndarray
        Any real-valued array.
    lo, hi : float, optional
        The range mapped to 0..1; by default the min and max of the finite values.

    Returns
    -------
    numpy.ndarray
        float64 in [0, 1]; NaN maps to 0, and everything maps to 0 when ``hi <= lo``
        (a constant image).
    """
    x = np.asarray(values, dtype=np.float64)
    if lo is None or hi is None:
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            return np.zeros(x.shape)
        lo = float(finite.min()) if lo is None else lo
        hi = float(finite.max()) if hi is None else hi
    if not hi > lo:
        return np.zeros(x.shape)
    with np.errstate(invalid="ignore"):
        unit = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(unit, nan=0.0)


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    """0..1 floats to 0..255 uint8, rounded to the nearest integer."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def scale_to_uint8(
    values: np.ndarray, *, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """Map ``values`` linearly from ``lo..hi`` (default: their own min..max) to 0..255 uint8."""
    return unit_to_uint8(to_unit(values, lo=lo, hi=hi))


def to_rgb(array: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as an 8-bit RGB image.

    uint8 data is kept as it is; any other dtype is scaled from its own min..max to 0..255
    (jointly over the channels). Greyscale is replicated to 3 channels; a 4th channel is dropped.

    Raises
    ------
    ImageReadError
        For any other shape.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageReadError(f"unsupported image shape {a.shape}; expected (H,W) or (H,W,3)")
    if a.ndim == 3:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = scale_to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(a), mode="RGB")
