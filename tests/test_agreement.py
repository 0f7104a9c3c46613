"""pipeline.report.agreement: how far two feature spaces rank the same grid points and decide the
same claims alike (the rank correlation's interval comes from the seed blocks both spaces share)."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.report import agreement


def runs(values_a, values_b, noise=0.0, blocks=20, n=1000, seed=0):
    """Two spaces' FIDs (and block replicates: the value plus block noise) at the same points."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (fa, fb) in enumerate(zip(values_a, values_b)):
        for feat, f in (("inception", fa), ("classifier", fb)):
            reps = f + noise * rng.standard_normal(blocks)
            rows.append({"dataset": "d", "point": f"p{i}", "features": feat, "fid": f, "n_images": n,
                         "seeds": f"0..{n - 1}", "fid_replicates": json.dumps(reps.tolist())})
    return pd.DataFrame(rows)


def claims(verdicts):
    rows = []
    for (claim, basis), (va, vb) in verdicts.items():
        for feat, v in (("inception", va), ("classifier", vb)):
            rows.append({"dataset": "d", "features": feat, "spacing": "uniform", "claim_id": claim, "basis": basis,
                         "verdict": v})
    return pd.DataFrame(rows)


def test_the_reference_space_comes_first():
    assert agreement.space_pairs(["classifier", "inception"]) == [("inception", "classifier")]
    assert agreement.space_pairs(["classifier", "exact"]) == [("exact", "classifier")]


def test_spaces_that_order_every_point_alike_have_rho_one_with_a_tight_interval():
    a = [10.0, 20.0, 30.0, 40.0, 50.0]
    r = agreement.rank_agreement(runs(a, [x / 10 + 1 for x in a], noise=0.01), "inception", "classifier")
    assert r["n_points"] == 5 and r["rho"] == pytest.approx(1.0) and r["tau"] == pytest.approx(1.0)
    assert r["rho_lo"] == pytest.approx(1.0) and r["rho_hi"] == 1.0


def test_reversed_ranks_give_rho_minus_one_and_noise_that_swaps_ranks_widens_the_interval():
    a = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    rev = agreement.rank_agreement(runs(a, a[::-1], noise=0.01), "inception", "classifier")
    assert rev["rho"] == pytest.approx(-1.0) and rev["rho_hi"] == pytest.approx(-1.0)
    # block noise as large as the gaps between points: the replicates' ranks move, and so does rho
    noisy = agreement.rank_agreement(runs(a, a, noise=15.0), "inception", "classifier")
    assert noisy["rho"] == pytest.approx(1.0) and noisy["rho_lo"] < 0.9
    text = agreement.reading("inception", "classifier", noisy, pd.DataFrame(columns=["same"]))
    assert "not interchangeably" in text or "cannot tell" in text


def test_only_points_with_the_same_n_and_seeds_are_ranked_together():
    f = runs([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    f.loc[f["point"] == "p3", ["n_images", "seeds"]] = [500, "0..499"]
    r = agreement.rank_agreement(f, "inception", "classifier")
    assert r["n_points"] == 3 and "p3" not in r["points"] and r["n_images"] == 1000


def test_without_replicates_there_is_a_rho_but_no_interval_and_it_says_why():
    f = runs([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]).assign(fid_replicates=None)
    r = agreement.rank_agreement(f, "inception", "classifier")
    assert r["rho"] == pytest.approx(0.5) and math.isnan(r["rho_lo"]) and r["note"].startswith("no interval")


def test_verdicts_are_compared_claim_by_claim_and_undecided_ones_left_out():
    v = agreement.verdict_agreement(claims({
        ("c1", "as claimed"): ("holds", "holds"),
        ("c2", "as claimed"): ("holds", "inconclusive"),
        ("c3", "as claimed"): ("not measured", "not measured"),
    }), "d", "inception", "classifier")
    assert list(v["claim_id"]) == ["c1", "c2"] and list(v["same"]) == [True, False]
    text = agreement.reading("inception", "classifier", None, v)
    assert "1 of 2 claim verdicts are the same" in text


def test_the_table_lists_every_point_with_both_ranks():
    f = runs([3.0, 1.0, 2.0], [30.0, 10.0, 25.0], noise=0.01)
    c = claims({("c1", "equal NFE"): ("holds", "holds")})
    pairs = agreement.agreement(f, c)["d"]
    md = agreement.render_markdown("d", pairs, "test")
    assert "## `classifier` against `inception`" in md and "| `p1` | 1 | 1 | 10 | 1 |" in md
    assert "1 of 1 claim verdicts are the same" in md
