"""The HTML report: built from a real sweep and forecast on a tiny store, every figure on the
page, and the page rendered by headless Chromium shows them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fmprobe.cli import main
from fmprobe.errors import UsageError
from fmprobe.forecast import forecast
from fmprobe.report import report
from fmprobe.store import import_features
from fmprobe.sweep import sweep

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's ``chromium``; installed with apt-get when missing (as root), else skipped."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is missing and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True,
                              text=True, env=env, timeout=900)  # fmt: skip
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
            done = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True,
                                  text=True, env=env, timeout=900)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("installing chromium with apt-get timed out")
    path = shutil.which("chromium")
    if done.returncode != 0 or path is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"`apt-get install -y chromium` failed: {tail[0]}")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("report")
    N = 300
    X = rng.normal(size=(N, 12)).astype(np.float32)
    finding = (X[:, 0] + X[:, 1] + rng.normal(size=N) > 0.8).astype(int)
    table = pd.DataFrame({"id": [f"c{i}" for i in range(N)], "finding": finding,
                          "sex": rng.choice(["F", "M"], N)})  # fmt: skip
    table.to_csv(root / "t.csv", index=False)
    store = root / "s.zarr"
    for name, noise in (
        ("vit/block3/cls", 2.0),
        ("vit/block11/cls", 0.5),
        ("vit/block11/mean", 1.0),
    ):
        np.save(root / "f.npy", (X + noise * rng.normal(size=X.shape)).astype(np.float32))
        import_features(store, name=name, features=root / "f.npy", labels=root / "t.csv")
    results = root / "results.parquet"
    sweep(store=str(store), out=str(results), tasks="finding", n="10,20,40,all", seeds=2,
          sampler="random,fps", C=0.5, save_predictions=True, progress=False)  # fmt: skip
    fc = root / "forecast.parquet"
    forecast(curves=str(results), max_labels=40, target=0.8, out=fc)
    out = root / "report"
    report(results=results, out=out, forecast=fc, store=store, group_by="sex", replicates=50)
    return {"store": store, "results": results, "forecast": fc, "out": out, "root": root}


def test_every_figure_is_written_and_referenced(built: dict[str, Path]) -> None:
    out = built["out"]
    page = (out / "index.html").read_text()
    figures = sorted((out / "figures").glob("*.png"))
    names = [f.name.split("-", 1)[1] for f in figures]
    assert names == ["curve-finding.png", "forecast-finding_fps.png",
                     "forecast-finding_random.png", "layers.png", "pools.png",
                     "samplers-finding.png", "subgroups-sex.png"]  # fmt: skip
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == [f"figures/{f.name}" for f in figures]  # relative: opens without a server
    for heading in ("Learning curves", "Forecasts", "Labels needed", "Layers and pooling",
                    "Samplers: selected vs random", "Subgroups", "Provenance"):  # fmt: skip
        assert f">{heading}</h2>" in page
    assert "n_needed" in page and "store fingerprint" in page and "fmprobe version" in page
    fingerprint = pd.read_parquet(built["results"])["store_fingerprint"].iloc[0]
    assert fingerprint in page
    for f in figures:
        assert f.stat().st_size > 10_000


def _figure_pixels(png: Path) -> int:
    """Pixels in the figures' feature colours (matplotlib's tab10 orange and green): only
    the figures draw them; the page's own text is black, grey and link blue."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    total = 0
    for colour in ((255, 127, 14), (44, 160, 44)):
        total += int((np.abs(rgb - np.array(colour)).max(2) <= 30).sum())
    return total


def test_chromium_renders_the_figures(
    built: dict[str, Path], chromium: str, tmp_path: Path
) -> None:
    out = built["out"]

    def shoot(folder: Path, name: str) -> tuple[Path, str]:
        shot = tmp_path / name
        url = (folder / "index.html").resolve().as_uri()
        args = [chromium, *CHROMIUM_FLAGS, "--window-size=1280,4000"]
        subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=120)
        dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120).stdout  # fmt: skip
        return shot, dom

    shot, dom = shoot(out, "page.png")
    assert shot.exists(), "chromium wrote no screenshot"
    assert dom.count("<img ") == len(list((out / "figures").glob("*.png")))
    # the same page without its figure files: what a broken page would look like
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(out / "index.html", broken / "index.html")
    broken_shot, _ = shoot(broken, "broken.png")
    with_figures, without = _figure_pixels(shot), _figure_pixels(broken_shot)
    print(f"figure-coloured pixels: {with_figures} with figures, {without} without")
    assert with_figures > 10_000 and without < 100


def test_cli_and_bad_input(built: dict[str, Path], tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["report", str(built["results"]), "--out", str(tmp_path / "r"),
                                  "--metric", "auprc"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "index.html").exists() and "Provenance" in r.stderr
    cases = [
        (["--metric", "aucroc"], "--metric 'aucroc' is not a column"),
        (["--forecast", str(built["results"])], "--forecast table has no column"),
        (["--group-by", "sex"], "--group-by needs --store"),
        (["--n", "7"], "--n 7 is not in the results"),
    ]
    for extra, message in cases:
        r = CliRunner().invoke(main, ["report", str(built["results"]), "--out",
                                      str(tmp_path / "x"), *extra])  # fmt: skip
        assert r.exit_code == 2 and message in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="does not exist"):
        report(results=tmp_path / "missing.parquet", out=tmp_path / "y")
