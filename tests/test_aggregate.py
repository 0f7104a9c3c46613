"""aggregate: records -> runs.csv, paper-layout tables beside the published numbers, claims.

The records are synthetic (fields of docs/design.md, "Records"), with FIDs built from
closed forms so that each claim's verdict is known in advance:

- `cifar10` (Inception, comparable to the papers): every claim holds as the papers
  state it; at equal NFE S-PNDM (S + 1 evaluations, FID = DDIM's - 0.5) loses to DDIM.
- `mnist` (classifier features): every claim is contradicted.
- `gaussian` (exact features, no KID): only DDIM at eta 0 and 1 exist, so every other
  claim is "not measured".
"""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from pipeline import aggregate, papers
from pipeline.config import GridPoint
from pipeline.files import read_json, write_json

STEPS = (10, 20, 50, 100, 250, 1000)
N = 64
KID_STD = 1e-5  # tiny: decisions by FID (KID = FID / 1000 below)


def base(s):
    return 4.0 + 100.0 / s  # DDIM at eta 0 in the "holds" world


def nfe_of(sampler, s):
    return {"s-pndm": s + 1, "f-pndm": s + 9}.get(sampler, s)  # PNDM paper: S + 1, S + 9


HOLDS = {  # (sampler, eta) -> FID(S)
    ("ddim", 0.0): base,
    ("ddim", 0.2): lambda s: base(s) * 1.2,
    ("ddim", 0.5): lambda s: base(s) * 1.5,
    ("ddim", 1.0): lambda s: base(s) * 2.0,
    ("ddpm-large", None): lambda s: 6 * base(s) if s <= 100 else 3.0,
    ("s-pndm", None): lambda s: base(s) - 0.5,
    ("f-pndm", None): lambda s: 3.0 + 10.0 / s,
    ("dpm-solver++", None): lambda s: 2.5 + 5.0 / s,
}
FAILS = {
    ("ddim", 0.0): lambda s: base(s) * 2.0,
    ("ddim", 0.2): lambda s: base(s) * 1.8,
    ("ddim", 0.5): lambda s: base(s) * 1.5,
    ("ddim", 1.0): base,
    ("ddpm-large", None): lambda s: 1.0 if s <= 100 else 100.0,
    ("s-pndm", None): lambda s: 200.0,
    ("f-pndm", None): lambda s: 200.0,
    ("dpm-solver++", None): lambda s: 300.0,
}
SPARSE = {("ddim", 0.0): lambda s: 1.0, ("ddim", 1.0): lambda s: 2.0}
SERIES_STEPS = {"s-pndm": (10, 20, 50, 100), "f-pndm": (10, 20, 50, 100), "dpm-solver++": (10, 20)}


def write_point(root, dataset, features, sampler, eta, steps, fid, *, kid=None, kid_std=KID_STD,
                spacing="uniform", comparable=False):
    """A sample record.json and its fid-<features>.json, as the sample and fid stages write them."""
    point = GridPoint(sampler, steps, spacing, eta).name
    folder = root / dataset / point
    nfe = nfe_of(sampler, steps)
    wall = 0.001 * nfe * N
    sample = {
        "dataset": dataset, "point": point, "sampler": sampler, "steps": steps, "spacing": spacing,
        "eta": eta, "nfe": nfe, "nfe_expected": nfe, "n_images": N, "seed": 0, "seeds": f"0..{N - 1}",
        "batch_size": 32, "wall_s": wall, "images_per_s": N / wall, "s_per_nfe": wall / nfe,
        "peak_mem_bytes": 0, "device": "cpu", "device_name": "CPU (test, 2 cores)", "torch": "2.x-test",
        "checkpoint_sha256": "ab" * 32, "data_manifest_sha256": "cd" * 32,
        "fingerprint": {"python": "3.11", "torch": "2.x-test", "torch_fidelity": "0.3-test"},
        "an_extra_field": "ignored",
    }
    fidrec = {
        "dataset": dataset, "point": point, "features": features, "fid": fid,
        "kid_mean": fid / 1000 if kid is None else kid, "kid_std": kid_std, "n_images": N, "ref_n": 5000,
        "ref_stats_id": "test", "feature_extractor": features, "comparable_to_papers": comparable,
        "fingerprint": {"torch_fidelity": "0.3-test"},
    }
    write_json(folder / "record.json", sample)
    write_json(folder / f"fid-{features}.json", fidrec)
    return folder / "record.json", folder / f"fid-{features}.json"


