"""What every encoder backend provides: layer outputs as tokens, and where attention comes from."""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from fmprobe.encoders.layers import LayersLike, resolve_layers
from fmprobe.encoders.spec import ModelSpec
from fmprobe.errors import ModelError

if TYPE_CHECKING:
    from fmprobe.encoders.zoo import EmbeddingRecipe, Preset


@dataclass
class EncoderOutput:
    """Per requested layer, the tokens of one batch.

    Attributes
    ----------
    patch : list of Tensor, each (B, P, D)
        Patch tokens (for CNNs: the spatial positions of the stage's feature map).
    cls : list of Tensor (B, D) or None
        The class token per layer; None when the model has none (CNNs, MAP-head ViTs).
    attn : Tensor (B, P) or None
        Attention weights over the P patch positions (rows sum to 1), from the model's own
        attention pooling or its last block's class-token attention; None if it has neither.
    embedding : Tensor (B, width) or None
        The published embedding (``Encoder.embedding_recipe``), when asked for and the encoder
        has one (presets).
    """

    patch: list[torch.Tensor]
    cls: list[torch.Tensor | None]
    attn: torch.Tensor | None = None
    embedding: torch.Tensor | None = None


@dataclass(frozen=True)
class WeightsInfo:
    """The identity of the weights an encoder was built with (recorded in the store)."""

    kind: str  # "pretrained" | "file" | "random-init"
    source: str  # pretrained tag / repo, file path, or "seed=0"
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "sha256": self.sha256}


class Encoder(abc.ABC):
    """A frozen image encoder with multi-layer token outputs.

    Subclasses set ``spec``, ``model`` (eval mode), ``transform`` (PIL image → (3, H, W) float
    tensor, the model's own preprocessing), ``preprocess`` (that preprocessing as a JSON-able
    dict), ``weights``, ``num_layers``, ``cls_source``, ``attn_source`` and, for a preset,
    ``preset`` (its recipe, including the published embedding).
    """

    preset: Preset | None = None

    spec: ModelSpec
    model: Any  # the torch module; Any because backends reach into its parts
    transform: Callable[[Image.Image], torch.Tensor]
    preprocess: dict[str, Any]
    weights: WeightsInfo
    num_layers: int
    cls_source: str  # "class_token" or "global_average"
    attn_source: str | None  # e.g. "map_head", "last_block_cls_attention", "attnpool2d"
    extra: dict[str, Any]

    @abc.abstractmethod
    def forward(
        self, x: torch.Tensor, layers: Sequence[int], *, attn: bool, embedding: bool = False
    ) -> EncoderOutput:
        """Run a preprocessed batch ``x`` (B, 3, H, W) and return tokens of ``layers``; with
        ``embedding``, also the published embedding (B, width) of a preset."""

    @property
    def embedding_recipe(self) -> EmbeddingRecipe | None:
        """The vector the model's authors publish results with; None for non-presets."""
        return self.preset.embedding if self.preset is not None else None

    def resolve_layers(self, layers: LayersLike) -> tuple[int, ...]:
        if self.preset is not None and (layers is None or layers in ("", "default")):
            return tuple(i for i in self.preset.default_layers if i < self.num_layers)
        return resolve_layers(layers, self.num_layers)

    def describe(self) -> dict[str, Any]:
        preset = {}
        if self.preset is not None:
            p = self.preset
            preset = {
                "preset": p.name,
                "embedding": p.embedding.to_dict(),
                "published_weights": p.source_text,
                "license": p.license,
                "reference": p.reference,
                "recipe_from": p.recipe_from,
            }
        return {
            "spec": self.spec.text,
            "source": self.spec.source,
            **preset,
            "num_layers": self.num_layers,
            "cls_source": self.cls_source,
            "attn_source": self.attn_source,
            "weights": self.weights.to_dict(),
            "preprocess": self.preprocess,
            **self.extra,
        }

    def to(self, device: torch.device | str) -> Encoder:
        self.model.to(device)
        return self


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_weights_path(path: str | Path) -> Path:
    """``--weights`` as a Path; a one-line error when the file is not there."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"--weights {str(path)!r} does not exist; pass a local checkpoint file")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint: safetensors, or a torch file loadable with ``weights_only=True``.

    Wrappers such as ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.`` prefixes
    (DataParallel) are removed.
    """
    path = check_weights_path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as exc:
            raise ModelError(
                f"--weights {str(path)!r} is not a readable safetensors file: {exc}"
            ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"--weights {str(path)!r} cannot be loaded with weights_only=True ({first}); "
                "fmprobe never unpickles arbitrary objects: convert it to safetensors or a plain "
                "state dict"
            ) from None
    return as_state_dict(state, label=f"--weights {str(path)!r}")


