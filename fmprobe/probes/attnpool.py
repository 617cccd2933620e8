"""Attention-pooling probes over stored patch tokens, many problems trained at once.

The probe of the radiology scaling study (PAPERS.md §4): the patch tokens of several layers
are each projected to a common width ``W``, concatenated along channels (``C = n_layers·W``),
reduced to one token by multi-head attention with one learned query, and classified by a
linear layer. Per problem and layer ``l`` (tokens ``x_l`` of shape (L, D_l))::

    z_i  = concat_l( W_l · LN(x_{l,i}) + b_l )                (L, C)
    o    = MHA(query=q, key=z, value=z)                       (C,)   nn.MultiheadAttention
    out  = W_c · o + b_c                                      (K,) (1 logit when binary)

``LN`` is a LayerNorm without learned parameters (each layer's tokens on one scale).

Exact, cheaper arithmetic. With one query, the attention logits of head h are
``(W_k,hᵀ Q_h)·z_i / √d``, and ``z_i`` is linear in ``LN(x_i)``, so they equal
``Σ_l r_{h,l}·LN(x_{l,i})`` with ``r_{h,l} = W_lᵀ (W_k,hᵀ Q_h)_l`` (the key bias and the
projection bias add a constant per head, which the softmax ignores); the pooled value is the
projection of the attention-weighted mean of the raw tokens. Nothing is projected per token:
a sample costs O(H·L·ΣD_l) instead of O(L·ΣD_l·W + L·C²), the same parameters, the same
function, the same gradients (up to float rounding; ``tests/test_attnpool.py`` checks it against
``nn.Linear`` + ``nn.MultiheadAttention`` step by step).

Batching. P problems (label counts × seeds) have stacked parameters (leading axis P) and one
AdamW (:func:`_adamw_step`) that is P independent ``torch.optim.AdamW`` s: the update is
elementwise and every problem has its own step count, learning rate and "active" flag (a
problem with fewer steps per epoch, or one that has finished, is left untouched).

Streaming. Tokens are read from the store in row chunks (``chunk_rows``): a training step reads
the union of its problems' mini-batch rows, each row once, in ascending order, and every problem
that uses a row computes on the same chunk tensor. If the rows a fit needs take at most
``cache_bytes`` (float16 for a store's tokens), they are read once (in row chunks), normalised
and kept on the device; otherwise every step reads from the store. Resident token memory is
about::

    [cache: rows·L·ΣD_l·2]  +  3·chunk_rows·L·ΣD_l·4  bytes

(a chunk in float32, a per-pair copy when a row serves several problems, the softmax and
autograd buffers), plus zarr's decode buffers (one store chunk per concurrent read), plus the
parameters, gradients and AdamW moments: 16·P·(Σ_l D_l·W + 4·C² + K·C) bytes.

Epoch choice without the test set. With ``selection="refit"`` (default) a stratified
validation fold of the n labels (``fold_masks``, seeded by the problem's seed) is held out; the
problem trains on the rest for the full schedule, the epoch with the lowest validation loss is
chosen, and the problem is trained again from the same initialisation on all n labels, on the
same learning-rate schedule, stopped after the chosen epoch. ``selection="best"`` keeps the
best-validation checkpoint instead (one training run, on n minus the fold); ``"last"`` uses no
validation (the study's protocol: the last of ``epochs``). Problems whose rarest class has fewer
than two labels cannot hold one out and use ``"last"``.

Determinism: the initialisation of a problem draws from ``torch.Generator().manual_seed(seed)``
on the CPU and its batch order from ``np.random.default_rng(seed)``, so the same seeds give the
same results on a CPU, batched alone or with others (up to float rounding of batched matmuls).
On CUDA, the gather's backward (``index_add``) uses atomic adds: results agree to float
rounding, not bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fmprobe.errors import UsageError
from fmprobe.probes.folds import fold_masks

SELECTIONS = ("refit", "best", "last")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")


class TokenArray(Protocol):
    """A (N, L, D) array read by rows: a zarr array, an h5py dataset or a numpy array."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class AttnPoolConfig:
    """Hyper-parameters of the attention-pooling probe.

    The study fixes the layers (four), the common width, attention pooling with one query,
    a linear classifier, 25 epochs and batch 512; the rest is not reported there and the
    defaults below are this package's choices (README, "Attention-pooling probe").

    Attributes
    ----------
    width : int or None
        Common projection width ``W`` per layer (``C = n_layers·W``). None: the largest token
        width among the layers (768 for a ViT-B: the study's 4·768 = 3072).
    heads : int
        Attention heads; ``C`` must be divisible by it.
    epochs : int
        Training epochs (over the problem's training rows).
    batch_size : int
        Rows per mini-batch (the last one of an epoch is smaller).
    min_steps : int
        At least this many optimiser steps: a problem whose n gives few steps per epoch gets
        ``ceil(min_steps / steps_per_epoch)`` epochs (25 epochs at n ≤ 512 are only 25 steps).
        0 reproduces the study's fixed epoch count.
    lr, weight_decay, betas, eps : AdamW's (decoupled weight decay on every parameter).
    warmup : float
        Fraction of the steps with a linear warm-up from ``lr/steps`` to ``lr``.
    schedule : {"cosine", "constant"}
        After the warm-up: cosine decay to 0 over the remaining steps, or constant.
    selection : {"refit", "best", "last"}
        How the trained epoch is chosen (module docstring).
    val_frac : float
        Size of the validation fold (1/k of the labels, k = round(1/val_frac), fewer folds
        when the rarest class has fewer than k labels).
    patience : int or None
        Stop a problem's validation run after this many epochs without a lower validation loss
        (None: run every epoch).
    chunk_rows : int
        Rows per read from the store and per forward/backward chunk (the memory bound).
    cache_bytes : int
        Keep the rows a fit needs in memory (float16) when they take at most this many bytes.
    dtype : {"float32", "bfloat16"}
        Compute dtype of the token arithmetic (bfloat16: CUDA autocast; parameters and AdamW
        stay float32).
    """

    width: int | None = None
    heads: int = 8
    epochs: int = 25
    batch_size: int = 512
    min_steps: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup: float = 0.1
    schedule: str = "cosine"
    selection: str = "refit"
    val_frac: float = 0.2
    patience: int | None = None
    chunk_rows: int = 256
    cache_bytes: int = 1 << 30
    dtype: str = "float32"

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> UsageError:
            value = getattr(self, name)
            return UsageError(f"AttnPoolConfig.{name}={value!r}: expected {expected}")

        for name in ("heads", "epochs", "batch_size", "chunk_rows"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "a positive integer")
        if self.width is not None and self.width < 1:
            raise bad("width", "a positive integer or None (the largest token width)")
        if self.min_steps < 0 or self.cache_bytes < 0:
            raise bad("min_steps" if self.min_steps < 0 else "cache_bytes", "0 or more")
        if not self.lr > 0 or self.weight_decay < 0:
            raise bad("lr" if not self.lr > 0 else "weight_decay", "lr > 0, weight_decay >= 0")
        if not 0 <= self.warmup < 1:
            raise bad("warmup", "a fraction of the steps in [0, 1)")
        if not 0 < self.val_frac <= 0.5:
            raise bad("val_frac", "a fraction in (0, 0.5]")
        if self.patience is not None and self.patience < 1:
            raise bad("patience", "a positive integer or None")
        for name, valid in (
            ("schedule", SCHEDULES),
            ("selection", SELECTIONS),
            ("dtype", DTYPES),
        ):
            if getattr(self, name) not in valid:
                raise bad(name, "one of " + ", ".join(valid))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AttnPoolConfig:
        """Build from a mapping (a YAML config); unknown keys are an error naming the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"unknown attnpool setting(s) {unknown}; valid settings: {', '.join(sorted(known))}"
            )
        vals = dict(values)
        if "betas" in vals:
            vals["betas"] = tuple(float(b) for b in vals["betas"])
        return cls(**vals)


@dataclass(frozen=True)
class ProblemInfo:
    """How one problem was trained.

    Attributes
    ----------
    seed : int
    n : int
        Labels given.
    n_val : int
        Labels held out for validation (0: no validation, ``selection == "last"``).
    epochs : int
        Length of the schedule (``config.epochs``, or more to reach ``min_steps``).
    epoch : int
        The epoch whose parameters were kept (1-based).
    steps : int
        Optimiser steps taken by the kept model.
    val_loss : float
        Validation loss at ``epoch`` (NaN without validation).
    selection : str
        ``refit``, ``best`` or ``last``.
    """

    seed: int
    n: int
    n_val: int
    epochs: int
    epoch: int
    steps: int
    val_loss: float
    selection: str


@dataclass
class AttnPoolModel:
    """P fitted attention-pooling probes (stacked parameters, leading axis P).

    Attributes
    ----------
    params_ : dict of Tensor
        ``proj_w{l}`` (P, W, D_l), ``proj_b{l}`` (P, W), ``query`` (P, C), ``q_w``/``k_w``/``v_w``
        (P, C, C) and ``q_b``/``v_b`` (P, C) (``nn.MultiheadAttention``'s ``in_proj`` split;
        the key bias is omitted: it cannot change the output), ``o_w`` (P, C, C), ``o_b`` (P, C),
        ``head_w`` (P, Kc, C), ``head_b`` (P, Kc), Kc = 1 for binary problems.
    config : AttnPoolConfig
    n_classes : int
    dims : tuple of int
        Token width of each layer.
    n_tokens : int
    problems : tuple of ProblemInfo
    fit_seconds : float
    """

    params_: dict[str, torch.Tensor]
    config: AttnPoolConfig
    n_classes: int
    dims: tuple[int, ...]
    n_tokens: int
    problems: tuple[ProblemInfo, ...] = ()
    fit_seconds: float = 0.0

    @property
    def n_problems(self) -> int:
        return int(self.params_["query"].shape[0])

    @property
    def width(self) -> int:
        return int(self.params_["proj_w0"].shape[1])


# --- reading tokens ------------------------------------------------------------------------------


def _read_rows(array: TokenArray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (ascending, unique) of an (N, L, D) array, as numpy."""
    oindex = getattr(array, "oindex", None)
    if oindex is not None:  # zarr: orthogonal selection decodes each touched chunk once
        return np.asarray(oindex[rows])
    return np.asarray(array[rows])


