"""aggregate (the stage): records -> runs.csv, tables, claims, summary.md; metrics.json's headline numbers.

What each file holds is specified in test_records.py, test_tables.py and test_claims.py;
here: that the stage writes all of them, atomically, and that metrics.json stays small.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.stages import aggregate

from pipeline.report import claims, records
from synthetic_runs import B, FAILS, HOLDS, N, SERIES_STEPS, STEPS, nfe_of, write_all


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    recs = write_all(tmp_path_factory.mktemp("runs"))
    out = tmp_path_factory.mktemp("results") / "tables"
    frame = aggregate.run([r[0] for r in recs], [r[1] for r in recs], out, preset="test")
    return frame, out, len(recs)


def test_runs_csv_one_tidy_row_per_point_and_features(result):
    frame, out, n = result
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(frame) == n
    for col in ("dataset", "sampler", "steps", "nfe", "spacing", "eta", "n_images", "features", "fid",
                "fid_lo", "fid_hi", "kid_mean", "kid_std", "kid_lo", "kid_hi", "wall_s", "images_per_s",
                "s_per_nfe", "device_name", "comparable_to_papers", "papers_note", "fid_replicates"):
        assert col in runs.columns
    assert (runs.fid_lo < runs.fid).all() and (runs.fid < runs.fid_hi).all()
    reps = records.parse_replicates(runs.fid_replicates.iloc[0])  # survives the CSV round trip
    assert reps.shape == (B,) and runs.interval_blocks.iloc[0] == B
    row = runs[(runs.dataset == "cifar10") & (runs.sampler == "f-pndm") & (runs.steps == 50)].iloc[0]
    assert row.nfe == 59 and row.fid == pytest.approx(HOLDS[("f-pndm", None)](50))
    assert row.s_per_nfe == pytest.approx(row.wall_s / row.nfe)
    assert runs.loc[runs.sampler == "f-pndm", "eta"].isna().all()
    assert not any(".tmp" in p.name for p in out.iterdir()), "no temporary files left behind"


def test_every_table_and_claims_file_is_written(result):
    _, out, _ = result
    groups = [("cifar10", "inception"), ("mnist", "classifier"), ("gaussian", "exact")]
    expected = {"runs.csv", "claims.md", "claims.csv", "claims.tex", "summary.md"}
    expected |= {f"{kind}-{d}-{f}-uniform{ext}" for kind in ("ddim_table1", "pndm") for d, f in groups
                 for ext in (".md", ".tex")}
    assert {p.name for p in out.iterdir()} == expected
    assert list(pd.read_csv(out / "claims.csv").columns) == claims.CLAIM_COLUMNS


def test_summary_lists_provenance(result):
    text = (result[1] / "summary.md").read_text()
    for piece in ("preset `test`", "CPU (test, 2 cores)", "2.x-test", "0..63", "claims.md", "runs.csv"):
        assert piece in text


# --- metrics.json --------------------------------------------------------------------------------

def best_of(world, sampler, eta):
    """(FID, NFE, steps) of the lowest FID over the steps written, fewest NFE among equal FIDs."""
    return min((world[(sampler, eta)](s), nfe_of(sampler, s), s) for s in SERIES_STEPS.get(sampler, STEPS))


def test_metrics_hold_each_sampler_settings_best_fid_and_where(result):
    m = aggregate.headline_metrics(result[0])
    assert list(m) == ["cifar10", "mnist", "gaussian"] and list(m["cifar10"]) == ["inception"]
    cifar, mnist = m["cifar10"]["inception"], m["mnist"]["classifier"]
    assert list(cifar) == ["ddim η=0", "ddim η=0.2", "ddim η=0.5", "ddim η=1", "ddpm-large", "s-pndm",
                           "f-pndm", "dpm-solver++"]
    assert cifar["f-pndm"] == {"best_fid": pytest.approx(3.04), "nfe": 259, "steps": 250, "spacing": "uniform",
                               "n_images": N}
    assert cifar["ddpm-large"]["steps"] == 250, "equal FID at 250 and 1000 steps: the fewer NFE"
    for world, got in ((HOLDS, cifar), (FAILS, mnist)):
        for (sampler, eta), label in zip(world, got):
            fid, nfe, steps = best_of(world, sampler, eta)
            assert got[label] == {"best_fid": pytest.approx(fid), "nfe": nfe, "steps": steps, "spacing": "uniform",
                                  "n_images": N}
    assert m["gaussian"]["exact"]["ddim η=1"]["best_fid"] == pytest.approx(2.0), "FID without KID is kept"
    json.dumps(m, allow_nan=False)  # plain JSON for `dvc metrics show`


def test_metrics_of_a_setting_without_finite_fid_are_null(result):
    frame = result[0].copy()
    frame.loc[frame.sampler == "f-pndm", "fid"] = float("nan")
    m = aggregate.headline_metrics(frame)
    assert m["cifar10"]["inception"]["f-pndm"] == {"best_fid": None, "nfe": None, "steps": None, "spacing": None,
                                                   "n_images": None}
    json.dumps(m, allow_nan=False)


def test_metrics_compare_fids_only_at_equal_n(result):
    # the 1000-step point at a smaller N (as in the gpu preset) would have the lowest FID: not like for like
    frame = result[0].copy()
    ddim0 = (frame.dataset == "cifar10") & (frame.sampler == "ddim") & (frame.eta == 0.0)
    frame.loc[ddim0 & (frame.steps == 1000), ["n_images", "fid"]] = [16, 0.5]
    best = aggregate.headline_metrics(frame)["cifar10"]["inception"]["ddim η=0"]
    assert best["steps"] == 250 and best["n_images"] == N
    assert best["best_fid"] == pytest.approx(HOLDS[("ddim", 0.0)](250))


def test_a_partial_aggregate_says_which_points_are_unfinished(tmp_path):
    recs = write_all(tmp_path / "runs")
    out = tmp_path / "results" / "tables"
    unfinished = ["build/cpu/runs/mnist/ddim-s100-uniform-eta0", "build/cpu/runs/mnist/f-pndm-s50-uniform"]
    aggregate.run([r[0] for r in recs], [r[1] for r in recs], out, preset="test", unfinished=unfinished)
    text = (out / "summary.md").read_text()
    assert "**Partial results** (`aggregate --partial`): 2 grid point(s)" in text
    assert "`build/cpu/runs/mnist/ddim-s100-uniform-eta0`, `build/cpu/runs/mnist/f-pndm-s50-uniform`" in text


def test_the_aggregate_stage_refuses_missing_records_unless_partial(tmp_path, repo_root):
    import subprocess
    import sys

    empty = [f"--set=run.build_dir={tmp_path / 'build'}", f"--set=run.results_dir={tmp_path / 'results'}"]
    r = subprocess.run([sys.executable, "-m", "pipeline", *empty, "aggregate", "--out", str(tmp_path / "res")],
                       cwd=repo_root, capture_output=True, text=True,
                       env={**__import__("os").environ, "DDBENCH_QUIET": "1"})
    assert r.returncode != 0
    assert "run record(s) missing" in r.stderr and "--partial" in r.stderr
