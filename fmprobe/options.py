"""Option values that several commands share, parsed in one place: comma lists and ``I/N``
shards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fmprobe.errors import UsageError


def split_list(value: str | Sequence[Any] | None) -> list[str]:
    """A comma list (``"a, b,,c"``) or a sequence as a list of non-empty strings.

    >>> split_list("block11/cls, block5/cls,")
    ['block11/cls', 'block5/cls']
    >>> split_list(None), split_list([1, 2])
    ([], ['1', '2'])
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"I/N"`` (0 ≤ I < N) → (I, N); None → (0, 1).

    >>> parse_shard("3/8"), parse_shard(None)
    ((3, 8), (0, 1))
    """
    if shard is None or shard == "":
        return 0, 1
    try:
        i_s, n_s = str(shard).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise UsageError(f"--shard {shard!r}: expected I/N, e.g. 0/8 (I from 0 to N-1)") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard {shard!r}: need 0 <= I < N, e.g. 0/8 … 7/8")
    return i, n


ENGINES = ("local", "ray")


def check_engine(engine: str) -> str:
    """``--engine``: ``local`` (this machine) or ``ray`` (a Ray cluster).

    >>> check_engine("ray")
    'ray'
    """
    if engine not in ENGINES:
        from fmprobe.errors import did_you_mean

        raise UsageError(
            f"--engine {engine!r}{did_you_mean(engine, ENGINES)}: one of {', '.join(ENGINES)}"
        )
    return engine
