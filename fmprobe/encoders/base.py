"""What every encoder backend provides: layer outputs as tokens, and where attention comes from."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fmprobe.encoders.spec import ModelSpec
from fmprobe.errors import ModelError

LayersLike = str | int | Sequence[int | str] | None


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
    """

    patch: list[torch.Tensor]
    cls: list[torch.Tensor | None]
    attn: torch.Tensor | None = None


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
    dict), ``weights``, ``num_layers``, ``cls_source`` and ``attn_source``.
    """

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
    def forward(self, x: torch.Tensor, layers: Sequence[int], *, attn: bool) -> EncoderOutput:
        """Run a preprocessed batch ``x`` (B, 3, H, W) and return tokens of ``layers``."""

    def resolve_layers(self, layers: LayersLike) -> tuple[int, ...]:
        return resolve_layers(layers, self.num_layers)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec.text,
            "source": self.spec.source,
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


def default_layers(num_layers: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending at the last: 12 blocks → (2, 5, 8, 11)."""
    step = max(1, num_layers // 4)
    return tuple(sorted({max(0, num_layers - 1 - k * step) for k in range(4)}))


def resolve_layers(layers: LayersLike, num_layers: int) -> tuple[int, ...]:
    """Resolve ``--layers`` (``"2,5,8,11"``, negative indices, ``"last"``, None) to sorted
    absolute block indices.

    >>> resolve_layers("2,-1,last", 12)
    (2, 11)
    >>> resolve_layers(None, 12)
    (2, 5, 8, 11)
    """
    if layers is None or layers == "" or layers == "default":
        return default_layers(num_layers)
    items: Sequence[int | str]
    if isinstance(layers, str):
        items = [s.strip() for s in layers.split(",") if s.strip()]
    elif isinstance(layers, int):
        items = [layers]
    else:
        items = list(layers)
    out = set()
    for item in items:
        if item == "last":
            idx = num_layers - 1
        else:
            try:
                idx = int(item)
            except ValueError:
                raise ModelError(
                    f"--layers: {item!r} is not a block index; use integers such as 2,5,8,11, "
                    "negative indices such as -1, or 'last'"
                ) from None
        if not -num_layers <= idx < num_layers:
            raise ModelError(
                f"--layers: block {idx} does not exist; this model has {num_layers} blocks "
                f"(valid: 0..{num_layers - 1} or -{num_layers}..-1)"
            )
        out.add(idx % num_layers)
    return tuple(sorted(out))


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
    for wrapper in ("state_dict", "model", "model_state", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(
            f"--weights {str(path)!r} does not hold a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path) or safetensors"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(
    module: torch.nn.Module, path: str | Path, *, required_prefix: str = ""
) -> WeightsInfo:
    """Load ``path`` into ``module``; every parameter under ``required_prefix`` must be present.

    Keys the module does not have (a classifier head, a text tower) are ignored; a missing
    required key is an error naming it, since a half-loaded encoder gives meaningless features.
    """
    state = read_state_dict(path)
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k.startswith(required_prefix) and k not in state]
    if not matched or missing:
        sample = ", ".join(missing[:3]) if missing else "no key matched"
        raise ModelError(
            f"--weights {str(path)!r} does not fit this architecture: {len(missing)} required "
            f"parameters missing ({sample}); check --model names the architecture the "
            "checkpoint was trained with"
        )
    bad = [k for k, v in matched.items() if v.shape != own[k].shape]
    if bad:
        raise ModelError(
            f"--weights {str(path)!r}: shape mismatch for {bad[0]} "
            f"({tuple(state[bad[0]].shape)} in the file, {tuple(own[bad[0]].shape)} in the model)"
        )
    module.load_state_dict(matched, strict=False)
    return WeightsInfo("file", str(Path(path).resolve()), file_sha256(Path(path)))


def go_offline_if_unreachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Switch the Hugging Face Hub client to offline mode (cache only) when ``host`` cannot be
    reached, so a missing download fails in seconds instead of after a minute of retries.
    Returns True when offline."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
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
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"--model {spec.text}: its pretrained weights must be downloaded and the model hub is "
        f"not reachable ({first}); pass --weights PATH (a local safetensors or state dict) "
        "or --random-init"
    )
