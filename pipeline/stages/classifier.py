"""A small CNN classifier whose penultimate features give the `classifier` FID space.

The Inception network behind published FID runs at about 10 images/s on a 2-core
CPU, so the embedded default measures FID/KID in the feature space of this
classifier instead: trained on the data set's own training split in well under a
minute, registered with torch-fidelity as the feature extractor
`ddbench-classifier`, so exactly the same FID/KID code runs for both spaces.
Numbers in this space are internal: they rank samplers on one data set and are
NOT comparable with published FIDs (the fid records say so).

Files: `classifier.safetensors` (weights, no pickle) + `classifier.json`
(architecture, held-out accuracy, data manifest hash, weights hash).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.util import console, files, provenance
from pipeline.core.images import from_uint8
from pipeline.config import ClassifierConfig

EXTRACTOR_NAME = "ddbench-classifier"  # the name torch-fidelity knows the extractor by
FEATURE_LAYER = "penultimate"  # the layer FID and KID use
SIDECAR_KIND = "ddbench-classifier"
HELDOUT_MAX = 1000  # held-out slice: 10% of the training split, at most this many images


class SmallCNN(nn.Module):
    """conv -> max pool -> two stride-2 convs -> 2x2 average pool -> `feature_dim` penultimate layer -> logits.

    forward(x: [B, C, H, W] float in [-1, 1]) -> (features [B, feature_dim] >= 0, logits [B, n_classes]).
    About 0.5 MMAC per 28x28 image at width 16: 400 steps of batch 128 take seconds on a CPU core.
    """

    def __init__(self, in_channels: int, n_classes: int, feature_dim: int = 128, width: int = 16):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, width, 1), nn.MaxPool2d(2),
            *block(width, 2 * width, 2),
            *block(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width * 4, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.relu(self.fc(self.body(x)))
        return features, self.head(features)


def sidecar_path(weights_path: str | Path) -> Path:
    """`classifier.safetensors` -> `classifier.json`."""
    return Path(weights_path).with_suffix(".json")


def build(arch: dict) -> SmallCNN:
    return SmallCNN(arch["in_channels"], arch["n_classes"], arch["feature_dim"], arch["width"])


def load_classifier(path: str | Path, device: str = "cpu") -> tuple[SmallCNN, dict]:
    """Weights + sidecar written by `train_classifier` -> (eval-mode model on `device`, sidecar dict)."""
    from safetensors.torch import load_file

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier: weights file {path} does not exist; run the train-classifier stage first")
    if not side.is_file():
        raise FileNotFoundError(f"classifier: sidecar {side} (architecture, accuracy) is missing beside {path}")
    sidecar = files.read_json(side)
    if sidecar.get("kind") != SIDECAR_KIND:
        raise ValueError(f"classifier: {side} is not a ddbench classifier sidecar (kind={sidecar.get('kind')!r})")
    model = build(sidecar["arch"])
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False), sidecar


def _check_data(prepared, data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (uint8 images [N, C, H, W], int64 labels [N]) as tensors, or a ValueError saying what is wrong."""
    if prepared.images is None:
        raise ValueError(
            f"classifier: the data set in {data_dir} has no images (the gaussian set uses the `exact` feature space "
            "and needs no classifier)"
        )
    if prepared.labels is None:
        raise ValueError(f"classifier: the data set in {data_dir} has no labels; the classifier space needs a labelled set")
    images = torch.as_tensor(np.asarray(prepared.images))
    labels = torch.as_tensor(np.asarray(prepared.labels)).long()
    n = len(images)
    if n < 20 or len(labels) != n:
        raise ValueError(f"classifier: need >= 20 labelled images, got {n} images and {len(labels)} labels")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"classifier: expected uint8 images [N, 1|3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images, labels


