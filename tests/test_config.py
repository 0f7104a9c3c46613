"""params.yaml is validated once, at the edge: each mistake is named with its key and
what is allowed, before any job starts."""
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def load(d):
    return config.from_dict(copy.deepcopy(d), base_dir=REPO)


def test_default_params_load_into_dataclasses(params):
    cfg = load(params)
    assert cfg.preset == "embedded"
    assert list(cfg.runs) == ["mnist-embedded", "gaussian"]
    run = cfg.runs["mnist-embedded"]
    assert isinstance(run.train, config.TrainConfig) and isinstance(run.sample, config.SampleConfig)
    assert run.features == ("classifier",)
    assert cfg.runs["gaussian"].features == ("exact",)
    # per-dataset override applied to the gaussian only
    assert cfg.runs["gaussian"].sample.n_images == 2000
    assert run.sample.n_images == params["sample"]["n_images"]


def test_grid_expands_ddim_table_and_pndm_table_without_duplicates(params):
    cfg = load(params)
    names = [p.name for p in cfg.runs["mnist-embedded"].points]
    assert len(names) == len(set(names))
    g = params["grid"]
    for steps in g["ddim_table"]["steps"]:
        for eta in g["ddim_table"]["eta"]:
            assert f"ddim-s{steps}-uniform-eta{eta:g}" in names
        assert f"ddpm-large-s{steps}-uniform" in names
    for sampler in g["pndm_table"]["samplers"]:
        for steps in g["pndm_table"]["steps"]:
            suffix = "-eta0" if sampler == "ddim" else ""
            assert f"{sampler}-s{steps}-uniform{suffix}" in names


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["grid"]["pndm_table"]["samplers"].append("euler-magic"), "unknown sampler 'euler-magic'"),
        (lambda p: p["grid"]["pndm_table"].__setitem__("steps", [0]), "grid.pndm_table.steps.0: 0 is less than the minimum of 1"),
        (lambda p: p["grid"]["ddim_table"].__setitem__("steps", [2000]), "steps=2000 for ddim exceeds diffusion.T=1000"),
        (lambda p: p["grid"]["ddim_table"].__setitem__("eta", [-0.1]), "grid.ddim_table.eta.0: -0.1 is less than the minimum of 0"),
        (lambda p: p["grid"]["ddim_table"].__setitem__("eta", [1.5]), "grid.ddim_table.eta.0: 1.5 is greater than the maximum of 1"),
        (lambda p: p["run"].__setitem__("datasets", ["imagenet"]), "run.datasets: unknown data set 'imagenet'"),
        (lambda p: p["train"].__setitem__("lr", 0), "train.lr: 0 is less than or equal to the minimum of 0"),
        (lambda p: p["train"].__setitem__("batch_size", 0), "train.batch_size: 0 is less than the minimum of 1"),
        (lambda p: p["train"].__setitem__("learning_rate", 1e-3), "Additional properties are not allowed ('learning_rate'"),
        (lambda p: p["model"].__setitem__("preset", "huge"), "model.preset: unknown preset 'huge'"),
        (lambda p: p["fid"].__setitem__("features", ["clip"]), "fid.features.0: 'clip' is not one of"),
        (lambda p: p["diffusion"].__setitem__("schedule", "sigmoid"), "diffusion.schedule: 'sigmoid' is not one of"),
        (lambda p: p.__setitem__("overrides", {"cifar100": {}}), "overrides.cifar100: no such data set"),
        (lambda p: (p["run"].__setitem__("datasets", ["mnist"]), p["datasets"]["mnist"].update(root="/nonexistent/data", download=False)),
         "datasets.mnist.root: '/nonexistent/data' does not exist"),
        (lambda p: (p["fid"].__setitem__("features", ["inception"]), p["fid"].__setitem__("inception_weights", "/nonexistent.pth")),
         "fid.inception_weights: '/nonexistent.pth' does not exist"),
        (lambda p: p["sample"].__setitem__("n_images", -5), "sample.n_images: -5 is less than the minimum of 1"),
    ],
)
def test_each_bad_value_is_named_with_key_and_allowed_values(params, mutate, message):
    mutate(params)
    with pytest.raises(ConfigError) as e:
        load(params)
    assert message in str(e.value)


