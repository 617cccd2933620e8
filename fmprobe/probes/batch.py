"""Fitting and scoring B probe problems of one size at once: what the sweep runs for every
batch of (n, seed) subsets, usable on any stack of training sets.

The problems of a batch share the feature width, the number of training rows n and the
classes they hold; each has its own rows, labels, C and seed. ``fit_score_batch`` chooses C
(``--C auto``: k-fold cross-validation inside each problem's n labels), fits, scores the test
rows and computes the metrics, all batched on the device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from fmprobe.probes.backends import fit_logreg_with
from fmprobe.probes.folds import fold_masks
from fmprobe.probes.logreg import LogRegFit, batched_mv, kernel_max_n
from fmprobe.probes.metrics import auroc, classification_metrics, multiclass_auroc
from fmprobe.probes.simple import knn_scores, ridge_fit_predict

C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 10))  # sklearn LogisticRegressionCV's Cs=10
BATCH_PROBES = ("logreg", "ridge", "knn")


@dataclass(frozen=True)
class ProbeSettings:
    """How the problems of a batch are fitted.

    Attributes
    ----------
    probe : {"logreg", "ridge", "knn"}
    C : float or "auto"
        Inverse regularisation (ridge: alpha = 1/C), or ``"auto"``: k-fold cross-validation
        over ``C_GRID`` inside each problem (the smaller C on ties).
    folds : int
        Folds of ``C="auto"``.
    standardize : bool
        z-score with each problem's own training statistics.
    knn_k : tuple of int
        The k values of the kNN probe (one result per k).
    max_iter, tol : int, float
        Logistic regression's iteration limit and relative gradient tolerance.
    backend : str
        Logistic-regression solver backend (``fmprobe.probes.backends``).
    certify : bool
        Certify each logistic regression's optimum (``fit_logreg``); the cross-validation fits
        of ``C="auto"``, which only rank the grid, are not certified.
    """

    probe: str
    C: float | str = 1.0
    folds: int = 5
    standardize: bool = False
    knn_k: tuple[int, ...] = (1, 5, 20)
    max_iter: int = 500
    tol: float = 1e-5
    backend: str = "torch"
    certify: bool = True

    @property
    def variants(self) -> tuple[str, ...]:
        """The result names of one problem: ``knn<k>`` per k, else the probe's name."""
        return tuple(f"knn{k}" for k in self.knn_k) if self.probe == "knn" else (self.probe,)


@dataclass
class BatchResult:
    """The fitted problems of one batch.

    Attributes
    ----------
    variants : tuple of str
        Result names (``knn<k>`` per k for kNN).
    scores : list of Tensor
        Per variant, the test scores: (B, T) class-1 scores of a binary task, (B, T, K) class
        probabilities otherwise.
    metrics : list of dict
        Per variant, ``auroc``, ``auprc``, ``balanced_accuracy``: (B,) tensors.
    train_metrics : list of dict
        Per variant, the same metrics and ``logloss`` on the n training labels (resubstitution;
        leave-one-out for kNN): (B,) tensors, NaN where a problem has one class.
    C : Tensor or None
        (B,) the C each problem was fitted with; None for kNN.
    C_selection : list of str
        Per problem: ``fixed``, ``cv``, ``fallback`` (its rarest class has fewer than 2
        labels: C = 1) or ``none`` (kNN).
    converged : ndarray
        (B,) bool; True for probes without an iterative solver.
    n_iter : ndarray
        (B,) int solver iterations (0 without one).
    status : str
        ``ok``, ``classes_missing`` (fitted on the classes present) or ``single_class``.
    seconds : float
        Wall time of the batch.
    """

    variants: tuple[str, ...]
    scores: list[torch.Tensor]
    metrics: list[dict[str, torch.Tensor]]
    train_metrics: list[dict[str, torch.Tensor]]
    C: torch.Tensor | None
    C_selection: list[str]
    converged: np.ndarray
    n_iter: np.ndarray
    status: str
    seconds: float


