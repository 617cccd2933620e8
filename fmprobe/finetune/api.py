"""``finetune()``: options checked into a ``FinetuneConfig`` (the model built once to resolve
the adapted modules and the readout), the resume ledger (``<out>.parts/``) opened, unreadable
images found, the pending units run by the chosen engine, and the results table written; and
``merge`` of the shards of an array job."""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fmprobe.data import Dataset, parse_data
from fmprobe.devices import resolve_device
from fmprobe.encoders import Encoder, parse_model_name
from fmprobe.encoders.base import check_weights_path, file_sha256
from fmprobe.errors import UsageError
from fmprobe.finetune.adapt import (
    Classifier,
    Readout,
    add_lora,
    check_gradients,
    find_readout,
    resolve_targets,
)
from fmprobe.finetune.config import FinetuneConfig, check_method, method_settings
from fmprobe.finetune.images import readability
from fmprobe.finetune.plan import (
    FinetuneUnit,
    candidate_rows,
    plan_units,
    task_pools,
    tasks_and_split,
)
from fmprobe.finetune.units import FinetuneJob, build_encoder, execute_units, provenance
from fmprobe.options import check_engine, parse_shard, split_list
from fmprobe.sweep.config import check_columns, parse_ns
from fmprobe.sweep.results import shard_path, unit_frame
from fmprobe.sweep.tasks import Task
from fmprobe.tables import atomic_path

FINETUNE_META_KEY = b"fmprobe_finetune"


@dataclass
class FinetuneReport:
    """What one ``finetune`` call did.

    Attributes
    ----------
    out : str
        The results table written (a shard's own table under ``--shard``).
    rows : int
        Rows of that table.
    units_total, units_done_before : int
        Work units of this run (this shard's); those already on disk before the call.
    trained : int
        Models trained by this call.
    seconds : float
        Time of the units' loop (the whole call when nothing was left to do).
    feature, probe : str
        The rows' ``feature`` and ``probe``.
    unreadable : int
        Labelled images that cannot be read (left out, as the sweep leaves them out).
    device : str
    """

    out: str
    rows: int
    units_total: int
    units_done_before: int
    trained: int = 0
    seconds: float = 0.0
    feature: str = ""
    probe: str = ""
    unreadable: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_key(model: str, name: str | None) -> str:
    """The model part of the results' ``feature``: ``--name``, else the name ``fmprobe embed``
    gives the model's group in a store."""
    key = name or parse_model_name(model).key
    if "/" in key or key.startswith(("_", "samples")):
        raise UsageError(f"--name {key!r}: no '/', and it may not start with '_' or 'samples'")
    return key


def _check_plan_options(*, seeds: int, sampler: str, split_col: str | None,
                        test_where: str | None, weights: str | None,
                        random_init: bool) -> None:  # fmt: skip
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: at least 1")
    if sampler != "random":
        raise UsageError(
            f"--sampler {sampler!r}: finetune draws random (stratified, nested) subsets only; "
            "cold-start samplers select on stored features (use fmprobe sweep for them)"
        )
    if test_where and split_col:
        raise UsageError("--test-where and --split-col both define the test set; pass one")
    if weights is not None and random_init:
        raise UsageError("--weights and --random-init exclude each other; pass one")
    if weights is not None:
        check_weights_path(weights)


def _adaptation(
    encoder: Encoder, *, method: str, rank: int, alpha: int, targets: Any, model: str,
    device: torch.device,
) -> tuple[tuple[str, ...], Readout]:  # fmt: skip
    """The resolved LoRA targets and the readout, checked by one forward and backward pass."""
    readout = find_readout(encoder, device)
    trial = copy.deepcopy(encoder)
    chosen: tuple[str, ...] = ()
    if method == "lora":
        chosen = resolve_targets(trial.model, targets, what=model)
        add_lora(trial.model, rank=rank, alpha=alpha, targets=chosen, seed=0)
    elif targets:
        raise UsageError(f"--targets is for --method lora (got --method {method})")
    clf = Classifier(trial, readout=readout, n_out=1, generator=torch.Generator().manual_seed(0))
    if method == "full":
        clf.backbone.requires_grad_(True)
    check_gradients(clf.to(device), method=method, what=model)
    return chosen, readout


