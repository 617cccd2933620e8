"""Embedding pipeline throughput against the same model's forward-only throughput.

The pipeline (decode files in DataLoader workers → model preprocessing → forward with
multi-layer outputs → pooling → Zarr writes) is timed by ``fmprobe.embed``; the reference is
``Encoder.forward`` with the same layers and pools on tensors already on the device, with the
same batch size and autocast. The ratio says how much of the model's speed the pipeline keeps
(goal: >= 0.8 on a GPU for a ViT-B/16 at 224 px).

    python benchmarks/bench_embed.py                       # ViT-B/16, 256 JPEGs, auto device
    python benchmarks/bench_embed.py --n 2048 --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmprobe.devices import resolve_device
from fmprobe.embed import embed
from fmprobe.encoders import create_encoder


def write_images(folder: Path, n: int, size: int, fmt: str) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (size // 8, size // 8), dtype=np.uint8)
        img = np.kron(base, np.ones((8, 8), np.uint8))  # smooth-ish content, realistic sizes
        if fmt == "png16":
            Image.fromarray(img.astype(np.uint16) * 257).save(sub / f"{i:06d}.png")
        else:
            Image.fromarray(np.stack([img] * 3, -1)).save(sub / f"{i:06d}.jpg", quality=90)


def forward_only(enc, *, n: int, batch_size: int, device: torch.device, amp: bool) -> float:  # type: ignore[no-untyped-def]
    layers = enc.resolve_layers(None)
    attn = enc.attn_source is not None
    shape = tuple(enc.transform(Image.new("RGB", (256, 256))).shape)
    x = torch.randn(batch_size, *shape, device=device)
    cuda = device.type == "cuda"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and amp else nullcontext()
    with torch.inference_mode(), ctx:
        enc.forward(x, layers, attn=attn)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        done = 0
        while done < n:
            out = enc.forward(x, layers, attn=attn)
            for p in out.patch:  # the pools the pipeline computes, for a like-for-like cost
                p.float().mean(1)
            done += batch_size
        if cuda:
            torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="timm:vit_base_patch16_224")
    ap.add_argument("--n", type=int, default=256, help="images")
    ap.add_argument("--size", type=int, default=512, help="side of the stored images")
    ap.add_argument("--format", choices=["jpg", "png16"], default="jpg")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    amp = not args.no_amp
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images"
        write_images(data, args.n, args.size, args.format)
        enc = create_encoder(args.model, random_init=True).to(device)
        ref = forward_only(enc, n=args.n, batch_size=args.batch_size, device=device, amp=amp)
        del enc
        report = embed(
            data=str(data),
            model=args.model,
            store=str(Path(tmp) / "store.zarr"),
            random_init=True,
            batch_size=args.batch_size,
            device=args.device,
            num_workers=args.num_workers,
            amp=amp,
            progress=False,
        )
    pipe = report.images_per_second
    result = {
        "model": args.model,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "images": args.n,
        "image_format": f"{args.format} {args.size}px",
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "pipeline_images_per_s": round(pipe, 2),
        "forward_only_images_per_s": round(ref, 2),
        "ratio": round(pipe / ref, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
