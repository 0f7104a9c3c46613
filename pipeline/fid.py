"""FID and KID of sampled images, through torch-fidelity, against reference statistics computed once.

The feature spaces (`fid.features`: inception, classifier, exact) are the registry of
pipeline.features; every number is recorded with its space, and only `inception` is
comparable with published FIDs.

Stages:
    reference_stats  training-split features -> `build/P/stats/D/F.npz` (mu, sigma, a fixed random
                     subset of reference features for KID) + `F.json` (the stats id and provenance).
                     Computed once per (dataset manifest, split, count, feature space, weights).
    evaluate         one grid point's samples -> FID and KID against those stats -> `fid-F.json`;
                     a closed-form space (exact) measures against its exact reference instead.

Sample and reference features go through torch-fidelity's own feature path (its
`create_feature_extractor` and `get_featuresdict_from_dataset`, the code `calculate_metrics`
runs); the metrics through its `fid_statistics_to_metric` (Heusel et al. 2017, eq. 6 of the
TTUR paper's Frechet distance) and `kid_features_to_metric` (Binkowski et al. 2018: unbiased
MMD^2 with the cubic polynomial kernel, averaged over random subsets).

`calculate_metrics` below is the typed wrapper over `torch_fidelity.calculate_metrics` for two
in-memory image sets (tests, the benchmark): torch-fidelity silently ignores unknown keyword
arguments, so every argument is spelled out here and nowhere else.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline import console, files, provenance
from pipeline.config import FIDConfig, GridPoint
from pipeline.errors import FIDError
from pipeline.features import EXACT_EXTRACTOR, inception_weights  # noqa: F401  (used as fid.* by pipeline/bench/fid.py)
from pipeline.features import FEATURE_SPACES, FeatureSpace, feature_space, spaces_for

STATS_VERSION = 1


def _extractor(features: str) -> tuple[str, str]:
    """Feature space -> (torch-fidelity extractor name, feature layer)."""
    space = feature_space(features)
    if space.layer is None:
        raise FIDError(f"fid.features: {features!r} has no torch-fidelity extractor; "
                       f"known: {[n for n, s in FEATURE_SPACES.items() if s.layer is not None]}")
    return space.extractor, space.layer


@contextlib.contextmanager
def _cuda_device(device: str):
    """torch-fidelity moves to `.cuda()` (the current device): make `cuda:N` current for the call."""
    if device.startswith("cuda:"):
        with torch.cuda.device(int(device.split(":")[1])):
            yield True
    else:
        yield device == "cuda"


# --------------------------------------------------------------------------- torch-fidelity


def calculate_metrics(
    input1: Dataset,
    input2: Dataset,
    *,
    feature_extractor: str,
    weights_path: Optional[str | Path],
    cuda: bool,
    fid: bool = True,
    kid: bool = True,
    batch_size: int = 64,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    rng_seed: int = 0,
    verbose: bool = False,
) -> dict:
    """Typed wrapper over `torch_fidelity.calculate_metrics` for two image sets (uint8 [3, H, W] Datasets).

    feature_extractor: a torch-fidelity registry name (`inception-v3-compat`, `ddbench-classifier`).
    KID's subset size is capped at the smaller set. No file cache: features depend on the weights,
    which torch-fidelity's cache names do not include.
    Returns {"fid", "kid_mean", "kid_std"} (absent metrics are None).
    """
    import torch_fidelity

    # the layer a registered feature space reads from this extractor, else torch-fidelity's default for FID
    layer = next((s.layer for s in FEATURE_SPACES.values() if s.extractor == feature_extractor and s.layer), None)
    if layer is None:
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        if feature_extractor not in FEATURE_EXTRACTORS_REGISTRY:
            raise FIDError(f"feature_extractor {feature_extractor!r} is not registered with torch-fidelity")
        layer = FEATURE_EXTRACTORS_REGISTRY[feature_extractor].get_default_feature_layer_for_metric("fid")
    subset = min(kid_subset_size, len(input1), len(input2))
    if kid and subset < 2:
        raise FIDError(f"KID needs at least 2 images in each set, got {len(input1)} and {len(input2)}")
    out = torch_fidelity.calculate_metrics(
        input1=input1,
        input2=input2,
        cuda=cuda,
        batch_size=batch_size,
        isc=False,
        fid=fid,
        kid=kid,
        prc=False,
        ppl=False,
        feature_extractor=feature_extractor,
        feature_layer_fid=layer,
        feature_layer_kid=layer,
        feature_extractor_weights_path=None if weights_path is None else str(weights_path),
        kid_subsets=kid_subsets,
        kid_subset_size=subset,
        kid_kernel="poly",
        kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1,
        cache=False,
        save_cpu_ram=True,  # no DataLoader worker processes: the sets are in memory already
        rng_seed=rng_seed,
        verbose=verbose,
    )
    return {
        "fid": out.get(torch_fidelity.KEY_METRIC_FID),
        "kid_mean": out.get(torch_fidelity.KEY_METRIC_KID_MEAN),
        "kid_std": out.get(torch_fidelity.KEY_METRIC_KID_STD),
    }


def extract_features(
    images,
    features: str,
    weights_path: Optional[str | Path],
    *,
    device: str = "cpu",
    batch_size: int = 64,
    verbose: bool = False,
) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float32 features [N, D] through torch-fidelity's own feature path.

    `features` names a registered space with a torch-fidelity extractor; its `adapt` makes the Dataset
    torch-fidelity reads, `weights_path` None lets torch-fidelity fetch the extractor's own weights. The extractor is built by `torch_fidelity.utils.create_feature_extractor` (for Inception: its
    TF-compatible resize to 299x299 and (x - 128) / 128 inside) and run by `get_featuresdict_from_dataset`,
    exactly what `calculate_metrics` does for a Dataset input.
    """
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    name, layer = _extractor(features)
    space = feature_space(features)
    data = space.adapt(images)
    weights = None if weights_path is None else str(weights_path)
    with _cuda_device(device) as cuda:
        extractor = create_feature_extractor(name, [layer], cuda=cuda, feature_extractor_weights_path=weights,
                                             verbose=verbose)
        feats = get_featuresdict_from_dataset(data, extractor, batch_size, cuda, True, verbose)[layer]
    if space.dim is not None and feats.shape[1] != space.dim:
        raise FIDError(f"fid.features {features!r}: {name} gave {feats.shape[1]}-d features, expected {space.dim}")
    return feats.to(torch.float32)