def _open_ledger(out_path: Path, cfg: FinetuneConfig, *, overwrite: bool) -> Path:
    """``<out>.parts/``: one part per finished unit, and the configuration they were computed
    with (a fine-tune with other settings is refused, or discarded with ``overwrite``)."""
    parts = out_path.with_name(out_path.name + ".parts")
    meta_path = parts / "config.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("digest") != cfg.digest():
        if not overwrite:
            raise UsageError(
                f"{out_path} holds results of a fine-tune with other settings; pass a new --out, "
                "or --overwrite to start again"
            )
        for p in [*parts.glob("*.parquet"), parts / "unreadable.json"]:
            p.unlink(missing_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps({"digest": cfg.digest(), "config": cfg.to_dict()}, indent=2))
    return parts


def _unreadable(parts: Path, cfg: FinetuneConfig, dataset: Dataset, encoder: Encoder,
                tasks: list[Task]) -> dict[int, str]:  # fmt: skip
    """Labelled rows whose image cannot be read and preprocessed, found once per ledger."""
    path = parts / "unreadable.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("digest") == cfg.digest():
            return {int(k): v for k, v in saved["rows"].items()}
    bad = readability(dataset, encoder.transform, candidate_rows(tasks).tolist())
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"digest": cfg.digest(), "rows": bad}))
    return bad


