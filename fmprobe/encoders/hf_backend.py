"""Hugging Face transformers vision models: layers from ``hidden_states``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from fmprobe.encoders.base import (
    Encoder,
    EncoderOutput,
    WeightsInfo,
    go_offline_if_unreachable,
    load_weights,
    offline_error,
)
from fmprobe.encoders.spec import ModelSpec
from fmprobe.encoders.timm_backend import renormalise
from fmprobe.errors import ModelError


class ImageProcessorTransform:
    """A picklable PIL → (3, H, W) tensor wrapper around a transformers image processor."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        out = self.processor(images=image, return_tensors="pt")
        return out["pixel_values"][0]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    ok = (str, int, float, bool, list, tuple, dict, type(None))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if isinstance(v, ok)}


class HFEncoder(Encoder):
    """``hf:<org>/<repo>`` or ``hf:<local directory>`` (transformers ``AutoModel``)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        weights: str | None = None,
        random_init: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        name = spec.name
        local = Path(name).is_dir()
        if name.startswith((".", "/")) and not local:
            raise ModelError(f"--model {spec.text}: no such directory {name!r}")
        if not local:
            go_offline_if_unreachable()
        try:
            config = AutoConfig.from_pretrained(name, **(model_kwargs or {}))
            processor = AutoImageProcessor.from_pretrained(name)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                if random_init or weights is not None:
                    model = AutoModel.from_config(config, attn_implementation="eager")
                else:
                    model = AutoModel.from_pretrained(name, attn_implementation="eager")
        except (OSError, ValueError) as exc:
            if local:
                raise ModelError(
                    f"--model {spec.text}: cannot load the local model directory "
                    f"({str(exc).splitlines()[0][:200]}); it needs config.json and "
                    "preprocessor_config.json (save_pretrained of the model and of its image "
                    "processor)"
                ) from None
            raise offline_error(spec, exc) from None
        if weights is not None:
            self.weights = load_weights(model, weights)
        elif random_init:
            self.weights = WeightsInfo("random-init", "torch.manual_seed(0)")
        else:
            self.weights = WeightsInfo("pretrained", str(Path(name).resolve()) if local else name)
        vision = getattr(model, "vision_model", model).eval().requires_grad_(False)
        self.spec = spec
        self.model = vision
        self.transform = ImageProcessorTransform(processor)
        self.preprocess = {"library": "transformers", **_jsonable(processor.to_dict())}
        cfg = getattr(vision, "config", config)
        self.patch_size = getattr(cfg, "patch_size", None)
        probe = self.transform(Image.new("RGB", (64, 64)))[None]
        with torch.no_grad():
            out = vision(pixel_values=probe, output_hidden_states=True)
        hidden = out.hidden_states
        self.num_layers = len(hidden) - 1
        self.tokens_model = hidden[-1].dim() == 3
        self.num_prefix = self._prefix(hidden[-1], probe.shape[-2:]) if self.tokens_model else 0
        head = getattr(vision, "head", None)
        if isinstance(getattr(head, "attention", None), nn.MultiheadAttention):
            self.attn_source: str | None = "map_head"
        elif self.tokens_model and self.num_prefix >= 1:
            self.attn_source = "last_block_cls_attention"
        else:
            self.attn_source = None
        self.cls_source = "class_token" if self.num_prefix >= 1 else "global_average"
        self.extra = {
            "model_type": getattr(cfg, "model_type", None),
            "num_prefix_tokens": self.num_prefix,
        }

    def _prefix(self, tokens: torch.Tensor, hw: Sequence[int]) -> int:
        if not self.patch_size:
            return 0
        ps = self.patch_size
        ps_h, ps_w = (ps, ps) if isinstance(ps, int) else ps
        return int(tokens.shape[1] - (hw[0] // ps_h) * (hw[1] // ps_w))

    def forward(self, x: torch.Tensor, layers: Sequence[int], *, attn: bool) -> EncoderOutput:
        source = self.attn_source if attn else None
        out = self.model(
            pixel_values=x,
            output_hidden_states=True,
            output_attentions=source == "last_block_cls_attention",
        )
        hidden = out.hidden_states
        patch: list[torch.Tensor] = []
        cls: list[torch.Tensor | None] = []
        for i in layers:
            h = hidden[i + 1]
            if h.dim() == 4:
                patch.append(h.flatten(2).transpose(1, 2))
                cls.append(None)
            else:
                patch.append(h[:, self.num_prefix :])
                cls.append(h[:, 0] if self.num_prefix >= 1 else None)
        weights = None
        if source == "map_head":
            head = self.model.head
            last = out.last_hidden_state
            probe = head.probe.expand(last.shape[0], -1, -1)
            _, w = head.attention(probe, last, last, need_weights=True, average_attn_weights=True)
            weights = w[:, 0]
        elif source == "last_block_cls_attention":
            weights = out.attentions[-1][:, :, 0].mean(dim=1)
        if weights is not None:
            weights = renormalise(weights[:, self.num_prefix :].float())
        return EncoderOutput(patch=patch, cls=cls, attn=weights)
