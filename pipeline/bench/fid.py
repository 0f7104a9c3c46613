"""FID cost benchmark: feature extraction speed per feature space on this device, and what N costs.

For each feature space, random uint8 images of the data's shape go through exactly the path the fid
stage uses (`fid.extract_features`: torch-fidelity's `create_feature_extractor` +
`get_featuresdict_from_dataset`); the extractor is built and one batch run before timing (both
excluded). Images/s is over the timed images; the projected time for N images is N / (images/s)
plus the metric itself, measured once: FID from statistics (torch-fidelity's eigendecomposition of
a D x D matrix) and KID (`kid_subsets` subsets of min(N, kid_subset_size) against 5,000 reference
features; measured on 5 subsets and scaled).

    inception   torch-fidelity inception-v3-compat (--inception-weights, default the shared offline
                copy when present, else torch-fidelity's download); inputs resized to 299x299 inside.
    classifier  the ddbench classifier (--classifier; default: an untrained one of the same
                architecture, which costs exactly as much).
    exact       gaussian moments (`gaussian.frechet_to_truth`) on [N, 1, 4, 4] float samples.

    python -m pipeline.bench fid [--features inception,classifier,exact] [--n 64] [--batch-size 64]
                                 [--image-shape 1,28,28] [--device auto]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import classifier, fid, files, provenance
from pipeline.config import FIDConfig, make

SHARED_WEIGHTS = Path(__file__).resolve().parents[3] / "shared/data/fid/weights-inception-2015-12-05-6726825d-converted.pth"
PROJECT_N = (1000, 10000)
KID_REF = 5000


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _untrained_classifier(folder: Path, shape: tuple, feature_dim: int = 128) -> Path:
    """A SmallCNN with random weights + sidecar: the extraction cost of a trained one."""
    from safetensors.torch import save_file

    arch = {"in_channels": shape[0], "image_size": list(shape[1:]), "n_classes": 10, "feature_dim": feature_dim, "width": 16}
    torch.manual_seed(0)
    net = classifier.build(arch)
    path = folder / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    files.write_json(classifier.sidecar_path(path), {"kind": classifier.SIDECAR_KIND, "arch": arch, "untrained": True})
    return path


def _metric_seconds(dim: int, n: int, cfg: FIDConfig) -> float:
    """Seconds for FID from statistics + KID at N samples, on random features of dimension `dim`."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(KID_REF, dim, generator=g)
    ref_stats = {"mu": ref.mean(0).numpy(), "sigma": np.cov(ref.numpy(), rowvar=False)}
    feats = torch.randn(n, dim, generator=g)
    t0 = time.perf_counter()
    fid.frechet(feats, ref_stats)
    t_fid = time.perf_counter() - t0
    probe = 5
    t0 = time.perf_counter()
    fid.kid(feats, ref, subsets=probe, subset_size=cfg.kid_subset_size, seed=0)
    t_kid = (time.perf_counter() - t0) * cfg.kid_subsets / probe
    return t_fid + t_kid


def bench_space(features: str, n: int, batch: int, shape: tuple, device: str, weights: Path | None) -> dict:
    if features == "exact":
        from pipeline.gaussian import frechet_to_truth

        x = torch.randn(max(n, 10000), 1, 4, 4, dtype=torch.float64) * 2 + 5
        t0 = time.perf_counter()
        frechet_to_truth(x[:n], 5.0, 2.0)
        dt = time.perf_counter() - t0
        return {"features": features, "extractor": fid.EXACT_EXTRACTOR, "dim": 16, "image": "1x4x4 float",
                "timed": n, "img_per_s": n / dt, "metric_s": {N: 0.0 for N in PROJECT_N}}
    x = torch.randint(0, 256, (n + batch, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    name, _ = fid._extractor(features)
    # warm-up: builds (loads) the extractor and runs a few images, untimed
    warm = batch if device.startswith("cuda") else min(batch, 8)
    fid.extract_features(x[:warm], features, weights, device=device, batch_size=batch)
    _sync(device)
    t0 = time.perf_counter()
    feats = fid.extract_features(x[batch:], features, weights, device=device, batch_size=batch)
    _sync(device)
    dt = time.perf_counter() - t0
    cfg = make(FIDConfig)
    return {"features": features, "extractor": name, "dim": int(feats.shape[1]), "image": "x".join(map(str, shape)),
            "timed": n, "img_per_s": n / dt, "metric_s": {N: _metric_seconds(int(feats.shape[1]), N, cfg) for N in PROJECT_N}}


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench fid", description=__doc__.split("\n")[0])
    p.add_argument("--features", default="inception,classifier,exact", help="comma-separated feature spaces")
    p.add_argument("--n", type=int, default=None, help="timed images per space (default: inception 64 on CPU, "
                   "1024 on CUDA; classifier and exact 4096)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-shape", default="1,28,28", help="C,H,W of the images (MNIST 1,28,28; CIFAR-10 3,32,32)")
    p.add_argument("--inception-weights", default=None, help="torch-fidelity Inception weights (default: "
                   "../shared/data/fid copy when present, else torch-fidelity's download)")
    p.add_argument("--classifier", default=None, help="classifier .safetensors (default: an untrained one)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    device = provenance.resolve_device(a.device)
    shape = tuple(int(v) for v in a.image_shape.split(","))
    spaces = [f.strip() for f in a.features.split(",") if f.strip()]
    for f in spaces:
        if f not in fid.FEATURE_SPACES:
            p.error(f"--features: unknown {f!r}; known: {', '.join(fid.FEATURE_SPACES)}")
    fp = provenance.fingerprint(device)
    print(f"FID feature extraction on {fp['device_name']} (device {device}), torch {fp['torch']}, "
          f"torch-fidelity {fp['torch_fidelity']}, {torch.get_num_threads()} threads, batch {a.batch_size}, "
          f"load average {os.getloadavg()[0]:.2f} (other processes slow CPU numbers down)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in spaces:
            if f == "inception":
                weights = Path(a.inception_weights) if a.inception_weights else (
                    SHARED_WEIGHTS if SHARED_WEIGHTS.is_file() else fid.inception_weights(None))
                n = a.n or (1024 if device.startswith("cuda") else 64)
            elif f == "classifier":
                weights = Path(a.classifier) if a.classifier else _untrained_classifier(Path(tmp), shape)
                n = a.n or 4096
            else:
                weights, n = None, a.n or 4096
            r = bench_space(f, n, a.batch_size, shape, device, weights)
            row = {"features": r["features"], "extractor": r["extractor"], "dim": r["dim"], "input": r["image"],
                   "timed images": r["timed"], "images/s": f"{r['img_per_s']:,.1f}"}
            for N in PROJECT_N:
                row[f"N={N}"] = _fmt_s(N / r["img_per_s"] + r["metric_s"][N])
            rows.append(row)
            print(f"  {f}: {r['img_per_s']:.1f} images/s", flush=True)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))
    print("\nN=... : feature extraction of N samples + FID (from stored reference statistics) + KID "
          "(100 subsets of min(N, 1000)); reference statistics are computed once per dataset, not included.")
    return 0