def as_state_dict(state: Any, *, label: str) -> dict[str, torch.Tensor]:
    """A loaded checkpoint as a flat state dict: wrappers such as ``{"state_dict": ...}`` /
    ``{"model": ...}`` and ``module.`` prefixes (DataParallel) are removed."""
    for wrapper in ("state_dict", "model", "model_state", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(
            f"{label} does not hold a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path) or safetensors"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(
    module: torch.nn.Module,
    path: str | Path,
    *,
    required_prefix: str = "",
    strip_prefixes: Sequence[str] = (),
) -> WeightsInfo:
    """Load ``path`` into ``module``; every parameter under ``required_prefix`` must be present.

    Keys outside ``required_prefix`` and keys the module does not have (a classifier head, a
    text tower) are ignored; a key missing from the module may match once one of
    ``strip_prefixes`` is removed (a full CLIP/SigLIP checkpoint loaded into its image tower). A
    missing required key is an error naming it: a half-loaded encoder gives meaningless features.
    """
    load_state(module, read_state_dict(path), label=f"--weights {str(path)!r}",
               required_prefix=required_prefix, strip_prefixes=strip_prefixes)  # fmt: skip
    return WeightsInfo("file", str(Path(path).resolve()), file_sha256(Path(path)))


def load_state(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    label: str,
    required_prefix: str = "",
    strip_prefixes: Sequence[str] = (),
) -> None:
    """Load a state dict as ``load_weights`` does; errors start with ``label``."""
    own = module.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k not in own:
            k = next((k[len(p) :] for p in strip_prefixes if k.startswith(p)), k)
        renamed[k] = v
    matched = {k: v for k, v in renamed.items() if k in own and k.startswith(required_prefix)}
    missing = [k for k in own if k.startswith(required_prefix) and k not in renamed]
    if not matched or missing:
        sample = ", ".join(missing[:3]) if missing else "no key matched"
        raise ModelError(
            f"{label} does not fit this architecture: {len(missing)} required parameters "
            f"missing ({sample}); check --model names the architecture the checkpoint was "
            "trained with"
        )
    bad = [k for k, v in matched.items() if v.shape != own[k].shape]
    if bad:
        raise ModelError(
            f"{label}: shape mismatch for {bad[0]} ({tuple(renamed[bad[0]].shape)} in the "
            f"file, {tuple(own[bad[0]].shape)} in the model)"
        )
    module.load_state_dict(matched, strict=False)


def hub_offline() -> bool:
    """Whether the Hugging Face hub client is in offline mode (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def go_offline_if_unreachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Switch the Hugging Face Hub client to offline mode (cache only) when ``host`` cannot be
    reached, so a missing download fails in seconds instead of after a minute of retries.
    Returns True when offline."""
    import socket

    if hub_offline():
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return False
    except OSError:
        import huggingface_hub.constants as hub_constants

        os.environ["HF_HUB_OFFLINE"] = "1"
        hub_constants.HF_HUB_OFFLINE = True
        return True


def offline_error(spec: ModelSpec, exc: BaseException) -> ModelError:
    """The message for weights that would have to be downloaded while offline."""
    return ModelError(
        f"--model {spec.text}: its pretrained weights must be downloaded and the model hub is "
        f"not reachable ({first_line(exc)}); pass --weights PATH (a local safetensors or "
        "state dict) or --random-init"
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 160 characters), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (libraries wrap the hub's errors)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def hub_status(exc: BaseException) -> int | None:
    """The HTTP status of the hub error behind ``exc``, if any."""
    for e in _causes(exc):
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def hub_error(spec: ModelSpec, exc: BaseException, *, repo: str, offline: str) -> ModelError:
    """One line for a failed download from the Hugging Face hub: gated (HTTP 401/403, accept
    the terms and log in), no such repository, or unreachable (``offline`` says what to do)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    causes = _causes(exc)
    status = hub_status(exc)
    repo = repo.removeprefix("hf-hub:").removeprefix("hf_hub:")
    gated = any(isinstance(e, GatedRepoError) for e in causes)
    if not gated and any(isinstance(e, RepositoryNotFoundError) for e in causes):
        return ModelError(
            f"--model {spec.text}: the hub has no repository {repo!r}, or it is private "
            "(log in with `hf auth login` or set HF_TOKEN); check the name, or list the presets "
            "with `fmprobe models --zoo`"
        )
    if gated or status in (401, 403):
        return ModelError(
            f"--model {spec.text}: the hub refused the download of {repo} (HTTP "
            f"{status or 'gated'}: gated weights); accept the model's terms on "
            f"https://huggingface.co/{repo}, then log in (`hf auth login`) or set HF_TOKEN"
        )
    unreachable = (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
    if hub_offline() or any(isinstance(e, unreachable) for e in causes):
        return ModelError(
            f"--model {spec.text}: {repo} must be downloaded from the Hugging Face hub, which is "
            f"not reachable ({first_line(exc)}); {offline}"
        )
    return ModelError(
        f"--model {spec.text}: loading {repo} from the Hugging Face hub failed "
        f"({type(exc).__name__}: {first_line(exc)}); {offline}"
    )