def kid(features_1: torch.Tensor, features_2: torch.Tensor, *, subsets: int, subset_size: int, seed: int) -> dict:
    """Unbiased KID between two feature sets; subset size capped at the smaller set (>= 2 required)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    m = min(subset_size, len(features_1), len(features_2))
    if m < 2:
        return {"kid_mean": None, "kid_std": None, "kid_subset_size": m}
    out = kid_features_to_metric(
        features_1, features_2,
        kid_subsets=subsets, kid_subset_size=m, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
        rng_seed=seed, verbose=False,
    )
    return {"kid_mean": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD], "kid_subset_size": m}


def frechet(features_1: torch.Tensor, stats_2: dict) -> float:
    """FID between a feature set [N, D] and stored statistics {mu [D], sigma [D, D]} (torch-fidelity's formula)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats_1 = fid_features_to_statistics(features_1.cpu())
    stats_2 = {"mu": np.asarray(stats_2["mu"]), "sigma": np.asarray(stats_2["sigma"])}
    if stats_1["mu"].shape != stats_2["mu"].shape:
        raise FIDError(f"feature dimension {stats_1['mu'].shape[0]} differs from the reference stats' "
                       f"{stats_2['mu'].shape[0]}: wrong stats file for this feature space")
    return float(fid_statistics_to_metric(stats_1, stats_2, False)[KEY_METRIC_FID])


# --------------------------------------------------------------------------- stages


def _stats_id(manifest_sha256: str, split: str, count: int, features: str, weights_sha256: str) -> str:
    """Cache key of reference statistics: data manifest + split + count + feature space + weights."""
    key = {"manifest_sha256": manifest_sha256, "split": split, "count": count,
           "features": features, "weights_sha256": weights_sha256, "version": STATS_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _weights(space: FeatureSpace, cfg: FIDConfig, classifier_path) -> Optional[Path]:
    """The space's weights file (FIDError saying how to get it), None for an extractor that fetches its own."""
    return None if space.weights is None else space.weights(cfg, classifier_path)


def _sha256(path: Optional[Path]) -> Optional[str]:
    return None if path is None else files.sha256_file(path)


def reference_stats(
    cfg: FIDConfig, features: str, data_dir: str | Path, classifier_path: Optional[str | Path], out_path: str | Path
) -> dict:
    """Training-split features -> `out_path` (.npz: mu, sigma, kid_features, n) + sidecar `.json`; returns the sidecar.

    The first `fid.ref_n` images of the prepared split (all when null) are the reference set. KID keeps
    a fixed random subset of `fid.kid_ref_n` of their features (drawn with `fid.seed`). When `out_path`
    already holds stats with the same id, nothing is recomputed.
    """
    from pipeline import data

    space = feature_space(features)
    if space.closed_form is not None:
        raise FIDError(f"fid.features {features!r} ({space.data}) needs no reference stats: {space.description}")
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise FIDError(f"ref-stats: output {out_path} must end in .npz")
    device = provenance.resolve_device(cfg.device)
    weights = _weights(space, cfg, classifier_path)
    prepared = data.load_prepared(data_dir)
    if prepared.images is None:
        raise FIDError(f"ref-stats: the data set in {data_dir} has no images "
                       f"(gaussian uses features {', '.join(map(repr, spaces_for('gaussian')))})")
    count = len(prepared.images) if cfg.ref_n is None else min(cfg.ref_n, len(prepared.images))
    manifest_sha = files.sha256_file(Path(data_dir) / "manifest.json")
    split = prepared.manifest.get("split", "train")
    weights_sha = _sha256(weights)
    stats_id = _stats_id(manifest_sha, split, count, features, weights_sha)
    side = out_path.with_suffix(".json")
    if out_path.is_file() and side.is_file():
        old = files.read_json(side)
        if old.get("stats_id") == stats_id:
            return old  # computed once: same data, split, count, feature space and weights

    feats = extract_features(prepared.images[:count], features, weights, device=device,
                             batch_size=cfg.batch_size, verbose=not console.quiet())
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(feats)
    rng = np.random.RandomState(cfg.seed)
    kid_idx = np.sort(rng.choice(count, size=min(count, cfg.kid_ref_n), replace=False))
    with files.atomic_path(out_path) as tmp:
        np.savez_compressed(tmp, mu=stats["mu"], sigma=stats["sigma"], kid_features=feats[kid_idx].numpy(),
                            kid_index=kid_idx, n=np.int64(count))
    record = {
        "stats_id": stats_id,
        "stats_version": STATS_VERSION,
        "dataset": prepared.manifest.get("dataset"),
        "split": split,
        "count": count,
        "ref_n_requested": cfg.ref_n,
        "reference_rule": "the first `count` images of the prepared split",
        "features": features,
        "feature_extractor": space.extractor,
        "feature_layer": space.layer,
        "feature_dim": int(feats.shape[1]),
        "weights_path": None if weights is None else str(weights),
        "weights_sha256": weights_sha,
        "kid_ref_n": int(len(kid_idx)),
        "kid_seed": cfg.seed,
        "data_manifest_sha256": manifest_sha,
        "image_shape": list(prepared.images.shape[1:]),
        "fingerprint": provenance.fingerprint(device),
    }
    files.write_json(side, record)
    return record


def load_stats(stats_path: str | Path) -> tuple[dict, dict]:
    """`F.npz` + `F.json` -> ({mu, sigma, kid_features, n}, sidecar)."""
    stats_path = Path(stats_path)
    side = stats_path.with_suffix(".json")
    missing = [str(p) for p in (stats_path, side) if not p.is_file()]
    if missing:
        raise FIDError(f"--stats: {missing} missing; run the ref-stats stage first "
                       "(reference statistics are computed once per dataset and feature space)")
    with np.load(stats_path, allow_pickle=False) as z:
        stats = {k: z[k] for k in z.keys()}
    return stats, files.read_json(side)


def _point_name(point) -> str:
    return point.name if isinstance(point, GridPoint) else str(point)


def _load_samples(samples_path: Path) -> np.ndarray:
    if not Path(samples_path).is_file():
        raise FIDError(f"--samples: {samples_path} does not exist; run the sample stage first")
    with np.load(samples_path, allow_pickle=False) as z:
        if "samples" not in z:
            raise FIDError(f"--samples: {samples_path} has no 'samples' array (keys {list(z.keys())})")
        return z["samples"]


def evaluate(
    cfg: FIDConfig,
    features: str,
    samples_path: str | Path,
    data_dir: str | Path,
    stats_path: Optional[str | Path],
    classifier_path: Optional[str | Path],
    out_path: str | Path,
    dataset: str,
    point,
) -> dict:
    """FID and KID of one grid point's samples -> `out_path` (fid-F.json); returns the record.

    Image data sets: features of the samples vs the stored reference stats (checked to match this data,
    feature space and weights). A closed-form space (`exact`, gaussian): the Frechet distance of the
    sample moments to the true N(mu, s^2 I); KID is null there (the reference is a distribution, not a sample).
    """
    from pipeline import data

    space = feature_space(features)
    samples_path, out_path = Path(samples_path), Path(out_path)
    prepared = data.load_prepared(data_dir, verify=False)
    manifest = prepared.manifest
    manifest_sha = files.sha256_file(Path(data_dir) / "manifest.json")
    gaussian = manifest.get("source") == "gaussian"
    kind = "gaussian" if gaussian else "images"
    if space.data != kind:
        raise FIDError(f"fid.features: {features!r} does not apply to dataset {dataset!r} "
                       f"({kind}: use {' or '.join(spaces_for(kind))})")
    samples = _load_samples(samples_path)
    n = int(len(samples))
    if n < 2:
        raise FIDError(f"{dataset}/{_point_name(point)}: FID needs at least 2 samples, got {n}")
    record = {
        "dataset": dataset,
        "point": _point_name(point),
        "features": features,
        "n_images": n,
        "samples_path": str(samples_path),
        "samples_sha256": files.sha256_file(samples_path),
        "data_manifest_sha256": manifest_sha,
        "comparable_to_papers": space.comparable_to_papers,
    }

    if space.closed_form is not None:
        fd, params, reference = space.closed_form(space.adapt(samples), manifest)
        ref_id = hashlib.sha256(json.dumps({"manifest_sha256": manifest_sha, "features": features, **params},
                                           sort_keys=True).encode()).hexdigest()[:16]
        record.update(
            fid=float(fd), kid_mean=None, kid_std=None, kid_subset_size=None, kid_subsets=None,
            ref_n=None, ref_stats_id=ref_id, feature_extractor=space.extractor, feature_layer=None,
            weights_sha256=None, reference=reference, fingerprint=provenance.fingerprint("cpu"),
        )
        files.write_json(out_path, record)
        return record

    if stats_path is None:
        raise FIDError(f"--stats: the {features} feature space needs the reference stats "
                       f"(build/P/stats/{dataset}/{features}.npz from the ref-stats stage)")
    if samples.dtype != np.uint8:
        raise FIDError(f"--samples: expected uint8 images for dataset {dataset!r}, got {samples.dtype}")
    device = provenance.resolve_device(cfg.device)
    weights = _weights(space, cfg, classifier_path)
    stats, side = load_stats(stats_path)
    weights_sha = _sha256(weights)
    stale = [(k, side.get(k), v) for k, v in (("features", features), ("weights_sha256", weights_sha),
                                               ("data_manifest_sha256", manifest_sha)) if side.get(k) != v]
    if stale:
        raise FIDError(f"--stats {stats_path}: made for other inputs ({', '.join(f'{k}={a!r}, now {b!r}' for k, a, b in stale)}); "
                       "rerun the ref-stats stage")
    if list(samples.shape[1:]) != list(side.get("image_shape", samples.shape[1:])):
        raise FIDError(f"--samples: image shape {list(samples.shape[1:])} differs from the reference images' "
                       f"{side['image_shape']}")

    feats = extract_features(samples, features, weights, device=device, batch_size=cfg.batch_size,
                             verbose=not console.quiet())
    kid_out = kid(feats, torch.from_numpy(stats["kid_features"]), subsets=cfg.kid_subsets,
                  subset_size=cfg.kid_subset_size, seed=cfg.seed)
    record.update(
        fid=frechet(feats, stats),
        kid_mean=kid_out["kid_mean"],
        kid_std=kid_out["kid_std"],
        kid_subset_size=kid_out["kid_subset_size"],
        kid_subsets=cfg.kid_subsets,
        ref_n=int(stats["n"]),
        ref_stats_id=side["stats_id"],
        feature_extractor=space.extractor,
        feature_layer=space.layer,
        weights_sha256=weights_sha,
        fingerprint=provenance.fingerprint(device),
    )
    files.write_json(out_path, record)
    return record
