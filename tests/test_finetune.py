"""``fmprobe finetune``: the sweep's own subsets and test sets (by ids, against a store embedded
from the same data), LoRA leaving the base weights bit-equal on timm / transformers / open_clip
models, merged adapters, the training loop's out-of-memory halving and CUDA code paths forced on
the CPU, the linear head against the sweep's logistic regression, resume after a kill, shards,
Ray, compare/report on the rows, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_VIT, run_cli
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from fmprobe.data import parse_data
from fmprobe.embed import embed
from fmprobe.encoders import create_encoder
from fmprobe.errors import UsageError
from fmprobe.finetune import TrainSettings, finetune, merge
from fmprobe.finetune.adapt import (
    Classifier,
    adapter_parameters,
    add_lora,
    find_readout,
    merged_copy,
    resolve_targets,
    trainable_groups,
)
from fmprobe.finetune.images import ImageSource
from fmprobe.finetune.plan import task_pools, tasks_and_split
from fmprobe.finetune.train import MicroBatch, fit, predict, validation_split
from fmprobe.probes.folds import fold_masks
from fmprobe.store import open_store
from fmprobe.sweep import sweep
from fmprobe.sweep.splits import sweep_split
from fmprobe.sweep.subsets import nested_orders
from fmprobe.sweep.tasks import load_tasks
from fmprobe.sweep.units import prepare_pool

MODEL = "timm:vit_tiny_patch16_224"
KEY = "timm-vit_tiny_patch16_224"
FEATURE = f"{KEY}/block3/cls"  # TINY_VIT has 4 blocks and a class token
CPU = torch.device("cpu")
# a short schedule: the tests check plumbing and equalities, not accuracy
QUICK = dict(epochs=2, min_steps=4, batch_size=16)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on this shared CPU a tiny model's steps are ~10x faster than on two
    threads that wait for each other (and subprocess runs use the same count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**extra: object) -> dict[str, object]:
    return dict(model=MODEL, random_init=True, model_kwargs=TINY_VIT, progress=False, **extra)


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A manifest of 60 small images (two classes, two sites, one corrupt file), a --labels
    table with a second, partly missing task, and a store embedded from it."""
    root = tmp_path_factory.mktemp("clinic")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label = "malignant" if i % 3 == 0 else "benign"
        img = rng.integers(0, 120, (16, 16, 3)) + (100 if label == "malignant" else 0)
        path = root / f"img{i:02d}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        rows.append({"path": path.name, "id": f"p{i:02d}", "label": label,
                     "site": "b" if i >= 45 else "a"})  # fmt: skip
    (root / "img07.png").write_bytes(b"not an image")
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    grade = rng.integers(0, 3, 60).astype(float)
    grade[::5] = np.nan
    pd.DataFrame({"id": [r["id"] for r in rows], "grade": grade}).to_csv(
        root / "labels.csv", index=False
    )
    store = root / "clinic.zarr"
    embed(data=str(root / "manifest.csv"), model=MODEL, random_init=True, model_kwargs=TINY_VIT,
          store=str(store), num_workers=0, progress=False)  # fmt: skip
    return {"data": root / "manifest.csv", "labels": root / "labels.csv", "store": store}


def _sweep_subsets(
    store: Path, labels: Path, split_opts: dict[str, object], ns: list[int], seeds: list[int]
) -> tuple[dict[tuple[str, int, int], list[str]], dict[str, list[str]]]:
    """What the sweep trains and tests on, from the store (its features mark the unreadable
    image), through the sweep's own functions."""
    fs = open_store(store)
    tasks, table = load_tasks(fs, ["label", "grade"], labels=str(labels))
    split = sweep_split(table, stratify=tasks[0].codes, **split_opts)
    X = fs.read_feature(FEATURE).astype(np.float32)
    train, test = {}, {}
    for t in tasks:
        d = prepare_pool(X, t, split, l2_normalize=False, device=CPU)
        orders = nested_orders(d.y_pool, seeds, min(len(d.pool), max(ns)))
        test[t.name] = list(fs.ids[d.test])
        for n in ns:
            for s in seeds:
                train[(t.name, n, s)] = list(fs.ids[d.pool[orders[s][:n]]])
    return train, test


