"""The sampler vocabulary of every table, claim and figure, in one place.

- Sampler order: the rows of the papers' tables (DDIM, then DDPM's sigma-hat, then the
  PNDM paper's methods), used to sort runs.csv, tables, figure legends and mosaics.
- Series: one sampler setting, keyed `(sampler, eta or None)`, plus the text of its other
  non-default options (`(sampler, eta, "clip_x0=true")`, runs frame column `options`) when it
  has any, so two settings never share a key; `series_label` is its plain-text name
  ("ddim η=0", "f-pndm", "ddpm-large clip_x0=true").
- Text pieces of captions and titles: N, seeds and devices of a group of runs (columns
  of the tidy runs frame, `pipeline.report.records.RUN_COLUMNS`).
- `Flavor`: the Markdown or LaTeX spelling of symbols (η, σ̂), code and numbers.
"""
from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from pipeline.config import SIGMA_HAT_OPTIONS

SIGMA_HAT = "ddpm-large"  # DDIM Table 1's sigma-hat row: DDPM with the larger variance
# PNDM layout, rows in this order; ddim is the deterministic eta = 0 sampler of that paper.
# fon: the paper's FON as its official code runs it; rk4-ab4: the textbook method it names.
PNDM_ROWS = ("ddim", "s-pndm", "f-pndm", "fon", "rk4-ab4", "pndm-prk", "plms", "dpm-solver++", "ddpm")
SAMPLER_ORDER = ("ddim", SIGMA_HAT) + PNDM_ROWS[1:]

SeriesKey = tuple  # (sampler, eta or None) or (sampler, eta or None, non-default options text)


def options_text(options, skip=("eta",)) -> str:
    """Non-default sampler options {name: value} (a run record's `non_default_options`) as the runs
    frame's `options` text: "clip_x0=true, lower_order_final=false" in the given order, '' for none.
    `skip`: options with a column of their own (eta)."""
    def text(v):
        return ("true" if v else "false") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{k}={text(v)}" for k, v in (options or {}).items() if k not in skip)


def sigma_hat_key() -> SeriesKey:
    """The series of DDIM Table 1's sigma-hat row as published and as `grid.ddim_table.sigma_hat` runs
    it: ddpm-large with the official clip_x0 = true (config.SIGMA_HAT_OPTIONS, non-default options)."""
    return series_key(SIGMA_HAT, None, options_text(SIGMA_HAT_OPTIONS))


def sampler_rank(name: str) -> int:
    """Position in SAMPLER_ORDER; samplers it does not name come after, in name order (by the caller)."""
    return SAMPLER_ORDER.index(name) if name in SAMPLER_ORDER else len(SAMPLER_ORDER)


def _options_text(options) -> str:
    return "" if options is None or (isinstance(options, float) and math.isnan(options)) else str(options)


def series_key(sampler: str, eta, options=None) -> SeriesKey:
    """(sampler, eta rounded to 6 digits), eta None for NaN/None, and the runs frame's `options` text
    (non-default options, `options_text`) as a third item when it is not empty: equal
    settings, equal keys; settings that differ in any option, different keys."""
    eta = None if eta is None or (isinstance(eta, float) and math.isnan(eta)) else round(float(eta), 6)
    options = _options_text(options)
    return (sampler, eta, options) if options else (sampler, eta)


def series_label(sampler: str, eta=None, options=None) -> str:
    """Plain-text name of a sampler setting: "ddim η=0", "f-pndm", "ddpm-large clip_x0=true"
    (figures, claims, metrics.json)."""
    key = series_key(sampler, eta, options)
    return " ".join([sampler] + ([f"η={key[1]:g}"] if key[1] is not None else []) + list(key[2:]))


def series_sort_key(key: SeriesKey) -> tuple:
    """Sampler order, then sampler name, then eta (settings without eta first), then options."""
    sampler, eta = key[:2]
    return (sampler_rank(sampler), sampler, -1 if eta is None else eta, "".join(key[2:]))


def sorted_series(keys: Iterable[SeriesKey]) -> list[SeriesKey]:
    """Distinct series keys in table order."""
    return sorted(set(keys), key=series_sort_key)


# --- text pieces of captions and titles ------------------------------------------------------

def n_text(n: pd.Series, *, per_point: bool = True) -> str:
    """The images per grid point of a group of runs: "N = 64 images per point", a range when
    it varies; `per_point=False` gives the short form of figure titles ("N = 64")."""
    vals = sorted(set(int(v) for v in n))
    if not vals:
        return "N = –"
    if len(vals) == 1:
        return f"N = {vals[0]:,}" + (" images per point" if per_point else "")
    return f"N = {vals[0]:,}–{vals[-1]:,}" + (" images per point (varies; see runs.csv)" if per_point else "")


def seeds_text(g: pd.DataFrame) -> str:
    seeds = sorted(set(g["seeds"].astype(str)))
    return "seeds " + (seeds[0] if len(seeds) == 1 else f"{seeds[0]} ... {seeds[-1]} (varies)")


def devices_text(g: pd.DataFrame) -> str:
    """The devices of a group of runs, each with the eps model's precision ("CPU (...), float32")."""
    prec = g["precision"] if "precision" in g else pd.Series("float32", index=g.index)
    return "; ".join(sorted({f"{d}, {p}" for d, p in zip(g["device_name"].astype(str), prec.fillna("float32").astype(str))}))


def model_text(row: dict) -> str:
    """Which model made a run (a runs-frame row as a dict): the exact score, an imported one, or a U-Net
    with its training steps and, for a shipped one (model.checkpoint), the file it came from: no table
    mixes them up unsaid."""
    present = lambda k: k in row and not pd.isna(row[k])  # noqa: E731  (NaN where a record lacks the field)
    if row.get("model_kind") == "exact":
        return "exact score (no network)"
    if present("model_pretrained"):
        return f"imported {row['model_pretrained']}"
    text = f"U-Net, {int(row['model_train_steps']):,} training steps" if present("model_train_steps") else "U-Net"
    return text + (f" (shipped checkpoint {row['model_shipped_from']})" if present("model_shipped_from") else "")


def models_text(g: pd.DataFrame) -> str:
    cols = [c for c in ("model_kind", "model_pretrained", "model_train_steps", "model_shipped_from") if c in g]
    return "; ".join(dict.fromkeys(model_text(r) for r in g[cols].to_dict("records")))


class Flavor:
    """Markdown or LaTeX spelling of the symbols and text pieces of tables and captions."""

    def __init__(self, tex: bool):
        self.tex = tex
        self.eta = r"$\eta$" if tex else "η"
        self.sigma_hat = r"$\hat{\sigma}$" if tex else "σ̂"
        self.dash = "--" if tex else "–"
        self.nfe_row = r"\quad NFE" if tex else "↳ NFE"

    def esc(self, s: str) -> str:
        if not self.tex:
            return s
        repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"\textless{}", ">": r"\textgreater{}"}
        return "".join(repl.get(c, c) for c in s)

    def code(self, s: str) -> str:
        return rf"\texttt{{{self.esc(s)}}}" if self.tex else f"`{s}`"

    def num(self, x, digits: int = 2) -> str:
        return self.dash if x is None or pd.isna(x) else f"{x:.{digits}f}"

    def integer(self, x) -> str:
        return self.dash if x is None or pd.isna(x) else f"{int(x)}"
