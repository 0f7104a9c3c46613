"""Cost of the exact Gaussian-mixture noise prediction (pipeline/core/gmm.py) against the tiny U-Net.

One eps call at batch [256, 1, 28, 28] on the CPU (float32 products with float64
responsibilities, the samplers' default, and all-float64), for mixtures of K components in an
r-dimensional PCA subspace of 784-d, beside one forward call of `build_unet(PRESETS["tiny"])`
(eval mode, no grad) on the same batch. The cost depends only on K, r and d, so the mixtures are
random (orthonormal basis, random eigenvectors); no fit is needed. Minimum over repeats, one torch
thread by default.

    python -m pipeline.bench gmm [--sizes 10x64,10x128,16x100,20x128] [--batch 256] [--repeats 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from pipeline.core import gmm
from pipeline.core.schedules import NoiseSchedule
from pipeline.core.unet import PRESETS, build_unet, count_parameters

SHAPE = (1, 28, 28)


def random_mixture(K: int, r: int, d: int, seed: int = 0) -> gmm.Mixture:
    """A mixture with the sizes of a fitted one (values are irrelevant to the cost)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0]
    V = np.stack([np.linalg.qr(rng.standard_normal((r, r)))[0] for _ in range(K)])
    return gmm.Mixture(weights=np.full(K, 1 / K), mean=rng.uniform(-1, 1, d), basis=basis,
                       mus=rng.standard_normal((K, r)), eigvecs=V, eigvals=rng.uniform(1e-3, 5, (K, r)),
                       sigma2=0.02, shape=(d,))


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench gmm", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=f"10x64,{gmm.MNIST_COMPONENTS}x{gmm.MNIST_RANK},16x100,20x128",
                   help="comma-separated KxR mixture sizes (default: 10x64,"
                        f"{gmm.MNIST_COMPONENTS}x{gmm.MNIST_RANK},16x100,20x128)")
    p.add_argument("--batch", type=int, default=256, help="images per call (default 256)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls; the minimum is kept (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    a = p.parse_args(argv)
    try:
        sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",") if s]
    except ValueError:
        p.error(f"--sizes: expected comma-separated KxR pairs such as 10x128, got {a.sizes!r}")
    if a.batch < 1 or a.repeats < 1 or any(len(s) != 2 or min(s) < 1 for s in sizes):
        p.error("--batch, --repeats and every K, R must be >= 1")
    torch.set_num_threads(a.threads)
    d = int(np.prod(SHAPE))
    x = torch.randn(a.batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    t = torch.full((a.batch,), 500, dtype=torch.long)
    schedule = NoiseSchedule.linear(1000)

    torch.manual_seed(0)
    unet = build_unet(PRESETS["tiny"]).eval()
    with torch.no_grad():
        unet_s = best_time(lambda: unet(x, t), max(3, a.repeats // 3))
    rows = [dict(model=f"tiny U-Net ({count_parameters(unet) / 1e6:.2f}M params)", dtype="float32",
                 ms_per_call=unet_s * 1e3, unet_calls_per_call=1.0)]
    for K, r in sizes:
        mix = random_mixture(K, r, d)
        for dtype in (torch.float32, torch.float64):
            fn = gmm.eps_fn(mix, schedule, SHAPE, dtype=dtype)
            xs = x.to(dtype)
            s = best_time(lambda: fn(xs, t), a.repeats)
            rows.append(dict(model=f"exact mixture K={K}, r={r}", dtype=str(dtype).replace("torch.", ""),
                             ms_per_call=s * 1e3, unet_calls_per_call=s / unet_s))
    print(f"## eps cost at batch [{a.batch}, {', '.join(map(str, SHAPE))}], CPU, {torch.get_num_threads()} torch "
          f"thread(s), min of {a.repeats} calls\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=(None, None, ".2f", ".4f")))
    return 0
