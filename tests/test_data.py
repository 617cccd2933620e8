"""Dataset readers against independent references: sklearn's digits, hand-computed scaling and
DICOM windowing, files the tests write with PIL, pydicom, h5py, pandas and numpy."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from fmprobe.cli import main
from fmprobe.data import Dataset, parse_data, read_image
from fmprobe.data.dicom import is_dicom
from fmprobe.errors import DataError, ImageReadError


def rgb(img: Image.Image) -> np.ndarray:
    """The grey channel of an RGB image whose three channels are equal, as int."""
    assert img.mode == "RGB"
    a = np.asarray(img)
    np.testing.assert_array_equal(a[..., 0], a[..., 1])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
    return a[..., 0].astype(int)


def by_hand(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The linear map lo..hi → 0..255, written out independently of the package."""
    return np.rint(np.clip((np.asarray(values, float) - lo) / (hi - lo), 0, 1) * 255).astype(int)


# --- builtin -----------------------------------------------------------------------------------


def test_builtin_digits_equal_sklearn() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = parse_data("builtin:digits")
    assert ds.kind == "builtin" and len(ds) == 1797
    assert list(ds.table.columns) == ["id", "label"]
    assert ds.ids[0] == "digits-0000" and ds.ids[-1] == "digits-1796"
    np.testing.assert_array_equal(ds.table["label"], ref.target)
    for i in range(len(ds)):
        img = ds.load(i)
        assert img.size == (8, 8)
        np.testing.assert_array_equal(rgb(img), np.rint(ref.images[i] * 255 / 16))


# --- PNG / JPEG / TIFF -------------------------------------------------------------------------


def test_16bit_png_ramp_uses_the_full_range(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 12-bit data, 0..4080
    ramp[0, 0], ramp[-1, -1] = 0, 4095
    Image.fromarray(ramp).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "I;16"  # really written as 16 bits
    got = rgb(read_image(tmp_path / "a.png"))
    expected = np.rint(ramp.astype(float) * 255.0 / 4095.0)  # min 0, max 4095
    assert np.abs(got - expected).max() <= 1
    assert got.max() == 255 and got.min() == 0
    assert (got == 255).mean() < 0.02  # not saturated
    assert 100 < got.mean() < 155  # not dark


def test_16bit_png_and_tiff_scale_from_their_own_min(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(100, 4095, 64).astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "a.png")
    Image.fromarray(ramp).save(tmp_path / "a.tif")
    with Image.open(tmp_path / "a.tif") as im:
        assert im.mode == "I;16"
    for name in ("a.png", "a.tif"):
        got = rgb(read_image(tmp_path / name))
        assert np.abs(got - by_hand(ramp, 100, 4095)).max() <= 1
        assert got.min() == 0 and got.max() == 255


def test_32bit_and_float_tiff(tmp_path: Path) -> None:
    values = np.linspace(-3.5, 12.0, 40, dtype=np.float32).reshape(5, 8)
    Image.fromarray(values).save(tmp_path / "f.tif")
    got = rgb(read_image(tmp_path / "f.tif"))
    assert np.abs(got - by_hand(values, -3.5, 12.0)).max() <= 1
    ints = (np.arange(40, dtype=np.int32).reshape(5, 8) - 20) * 100_000
    Image.fromarray(ints).save(tmp_path / "i.tif")
    got = rgb(read_image(tmp_path / "i.tif"))
    assert np.abs(got - by_hand(ints, ints.min(), ints.max())).max() <= 1


def test_constant_16bit_image_maps_to_zero(tmp_path: Path) -> None:
    Image.fromarray(np.full((6, 6), 1234, np.uint16)).save(tmp_path / "c.png")
    assert rgb(read_image(tmp_path / "c.png")).max() == 0


def test_8bit_images_are_left_as_they_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "rgb.png")), colour)
    grey = rng.integers(10, 60, (12, 9), dtype=np.uint8)  # a narrow range: not stretched
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(rgb(read_image(tmp_path / "grey.png")), grey)
    rgba = np.dstack([colour, np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "rgba.png")), colour)
    palette = Image.fromarray(grey).convert("P")
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        np.asarray(read_image(tmp_path / "p.png")), np.asarray(palette.convert("RGB"))
    )


def test_jpeg_within_tolerance(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 255, (4, 4), dtype=np.uint8), np.ones((8, 8), np.uint8))
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(rgb(read_image(tmp_path / "a.jpg")) - smooth.astype(int)).mean() < 3
    colour = np.kron(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    Image.fromarray(colour).save(tmp_path / "c.jpeg", quality=95, subsampling=0)
    got = np.asarray(read_image(tmp_path / "c.jpeg")).astype(int)
    assert got.shape == (32, 32, 3) and np.abs(got - colour).mean() < 3
    with Image.open(tmp_path / "c.jpeg") as im:  # exactly PIL's own decoding
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))


# --- DICOM -------------------------------------------------------------------------------------


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    implicit: bool = False,
    **elements: Any,
) -> None:
    """A Part 10 file written with pydicom: grey uint16/int16 (2-D, or 3-D for frames) or RGB."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    else:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = int(pixels.dtype == np.int16)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)


RAMP = np.tile(np.arange(0, 4000, 50, dtype=np.uint16), (8, 1))
HU = RAMP * 2.0 - 1024  # RescaleSlope 2, RescaleIntercept -1024
RESCALE: dict[str, Any] = {"RescaleSlope": 2, "RescaleIntercept": -1024}


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1], to 0..255."""
    return np.rint(np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255).astype(int)


