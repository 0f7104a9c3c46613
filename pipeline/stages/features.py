"""Feature spaces for FID and KID: a registry, one validated entry per space.

    FEATURE_SPACES            name -> FeatureSpace, in registration order (the names `fid.features` may use)
    feature_space(name)       the entry; FIDError listing the known names for an unknown one
    register(space)           validates and adds an entry (torch-fidelity's registry.py does the same)

The spaces, always recorded beside every number:

    inception   torch-fidelity's `inception-v3-compat` (the TF FID Inception, 2048-d pool features).
                The standard: the only space whose FID is comparable with published numbers.
                Weights: `fid.inception_weights` (a torch-fidelity state dict), else torch-fidelity's
                own download; with neither, a clear error saying how to provide them.
    classifier  penultimate features of the small classifier of `pipeline.stages.classifier`, registered with
                torch-fidelity as `ddbench-classifier`. Fast on a CPU; internal, NOT comparable to papers.
    exact       data sets with an exact score only: the Frechet distance of the samples' moments to
                the true N(mu, s^2 I) (`gaussian.frechet_to_truth`) or to a `gmm`'s exact mean and
                covariance (pixel space, float samples), with jackknife replicates; no reference
                set, no KID.

Adding a space is one `register(...)` call here and its test: e.g. torch-fidelity's own
`dinov2-vit-b-14` or `clip-vit-b-32` extractor, `adapt=ImageSet`, the layer from its
`get_provided_features_list()`, and `weights=None` to let torch-fidelity fetch its weights.
"""
from __future__ import annotations

import http.client
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.stages import classifier

from pipeline.util import console
from pipeline.util.errors import FIDError

INCEPTION = "inception-v3-compat"
INCEPTION_LAYER = "2048"
EXACT_EXTRACTOR = "exact-gaussian-moments"
DATA_KINDS = ("images", "gaussian", "gmm")  # uint8 images; the gaussian's float samples; a mixture's (images too)


@dataclass(frozen=True)
class FeatureSpace:
    """One space FID/KID are measured in.

    Either `layer` is set: samples -> `adapt` -> torch-fidelity extractor `extractor` -> features of
    `layer`, compared with reference statistics computed once per data set (the ref-stats stage).
    Or `closed_form` is: samples -> `adapt` -> the Frechet distance to a reference known exactly
    (no reference statistics, no KID).
    """

    name: str
    data: tuple  # the kinds of data set it applies to (DATA_KINDS; a single name is accepted)
    adapt: Callable  # samples as stored in samples.npz -> the extractor's input (a Dataset, or a float tensor)
    comparable_to_papers: bool  # True only where published FIDs were measured the same way
    extractor: str  # recorded as `feature_extractor`; a torch-fidelity registry name when `layer` is set
    layer: Optional[str] = None  # the torch-fidelity feature layer FID and KID use
    dim: Optional[int] = None  # feature dimension; None when the weights or the data set it
    weights: Optional[Callable] = None  # (FIDConfig, --classifier path) -> the weights file; None: no file needed
    # (adapted samples, manifest, jackknife blocks or None) -> (FD, its block replicates or None,
    #  reference params, reference text)
    closed_form: Optional[Callable] = None
    description: str = ""
    # called before the extractor is first used, e.g. to register a custom torch-fidelity extractor;
    # kept lazy because importing torch-fidelity costs seconds of every job's start-up
    setup: Optional[Callable[[], None]] = None


FEATURE_SPACES: dict[str, FeatureSpace] = {}


