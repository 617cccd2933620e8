"""Benchmark of ``fmprobe finetune`` (fmprobe.finetune).

1. Throughput: images/s of one LoRA training step (forward, backward, AdamW on the adapters
   and the head) and of one full fine-tuning step, against the same model's frozen forward
   pass (``torch.inference_mode``), side by side in one process on random batches; for the
   tests' tiny ViT (32 px, 4 blocks, width 32) and ``vit_tiny_patch16_224`` at 224 px (both
   random-init). The ratio is what a LoRA curve costs per image beyond embedding it.
2. Digits: LoRA (rank 8), full fine-tuning and the linear head (``--method linear``) of the
   random-init tiny ViT on ``builtin:digits`` at n ∈ {50, 200, 800} × 3 seeds, with the
   defaults of ``fmprobe finetune``, beside the sweep's logistic regression (C = 1,
   ``--standardize``) on a store of the same model's last-block class token: the same test
   split and the same nested subsets. Macro one-vs-rest AUROC, mean ± sd over seeds, as a
   Markdown table.

Usage::

    python benchmarks/bench_finetune.py [--threads 1] [--device cpu] [--batch 32]
        [--skip-throughput] [--skip-digits] [--work /tmp/bench_finetune]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fmprobe.encoders import create_encoder
from fmprobe.finetune import finetune
from fmprobe.finetune.adapt import Classifier, add_lora, find_readout, resolve_targets
from fmprobe.finetune.train import loss_sum

MODEL = "timm:vit_tiny_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 32, "num_heads": 2}


def _classifier(enc: Any, method: str, dev: torch.device) -> Classifier:
    e = copy.deepcopy(enc)
    clf = Classifier(e, readout=find_readout(e, dev), n_out=10,
                     generator=torch.Generator().manual_seed(0)).to(dev)  # fmt: skip
    if method == "lora":
        targets = resolve_targets(clf.backbone, None, what=MODEL)
        add_lora(clf.backbone, rank=8, alpha=16, targets=targets, seed=0)
    elif method == "full":
        clf.backbone.requires_grad_(True)
    return clf.eval()


def _seconds(enc: Any, method: str, x: torch.Tensor, reps: int) -> float:
    """Seconds per batch ``x``: a frozen forward pass of the readout, or one training step."""
    clf = _classifier(enc, method, x.device)
    y = torch.arange(len(x), device=x.device) % 10
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-3)

    def once() -> None:
        if method == "frozen":
            with torch.inference_mode():
                clf.features(x)
            return
        opt.zero_grad(set_to_none=True)
        (loss_sum(clf(x), y) / len(x)).backward()
        opt.step()

    once()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def throughput(device: str, batch: int) -> None:
    dev = torch.device(device)
    print(f"throughput ({device}, {torch.get_num_threads()} threads, batch {batch}; images/s)")
    print(f"{'model':<30} {'frozen fwd':>11} {'LoRA step':>10} {'full step':>10} "
          f"{'LoRA/fwd time':>14} {'full/fwd time':>14}")  # fmt: skip
    for label, kwargs, size in (("tiny ViT, 32 px (the tests')", TINY, 32),
                                ("vit_tiny_patch16_224, 224 px", {}, 224)):  # fmt: skip
        enc = create_encoder(MODEL, random_init=True, model_kwargs=kwargs).to(dev)
        x = torch.randn(batch, 3, size, size, device=dev)
        reps = 20 if size == 32 else 3
        t = {m: _seconds(enc, m, x, reps) for m in ("frozen", "lora", "full")}
        print(f"{label:<30} {batch / t['frozen']:>11.0f} {batch / t['lora']:>10.0f} "
              f"{batch / t['full']:>10.0f} {t['lora'] / t['frozen']:>14.1f} "
              f"{t['full'] / t['frozen']:>14.1f}")  # fmt: skip


def digits(device: str, work: Path) -> None:
    from fmprobe.embed import embed
    from fmprobe.sweep import sweep

    work.mkdir(parents=True, exist_ok=True)
    store = work / "digits.zarr"
    embed(data="builtin:digits", model=MODEL, random_init=True, model_kwargs=TINY,
          store=str(store), num_workers=0, progress=False, device=device)  # fmt: skip
    feature = "timm-vit_tiny_patch16_224/block3/cls"
    sweep(store=str(store), out=str(work / "logreg.parquet"), features=feature, n="50,200,800",
          seeds=3, standardize=True, progress=False, device=device)  # fmt: skip
    tables = {"logreg (sweep, standardised)": pd.read_parquet(work / "logreg.parquet")}
    seconds = {}
    for method in ("linear", "lora", "full"):
        out = work / f"{method}.parquet"
        t0 = time.perf_counter()
        report = finetune(data="builtin:digits", model=MODEL, random_init=True,
                          model_kwargs=TINY, method=method, n="50,200,800", seeds=3,
                          out=str(out), progress=False, device=device)  # fmt: skip
        seconds[report.probe] = (time.perf_counter() - t0, report.trained)
        tables[report.probe] = pd.read_parquet(out)
    print("\ndigits, random-init tiny ViT (last block's class token); macro AUROC, mean ± sd, "
          "3 seeds")  # fmt: skip
    print("| probe | n = 50 | n = 200 | n = 800 | optimiser steps (n = 50 / 200 / 800) |")
    print("|---|---|---|---|---|")
    for name, t in tables.items():
        g = t.groupby("n")
        cells = [f"{g['auroc'].mean()[n]:.3f} ± {g['auroc'].std()[n]:.3f}" for n in (50, 200, 800)]
        steps = " / ".join(str(int(g["n_iter"].mean()[n])) for n in (50, 200, 800))
        print(f"| {name} | {' | '.join(cells)} | {steps if name in seconds else '—'} |")
    for probe, (s, trained) in seconds.items():
        print(f"{probe}: {trained} models in {s:.0f} s ({s / max(1, trained):.1f} s per model, "
              "readability scan and model build included)")  # fmt: skip
    same = all(
        np.array_equal(t[["n", "seed", "n_test"]].to_numpy(),
                       tables["logreg (sweep, standardised)"][["n", "seed", "n_test"]].to_numpy())
        for t in tables.values()
    )  # fmt: skip
    print(f"every table has the same (n, seed, n_test) rows: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--work", default="/tmp/bench_finetune")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_throughput:
        throughput(args.device, args.batch)
    if not args.skip_digits:
        digits(args.device, Path(args.work))


if __name__ == "__main__":
    main()
