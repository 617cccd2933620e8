"""Scale-out: `--shard I/N` + `sweep merge` and `--engine ray` give the results of one local
run; a Ray worker killed mid-run loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from fmprobe.errors import UsageError
from fmprobe.store import import_features, open_store
from fmprobe.sweep import merge, sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("scale")
    N, D = 300, 16
    X = rng.normal(size=(N, D)).astype(np.float32)
    table = pd.DataFrame({
        "id": [f"s{i}" for i in range(N)],
        "a": (X[:, 0] + rng.normal(size=N) > 0).astype(int),
        "b": np.argmax(X[:, 1:4] + rng.normal(size=(N, 3)), 1),
    })  # fmt: skip
    np.save(root / "x.npy", X)
    np.save(root / "y.npy", X[:, ::-1] * 2)
    table.to_csv(root / "t.csv", index=False)
    for name, f in (("m1/l/cls", "x.npy"), ("m2/l/cls", "y.npy")):
        import_features(root / "s.zarr", name=name, features=root / f, labels=root / "t.csv")
    return root / "s.zarr"


SETTINGS = dict(features="*", tasks="a,b", n="10,30,all", seeds=6, C=0.5, seeds_per_unit=2,
                progress=False)  # fmt: skip


def _table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns="fit_seconds")


def test_shards_merged_equal_one_run(store: Path, tmp_path: Path) -> None:
    sweep(store=str(store), out=str(tmp_path / "one.parquet"), **SETTINGS)  # type: ignore[arg-type]
    for i in range(3):
        r = sweep(store=str(store), out=str(tmp_path / "r.parquet"), shard=f"{i}/3", **SETTINGS)  # type: ignore[arg-type]
        assert r.out.endswith(f"r.shard-{i}-of-3.parquet")
    shards = [str(tmp_path / f"r.shard-{i}-of-3.parquet") for i in (2, 0, 1)]  # any order
    merge(parts=shards, out=str(tmp_path / "merged.parquet"))
    pd.testing.assert_frame_equal(
        _table(tmp_path / "merged.parquet"), _table(tmp_path / "one.parquet")
    )
    with pytest.raises(UsageError, match="work units are in none"):
        merge(parts=shards[:2], out=str(tmp_path / "x.parquet"))
    with pytest.raises(UsageError, match="more than one table"):
        merge(parts=[*shards, shards[0]], out=str(tmp_path / "x.parquet"))
    # the CLI: one line and exit code 2 for a bad shard spec and a missing shard
    for args in (["sweep", "--store", str(store), "--out", str(tmp_path / "z.parquet"), "--shard", "3/3"],
                 ["sweep", "merge", *shards[:2], "--out", str(tmp_path / "x.parquet")]):  # fmt: skip
        p = run_cli(*args)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_ray_engine_equals_local_and_survives_a_killed_worker(store: Path, tmp_path: Path) -> None:
    """Half the units run locally (--shard 0/2), the rest on a real local Ray cluster whose
    first worker to finish a unit dies like kill -9: Ray retries, the rerun-free result equals
    one local run."""
    ray = pytest.importorskip("ray")
    sweep(store=str(store), out=str(tmp_path / "local.parquet"), **SETTINGS)  # type: ignore[arg-type]
    out = tmp_path / "mixed.parquet"
    sweep(store=str(store), out=str(out), shard="0/2", **SETTINGS)  # type: ignore[arg-type]
    marker = tmp_path / "died"
    os.environ["FMPROBE_TEST_DIE_ONCE"] = str(marker)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        report = sweep(store=str(store), out=str(out), engine="ray", **SETTINGS)  # type: ignore[arg-type]
    finally:
        os.environ.pop("FMPROBE_TEST_DIE_ONCE")
        ray.shutdown()
    assert marker.exists()  # a worker did die mid-run
    assert report.units_done_before == report.units_total // 2
    pd.testing.assert_frame_equal(_table(out), _table(tmp_path / "local.parquet"))


def test_worker_processes_equal_one_run_and_a_killed_worker_loses_nothing(
    store: Path, tmp_path: Path
) -> None:
    """``workers=2`` (local processes) gives the table of one in-process run; a worker killed
    like kill -9 after its first unit fails the sweep with one line, and the rerun resumes to
    the same table."""
    from fmprobe.errors import FmprobeError
    from fmprobe.sweep.processes import shutdown_pool

    sweep(store=str(store), out=str(tmp_path / "one.parquet"), **SETTINGS)  # type: ignore[arg-type]
    r = sweep(store=str(store), out=str(tmp_path / "two.parquet"), workers=2, **SETTINGS)  # type: ignore[arg-type]
    assert r.probes_fitted > 0
    pd.testing.assert_frame_equal(
        _table(tmp_path / "two.parquet"), _table(tmp_path / "one.parquet")
    )

    out = tmp_path / "killed.parquet"
    marker = tmp_path / "died"
    shutdown_pool()  # workers spawned from now on see the fault hook's variable
    os.environ["FMPROBE_TEST_DIE_ONCE"] = str(marker)
    try:
        with pytest.raises(FmprobeError, match="rerun the same command to resume"):
            sweep(store=str(store), out=str(out), workers=2, **SETTINGS)  # type: ignore[arg-type]
    finally:
        os.environ.pop("FMPROBE_TEST_DIE_ONCE")
        shutdown_pool()
    assert marker.exists()
    report = sweep(store=str(store), out=str(out), workers=2, **SETTINGS)  # type: ignore[arg-type]
    assert 0 < report.units_done_before < report.units_total
    pd.testing.assert_frame_equal(_table(out), _table(tmp_path / "one.parquet"))
    with pytest.raises(UsageError, match="--workers 0"):
        sweep(store=str(store), out=str(out), workers=0, **SETTINGS)  # type: ignore[arg-type]
    shutdown_pool()


def test_workers_auto_scaled_out_equals_one_run(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--workers auto`` with the scale-out threshold at 0: this process and a worker process
    share the units, and the table is that of one in-process run."""
    from fmprobe.sweep import processes

    monkeypatch.setattr(processes, "SCALE_OUT_SECONDS", 0.0)
    monkeypatch.setattr(processes, "available_cores", lambda: 2)
    one = sweep(store=str(store), out=str(tmp_path / "one.parquet"), workers=1, **SETTINGS)  # type: ignore[arg-type]
    auto = sweep(store=str(store), out=str(tmp_path / "auto.parquet"), **SETTINGS)  # type: ignore[arg-type]
    assert auto.probes_fitted == one.probes_fitted > 0
    assert processes.pool_size() == 1  # the worker was started
    pd.testing.assert_frame_equal(
        _table(tmp_path / "auto.parquet"), _table(tmp_path / "one.parquet")
    )
    processes.shutdown_pool()