def write_world(root, dataset, features, world, **kw):
    recs = []
    for (sampler, eta), f in world.items():
        for s in SERIES_STEPS.get(sampler, STEPS):
            recs.append(write_point(root, dataset, features, sampler, eta, s, f(s), **kw))
    return recs


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    recs = write_world(root, "cifar10", "inception", HOLDS, comparable=True)
    recs += write_world(root, "mnist", "classifier", FAILS)
    sparse = [write_point(root, "gaussian", "exact", sm, eta, s, SPARSE[(sm, eta)](s), kid_std=None)
              for (sm, eta) in SPARSE for s in (10, 20)]
    for _, fid_path in sparse:  # the Gaussian's exact Frechet distance has no KID
        rec = read_json(fid_path)
        write_json(fid_path, {**rec, "kid_mean": None, "kid_std": None})
    recs += sparse
    out = tmp_path_factory.mktemp("results") / "tables"
    frame = aggregate.run([r[0] for r in recs], [r[1] for r in recs], out, preset="test")
    return frame, out, len(recs)


def md_table(text):
    """The pipe table of a Markdown file -> (header cells, {row label: cells}); checks it is well formed."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    widths = {ln.count("|") for ln in lines}
    assert len(widths) == 1, "every table line has the same number of cells"
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[1]), "second line is the header separator"
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    rows = [(r[0], r[1:]) for r in split[2:]]
    return split[0], rows


# --- runs.csv ---------------------------------------------------------------------------------

def test_runs_csv_one_tidy_row_per_point_and_features(result):
    frame, out, n = result
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(frame) == n
    for col in ("dataset", "sampler", "steps", "nfe", "spacing", "eta", "n_images", "features", "fid",
                "kid_mean", "kid_std", "wall_s", "images_per_s", "s_per_nfe", "device_name",
                "comparable_to_papers"):
        assert col in runs.columns
    row = runs[(runs.dataset == "cifar10") & (runs.sampler == "f-pndm") & (runs.steps == 50)].iloc[0]
    assert row.nfe == 59 and row.fid == pytest.approx(HOLDS[("f-pndm", None)](50))
    assert row.s_per_nfe == pytest.approx(row.wall_s / row.nfe)
    assert runs.loc[runs.sampler == "f-pndm", "eta"].isna().all()
    assert not any(".tmp" in p.name for p in out.iterdir()), "no temporary files left behind"


# --- paper layouts -----------------------------------------------------------------------------

def test_ddim_table1_layout_has_paper_rows_and_published_numbers_beside_ours(result):
    _, out, _ = result
    text = (out / "ddim_table1-cifar10-inception-uniform.md").read_text()
    header, rows = md_table(text)
    assert header[1:] == [str(s) for s in STEPS]  # ours and the paper's steps
    assert [label for label, _ in rows] == ["η = 0.0", "η = 0.2", "η = 0.5", "η = 1.0", "σ̂"]
    paper = papers.ddim_table1().set_index(["row", "steps"])["fid"]
    cells = dict(rows)
    assert cells["η = 0.0"][0] == f"{base(10):.2f} / {paper[('eta=0.0', 10)]:.2f}"
    assert cells["σ̂"][-1] == f"{HOLDS[('ddpm-large', None)](1000):.2f} / {paper[('sigma-hat', 1000)]:.2f}"
    assert cells["η = 1.0"][STEPS.index(250)].endswith("/ –"), "no published number at 250 steps"
    assert "N = 64" in text and "`inception` features" in text
    assert "Song et al. 2021" in text and "quadratic" in text and "arXiv:2010.02502" in text


def test_pndm_layout_rows_methods_each_with_its_nfe_row(result):
    _, out, _ = result
    header, rows = md_table((out / "pndm-cifar10-inception-uniform.md").read_text())
    labels = [label for label, _ in rows]
    assert labels == ["ddim (η = 0)", "↳ NFE", "s-pndm", "↳ NFE", "f-pndm", "↳ NFE", "dpm-solver++", "↳ NFE"]
    cells = dict(zip(range(len(rows)), [c for _, c in rows]))
    assert cells[5][:4] == [str(s + 9) for s in (10, 20, 50, 100)], "F-PNDM spends S + 9 evaluations"
    assert cells[4][2] == f"{HOLDS[('f-pndm', None)](50):.2f}", "no published column in rows without one"
    paper = papers.ddim_table1().set_index(["row", "steps"])["fid"]
    assert cells[0][0] == f"{base(10):.2f} / {paper[('eta=0.0', 10)]:.2f}", "published DDIM (eta 0) beside ours"


def test_no_published_numbers_beside_other_datasets_or_feature_spaces(result):
    _, out, _ = result
    _, rows = md_table((out / "ddim_table1-mnist-classifier-uniform.md").read_text())
    assert all("/" not in c for _, cells in rows for c in cells)
    _, rows = md_table((out / "ddim_table1-gaussian-exact-uniform.md").read_text())
    assert [label for label, _ in rows] == ["η = 0.0", "η = 1.0"]


def test_latex_tables_use_booktabs_and_caption_n_and_features(result):
    _, out, _ = result
    for name in ("ddim_table1-cifar10-inception-uniform.tex", "pndm-mnist-classifier-uniform.tex", "claims.tex"):
        tex = (out / name).read_text()
        for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\begin{tabular}"):
            assert rule in tex, (name, rule)
    tex = (out / "ddim_table1-cifar10-inception-uniform.tex").read_text()
    assert r"\texttt{inception} features" in tex and "N = 64" in tex and r"$\hat{\sigma}$" in tex


# --- claims ------------------------------------------------------------------------------------

def verdicts(out, dataset):
    c = pd.read_csv(out / "claims.csv")
    c = c[c.dataset == dataset]
    return {(r.claim_id, r.basis): r.verdict for r in c.itertuples()}


CLAIM_IDS = [c.id for c in papers.claims()]


def test_every_claim_holds_where_the_numbers_were_built_to_agree(result):
    v = verdicts(result[1], "cifar10")
    for cid in CLAIM_IDS:
        assert v[(cid, "as claimed")] == "holds", cid
        expected = "does not hold" if cid == "s-pndm-beats-ddim-equal-steps" else "holds"
        assert v[(cid, "equal NFE")] == expected, cid


def test_every_claim_fails_where_the_numbers_contradict_it(result):
    v = verdicts(result[1], "mnist")
    assert all(v[(cid, basis)] == "does not hold" for cid in CLAIM_IDS for basis in aggregate.BASES)


def test_claims_without_grid_points_are_not_measured(result):
    v = verdicts(result[1], "gaussian")
    assert v[("ddim-eta0-beats-eta1", "as claimed")] == "holds"  # FID alone: no KID for the Gaussian
    for cid in CLAIM_IDS[1:]:
        assert v[(cid, "as claimed")] == v[(cid, "equal NFE")] == "not measured", cid


def test_equal_nfe_interpolates_fid_linearly_in_log_nfe(result):
    frame, out, _ = result
    curves = aggregate._curves(frame[(frame.dataset == "cifar10") & (frame.features == "inception")])
    v = aggregate.value_at_nfe(curves, ("ddim", 0.0), 11)  # S-PNDM at 10 steps spends 11
    w = math.log(11 / 10) / math.log(20 / 10)
    assert v.fid == pytest.approx((1 - w) * base(10) + w * base(20))
    assert "interpolated" in v.how
    assert aggregate.value_at_nfe(curves, ("ddim", 0.0), 20).how == "measured"
    assert math.isnan(aggregate.value_at_nfe(curves, ("f-pndm", None), 10).fid), "never extrapolated"
    claims = pd.read_csv(out / "claims.csv")
    row = claims[(claims.dataset == "cifar10") & (claims.claim_id == "s-pndm-beats-ddim-equal-steps")
                 & (claims.basis == "equal NFE")].iloc[0]
    assert f"{(1 - w) * base(10) + w * base(20):.2f}" in row.pairs and row.losses >= 1


def test_difference_within_kid_noise_is_a_tie(tmp_path):
    # FID says eta 0 is better, but the KID gap (0.0005) is below sqrt(2) * 0.002.
    recs = [write_point(tmp_path, "tiny", "classifier", "ddim", 0.0, 10, 10.0, kid=0.0100, kid_std=0.002),
            write_point(tmp_path, "tiny", "classifier", "ddim", 1.0, 10, 10.5, kid=0.0105, kid_std=0.002)]
    aggregate.run([r[0] for r in recs], [r[1] for r in recs], tmp_path / "out", preset="test")
    assert verdicts(tmp_path / "out", "tiny")[("ddim-eta0-beats-eta1", "as claimed")] == "tie"


def test_claims_markdown_lists_each_claim_with_both_verdicts_and_n(result):
    text = (result[1] / "claims.md").read_text()
    for cid in CLAIM_IDS:
        assert cid in text
    section = text.split("## `cifar10`")[1].split("## ")[0]
    header, rows = md_table(section)
    assert header[:3] == ["claim", "as claimed", "equal NFE"]
    assert len(rows) == len(CLAIM_IDS)
    assert "N = 64 images per point" in section
    assert "Table 1 (CIFAR-10, quadratic spacing): holds" in text  # our rule on the published numbers


def test_summary_lists_provenance(result):
    text = (result[1] / "summary.md").read_text()
    for piece in ("preset `test`", "CPU (test, 2 cores)", "2.x-test", "0..63", "claims.md", "runs.csv"):
        assert piece in text


# --- strict input ------------------------------------------------------------------------------

def test_missing_required_field_names_the_file_and_field(tmp_path):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0)
    data = read_json(rec)
    del data["nfe"]
    write_json(rec, data)
    with pytest.raises(aggregate.RecordError, match=rf"{re.escape(str(rec))}.*nfe"):
        aggregate.run([rec], [fid], tmp_path / "out", preset="test")


def test_fid_record_without_its_sample_record_is_an_error(tmp_path):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0)
    _, other = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 20, 4.0)
    with pytest.raises(aggregate.RecordError, match="no sample record"):
        aggregate.run([rec], [fid, other], tmp_path / "out", preset="test")


# --- published numbers -------------------------------------------------------------------------

def test_published_numbers_load_with_citations_and_agree_with_each_other():
    table = papers.ddim_table1()
    assert len(table) == 5 * 5 and set(table["sampler"]) == {"ddim", "ddpm-large"}
    assert (table["spacing"] == "quadratic").all() and (table["nfe"] == table["steps"]).all()
    sigma_1000 = table[(table["row"] == "sigma-hat") & (table["steps"] == 1000)]["fid"].item()
    assert sigma_1000 == papers.published_number("ddpm-cifar10-train")["fid"], "DDIM quotes DDPM's 3.17"
    assert papers.published_number("dpm-solver-cifar10-12nfe")["nfe"] == 12
    cites = papers.citations()
    assert all(c.citation in cites for c in papers.claims())
    assert set(aggregate.CLAIM_RULES) == {c.id for c in papers.claims()}, "one rule per published claim"
