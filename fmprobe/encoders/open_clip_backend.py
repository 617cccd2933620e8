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
    load_weights,
    offline_error,
)
from fmprobe.encoders.spec import ModelSpec
from fmprobe.encoders.timm_backend import TimmTrunk, count_blocks, renormalise
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

    def forward(self, x: torch.Tensor, layers: Sequence[int], *, attn: bool) -> EncoderOutput:
        wanted = set(layers) | ({self.num_layers - 2} if attn and self.attn_source else set())
        indices = sorted(wanted)
        out = self.visual.forward_intermediates(
            x,
            indices=indices,
            stop_early=True,
            intermediates_only=True,
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
            patch=[by_layer[i] for i in layers], cls=[prefix[i][:, 0] for i in layers], attn=weights
        )


class _OpenClipResNet:
    def __init__(self, visual: Any, input_size: Sequence[int]) -> None:
        self.visual = visual
        self.num_layers = count_blocks(visual, input_size)
        self.attn_source = "attnpool2d"

    def forward(self, x: torch.Tensor, layers: Sequence[int], *, attn: bool) -> EncoderOutput:
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


class OpenClipEncoder(Encoder):
    """``open_clip:<arch>[/<pretrained tag>]`` or ``open_clip:hf-hub:<org>/<repo>``."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        weights: str | None = None,
        random_init: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import open_clip

        hub = spec.name.startswith("hf-hub:")
        if not hub and spec.name not in open_clip.list_models():
            raise ModelError(
                f"--model {spec.text}: open_clip has no architecture {spec.name!r}"
                f"{did_you_mean(spec.name, open_clip.list_models())}"
            )
        pretrained = None if (random_init or weights) else spec.pretrained
        if hub and (random_init or weights):
            raise offline_error(spec, RuntimeError("hf-hub models need their config"))
        if pretrained and not os.path.isfile(pretrained):
            tags = open_clip.list_pretrained_tags_by_model(spec.name)
            if pretrained not in tags:
                raise ModelError(
                    f"--model {spec.text}: no pretrained tag {pretrained!r} for {spec.name}"
                    f"{did_you_mean(pretrained, tags)}; known tags: {', '.join(tags) or 'none'}"
                )
        if pretrained or hub:
            go_offline_if_unreachable()
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.name, pretrained=pretrained, **(model_kwargs or {})
                )
        except TypeError as exc:
            raise ModelError(f"--model {spec.text}: bad model argument ({exc})") from None
        except Exception as exc:
            if pretrained is None and not hub:
                raise
            raise offline_error(spec, exc) from None
        if weights is not None:
            self.weights = load_weights(model, weights, required_prefix="visual.")
        elif pretrained is None and not hub:
            self.weights = WeightsInfo("random-init", "torch.manual_seed(0)")
        else:
            self.weights = WeightsInfo("pretrained", spec.pretrained or spec.name)
        visual = model.visual.eval().requires_grad_(False)
        self.spec = spec
        self.model = visual
        self.transform = preprocess
        cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
        self.preprocess = {
            "library": "open_clip",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        }
        size = tuple(preprocess(_blank()).shape)
        trunk = getattr(visual, "trunk", None)
        self.impl: TimmTrunk | _OpenClipViT | _OpenClipResNet
        if trunk is not None and hasattr(trunk, "forward_intermediates"):
            self.impl = TimmTrunk(trunk, size)
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
        self.extra = {"model_kwargs": dict(model_kwargs or {}), "tower": type(visual).__name__}

    def forward(self, x: torch.Tensor, layers: Sequence[int], *, attn: bool) -> EncoderOutput:
        return self.impl.forward(x, layers, attn=attn)


def _blank() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 64))
