"""``fmprobe finetune --engine ray``: the plan's work units as Ray tasks, one GPU each when the
cluster has GPUs (else one CPU).

Each unit's part is written atomically by the worker that ran it, so a worker or driver killed
mid-run loses only the units in flight; Ray retries a task whose worker died, and a rerun (with
either engine) skips every unit already on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

from fmprobe.errors import FmprobeError
from fmprobe.finetune.plan import FinetuneUnit
from fmprobe.finetune.units import FinetuneJob, execute_units
from fmprobe.parallel import ray_session


def _groups(units: Sequence[FinetuneUnit], max_units: int) -> list[list[FinetuneUnit]]:
    out: list[list[FinetuneUnit]] = []
    for _, grp in groupby(units, key=lambda u: u.task):
        g = list(grp)
        out += [g[i : i + max_units] for i in range(0, len(g), max_units)]
    return out


def _run_group(job: FinetuneJob, units: list[FinetuneUnit]) -> int:
    return execute_units(job, units)


def run_on_ray(
    job: FinetuneJob,
    units: Sequence[FinetuneUnit],
    *,
    address: str | None = None,
    progress: Callable[[int], Any] | None = None,
    max_units_per_task: int = 2,
    num_cpus: int | None = None,
) -> int:
    """Run ``units`` on a Ray cluster (``address``: an existing cluster, e.g. ``auto``; None
    starts a local one). Returns the number of models trained."""
    if not units:
        return 0
    with ray_session(address, num_cpus=num_cpus) as ray:
        gpus = ray.cluster_resources().get("GPU", 0)
        device = job.device
        if gpus:
            device = "cuda"
        elif device.startswith("cuda"):
            device = "cpu"  # the driver's GPU is not the workers'
        job = dataclasses.replace(job, device=device)
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_retries=3)(
            _run_group
        )
        pending = {remote.remote(job, g): g for g in _groups(units, max_units_per_task)}
        trained = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            g = pending.pop(done[0])
            try:
                trained += int(ray.get(done[0]))
            except ray.exceptions.RayError as exc:
                raise FmprobeError(
                    f"a Ray task failed ({type(exc).__name__}); finished units are kept, rerun "
                    "the same command to resume"
                ) from exc
            if progress is not None:
                progress(len(g))
        return trained
