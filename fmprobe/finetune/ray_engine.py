"""``fmprobe finetune --engine ray``: the plan's work units as Ray tasks, one GPU each when the
cluster has GPUs (else one CPU).

Each unit's part is written atomically by the worker that ran it, so a worker or driver killed
mid-run loses only the units in flight; Ray retries a task whose worker died, and a rerun (with
either engine) skips every unit already on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

from fmprobe.finetune.plan import FinetuneUnit
from fmprobe.finetune.units import FinetuneJob, execute_units
from fmprobe.parallel import run_groups_on_ray


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
    return run_groups_on_ray(
        job, _groups(units, max_units_per_task), _run_group, address=address, progress=progress,
        weight=lambda g: len(g), num_cpus=num_cpus,
    )  # fmt: skip
