"""claims: each published claim's verdict on our numbers, as claimed and at equal NFE.

The synthetic worlds (tests/synthetic_runs.py) are built so that every verdict is known
in advance: all claims hold on `cifar10` (but S-PNDM loses at equal NFE), all fail on
`mnist`, and on `gaussian` only the eta 0 vs eta 1 claim has the points it needs.
Then the interval rules on small hand-made groups: paired intervals at the Bonferroni
level, inconclusive and "about N", like for like (N, reference, features, seeds), no
interval, equal-NFE interpolation, the DPM-Solver claim at equal NFE; and two
simulations: a null (two samplers with the same feature distribution, FIDs and their
delete-a-block jackknife replicates computed here from Gaussian features) is called
inconclusive in >= 90% of 200 repeats, also for a claim of 8 pairs; a clear difference
is called correctly.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.report import claims, papers, records

from pipeline.core import intervals
from synthetic_runs import N, base, md_table, write_all, write_point


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    recs = write_all(tmp_path_factory.mktemp("runs"))
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    return frame, claims.evaluate_claims(frame)


def verdicts(rows, dataset):
    c = rows[rows.dataset == dataset]
    return {(r.claim_id, r.basis): r.verdict for r in c.itertuples()}


CLAIM_IDS = [c.id for c in papers.claims()]


def test_every_claim_holds_where_the_numbers_were_built_to_agree(checked):
    v = verdicts(checked[1], "cifar10")
    for cid in CLAIM_IDS:
        assert v[(cid, "as claimed")] == "holds", cid
        expected = "does not hold" if cid == "s-pndm-beats-ddim-equal-steps" else "holds"
        assert v[(cid, "equal NFE")] == expected, cid


def test_every_claim_fails_where_the_numbers_contradict_it(checked):
    v = verdicts(checked[1], "mnist")
    assert all(v[(cid, basis)] == "does not hold" for cid in CLAIM_IDS for basis in claims.BASES)


def test_claims_without_grid_points_are_not_measured(checked):
    v = verdicts(checked[1], "gaussian")
    assert v[("ddim-eta0-beats-eta1", "as claimed")] == "holds"  # FID alone: no KID for the Gaussian
    for cid in CLAIM_IDS[1:]:
        assert v[(cid, "as claimed")] == v[(cid, "equal NFE")] == "not measured", cid


def test_equal_nfe_interpolates_fid_linearly_in_log_nfe(checked):
    frame, rows = checked
    curves = records.series_curves(frame[(frame.dataset == "cifar10") & (frame.features == "inception")])
    v = claims.value_at_nfe(curves, ("ddim", 0.0), 11)  # S-PNDM at 10 steps spends 11
    w = math.log(11 / 10) / math.log(20 / 10)
    assert v.fid == pytest.approx((1 - w) * base(10) + w * base(20))
    assert "interpolated" in v.how
    assert claims.value_at_nfe(curves, ("ddim", 0.0), 20).how == "measured"
    assert math.isnan(claims.value_at_nfe(curves, ("f-pndm", None), 10).fid), "never extrapolated"
    row = rows[(rows.dataset == "cifar10") & (rows.claim_id == "s-pndm-beats-ddim-equal-steps")
               & (rows.basis == "equal NFE")].iloc[0]
    assert f"{(1 - w) * base(10) + w * base(20):.2f}" in row.pairs and row.against >= 1


def test_claims_markdown_lists_each_claim_with_both_verdicts_and_n(checked):
    text = claims.render_markdown(checked[1], checked[0], "test")
    for cid in CLAIM_IDS:
        assert cid in text
    section = text.split("## `cifar10`")[1].split("## ")[0]
    header, rows = md_table(section)
    assert header[:3] == ["claim", "as claimed", "equal NFE"]
    assert len(rows) == len(CLAIM_IDS)
    assert "N = 64 images per point" in section
    # our rule on the published numbers, which have no interval: their direction only
    assert "Table 1 (CIFAR-10, quadratic spacing), point estimates only (no interval published): 4 of 4 pairs" in text


def test_claims_latex_uses_booktabs_and_a_caption(checked):
    tex = claims.render_latex(checked[1], checked[0], "test")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\begin{tabular}"):
        assert rule in tex, rule


def test_published_numbers_load_with_citations_and_agree_with_each_other():
    table = papers.ddim_table1()
    assert len(table) == 5 * 5 and set(table["sampler"]) == {"ddim", "ddpm-large"}
    assert (table["spacing"] == "quadratic").all() and (table["nfe"] == table["steps"]).all()
    sigma_1000 = table[(table["row"] == "sigma-hat") & (table["steps"] == 1000)]["fid"].item()
    assert sigma_1000 == papers.published_number("ddpm-cifar10-train")["fid"], "DDIM quotes DDPM's 3.17"
    assert papers.published_number("dpm-solver-cifar10-12nfe")["nfe"] == 12
    cites = papers.citations()
    assert all(c.citation in cites for c in papers.claims())
    assert set(claims.CLAIM_RULES) == {c.id for c in papers.claims()}, "one rule per published claim"


# --- intervals decide: hand-made groups ------------------------------------------------------------

def tidy_group(recs):
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    return frame, records.series_curves(frame)


def reps_of(frame, sampler, eta, steps):
    row = frame[(frame.sampler == sampler) & (frame.steps == steps)
                & ((frame.eta == eta) if eta is not None else frame.eta.isna())].iloc[0]
    return row.fid, np.asarray(json.loads(row.fid_replicates))


def test_pairs_of_one_claim_use_the_bonferroni_level(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "ddim", eta, s, 10.0 + 100 / s + 5 * eta, se=0.5)
            for eta in (0.0, 1.0) for s in (10, 20, 50, 100)]
    frame, curves = tidy_group(recs)
    res = claims.evaluate_claim("ddim-eta0-beats-eta1", curves)["as claimed"]
    assert len(res.pairs) == 4 and res.level == pytest.approx(1 - 0.05 / 4)
    for p in res.pairs:  # each interval is the paired difference at 1 - 0.05/k
        s = p.better.steps
        d, lo, hi, se = intervals.paired_difference(*reps_of(frame, "ddim", 0.0, s), *reps_of(frame, "ddim", 1.0, s),
                                                    level=1 - 0.05 / 4)
        assert (p.diff, p.lo, p.hi, p.se) == pytest.approx((d, lo, hi, se))
        assert p.outcome == "as claimed" and hi < 0
    assert res.verdict == "holds"


def test_difference_within_the_interval_is_inconclusive_with_the_n_that_would_settle_it(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "ddim", 0.0, 10, 10.0, se=0.2),
            write_point(tmp_path, "d", "classifier", "ddim", 1.0, 10, 10.1, se=0.2)]
    frame, curves = tidy_group(recs)
    res = claims.evaluate_claim("ddim-eta0-beats-eta1", curves)["as claimed"]
    d, lo, hi, _ = intervals.paired_difference(*reps_of(frame, "ddim", 0.0, 10), *reps_of(frame, "ddim", 1.0, 10))
    assert lo < 0 < hi and res.verdict == "inconclusive"
    # se ~ 1/sqrt(N): the half-width shrinks to |d| at N (half / |d|)^2, rounded up to 2 digits
    need = N * ((hi - lo) / 2 / abs(d)) ** 2
    mag = 10 ** (math.floor(math.log10(need)) - 1)
    assert res.detail == f"inconclusive at N = {N} (about N = {math.ceil(need / mag) * mag:,} would settle it)"


def test_zero_difference_gives_no_n_estimate(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "ddim", eta, 10, 10.0, se=0.2) for eta in (0.0, 1.0)]
    res = claims.evaluate_claim("ddim-eta0-beats-eta1", tidy_group(recs)[1])["as claimed"]
    assert res.detail == f"inconclusive at N = {N}"


def test_missing_interval_says_so_in_the_claim(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "ddim", eta, 10, fid, n=8, no_interval="N = 8 < 10")
            for eta, fid in ((0.0, 10.0), (1.0, 30.0))]
    res = claims.evaluate_claim("ddim-eta0-beats-eta1", tidy_group(recs)[1])["as claimed"]
    assert res.verdict == "inconclusive" and res.detail == "inconclusive: no interval: N = 8 < 10"
    assert "? ddim η=0 S=10: 10.00 vs ddim η=1 S=10: 30.00: no interval: N = 8 < 10" in res.pair_texts()


def test_records_without_interval_fields_are_never_decided(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "ddim", eta, 10, fid) for eta, fid in ((0.0, 10.0), (1.0, 30.0))]
    for _, fid in recs:  # a record written before intervals existed
        rec = json.loads(fid.read_text())
        fid.write_text(json.dumps({k: v for k, v in rec.items() if "interval" not in k and "_ci" not in k
                                   and "replicates" not in k}))
    res = claims.evaluate_claim("ddim-eta0-beats-eta1", tidy_group(recs)[1])["as claimed"]
    assert res.verdict == "inconclusive" and records.NO_INTERVAL_FIELDS in res.detail


def test_fids_at_different_n_are_not_comparable_but_kid_is_shown(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "f-pndm", None, 50, 3.0, n=5000),
            write_point(tmp_path, "d", "classifier", "ddim", 0.0, 1000, 4.0, n=1000)]
    res = claims.evaluate_claim("f-pndm-50-beats-ddim-1000", tidy_group(recs)[1])
    assert res["as claimed"].verdict == "not comparable"
    assert res["as claimed"].detail == "not comparable (N 5000 vs 1000)"
    assert res["equal NFE"].verdict == "not measured", "DDIM has only its 1000-NFE point: nothing at 59 NFE"
    text = res["as claimed"].pair_texts()[0]
    assert "not comparable (N 5000 vs 1000)" in text and "KID (unbiased, so comparable across N)" in text


@pytest.mark.parametrize("change, reason", [
    ({"ref_stats_id": "other"}, "reference statistics test vs other"),
    ({"features": "inception"}, "features classifier vs inception"),
    ({"seeds": "100..163"}, "seeds 0..63 vs 100..163"),
])
def test_points_not_like_for_like_are_not_comparable(tmp_path, change, reason):
    recs = [write_point(tmp_path, "d", "classifier", "ddim", eta, 10, fid) for eta, fid in ((0.0, 10.0), (1.0, 30.0))]
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    for col, value in change.items():  # one group by hand: a real one never mixes feature spaces
        frame.loc[frame.eta == 1.0, col] = value
    res = claims.evaluate_claim("ddim-eta0-beats-eta1", records.series_curves(frame))["as claimed"]
    assert res.verdict == "not comparable" and reason in res.detail


def test_missing_points_are_not_measured_never_guessed(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "f-pndm", None, 50, 3.0)]
    res = claims.evaluate_claim("f-pndm-50-beats-ddim-1000", tidy_group(recs)[1])
    assert res["as claimed"].verdict == res["equal NFE"].verdict == "not measured"


def test_equal_nfe_interpolation_keeps_the_wider_neighbour_interval(tmp_path):
    # S-PNDM at S = 10 spends 11 NFE: DDIM is read between its 10 and 20 NFE points
    recs = [write_point(tmp_path, "d", "classifier", "s-pndm", None, 10, 13.0, se=0.05),
            write_point(tmp_path, "d", "classifier", "ddim", 0.0, 10, 14.0, se=0.05),
            write_point(tmp_path, "d", "classifier", "ddim", 0.0, 20, 9.0, se=0.3)]
    frame, curves = tidy_group(recs)
    p = claims.evaluate_claim("s-pndm-beats-ddim-equal-steps", curves)["equal NFE"].pairs[0]
    assert p.worse.status == "interpolated"
    w = math.log(11 / 10) / math.log(20 / 10)
    spndm = reps_of(frame, "s-pndm", None, 10)
    da = intervals.paired_difference(*spndm, *reps_of(frame, "ddim", 0.0, 10), level=0.95)
    db = intervals.paired_difference(*spndm, *reps_of(frame, "ddim", 0.0, 20), level=0.95)
    half = max((da[2] - da[1]) / 2, (db[2] - db[1]) / 2)
    assert half == pytest.approx((db[2] - db[1]) / 2), "the 20-step neighbour is the noisier one"
    d = (1 - w) * da[0] + w * db[0]
    assert (p.diff, p.lo, p.hi) == pytest.approx((d, d - half, d + half))
    assert p.diff == pytest.approx(13.0 - ((1 - w) * 14.0 + w * 9.0))


def test_interpolation_between_points_of_different_n_is_not_comparable(tmp_path):
    recs = [write_point(tmp_path, "d", "classifier", "s-pndm", None, 10, 13.0),
            write_point(tmp_path, "d", "classifier", "ddim", 0.0, 10, 14.0),
            write_point(tmp_path, "d", "classifier", "ddim", 0.0, 20, 9.0, n=32)]
    res = claims.evaluate_claim("s-pndm-beats-ddim-equal-steps", tidy_group(recs)[1])
    assert res["as claimed"].verdict == "holds", "S = 10 against S = 10, both N = 64; S = 20 has no S-PNDM"
    assert res["equal NFE"].verdict == "not comparable"
    assert "no interpolation between 10 and 20 NFE: N 64 vs 32" in res["equal NFE"].detail


def test_dpm_solver_claim_is_judged_at_equal_nfe_as_it_states(tmp_path):
    # PNDM-PRK spends 4 NFE per step: at S = 5 it matches DPM-Solver++'s 20 NFE at S = 20.
    recs = [write_point(tmp_path, "d", "classifier", "dpm-solver++", None, 20, 3.0),
            write_point(tmp_path, "d", "classifier", "pndm-prk", None, 5, 50.0),
            write_point(tmp_path, "d", "classifier", "pndm-prk", None, 20, 2.0)]
    for rec, _ in recs[1:]:  # PNDM-PRK's NFE is 4 S
        data = json.loads(rec.read_text())
        rec.write_text(json.dumps({**data, "nfe": 4 * data["steps"], "nfe_expected": 4 * data["steps"]}))
    res = claims.evaluate_claim("dpm-solver-best-10-20-nfe", tidy_group(recs)[1])
    for basis in claims.BASES:  # at equal steps (S = 20, 80 NFE) PNDM-PRK would win; at 20 NFE it loses
        assert res[basis].verdict == "holds", basis
        assert [(p.worse.steps, p.worse.nfe) for p in res[basis].pairs] == [(5, 20.0)]


def test_pndm_250_step_claim_reads_250_against_250_steps(checked):
    claim = {c.id: c for c in papers.claims()}["pndm-beats-ddim-250-steps"]
    assert "250 steps against DDIM with 250 steps" in claim.reading and "0.4" in claim.published
    row = checked[1][(checked[1].dataset == "cifar10") & (checked[1].claim_id == claim.id)
                     & (checked[1].basis == "as claimed")].iloc[0]
    assert row.pairs.startswith("✓ f-pndm S=250: ") and " vs ddim η=0 S=250: " in row.pairs
    assert "250 steps against DDIM with 250 steps" in claims.render_markdown(checked[1], checked[0], "test")


# --- null and power simulations -------------------------------------------------------------------

SIM_D, SIM_N, SIM_B = 8, 400, 20  # feature dimension, images per point, jackknife blocks
SIM_STEPS = (10, 20, 50, 100)


def frechet_to_standard_normal(mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """FID of features with mean mu [..., d] and covariance cov [..., d, d] against N(0, I):
    |mu|^2 + tr(S + I - 2 S^1/2) = |mu|^2 + sum_i (sqrt(l_i) - 1)^2 over the eigenvalues l of S."""
    lam = np.clip(np.linalg.eigvalsh(cov), 0, None)
    return np.sum(mu ** 2, axis=-1) + np.sum((np.sqrt(lam) - 1) ** 2, axis=-1)


def fid_and_replicates(x: np.ndarray) -> tuple[float, list]:
    """FID of x [n, d] and its delete-a-block jackknife replicates (blocks of consecutive seeds),
    each from the moments of x without that block (sums minus the block's sums)."""
    n = len(x)
    ids = intervals.block_ids(n, SIM_B)  # image k -> block floor(k B / N), as the fid stage blocks seeds
    blocks = [np.flatnonzero(ids == b) for b in range(SIM_B)]
    sums = np.stack([x[b].sum(axis=0) for b in blocks])  # [B, d]
    outer = np.stack([x[b].T @ x[b] for b in blocks])  # [B, d, d]
    counts = np.array([len(b) for b in blocks], dtype=np.float64)

    def moments(s, q, m):
        mu = s / m[..., None]
        return mu, (q - m[..., None, None] * mu[..., :, None] * mu[..., None, :]) / (m[..., None, None] - 1)

    fid = frechet_to_standard_normal(*moments(sums.sum(0), outer.sum(0), np.float64(n)))
    reps = frechet_to_standard_normal(*moments(sums.sum(0) - sums, outer.sum(0) - outer, n - counts))
    return float(fid), [float(r) for r in reps]


def simulated_group(rng, shifts: dict) -> dict:
    """Series curves of samplers that share seeds: x = 0.3 + 1.2 (sqrt(0.5) z + sqrt(0.5) e) + shift,
    z the seed's noise (shared), e the sampler's own; equal shifts = the same distribution."""
    rows = []
    for steps in SIM_STEPS:
        z = rng.standard_normal((SIM_N, SIM_D))
        for key, shift in shifts.items():  # key: a series key, (sampler, eta[, options text])
            x = 0.3 + 1.2 * np.sqrt(0.5) * (z + rng.standard_normal((SIM_N, SIM_D))) + shift
            fid, reps = fid_and_replicates(x)
            rows.append({"sampler": key[0], "eta": key[1], "options": "".join(key[2:]), "steps": steps,
                         "nfe": steps, "fid": fid,
                         "kid_mean": np.nan, "kid_std": np.nan, "n_images": SIM_N, "seeds": f"0..{SIM_N - 1}",
                         "features": "sim", "ref_stats_id": "N(0, I)", "fid_replicates": reps})
    return records.series_curves(pd.DataFrame(rows))


def call_rate(claim_id: str, shifts: dict, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    calls = [claims.evaluate_claim(claim_id, simulated_group(rng, shifts), bases=("as claimed",))["as claimed"].verdict
             for _ in range(repeats)]
    return {v: calls.count(v) / repeats for v in set(calls)}


NULL_ONE = {("ddim", 0.0): 0.0, ("ddim", 1.0): 0.0}  # ddim-eta0-beats-eta1: 4 pairs (one per step)
NULL_EIGHT = {("ddim", 0.0): 0.0, ("ddim", 1.0): 0.0, claims.SIGMA: 0.0}  # sigma-hat-worst: 8 pairs


def test_null_two_points_from_one_distribution_are_inconclusive():
    rng = np.random.default_rng(0)
    one_pair = []
    for _ in range(200):  # a claim of one pair: f-pndm 50 vs ddim 1000, same distribution
        rows = []
        z = rng.standard_normal((SIM_N, SIM_D))
        for sampler, eta, steps in (("f-pndm", None, 50), ("ddim", 0.0, 1000)):
            x = 0.3 + 1.2 * np.sqrt(0.5) * (z + rng.standard_normal((SIM_N, SIM_D)))
            fid, reps = fid_and_replicates(x)
            rows.append({"sampler": sampler, "eta": eta, "steps": steps, "nfe": steps, "fid": fid,
                         "kid_mean": np.nan, "kid_std": np.nan, "n_images": SIM_N, "seeds": "0..399",
                         "features": "sim", "ref_stats_id": "N(0, I)", "fid_replicates": reps})
        curves = records.series_curves(pd.DataFrame(rows))
        one_pair.append(claims.evaluate_claim("f-pndm-50-beats-ddim-1000", curves, bases=("as claimed",))
                        ["as claimed"].verdict)
    assert one_pair.count("inconclusive") / 200 >= 0.9


def test_null_claims_with_several_pairs_stay_inconclusive():
    one = claims.evaluate_claim("sigma-hat-worst-few-steps", simulated_group(np.random.default_rng(9), NULL_EIGHT))
    assert len(one["as claimed"].pairs) == 8 and one["as claimed"].level == pytest.approx(1 - 0.05 / 8)
    rate4 = call_rate("ddim-eta0-beats-eta1", NULL_ONE, 200, seed=1)
    assert rate4.get("inconclusive", 0) >= 0.9, rate4
    rate8 = call_rate("sigma-hat-worst-few-steps", NULL_EIGHT, 200, seed=2)
    assert rate8.get("inconclusive", 0) >= 0.9, rate8


def test_power_a_clear_difference_is_called_correctly():
    better = call_rate("ddim-eta0-beats-eta1", {("ddim", 0.0): 0.0, ("ddim", 1.0): 0.5}, 50, seed=3)
    assert better.get("holds", 0) >= 0.9, better
    worse = call_rate("ddim-eta0-beats-eta1", {("ddim", 0.0): 0.5, ("ddim", 1.0): 0.0}, 50, seed=4)
    assert worse.get("does not hold", 0) >= 0.9, worse


def test_power_ddim_10_vs_100_steps_on_the_exact_gaussian_is_called_correctly():
    """The real pieces end to end: DDIM on the exact score of N(5, 2^2 I) in 16 dimensions, the
    same 2,000 seeds at 10 and 100 steps, the exact Frechet distance with its seed-block jackknife
    replicates: the paired interval of FID(10) - FID(100) lies above 0 (100 steps are better),
    and reversed, FID(100) - FID(10) lies below 0."""
    from pipeline.core import gaussian, samplers
    from pipeline.stages.sample import initial_noise
    from pipeline.core.schedules import NoiseSchedule

    schedule, n, blocks = NoiseSchedule.linear(1000), 2000, 20
    x_T, _ = initial_noise(range(n), (1, 4, 4))
    eps = gaussian.exact_eps_fn(5.0, 2.0, schedule)
    fd = {}
    for steps in (10, 100):
        x0 = samplers.sample("ddim", eps, x_T.double(), schedule, steps, eta=0.0)
        fd[steps] = (gaussian.frechet_to_truth(x0, 5.0, 2.0),
                     gaussian.frechet_to_truth_replicates(x0, 5.0, 2.0, blocks))
    diff, lo, hi, _ = intervals.paired_difference(fd[10][0], fd[10][1], fd[100][0], fd[100][1])
    assert diff > 0 and lo > 0, (diff, lo, hi)
    diff, lo, hi, _ = intervals.paired_difference(fd[100][0], fd[100][1], fd[10][0], fd[10][1])
    assert hi < 0