def write_finetune_results(
    df: pd.DataFrame, path: Path, cfg: FinetuneConfig, *, units: Sequence[FinetuneUnit]
) -> None:
    """The results table, with the configuration and the whole plan (task, n, seed per unit)
    in the Parquet metadata, so that ``merge`` can check that shards belong together and order
    their rows as one run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tbl = pa.Table.from_pandas(df, preserve_index=False)
    plan = [[u.task, u.n, u.seed] for u in units]
    meta = json.dumps({"digest": cfg.digest(), "config": cfg.to_dict(), "units": plan})
    tbl = tbl.replace_schema_metadata(
        {**(tbl.schema.metadata or {}), FINETUNE_META_KEY: meta.encode()}
    )
    with atomic_path(path, what="--out") as tmp:
        pq.write_table(tbl, tmp)


def _config(dataset: Dataset, encoder: Encoder, opts: dict[str, Any],
            device: torch.device) -> FinetuneConfig:  # fmt: skip
    """The checked configuration of a ``finetune`` call (``opts``: its keyword options)."""
    method = check_method(opts["method"], rank=opts["rank"], alpha=opts["alpha"])
    train = method_settings(method, **opts["train"])
    targets, readout = _adaptation(encoder, method=method, rank=opts["rank"],
                                   alpha=opts["alpha"], targets=opts["targets"],
                                   model=opts["model"], device=device)  # fmt: skip
    weights = opts["weights"]
    return FinetuneConfig(
        model=opts["model"], weights_sha256=file_sha256(Path(weights)) if weights else None,
        random_init=opts["random_init"], model_kwargs=json.dumps(opts["model_kwargs"] or {},
        sort_keys=True), method=method, rank=opts["rank"] if method == "lora" else 0,
        alpha=opts["alpha"] if method == "lora" else 0, targets=targets,
        feature=readout.feature(_model_key(opts["model"], opts["name"])),
        tasks=opts["tasks"], labels=opts["labels"], n=parse_ns(opts["n"]), seeds=opts["seeds"],
        split_col=opts["split_col"], test_frac=opts["test_frac"], group_col=opts["group_col"],
        split_seed=opts["split_seed"], test_where=opts["test_where"] or None,
        sampler=opts["sampler"], train=train, amp=opts["amp"],
        data_fingerprint=dataset.fingerprint(),
    )  # fmt: skip


def _run(job: FinetuneJob, todo: list[FinetuneUnit], *, engine: str, address: str | None,
         progress: bool, encoder: Encoder) -> int:  # fmt: skip
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="model", desc=f"finetune {job.cfg.probe}", file=sys.stderr,
               disable=not progress or not todo)  # fmt: skip
    try:
        if engine == "ray":
            from fmprobe.finetune.ray_engine import run_on_ray

            return run_on_ray(job, todo, address=address, progress=bar.update)
        return execute_units(job, todo, progress=bar.update, encoder=encoder)
    finally:
        bar.close()


def finetune(
    *,
    data: str,
    model: str,
    out: str,
    method: str = "lora",
    weights: str | None = None,
    random_init: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    rank: int = 8,
    alpha: int = 16,
    targets: str | Sequence[str] | None = None,
    tasks: str | Sequence[str] = "label",
    labels: str | None = None,
    n: str | Sequence[int | str] = "10,20,50,100,all",
    seeds: int = 5,
    sampler: str = "random",
    split_col: str | None = None,
    test_frac: float = 0.25,
    group_col: str | None = None,
    split_seed: int = 0,
    test_where: str | None = None,
    epochs: int = 10,
    min_steps: int | None = None,
    batch_size: int = 32,
    lr: float | None = None,
    head_lr: float | None = None,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    selection: str = "best",
    val_frac: float = 0.2,
    augment: str = "flips",
    amp: bool = True,
    device: str | None = None,
    save_predictions: bool = False,
    engine: str = "local",
    address: str | None = None,
    shard: str | None = None,
    cache_bytes: int = 1 << 30,
    overwrite: bool = False,
    progress: bool = True,
) -> FinetuneReport:
    """Fine-tune ``model`` on the sweep's (n, seed) subsets of ``data``; results to Parquet.

    One row per task, label count and seed, in the results schema of ``fmprobe sweep``
    (``probe`` = ``lora-r<rank>``, ``full`` or ``linear-ft``; ``feature`` = the store key of
    the token the head reads; ``n_iter`` = optimiser steps). The options are those of
    ``fmprobe finetune`` (see its ``--help`` and the fine-tune guide); ``lr``, ``head_lr`` and
    ``min_steps`` left at None take the method's defaults (``METHOD_DEFAULTS``).

    Returns
    -------
    FinetuneReport

    Examples
    --------
    >>> finetune(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
    ...          out="lora.parquet", n="50,200", seeds=3)  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    check_engine(engine)
    shard_i, shard_n = parse_shard(shard)
    _check_plan_options(seeds=seeds, sampler=sampler, split_col=split_col, test_where=test_where,
                        weights=weights, random_init=random_init)  # fmt: skip
    check_method(method, rank=rank, alpha=alpha)
    train = dict(epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr,
                 head_lr=head_lr, weight_decay=weight_decay, warmup=warmup, selection=selection,
                 val_frac=val_frac, augment=augment)  # fmt: skip
    method_settings(method, **train)  # bad settings fail before the model is built
    parse_ns(n)
    dataset = parse_data(data)
    task_names = tuple(split_list(tasks)) or ("label",)
    task_objs, table, split = tasks_and_split(  # bad tasks and splits fail before the model
        dataset, tasks=task_names, labels=labels, split_col=split_col, test_frac=test_frac,
        group_col=group_col, split_seed=split_seed, test_where=test_where or None,
    )  # fmt: skip
    check_columns(table, [split_col, group_col])
    dev = resolve_device(device)
    encoder = build_encoder(model, weights=weights, random_init=random_init,
                            model_kwargs=model_kwargs, device=dev)  # fmt: skip
    cfg = _config(dataset, encoder, dict(
        method=method, rank=rank, alpha=alpha, train=train, targets=targets, model=model,
        weights=weights, random_init=random_init, model_kwargs=model_kwargs, name=name,
        tasks=task_names, labels=labels, n=n, seeds=seeds,
        split_col=split_col, test_frac=test_frac, group_col=group_col, split_seed=split_seed,
        test_where=test_where, sampler=sampler, amp=amp), dev)  # fmt: skip
    out_path = Path(out)
    parts = _open_ledger(out_path, cfg, overwrite=overwrite)
    bad = _unreadable(parts, cfg, dataset, encoder, task_objs)
    unreadable = np.zeros(len(dataset), bool)
    unreadable[list(bad)] = True
    units = plan_units(cfg, task_pools(task_objs, split, unreadable))
    preds = out_path.with_name(out_path.name + ".predictions")
    if save_predictions:
        preds.mkdir(exist_ok=True)
    mine = [u for i, u in enumerate(units) if i % shard_n == shard_i]
    todo = [u for u in mine if not (parts / f"{u.name}.parquet").exists()
            or (save_predictions and not (preds / f"{u.name}.parquet").exists())]  # fmt: skip
    job = FinetuneJob(data=data, cfg=cfg, weights=weights, parts=str(parts),
                      predictions=str(preds) if save_predictions else None, device=str(dev),
                      unreadable=tuple(sorted(bad)), cache_bytes=cache_bytes)  # fmt: skip
    report = FinetuneReport(out=str(out_path), rows=0, units_total=len(mine),
                            units_done_before=len(mine) - len(todo), feature=cfg.feature,
                            probe=cfg.probe, unreadable=len(bad), device=str(dev))  # fmt: skip
    t_loop = time.perf_counter()
    report.trained = _run(job, todo, engine=engine, address=address, progress=progress,
                          encoder=encoder)  # fmt: skip
    if shard_n > 1:
        out_path = Path(shard_path(str(out_path), shard_i, shard_n))
        report.out = str(out_path)
    frames = [pd.read_parquet(parts / f"{u.name}.parquet") for u in mine]
    result = pd.concat(frames, ignore_index=True) if frames else unit_frame([], provenance(cfg))
    write_finetune_results(result, out_path, cfg, units=units)
    report.rows = len(result)
    report.seconds = time.perf_counter() - (t_loop if todo else t_start)
    return report