@pytest.mark.parametrize("implicit", [False, True])
def test_dicom_rescale_then_window(tmp_path: Path, implicit: bool) -> None:
    write_dicom(tmp_path / "a.dcm", RAMP, implicit=implicit, WindowCenter=1000,
                WindowWidth=2001, **RESCALE)  # fmt: skip
    expected = linear_window(HU, 1000, 2001)
    got = rgb(read_image(tmp_path / "a.dcm"))
    assert np.abs(got - expected).max() <= 1
    assert got.min() == 0 and got.max() == 255  # the window clips both ends of this ramp


def test_dicom_monochrome1_is_the_inverse_of_monochrome2(tmp_path: Path) -> None:
    window = {"WindowCenter": 1000, "WindowWidth": 2001, **RESCALE}
    write_dicom(tmp_path / "m2.dcm", RAMP, **window)
    write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1", **window)
    m1, m2 = rgb(read_image(tmp_path / "m1.dcm")), rgb(read_image(tmp_path / "m2.dcm"))
    assert np.abs(m1 - (255 - m2)).max() <= 1
    assert np.abs(m1 - (255 - linear_window(HU, 1000, 2001))).max() <= 1


def test_dicom_without_window_maps_the_rescaled_range(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", RAMP, **RESCALE)
    assert np.abs(rgb(read_image(tmp_path / "a.dcm")) - by_hand(HU, HU.min(), HU.max())).max() <= 1
    signed = (np.arange(64, dtype=np.int16).reshape(8, 8) - 20) * 50  # -1000..2150
    write_dicom(tmp_path / "s.dcm", signed)
    assert np.abs(rgb(read_image(tmp_path / "s.dcm")) - by_hand(signed, -1000, 2150)).max() <= 1


def test_dicom_linear_exact_and_sigmoid_windows(tmp_path: Path) -> None:
    write_dicom(tmp_path / "e.dcm", RAMP, WindowCenter=500, WindowWidth=1000,
                VOILUTFunction="LINEAR_EXACT", **RESCALE)  # fmt: skip
    assert np.abs(rgb(read_image(tmp_path / "e.dcm")) - by_hand(HU, 0, 1000)).max() <= 1
    write_dicom(tmp_path / "s.dcm", RAMP, WindowCenter=800, WindowWidth=3000,
                VOILUTFunction="SIGMOID", **RESCALE)  # fmt: skip
    expected = np.rint(255 / (1 + np.exp(-4 * (HU - 800) / 3000)))
    assert np.abs(rgb(read_image(tmp_path / "s.dcm")) - expected).max() <= 1


def test_dicom_voi_lut_after_rescale(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.sequence import Sequence

    pixels = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (4, 1))
    first_map, entries = 200, 800
    lut = np.rint(4095 * np.sqrt(np.arange(entries) / (entries - 1))).astype(int)
    item = DicomDataset()
    item.add_new("LUTDescriptor", "US", [entries, first_map, 12])
    item.add_new("LUTData", "US", lut.tolist())
    write_dicom(tmp_path / "v.dcm", pixels, RescaleSlope=1, RescaleIntercept=100,
                VOILUTSequence=Sequence([item]), WindowCenter=0, WindowWidth=1)  # fmt: skip
    rescaled = pixels.astype(int) + 100
    values = lut[np.clip(rescaled - first_map, 0, entries - 1)]  # the LUT wins over the window
    got = rgb(read_image(tmp_path / "v.dcm"))
    assert np.abs(got - by_hand(values, 0, 4095)).max() <= 1


def test_dicom_multiframe_takes_the_first_frame(tmp_path: Path) -> None:
    frames = np.stack([RAMP, np.full_like(RAMP, 60000), np.zeros_like(RAMP)])
    write_dicom(tmp_path / "mf.dcm", frames)
    got = rgb(read_image(tmp_path / "mf.dcm"))
    assert got.shape == RAMP.shape
    assert np.abs(got - by_hand(RAMP, RAMP.min(), RAMP.max())).max() <= 1


def test_dicom_rgb_passes_through_and_magic_without_suffix(tmp_path: Path) -> None:
    colour = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    write_dicom(tmp_path / "c.dcm", colour, photometric="RGB")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "c.dcm")), colour)
    write_dicom(tmp_path / "g.dcm", RAMP, **RESCALE)
    shutil.copy(tmp_path / "g.dcm", tmp_path / "g_named.png")  # DICM magic, misleading suffix
    np.testing.assert_array_equal(
        np.asarray(read_image(tmp_path / "g_named.png")), np.asarray(read_image(tmp_path / "g.dcm"))
    )


def bundled(name: str) -> str:
    """A pydicom test file, only if it is installed (no download)."""
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name, download=False)
    except Exception:  # pragma: no cover - depends on the pydicom install
        path = None
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not available offline")
    return str(path)


