"""The plan: a sweep cut into work units (one feature, task, probe and sampler, a block of
seeds), each the unit of resume, of sharding and of scheduling."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fmprobe.sweep.config import RANDOM_SAMPLER, SweepConfig
from fmprobe.sweep.tasks import Task


@dataclass(frozen=True)
class Unit:
    """One work unit: one label count ``n`` (an int, or ``"all"``) for the seeds ``seeds``.

    A unit is small (at most ``seeds_per_unit`` probes of one size), so an interrupted sweep
    loses little; its rows are one part file in ``<out>.parts/``.
    """

    feature: str
    task: str
    probe: str
    sampler: str
    seeds: tuple[int, ...]
    n: int | str

    @property
    def name(self) -> str:
        """The unit's name in ``<out>.parts/`` (a digest of what it is)."""
        seeds = f"{self.seeds[0]}-{self.seeds[-1]}"
        text = f"{self.feature}|{self.task}|{self.probe}|{self.sampler}|{seeds}|n={self.n}"
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def plan_units(cfg: SweepConfig, *, seeds_per_unit: int) -> list[Unit]:
    """Every unit of a sweep, in the order of its results table: features, tasks, probes,
    samplers, blocks of seeds, label counts."""
    seeds = list(range(cfg.seeds))
    blocks = [tuple(seeds[i : i + seeds_per_unit]) for i in range(0, len(seeds), seeds_per_unit)]
    return [
        Unit(f, t, p, s, b, n)
        for f in cfg.features
        for t in cfg.tasks
        for p in cfg.probes
        for s in cfg.samplers
        for b in blocks
        for n in cfg.n
    ]


def unit_probes(cfg: SweepConfig, unit: Unit) -> int:
    """The result rows of a unit: its seeds × probe variants (one per kNN k)."""
    return len(unit.seeds) * (len(cfg.knn_k) if unit.probe == "knn" else 1)


def label_counts(cfg: SweepConfig, pool_size: int) -> list[int]:
    """The plan's label counts for a pool (``all`` = the pool), each once, in plan order."""
    return list(dict.fromkeys(pool_size if n == "all" else int(n) for n in cfg.n))


def unit_label_count(cfg: SweepConfig, unit: Unit, pool_size: int) -> int | None:
    """The unit's label count on a pool of ``pool_size`` rows; None when an earlier label count
    of the plan is the same number (``all`` equal to a listed n): that unit has no rows."""
    value = pool_size if unit.n == "all" else int(unit.n)
    first = next(m for m in cfg.n if (pool_size if m == "all" else int(m)) == value)
    return value if first == unit.n else None


def n_status(n: int, pool_size: int, task: Task, sampler: str) -> str:
    """``ok``, or why (n, seed) problems of this label count are not fitted."""
    if n > pool_size:
        return "n_exceeds_pool"
    if n < task.n_classes and sampler == RANDOM_SAMPLER:
        # (a cold-start sampler's budget may be below the class count: it is fitted on the
        # classes it happens to pick, as an annotator's first labels would be)
        return "n_below_classes"
    return "ok"
