"""Stores and results on object storage: every stage on ``s3://`` URLs of a real S3 server
(moto's, on 127.0.0.1, started here) gives what the same run gives on local paths; killed runs
resume; shards racing to create a store end with one valid store; storage failures are one
line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import TINY_VIT, run_cli

from fmprobe.store import import_features, open_store
from fmprobe.sweep import merge, sweep

pytest.importorskip("s3fs", reason="object storage needs s3fs (pip install 'fmprobe[s3]')")
moto_server = pytest.importorskip("moto.server", reason="the local S3 server is moto's")

KEY = "timm-vit_tiny_patch16_224"
EMBED = ["--data", "builtin:digits", "--model", "timm:vit_tiny_patch16_224", "--random-init",
         "--model-kwargs", json.dumps(TINY_VIT), "--layers", "3", "--pools", "cls,mean",
         "--chunk-rows", "256", "--num-workers", "0", "--quiet"]  # fmt: skip
SWEEP = dict(features="*", tasks="y", n="10,40,all", seeds=4, C=0.5, seeds_per_unit=2,
             progress=False)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A bucket on a local S3 server; the environment points every client at it."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("bucket")
    try:
        yield "s3://bucket"
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def _arrays(store: str) -> dict[str, np.ndarray]:
    fs = open_store(store)
    return {f.key: fs.read_feature(f.key) for f in fs.features()}


def _table(path: str) -> pd.DataFrame:
    from fmprobe.storage import read_parquet

    return read_parquet(path).drop(columns="fit_seconds")


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("local") / "d.zarr"
    run_cli("embed", *EMBED, "--store", str(store), check=True)
    return store


def test_embed_on_s3_equals_the_local_store(s3: str, local_store: Path) -> None:
    url = f"{s3}/embed/d.zarr"
    run_cli("embed", *EMBED, "--store", url, check=True)
    got, want = _arrays(url), _arrays(str(local_store))
    assert got.keys() == want.keys() and len(got) == 2
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    again = run_cli("embed", *EMBED, "--store", url, "--json", check=True)
    assert json.loads(again.stdout)["rows_embedded"] == 0  # resumed: nothing left to do
    info = run_cli("store", "info", url, "--verify", "--json", check=True)
    assert json.loads(info.stdout)["damaged"] == []


def _feature_store(root: str | Path, tmp: Path) -> str:
    rng = np.random.default_rng(0)
    N = 200
    y = rng.integers(0, 2, N)
    X = rng.normal(size=(N, 6)).astype(np.float32)
    X[:, 0] += 2 * y
    np.save(tmp / "x.npy", X)
    pd.DataFrame({"id": [f"r{i}" for i in range(N)], "y": y}).to_csv(tmp / "t.csv", index=False)
    store = f"{root}/f.zarr"
    import_features(store, name="f/x", features=tmp / "x.npy", labels=tmp / "t.csv")
    return store


def test_sweep_shards_and_merge_on_s3_equal_a_local_run(s3: str, tmp_path: Path) -> None:
    local = _feature_store(tmp_path, tmp_path)
    remote = _feature_store(f"{s3}/sweep", tmp_path)
    sweep(store=local, out=str(tmp_path / "r.parquet"), **SWEEP)  # type: ignore[arg-type]
    out = f"{s3}/sweep/r.parquet"
    sweep(store=remote, out=out, save_predictions=True, **SWEEP)  # type: ignore[arg-type]
    want = _table(str(tmp_path / "r.parquet")).drop(columns="store_fingerprint")
    pd.testing.assert_frame_equal(_table(out).drop(columns="store_fingerprint"), want)
    for i in range(2):
        sweep(store=remote, out=f"{s3}/sweep/s.parquet", shard=f"{i}/2", **SWEEP)  # type: ignore[arg-type]
    shards = [f"{s3}/sweep/s.shard-{i}-of-2.parquet" for i in range(2)]
    merge(parts=shards, out=f"{s3}/sweep/merged.parquet")
    merged = _table(f"{s3}/sweep/merged.parquet").drop(columns="store_fingerprint")
    pd.testing.assert_frame_equal(merged, want)
    rerun = sweep(store=remote, out=out, save_predictions=True, **SWEEP)  # type: ignore[arg-type]
    assert rerun.units_done_before == rerun.units_total


def test_ray_engine_reads_and_writes_the_bucket(s3: str, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    remote = _feature_store(f"{s3}/ray", tmp_path)
    local = _feature_store(tmp_path, tmp_path)
    sweep(store=local, out=str(tmp_path / "r.parquet"), **SWEEP)  # type: ignore[arg-type]
    out = f"{s3}/ray/r.parquet"
    sweep(store=remote, out=out, engine="ray", **SWEEP)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(
        _table(out).drop(columns="store_fingerprint"),
        _table(str(tmp_path / "r.parquet")).drop(columns="store_fingerprint"),
    )


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fmprobe.cli", *args], text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def test_embed_killed_on_s3_resumes_to_the_local_store(s3: str, local_store: Path) -> None:
    import s3fs

    url = f"{s3}/killed/d.zarr"
    proc = _spawn("embed", *EMBED, "--store", url)
    fs = s3fs.S3FileSystem()
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [p for p in fs.find(f"bucket/killed/d.zarr/{KEY}/_done") if "/c/" in p]
        if len(done) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close() if proc.stderr else None
    ledger = zarr.open_group(url, mode="r")[f"{KEY}/_done"][:]
    assert 0 < ledger.sum() < ledger.size, "the kill should land mid-run"
    run_cli("embed", *EMBED, "--store", url, check=True)
    got, want = _arrays(url), _arrays(str(local_store))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_sweep_killed_on_s3_resumes_to_an_uninterrupted_table(s3: str, tmp_path: Path) -> None:
    import s3fs

    remote = _feature_store(f"{s3}/k", tmp_path)
    full = f"{s3}/k/full.parquet"
    args = ["--store", remote, "--tasks", "y", "--n", "10,20,40,80,all", "--seeds", "64",
            "--quiet", "--workers", "1"]  # fmt: skip
    run_cli("sweep", *args, "--out", full, check=True)
    out = f"{s3}/k/killed.parquet"
    proc = _spawn("sweep", *args, "--out", out)
    fs = s3fs.S3FileSystem()
    deadline = time.time() + 300
    while time.time() < deadline:
        if (
            len([p for p in fs.ls("bucket/k/", detail=False) if p.endswith(".parts")])
            and len([p for p in fs.find("bucket/k/killed.parquet.parts") if p.endswith(".parquet")])
            >= 2
        ):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close() if proc.stderr else None
    assert not fs.exists("bucket/k/killed.parquet"), "the kill should land mid-run"
    run_cli("sweep", *args, "--out", out, check=True)
    pd.testing.assert_frame_equal(_table(out), _table(full))


def test_two_shards_creating_one_store_at_once_end_with_one_valid_store(
    s3: str, local_store: Path
) -> None:
    url = f"{s3}/race/d.zarr"
    procs = [_spawn("embed", *EMBED, "--store", url, "--shard", f"{i}/2") for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    got, want = _arrays(url), _arrays(str(local_store))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert open_store(url).ids.tolist() == open_store(str(local_store)).ids.tolist()


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("s3://no-such-bucket/x.zarr", "does not exist"),
        ("gs://bucket/x.zarr", "pip install gcsfs"),
    ],
)
def test_storage_failures_are_one_line(s3: str, where: str, words: str) -> None:
    if where.startswith("gs://"):
        try:
            import gcsfs  # noqa: F401

            pytest.skip("gcsfs is installed here: its absence cannot be shown")
        except ImportError:
            pass
    for args in (["store", "info", where],
                 ["sweep", "--store", where, "--out", f"{s3}/x.parquet"]):  # fmt: skip
        res = run_cli(*args)
        assert res.exit_code == 2 and words in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1, res.stderr


def test_forecast_and_report_on_s3_equal_the_local_run(s3: str, tmp_path: Path) -> None:
    from fmprobe.forecast import forecast
    from fmprobe.report import report
    from fmprobe.storage import read_text

    local = _feature_store(tmp_path, tmp_path)
    remote = _feature_store(f"{s3}/fr", tmp_path)
    kw = dict(SWEEP, n="10,20,40,80,all", save_predictions=True)
    sweep(store=local, out=str(tmp_path / "r.parquet"), **kw)  # type: ignore[arg-type]
    sweep(store=remote, out=f"{s3}/fr/r.parquet", **kw)  # type: ignore[arg-type]
    forecast(curves=str(tmp_path / "r.parquet"), max_labels=40, target=0.9,
             out=str(tmp_path / "f.parquet"))  # fmt: skip
    forecast(curves=f"{s3}/fr/r.parquet", max_labels=40, target=0.9, out=f"{s3}/fr/f.parquet")
    from fmprobe.storage import read_parquet

    pd.testing.assert_frame_equal(read_parquet(f"{s3}/fr/f.parquet"),
                                  pd.read_parquet(tmp_path / "f.parquet"))  # fmt: skip
    r = report(results=f"{s3}/fr/r.parquet", forecast=f"{s3}/fr/f.parquet", out=f"{s3}/fr/rep")
    page = read_text(r.index)
    assert r.index == f"{s3}/fr/rep/index.html" and "<svg" in page and "Compare" in page


@pytest.mark.parametrize("command", ["forecast", "report"])
def test_storage_options_reach_the_analysis_commands(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """``--storage-options`` carries the endpoint where the environment does not: forecast and
    report read and write the bucket with it alone."""
    import s3fs

    from fmprobe.storage import OPTIONS_ENV

    root = f"{s3}/so-{command}"
    remote = _feature_store(root, tmp_path)
    sweep(store=remote, out=f"{root}/r.parquet", **dict(SWEEP, n="10,20,40,all"))  # type: ignore[arg-type]
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv(OPTIONS_ENV, "{}")  # restored (removed) after the test
    s3fs.S3FileSystem.clear_instance_cache()
    if command == "forecast":
        args = ["forecast", f"{root}/r.parquet", "--max-labels", "40", "--target", "0.9",
                "--out", f"{root}/f.parquet"]  # fmt: skip
    else:
        args = ["report", f"{root}/r.parquet", "--out", f"{root}/rep"]
    result = run_cli(*args, "--storage-options", json.dumps({"endpoint_url": endpoint}))
    assert result.exit_code == 0, result.stdout + result.stderr
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    if command == "forecast":
        with fs.open(f"{root}/f.parquet".removeprefix("s3://"), "rb") as f:
            assert len(pd.read_parquet(f)) > 0
    else:
        assert fs.exists(f"{root}/rep/index.html".removeprefix("s3://"))