def test_pydicom_bundled_ct_and_mr() -> None:
    import pydicom

    ct = pydicom.dcmread(bundled("CT_small.dcm"))
    assert "WindowCenter" not in ct  # no window: the rescaled (HU) range maps to 0..255
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert (
        np.abs(rgb(read_image(bundled("CT_small.dcm"))) - by_hand(hu, hu.min(), hu.max())).max()
        <= 1
    )
    mr = pydicom.dcmread(bundled("MR_small.dcm"))
    values = mr.pixel_array * float(mr.get("RescaleSlope", 1)) + float(
        mr.get("RescaleIntercept", 0)
    )
    expected = linear_window(values, float(mr.WindowCenter), float(mr.WindowWidth))
    assert np.abs(rgb(read_image(bundled("MR_small.dcm"))) - expected).max() <= 1


def test_pydicom_bundled_palette_colour() -> None:
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(bundled("examples_palette.dcm"))
    ref = np.asarray(apply_color_lut(ds.pixel_array, ds)).astype(float)
    if ref.max() > 255:
        ref = np.rint(ref / 257)
    got = np.asarray(read_image(bundled("examples_palette.dcm")))
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1


def bundled_files() -> list[Path]:
    """Every DICOM file pydicom ships in its wheel (by suffix or magic), without the downloads
    ``get_testdata_files`` would also try."""
    from pydicom.data import DATA_ROOT

    root = Path(DATA_ROOT) / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file() and is_dicom(p))


def pydicom_reference(path: Path) -> np.ndarray:
    """The first frame as pydicom maps it: ``pixel_array``, then ``apply_modality_lut`` and
    ``apply_voi_lut`` (grey), ``apply_color_lut`` (palette), scaled to 0..255 by the range
    pydicom's own output can take; MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    with warnings.catch_warnings():  # the reference's own warnings are not under test
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
        arr = np.asarray(ds.pixel_array)
    frames = int(ds.get("NumberOfFrames") or 1)
    frame = arr[0] if frames > 1 else arr
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if frame.ndim == 3:  # colour: 8 bits as they are, deeper by Bits Stored
        if frame.dtype == np.uint8:
            return frame.astype(int)
        return by_hand(frame, 0, 2 ** int(ds.BitsStored) - 1)
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(frame, ds))
        return rgb.astype(int) if rgb.dtype == np.uint8 else by_hand(rgb, 0, 65535)
    values = np.asarray(apply_modality_lut(frame, ds), dtype=float)
    if "VOILUTSequence" in ds:
        out = np.asarray(apply_voi_lut(values, ds), dtype=float)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=float)
        grey = by_hand(out, lut.min(), lut.max())
    elif "WindowCenter" in ds:
        out = np.asarray(apply_voi_lut(values, ds), dtype=float)
        # the window's output range: what pydicom maps the far ends of any input to
        ends = np.asarray(apply_voi_lut(np.array([-1e12, 1e12]), ds), dtype=float)
        grey = by_hand(out, ends.min(), ends.max())
    else:
        grey = by_hand(values, values.min(), values.max())
    return 255 - grey if photometric == "MONOCHROME1" else grey


def pydicom_fails(path: Path) -> str | None:
    """pydicom's own reason for not giving pixels (None when it decodes them); a file without
    a transfer syntax gets the one its encoding implies, as fmprobe documents."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            if "PixelData" not in ds:
                return "no pixel data"
            if "TransferSyntaxUID" not in ds.file_meta and ds.original_encoding[1]:
                implicit = ds.original_encoding[0]
                ds.file_meta.TransferSyntaxUID = (
                    ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
                )
            ds.pixel_array  # noqa: B018
    except Exception as exc:
        return str(exc).splitlines()[-1].strip()
    return None


# The compressions issue 19 named, by a bundled file each: they must decode (with the
# ``dicom`` extra installed), not be recorded unreadable.
MUST_DECODE = {
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm": "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless, 16 bits
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",  # JPEG Extended, 12 bits
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE
}


