"""Learning-curve families, each written as ``y(n) = c - a·g(n; θ)`` with ``a >= 0``.

Every family of LCDB (Mohr et al. 2022) and Domhan et al. (2015) used here is rewritten for a
score that rises with n (AUROC, accuracy) in one shape: a plateau ``c``, an amplitude ``a`` and
a decreasing basis ``g`` with at most two nonlinear parameters ``θ``. Given θ the curve is linear
in ``(c, a)``, so a fit is a bounded weighted least-squares problem in two unknowns (closed form)
for each θ on a grid; this is the stable parametrisation: no search over plateau and amplitude,
whose estimates are strongly correlated, and every fit is vectorised over curves.

========  ==============================  =====================  ======================
family    score                           θ (bounds)             plateau ``c``
========  ==============================  =====================  ======================
pow3      ``c - a·n^(-b)``                b ∈ [0.01, 3]          [best mean, 1]
pow2      ``1 - a·n^(-b)``                b ∈ [0.01, 3]          1 (fixed)
log2      ``c + a·log(n)``                none                   none (never saturates)
ilog2     ``c - a/log(n + 1)``            none                   [best mean, 1]
exp3      ``c - a·exp(-b·n)``             b ∈ [1e-5, 1]          [best mean, 1]
vap3      ``1 - exp(α + β/n + γ·log n)``  β ∈ [-30, 30],         1 (fixed)
          ``= 1 - a·n^γ·exp(β/n)``        γ ∈ [-3, -0.01]
mmf4      ``c - a/(1 + (n/e^m)^δ)``       m ∈ [-2, 16],          [best mean, 1]
          (``(αβ + c·n^δ)/(β + n^δ)``)    δ ∈ [0.05, 3]
wbl4      ``c - a·exp(-(n/e^m)^δ)``       m ∈ [-2, 20],          [best mean, 1]
          (``c - a·exp(-β·n^δ)``)         δ ∈ [0.05, 1.5]
pow4      ``c - a·(n + d)^(-b)``          b ∈ [0.01, 3],         [best mean, 1]
                                          d ∈ [0, 1000]
========  ==============================  =====================  ======================

``pow3`` is the CXR study's ``AUC(N) = a·N^b + c`` (their b < 0). ``ilog2`` uses ``log(n + 1)``
so that n = 1 is defined. mmf4 and wbl4 are searched over the midpoint ``m = log(β)/δ``
(``-log(β)/δ`` for wbl4, in log n) and the slope δ instead of LCDB's (β, δ): those two are
almost collinear, the midpoint and slope are not. The mmf4 amplitude ``a`` is LCDB's ``c - α``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Basis = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _pow(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(n ** (-t[..., 0]))


def _neglog(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(-np.log(n) + 0.0 * t[..., 0])


def _ilog(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / np.log1p(n) + 0.0 * t[..., 0])


def _exp(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-t[..., 0] * n))


def _vap(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(t[..., 0] / n + t[..., 1] * np.log(n)))


def _mmf(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(t[..., 1] * (np.log(n) - t[..., 0]))))


def _wbl(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-np.exp(t[..., 1] * (np.log(n) - t[..., 0]))))


def _pow4(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray((n + t[..., 1]) ** (-t[..., 0]))


@dataclass(frozen=True)
class Family:
    """One curve family ``y(n) = c - a·g(n; θ)``.

    Attributes
    ----------
    name : str
        The name used by ``--families`` and in the ``family`` output column.
    formula : str
        The curve as a user reads it.
    basis : callable
        ``g(n, theta)``; ``n`` broadcasts against ``theta[..., 0]``.
    theta_names : tuple of str
        Names of the nonlinear parameters (empty for linear families).
    theta_bounds : tuple of (float, float)
        Bounds of each nonlinear parameter.
    theta_log : tuple of bool
        Whether each parameter's search grid is spaced logarithmically.
    plateau : {"free", "one", "none"}
        ``free``: c ∈ [best observed mean, 1]; ``one``: c = 1; ``none``: c unbounded.
    turn : callable, optional
        ``turn(params)``: the n below which the curve falls as n grows (vap3 with β < 0 falls
        until ``n = β/γ``); ``evaluate_rising`` holds the curve at its value there.
    """

    name: str
    formula: str
    basis: Basis
    theta_names: tuple[str, ...]
    theta_bounds: tuple[tuple[float, float], ...]
    theta_log: tuple[bool, ...]
    plateau: str
    turn: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def n_params(self) -> int:
        """Free parameters: θ plus a, plus c unless it is fixed at 1."""
        return len(self.theta_names) + 1 + (self.plateau != "one")

    def evaluate(self, n: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Curve values; ``params[..., :]`` is ``(c, a, *θ)``, broadcast against ``n``.

        Examples
        --------
        >>> import numpy as np
        >>> FAMILIES["pow3"].evaluate(np.array([100.0]), np.array([0.9, 0.5, 0.5]))
        array([0.85])
        """
        params = np.asarray(params, dtype=float)
        n = np.asarray(n, dtype=float)
        c, a = params[..., 0], params[..., 1]
        theta = params[..., 2:]
        if theta.shape[-1] == 0:
            theta = np.zeros((*params.shape[:-1], 1))
        return np.asarray(c - a * self.basis(n, theta))

    def evaluate_rising(self, n: np.ndarray, params: np.ndarray) -> np.ndarray:
        """``evaluate`` made non-decreasing in n: below a turning point (only vap3 has one) the
        curve is held at its value there, which is its minimum.

        Examples
        --------
        >>> import numpy as np
        >>> p = np.array([1.0, 0.5, -20.0, -0.5])  # vap3 falls until n = 40, then rises
        >>> v = FAMILIES["vap3"].evaluate_rising(np.array([10.0, 40.0, 100.0]), p)
        >>> bool(v[0] == v[1] < v[2])
        True
        """
        n = np.asarray(n, dtype=float)
        if self.turn is not None:
            n = np.maximum(n, self.turn(np.asarray(params, dtype=float)))
        return self.evaluate(n, params)


