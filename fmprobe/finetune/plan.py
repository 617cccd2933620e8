"""A fine-tune's plan: the tasks, the test split, each task's training pool and test rows, and
the work units (one per task, label count and seed). The split, the pools and the nested
subsets are the sweep's own (``fmprobe.sweep``), drawn on the dataset's table: a sweep over a
store embedded from the same ``--data`` trains its probes on exactly the same rows."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import torch

from fmprobe.data import Dataset
from fmprobe.finetune.config import FinetuneConfig
from fmprobe.store import FeatureStore
from fmprobe.sweep.plan import Unit
from fmprobe.sweep.splits import Split, sweep_split
from fmprobe.sweep.subsets import nested_orders
from fmprobe.sweep.tasks import Task, load_tasks
from fmprobe.sweep.units import prepare_pool


@dataclass(frozen=True)
class FinetuneUnit(Unit):
    """One work unit: one task, label count and seed (``seeds`` holds the one seed)."""

    n: int = 0

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def name(self) -> str:
        """The unit's file name in ``<out>.parts/`` and ``<out>.predictions/`` (a digest of
        what it is, never a sweep unit's name)."""
        text = (
            f"finetune|{self.feature}|{self.task}|{self.probe}|{self.sampler}|{self.n}|{self.seed}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TaskPool:
    """A task's training pool and test rows (dataset rows with a label and a readable image).

    Attributes
    ----------
    task : Task
    pool, test : ndarray
        Dataset rows of the training pool and of the test set.
    y_pool, y_test : ndarray
        Their class codes.
    """

    task: Task
    pool: np.ndarray
    test: np.ndarray
    y_pool: np.ndarray
    y_test: np.ndarray

    def label_counts(self, ns: tuple[int | str, ...]) -> list[int]:
        """The plan's label counts for this pool (``all`` = the pool), each once, in order."""
        return list(dict.fromkeys(len(self.pool) if n == "all" else int(n) for n in ns))

    def subset(self, n: int, seed: int, ns: tuple[int | str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The dataset rows and class codes of the (n, seed) training subset: the first n of
        seed's nested, stratified ordering of the pool (``fmprobe.sweep.subsets``)."""
        n_max = min(len(self.pool), max(self.label_counts(ns)))
        order = nested_orders(self.y_pool, [seed], n_max)[seed][:n]
        return self.pool[order], self.y_pool[order]


class _Samples:
    """A dataset's table where ``load_tasks`` reads a store's samples (the same table: embed
    writes the dataset's table into the store)."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.table = table

    def samples(self) -> pd.DataFrame:
        return self.table


def tasks_and_split(
    dataset: Dataset,
    *,
    tasks: Sequence[str],
    labels: str | None = None,
    split_col: str | None = None,
    test_frac: float = 0.25,
    group_col: str | None = None,
    split_seed: int = 0,
    test_where: str | None = None,
) -> tuple[list[Task], pd.DataFrame, Split]:
    """The tasks (label columns of the dataset or of ``labels``), the joined table and the one
    test split, as ``fmprobe sweep`` draws them on a store of this dataset (the options mean
    what they mean there).

    >>> from fmprobe.data import parse_data
    >>> tasks, table, split = tasks_and_split(parse_data("builtin:digits"), tasks=["label"])
    >>> tasks[0].n_classes, len(split.train) + len(split.test)
    (10, 1797)
    """
    store = cast(FeatureStore, _Samples(dataset.table))
    task_objs, table = load_tasks(store, list(tasks), labels=labels)
    split = sweep_split(
        table, stratify=task_objs[0].codes, split_col=split_col, test_frac=test_frac,
        group_col=group_col, split_seed=split_seed, test_where=test_where,
    )  # fmt: skip
    return task_objs, table, split


def config_split(dataset: Dataset, cfg: FinetuneConfig) -> tuple[list[Task], pd.DataFrame, Split]:
    """``tasks_and_split`` with a configuration's plan options."""
    return tasks_and_split(dataset, tasks=cfg.tasks, labels=cfg.labels, split_col=cfg.split_col,
                           test_frac=cfg.test_frac, group_col=cfg.group_col,
                           split_seed=cfg.split_seed, test_where=cfg.test_where)  # fmt: skip


def candidate_rows(tasks: list[Task]) -> np.ndarray:
    """Rows that some task labels: the only ones whose images are ever read."""
    return np.flatnonzero(np.any([t.codes >= 0 for t in tasks], axis=0))


def task_pools(tasks: list[Task], split: Split, unreadable: np.ndarray) -> dict[str, TaskPool]:
    """Each task's pool and test rows. An unreadable image has NaN features in a store, which
    the sweep's ``prepare_pool`` leaves out: it is given one here, so that the pools are the
    sweep's by construction."""
    marks = np.zeros((len(tasks[0].codes), 1), np.float32)
    marks[unreadable] = np.nan
    out = {}
    for t in tasks:
        d = prepare_pool(marks, t, split, l2_normalize=False, device=torch.device("cpu"))
        out[t.name] = TaskPool(task=t, pool=d.pool, test=d.test, y_pool=d.y_pool,
                               y_test=t.codes[d.test])  # fmt: skip
    return out


def plan_units(cfg: FinetuneConfig, pools: dict[str, TaskPool]) -> list[FinetuneUnit]:
    """Every unit of a fine-tune, in the order of its results table: tasks, label counts,
    seeds."""
    return [
        FinetuneUnit(cfg.feature, task, cfg.probe, cfg.sampler, (seed,), n)
        for task in cfg.tasks
        for n in pools[task].label_counts(cfg.n)
        for seed in range(cfg.seeds)
    ]
