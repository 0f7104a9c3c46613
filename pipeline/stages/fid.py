"""FID and KID of sampled images, through torch-fidelity, against reference statistics computed once.

The feature spaces (`fid.features`: inception, classifier, exact) are the registry of
pipeline.stages.features; every number is recorded with its space, and only `inception` is
comparable with published FIDs.

Stages:
    reference_stats  training-split features -> `build/P/stats/D/F.npz` (mu, sigma, a fixed random
                     subset of reference features for KID) + `F.json` (the stats id and provenance).
                     Computed once per (dataset manifest, split, count, feature space, weights,
                     KID subset size and seed).
    evaluate         one grid point's samples -> FID and KID against those stats, each with its 95%
                     interval -> `fid-F.json`; a closed-form space (exact) measures against its
                     exact reference instead. Stats made for another config are refused.

Sample and reference features go through torch-fidelity's own feature path (its
`create_feature_extractor` and `get_featuresdict_from_dataset`, the code `calculate_metrics`
runs). FID is torch-fidelity's `fid_statistics_to_metric` (Heusel et al. 2017, eq. 6 of the TTUR
paper's Frechet distance). KID (Binkowski et al. 2018: unbiased MMD^2 with the cubic polynomial
kernel) is computed over the full sample set against the full stored reference subset, the value
torch-fidelity's `kid_features_to_metric` estimates by averaging random subsets.

Intervals (pipeline/core/intervals.py, docs/fid.md): a delete-a-block jackknife over blocks of seeds,
so that two grid points' replicates are paired. FID's is for E[FID_N] against the fixed reference
statistics; KID's deletes a block of samples and of the reference subset and is for the population value.

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

from pipeline.util import console, files, provenance

from pipeline.core import intervals
from pipeline.config import FIDConfig, GridPoint
from pipeline.util.errors import FIDError
from pipeline.stages.feature_inputs import inception_weights  # noqa: F401  (used as fid.* by pipeline/bench/fid.py)
from pipeline.stages.features import (EXACT_EXTRACTOR, FEATURE_SPACES, FeatureSpace, check_extractor,  # noqa: F401
                                      feature_space, reference_spaces, spaces_for)

STATS_VERSION = 2  # 2: the id covers the KID reference subset (kid_ref_n, seed)
LEVEL = intervals.LEVEL


def _extractor(features: str) -> tuple[str, str]:
    """Feature space -> (torch-fidelity extractor name, feature layer)."""
    space = feature_space(features)
    if space.layer is None:
        raise FIDError(f"fid.features: {features!r} has no torch-fidelity extractor; "
                       f"known: {reference_spaces()}")
    check_extractor(space)
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
    space = next((s for s in FEATURE_SPACES.values() if s.extractor == feature_extractor and s.layer), None)
    if space is not None:
        check_extractor(space)  # registers a custom extractor with torch-fidelity
    layer = None if space is None else space.layer
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


def kid(features_1, features_2, *, blocks: Optional[int], level: float = LEVEL) -> dict:
    """KID of all of `features_1` [N, D] (the samples) against all of `features_2` [M, D] (the stored
    reference subset), with its delete-a-block jackknife interval.

    The unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018; gamma = 1/D, coef0 = 1,
    torch-fidelity's defaults) over the full sets: the expectation that torch-fidelity's average over
    random subsets estimates, without the subset draw's noise. Replicate b drops block b of the samples
    (by seed index) and block b of the reference subset (by its stored order). `blocks` None: no interval.
    Returns {kid_mean, kid_std (jackknife standard error), kid_ci [lo, hi], kid_replicates, kid_ref_n, note}.
    """
    n, m = len(features_1), len(features_2)
    out = {"kid_mean": None, "kid_std": None, "kid_ci": None, "kid_replicates": None, "kid_ref_n": m, "note": None}
    if n < 2 or m < 2:
        return {**out, "note": f"KID needs at least 2 samples and 2 reference features, got {n} and {m}"}
    if blocks is not None and (m < blocks or m - -(-m // blocks) < 2):  # every block non-empty, >= 2 kept
        out["note"] = f"KID: {m} reference features are too few for {blocks} jackknife blocks; no KID interval"
        blocks = None
    theta, reps = intervals.kid_replicates(features_1, features_2, blocks or 1)
    out["kid_mean"] = theta
    if blocks is not None:
        lo, hi, se = intervals.jackknife_interval(theta, reps, level)
        out.update(kid_std=se, kid_ci=[lo, hi], kid_replicates=reps.tolist())
    return out


def frechet(features_1: torch.Tensor, stats_2: dict) -> float:
    """FID between a feature set [N, D] and stored statistics {mu [D], sigma [D, D]} (torch-fidelity's formula)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats_1 = fid_features_to_statistics(torch.as_tensor(features_1).cpu())
    stats_2 = {"mu": np.asarray(stats_2["mu"]), "sigma": np.asarray(stats_2["sigma"])}
    if stats_1["mu"].shape != stats_2["mu"].shape:
        raise FIDError(f"feature dimension {stats_1['mu'].shape[0]} differs from the reference stats' "
                       f"{stats_2['mu'].shape[0]}: wrong stats file for this feature space")
    if stats_1["mu"].dtype != stats_2["mu"].dtype:  # torch-fidelity asserts equal dtypes: compare in float64
        stats_1, stats_2 = ({k: v.astype(np.float64) for k, v in s.items()} for s in (stats_1, stats_2))
    return float(fid_statistics_to_metric(stats_1, stats_2, False)[KEY_METRIC_FID])


def fid_with_interval(features_1, stats_2: dict, *, blocks: Optional[int], level: float = LEVEL) -> dict:
    """FID (`frechet`) with its delete-a-block jackknife interval over the samples: {fid, fid_ci, fid_replicates}.

    The reference statistics are fixed, so the samples are the noise: replicate b is the FID without
    block b of the samples (`intervals.frechet_replicates`, a factor of Sigma_r computed once). The interval
    is for E[FID_N] at this N against these statistics, not for the N -> infinity FID (FID is biased
    upward at finite N). `blocks` None: fid_ci and fid_replicates are None.
    """
    value = frechet(features_1, stats_2)
    if blocks is None:
        return {"fid": value, "fid_ci": None, "fid_replicates": None}
    factor = intervals.covariance_factor(stats_2["sigma"])
    _, reps = intervals.frechet_replicates(features_1, stats_2["mu"], factor, blocks)
    lo, hi, _ = intervals.jackknife_interval(value, reps, level)
    return {"fid": value, "fid_ci": [lo, hi], "fid_replicates": reps.tolist()}


# --------------------------------------------------------------------------- stages


def _stats_key(manifest_sha256: str, split: str, count: int, features: str, weights_sha256: Optional[str],
               kid_ref_n: int, kid_seed: int) -> dict:
    """Everything that defines reference statistics, by its key in the sidecar: hashed into the stats id,
    and compared key by key in `evaluate` so that a refusal can name what changed."""
    return {"data_manifest_sha256": manifest_sha256, "split": split, "count": count, "features": features,
            "weights_sha256": weights_sha256, "kid_ref_n": kid_ref_n, "kid_seed": kid_seed,
            "stats_version": STATS_VERSION}


def _stats_id(key: dict) -> str:
    """Cache key of reference statistics: data manifest + split + count + feature space + weights +
    the KID reference subset (its size and seed) + format version."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _reference_count(cfg: FIDConfig, available: int) -> tuple[int, int]:
    """(reference images, KID reference features) the config asks for, given `available` training images."""
    count = available if cfg.ref_n is None else min(cfg.ref_n, available)
    return count, min(count, cfg.kid_ref_n)


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
    from pipeline.stages import data

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
    count, kid_ref_n = _reference_count(cfg, len(prepared.images))
    manifest_sha = files.sha256_file(Path(data_dir) / "manifest.json")
    split = prepared.manifest.get("split", "train")
    weights_sha = _sha256(weights)
    stats_id = _stats_id(_stats_key(manifest_sha, split, count, features, weights_sha, kid_ref_n, cfg.seed))
    side = out_path.with_suffix(".json")
    if out_path.is_file() and side.is_file():
        old = files.read_json(side)
        if old.get("stats_id") == stats_id:
            return old  # computed once: same data, split, count, feature space, weights and KID subset

    # What the reference set is made of, by content (papers.comparability reads it): the uint8 images
    # as one NHWC C-contiguous array in the prepared order, the convention of papers.CIFAR10_TRAIN_NHWC_SHA256.
    ref_content_sha256 = hashlib.sha256(
        np.ascontiguousarray(np.asarray(prepared.images[:count]).transpose(0, 2, 3, 1)).tobytes()).hexdigest()
    feats = extract_features(prepared.images[:count], features, weights, device=device,
                             batch_size=cfg.batch_size, verbose=not console.quiet())
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(feats)
    rng = np.random.RandomState(cfg.seed)
    kid_idx = np.sort(rng.choice(count, size=kid_ref_n, replace=False))
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
        "ref_content_sha256": ref_content_sha256,
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
    stats = files.load_npz(stats_path, error=FIDError, fix="delete it and rerun the ref-stats stage")
    return stats, files.read_json(side)


def _point_name(point) -> str:
    return point.name if isinstance(point, GridPoint) else str(point)


def _load_samples(samples_path: Path, key: str = "samples") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """samples.npz -> (samples [N, ...], seeds [N] or None): image k was drawn from seeds[k]. `key`
    samples_float: a mixture's float samples where stored, else `samples`."""
    if not Path(samples_path).is_file():
        raise FIDError(f"--samples: {samples_path} does not exist; run the sample stage first")
    z = files.load_npz(samples_path, error=FIDError, fix="delete it and rerun the sample stage of this point")
    if key not in z:
        key = "samples"
    if "samples" not in z:
        raise FIDError(f"--samples: {samples_path} has no 'samples' array (keys {list(z.keys())})")
    return z[key], z.get("seeds")


def _seeds_text(seeds: Optional[np.ndarray]) -> Optional[str]:
    """The seeds of images 0..N-1 as the sample record writes them ("s..s+N-1"); a digest when not consecutive."""
    if seeds is None or len(seeds) == 0:
        return None
    seeds = np.asarray(seeds, dtype=np.int64)
    if (np.diff(seeds) == 1).all():
        return f"{seeds[0]}..{seeds[-1]}"
    return "sha256:" + hashlib.sha256(seeds.tobytes()).hexdigest()[:16]


def _interval_fields(blocks: Optional[int], n: int, notes: list) -> dict:
    """The record's description of its intervals (the same for FID, KID and the exact FD)."""
    if blocks is None:
        notes = [f"N = {n} < {intervals.MIN_N} samples: too few for a jackknife interval", *notes]
    return {"interval_method": intervals.METHOD, "interval_level": LEVEL, "interval_blocks": blocks,
            "interval_note": "; ".join(notes) or None}


def _check_stats(stats_path: Path, stats: dict, side: dict, want: dict) -> None:
    """Refuse reference stats made for another config (FIDError naming the file, the keys and the fix)."""
    stale = [(k, side.get(k), v) for k, v in want.items() if side.get(k) != v]
    if not stale and side.get("stats_id") != _stats_id(want):
        stale = [("stats_id", side.get("stats_id"), _stats_id(want))]
    if not stale and (int(stats["n"]) != side.get("count") or len(stats["kid_features"]) != side.get("kid_ref_n")):
        stale = [("n / kid_features in the .npz", (int(stats["n"]), len(stats["kid_features"])),
                  (side.get("count"), side.get("kid_ref_n")))]
    if stale:
        config = {"count": "fid.ref_n", "kid_ref_n": "fid.kid_ref_n", "kid_seed": "fid.seed", "features": "fid.features",
                  "weights_sha256": "the feature extractor's weights", "data_manifest_sha256": "the prepared data",
                  "stats_version": "the stats format"}
        what = ", ".join(f"{k} ({config[k]})={a!r}, now {b!r}" if k in config else f"{k}={a!r}, now {b!r}"
                         for k, a, b in stale)
        raise FIDError(f"--stats {stats_path}: made for other inputs ({what}); delete {stats_path} and "
                       f"{stats_path.with_suffix('.json')} and rerun the ref-stats stage (`python -m pipeline ref-stats`)")


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
    """FID and KID of one grid point's samples, each with its 95% interval -> `out_path` (fid-F.json); returns the record.

    Image data sets: features of the samples vs the stored reference stats, which must have been made
    for this data, feature space, weights, fid.ref_n, fid.kid_ref_n and fid.seed (else FIDError before
    any compute). A closed-form space (`exact`, gaussian): the Frechet distance of the sample moments to
    the true N(mu, s^2 I); KID is null there (the reference is a distribution, not a sample).
    Intervals: `intervals.n_blocks(N)` seed blocks (null with `interval_note` below 10 samples).
    """
    from pipeline.stages import data

    space = feature_space(features)
    samples_path, out_path = Path(samples_path), Path(out_path)
    prepared = data.load_prepared(data_dir, verify=False)
    manifest = prepared.manifest
    manifest_sha = files.sha256_file(Path(data_dir) / "manifest.json")
    source = manifest.get("source")
    kind = source if source in ("gaussian", "gmm") else "images"
    kinds = {"gmm": ("gmm", "images")}.get(kind, (kind,))  # a mixture's samples are images too
    if not set(space.data) & set(kinds):
        allowed = list(dict.fromkeys(n for k in kinds for n in spaces_for(k)))
        raise FIDError(f"fid.features: {features!r} does not apply to dataset {dataset!r} "
                       f"({kind}: use {' or '.join(allowed)})")
    # a closed-form space reads a mixture's float samples (before uint8 rounding) where they are stored
    samples, seeds = _load_samples(samples_path, "samples_float" if space.closed_form is not None else "samples")
    n = int(len(samples))
    if n < 2:
        raise FIDError(f"{dataset}/{_point_name(point)}: FID needs at least 2 samples, got {n}")
    blocks = intervals.n_blocks(n)
    record = {
        "dataset": dataset,
        "point": _point_name(point),
        "features": features,
        "n_images": n,
        "seeds": _seeds_text(seeds),
        "samples_path": str(samples_path),
        "samples_sha256": files.sha256_file(samples_path),
        "data_manifest_sha256": manifest_sha,
        "comparable_to_papers": space.comparable_to_papers,
    }

    if space.closed_form is not None:
        fd, reps, params, reference = space.closed_form(space.adapt(samples), manifest, blocks, Path(data_dir))
        ref_id = hashlib.sha256(json.dumps({"manifest_sha256": manifest_sha, "features": features, **params},
                                           sort_keys=True).encode()).hexdigest()[:16]
        ci = None if reps is None else list(intervals.jackknife_interval(float(fd), reps, LEVEL)[:2])
        record.update(
            fid=float(fd), fid_ci=ci, fid_replicates=None if reps is None else reps.tolist(),
            kid_mean=None, kid_std=None, kid_ci=None, kid_replicates=None, kid_subset_size=None, kid_subsets=None,
            kid_ref_n=None, **_interval_fields(blocks, n, []),
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
    if prepared.images is None:
        raise FIDError(f"--data {data_dir}: the data set has no images to check the reference stats against")
    device = provenance.resolve_device(cfg.device)
    weights = _weights(space, cfg, classifier_path)
    stats_path = Path(stats_path)
    stats, side = load_stats(stats_path)
    weights_sha = _sha256(weights)
    count, kid_ref_n = _reference_count(cfg, len(prepared.images))
    _check_stats(stats_path, stats, side, _stats_key(manifest_sha, manifest.get("split", "train"), count, features,
                                                     weights_sha, kid_ref_n, cfg.seed))
    if list(samples.shape[1:]) != list(side.get("image_shape", samples.shape[1:])):
        raise FIDError(f"--samples: image shape {list(samples.shape[1:])} differs from the reference images' "
                       f"{side['image_shape']}")

    feats = extract_features(samples, features, weights, device=device, batch_size=cfg.batch_size,
                             verbose=not console.quiet())
    kid_out = kid(feats, stats["kid_features"], blocks=blocks)
    record.update(
        **fid_with_interval(feats, stats, blocks=blocks),
        kid_mean=kid_out["kid_mean"],
        kid_std=kid_out["kid_std"],
        kid_ci=kid_out["kid_ci"],
        kid_replicates=kid_out["kid_replicates"],
        kid_subset_size=None,  # KID is the full-set statistic now: no subsets (fid.kid_subset_size is unused)
        kid_subsets=None,
        kid_ref_n=kid_out["kid_ref_n"],
        **_interval_fields(blocks, n, [kid_out["note"]] if kid_out["note"] else []),
        ref_n=int(stats["n"]),
        ref_stats_id=side["stats_id"],
        feature_extractor=space.extractor,
        feature_layer=space.layer,
        weights_sha256=weights_sha,
        features_weights_sha256=weights_sha,  # the extractor's weights, for papers.comparability
        ref_content_sha256=side.get("ref_content_sha256"),
        fingerprint=provenance.fingerprint(device),
    )
    files.write_json(out_path, record)
    return record
