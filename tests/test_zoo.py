"""The presets of the field: a conformance suite over every preset against its model card
(block count, embedding width, prefix and register tokens, preprocessing), hand computations
of the published embedding from each model's own forward, embed end to end, --weights, and
the hub's errors (gated, not found, offline) raised from monkeypatched public functions."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from conftest import TINY_VIT
from PIL import Image

from fmprobe.cli import main
from fmprobe.encoders import ModelSpec, create_encoder, list_presets, parse_model_name, pool_tokens
from fmprobe.encoders.zoo import PRESETS, fill_generated, get_preset, presets_table
from fmprobe.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Card:
    """What a model's card (or its authors' loading code) states."""

    blocks: int
    width: int  # of the published embedding
    prefix: int  # class token + registers
    registers: int
    size: int  # input pixels
    norm: tuple[tuple[float, ...], tuple[float, ...]]
    crop: bool  # resize the shorter side and centre-crop (False: resize to size × size)


# The cards' numbers, restated here as the reference the registry and the built models must
# match (sources: each preset's `reference` and `recipe_from`).
CARDS = {
    "uni": Card(24, 1024, 1, 0, 224, IMAGENET, True),
    "uni2-h": Card(24, 1536, 9, 8, 224, IMAGENET, True),
    "virchow": Card(32, 2560, 1, 0, 224, IMAGENET, True),
    "virchow2": Card(32, 2560, 5, 4, 224, IMAGENET, True),
    "h-optimus-0": Card(40, 1536, 5, 4, 224, HOPTIMUS, True),
    "h-optimus-1": Card(40, 1536, 5, 4, 224, HOPTIMUS, True),
    "h0-mini": Card(12, 1536, 5, 4, 224, HOPTIMUS, True),
    "prov-gigapath": Card(40, 1536, 1, 0, 224, IMAGENET, True),
    "phikon": Card(12, 768, 1, 0, 224, IMAGENET, False),
    "phikon-v2": Card(24, 1024, 1, 0, 224, IMAGENET, True),
    "hibou-b": Card(12, 768, 5, 4, 224, HIBOU, True),
    "hibou-l": Card(24, 1024, 5, 4, 224, HIBOU, True),
    "kaiko-vitb8": Card(12, 768, 1, 0, 224, HALF, True),
    "lunit-vits8": Card(12, 384, 1, 0, 224,
                        ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464)),
                        True),
    "conch": Card(12, 512, 1, 0, 448, OPENAI, True),
    "rad-dino": Card(12, 768, 1, 0, 518, ((0.5307,) * 3, (0.2583,) * 3), True),
    "biomedclip": Card(12, 512, 1, 0, 224, OPENAI, True),
    "medsiglip": Card(27, 1152, 0, 0, 448, HALF, False),
    "dinov2-vits14": Card(12, 384, 1, 0, 224, IMAGENET, True),
    "dinov2-vitb14": Card(12, 768, 1, 0, 224, IMAGENET, True),
    "dinov2-vitl14": Card(24, 1024, 1, 0, 224, IMAGENET, True),
    "dinov2-vitb14-reg": Card(12, 768, 5, 4, 224, IMAGENET, True),
    "resnet50-imagenet": Card(5, 2048, 0, 0, 224, IMAGENET, True),
    "clip-vitb16": Card(12, 512, 1, 0, 224, OPENAI, True),
    "siglip-so400m": Card(27, 1152, 0, 0, 384, HALF, False),
}  # fmt: skip
NEEDS_PACKAGE = {"conch"}
BUILT = [p.name for p in PRESETS if p.name not in NEEDS_PACKAGE]


def test_every_issue_preset_is_registered_with_a_card() -> None:
    assert [p.name for p in PRESETS] == list(CARDS)
    for p in PRESETS:
        card = CARDS[p.name]
        assert (p.num_blocks, p.embedding.width) == (card.blocks, card.width), p.name
        assert (p.num_prefix_tokens, p.num_registers) == (card.prefix, card.registers), p.name
        pp = p.preprocess
        assert (pp.size, (pp.mean, pp.std), not pp.squash) == (card.size, card.norm, card.crop)
        assert p.reference.startswith("https://") and p.recipe_from and p.license


# --- conformance on the meta device: every preset's architecture, no memory ------------------


def _patch_size(enc: Any) -> int:
    m = enc.model
    if hasattr(m, "config"):
        ps = m.config.patch_size
    elif hasattr(m, "trunk"):
        ps = m.trunk.patch_embed.patch_size
    elif hasattr(m, "patch_embed"):
        ps = m.patch_embed.patch_size
    else:
        ps = m.patch_size
    return int(ps if isinstance(ps, int) else ps[0])


def _own_blocks(enc: Any) -> int:
    """The model's own count of blocks, read from its structure."""
    m = enc.model
    if hasattr(m, "config"):
        return int(m.config.num_hidden_layers)
    if hasattr(m, "transformer"):
        return len(m.transformer.resblocks)
    if hasattr(m, "trunk"):
        return len(m.trunk.blocks)
    if hasattr(m, "blocks"):
        return len(m.blocks)
    return 1 + len([m.layer1, m.layer2, m.layer3, m.layer4])  # stem, then the four stages