def _read_shard(path: str) -> tuple[dict[str, Any], pd.DataFrame]:
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise UsageError(f"finetune merge: {path!r} does not exist")
    try:
        md = pq.read_schema(path).metadata or {}
        frame = pd.read_parquet(path)
    except Exception as exc:  # a damaged or foreign file: pyarrow raises several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"finetune merge: {path!r} is not a readable Parquet table ({first})"
        ) from None
    if FINETUNE_META_KEY not in md:
        raise UsageError(f"finetune merge: {path!r} is not a table written by fmprobe finetune")
    return json.loads(md[FINETUNE_META_KEY]), frame


def merge(*, parts: Sequence[str], out: str) -> pd.DataFrame:
    """Merge the tables of ``finetune --shard I/N`` runs into the table one run would have
    written (same rows, same order). Shards of different fine-tunes, a unit in two shards, or
    a missing unit are refused with a one-line error.

    Examples
    --------
    >>> merge(parts=["r.shard-0-of-2.parquet", "r.shard-1-of-2.parquet"],
    ...       out="r.parquet")  # doctest: +SKIP
    """
    if not parts:
        raise UsageError("finetune merge: give the shard tables to merge, e.g. r.shard-*.parquet")
    metas, frames = zip(*(_read_shard(p) for p in parts), strict=True)
    if len({m["digest"] for m in metas}) > 1:
        raise UsageError("finetune merge: the tables come from fine-tunes with different settings")
    cfg = FinetuneConfig.from_dict(metas[0]["config"])
    plan = [(str(t), int(n), int(s)) for t, n, s in metas[0]["units"]]
    rank = {key: i for i, key in enumerate(plan)}
    df = pd.concat(frames, ignore_index=True)
    keys = zip(df["task"].astype(str), df["n"].astype(int), df["seed"].astype(int), strict=True)
    unit_of = np.array([rank.get(k, -1) for k in keys], dtype=np.int64)
    if (unit_of < 0).any():
        raise UsageError("finetune merge: rows that are not in the fine-tune's plan")
    if len(set(unit_of.tolist())) < len(unit_of):
        raise UsageError(
            "finetune merge: a unit appears in more than one table (the same shard twice?)"
        )
    if len(unit_of) < len(plan):
        raise UsageError(
            f"finetune merge: {len(plan) - len(unit_of)} of {len(plan)} work units are in none "
            "of the tables; run the missing shards (or the fine-tune without --shard) first"
        )
    df = df.iloc[np.argsort(unit_of, kind="stable")].reset_index(drop=True)
    units = [FinetuneUnit(cfg.feature, t, cfg.probe, cfg.sampler, (s,), n) for t, n, s in plan]
    write_finetune_results(df, Path(out), cfg, units=units)
    return df
