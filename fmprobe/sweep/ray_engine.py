"""``fmprobe sweep --engine ray``: the plan's work units as Ray tasks.

Units that share a feature and task go to one task (the feature is read and put on the device
once per task). Each unit's part is written atomically by the worker that ran it, so a worker
or driver killed mid-run loses only the units in flight; Ray retries a task whose worker died,
and a rerun (with either engine) skips every unit already on disk. A task asks for one GPU when
the cluster has GPUs, else one CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

from fmprobe.parallel import run_groups_on_ray
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
    return run_groups_on_ray(
        job, _groups(units, max_units_per_task), _run_group, address=address, progress=progress,
        weight=lambda g: sum(unit_probes(job.cfg, u) for u in g), num_cpus=num_cpus,
    )  # fmt: skip
