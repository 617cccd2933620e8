"""The attention-pooling probe: a plain PyTorch reference, batching, a task only attention
solves, streaming memory, determinism."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch import nn

from fmprobe.errors import UsageError
from fmprobe.probes.attnpool import (
    AttnPoolConfig,
    attnpool_scores,
    fit_attnpool,
    init_params,
)
from fmprobe.probes.logreg import fit_logreg
from fmprobe.probes.metrics import auroc


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # two shared cores: tiny tensors on several OpenMP threads spend their time waiting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the reference: one problem, nn modules, torch.optim.AdamW -------------------------------


class RefProbe(nn.Module):
    """Each layer's tokens LayerNorm-ed (no affine) and projected, concatenated along channels,
    pooled by nn.MultiheadAttention with one learned query, then a linear classifier."""

    def __init__(self, dims: list[int], width: int, heads: int, k_out: int) -> None:
        super().__init__()
        C = width * len(dims)
        self.proj = nn.ModuleList(nn.Linear(d, width) for d in dims)
        self.query = nn.Parameter(torch.zeros(1, 1, C))
        self.attn = nn.MultiheadAttention(C, heads, batch_first=True)
        self.head = nn.Linear(C, k_out)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        z = torch.cat(
            [p(F.layer_norm(x, x.shape[-1:])) for p, x in zip(self.proj, xs, strict=True)], -1
        )
        o, _ = self.attn(self.query.expand(len(z), -1, -1), z, z, need_weights=False)
        return self.head(o[:, 0])

    def load(self, p: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, lin in enumerate(self.proj):
                lin.weight.copy_(p[f"proj_w{i}"])
                lin.bias.copy_(p[f"proj_b{i}"])
            self.query.copy_(p["query"].view(1, 1, -1))
            self.attn.in_proj_weight.copy_(torch.cat([p["q_w"], p["k_w"], p["v_w"]]))
            self.attn.in_proj_bias.copy_(
                torch.cat([p["q_b"], torch.zeros_like(p["q_b"]), p["v_b"]])
            )
            self.attn.out_proj.weight.copy_(p["o_w"])
            self.attn.out_proj.bias.copy_(p["o_b"])
            self.head.weight.copy_(p["head_w"])
            self.head.bias.copy_(p["head_b"])

    def params(self) -> dict[str, torch.Tensor]:
        """Parameters named as AttnPoolModel.params_ (the key bias has no counterpart: it
        cannot change the output)."""
        C = self.query.shape[-1]
        w, b = self.attn.in_proj_weight.detach(), self.attn.in_proj_bias.detach()
        out = {f"proj_w{i}": lin.weight.detach() for i, lin in enumerate(self.proj)}
        out |= {f"proj_b{i}": lin.bias.detach() for i, lin in enumerate(self.proj)}
        return out | {
            "query": self.query.detach().view(-1),
            "q_w": w[:C],
            "k_w": w[C : 2 * C],
            "v_w": w[2 * C :],
            "q_b": b[:C],
            "v_b": b[2 * C :],
            "o_w": self.attn.out_proj.weight.detach(),
            "o_b": self.attn.out_proj.bias.detach(),
            "head_w": self.head.weight.detach(),
            "head_b": self.head.bias.detach(),
        }


def reference_fit(
    tokens: list[np.ndarray],
    rows: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    cfg: AttnPoolConfig,
    epochs: int,
) -> list[RefProbe]:
    """Train one problem plainly; return a copy of the model after each epoch."""
    dims = [t.shape[2] for t in tokens]
    width = cfg.width or max(dims)
    k_out = 1 if n_classes == 2 else n_classes
    model = RefProbe(dims, width, cfg.heads, k_out)
    model.load(init_params(seed, dims, width, k_out))
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = round(cfg.warmup * total)
    step = 0
    snapshots = []
    for _ in range(epochs):
        perm = rng.permutation(len(rows))
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if step < warm:
                factor = (step + 1) / warm
            elif cfg.schedule == "constant":
                factor = 1.0
            else:
                factor = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor
            xs = [torch.as_tensor(t[rows[idx]], dtype=torch.float32) for t in tokens]
            out = model(xs)
            target = torch.as_tensor(y[idx])
            if n_classes == 2:
                loss = F.binary_cross_entropy_with_logits(out[:, 0], target.float())
            else:
                loss = F.cross_entropy(out, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        snapshot = RefProbe(dims, width, cfg.heads, k_out)
        snapshot.load_state_dict(model.state_dict())
        snapshots.append(snapshot)
    return snapshots


def _tokens(
    N: int = 60, L: int = 7, dims: tuple[int, ...] = (6, 10), seed: int = 0
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(N, L, d)) * (1 + i)).astype(np.float32) for i, d in enumerate(dims)]


def _labels(tokens: list[np.ndarray], n_classes: int) -> np.ndarray:
    s = tokens[0][:, :, 0].max(1) + tokens[1][:, 0, 1]
    return np.digitize(s, np.quantile(s, np.linspace(0, 1, n_classes + 1)[1:-1]))


# --- equivalence with the reference -----------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3])
def test_one_problem_matches_plain_pytorch_step_by_step(n_classes: int) -> None:
    tokens = _tokens()
    y_all = _labels(tokens, n_classes)
    rows = np.random.default_rng(1).permutation(50)[:40]
    y = y_all[rows]
    # 3 steps an epoch (16, 16, 8 rows); warm-up then cosine over 3 epochs
    cfg = AttnPoolConfig(width=8, heads=4, epochs=3, batch_size=16, min_steps=0, lr=3e-3,
                         warmup=0.2, selection="last")  # fmt: skip
    ref = reference_fit(tokens, rows, y, n_classes=n_classes, seed=7, cfg=cfg, epochs=3)
    test_rows = np.arange(50, 60)
    # the schedule is 3 epochs long whatever the stop: a refit stopped after epoch e is the
    # first e epochs of a full run; compare after each epoch through that path
    for e in (1, 2, 3):
        model = _fit_stopped(tokens, rows, y, n_classes=n_classes, seed=7, cfg=cfg, stop=e)
        got = {k: v[0] for k, v in model.params_.items()}
        want = ref[e - 1].params()
        assert got.keys() == want.keys()
        for k in got:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-5, msg=f"epoch {e} {k}")
        with torch.no_grad():
            out = ref[e - 1]([torch.as_tensor(t[test_rows]) for t in tokens])
        scores = attnpool_scores(model, tokens=tokens, rows=test_rows)[0]
        expected = out[:, 0] if n_classes == 2 else torch.softmax(out, -1)
        np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-5)


def _fit_stopped(
    tokens: list[np.ndarray],
    rows: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    cfg: AttnPoolConfig,
    stop: int,
) -> Any:
    """Run the engine's training loop for ``stop`` of ``cfg.epochs`` epochs (what a refit does)."""
    from fmprobe.probes import attnpool as ap

    dims = tuple(t.shape[2] for t in tokens)
    width = cfg.width or max(dims)
    k_out = 1 if n_classes == 2 else n_classes
    init = init_params(seed, dims, width, k_out)
    params = {k: v[None].clone() for k, v in init.items()}
    source = ap.TokenSource(tokens, chunk_rows=cfg.chunk_rows, device=torch.device("cpu"),
                             compute_dtype=torch.float32)  # fmt: skip
    problem = ap.Problem(seed, rows, y, epochs=cfg.epochs, stop=stop)
    ap.train_problems([problem], params, source, n_classes=n_classes, config=cfg, keep_best=False)
    return ap.AttnPoolModel(params_=params, config=cfg, n_classes=n_classes, dims=dims,
                            n_tokens=tokens[0].shape[1])  # fmt: skip