@pytest.fixture(scope="module")
def on_meta() -> dict[str, tuple[Any, Any]]:
    """Every preset built at random init on the meta device, with its output for a batch of 2."""
    built = {}
    for name in BUILT:
        with torch.device("meta"):
            enc = create_encoder(name, random_init=True)
            s = CARDS[name].size
            out = enc.forward(
                torch.zeros(2, 3, s, s), enc.resolve_layers(None), attn=True, embedding=True
            )
        built[name] = (enc, out)
    return built


@pytest.mark.parametrize("name", BUILT)
def test_preset_architecture_matches_its_card(
    name: str, on_meta: dict[str, tuple[Any, Any]]
) -> None:
    enc, out = on_meta[name]
    card = CARDS[name]
    assert enc.num_layers == card.blocks == _own_blocks(enc)
    assert enc.resolve_layers(None) == get_preset(name).default_layers
    assert out.embedding is not None and tuple(out.embedding.shape) == (2, card.width)
    assert enc.embedding_recipe.width == card.width
    if card.prefix or name != "resnet50-imagenet":
        grid = (card.size // _patch_size(enc)) ** 2
        # The patch tokens of every layer: no class token, no register.
        assert all(tuple(p.shape[:2]) == (2, grid) for p in out.patch)
    assert (out.cls[0] is not None) == (card.prefix > 0)
    meta = enc.describe()
    assert meta["preset"] == name and meta["embedding"]["width"] == card.width


def test_timm_presets_count_prefix_and_register_tokens_as_the_model_does(
    on_meta: dict[str, tuple[Any, Any]],
) -> None:
    for p in list_presets():
        if p.library != "timm" or p.num_prefix_tokens == 0:
            continue
        model = on_meta[p.name][0].model
        assert model.num_prefix_tokens == CARDS[p.name].prefix, p.name
        assert model.num_reg_tokens == CARDS[p.name].registers, p.name


@pytest.mark.parametrize("name", BUILT)
def test_recorded_preprocessing_is_the_cards(name: str) -> None:
    """A constant image normalises to (c/255 - mean) / std; a band at the left edge of a wide
    image survives a squash but not a centre crop."""
    card = CARDS[name]
    transform = get_preset(name).preprocess.transform()
    x = transform(Image.new("RGB", (300, 260), (200, 100, 50)))
    assert tuple(x.shape) == (3, card.size, card.size)
    mean, std = (torch.tensor(v) for v in card.norm)
    expected = (torch.tensor([200, 100, 50]) / 255 - mean) / std
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected.float(), atol=2e-3, rtol=0)
    wide = np.zeros((200, 400, 3), np.uint8)
    wide[:, :60] = 255
    y = transform(Image.fromarray(wide))
    brighter = float(y[:, :, : card.size // 10].mean() - y.mean())
    assert (brighter > 0.5) == (not card.crop) and brighter > -1e-4


def test_conch_without_its_package_is_one_line_naming_it() -> None:
    try:
        import conch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the conch package is installed")
    with pytest.raises(ModelError) as err:
        create_encoder("conch", random_init=True)
    msg = str(err.value)
    assert "\n" not in msg and "pip install git+https://github.com/Mahmoodlab/CONCH.git" in msg


# --- real tensors: the published embedding and the pools against the model's own forward -----


def _images(n: int, size: int = 48) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    return [
        Image.fromarray((torch.rand(size, size + 8, 3, generator=g) * 255).byte().numpy())
        for _ in range(n)
    ]


def _block_outputs(blocks: list[torch.nn.Module], run: Any) -> dict[int, torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        b.register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i, o[0] if isinstance(o, tuple) else o)
        )
        for i, b in enumerate(blocks)
    ]
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    return seen


