"""Every benchmark the docs list (`python -m pipeline.bench samplers|train|fid|gmm|precision`) runs to its
table, here at tiny sizes: a benchmark that crashes is a broken promise of the docs, whatever its
numbers. (Speed itself is measured by running them, not by tests.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import bench

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "samplers": ["--n", "200", "--batch", "4,1,4,4", "--steps", "3", "--repeats", "1"],
    "train": ["--presets", "tiny", "--batch", "2", "--iters", "1", "--device", "cpu"],
    "gmm": ["--sizes", "3x8", "--batch", "4", "--repeats", "1"],
    # torch.compile's first call takes about a minute on a CPU: scripts/gpu_run.sh runs that mode on the card
    "precision": ["--preset", "tiny", "--batch", "4", "--train-batch", "2", "--iters", "1", "--warmup", "0",
                  "--steps", "2", "--matmul-n", "64", "--modes", "fp32,bf16-cl", "--device", "cpu"],
    # the interval table always runs at N = 5,000 (about 30 s on 2 cores): the slow tier
    "fid": ["--features", "classifier,exact", "--n", "16", "--batch-size", "8", "--device", "cpu"],
}
SLOW = {"fid"}


def test_every_registered_benchmark_is_exercised_here():
    assert set(TINY) == set(bench.BENCHMARKS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(TINY)])
def test_benchmark_runs_to_its_table(name):
    args = TINY[name]
    r = subprocess.run([sys.executable, "-m", "pipeline.bench", name, *args], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "DDBENCH_QUIET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "|:--" in r.stdout, r.stdout[-2000:]  # a Markdown table came out


def test_an_unknown_benchmark_is_named_with_the_known_ones():
    r = subprocess.run([sys.executable, "-m", "pipeline.bench", "warp"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown benchmark 'warp'; known: samplers, train, fid, gmm, precision" in r.stderr
