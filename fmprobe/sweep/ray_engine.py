"""``fmprobe sweep --engine ray``: the plan's work units as Ray tasks.

Units that share a feature and task go to one task (the feature is read and put on the device
once per task). Each unit's part is written atomically by the worker that ran it, so a worker
or driver killed mid-run loses only the units in flight; Ray retries a task whose worker died,
and a rerun (with either engine) skips every unit already on disk. A task asks for one GPU when
the cluster has GPUs, else one CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

from fmprobe.errors import FmprobeError
from fmprobe.parallel import ray_session
from fmprobe.sweep.plan import Unit, unit_probes
from fmprobe.sweep.units import SweepJob, execute_units


def _groups(units: Sequence[Unit], max_units: int) -> list[list[Unit]]:
    out: list[list[Unit]] = []
    for _, grp in groupby(units, key=lambda u: (u.feature, u.task)):
        g = list(grp)
        out += [g[i : i + max_units] for i in range(0, len(g), max_units)]
    return out


def _run_group(job: SweepJob, units: list[Unit]) -> int:
    return execute_units(job, units)


def run_on_ray(
    job: SweepJob,
    units: Sequence[Unit],
    *,
    address: str | None = None,
    progress: Callable[[int], Any] | None = None,
    max_units_per_task: int = 4,
    num_cpus: int | None = None,
) -> int:
    """Run ``units`` on a Ray cluster (``address``: an existing cluster, e.g. ``ray://host:10001``
    or ``auto``; None starts a local one). Returns the number of probes fitted."""
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
        pending = {}
        for g in _groups(units, max_units_per_task):
            ref = remote.remote(job, g)
            pending[ref] = g
        fitted = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            g = pending.pop(ref)
            try:
                fitted += int(ray.get(ref))
            except ray.exceptions.RayError as exc:
                raise FmprobeError(
                    f"a Ray task failed ({type(exc).__name__}); finished units are kept, rerun "
                    "the same command to resume"
                ) from exc
            if progress is not None:
                progress(sum(unit_probes(job.cfg, u) for u in g))
        return fitted
