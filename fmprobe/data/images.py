"""Decoding one image file into an 8-bit RGB PIL image, the input of every model's preprocessing.

Data deeper than 8 bits (16-bit PNG/TIFF, 32-bit integer or float TIFF, arrays) is mapped
linearly to 0..255 in float from the image's own min..max, so the signal is never clipped away
nor left in the low bits; a constant image maps to 0. 8-bit data is left as it is. DICOM goes
through :mod:`fmprobe.data.dicom` (modality LUT, VOI LUT or window, MONOCHROME1 inverted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fmprobe.errors import ImageReadError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | DICOM_SUFFIXES
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"


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


def is_dicom(path: Path) -> bool:
    """True for a ``.dcm``/``.dicom`` suffix or the ``DICM`` magic at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def _is_deep(mode: str) -> bool:
    """PIL modes holding more than 8 bits per sample: I, I;16*, I;32*, F."""
    return mode.startswith(("I", "F"))


def _pil_to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if _is_deep(im.mode):
        return to_rgb(np.asarray(im))
    if im.mode in ("P", "PA"):  # via RGBA: palette transparency would warn on a direct convert
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def _read_pil(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_rgb(im)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except ImageReadError:
        raise
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBomb...
        # UnidentifiedImageError's message ends with the path: keep the reason only
        reason = short_reason(exc).split(" '", 1)[0]
        raise ImageReadError(reason) from None


def read_image(path: str | Path) -> Image.Image:
    """Read PNG/JPEG/TIFF/BMP (8 or 16 bits, integer or float) or DICOM as 8-bit RGB.

    Parameters
    ----------
    path : str or Path
        The file; DICOM is recognised by suffix or by its magic, the rest by content.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``. Data deeper than 8 bits is scaled linearly from the image's own
        min..max to 0..255; DICOM as described in :func:`fmprobe.data.dicom.read_dicom`.

    Raises
    ------
    ImageReadError
        With a short reason ("cannot identify image file", "image file is truncated ...")
        when the file cannot be decoded.
    """
    path = Path(path)
    if is_dicom(path):
        from fmprobe.data.dicom import read_dicom

        return read_dicom(path)
    return _read_pil(path)
