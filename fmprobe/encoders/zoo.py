"""The field's foundation models by name: one frozen ``Preset`` per model, listed by
``list_presets`` (fnmatch filters, like timm's ``list_models``).

Each preset records how its authors load it (``source`` and ``kwargs``, as the model card's
code does), the architecture fmprobe builds offline for ``--random-init`` and ``--weights``
(``arch`` and ``arch_kwargs``), the card's preprocessing, its prefix and register tokens, and
the embedding the authors report results with. Every recipe names where it was read
(``reference``: the model card; ``recipe_from``: the loading code it was checked against).

The presets tables of the README and of ``docs/guide/models.md`` are generated from this
registry: ``update_generated(["README.md", "docs/guide/models.md"])`` rewrites them.

>>> get_preset("virchow2").embedding.width
2560
>>> [p.name for p in list_presets("dinov2-*")]
['dinov2-vits14', 'dinov2-vitb14', 'dinov2-vitl14', 'dinov2-vitb14-reg']
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm.layers
import torch
from PIL import Image

from fmprobe.encoders.layers import default_layers
from fmprobe.encoders.spec import ModelSpec
from fmprobe.errors import ModelError, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
# H-optimus-0's card; H-optimus-1 and H0-mini (distilled from H-optimus-0) publish the same.
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
EMBEDDING_KINDS = ("cls", "cls+mean", "head")


@dataclass(frozen=True)
class Preprocess:
    """A model's image preprocessing, as its card or loading code states it.

    The shorter side is resized to ``resize`` with ``interpolation`` and the centre ``size`` ×
    ``size`` crop is taken; with ``squash`` the image is resized to ``size`` × ``size`` directly
    (aspect ratio not kept). Then ``(x / 255 - mean) / std`` per channel, giving (3, size, size).

    >>> Preprocess(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD).transform()(
    ...     Image.new("RGB", (300, 260))).shape
    torch.Size([3, 224, 224])
    """

    size: int
    resize: int
    interpolation: str  # "bicubic" | "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    squash: bool = False

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The PIL image → (3, size, size) float tensor transform (picklable)."""
        from torchvision import transforms

        mode = transforms.InterpolationMode(self.interpolation)
        if self.squash:
            steps = [transforms.Resize((self.size, self.size), interpolation=mode)]
        else:
            steps = [
                transforms.Resize(self.resize, interpolation=mode),
                transforms.CenterCrop(self.size),
            ]
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return transforms.Compose(steps)

    def at_size(self, size: int) -> Preprocess:
        """The same recipe at another input size (``--model-kwargs '{"img_size": N}'``)."""
        resize = size if self.squash else round(self.resize * size / self.size)
        return Preprocess(size, resize, self.interpolation, self.mean, self.std, self.squash)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": [3, self.size, self.size],
            "resize": self.resize,
            "crop": "none (squash)" if self.squash else "center",
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class EmbeddingRecipe:
    """The vector a model's authors report results with.

    ``kind``: ``"cls"`` (the class token of the last block, after the final norm),
    ``"cls+mean"`` (that class token concatenated with the mean of the patch tokens, prefix and
    register tokens excluded) or ``"head"`` (the model's own pooled output: a CNN's global
    average pool, a CLIP tower's projected image embedding, a SigLIP attention-pooling head).
    """

    kind: str
    width: int
    description: str
    label: str = ""  # a short name for tables; default from ``kind``

    def __post_init__(self) -> None:
        if self.kind not in EMBEDDING_KINDS:
            raise ValueError(f"embedding kind {self.kind!r}: one of {', '.join(EMBEDDING_KINDS)}")
        if not self.label:
            default = {"cls": "CLS", "cls+mean": "CLS ⊕ mean patch", "head": "pooled head"}
            object.__setattr__(self, "label", default[self.kind])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "width": self.width,
            "label": self.label,
            "description": self.description,
        }


