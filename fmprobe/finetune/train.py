"""The training loop of one (n, seed) problem: AdamW with linear warm-up and cosine decay, the
epoch chosen on a validation fold of the n labels (never the test set), bf16 autocast on CUDA,
and batches split into micro-batches (gradients summed) when the device runs out of memory.

Determinism: the batch order and the flips draw from ``np.random.default_rng(seed)``, the
validation fold from ``fold_masks(..., seed=seed)``; on a CPU the same seed gives the same
parameters bit for bit. On CUDA results agree to float rounding (cuDNN and atomics)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fmprobe.errors import FmprobeError
from fmprobe.finetune.config import TrainSettings
from fmprobe.probes.attnpool import lr_factor
from fmprobe.probes.folds import fold_masks
from fmprobe.probes.metrics import classification_metrics


class Source(Protocol):
    """Model inputs by row: images (``ImageSource``) or frozen features (``FeatureSource``)."""

    def get(
        self, rows: Sequence[int] | np.ndarray, flips: np.ndarray | None = None
    ) -> torch.Tensor: ...


@dataclass
class MicroBatch:
    """Images per forward pass, shared by every step and problem of a process: halved when
    the device runs out of memory, never raised again."""

    size: int


@dataclass(frozen=True)
class Fitted:
    """How one problem was trained.

    Attributes
    ----------
    steps : int
        Optimiser steps taken by the kept parameters.
    epoch : int
        Epochs the kept parameters were trained for (1-based).
    epochs : int
        Length of the schedule (``epochs``, or more to reach ``min_steps``).
    n_val : int
        Labels held out for the epoch choice (0 for ``last``).
    val_loss : float
        Validation log-loss at ``epoch`` (NaN without validation).
    selection : str
        ``best``, ``refit`` or ``last`` (``last`` when the rarest class cannot spare a label).
    """

    steps: int
    epoch: int
    epochs: int
    n_val: int
    val_loss: float
    selection: str


def validation_split(
    y: np.ndarray, *, seed: int, settings: TrainSettings
) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, validation) positions of the n labels ``y``, or None (``last``, or a class
    with a single label). The fold is ``fold_masks``' first, k = round(1 / val_frac) capped at
    the rarest class's count.

    >>> tr, va = validation_split(np.array([0] * 10 + [1] * 10), seed=0, settings=TrainSettings())
    >>> len(tr), len(va)
    (16, 4)
    """
    counts = np.bincount(y)
    rarest = int(counts[counts > 0].min())
    folds = min(max(2, round(1 / settings.val_frac)), rarest)
    if settings.selection == "last" or folds < 2:
        return None
    held = fold_masks(y, k=folds, seed=seed)[0]
    return np.flatnonzero(~held), np.flatnonzero(held)


def loss_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed log-loss of logits ``out`` (B, 1) binary or (B, K), labels ``y`` (B,)."""
    out = out.float()
    if out.shape[1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float(), reduction="sum")
    return nn.functional.cross_entropy(out, y.long(), reduction="sum")


def scores_of(logits: torch.Tensor) -> torch.Tensor:
    """Logits (T, 1) or (T, K) → the sweep's scores: the class-1 logit (T,) of a binary task,
    class probabilities (T, K) otherwise."""
    return logits[:, 0] if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def validation_score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(AUROC, −mean log-loss) of the validation labels ``y``: epochs are compared by AUROC
    (the reported metric, which the sweep's ``--C auto`` also maximises), ties by the loss. A
    fold of a few labels makes the loss alone stop too early: it rises as soon as the model
    grows confident, while the ranking still improves."""
    n_classes = max(2, logits.shape[1])
    met = classification_metrics(scores_of(logits)[None].double(), y, n_classes=n_classes,
                                 threshold=0.0)  # fmt: skip
    auc = float(met["auroc"][0])
    loss = float(loss_sum(logits, y)) / len(y)
    return (auc if auc == auc else 0.0), -loss


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def predict(
    model: nn.Module,
    source: Source,
    rows: Sequence[int] | np.ndarray,
    *,
    micro: MicroBatch,
    device: torch.device,
    amp: bool,
) -> torch.Tensor:
    """(len(rows), n_out) float32 logits of ``rows`` (eval mode, no augmentation)."""
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    lo = 0
    with torch.no_grad():
        while lo < len(rows):
            try:
                with _autocast(device, amp):
                    z = model(source.get(rows[lo : lo + micro.size]))
            except torch.OutOfMemoryError:
                if micro.size == 1:
                    raise
                micro.size //= 2
                _free(device)
                continue
            out.append(z.float())
            lo += micro.size
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1, device=device)