@pytest.mark.parametrize("split_opts", [{}, {"test_where": "site=b"}])
def test_subsets_and_test_sets_equal_the_sweeps_by_ids(
    clinic: dict[str, Path], split_opts: dict[str, object]
) -> None:
    ns, seeds = [4, 10, 20], [0, 1, 2]
    want_train, want_test = _sweep_subsets(clinic["store"], clinic["labels"], split_opts, ns, seeds)
    dataset = parse_data(clinic["data"])
    tasks, _, split = tasks_and_split(dataset, tasks=["label", "grade"],
                                      labels=str(clinic["labels"]), **split_opts)  # fmt: skip
    unreadable = np.array([i == 7 for i in range(len(dataset))])
    pools = task_pools(tasks, split, unreadable)
    ids = np.asarray(dataset.ids)
    assert "p07" not in ids[np.concatenate([p.pool for p in pools.values()])]
    for (task, n, s), want in want_train.items():
        rows, y = pools[task].subset(n, s, tuple(ns))
        assert list(ids[rows]) == want
        assert np.array_equal(y, pools[task].task.codes[rows])
    for task, want in want_test.items():
        assert list(ids[pools[task].test]) == want
    if split_opts:  # out of domain: the test set is site b, the pools site a
        site = dataset.table.set_index("id")["site"]
        assert set(site[want_test["label"]]) == {"b"}
        assert set(site[list(ids[pools["label"].pool])]) == {"a"}