def test_every_bundled_pydicom_file_decodes_as_pydicom_does_or_says_why() -> None:
    import pydicom

    files = bundled_files()
    assert len(files) > 100  # the 78 .dcm files and the DICOMDIR test tree of pydicom 3
    decoded, refused = [], {}
    for path in files:
        try:
            img = read_image(path)
        except ImageReadError as exc:
            refused[path] = str(exc)
            continue
        ref = pydicom_reference(path)
        got = np.asarray(img).astype(int)
        if ref.ndim == 2:
            got = rgb(img)
        assert got.shape == ref.shape, path.name
        assert np.abs(got - ref).max() <= 1, path.name
        decoded.append(path)
    for path, reason in refused.items():
        theirs = pydicom_fails(path)
        assert theirs is not None, f"{path.name}: pydicom decodes it, fmprobe says {reason!r}"
        assert "\n" not in reason and len(reason) <= 320, reason
        if theirs == "no pixel data":
            assert "no pixel data" in reason or "not a DICOM file" in reason, reason
        else:  # the decoder's own words, not a generic message
            assert theirs[:40] in reason or theirs.split(": ")[-1][:40] in reason, (reason, theirs)
    names = {p.name for p in decoded}
    for name, syntax in MUST_DECODE.items():
        assert name in names, refused.get(Path(bundled(name)))
        ds = pydicom.dcmread(bundled(name), stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == syntax
    print(f"{len(decoded)} decoded, {len(refused)} unreadable of {len(files)}")


def test_unreadable_reasons_of_known_bad_files() -> None:
    cases = {
        "rtplan.dcm": "DICOM holds no pixel data (RT Plan Storage): not an image",
        "MR_truncated.dcm": "less than expected (8130 vs 8192 bytes)",
        "JPEG-lossy.dcm": "scan start must be zero",  # an invalid 12-bit JPEG stream
        "dicomdirtests/DICOMDIR": "no pixel data (Media Storage Directory Storage)",
    }
    from pydicom.data import DATA_ROOT

    for name, words in cases.items():
        with pytest.raises(ImageReadError, match=re.escape(words)):
            read_image(Path(DATA_ROOT) / "test_files" / name)


def test_without_the_dicom_extra_the_reason_names_it(tmp_path: Path) -> None:
    """pylibjpeg and its plugins hidden from a fresh interpreter, as on an install without
    ``fmprobe[dicom]``: JPEG-LS has no decoder left, 12-bit JPEG only Pillow's (which fails)."""
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("pylibjpeg", "libjpeg", "openjpeg"):
                    raise ImportError(name)
        sys.meta_path.insert(0, Hide())
        from fmprobe.data import read_image
        for path in sys.argv[1:]:
            try:
                read_image(path)
                print("decoded")
            except Exception as exc:
                print(type(exc).__name__, exc)
        """
    )
    files = [
        bundled(n) for n in ("MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm", "MR_small.dcm")
    ]
    out = subprocess.run([sys.executable, "-W", "error", "-c", code, *files], capture_output=True,
                         text=True, check=True).stdout.splitlines()  # fmt: skip
    assert out[0].startswith("ImageReadError") and "pip install 'fmprobe[dicom]'" in out[0]
    assert "JPEG-LS Lossless" in out[0]
    assert out[1].startswith("ImageReadError") and "pip install 'fmprobe[dicom]'" in out[1]
    assert "12-bit precision" in out[1]  # Pillow's own reason comes first
    assert out[2] == "decoded"  # uncompressed files need no extra


def test_pydicom_warnings_are_kept_not_shown() -> None:
    """Both files make pydicom warn (excess padding; explicit VR read as implicit); with
    warnings as errors (pytest's setting) they still decode, the warnings kept on the image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        padded = read_image(bundled("MR_small_padded.dcm"))
        implicit = read_image(bundled("SC_rgb_jpeg.dcm"))
    assert "padding" in " ".join(padded.info["dicom_warnings"])
    assert "implicit VR" in " ".join(implicit.info["dicom_warnings"])
    assert np.abs(rgb(padded) - pydicom_reference(Path(bundled("MR_small_padded.dcm")))).max() <= 1


def test_folder_finds_dicom_files_without_a_suffix(tmp_path: Path) -> None:
    """A PACS-style export (pydicom's DICOMDIR test tree: patient/series/instance number),
    with a DICOMDIR, a README and a UID-named file beside the images."""
    from pydicom.data import DATA_ROOT

    tree = Path(DATA_ROOT) / "test_files" / "dicomdirtests"
    root = tmp_path / "export"
    for patient in ("77654033", "98892001"):
        shutil.copytree(tree / patient, root / patient)
    shutil.copy(tree / "DICOMDIR", root / "DICOMDIR")
    (root / "77654033" / "README").write_text("exported by a PACS\n" * 20)
    uid_name = "1.2.840.113619.2.55.3.604688119.969.320"
    shutil.copy(tree / "77654033" / "CR1" / "6154", root / "98892001" / uid_name)
    expected = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("README", "DICOMDIR")
    )
    assert len(expected) == 15  # 7 + 7 instances and the UID-named copy
    ds = parse_data(root)
    assert ds.ids == expected  # whole names: no suffix stripped from "....969.320"
    assert f"98892001/{uid_name}" in ds.ids
    assert ds.table["label"].tolist() == [p.split("/", 1)[0] for p in expected]
    for i, rel in enumerate(ds.ids):
        ref = pydicom_reference(root / rel)
        assert np.abs(rgb(ds.load(i)) - ref).max() <= 1, rel


def test_embed_records_non_images_and_shows_no_pydicom_warning(tmp_path: Path) -> None:
    from conftest import TINY_VIT

    root = tmp_path / "d"
    for label, names in {"a": ["MR_small_padded.dcm", "rtplan.dcm"],
                         "b": ["SC_rgb_jpeg.dcm", "CT_small.dcm"]}.items():  # fmt: skip
        (root / label).mkdir(parents=True)
        for name in names:
            shutil.copy(bundled(name), root / label / name)
    args = ["embed", "--data", str(root), "--model", "timm:vit_tiny_patch16_224",
            "--random-init", "--model-kwargs", json.dumps(TINY_VIT), "--store",
            str(tmp_path / "s.zarr"), "--num-workers", "0", "--quiet", "--json"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "warn" not in res.stderr.lower(), res.stderr
    report = json.loads(res.stdout)
    assert report["unreadable"] == [
        {"id": "a/rtplan", "reason": "DICOM holds no pixel data (RT Plan Storage): not an image"}
    ]
    assert report["rows_embedded"] == 4


# --- unreadable images -------------------------------------------------------------------------


def test_corrupt_files_raise_image_read_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageReadError, match="cannot identify image file"):
        read_image(tmp_path / "bad.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(
        tmp_path / "trunc.png"
    )
    data = (tmp_path / "trunc.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"(?i)truncated"):
        read_image(tmp_path / "trunc.png")
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ImageReadError, match="DICOM"):
        read_image(tmp_path / "bad.dcm")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nothing.png")


def test_truncated_dicom_raises_image_read_error(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", RAMP)
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "a.dcm").write_bytes(data[:-100])
    with pytest.raises(ImageReadError, match="DICOM"):
        read_image(tmp_path / "a.dcm")


def test_dataset_load_of_a_corrupt_file_raises_image_read_error(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    (root / "normal" / "x1.png").write_bytes(b"garbage")
    ds = parse_data(root)  # parsing decodes nothing
    assert rgb(ds.load(0))[0, 0] == len("normal")
    with pytest.raises(ImageReadError):
        ds.load(1)


# --- folders -----------------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    """normal/x0..x2.png and pneumonia/x0..x1.png; pixel value 10 * i + len(label)."""
    for label, n in (("pneumonia", 2), ("normal", 3)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 10 * i + len(label), np.uint8)).save(
                root / label / f"x{i}.png"
            )
    return root


def test_folder_labels_and_sorted_ids(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    (root / "normal" / "notes.txt").write_text("not an image")
    (root / "normal" / ".hidden.png").write_bytes(b"")
    (root / "pneumonia" / "sub").mkdir()
    Image.fromarray(np.full((4, 4), 99, np.uint8)).save(root / "pneumonia" / "sub" / "y.tif")
    ds = parse_data(root)
    assert ds.kind == "folder" and list(ds.table.columns) == ["id", "label"]
    assert ds.ids == ["normal/x0", "normal/x1", "normal/x2", "pneumonia/sub/y", "pneumonia/x0",
                      "pneumonia/x1"]  # fmt: skip
    assert list(ds.table["label"]) == ["normal"] * 3 + ["pneumonia"] * 3
    assert isinstance(ds.table.index, pd.RangeIndex)
    assert rgb(ds.load(5))[0, 0] == 10 + len("pneumonia")
    assert rgb(ds.load(3))[0, 0] == 99
    info = ds.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["kind"] == "folder" and info["n"] == 6 and info["columns"] == ["label"]
    assert info["root"] == str(root.resolve()) and info["spec"] == str(root)


def test_folder_of_loose_images_has_no_label(tmp_path: Path) -> None:
    for name in ("b", "a"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{name}.png")
    ds = parse_data(tmp_path)
    assert ds.ids == ["a", "b"] and list(ds.table.columns) == ["id"]


def test_mixed_root_and_subfolder_images_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "loose.png")
    with pytest.raises(DataError, match="sub-folder") as err:
        parse_data(root)
    assert "loose.png" in str(err.value)


# --- manifests ---------------------------------------------------------------------------------


def manifest_rows(tmp_path: Path) -> pd.DataFrame:
    make_folder(tmp_path / "imgs")
    return pd.DataFrame({
        "path": ["imgs/normal/x0.png", "imgs/pneumonia/x1.png", str(tmp_path / "imgs/normal/x2.png")],
        "id": ["001", "002", "103"],
        "finding": [0, 1, 0],
        "age": [50.5, None, 61.0],
        "sex": ["F", "M", "F"],
    })  # fmt: skip


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest(tmp_path: Path, suffix: str) -> None:
    rows = manifest_rows(tmp_path)
    path = tmp_path / f"m.{suffix}"
    rows.to_csv(path, index=False) if suffix == "csv" else rows.to_parquet(path, index=False)
    ds = parse_data(path)
    assert ds.kind == "manifest" and ds.ids == ["001", "002", "103"]  # leading zeros kept
    assert list(ds.table.columns) == ["id", "finding", "age", "sex"]
    assert ds.table["finding"].dtype == np.int64 and list(ds.table["finding"]) == [0, 1, 0]
    assert ds.table["age"].dtype == np.float64 and np.isnan(ds.table["age"][1])
    assert list(ds.table["sex"]) == ["F", "M", "F"]
    assert rgb(ds.load(1))[0, 0] == 10 + len("pneumonia")
    assert rgb(ds.load(2))[0, 0] == 20 + len("normal")  # the absolute path
    assert ds.root == str(tmp_path.resolve())


def test_manifest_ids_default_to_paths_and_columns_can_be_named(tmp_path: Path) -> None:
    rows = manifest_rows(tmp_path)
    rows.drop(columns="id").to_csv(tmp_path / "noid.csv", index=False)
    assert parse_data(tmp_path / "noid.csv").ids[:2] == ["imgs/normal/x0", "imgs/pneumonia/x1"]
    rows.rename(columns={"path": "file", "id": "patient"}).to_parquet(tmp_path / "n.parquet")
    ds = parse_data(tmp_path / "n.parquet", id_col="patient", path_col="file")
    assert ds.ids == ["001", "002", "103"] and list(ds.table.columns) == [
        "id",
        "finding",
        "age",
        "sex",
    ]
    integer_ids = rows.assign(id=[101, 102, 103])
    integer_ids.to_parquet(tmp_path / "i.parquet")
    assert parse_data(tmp_path / "i.parquet").ids == ["101", "102", "103"]


# --- array files -------------------------------------------------------------------------------

IMAGES16 = np.random.default_rng(0).integers(0, 65535, (4, 6, 5), dtype=np.uint16)


def write_arrays(path: Path, images: np.ndarray = IMAGES16, **arrays: Any) -> Path:
    """An .h5 (fixed-width bytes ids), or an .npz (str ids), with ids and a label."""
    import h5py

    arrays = {"label": np.array([0, 1, 1, 0]), **arrays}
    if path.suffix == ".npz":
        np.savez(path, images=images, ids=np.array(["p1", "p2", "p3", "p4"]), **arrays)
        return path
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["ids"] = np.array([b"p1", b"p2", b"p3", b"p4"])
        for key, value in arrays.items():
            f[key] = value
    return path


@pytest.mark.parametrize("name", ["a.h5", "a.hdf5", "a.npz"])
def test_array_files_ids_labels_and_scaling(tmp_path: Path, name: str) -> None:
    ds = parse_data(write_arrays(tmp_path / name, site=np.array([b"A", b"B", b"A", b"C"])))
    assert ds.kind == "array" and ds.ids == ["p1", "p2", "p3", "p4"]
    assert list(ds.table.columns) == ["id", "label", "site"]
    assert list(ds.table["label"]) == [0, 1, 1, 0] and list(ds.table["site"]) == [
        "A",
        "B",
        "A",
        "C",
    ]
    im = IMAGES16[2]
    np.testing.assert_array_equal(rgb(ds.load(2)), by_hand(im, im.min(), im.max()))


def test_array_files_of_other_dtypes_and_shapes(tmp_path: Path) -> None:
    import h5py

    rng = np.random.default_rng(3)
    grey8 = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    colour8 = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    floats = rng.normal(size=(3, 5, 4, 1)).astype(np.float32)
    np.savez_compressed(tmp_path / "g.npz", images=grey8)  # compressed: loaded, not mapped
    np.savez(tmp_path / "c.npz", images=colour8)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["images"] = floats
        f["ids"] = np.array(["α", "β", "γ"], dtype=h5py.string_dtype())  # variable-length
    g, c, fl = (parse_data(tmp_path / n) for n in ("g.npz", "c.npz", "f.h5"))
    assert g.ids == ["000000", "000001", "000002"] and list(g.table.columns) == ["id"]
    np.testing.assert_array_equal(rgb(g.load(1)), grey8[1])  # uint8: left as it is
    np.testing.assert_array_equal(np.asarray(c.load(2)), colour8[2])
    assert fl.ids == ["α", "β", "γ"]
    x = floats[0, ..., 0]
    np.testing.assert_array_equal(rgb(fl.load(0)), by_hand(x, x.min(), x.max()))


@pytest.mark.parametrize("name", ["a.h5", "a.npz"])
def test_array_dataset_pickles_and_works_in_worker_processes(tmp_path: Path, name: str) -> None:
    import torch

    ds = parse_data(write_arrays(tmp_path / name))
    first = np.asarray(ds.load(0))  # the parent opens its handle before the workers fork
    copy = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(np.asarray(copy.load(3)), np.asarray(ds.load(3)))
    assert copy.fingerprint() == ds.fingerprint() and copy.ids == ds.ids

    class Rows(torch.utils.data.Dataset[np.ndarray]):
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int) -> np.ndarray:
            return np.asarray(ds.load(i))

    loader = torch.utils.data.DataLoader(Rows(), batch_size=2, num_workers=2, collate_fn=list)
    got = [a for batch in loader for a in batch]
    assert len(got) == 4
    np.testing.assert_array_equal(got[0], first)
    for i in range(4):
        np.testing.assert_array_equal(got[i], np.asarray(ds.load(i)))


# --- MedMNIST's one-file layout ------------------------------------------------------------

# medmnist/info.py (MedMNIST v2.1.0), INFO["chestmnist"]["label"] in index order
CHESTMNIST_LABELS = ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                     "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema",
                     "fibrosis", "pleural", "hernia"]  # fmt: skip
