"""What the feature spaces of `pipeline.stages.features` run: input adapters, weights files and
closed-form references. The registry names these by reference ("module:function"), so that
reading the registry (config validation, the DAG) never imports torch.

    ImageSet            uint8 images -> torch-fidelity's input (one channel tiled to three)
    float64             float samples -> float64, for exact moments
    inception_weights   `fid.inception_weights` -> the weights file (or torch-fidelity's own download)
    exact               the Frechet distance to the true distribution's moments (gaussian, gmm)
"""
from __future__ import annotations

import http.client
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.util import console
from pipeline.util.errors import FIDError


# --------------------------------------------------------------------------- input adapters


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


def float64(samples) -> torch.Tensor:
    """Float samples [N, *shape] -> float64, so that the moments are exact to rounding."""
    return torch.as_tensor(samples, dtype=torch.float64)


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
    from pipeline.stages.features import inception_download

    dst, URL_INCEPTION_V3 = inception_download()
    if dst.is_file():
        return dst
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(dst), progress=not console.quiet())
    except (OSError, http.client.HTTPException) as e:  # URLError, socket errors and timeouts are OSErrors
        raise FIDError(
            f"fid.inception_weights is unset and torch-fidelity's Inception weights could not be downloaded "
            f"from {URL_INCEPTION_V3} ({type(e).__name__}: {e}). Provide them offline: set fid.inception_weights "
            "to a torch-fidelity state dict (an offline copy: ../shared/data/fid/"
            "weights-inception-2015-12-05-6726825d-converted.pth), or copy torch-fidelity's file to "
            f"{dst}, or convert an EDM/StyleGAN2-ADA `inception-2015-12-05.pt` with "
            "`python -m pipeline convert-inception inception-2015-12-05.pt --out weights.pth`"
        ) from e
    return dst


def check_inception_weights(path: Path, pinned: Optional[str]) -> str:
    """The weights file's sha256, refused (FIDError naming the key) unless it is `pinned` or, with no
    pin, a standard FID Inception (papers.is_standard_fid_weights): a truncated download, a file from
    another model or an accidental edit would otherwise give FIDs that look standard and are not."""
    from pipeline.report.papers import is_standard_fid_weights
    from pipeline.util import files

    sha = files.sha256_file(path)
    if pinned is not None and sha != pinned:
        raise FIDError(f"fid.inception_weights: {str(path)!r} has sha256 {sha}, but fid.inception_weights_sha256 "
                       f"says {pinned}; point fid.inception_weights at that file or correct the hash")
    if pinned is None and not is_standard_fid_weights(sha):
        raise FIDError(f"fid.inception_weights: {str(path)!r} (sha256 {sha[:16]}...) is not the standard FID "
                       "Inception (../shared/data/fid/weights-inception-2015-12-05-6726825d-converted.pth, or "
                       "torch-fidelity's own weights-inception-2015-12-05-6726825d.pth); to use it anyway, set "
                       f"fid.inception_weights_sha256: {sha} (its FIDs are then not comparable to the papers')")
    return sha


def inception_weights_of(cfg, classifier_path) -> Path:
    path = inception_weights(cfg.inception_weights)
    check_inception_weights(path, cfg.inception_weights_sha256)
    return path


def classifier_weights_of(cfg, classifier_path) -> Path:
    if classifier_path is None:
        raise FIDError("--classifier: the classifier feature space needs the classifier weights "
                       "(build/P/models/D/classifier.safetensors from the train-classifier stage)")
    path = Path(classifier_path)
    if not path.is_file():
        raise FIDError(f"--classifier: {str(path)!r} does not exist; run the train-classifier stage first")
    return path


# --------------------------------------------------------------------------- closed form


def _exact_gaussian(samples: torch.Tensor, manifest: dict, blocks: Optional[int]
                    ) -> tuple[float, Optional[np.ndarray], dict, str]:
    """Frechet distance of the samples' moments to the data set's true N(mu, s^2 I), and its
    delete-a-block replicates (None when `blocks` is None): the truth is fixed, the samples are the noise."""
    from pipeline.core import gaussian

    mu, s = float(manifest["mu"]), float(manifest["s"])
    if tuple(samples.shape[1:]) != tuple(manifest["shape"]):
        raise FIDError(f"--samples: shape {list(samples.shape[1:])} differs from the data's {manifest['shape']}")
    fd = gaussian.frechet_to_truth(samples, mu, s)
    reps = None if blocks is None else gaussian.frechet_to_truth_replicates(samples, mu, s, blocks)
    return float(fd), reps, {"mu": mu, "s": s}, f"N({mu:g}, {s:g}^2 I) on {manifest['shape']} (closed form)"


def _exact_gmm(samples: torch.Tensor, manifest: dict, blocks: Optional[int], data_dir: Path
               ) -> tuple[float, Optional[np.ndarray], dict, str]:
    """Frechet distance of the samples' moments (float, before uint8 rounding) to the mixture's exact
    mean and covariance (law of total covariance), in pixel space, with delete-a-block replicates."""
    from pipeline.core import gmm, intervals
    from pipeline.stages.data import MIXTURE_FILE

    mix = gmm.load(data_dir / MIXTURE_FILE)
    if tuple(samples.shape[1:]) != tuple(manifest["shape"]):
        raise FIDError(f"--samples: shape {list(samples.shape[1:])} differs from the data's {manifest['shape']}")
    mean, cov = mix.moments()
    x = samples.reshape(len(samples), -1)
    factor = intervals.covariance_factor(cov)
    if blocks is None:
        fd, _ = intervals.frechet_replicates(x, mean, factor, 1)
        reps = None
    else:
        fd, reps = intervals.frechet_replicates(x, mean, factor, blocks)
    return float(fd), reps, {"mixture_sha256": manifest["mixture"]["sha256"]}, \
        f"the mixture's exact mean and covariance in pixel space ({mix.K} components, rank {mix.r}; closed form)"


def exact(samples: torch.Tensor, manifest: dict, blocks: Optional[int], data_dir: Path):
    if manifest.get("source") == "gmm":
        return _exact_gmm(samples, manifest, blocks, data_dir)
    return _exact_gaussian(samples, manifest, blocks)
