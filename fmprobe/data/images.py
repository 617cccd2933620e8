"""Decoding one image file into an 8-bit RGB PIL image, the input of every model's preprocessing.

Data deeper than 8 bits (16-bit PNG/TIFF, float TIFF, DICOM) is mapped linearly to 0..255 in
float, from the image's own min..max (or, for DICOM, from its VOI window), so the signal is
never clipped away nor left in the low bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmprobe.errors import ImageReadError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | DICOM_SUFFIXES


def scale_to_uint8(
    values: np.ndarray, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """Map ``values`` linearly from ``lo..hi`` (default: their own min..max) to 0..255 uint8."""
    x = np.asarray(values, dtype=np.float64)
    lo = float(np.nanmin(x)) if lo is None else lo
    hi = float(np.nanmax(x)) if hi is None else hi
    if not hi > lo:
        return np.zeros(x.shape, np.uint8)
    y = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.rint(np.nan_to_num(y) * 255.0).astype(np.uint8)


def to_rgb(array: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, 1) or (H, W, 3) array of any dtype as an 8-bit RGB image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageReadError(f"unsupported image shape {a.shape}")
    if a.ndim == 3:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = scale_to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(a), mode="RGB")


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI windowing to 0..1."""
    if function == "LINEAR_EXACT":
        return np.clip((x - (center - width / 2)) / width, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    width = max(width, 1.0)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float:
    """The first of a multi-valued DICOM element (several windows may be given)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return float(value)
    return float(next(iter(value)))


def read_dicom(path: Path) -> Image.Image:
    """Modality LUT (rescale), then VOI LUT or window, to 0..255; MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"DICOM not decodable: {str(exc).splitlines()[0][:120]}") from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:
        return to_rgb(pixels)
    x = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        x = np.asarray(apply_voi_lut(pixels, ds, index=0), dtype=np.float64)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        y = (x - lut.min()) / max(lut.max() - lut.min(), 1e-12)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(getattr(ds, "VOILUTFunction", "LINEAR")).upper()
        y = _window(x, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    else:
        lo, hi = float(x.min()), float(x.max())
        y = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return to_rgb(np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8))


def read_image(path: str | Path) -> Image.Image:
    """Read PNG/JPEG/TIFF (8 or 16 bits) or DICOM as an 8-bit RGB image.

    Raises
    ------
    ImageReadError
        With a short reason when the file cannot be decoded.
    """
    path = Path(path)
    if is_dicom(path):
        return read_dicom(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "RGB":
                return im.copy()
            if im.mode == "L":
                return im.convert("RGB")
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                return to_rgb(np.asarray(im))
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).split(" '")[0] if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ImageReadError(reason.strip() or type(exc).__name__) from None
