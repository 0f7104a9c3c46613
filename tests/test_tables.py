"""tables: DDIM Table 1 and PNDM layouts, published numbers beside ours only where comparable."""
from __future__ import annotations

import pytest

from pipeline import papers, records, tables
from synthetic_runs import HOLDS, STEPS, base, md_table, write_all


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    recs = write_all(tmp_path_factory.mktemp("runs"))
    frame = records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test")
    return dict(iter(records.table_groups(frame)))


def rendered(groups, kind, dataset, features, suffix=".md"):
    """The text of `<kind>-<dataset>-<features>-uniform<suffix>` as the aggregate stage writes it."""
    make = {"ddim_table1": tables.ddim_table1_layout, "pndm": tables.pndm_layout}[kind]
    t = make(groups[(dataset, features, "uniform")], dataset, features, "uniform")
    assert t.stem == f"{kind}-{dataset}-{features}-uniform"
    return (tables.render_markdown if suffix == ".md" else tables.render_latex)(t, "test")


def test_ddim_table1_layout_has_paper_rows_and_published_numbers_beside_ours(groups):
    text = rendered(groups, "ddim_table1", "cifar10", "inception")
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


def test_pndm_layout_rows_methods_each_with_its_nfe_row(groups):
    header, rows = md_table(rendered(groups, "pndm", "cifar10", "inception"))
    labels = [label for label, _ in rows]
    assert labels == ["ddim (η = 0)", "↳ NFE", "s-pndm", "↳ NFE", "f-pndm", "↳ NFE", "dpm-solver++", "↳ NFE"]
    cells = dict(zip(range(len(rows)), [c for _, c in rows]))
    assert cells[5][:4] == [str(s + 9) for s in (10, 20, 50, 100)], "F-PNDM spends S + 9 evaluations"
    assert cells[4][2] == f"{HOLDS[('f-pndm', None)](50):.2f}", "no published column in rows without one"
    paper = papers.ddim_table1().set_index(["row", "steps"])["fid"]
    assert cells[0][0] == f"{base(10):.2f} / {paper[('eta=0.0', 10)]:.2f}", "published DDIM (eta 0) beside ours"


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
