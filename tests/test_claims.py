"""claims: each published claim's verdict on our numbers, as claimed and at equal NFE.

The synthetic worlds (tests/synthetic_runs.py) are built so that every verdict is known
in advance: all claims hold on `cifar10` (but S-PNDM loses at equal NFE), all fail on
`mnist`, and on `gaussian` only the eta 0 vs eta 1 claim has the points it needs.
"""
from __future__ import annotations

import math

import pytest

from pipeline import claims, papers, records
from synthetic_runs import base, md_table, write_all, write_point


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
    assert f"{(1 - w) * base(10) + w * base(20):.2f}" in row.pairs and row.losses >= 1


def test_difference_within_kid_noise_is_a_tie(tmp_path):
    # FID says eta 0 is better, but the KID gap (0.0005) is below sqrt(2) * 0.002.
    recs = [write_point(tmp_path, "tiny", "classifier", "ddim", 0.0, 10, 10.0, kid=0.0100, kid_std=0.002),
            write_point(tmp_path, "tiny", "classifier", "ddim", 1.0, 10, 10.5, kid=0.0105, kid_std=0.002)]
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    assert verdicts(claims.evaluate_claims(frame), "tiny")[("ddim-eta0-beats-eta1", "as claimed")] == "tie"


def test_claims_markdown_lists_each_claim_with_both_verdicts_and_n(checked):
    text = claims.render_markdown(checked[1], checked[0], "test")
    for cid in CLAIM_IDS:
        assert cid in text
    section = text.split("## `cifar10`")[1].split("## ")[0]
    header, rows = md_table(section)
    assert header[:3] == ["claim", "as claimed", "equal NFE"]
    assert len(rows) == len(CLAIM_IDS)
    assert "N = 64 images per point" in section
    assert "Table 1 (CIFAR-10, quadratic spacing): holds" in text  # our rule on the published numbers


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