MEDMNIST_COUNTS = {"train": 7, "val": 3, "test": 5}


def write_medmnist(path: Path, *, k: int = 1, channels: int = 0, compressed: bool = True) -> dict:
    """A file exactly as MedMNIST ships one: ``<split>_images`` uint8 (N, 28, 28) or
    (N, 28, 28, 3), ``<split>_labels`` uint8 (N, K), nothing else."""
    rng = np.random.default_rng(k + channels)
    arrays: dict[str, np.ndarray] = {}
    for split, n in MEDMNIST_COUNTS.items():
        shape = (n, 28, 28, channels) if channels else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2 if k > 1 else 9, (n, k), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


@pytest.mark.parametrize("compressed", [True, False])
def test_medmnist_file_with_the_official_split(tmp_path: Path, compressed: bool) -> None:
    arrays = write_medmnist(tmp_path / "pathmnist.npz", channels=3, compressed=compressed)
    ds = parse_data(tmp_path / "pathmnist.npz")
    assert ds.kind == "array" and list(ds.table.columns) == ["id", "split", "label"]
    splits = [s for s, n in MEDMNIST_COUNTS.items() for _ in range(n)]
    assert ds.table["split"].tolist() == splits
    assert ds.ids[:2] == ["train-000000", "train-000001"] and ds.ids[-1] == "test-000004"
    labels = np.concatenate([arrays[f"{s}_labels"][:, 0] for s in MEDMNIST_COUNTS])
    np.testing.assert_array_equal(ds.table["label"], labels)
    for i, (split, row) in enumerate((s, r) for s, n in MEDMNIST_COUNTS.items() for r in range(n)):
        expected = Image.fromarray(arrays[f"{split}_images"][row]).convert("RGB")
        np.testing.assert_array_equal(np.asarray(ds.load(i)), np.asarray(expected))
    copy = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(np.asarray(copy.load(12)), np.asarray(ds.load(12)))


