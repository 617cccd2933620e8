"""open_clip image towers: ViT (``forward_intermediates``), ModifiedResNet (its attention pool)
and timm-based towers (delegated to the timm trunk)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fmprobe.encoders.base import (
    Encoder,
    EncoderOutput,
    WeightsInfo,
    go_offline_if_unreachable,
    hub_error,
    load_weights,
    offline_error,
)
from fmprobe.encoders.spec import ModelSpec
from fmprobe.encoders.timm_backend import TimmTrunk, count_blocks, renormalise
from fmprobe.encoders.zoo import (
    EmbeddingRecipe,
    Preset,
    get_preset,
    jsonable_kwargs,
    preset_for_hub,
)
from fmprobe.errors import ModelError, did_you_mean


def attnpool2d_weights(pool: Any, fmap: torch.Tensor) -> torch.Tensor:
    """Weights (B, HW) of CLIP's ``AttentionPool2d``: its mean-token query over the positions."""
    x = fmap.flatten(2).permute(2, 0, 1)  # (HW, B, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x = x + pool.positional_embedding[:, None, :].to(x.dtype)
    _, w = F.multi_head_attention_forward(
        query=x[:1],
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=True,
        average_attn_weights=True,
    )
    assert w is not None
    return w[:, 0, 1:]


