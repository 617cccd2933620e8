"""A fine-tune's configuration: ``TrainSettings`` (how every (n, seed) problem is trained) and
``FinetuneConfig`` (everything that defines the results, recorded beside them; a rerun must
match it), with the checks that turn ``finetune()``'s options into one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from fmprobe.errors import UsageError, did_you_mean
from fmprobe.probes.attnpool import SELECTIONS

METHODS = ("lora", "full", "linear")
AUGMENTS = ("flips", "hflip", "none")
# per method: the adapted weights' peak learning rate, the head's, and the minimum number of
# optimiser steps (the linear head's steps are cheap: it trains to convergence)
METHOD_DEFAULTS: dict[str, dict[str, float]] = {
    "lora": {"lr": 1e-3, "head_lr": 1e-2, "min_steps": 200},
    "full": {"lr": 1e-4, "head_lr": 1e-2, "min_steps": 200},
    "linear": {"lr": 3e-2, "head_lr": 3e-2, "min_steps": 2000},
}


@dataclass(frozen=True)
class TrainSettings:
    """How each (n, seed) problem is trained (the same for LoRA, full fine-tuning and the
    linear head).

    Attributes
    ----------
    epochs : int
        Length of the schedule in epochs over the problem's training rows.
    min_steps : int
        At least this many optimiser steps: a small n gets ``ceil(min_steps / steps per
        epoch)`` epochs instead.
    batch_size : int
        Images per optimiser step (the last batch of an epoch is smaller). On a GPU that runs
        out of memory the batch is split into micro-batches whose gradients are summed: the
        step stays the same.
    lr : float
        AdamW's peak learning rate of the adapted parameters (LoRA factors, or every weight of
        the backbone for ``full``).
    head_lr : float
        Peak learning rate of the linear head.
    weight_decay : float
        AdamW's decoupled weight decay (biases and norms included).
    warmup : float
        Fraction of the steps with a linear warm-up, then cosine decay to 0.
    selection : {"best", "refit", "last"}
        The epoch kept: ``best`` keeps the parameters of the epoch with the highest AUROC on a
        validation fold of the n labels (ties: the lower log-loss; trained on the rest);
        ``refit`` trains again from the same initialisation on all n labels, stopped after
        that epoch; ``last`` uses no validation and trains on all n.
    val_frac : float
        Size of the validation fold (1/k of the labels, k = round(1 / val_frac); fewer folds
        when the rarest class has fewer than k labels, ``last`` when it has one).
    augment : {"flips", "hflip", "none"}
        Training-time augmentation after the model's own preprocessing: random horizontal and
        vertical flips (each with probability 1/2), horizontal only, or none. The linear head
        reads frozen features computed once, without augmentation (as the sweep's probes).
    """

    epochs: int = 10
    min_steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    head_lr: float = 1e-2
    weight_decay: float = 0.01
    warmup: float = 0.1
    selection: str = "best"
    val_frac: float = 0.2
    augment: str = "flips"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: at least 1")
        if self.min_steps < 0:
            raise UsageError(f"--min-steps {self.min_steps}: 0 or more")
        for name in ("lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be > 0")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay {self.weight_decay}: 0 or more")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"--warmup {self.warmup}: a fraction of the steps in [0, 1)")
        if not 0 < self.val_frac <= 0.5:
            raise UsageError(f"--val-frac {self.val_frac}: a fraction in (0, 0.5]")
        for name, valid in (("selection", SELECTIONS), ("augment", AUGMENTS)):
            value = getattr(self, name)
            if value not in valid:
                raise UsageError(
                    f"--{name} {value!r}{did_you_mean(value, valid)}: one of {', '.join(valid)}"
                )


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a fine-tune's results (recorded beside them; a rerun must match).

    Attributes
    ----------
    model : str
        ``--model`` as given (a preset name or a ``timm:``/``open_clip:``/``hf:`` spec).
    weights_sha256 : str or None
        The digest of ``--weights``.
    random_init : bool
    model_kwargs : str
        ``--model-kwargs`` as canonical JSON.
    method : {"lora", "full", "linear"}
    rank, alpha : int
        LoRA's rank and scale numerator (the update is ``alpha / rank · B A``).
    targets : tuple of str
        The adapted module (or parameter) names, resolved against the model (empty unless
        ``method == "lora"``).
    feature : str
        The results' ``feature``: ``<name>/block<L>/<pool>``, the store key of the token the
        head reads (the last block's class token, or its token mean for models without one).
    tasks, labels, n, seeds, split_col, test_frac, group_col, split_seed, test_where, sampler
        The plan, with the meaning they have for ``fmprobe sweep``.
    train : TrainSettings
    amp : bool
        bf16 autocast on CUDA.
    data_fingerprint : str
        The dataset's fingerprint (``Dataset.fingerprint()``; a store embedded from it records
        the same).
    """

    model: str
    weights_sha256: str | None
    random_init: bool
    model_kwargs: str
    method: str
    rank: int
    alpha: int
    targets: tuple[str, ...]
    feature: str
    tasks: tuple[str, ...]
    labels: str | None
    n: tuple[int | str, ...]
    seeds: int
    split_col: str | None
    test_frac: float
    group_col: str | None
    split_seed: int
    test_where: str | None
    sampler: str
    train: TrainSettings
    amp: bool
    data_fingerprint: str

    @property
    def probe(self) -> str:
        """The results' ``probe``: ``lora-r<rank>``, ``full`` or ``linear-ft``."""
        return {"lora": f"lora-r{self.rank}", "full": "full", "linear": "linear-ft"}[self.method]

    def digest(self) -> str:
        """A short hash of the configuration (results of another configuration never mix)."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """The inverse of ``to_dict`` (as recorded in JSON: lists back to tuples)."""
        tuples = {k: tuple(d[k]) for k in ("targets", "tasks", "n")}
        return cls(**{**d, **tuples, "train": TrainSettings(**d["train"])})


def method_settings(method: str, **given: Any) -> TrainSettings:
    """``TrainSettings`` from the options given; ``lr``, ``head_lr`` and ``min_steps`` left at
    None take the method's defaults (``METHOD_DEFAULTS``).

    >>> method_settings("full", lr=None, head_lr=None, min_steps=None).lr
    0.0001
    """
    defaults = METHOD_DEFAULTS[method]
    for key in ("lr", "head_lr", "min_steps"):
        if given.get(key) is None:
            given[key] = type(getattr(TrainSettings, key))(defaults[key])
    return TrainSettings(**given)


def check_method(method: str, *, rank: int, alpha: int) -> str:
    """``--method`` (and, for LoRA, ``--rank`` and ``--alpha``)."""
    if method not in METHODS:
        raise UsageError(
            f"--method {method!r}{did_you_mean(method, METHODS)}: one of {', '.join(METHODS)}"
        )
    if method == "lora":
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UsageError(f"--rank {rank}: LoRA's rank must be a positive integer, e.g. 8")
        if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1:
            raise UsageError(
                f"--alpha {alpha}: a positive integer (the update is alpha/rank · BA), e.g. 16"
            )
    return method