def test_medmnist_multi_label_columns_are_named_as_medmnist_names_them(tmp_path: Path) -> None:
    for name in ("chestmnist.npz", "chestmnist_224.npz"):  # MedMNIST v2 and MedMNIST+ names
        arrays = write_medmnist(tmp_path / name, k=14)
        ds = parse_data(tmp_path / name)
        assert list(ds.table.columns) == ["id", "split", *CHESTMNIST_LABELS]
        labels = np.concatenate([arrays[f"{s}_labels"] for s in MEDMNIST_COUNTS])
        for j, finding in enumerate(CHESTMNIST_LABELS):
            np.testing.assert_array_equal(ds.table[finding], labels[:, j])
        assert rgb(ds.load(7)).tolist() == arrays["val_images"][0].astype(int).tolist()
    write_medmnist(tmp_path / "mine.npz", k=3)
    assert list(parse_data(tmp_path / "mine.npz").table.columns) == [
        "id", "split", "label_0", "label_1", "label_2"]  # fmt: skip


def test_medmnist_fingerprint_sees_every_split(tmp_path: Path) -> None:
    arrays = write_medmnist(tmp_path / "a.npz")
    fp = parse_data(tmp_path / "a.npz").fingerprint()
    arrays["val_images"][2, 5, 5] ^= 1
    np.savez_compressed(tmp_path / "a.npz", **arrays)
    assert parse_data(tmp_path / "a.npz").fingerprint() != fp


