"""Who solves the logistic regressions: fmprobe's batched torch engine (default), scikit-learn
(the reference: newton-cholesky for binary problems, lbfgs at tol 1e-10 for multinomial ones,
one problem at a time), or RAPIDS cuML on the GPU (optional extra ``fmprobe[cuml]``, one problem
at a time). All return a :class:`~fmprobe.probes.logreg.LogRegFit`."""

from __future__ import annotations

import numpy as np
import torch

from fmprobe.errors import UsageError, did_you_mean
from fmprobe.probes.logreg import LogRegFit, fit_logreg

BACKENDS = ("torch", "sklearn", "cuml")


def check_backend(name: str) -> str:
    """The backend's name if it can run here; a one-line UsageError otherwise."""
    if name not in BACKENDS:
        raise UsageError(
            f"--backend {name!r}{did_you_mean(name, BACKENDS)}: one of {', '.join(BACKENDS)}"
        )
    if name == "cuml":
        try:
            import cuml  # noqa: F401
        except ImportError:
            raise UsageError(
                "--backend cuml needs RAPIDS cuML on a CUDA machine: pip install 'fmprobe[cuml]' "
                "(or use --backend torch, which runs on the GPU as well)"
            ) from None
    return name


def fit_logreg_with(
    backend: str,
    X: torch.Tensor,
    y: torch.Tensor,
    C: torch.Tensor | float,
    *,
    n_classes: int,
    mask: torch.Tensor | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    solver: str = "auto",
    init: LogRegFit | None = None,
    certify: bool = True,
) -> LogRegFit:
    """``fit_logreg`` (same arguments and result) solved by ``backend`` (``solver``, ``init``
    and ``certify`` are the torch engine's)."""
    if backend == "torch":
        return fit_logreg(X, y, C, n_classes=n_classes, mask=mask, solver=solver,
                          max_iter=max_iter, tol=tol, init=init, certify=certify)  # fmt: skip
    B, _, D = X.shape
    Cs = torch.as_tensor(C, dtype=torch.float64).expand(B).cpu().numpy()
    Kc = 1 if n_classes == 2 else n_classes
    coef = np.zeros((B, D, Kc))
    intercept = np.zeros((B, Kc))
    n_iter = np.zeros(B, np.int64)
    converged = np.zeros(B, bool)
    Xn = X.detach().to(torch.float64).cpu().numpy()
    yn = y.detach().cpu().numpy()
    mn = None if mask is None else mask.detach().cpu().numpy().astype(bool)
    for b in range(B):
        rows = slice(None) if mn is None else mn[b]
        Xb, yb = Xn[b][rows], yn[b][rows]
        if backend == "sklearn":
            from sklearn.linear_model import LogisticRegression

            solver, t = ("newton-cholesky", 1e-8) if n_classes == 2 else ("lbfgs", 1e-10)
            clf = LogisticRegression(C=float(Cs[b]), solver=solver, tol=t, max_iter=max_iter)
            clf.fit(Xb, yb)
            w, c, it = clf.coef_, clf.intercept_, int(np.max(clf.n_iter_))
        else:  # cuml
            import cupy as cp
            from cuml.linear_model import LogisticRegression as CuLogisticRegression

            clf = CuLogisticRegression(C=float(Cs[b]), tol=tol, max_iter=max_iter)
            clf.fit(cp.asarray(Xb), cp.asarray(yb))
            w, c = cp.asnumpy(clf.coef_), cp.asnumpy(clf.intercept_)
            it = int(np.max(cp.asnumpy(getattr(clf, "n_iter_", np.array([0])))))
        coef[b] = np.asarray(w).reshape(Kc, D).T
        intercept[b] = np.asarray(c).reshape(Kc)
        n_iter[b] = it
        converged[b] = it < max_iter
    dev = X.device
    return LogRegFit(
        coef=torch.as_tensor(coef, device=dev),
        intercept=torch.as_tensor(intercept, device=dev),
        converged=torch.as_tensor(converged, device=dev),
        n_iter=torch.as_tensor(n_iter, device=dev),
    )