@dataclass
class Real:
    name: str
    kwargs: dict[str, Any]
    blocks: Any  # encoder -> the modules whose outputs are the layers
    run: Any  # (encoder, x) -> the model's own forward, as its card calls it
    reference: Any  # (own output) -> the published embedding as the card computes it


REAL = {
    # ViT-L (timm): model(x) with num_classes=0 is the class token.
    "uni": Real("uni", {}, lambda e: list(e.model.blocks), lambda e, x: e.model(x), lambda o: o),
    # ViT-H, SwiGLU, 4 registers (timm), at 112 px to fit the test budget (same architecture).
    "virchow2": Real(
        "virchow2", {"img_size": 112}, lambda e: list(e.model.blocks), lambda e, x: e.model(x),
        lambda o: torch.cat([o[:, 0], o[:, 5:].mean(1)], dim=-1),
    ),
    # DINOv2 with registers (transformers).
    "dinov2-vitb14-reg": Real(
        "dinov2-vitb14-reg", {}, lambda e: list(e.model.encoder.layer),
        lambda e, x: e.model(pixel_values=x), lambda o: o.pooler_output,
    ),
    # CLIP towers (open_clip): the tower's forward is the projected image embedding.
    "clip-vitb16": Real(
        "clip-vitb16", {}, lambda e: list(e.model.transformer.resblocks),
        lambda e, x: e.model(x), lambda o: o,
    ),
    "biomedclip": Real(
        "biomedclip", {}, lambda e: list(e.model.trunk.blocks), lambda e, x: e.model(x),
        lambda o: o,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REAL))