def test_medmnist_bad_layouts_give_one_line(tmp_path: Path) -> None:
    arrays = write_medmnist(tmp_path / "a.npz")
    del arrays["val_labels"]
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(DataError, match=r"`val_labels` is missing but `val_images` has 3 images"):
        parse_data(tmp_path / "b.npz")
    volumes = {f"{s}_images": np.zeros((2, 28, 28, 28), np.uint8) for s in MEDMNIST_COUNTS}
    np.savez(tmp_path / "organmnist3d.npz", **volumes)
    with pytest.raises(DataError, match=r"3-D volumes"):
        parse_data(tmp_path / "organmnist3d.npz")


# --- bad input: one line naming the problem ----------------------------------------------------

Setup = Callable[[Path], "str | Path"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _folder_with(path: Path, *names: str) -> Path:
    path.mkdir()
    for name in names:
        (path / name).write_bytes(b"")
    return path


def _manifest_with_images(path: Path, rows: dict[str, list[Any]]) -> Path:
    make_folder(path.parent / "imgs")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


BAD: list[tuple[str, Setup, tuple[str, ...]]] = [
    ("missing", lambda p: p / "nothing", ("does not exist", "manifest", "builtin:digits")),
    ("suffix", lambda p: _write(p / "a.txt", "x"), ("unknown format", "'.txt'", ".csv", ".npz")),
    ("empty folder", lambda p: _folder_with(p / "e"), ("no image files",)),
    ("no images", lambda p: _folder_with(p / "e", "a.txt", "b.json"), ("no image files", ".png")),
    ("garbage parquet", lambda p: _write(p / "m.parquet", "garbage"),
     ("m.parquet", "cannot be read", "`path` column")),
    ("empty csv", lambda p: _write(p / "m.csv", ""), ("m.csv", "cannot be read")),
    ("no path column", lambda p: _write(p / "m.csv", "paths,label\na.png,1\n"),
     ("no `path` column", "did you mean 'paths'", "columns: paths, label")),
    ("missing files", lambda p: _write(p / "m.csv", "path\nmissing1.png\nm2.png\nm3.png\nm4.png\n"),
     ("4 of 4 files listed", "do not exist", "'missing1.png', 'm2.png', 'm3.png'")),
    ("blank path", lambda p: _write(p / "m.csv", "path,label\n,1\n"), ("empty `path`",)),
    ("header only", lambda p: _write(p / "m.csv", "path,label\n"), ("no samples",)),
    ("duplicate ids", lambda p: _manifest_with_images(p / "m.csv", {
        "path": ["imgs/normal/x0.png", "imgs/normal/x1.png", "imgs/normal/x2.png",
                 "imgs/pneumonia/x0.png", "imgs/pneumonia/x1.png"] * 2,
        "id": ["a", "b", "c", "d", "e"] * 2}),
     ("5 ids occur more than once", "'a', 'b', 'c'", "unique")),
    ("blank id", lambda p: _manifest_with_images(p / "m.csv", {
        "path": ["imgs/normal/x0.png", "imgs/normal/x1.png"], "id": ["a", None]}), ("empty `id`",)),
    ("no images array", lambda p: _npz(p / "a.npz", image=np.zeros((2, 4, 4)), label=[1, 2]),
     ("no `images` array", "did you mean 'image'", "arrays: image, label")),
    ("length mismatch", lambda p: _npz(p / "b.npz", images=np.zeros((2, 4, 4)), label=[1, 2, 3]),
     ("'label' has 3 rows", "`images` has 2")),
    ("bad shape", lambda p: _npz(p / "c.npz", images=np.zeros((2, 4))),
     ("shape (2, 4)", "expected (N,H,W)")),
    ("duplicate array ids", lambda p: _npz(p / "d.npz", images=np.zeros((2, 4, 4)), ids=["a", "a"]),
     ("1 ids occur more than once", "'a'")),
    ("garbage h5", lambda p: _write(p / "e.h5", "garbage"), ("cannot be read", "HDF5")),
    ("builtin", lambda p: "builtin:digit", ("unknown built-in", "did you mean 'builtin:digits'")),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_data_gives_one_line(tmp_path: Path, setup: Setup, words: tuple[str, ...]) -> None:
    with pytest.raises(DataError) as err:
        parse_data(setup(tmp_path))
    message = str(err.value)
    assert "\n" not in message and message.startswith("--data ")
    for word in words:
        assert word in message


def test_named_id_column_must_exist(tmp_path: Path) -> None:
    manifest_rows(tmp_path).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="no `patient` column"):
        parse_data(tmp_path / "m.csv", id_col="patient")
    manifest_rows(tmp_path / "2").rename(columns={"finding": "patient"}).to_csv(
        tmp_path / "2" / "m.csv", index=False
    )
    with pytest.raises(DataError, match="`id` column besides"):
        parse_data(tmp_path / "2" / "m.csv", id_col="patient")


# --- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_of_a_folder_tracks_content_not_location(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    fp = parse_data(root).fingerprint()
    assert len(fp) == 64 and parse_data(root).fingerprint() == fp
    shutil.copytree(root, tmp_path / "copy")
    assert parse_data(tmp_path / "copy").fingerprint() == fp
    os.utime(root / "normal" / "x0.png", (1e9, 1e9))  # a new mtime alone changes nothing
    assert parse_data(root).fingerprint() == fp
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "normal" / "x0.png")  # other size
    assert parse_data(root).fingerprint() != fp
    copy = tmp_path / "copy"
    (copy / "normal" / "x2.png").rename(copy / "normal" / "x9.png")  # an id changes
    assert parse_data(copy).fingerprint() != fp
    (copy / "normal" / "x9.png").rename(copy / "normal" / "x2.png")
    assert parse_data(copy).fingerprint() == fp
    (copy / "normal" / "x2.png").rename(copy / "pneumonia" / "x2.png")  # a label changes
    assert parse_data(copy).fingerprint() != fp


