"""FID cost benchmark: feature extraction speed per feature space on this device, and what N costs.

For each feature space, random uint8 images of the data's shape go through exactly the path the fid
stage uses (`fid.extract_features`: torch-fidelity's `create_feature_extractor` +
`get_featuresdict_from_dataset`); the extractor is built and one batch run before timing (both
excluded). Images/s is over the timed images; the projected time for N images is N / (images/s)
plus the metrics as the fid stage computes them, measured once on random features: FID from
statistics (torch-fidelity) with its jackknife interval (20 seed blocks: 21 eigendecompositions of a
D x D matrix), and KID over the full set against 5,000 reference features with its interval.

The interval table (always printed; alone with --intervals-only) times the interval computation at
N = 5,000 with 2,048-d and 128-d random features: FID's jackknife replicates, the full-set KID with
its replicates, and what it replaces, torch-fidelity's KID over 100 random subsets of 1,000.

    inception   torch-fidelity inception-v3-compat (--inception-weights, default the shared offline
                copy when present, else torch-fidelity's download); inputs resized to 299x299 inside.
    classifier  the ddbench classifier (--classifier; default: an untrained one of the same
                architecture, which costs exactly as much).
    exact       gaussian moments (`gaussian.frechet_to_truth`) on [N, 1, 4, 4] float samples.

    python -m pipeline.bench fid [--features inception,classifier,exact] [--n 64] [--batch-size 64]
                                 [--image-shape 1,28,28] [--device auto] [--intervals-only] [--threads T]
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

from pipeline.stages import classifier, fid

from pipeline.util import files, provenance

from pipeline.core import intervals

SHARED_WEIGHTS = Path(__file__).resolve().parents[3] / "shared/data/fid/weights-inception-2015-12-05-6726825d-converted.pth"
PROJECT_N = (1000, 10000)
KID_REF = 5000  # fid.kid_ref_n's default
INTERVAL_N = 5000
INTERVAL_DIMS = (2048, 128)  # Inception's pool features, the classifier's


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


def _random_reference(dim: int, seed: int = 0):
    """KID_REF random reference features [KID_REF, dim] (float32, as extracted) and their FID statistics."""
    ref = torch.randn(KID_REF, dim, generator=torch.Generator().manual_seed(seed))
    return ref, {"mu": ref.double().mean(0).numpy(), "sigma": np.cov(ref.double().numpy(), rowvar=False)}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed_cpu(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process): on a shared machine wall > CPU; with 1 thread CPU s ~ unloaded wall s."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _metric_seconds(dim: int, n: int) -> float:
    """Seconds for what the fid stage computes from N sample features: FID + interval, KID + interval."""
    ref, ref_stats = _random_reference(dim)
    feats = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    blocks = intervals.n_blocks(n)
    return (_timed(lambda: fid.fid_with_interval(feats, ref_stats, blocks=blocks))
            + _timed(lambda: fid.kid(feats, ref, blocks=blocks)))


def interval_costs(dim: int, n: int = INTERVAL_N) -> dict:
    """(wall s, CPU s) of each part of the metrics at N samples of `dim`-d random features (KID_REF reference features)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    ref, ref_stats = _random_reference(dim)
    feats = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    blocks = intervals.n_blocks(n)
    probe = 2  # torch-fidelity's subset KID: 2 of its 100 subsets timed, scaled to 100
    sub = _timed_cpu(lambda: kid_features_to_metric(
        feats, ref, kid_subsets=probe, kid_subset_size=min(1000, n), kid_kernel="poly", kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=0, verbose=False))
    out = {
        "dim": dim, "n": n, "blocks": blocks,
        "fid_interval": _timed_cpu(lambda: intervals.frechet_replicates(
            feats, ref_stats["mu"], intervals.covariance_factor(ref_stats["sigma"]), blocks)),
        "kid_full": _timed_cpu(lambda: fid.kid(feats, ref, blocks=blocks)),
        "kid_subsets": tuple(t * 100 / probe for t in sub),
    }
    out["added"] = tuple(f + k - o for f, k, o in zip(out["fid_interval"], out["kid_full"], out["kid_subsets"]))
    return out


def _interval_table() -> str:
    def fmt(t):
        return f"{_fmt_s(t[0])} ({_fmt_s(t[1])} CPU)"

    rows = []
    for dim in INTERVAL_DIMS:
        c = interval_costs(dim)
        rows.append({"features": f"{dim}-d random", "N": f"{c['n']:,}", "blocks": c["blocks"],
                     "FID interval (jackknife)": fmt(c["fid_interval"]),
                     "KID + interval (full set)": fmt(c["kid_full"]),
                     "old KID (100 subsets of 1,000)": fmt(c["kid_subsets"]),
                     "added by intervals": fmt(c["added"])})
        print(f"  intervals {dim}-d: FID interval {c['fid_interval'][0]:.1f} s, KID full set {c['kid_full'][0]:.1f} s "
              "(wall)", flush=True)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def bench_space(features: str, n: int, batch: int, shape: tuple, device: str, weights: Path | None) -> dict:
    if features == "exact":
        from pipeline.core.gaussian import frechet_to_truth

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
    return {"features": features, "extractor": name, "dim": int(feats.shape[1]), "image": "x".join(map(str, shape)),
            "timed": n, "img_per_s": n / dt, "metric_s": {N: _metric_seconds(int(feats.shape[1]), N) for N in PROJECT_N}}


def _fmt_s(s: float) -> str:
    if s < 0:
        return f"-{_fmt_s(-s)}"
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
    p.add_argument("--intervals-only", action="store_true", help="time only the interval computation "
                   f"(N = {INTERVAL_N:,}, {' and '.join(f'{d}-d' for d in INTERVAL_DIMS)} random features)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and BLAS (default: as set)")
    a = p.parse_args(argv)
    if a.threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(a.threads)
        threadpool_limits(a.threads)
    device = provenance.resolve_device(a.device)
    shape = tuple(int(v) for v in a.image_shape.split(","))
    spaces = [f.strip() for f in a.features.split(",") if f.strip()]
    for f in spaces:
        if f not in fid.FEATURE_SPACES:
            p.error(f"--features: unknown {f!r}; known: {', '.join(fid.FEATURE_SPACES)}")
    fp = provenance.fingerprint(device)
    if a.intervals_only:
        print(f"FID/KID interval cost on the CPU, {torch.get_num_threads()} torch threads, "
              f"load average {os.getloadavg()[0]:.2f}")
        print("\n" + _interval_table())
        print(_INTERVAL_NOTE)
        return 0
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
    print("\nN=... : feature extraction of N samples + FID (from stored reference statistics) + KID over the full "
          "set (against 5,000 reference features), both with their jackknife intervals; reference statistics are "
          "computed once per dataset, not included.\n")
    print(_interval_table())
    print(_INTERVAL_NOTE)
    return 0


_INTERVAL_NOTE = (f"\nInterval cost on the CPU at N = {INTERVAL_N:,} against {KID_REF:,} reference features: the FID "
                  "interval is 20 block-deleted FIDs (one eigvalsh of a D x D matrix each); the full-set KID with its "
                  "replicates replaces torch-fidelity's 100-subset KID, so `added` is the net cost of the intervals.")