def _step(
    model: nn.Module,
    source: Source,
    rows: np.ndarray,
    y: torch.Tensor,
    flips: np.ndarray | None,
    opt: torch.optim.Optimizer,
    *,
    micro: MicroBatch,
    device: torch.device,
    amp: bool,
) -> None:
    """One optimiser step on the mini-batch ``rows``: the mean log-loss over it, accumulated
    over micro-batches (a batch that runs out of memory is retried in halves)."""
    while True:
        opt.zero_grad(set_to_none=True)
        try:
            for lo in range(0, len(rows), micro.size):
                hi = min(len(rows), lo + micro.size)
                x = source.get(rows[lo:hi], None if flips is None else flips[lo:hi])
                with _autocast(device, amp):
                    out = model(x)
                (loss_sum(out, y[lo:hi]) / len(rows)).backward()
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            if micro.size == 1:
                raise FmprobeError(
                    "the device ran out of memory with one image per forward pass; use a smaller "
                    "model, a smaller --model-kwargs img_size, or another device"
                ) from None
            micro.size = max(1, micro.size // 2)
            _free(device)
            continue
        opt.step()
        return


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters and the buffers (batch-norm statistics change in train mode)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for n, v in state.items():
            own[n].copy_(v)


@dataclass(frozen=True)
class Problem:
    """What ``fit`` trains on: positions into ``rows``/``y`` for training (and validation)."""

    rows: np.ndarray
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray | None


@dataclass(frozen=True)
class Loop:
    """What every epoch of a problem's training shares."""

    groups: list[dict[str, Any]]
    settings: TrainSettings
    train_mode: bool
    micro: MicroBatch
    device: torch.device
    amp: bool


def _run(
    model: nn.Module,
    source: Source,
    problem: Problem,
    loop: Loop,
    *,
    rng: np.random.Generator,
    epochs: int,
    stop: int,
) -> tuple[int, float, dict[str, torch.Tensor] | None]:
    """Train for ``stop`` epochs of a schedule of ``epochs``; returns the best validation
    epoch (1-based, ``stop`` without validation), its loss and the parameters then."""
    rows, tr, st = problem.rows, problem.train, loop.settings
    kw = dict(micro=loop.micro, device=loop.device, amp=loop.amp)
    y_all = torch.as_tensor(problem.y, device=loop.device)
    B = st.batch_size
    spe = math.ceil(len(tr) / B)
    opt = torch.optim.AdamW([dict(g) for g in loop.groups], weight_decay=st.weight_decay,
                            foreach=False)  # fmt: skip
    axes = np.asarray({"flips": (True, True), "hflip": (True, False)}.get(st.augment, (0, 0)))
    best_epoch, best, best_state = stop, None, None
    for epoch in range(stop):
        model.train(loop.train_mode)
        perm = tr[rng.permutation(len(tr))]
        for s in range(spe):
            idx = perm[s * B : (s + 1) * B]
            flips = (rng.random((len(idx), 2)) < 0.5) & axes if axes.any() else None
            factor = lr_factor(epoch * spe + s, spe * epochs, warmup=st.warmup, schedule="cosine")
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            _step(model, source, rows[idx], y_all[idx], flips, opt, **kw)  # type: ignore[arg-type]
        if problem.val is not None:
            z = predict(model, source, rows[problem.val], **kw)  # type: ignore[arg-type]
            score = validation_score(z, y_all[problem.val])
            if best is None or score > best:
                best_epoch, best, best_state = epoch + 1, score, _snapshot(model)
    model.eval()
    return best_epoch, math.nan if best is None else -best[1], best_state


def fit(
    model: nn.Module,
    source: Source,
    *,
    rows: np.ndarray,
    y: np.ndarray,
    groups: list[dict[str, Any]],
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    amp: bool = False,
    train_mode: bool = False,
    micro: MicroBatch | None = None,
) -> Fitted:
    """Train ``model`` in place on the labelled ``rows`` (class codes ``y``) of ``source``.

    Parameters
    ----------
    model : nn.Module
        Inputs from ``source.get`` → (B, 1) logits for a binary task, (B, K) otherwise.
    groups : list of dict
        AdamW parameter groups, each with ``base_lr`` (the peak learning rate).
    settings : TrainSettings
    seed : int
        Seeds the batch order, the flips and the validation fold.
    amp : bool
        bf16 autocast of the forward passes (on the model's device type).
    train_mode : bool
        ``model.train()`` during the steps (full fine-tuning); otherwise eval mode throughout
        (frozen backbones: no dropout, batch-norm statistics unchanged).
    micro : MicroBatch, optional
        Images per forward pass (default: the whole batch), halved on out-of-memory errors.

    Returns
    -------
    Fitted

    Examples
    --------
    >>> import torch
    >>> class Rows:  # a source of fixed 2-d inputs
    ...     def __init__(self, X): self.X = X
    ...     def get(self, rows, flips=None): return self.X[torch.as_tensor(rows)]
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(40, 2, generator=g); y = (X[:, 0] > 0).long().numpy()
    >>> head = torch.nn.Linear(2, 1)
    >>> f = fit(head, Rows(X), rows=np.arange(40), y=y, seed=0, device=torch.device("cpu"),
    ...         groups=[{"params": list(head.parameters()), "base_lr": 0.1}],
    ...         settings=TrainSettings(epochs=20, min_steps=0, batch_size=8))
    >>> f.selection, f.n_val, bool(head.weight[0, 0] > 0)
    ('best', 8, True)
    """
    loop = Loop(groups=groups, settings=settings, train_mode=train_mode, device=device, amp=amp,
                micro=micro or MicroBatch(settings.batch_size))  # fmt: skip
    everything = Problem(rows=rows, y=y, train=np.arange(len(rows)), val=None)
    split = validation_split(y, seed=seed, settings=settings)
    selection = settings.selection if split is not None else "last"
    initial = _snapshot(model) if selection == "refit" else None
    problem = everything if split is None else Problem(rows, y, train=split[0], val=split[1])

    def schedule(n_train: int) -> tuple[int, int]:
        spe = math.ceil(n_train / settings.batch_size)
        return max(settings.epochs, math.ceil(settings.min_steps / spe)), spe

    epochs, spe = schedule(len(problem.train))
    best, loss, state = _run(model, source, problem, loop, rng=np.random.default_rng(seed),
                             epochs=epochs, stop=epochs)  # fmt: skip
    n_val = 0 if split is None else len(split[1])
    if selection == "best" and state is not None:
        _restore(model, state)
        return Fitted(best * spe, best, epochs, n_val, loss, selection)
    if selection == "refit" and initial is not None:
        _restore(model, initial)
        epochs, spe = schedule(len(rows))
        stop = min(best, epochs)
        _run(model, source, everything, loop, rng=np.random.default_rng([seed, 1]),
             epochs=epochs, stop=stop)  # fmt: skip
        return Fitted(stop * spe, stop, epochs, n_val, loss, selection)
    return Fitted(epochs * spe, epochs, epochs, n_val, loss, "last")
