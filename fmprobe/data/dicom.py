"""DICOM to 8-bit RGB: modality LUT, then VOI LUT or window, scaled to 0..255.

The pipeline of DICOM PS3.3 C.11 for greyscale images:

1. the modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept), through pydicom's
   ``apply_modality_lut``;
2. the first VOI LUT (VOI LUT Sequence, through pydicom's ``apply_voi``; its output range is the
   LUT's own min..max), else the first window (Window Center/Width with the VOI LUT Function:
   LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2-3), else the image's own min..max;
3. the result, in 0..1, scaled to 0..255; inverted for MONOCHROME1 so that dense is bright as
   in MONOCHROME2.

Only the first frame of a multi-frame object is decoded. Colour images (RGB, or YBR converted
to RGB by pydicom) pass through, deeper than 8 bits scaled by their Bits Stored; PALETTE COLOR
goes through the palette.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmprobe.data.images import short_reason, to_rgb, to_unit, unit_to_uint8
from fmprobe.errors import ImageReadError

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A VOI window: centre, width and function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Apply the window to ``x``, giving 0..1 (the standard's y_min..y_max)."""
        x = np.asarray(x, dtype=np.float64)
        if self.function == "SIGMOID":
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-4.0 * (x - self.center) / self.width))
        if self.function == "LINEAR_EXACT":
            lo, span = self.center - self.width / 2, self.width
        else:  # LINEAR: (x - (c - 0.5)) / (w - 1) + 0.5
            lo, span = self.center - 0.5 - (self.width - 1) / 2, self.width - 1
        if span == 0:  # LINEAR with width 1: a threshold
            return (x > lo).astype(np.float64)
        return np.clip((x - lo) / span, 0.0, 1.0)


def read_dicom(path: Path) -> Image.Image:
    """Decode the first frame of a DICOM file as an 8-bit RGB image.

    Parameters
    ----------
    path : Path
        A DICOM file (Part 10, or a legacy file without the file meta header).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``; see the module docstring for the grey-level mapping.

    Raises
    ------
    ImageReadError
        When pydicom cannot read the file or decode its pixels (unsupported compression,
        truncated data, no pixel data), or the modality LUT cannot be applied.
    """
    ds, pixels = _decode_first_frame(path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if pixels.ndim == 3:
        return _colour_to_rgb(pixels, ds)
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(pixels, ds)
    try:
        values = np.asarray(_apply_modality_lut(pixels, ds))
        unit = _voi_to_unit(values, ds)
    except Exception as exc:
        raise ImageReadError(f"DICOM grey-level mapping failed: {short_reason(exc)}") from None
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return to_rgb(unit_to_uint8(unit))


def _decode_first_frame(path: Path) -> tuple[Any, np.ndarray]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        _ensure_transfer_syntax(ds)
        ds.pixel_array_options(index=0)
        pixels = np.asarray(ds.pixel_array)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except Exception as exc:
        raise ImageReadError(f"DICOM not decodable: {short_reason(exc)}") from None
    if pixels.ndim not in (2, 3):
        raise ImageReadError(f"DICOM pixel data has shape {pixels.shape}; expected one frame")
    return ds, pixels


def _ensure_transfer_syntax(ds: Any) -> None:
    """Legacy files without a file meta header: infer the transfer syntax from the encoding."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = ds.file_meta
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if not little:
        meta.TransferSyntaxUID = ExplicitVRBigEndian
    else:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _apply_modality_lut(pixels: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(pixels, ds))


def _voi_to_unit(values: np.ndarray, ds: Any) -> np.ndarray:
    if ds.get("VOILUTSequence"):
        return _voi_lut_to_unit(values, ds)
    window = window_of(ds)
    if window is not None:
        return window.to_unit(values)
    return to_unit(values)


def _voi_lut_to_unit(values: np.ndarray, ds: Any) -> np.ndarray:
    """The first VOI LUT, its output mapped from the LUT's own min..max to 0..1."""
    from pydicom.pixels import apply_voi

    nr_entries, first_map, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    nr_entries = nr_entries or 2**16
    inputs = np.arange(first_map, first_map + nr_entries)
    table = np.asarray(apply_voi(inputs, ds, 0))
    # LUT inputs are integers; below the first mapped value → first entry, above → last
    clipped = np.clip(np.rint(values), inputs[0], inputs[-1]).astype(np.int64)
    out = apply_voi(clipped, ds, 0)
    return to_unit(out, lo=float(table.min()), hi=float(table.max()))


def _first_number(value: Any) -> float | None:
    """The first value of a (possibly multi-valued) numeric DICOM element, or None."""
    if value is None:
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
        value = next(iter(value), None)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def window_of(ds: Any) -> Window | None:
    """The first window of ``ds``, or None if it has none or an invalid one."""
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in WINDOW_FUNCTIONS:
        function = "LINEAR"
    if width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return Window(center=center, width=width, function=function)


def _colour_to_rgb(pixels: np.ndarray, ds: Any) -> Image.Image:
    if pixels.dtype == np.uint8:
        return to_rgb(pixels)
    bits = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    return to_rgb(unit_to_uint8(to_unit(pixels, lo=0.0, hi=float(2**bits - 1))))


def _palette_to_rgb(pixels: np.ndarray, ds: Any) -> Image.Image:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = np.asarray(apply_color_lut(pixels, ds))
    except Exception as exc:
        raise ImageReadError(f"DICOM palette not applicable: {short_reason(exc)}") from None
    if rgb.dtype == np.uint8:
        return to_rgb(rgb)
    return to_rgb(unit_to_uint8(to_unit(rgb, lo=0.0, hi=float(np.iinfo(rgb.dtype).max))))