def resblock_cls_attention(block: Any, seq: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Class-token attention (B, N) of an open_clip ``ResidualAttentionBlock`` over ``seq``."""
    h = block.ln_1(seq if batch_first else seq.transpose(0, 1))
    _, w = block.attn(h, h, h, need_weights=True, average_attn_weights=True)
    return w[:, 0]


class _OpenClipViT:
    def __init__(self, visual: Any, input_size: Sequence[int]) -> None:
        self.visual = visual
        self.num_layers = count_blocks(visual, input_size)
        self.attn_source = "last_block_cls_attention" if self.num_layers >= 2 else None
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))

    def forward(
        self,
        x: torch.Tensor,
        layers: Sequence[int],
        *,
        attn: bool,
        embedding: EmbeddingRecipe | None = None,
    ) -> EncoderOutput:
        wanted = set(layers) | ({self.num_layers - 2} if attn and self.attn_source else set())
        indices = sorted(wanted)
        out = self.visual.forward_intermediates(
            x,
            indices=indices,
            stop_early=embedding is None,
            intermediates_only=embedding is None,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        by_layer = dict(zip(indices, out["image_intermediates"], strict=True))
        prefix = dict(zip(indices, out["image_intermediates_prefix"], strict=True))
        weights = None
        if attn and self.attn_source:
            i = self.num_layers - 2
            seq = torch.cat([prefix[i], by_layer[i]], dim=1)
            block = self.visual.transformer.resblocks[-1]
            w = resblock_cls_attention(block, seq, self.batch_first)
            weights = renormalise(w[:, prefix[i].shape[1] :].float())
        return EncoderOutput(
            patch=[by_layer[i] for i in layers],
            cls=[prefix[i][:, 0] for i in layers],
            attn=weights,
            embedding=out["image_features"] if embedding is not None else None,
        )


class _OpenClipResNet:
    def __init__(self, visual: Any, input_size: Sequence[int]) -> None:
        self.visual = visual
        self.num_layers = count_blocks(visual, input_size)
        self.attn_source = "attnpool2d"

    def forward(
        self,
        x: torch.Tensor,
        layers: Sequence[int],
        *,
        attn: bool,
        embedding: EmbeddingRecipe | None = None,
    ) -> EncoderOutput:
        last = self.num_layers - 1
        indices = sorted(set(layers) | ({last} if attn else set()))
        out = self.visual.forward_intermediates(x, indices=indices, intermediates_only=True)
        by_layer = dict(zip(indices, out["image_intermediates"], strict=True))
        weights = None
        if attn:
            weights = renormalise(attnpool2d_weights(self.visual.attnpool, by_layer[last]).float())
        return EncoderOutput(
            patch=[by_layer[i].flatten(2).transpose(1, 2) for i in layers],
            cls=[None for _ in layers],
            attn=weights,
        )


def build_open_clip_model(
    spec: ModelSpec,
    *,
    pretrained: bool,
    model_kwargs: dict[str, Any],
    preset: Preset | None = None,
) -> tuple[Any, Any]:
    """The open_clip model of ``spec`` and its preprocess (None for a preset, whose
    preprocessing is its card's); a preset builds ``preset.arch`` offline."""
    import open_clip

    if preset is not None and not pretrained:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            if preset.arch == "CLIP":
                return open_clip.CLIP(**{**preset.arch_kwargs, **model_kwargs}), None
            # open_clip moves the model to `device`: the default one, so a build under
            # `with torch.device("meta")` stays there.
            device = torch.get_default_device()
            kwargs = {**preset.arch_kwargs, **model_kwargs}
            return open_clip.create_model(
                preset.arch, pretrained=None, device=device, **kwargs
            ), None
    name = preset.source if preset is not None else spec.name
    hub = name.startswith("hf-hub:")
    tag = (preset.pretrained_tag if preset is not None else spec.pretrained) if pretrained else None
    if not hub and name not in open_clip.list_models():
        raise ModelError(
            f"--model {spec.text}: open_clip has no architecture {name!r}"
            f"{did_you_mean(name, open_clip.list_models())}; list them with "
            "`fmprobe models 'open_clip:*'`"
        )
    if hub and not pretrained:
        match = preset_for_hub(name)
        advice = (
            f"use the preset `--model {match.name}`, whose architecture builds offline"
            if match is not None
            else "use a preset (`fmprobe models --zoo`) or open_clip:<arch> with --weights PATH"
        )
        raise ModelError(
            f"--model {spec.text}: an open_clip hf-hub model's architecture is its hub config, "
            f"which --random-init and --weights cannot download; {advice}"
        )
    if tag and not os.path.isfile(tag):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            raise ModelError(
                f"--model {spec.text}: no pretrained tag {tag!r} for {name}"
                f"{did_you_mean(tag, tags)}; known tags: {', '.join(tags) or 'none'}"
            )
    if tag or hub:
        go_offline_if_unreachable()
    kwargs = {**(preset.kwargs if preset is not None else {}), **model_kwargs}
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            if preset is not None:
                return open_clip.create_model(name, pretrained=tag, **kwargs), None
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=tag, **kwargs
            )
            return model, preprocess
    except TypeError as exc:
        raise ModelError(f"--model {spec.text}: bad model argument ({exc})") from None
    except Exception as exc:
        if tag is None and not hub:
            raise
        if hub:
            raise hub_error(
                spec, exc, repo=name, offline="pass --weights PATH or --random-init"
            ) from None
        raise offline_error(spec, exc) from None


class OpenClipEncoder(Encoder):
    """``open_clip:<arch>[/<pretrained tag>]``, ``open_clip:hf-hub:<org>/<repo>``, or an
    open_clip preset (its published embedding: the projected image embedding)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        weights: str | None = None,
        random_init: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        preset = get_preset(spec.preset) if spec.preset else None
        wanted = weights is None and not random_init
        if preset is None and not spec.pretrained and not spec.name.startswith("hf-hub:"):
            wanted = False  # an architecture without a pretrained tag is built at random init
        model, preprocess = build_open_clip_model(
            spec, pretrained=wanted, model_kwargs=dict(model_kwargs or {}), preset=preset
        )
        if weights is not None:
            self.weights = load_weights(model, weights, required_prefix="visual.")
        elif not wanted:
            self.weights = WeightsInfo("random-init", "torch.manual_seed(0)")
        elif preset is not None:
            self.weights = WeightsInfo("pretrained", preset.source_text)
        else:
            self.weights = WeightsInfo("pretrained", spec.pretrained or spec.name)
        visual = model.visual.eval().requires_grad_(False)
        self.spec = spec
        self.preset = preset
        self.model = visual
        if preset is not None:
            self.transform = preset.preprocess.transform()
            self.preprocess = {"from": f"preset {preset.name}", **preset.preprocess.to_dict()}
        else:
            self.transform = preprocess
            cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
            self.preprocess = {
                "library": "open_clip",
                **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            }
        size = tuple(self.transform(_blank()).shape)
        trunk = getattr(visual, "trunk", None)
        self.impl: TimmTrunk | _OpenClipViT | _OpenClipResNet
        if trunk is not None and hasattr(trunk, "forward_intermediates"):
            self.impl = TimmTrunk(trunk, size, head=lambda f: visual.head(trunk.forward_head(f)))
            has_cls = self.impl.has_cls
        elif hasattr(visual, "attnpool"):
            self.impl = _OpenClipResNet(visual, size)
            has_cls = False
        elif hasattr(visual, "transformer"):
            self.impl = _OpenClipViT(visual, size)
            has_cls = True
        else:
            raise ModelError(
                f"--model {spec.text}: this open_clip image tower ({type(visual).__name__}) has "
                "no forward_intermediates(); choose another architecture"
            )
        self.num_layers = self.impl.num_layers
        self.cls_source = "class_token" if has_cls else "global_average"
        self.attn_source = self.impl.attn_source
        self.extra = {"model_kwargs": jsonable_kwargs(model_kwargs or {}),
                      "tower": type(visual).__name__}  # fmt: skip

    def forward(
        self, x: torch.Tensor, layers: Sequence[int], *, attn: bool, embedding: bool = False
    ) -> EncoderOutput:
        recipe = self.embedding_recipe if embedding else None
        return self.impl.forward(x, layers, attn=attn, embedding=recipe)


def _blank() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 64))
