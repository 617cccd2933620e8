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

Compressed pixel data is decoded by pydicom's plugins: RLE and deflate by pydicom itself,
baseline JPEG and JPEG 2000 by Pillow, and JPEG Lossless, JPEG-LS, 12-bit JPEG and JPEG 2000 by
pylibjpeg with its libjpeg and openjpeg plugins (the extra ``pip install 'fmprobe[dicom]'``;
an image that needs it says so in its unreadable reason). A file without pixel data (a
structured report, an RT plan) is unreadable with the reason "no pixel data".

pydicom's warnings while one file is read (invalid values, excess padding, a VR mismatch) are
not shown: decoding goes on as pydicom decides, and they are kept in the image's
``info["dicom_warnings"]``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmprobe.data.pixels import short_reason, to_rgb, to_unit, unit_to_uint8
from fmprobe.errors import ImageReadError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
DICOM_EXTRA = "pip install 'fmprobe[dicom]'"
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
# the packages of the ``dicom`` extra: pylibjpeg and its JPEG / JPEG 2000 plugins
_EXTRA_MODULES = ("pylibjpeg", "libjpeg", "openjpeg")
# where the warnings of a DICOM read come from (pydicom, its plugins, Pillow as one of them)
_DECODER_PACKAGES = ("pydicom", "pylibjpeg", "libjpeg", "openjpeg", "PIL")
# element groups every image IOD has (patient, study, image pixel): a forced read of a file
# that is not DICOM at all finds none of them
_DICOM_GROUPS = frozenset({0x0008, 0x0010, 0x0020, 0x0028})
_REASON_LIMIT = 320


def has_dicom_magic(path: str | Path) -> bool:
    """True when ``path`` holds ``DICM`` at byte 128 (a DICOM Part 10 file); reads 132 bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` suffix or the ``DICM`` magic at byte 128."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(path)


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


def read_dicom(path: str | Path) -> Image.Image:
    """Decode the first frame of a DICOM file as an 8-bit RGB image.

    Parameters
    ----------
    path : str or Path
        A DICOM file (Part 10, or a legacy file without the file meta header).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``; see the module docstring for the grey-level mapping.
        ``info["dicom_warnings"]`` holds the warnings pydicom gave while reading (a tuple of
        str, often empty).

    Raises
    ------
    ImageReadError
        When the file is not DICOM, holds no pixel data, its compression has no decoder here
        (the message names the extra to install), its pixel data does not decode (the
        decoders' own reasons) or the modality LUT cannot be applied.

    Examples
    --------
    >>> from pydicom.data import get_testdata_file
    >>> img = read_dicom(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))  # doctest: +SKIP
    >>> img.mode, img.size  # doctest: +SKIP
    ('RGB', (64, 64))
    """
    with _decoder_warnings() as caught:
        ds, pixels = _decode_first_frame(Path(path))
        image = _to_rgb(ds, pixels)
    image.info["dicom_warnings"] = tuple(caught)
    return image


def _to_rgb(ds: Any, pixels: np.ndarray) -> Image.Image:
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


@contextmanager
def _decoder_warnings() -> Iterator[list[str]]:
    """Collect the warnings of pydicom and its plugins (their text, in order) instead of
    showing them; any other warning raised meanwhile (another thread's) is shown as usual."""
    texts: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            try:
                yield texts
            finally:
                caught = list(log)
    finally:
        for w in caught:
            if _from_decoder(w):
                texts.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _from_decoder(w: warnings.WarningMessage) -> bool:
    parts = Path(w.filename).parts
    return any(p in parts for p in _DECODER_PACKAGES)


def _reason(text: str) -> str:
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def _read_dataset(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass  # no preamble and magic: a legacy file without the file meta header, or no DICOM
    ds = pydicom.dcmread(path, force=True)
    tags = ds.keys()  # the tags only: converting a garbage element could raise
    if not any(tag.group in _DICOM_GROUPS for tag in tags):
        raise ImageReadError("not a DICOM file: no 'DICM' magic at byte 128 and no DICOM elements")
    return ds


def _decode_first_frame(path: Path) -> tuple[Any, np.ndarray]:
    try:
        ds = _read_dataset(path)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(_reason(f"DICOM not readable: {short_reason(exc)}")) from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        kind = f" ({getattr(sop, 'name', sop)})" if sop else ""
        raise ImageReadError(f"DICOM holds no pixel data{kind}: not an image")
    syntax = _transfer_syntax(ds)
    _check_decoder(syntax)
    try:
        ds.pixel_array_options(index=0)
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise ImageReadError(_decode_failure(syntax, exc)) from None
    if pixels.ndim not in (2, 3):
        raise ImageReadError(f"DICOM pixel data has shape {pixels.shape}; expected one frame")
    return ds, pixels


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's transfer syntax; legacy files without one: inferred from the encoding."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if not little:
            meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return meta.TransferSyntaxUID


def _syntax_name(syntax: Any) -> str:
    name = getattr(syntax, "name", "") or ""
    return f"{name} ({syntax})" if name and name != str(syntax) else str(syntax)


def _extra_installed() -> bool:
    for module in _EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            return False
    return True


def _check_decoder(syntax: Any) -> None:
    """One line naming the extra when no decoder for ``syntax`` is installed."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(
            f"DICOM transfer syntax {_syntax_name(syntax)} has no pixel data decoder in pydicom"
        ) from None
    if not decoder.is_available:
        raise ImageReadError(
            f"DICOM {_syntax_name(syntax)} needs a decoder that is not installed: "
            f"{DICOM_EXTRA} (pylibjpeg with its libjpeg and openjpeg plugins)"
        )


def _decode_failure(syntax: Any, exc: Exception) -> str:
    """The decoders' reasons on one line; the extra named when it would add decoders."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Unable to decode"):
        lines = lines[1:]  # pydicom's header above one line per plugin
    detail = "; ".join(lines) or type(exc).__name__
    text = f"DICOM pixel data not decodable ({_syntax_name(syntax)}): {detail}"
    if getattr(syntax, "is_compressed", False) and not _extra_installed():
        hint = f"; {DICOM_EXTRA} adds the pylibjpeg decoders"
        return _reason(text[: _REASON_LIMIT - len(hint)] + hint)
    return _reason(text)


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
