"""``--model`` strings parsed in one place into a frozen ``ModelSpec``."""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCES = ("timm", "open_clip", "hf")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` string.

    Attributes
    ----------
    source : {"timm", "open_clip", "hf"}
    name : str
        timm model name (with optional ``.tag``), open_clip architecture, or Hugging Face repo /
        local directory.
    pretrained : str or None
        open_clip's pretrained tag or ``hf-hub:org/repo``; None for the other sources.
    preset : str or None
        The preset this spec was resolved from (``uni``, ``virchow2``, …), which then decides
        the build, the preprocessing and the published embedding (``fmprobe.encoders.zoo``).
    """

    source: str
    name: str
    pretrained: str | None = None
    preset: str | None = None

    @property
    def text(self) -> str:
        """The canonical spec string, e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k`` or ``uni``."""
        if self.preset:
            return self.preset
        tail = f"/{self.pretrained}" if self.pretrained else ""
        return f"{self.source}:{self.name}{tail}"

    @property
    def key(self) -> str:
        """The model's group name in the feature store, e.g. ``timm-vit_small_patch16_224``;
        a preset's is its name (``uni``)."""
        if self.preset:
            return self.preset
        body = self.name.rstrip("/").split("/")[-1] if self.source == "hf" else self.name
        if self.source == "hf" and "/" in self.name and not self.name.startswith((".", "/")):
            body = self.name.replace("/", "_")
        if self.pretrained:
            body = f"{body}-{self.pretrained.replace('hf-hub:', '')}"
        return f"{self.source}-{_KEY_UNSAFE.sub('_', body)}"
