"""tables: DDIM Table 1 and PNDM layouts with intervals; published numbers beside ours only where
comparable by provenance, else as context in their own column with the reasons."""
from __future__ import annotations

import pytest

from pipeline.report import papers, records, tables
from synthetic_runs import (FAKE_CIFAR10_TRAIN, HOLDS, PAPERS_SETTING, STEPS, base, md_table, write_all, write_point,
                            write_world)


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    recs = write_all(tmp_path_factory.mktemp("runs"))
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    return dict(iter(records.table_groups(frame)))


@pytest.fixture(scope="module")
def papers_groups(tmp_path_factory):
    """The cifar10 world as the papers measured it (N = 50,000, standard weights, the exact training
    set as reference, Ho et al.'s checkpoint); the training set's hash is a fake one here."""
    recs = write_world(tmp_path_factory.mktemp("papers"), "cifar10", "inception", HOLDS, comparable=True,
                       n=50000, provenance=PAPERS_SETTING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(papers, "CIFAR10_TRAIN_NHWC_SHA256", FAKE_CIFAR10_TRAIN)
        frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    return dict(iter(records.table_groups(frame)))


def ours(fid: float, row) -> str:
    """Our cell as the tables print it: FID [lo, hi] from runs.csv."""
    return f"{fid:.2f} [{row.fid_lo:.2f}, {row.fid_hi:.2f}]"


def run_row(g, sampler, eta, steps):
    m = (g.sampler == sampler) & (g.steps == steps) & ((g.eta == eta) if eta is not None else g.eta.isna())
    return g[m].iloc[0]


def rendered(groups, kind, dataset, features, suffix=".md"):
    """The text of `<kind>-<dataset>-<features>-uniform<suffix>` as the aggregate stage writes it."""
    make = {"ddim_table1": tables.ddim_table1_layout, "pndm": tables.pndm_layout}[kind]
    t = make(groups[(dataset, features, "uniform")], dataset, features, "uniform")
    assert t.stem == f"{kind}-{dataset}-{features}-uniform"
    return (tables.render_markdown if suffix == ".md" else tables.render_latex)(t, "test")


def test_ddim_table1_layout_has_paper_rows_and_published_numbers_beside_ours(papers_groups):
    g = papers_groups[("cifar10", "inception", "uniform")]
    assert g.comparable_to_papers.all() and (g.papers_note == "").all()
    text = rendered(papers_groups, "ddim_table1", "cifar10", "inception")
    header, rows = md_table(text)
    assert header[1:] == [str(s) for s in STEPS]  # ours and the paper's steps; no context column
    assert [label for label, _ in rows] == ["η = 0.0", "η = 0.2", "η = 0.5", "η = 1.0", "σ̂"]
    paper = papers.ddim_table1().set_index(["row", "steps"])["fid"]
    cells = dict(rows)
    assert cells["η = 0.0"][0] == f"{ours(base(10), run_row(g, 'ddim', 0.0, 10))} / {paper[('eta=0.0', 10)]:.2f}"
    sigma = HOLDS[("ddpm-large", None)](1000)
    assert cells["σ̂"][-1] == f"{ours(sigma, run_row(g, 'ddpm-large', None, 1000))} / {paper[('sigma-hat', 1000)]:.2f}"
    assert cells["η = 1.0"][STEPS.index(250)].endswith("/ –"), "no published number at 250 steps"
    assert "N = 50,000" in text and "`inception` features" in text and "95% interval" in text
    assert "Song et al. 2021" in text and "quadratic" in text and "arXiv:2010.02502" in text


def test_published_numbers_are_context_when_provenance_differs(groups):
    # cifar10 as the gpu preset makes it: JPEG copy as reference, our own model, small N
    g = groups[("cifar10", "inception", "uniform")]
    assert not g.comparable_to_papers.any()
    assert set(g.papers_note) == {"reference: JPEG copy; model: ours; N = 64"}
    text = rendered(groups, "ddim_table1", "cifar10", "inception")
    header, rows = md_table(text)
    assert header[1:] == [str(s) for s in STEPS] + [tables.CONTEXT_COLUMN]
    cells = dict(rows)
    assert [label for label, _ in rows] == ["η = 0.0", "η = 0.2", "η = 0.5", "η = 1.0", "σ̂"]
    assert cells["η = 0.0"][0] == ours(base(10), run_row(g, "ddim", 0.0, 10)), "ours alone, no '/ published'"
    paper = papers.ddim_table1().set_index(["row", "steps"])["fid"]
    assert cells["η = 0.0"][-1] == "; ".join(f"S={s}: {paper[('eta=0.0', s)]:.2f}" for s in (10, 20, 50, 100, 1000))
    assert "Not comparable with ours (reference: JPEG copy; model: ours; N = 64)" in text


def test_comparability_follows_provenance_not_the_name(tmp_path):
    recs = [write_point(tmp_path, "my-c10", "inception", "ddim", 0.0, 10, 5.0, comparable=True, n=50000,
                        provenance=PAPERS_SETTING)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(papers, "CIFAR10_TRAIN_NHWC_SHA256", FAKE_CIFAR10_TRAIN)
        frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    assert frame.comparable_to_papers.all(), "the papers' provenance under another name is comparable"
    t = tables.ddim_table1_layout(frame, "my-c10", "inception", "uniform")
    assert t.with_paper and " / 13.36" in tables.render_markdown(t, "test")
    # the same records while the real training-set hash is unknown: never comparable
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    assert frame.papers_note.iloc[0] == "reference: not the exact CIFAR-10 training set (its hash is not known here)"


@pytest.mark.parametrize("fid, sample, reason", [
    ({"features_weights_sha256": None, "weights_sha256": None}, {}, "Inception weights: sha256 not recorded"),
    ({"features_weights_sha256": "12" * 32}, {}, "Inception weights: sha256 121212121212… is not the standard"),
    ({"ref_content_sha256": None}, {}, "reference: content hash not recorded"),
    ({}, {"model_pretrained": None, "model_kind": "ddbench-unet"}, "model: ours"),
    ({}, {"model_pretrained": "someone/else"}, "model: someone/else"),
])
def test_each_missing_piece_of_provenance_is_named(tmp_path, fid, sample, reason):
    prov = {"fid": {**PAPERS_SETTING["fid"], **fid}, "sample": {**PAPERS_SETTING["sample"], **sample}}
    recs = [write_point(tmp_path, "cifar10", "inception", "ddim", 0.0, 10, 5.0, comparable=True, n=50000,
                        provenance=prov)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(papers, "CIFAR10_TRAIN_NHWC_SHA256", FAKE_CIFAR10_TRAIN)
        frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    assert not frame.comparable_to_papers.any() and frame.papers_note.iloc[0].startswith(reason)


def test_pndm_layout_rows_methods_each_with_its_nfe_row(papers_groups):
    g = papers_groups[("cifar10", "inception", "uniform")]
    header, rows = md_table(rendered(papers_groups, "pndm", "cifar10", "inception"))
    labels = [label for label, _ in rows]
    assert labels == ["ddim (η = 0)", "↳ NFE", "s-pndm", "↳ NFE", "f-pndm", "↳ NFE", "dpm-solver++", "↳ NFE"]
    cells = dict(zip(range(len(rows)), [c for _, c in rows]))
    assert cells[5][:4] == [str(s + 9) for s in (10, 20, 50, 100)], "F-PNDM spends S + 9 evaluations"
    f50 = HOLDS[("f-pndm", None)](50)
    assert cells[4][2] == ours(f50, run_row(g, "f-pndm", None, 50)), "no published column in rows without one"
    paper = papers.ddim_table1().set_index(["row", "steps"])["fid"]
    assert cells[0][0] == f"{ours(base(10), run_row(g, 'ddim', 0.0, 10))} / {paper[('eta=0.0', 10)]:.2f}"


def test_a_missing_interval_says_why_in_the_cell(tmp_path):
    recs = [write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 12.3, n=8, no_interval="N = 8 < 10")]
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    t = tables.ddim_table1_layout(frame, "mnist", "classifier", "uniform")
    _, rows = md_table(tables.render_markdown(t, "test"))
    assert dict(rows)["η = 0.0"] == ["12.30 (no interval: N = 8 < 10)"]
    assert r"12.30 (no interval: N = 8 \textless{} 10)" in tables.render_latex(t, "test")


def test_no_published_numbers_beside_other_datasets_or_feature_spaces(groups):
    _, rows = md_table(rendered(groups, "ddim_table1", "mnist", "classifier"))
    assert all("/" not in c for _, cells in rows for c in cells)
    _, rows = md_table(rendered(groups, "ddim_table1", "gaussian", "exact"))
    assert [label for label, _ in rows] == ["η = 0.0", "η = 1.0"]


def test_latex_tables_use_booktabs_and_caption_n_and_features(groups):
    for kind, dataset, features in (("ddim_table1", "cifar10", "inception"), ("pndm", "mnist", "classifier")):
        tex = rendered(groups, kind, dataset, features, ".tex")
        for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\begin{tabular}"):
            assert rule in tex, (kind, dataset, rule)
    tex = rendered(groups, "ddim_table1", "cifar10", "inception", ".tex")
    assert r"\texttt{inception} features" in tex and "N = 64" in tex and r"$\hat{\sigma}$" in tex
    assert "published (context)" in tex and r"95\% interval" in tex


def test_the_training_table_reads_the_change_between_the_last_two_models_from_paired_replicates():
    import json

    import numpy as np
    import pandas as pd

    from pipeline.report import records, tables

    rows = []
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 10)  # the same seeds: the noise is shared by all models, so it cancels in pairs
    for k, (trained, fids) in enumerate([(2000, (8.0, 6.0, 9.0)), (4000, (6.0, 6.02, 7.0)), (6000, (4.0, 6.01, 8.0))]):
        for (sampler, eta), fid in zip([("ddim", 0.0), ("ddim", 1.0), ("f-pndm", None)], fids):
            rows.append({"dataset": f"m{k}", "features": "classifier", "point": f"{sampler}-{eta}", "sampler": sampler,
                         "eta": eta, "steps": 10, "fid": fid, "fid_lo": fid - 1, "fid_hi": fid + 1,
                         # ddim η=1: noise of its own per model, so the 0.01 change is within the interval
                         "fid_replicates": json.dumps(list(fid + (rng.normal(0, 0.05, 10) if eta == 1.0 else noise))),
                         "n_images": 500, "seeds": "0..499",
                         "ref_stats_id": "r", "model_train_steps": trained, "device_name": "cpu",
                         "interval_level": 0.95, "model_kind": "ddbench-unet"})
    (_, g), = records.model_quality_groups(pd.DataFrame(rows))
    t = tables.training_table(g).set_index("sampler setting")
    assert list(t.columns) == ["steps S", "2,000 steps", "4,000 steps", "6,000 steps", "Δ 4,000 → 6,000", "verdict"]
    assert t.loc["ddim η=0", "verdict"] == "still improving" and t.loc["ddim η=0", "Δ 4,000 → 6,000"].startswith("-2.00")
    assert t.loc["ddim η=1", "verdict"] == "not separable"
    assert t.loc["f-pndm", "verdict"] == "worse"
    assert t.loc["ddim η=0", "2,000 steps"] == "8.00 [7.00, 9.00]"