def test_rows_and_saved_test_sets_match_a_sweep_end_to_end(
    clinic: dict[str, Path], tmp_path: Path
) -> None:
    """The finetune's rows (n, n_test, split) and the test table of its saved predictions are
    the sweep's for the same data, with --test-where and an unreadable image."""
    opts = dict(tasks="label,grade", labels=str(clinic["labels"]), n="4,10,all", seeds=2,
                test_where="site=b")  # fmt: skip
    sweep(store=str(clinic["store"]), out=str(tmp_path / "s.parquet"), features=FEATURE,
          save_predictions=True, progress=False, **opts)  # fmt: skip
    report = finetune(data=str(clinic["data"]), out=str(tmp_path / "f.parquet"), method="linear",
                      save_predictions=True, **_tiny(**opts, **QUICK))  # fmt: skip
    assert report.unreadable == 1 and report.feature == FEATURE and report.probe == "linear-ft"
    s, f = pd.read_parquet(tmp_path / "s.parquet"), pd.read_parquet(tmp_path / "f.parquet")
    keys = ["task", "n", "seed", "n_test", "n_classes", "n_pos", "status", "split", "feature"]
    pd.testing.assert_frame_equal(f[keys], s[keys])
    assert set(f["probe"]) == {"linear-ft"} and (f["split"] == "where:site=b").all()
    sp, fp = (sorted(p.glob("tests/test-*.parquet")) for p in
              (tmp_path / "s.parquet.predictions", tmp_path / "f.parquet.predictions"))  # fmt: skip
    assert [p.name for p in sp] == [p.name for p in fp] and len(sp) == 2
    for a, b in zip(sp, fp, strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


# --- adapters ------------------------------------------------------------------------------------


def _encoder(case: str, hf_models: dict[str, Path]) -> tuple[object, tuple[str, ...]]:
    """The model of a case and the projections its architecture names (its source code)."""
    if case == "timm":
        return create_encoder(MODEL, random_init=True, model_kwargs=TINY_VIT), ("qkv",)
    if case == "dino":  # transformers 5's Dinov2Attention: q_proj, k_proj, v_proj
        return create_encoder(f"hf:{hf_models['dino']}"), ("q_proj", "k_proj", "v_proj")
    if case == "siglip":  # transformers SiglipAttention: q_proj, k_proj, v_proj
        return create_encoder(f"hf:{hf_models['siglip']}"), ("q_proj", "k_proj", "v_proj")
    # open_clip ResidualAttentionBlock: nn.MultiheadAttention, its in_proj_weight parameter
    enc = create_encoder("open_clip:ViT-S-32", random_init=True,
                         model_kwargs={"force_image_size": 32})  # fmt: skip
    return enc, ("in_proj_weight",)


class _Tensors:
    """A source of fixed inputs by row."""

    def __init__(self, X: torch.Tensor) -> None:
        self.X = X
        self.asked: list[int] = []

    def get(self, rows: object, flips: object = None) -> torch.Tensor:
        idx = [int(r) for r in np.asarray(rows)]
        self.asked += idx
        return self.X[torch.as_tensor(idx)]


@pytest.mark.parametrize("case", ["timm", "dino", "siglip", "open_clip"])
def test_lora_trains_only_adapters_and_leaves_the_base_bit_equal(
    case: str, hf_models: dict[str, Path]
) -> None:
    enc, expected = _encoder(case, hf_models)
    readout = find_readout(enc, CPU)
    clf = Classifier(enc, readout=readout, n_out=3, generator=torch.Generator().manual_seed(0))
    targets = resolve_targets(clf.backbone, None, what=case)
    assert targets == expected
    add_lora(clf.backbone, rank=4, alpha=8, targets=targets, seed=0)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    lora = {f"backbone.{n}" for n, _ in adapter_parameters(clf.backbone)}
    assert lora and trainable == lora | {"head.linear.weight", "head.linear.bias"}
    # one adapter pair per targeted projection of every block
    assert len(lora) == 2 * len(expected) * enc.num_layers
    before = {k: v.clone() for k, v in clf.backbone.state_dict().items() if "lora_" not in k}
    X = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = np.arange(24) % 3
    groups = [{"params": [p for p in clf.parameters() if p.requires_grad], "base_lr": 1e-2}]
    fit(clf, _Tensors(X), rows=np.arange(24), y=y, groups=groups, seed=0, device=CPU,
        settings=TrainSettings(epochs=3, min_steps=0, batch_size=8, selection="last"))  # fmt: skip
    after = clf.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed[:3]
    B = [p for n, p in adapter_parameters(clf.backbone) if "lora_B" in n]
    assert all(bool(b.abs().sum() > 0) for b in B)  # B starts at 0: the adapters did train
    clf.eval()
    with torch.no_grad():
        merged = merged_copy(clf)
        out, out_merged = clf(X), merged(X)
        for module in clf.modules():  # the adapters matter: the same model with them off
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(False)
        base = clf(X)
    torch.testing.assert_close(out_merged, out, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(base, out, atol=1e-4)


def test_full_finetuning_trains_every_weight() -> None:
    enc = create_encoder(MODEL, random_init=True, model_kwargs=TINY_VIT)
    clf = Classifier(enc, readout=find_readout(enc, CPU), n_out=1,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    groups = trainable_groups(clf, method="full", lr=1e-3, head_lr=1e-2)
    assert [g["base_lr"] for g in groups] == [1e-2, 1e-3]
    before = {n: p.detach().clone() for n, p in clf.backbone.named_parameters()}
    assert all(p.requires_grad for p in clf.backbone.parameters())
    X = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fit(clf, _Tensors(X), rows=np.arange(16), y=np.arange(16) % 2, groups=groups, seed=0,
        device=CPU, train_mode=True,
        settings=TrainSettings(epochs=2, min_steps=0, batch_size=8, selection="last"))  # fmt: skip
    # every weight of the blocks moved (the final norm, after the readout token, is not used)
    blocks = [n for n in before if n.startswith("blocks.") and n.endswith("weight")]
    moved = [
        n for n in blocks if not torch.equal(before[n], dict(clf.backbone.named_parameters())[n])
    ]
    assert blocks and moved == blocks


def test_merged_weight_is_base_plus_scaled_product() -> None:
    """The merged qkv weight is W + alpha/rank · B A, computed by hand."""
    enc = create_encoder(MODEL, random_init=True, model_kwargs=TINY_VIT)
    add_lora(enc.model, rank=2, alpha=6, targets=("qkv",), seed=3)
    qkv = enc.model.blocks[0].attn.qkv
    with torch.no_grad():
        qkv.lora_B["default"].weight.normal_()
    W = qkv.base_layer.weight.detach().clone()
    A, B = qkv.lora_A["default"].weight.detach(), qkv.lora_B["default"].weight.detach()
    merged = merged_copy(enc.model).blocks[0].attn.qkv.base_layer.weight
    torch.testing.assert_close(merged, W + 3.0 * B @ A)
    assert torch.equal(qkv.base_layer.weight, W)  # the copy was merged, not the model


def test_lora_init_is_seeded() -> None:
    def factors(seed: int) -> list[torch.Tensor]:
        enc = create_encoder(MODEL, random_init=True, model_kwargs=TINY_VIT)
        add_lora(enc.model, rank=2, alpha=4, targets=("qkv",), seed=seed)
        return [p.detach() for _, p in adapter_parameters(enc.model)]

    a, b, c = factors(0), factors(0), factors(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


# --- the training loop ---------------------------------------------------------------------------


class _OutOfMemoryAbove(torch.nn.Module):
    """A module that fails like a full GPU for batches larger than ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def _linear_problem() -> tuple[_Tensors, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 5, generator=g)
    return _Tensors(X), (X[:, 0] + 0.5 * X[:, 1] > 0).long().numpy()


def _train(model: torch.nn.Module, micro: MicroBatch | None, **kw: object) -> torch.nn.Module:
    src, y = _linear_problem()
    groups = [{"params": list(model.parameters()), "base_lr": 0.05}]
    fit(model, src, rows=np.arange(64), y=y, groups=groups, seed=0, device=CPU, micro=micro,
        settings=TrainSettings(epochs=5, min_steps=0, batch_size=16), **kw)  # fmt: skip
    return model


def _head() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(5, 1)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_step() -> None:
    micro = MicroBatch(16)
    a = _train(_OutOfMemoryAbove(_head(), limit=5), micro).inner
    assert micro.size == 4  # 16 → 8 → 4
    b = _train(_head(), MicroBatch(4))  # the same micro-batches from the start
    c = _train(_head(), None)  # whole batches: the same steps up to float rounding
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        torch.testing.assert_close(pa, pc, rtol=1e-5, atol=1e-6)


def test_validation_fold_comes_from_the_n_labels_only() -> None:
    """The epoch choice reads a fold of the training rows (fold_masks' first), never others."""
    src, y = _linear_problem()
    rows = np.arange(10, 50)
    settings = TrainSettings(epochs=3, min_steps=0, batch_size=8)
    train, val = validation_split(y[rows], seed=4, settings=settings)
    np.testing.assert_array_equal(val, np.flatnonzero(fold_masks(y[rows], k=5, seed=4)[0]))
    assert len(train) + len(val) == len(rows) and not set(train) & set(val)
    head = _head()
    f = fit(head, src, rows=rows, y=y[rows], groups=[{"params": list(head.parameters()),
            "base_lr": 0.05}], settings=settings, seed=4, device=CPU)  # fmt: skip
    assert set(src.asked) == set(rows.tolist())
    assert f.n_val == len(val) and f.selection == "best" and 1 <= f.epoch <= 3


def test_autocast_and_channels_last_paths_run_on_the_cpu(clinic: dict[str, Path]) -> None:
    """The CUDA-only options forced on the CPU: bf16 autocast trains the tiny ViT close to
    float32; channels-last batches give a CNN the same results."""
    enc = create_encoder(MODEL, random_init=True, model_kwargs=TINY_VIT)
    ds = parse_data(clinic["data"])
    rows = np.array([i for i in range(40) if i != 7])
    y = np.array([0 if r % 3 else 1 for r in rows])

    def run(amp: bool, model: object, channels_last: bool = False) -> torch.Tensor:
        src = ImageSource(ds, enc.transform, device=CPU, channels_last=channels_last)
        clf = Classifier(model, readout=find_readout(model, CPU), n_out=1,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
        if channels_last:
            clf.backbone.to(memory_format=torch.channels_last)
            assert src.get(rows[:2]).is_contiguous(memory_format=torch.channels_last)
        clf.backbone.requires_grad_(True)
        fit(clf, src, rows=rows, y=y, groups=[{"params": list(clf.parameters()), "base_lr": 1e-3}],
            settings=TrainSettings(epochs=2, min_steps=0, batch_size=13, selection="last"),
            seed=0, device=CPU, amp=amp, train_mode=True)  # fmt: skip
        return predict(clf, src, rows, micro=MicroBatch(8), device=CPU, amp=amp)[:, 0]

    import copy

    fp32, bf16 = run(False, copy.deepcopy(enc)), run(True, copy.deepcopy(enc))
    assert torch.isfinite(bf16).all() and not torch.equal(fp32, bf16)
    assert float(np.corrcoef(fp32.numpy(), bf16.numpy())[0, 1]) > 0.9
    cnn = create_encoder("timm:resnet18", random_init=True)
    default, cl = run(False, copy.deepcopy(cnn)), run(False, copy.deepcopy(cnn), True)
    torch.testing.assert_close(cl, default, rtol=1e-3, atol=1e-4)


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """builtin:digits embedded with the tiny ViT, and the sweep's logistic regression on its
    last block's class token (standardised, as the fine-tune's head reads it), with
    predictions."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("digits")
    store = root / "digits.zarr"
    embed(data="builtin:digits", model=MODEL, random_init=True, model_kwargs=TINY_VIT,
          store=str(store), num_workers=0, progress=False)  # fmt: skip
    sweep(store=str(store), out=str(root / "logreg.parquet"), features=FEATURE, n="50,200",
          seeds=3, standardize=True, save_predictions=True, progress=False)  # fmt: skip
    return {"store": store, "logreg": root / "logreg.parquet"}


def test_linear_head_agrees_with_the_sweeps_logreg_within_noise(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    """``--method linear`` (the same loop, frozen features, method defaults) against the
    sweep's L2 logistic regression on the same subsets and the same standardised feature."""
    finetune(data="builtin:digits", out=str(tmp_path / "lin.parquet"), method="linear",
             n="50,200", seeds=3, **_tiny())  # fmt: skip
    lin, ref = pd.read_parquet(tmp_path / "lin.parquet"), pd.read_parquet(digits["logreg"])
    m = lin.merge(ref, on=["task", "n", "seed"], suffixes=("_ft", "_lr"))
    assert len(m) == 6 and (m["feature_ft"] == m["feature_lr"]).all()
    diff = m["auroc_ft"] - m["auroc_lr"]
    noise = ref.groupby("n")["auroc"].std().max()  # seed-to-seed spread of the reference
    assert ref["auroc"].min() > 0.7  # a curve worth agreeing with (chance is 0.5)
    assert abs(diff.groupby(m["n"]).mean()).max() < max(0.03, 3 * noise), m
    assert abs(diff).max() < 0.05, m


def test_lora_rows_compare_and_report_against_the_probe(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    """LoRA rows join the sweep's table unchanged: `fmprobe compare` tests lora-r4 against
    logreg with the paired bootstrap (each arm's mean equals its rows' AUROC), and
    `fmprobe report` draws both (a learning-curve panel per probe)."""
    out = tmp_path / "lora.parquet"
    report = finetune(data="builtin:digits", out=str(out), method="lora", rank=4, n="50",
                      seeds=2, save_predictions=True, **_tiny(**QUICK))  # fmt: skip
    assert report.probe == "lora-r4" and report.trained == 2
    lora, ref = pd.read_parquet(out), pd.read_parquet(digits["logreg"])
    assert list(lora.columns) == list(ref.columns)
    # 40 of the 50 labels train (a fifth validates): 3 steps per epoch, the best of 2 epochs
    assert set(lora["n_iter"]) <= {3, 6}
    both = tmp_path / "both.parquet"
    pd.concat([ref, lora], ignore_index=True).to_parquet(both)
    folder = tmp_path / "both.parquet.predictions"
    (folder / "tests").mkdir(parents=True)
    for src in (Path(str(digits["logreg"]) + ".predictions"), Path(str(out) + ".predictions")):
        for p in [*src.glob("*.parquet"), *src.glob("tests/*.parquet")]:
            (folder / p.relative_to(src)).write_bytes(p.read_bytes())
    p = run_cli("compare", str(both), "--compare", "probe", "--a", "lora-r4", "--b", "logreg",
                "--feature", FEATURE, "--n", "50", "--replicates", "50", "--json")  # fmt: skip
    assert p.exit_code == 0, p.stderr
    rec = next(r for r in json.loads(p.stdout) if r["task"] == "label")
    ref50 = ref[ref["n"] == 50]
    np.testing.assert_allclose(rec["a_mean"], lora["auroc"].mean(), atol=1e-6)
    np.testing.assert_allclose(rec["b_mean"], ref50[ref50.seed < 3]["auroc"].mean(), atol=1e-6)
    r = run_cli("report", str(both), "--out", str(tmp_path / "report"), "--json")
    assert r.exit_code == 0, r.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert "lora-r4" in page and "logreg" in page and "<svg" in page  # a panel per probe


def _cli_args(out: Path) -> list[str]:
    return ["finetune", "--data", "builtin:digits", "--model", MODEL, "--random-init",
            "--model-kwargs", json.dumps(TINY_VIT), "--method", "lora", "--rank", "2",
            "--n", "20,40", "--seeds", "2", "--epochs", "2", "--min-steps", "4",
            "--batch-size", "16", "--out", str(out), "--quiet"]  # fmt: skip


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """A run that dies (as kill -9 would) after its first unit, rerun, gives the table of an
    uninterrupted run bit for bit (same seeds, same rows), and reruns nothing twice."""
    full, killed = tmp_path / "full.parquet", tmp_path / "killed.parquet"
    assert run_cli(*_cli_args(full)).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FMPROBE_TEST_DIE_ONCE": str(tmp_path / "died")}
    proc = subprocess.run([sys.executable, "-m", "fmprobe.cli", *_cli_args(killed)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and (tmp_path / "died").exists(), proc.stderr
    parts = list((tmp_path / "killed.parquet.parts").glob("*.parquet"))
    assert len(parts) == 1 and not killed.exists()
    p = run_cli(*_cli_args(killed), "--json")
    assert json.loads(p.stdout)["units_done_before"] == 1
    a = pd.read_parquet(full).drop(columns="fit_seconds")
    b = pd.read_parquet(killed).drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 4 and a["auroc"].notna().all() and a["auroc"].nunique() == 4


def test_shards_of_full_finetuning_merge_into_one_run(tmp_path: Path) -> None:
    """Two array-job shards of ``--method full``, merged, equal one run; a missing or doubled
    shard is refused."""
    kw = _tiny(method="full", n="20,all", seeds=2, **QUICK)
    data = str(_small_folder(tmp_path / "data"))
    finetune(data=data, out=str(tmp_path / "one.parquet"), **kw)
    for i in range(2):
        finetune(data=data, out=str(tmp_path / "r.parquet"), shard=f"{i}/2", **kw)
    shards = [str(tmp_path / f"r.shard-{i}-of-2.parquet") for i in range(2)]
    merged = merge(parts=shards, out=str(tmp_path / "m.parquet"))
    one = pd.read_parquet(tmp_path / "one.parquet")
    cols = [c for c in one.columns if c != "fit_seconds"]
    pd.testing.assert_frame_equal(merged[cols], one[cols])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet")[cols], one[cols])
    assert set(one["probe"]) == {"full"} and list(one["n"]) == [20, 20, 30, 30]
    with pytest.raises(UsageError, match="2 of 4 work units"):
        merge(parts=shards[:1], out=str(tmp_path / "x.parquet"))
    with pytest.raises(UsageError, match="more than one table"):
        merge(parts=[*shards, shards[0]], out=str(tmp_path / "x.parquet"))
    p = run_cli("finetune", "merge", str(tmp_path / "one.parquet.parts" / "config.json"),
                "--out", str(tmp_path / "y.parquet"))  # fmt: skip
    assert p.exit_code == 2 and len(p.stderr.strip().splitlines()) == 1


def _small_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(20):
            img = rng.integers(0, 150, (12, 12)) + (90 if label == "b" else 0)
            Image.fromarray(img.astype(np.uint8)).save(root / label / f"{i:02d}.png")
    return root


def test_ray_engine_equals_local_and_survives_a_killed_worker(tmp_path: Path) -> None:
    """Half the units locally (--shard 0/2), the rest as tasks of a real local Ray cluster whose
    first worker to finish a unit dies: Ray retries, and the table equals one local run."""
    ray = pytest.importorskip("ray")
    data = str(_small_folder(tmp_path / "data"))
    kw = _tiny(method="lora", rank=2, n="10,20", seeds=2, **QUICK)
    finetune(data=data, out=str(tmp_path / "local.parquet"), **kw)
    out = tmp_path / "mixed.parquet"
    finetune(data=data, out=str(out), shard="0/2", **kw)
    os.environ["FMPROBE_TEST_DIE_ONCE"] = str(tmp_path / "died")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        report = finetune(data=data, out=str(out), engine="ray", **kw)
    finally:
        os.environ.pop("FMPROBE_TEST_DIE_ONCE")
        ray.shutdown()
    assert (tmp_path / "died").exists() and report.units_done_before == 2
    a = pd.read_parquet(out).drop(columns="fit_seconds")
    b = pd.read_parquet(tmp_path / "local.parquet").drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(a, b)


def test_a_transformers_model_end_to_end(hf_models: dict[str, Path], tmp_path: Path) -> None:
    data = str(_small_folder(tmp_path / "data"))
    finetune(data=data, model=f"hf:{hf_models['dino']}", out=str(tmp_path / "d.parquet"),
             n="10", seeds=1, progress=False, **QUICK)  # fmt: skip
    row = pd.read_parquet(tmp_path / "d.parquet").iloc[0]
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(tmp_path / "d.parquet").metadata[b"fmprobe_finetune"])
    assert meta["config"]["targets"] == ["q_proj", "k_proj", "v_proj"]
    assert row["status"] == "ok" and row["probe"] == "lora-r8" and row["n"] == 10
    assert row["feature"].endswith("/block2/cls") and 0 <= row["auroc"] <= 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "timm:resnet18", "--random-init"], ["no attention projections", "full"]),
        (["--targets", "qkvv"], ["--targets 'qkvv'", "did you mean 'qkv'"]),
        (["--rank", "0"], ["--rank 0", "positive integer"]),
        (["--alpha", "0"], ["--alpha 0"]),
        (["--method", "lorra"], ["did you mean 'lora'"]),
        (["--method", "full", "--targets", "qkv"], ["--targets is for --method lora"]),
        (["--sampler", "kmeans"], ["random (stratified, nested) subsets only"]),
        (["--test-where", "label=1", "--split-col", "label"], ["pass one"]),
        (["--tasks", "labl"], ["did you mean 'label'"]),
        (["--selection", "first"], ["--selection 'first'"]),
        (["--augment", "rotate"], ["--augment 'rotate'"]),
        (["--batch-size", "0"], ["--batch-size 0"]),
        (["--weights", "missing.pt"], ["--weights and --random-init"]),
        (["--shard", "2/2"], ["--shard"]),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str], words: list[str], tmp_path: Path
) -> None:
    model = ["--model", MODEL, "--random-init", "--model-kwargs", json.dumps(TINY_VIT)]
    if args[:1] == ["--model"]:  # a model of its own
        model, args = args, []
    p = run_cli("finetune", "--data", "builtin:digits", *model, "--out", str(tmp_path / "x.parquet"),
                *args)  # fmt: skip
    lines = p.stderr.strip().splitlines()
    assert p.exit_code == 2 and len(lines) == 1 and lines[0].startswith("fmprobe: error:"), p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not (tmp_path / "x.parquet").exists()