def _not_finite(rows: np.ndarray) -> UsageError:
    return UsageError(
        f"token rows {rows[:5].tolist()} give non-finite scores: their stored tokens are NaN "
        "(images that could not be read leave NaN rows in the store); leave those rows out of "
        "train_rows/rows"
    )


class TokenSource:
    """Rows of every layer's token array, LayerNorm-ed, in ascending row chunks of at most
    ``chunk_rows``. Normalised tokens are kept in the arrays' precision (float16 for a store's
    tokens); when ``cache_rows`` fit in ``cache_bytes`` they are normalised once and kept on
    the device, and later requests for them never touch the store."""

    def __init__(
        self,
        tokens: Sequence[TokenArray],
        *,
        chunk_rows: int,
        device: torch.device,
        compute_dtype: torch.dtype,
        cache_rows: np.ndarray | None = None,
        cache_bytes: int = 0,
    ) -> None:
        self.tokens = list(tokens)
        self.dims = tuple(int(a.shape[2]) for a in self.tokens)
        self.chunk_rows = chunk_rows
        self.device = device
        self.compute_dtype = compute_dtype
        half = all(np.dtype(getattr(a, "dtype", np.float32)) == np.float16 for a in tokens)
        self.keep_dtype = torch.float16 if half else torch.float32
        self.cache: torch.Tensor | None = None
        self.cache_rows = np.zeros(0, np.int64)
        if cache_rows is not None and len(cache_rows):
            itemsize = 2 if half else 4
            row_bytes = sum(int(np.prod(a.shape[1:])) for a in self.tokens) * itemsize
            if len(cache_rows) * row_bytes <= cache_bytes:
                cache_rows = np.asarray(cache_rows, np.int64)
                self.cache = torch.cat([x for _, x in self._read(cache_rows)])
                self.cache_rows = cache_rows

    def _read(self, rows: np.ndarray) -> Any:
        for start in range(0, len(rows), self.chunk_rows):
            chunk = rows[start : start + self.chunk_rows]
            xs = []
            for a in self.tokens:
                x = torch.as_tensor(_read_rows(a, chunk), device=self.device).to(torch.float32)
                xs.append(F.layer_norm(x, x.shape[-1:]).to(self.keep_dtype))
            yield chunk, torch.cat(xs, dim=-1)

    def chunks(self, rows: np.ndarray) -> Any:
        """Yield ``(chunk_rows_array, X (c, L, ΣD_l))`` over ascending unique ``rows``: each
        layer's tokens normalised, concatenated along channels, on the device."""
        cache = self.cache
        if cache is not None:
            pos = np.searchsorted(self.cache_rows, rows)
            hit = pos < len(self.cache_rows)
            hit[hit] = self.cache_rows[pos[hit]] == rows[hit]
            if hit.all():
                for start in range(0, len(rows), self.chunk_rows):
                    p = torch.as_tensor(pos[start : start + self.chunk_rows], device=self.device)
                    chunk = rows[start : start + self.chunk_rows]
                    yield chunk, cache[p].to(self.compute_dtype)
                return
        for chunk, x in self._read(rows):
            yield chunk, x.to(self.compute_dtype)


