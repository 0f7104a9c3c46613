"""scripts/train_snapshots.sh, the documented way to re-create the cpu preset's snapshots: training in
chunks with a snapshot at each chunk end is one uninterrupted run bit for bit, it trains even where
the configuration names a shipped checkpoint, and it never writes into Snakemake's build/<preset>/."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

SETS = ["--set", "train.batch_size=4", "--set", "train.warmup_steps=1", "--set", "train.checkpoint_every=1",
        "--set", "train.log_every=1"]


def run(cmd, cwd, env=None):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.mark.slow
def test_snapshots_in_chunks_are_one_uninterrupted_run_and_never_the_shipped_file(repo_root, tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "SNAPSHOT_DIR": str(tmp_path / "snap"), "DATA": str(data),
           # a configuration that names the shipped checkpoint: the script must train anyway
           "PIPELINE_ARGS": " ".join(SETS + ["--set", "model.checkpoint=models/mnist-cpu/unet.safetensors"])}
    run(["bash", "scripts/train_snapshots.sh", "embedded", "mnist-embedded", "2", "4"], repo_root, env)

    snaps = tmp_path / "snap" / "embedded" / "models" / "mnist-embedded" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step-2", "step-4"]
    for step in (2, 4):
        side = json.loads((snaps / f"step-{step}" / "unet.json").read_text())
        assert side["step"] == step and "shipped_from" not in side
        assert len((snaps / f"step-{step}" / "loss.csv").read_text().splitlines()) == 1 + step
    assert json.loads((snaps / "step-4" / "unet.json").read_text())["resumed_from"] == [2]

    # the same 4 steps in one run, in another build tree
    run([sys.executable, "-m", "pipeline", "--preset", "embedded", *SETS, "--set", f"run.build_dir={tmp_path / 'one'}",
         "--set", "train.steps=4", "train", "--dataset", "mnist-embedded", "--data", str(data),
         "--out", str(tmp_path / "one" / "out")], repo_root)
    chunked, one = (load_file(str(d / "unet.safetensors")) for d in (snaps / "step-4", tmp_path / "one" / "out"))
    assert chunked.keys() == one.keys() and all(torch.equal(chunked[k], one[k]) for k in one)  # bit for bit
    # its resume state and logs are in its own tree, not in build/embedded/ where Snakemake's are
    mine = tmp_path / "snap" / "embedded"
    assert (mine / "resume" / "mnist-embedded" / "state.json").is_file()
    assert (mine / "logs" / "train-mnist-embedded-4.log").is_file()


def test_a_step_that_is_not_a_number_is_refused_before_anything_runs(repo_root, tmp_path):
    env = {**os.environ, "SNAPSHOT_DIR": str(tmp_path / "snap"), "DATA": str(tmp_path / "data")}
    p = subprocess.run(["bash", "scripts/train_snapshots.sh", "cpu", "mnist", "500", "2k"], cwd=repo_root, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "STEP must be a whole number, got '2k'" in p.stderr
    assert not (tmp_path / "snap").exists() and not (tmp_path / "data").exists()
