"""The DAG's code dependencies are derived from the imports: each stage depends on exactly the
files its command runs, so an edit reruns what it affects and nothing else (both engines)."""
import ast
import re
import shutil
from pathlib import Path

import pytest

from pipeline import dag

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_runs_the_cli_config_and_errors_modules():
    for stage in dag.STAGE_ENTRY:
        mods = dag.stage_modules(stage)
        for f in ("pipeline/__main__.py", "pipeline/cli.py", "pipeline/config.py", "pipeline/util/errors.py",
                  "pipeline/params.schema.yaml"):
            assert f in mods, (stage, f)


def test_each_stage_depends_on_its_own_module_and_not_on_unrelated_ones():
    assert "pipeline/stages/train.py" not in dag.stage_modules("sample")  # the checkpoint format lives in checkpoint.py
    assert "pipeline/stages/checkpoint.py" in dag.stage_modules("sample")
    assert "pipeline/stages/sample.py" not in dag.stage_modules("train")
    assert "pipeline/stages/aggregate.py" in dag.stage_modules("aggregate")
    assert "pipeline/report/figures.py" in dag.stage_modules("figures")
    assert "pipeline/report/labels.py" in dag.stage_modules("figures")  # the sampler vocabulary figures import
    assert "pipeline/report/reference" in dag.stage_modules("aggregate")
    for stage in ("prepare-data", "train", "train-classifier", "ref-stats", "fid", "aggregate", "figures"):
        assert not any(m.startswith("pipeline/core/samplers/") and not m.endswith("__init__.py")
                       for m in dag.stage_modules(stage)), stage
    assert "pipeline/core/samplers/ddim.py" in dag.stage_modules("sample")
    assert not any("inception_convert" in m for m in dag.stage_modules("fid"))


def test_a_new_import_becomes_a_new_dependency(tmp_path, monkeypatch):
    pkg = tmp_path / "pipeline"
    shutil.copytree(REPO / "pipeline", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = dag.stage_modules("figures")
    assert "pipeline/core/gaussian.py" not in before
    src = pkg / "report" / "figures.py"
    src.write_text(src.read_text() + "\n\ndef _later():\n    from pipeline.core import gaussian  # noqa: F401\n")
    monkeypatch.setattr(dag, "PACKAGE_DIR", pkg)
    after = dag.stage_modules("figures")
    assert "pipeline/core/gaussian.py" in after and set(before) < set(after)  # gaussian.py and what it imports


def test_code_version_changes_with_any_dependency_and_only_then(tmp_path, monkeypatch):
    pkg = tmp_path / "pipeline"
    shutil.copytree(REPO / "pipeline", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(dag, "PACKAGE_DIR", pkg)
    v = {s: dag.code_version(s) for s in dag.STAGE_ENTRY}
    (pkg / "report" / "figures.py").write_text((pkg / "report" / "figures.py").read_text() + "\n# edit\n")
    after = {s: dag.code_version(s) for s in dag.STAGE_ENTRY}
    assert {s for s in v if v[s] != after[s]} == {"figures"}


def test_every_data_file_a_module_reads_is_declared():
    """A module that opens a file next to its source (`__file__`) must list it in dag.MODULE_DATA."""
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        text = path.read_text()
        if "Path(__file__)" not in text or path.name == "dag.py" or "bench" in path.parts:  # bench: no stage
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        assert module in dag.MODULE_DATA, module
        for rel in dag.MODULE_DATA[module]:
            assert (REPO / rel).exists(), rel


def test_dvc_yaml_deps_are_the_derived_modules(repo_root):
    import yaml

    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        stage = max((s for s in dag.STAGE_ENTRY if name == s or name.startswith(s + "-")), key=len)
        assert [d for d in st["deps"] if d.startswith("pipeline/")] == dag.stage_modules(stage), name


def test_a_data_of_entry_reuses_its_base_data_classifier_and_statistics_and_has_its_own_model_and_runs(repo_root):
    from pipeline import config

    cfg = config.load(repo_root / "params.yaml")
    assert cfg.runs["mnist-cpu"].dataset.data_of == "mnist-embedded"
    jobs = {j.name: j for j in dag.jobs(cfg)}
    made = {o for j in jobs.values() for o in j.outs}
    assert not any("mnist-cpu" in name for name in jobs if name.startswith(("prepare-data", "train-classifier", "ref-stats")))
    assert not any("/data/mnist-cpu" in o or "/stats/mnist-cpu" in o or "mnist-cpu/classifier" in o for o in made)
    train, sample, fid = jobs["train-mnist-cpu"], jobs["sample-mnist-cpu"], jobs["fid-mnist-cpu-classifier"]
    assert "--data build/embedded/data/mnist-embedded --out build/embedded/models/mnist-cpu" in train.cmd
    assert "--data build/embedded/data/mnist-embedded --model build/embedded/models/mnist-cpu/unet.safetensors" in sample.cmd
    assert "--out build/embedded/runs/mnist-cpu" in sample.cmd
    assert "--stats build/embedded/stats/mnist-embedded/classifier.npz" in fid.cmd
    assert "--classifier build/embedded/models/mnist-embedded/classifier.safetensors" in fid.cmd
    committed = {"models/mnist-cpu/unet.safetensors", "models/mnist-cpu/unet.json"}  # the shipped model it imports
    assert set(train.deps + sample.deps + fid.deps) - made == committed  # every other input is some job's output