@dataclass(frozen=True)
class Preset:
    """One foundation model of the field, with its published recipe.

    Attributes
    ----------
    name : str
        The ``--model`` name and the model's group in the feature store (e.g. ``uni``).
    library : {"timm", "open_clip", "hf", "conch"}
        The library that loads it (``hf``: transformers).
    source : str
        The published weights as the library names them: ``hf-hub:<org>/<repo>`` (timm,
        open_clip), an architecture with ``pretrained_tag`` (open_clip), ``<org>/<repo>``
        (transformers), or a timm architecture whose weights come from ``weights_url``.
    kwargs : mapping
        Factory arguments the card passes together with ``source`` (Python objects allowed).
    arch, arch_kwargs : str, mapping
        The architecture built without the hub (``--random-init``, ``--weights``): a timm model
        name, an open_clip architecture (or ``"CLIP"`` with its config), a transformers
        ``model_type`` with its config, or a CONCH model config.
    preprocess : Preprocess
    embedding : EmbeddingRecipe
    num_blocks : int
        Transformer blocks (CNNs: stem and stages), the layers ``--layers`` indexes.
    num_prefix_tokens, num_registers : int
        Tokens before the patch tokens (class token plus registers) and how many of them are
        registers; none of them is ever in a ``mean`` or ``tokens`` feature.
    default_layers : tuple of int
        The blocks embedded when ``--layers`` is not given.
    license, gated : str, bool
        The weights' licence, and whether the hub asks to accept terms before downloading.
    reference, recipe_from : str
        The model card (or paper), and the loading code the recipe was checked against.
    """

    name: str
    library: str
    source: str
    arch: str
    preprocess: Preprocess
    embedding: EmbeddingRecipe
    num_blocks: int
    num_prefix_tokens: int
    license: str
    gated: bool
    reference: str
    recipe_from: str
    modality: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_registers: int = 0
    pretrained_tag: str | None = None
    weights_url: str | None = None
    requires: str | None = None  # pip requirement of a package outside fmprobe's dependencies
    default_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.default_layers:
            object.__setattr__(self, "default_layers", default_layers(self.num_blocks))

    @property
    def spec(self) -> ModelSpec:
        """The ``ModelSpec`` that ``--model <name>`` resolves to."""
        name = self.arch if self.weights_url else self.source
        return ModelSpec(self.library, name, self.pretrained_tag, preset=self.name)

    @property
    def source_text(self) -> str:
        """Where the published weights come from, e.g. ``timm:hf-hub:MahmoodLab/UNI``."""
        if self.weights_url:
            return f"{self.library}:{self.arch} + {self.weights_url}"
        tag = f"/{self.pretrained_tag}" if self.pretrained_tag else ""
        return f"{self.library}:{self.source}{tag}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (Python objects in kwargs by their qualified name)."""
        return {
            "name": self.name,
            "modality": self.modality,
            "source": self.source_text,
            "kwargs": jsonable_kwargs(self.kwargs),
            "arch": f"{self.library}:{self.arch}",
            "arch_kwargs": jsonable_kwargs(self.arch_kwargs),
            "embedding": self.embedding.to_dict(),
            "num_blocks": self.num_blocks,
            "num_prefix_tokens": self.num_prefix_tokens,
            "num_registers": self.num_registers,
            "default_layers": list(self.default_layers),
            "preprocess": self.preprocess.to_dict(),
            "license": self.license,
            "gated": self.gated,
            "requires": self.requires,
            "reference": self.reference,
            "recipe_from": self.recipe_from,
        }


