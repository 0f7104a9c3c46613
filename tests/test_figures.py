"""figures: FID curves from runs.csv and sample mosaics, as non-empty, valid PNG and PDF files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.report import figures
from pipeline.config import GridPoint
from pipeline.util.files import atomic_path

PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF-"
STEPS = (10, 20, 50)
SETTINGS = [("ddim", 0.0), ("ddim", 1.0), ("f-pndm", None)]
N = 16


def runs_frame() -> pd.DataFrame:
    """runs.csv columns of `pipeline aggregate`: MNIST-like uint8 runs and a Gaussian with float samples."""
    rows = []
    for dataset, features in (("mnist", "classifier"), ("gaussian", "exact")):
        for sampler, eta in SETTINGS:
            for s in STEPS:
                nfe = s + 9 if sampler == "f-pndm" else s
                rows.append({
                    "dataset": dataset, "features": features, "point": GridPoint(sampler, s, "uniform", eta).name,
                    "sampler": sampler, "eta": eta, "spacing": "uniform", "steps": s, "nfe": nfe,
                    "fid": 2.0 + 50.0 / s * (1 + (eta or 0)), "wall_s": 0.01 * nfe * N, "n_images": N,
                    "seed": 0, "device_name": "CPU (test)", "interval_level": 0.95,
                })
    frame = pd.DataFrame(rows)
    frame["fid_lo"], frame["fid_hi"] = 0.9 * frame["fid"], 1.1 * frame["fid"]
    frame.loc[frame.steps == 10, ["fid_lo", "fid_hi"]] = float("nan")  # no interval at S = 10 (as for N < 10)
    return frame


def write_samples(path, array):
    """As the sample stage writes it: compressed, `samples` beside the `seeds` of each image."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, samples=array, seeds=np.arange(len(array), dtype=np.int64))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    frame = runs_frame()
    frame.to_csv(root / "runs.csv", index=False)
    rng = np.random.default_rng(0)
    mosaic = {}
    for r in frame.itertuples():
        path = root / "runs" / r.dataset / r.point / "samples.npz"
        if r.dataset == "gaussian":
            arr = rng.normal(size=(N, 1, 4, 4)).astype(np.float32)
        else:
            arr = rng.integers(0, 256, size=(N, 1, 28, 28), dtype=np.uint8)
        write_samples(path, arr)
        mosaic[(r.dataset, r.point)] = path
    out = root / "figures"
    written = figures.run(root / "runs.csv", mosaic, out, mosaic_seeds=6)
    return written, out, mosaic


def test_curve_figures_for_each_dataset_and_feature_space(drawn):
    written, out, _ = drawn
    names = {p.name for p in written}
    for kind in figures.CURVES:
        for stem in (f"{kind}-mnist-classifier", f"{kind}-gaussian-exact"):
            assert {f"{stem}.png", f"{stem}.pdf"} <= names


def test_every_file_is_a_valid_nonempty_png_or_pdf(drawn):
    written, out, _ = drawn
    assert sorted(written) == sorted(p for p in out.iterdir()), "no temporary or stray files"
    for p in written:
        head = p.read_bytes()[:8]
        if p.suffix == ".png":
            assert head == PNG_MAGIC
            with Image.open(p) as im:
                im.verify()
                assert im.size[0] > 100 and im.size[1] > 100
        else:
            assert p.suffix == ".pdf" and head.startswith(PDF_MAGIC) and p.stat().st_size > 1000


def test_mosaic_only_for_uint8_samples(drawn):
    written, out, _ = drawn
    names = {p.name for p in written}
    assert {"mosaic-mnist.png", "mosaic-mnist.pdf"} <= names
    assert not any(n.startswith("mosaic-gaussian") for n in names), "float samples have no picture"


def test_read_first_images_reads_the_first_k_seeds(drawn):
    _, _, mosaic = drawn
    path = mosaic[("mnist", "ddim-s10-uniform-eta0")]
    with np.load(path) as z:
        full = z["samples"]
    first = figures.read_first_images(path, 5)
    assert first.dtype == np.uint8 and first.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(first, full[:5])


def test_mosaic_refuses_points_from_different_seeds(tmp_path, drawn):
    _, _, mosaic = drawn
    frame = runs_frame()
    frame.loc[frame.point == "ddim-s20-uniform-eta0", "seed"] = 7
    points = {p: path for (d, p), path in mosaic.items() if d == "mnist"}
    with pytest.raises(ValueError, match="different seeds"):
        figures.mosaic_figure("mnist", points, frame, 4, tmp_path / "mosaic-mnist")


def test_missing_runs_column_is_an_error(tmp_path):
    runs_frame().drop(columns=["nfe"]).to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(ValueError, match="nfe"):
        figures.run(tmp_path / "runs.csv", {}, tmp_path / "out")