def train_on_tensors(
    cfg: ClassifierConfig, images: torch.Tensor, labels: torch.Tensor, device: str, progress: bool = False
) -> tuple[SmallCNN, dict]:
    """Pure core: train on uint8 images [N, C, H, W] with int labels [N]; accuracy on a held-out slice.

    The held-out slice is the last 10% (at most HELDOUT_MAX) of a permutation drawn with `cfg.seed`;
    the network never sees it.
    """
    from tqdm import tqdm

    n = len(images)
    labels = torch.as_tensor(labels).long()
    n_classes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen)
    n_held = max(1, min(HELDOUT_MAX, n // 10))
    train_idx, held_idx = perm[: n - n_held], perm[n - n_held :]

    torch.manual_seed(cfg.seed)
    arch = {
        "in_channels": int(images.shape[1]),
        "image_size": [int(images.shape[2]), int(images.shape[3])],
        "n_classes": n_classes,
        "feature_dim": int(cfg.feature_dim),
        "width": 16,
    }
    model = build(arch).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # cosine decay to 0 over the run: a short fixed budget converges better than a constant rate
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps)))
    x_train, y_train = images[train_idx], labels[train_idx]
    batch = min(cfg.batch_size, len(train_idx))
    t0 = time.perf_counter()
    model.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="classifier", disable=not progress, leave=False):
        idx = torch.randint(len(x_train), (batch,), generator=gen)
        x = from_uint8(x_train[idx].to(device))
        _, logits = model(x)
        loss = F.cross_entropy(logits, y_train[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    model.eval().requires_grad_(False)
    correct = 0
    with torch.no_grad():
        for i in range(0, n_held, 512):
            idx = held_idx[i : i + 512]
            _, logits = model(from_uint8(images[idx].to(device)))
            correct += int((logits.argmax(1).cpu() == labels[idx]).sum())
    stats = {
        "arch": arch,
        "accuracy": correct / n_held,
        "n_train": int(len(train_idx)),
        "n_heldout": int(n_held),
        "final_loss": float(np.mean(losses[-20:])),
        "train_s": train_s,
    }
    return model, stats


def train_classifier(cfg: ClassifierConfig, data_dir: str | Path, out_path: str | Path) -> dict:
    """Train on the prepared training split in `data_dir`; write `out_path` (.safetensors) + sidecar JSON.

    Returns the sidecar record: architecture, held-out accuracy, config, data manifest hash, weights hash.
    """
    from safetensors.torch import save_file

    from pipeline.stages import data

    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"classifier: output {out_path} must end in .safetensors")
    device = provenance.resolve_device(cfg.device)
    prepared = data.load_prepared(data_dir)
    images, labels = _check_data(prepared, data_dir)

    model, stats = train_on_tensors(cfg, images, labels, device, progress=not console.quiet())

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with files.atomic_path(out_path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "kind": SIDECAR_KIND})
    record = {
        "kind": SIDECAR_KIND,
        **stats,
        "config": {k: getattr(cfg, k) for k in ("steps", "batch_size", "lr", "feature_dim", "seed")},
        "feature_layer": FEATURE_LAYER,
        "heldout_rule": f"last 10% (max {HELDOUT_MAX}) of a permutation of the training split drawn with seed",
        "data_manifest_sha256": files.sha256_file(Path(data_dir) / "manifest.json"),
        "weights_sha256": files.sha256_file(out_path),
        "device": device,
        "fingerprint": provenance.fingerprint(device),
    }
    files.write_json(sidecar_path(out_path), record)
    return record


def register_extractor() -> None:
    """Register `ddbench-classifier` with torch-fidelity (once). Called when the classifier feature
    space is first used, not on import: torch-fidelity's import costs seconds that training the
    classifier (and every job of the exact space) does not need."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY:  # torch-fidelity refuses a second registration
        return

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor over a trained `SmallCNN`.

        Input contract (torch-fidelity's): uint8 [B, 3, H, W]. A 1-channel classifier (MNIST) averages the three
        channels, which recovers the original image exactly when it was tiled to 3 channels at the FID boundary.
        `feature_extractor_weights_path` is the classifier's .safetensors (its sidecar JSON beside it).
        """

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(
                    f"{EXTRACTOR_NAME}: feature_extractor_weights_path must name a classifier .safetensors "
                    "(train it with the train-classifier stage)"
                )
            self.net, self.sidecar = load_classifier(feature_extractor_weights_path)
            self.in_channels = self.sidecar["arch"]["in_channels"]
            self.image_size = tuple(self.sidecar["arch"]["image_size"])
            self.requires_grad_(False)
            self.eval()

        def forward(self, x):
            if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
                raise ValueError(f"{EXTRACTOR_NAME}: expected uint8 [B, 3, H, W], got {getattr(x, 'dtype', type(x))} "
                                 f"{tuple(getattr(x, 'shape', ()))}")
            if tuple(x.shape[2:]) != self.image_size:
                raise ValueError(
                    f"{EXTRACTOR_NAME}: images are {tuple(x.shape[2:])}, the classifier was trained on {self.image_size}"
                )
            x = from_uint8(x)
            if self.in_channels == 1:
                x = x.mean(dim=1, keepdim=True)
            features, logits = self.net(x)
            out = {"penultimate": features, "logits": logits}
            return tuple(out[name].to(torch.float32) for name in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("penultimate", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": FEATURE_LAYER, "kid": FEATURE_LAYER, "prc": FEATURE_LAYER}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    register_feature_extractor(EXTRACTOR_NAME, ClassifierFeatureExtractor)