def standardise(
    Xb: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-problem z-scoring from the problem's own training rows (no test statistics).

    Returns the standardised (B, n, D) rows, the means and the standard deviations (B, D).
    """
    m = torch.ones(Xb.shape[:2], device=Xb.device) if mask is None else mask.float()
    cnt = m.sum(1, keepdim=True).clamp_min(1)
    mu = (Xb * m[..., None]).sum(1) / cnt
    var = (((Xb - mu[:, None]) ** 2) * m[..., None]).sum(1) / cnt
    sd = var.sqrt().clamp_min(1e-12)
    return (Xb - mu[:, None]) / sd[:, None], mu, sd


def fit_and_score(
    Xb: torch.Tensor,
    yb: torch.Tensor,
    X_eval: torch.Tensor,
    C: torch.Tensor,
    *,
    n_classes: int,
    settings: ProbeSettings,
    mask: torch.Tensor | None = None,
    train_scores: list[torch.Tensor] | None = None,
    init: LogRegFit | None = None,
    fits: list[LogRegFit] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Fit B problems (rows ``Xb`` (B, n, D), labels ``yb`` (B, n), ``mask`` (B, n) of the rows
    each problem trains on) and score ``X_eval`` ((T, D) shared, or (B, T, D) per problem).

    Returns per-variant scores (one per k for kNN), and convergence flags / iteration counts
    (None for probes without an iterative solver). With ``train_scores`` (a list to fill),
    each variant's scores of the training rows themselves are appended to it, (B, n) or
    (B, n, K), from the same fit: resubstitution for logistic regression and ridge,
    leave-one-out for kNN. Logistic regression starts from ``init`` (a warm start, on the
    features as fitted: standardised ones with ``settings.standardize``) and appends its fit to
    ``fits`` when given.
    """
    probe = settings.probe
    if probe == "knn":
        if X_eval.dim() == 3:
            raise ValueError("kNN has no hyper-parameter to cross-validate")
        ks = settings.knn_k
        if train_scores is not None:
            train_scores += knn_loo_scores(Xb, yb, ks=ks, n_classes=n_classes)
        return knn_scores(Xb, yb, X_eval, ks=ks, n_classes=n_classes, mask=mask), None, None
    X_raw, mu, sd = Xb, None, None
    if settings.standardize:
        Xb, mu, sd = standardise(Xb, mask)
    if probe == "ridge":
        if train_scores is not None and X_eval.dim() == 2:
            B, n, D = X_raw.shape
            both = torch.cat([X_eval.to(X_raw.dtype), X_raw.reshape(B * n, D)])
            s = _ridge(Xb, yb, both, C, n_classes=n_classes, mask=mask, mu=mu, sd=sd)
            own = s[:, len(X_eval) :].reshape(B, B, n, *s.shape[2:])
            train_scores.append(own[torch.arange(B), torch.arange(B)])
            return [s[:, : len(X_eval)]], None, None
        return [_ridge(Xb, yb, X_eval, C, n_classes=n_classes, mask=mask, mu=mu, sd=sd)], None, None
    fit = fit_logreg_with(
        settings.backend, Xb, yb, C, n_classes=n_classes, mask=mask,
        max_iter=settings.max_iter, tol=settings.tol, init=init, certify=settings.certify,
    )  # fmt: skip
    if fits is not None:
        fits.append(fit)
    coef, intercept = fit.coef, fit.intercept
    if mu is not None and sd is not None:
        # the same linear function on raw features: w/σ, b - μ·(w/σ)
        coef = coef / sd.to(coef.dtype)[:, :, None]
        intercept = intercept - torch.einsum("bd,bdk->bk", mu.to(coef.dtype), coef)
    # scoring in float32: the test-set product is the largest cost at small n, and AUROC
    # only needs the ranking (float32 ties are handled exactly by the metrics)
    X_eval = X_eval.to(torch.float32)
    coef32 = coef.to(torch.float32)
    z = (
        torch.einsum("td,bdk->btk", X_eval, coef32)
        if X_eval.dim() == 2
        else batched_mv(X_eval, coef32)
    )
    z = z + intercept.to(torch.float32)[:, None, :]
    if train_scores is not None:
        # in float64: the training log-loss is a small number that float32 would round
        zt = batched_mv(X_raw.to(coef.dtype), coef) + intercept[:, None, :]
        train_scores.append(zt[..., 0] if zt.shape[-1] == 1 else torch.softmax(zt, dim=-1))
    # binary: the logit ranks as the probability does; multinomial: one-vs-rest AUROC needs the
    # class probabilities (softmax), as scikit-learn's predict_proba gives them
    out = z[..., 0] if z.shape[-1] == 1 else torch.softmax(z, dim=-1)
    return [out], fit.converged, fit.n_iter


def knn_loo_scores(
    X: torch.Tensor, y: torch.Tensor, *, ks: Sequence[int], n_classes: int
) -> list[torch.Tensor]:
    """Leave-one-out cosine kNN scores of each training row among the others of its problem
    (``knn_scores``' convention: (B, n) share of class 1 for binary problems, else (B, n, K));
    k is capped at n − 1, ties broken by training position."""
    Xn = torch.nn.functional.normalize(X.to(torch.float64), dim=-1)
    sim = torch.bmm(Xn, Xn.transpose(1, 2))
    n = X.shape[1]
    sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    kmax = max(1, min(max(ks), n - 1))
    # stable order: the largest similarity first, then the smaller training position
    order = torch.sort(-sim, dim=-1, stable=True).indices[..., :kmax]
    labels = torch.gather(y[:, None, :].expand(-1, n, -1), 2, order)
    onehot = torch.nn.functional.one_hot(labels.long(), n_classes).to(torch.float64).cumsum(2)
    out = []
    for k in ks:
        kk = max(1, min(k, kmax))
        share = onehot[:, :, kk - 1, :] / kk
        out.append(share[..., 1] if n_classes == 2 else share)
    return out


def train_log_loss(scores: torch.Tensor, y: torch.Tensor, *, probe: str) -> torch.Tensor:
    """(B,) mean log-loss of the training labels ``y`` (B, n) under the training scores of a
    probe (``fit_and_score``'s ``train_scores``): logits (binary logreg), class probabilities
    (multinomial logreg, kNN shares, clipped as scikit-learn's ``log_loss`` clips them); NaN for
    ridge, whose decision values are not probabilities."""
    if probe == "ridge":
        return torch.full((scores.shape[0],), float("nan"), dtype=torch.float64)
    s = scores.to(torch.float64)
    if s.dim() == 2 and probe != "knn":  # binary logits
        return torch.nn.functional.binary_cross_entropy_with_logits(
            s, y.to(torch.float64), reduction="none"
        ).mean(1)
    if s.dim() == 2:  # binary kNN: the share of class 1
        s = torch.stack([1 - s, s], dim=-1)
    eps = torch.finfo(torch.float64).eps
    p = s.clamp(eps, 1 - eps)
    p = p / p.sum(-1, keepdim=True)
    return -torch.log(torch.gather(p, 2, y[..., None].long())[..., 0]).mean(1)


def _ridge(
    Xb: torch.Tensor,
    yb: torch.Tensor,
    X_eval: torch.Tensor,
    C: torch.Tensor,
    *,
    n_classes: int,
    mask: torch.Tensor | None,
    mu: torch.Tensor | None,
    sd: torch.Tensor | None,
) -> torch.Tensor:
    if X_eval.dim() == 2 and mu is None:
        return ridge_fit_predict(Xb, yb, X_eval, C, n_classes=n_classes, mask=mask)
    Xe = X_eval if X_eval.dim() == 3 else X_eval.expand(Xb.shape[0], -1, -1)
    if mu is not None and sd is not None:
        Xe = (Xe - mu[:, None]) / sd[:, None]
    per_problem = [
        ridge_fit_predict(
            Xb[i : i + 1], yb[i : i + 1], Xe[i], C[i : i + 1], n_classes=n_classes,
            mask=None if mask is None else mask[i : i + 1],
        )[0]
        for i in range(Xb.shape[0])
    ]  # fmt: skip
    return torch.stack(per_problem)


def _val_metric(
    scores: torch.Tensor, y: torch.Tensor, held_out: torch.Tensor, n_classes: int
) -> torch.Tensor:
    if n_classes == 2:
        return auroc(scores, y, held_out)
    return multiclass_auroc(scores, y, held_out)


def choose_C(
    Xb: torch.Tensor,
    yb: torch.Tensor,
    y_np: np.ndarray,
    *,
    n_classes: int,
    seeds: Sequence[int],
    settings: ProbeSettings,
) -> tuple[torch.Tensor, list[str]]:
    """k-fold CV over ``C_GRID`` inside each problem's n labels: every fold and grid point of
    the problems with the same fold count in one batch.

    Each problem's fold count is its own: ``min(folds, rarest class count)``; a problem whose
    rarest class has fewer than 2 labels cannot be cross-validated and gets C = 1
    (``fallback``). So a problem's C never depends on the other problems of its batch (the
    seeds asked for, the batch size, the engine). Returns the chosen C per problem (ties: the
    smaller C) and how each was chosen (``cv`` or ``fallback``).
    """
    B = Xb.shape[0]
    counts = np.array([np.bincount(y_np[b], minlength=n_classes).min() for b in range(B)])
    ks = np.minimum(settings.folds, counts)
    C = torch.ones(B, dtype=torch.float64, device=Xb.device)
    selection = ["cv" if k >= 2 else "fallback" for k in ks]
    for k in sorted(set(int(v) for v in ks if v >= 2)):
        members = np.flatnonzero(ks == k)
        sel = torch.as_tensor(members, device=Xb.device)
        member_seeds = [int(seeds[int(b)]) for b in members]
        C[sel] = _cv_choice(Xb[sel], yb[sel], y_np[members], k=k, n_classes=n_classes,
                            seeds=member_seeds, settings=settings)  # fmt: skip
    return C, selection


def _cv_choice(
    Xb: torch.Tensor,
    yb: torch.Tensor,
    y_np: np.ndarray,
    *,
    k: int,
    n_classes: int,
    seeds: Sequence[int],
    settings: ProbeSettings,
) -> torch.Tensor:
    """The best C of ``C_GRID`` per problem by mean validation AUROC over ``k`` folds."""
    B, n, D = Xb.shape
    masks = np.stack([fold_masks(y_np[b], k=k, seed=seeds[b]) for b in range(B)])  # (B, k, n)
    G = len(C_GRID)
    grid = torch.tensor(C_GRID, dtype=torch.float64, device=Xb.device)
    cv = replace(settings, certify=False)
    if settings.probe != "logreg" or (n_classes == 2 and n <= kernel_max_n(Xb.device)):
        # closed form or kernel Newton: every fold and grid point in one batch
        held = torch.as_tensor(masks, device=Xb.device)[:, :, None, :].expand(B, k, G, n)
        held = held.reshape(-1, n)
        Xr = Xb[:, None, None].expand(B, k, G, n, D).reshape(-1, n, D)
        yr = yb[:, None, None].expand(B, k, G, n).reshape(-1, n)
        Cr = grid[None, None].expand(B, k, G).reshape(-1)
        scores, _, _ = fit_and_score(Xr, yr, Xr, Cr, n_classes=n_classes, settings=cv,
                                     mask=~held)  # fmt: skip
        metric = _val_metric(scores[0], yr, held, n_classes).reshape(B, k, G)
    else:
        # L-BFGS: the grid in increasing C, each point warm-started from the previous one's
        # solution on the same fold (the regularisation path: far fewer iterations at large C)
        held = torch.as_tensor(masks, device=Xb.device).reshape(-1, n)
        Xr = Xb[:, None].expand(B, k, n, D).reshape(-1, n, D)
        yr = yb[:, None].expand(B, k, n).reshape(-1, n)
        if settings.standardize:  # once for the whole grid, from each fold's training rows
            Xr, _, _ = standardise(Xr, ~held)
            cv = replace(cv, standardize=False)
        metric = torch.empty(B, k, G, dtype=torch.float64, device=Xb.device)
        prev: LogRegFit | None = None
        for g in range(G):
            got: list[LogRegFit] = []
            Cg = grid[g].expand(B * k)
            scores, _, _ = fit_and_score(Xr, yr, Xr, Cg, n_classes=n_classes, settings=cv,
                                         mask=~held, init=prev, fits=got)  # fmt: skip
            prev = got[0] if got else None
            metric[:, :, g] = _val_metric(scores[0], yr, held, n_classes).reshape(B, k)
    mean = torch.nan_to_num(metric, nan=-1.0).mean(1)
    best = torch.argmax(mean, dim=1)  # first maximum: the smallest C among ties
    return grid[best]


def expand_classes(
    scores: torch.Tensor, present: np.ndarray, n_classes: int, *, probability: bool
) -> torch.Tensor:
    """Scores of a problem fitted on the classes ``present`` only, as (B, T, n_classes) class
    scores: absent classes score 0 (they are never predicted and rank last)."""
    if scores.dim() == 2:  # two classes present: one score for the second of them
        p1 = torch.sigmoid(scores) if not probability else scores
        scores = torch.stack([1 - p1, p1], dim=-1)
    out = torch.zeros(*scores.shape[:2], n_classes, dtype=scores.dtype, device=scores.device)
    out[..., torch.as_tensor(present, device=scores.device)] = scores
    return out


def _nan_metrics(B: int, device: torch.device) -> dict[str, torch.Tensor]:
    nan = torch.full((B,), float("nan"), dtype=torch.float64, device=device)
    return {"auroc": nan, "auprc": nan, "balanced_accuracy": nan, "logloss": nan}


def training_metrics(
    scores: torch.Tensor, yb: torch.Tensor, *, n_fit: int, probe: str, threshold: float
) -> dict[str, torch.Tensor]:
    """AUROC, AUPRC, balanced accuracy and log-loss of B problems on their own training rows:
    ``scores`` (B, n) or (B, n, K) as ``fit_and_score``'s ``train_scores`` (logits or class
    probabilities), ``yb`` (B, n) class codes of the ``n_fit`` classes fitted."""
    met = classification_metrics(scores.to(torch.float64), yb, n_classes=n_fit,
                                 threshold=threshold)  # fmt: skip
    met["logloss"] = train_log_loss(scores, yb, probe=probe).to(met["auroc"].device)
    return met


def fit_score_batch(
    Xb: torch.Tensor,
    y_np: np.ndarray,
    X_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    n_classes: int,
    seeds: Sequence[int],
    settings: ProbeSettings,
) -> BatchResult:
    """Fit and score B problems of one size.

    Parameters
    ----------
    Xb : Tensor
        (B, n, D) training rows.
    y_np : ndarray
        (B, n) class codes 0..n_classes-1. Every problem of a batch holds the same classes;
        a batch missing some classes is fitted on those it has (status ``classes_missing``;
        absent classes score 0), a batch of one class scores every test row the same
        (``single_class``).
    X_test, y_test : Tensor
        (T, D) test rows and their (T,) class codes.
    n_classes : int
    seeds : sequence of int
        The problems' seeds (they seed the folds of ``C="auto"``).
    settings : ProbeSettings

    Examples
    --------
    >>> import torch, numpy as np
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(2, 40, 5, generator=g); y = (X[..., 0] > 0).long().numpy()
    >>> Xt = torch.randn(30, 5, generator=g); yt = (Xt[:, 0] > 0).long()
    >>> r = fit_score_batch(X, y, Xt, yt, n_classes=2, seeds=[0, 1],
    ...                     settings=ProbeSettings(probe="logreg"))
    >>> r.scores[0].shape, bool((r.metrics[0]["auroc"] > 0.9).all())
    (torch.Size([2, 30]), True)
    """
    t0 = time.perf_counter()
    device, B = Xb.device, len(seeds)
    present = np.unique(y_np[0])
    n_fit = len(present) if len(present) < n_classes else n_classes
    status = "ok"
    if n_fit < n_classes:
        status = "classes_missing"
        y_np = np.searchsorted(present, y_np)
    yb = torch.as_tensor(y_np, device=device)
    knn = settings.probe == "knn"
    C: torch.Tensor | None
    if knn:
        C, selection = None, ["none"] * B
    elif settings.C == "auto" and n_fit >= 2:
        C, selection = choose_C(Xb, yb, y_np, n_classes=n_fit, seeds=seeds, settings=settings)
    elif settings.C == "auto":  # one class labelled: nothing to cross-validate
        C, selection = torch.ones(B, dtype=torch.float64, device=device), ["fallback"] * B
    else:
        C = torch.full((B,), float(settings.C), dtype=torch.float64, device=device)
        selection = ["fixed"] * B
    train: list[torch.Tensor] = []
    if n_fit >= 2:
        C_fit = C if C is not None else torch.ones(B, dtype=torch.float64, device=device)
        variants, conv, iters = fit_and_score(Xb, yb, X_test, C_fit, n_classes=n_fit,
                                              settings=settings, train_scores=train)  # fmt: skip
    else:  # one class labelled: no classifier, every test row scores the same
        status = "single_class"
        shape = (B, len(X_test)) + (() if n_classes == 2 else (1,))
        variants = [torch.ones(shape, dtype=torch.float32, device=device)] * len(settings.variants)
        conv = iters = None
    if n_fit < n_classes and n_classes > 2:
        variants = [expand_classes(v, present, n_classes, probability=knn) for v in variants]
    elif status == "single_class":  # binary task, one class: a constant score of class 1
        variants = [torch.zeros_like(v) for v in variants]
    threshold = 0.5 if knn else 0.0
    metrics = [
        classification_metrics(s, y_test, n_classes=n_classes, threshold=threshold)
        for s in variants
    ]
    train_metrics = [
        training_metrics(t, yb, n_fit=n_fit, probe=settings.probe, threshold=threshold)
        for t in train
    ] or [_nan_metrics(B, device)] * len(variants)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return BatchResult(
        variants=settings.variants,
        scores=variants,
        metrics=metrics,
        train_metrics=train_metrics,
        C=C,
        C_selection=selection,
        converged=conv.cpu().numpy().astype(bool) if conv is not None else np.ones(B, bool),
        n_iter=iters.cpu().numpy().astype(np.int64) if iters is not None else np.zeros(B, np.int64),
        status=status,
        seconds=time.perf_counter() - t0,
    )