def _vap_turn(params: np.ndarray) -> np.ndarray:
    beta, gamma = params[..., 2], params[..., 3]
    return np.asarray(np.where(beta < 0, beta / np.minimum(gamma, -1e-12), 0.0))


def _fam(
    name: str,
    formula: str,
    basis: Basis,
    theta: tuple[tuple[str, float, float, bool], ...],
    plateau: str,
    turn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Family:
    return Family(
        name=name,
        formula=formula,
        basis=basis,
        theta_names=tuple(t[0] for t in theta),
        theta_bounds=tuple((t[1], t[2]) for t in theta),
        theta_log=tuple(t[3] for t in theta),
        plateau=plateau,
        turn=turn,
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _fam("pow3", "c - a*n^(-b)", _pow, (("b", 0.01, 3.0, True),), "free"),
        _fam("pow2", "1 - a*n^(-b)", _pow, (("b", 0.01, 3.0, True),), "one"),
        _fam("log2", "c + a*log(n)", _neglog, (), "none"),
        _fam("ilog2", "c - a/log(n+1)", _ilog, (), "free"),
        _fam("exp3", "c - a*exp(-b*n)", _exp, (("b", 1e-5, 1.0, True),), "free"),
        _fam(
            "vap3",
            "1 - a*n^g*exp(b/n)",
            _vap,
            (("b", -30.0, 30.0, False), ("g", -3.0, -0.01, False)),
            "one",
            _vap_turn,
        ),
        _fam(
            "mmf4",
            "c - a/(1 + (n/e^m)^d)",
            _mmf,
            (("m", -2.0, 16.0, False), ("d", 0.05, 3.0, True)),
            "free",
        ),
        _fam(
            "wbl4",
            "c - a*exp(-(n/e^m)^d)",
            _wbl,
            (("m", -2.0, 20.0, False), ("d", 0.05, 1.5, True)),
            "free",
        ),
        _fam(
            "pow4",
            "c - a*(n + d)^(-b)",
            _pow4,
            (("b", 0.01, 3.0, True), ("d", 0.0, 1000.0, True)),
            "free",
        ),
    )
}
DEFAULT_FAMILIES = tuple(FAMILIES)


def parse_families(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Normalise ``--families`` (a comma list or a sequence; None = all) to known names."""
    from fmprobe.errors import UsageError, did_you_mean

    if value is None or value == "" or value == "all":
        return DEFAULT_FAMILIES
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [v for v in names if v]
    for v in names:
        if v not in FAMILIES:
            raise UsageError(
                f"--families: unknown family {v!r}{did_you_mean(v, FAMILIES)}; "
                f"choose from {', '.join(FAMILIES)}"
            )
    if not names:
        raise UsageError(f"--families is empty; choose from {', '.join(FAMILIES)}")
    return tuple(dict.fromkeys(names))
