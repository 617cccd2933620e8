"""``--model`` strings parsed in one place: preset names (``fmprobe.encoders.zoo``) and
``<source>:<name>`` specs, into a frozen ``ModelSpec``."""

from __future__ import annotations

from fmprobe.encoders.spec import SOURCES, ModelSpec
from fmprobe.encoders.zoo import PRESETS, find_preset
from fmprobe.errors import ModelError, did_you_mean


def parse_model_name(spec: str) -> ModelSpec:
    """Parse a preset name (``uni``, ``virchow2``, …: ``fmprobe models --zoo``),
    ``timm:<name>`` / ``timm:hf-hub:<org>/<repo>``, ``open_clip:<arch>[/<tag or
    hf-hub:org/repo>]`` or ``hf:<repo>``.

    Examples
    --------
    >>> parse_model_name("virchow2")
    ModelSpec(source='timm', name='hf-hub:paige-ai/Virchow2', pretrained=None, preset='virchow2')
    >>> parse_model_name("timm:hf-hub:MahmoodLab/UNI").key
    'timm-hf-hub_MahmoodLab_UNI'
    >>> parse_model_name("timm:vit_small_patch16_224.augreg_in21k").name
    'vit_small_patch16_224.augreg_in21k'
    >>> parse_model_name("open_clip:ViT-B-32/laion2b_s34b_b79k").pretrained
    'laion2b_s34b_b79k'
    >>> parse_model_name("open_clip:hf-hub:org/repo").name
    'hf-hub:org/repo'
    """
    source, sep, rest = spec.partition(":")
    if not sep:
        preset = find_preset(spec)
        if preset is not None:
            return preset.spec
        raise ModelError(
            f"--model {spec!r} is not a preset and has no source prefix"
            f"{did_you_mean(spec.lower(), [p.name for p in PRESETS])}: give a preset name "
            f"(`fmprobe models --zoo`) or one of {', '.join(s + ':<name>' for s in SOURCES)}, "
            "e.g. timm:vit_small_patch16_224"
        )
    if not rest:
        raise ModelError(
            f"--model {spec!r} has no source prefix: expected one of "
            f"{', '.join(s + ':<name>' for s in SOURCES)}, e.g. timm:vit_small_patch16_224"
        )
    if source not in SOURCES:
        raise ModelError(
            f"--model {spec!r}: unknown source {source!r}; valid sources are {', '.join(SOURCES)}"
        )
    if source == "open_clip":
        if rest.startswith("hf-hub:"):
            return ModelSpec(source, rest, None)
        arch, _, pretrained = rest.partition("/")
        if not arch:
            raise ModelError(f"--model {spec!r}: missing the open_clip architecture name")
        return ModelSpec(source, arch, pretrained or None)
    return ModelSpec(source, rest, None)
