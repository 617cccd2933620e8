"""Splitting work across processes: the ``--shard I/N`` parser shared by embed and sweep, and
the fault-injection hook of the tests that kill workers mid-run."""

from __future__ import annotations

import os

from fmprobe.errors import UsageError


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"I/N"`` (0 ≤ I < N) → (I, N); None → (0, 1)."""
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


def fault_hook_for_tests() -> None:
    """For the fault-tolerance tests only: ``FMPROBE_TEST_DIE_ONCE=<marker file>`` makes the
    first process that finishes a unit (or an embedding chunk) die at once, as kill -9 would,
    once."""
    marker = os.environ.get("FMPROBE_TEST_DIE_ONCE")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)
