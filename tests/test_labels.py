"""labels: one sampler vocabulary for runs.csv order, tables, claims, figures and metrics.json."""
from __future__ import annotations

import math

import pandas as pd

from pipeline.report import labels


def test_series_key_equal_settings_equal_keys():
    assert labels.series_key("ddim", 0.30000000000000004) == labels.series_key("ddim", 0.3) == ("ddim", 0.3)
    assert labels.series_key("f-pndm", math.nan) == labels.series_key("f-pndm", None) == ("f-pndm", None)


def test_series_label_names_eta_only_where_there_is_one():
    assert labels.series_label("ddim", 0.0) == "ddim η=0"
    assert labels.series_label("ddim", 0.5) == "ddim η=0.5"
    assert labels.series_label("f-pndm", float("nan")) == "f-pndm"


def test_series_in_table_order_then_unknown_samplers_by_name():
    keys = [("zz-new", None), ("f-pndm", None), ("ddim", 1.0), ("ddpm-large", None), ("ddim", 0.0),
            ("aa-new", None), ("ddim", 0.0)]
    assert labels.sorted_series(keys) == [("ddim", 0.0), ("ddim", 1.0), ("ddpm-large", None), ("f-pndm", None),
                                          ("aa-new", None), ("zz-new", None)]
    assert labels.SAMPLER_ORDER[:2] == ("ddim", labels.SIGMA_HAT)


def test_n_text_one_value_or_a_range():
    assert labels.n_text(pd.Series([64, 64])) == "N = 64 images per point"
    assert labels.n_text(pd.Series([64, 5000])) == "N = 64–5,000 images per point (varies; see runs.csv)"
    assert labels.n_text(pd.Series([64, 5000]), per_point=False) == "N = 64–5,000"
    assert labels.n_text(pd.Series([], dtype=int)) == "N = –"


def test_flavor_spells_markdown_and_latex():
    md, tex = labels.Flavor(tex=False), labels.Flavor(tex=True)
    assert (md.eta, md.sigma_hat, md.code("a_b")) == ("η", "σ̂", "`a_b`")
    assert (tex.eta, tex.sigma_hat, tex.code("a_b")) == (r"$\eta$", r"$\hat{\sigma}$", r"\texttt{a\_b}")
    assert md.num(float("nan")) == "–" and tex.num(None) == "--" and md.num(3.14159) == "3.14"