def register(space: FeatureSpace) -> None:
    """Add `space` to FEATURE_SPACES; ValueError naming the field when an entry cannot work."""
    if not isinstance(space, FeatureSpace):
        raise ValueError(f"feature space: expected a FeatureSpace, got {type(space).__name__}")
    name = space.name
    if not isinstance(name, str) or not name or name.strip() != name:
        raise ValueError(f"feature space: name {name!r} must be a non-empty string without outer spaces")
    if name in FEATURE_SPACES:
        raise ValueError(f"feature space {name!r} is already registered")
    kinds = (space.data,) if isinstance(space.data, str) else tuple(space.data)
    if not kinds or any(k not in DATA_KINDS for k in kinds):
        raise ValueError(f"feature space {name!r}: data {space.data!r}; allowed: one or more of {list(DATA_KINDS)}")
    space = replace(space, data=kinds)
    if not callable(space.adapt) or (space.weights is not None and not callable(space.weights)):
        raise ValueError(f"feature space {name!r}: adapt and weights must be callables")
    if not isinstance(space.comparable_to_papers, bool):
        raise ValueError(f"feature space {name!r}: comparable_to_papers must be True or False")
    if space.dim is not None and (isinstance(space.dim, bool) or not isinstance(space.dim, int) or space.dim < 1):
        raise ValueError(f"feature space {name!r}: dim {space.dim!r} must be None or an integer >= 1")
    if (space.layer is None) == (space.closed_form is None):
        raise ValueError(f"feature space {name!r}: give exactly one of layer (a torch-fidelity extractor) "
                         "and closed_form (an exact reference)")
    if space.closed_form is not None and space.weights is not None:
        raise ValueError(f"feature space {name!r}: a closed-form space has no weights")
    if space.setup is not None and not callable(space.setup):
        raise ValueError(f"feature space {name!r}: setup must be a callable")
    FEATURE_SPACES[name] = space


def check_extractor(space: FeatureSpace) -> None:
    """The torch-fidelity half of registration, run when a space's extractor is first needed (not at
    import: the exact space and the classifier's training never import torch-fidelity). ValueError
    when the extractor is not registered with torch-fidelity or lacks the layer."""
    if space.closed_form is not None:
        return
    if space.setup is not None:
        space.setup()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY.get(space.extractor)
    if cls is None:
        raise ValueError(f"feature space {space.name!r}: {space.extractor!r} is not a torch-fidelity feature extractor; "
                         f"registered: {list(FEATURE_EXTRACTORS_REGISTRY)}")
    if space.layer not in cls.get_provided_features_list():
        raise ValueError(f"feature space {space.name!r}: {space.extractor!r} has no layer {space.layer!r}; "
                         f"it provides {list(cls.get_provided_features_list())}")


def feature_space(name: str) -> FeatureSpace:
    """The registered space `name` (FIDError listing the known ones otherwise)."""
    if name not in FEATURE_SPACES:
        raise FIDError(f"fid.features: {name!r} is not a feature space; known: {list(FEATURE_SPACES)}")
    return FEATURE_SPACES[name]


def spaces_for(data: str) -> list[str]:
    """Names of the spaces that apply to data sets of kind `data` (one of DATA_KINDS)."""
    return [name for name, space in FEATURE_SPACES.items() if data in space.data]


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


def _float64(samples) -> torch.Tensor:
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
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    dst = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(URL_INCEPTION_V3).path)
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


def _inception_weights(cfg, classifier_path) -> Path:
    return inception_weights(cfg.inception_weights)


def _classifier_weights(cfg, classifier_path) -> Path:
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


def _exact(samples: torch.Tensor, manifest: dict, blocks: Optional[int], data_dir: Path):
    if manifest.get("source") == "gmm":
        return _exact_gmm(samples, manifest, blocks, data_dir)
    return _exact_gaussian(samples, manifest, blocks)


# --------------------------------------------------------------------------- the registered spaces

register(FeatureSpace(
    "inception", data="images", adapt=ImageSet, comparable_to_papers=True,
    extractor=INCEPTION, layer=INCEPTION_LAYER, dim=2048, weights=_inception_weights,
    description="the TF FID Inception's 2048-d pool features, as in published FIDs",
))
register(FeatureSpace(
    "classifier", data="images", adapt=ImageSet, comparable_to_papers=False,
    extractor=classifier.EXTRACTOR_NAME, layer=classifier.FEATURE_LAYER, weights=_classifier_weights,
    setup=classifier.register_extractor,
    description="penultimate features of the data set's own small classifier (internal)",
))
register(FeatureSpace(
    "exact", data=("gaussian", "gmm"), adapt=_float64, comparable_to_papers=False,
    extractor=EXACT_EXTRACTOR, closed_form=_exact,
    description="its reference is the true distribution's moments: N(mu, s^2 I) in the data manifest, "
                "or the fitted mixture's exact mean and covariance",
))
