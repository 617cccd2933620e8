"""What the engines that spread work over processes share: connecting to Ray, and the
fault-injection hook of the tests that kill workers mid-run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fmprobe.errors import FmprobeError, UsageError


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


def run_groups_on_ray(
    job: Any,
    groups: Sequence[Sequence[Any]],
    run: Callable[[Any, list[Any]], int],
    *,
    address: str | None,
    progress: Callable[[int], Any] | None = None,
    weight: Callable[[Sequence[Any]], int] = len,
    num_cpus: int | None = None,
) -> int:
    """Run each group of work units as one Ray task, ``run(job, group)``, and sum what they
    return. A task takes one GPU when the cluster has GPUs (``job.device`` becomes ``cuda``),
    else one CPU (a CUDA device of the driver becomes ``cpu``: it is not the workers'); Ray
    retries a task whose worker died; a task that fails for good is one line (finished units
    are kept). ``job`` is a dataclass with a ``device`` field; ``progress`` gets
    ``weight(group)`` for each finished group."""
    import dataclasses

    if not groups:
        return 0
    with ray_session(address, num_cpus=num_cpus) as ray:
        gpus = ray.cluster_resources().get("GPU", 0)
        device = "cuda" if gpus else ("cpu" if job.device.startswith("cuda") else job.device)
        job = dataclasses.replace(job, device=device)
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_retries=3)(
            run
        )
        pending = {remote.remote(job, list(g)): g for g in groups}
        total = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            g = pending.pop(done[0])
            try:
                total += int(ray.get(done[0]))
            except ray.exceptions.RayError as exc:
                raise FmprobeError(
                    f"a Ray task failed ({type(exc).__name__}); finished units are kept, rerun "
                    "the same command to resume"
                ) from exc
            if progress is not None:
                progress(weight(g))
        return total
