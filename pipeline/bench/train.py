"""Training-throughput benchmark of the U-Net presets.

For each preset, at its own input size (tiny and mnist-small: 1x28x28, ddpm-cifar10: 3x32x32)
and one fixed batch: images/s of forward + backward of the simple loss (no optimizer step),
timed over `--iters` iterations after `--warmup` untimed ones (CUDA-synchronised). On CUDA
both float32 and bf16 autocast (channels_last, as in training); on the CPU float32.

    python -m pipeline.bench train [--presets tiny,mnist-small,ddpm-cifar10] [--batch 16]
                                   [--iters 5] [--warmup 1] [--device auto] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.util import files, provenance
from pipeline.core.unet import PRESETS, build_unet, count_parameters, unet_config


def time_fwd_bwd(preset: str, batch: int, iters: int, warmup: int, device: str, bf16: bool) -> dict:
    cfg = unet_config(preset)
    torch.manual_seed(0)
    model = build_unet(cfg).to(device).train()
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    eps = torch.randn_like(x)
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and bf16):
            loss = F.mse_loss(model(x, t).float(), eps)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best, mean = min(times), sum(times) / len(times)
    return {
        "preset": preset,
        "params": count_parameters(model),
        "input": f"{cfg.in_channels}x{cfg.image_size}x{cfg.image_size}",
        "batch": batch,
        "dtype": "bf16 autocast" if (cuda and bf16) else "float32",
        "s_per_iter_mean": round(mean, 4),
        "s_per_iter_best": round(best, 4),
        "img_per_s_mean": round(batch / mean, 1),
        "img_per_s_best": round(batch / best, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, from {list(PRESETS)}")
    p.add_argument("--batch", type=int, default=None, help="images per iteration (default: 16 on CPU, 128 on CUDA)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: 5 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default: 1; CUDA: at least 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    presets = [s for s in a.presets.split(",") if s]
    unknown = [s for s in presets if s not in PRESETS]
    if unknown:
        p.error(f"--presets: unknown {unknown}; known: {list(PRESETS)}")
    device = provenance.resolve_device(a.device)
    cuda = device.startswith("cuda")
    batch = a.batch or (128 if cuda else 16)
    iters = a.iters or (20 if cuda else 5)
    warmup = max(a.warmup, 3) if cuda else a.warmup
    if batch < 1 or iters < 1:
        p.error("--batch and --iters must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)

    rows = []
    for preset in presets:
        for bf16 in ((False, True) if cuda else (False,)):
            rows.append(time_fwd_bwd(preset, batch, iters, warmup, device, bf16))
    fp = provenance.fingerprint(device)
    print(f"U-Net forward+backward throughput on {fp['device_name']}, torch {fp['torch']}, "
          f"{torch.get_num_threads()} CPU threads, {iters} timed iterations after {warmup} warm-up")
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