def test_published_embedding_and_pools_equal_the_models_own_forward(case: str) -> None:
    c = REAL[case]
    enc = create_encoder(c.name, random_init=True, model_kwargs=c.kwargs)
    x = torch.stack([enc.transform(im) for im in _images(2)])
    prefix = CARDS[c.name].prefix
    layers = enc.resolve_layers(None)
    own: dict[str, Any] = {}
    block_out = _block_outputs(c.blocks(enc), lambda: own.setdefault("out", c.run(enc, x)))
    with torch.no_grad():
        out = enc.forward(x, layers, attn=True, embedding=True)
    torch.testing.assert_close(out.embedding, c.reference(own["out"]), rtol=1e-4, atol=1e-5)
    grid = (x.shape[-1] // _patch_size(enc)) ** 2
    for k, i in enumerate(layers):
        ref = block_out[i]
        assert ref.shape[1] == prefix + grid  # the model's own sequence: prefix, then patches
        torch.testing.assert_close(out.patch[k], ref[:, prefix:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.cls[k], ref[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            pool_tokens("mean", patch=out.patch[k], cls=out.cls[k], attn=None),
            ref[:, prefix:].mean(1), rtol=1e-5, atol=1e-5,
        )  # fmt: skip
    assert out.attn is not None and out.attn.shape == (2, grid)  # registers excluded


# --- embed end to end at random init ---------------------------------------------------------


def _folder(root: Path, n: int = 2) -> Path:
    for i, im in enumerate(_images(n, size=24)):
        (root / "tile").mkdir(parents=True, exist_ok=True)
        im.save(root / "tile" / f"t{i}.png")
    return root


# uni at its card's input size, its values against a direct computation; virchow2 (ViT-H) and
# rad-dino (518 px) keep their architecture at a smaller input to fit the test budget.
E2E = {"uni": None, "virchow2": '{"img_size": 112}', "rad-dino": '{"image_size": 224}'}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(E2E))
def test_embed_a_preset_end_to_end(name: str, tmp_path: Path) -> None:
    data, store = _folder(tmp_path / "imgs"), tmp_path / "s.zarr"
    args = ["embed", "--data", str(data), "--model", name, "--random-init", "--store",
            str(store), "--num-workers", "0", "--quiet", "--json"]  # fmt: skip
    if E2E[name]:
        args += ["--model-kwargs", E2E[name]]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    card = CARDS[name]
    group = zarr.open_group(str(store), mode="r")
    emb = np.asarray(group[f"{name}/embedding"][:])
    assert emb.shape == (2, card.width) and np.isfinite(emb).all()
    preset = get_preset(name)
    dim = card.width // 2 if preset.embedding.kind == "cls+mean" else card.width
    for layer in preset.default_layers:
        assert group[f"{name}/block{layer}/mean"].shape == (2, dim)
    meta = group[name].attrs["fmprobe"]
    assert meta["model"]["preset"] == name and meta["request"]["model"] == name
    assert meta["model"]["embedding"] == preset.embedding.to_dict()
    assert meta["model"]["weights"]["kind"] == "random-init"
    assert group[f"{name}/embedding"].attrs["fmprobe"]["recipe"]["width"] == card.width
    assert f"{name}/embedding" in json.loads(res.stdout)["features"]
    if E2E[name] is None:
        enc = create_encoder(name, random_init=True)
        from fmprobe.data import parse_data

        ds = parse_data(str(data))
        x = torch.stack([enc.transform(ds.load(i)) for i in range(2)])
        with torch.no_grad():
            ref = enc.forward(x, (enc.num_layers - 1,), attn=False, embedding=True).embedding
        assert ref is not None
        np.testing.assert_allclose(emb, ref.numpy(), rtol=1e-4, atol=1e-5)


# --- --weights into a preset's offline architecture -----------------------------------------


def test_weights_load_into_a_timm_preset(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)  # other weights than the seeded random init
    src = timm.create_model("resnet50", num_classes=0).eval()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    transform = get_preset("resnet50-imagenet").preprocess.transform()
    x = torch.stack([transform(im) for im in _images(1)])
    with torch.no_grad():
        ref = src(x)  # the model's own output: the global average pool, 2,048
    for name in ("w.safetensors", "w.pth"):
        enc = create_encoder("resnet50-imagenet", weights=str(tmp_path / name))
        assert enc.weights.kind == "file" and enc.weights.sha256
        with torch.no_grad():
            out = enc.forward(x, (4,), attn=False, embedding=True)
        torch.testing.assert_close(out.embedding, ref, rtol=1e-4, atol=1e-5)


def test_weights_of_a_full_hf_checkpoint_load_into_a_preset(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2ForImageClassification

    p = get_preset("dinov2-vits14")
    torch.manual_seed(123)
    src = Dinov2ForImageClassification(Dinov2Config(**p.arch_kwargs, num_labels=3)).eval()
    save_file(src.state_dict(), tmp_path / "cls.safetensors")  # keys "dinov2.…", "classifier.…"
    x = torch.stack([p.preprocess.transform()(im) for im in _images(1)])
    with torch.no_grad():
        ref = src.dinov2(pixel_values=x).pooler_output
        enc = create_encoder("dinov2-vits14", weights=str(tmp_path / "cls.safetensors"))
        out = enc.forward(x, (11,), attn=False, embedding=True)
    torch.testing.assert_close(out.embedding, ref, rtol=1e-4, atol=1e-5)


def test_a_wrong_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    import timm

    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r.pth")
    torch.save(timm.create_model("vit_small_patch16_224").state_dict(), tmp_path / "p16.pth")
    for file, words in (("r.pth", "does not fit this architecture"),
                        ("p16.pth", r"shape mismatch for pos_embed \(\(1, 197, 384\) in the file")):  # fmt: skip
        with pytest.raises(ModelError, match=words) as err:
            create_encoder("lunit-vits8", weights=str(tmp_path / file))
        assert "\n" not in str(err.value)


def test_release_file_weights_are_downloaded_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import timm

    torch.manual_seed(7)
    src = timm.create_model("vit_small_patch8_224", num_classes=0).eval()
    calls: list[dict[str, Any]] = []

    def fake_download(url: str, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls.append({"url": url, **kwargs})
        return {"model": src.state_dict()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    enc = create_encoder("lunit-vits8")
    assert calls[0]["url"] == get_preset("lunit-vits8").weights_url
    assert calls[0]["weights_only"] is True
    assert enc.weights.kind == "pretrained" and enc.weights.source == calls[0]["url"]
    x = torch.stack([enc.transform(im) for im in _images(1)])
    with torch.no_grad():
        torch.testing.assert_close(enc.forward(x, (11,), attn=False, embedding=True).embedding,
                                   src(x), rtol=1e-4, atol=1e-5)  # fmt: skip

    def unreachable(url: str, **kwargs: Any) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    with pytest.raises(ModelError, match="--weights PATH") as err:
        create_encoder("kaiko-vitb8")
    assert "towards_large_pathology_fms" in str(err.value) and "\n" not in str(err.value)


# --- the hub: timm's hf-hub path, offline, gated -----------------------------------------------


def _hub_error(kind: str, status: int) -> Exception:
    import huggingface_hub.errors as hub_errors

    http = sys.modules[hub_errors.Response.__module__]  # the HTTP library of huggingface_hub
    response = http.Response(status, request=http.Request("GET", "https://huggingface.co/x"))
    cls = {"gated": hub_errors.GatedRepoError, "http": hub_errors.HfHubHTTPError,
           "missing": hub_errors.RepositoryNotFoundError}[kind]  # fmt: skip
    return cls(f"{status} Client Error", response=response)


def test_hub_names_go_through_timms_create_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    import timm.layers

    real = timm.create_model
    calls: list[tuple[str, dict[str, Any]]] = []

    def recording(name: str, **kwargs: Any) -> Any:
        calls.append((name, kwargs))
        return real("vit_tiny_patch16_224", num_classes=0, **TINY_VIT)

    monkeypatch.setattr(timm, "create_model", recording)
    enc = create_encoder("timm:hf-hub:some-org/some-vit")
    assert calls[-1][0] == "hf-hub:some-org/some-vit" and calls[-1][1]["pretrained"] is True
    assert enc.spec.key == "timm-hf-hub_some-org_some-vit" and enc.weights.kind == "pretrained"
    create_encoder("virchow2")
    name, kwargs = calls[-1]
    assert name == "hf-hub:paige-ai/Virchow2" and kwargs["pretrained"] is True
    assert kwargs["mlp_layer"] is timm.layers.SwiGLUPacked and kwargs["act_layer"] is torch.nn.SiLU
    create_encoder("uni")
    assert calls[-1][0] == "hf-hub:MahmoodLab/UNI"
    assert calls[-1][1]["init_values"] == 1e-5 and calls[-1][1]["dynamic_img_size"] is True


@pytest.mark.parametrize(
    ("model", "random_init", "words"),
    [
        ("timm:hf-hub:MahmoodLab/UNI", False, "--model uni"),
        ("timm:hf-hub:MahmoodLab/UNI", True, "--model uni"),
        ("timm:hf-hub:nobody/nothing", True, "fmprobe models --zoo"),
        ("uni", False, "--weights PATH"),
        ("hf:microsoft/rad-dino", False, "--model rad-dino"),
        ("rad-dino", False, "--weights PATH"),
        ("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", True,
         "--model biomedclip"),
    ],
)  # fmt: skip
def test_offline_hub_names_fail_in_one_line_pointing_at_presets(
    model: str, random_init: bool, words: str
) -> None:
    with pytest.raises(ModelError) as err:
        create_encoder(model, random_init=random_init)
    msg = str(err.value)
    assert words in msg and "\n" not in msg and "gated" not in msg


@pytest.mark.parametrize(
    ("kind", "status", "words"),
    [("gated", 401, "accept the model's terms"), ("http", 403, "accept the model's terms"),
     ("missing", 401, "has no repository")],
)  # fmt: skip
def test_gated_and_missing_repositories_are_distinct_lines(
    kind: str, status: int, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip
    import timm
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise _hub_error(kind, status)

    def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            refuse()
        except Exception as exc:  # transformers wraps the hub's error in an OSError
            raise OSError("You are trying to access a gated repo.") from exc

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(open_clip, "create_model", refuse)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", wrapped)
    for model, repo in (("uni", "MahmoodLab/UNI"), ("timm:hf-hub:paige-ai/Virchow2",
                        "paige-ai/Virchow2"), ("rad-dino", "microsoft/rad-dino"),
                        ("biomedclip", "microsoft/BiomedCLIP")):  # fmt: skip
        with pytest.raises(ModelError) as err:
            create_encoder(model)
        msg = str(err.value)
        assert words in msg and repo in msg and "\n" not in msg and "not reachable" not in msg
        if kind != "missing":
            assert "HF_TOKEN" in msg and f"https://huggingface.co/{repo}" in msg


# --- names, listing, generated tables ---------------------------------------------------------


def test_presets_parse_to_specs_keyed_by_their_name() -> None:
    assert parse_model_name("uni") == ModelSpec("timm", "hf-hub:MahmoodLab/UNI", preset="uni")
    assert parse_model_name("UNI2-H").key == "uni2-h"
    assert parse_model_name("clip-vitb16") == ModelSpec(
        "open_clip", "ViT-B-16", "openai", preset="clip-vitb16"
    )
    for p in PRESETS:
        spec = parse_model_name(p.name)
        assert spec.key == spec.text == p.name and parse_model_name(spec.text) == spec
    with pytest.raises(ModelError, match="did you mean 'uni'") as err:
        parse_model_name("unii")
    assert "fmprobe models --zoo" in str(err.value)


def test_models_command_lists_and_filters_presets() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["models", "--zoo", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert [d["name"] for d in listed] == list(CARDS)
    assert {d["name"]: d["embedding"]["width"] for d in listed} == {
        n: c.width for n, c in CARDS.items()
    }
    res = runner.invoke(main, ["models", "uni*"])
    assert res.exit_code == 0 and res.stdout.split() == ["uni", "uni2-h"]
    res = runner.invoke(main, ["models", "--zoo", "virchow*"])
    assert res.exit_code == 0 and "virchow2" in res.stdout and "uni" not in res.stdout
    res = runner.invoke(main, ["models", "unii"])
    assert res.exit_code == 2 and "did you mean 'uni'" in res.output


def test_embed_with_an_unknown_preset_suggests_close_names(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main, ["embed", "--data", "builtin:digits", "--model", "virchw2", "--store",
               str(tmp_path / "s.zarr")],
    )  # fmt: skip
    assert res.exit_code == 2 and "did you mean 'virchow2'" in res.output


@pytest.mark.parametrize("path", ["README.md", "docs/guide/models.md"])
def test_presets_tables_of_the_docs_are_the_registrys(path: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    assert presets_table() in text
    assert fill_generated(text) == text, (
        f'{path} is out of date: run `python -c "from fmprobe.encoders.zoo import '
        f"update_generated; update_generated(['{path}'])\"`"
    )
