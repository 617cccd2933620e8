"""Batched L2-regularised logistic regression: many problems solved at once, in torch.

The objective is exactly scikit-learn's ``LogisticRegression`` (``penalty="l2"``)::

    sum_i  log-loss(y_i, x_i·W + b)  +  ||W||² / (2C)        (intercept not penalised)

binary (sigmoid, one weight vector) or multinomial (softmax over K classes, K weight vectors).
Two solvers, picked by size:

- ``newton-kernel`` (binary, small n): the optimum lies in the row span of X (w = Xᵀα), so
  Newton's method runs in n+1 dimensions on the n×n Gram matrix, each step scaled to the
  minimum of the objective along it; the exact optimum in 4-5 iterations (measured, D = 768).
  In torch on a GPU; on a CPU in numpy with LAPACK's Cholesky per problem
  (``newton_kernel_cpu``, the same iterates).
- ``lbfgs``: limited-memory BFGS in the primal, for large n and for multinomial problems;
  warm-startable. Batched in torch on a GPU and for small problems; on a CPU, problems of
  n·D ≥ ``CPU_ONE_BY_ONE`` are solved one by one in numpy (``lbfgs_cpu``), the same
  algorithm without torch's per-operation cost.

The size limits are measured (``KERNEL_MAX_N`` on a GPU, ``CPU_KERNEL_MAX_N`` on a CPU).

Every solution is then certified in float64 by its duality gap (``certify``): "converged"
means the objective is within ``GAP_TOL`` (relative) of its minimum, on raw, unscaled
features too; problems that the first solve (float32 products) leaves short are solved again
in float64 (``polish``: kernel Newton, primal Newton or L-BFGS). L-BFGS problems still
unsolved after ``WHITEN_AFTER`` iterations go on in whitened coordinates (``whiten``), where
strongly correlated features (untrained networks, clinical tables) do not slow it down.

Modules: ``common`` (the fit, size limits, batched products), ``newton`` (kernel Newton),
``lbfgs`` (batched L-BFGS), ``lbfgs_cpu`` (one by one in numpy), ``whiten`` (L-BFGS on
whitened coordinates), ``primal`` (primal Newton in float64, in the span of the rows where
n < D), ``certify`` (the duality gap), ``fit`` (the entry point).
"""

from fmprobe.probes.logreg.certify import GAP_TOL, duality_gap
from fmprobe.probes.logreg.common import (
    CPU_KERNEL_MAX_N,
    KERNEL_MAX_N,
    SOLVERS,
    LogRegFit,
    batched_mv,
    batched_rmv,
    kernel_max_n,
)
from fmprobe.probes.logreg.fit import fit_logreg
from fmprobe.probes.logreg.lbfgs import lbfgs, lbfgs_direction, push_pair
from fmprobe.probes.logreg.lbfgs_cpu import lbfgs_cpu
from fmprobe.probes.logreg.newton import step_length
from fmprobe.probes.logreg.primal import newton_primal, newton_primal_span
from fmprobe.probes.logreg.whiten import Rotation, lbfgs_whitened, rotation

__all__ = [
    "CPU_KERNEL_MAX_N",
    "GAP_TOL",
    "KERNEL_MAX_N",
    "SOLVERS",
    "LogRegFit",
    "Rotation",
    "batched_mv",
    "batched_rmv",
    "duality_gap",
    "fit_logreg",
    "kernel_max_n",
    "lbfgs",
    "lbfgs_cpu",
    "lbfgs_direction",
    "lbfgs_whitened",
    "newton_primal",
    "newton_primal_span",
    "push_pair",
    "rotation",
    "step_length",
]
