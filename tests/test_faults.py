"""Faults and bad inputs: nothing stale, nothing silently lost, every bad input one line.

Each case is a fault a user meets (a re-imported feature, a deleted or damaged chunk, a second
writer, a full disk, a damaged file) checked against what an uninterrupted, undamaged run
gives; the last test fuzzes the command line and asserts the contract of every failure: exit
code 0, 1 or 2, at most one error line, no traceback, nothing half-written.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import TINY_VIT, run_cli

from fmprobe.embed import embed
from fmprobe.errors import StoreError, UsageError
from fmprobe.store import import_features, open_store, store_info
from fmprobe.sweep import sweep

N, D = 240, 8
SWEEP = dict(features="f/x", tasks="y", n="10,40,all", seeds=3, progress=False)


def _table(root: Path, **extra: object) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    pd.DataFrame({"id": [f"r{i}" for i in range(N)], "y": y, **extra}).to_csv(
        root / "t.csv", index=False
    )
    return root / "t.csv"


def _store(root: Path, X: np.ndarray, name: str = "f/x") -> Path:
    np.save(root / "x.npy", X)
    import_features(root / "s.zarr", name=name, features=root / "x.npy", labels=_table(root),
                    overwrite=True)  # fmt: skip
    return root / "s.zarr"


def _labels_signal(root: Path) -> np.ndarray:
    y = pd.read_csv(root / "t.csv")["y"].to_numpy()
    X = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    X[:, 0] += 2.0 * y
    return X


def _results(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns="fit_seconds")


# --- results know their inputs ------------------------------------------------------------------


def test_a_reimported_feature_reruns_its_units_and_equals_a_fresh_run(tmp_path: Path) -> None:
    _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    out = tmp_path / "r.parquet"
    first = sweep(store=str(store), out=str(out), **SWEEP)  # type: ignore[arg-type]
    again = sweep(store=str(store), out=str(out), **SWEEP)  # type: ignore[arg-type]
    assert again.units_done_before == again.units_total == first.units_total
    informative = _results(out)
    noise = np.random.default_rng(7).normal(size=(N, D)).astype(np.float32)
    _store(tmp_path, noise)  # the same name, other content
    plan = sweep(store=str(store), out=str(out), dry_run=True, **SWEEP)  # type: ignore[arg-type]
    assert plan.plan["reuse"] == 0 and plan.plan["compute_inputs_changed"] == plan.units_total
    rerun = sweep(store=str(store), out=str(out), **SWEEP)  # type: ignore[arg-type]
    assert rerun.units_done_before == 0
    fresh_out = tmp_path / "fresh.parquet"
    sweep(store=str(store), out=str(fresh_out), **SWEEP)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(_results(out), _results(fresh_out))
    assert not _results(out)["auroc"].equals(informative["auroc"])
    # the stale parts are gone: one part per unit of the plan remains
    parts = [p for p in (tmp_path / "r.parquet.parts").glob("*.parquet")]
    assert len(parts) == rerun.units_total


def test_changed_labels_rerun_only_the_task_they_feed(tmp_path: Path) -> None:
    table = _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    rng = np.random.default_rng(3)
    labels = tmp_path / "labels.csv"
    extra = pd.DataFrame({"id": [f"r{i}" for i in range(N)], "a": rng.integers(0, 2, N),
                          "b": rng.integers(0, 2, N)})  # fmt: skip
    extra.to_csv(labels, index=False)
    out = tmp_path / "r.parquet"
    args = dict(SWEEP, tasks="a,b", labels=str(labels))
    sweep(store=str(store), out=str(out), **args)  # type: ignore[arg-type]
    extra["b"] = 1 - extra["b"]  # task b's labels flipped, a unchanged
    extra.to_csv(labels, index=False)
    plan = sweep(store=str(store), out=str(out), dry_run=True, **args)  # type: ignore[arg-type]
    changed = {g["task"]: g["inputs_changed"] for g in plan.plan["by_feature_task"]}
    assert set(changed) == {"b"} and plan.plan["reuse"] == plan.units_total // 2
    sweep(store=str(store), out=str(out), **args)  # type: ignore[arg-type]
    fresh = tmp_path / "fresh.parquet"
    sweep(store=str(store), out=str(fresh), **args)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(_results(out), _results(fresh))
    assert table.exists()


def test_overwrite_starts_again(tmp_path: Path) -> None:
    _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), **SWEEP)  # type: ignore[arg-type]
    report = sweep(store=str(store), out=str(out), overwrite=True, **SWEEP)  # type: ignore[arg-type]
    assert report.units_done_before == 0


# --- a damaged store is refused, and embed repairs its own ------------------------------------


def _chunk_files(arr_dir: Path) -> list[Path]:
    return sorted(p for p in (arr_dir / "c").rglob("*") if p.is_file())


def test_a_missing_or_damaged_chunk_of_an_imported_feature_is_one_line(tmp_path: Path) -> None:
    _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    chunk = _chunk_files(store / "f" / "x")[0]
    data = chunk.read_bytes()
    chunk.write_bytes(data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])
    for args in (["store", "export", str(store), "--key", "f/x", "--out", str(tmp_path / "e.npy")],
                 ["sweep", "--store", str(store), "--out", str(tmp_path / "r.parquet"), "--tasks", "y"],
                 ["select", "--store", str(store), "--feature", "f/x", "--budget", "5",
                  "--strategy", "random", "--out", str(tmp_path / "ids.csv")]):  # fmt: skip
        res = run_cli(*args, "--quiet") if args[0] == "sweep" else run_cli(*args)
        assert res.exit_code == 2, (args[0], res.stderr)
        assert res.stderr.count("\n") == 1 and "rows 0–239" in res.stderr, res.stderr
        assert "checksum" in res.stderr and "store import --overwrite" in res.stderr
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "ids.csv").exists()
    chunk.unlink()
    with pytest.raises(StoreError, match="is missing"):
        open_store(store).read_feature("f/x")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("emb")
    embed(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
          model_kwargs=TINY_VIT, store=str(root / "d.zarr"), layers="3", pools="cls,mean",
          chunk_rows=256, num_workers=0, progress=False)  # fmt: skip
    return root / "d.zarr"


def test_embed_reembeds_exactly_the_missing_and_the_damaged_chunks(
    embedded: Path, tmp_path: Path
) -> None:
    import shutil

    store = tmp_path / "d.zarr"
    shutil.copytree(embedded, store)
    key = "timm-vit_tiny_patch16_224/block3/cls"
    want = zarr.open_group(str(embedded), mode="r")[key][:]
    files = _chunk_files(store / key)
    files[2].unlink()  # rows 512–767 lost
    info = store_info(store)
    assert not {f.key: f for f in info.features}[key].complete
    assert [d.text() for d in info.damaged] == [f"{key}: the chunk of rows 512–767 is missing"]
    with pytest.raises(StoreError, match="rows 512–767 is missing"):
        open_store(store).read_feature(key)
    args = dict(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
                model_kwargs=TINY_VIT, store=str(store), layers="3", pools="cls,mean",
                chunk_rows=256, num_workers=0, progress=False)  # fmt: skip
    report = embed(**args)  # type: ignore[arg-type]
    assert report.rows_embedded == 256 and len(report.repaired) == 1
    np.testing.assert_array_equal(open_store(store).read_feature(key), want)
    data = files[4].read_bytes()
    files[4].write_bytes(data[:-8] + bytes(8))  # damaged in place: only --verify reads it
    assert embed(**args).rows_embedded == 0  # type: ignore[arg-type]
    report = embed(**args, verify=True)  # type: ignore[arg-type]
    assert report.rows_embedded == 256
    np.testing.assert_array_equal(open_store(store).read_feature(key), want)


def test_damaged_store_metadata_is_one_line(tmp_path: Path) -> None:
    _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    (store / "zarr.json").write_text("{ not json")
    res = run_cli("store", "info", str(store))
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    (tmp_path / "b").mkdir()
    _table(tmp_path / "b")
    other = _store(tmp_path / "b", _labels_signal(tmp_path / "b"))
    import shutil

    shutil.rmtree(other / "samples" / "id")
    for args in (["store", "info", str(other)],
                 ["sweep", "--store", str(other), "--out", str(tmp_path / "r.parquet")]):  # fmt: skip
        res = run_cli(*args)
        assert res.exit_code == 2 and "samples/id" in res.stderr and res.stderr.count("\n") == 1


# --- one writer at a time ------------------------------------------------------------------------


def _hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another live process holding the exclusive lock ``path`` (as a running sweep would)."""
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'pid {os.getpid()}: fmprobe sweep'.encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _release(holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    if holder.stdout is not None:
        holder.stdout.close()


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(tmp_path: Path) -> None:
    _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    out = tmp_path / "r.parquet"
    holder = _hold_lock(tmp_path / "r.parquet.locks" / "results.lock")
    try:
        for extra in ([], ["--overwrite"], ["--shard", "0/2"]):
            res = run_cli("sweep", "--store", str(store), "--out", str(out), "--tasks", "y",
                          "--quiet", *extra)  # fmt: skip
            assert res.exit_code == 2 and f"pid {holder.pid}" in res.stderr, res.stderr
            assert res.stderr.count("\n") == 1
        assert not out.exists()
    finally:
        _release(holder)
    # the holder died: its lock went with it
    run_cli("sweep", "--store", str(store), "--out", str(out), "--tasks", "y", "--quiet",
            check=True)  # fmt: skip
    # shards of one job run side by side
    for i in range(2):
        assert sweep(store=str(store), out=str(tmp_path / "s.parquet"), tasks="y",
                     shard=f"{i}/2", progress=False).rows > 0  # fmt: skip


def test_a_second_embed_of_the_same_model_is_refused(embedded: Path) -> None:
    holder = _hold_lock(Path(str(embedded) + ".locks") / "timm-vit_tiny_patch16_224.lock")
    try:
        with pytest.raises(UsageError, match=f"pid {holder.pid}"):
            embed(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
                  model_kwargs=TINY_VIT, store=str(embedded), layers="3", pools="cls,mean",
                  chunk_rows=256, num_workers=0, progress=False)  # fmt: skip
    finally:
        _release(holder)


# --- work lost -----------------------------------------------------------------------------------


def test_units_are_one_label_count_each_and_a_full_disk_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    report = sweep(store=str(store), out=str(tmp_path / "r.parquet"), **SWEEP)  # type: ignore[arg-type]
    assert report.units_total == 3  # one per label count: an interruption loses one at most
    import fmprobe.storage

    real = os.replace

    def full(src: object, dst: object) -> None:
        if str(dst).endswith((".npy", "export.parquet")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(fmprobe.storage.os, "replace", full)
    res = run_cli("store", "export", str(store), "--key", "f/x", "--out", str(tmp_path / "e.npy"))
    assert res.exit_code == 1 and "no space left" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "e.npy").exists() and not list(tmp_path.glob(".*.tmp"))


# --- bad input: one line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("npy", "cannot be read"),
        ("strings", "must be numbers"),
        ("model", "model group"),
        ("split_seed", "a seed is 0 or more"),
        ("out_dir", "is a folder"),
        ("merge", "not a readable Parquet"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path: Path, embedded: Path, case: str, words: str) -> None:
    table = _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    if case == "npy":
        (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
        args = ["store", "import", str(store), "--name", "g", "--features", str(tmp_path / "bad.npy"),
                "--labels", str(table)]  # fmt: skip
    elif case == "strings":
        np.save(tmp_path / "s.npy", np.array([["a"] * 3] * N))
        args = ["store", "import", str(store), "--name", "g", "--features", str(tmp_path / "s.npy"),
                "--labels", str(table)]  # fmt: skip
    elif case == "model":
        ids = open_store(embedded).ids
        pd.DataFrame({"id": ids}).to_csv(tmp_path / "ids.csv", index=False)
        np.save(tmp_path / "m.npy", np.zeros((len(ids), 2), np.float32))
        args = ["store", "import", str(embedded), "--name", "timm-vit_tiny_patch16_224",
                "--features", str(tmp_path / "m.npy"), "--labels", str(tmp_path / "ids.csv"),
                "--overwrite"]  # fmt: skip
    elif case == "split_seed":
        args = ["sweep", "--store", str(store), "--out", str(tmp_path / "r.parquet"), "--tasks", "y",
                "--split-seed", "-1"]  # fmt: skip
    elif case == "out_dir":
        (tmp_path / "outdir").mkdir()
        args = ["sweep", "--store", str(store), "--out", str(tmp_path / "outdir"), "--tasks", "y"]
    else:
        (tmp_path / "shard.parquet").write_bytes(b"PAR1 not really")
        args = [
            "sweep",
            "merge",
            str(tmp_path / "shard.parquet"),
            "--out",
            str(tmp_path / "m.parquet"),
        ]
    res = run_cli(*args)
    assert res.exit_code == 2 and words in res.stderr and res.stderr.count("\n") == 1, res.stderr
    if case == "model":
        assert len(open_store(embedded).features()) == 2  # nothing of the model was deleted


def test_store_import_into_an_existing_store_keeps_the_new_metadata_columns(tmp_path: Path) -> None:
    _table(tmp_path)
    store = _store(tmp_path, _labels_signal(tmp_path))
    ids = [f"r{i}" for i in range(N)]
    order = np.random.default_rng(2).permutation(N)
    site = np.where(np.arange(N) % 2, "a", "b")
    pd.DataFrame({"id": np.array(ids)[order], "site": site[order]}).to_csv(
        tmp_path / "meta.csv", index=False
    )
    np.save(tmp_path / "g.npy", np.zeros((N, 3), np.float32))
    import_features(store, name="g", features=tmp_path / "g.npy", labels=tmp_path / "meta.csv")
    samples = open_store(store).samples()
    assert list(samples["site"]) == list(site)  # reordered to the store's rows
    pd.DataFrame({"id": ids, "y": 1 - pd.read_csv(tmp_path / "t.csv")["y"]}).to_csv(
        tmp_path / "clash.csv", index=False
    )
    with pytest.raises(StoreError, match="differs from the store's column"):
        import_features(store, name="h", features=tmp_path / "g.npy", labels=tmp_path / "clash.csv")


# --- the command line, fuzzed ------------------------------------------------------------------


def test_fuzzed_command_lines_fail_cleanly(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random option values and table contents: exit code 0, 1 or 2; at most one error line;
    no traceback; no output file half-written (no temporary left, and a failed command leaves
    no output under the final name)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    root = tmp_path_factory.mktemp("fuzz")
    _table(root)
    store = _store(root, _labels_signal(root))
    values = st.one_of(st.sampled_from(["-1", "0", "1", "all", "auto", "nan", "x", "", "1e9",
                                        "0.5", "y", "f/x", "*", "3/2", "0/1", ",", "label"]),
                       st.text(max_size=6))  # fmt: skip
    options = {
        "sweep": ["--n", "--seeds", "--C", "--folds", "--tasks", "--features", "--probe",
                  "--knn-k", "--test-frac", "--split-seed", "--shard", "--sampler", "--max-iter"],
        "select": ["--budget", "--strategy", "--seed", "--feature", "--k", "--delta"],
        "store export": ["--key"],
    }  # fmt: skip
    counter = [0]

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(options)), st.data())
    def one(command: str, data: st.DataObject) -> None:
        counter[0] += 1
        out = root / f"o{counter[0]}"
        picked = data.draw(st.lists(st.sampled_from(options[command]), max_size=3, unique=True))
        args = [a for opt in picked for a in (opt, data.draw(values))]
        if command == "sweep":
            base = ["sweep", "--store", str(store), "--out", f"{out}.parquet", "--quiet", "--tasks", "y",
                    "--n", "10", "--seeds", "1"]  # fmt: skip
            target = Path(f"{out}.parquet")
        elif command == "select":
            base = ["select", "--store", str(store), "--feature", "f/x", "--budget", "3",
                    "--strategy", "random", "--out", f"{out}.csv"]  # fmt: skip
            target = Path(f"{out}.csv")
        else:
            base = ["store", "export", str(store), "--key", "f/x", "--out", f"{out}.npy"]
            target = Path(f"{out}.npy")
        res = run_cli(*base, *args)
        assert res.exit_code in (0, 1, 2), (args, res.exit_code, res.stderr)
        assert "Traceback" not in res.stderr, (args, res.stderr)
        errors = [line for line in res.stderr.splitlines() if line.startswith("fmprobe: error")]
        assert len(errors) <= 1, (args, res.stderr)
        if res.exit_code != 0:
            assert not target.exists(), (args, res.stderr)
        assert not list(root.glob(".*.tmp")), args

    t0 = time.perf_counter()
    one()
    assert counter[0] >= 40 and time.perf_counter() - t0 < 900


@pytest.mark.parametrize(
    ("rows", "extra", "words"),
    [
        ("10,nan\n20,nan\n40,nan\n", [], "too_few_points"),
        ("0,0.6\n0,0.7\n0,0.8\n", [], "nonpositive_n"),
        ("10,0.6\n20,0.7\n40,0.75\n", ["--plot", "FILE"], "is a file"),
        ("10,0.6\n20,0.7\n40,0.75\n", ["--out", "DIR/x.txt"], ".csv or .parquet"),
    ],
)
def test_forecast_bad_inputs_are_one_line(
    tmp_path: Path, rows: str, extra: list[str], words: str
) -> None:
    (tmp_path / "c.csv").write_text("n,auroc,model\n" + rows.replace("\n", ",a\n"))
    (tmp_path / "FILE").write_text("")
    extra = [e.replace("FILE", str(tmp_path / "FILE")).replace("DIR", str(tmp_path)) for e in extra]
    res = run_cli("forecast", str(tmp_path / "c.csv"), *extra)
    errors = [line for line in res.stderr.splitlines() if line.startswith("fmprobe: error")]
    assert res.exit_code == 2 and len(errors) == 1 and words in errors[0], res.stderr
