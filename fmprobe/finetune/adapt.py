"""The trained model: an encoder's readout token and a linear head (``Classifier``), LoRA
adapters injected with ``peft`` on the attention projections, and the checks around them (which
modules to adapt, that gradients reach them, that the base weights stay as they were)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fmprobe.encoders import Encoder
from fmprobe.errors import FmprobeError, UsageError, did_you_mean
from fmprobe.options import split_list

# Linear layers that project tokens to queries, keys and values: timm (qkv), transformers
# ViT / DINOv2 (query, key, value), CLIP / SigLIP (q_proj, k_proj, v_proj)
ATTENTION_LINEARS = ("qkv", "query", "key", "value", "q_proj", "k_proj", "v_proj")
# nn.MultiheadAttention (open_clip's ViT blocks) has no Linear for its input projection: its
# parameter is adapted instead (peft's target_parameters, applied without touching it)
MHA_PARAMETER = "in_proj_weight"
ADAPTER_PREFIX = "lora_"


@dataclass(frozen=True)
class Readout:
    """The token the head reads: the store feature ``<model>/block<layer>/<pool>``.

    Attributes
    ----------
    layer : int
        The last block (absolute index, as the store counts blocks).
    pool : {"cls", "mean"}
        The class token, or the mean of the patch tokens for models without one.
    width : int
        The token's width D.
    """

    layer: int
    pool: str
    width: int

    def feature(self, name: str) -> str:
        return f"{name}/block{self.layer}/{self.pool}"


class Head(nn.Module):
    """A linear layer on standardised tokens: ``W (x − μ)/σ + b``, with μ and σ (population
    sd, floored at 1e-12) of the problem's own training rows under the initial model, fixed
    during training (buffers), as ``fmprobe sweep --standardize`` z-scores a probe's features.

    Parameters
    ----------
    width, n_out : int
        D, and 1 for a binary task (one logit) or the number of classes.
    generator : torch.Generator
        Draws the initial weights (normal, sd 0.01; bias 0).
    """

    mu: torch.Tensor
    sd: torch.Tensor

    def __init__(self, width: int, n_out: int, *, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(width))
        self.register_buffer("sd", torch.ones(width))
        self.linear = nn.Linear(width, n_out)
        with torch.no_grad():
            nn.init.normal_(self.linear.weight, std=0.01, generator=generator)
            self.linear.bias.zero_()

    def set_scale(self, X: torch.Tensor) -> None:
        """μ and σ from the (n, D) training tokens ``X``."""
        X = X.double()
        mu = X.mean(0)
        sd = (X - mu).pow(2).mean(0).sqrt().clamp_min(1e-12)
        with torch.no_grad():
            self.mu.copy_(mu)
            self.sd.copy_(sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.float() - self.mu) / self.sd)


class Classifier(nn.Module):
    """An encoder's readout token followed by a ``Head``, as one module.

    Parameters
    ----------
    encoder : Encoder
        Its ``model`` becomes the ``backbone`` submodule; ``encoder.forward`` computes tokens.
    readout : Readout
    n_out : int
        1 for a binary task, else the number of classes.
    generator : torch.Generator
        Draws the head's initial weights.
    """

    def __init__(
        self, encoder: Encoder, *, readout: Readout, n_out: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = encoder.model
        self.readout = readout
        self.head = Head(readout.width, n_out, generator=generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images → (B, D) readout tokens."""
        out = self.encoder.forward(x, [self.readout.layer], attn=False)
        cls = out.cls[0]
        if self.readout.pool == "cls" and cls is not None:
            return cls
        return out.patch[0].mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Features(nn.Module):
    """``classifier.features`` as a module (the readout tokens, without the head)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x).float()


def find_readout(encoder: Encoder, device: torch.device) -> Readout:
    """The last block's class token (its token mean without one) and its width, from one
    forward pass of a blank image."""
    from PIL import Image

    layer = encoder.num_layers - 1
    pool = "cls" if encoder.cls_source == "class_token" else "mean"
    x = encoder.transform(Image.new("RGB", (64, 64)))[None].to(device)
    with torch.no_grad():
        out = encoder.forward(x, [layer], attn=False)
    return Readout(layer=layer, pool=pool, width=int(out.patch[0].shape[-1]))


def _linear_names(model: nn.Module) -> set[str]:
    return {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n
    }


def _has_mha(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def resolve_targets(
    model: nn.Module, targets: str | Sequence[str] | None, *, what: str
) -> tuple[str, ...]:
    """``--targets``: the names of the modules (or ``in_proj_weight``) LoRA adapts.

    Default: the attention projections the model has (``qkv``; ``query, key, value``;
    ``q_proj, k_proj, v_proj``), else the input projection of its ``nn.MultiheadAttention``
    blocks. Given names must be ``nn.Linear`` leaf names of the model (any, not only attention)
    or ``in_proj_weight``.
    """
    linears = _linear_names(model)
    available = sorted(linears | ({MHA_PARAMETER} if _has_mha(model) else set()))
    wanted = split_list(targets)
    if not wanted:
        found = tuple(n for n in ATTENTION_LINEARS if n in linears)
        if not found and _has_mha(model):
            found = (MHA_PARAMETER,)
        if not found:
            raise UsageError(
                f"--method lora: {what} has no attention projections to adapt (no Linear named "
                "qkv, query/key/value or q_proj/k_proj/v_proj, no nn.MultiheadAttention; a CNN?); "
                "use --method full or --method linear, or name its Linear layers with --targets"
            )
        return found
    for name in wanted:
        if name not in available:
            raise UsageError(
                f"--targets {name!r} is not a Linear layer (or in_proj_weight) of {what}"
                f"{did_you_mean(name, available)}; its attention projections: "
                f"{', '.join(n for n in available if n in (*ATTENTION_LINEARS, MHA_PARAMETER))}"
                " (or none)"
            )
    return tuple(dict.fromkeys(wanted))


def add_lora(model: nn.Module, *, rank: int, alpha: int, targets: Sequence[str], seed: int) -> int:
    """Inject LoRA adapters (``peft``) into ``model`` in place on ``targets``: the update of a
    weight W is ``alpha/rank · B A`` with A (rank, in) drawn by peft's default (Kaiming uniform,
    from ``torch.manual_seed(seed)``) and B = 0. Only the adapter factors train. Returns the
    number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    modules = [t for t in targets if t != MHA_PARAMETER]
    params = [t for t in targets if t == MHA_PARAMETER]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        target_modules=modules, target_parameters=params or None)  # fmt: skip
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(ADAPTER_PREFIX in name)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The LoRA factors of ``model`` (name, parameter)."""
    return [(n, p) for n, p in model.named_parameters() if ADAPTER_PREFIX in n]


def base_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``model`` that is not a LoRA factor (names,
    shapes, dtypes and bytes): equal before and after training means bit-equal base weights."""
    h = hashlib.sha256()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        if ADAPTER_PREFIX in name:
            continue
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_gradients(model: Classifier, *, method: str, what: str) -> None:
    """One forward and backward pass of a blank image: the head must get a gradient, and for
    LoRA some adapter must (adapters off the path to the readout, e.g. a CNN's attention pool,
    never train)."""
    from PIL import Image

    device = model.head.linear.weight.device
    x = model.encoder.transform(Image.new("RGB", (64, 64)))[None].to(device)
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    if method == "lora" and all(p.grad is None for _, p in adapter_parameters(model)):
        raise UsageError(
            f"--method lora: no adapter of {what} is on the path to the readout token (the last "
            "block); name the projections it uses with --targets, or use --method full"
        )
    model.zero_grad(set_to_none=True)


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA adapter merged into its base weight (W + alpha/rank
    · BA): the same function without the adapter branch, as one would export it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = copy.deepcopy(model)
    for module in out.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return out


def check_base_unchanged(before: str, model: nn.Module) -> None:
    """A run-time invariant of LoRA training: the base weights are bit-equal to ``before``."""
    if base_fingerprint(model) != before:
        raise FmprobeError(
            "the base weights changed while training LoRA adapters; this is a bug in fmprobe "
            "(please report it with the model and peft versions)"
        )


def trainable_groups(model: Classifier, *, method: str, lr: float, head_lr: float) -> list[Any]:
    """AdamW's parameter groups: the head at ``head_lr``, the adapted parameters (LoRA factors,
    or the whole backbone for ``full``) at ``lr``."""
    if method == "full":
        model.backbone.requires_grad_(True)
    body = [p for n, p in model.backbone.named_parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": head_lr, "base_lr": head_lr}]
    if body:
        groups.append({"params": body, "lr": lr, "base_lr": lr})
    return groups
