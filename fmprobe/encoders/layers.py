"""``--layers``: which blocks of an encoder to keep, resolved to absolute indices."""

from __future__ import annotations

from collections.abc import Sequence

from fmprobe.errors import ModelError

LayersLike = str | int | Sequence[int | str] | None


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
