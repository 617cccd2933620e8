"""timm encoders: layers through ``forward_intermediates``, the model's own data config."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fmprobe.encoders.base import (
    Encoder,
    EncoderOutput,
    WeightsInfo,
    as_state_dict,
    first_line,
    go_offline_if_unreachable,
    hub_error,
    load_state,
    load_weights,
    offline_error,
)
from fmprobe.encoders.pooling import published_embedding
from fmprobe.encoders.spec import ModelSpec
from fmprobe.encoders.zoo import (
    EmbeddingRecipe,
    Preset,
    get_preset,
    jsonable_kwargs,
    preset_for_hub,
)
from fmprobe.errors import ModelError, did_you_mean


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def is_hub_name(name: str) -> bool:
    """``hf-hub:<org>/<repo>`` (timm also accepts ``hf_hub:``): its config comes from the hub."""
    return name.startswith(("hf-hub:", "hf_hub:"))


def _create(name: str, *, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(0)  # a random-init encoder is the same one in every process
        return timm.create_model(name, pretrained=pretrained, **{"num_classes": 0, **kwargs})


def build_timm_model(
    spec: ModelSpec,
    *,
    pretrained: bool,
    model_kwargs: dict[str, Any],
    preset: Preset | None = None,
) -> nn.Module:
    """The timm model of ``spec`` in eval mode, without gradients.

    A hub name (``hf-hub:<org>/<repo>``) goes through ``timm.create_model`` with the hub's
    config, as timm's own loading does; a preset builds its published architecture from the
    hub, or its offline architecture (``preset.arch``) for ``--random-init`` / ``--weights``.
    """
    import timm

    if preset is not None and pretrained and not preset.weights_url:
        name, kwargs = preset.source, {**preset.kwargs, **model_kwargs}
    elif preset is not None:
        name, kwargs, pretrained = preset.arch, {**preset.arch_kwargs, **model_kwargs}, False
    else:
        name, kwargs = spec.name, model_kwargs
    hub = is_hub_name(name)
    arch = name.split(".")[0]
    if not hub and not timm.is_model(arch):
        raise ModelError(
            f"--model {spec.text}: timm has no model {arch!r}"
            f"{did_you_mean(arch, timm.list_models())}; list them with "
            "`fmprobe models 'timm:*vit*'`"
        )
    if pretrained or hub:
        go_offline_if_unreachable()
    try:
        model = _create(name, pretrained=pretrained, kwargs=kwargs)
    except TypeError as exc:
        raise ModelError(f"--model {spec.text}: bad model argument ({exc})") from None
    except Exception as exc:
        if not (pretrained or hub):
            raise
        if "No pretrained weights" in str(exc) or "Invalid pretrained tag" in str(exc):
            raise ModelError(
                f"--model {spec.text}: timm has no pretrained weights under that name "
                f"({exc}); pass --weights PATH or --random-init"
            ) from None
        if not hub:
            raise offline_error(spec, exc) from None
        raise hub_error(spec, exc, repo=name, offline=_hub_advice(spec, name, pretrained)) from None
    if not hasattr(model, "forward_intermediates"):
        raise ModelError(
            f"--model {spec.text}: this timm model has no forward_intermediates(), so its layers "
            "cannot be taken reliably; choose another architecture"
        )
    return model.eval().requires_grad_(False)


def _hub_advice(spec: ModelSpec, name: str, pretrained: bool) -> str:
    if spec.preset:
        return "pass --weights PATH (a local copy of the weights) or --random-init"
    preset = preset_for_hub(name)
    if preset is not None:
        return (
            f"use the preset `--model {preset.name}`, whose architecture builds offline "
            "(with --weights PATH or --random-init)"
        )
    if pretrained:
        return (
            "pass --weights PATH with the timm architecture, or use a preset "
            "(`fmprobe models --zoo`)"
        )
    return (
        "its architecture comes from the hub's config.json: use a preset (`fmprobe models "
        "--zoo`) or timm:<architecture> with --model-kwargs and --weights PATH"
    )


def load_url_weights(model: nn.Module, url: str, spec: ModelSpec) -> WeightsInfo:
    """Download a preset's release file (a state dict, read with ``weights_only=True``)."""
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", weights_only=True, progress=False
        )
    except Exception as exc:
        raise ModelError(
            f"--model {spec.text}: its weights are downloaded from {url}, which failed "
            f"({first_line(exc)}); download the file elsewhere and pass --weights PATH, or "
            "--random-init"
        ) from None
    load_state(model, as_state_dict(state, label=url), label=f"--model {spec.text}: {url}")
    return WeightsInfo("pretrained", url)


