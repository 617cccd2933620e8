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
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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
    """Where a sweep's parts are, and which inputs they must come from."""

    parts: Path
    predictions: Path
    inputs: tuple[tuple[str, str, str], ...]

    def part_name(self, unit: Unit) -> str:
        return part_name(unit, self.inputs)

    def done(self, unit: Unit, *, predictions: bool) -> bool:
        name = self.part_name(unit)
        if not (self.parts / f"{name}.parquet").exists():
            return False
        return not predictions or (self.predictions / f"{name}.parquet").exists()

    def stale(self, unit: Unit) -> bool:
        """A part of this unit exists, computed from other inputs."""
        current = self.part_name(unit)
        return any(p.stem != current for p in self.parts.glob(f"{unit.name}-*.parquet"))

    def remove_stale(self, units: Sequence[Unit]) -> int:
        """Delete every part and prediction file that is not one of ``units``' current parts
        (other inputs, or units no longer planned); returns how many were removed."""
        keep = {f"{self.part_name(u)}.parquet" for u in units}
        removed = 0
        for folder in (self.parts, self.predictions):
            for p in folder.glob("*.parquet") if folder.is_dir() else []:
                if p.name not in keep and not p.name.startswith("test-"):
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed


def part_name(unit: Unit, inputs: Sequence[tuple[str, str, str]]) -> str:
    """``<unit name>-<inputs digest>``: the part of ``unit`` computed from these inputs."""
    digest = next(d for f, t, d in inputs if f == unit.feature and t == unit.task)
    return f"{unit.name}-{digest}"


def open_ledger(
    out: Path, cfg: SweepConfig, inputs: tuple[tuple[str, str, str], ...], *, overwrite: bool,
    predictions: bool, write: bool = True,
) -> Ledger:  # fmt: skip
    """``<out>.parts/`` for ``cfg``: a ledger of a sweep with other settings is refused unless
    ``overwrite``, which discards every part and prediction first. ``write=False`` (a dry
    run) checks and changes nothing on disk."""
    parts = out.with_name(out.name + ".parts")
    preds = out.with_name(out.name + ".predictions")
    meta_path = parts / CONFIG_FILE
    if overwrite and write:
        for folder in (parts, preds):
            shutil.rmtree(folder, ignore_errors=True)
    elif meta_path.exists() and not overwrite:
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("digest") != cfg.digest():
            raise UsageError(
                f"{out} holds results of a sweep with other settings; pass a new --out, or "
                "--overwrite to start again"
            )
    if not write:
        return Ledger(parts=parts, predictions=preds, inputs=inputs)
    parts.mkdir(parents=True, exist_ok=True)
    if predictions:
        preds.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"digest": cfg.digest(), "config": asdict(cfg)}, indent=2, default=str)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(text)
    return Ledger(parts=parts, predictions=preds, inputs=inputs)