def test_public_fit_matches_reference_and_small_chunks_change_nothing() -> None:
    tokens = _tokens()
    y_all = _labels(tokens, 2)
    rows = np.arange(40)
    cfg = AttnPoolConfig(width=8, heads=2, epochs=2, batch_size=16, min_steps=0, lr=3e-3,
                         selection="last", chunk_rows=5, cache_bytes=0)  # fmt: skip
    model = fit_attnpool(tokens=tokens, train_rows=rows[None], y_train=y_all[rows][None],
                         n_classes=2, seeds=[3], config=cfg)  # fmt: skip
    ref = reference_fit(tokens, rows, y_all[rows], n_classes=2, seed=3, cfg=cfg, epochs=2)[-1]
    for k, v in ref.params().items():
        torch.testing.assert_close(model.params_[k][0], v, rtol=1e-4, atol=2e-5, msg=k)
    info = model.problems[0]
    assert (info.selection, info.epoch, info.steps, info.n_val) == ("last", 2, 6, 0)


def test_batched_problems_equal_single_runs() -> None:
    tokens = _tokens(N=80)
    y_all = _labels(tokens, 2)
    rng = np.random.default_rng(0)
    # different n (ragged), different seeds; validation and refit on
    rows = [rng.permutation(70)[:n] for n in (20, 45, 60)]
    ys = [y_all[r] for r in rows]
    cfg = AttnPoolConfig(width=8, heads=2, epochs=4, batch_size=16, min_steps=0, lr=3e-3)
    test_rows = np.arange(70, 80)
    batched = fit_attnpool(tokens=tokens, train_rows=rows, y_train=ys, n_classes=2,
                           seeds=[0, 1, 2], config=cfg)  # fmt: skip
    together = attnpool_scores(batched, tokens=tokens, rows=test_rows)
    for p in range(3):
        alone = fit_attnpool(tokens=tokens, train_rows=[rows[p]], y_train=[ys[p]], n_classes=2,
                             seeds=[p], config=cfg)  # fmt: skip
        a, b = alone.problems[0], batched.problems[p]
        assert replace(a, val_loss=0.0) == replace(b, val_loss=0.0)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
        np.testing.assert_allclose(
            together[p], attnpool_scores(alone, tokens=tokens, rows=test_rows)[0], rtol=1e-4,
            atol=1e-5,
        )  # fmt: skip