def map_head_weights(pool: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Attention weights (B, N) of a timm ``AttentionPoolLatent`` (MAP / SigLIP head) over
    ``tokens`` (B, N, D), averaged over heads and latent queries."""
    B, N, _ = tokens.shape
    x = tokens if pool.pos_embed is None else tokens + pool.pos_embed.unsqueeze(0).to(tokens)
    q = pool.q(pool.latent.expand(B, -1, -1))
    q = q.reshape(B, pool.latent_len, pool.num_heads, pool.head_dim).transpose(1, 2)
    k = pool.kv(x).reshape(B, N, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4)[0]
    q, k = pool.q_norm(q), pool.k_norm(k)
    attn = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn.mean(dim=(1, 2))


def block_cls_attention(block: Any, seq: torch.Tensor) -> torch.Tensor:
    """Class-token attention (B, N) of a timm ViT block over its input ``seq`` (B, N, D),
    averaged over heads: row 0 of softmax(q kᵀ · scale) after the block's ``norm1``."""
    attn_mod = block.attn
    B, N, _ = seq.shape
    h = block.norm1(seq)
    qkv = attn_mod.qkv(h).reshape(B, N, 3, attn_mod.num_heads, attn_mod.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
    attn = ((q[:, :, :1] * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn.mean(dim=1)[:, 0]


def count_blocks(model: Any, input_size: Sequence[int]) -> int:
    """Number of blocks ``forward_intermediates`` can return: a ViT's ``blocks``, otherwise
    from one dummy forward on the model's device."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return len(model.blocks)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.forward_intermediates(
            torch.zeros(1, *input_size, device=device), indices=None, intermediates_only=True
        )
    feats = out["image_intermediates"] if isinstance(out, dict) else out
    return len(feats)


def renormalise(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


class TimmTrunk:
    """Token extraction from a timm model (also used for open_clip's timm-based towers).

    ``head`` maps the model's final output (after its final norm) to its own pooled output;
    default ``model.forward_head`` (a CNN's global average pool, a ViT's pooled token).
    """

    def __init__(
        self,
        model: Any,
        input_size: Sequence[int],
        *,
        head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        from timm.layers import Attention, AttentionPoolLatent

        self.model: Any = model
        self.head = head if head is not None else model.forward_head
        params = inspect.signature(model.forward_intermediates).parameters
        self.tokens_model = "return_prefix_tokens" in params
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 0)) if self.tokens_model else 0
        self.has_cls = self.tokens_model and getattr(model, "cls_token", None) is not None
        self.num_layers = count_blocks(model, input_size)
        pool = getattr(model, "attn_pool", None)
        blocks = getattr(model, "blocks", None)
        self.attn_source: str | None = None
        if isinstance(pool, AttentionPoolLatent):
            self.attn_source = "map_head"
        elif (
            self.has_cls
            and self.num_layers >= 2
            and isinstance(blocks, nn.Sequential)
            and len(blocks) == self.num_layers
            and isinstance(getattr(blocks[-1], "attn", None), Attention)
        ):
            self.attn_source = "last_block_cls_attention"

    def forward(
        self,
        x: torch.Tensor,
        layers: Sequence[int],
        *,
        attn: bool,
        embedding: EmbeddingRecipe | None = None,
    ) -> EncoderOutput:
        source = self.attn_source if attn else None
        wanted = set(layers)
        if source == "last_block_cls_attention":
            wanted.add(self.num_layers - 2)
        indices = sorted(wanted)
        need_final = source == "map_head" or embedding is not None
        kwargs: dict[str, Any] = {
            "indices": indices,
            "intermediates_only": not need_final,
            "stop_early": not need_final,
        }
        if self.tokens_model:
            kwargs["return_prefix_tokens"] = True
        result = self.model.forward_intermediates(x, **kwargs)
        final, inter = result if need_final else (None, result)
        by_layer: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for i, t in zip(indices, inter, strict=True):
            spatial, prefix = t if isinstance(t, tuple) else (t, None)
            by_layer[i] = (spatial.flatten(2).transpose(1, 2), prefix)
        patch = [by_layer[i][0] for i in layers]
        cls: list[torch.Tensor | None] = []
        for i in layers:
            prefix = by_layer[i][1]
            cls.append(prefix[:, 0] if self.has_cls and prefix is not None else None)
        weights = None
        if source == "map_head":
            assert final is not None
            weights = map_head_weights(self.model.attn_pool, final)
        elif source == "last_block_cls_attention":
            tokens, prefix = by_layer[self.num_layers - 2]
            seq = torch.cat([prefix, tokens], dim=1) if prefix is not None else tokens
            weights = block_cls_attention(self.model.blocks[-1], seq)
        if weights is not None:
            weights = renormalise(weights[:, self.num_prefix :].float())
        vector = None
        if embedding is not None:
            assert final is not None
            vector = published_embedding(
                embedding.kind, final=final, num_prefix=self.num_prefix, head=self.head
            )
        return EncoderOutput(patch=patch, cls=cls, attn=weights, embedding=vector)


class TimmEncoder(Encoder):
    """``timm:<name>[.<tag>]``, ``timm:hf-hub:<org>/<repo>``, or a timm-based preset."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        weights: str | None = None,
        random_init: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import timm.data

        model_kwargs = dict(model_kwargs or {})
        preset = get_preset(spec.preset) if spec.preset else None
        pretrained = weights is None and not random_init
        model: Any = build_timm_model(
            spec, pretrained=pretrained, model_kwargs=model_kwargs, preset=preset
        )
        if weights is not None:
            self.weights = load_weights(model, weights)
        elif random_init:
            self.weights = WeightsInfo("random-init", "torch.manual_seed(0)")
        elif preset is not None and preset.weights_url:
            self.weights = load_url_weights(model, preset.weights_url, spec)
        else:
            cfg = model.pretrained_cfg
            self.weights = WeightsInfo(
                "pretrained", str(cfg.get("hf_hub_id") or cfg.get("url") or spec.name)
            )
        self.spec = spec
        self.model: Any = model
        self.preset = preset
        if preset is not None:
            pp = preset.preprocess
            if "img_size" in model_kwargs:
                pp = pp.at_size(int(model_kwargs["img_size"]))
            self.transform = pp.transform()
            self.preprocess = {"from": f"preset {preset.name}", **pp.to_dict()}
            input_size: Sequence[int] = (3, pp.size, pp.size)
        else:
            data_cfg = timm.data.resolve_model_data_config(model)
            if "img_size" in model_kwargs:
                size = model_kwargs["img_size"]
                h, w = (size, size) if isinstance(size, int) else size
                data_cfg["input_size"] = (3, h, w)
            self.transform = timm.data.create_transform(**data_cfg, is_training=False)
            self.preprocess = {"library": "timm", **_jsonable(data_cfg)}
            input_size = data_cfg["input_size"]
        self.trunk = TimmTrunk(model, input_size)
        self.num_layers = self.trunk.num_layers
        self.cls_source = "class_token" if self.trunk.has_cls else "global_average"
        self.attn_source = self.trunk.attn_source
        self.extra = {
            "model_kwargs": jsonable_kwargs(model_kwargs),
            "num_prefix_tokens": self.trunk.num_prefix,
        }

    def forward(
        self, x: torch.Tensor, layers: Sequence[int], *, attn: bool, embedding: bool = False
    ) -> EncoderOutput:
        recipe = self.embedding_recipe if embedding else None
        return self.trunk.forward(x, layers, attn=attn, embedding=recipe)
