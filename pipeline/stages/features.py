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

Adding a space is one `register(...)` call here and its test, and nothing else: the schema's
`fid.features` enum, the DAG's jobs (reference statistics for a space with a layer, the
classifier's training for a space that reads the data set's own classifier) and the Snakefile's
wildcards are all derived from this registry. E.g. torch-fidelity's own `dinov2-vit-b-14` or
`clip-vit-b-32` extractor, `adapt="pipeline.stages.feature_inputs:ImageSet"`, the layer from its
`get_provided_features_list()`, and `weights=None` to let torch-fidelity fetch its weights.

The callables of an entry may be given by reference ("module:function", resolved on first call),
as the registered ones are: reading the registry imports neither torch nor torch-fidelity, so
config validation and the DAG read it for free. Their code lives in `pipeline.stages.feature_inputs`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Callable, Optional, Union

from pipeline.util.errors import FIDError

INCEPTION = "inception-v3-compat"
INCEPTION_LAYER = "2048"
EXACT_EXTRACTOR = "exact-gaussian-moments"
DATA_KINDS = ("images", "gaussian", "gmm")  # uint8 images; the gaussian's float samples; a mixture's (images too)
# pipeline.stages.classifier registers its extractor with torch-fidelity under this name and layer
# (check_extractor verifies both on first use)
CLASSIFIER_EXTRACTOR = "ddbench-classifier"
CLASSIFIER_LAYER = "penultimate"


class Lazy:
    """A callable given as "module:function": imported on its first call, so that an entry of the
    registry costs nothing to read. `pipeline.dag` follows these references as code dependencies."""

    def __init__(self, ref: str):
        module, sep, attr = ref.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"feature space: reference {ref!r} must be 'module:function'")
        self.ref = ref
        self._fn = None

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            module, _, attr = self.ref.partition(":")
            self._fn = getattr(importlib.import_module(module), attr)
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Lazy({self.ref!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Lazy) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)


Ref = Union[Callable, str]  # a callable, or "module:function" (made a Lazy by register)


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
    adapt: Ref  # samples as stored in samples.npz -> the extractor's input (a Dataset, or a float tensor)
    comparable_to_papers: bool  # True only where published FIDs were measured the same way
    extractor: str  # recorded as `feature_extractor`; a torch-fidelity registry name when `layer` is set
    layer: Optional[str] = None  # the torch-fidelity feature layer FID and KID use
    dim: Optional[int] = None  # feature dimension; None when the weights or the data set it
    weights: Optional[Ref] = None  # (FIDConfig, --classifier path) -> the weights file; None: no file needed
    # (adapted samples, manifest, jackknife blocks or None) -> (FD, its block replicates or None,
    #  reference params, reference text)
    closed_form: Optional[Ref] = None
    description: str = ""
    # the extractor's weights are the data set's own classifier (the train-classifier stage makes
    # them, and the fid and ref-stats jobs get `--classifier`)
    own_classifier: bool = False
    # called before the extractor is first used, e.g. to register a custom torch-fidelity extractor;
    # kept lazy because importing torch-fidelity costs seconds of every job's start-up
    setup: Optional[Ref] = None


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
    lazy = {f: Lazy(v) for f in ("adapt", "weights", "closed_form", "setup")
            if isinstance(v := getattr(space, f), str)}
    space = replace(space, data=kinds, **lazy)
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
    if not isinstance(space.own_classifier, bool) or (space.own_classifier and space.layer is None):
        raise ValueError(f"feature space {name!r}: own_classifier must be True or False, and True only with a layer")
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


def inception_download():
    """(the file torch-fidelity's own Inception download lands in, its URL): torch.hub's checkpoint
    folder, where torch-fidelity's `load_state_dict_from_url` puts it. Imports torch-fidelity."""
    import os
    from pathlib import Path
    from urllib.parse import urlparse

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(URL_INCEPTION_V3).path), URL_INCEPTION_V3


def reference_spaces() -> list[str]:
    """Spaces compared with reference statistics of the data (those with a torch-fidelity layer):
    the names `fid.features` may list."""
    return [name for name, space in FEATURE_SPACES.items() if space.layer is not None]


def closed_form_spaces(data: str) -> list[str]:
    """Spaces with an exact reference for data sets of kind `data`: always evaluated there."""
    return [name for name, space in FEATURE_SPACES.items() if space.closed_form is not None and data in space.data]


# --------------------------------------------------------------------------- the registered spaces

register(FeatureSpace(
    "inception", data="images", adapt="pipeline.stages.feature_inputs:ImageSet", comparable_to_papers=True,
    extractor=INCEPTION, layer=INCEPTION_LAYER, dim=2048, weights="pipeline.stages.feature_inputs:inception_weights_of",
    description="the TF FID Inception's 2048-d pool features, as in published FIDs",
))
register(FeatureSpace(
    "classifier", data="images", adapt="pipeline.stages.feature_inputs:ImageSet", comparable_to_papers=False,
    extractor=CLASSIFIER_EXTRACTOR, layer=CLASSIFIER_LAYER, weights="pipeline.stages.feature_inputs:classifier_weights_of",
    setup="pipeline.stages.classifier:register_extractor", own_classifier=True,
    description="penultimate features of the data set's own small classifier (internal)",
))
register(FeatureSpace(
    "exact", data=("gaussian", "gmm"), adapt="pipeline.stages.feature_inputs:float64", comparable_to_papers=False,
    extractor=EXACT_EXTRACTOR, closed_form="pipeline.stages.feature_inputs:exact",
    description="its reference is the true distribution's moments: N(mu, s^2 I) in the data manifest, "
                "or the fitted mixture's exact mean and covariance",
))