# --- embedding ----------------------------------------------------------------------------------

TINY = json.dumps({"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 16, "num_heads": 2})


def _embed_args(store: Path) -> list[str]:
    return [
        "embed", "--data", "builtin:digits", "--model", "timm:vit_tiny_patch16_224",
        "--random-init", "--model-kwargs", TINY, "--store", str(store), "--chunk-rows", "128",
        "--batch-size", "64", "--num-workers", "0", "--quiet",
    ]  # fmt: skip


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fmprobe.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _same_store(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Equal up to float32 rounding: forward passes with another thread count (a Ray worker's
    one thread, the test process's two) sum in another order."""
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(
            got[k].astype(np.float64), want[k], rtol=1e-4, atol=1e-6, err_msg=k
        )


def _arrays(store: Path) -> dict[str, np.ndarray]:
    fs = open_store(store)
    return {f.key: fs.read_feature(f.key) for f in fs.features()}


@pytest.fixture(scope="module")
def one_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    from fmprobe.embed import embed

    store = tmp_path_factory.mktemp("e") / "one.zarr"
    embed(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
          model_kwargs=json.loads(TINY), store=str(store), chunk_rows=128, batch_size=64,
          num_workers=0, progress=False)  # fmt: skip
    return _arrays(store)


def test_embed_shards_started_at_once_fill_one_store(
    one_run: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Three array-job shards started together (they race to create the store) give the
    store of one run; a fourth run without --shard finds nothing left to do."""
    store = tmp_path / "sharded.zarr"
    procs = [_cli(*_embed_args(store), "--shard", f"{i}/3", "--json") for i in range(3)]
    reports = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    assert sum(r["rows_embedded"] for r in reports) == 1797
    assert all(r["rows_embedded"] > 0 for r in reports)
    _same_store(_arrays(store), one_run)
    p = _cli(*_embed_args(store), "--json")
    assert json.loads(p.communicate()[0])["rows_embedded"] == 0


def test_embed_on_ray_with_a_killed_worker_equals_one_run(
    one_run: dict[str, np.ndarray], tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    from fmprobe.embed import embed

    store = tmp_path / "ray.zarr"
    marker = tmp_path / "died"
    os.environ["FMPROBE_TEST_DIE_ONCE"] = str(marker)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        report = embed(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
                       model_kwargs=json.loads(TINY), store=str(store), chunk_rows=128,
                       batch_size=64, num_workers=0, engine="ray", workers=2, progress=False)  # fmt: skip
    finally:
        os.environ.pop("FMPROBE_TEST_DIE_ONCE")
        ray.shutdown()
    assert marker.exists()
    assert report.device == "ray:2xcpu"
    _same_store(_arrays(store), one_run)
