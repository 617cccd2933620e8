"""The embed stage end to end: features equal a direct computation, the store reads back with
plain zarr, kill -9 and resume, reruns, unreadable images, changed data, import/export, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from conftest import TINY_VIT, run_cli
from PIL import Image

from fmprobe.data import parse_data
from fmprobe.embed import embed
from fmprobe.encoders import create_encoder
from fmprobe.errors import ImageReadError, StoreError, UsageError
from fmprobe.store import export_feature, import_features, open_store, store_info

MODEL = "timm:vit_tiny_patch16_224"
KEY = "timm-vit_tiny_patch16_224"
KW = json.dumps(TINY_VIT)


def make_folder(root: Path, n_per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for label in ("benign", "malignant"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / label / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    store = tmp_path_factory.mktemp("s") / "digits.zarr"
    report = embed(
        data="builtin:digits",
        model=MODEL,
        store=str(store),
        random_init=True,
        model_kwargs=TINY_VIT,
        tokens=True,
        chunk_rows=512,
        batch_size=128,
        num_workers=0,
        progress=False,
    )
    return store, report


def test_features_equal_a_direct_computation(digits_store: tuple[Path, Any]) -> None:
    store, report = digits_store
    assert report.rows_embedded == 1797 and not report.unreadable
    data = parse_data("builtin:digits")
    enc = create_encoder(MODEL, random_init=True, model_kwargs=TINY_VIT)
    rows = [0, 1, 700, 1796]
    x = torch.stack([enc.transform(data.load(i)) for i in rows])
    with torch.no_grad():
        out = enc.forward(x, (0, 1, 2, 3), attn=True)
    g = zarr.open_group(str(store), mode="r")  # plain zarr, no fmprobe
    for k, layer in enumerate((0, 1, 2, 3)):
        tokens = out.patch[k]
        expected = {
            "cls": out.cls[k],
            "mean": tokens.mean(1),
            "attn": (out.attn[:, :, None] * tokens).sum(1),
        }
        for pool, ref in expected.items():
            got = g[f"{KEY}/block{layer}/{pool}"][rows]
            np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            g[f"{KEY}/block{layer}/tokens"][rows], tokens.half().numpy(), rtol=1e-3, atol=1e-3
        )


def test_store_reads_back_with_plain_zarr(digits_store: tuple[Path, Any]) -> None:
    from sklearn.datasets import load_digits

    store, _ = digits_store
    g = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(g["samples/label"][:], load_digits().target)
    assert len(set(g["samples/id"][:])) == 1797
    meta = g[KEY].attrs["fmprobe"]
    assert meta["layers"] == [0, 1, 2, 3] and meta["pools"] == ["cls", "mean", "attn"]
    assert meta["model"]["weights"]["kind"] == "random-init"
    assert meta["model"]["preprocess"]["input_size"] == [3, 32, 32]
    assert meta["dataset_fingerprint"] == g.attrs["fmprobe"]["dataset"]["fingerprint"]
    assert {"torch", "timm", "zarr"} <= set(meta["versions"])
    assert g[f"{KEY}/block3/cls"].shape == (1797, 32)
    assert g[f"{KEY}/block3/tokens"].shape == (1797, 16, 32)
    assert g[f"{KEY}/block3/tokens"].dtype == np.float16


def test_store_info_lists_features_with_shapes(digits_store: tuple[Path, Any]) -> None:
    store, _ = digits_store
    info = store_info(store)
    shapes = {f.key: f.shape for f in info.features}
    assert shapes[f"{KEY}/block0/mean"] == (1797, 32)
    assert len(shapes) == 4 * 4
    proc = run_cli("store", "info", str(store), "--json", check=True)
    assert json.loads(proc.stdout)["n_samples"] == 1797
    text = run_cli("store", "info", str(store), check=True).stdout
    assert f"{KEY}/block2/attn" in text and "1797×32" in text


def test_rerun_of_a_finished_embed_does_nothing(digits_store: tuple[Path, Any]) -> None:
    store, _ = digits_store
    before = zarr.open_group(str(store), mode="r")[f"{KEY}/block3/cls"][:]
    t0 = time.perf_counter()
    report = embed(
        data="builtin:digits",
        model=MODEL,
        store=str(store),
        random_init=True,
        model_kwargs=TINY_VIT,
        tokens=True,
        chunk_rows=512,
        progress=False,
    )
    assert report.rows_embedded == 0 and report.chunks_already_done == report.chunks_total
    assert time.perf_counter() - t0 < 10
    after = zarr.open_group(str(store), mode="r")[f"{KEY}/block3/cls"][:]
    np.testing.assert_array_equal(before, after)


def test_other_settings_under_the_same_name_are_refused(digits_store: tuple[Path, Any]) -> None:
    store, _ = digits_store
    with pytest.raises(StoreError, match="--name"):
        embed(data="builtin:digits", model=MODEL, store=str(store), random_init=True,
              model_kwargs=TINY_VIT, layers="-1", progress=False)  # fmt: skip


def _embed_cmd(store: Path, data: str = "builtin:digits") -> list[str]:
    return [
        "embed", "--data", data, "--model", MODEL, "--random-init", "--model-kwargs", KW,
        "--store", str(store), "--chunk-rows", "64", "--batch-size", "16", "--num-workers", "0",
        "--quiet",
    ]  # fmt: skip


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full, killed = tmp_path / "full.zarr", tmp_path / "killed.zarr"
    run_cli(*_embed_cmd(full), check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmprobe.cli", *_embed_cmd(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done_dir = killed / KEY / "_done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline:
        if done_dir.exists() and len(list(done_dir.iterdir())) >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    g = zarr.open_group(str(killed), mode="r")
    done = g[f"{KEY}/_done"][:]
    assert 0 < done.sum() < done.size, "the kill should land mid-run"
    run_cli(*_embed_cmd(killed), check=True)
    a, b = zarr.open_group(str(full), mode="r"), zarr.open_group(str(killed), mode="r")
    assert b[f"{KEY}/_done"][:].all()
    for layer in (0, 1, 2, 3):
        for pool in ("cls", "mean", "attn"):
            np.testing.assert_array_equal(
                a[f"{KEY}/block{layer}/{pool}"][:], b[f"{KEY}/block{layer}/{pool}"][:]
            )


def test_unreadable_image_is_recorded_and_skipped(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs")
    (folder / "malignant" / "img03.png").write_bytes(b"not a png at all")
    store = tmp_path / "s.zarr"
    report = embed(data=str(folder), model=MODEL, store=str(store), random_init=True,
                   model_kwargs=TINY_VIT, num_workers=0, progress=False)  # fmt: skip
    assert [i for i, _ in report.unreadable] == ["malignant/img03"]
    fs = open_store(store)
    row = int(np.flatnonzero(fs.ids == "malignant/img03")[0])
    x = fs.read_feature(f"{KEY}/block3/cls")
    assert np.isnan(x[row]).all() and np.isfinite(np.delete(x, row, axis=0)).all()
    assert list(fs.errors(KEY)["id"]) == ["malignant/img03"]
    assert list(fs.samples()["label"]) == ["benign"] * 6 + ["malignant"] * 6
    with pytest.raises(ImageReadError, match="malignant/img03"):
        embed(data=str(folder), model=MODEL, store=str(tmp_path / "t.zarr"), random_init=True,
              model_kwargs=TINY_VIT, num_workers=0, strict=True, progress=False)  # fmt: skip
    proc = run_cli(*_embed_cmd(tmp_path / "u.zarr", str(folder)), "--strict")
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0


def test_changed_dataset_is_refused_then_overwritten(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs")
    store = tmp_path / "s.zarr"
    args: dict[str, Any] = dict(model=MODEL, store=str(store), random_init=True,
                                model_kwargs=TINY_VIT, num_workers=0, progress=False)  # fmt: skip
    embed(data=str(folder), **args)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "benign" / "img00.png")
    with pytest.raises(StoreError, match="changed since"):
        embed(data=str(folder), **args)
    proc = run_cli(*_embed_cmd(store, str(folder)))
    assert (
        proc.returncode == 2 and "changed since" in proc.stderr and "Traceback" not in proc.stderr
    )
    report = embed(data=str(folder), overwrite=True, **args)
    assert report.rows_embedded == 12


def test_import_export_round_trip(tmp_path: Path, digits_store: tuple[Path, Any]) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 7)).astype(np.float32)
    table = pd.DataFrame({"id": [f"case{i}" for i in range(50)], "finding": rng.integers(0, 2, 50),
                          "site": ["a", "b"] * 25})  # fmt: skip
    np.save(tmp_path / "f.npy", feats)
    table.to_csv(tmp_path / "labels.csv", index=False)
    store = tmp_path / "imp.zarr"
    proc = run_cli("store", "import", str(store), "--name", "uni/last/cls", "--features",
                   str(tmp_path / "f.npy"), "--labels", str(tmp_path / "labels.csv"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fs = open_store(store)
    np.testing.assert_array_equal(fs.read_feature("uni/last/cls"), feats)
    pd.testing.assert_frame_equal(fs.samples(), table, check_dtype=False)
    # a second import in shuffled row order lands in the store's order
    perm = rng.permutation(50)
    np.save(tmp_path / "g.npy", feats[perm] * 2)
    table.iloc[perm].to_csv(tmp_path / "shuffled.csv", index=False)
    import_features(
        store, name="other", features=tmp_path / "g.npy", labels=tmp_path / "shuffled.csv"
    )
    np.testing.assert_array_equal(fs.read_feature("other"), feats * 2)
    for suffix in (".npy", ".h5"):
        out = tmp_path / f"out{suffix}"
        export_feature(store, key="uni/last/cls", out=out)
        if suffix == ".npy":
            np.testing.assert_array_equal(np.load(out), feats)
        else:
            import h5py

            with h5py.File(out, "r") as f:
                np.testing.assert_array_equal(f["features"][:], feats)
                assert [s.decode() for s in f["ids"][:]] == list(table["id"])
    # an embedded feature exported to HDF5 and imported into a new store is the same matrix
    dstore, _ = digits_store
    key = f"{KEY}/block1/mean"
    export_feature(dstore, key=key, out=tmp_path / "d.h5", table=tmp_path / "d.csv")
    import_features(
        tmp_path / "again.zarr", name="copy", features=tmp_path / "d.h5", labels=tmp_path / "d.csv"
    )
    np.testing.assert_array_equal(open_store(tmp_path / "again.zarr").read_feature("copy"),
                                  open_store(dstore).read_feature(key))  # fmt: skip
    with pytest.raises(UsageError, match="rows"):
        import_features(
            tmp_path / "x.zarr", name="bad", features=tmp_path / "f.npy", labels=tmp_path / "d.csv"
        )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--data", "builtin:digits", "--model", "timm:vit_smal_patch16_224", "--random-init"], "did you mean"),
        (["--data", "/no/such/folder", "--model", MODEL, "--random-init"], "does not exist"),
        (["--data", "builtin:digits", "--model", MODEL, "--random-init", "--layers", "40"], "blocks"),
        (["--data", "builtin:digits", "--model", MODEL, "--random-init", "--pools", "max"], "valid pools"),
        (["--data", "builtin:digits", "--model", "resnet50"], "source prefix"),
        (["--data", "builtin:digits", "--model", MODEL, "--random-init", "--model-kwargs", "{bad"], "JSON"),
        (["--data", "builtin:digits", "--model", "timm:resnet18", "--random-init", "--pools", "attn"], "--pools cls,mean"),
    ],
)  # fmt: skip
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    proc = run_cli("embed", "--store", str(tmp_path / "s.zarr"), "--quiet", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_missing_weights_file_is_refused_before_the_store_is_touched(tmp_path: Path) -> None:
    proc = run_cli("embed", "--data", "builtin:digits", "--model", MODEL, "--weights",
                   "/no/such/ckpt.pt", "--store", str(tmp_path / "s.zarr"), "--quiet")  # fmt: skip
    assert (
        proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert not (tmp_path / "s.zarr").exists()


def test_store_info_on_a_missing_store(tmp_path: Path) -> None:
    proc = run_cli("store", "info", str(tmp_path / "nope.zarr"))
    assert proc.returncode == 2 and "no feature store" in proc.stderr


def test_config_file_equals_the_flags(tmp_path: Path) -> None:
    import yaml

    flags, conf = tmp_path / "flags.zarr", tmp_path / "conf.zarr"
    cfg = {"data": "builtin:digits", "model": MODEL, "random_init": True, "model_kwargs": TINY_VIT,
           "layers": [1, -1], "pools": ["mean"], "chunk_rows": 512, "num_workers": 0, "quiet": True}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run_cli("embed", "--config", str(tmp_path / "c.yaml"), "--store", str(conf), check=True)
    run_cli("embed", "--data", "builtin:digits", "--model", MODEL, "--random-init", "--model-kwargs", KW,
            "--layers", "1,-1", "--pools", "mean", "--chunk-rows", "512", "--num-workers", "0", "--quiet",
            "--store", str(flags), check=True)  # fmt: skip
    a, b = open_store(flags), open_store(conf)
    assert (
        [f.key for f in a.features()]
        == [f.key for f in b.features()]
        == [f"{KEY}/block1/mean", f"{KEY}/block3/mean"]
    )
    np.testing.assert_array_equal(
        a.read_feature(f"{KEY}/block3/mean"), b.read_feature(f"{KEY}/block3/mean")
    )
    (tmp_path / "bad.yaml").write_text("batch_sise: 3\n")
    proc = run_cli("embed", "--config", str(tmp_path / "bad.yaml"), "--store", str(conf))
    assert proc.returncode == 2 and "did you mean 'batch_size'" in proc.stderr


@pytest.mark.gpu
def test_cuda_features_match_cpu(tmp_path: Path) -> None:
    common: dict[str, Any] = dict(data="builtin:digits", model=MODEL, random_init=True, model_kwargs=TINY_VIT,
                                  num_workers=2, progress=False)  # fmt: skip
    embed(store=str(tmp_path / "cpu.zarr"), device="cpu", **common)
    embed(store=str(tmp_path / "gpu.zarr"), device="cuda", amp=False, **common)
    a, b = open_store(tmp_path / "cpu.zarr"), open_store(tmp_path / "gpu.zarr")
    for f in a.features():
        np.testing.assert_allclose(
            a.read_feature(f.key), b.read_feature(f.key), rtol=1e-3, atol=1e-4
        )


def test_xarray_opens_the_whole_store_with_ids_as_the_sample_coordinate(
    digits_store: tuple[Path, Any],
) -> None:
    xr = pytest.importorskip("xarray")
    store, _ = digits_store
    tree = xr.open_datatree(str(store), engine="zarr", consolidated=False)
    ids = open_store(store).ids
    node = tree[f"{KEY}/block3"]
    assert list(node["cls"].coords["sample"].values) == list(ids)
    assert node["cls"].dims == ("sample", "feature")
    assert node["tokens"].dims == ("sample", "token", "feature")
    np.testing.assert_array_equal(
        node["mean"].values, zarr.open_group(str(store), mode="r")[f"{KEY}/block3/mean"][:]
    )
