"""What the engines that spread work over processes share: connecting to Ray, and the
fault-injection hook of the tests that kill workers mid-run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from fmprobe.errors import UsageError


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """``ray`` connected to ``address`` (None: a local cluster started here, of ``num_cpus``
    CPUs), shut down afterwards if it was started here. Yields the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--engine ray needs Ray: pip install 'fmprobe[ray]' (or use --engine local)"
        ) from None
    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                num_cpus=num_cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"--address {address!r}: cannot reach a Ray cluster ({exc})") from None
        started_here = True
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


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
