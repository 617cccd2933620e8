"""Running fine-tune work units: for each (task, n, seed) a fresh copy of the model (LoRA
adapters, or every weight for ``full``, or a linear head on frozen features) trained on the
sweep's (n, seed) subset, scored on the test set, and its result row written atomically. Any
process may run any unit: the results do not depend on who runs what."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmprobe.data import parse_data
from fmprobe.devices import resolve_device
from fmprobe.encoders import Encoder, create_encoder
from fmprobe.finetune.adapt import (
    Classifier,
    Features,
    Head,
    add_lora,
    base_fingerprint,
    check_base_unchanged,
    find_readout,
    trainable_groups,
)
from fmprobe.finetune.config import FinetuneConfig
from fmprobe.finetune.images import FeatureSource, ImageSource
from fmprobe.finetune.plan import (
    FinetuneUnit,
    TaskPool,
    candidate_rows,
    config_split,
    task_pools,
)
from fmprobe.finetune.train import MicroBatch, Source, fit, predict, scores_of
from fmprobe.parallel import fault_hook_for_tests
from fmprobe.probes.batch import training_metrics
from fmprobe.probes.metrics import classification_metrics
from fmprobe.sweep.plan import n_status
from fmprobe.sweep.results import (
    Provenance,
    split_text,
    unit_frame,
    write_part,
    write_predictions,
)


@dataclass(frozen=True)
class FinetuneJob:
    """What any process (this one, a Ray task, an array-job shard) needs to run units.

    Attributes
    ----------
    data : str
        The ``--data`` spec.
    cfg : FinetuneConfig
    weights : str or None
        The ``--weights`` file.
    parts, predictions : str, str or None
        The ledger folder; the predictions folder (``--save-predictions``).
    device : str
    unreadable : tuple of int
        Dataset rows whose image cannot be read (left out of every pool and test set).
    cache_bytes : int
        Preprocessed images kept in memory per process.
    """

    data: str
    cfg: FinetuneConfig
    weights: str | None
    parts: str
    predictions: str | None
    device: str
    unreadable: tuple[int, ...] = ()
    cache_bytes: int = 1 << 30


def provenance(cfg: FinetuneConfig) -> Provenance:
    """The provenance columns of a fine-tune's rows (as ``Provenance.of`` gives a sweep's)."""
    split = split_text(test_where=cfg.test_where, split_col=cfg.split_col, test_frac=cfg.test_frac)
    return Provenance(split=split, group_col=cfg.group_col or "", split_seed=cfg.split_seed,
                      standardize=False, l2_normalize=False,
                      store_fingerprint=cfg.data_fingerprint)  # fmt: skip


def build_encoder(
    model: str, *, weights: str | None, random_init: bool, model_kwargs: dict[str, Any] | None,
    device: torch.device,
) -> Encoder:  # fmt: skip
    """The encoder of ``--model`` on ``device`` (through ``create_encoder``, presets included)."""
    encoder = create_encoder(model, weights=weights, random_init=random_init,
                             model_kwargs=model_kwargs)  # fmt: skip
    return encoder.to(device)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG (dropout, drop-path) seeded for one unit, restored afterwards."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None or not cuda else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.manual_seed(seed)
        yield


class FinetuneRunner:
    """Runs the units of one job, keeping its state between calls: the dataset, tasks, pools,
    the base encoder, the preprocessed images and (``linear``) the frozen features.
    ``encoder``: the configured encoder when the caller has built it already (on the job's
    device)."""

    def __init__(self, job: FinetuneJob, *, encoder: Encoder | None = None) -> None:
        self.job = job
        cfg = job.cfg
        self.dataset = parse_data(job.data)
        tasks, _, split = config_split(self.dataset, cfg)
        unreadable = np.zeros(len(self.dataset), bool)
        unreadable[list(job.unreadable)] = True
        self.readable = np.setdiff1d(candidate_rows(tasks), np.flatnonzero(unreadable))
        self.pools = task_pools(tasks, split, unreadable)
        self.dev = resolve_device(job.device)
        self.encoder = encoder or build_encoder(
            cfg.model, weights=job.weights, random_init=cfg.random_init,
            model_kwargs=json.loads(cfg.model_kwargs), device=self.dev,
        )  # fmt: skip
        self.readout = find_readout(self.encoder, self.dev)
        self.amp = cfg.amp and self.dev.type == "cuda"
        cnn = self.encoder.cls_source == "global_average"
        self.channels_last = self.dev.type == "cuda" and cnn
        if self.channels_last:
            self.encoder.model.to(memory_format=torch.channels_last)
        self.images = ImageSource(self.dataset, self.encoder.transform, device=self.dev,
                                  cache_bytes=job.cache_bytes,
                                  channels_last=self.channels_last)  # fmt: skip
        self.micro = MicroBatch(cfg.train.batch_size)
        self._features: FeatureSource | None = None

    def features(self) -> FeatureSource:
        """The frozen readout tokens of every readable row of the pools and test sets
        (``linear``), computed once per process."""
        if self._features is None:
            gen = torch.Generator().manual_seed(0)
            clf = Classifier(self.encoder, readout=self.readout, n_out=1, generator=gen).eval()
            self._features = FeatureSource(self.images, clf.features, rows=self.readable,
                                           amp=self.amp)  # fmt: skip
        return self._features

    def _model(self, unit: FinetuneUnit, n_out: int) -> tuple[torch.nn.Module, Source, list[Any]]:
        """A fresh model for the unit, its input source and AdamW's parameter groups."""
        cfg, tr = self.job.cfg, self.job.cfg.train
        gen = torch.Generator().manual_seed(unit.seed)
        if cfg.method == "linear":
            head = Head(self.readout.width, n_out, generator=gen).to(self.dev)
            groups = [{"params": list(head.parameters()), "lr": tr.head_lr, "base_lr": tr.head_lr}]
            return head, self.features(), groups
        encoder = copy.deepcopy(self.encoder)  # every unit starts from the base weights
        clf = Classifier(encoder, readout=self.readout, n_out=n_out, generator=gen).to(self.dev)
        if cfg.method == "lora":
            add_lora(clf.backbone, rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets,
                     seed=unit.seed)  # fmt: skip
        groups = trainable_groups(clf, method=cfg.method, lr=tr.lr, head_lr=tr.head_lr)
        return clf, self.images, groups

    def _set_scale(self, model: torch.nn.Module, source: Source, rows: np.ndarray) -> None:
        """The head's standardisation from the training rows' tokens under the initial model."""
        if isinstance(model, Head):
            model.set_scale(source.get(rows))
            return
        assert isinstance(model, Classifier)
        X = predict(Features(model), source, rows, micro=self.micro, device=self.dev, amp=self.amp)
        model.head.set_scale(X)

    def run_unit(self, unit: FinetuneUnit) -> dict[str, Any]:
        """Train and score one unit; its result row (``_scores``: the test-set scores)."""
        cfg = self.job.cfg
        tp: TaskPool = self.pools[unit.task]
        task = tp.task
        base = {"feature": unit.feature, "task": task.name, "probe": unit.probe,
                "sampler": unit.sampler, "n": unit.n, "seed": unit.seed,
                "n_test": len(tp.test), "n_classes": task.n_classes}  # fmt: skip
        status = n_status(unit.n, len(tp.pool), task, unit.sampler)
        if status != "ok":
            return {**base, "status": status}
        rows, y = tp.subset(unit.n, unit.seed, cfg.n)
        t0 = time.perf_counter()
        with _seeded(unit.seed, self.dev):
            model, source, groups = self._model(unit, 1 if task.n_classes == 2 else task.n_classes)
            self._set_scale(model, source, rows)
            lora = (
                model.backbone if isinstance(model, Classifier) and cfg.method == "lora" else None
            )
            before = base_fingerprint(lora) if lora is not None else ""
            fitted = fit(model, source, rows=rows, y=y, groups=groups, settings=cfg.train,
                         seed=unit.seed, device=self.dev, amp=self.amp,
                         train_mode=cfg.method == "full", micro=self.micro)  # fmt: skip
            if lora is not None:
                check_base_unchanged(before, lora)
            kw = dict(micro=self.micro, device=self.dev, amp=self.amp)
            test = scores_of(predict(model, source, tp.test, **kw))  # type: ignore[arg-type]
            own = scores_of(predict(model, source, rows, **kw))  # type: ignore[arg-type]
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        seconds = time.perf_counter() - t0
        y_test = torch.as_tensor(tp.y_test, device=test.device)
        met = classification_metrics(test[None].double(), y_test, n_classes=task.n_classes,
                                     threshold=0.0)  # fmt: skip
        trm = training_metrics(own[None].double(), torch.as_tensor(y[None], device=own.device),
                               n_fit=task.n_classes, probe="logreg", threshold=0.0)  # fmt: skip
        m = {k: float(v[0]) for k, v in met.items()}
        t = {k: float(v[0]) for k, v in trm.items()}
        return {
            **base, "status": "ok",
            "n_pos": int((y == 1).sum()) if task.n_classes == 2 else None,
            "auroc": m["auroc"], "auprc": m["auprc"], "balanced_accuracy": m["balanced_accuracy"],
            "train_auroc": t["auroc"], "train_auprc": t["auprc"], "train_logloss": t["logloss"],
            "fit_seconds": seconds, "C": None, "C_selection": "none", "converged": True,
            "n_iter": fitted.steps,
            "_scores": test.float().cpu().numpy(),  # (T,) or (T, K): kept by --save-predictions
        }  # fmt: skip

    def run(self, units: Sequence[FinetuneUnit], *, progress: Any = None) -> int:
        """Run ``units``, each written as its Parquet part (atomically, after its predictions
        when kept); returns the number of models trained."""
        parts = Path(self.job.parts)
        preds = Path(self.job.predictions) if self.job.predictions else None
        prov = provenance(self.job.cfg)
        ids = np.asarray(self.dataset.ids)
        trained = 0
        for unit in units:
            row = self.run_unit(unit)
            tp = self.pools[unit.task]
            if preds is not None:  # before the results part, which marks the unit done
                write_predictions([row], test_rows=tp.test, y_test=tp.y_test, task=tp.task,
                                  ids=ids, folder=str(preds), name=unit.name)  # fmt: skip
            row.pop("_scores", None)
            write_part(unit_frame([row], prov), parts / f"{unit.name}.parquet")
            trained += row["status"] == "ok"
            if progress is not None:
                progress(1)
            fault_hook_for_tests()
        return trained


def execute_units(
    job: FinetuneJob,
    units: Sequence[FinetuneUnit],
    *,
    progress: Any = None,
    encoder: Encoder | None = None,
) -> int:
    """The local engine: run ``units`` in this process (with ``encoder`` when it is built
    already); returns the number of models trained."""
    if not units:
        return 0
    runner = FinetuneRunner(job, encoder=encoder)
    try:
        return runner.run(units, progress=progress)
    finally:
        runner.images.close()
