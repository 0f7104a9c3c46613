"""The GPU run is one prepared command that has already passed on a CPU.

scripts/gpu_run.sh runs the `gpu-quick` preset on a lent GPU machine; `--smoke` runs the same
script, runner, stages and report on a CPU with the `gpu-smoke` preset, which differs from
`gpu-quick` only in sizes and data sources. scripts/make_carry.py builds what travels with the
working tree and keeps it under the 64 MiB limit.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline import config, dag, runner
from test_config import allow_download

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import make_carry  # noqa: E402

# The keys on which the smoke preset may differ from the GPU preset: sizes, and the data sources
# that need no carry. Anything else (samplers, spacings, layouts, precision, the runner's
# settings, the features) must be the same.
SIZE_KEYS = (
    "preset", "run.build_dir", "run.results_dir",
    "datasets.mnist.", "datasets.cifar10.root",
    "model.preset",
    "train.wall_clock_s", "train.batch_size", "train.warmup_steps", "train.checkpoint_every", "train.log_every",
    "classifier.steps", "classifier.batch_size",
    "sample.n_images", "sample.n_images_by_steps", "sample.batch_size", "sample.path_n",
    "fid.batch_size", "fid.kid_ref_n",
    "grid.ddim_table.steps", "grid.ddim_table.eta", "grid.pndm_table.steps",
)


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolved(preset):
    merged, _ = config.resolve_dict(REPO / "params.yaml", preset=preset)
    return merged


def test_the_smoke_preset_is_the_gpu_preset_at_other_sizes_and_data_sources():
    quick, smoke = flat(resolved("gpu-quick")), flat(resolved("gpu-smoke"))
    differ = sorted(k for k in set(quick) | set(smoke) if quick.get(k) != smoke.get(k))
    assert differ, "the smoke preset is meant to be smaller"
    assert [k for k in differ if not k.startswith(SIZE_KEYS)] == []
    # the precision paths that never ran on a card run in the smoke too
    for key in ("sample.bf16", "sample.channels_last", "train.bf16", "train.channels_last"):
        assert smoke[key] is True and quick[key] is True, key


def test_the_gpu_preset_trains_on_a_wall_clock_budget_and_runs_both_layouts_at_n_5000():
    merged = resolved("gpu-quick")
    allow_download(merged)
    cfg = config.from_dict(merged, base_dir=REPO)
    assert list(cfg.runs) == ["gaussian", "mnist", "cifar10"]
    for name in ("mnist", "cifar10"):
        run = cfg.runs[name]
        assert run.train.wall_clock_s is not None and run.train.steps > 100_000
        assert run.sample.n_images == 5000 and run.sample.n_for(1000) < 5000
        assert {p.sampler for p in run.points} >= {"ddim", "ddpm-large", "s-pndm", "f-pndm", "plms", "dpm-solver++"}
        assert max(p.steps for p in run.points) == 1000
    assert {p.spacing for p in cfg.runs["cifar10"].points} == {"uniform", "quadratic"}
    assert cfg.runs["mnist"].fid.features == ("classifier",)


def test_run_all_orders_every_models_before_any_grid_and_scores_each_data_set_before_the_next():
    merged = resolved("gpu-quick")
    allow_download(merged)
    jobs = runner.order(dag.jobs(config.from_dict(merged, base_dir=REPO)))
    stages = [j.stage for j in jobs]
    last_model = max(i for i, s in enumerate(stages) if s in ("train", "train-classifier", "ref-stats", "exact-map"))
    first_grid = min(i for i, s in enumerate(stages) if s == "sample")
    assert last_model < first_grid
    grid = [(j.dataset, j.stage) for j in jobs if j.stage in ("sample", "fid")]
    assert [d for d, _ in grid] == sorted((d for d, _ in grid), key=["gaussian", "mnist", "cifar10"].index)
    assert stages[-2:] == ["aggregate", "figures"]


def test_the_carry_fits_the_limit_or_the_script_refuses_naming_the_sizes(tmp_path):
    shared = REPO.parent / "shared" / "data"
    if not (shared / "MNIST" / "raw").is_dir():
        pytest.skip(f"needs the offline data in {shared} (MNIST/raw)")
    # a limit below the working tree alone: refused, with the sizes, and no CIFAR-10 repacked
    r = subprocess.run([sys.executable, "scripts/make_carry.py", "--out", str(tmp_path / "small"), "--no-wheels",
                        "--limit-mib", "1"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: the working tree (") and "over the 1 MiB limit" in r.stderr
    assert not (tmp_path / "small" / "data" / make_carry.CIFAR10_TRAIN).exists()
    # the real limit: the working tree plus the carry stays under 64 MiB
    r = subprocess.run([sys.executable, "scripts/make_carry.py", "--out", str(tmp_path / "carry"), "--no-wheels",
                        "--no-cifar10"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    total = make_carry.working_tree_bytes() + make_carry.folder_bytes(tmp_path / "carry")
    assert total <= 64 * 2 ** 20, r.stdout
    assert f"{total / 2 ** 20:.1f} MiB of 64 MiB" in r.stdout


def test_the_carry_wheels_are_the_pinned_versions_for_python_3_12(tmp_path):
    try:
        wheels = make_carry.download_wheels(tmp_path / "wheels")
    except make_carry.CarryError as e:
        pytest.skip(f"needs the package registry for pip download: {str(e).splitlines()[0]}")
    names = {w.name.split("-")[0].lower(): w.name for w in wheels}
    assert set(names) == {n.lower().replace("-", "_") for n in make_carry.WHEELS}
    assert names["torch_fidelity"].startswith(f"torch_fidelity-{make_carry.pinned('torch_fidelity')}-")
    assert "cp312" in names["rpds_py"] and "manylinux" in names["rpds_py"]


@pytest.mark.slow
def test_the_smoke_mode_runs_the_gpu_runs_whole_path_on_a_cpu(tmp_path):
    root = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DDBENCH_QUIET": "1"}
    r = subprocess.run(["bash", "scripts/gpu_run.sh", "--smoke"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    # what comes back from a device call: at most 8 plain files, in one folder
    back = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert back == ["env.txt", "gpu_run.log", "jobs.md", "precision.json", "precision.md", "results.tar.gz",
                    "trained/precision.json", "trained/precision.md"]
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 64 * 2 ** 20
    assert "not run" not in (out / "jobs.md").read_text() and "failed" not in (out / "jobs.md").read_text()
    bench = json.loads((out / "precision.json").read_text())
    trained = json.loads((out / "trained" / "precision.json").read_text())
    assert [r["mode"] for r in trained["rows"]] == ["fp32", "bf16-cl"] and "checkpoint" in trained["rows"][0]["weights"]
    modes = {row["mode"]: row for row in bench["rows"]}
    assert set(modes) == {"fp32", "bf16-cl"}
    assert modes["fp32"]["max_abs_x0_diff_vs_fp32"] == 0.0 and modes["bf16-cl"]["max_abs_x0_diff_vs_fp32"] > 0
    for row in modes.values():
        assert row["eps_img_per_s"] > 0 and row["train_img_per_s"] > 0 and 0 < row["eps_share_of_matmul_peak"]
        assert -1 < row["sampler_overhead_share"] < 1
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        summary = tar.extractfile("build/gpu-smoke/results/gpu-smoke/tables/summary.md").read().decode()
        sidecar = json.loads(tar.extractfile("build/gpu-smoke/gpu-smoke/models/cifar10/unet.json").read())
    assert any(n.startswith("logs/gpu-smoke/") for n in names)
    assert any(n.endswith("ddim_table1-cifar10-classifier-quadratic.md") for n in names)
    assert "bf16 autocast, channels_last" in summary  # a bf16 sample says so wherever it is tabled
    assert sidecar["stopped_by"] == "wall_clock_s" and sidecar["precision"] == "bf16 autocast"


@pytest.mark.slow
def test_torch_compile_is_measured_or_skipped_with_its_reason_on_a_cpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.bench", "precision", "--preset", "tiny", "--batch", "4",
                        "--train-batch", "2", "--iters", "1", "--warmup", "0", "--steps", "2", "--matmul-n", "64",
                        "--modes", "fp32,bf16-cl-compile", "--device", "cpu", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "DDBENCH_QUIET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads((tmp_path / "precision.json").read_text())["rows"][1]
    assert row["mode"] == "bf16-cl-compile"
    assert row.get("eps_img_per_s", 0) > 0 or row["skipped"].split(": ", 1)[1], row
