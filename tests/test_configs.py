"""The shipped configs run: the chest X-ray pair of the Slurm example, on a small dataset in
the same layout (a manifest of PNGs with patients, a CheXpert-style findings table), with only
the paths, the model and the sizes overridden on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from conftest import TINY_VIT, run_cli
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def _cxr(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows, labels = [], []
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(
            root / "img" / f"{i}.png"
        )
        rows.append({"path": f"img/{i}.png", "id": f"cxr{i}", "patient": f"p{i // 2}"})
        # 1, 0, -1 (uncertain) and blank (not mentioned), as CheXpert ships them
        labels.append(
            {"id": f"cxr{i}", **{f: rng.choice(["1.0", "0.0", "-1.0", ""]) for f in FINDINGS}}
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame(labels).to_csv(root / "labels.csv", index=False)
    return root / "manifest.csv", root / "labels.csv"


def test_the_cxr_configs_run_as_the_slurm_example_runs_them(tmp_path: Path) -> None:
    embed_cfg = yaml.safe_load((ROOT / "configs" / "embed-cxr.yaml").read_text())
    sweep_cfg = yaml.safe_load((ROOT / "configs" / "sweep-cxr.yaml").read_text())
    assert embed_cfg["model"] == "rad-dino" and sweep_cfg["uncertain"] == "ignore"
    assert sweep_cfg["tasks"] == FINDINGS
    manifest, labels = _cxr(tmp_path)
    store, out = tmp_path / "f.zarr", tmp_path / "r.parquet"
    run_cli("embed", "--config", str(ROOT / "configs" / "embed-cxr.yaml"), "--data", str(manifest),
            "--store", str(store), "--model", "timm:vit_tiny_patch16_224", "--random-init",
            "--model-kwargs", json.dumps(TINY_VIT), "--layers", "1,3", "--num-workers", "0",
            "--quiet", check=True)  # fmt: skip
    for shard in ("0/2", "1/2"):
        run_cli("sweep", "--config", str(ROOT / "configs" / "sweep-cxr.yaml"), "--store",
                str(store), "--out", str(out), "--labels", str(labels), "--n", "10,all",
                "--seeds", "2", "--features", "*/block3/cls", "--shard", shard, "--quiet",
                check=True)  # fmt: skip
    run_cli("sweep", "merge", *(str(tmp_path / f"r.shard-{i}-of-2.parquet") for i in range(2)),
            "--out", str(out), check=True)  # fmt: skip
    res = pd.read_parquet(out)
    assert sorted(set(res.task)) == sorted(FINDINGS)
    assert set(res.uncertain) == {"ignore"} and set(res.blank) == {"negative"}
    assert set(res.C_selection) <= {"cv", "fallback"} and set(res.group_col) == {"patient"}
    # U-Ignore: the uncertain rows are not labels, so "all" is the labelled training rows only
    table = pd.read_csv(labels, dtype=str, keep_default_na=False)
    for f in FINDINGS:
        n_all = res[(res.task == f) & (res.n > 10)].n.iloc[0]
        assert n_all < (table[f] != "-1.0").sum()