def jsonable_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Factory arguments as JSON: Python objects by their qualified name.

    >>> jsonable_kwargs({"act_layer": torch.nn.SiLU, "reg_tokens": 4})
    {'act_layer': 'torch.nn.modules.activation.SiLU', 'reg_tokens': 4}
    """

    def one(v: Any) -> Any:
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, Mapping):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [one(x) for x in v]
        return f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', repr(v))}"

    return {k: one(v) for k, v in kwargs.items()}


def _pp(size: int, resize: int, interp: str, mean: Any, std: Any, squash: bool = False) -> Any:
    return Preprocess(size, resize, interp, tuple(mean), tuple(std), squash)


CLS = "class token of the last block after the final LayerNorm"
CLS_MEAN = (
    "class token ⊕ mean of the patch tokens (registers excluded), both after the final LayerNorm"
)
TRIDENT = "mahmoodlab/TRIDENT trident/patch_encoder_models/load.py"
SWIGLU = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
_VIRCHOW_ARCH = {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": ""}
_UNI2_ARGS = {
    "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
    "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
    "mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU, "reg_tokens": 8,
    "dynamic_img_size": True,
}  # fmt: skip


def _dinov2(name: str, size: str, dim: int, depth: int, heads: int, reg: bool = False) -> Preset:
    repo = f"facebook/dinov2-with-registers-{size}" if reg else f"facebook/dinov2-{size}"
    arch = {"hidden_size": dim, "num_hidden_layers": depth, "num_attention_heads": heads,
            "patch_size": 14, "image_size": 518}  # fmt: skip
    if reg:
        arch["num_register_tokens"] = 4
    return Preset(
        name=name, library="hf", source=repo,
        arch="dinov2_with_registers" if reg else "dinov2", arch_kwargs=arch,
        # BitImageProcessor of the repo: shortest edge 256 (bicubic), centre crop 224.
        preprocess=_pp(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe(
            "cls", dim, f"{CLS} (pooler_output; the torch.hub backbone's x_norm_clstoken)"
        ),
        num_blocks=depth, num_prefix_tokens=5 if reg else 1, num_registers=4 if reg else 0,
        license="Apache-2.0", gated=False, modality="general",
        reference=f"https://huggingface.co/{repo}",
        recipe_from="facebookresearch/dinov2 MODEL_CARD.md and hubconf.py; the repo's "
        "preprocessor_config.json",
    )  # fmt: skip


PRESETS: tuple[Preset, ...] = (
    # --- pathology ----------------------------------------------------------------------------
    Preset(
        name="uni", library="timm", source="hf-hub:MahmoodLab/UNI",
        kwargs={"init_values": 1e-5, "dynamic_img_size": True},
        arch="vit_large_patch16_224",
        arch_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                     "dynamic_img_size": True},
        # Card: transforms.Resize(224), CenterCrop(224) (torchvision's default bilinear).
        preprocess=_pp(224, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe("cls", 1024, f"{CLS} (model(x) with num_classes=0)"),
        num_blocks=24, num_prefix_tokens=1, license="CC-BY-NC-ND-4.0", gated=True,
        modality="pathology", reference="https://huggingface.co/MahmoodLab/UNI",
        recipe_from=f"mahmoodlab/UNI uni/get_encoder/get_encoder.py; {TRIDENT} UNIInferenceEncoder",
    ),
    Preset(
        name="uni2-h", library="timm", source="hf-hub:MahmoodLab/UNI2-h", kwargs=_UNI2_ARGS,
        arch="vit_giant_patch14_224", arch_kwargs=_UNI2_ARGS,
        preprocess=_pp(224, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe("cls", 1536, f"{CLS} (model(x) with num_classes=0)"),
        num_blocks=24, num_prefix_tokens=9, num_registers=8, license="CC-BY-NC-ND-4.0",
        gated=True, modality="pathology", reference="https://huggingface.co/MahmoodLab/UNI2-h",
        recipe_from=f"mahmoodlab/UNI uni/get_encoder/get_encoder.py (uni2-h); {TRIDENT} "
        "UNIv2InferenceEncoder",
    ),
    Preset(
        name="virchow", library="timm", source="hf-hub:paige-ai/Virchow", kwargs=SWIGLU,
        arch="vit_huge_patch14_224",
        arch_kwargs={**_VIRCHOW_ARCH, "dynamic_img_size": True, **SWIGLU},
        # Hub data config: input 224, bicubic, crop_pct 1.0 (centre), ImageNet statistics.
        preprocess=_pp(224, 224, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe("cls+mean", 2560, CLS_MEAN + " (card: output[:, 0] ⊕ "
                                  "output[:, 1:].mean(1))"),
        num_blocks=32, num_prefix_tokens=1, license="Apache-2.0", gated=True,
        modality="pathology", reference="https://huggingface.co/paige-ai/Virchow",
        recipe_from=f"{TRIDENT} VirchowInferenceEncoder; kaiko-ai/eva backbones/pathology",
    ),
    Preset(
        name="virchow2", library="timm", source="hf-hub:paige-ai/Virchow2", kwargs=SWIGLU,
        arch="vit_huge_patch14_224",
        arch_kwargs={**_VIRCHOW_ARCH, "reg_tokens": 4, "dynamic_img_size": True, **SWIGLU},
        preprocess=_pp(224, 224, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe("cls+mean", 2560, CLS_MEAN + " (card: output[:, 0] ⊕ "
                                  "output[:, 5:].mean(1))"),
        num_blocks=32, num_prefix_tokens=5, num_registers=4, license="CC-BY-NC-ND-4.0",
        gated=True, modality="pathology", reference="https://huggingface.co/paige-ai/Virchow2",
        recipe_from=f"{TRIDENT} Virchow2InferenceEncoder; the hub config.json (virchow_v2: "
        "reg_tokens 4, mlp_ratio 5.3375, crop_pct 1.0, bicubic); kaiko-ai/eva paige.py",
    ),
    Preset(
        name="h-optimus-0", library="timm", source="hf-hub:bioptimus/H-optimus-0",
        kwargs={"init_values": 1e-5, "dynamic_img_size": False},
        arch="vit_giant_patch14_reg4_dinov2",
        arch_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False,
                     "global_pool": "token"},
        # Card normalises 224-px tiles; the resize is timm's ViT default (bicubic).
        preprocess=_pp(224, 224, "bicubic", HOPTIMUS_MEAN, HOPTIMUS_STD),
        embedding=EmbeddingRecipe("cls", 1536, f"{CLS} (model(x) with num_classes=0)"),
        num_blocks=40, num_prefix_tokens=5, num_registers=4, license="Apache-2.0", gated=True,
        modality="pathology", reference="https://huggingface.co/bioptimus/H-optimus-0",
        recipe_from=f"{TRIDENT} HOptimus0InferenceEncoder; kaiko-ai/eva bioptimus.py",
    ),
    Preset(
        name="h-optimus-1", library="timm", source="hf-hub:bioptimus/H-optimus-1",
        kwargs={"init_values": 1e-5, "dynamic_img_size": False},
        arch="vit_giant_patch14_reg4_dinov2",
        arch_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False,
                     "global_pool": "token"},
        preprocess=_pp(224, 224, "bicubic", HOPTIMUS_MEAN, HOPTIMUS_STD),
        embedding=EmbeddingRecipe("cls", 1536, f"{CLS} (model(x) with num_classes=0)"),
        num_blocks=40, num_prefix_tokens=5, num_registers=4,
        license="other (Bioptimus terms, see card)", gated=True, modality="pathology",
        reference="https://huggingface.co/bioptimus/H-optimus-1",
        recipe_from=f"{TRIDENT} HOptimus1InferenceEncoder",
    ),
    Preset(
        name="h0-mini", library="timm", source="hf-hub:bioptimus/H0-mini", kwargs=SWIGLU,
        arch="vit_base_patch14_reg4_dinov2",
        # The card does not state the MLP width; this assumes DINOv2's fused SwiGLU
        # (2/3·4·768 rounded to 2048 per gate, i.e. timm's mlp_ratio 16/3 as in its ViT-g).
        arch_kwargs={"img_size": 224, "global_pool": "", "mlp_ratio": 2.66667 * 2, **SWIGLU},
        preprocess=_pp(224, 224, "bicubic", HOPTIMUS_MEAN, HOPTIMUS_STD),
        embedding=EmbeddingRecipe("cls+mean", 1536, CLS_MEAN + " (card: "
                                  "concatenated_features, output[:, num_prefix_tokens:])"),
        num_blocks=12, num_prefix_tokens=5, num_registers=4, license="CC-BY-NC-ND-4.0",
        gated=True, modality="pathology", reference="https://huggingface.co/bioptimus/H0-mini",
        recipe_from=f"the card's example (output (1, 261, 768)); {TRIDENT} H0MiniInferenceEncoder",
    ),
    Preset(
        name="prov-gigapath", library="timm", source="hf-hub:prov-gigapath/prov-gigapath",
        arch="vit_giant_patch14_dinov2",
        # The hub config overrides the arch's patch 14 with 16; SwiGLU comes from the arch.
        arch_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                     "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334},
        preprocess=_pp(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe("cls", 1536, f"{CLS} (tile_encoder(x))"),
        num_blocks=40, num_prefix_tokens=1, license="Apache-2.0", gated=True,
        modality="pathology", reference="https://huggingface.co/prov-gigapath/prov-gigapath",
        recipe_from=f"prov-gigapath/prov-gigapath README.md (tile encoder); {TRIDENT} "
        "GigaPathInferenceEncoder",
    ),
    Preset(
        name="phikon", library="hf", source="owkin/phikon",
        kwargs={"add_pooling_layer": False}, arch="vit",
        arch_kwargs={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "image_size": 224, "patch_size": 16},
        preprocess=_pp(224, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD, squash=True),
        embedding=EmbeddingRecipe("cls", 768, f"{CLS} (card: last_hidden_state[:, 0, :])"),
        num_blocks=12, num_prefix_tokens=1, license="other (Owkin non-commercial)",
        gated=False, modality="pathology", reference="https://huggingface.co/owkin/phikon",
        recipe_from=f"{TRIDENT} PhikonInferenceEncoder; kaiko-ai/eva owkin.py",
    ),
    Preset(
        name="phikon-v2", library="hf", source="owkin/phikon-v2", arch="dinov2",
        arch_kwargs={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "patch_size": 16, "image_size": 224},
        preprocess=_pp(224, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe("cls", 1024, f"{CLS} (card: last_hidden_state[:, 0, :])"),
        num_blocks=24, num_prefix_tokens=1, license="other (Owkin non-commercial)",
        gated=False, modality="pathology", reference="https://huggingface.co/owkin/phikon-v2",
        recipe_from=f"{TRIDENT} Phikonv2InferenceEncoder",
    ),
    Preset(
        name="hibou-b", library="hf", source="histai/hibou-b",
        kwargs={"trust_remote_code": True}, arch="dinov2_with_registers",
        arch_kwargs={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "patch_size": 14, "image_size": 224, "num_register_tokens": 4},
        preprocess=_pp(224, 224, "bicubic", (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)),
        embedding=EmbeddingRecipe("cls", 768, f"{CLS} (pooler_output)"),
        num_blocks=12, num_prefix_tokens=5, num_registers=4, license="Apache-2.0",
        gated=False, modality="pathology", reference="https://huggingface.co/histai/hibou-b",
        recipe_from=f"HistAI/hibou README.md; {TRIDENT} HibouLInferenceEncoder; kaiko-ai/eva "
        "histai.py (4 register tokens)",
    ),
    Preset(
        name="hibou-l", library="hf", source="histai/hibou-L",
        kwargs={"trust_remote_code": True}, arch="dinov2_with_registers",
        arch_kwargs={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "patch_size": 14, "image_size": 224, "num_register_tokens": 4},
        preprocess=_pp(224, 224, "bicubic", (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)),
        embedding=EmbeddingRecipe("cls", 1024, f"{CLS} (pooler_output)"),
        num_blocks=24, num_prefix_tokens=5, num_registers=4, license="Apache-2.0", gated=True,
        modality="pathology", reference="https://huggingface.co/histai/hibou-L",
        recipe_from=f"{TRIDENT} HibouLInferenceEncoder; kaiko-ai/eva histai.py",
    ),
    Preset(
        name="kaiko-vitb8", library="timm", source="vit_base_patch8_224",
        arch="vit_base_patch8_224", arch_kwargs={"dynamic_img_size": True},
        weights_url="https://github.com/kaiko-ai/towards_large_pathology_fms/releases/download/"
        "0.0.1/vitb8.pth",
        # README: v2.Resize(224), v2.CenterCrop(224), Normalize(0.5, 0.5).
        preprocess=_pp(224, 224, "bilinear", HALF, HALF),
        embedding=EmbeddingRecipe("cls", 768, f"{CLS} (model(x) with num_classes=0)"),
        num_blocks=12, num_prefix_tokens=1, license="other (Kaiko non-commercial)",
        gated=False, modality="pathology",
        reference="https://github.com/kaiko-ai/towards_large_pathology_fms",
        recipe_from="kaiko-ai/towards_large_pathology_fms hubconf.py and README.md; kaiko-ai/eva "
        "kaiko.py",
    ),
    Preset(
        name="lunit-vits8", library="timm", source="vit_small_patch8_224",
        arch="vit_small_patch8_224",
        weights_url="https://github.com/lunit-io/benchmark-pathology-ssl/releases/download/"
        "pretrained-weights/dino_vit_small_patch8_ep200.torch",
        preprocess=_pp(224, 224, "bicubic", (0.70322989, 0.53606487, 0.66096631),
                       (0.21716536, 0.26081574, 0.20723464)),
        embedding=EmbeddingRecipe("cls", 384, f"{CLS} (model(x) with num_classes=0)"),
        num_blocks=12, num_prefix_tokens=1, license="other (Lunit non-commercial)",
        gated=False, modality="pathology",
        reference="https://github.com/lunit-io/benchmark-ssl-pathology",
        recipe_from="lunit-io/benchmark-ssl-pathology README.md (ViT/S weights); kaiko-ai/eva "
        "lunit.py (standardisation)",
    ),
    Preset(
        name="conch", library="conch", source="hf_hub:MahmoodLab/conch", arch="conch_ViT-B-16",
        preprocess=_pp(448, 448, "bicubic", OPENAI_MEAN, OPENAI_STD),
        embedding=EmbeddingRecipe("head", 512, "attention-pooled image embedding before the "
                                  "contrastive projection (encode_image(proj_contrast=False, "
                                  "normalize=False))", "attention-pooled"),
        num_blocks=12, num_prefix_tokens=1, license="CC-BY-NC-ND-4.0", gated=True,
        modality="pathology", reference="https://huggingface.co/MahmoodLab/CONCH",
        recipe_from=f"mahmoodlab/CONCH open_clip_custom (conch_ViT-B-16.json, vision_tower.py); "
        f"{TRIDENT} Conchv1InferenceEncoder",
        requires="git+https://github.com/Mahmoodlab/CONCH.git",
    ),
    # --- radiology and medical CLIP -------------------------------------------------------------
    Preset(
        name="rad-dino", library="hf", source="microsoft/rad-dino", arch="dinov2",
        arch_kwargs={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "patch_size": 14, "image_size": 518},
        preprocess=_pp(518, 518, "bicubic", (0.5307, 0.5307, 0.5307), (0.2583, 0.2583, 0.2583)),
        embedding=EmbeddingRecipe("cls", 768, f"{CLS} (card: outputs.pooler_output)"),
        num_blocks=12, num_prefix_tokens=1, license="MSRLA", gated=False, modality="radiology",
        reference="https://huggingface.co/microsoft/rad-dino",
        recipe_from="the card's example (1,369 patch tokens at 518 px); its "
        "preprocessor_config.json",
    ),
    Preset(
        name="biomedclip", library="open_clip",
        source="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", arch="CLIP",
        # open_clip_config.json's vision tower; a one-block text tower stands in for
        # PubMedBERT offline (only the image tower is used).
        arch_kwargs={"embed_dim": 512,
                     "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
                                    "timm_model_pretrained": False, "timm_pool": "",
                                    "timm_proj": "linear", "image_size": 224},
                     "text_cfg": {"context_length": 8, "vocab_size": 8, "width": 64,
                                  "heads": 1, "layers": 1}},
        preprocess=_pp(224, 224, "bicubic", OPENAI_MEAN, OPENAI_STD),
        embedding=EmbeddingRecipe("head", 512, "projected image embedding (encode_image, not "
                                  "L2-normalised)", "projected image"),
        num_blocks=12, num_prefix_tokens=1, license="MIT", gated=False, modality="radiology",
        reference="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        recipe_from="the card's open_clip example; its open_clip_config.json (also open_clip "
        "factory.py's docstring)",
    ),
    Preset(
        name="medsiglip", library="hf", source="google/medsiglip-448", arch="siglip_vision_model",
        arch_kwargs={"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                     "num_attention_heads": 16, "patch_size": 14, "image_size": 448},
        # Card: resize to 448 × 448 (bilinear), values scaled to [-1, 1].
        preprocess=_pp(448, 448, "bilinear", HALF, HALF, squash=True),
        embedding=EmbeddingRecipe("head", 1152, "image embedding of the attention-pooling head "
                                  "(get_image_features, not L2-normalised)", "MAP head"),
        num_blocks=27, num_prefix_tokens=0,
        license="Health AI Developer Foundations terms", gated=True, modality="radiology",
        reference="https://huggingface.co/google/medsiglip-448",
        recipe_from="the card's transformers example (AutoModel, AutoProcessor)",
    ),
    # --- general-purpose baselines ----------------------------------------------------------
    _dinov2("dinov2-vits14", "small", 384, 12, 6),
    _dinov2("dinov2-vitb14", "base", 768, 12, 12),
    _dinov2("dinov2-vitl14", "large", 1024, 24, 16),
    _dinov2("dinov2-vitb14-reg", "base", 768, 12, 12, reg=True),
    Preset(
        name="resnet50-imagenet", library="timm", source="resnet50.tv_in1k", arch="resnet50",
        preprocess=_pp(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        embedding=EmbeddingRecipe("head", 2048, "global average pool of the last stage "
                                  "(model(x) with num_classes=0)", "global average pool"),
        num_blocks=5, num_prefix_tokens=0, license="BSD-3-Clause", gated=False,
        modality="general", reference="https://huggingface.co/timm/resnet50.tv_in1k",
        recipe_from="torchvision ResNet50_Weights.IMAGENET1K_V1 (timm tv_in1k data config); "
        f"{TRIDENT} ResNet50InferenceEncoder",
    ),
    Preset(
        name="clip-vitb16", library="open_clip", source="ViT-B-16", pretrained_tag="openai",
        kwargs={"force_quick_gelu": True}, arch="ViT-B-16",
        arch_kwargs={"force_quick_gelu": True},
        preprocess=_pp(224, 224, "bicubic", OPENAI_MEAN, OPENAI_STD),
        embedding=EmbeddingRecipe("head", 512, "projected image embedding (encode_image, not "
                                  "L2-normalised)", "projected image"),
        num_blocks=12, num_prefix_tokens=1, license="MIT", gated=False, modality="general",
        reference="https://huggingface.co/openai/clip-vit-base-patch16",
        recipe_from="openai/CLIP clip.load('ViT-B/16') (QuickGELU, bicubic resize and centre "
        "crop); open_clip pretrained tag 'openai'",
    ),
    Preset(
        name="siglip-so400m", library="hf", source="google/siglip-so400m-patch14-384",
        arch="siglip_vision_model",
        arch_kwargs={"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                     "num_attention_heads": 16, "patch_size": 14, "image_size": 384},
        preprocess=_pp(384, 384, "bicubic", HALF, HALF, squash=True),
        embedding=EmbeddingRecipe("head", 1152, "image embedding of the attention-pooling head "
                                  "(get_image_features, not L2-normalised)", "MAP head"),
        num_blocks=27, num_prefix_tokens=0, license="Apache-2.0", gated=False,
        modality="general", reference="https://huggingface.co/google/siglip-so400m-patch14-384",
        recipe_from="the card's transformers example; its preprocessor_config.json",
    ),
)  # fmt: skip

_BY_NAME = {p.name: p for p in PRESETS}


def list_presets(filter: str = "") -> list[Preset]:
    """The presets whose name matches the fnmatch pattern ``filter`` (all when empty).

    >>> [p.name for p in list_presets("virchow*")]
    ['virchow', 'virchow2']
    """
    return [p for p in PRESETS if not filter or fnmatch.fnmatch(p.name, filter.lower())]


def get_preset(name: str) -> Preset:
    """The preset ``name`` (case-insensitive); unknown names suggest close ones.

    >>> get_preset("UNI").source
    'hf-hub:MahmoodLab/UNI'
    """
    preset = _BY_NAME.get(name.lower())
    if preset is None:
        raise ModelError(
            f"--model {name!r}: no preset of that name{did_you_mean(name.lower(), _BY_NAME)}; "
            "list them with `fmprobe models --zoo`"
        )
    return preset


def find_preset(name: str) -> Preset | None:
    """The preset ``name`` or None."""
    return _BY_NAME.get(name.lower())


def preset_for_hub(repo: str) -> Preset | None:
    """The preset whose published weights are the hub repository ``repo`` (case-insensitive)."""
    repo = repo.removeprefix("hf-hub:").removeprefix("hf_hub:").lower()
    for p in PRESETS:
        if p.source.removeprefix("hf-hub:").removeprefix("hf_hub:").lower() == repo:
            return p
    return None


def no_match_error(pattern: str) -> ModelError:
    """No model matches ``pattern``: close preset names, and how to list the others."""
    return ModelError(
        f"no model matches {pattern!r}{did_you_mean(pattern.lower(), _BY_NAME)}; list the "
        "presets with `fmprobe models --zoo`, library names with e.g. `fmprobe models "
        "'timm:*vit*'`"
    )


def _weights_label(p: Preset) -> str:
    if p.weights_url:
        return f"{p.library}:{p.arch} + release file"
    return p.source_text


def presets_table(presets: list[Preset] | None = None, *, markdown: bool = True) -> str:
    """The presets as a table: Markdown (the README's and the models guide's) or plain text.

    >>> presets_table(list_presets("uni"), markdown=False).splitlines()[1].split()
    ... # doctest: +NORMALIZE_WHITESPACE
    ['uni', 'pathology', 'CLS', '1024', '24', '5,11,17,23', '224', 'yes', 'CC-BY-NC-ND-4.0',
     'timm:hf-hub:MahmoodLab/UNI']
    """
    chosen = PRESETS if presets is None else presets
    if not markdown:
        head = ["preset", "modality", "embedding", "width", "blocks", "default layers",
                "input", "gated", "licence", "weights"]  # fmt: skip
        body = [
            [p.name, p.modality, p.embedding.label, str(p.embedding.width),
             str(p.num_blocks), ",".join(map(str, p.default_layers)), str(p.preprocess.size),
             "yes" if p.gated else "no", p.license, _weights_label(p)]
            for p in chosen
        ]  # fmt: skip
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in [head, *body]]  # fmt: skip
        return "\n".join(lines) + "\n"
    rows = [
        "| preset | modality | published embedding | blocks | default layers | input | "
        "weights | licence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in chosen:
        reg = f", {p.num_registers} registers" if p.num_registers else ""
        gated = " (gated)" if p.gated else ""
        needs = f"; needs `pip install {p.requires}`" if p.requires else ""
        rows.append(
            f"| `{p.name}` | {p.modality} | {p.embedding.label}, {p.embedding.width:,} | "
            f"{p.num_blocks}{reg} | {','.join(map(str, p.default_layers))} | "
            f"{p.preprocess.size} px | [`{_weights_label(p)}`]({p.reference}){gated}{needs} | "
            f"{p.license} |"
        )
    return "\n".join(rows) + "\n"


def presets_details(presets: list[Preset] | None = None) -> str:
    """Per preset, its published embedding in words and where the recipe was read (Markdown)."""
    lines = []
    for p in PRESETS if presets is None else presets:
        e = p.embedding
        lines.append(
            f"- **`{p.name}`** ({e.width:,}): {e.description}. Recipe: [model card]"
            f"({p.reference}); checked against {p.recipe_from}."
        )
    return "\n".join(lines) + "\n"


GENERATED = {"presets": presets_table, "preset-embeddings": presets_details}


def fill_generated(text: str) -> str:
    """``text`` with every ``<!-- NAME:begin -->`` … ``<!-- NAME:end -->`` block of
    ``GENERATED`` replaced by the registry's current content."""
    for name, make in GENERATED.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = f"{head}{begin}\n{make()}{end}{tail}"
    return text


def update_generated(paths: list[str]) -> list[str]:
    """Rewrite the generated blocks of ``paths`` (written atomically); returns those changed."""
    changed = []
    for path in paths:
        old = Path(path).read_text(encoding="utf-8")
        new = fill_generated(old)
        if new != old:
            tmp = Path(path + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            os.replace(tmp, path)
            changed.append(path)
    return changed