# --- what attention pooling is for ------------------------------------------------------------


def _single_patch_task(
    N: int, L: int = 32, D: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Positives carry a signal vector s in one random token, negatives nowhere: the token
    mean moves by s/L only, within the noise of L tokens."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, L, D)).astype(np.float32)
    y = rng.integers(0, 2, N)
    s = np.zeros(D, np.float32)
    s[:4] = 4.0
    where = rng.integers(0, L, N)
    x[y == 1, where[y == 1]] += s
    return x, y


def test_attention_pooling_beats_mean_pooling_on_a_single_patch_signal() -> None:
    x, y = _single_patch_task(700)
    train, test = np.arange(400), np.arange(400, 700)
    cfg = AttnPoolConfig(heads=2, epochs=25, min_steps=100, lr=3e-3)
    model = fit_attnpool(tokens=[x], train_rows=train[None], y_train=y[train][None],
                         n_classes=2, seeds=[0], config=cfg)  # fmt: skip
    s_attn = torch.as_tensor(attnpool_scores(model, tokens=[x], rows=test))
    mean = torch.as_tensor(x.mean(1), dtype=torch.float64)
    fit = fit_logreg(mean[train][None], torch.as_tensor(y[train])[None], 1.0, n_classes=2)
    s_mean = fit.decision_function(mean[test])
    y_test = torch.as_tensor(y[test])
    a_attn, a_mean = float(auroc(s_attn, y_test)[0]), float(auroc(s_mean, y_test)[0])
    assert a_attn > 0.95, a_attn
    assert a_attn > a_mean + 0.15, (a_attn, a_mean)


# --- streaming --------------------------------------------------------------------------------


class CountingArray:
    """A zarr token array that records how many rows each read asks for."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape = array.shape
        self.reads: list[int] = []

    def __getitem__(self, key: Any) -> Any:
        raise AssertionError("the probe reads rows through oindex")

    @property
    def oindex(self) -> Any:
        outer = self

        class _Index:
            def __getitem__(self, rows: np.ndarray) -> np.ndarray:
                outer.reads.append(len(rows))
                return np.asarray(outer.array.oindex[rows])

        return _Index()


def test_streaming_reads_bounded_row_chunks(tmp_path: Any) -> None:
    x, y = _single_patch_task(300, L=16, D=8)
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    arr = group.create_array("tokens", shape=x.shape, chunks=(16, 16, 8), dtype="float16")
    arr[:] = x.astype(np.float16)
    counted = CountingArray(arr)
    cfg = AttnPoolConfig(heads=2, epochs=2, batch_size=64, min_steps=0, chunk_rows=24,
                         cache_bytes=0)  # fmt: skip
    rows = np.stack([np.arange(0, 200), np.arange(50, 250)])
    model = fit_attnpool(tokens=[counted], train_rows=rows, y_train=y[rows], n_classes=2,
                         seeds=[0, 1], config=cfg)  # fmt: skip
    assert counted.reads and max(counted.reads) <= 24
    # every step reads the union of both problems' batches once: far fewer rows than pairs
    epochs_run = sum(p.epochs + p.epoch for p in model.problems) // 2
    assert sum(counted.reads) < 2 * 200 * epochs_run + 250 * epochs_run
    counted.reads.clear()
    attnpool_scores(model, tokens=[counted], rows=np.arange(250, 300), chunk_rows=10)
    assert counted.reads == [10] * 5
    # with a cache the training rows are read once, in chunks
    counted.reads.clear()
    fit_attnpool(tokens=[counted], train_rows=rows, y_train=y[rows], n_classes=2, seeds=[0, 1],
                 config=AttnPoolConfig(heads=2, epochs=2, min_steps=0, chunk_rows=24))  # fmt: skip
    assert sum(counted.reads) == 250 and max(counted.reads) <= 24


# --- determinism, selection, errors -----------------------------------------------------------


def test_same_seed_same_result_and_selection_info() -> None:
    tokens = _tokens(N=80)
    y_all = _labels(tokens, 2)
    rows = np.stack([np.arange(0, 50), np.arange(10, 60)])
    cfg = AttnPoolConfig(width=8, heads=2, epochs=6, batch_size=16, min_steps=0, lr=3e-3)

    def run(seeds: list[int], config: AttnPoolConfig = cfg) -> tuple[np.ndarray, Any]:
        m = fit_attnpool(tokens=tokens, train_rows=rows, y_train=y_all[rows], n_classes=2,
                         seeds=seeds, config=config)  # fmt: skip
        return attnpool_scores(m, tokens=tokens, rows=np.arange(60, 80)), m.problems

    a, info = run([0, 1])
    b, _ = run([0, 1])
    np.testing.assert_array_equal(a, b)
    c, _ = run([5, 1])
    assert not np.allclose(a[0], c[0]) and np.allclose(a[1], c[1], atol=1e-5)
    for p in info:
        assert p.selection == "refit" and p.n_val == 10 and 1 <= p.epoch <= 6
        assert np.isfinite(p.val_loss) and p.steps == p.epoch * 4  # refit: 50 rows, 4 steps
    _, best = run([0, 1], AttnPoolConfig(width=8, heads=2, epochs=6, batch_size=16, min_steps=0,
                                         lr=3e-3, selection="best", patience=2))  # fmt: skip
    assert all(p.selection == "best" and p.steps == p.epoch * 3 for p in best)  # 40 rows


def test_rare_class_falls_back_to_fixed_epochs_and_min_steps() -> None:
    tokens = _tokens()
    rows = np.arange(30)
    y = np.zeros(30, int)
    y[3] = 1  # one positive: no validation fold can hold it out
    model = fit_attnpool(tokens=tokens, train_rows=rows[None], y_train=y[None], n_classes=2,
                         seeds=[0], config=AttnPoolConfig(width=4, epochs=2, min_steps=7,
                                                          batch_size=16))  # fmt: skip
    info = model.problems[0]
    assert (info.selection, info.n_val, info.epochs, info.steps) == ("last", 0, 4, 8)
    assert np.isnan(info.val_loss)


def test_errors_name_the_fix() -> None:
    tokens = _tokens()
    with pytest.raises(UsageError, match="heads"):
        fit_attnpool(tokens=tokens, train_rows=np.arange(10)[None], y_train=np.zeros((1, 10), int),
                     n_classes=2, seeds=[0], config=AttnPoolConfig(width=5, heads=3))  # fmt: skip
    with pytest.raises(UsageError, match="same N and L"):
        fit_attnpool(tokens=[tokens[0], tokens[1][:, :3]], train_rows=np.arange(10)[None],
                     y_train=np.zeros((1, 10), int), n_classes=2, seeds=[0])  # fmt: skip
    with pytest.raises(UsageError, match="selection"):
        AttnPoolConfig(selection="early")
    with pytest.raises(UsageError, match="valid settings"):
        AttnPoolConfig.from_dict({"epoch": 3})
    bad = [t.copy() for t in tokens]
    bad[0][4] = np.nan
    with pytest.raises(UsageError, match=r"rows \[4\] give non-finite"):
        fit_attnpool(tokens=bad, train_rows=np.arange(10)[None], y_train=np.zeros((1, 10), int),
                     n_classes=2, seeds=[0],
                     config=AttnPoolConfig(width=4, heads=2, epochs=1, min_steps=0))  # fmt: skip