def test_fingerprint_of_a_manifest(tmp_path: Path) -> None:
    rows = manifest_rows(tmp_path).drop(index=2)  # relative paths only
    rows.to_csv(tmp_path / "m.csv", index=False)
    fp = parse_data(tmp_path / "m.csv").fingerprint()
    shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-copy")
    assert parse_data(tmp_path.parent / f"{tmp_path.name}-copy" / "m.csv").fingerprint() == fp
    rows.assign(finding=[0, 0]).to_csv(tmp_path / "m.csv", index=False)  # a label changes
    assert parse_data(tmp_path / "m.csv").fingerprint() != fp
    rows.assign(id=["001", "003"]).to_csv(tmp_path / "m.csv", index=False)  # an id changes
    assert parse_data(tmp_path / "m.csv").fingerprint() != fp
    rows.to_csv(tmp_path / "m.csv", index=False)
    assert parse_data(tmp_path / "m.csv").fingerprint() == fp
    rows.assign(extra=[1, 2]).to_csv(tmp_path / "m.csv", index=False)  # metadata added
    assert parse_data(tmp_path / "m.csv").fingerprint() != fp


@pytest.mark.parametrize("name", ["a.h5", "a.npz"])
def test_fingerprint_of_an_array_file(tmp_path: Path, name: str) -> None:
    path = write_arrays(tmp_path / name)
    fp = parse_data(path).fingerprint()
    assert parse_data(path).fingerprint() == fp
    shutil.copy(path, tmp_path / f"b{path.suffix}")
    assert parse_data(tmp_path / f"b{path.suffix}").fingerprint() == fp
    changed = IMAGES16.copy()
    changed[3, 0, 0] ^= 1  # one pixel, one bit
    write_arrays(path, changed)
    assert parse_data(path).fingerprint() != fp
    write_arrays(path, label=np.array([0, 1, 1, 1]))
    assert parse_data(path).fingerprint() != fp
    write_arrays(path)
    assert parse_data(path).fingerprint() == fp


def test_fingerprint_is_the_same_in_another_process(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    manifest_rows(tmp_path).to_parquet(tmp_path / "m.parquet")
    h5 = write_arrays(tmp_path / "a.h5")
    specs = [str(root), str(tmp_path / "m.parquet"), str(h5), "builtin:digits"]
    here = [parse_data(s).fingerprint() for s in specs]
    assert len(set(here)) == len(here)
    code = (
        "import sys; from fmprobe.data import parse_data\n"
        "print(' '.join(parse_data(s).fingerprint() for s in sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, *specs], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.split() == here


def test_dataset_is_frozen(tmp_path: Path) -> None:
    ds = parse_data(make_folder(tmp_path / "f"))
    assert isinstance(ds, Dataset)
    with pytest.raises(AttributeError):
        ds.kind = "array"  # type: ignore[misc]
