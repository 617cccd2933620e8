"""Dataset readers against independent references: sklearn's digits, hand-computed scaling and
DICOM windowing, files the tests write with PIL, pydicom, h5py and numpy."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fmprobe.data import parse_data, read_image
from fmprobe.errors import DataError, ImageReadError


def rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    a = np.asarray(img)
    np.testing.assert_array_equal(a[..., 0], a[..., 1])
    return a[..., 0].astype(int)


def by_hand(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(int)


# --- images -----------------------------------------------------------------------------------


def test_builtin_digits_equal_sklearn() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = parse_data("builtin:digits")
    assert len(ds) == 1797 and list(ds.table.columns) == ["id", "label"]
    np.testing.assert_array_equal(ds.table["label"], ref.target)
    for i in (0, 5, 1796):
        np.testing.assert_array_equal(rgb(ds.load(i)), np.rint(ref.images[i] * 255 / 16))


def test_16bit_png_and_tiff_use_the_full_range(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(100, 4095, 64).astype(np.uint16), (16, 1))  # 12-bit data
    Image.fromarray(ramp).save(tmp_path / "a.png")
    Image.fromarray(ramp).save(tmp_path / "a.tif")
    for name in ("a.png", "a.tif"):
        got = rgb(read_image(tmp_path / name))
        assert np.abs(got - by_hand(ramp.astype(float), 100, 4095)).max() <= 1
        assert got.min() == 0 and got.max() == 255  # neither dark nor saturated


def test_8bit_png_and_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "a.png")), img)
    smooth = np.kron(rng.integers(0, 255, (4, 4), dtype=np.uint8), np.ones((8, 8), np.uint8))
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(rgb(read_image(tmp_path / "a.jpg")) - smooth.astype(int)).mean() < 3


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements: object
) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_window_and_monochrome1(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 4000, 50, dtype=np.uint16), (8, 1))
    write_dicom(tmp_path / "a.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1024,
                WindowCenter=1000, WindowWidth=2001)  # fmt: skip
    hu = pixels * 2.0 - 1024
    # DICOM linear window: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1]
    expected = np.rint(np.clip((hu - 999.5) / 2000 + 0.5, 0, 1) * 255).astype(int)
    got = rgb(read_image(tmp_path / "a.dcm"))
    assert np.abs(got - expected).max() <= 1
    write_dicom(tmp_path / "b.dcm", pixels, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1024,
                WindowCenter=1000, WindowWidth=2001)  # fmt: skip
    assert np.abs(rgb(read_image(tmp_path / "b.dcm")) - (255 - expected)).max() <= 1
    # no window: the rescaled range maps to 0..255
    write_dicom(tmp_path / "c.dcm", pixels)
    assert (
        np.abs(rgb(read_image(tmp_path / "c.dcm")) - by_hand(pixels.astype(float), 0, 3950)).max()
        <= 1
    )
    # DICOM magic without the suffix
    shutil.copy(tmp_path / "c.dcm", tmp_path / "c_nosuffix.png")
    np.testing.assert_array_equal(
        rgb(read_image(tmp_path / "c_nosuffix.png")), rgb(read_image(tmp_path / "c.dcm"))
    )


def test_pydicom_bundled_ct() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's test files are not installed")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert "WindowCenter" not in ds  # no window: the rescaled (HU) range maps to 0..255
    expected = by_hand(hu, hu.min(), hu.max())
    assert np.abs(rgb(read_image(path)) - expected).max() <= 1


def test_corrupt_file_raises_image_read_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "bad.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "trunc.png")
    data = (tmp_path / "trunc.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "trunc.png")


# --- dataset forms ----------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    for label, n in (("pneumonia", 2), ("normal", 3)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 10 * i + len(label), np.uint8)).save(
                root / label / f"x{i}.png"
            )
    return root


def test_folder_labels_and_sorted_ids(tmp_path: Path) -> None:
    ds = parse_data(make_folder(tmp_path / "f"))
    assert ds.ids == ["normal/x0", "normal/x1", "normal/x2", "pneumonia/x0", "pneumonia/x1"]
    assert list(ds.table["label"]) == ["normal"] * 3 + ["pneumonia"] * 2
    assert rgb(ds.load(4))[0, 0] == 10 + len("pneumonia")


def test_manifest_csv_and_parquet(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    rows = pd.DataFrame({
        "path": ["imgs/normal/x0.png", "imgs/pneumonia/x1.png", str(tmp_path / "imgs/normal/x2.png")],
        "id": [101, 102, 103],
        "finding": [0, 1, 0],
        "sex": ["F", "M", None],
    })  # fmt: skip
    rows.to_csv(tmp_path / "m.csv", index=False)
    rows.to_parquet(tmp_path / "m.parquet", index=False)
    for name in ("m.csv", "m.parquet"):
        ds = parse_data(tmp_path / name)
        assert ds.ids == ["101", "102", "103"]
        assert list(ds.table.columns) == ["id", "finding", "sex"]
        assert list(ds.table["finding"]) == [0, 1, 0]
        assert rgb(ds.load(1))[0, 0] == 10 + len("pneumonia")
    rows.drop(columns="id").to_csv(tmp_path / "noid.csv", index=False)
    assert parse_data(tmp_path / "noid.csv").ids[0] == "imgs/normal/x0"


def test_hdf5_and_npz_arrays_and_pickling(tmp_path: Path) -> None:
    import h5py

    rng = np.random.default_rng(0)
    images = rng.integers(0, 65535, (4, 6, 5), dtype=np.uint16)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["images"] = images
        f["ids"] = np.array([b"p1", b"p2", b"p3", b"p4"])
        f["label"] = np.array([0, 1, 1, 0])
    np.savez(
        tmp_path / "a.npz",
        images=images,
        ids=np.array(["p1", "p2", "p3", "p4"]),
        label=[0, 1, 1, 0],
    )
    for name in ("a.h5", "a.npz"):
        ds = parse_data(tmp_path / name)
        assert ds.ids == ["p1", "p2", "p3", "p4"] and list(ds.table["label"]) == [0, 1, 1, 0]
        im = images[2].astype(float)
        np.testing.assert_array_equal(rgb(ds.load(2)), by_hand(im, im.min(), im.max()))
        copy = pickle.loads(pickle.dumps(ds))
        np.testing.assert_array_equal(np.asarray(copy.load(3)), np.asarray(ds.load(3)))
        assert copy.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda p: p / "nothing", "does not exist"),
        (lambda p: (p / "a.txt").write_text("x") and p / "a.txt", "unknown format"),
        (lambda p: (p / "e").mkdir() or p / "e", "no image files"),
        (lambda p: (p / "m.csv").write_text("file,label\na.png,1\n") and p / "m.csv", "no `path` column"),
        (lambda p: (p / "m.csv").write_text("path\nmissing1.png\nmissing2.png\n") and p / "m.csv", "2 files listed"),
        (lambda p: (p / "m.parquet").write_bytes(b"garbage") and p / "m.parquet", "cannot be read"),
        (lambda p: np.savez(p / "a.npz", pixels=np.zeros((2, 4, 4))) or p / "a.npz", "no `images` array"),
        (lambda p: np.savez(p / "b.npz", images=np.zeros((2, 4, 4)), label=[1, 2, 3]) or p / "b.npz", "has 3 rows"),
        (lambda p: np.savez(p / "c.npz", images=np.zeros((2, 4, 4)), ids=["a", "a"]) or p / "c.npz", "more than once"),
        (lambda p: "builtin:digit", "did you mean 'builtin:digits'"),
    ],
)  # fmt: skip
def test_bad_data_gives_one_line(tmp_path: Path, setup, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError) as err:
        parse_data(setup(tmp_path))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_duplicate_ids_in_a_manifest(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    pd.DataFrame({"path": ["imgs/normal/x0.png", "imgs/normal/x1.png"], "id": ["a", "a"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    with pytest.raises(DataError, match="'a'"):
        parse_data(tmp_path / "m.csv")


def test_mixed_root_and_subfolder_images_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "loose.png")
    with pytest.raises(DataError, match="sub-folder"):
        parse_data(root)


def test_fingerprint_tracks_content_not_location(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    fp = parse_data(root).fingerprint()
    assert parse_data(root).fingerprint() == fp
    shutil.copytree(root, tmp_path / "copy")
    assert parse_data(tmp_path / "copy").fingerprint() == fp
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "normal" / "x0.png")  # other size
    assert parse_data(root).fingerprint() != fp
    (tmp_path / "copy" / "normal" / "x2.png").rename(tmp_path / "copy" / "normal" / "x9.png")
    assert parse_data(tmp_path / "copy").fingerprint() != fp
    (tmp_path / "copy" / "normal" / "x9.png").rename(tmp_path / "copy" / "pneumonia" / "x9.png")
    make_manifest = pd.DataFrame({"path": ["f/normal/x1.png"], "label": [0]})
    make_manifest.to_csv(tmp_path / "m.csv", index=False)
    fp_m = parse_data(tmp_path / "m.csv").fingerprint()
    make_manifest.assign(label=[1]).to_csv(tmp_path / "m.csv", index=False)
    assert parse_data(tmp_path / "m.csv").fingerprint() != fp_m
