"""What every solver shares: the fitted parameters (:class:`LogRegFit`), the size limits that
pick a solver, and batched matrix-vector products."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SOLVERS = ("auto", "newton-kernel", "lbfgs")
# measured (D=768, 2-core CPU): kernel Newton 25 vs batched torch L-BFGS 13 probes/s at n=500,
# 5 vs 7 at n=1000 (the limit on a GPU). On a CPU, the numpy kernel Newton (line-minimum steps)
# against the one-by-one numpy L-BFGS, one thread, batches of 4 M feature elements, fits/s:
# D=384: 1345/304 at n=128, 592/359 at 192, 334/298 at 256, 190/243 at 320;
# D=768: 2027/563 at n=100, 815/332 at 160, 572/388 at 192, 314/296 at 256;
# D=1536: 1332/481 at n=128, 523/393 at 192, 286/303 at 256, 191/258 at 320
KERNEL_MAX_N = 640
CPU_KERNEL_MAX_N = 256
# on a CPU, L-BFGS problems with at least this many feature elements (n·D) are solved one by
# one in numpy (``_lbfgs_cpu``), where small-array operations cost less than torch's dispatch
CPU_ONE_BY_ONE = 1 << 16
# L-BFGS problems not solved after this many iterations go on in whitened coordinates
# (``whiten``): its rotation costs about 10-100 iterations (eigh of XᵀX, one thread: 7 ms at
# n = 1,343, D = 192; 175 ms at n = 2,000, D = 768), and the problems that need it are those
# whose features are strongly correlated, where plain L-BFGS needs thousands
WHITEN_AFTER = 150
# on a CPU the kernel Newton solver runs in numpy with LAPACK per problem (``_newton_kernel_cpu``)
CPU_NUMPY_KERNEL = True


def kernel_max_n(device: torch.device) -> int:
    """The largest n that ``solver="auto"`` gives to the kernel Newton solver on ``device``."""
    return CPU_KERNEL_MAX_N if device.type == "cpu" else KERNEL_MAX_N


def batched_mv(A: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``A @ V`` for A (B, p, q) and a few columns V (B, q, k): (B, p, k).

    Computed as ``(Vᵀ Aᵀ)ᵀ``: CPU batched GEMM with k = 1 on the right falls onto a path
    5-15× slower than the same product with the vector on the left (measured, torch 2.15 CPU).
    """
    return torch.bmm(V.transpose(1, 2), A.transpose(1, 2)).transpose(1, 2)


def batched_rmv(A: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``Aᵀ @ V`` for A (B, p, q) and V (B, p, k): (B, q, k), as ``(Vᵀ A)ᵀ`` (see batched_mv)."""
    return torch.bmm(V.transpose(1, 2), A).transpose(1, 2)


@dataclass(frozen=True)
class LogRegFit:
    """The fitted parameters of B problems.

    Attributes
    ----------
    coef : Tensor (B, D, Kc)
        Kc = 1 for binary problems (the weights of class 1), K for multinomial.
    intercept : Tensor (B, Kc)
    converged : Tensor (B,) bool
        The optimum is certified: the duality gap of the float64 objective is at most
        ``GAP_TOL`` times the objective (see :mod:`fmprobe.probes.logreg.certify`).
    n_iter : Tensor (B,) int
    gap : Tensor (B,) float64, optional
        That duality gap (an upper bound of the objective's distance to its minimum); None
        where no certificate was computed (another backend).
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor
    gap: torch.Tensor | None = None

    def rows(self, idx: torch.Tensor | slice) -> LogRegFit:
        """The problems ``idx`` of this fit."""
        return LogRegFit(
            coef=self.coef[idx],
            intercept=self.intercept[idx],
            converged=self.converged[idx],
            n_iter=self.n_iter[idx],
            gap=None if self.gap is None else self.gap[idx],
        )

    def decision_function(self, X: torch.Tensor) -> torch.Tensor:
        """Scores of test rows ``X`` (T, D) shared by all problems, or (B, T, D).

        Returns (B, T) for binary problems (the logit of class 1), else (B, T, K).
        """
        coef = self.coef.to(X.dtype)
        z = torch.einsum("td,bdk->btk", X, coef) if X.dim() == 2 else batched_mv(X, coef)
        z = z + self.intercept.to(X.dtype)[:, None, :]
        return z[..., 0] if z.shape[-1] == 1 else z

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        z = self.decision_function(X)
        if z.dim() == 2:
            p1 = torch.sigmoid(z)
            return torch.stack([1 - p1, p1], dim=-1)
        return torch.softmax(z, dim=-1)
