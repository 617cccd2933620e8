"""Batched metrics against sklearn.metrics, row by row on each row's counted examples."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from fmprobe.probes.metrics import (
    auroc,
    average_precision,
    balanced_accuracy,
    classification_metrics,
    multiclass_auroc,
    multiclass_average_precision,
)

ATOL = 1e-12


def _scores(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "continuous":
        return rng.normal(size=shape)
    if kind == "round1":
        return np.round(rng.uniform(size=shape), 1)
    if kind == "few":
        return rng.integers(0, 3, size=shape).astype(np.float64)
    if kind == "equal":
        return np.full(shape, 0.25)
    if kind == "float32":
        # Values that collide after rounding to float32 but differ in float64.
        base = rng.integers(0, 5, size=shape).astype(np.float64)
        return (base + rng.uniform(0, 1e-9, size=shape)).astype(np.float32)
    raise AssertionError(kind)


def _binary_labels(rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    y = np.zeros((B, T), dtype=np.int64)
    for b in range(B):
        pattern = b % 5
        if pattern == 0:
            y[b] = rng.integers(0, 2, size=T)
        elif pattern == 1:
            y[b] = rng.uniform(size=T) < 0.1  # rare positives
        elif pattern == 2:
            y[b] = rng.uniform(size=T) < 0.9  # rare negatives
        elif pattern == 3:
            y[b] = b % 2  # single class -> NaN
        else:
            y[b, rng.integers(0, T)] = 1  # exactly one positive
    return y


def _mask(rng: np.random.Generator, B: int, T: int, mode: str) -> np.ndarray | None:
    if mode == "none":
        return None
    if mode == "shared":
        return rng.uniform(size=T) < 0.7
    return rng.uniform(size=(B, T)) < 0.6


def _counted(mask: np.ndarray | None, b: int, T: int) -> np.ndarray:
    if mask is None:
        return np.ones(T, dtype=bool)
    return mask if mask.ndim == 1 else mask[b]


def _ref_binary(s: np.ndarray, y: np.ndarray, metric: str) -> float:
    if metric == "auroc":
        return roc_auc_score(y, s) if len(np.unique(y)) == 2 else np.nan
    return average_precision_score(y, s) if y.sum() > 0 else np.nan


def _t(x: np.ndarray | None) -> torch.Tensor | None:
    return None if x is None else torch.from_numpy(x)


@pytest.mark.parametrize("kind", ["continuous", "round1", "few", "equal", "float32"])
@pytest.mark.parametrize("mask_mode", ["none", "shared", "rows"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_binary_matches_sklearn(kind: str, mask_mode: str, dtype: type) -> None:
    """float64 scores take the gather/scatter path, float32 scores on a CPU (the sweep's) the
    packed-key sort: both equal sklearn on the same values."""
    rng = np.random.default_rng(zlib.crc32(f"{kind}-{mask_mode}".encode()))
    B, T = 50, int(rng.integers(5, 60))
    s = _scores(rng, (B, T), kind).astype(dtype)
    if kind == "round1":  # negative scores and signed zeros (−0.0 ties +0.0)
        s = (s - np.asarray(0.5, dtype)) * np.where(rng.uniform(size=(B, T)) < 0.5, 1, -1).astype(
            dtype
        )
    y = _binary_labels(rng, B, T)
    mask = _mask(rng, B, T, mask_mode)
    # Masked labels may be missing: they must never be read.
    y_in = y if mask is None else np.where(mask, y, -1)
    got_roc = auroc(torch.from_numpy(s), torch.from_numpy(y_in), _t(mask)).numpy()
    got_ap = average_precision(torch.from_numpy(s), torch.from_numpy(y_in), _t(mask)).numpy()
    for b in range(B):
        c = _counted(mask, b, T)
        for metric, got in (("auroc", got_roc), ("ap", got_ap)):
            want = _ref_binary(s[b, c].astype(np.float64), y[b, c], metric)
            np.testing.assert_allclose(got[b], want, atol=ATOL, rtol=0, err_msg=f"{metric} {b}")


def test_binary_label_dtypes_and_shared_labels() -> None:
    rng = np.random.default_rng(0)
    s = torch.from_numpy(np.round(rng.uniform(size=(7, 30)), 1))
    y = rng.integers(0, 2, size=30)
    want = auroc(s, torch.from_numpy(y).expand(7, 30))
    for lab in (torch.from_numpy(y).bool(), torch.from_numpy(y).float(), torch.from_numpy(y)):
        assert torch.equal(auroc(s, lab), want)
    for b in range(7):
        assert want[b].item() == pytest.approx(roc_auc_score(y, s[b].numpy()), abs=ATOL)
    assert want.dtype == torch.float64 and want.shape == (7,)


def test_nan_labels_under_mask_are_ignored() -> None:
    s = torch.tensor([[0.1, 0.4, 0.4, 0.8, 0.3]])
    y = torch.tensor([0.0, 0.0, 1.0, 1.0, float("nan")])
    m = torch.tensor([True, True, True, True, False])
    assert auroc(s, y, m).item() == pytest.approx(0.875)
    with pytest.raises(ValueError):
        auroc(s, y)


def test_single_class_and_empty_rows_are_nan() -> None:
    s = torch.rand(4, 6)
    y = torch.tensor([[1, 1, 1, 1, 1, 1], [0] * 6, [0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 1]])
    m = torch.ones(4, 6, dtype=torch.bool)
    m[3] = False
    roc = auroc(s, y, m)
    ap = average_precision(s, y, m)
    assert torch.isnan(roc[[0, 1, 3]]).all() and not torch.isnan(roc[2])
    assert ap[0].item() == 1.0  # all positive: sklearn also gives 1
    assert torch.isnan(ap[[1, 3]]).all()


def test_nan_score_in_counted_row_gives_nan() -> None:
    s = torch.tensor([[0.1, float("nan"), 0.3, 0.4], [0.1, float("nan"), 0.3, 0.4]])
    y = torch.tensor([0, 1, 0, 1])
    m = torch.tensor([[True] * 4, [True, False, True, True]])
    roc = auroc(s, y, m)
    assert torch.isnan(roc[0]) and roc[1].item() == 1.0


@pytest.mark.parametrize("K", [2, 3, 4])
def test_a_nan_score_makes_every_metric_nan_binary_or_multiclass(K: int) -> None:
    """The rule: a NaN among a row's counted scores (any class) makes all three metrics NaN,
    where scikit-learn raises; NaN rows aside, and NaN under the mask, results are
    scikit-learn's on the same rows."""
    rng = np.random.default_rng(20 + K)
    B, T = 8, 60
    shape = (B, T) if K == 2 else (B, T, K)
    s = rng.normal(size=shape)
    y = rng.integers(0, K, size=T)
    m = np.ones((B, T), dtype=bool)
    bad = [1, 4, 6]
    for b, (t, c) in zip(bad, [(3, 0), (10, K - 1), (59, 1 % K)], strict=True):
        s[(b, t) if K == 2 else (b, t, c)] = np.nan
    s[(2, 5) if K == 2 else (2, 5, K - 1)] = np.nan  # row 2: a NaN that is not counted
    m[2, 5] = False
    out = classification_metrics(_t(s), _t(y), _t(m), n_classes=K, threshold=0.0)
    for name in ("auroc", "auprc", "balanced_accuracy"):
        assert torch.isnan(out[name][bad]).all(), name
    with pytest.raises(ValueError, match="NaN"):  # row 1 holds a NaN in class 0's column
        roc_auc_score(y == 0, s[1] if K == 2 else s[1][:, 0])
    for b in sorted(set(range(B)) - set(bad)):
        c = m[b]
        if K == 2:
            want = (roc_auc_score(y[c], s[b, c]), average_precision_score(y[c], s[b, c]),
                    balanced_accuracy_score(y[c], s[b, c] > 0))  # fmt: skip
        else:
            roc, ap = _ref_multiclass(s[b, c], y[c], K)
            want = (roc, ap, balanced_accuracy_score(y[c], s[b, c].argmax(1)))
        got = tuple(out[name][b].item() for name in ("auroc", "auprc", "balanced_accuracy"))
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    if K > 2:
        for fn in (multiclass_auroc, multiclass_average_precision):
            r = fn(_t(s), _t(y), _t(m))
            assert torch.isnan(r[bad]).all() and not torch.isnan(r[2])


def _multiclass_labels(rng: np.random.Generator, B: int, T: int, K: int) -> np.ndarray:
    y = rng.integers(0, K, size=(B, T))
    for b in range(B):
        if b % 4 == 1:
            y[b][y[b] == K - 1] = 0  # one class absent
        elif b % 4 == 2:
            y[b] = np.minimum(y[b], 1)  # only two classes
        elif b % 7 == 3:
            y[b] = 2  # single class -> NaN AUROC
    return y


def _ref_multiclass(s: np.ndarray, y: np.ndarray, K: int) -> tuple[float, float]:
    """Mean over classes present with both sides (AUROC) / with a positive (AP)."""
    rocs, aps = [], []
    for c in range(K):
        yc = (y == c).astype(int)
        if 0 < yc.sum() < len(yc):
            rocs.append(roc_auc_score(yc, s[:, c]))
        if yc.sum() > 0:
            aps.append(average_precision_score(yc, s[:, c]))
    return (float(np.mean(rocs)) if rocs else np.nan, float(np.mean(aps)) if aps else np.nan)


@pytest.mark.parametrize("K", [3, 5])
@pytest.mark.parametrize("kind", ["continuous", "round1", "float32"])
@pytest.mark.parametrize("mask_mode", ["none", "rows"])
def test_multiclass_matches_sklearn(K: int, kind: str, mask_mode: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{K}-{kind}-{mask_mode}".encode()))
    B, T = 30, int(rng.integers(8, 50))
    s = _scores(rng, (B, T, K), kind)
    y = _multiclass_labels(rng, B, T, K)
    mask = _mask(rng, B, T, mask_mode)
    y_in = y if mask is None else np.where(mask, y, -1)
    got_roc = multiclass_auroc(torch.from_numpy(s), torch.from_numpy(y_in), _t(mask)).numpy()
    got_ap = multiclass_average_precision(
        torch.from_numpy(s), torch.from_numpy(y_in), _t(mask)
    ).numpy()
    for b in range(B):
        c = _counted(mask, b, T)
        sb, yb = s[b, c].astype(np.float64), y[b, c]
        want_roc, want_ap = _ref_multiclass(sb, yb, K)
        np.testing.assert_allclose(got_roc[b], want_roc, atol=ATOL, rtol=0)
        np.testing.assert_allclose(got_ap[b], want_ap, atol=ATOL, rtol=0)


@pytest.mark.parametrize("K", [3, 5])
def test_multiclass_matches_sklearn_ovr_all_classes_present(K: int) -> None:
    rng = np.random.default_rng(K)
    B, T = 20, 40
    logits = np.round(rng.normal(size=(B, T, K)), 1)
    proba = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    y = np.stack([rng.permutation(np.arange(T) % K) for _ in range(B)])
    got_roc = multiclass_auroc(torch.from_numpy(proba), torch.from_numpy(y)).numpy()
    got_ap = multiclass_average_precision(torch.from_numpy(proba), torch.from_numpy(y)).numpy()
    for b in range(B):
        want_roc = roc_auc_score(y[b], proba[b], multi_class="ovr", average="macro")
        yb = label_binarize(y[b], classes=list(range(K)))
        want_ap = average_precision_score(yb, proba[b], average="macro")
        assert got_roc[b] == pytest.approx(want_roc, abs=ATOL)
        assert got_ap[b] == pytest.approx(want_ap, abs=ATOL)


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("mask_mode", ["none", "shared", "rows"])
def test_balanced_accuracy_matches_sklearn(K: int, mask_mode: str) -> None:
    rng = np.random.default_rng(10 * K + len(mask_mode))
    B, T = 40, int(rng.integers(5, 40))
    y = rng.integers(0, K, size=(B, T))
    pred = rng.integers(0, K, size=(B, T))
    y[1::3] = np.minimum(y[1::3], K - 2)  # class K-1 never true, but may be predicted
    pred[2::5] = 0  # classes never predicted
    mask = _mask(rng, B, T, mask_mode)
    got = balanced_accuracy(
        torch.from_numpy(pred), torch.from_numpy(y), _t(mask), n_classes=K
    ).numpy()
    for b in range(B):
        c = _counted(mask, b, T)
        if not c.any():
            assert np.isnan(got[b])
            continue
        with warnings.catch_warnings():
            # "y_pred contains classes not in y_true" / "A single label was found".
            warnings.simplefilter("ignore", UserWarning)
            want = balanced_accuracy_score(y[b, c], pred[b, c])
        np.testing.assert_allclose(got[b], want, atol=ATOL, rtol=0)


def test_balanced_accuracy_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError):
        balanced_accuracy(torch.tensor([0, 1]), torch.tensor([0, 3]), n_classes=3)
    m = torch.tensor([True, False])
    out = balanced_accuracy(torch.tensor([0, 1]), torch.tensor([0, -1]), m, n_classes=3)
    assert out.item() == 1.0


def test_classification_metrics_binary_and_multiclass() -> None:
    rng = np.random.default_rng(3)
    B, T = 6, 25
    s = torch.from_numpy(rng.normal(size=(B, T)))
    y = torch.from_numpy(rng.integers(0, 2, size=T))
    out = classification_metrics(s, y, n_classes=2, threshold=0.0)
    assert set(out) == {"auroc", "auprc", "balanced_accuracy"}
    assert torch.equal(out["auroc"], auroc(s, y))
    assert torch.equal(out["auprc"], average_precision(s, y))
    for b in range(B):
        want = balanced_accuracy_score(y.numpy(), (s[b] > 0).numpy())
        assert out["balanced_accuracy"][b].item() == pytest.approx(want, abs=ATOL)

    p = torch.from_numpy(rng.dirichlet(np.ones(4), size=(B, T)))
    yk = torch.from_numpy(rng.integers(0, 4, size=(B, T)))
    outk = classification_metrics(p, yk, n_classes=4)
    assert torch.equal(outk["auroc"], multiclass_auroc(p, yk))
    assert torch.equal(outk["auprc"], multiclass_average_precision(p, yk))
    assert torch.equal(outk["balanced_accuracy"], balanced_accuracy(p.argmax(2), yk, n_classes=4))
    for v in (*out.values(), *outk.values()):
        assert v.dtype == torch.float64 and v.shape == (B,)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(7)
    B, T, K = 50, 200, 5
    s = torch.from_numpy(np.round(rng.uniform(size=(B, T)), 1)).float()
    y = torch.from_numpy(rng.integers(0, 2, size=(B, T)))
    m = torch.from_numpy(rng.uniform(size=(B, T)) < 0.7)
    sk = torch.from_numpy(np.round(rng.uniform(size=(B, T, K)), 1)).float()
    yk = torch.from_numpy(rng.integers(0, K, size=(B, T)))
    cases = [
        (classification_metrics, (s, y, m), {"n_classes": 2}),
        (classification_metrics, (sk, yk, m), {"n_classes": K}),
    ]
    for fn, args, kw in cases:
        cpu = fn(*args, **kw)
        gpu = fn(*(a.cuda() for a in args), **kw)
        for name in cpu:
            assert gpu[name].device.type == "cuda"
            torch.testing.assert_close(
                gpu[name].cpu(), cpu[name], atol=1e-12, rtol=0, equal_nan=True
            )