def test_skipped_figures_are_said_on_stderr(tmp_path, drawn, capsys):
    _, _, mosaic = drawn
    points = {p: path for (d, p), path in mosaic.items() if d == "gaussian"}
    assert figures.mosaic_figure("gaussian", points, runs_frame(), 4, tmp_path / "mosaic-gaussian") == []
    frame = runs_frame().assign(fid=float("nan"))
    assert figures.curve_figure(frame[frame.dataset == "mnist"], "fid_vs_nfe", tmp_path / "fid_vs_nfe-mnist") == []
    err = capsys.readouterr().err
    assert "figures: mosaic gaussian: samples are float32, not uint8 images; no mosaic" in err
    assert "figures: fid_vs_nfe-mnist: no finite FID, no figure" in err
    assert not list(tmp_path.iterdir())


def test_samples_npz_without_the_samples_array_is_an_error(tmp_path):
    with atomic_path(tmp_path / "samples.npz") as tmp:
        np.savez_compressed(tmp, images=np.zeros((2, 1, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="no array 'samples' among"):
        figures.read_first_images(tmp_path / "samples.npz", 1)



def test_curves_draw_each_interval_as_an_error_bar(tmp_path, capsys):
    frame = runs_frame()
    g = frame[frame.dataset == "mnist"]
    drawn = []
    original = figures.plt.Axes.errorbar

    def spy(ax, x, y, yerr=None, **kw):
        drawn.append((list(x), list(y), [list(e) for e in yerr]))
        return original(ax, x, y, yerr=yerr, **kw)

    figures.plt.Axes.errorbar = spy
    try:
        assert figures.curve_figure(g, "fid_vs_steps", tmp_path / "fid_vs_steps-mnist")
    finally:
        figures.plt.Axes.errorbar = original
    with_interval = g.dropna(subset=["fid_lo"])
    assert sum(len(x) for x, _, _ in drawn) == len(with_interval), "one bar per point with an interval"
    for x, y, (below, above) in drawn:
        for xi, yi, b, a in zip(x, y, below, above):
            row = with_interval[(with_interval.steps == xi) & (with_interval.fid == yi)].iloc[0]
            assert (yi - b, yi + a) == pytest.approx((row.fid_lo, row.fid_hi))
    assert "3 point(s) without an interval" in capsys.readouterr().err


def snapshot_frame() -> pd.DataFrame:
    """Three models of one data set (data_of: same reference statistics) at 500, 2000 and 6000 training
    steps, with runs at another N and on other seeds, and a point measured on one model only."""
    rows = []
    for dataset, steps_trained in (("mnist-step-500", 500), ("mnist-step-2000", 2000), ("mnist", 6000)):
        for sampler, eta in SETTINGS:
            rows.append({"dataset": dataset, "features": "classifier", "point": GridPoint(sampler, 10, "uniform", eta).name,
                         "sampler": sampler, "eta": eta, "spacing": "uniform", "steps": 10, "nfe": 10,
                         "fid": 5.0 + 2000.0 / steps_trained * (2 - (eta or 0)), "wall_s": 1.0, "n_images": 500,
                         "seed": 0, "device_name": "CPU (test)", "interval_level": 0.95,
                         "model_train_steps": steps_trained, "ref_stats_id": "abc", "seeds": "0..499"})
    rows.append({**rows[0], "dataset": "mnist", "n_images": 1000, "model_train_steps": 6000})  # other N: own group
    rows.append({**rows[0], "dataset": "mnist", "seeds": "500..999", "model_train_steps": 6000})  # other seeds: own group
    rows.append({**rows[0], "dataset": "mnist", "point": "ddim-s100-uniform-eta0", "steps": 100})  # one model only
    frame = pd.DataFrame(rows)
    frame["fid_lo"], frame["fid_hi"] = 0.9 * frame["fid"], 1.1 * frame["fid"]
    return frame


def test_models_of_one_data_set_get_an_fid_vs_training_figure_over_comparable_points_only(tmp_path):
    frame = snapshot_frame()
    groups = figures.model_quality_groups(frame)
    assert len(groups) == 1  # the N = 1000 run has no second model at its N
    name, g = groups[0]
    assert name == "mnist-step-500"
    assert sorted(g["model_train_steps"].unique()) == [500, 2000, 6000]
    assert set(g["n_images"]) == {500} and "ddim-s100-uniform-eta0" not in set(g["point"])
    assert set(g["seeds"]) == {"0..499"}  # pairs only over the same seeds
    frame.to_csv(tmp_path / "runs.csv", index=False)
    written = figures.run(tmp_path / "runs.csv", {}, tmp_path / "figures")
    assert {"fid_vs_training-mnist-step-500-classifier.png", "fid_vs_training-mnist-step-500-classifier.pdf"} <= {
        p.name for p in written}


def test_runs_of_one_model_or_without_training_steps_get_no_fid_vs_training_figure():
    assert figures.model_quality_groups(runs_frame()) == []  # no model_train_steps column
    frame = snapshot_frame()
    assert figures.model_quality_groups(frame[frame["dataset"] == "mnist"]) == []