def test_quadratic_spacing_that_cannot_give_distinct_steps_is_rejected_at_load(params):
    params["diffusion"]["T"] = 20
    params["grid"]["ddim_table"].update(steps=[20], spacings=["quadratic"])
    params["grid"]["pndm_table"]["steps"] = [10]
    cfg_or_error = None
    try:
        cfg_or_error = load(params)
    except ConfigError as e:
        assert "quadratic" in str(e) or "ddim-s20-quadratic" in str(e)
        return
    # If the spacing rule can resolve it, it must still give exactly `steps` distinct indices.
    from pipeline import schedules

    t = schedules.timesteps(20, 20, "quadratic")
    assert len(set(t.tolist())) == 20 and cfg_or_error is not None


def test_preset_overlay_merges_mappings_and_replaces_lists(tmp_path, params):
    (tmp_path / "presets").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "presets" / "small.yaml").write_text(yaml.safe_dump({"train": {"steps": 7}, "grid": {"ddim_table": {"steps": [5]}}}))
    cfg = config.load(tmp_path / "params.yaml", preset="small")
    run = cfg.runs["mnist-embedded"]
    assert run.train.steps == 7 and run.train.batch_size == params["train"]["batch_size"]
    assert {p.steps for p in run.points if p.sampler == "ddpm-large"} == {5}
    assert cfg.build_dir == Path("build/small") and cfg.results_dir == Path("results/small")


def test_unknown_preset_lists_known_presets(tmp_path, params):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "gpu.yaml").write_text("{}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"preset: 'laptop' has no overlay file .*known presets: embedded, gpu"):
        config.load(tmp_path / "params.yaml", preset="laptop")


def test_set_overrides_are_parsed_as_yaml(tmp_path, params):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = config.load(tmp_path / "params.yaml", sets=["train.steps=3", "grid.ddim_table.eta=[0.0]"])
    assert cfg.runs["mnist-embedded"].train.steps == 3
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.load(tmp_path / "params.yaml", sets=["train.steps"])


def test_shipped_presets_validate(repo_root):
    # The gpu/paper presets name ../shared data and weights that may be absent: check schema + grid only.
    for name in ("gpu", "paper"):
        merged, _ = config.resolve_dict(repo_root / "params.yaml", preset=name)
        for ds in merged["datasets"].values():
            ds["download"] = True
        merged["fid"]["inception_weights"] = None
        cfg = config.from_dict(merged, base_dir=repo_root)
        assert "cifar10" in cfg.runs
        assert any(p.spacing == "quadratic" for p in cfg.runs["cifar10"].points)
        assert not any(p.spacing == "quadratic" for p in cfg.runs["mnist"].points)


def test_cli_reports_bad_config_in_one_line_with_exit_2_and_writes_nothing(tmp_path, params):
    params["grid"]["ddim_table"]["steps"] = [5000]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "--params", str(tmp_path / "params.yaml"), "prepare-data",
         "--dataset", "gaussian", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: grid (dataset mnist-embedded): steps=5000")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_rejects_point_outside_grid_before_compute(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "sample", "--dataset", "gaussian", "--point", "warp-s10-uniform",
         "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 2 and "--point 'warp-s10-uniform': not in the grid" in r.stderr
    assert not (tmp_path / "o").exists()


def test_committed_dvc_yaml_is_generated_from_params(repo_root):
    from pipeline import dag

    cfg = config.load(repo_root / "params.yaml")
    assert (repo_root / "dvc.yaml").read_text() == dag.render_dvc_yaml(cfg), \
        "dvc.yaml is stale: run `python -m pipeline dvc-yaml`"


def test_preset_command_switches_params_and_dvc_yaml(tmp_path, repo_root):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(repo_root / name, tmp_path / name)
    shutil.copytree(repo_root / "presets", tmp_path / "presets")
    text = (tmp_path / "params.yaml").read_text()
    # the gpu preset points at ../shared; make it self-contained for the test
    (tmp_path / "presets" / "tiny.yaml").write_text("train: {steps: 5}\n")
    r = subprocess.run([sys.executable, "-m", "pipeline", "--params", str(tmp_path / "params.yaml"), "preset", "tiny"],
                       capture_output=True, text=True, cwd=repo_root)
    assert r.returncode == 0, r.stderr
    new = (tmp_path / "params.yaml").read_text()
    assert "\npreset: tiny" in new and new.count("\n") == text.count("\n")  # comments kept
    assert "(preset: tiny)" in (tmp_path / "dvc.yaml").read_text().splitlines()[0]
    assert "--preset tiny" in (tmp_path / "dvc.yaml").read_text()