# --- parameters and the forward pass -------------------------------------------------------------


def _uniform(gen: torch.Generator, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound


def init_params(seed: int, dims: Sequence[int], width: int, k_out: int) -> dict[str, torch.Tensor]:
    """PyTorch's default initialisation of the reference modules, drawn in a fixed order from
    ``torch.Generator().manual_seed(seed)``: per layer ``nn.Linear(D_l, W)`` (weight, bias
    ~ U(±1/√D_l)); the query ~ N(0, 0.02²); ``nn.MultiheadAttention(C)`` (in_proj xavier-uniform
    over (3C, C), biases 0, out_proj weight ~ U(±1/√C)); ``nn.Linear(C, Kc)``."""
    gen = torch.Generator().manual_seed(int(seed))
    C = width * len(dims)
    p: dict[str, torch.Tensor] = {}
    for li, d in enumerate(dims):
        p[f"proj_w{li}"] = _uniform(gen, (width, d), 1 / math.sqrt(d))
        p[f"proj_b{li}"] = _uniform(gen, (width,), 1 / math.sqrt(d))
    p["query"] = torch.randn((C,), generator=gen, dtype=torch.float32) * 0.02
    in_w = _uniform(gen, (3 * C, C), math.sqrt(6 / (4 * C)))
    p["q_w"], p["k_w"], p["v_w"] = (t.contiguous() for t in in_w.chunk(3))
    p["q_b"] = torch.zeros(C)
    p["v_b"] = torch.zeros(C)
    p["o_w"] = _uniform(gen, (C, C), 1 / math.sqrt(C))
    p["o_b"] = torch.zeros(C)
    p["head_w"] = _uniform(gen, (k_out, C), 1 / math.sqrt(C))
    p["head_b"] = _uniform(gen, (k_out,), 1 / math.sqrt(C))
    return p


def _token_maps(params: dict[str, torch.Tensor], n_layers: int, heads: int) -> list[torch.Tensor]:
    """Per problem and head, the vector ``r_{h,l}`` (P, H, D_l) whose dot product with a
    normalised token of layer l is that token's attention logit (up to a constant)."""
    query = params["query"]
    P, C = query.shape
    d = C // heads
    W = C // n_layers
    Q = torch.einsum("pc,pkc->pk", query, params["q_w"]) + params["q_b"]
    g = torch.einsum("phd,phdc->phc", Q.view(P, heads, d), params["k_w"].view(P, heads, d, C))
    g = g / math.sqrt(d)
    return [
        torch.einsum("phw,pwd->phd", g[..., li * W : (li + 1) * W], params[f"proj_w{li}"])
        for li in range(n_layers)
    ]


def _head(params: dict[str, torch.Tensor], pooled: Sequence[torch.Tensor]) -> torch.Tensor:
    """From attention-weighted token means ``pooled[l]`` (P, M, H, D_l) to outputs (P, M, Kc)."""
    P, M, H, _ = pooled[0].shape
    z = torch.cat(
        [
            torch.einsum("pmhd,pwd->pmhw", x, params[f"proj_w{li}"])
            + params[f"proj_b{li}"][:, None, None, :]
            for li, x in enumerate(pooled)
        ],
        dim=-1,
    )  # (P, M, H, C): the projected tokens' attention-weighted mean, per head
    C = z.shape[-1]
    d = C // H
    v = torch.einsum("pmhc,phec->pmhe", z, params["v_w"].view(P, H, d, C))
    v = v.reshape(P, M, C) + params["v_b"][:, None, :]
    o = torch.einsum("pmc,pkc->pmk", v, params["o_w"]) + params["o_b"][:, None, :]
    return torch.einsum("pmc,pkc->pmk", o, params["head_w"]) + params["head_b"][:, None, :]


def _pair_outputs(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    dims: Sequence[int],
    prob: torch.Tensor,
    local: torch.Tensor | None,
    slot: torch.Tensor,
    n_slots: int,
    heads: int,
) -> torch.Tensor:
    """Outputs (m, Kc) of problem ``prob[j]`` on chunk row ``local[j]`` (x: (c, L, ΣD_l);
    ``local`` None: row j), for m pairs; ``slot[j]`` is the pair's rank among its problem's
    pairs (< ``n_slots``)."""
    P = params["query"].shape[0]
    r = torch.cat(_token_maps(params, len(dims), heads), dim=-1)  # (P, H, ΣD)
    xg = x if local is None else x[local]  # (m, L, ΣD)
    logits = torch.einsum("mld,mhd->mhl", xg, r[prob].to(xg.dtype))
    attn = torch.softmax(logits.float(), dim=-1).to(xg.dtype)
    pm = torch.einsum("mhl,mld->mhd", attn, xg).float()
    dense = pm.new_zeros((P, n_slots, *pm.shape[1:])).index_put((prob, slot), pm)
    return _head(params, dense.split(list(dims), dim=-1))[prob, slot]


def _shared_outputs(
    params: dict[str, torch.Tensor], x: torch.Tensor, dims: Sequence[int], heads: int
) -> torch.Tensor:
    """Outputs (P, c, Kc) of every problem on every chunk row (x: (c, L, ΣD_l))."""
    r = torch.cat(_token_maps(params, len(dims), heads), dim=-1)
    logits = torch.einsum("cld,phd->pchl", x, r.to(x.dtype))
    attn = torch.softmax(logits.float(), dim=-1).to(x.dtype)
    pooled = torch.einsum("pchl,cld->pchd", attn, x).float()
    return _head(params, pooled.split(list(dims), dim=-1))


def _loss(out: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-row loss: binary cross-entropy on one logit, or softmax cross-entropy."""
    if n_classes == 2:
        return F.binary_cross_entropy_with_logits(out[:, 0], y.float(), reduction="none")
    return F.cross_entropy(out, y, reduction="none")


# --- the optimiser and the schedule --------------------------------------------------------------


def _adamw_step(
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    *,
    lr: torch.Tensor,
    active: torch.Tensor,
    config: AttnPoolConfig,
) -> None:
    """One ``torch.optim.AdamW`` step of every active problem (``lr``, ``active``: (P,)),
    in place; ``state["step"]`` (P,) counts each problem's steps."""
    b1, b2 = config.betas
    state["step"] = state["step"] + active.to(state["step"].dtype)
    t = state["step"].clamp_min(1)
    bc1 = 1 - b1**t
    bc2_sqrt = torch.sqrt(1 - b2**t)
    for name, p in params.items():
        g = grads[name]
        shape = (-1,) + (1,) * (p.dim() - 1)
        on = active.view(shape)
        m, v = state[f"m.{name}"], state[f"v.{name}"]
        m_new = m.lerp(g, 1 - b1)
        v_new = v * b2 + (1 - b2) * g * g
        decayed = p * (1 - (lr * config.weight_decay).view(shape))
        denom = v_new.sqrt() / bc2_sqrt.view(shape) + config.eps
        p_new = decayed - (lr / bc1).view(shape) * m_new / denom
        p.copy_(torch.where(on, p_new, p))
        m.copy_(torch.where(on, m_new, m))
        v.copy_(torch.where(on, v_new, v))


def lr_factor(step: int, total: int, *, warmup: float, schedule: str) -> float:
    """The learning-rate multiplier of 0-based ``step`` of ``total``: linear warm-up over
    ``round(warmup·total)`` steps (to 1 at its last), then cosine decay towards 0 or constant."""
    n_warm = round(warmup * total)
    if step < n_warm:
        return (step + 1) / n_warm
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, total - n_warm)))


