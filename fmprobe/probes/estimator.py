"""``LogisticProbe``: one problem of the batched engine as a scikit-learn estimator."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from fmprobe.probes.backends import BACKENDS, check_backend, fit_logreg_with


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """L2 logistic regression with scikit-learn's objective, solved by fmprobe's torch engine.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength (as ``sklearn.linear_model.LogisticRegression``).
    max_iter : int, default=500
    tol : float, default=1e-6
        Relative gradient-norm tolerance.
    solver : {"auto", "newton-kernel", "lbfgs"}, default="auto"
    device : str or None, default=None
        torch device; None = CPU.
    backend : {"torch", "sklearn", "cuml"}, default="torch"
        Who solves it: fmprobe's engine, scikit-learn (the reference) or RAPIDS cuML.

    Attributes
    ----------
    classes_ : ndarray (K,)
    coef_ : ndarray (1, D) for binary problems, (K, D) otherwise
    intercept_ : ndarray (1,) or (K,)
    n_iter_ : ndarray (1,)
    converged_ : bool
        The optimum is certified by its float64 duality gap (torch backend).
    gap_ : float
        That duality gap, an upper bound of the objective's distance to its minimum (NaN for
        the other backends).

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> LogisticProbe(C=0.01).fit(X, y).score(X, y) > 0.9
    True
    """

    def __init__(
        self,
        *,
        C: float = 1.0,
        max_iter: int = 500,
        tol: float = 1e-6,
        solver: str = "auto",
        device: str | None = None,
        backend: str = "torch",
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.device = device
        self.backend = backend

    def fit(self, X: Any, y: Any) -> LogisticProbe:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"This solver needs samples of at least 2 classes in the data, but the data "
                f"contains only one class: {self.classes_[0]!r}"
            )
        if not self.C > 0:
            raise ValueError(f"C must be positive; got {self.C!r}")
        dev = torch.device(self.device or "cpu")
        mean = X.mean(0)  # centring is exact (the intercept is not penalised) and conditions
        Xt = torch.as_tensor(X - mean, device=dev)[None]
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")
        check_backend(self.backend)
        fit = fit_logreg_with(self.backend, Xt, torch.as_tensor(codes, device=dev)[None],
                              float(self.C), n_classes=len(self.classes_), solver=self.solver,
                              max_iter=self.max_iter, tol=self.tol)  # fmt: skip
        coef = fit.coef[0].cpu().numpy().T
        self.coef_ = coef
        self.intercept_ = fit.intercept[0].cpu().numpy() - coef @ mean
        self.n_iter_ = fit.n_iter.cpu().numpy()
        self.converged_ = bool(fit.converged[0])
        self.gap_ = float(fit.gap[0]) if fit.gap is not None else float("nan")
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        z = X @ self.coef_.T + self.intercept_
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        z = self.decision_function(X)
        if z.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-z))
            return np.stack([1 - p, p], axis=1)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        z = self.decision_function(X)
        idx = (z > 0).astype(int) if z.ndim == 1 else z.argmax(1)
        return self.classes_[idx]
