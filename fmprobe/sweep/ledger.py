"""The resume ledger of a sweep: ``<out>.parts/``, one Parquet part per finished unit.

A part's name is the unit's name and the identity of what it read: the feature's content
identity (a generation written with it, or a digest of its bytes), the task's class codes and
the test split. So a unit is reused only while its inputs are those it was computed from: a
re-embedded or re-imported feature, changed labels or another split make exactly the units
that read them run again, and their old parts are removed once the sweep is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fmprobe import storage
from fmprobe.errors import UsageError
from fmprobe.store import FeatureStore
from fmprobe.sweep.config import SweepConfig
from fmprobe.sweep.plan import Unit
from fmprobe.sweep.splits import Split
from fmprobe.sweep.tasks import Task
from fmprobe.tables import atomic_path

CONFIG_FILE = "config.json"


def feature_identity(fs: FeatureStore, feature: str) -> str:
    """The content identity of a feature of the sweep (an attention probe's feature is its
    model's token arrays)."""
    if feature.endswith("/attnpool"):
        model, blocks, _ = feature.split("/")
        return "+".join(fs.feature_identity(f"{model}/{b}/tokens") for b in blocks.split("+"))
    return fs.feature_identity(feature)


def input_identities(
    fs: FeatureStore, cfg: SweepConfig, tasks: Sequence[Task], split: Split
) -> tuple[tuple[str, str, str], ...]:
    """(feature, task, digest) for every feature and task of the plan: the digest of the
    feature's identity, the task's class codes and the split's rows."""
    split_digest = hashlib.sha256()
    split_digest.update(np.ascontiguousarray(split.train, dtype=np.int64).tobytes() + b"|")
    split_digest.update(np.ascontiguousarray(split.test, dtype=np.int64).tobytes())
    by_task = {}
    for t in tasks:
        h = hashlib.sha256(t.name.encode() + b"|")
        h.update(np.ascontiguousarray(t.codes, dtype=np.int64).tobytes())
        h.update(split_digest.digest())
        by_task[t.name] = h.digest()
    out = []
    for feature in cfg.features:
        fid = feature_identity(fs, feature).encode()
        for name in cfg.tasks:
            out.append((feature, name, hashlib.sha256(fid + by_task[name]).hexdigest()[:12]))
    return tuple(out)


@dataclass(frozen=True)
class Ledger:
    """Where a sweep's parts are (a folder or a URL prefix), the parts and predictions that
    were there when it was opened, and which inputs the parts must come from."""

    parts: str
    predictions: str
    inputs: tuple[tuple[str, str, str], ...]
    present: frozenset[str] = frozenset()  # names in ``parts`` when the ledger was opened
    present_predictions: frozenset[str] = frozenset()

    def part_name(self, unit: Unit) -> str:
        return part_name(unit, self.inputs)

    def part_path(self, unit: Unit) -> str:
        return storage.join(self.parts, f"{self.part_name(unit)}.parquet")

    def done(self, unit: Unit, *, predictions: bool) -> bool:
        """Whether the unit's current part was there (and its predictions, when kept)."""
        name = f"{self.part_name(unit)}.parquet"
        return name in self.present and (not predictions or name in self.present_predictions)

    def stale(self, unit: Unit) -> bool:
        """A part of this unit was there, computed from other inputs."""
        current = f"{self.part_name(unit)}.parquet"
        return any(n.startswith(f"{unit.name}-") and n != current for n in self.present)

    def remove_stale(self, units: Sequence[Unit]) -> int:
        """Delete every part and prediction file that is not one of ``units``' current parts
        (other inputs, or units no longer planned); returns how many were removed."""
        keep = {f"{self.part_name(u)}.parquet" for u in units}
        removed = 0
        for folder in (self.parts, self.predictions):
            for name in storage.listdir(folder):
                if name.endswith(".parquet") and name not in keep and not name.startswith("test-"):
                    storage.remove(storage.join(folder, name))
                    removed += 1
        return removed


def part_name(unit: Unit, inputs: Sequence[tuple[str, str, str]]) -> str:
    """``<unit name>-<inputs digest>``: the part of ``unit`` computed from these inputs."""
    digest = next(d for f, t, d in inputs if f == unit.feature and t == unit.task)
    return f"{unit.name}-{digest}"


def open_ledger(
    out: str, cfg: SweepConfig, inputs: tuple[tuple[str, str, str], ...], *, overwrite: bool,
    predictions: bool, write: bool = True,
) -> Ledger:  # fmt: skip
    """``<out>.parts/`` for ``cfg`` (``out`` a path or a URL): a ledger of a sweep with other
    settings is refused unless ``overwrite``, which discards every part and prediction first.
    ``write=False`` (a dry run) checks and changes nothing."""
    parts, preds = storage.sibling(out, ".parts"), storage.sibling(out, ".predictions")
    meta_path = storage.join(parts, CONFIG_FILE)
    if overwrite and write:
        for folder in (parts, preds):
            storage.remove_tree(folder)
    elif not overwrite and storage.exists(meta_path):
        try:
            old = json.loads(storage.read_text(meta_path))
        except (OSError, ValueError):
            old = {}
        if old.get("digest") != cfg.digest():
            raise UsageError(
                f"{out} holds results of a sweep with other settings; pass a new --out, or "
                "--overwrite to start again"
            )
    present = frozenset() if overwrite else frozenset(storage.listdir(parts))
    kept = frozenset() if overwrite else frozenset(storage.listdir(preds))
    ledger = Ledger(parts=parts, predictions=preds, inputs=inputs, present=present,
                    present_predictions=kept)  # fmt: skip
    if not write:
        return ledger
    storage.makedirs(parts)
    if predictions:
        storage.makedirs(preds)
    text = json.dumps({"digest": cfg.digest(), "config": asdict(cfg)}, indent=2, default=str)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(text)
    return ledger
