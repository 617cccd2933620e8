"""Decoding one image file into an 8-bit RGB PIL image, the input of every model's preprocessing.

PNG/JPEG/TIFF/BMP go through PIL; data deeper than 8 bits (16-bit PNG/TIFF, 32-bit integer or
float TIFF) is scaled as :mod:`fmprobe.data.pixels` describes. DICOM (recognised by suffix or by
its ``DICM`` magic) goes through :mod:`fmprobe.data.dicom`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fmprobe.data.dicom import DICOM_SUFFIXES, is_dicom, read_dicom
from fmprobe.data.pixels import short_reason, to_rgb
from fmprobe.errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | DICOM_SUFFIXES


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

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> path = Path(tempfile.mkdtemp()) / "ramp.png"
    >>> Image.fromarray(np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)).save(path)
    >>> img = read_image(path)
    >>> img.mode, img.size, np.asarray(img)[..., 0].max()
    ('RGB', (8, 8), np.uint8(255))
    """
    path = Path(path)
    if is_dicom(path):
        return read_dicom(path)
    return _read_pil(path)