# --- training ------------------------------------------------------------------------------------


@dataclass
class Problem:
    seed: int
    rows: np.ndarray  # store rows it trains on
    y: np.ndarray
    epochs: int  # schedule length
    stop: int  # epochs to run (<= epochs)
    val_rows: np.ndarray | None = None
    val_y: np.ndarray | None = None


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def _accumulate(
    params: dict[str, torch.Tensor],
    source: TokenSource,
    batches: list[tuple[np.ndarray, torch.Tensor] | None],
    weights: np.ndarray,
    *,
    train: bool,
    n_classes: int,
    heads: int,
    autocast: bool,
) -> np.ndarray:
    """Per problem, the summed loss over its ``(rows, labels)``; with ``train``, also the
    gradients of Σ_p weights[p]·(its summed loss) into ``params[...].grad``."""
    P, device, dims = len(batches), source.device, source.dims
    losses = np.zeros(P)
    present = [pi for pi, b in enumerate(batches) if b is not None and len(b[0])]
    if not present:
        return losses
    pp = np.concatenate([np.full(len(batches[pi][0]), pi) for pi in present])  # type: ignore[index]
    store_rows = np.concatenate([batches[pi][0] for pi in present])  # type: ignore[index]
    yy = torch.cat([batches[pi][1] for pi in present])  # type: ignore[index]
    ww = torch.as_tensor(weights[pp], dtype=torch.float32, device=device)
    union, inverse = np.unique(store_rows, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # pairs grouped by chunk row
    start = 0
    for chunk, x in source.chunks(union):
        stop = start + len(chunk)
        lo, hi = np.searchsorted(inverse[order], [start, stop])
        sel = order[lo:hi]
        row_of = inverse[sel]
        # round k takes the k-th pair of every row: rows distinct and ascending, so a round
        # that covers the chunk uses its tensor as it is (no per-pair copy of the tokens)
        rank = np.arange(len(sel)) - np.searchsorted(row_of, row_of)
        for k in range(int(rank.max()) + 1 if len(sel) else 0):
            part = sel[rank == k]
            local = row_of[rank == k] - start
            prob = pp[part]
            by_prob = np.argsort(prob, kind="stable")
            slot = np.empty(len(part), np.int64)
            slot[by_prob] = np.arange(len(part)) - np.searchsorted(prob[by_prob], prob[by_prob])
            part_t = torch.as_tensor(part, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = _pair_outputs(
                    params,
                    x,
                    dims,
                    torch.as_tensor(prob, device=device),
                    None if len(local) == len(chunk) else torch.as_tensor(local, device=device),
                    torch.as_tensor(slot, device=device),
                    int(slot.max()) + 1,
                    heads,
                )
            if not bool(torch.isfinite(out).all()):
                bad = ~torch.isfinite(out).all(1).cpu().numpy()
                raise _not_finite(np.unique(union[inverse[part][bad]]))
            per_row = _loss(out.float(), yy[part_t], n_classes)
            np.add.at(losses, prob, per_row.detach().double().cpu().numpy())
            if train:
                (per_row * ww[part_t]).sum().backward()
        start = stop
    return losses


def train_problems(
    problems: Sequence[Problem],
    params: dict[str, torch.Tensor],
    source: TokenSource,
    *,
    n_classes: int,
    config: AttnPoolConfig,
    keep_best: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train stacked ``params`` (in place) on ``problems``; returns per problem the best
    validation epoch (1-based; the last epoch run without validation), its loss and the steps
    taken by the kept parameters. ``keep_best`` copies the best-validation parameters back."""
    P = len(problems)
    device = source.device
    B = config.batch_size
    state: dict[str, torch.Tensor] = {"step": torch.zeros(P, dtype=torch.float64, device=device)}
    for name, p in params.items():
        state[f"m.{name}"] = torch.zeros_like(p)
        state[f"v.{name}"] = torch.zeros_like(p)
    spe = np.array([_steps_per_epoch(len(pr.rows), B) for pr in problems])
    totals = spe * np.array([pr.epochs for pr in problems])
    stops = np.array([pr.stop for pr in problems])
    has_val = np.array([pr.val_rows is not None for pr in problems])
    rngs = [np.random.default_rng(pr.seed) for pr in problems]
    best_epoch = stops.copy()
    best_loss = np.full(P, np.nan)
    best_steps = spe * stops
    best_params = {k: v.clone() for k, v in params.items()} if keep_best else None
    running = np.ones(P, bool)
    heads = config.heads
    y_all = [torch.as_tensor(pr.y, dtype=torch.long, device=device) for pr in problems]
    autocast = config.dtype == "bfloat16" and device.type == "cuda"

    for p in params.values():
        p.requires_grad_(True)
    epoch = 0
    perms: list[np.ndarray] = [np.zeros(0, np.int64)] * P
    while running.any():
        for pi in np.flatnonzero(running).tolist():
            perms[pi] = rngs[pi].permutation(len(problems[pi].rows))
        for s in range(int(spe[running].max())):
            batches: list[tuple[np.ndarray, torch.Tensor] | None] = [None] * P
            weights = np.zeros(P)
            lrs = np.zeros(P)
            for pi in np.flatnonzero(running & (s < spe)).tolist():
                idx = perms[pi][s * B : (s + 1) * B]
                batches[pi] = (
                    problems[pi].rows[idx],
                    y_all[pi][torch.as_tensor(idx, device=device)],
                )
                weights[pi] = 1.0 / len(idx)
                t = int(epoch * spe[pi] + s)
                lrs[pi] = config.lr * lr_factor(
                    t, int(totals[pi]), warmup=config.warmup, schedule=config.schedule
                )
            for p in params.values():
                p.grad = None
            _accumulate(params, source, batches, weights, train=True, n_classes=n_classes,
                        heads=heads, autocast=autocast)  # fmt: skip
            grads = {
                k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in params.items()
            }
            with torch.no_grad():
                _adamw_step(
                    params,
                    grads,
                    state,
                    lr=torch.as_tensor(lrs, dtype=torch.float32, device=device),
                    active=torch.as_tensor(weights > 0, device=device),
                    config=config,
                )
        epoch += 1
        validate = running & has_val
        if validate.any():
            vb: list[tuple[np.ndarray, torch.Tensor] | None] = [None] * P
            for pi in np.flatnonzero(validate).tolist():
                pr = problems[pi]
                assert pr.val_rows is not None and pr.val_y is not None
                vb[pi] = (pr.val_rows, torch.as_tensor(pr.val_y, dtype=torch.long, device=device))
            with torch.no_grad():
                vloss = _accumulate(
                    params, source, vb, np.zeros(P), train=False, n_classes=n_classes,
                    heads=heads, autocast=autocast,
                )  # fmt: skip
            for pi in np.flatnonzero(validate).tolist():
                loss = vloss[pi] / max(1, len(vb[pi][0]))  # type: ignore[index]
                if np.isnan(best_loss[pi]) or loss < best_loss[pi]:
                    best_loss[pi] = loss
                    best_epoch[pi] = epoch
                    best_steps[pi] = epoch * spe[pi]
                    if best_params is not None:
                        for k, v in params.items():
                            best_params[k][pi] = v.detach()[pi]
                elif config.patience is not None and epoch - best_epoch[pi] >= config.patience:
                    running[pi] = False
        running &= epoch < stops
    for p in params.values():
        p.requires_grad_(False)
        p.grad = None
    if best_params is not None:
        with torch.no_grad():
            for k, v in params.items():
                keep = torch.as_tensor(has_val, device=device).view((-1,) + (1,) * (v.dim() - 1))
                v.copy_(torch.where(keep, best_params[k], v))
    return best_epoch, best_loss, best_steps


# --- public API ----------------------------------------------------------------------------------


def _as_problem_list(value: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return [np.asarray(v) for v in value]
    out = [np.asarray(v) for v in value]
    if any(v.ndim != 1 for v in out):
        raise UsageError(
            f"{name}: expected (P, n) or P 1-d arrays, got shapes {[v.shape for v in out]}"
        )
    return out


def _check_tokens(tokens: Sequence[TokenArray]) -> tuple[int, int, tuple[int, ...]]:
    if not len(tokens):
        raise UsageError("tokens: pass one (N, L, D) token array per layer, got none")
    shapes = [tuple(int(s) for s in a.shape) for a in tokens]
    if any(len(s) != 3 for s in shapes) or len({s[:2] for s in shapes}) != 1:
        raise UsageError(
            f"tokens: expected (N, L, D_l) arrays with the same N and L (tokens are concatenated "
            f"along channels), got shapes {shapes}; pass layers of one model"
        )
    return shapes[0][0], shapes[0][1], tuple(s[2] for s in shapes)


def _check_problems(
    rows_l: Sequence[np.ndarray],
    y_l: Sequence[np.ndarray],
    seeds: Sequence[int],
    *,
    n_rows: int,
    n_classes: int,
) -> None:
    if not len(rows_l) == len(y_l) == len(seeds) or not rows_l:
        raise UsageError(
            f"train_rows, y_train and seeds describe {len(rows_l)}, {len(y_l)} and {len(seeds)} "
            "problems; pass one of each per problem (at least one)"
        )
    for r, y in zip(rows_l, y_l, strict=True):
        if r.shape != y.shape or not len(r):
            raise UsageError(
                f"a problem has {r.shape} train_rows but {y.shape} labels; pass one label per row"
            )
        if r.min() < 0 or r.max() >= n_rows or len(np.unique(r)) != len(r):
            raise UsageError(f"train_rows must be distinct store rows in [0, {n_rows}) per problem")
        if y.min() < 0 or y.max() >= n_classes:
            raise UsageError(f"y_train holds codes outside 0..{n_classes - 1} (n_classes)")
    if n_classes < 2:
        raise UsageError(f"n_classes={n_classes}: a probe needs at least 2 classes")


def _validation_splits(
    y_l: Sequence[np.ndarray], seeds: Sequence[int], *, n_classes: int, config: AttnPoolConfig
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """The (train, validation) positions of each problem, when its rarest class can spare a
    label and the selection needs one; None otherwise."""
    splits: list[tuple[np.ndarray, np.ndarray] | None] = []
    for y, s in zip(y_l, seeds, strict=True):
        rarest = int(np.bincount(y, minlength=n_classes)[np.unique(y)].min())
        folds = min(max(2, round(1 / config.val_frac)), rarest)
        if config.selection == "last" or folds < 2:
            splits.append(None)
        else:
            held = fold_masks(y, k=folds, seed=s)[0]
            splits.append((np.flatnonzero(~held), np.flatnonzero(held)))
    return splits


def fit_attnpool(
    *,
    tokens: Sequence[TokenArray],
    train_rows: np.ndarray | Sequence[np.ndarray],
    y_train: np.ndarray | Sequence[np.ndarray],
    n_classes: int,
    seeds: Sequence[int],
    config: AttnPoolConfig | None = None,
    device: str | torch.device = "cpu",
) -> AttnPoolModel:
    """Train P attention-pooling probes at once on stored patch tokens.

    Parameters
    ----------
    tokens : sequence of (N, L, D_l) arrays
        One per layer (zarr arrays ``<model>/block<i>/tokens``, or numpy); read by rows, in
        chunks of ``config.chunk_rows``, never whole.
    train_rows : (P, n) int array, or P 1-d arrays (problems of different n)
        Store rows of each problem's training labels.
    y_train : like ``train_rows``
        Class codes 0..n_classes-1.
    n_classes : int
        2: one logit and binary cross-entropy; more: softmax.
    seeds : sequence of P int
        Each problem's seed (initialisation, batch order, validation fold).
    config : AttnPoolConfig, optional
    device : str or torch.device

    Returns
    -------
    AttnPoolModel
        Score rows with :func:`attnpool_scores`; ``model.problems`` tells how each was trained.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> tok = rng.normal(size=(40, 6, 8)).astype(np.float32)
    >>> rows = np.stack([rng.permutation(30)[:20] for _ in range(2)])
    >>> y = (rows % 2 == 0).astype(int)
    >>> model = fit_attnpool(tokens=[tok], train_rows=rows, y_train=y, n_classes=2,
    ...                      seeds=[0, 1], config=AttnPoolConfig(epochs=2, min_steps=0))
    >>> attnpool_scores(model, tokens=[tok], rows=np.arange(30, 40)).shape
    (2, 10)
    """
    t0 = time.perf_counter()
    config = config or AttnPoolConfig()
    dev = torch.device(device)
    N, L, dims = _check_tokens(tokens)
    rows_l = _as_problem_list(train_rows, "train_rows")
    y_l = _as_problem_list(y_train, "y_train")
    seeds = [int(s) for s in seeds]
    _check_problems(rows_l, y_l, seeds, n_rows=N, n_classes=n_classes)
    width = config.width or max(dims)
    C = width * len(dims)
    if C % config.heads:
        raise UsageError(
            f"{len(dims)} layers × width {width} = {C} channels do not split into "
            f"{config.heads} heads; pick heads dividing {C} or another width"
        )
    k_out = 1 if n_classes == 2 else n_classes
    inits = [init_params(s, dims, width, k_out) for s in seeds]

    def fresh(which: Sequence[int]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([inits[i][k] for i in which]).to(dev) for k in inits[0]}

    B = config.batch_size

    def schedule_epochs(n: int) -> int:
        return max(config.epochs, -(-config.min_steps // _steps_per_epoch(n, B)))

    splits = _validation_splits(y_l, seeds, n_classes=n_classes, config=config)
    needed = np.unique(np.concatenate(rows_l))
    compute_dtype = (
        torch.bfloat16 if config.dtype == "bfloat16" and dev.type == "cuda" else torch.float32
    )
    source = TokenSource(
        tokens,
        chunk_rows=config.chunk_rows,
        device=dev,
        compute_dtype=compute_dtype,
        cache_rows=needed,
        cache_bytes=config.cache_bytes,
    )

    first = []
    for r, y, s, sp in zip(rows_l, y_l, seeds, splits, strict=True):
        if sp is None:
            e = schedule_epochs(len(r))
            first.append(Problem(s, r, y, epochs=e, stop=e))
        else:
            tr, va = sp
            e = schedule_epochs(len(tr))
            first.append(Problem(s, r[tr], y[tr], epochs=e, stop=e,
                                  val_rows=r[va], val_y=y[va]))  # fmt: skip
    params = fresh(range(len(seeds)))
    best_epoch, best_loss, steps = train_problems(
        first, params, source, n_classes=n_classes, config=config,
        keep_best=config.selection == "best",
    )  # fmt: skip
    selection = ["last" if sp is None else config.selection for sp in splits]
    refit = [i for i, sp in enumerate(splits) if sp is not None and config.selection == "refit"]
    if refit:
        # again from the same initialisation, on all n labels, the same schedule (in epochs),
        # stopped after the chosen epoch; problems without validation keep their first run
        second = [
            Problem(seeds[i], rows_l[i], y_l[i], epochs=first[i].epochs, stop=int(best_epoch[i]))
            for i in refit
        ]
        sub = fresh(refit)
        _, _, sub_steps = train_problems(second, sub, source, n_classes=n_classes, config=config,
                               keep_best=False)  # fmt: skip
        index = torch.as_tensor(refit, device=dev)
        for name, v in params.items():
            v.index_copy_(0, index, sub[name])
        steps[refit] = sub_steps
    infos = tuple(
        ProblemInfo(
            seed=s,
            n=len(r),
            n_val=0 if sp is None else len(sp[1]),
            epochs=pr.epochs,
            epoch=int(be),
            steps=int(st),
            val_loss=float(bl),
            selection=sel,
        )
        for s, r, sp, pr, be, bl, st, sel in zip(
            seeds, rows_l, splits, first, best_epoch, best_loss, steps, selection, strict=True
        )
    )
    return AttnPoolModel(
        params_={k: v.detach() for k, v in params.items()},
        config=config,
        n_classes=n_classes,
        dims=dims,
        n_tokens=L,
        problems=infos,
        fit_seconds=time.perf_counter() - t0,
    )


def attnpool_scores(
    model: AttnPoolModel,
    *,
    tokens: Sequence[TokenArray],
    rows: np.ndarray,
    device: str | torch.device | None = None,
    chunk_rows: int | None = None,
) -> np.ndarray:
    """Scores of every problem on store rows ``rows`` (shared by all problems).

    Returns
    -------
    ndarray
        (P, T) float32 logits of class 1 for binary problems, (P, T, K) class probabilities
        otherwise (what ``fmprobe.probes.metrics.classification_metrics`` takes, threshold 0).
    """
    if not isinstance(model, AttnPoolModel) or not model.params_:
        raise UsageError("attnpool_scores needs the model returned by fit_attnpool")
    _, L, dims = _check_tokens(tokens)
    if dims != model.dims or model.n_tokens != L:
        raise UsageError(
            f"tokens have widths {dims} and {L} tokens; the model was fitted on {model.dims} "
            f"and {model.n_tokens}: pass the same layers in the same order"
        )
    rows = np.asarray(rows, np.int64)
    dev = torch.device(device) if device is not None else model.params_["query"].device
    params = {k: v.to(dev) for k, v in model.params_.items()}
    P = model.n_problems
    # bound the (P, c, H, L) attention logits as the training chunks bound theirs
    chunk = chunk_rows or max(1, model.config.chunk_rows // max(1, P // 4))
    compute_dtype = (
        torch.bfloat16 if model.config.dtype == "bfloat16" and dev.type == "cuda" else torch.float32
    )
    source = TokenSource(tokens, chunk_rows=chunk, device=dev, compute_dtype=compute_dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    outs = []
    with (
        torch.no_grad(),
        torch.autocast(dev.type, dtype=torch.bfloat16, enabled=compute_dtype == torch.bfloat16),
    ):
        for chunk_ids, x in source.chunks(uniq):
            out = _shared_outputs(params, x, model.dims, model.config.heads).float()
            finite = torch.isfinite(out).flatten(2).all(2).all(0).cpu().numpy()
            if not finite.all():
                raise _not_finite(chunk_ids[~finite])
            outs.append(out)
    out = torch.cat(outs, dim=1) if outs else torch.zeros(P, 0, model.params_["head_b"].shape[1])
    out = out[:, torch.as_tensor(inverse, device=out.device)]
    scores = out[..., 0] if model.n_classes == 2 else torch.softmax(out, dim=-1)
    return scores.cpu().numpy().astype(np.float32)


def fit_predict_attnpool(
    *,
    tokens: Sequence[TokenArray],
    train_rows: np.ndarray | Sequence[np.ndarray],
    y_train: np.ndarray | Sequence[np.ndarray],
    test_rows: np.ndarray,
    n_classes: int,
    seeds: Sequence[int],
    config: AttnPoolConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, tuple[ProblemInfo, ...]]:
    """:func:`fit_attnpool` then :func:`attnpool_scores` on ``test_rows``: returns the scores
    ((P, T) logits or (P, T, K) probabilities) and how each problem was trained."""
    model = fit_attnpool(tokens=tokens, train_rows=train_rows, y_train=y_train,
                         n_classes=n_classes, seeds=seeds, config=config,
                         device=device)  # fmt: skip
    scores = attnpool_scores(model, tokens=tokens, rows=test_rows)
    return scores, model.problems


__all__: list[str] = [
    "AttnPoolConfig",
    "AttnPoolModel",
    "ProblemInfo",
    "attnpool_scores",
    "fit_attnpool",
    "fit_predict_attnpool",
    "lr_factor",
]
