"""The entry point: :func:`fit_logreg` solves, certifies and, where needed, polishes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fmprobe.probes.logreg import common
from fmprobe.probes.logreg.certify import certified, duality_gap
from fmprobe.probes.logreg.common import SOLVERS, LogRegFit, kernel_max_n
from fmprobe.probes.logreg.lbfgs import lbfgs
from fmprobe.probes.logreg.lbfgs_cpu import lbfgs_cpu
from fmprobe.probes.logreg.newton import newton_kernel, newton_kernel_cpu
from fmprobe.probes.logreg.primal import (
    PRIMAL_FIRST_PARAMS,
    PRIMAL_MAX_PARAMS,
    newton_primal_span,
    primal_params,
)
from fmprobe.probes.logreg.whiten import lbfgs_whitened


def fit_logreg(
    X: torch.Tensor,
    y: torch.Tensor,
    C: torch.Tensor | float,
    *,
    n_classes: int,
    mask: torch.Tensor | None = None,
    solver: str = "auto",
    max_iter: int = 500,
    tol: float = 1e-6,
    init: LogRegFit | None = None,
    certify: bool = True,
) -> LogRegFit:
    """Fit B logistic regressions at once.

    Parameters
    ----------
    X : Tensor (B, n, D)
        Training rows of each problem (pad with anything where ``mask`` is False).
    y : Tensor (B, n) int
        Class indices 0..n_classes-1.
    C : float or Tensor (B,)
        Inverse regularisation strength per problem (sklearn's ``C``).
    n_classes : int
        2 for binary (sigmoid), more for multinomial (softmax).
    mask : Tensor (B, n) bool, optional
        Which rows count in each problem (padding, cross-validation folds).
    solver : {"auto", "newton-kernel", "lbfgs"}
    tol : float
        The first solve stops when the gradient norm falls below ``tol`` times its value at
        zero (``tol / 10`` for multinomial problems). Every solution is then certified by its
        float64 duality gap (:func:`~fmprobe.probes.logreg.certify.duality_gap`); problems
        whose gap exceeds ``GAP_TOL`` of the objective are solved again in float64
        (``polish``). ``converged`` is the certificate.
    init : LogRegFit, optional
        Warm start (L-BFGS only), e.g. the solution on a nested smaller subset.
    certify : bool
        Certify (and where needed polish) the solutions; without, ``converged`` is the first
        solve's own stopping rule and ``gap`` is None.

    Examples
    --------
    >>> X = torch.randn(4, 30, 5); y = (X[..., 0] > 0).long()
    >>> fit = fit_logreg(X, y, 1.0, n_classes=2)
    >>> fit.coef.shape
    torch.Size([4, 5, 1])
    """
    B, n, _ = X.shape
    dtype = torch.float64
    Cv = torch.as_tensor(C, dtype=dtype, device=X.device).expand(B).clone()
    m = (
        torch.ones(B, n, dtype=dtype, device=X.device)
        if mask is None
        else mask.to(device=X.device, dtype=dtype)
    )
    fit = solve(X, y, m, Cv, n_classes=n_classes, solver=solver, max_iter=max_iter, tol=tol,
                init=init)  # fmt: skip
    if not certify:
        return fit
    return certify_fit(X, y, m, Cv, fit, n_classes=n_classes, max_iter=max_iter)


def solve(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    *,
    n_classes: int,
    solver: str,
    max_iter: int,
    tol: float,
    init: LogRegFit | None,
) -> LogRegFit:
    """The first solve, without the certificate: ``solver`` on the features' own dtype."""
    n = X.shape[1]
    if solver == "auto":
        solver = (
            "newton-kernel"
            if n_classes == 2 and n <= kernel_max_n(X.device) and init is None
            else "lbfgs"
        )
    if solver == "newton-kernel":
        if n_classes != 2:
            raise ValueError("newton-kernel solves binary problems only")
        numpy_path = X.device.type == "cpu" and common.CPU_NUMPY_KERNEL
        solve_k = newton_kernel_cpu if numpy_path else newton_kernel
        return solve_k(X, y.to(torch.float64), m, C, max_iter=min(max_iter, 100), tol=tol)
    if solver == "lbfgs":
        # softmax problems get a tenth of the tolerance: at the same relative gradient norm
        # their one-vs-rest AUROC was measured up to 1.5e-4 from the optimum's (near-separable
        # subsets), against < 1e-4 for binary ones
        tol_ = tol if n_classes == 2 else tol / 10
        one_by_one = X.device.type == "cpu" and n * X.shape[2] >= common.CPU_ONE_BY_ONE
        run = lbfgs_cpu if one_by_one else lbfgs
        first = min(max_iter, common.WHITEN_AFTER)
        fit = run(X, y, m, C, n_classes=n_classes, max_iter=first, tol=tol_, init=init)
        if first >= max_iter or bool(fit.converged.all()):
            return fit
        return _whitened_rest(X, y, m, C, fit, n_classes=n_classes, max_iter=max_iter - first,
                              tol=tol_, one_by_one=one_by_one)  # fmt: skip
    raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")


def _whitened_rest(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    fit: LogRegFit,
    *,
    n_classes: int,
    max_iter: int,
    tol: float,
    one_by_one: bool,
) -> LogRegFit:
    """The problems of ``fit`` that L-BFGS has not solved in ``WHITEN_AFTER`` iterations,
    continued from there on whitened coordinates (:mod:`~fmprobe.probes.logreg.whiten`:
    correlated features), for up to ``max_iter`` more."""
    idx = torch.nonzero(~fit.converged)[:, 0]
    sub = fit.rows(idx)
    w = lbfgs_whitened(X[idx], y[idx], m[idx], C[idx], n_classes=n_classes, max_iter=max_iter,
                       tol=tol, init=sub, one_by_one=one_by_one)  # fmt: skip
    coef, intercept = fit.coef.clone(), fit.intercept.clone()
    converged, n_iter = fit.converged.clone(), fit.n_iter.clone()
    coef[idx] = w.coef.to(coef.dtype)
    intercept[idx] = w.intercept.to(intercept.dtype)
    converged[idx] = w.converged
    n_iter[idx] = n_iter[idx] + w.n_iter.to(n_iter.dtype)
    return LogRegFit(coef=coef, intercept=intercept, converged=converged, n_iter=n_iter)


def certify_fit(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    fit: LogRegFit,
    *,
    n_classes: int,
    max_iter: int,
) -> LogRegFit:
    """``fit`` with its duality gap, its intercepts at their optimum for its weights, and
    ``converged`` the certificate; problems that are not certified are polished in float64
    first, by the solvers of ``polish_plan`` in turn, each on the problems still uncertified."""
    gap, obj, b = duality_gap(X, y, m, C, fit.coef, fit.intercept, n_classes=n_classes)
    coef, intercept, n_iter = fit.coef, b.to(fit.intercept.dtype), fit.n_iter
    ok = certified(gap, obj)
    _, n, D = X.shape
    for polish in polish_plan(n, D, n_classes, X.device, max_iter):
        if bool(ok.all()):
            break
        idx = torch.nonzero(~ok)[:, 0]
        sub = LogRegFit(coef=coef[idx], intercept=intercept[idx], converged=ok[idx],
                        n_iter=n_iter[idx])  # fmt: skip
        Xs, ys, ms, Cs = X[idx].to(torch.float64), y[idx], m[idx], C[idx]
        p = polish(Xs, ys, ms, Cs, sub)
        g2, o2, b2 = duality_gap(Xs, ys, ms, Cs, p.coef, p.intercept, n_classes=n_classes)
        better = g2 < gap[idx]
        pick = idx[better]
        coef, intercept, n_iter = coef.clone(), intercept.clone(), n_iter.clone()
        gap, obj = gap.clone(), obj.clone()
        coef[pick] = p.coef[better].to(coef.dtype)
        intercept[pick] = b2[better].to(intercept.dtype)
        n_iter[idx] = n_iter[idx] + p.n_iter.to(n_iter.dtype)
        gap[pick], obj[pick] = g2[better], o2[better]
        ok = certified(gap, obj)
    return LogRegFit(coef=coef, intercept=intercept, converged=ok, n_iter=n_iter, gap=gap)


Polish = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LogRegFit], LogRegFit]


