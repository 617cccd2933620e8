"""CONCH (MahmoodLab), through its own package: a CoCa image tower whose timm ViT trunk gives
the layers and whose attention pooler gives the published embedding.

The ``conch`` package is not on PyPI; without it the preset fails with one line saying what
to install.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch

from fmprobe.encoders.base import (
    Encoder,
    EncoderOutput,
    WeightsInfo,
    go_offline_if_unreachable,
    hub_error,
    load_weights,
)
from fmprobe.encoders.spec import ModelSpec
from fmprobe.encoders.timm_backend import TimmTrunk
from fmprobe.encoders.zoo import get_preset
from fmprobe.errors import ModelError


def require_conch(spec: ModelSpec, requirement: str) -> Any:
    """The ``conch.open_clip_custom`` module, or a one-line error naming what to install."""
    try:
        from conch import open_clip_custom
    except ImportError:
        raise ModelError(
            f"--model {spec.text} needs the `conch` package, which is not on PyPI: "
            f"pip install {requirement}"
        ) from None
    return open_clip_custom


class ConchEncoder(Encoder):
    """The ``conch`` preset (``conch_ViT-B-16`` with weights from ``hf_hub:MahmoodLab/conch``)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        weights: str | None = None,
        random_init: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        preset = get_preset(spec.preset or "conch")
        conch = require_conch(spec, preset.requires or "conch")
        if weights is None and not random_init:
            go_offline_if_unreachable()
            try:
                model = conch.create_model_from_pretrained(
                    preset.arch, checkpoint_path=preset.source, return_transform=False
                )
            except Exception as exc:
                raise hub_error(
                    spec, exc, repo=preset.source,
                    offline="pass --weights PATH (its pytorch_model.bin) or --random-init",
                ) from None  # fmt: skip
            self.weights = WeightsInfo("pretrained", preset.source)
        else:
            # conch's own loader unpickles the checkpoint; the architecture is built from the
            # package's config and the checkpoint read by fmprobe (weights_only=True).
            config_file = resources.files(conch).joinpath(f"model_configs/{preset.arch}.json")
            cfg = json.loads(config_file.read_text())
            cfg.pop("custom_text", None)
            coca = importlib.import_module("conch.open_clip_custom.coca_model")
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model = coca.CoCa(**cfg)
            if weights is not None:
                self.weights = load_weights(model, weights, required_prefix="visual.")
            else:
                self.weights = WeightsInfo("random-init", "torch.manual_seed(0)")
        visual = model.visual.eval().requires_grad_(False)
        self.spec = spec
        self.preset = preset
        self.model = visual
        self.transform = preset.preprocess.transform()
        self.preprocess = {"from": f"preset {preset.name}", **preset.preprocess.to_dict()}
        size = preset.preprocess.size
        self.trunk = TimmTrunk(visual.trunk, (3, size, size), head=self._pooled)
        self.num_layers = self.trunk.num_layers
        self.cls_source = "class_token"
        self.attn_source = self.trunk.attn_source
        self.extra = {"model_kwargs": dict(model_kwargs or {}), "tower": type(visual).__name__}

    def _pooled(self, final: torch.Tensor) -> torch.Tensor:
        # VisualModel.forward_no_head: the trunk's head, the contrastive attention pooler, its norm.
        tokens = self.model.trunk.forward_head(final)
        return self.model.ln_contrast(self.model.attn_pool_contrast(tokens)[:, 0])

    def forward(
        self, x: torch.Tensor, layers: Sequence[int], *, attn: bool, embedding: bool = False
    ) -> EncoderOutput:
        recipe = self.embedding_recipe if embedding else None
        return self.trunk.forward(x, layers, attn=attn, embedding=recipe)
