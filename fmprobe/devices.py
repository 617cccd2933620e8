"""``--device``: one parser for every stage."""

from __future__ import annotations

import torch

from fmprobe.errors import UsageError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when present, else the CPU; otherwise the named device,
    refused with one line when it does not exist here.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda was asked for but no CUDA device is visible; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"--device {device!r}: use cpu, cuda or cuda:N")
    return dev
