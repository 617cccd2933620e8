"""Encoder conformance suite: every source on a tiny random-init model, checked against the
model's own block outputs (forward hooks) and attention computed independently."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from conftest import TINY_SIGLIP, TINY_VIT
from PIL import Image
from torch.overrides import TorchFunctionMode

from fmprobe.encoders import (
    ModelSpec,
    create_encoder,
    list_encoders,
    parse_model_name,
    pool_tokens,
    resolve_layers,
)
from fmprobe.errors import ModelError

# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "key"),
    [
        ("timm:vit_small_patch16_224", ModelSpec("timm", "vit_small_patch16_224"), "timm-vit_small_patch16_224"),
        ("timm:vit_small_patch16_224.augreg_in21k", ModelSpec("timm", "vit_small_patch16_224.augreg_in21k"), "timm-vit_small_patch16_224.augreg_in21k"),
        ("timm:hf-hub:MahmoodLab/UNI", ModelSpec("timm", "hf-hub:MahmoodLab/UNI"), "timm-hf-hub_MahmoodLab_UNI"),
        ("uni", ModelSpec("timm", "hf-hub:MahmoodLab/UNI", preset="uni"), "uni"),
        ("rad-dino", ModelSpec("hf", "microsoft/rad-dino", preset="rad-dino"), "rad-dino"),
        ("kaiko-vitb8", ModelSpec("timm", "vit_base_patch8_224", preset="kaiko-vitb8"), "kaiko-vitb8"),
        ("open_clip:ViT-B-32", ModelSpec("open_clip", "ViT-B-32"), "open_clip-ViT-B-32"),
        ("open_clip:ViT-B-32/laion2b_s34b_b79k", ModelSpec("open_clip", "ViT-B-32", "laion2b_s34b_b79k"), "open_clip-ViT-B-32-laion2b_s34b_b79k"),
        ("open_clip:hf-hub:org/repo", ModelSpec("open_clip", "hf-hub:org/repo"), "open_clip-hf-hub_org_repo"),
        ("hf:microsoft/rad-dino", ModelSpec("hf", "microsoft/rad-dino"), "hf-microsoft_rad-dino"),
        ("hf:/models/my-dino/", ModelSpec("hf", "/models/my-dino/"), "hf-my-dino"),
    ],
)  # fmt: skip
def test_parse_model_name_table(text: str, expected: ModelSpec, key: str) -> None:
    spec = parse_model_name(text)
    assert spec == expected
    assert spec.key == key
    assert parse_model_name(spec.text) == spec


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("vit_small_patch16_224", ["no source prefix", "timm:", "fmprobe models --zoo"]),
        ("virchow3", ["not a preset", "'virchow2'?"]),
        ("torchvision:resnet50", ["unknown source", "timm, open_clip, hf"]),
        ("timm:", ["no source prefix"]),
        ("open_clip:/laion", ["architecture"]),
    ],
)
def test_parse_model_name_errors(text: str, words: list[str]) -> None:
    with pytest.raises(ModelError) as err:
        parse_model_name(text)
    assert "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    ("layers", "n", "expected"),
    [
        (None, 12, (2, 5, 8, 11)),
        (None, 24, (5, 11, 17, 23)),
        (None, 4, (0, 1, 2, 3)),
        (None, 2, (0, 1)),
        ("2,5,8,11", 12, (2, 5, 8, 11)),
        ("-1", 12, (11,)),
        ("last,0", 12, (0, 11)),
        ([3, -3], 12, (3, 9)),
    ],
)
def test_resolve_layers_table(layers: Any, n: int, expected: tuple[int, ...]) -> None:
    assert resolve_layers(layers, n) == expected


@pytest.mark.parametrize("layers", ["12", "-13", "two", "1,x"])
def test_resolve_layers_errors(layers: str) -> None:
    with pytest.raises(ModelError, match="layers"):
        resolve_layers(layers, 12)


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(ModelError, match="did you mean 'vit_small_patch16_224'"):
        create_encoder("timm:vit_smal_patch16_224", random_init=True)
    with pytest.raises(ModelError, match="did you mean 'ViT-B-32'"):
        create_encoder("open_clip:ViT-B-3", random_init=True)
    with pytest.raises(ModelError, match="known tags"):
        create_encoder("open_clip:ViT-S-32/nonsense")


def test_offline_pretrained_points_at_weights() -> None:
    with pytest.raises(ModelError) as err:
        create_encoder("timm:vit_tiny_patch16_224")
    assert "--weights" in str(err.value) and "--random-init" in str(err.value)
    with pytest.raises(ModelError, match="--weights"):
        create_encoder("hf:some-org/some-model")


def test_list_encoders_filters() -> None:
    names = list_encoders("timm:vit_small_patch16_224*")
    assert "timm:vit_small_patch16_224" in names
    assert all(n.startswith("timm:vit_small_patch16_224") for n in names)
    assert "open_clip:ViT-B-32/laion2b_s34b_b79k" in list_encoders("open_clip:ViT-B-32/*")


# --- conformance suite ----------------------------------------------------------------------


class SoftmaxCapture(TorchFunctionMode):
    """Records every softmax computed inside the block (the model's own attention maps)."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func in (torch.Tensor.softmax, torch.softmax, torch.nn.functional.softmax):
            self.maps.append(out.detach())
        return out


def mha_query_weights(
    mha: torch.nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Head-averaged attention of ``query`` (B, 1, D) over ``keys`` (B, N, D), by hand from
    the projection weights of an ``nn.MultiheadAttention``."""
    d = mha.embed_dim
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q = query @ w[:d].T + b[:d]
    k = keys @ w[d : 2 * d].T + b[d : 2 * d]
    h = mha.num_heads
    B, N, _ = keys.shape
    q = q.reshape(B, 1, h, d // h).transpose(1, 2)
    k = k.reshape(B, N, h, d // h).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
    return att.mean(1)[:, 0]


@dataclass
class Case:
    model: str
    kwargs: dict[str, Any]
    blocks: Callable[[Any], list[torch.nn.Module]]  # the modules whose outputs are the layers
    prefix: int  # tokens before the patches in block outputs
    cnn: bool = False
    attn_ref: Callable[[Any, torch.Tensor], torch.Tensor] | None = None


def _timm_cls_attention(enc: Any, x: torch.Tensor) -> torch.Tensor:
    blk = enc.model.blocks[-1]
    blk.attn.fused_attn = False
    with SoftmaxCapture() as cap:
        enc.model(x)
    blk.attn.fused_attn = True
    att = cap.maps[-1]  # the last block's (B, H, N, N)
    return att[:, :, 0, 1:].mean(1)


def _timm_map_attention(enc: Any, x: torch.Tensor) -> torch.Tensor:
    pool = enc.model.attn_pool
    pool.fused_attn = False
    with SoftmaxCapture() as cap:
        enc.model(x)
    pool.fused_attn = True
    return cap.maps[-1].mean(dim=(1, 2))  # (B, H, latents, N)


def _open_clip_cls_attention(enc: Any, x: torch.Tensor) -> torch.Tensor:
    blk = enc.model.transformer.resblocks[-1]
    seen: list[torch.Tensor] = []
    handle = blk.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    enc.model(x)
    handle.remove()
    h = blk.ln_1(seen[0])
    return mha_query_weights(blk.attn, h[:, :1], h)[:, 1:]


def _hf_cls_attention(enc: Any, x: torch.Tensor) -> torch.Tensor:
    out = enc.model(pixel_values=x, output_attentions=True)
    return out.attentions[-1][:, :, 0, 1:].mean(1)


def _hf_map_attention(enc: Any, x: torch.Tensor) -> torch.Tensor:
    last = enc.model(pixel_values=x).last_hidden_state
    head = enc.model.head
    return mha_query_weights(head.attention, head.probe.expand(len(x), -1, -1), last)


CASES = {
    "timm-vit": Case("timm:vit_tiny_patch16_224", TINY_VIT, lambda e: list(e.model.blocks), 1, attn_ref=_timm_cls_attention),
    "timm-siglip-map": Case("timm:vit_base_patch16_siglip_224", TINY_SIGLIP, lambda e: list(e.model.blocks), 0, attn_ref=_timm_map_attention),
    "timm-resnet": Case("timm:resnet18", {}, lambda e: [e.model.act1, e.model.layer1, e.model.layer2, e.model.layer3, e.model.layer4], 0, cnn=True),
    "open_clip-vit": Case("open_clip:ViT-S-32", {}, lambda e: list(e.model.transformer.resblocks), 1, attn_ref=_open_clip_cls_attention),
    "open_clip-rn50": Case("open_clip:RN50", {}, lambda e: [e.model.act3, e.model.layer1, e.model.layer2, e.model.layer3, e.model.layer4], 0, cnn=True),
    "hf-dinov2": Case("hf:{dino}", {}, lambda e: list(e.model.encoder.layer), 1, attn_ref=_hf_cls_attention),
    "hf-siglip": Case("hf:{siglip}", {}, lambda e: list(e.model.encoder.layers), 0, attn_ref=_hf_map_attention),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(CASES))
def built(
    request: pytest.FixtureRequest, hf_models: dict[str, Any]
) -> tuple[Case, Any, torch.Tensor]:
    case = CASES[request.param]
    enc = create_encoder(case.model.format(**hf_models), random_init=True, model_kwargs=case.kwargs)
    g = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()) for _ in range(3)
    ]
    x = torch.stack([enc.transform(im) for im in images])
    return case, enc, x


def test_layers_equal_the_models_own_block_outputs(built: tuple[Case, Any, torch.Tensor]) -> None:
    case, enc, x = built
    modules = case.blocks(enc)
    assert enc.num_layers == len(modules)
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, m in enumerate(modules)
    ]  # fmt: skip
    with torch.no_grad():
        if case.model.startswith("hf:"):
            enc.model(pixel_values=x)
        else:
            enc.model(x)
    for h in hooks:
        h.remove()
    layers = enc.resolve_layers(None)
    with torch.no_grad():
        out = enc.forward(x, layers, attn=False)
    for k, i in enumerate(layers):
        ref = captured[i]
        if case.cnn:
            ref_patch, ref_cls = ref.flatten(2).transpose(1, 2), None
        else:
            ref_patch, ref_cls = ref[:, case.prefix :], (ref[:, 0] if case.prefix else None)
        torch.testing.assert_close(out.patch[k], ref_patch, rtol=1e-5, atol=1e-5)
        if ref_cls is None:
            assert out.cls[k] is None
        else:
            torch.testing.assert_close(out.cls[k], ref_cls, rtol=1e-5, atol=1e-5)
    assert enc.cls_source == ("class_token" if case.prefix else "global_average")


def test_attention_weights_match_an_independent_computation(
    built: tuple[Case, Any, torch.Tensor],
) -> None:
    case, enc, x = built
    if case.attn_ref is None:
        pytest.skip("attention weights of this tower are checked for shape only")
    with torch.no_grad():
        out = enc.forward(x, enc.resolve_layers("last"), attn=True)
        ref = case.attn_ref(enc, x)
    ref = ref / ref.sum(1, keepdim=True)
    assert out.attn is not None and out.attn.shape == out.patch[0].shape[:2]
    torch.testing.assert_close(out.attn, ref.float(), rtol=1e-4, atol=1e-5)


def test_every_tower_gives_normalised_attention_weights(
    built: tuple[Case, Any, torch.Tensor],
) -> None:
    case, enc, x = built
    if case.model == "timm:resnet18":
        assert enc.attn_source is None  # a plain CNN has no attention to pool with
        return
    with torch.no_grad():
        out = enc.forward(x, enc.resolve_layers(None), attn=True)
    assert out.attn is not None
    assert torch.all(out.attn >= 0)
    torch.testing.assert_close(out.attn.sum(1), torch.ones(len(x)))


def test_pools_equal_hand_computation() -> None:
    g = torch.Generator().manual_seed(3)
    patch = torch.randn(2, 5, 4, generator=g)
    cls = torch.randn(2, 4, generator=g)
    w = torch.rand(2, 5, generator=g)
    w = w / w.sum(1, keepdim=True)
    torch.testing.assert_close(pool_tokens("cls", patch=patch, cls=cls, attn=None), cls)
    torch.testing.assert_close(pool_tokens("cls", patch=patch, cls=None, attn=None), patch.mean(1))
    torch.testing.assert_close(pool_tokens("mean", patch=patch, cls=cls, attn=None), patch.mean(1))
    manual = torch.stack([sum(w[b, p] * patch[b, p] for p in range(5)) for b in range(2)])
    torch.testing.assert_close(pool_tokens("attn", patch=patch, cls=cls, attn=w), manual)


# --- weights ----------------------------------------------------------------------------------


def _features(enc: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(enc.forward(x, enc.resolve_layers(None), attn=False).patch, dim=1)


def test_weights_round_trip_state_dict_and_safetensors(tmp_path: Any) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)  # other weights than the seeded random init
    src = timm.create_model("vit_tiny_patch16_224", num_classes=10, **TINY_VIT).eval()
    torch.save({"state_dict": src.state_dict()}, tmp_path / "ckpt.pth")
    save_file(src.state_dict(), tmp_path / "ckpt.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = src.forward_intermediates(x, indices=[3], intermediates_only=True, output_fmt="NLC")
    for name in ("ckpt.pth", "ckpt.safetensors"):
        enc = create_encoder(
            "timm:vit_tiny_patch16_224", weights=str(tmp_path / name), model_kwargs=TINY_VIT
        )
        assert enc.weights.kind == "file" and enc.weights.sha256
        with torch.no_grad():
            out = enc.forward(x, (3,), attn=False)
        torch.testing.assert_close(
            out.patch[0], ref[0].flatten(2).transpose(1, 2) if ref[0].dim() == 4 else ref[0]
        )
    rand = create_encoder("timm:vit_tiny_patch16_224", random_init=True, model_kwargs=TINY_VIT)
    assert not torch.allclose(_features(rand, x), _features(enc, x))


def test_random_init_is_the_same_in_every_build() -> None:
    x = torch.randn(2, 3, 32, 32)
    a = create_encoder("timm:vit_tiny_patch16_224", random_init=True, model_kwargs=TINY_VIT)
    b = create_encoder("timm:vit_tiny_patch16_224", random_init=True, model_kwargs=TINY_VIT)
    torch.testing.assert_close(_features(a, x), _features(b, x), rtol=0, atol=0)


class NotTensors:
    """An arbitrary pickled object: must never be unpickled."""


def test_weights_errors(tmp_path: Any) -> None:
    import timm

    torch.save({"obj": NotTensors()}, tmp_path / "pickle.pth")
    with pytest.raises(ModelError, match="weights_only=True"):
        create_encoder(
            "timm:vit_tiny_patch16_224", weights=str(tmp_path / "pickle.pth"), model_kwargs=TINY_VIT
        )
    other = timm.create_model("resnet18", num_classes=0)
    torch.save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ModelError, match="does not fit this architecture"):
        create_encoder(
            "timm:vit_tiny_patch16_224", weights=str(tmp_path / "resnet.pth"), model_kwargs=TINY_VIT
        )
    with pytest.raises(ModelError, match="does not exist"):
        create_encoder("timm:vit_tiny_patch16_224", weights=str(tmp_path / "missing.pth"))
