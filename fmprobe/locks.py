"""One writer at a time: advisory locks (POSIX ``flock``) on lock files beside what is written.

A run that writes a store's model group or a sweep's ``--out`` holds an exclusive lock for its
whole duration; shards of one job hold a shared lock on the whole plus an exclusive lock on
their own part, so they run at once while a second full run (or an ``--overwrite``) is
refused. The kernel releases a lock when its process dies, so a killed run never leaves one
stuck. Paths that are URLs (object storage) are not locked here: their writers commit with
atomic single-object writes instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from fmprobe.errors import UsageError


def lock_dir(target: str | Path) -> Path | None:
    """``<target>.locks/`` beside a local path; None for a URL."""
    text = str(target)
    if "://" in text and not text.startswith("file://"):
        return None
    text = text.removeprefix("file://")
    return Path(os.path.abspath(text.rstrip("/")) + ".locks")


@contextlib.contextmanager
def hold(path: Path | None, *, what: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock ``path`` (shared or exclusive) or refuse at once with one line naming
    ``what`` and the process holding it. ``path`` None (a URL) holds nothing."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _live_holder(os.pread(fd, 200, 0).decode(errors="replace").strip())
            by = f" ({holder})" if holder else ""
            raise UsageError(
                f"another fmprobe process{by} is writing {what}; wait for it to finish, or stop "
                "it and rerun (finished work is kept)"
            ) from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:3])}".encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)  # still held: the next holder finds no stale name
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _live_holder(text: str) -> str:
    """The holder's note, if its process is still alive (a killed one leaves its note)."""
    if not text.startswith("pid "):
        return ""
    try:
        os.kill(int(text.split()[1].rstrip(":")), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return ""
    except PermissionError:
        pass
    return text


@contextlib.contextmanager
def writer(
    target: str | Path, name: str, *, what: str, shard: tuple[int, int] = (0, 1)
) -> Iterator[None]:
    """The lock of one writer of ``name`` under ``target``: exclusive for a whole run, shared
    plus an exclusive lock of its own for shard I of N."""
    folder = lock_dir(target)
    whole = folder / f"{name}.lock" if folder else None
    i, n = shard
    if n == 1:
        with hold(whole, what=what):
            yield
        return
    own = folder / f"{name}.shard-{i}-of-{n}.lock" if folder else None
    with hold(whole, what=what, shared=True), hold(own, what=f"shard {i}/{n} of {what}"):
        yield
