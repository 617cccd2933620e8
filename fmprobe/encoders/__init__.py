"""Frozen image encoders: one factory (``create_encoder``), one lister (``list_encoders``).

``--model`` strings are parsed by ``parse_model_name``: a preset of the field by name
(``fmprobe.encoders.zoo``: ``uni``, ``virchow2``, ``rad-dino``, …) or a source-prefixed name.
Each source has a backend with the same interface
(``Encoder.forward(x, layers, attn=..., embedding=...) -> EncoderOutput``).
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from fmprobe.encoders.base import Encoder, EncoderOutput, WeightsInfo
from fmprobe.encoders.layers import resolve_layers
from fmprobe.encoders.names import parse_model_name
from fmprobe.encoders.pooling import POOLS, pool_tokens, published_embedding
from fmprobe.encoders.spec import SOURCES, ModelSpec

if TYPE_CHECKING:
    from fmprobe.encoders.zoo import (
        EmbeddingRecipe,
        Preprocess,
        Preset,
        get_preset,
        list_presets,
        presets_table,
    )

# The registry imports timm (its presets hold timm's layer classes): loaded on first use, so
# that importing fmprobe.encoders (fmprobe.embed, the sweep) stays light.
_ZOO = ("EmbeddingRecipe", "Preprocess", "Preset", "get_preset", "list_presets", "presets_table")


def __getattr__(name: str) -> Any:
    if name in _ZOO:
        from fmprobe.encoders import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'fmprobe.encoders' has no attribute {name!r}")


__all__ = [
    "POOLS",
    "SOURCES",
    "EmbeddingRecipe",
    "Encoder",
    "EncoderOutput",
    "ModelSpec",
    "Preprocess",
    "Preset",
    "WeightsInfo",
    "create_encoder",
    "get_preset",
    "list_encoders",
    "list_presets",
    "parse_model_name",
    "pool_tokens",
    "presets_table",
    "published_embedding",
    "resolve_layers",
]


def create_encoder(
    model: str | ModelSpec,
    *,
    weights: str | None = None,
    random_init: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> Encoder:
    """Build a frozen encoder from a ``--model`` string.

    Parameters
    ----------
    model : str or ModelSpec
        A preset name (``uni``, ``virchow2``, …: ``list_presets``), ``timm:<name>`` /
        ``timm:hf-hub:<org>/<repo>``, ``open_clip:<arch>[/<pretrained>]`` or
        ``hf:<repo or local dir>``.
    weights : path, optional
        A local checkpoint (safetensors, or a state dict loadable with ``weights_only=True``).
    random_init : bool
        Build the architecture without pretrained weights (seeded, so identical everywhere).
    model_kwargs : dict, optional
        Passed to the library's factory (e.g. ``{"img_size": 64}`` for timm), over a preset's.

    Examples
    --------
    >>> enc = create_encoder("timm:vit_tiny_patch16_224", random_init=True,
    ...                      model_kwargs={"img_size": 32, "depth": 4})  # doctest: +SKIP
    >>> enc.resolve_layers(None)  # doctest: +SKIP
    (0, 1, 2, 3)
    >>> uni = create_encoder("uni", random_init=True)  # doctest: +SKIP
    >>> uni.embedding_recipe.width  # doctest: +SKIP
    1024
    """
    from fmprobe.encoders.conch_backend import ConchEncoder
    from fmprobe.encoders.hf_backend import HFEncoder
    from fmprobe.encoders.open_clip_backend import OpenClipEncoder
    from fmprobe.encoders.timm_backend import TimmEncoder

    spec = model if isinstance(model, ModelSpec) else parse_model_name(model)
    backends: dict[str, type[TimmEncoder | OpenClipEncoder | HFEncoder | ConchEncoder]] = {
        "timm": TimmEncoder,
        "open_clip": OpenClipEncoder,
        "hf": HFEncoder,
        "conch": ConchEncoder,
    }
    backend = backends[spec.source]
    return backend(spec, weights=weights, random_init=random_init, model_kwargs=model_kwargs)


def list_encoders(filter: str = "", *, source: str | None = None) -> list[str]:
    """List ``--model`` names known offline, filtered by an fnmatch pattern: the presets
    (``source="zoo"``), then timm's and open_clip's names.

    >>> list_encoders("uni*", source="zoo")
    ['uni', 'uni2-h']
    >>> "timm:vit_small_patch16_224" in list_encoders("timm:vit_small*")  # doctest: +SKIP
    True
    """
    from fmprobe.encoders.zoo import PRESETS

    names: list[str] = []
    if source in (None, "zoo"):
        names += [p.name for p in PRESETS]
    if source in (None, "timm"):
        import timm

        names += [f"timm:{n}" for n in timm.list_models()]
    if source in (None, "open_clip"):
        import open_clip

        names += [f"open_clip:{a}/{t}" for a, t in open_clip.list_pretrained()]
    return [n for n in names if not filter or fnmatch.fnmatch(n, filter)]
