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
    hub_error,
    load_weights,
)
from fmprobe.encoders.pooling import published_embedding
from fmprobe.encoders.spec import ModelSpec
from fmprobe.encoders.timm_backend import renormalise
from fmprobe.encoders.zoo import Preset, get_preset, preset_for_hub
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


# Arguments of from_pretrained that concern the download, not the model class.
HUB_ONLY_KWARGS = ("trust_remote_code", "revision", "token", "cache_dir", "subfolder")


def build_hf_preset(
    spec: ModelSpec, preset: Preset, *, pretrained: bool, model_kwargs: dict[str, Any]
) -> Any:
    """A transformers preset: the published model from the hub, or its architecture from the
    registry's config (no download) for ``--random-init`` / ``--weights``."""
    from transformers import AutoConfig, AutoModel

    if pretrained:
        go_offline_if_unreachable()
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                return AutoModel.from_pretrained(
                    preset.source, attn_implementation="eager", **{**preset.kwargs, **model_kwargs}
                )
        except Exception as exc:
            raise hub_error(
                spec, exc, repo=preset.source, offline="pass --weights PATH or --random-init"
            ) from None
    config = AutoConfig.for_model(preset.arch, **{**preset.arch_kwargs, **model_kwargs})
    init = {k: v for k, v in preset.kwargs.items() if k not in HUB_ONLY_KWARGS}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return AutoModel.from_config(config, attn_implementation="eager", **init)


def load_hf_model(spec: ModelSpec, *, pretrained: bool, model_kwargs: dict[str, Any]) -> Any:
    """``hf:<repo or local dir>``: config, image processor and model (weights when asked)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    name = spec.name
    local = Path(name).is_dir()
    if name.startswith((".", "/")) and not local:
        raise ModelError(f"--model {spec.text}: no such directory {name!r}")
    if not local:
        go_offline_if_unreachable()
    try:
        config = AutoConfig.from_pretrained(name, **model_kwargs)
        processor = AutoImageProcessor.from_pretrained(name)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            if pretrained:
                model = AutoModel.from_pretrained(name, attn_implementation="eager")
            else:
                model = AutoModel.from_config(config, attn_implementation="eager")
    except (OSError, ValueError) as exc:
        if local:
            raise ModelError(
                f"--model {spec.text}: cannot load the local model directory "
                f"({str(exc).splitlines()[0][:200]}); it needs config.json and "
                "preprocessor_config.json (save_pretrained of the model and of its image "
                "processor)"
            ) from None
        match = preset_for_hub(name)
        advice = (
            f"use the preset `--model {match.name}`, whose architecture builds offline "
            "(with --weights PATH or --random-init)"
            if match is not None
            else "pass --weights PATH or --random-init with a local model directory (hf:DIR)"
        )
        raise hub_error(spec, exc, repo=name, offline=advice) from None
    return model, processor


class HFEncoder(Encoder):
    """``hf:<org>/<repo>``, ``hf:<local directory>`` (transformers ``AutoModel``), or a
    transformers preset."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        weights: str | None = None,
        random_init: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        preset = get_preset(spec.preset) if spec.preset else None
        pretrained = weights is None and not random_init
        kwargs = dict(model_kwargs or {})
        if preset is not None:
            model = build_hf_preset(spec, preset, pretrained=pretrained, model_kwargs=kwargs)
            pp = preset.preprocess
            if "image_size" in kwargs:
                pp = pp.at_size(int(kwargs["image_size"]))
            self.transform: Any = pp.transform()
            self.preprocess = {"from": f"preset {preset.name}", **pp.to_dict()}
        else:
            model, processor = load_hf_model(spec, pretrained=pretrained, model_kwargs=kwargs)
            self.transform = ImageProcessorTransform(processor)
            self.preprocess = {"library": "transformers", **_jsonable(processor.to_dict())}
        if weights is not None:
            prefix = getattr(model, "base_model_prefix", "")
            self.weights = load_weights(
                model, weights, strip_prefixes=(f"{prefix}.",) if prefix else ()
            )
        elif random_init:
            self.weights = WeightsInfo("random-init", "torch.manual_seed(0)")
        elif preset is not None:
            self.weights = WeightsInfo("pretrained", preset.source)
        else:
            local = Path(spec.name).is_dir()
            self.weights = WeightsInfo(
                "pretrained", str(Path(spec.name).resolve()) if local else spec.name
            )
        vision = getattr(model, "vision_model", model).eval().requires_grad_(False)
        self.spec = spec
        self.preset = preset
        self.model = vision
        cfg = vision.config
        self.patch_size = getattr(cfg, "patch_size", None)
        if preset is not None:
            self.num_layers = int(cfg.num_hidden_layers)
            self.tokens_model = True
            self.num_prefix = preset.num_prefix_tokens
        else:
            self._probe()
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

    def _probe(self) -> None:
        """Layers and prefix tokens of a model fmprobe has no recipe for, from one forward."""
        device = next(self.model.parameters()).device
        probe = self.transform(Image.new("RGB", (64, 64)))[None].to(device)
        with torch.no_grad():
            out = self.model(pixel_values=probe, output_hidden_states=True)
        hidden = out.hidden_states
        self.num_layers = len(hidden) - 1
        self.tokens_model = hidden[-1].dim() == 3
        self.num_prefix = self._prefix(hidden[-1], probe.shape[-2:]) if self.tokens_model else 0

    def _prefix(self, tokens: torch.Tensor, hw: Sequence[int]) -> int:
        if not self.patch_size:
            return 0
        ps = self.patch_size
        ps_h, ps_w = (ps, ps) if isinstance(ps, int) else ps
        return int(tokens.shape[1] - (hw[0] // ps_h) * (hw[1] // ps_w))

    def forward(
        self, x: torch.Tensor, layers: Sequence[int], *, attn: bool, embedding: bool = False
    ) -> EncoderOutput:
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
        recipe = self.embedding_recipe if embedding else None
        vector = None
        if recipe is not None:
            vector = published_embedding(
                recipe.kind,
                final=out.last_hidden_state,
                num_prefix=self.num_prefix,
                head=lambda _: out.pooler_output,
            )
        return EncoderOutput(patch=patch, cls=cls, attn=weights, embedding=vector)