def polish_plan(
    n: int, D: int, n_classes: int, device: torch.device, max_iter: int
) -> list[Polish]:
    """The float64 solvers that polish uncertified problems, in the order tried (arguments
    X, y, mask, C and the fit to start from): Newton in the primal first where the parameters
    are few (its step does not depend on the features' scales: unscaled clinical tables), else
    kernel Newton for small binary problems, L-BFGS from the fit, and the primal Newton last
    where its Hessian is affordable."""
    Kc = 1 if n_classes == 2 else n_classes
    P = primal_params(n, D, Kc)
    newton_iters = min(max_iter, 50)

    def primal(X: torch.Tensor, y: torch.Tensor, m: torch.Tensor, C: torch.Tensor,
               init: LogRegFit) -> LogRegFit:  # fmt: skip
        return newton_primal_span(X, y, m, C, n_classes=n_classes, init=init,
                                  max_iter=newton_iters)  # fmt: skip

    def kernel(X: torch.Tensor, y: torch.Tensor, m: torch.Tensor, C: torch.Tensor,
               init: LogRegFit) -> LogRegFit:  # fmt: skip
        return solve(X, y, m, C, n_classes=2, solver="newton-kernel", max_iter=min(max_iter, 100),
                     tol=1e-12, init=None)  # fmt: skip

    def quasi_newton(X: torch.Tensor, y: torch.Tensor, m: torch.Tensor, C: torch.Tensor,
                     init: LogRegFit) -> LogRegFit:  # fmt: skip
        return solve(X, y, m, C, n_classes=n_classes, solver="lbfgs", max_iter=max_iter,
                     tol=1e-11, init=init)  # fmt: skip

    if P <= PRIMAL_FIRST_PARAMS:
        return [primal]
    plan: list[Polish] = []
    if n_classes == 2 and n <= kernel_max_n(device):
        plan.append(kernel)
    plan.append(quasi_newton)
    if P <= PRIMAL_MAX_PARAMS:
        plan.append(primal)
    return plan
