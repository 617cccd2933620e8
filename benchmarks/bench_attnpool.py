"""Benchmark of the attention-pooling probe (fmprobe.probes.attnpool).

1. Throughput: problems/s and row-steps/s (training rows through forward+backward per second)
   at a few (n, P) settings, on synthetic float16 tokens shaped like ViT-Ti/16 at 224 px
   (4 layers × 196 tokens × 192). Timed with a short schedule (``--epochs``, no validation);
   the full protocol's cost per problem is printed beside it (row-steps it needs).
2. Digits: the probe on the four stored token layers of a store made by::

       fmprobe embed --data builtin:digits --model timm:vit_tiny_patch16_224 --random-init \\
           --tokens --store /tmp/attn/digits.zarr

   at n ∈ {50, 200, all} × 3 seeds (the sweep's split and nested subsets), against fmprobe's
   logistic regression (``fmprobe.sweep.sweep``, C by cross-validation) on the same model's
   ``block11/cls`` and ``block11/mean``; macro one-vs-rest AUROC on the sweep's test set.

Usage::

    python benchmarks/bench_attnpool.py [--store /tmp/attn/digits.zarr] [--device cuda]
        [--threads 1] [--digits-epochs 25] [--digits-min-steps 100]
        [--digits-selection refit] [--skip-throughput] [--skip-digits]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fmprobe.probes.attnpool import AttnPoolConfig, fit_attnpool
from fmprobe.probes.metrics import classification_metrics

MODEL = "timm-vit_tiny_patch16_224"


def protocol_row_steps(n: int, config: AttnPoolConfig) -> int:
    """Training row-steps of one problem under ``config`` (refit, without patience): the
    validation run on n - n/5 labels plus, at most, the refit on all n."""
    n_val = max(1, round(n * config.val_frac))

    def epochs(m: int) -> int:
        return max(config.epochs, math.ceil(config.min_steps / math.ceil(m / config.batch_size)))

    return epochs(n - n_val) * (n - n_val) + epochs(n - n_val) * n


def throughput(device: str, epochs: int) -> None:
    rng = np.random.default_rng(0)
    N, L, D = 1200, 196, 192
    tokens = [rng.normal(size=(N, L, D)).astype(np.float16) for _ in range(4)]
    y = rng.integers(0, 2, N)
    cfg = AttnPoolConfig(epochs=epochs, min_steps=0, selection="last")
    full = AttnPoolConfig()
    print(f"throughput ({device}, {torch.get_num_threads()} threads, {epochs} epochs, no "
          f"validation; tokens 4 x {L} x {D} float16)")  # fmt: skip
    print(f"{'n':>6} {'P':>4} {'seconds':>8} {'problems/s':>11} {'row-steps/s':>12} "
          f"{'protocol row-steps/problem':>27} {'protocol problems/s (est.)':>27}")  # fmt: skip
    for n, P in ((50, 8), (200, 8), (1000, 2)):
        rows = np.stack([rng.permutation(N)[:n] for _ in range(P)])
        t0 = time.perf_counter()
        fit_attnpool(tokens=tokens, train_rows=rows, y_train=y[rows], n_classes=2,
                     seeds=list(range(P)), config=cfg, device=device)  # fmt: skip
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rate = P * n * epochs / dt
        need = protocol_row_steps(n, full)
        print(f"{n:>6} {P:>4} {dt:>8.1f} {P / dt:>11.2f} {rate:>12.0f} {need:>27,d} "
              f"{rate / need:>27.3f}")  # fmt: skip


def digits(store: str, device: str, config: AttnPoolConfig) -> None:
    from fmprobe.store import open_store
    from fmprobe.sweep import sweep
    from fmprobe.sweep.splits import make_split, nested_order
    from fmprobe.sweep.tasks import load_tasks

    fs = open_store(store)
    (task,), _ = load_tasks(fs, ["label"])
    # the sweep's defaults: stratified 25 % test split with split seed 0; nested subsets
    split = make_split(n_rows=fs.n, stratify=task.codes, test_frac=0.25, seed=0)
    pool = split.train[task.codes[split.train] >= 0]
    test = split.test[task.codes[split.test] >= 0]
    y_pool = task.codes[pool]
    seeds = [0, 1, 2]
    ns = [50, 200, len(pool)]
    train_rows, y_train, labels = [], [], []
    for n in ns:
        for s in seeds:
            idx = nested_order(y_pool, seed=s, n_max=n)[:n]
            train_rows.append(pool[idx])
            y_train.append(y_pool[idx])
            labels.append((n, s))
    tokens = [fs.feature(f"{MODEL}/block{i}/tokens") for i in (2, 5, 8, 11)]
    t0 = time.perf_counter()
    model = fit_attnpool(tokens=tokens, train_rows=train_rows, y_train=y_train,
                         n_classes=task.n_classes, seeds=[s for _, s in labels],
                         config=config, device=device)  # fmt: skip
    from fmprobe.probes.attnpool import attnpool_scores

    scores = attnpool_scores(model, tokens=tokens, rows=test)
    seconds = time.perf_counter() - t0
    met = classification_metrics(torch.as_tensor(scores), torch.as_tensor(task.codes[test]),
                                 n_classes=task.n_classes, threshold=0.0)  # fmt: skip
    attn = pd.DataFrame(
        {
            "n": [n for n, _ in labels],
            "seed": [s for _, s in labels],
            "auroc": met["auroc"].double().numpy(),
            "epoch": [p.epoch for p in model.problems],
            "epochs": [p.epochs for p in model.problems],
        }
    )
    print(f"\ndigits ({len(pool)} pool / {len(test)} test rows, {task.n_classes} classes): "
          f"attnpool, 9 problems in one batch, {seconds:.0f} s on {device}; epochs="
          f"{config.epochs}, min_steps={config.min_steps}, "
          f"selection={config.selection}")  # fmt: skip
    print(attn.to_string(index=False))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sweep(store=store, out=str(Path(tmp) / "lin.parquet"),
              features=[f"{MODEL}/block11/cls", f"{MODEL}/block11/mean"],
              n=",".join(str(n) for n in ns), seeds=3, C="auto", progress=False,
              device=device)  # fmt: skip
        lin = pd.read_parquet(Path(tmp) / "lin.parquet")
        lin_seconds = time.perf_counter() - t0
    table = {"attnpool (blocks 2,5,8,11 tokens)": attn.groupby("n")["auroc"]}
    for feature, group in lin.groupby("feature"):
        table[f"logreg {feature.split('/', 1)[1]}"] = group.groupby("n")["auroc"]
    print(f"\nmacro AUROC, mean ± sd over 3 seeds (logreg sweep: {lin_seconds:.0f} s)")
    print(f"{'probe':<36}" + "".join(f"{'n=' + str(n):>16}" for n in ns))
    for name, g in table.items():
        mean, sd = g.mean(), g.std()
        print(f"{name:<36}" + "".join(f"{mean[n]:>10.3f} ±{sd[n]:.3f}" for n in ns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="/tmp/attn/digits.zarr")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--epochs", type=int, default=2, help="schedule of the throughput runs")
    parser.add_argument("--digits-epochs", type=int, default=AttnPoolConfig.epochs)
    parser.add_argument("--digits-min-steps", type=int, default=AttnPoolConfig.min_steps)
    parser.add_argument("--digits-selection", default=AttnPoolConfig.selection)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_throughput:
        throughput(args.device, args.epochs)
    if not args.skip_digits:
        config = AttnPoolConfig(epochs=args.digits_epochs, min_steps=args.digits_min_steps,
                                selection=args.digits_selection)  # fmt: skip
        digits(args.store, args.device, config)


if __name__ == "__main__":
    main()
