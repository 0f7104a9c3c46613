"""Paper layouts of one (dataset, features, spacing) group of runs, in Markdown and LaTeX.

- `ddim_table1_layout`: DDIM Table 1 (Song et al. 2021): rows eta (DDIM Eq. 16) and
  sigma-hat (DDPM's larger variance, sampler `ddpm-large`), columns steps S.
- `pndm_layout`: the PNDM paper's layout: rows methods (labels.PNDM_ROWS, then any other
  sampler measured), each followed by its counted NFE row, columns steps S.

Cells hold FID (unitless, lower is better) with its interval, `12.34 [11.80, 12.90]`
(delete-a-block jackknife, runs.csv `fid_lo`/`fid_hi`), or the reason there is none
(`12.34 (no interval: N = 8 < 10)`).

Published CIFAR-10 numbers (papers.ddim_table1) sit beside ours ("ours / published") only
when every run of the table is comparable to them by provenance (runs.csv
`comparable_to_papers`, decided by papers.comparability: standard FID Inception weights,
reference statistics of the exact CIFAR-10 training set, N = 50,000, the papers'
checkpoint). Otherwise, for a data set named like the papers' with Inception features,
they are shown as context in their own column, with the reasons they are not comparable
("reference: JPEG copy; model: ours; N = 5,000").
`render_markdown` / `render_latex` give one file each, with a caption naming N, seeds,
device, preset and the sources; the stage (pipeline.stages.aggregate) writes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import pandas as pd

from pipeline.core import intervals

from pipeline.report import papers
from pipeline.report.labels import (PNDM_ROWS, SIGMA_HAT, Flavor, SeriesKey, devices_text, models_text, n_text, seeds_text,
                             series_key, series_label, series_sort_key)
from pipeline.report.records import parse_replicates, published_runs, series_curves

TABLE1_ETAS = (0.0, 0.2, 0.5, 1.0)  # DDIM Table 1's eta rows (a row needs our or the paper's numbers)
PATH_RMS = "path-rms"  # the pseudo feature space of the pathwise-error tables (data sets with an exact score)


def path_rms_group(g: pd.DataFrame) -> Optional[pd.DataFrame]:
    """The runs of one data set with a pathwise error (pipeline/stages/exact_map.py), as a table group whose
    `fid` columns hold path_rms and its interval (one row per point, features PATH_RMS); None when
    no point has one. Stochastic points have none and drop out."""
    rows = g[g["path_rms"].notna()].drop_duplicates("point")
    if rows.empty:
        return None
    n = rows["path_n"].astype(int)
    rows = rows.assign(n_images=n, seeds=[f"{int(a)}..{int(a) + int(b) - 1}" for a, b in zip(rows["seed"], n)])
    rows = rows.assign(fid=rows["path_rms"], fid_lo=rows["path_rms_lo"], fid_hi=rows["path_rms_hi"],
                       features=PATH_RMS, kid_mean=float("nan"), kid_std=float("nan"), kid_lo=float("nan"),
                       kid_hi=float("nan"), fid_replicates=None, kid_replicates=None, ref_stats_id=None,
                       comparable_to_papers=False, papers_note="pathwise error: no published counterpart")
    return rows


class Fid(NamedTuple):
    """One FID cell: value, interval bounds (NaN when none) and why there is no interval."""

    fid: float
    lo: float
    hi: float
    note: Optional[str]


NOT_MEASURED = Fid(float("nan"), float("nan"), float("nan"), None)


@dataclass(frozen=True)
class Layout:
    """A results table in a paper's layout: `cells` has one row per `row_kinds` entry and steps as columns."""

    kind: str  # "ddim_table1" | "pndm"
    dataset: str
    features: str
    spacing: str
    cells: pd.DataFrame  # objects: (Fid ours, published FID) tuples or NFE ints; see _render_cells
    row_kinds: list  # per row: ("fid", SeriesKey) or ("nfe", SeriesKey)
    with_paper: bool  # published numbers beside ours ("ours / published"): comparable by provenance
    group: pd.DataFrame  # the runs behind the table
    context: dict = None  # row index -> {steps: published FID}, shown as context when not comparable
    not_comparable: str = ""  # why the published numbers are only context

    @property
    def stem(self) -> str:
        return f"{self.kind}-{self.dataset}-{self.features}-{self.spacing}"


def papers_reasons(g: pd.DataFrame) -> str:
    """The reasons (runs.csv `papers_note`) a group of runs is not comparable to the published
    numbers, each once, N values merged: "reference: JPEG copy; model: ours; N = 5,000, 1,000"."""
    parts = dict.fromkeys(p for note in g["papers_note"].fillna("") for p in str(note).split("; ") if p)
    ns = [p[len("N = "):] for p in parts if p.startswith("N = ")]
    out = [p for p in parts if not p.startswith("N = ")]
    return "; ".join(out + ([f"N = {', '.join(ns)}"] if ns else []))


def _paper_frames(g: pd.DataFrame, dataset: str,
                  features: str) -> tuple[Optional[pd.DataFrame], Optional[pd.DataFrame]]:
    """(published numbers beside ours, published numbers as context): the first when every run
    is comparable by provenance, else the second for a data set and feature space named like
    the papers' (context needs no like-for-like, only relevance), else neither."""
    if bool(g["comparable_to_papers"].all()):
        return published_runs(), None
    if papers.is_published_dataset(dataset, features):
        return None, published_runs()
    return None, None


def _value(curves: dict, key: SeriesKey, steps: int, column: str = "fid") -> float:
    c = curves.get(key)
    return float("nan") if c is None or steps not in c.index else float(c.at[steps, column])


def _fid(curves: dict, key: SeriesKey, steps: int) -> Fid:
    c = curves.get(key)
    if c is None or steps not in c.index:
        return NOT_MEASURED
    r = c.loc[steps]
    note = r["interval_note"]
    return Fid(float(r["fid"]), float(r["fid_lo"]), float(r["fid_hi"]),
               None if note is None or (isinstance(note, float) and math.isnan(note)) else str(note))


def _context(rows: list, pcurves: dict) -> dict:
    """Row index -> {steps: published FID} for the rows the published table has."""
    return {i: {int(s): float(v) for s, v in pcurves[r]["fid"].items()} for i, r in enumerate(rows) if r in pcurves}


def ddim_table1_layout(g: pd.DataFrame, dataset: str, features: str, spacing: str) -> Layout:
    """Rows eta (DDIM Eq. 16) and sigma-hat, columns steps; published numbers beside ours where they exist."""
    curves = series_curves(g)
    paper, context = _paper_frames(g, dataset, features)
    pcurves = series_curves(paper) if paper is not None else {}
    etas = sorted(set(TABLE1_ETAS) | {k[1] for k in curves if k[0] == "ddim"})
    # the sigma-hat row: ddpm-large as run (with the official clip_x0 unless a data set overrides it)
    rows = [("ddim", e) for e in etas] + [k for k in dict.fromkeys([*curves, *pcurves]) if k[0] == SIGMA_HAT]
    rows = [r for r in rows if r in curves or r in pcurves]
    steps = sorted({s for r in rows for s in (list(curves[r].index) if r in curves else [])}
                   | {s for r in rows for s in (list(pcurves[r].index) if r in pcurves else [])})
    cells = pd.DataFrame(
        [[(_fid(curves, r, s), _value(pcurves, r, s)) for s in steps] for r in rows],
        index=range(len(rows)), columns=steps, dtype=object)
    ctx = _context(rows, series_curves(context)) if context is not None else None
    return Layout("ddim_table1", dataset, features, spacing, cells, [("fid", r) for r in rows],
                  paper is not None, g, ctx, papers_reasons(g) if ctx is not None else "")


def pndm_layout(g: pd.DataFrame, dataset: str, features: str, spacing: str) -> Layout:
    """Rows methods (ddim at eta = 0, the PNDM family, DPM-Solver++, DDPM, then any other
    sampler measured), each followed by its NFE row; columns steps."""
    curves = series_curves(g)
    paper, context = _paper_frames(g, dataset, features)
    pcurves = series_curves(paper) if paper is not None else {}
    canonical = [series_key(s, 0.0 if s == "ddim" else None) for s in PNDM_ROWS]
    others = [k for k in curves if k not in canonical and k[0] not in ("ddim", SIGMA_HAT)]
    rows = [k for k in canonical if k in curves or k in pcurves] + others
    steps = sorted({s for r in rows if r in curves for s in curves[r].index}
                   | {s for r in rows if r in pcurves for s in pcurves[r].index})
    data, kinds = [], []
    for r in rows:
        data.append([(_fid(curves, r, s), _value(pcurves, r, s)) for s in steps])
        kinds.append(("fid", r))
        data.append([_value(curves, r, s, "nfe") for s in steps])
        kinds.append(("nfe", r))
    cells = pd.DataFrame(data, index=range(len(data)), columns=steps, dtype=object)
    ctx = None
    if context is not None:
        pc = series_curves(context)
        ctx = {i: {int(s): float(v) for s, v in pc[key]["fid"].items()}
               for i, (kind, key) in enumerate(kinds) if kind == "fid" and key in pc}
    return Layout("pndm", dataset, features, spacing, cells, kinds, paper is not None, g, ctx,
                  papers_reasons(g) if ctx is not None else "")


def _row_label(kind: str, key: SeriesKey, layout: str, fl: Flavor) -> str:
    sampler, eta = key[:2]
    if kind == "nfe":
        return fl.nfe_row
    if layout == "ddim_table1":
        return fl.sigma_hat if sampler == SIGMA_HAT else f"{fl.eta} = {eta:.1f}"
    name = fl.esc(" ".join((sampler,) + tuple(key[2:])))  # non-default options, e.g. "lower_order_final=false"
    return name if eta is None else f"{name} ({fl.eta} = {eta:g})"


CONTEXT_COLUMN = "published (context)"


def fid_text(c: Fid, fl: Flavor, digits: int = 2) -> str:
    """"12.34 [11.80, 12.90]", "12.34 (no interval: N = 8 < 10)", or the not-measured dash."""
    if pd.isna(c.fid):
        return fl.dash
    if pd.isna(c.lo) or pd.isna(c.hi):
        return f"{fl.num(c.fid, digits)} ({fl.esc('no interval: ' + (c.note or 'none recorded'))})"
    return f"{fl.num(c.fid, digits)} [{fl.num(c.lo, digits)}, {fl.num(c.hi, digits)}]"


def _digits(t: Layout) -> int:
    """Decimals of a table's cells: FIDs 2; pathwise errors (pixels in [-1, 1], down to 1e-4 at 50
    steps of a high-order method) 4."""
    return 4 if t.features == PATH_RMS else 2


def _context_text(values: dict, fl: Flavor) -> str:
    return "; ".join(f"S={s}: {fl.num(v)}" for s, v in sorted(values.items()))


def _render_cells(t: Layout, fl: Flavor) -> pd.DataFrame:
    """Strings for each cell: "ours / paper" (FID rows with published numbers), "ours", or NFE;
    plus the context column of published numbers that are not comparable."""
    out = []
    for i, ((kind, key), (_, row)) in enumerate(zip(t.row_kinds, t.cells.iterrows())):
        if kind == "nfe":
            cells = [fl.integer(v) for v in row]
        elif t.with_paper and any(not pd.isna(p) for _, p in row):
            cells = [f"{fid_text(o, fl, _digits(t))} / {fl.num(p)}" for o, p in row]
        else:
            cells = [fid_text(o, fl, _digits(t)) for o, _ in row]
        if t.context is not None:
            cells.append(_context_text(t.context[i], fl) if i in t.context else ("" if kind == "nfe" else fl.dash))
        out.append(cells)
    labels = [_row_label(k, key, t.kind, fl) for k, key in t.row_kinds]
    columns = [str(s) for s in t.cells.columns] + ([CONTEXT_COLUMN] if t.context is not None else [])
    return pd.DataFrame(out, index=labels, columns=columns)


def _interval_text(g: pd.DataFrame) -> str:
    levels = sorted({float(v) for v in g["interval_level"].dropna()})
    level = "/".join(f"{v:.0%}" for v in levels) if levels else "95%"
    return (f"[lo, hi]: {level} interval (delete-a-block jackknife over blocks of seeds); "
            f"where there is none the cell says why")


def _table_text(t: Layout, preset: str, fl: Flavor) -> tuple[str, str, list[str]]:
    """Title, caption and notes of a layout, in the flavour's spelling."""
    src = papers.ddim_table1_source()
    cite = papers.citation(src.citation)
    ddpm = papers.citation("ddpm")
    name = "DDIM Table 1 layout" if t.kind == "ddim_table1" else "PNDM layout"
    title = (f"{name}: {fl.code(t.dataset)}, {fl.code(t.features)} features, "
             f"{fl.code(t.spacing)} spacing")
    g = t.group
    if t.features == PATH_RMS:
        title = title.replace(f"{fl.code(t.features)} features", "pathwise RMS error")
        what = ("Pathwise RMS error (lower is better) of each deterministic sampler's x_0 against the exact "
                "probability-flow endpoint of the same x_T (exact score, high-accuracy ODE solve; pixels in "
                "[-1, 1], before uint8 rounding)")
    else:
        what = f"FID (lower is better) with {fl.code(t.features)} features"
    cap = [f"{fl.esc(what)}, {n_text(g['n_images'])}, "
           f"{fl.esc(seeds_text(g))}; model: {fl.esc(models_text(g))}; ddbench preset {fl.code(preset)}; "
           f"device: {fl.esc(devices_text(g))}.",
           f"{fl.esc(_interval_text(g))}."]
    if t.kind == "ddim_table1":
        cap.append(f"Rows: DDIM with {fl.eta} ({fl.esc(cite.short)}, Eq. 16; sampler {fl.code('ddim')}) and "
                   f"{fl.sigma_hat}, DDPM's larger variance (sampler {fl.code(SIGMA_HAT)}); columns: steps S.")
    else:
        cap.append(f"Rows: methods ({fl.code('ddim')} at {fl.eta} = 0), each followed by its counted "
                   f"number of model evaluations (NFE); columns: steps S.")
    notes = []
    if t.with_paper:
        notes.append(
            f"Cells: ours [interval] / published, in rows with published numbers; ours are comparable to "
            f"them by provenance (standard FID Inception weights, the exact CIFAR-10 training set as reference, "
            f"N = {src.n_images:,}, the papers' checkpoint). Published: {fl.esc(cite.short)}, {src.where}, "
            f"CIFAR-10, Inception FID, "
            f"N = {src.n_images:,}, {fl.esc(src.reference_set)} statistics, {fl.code(src.spacing)} spacing"
            + ("" if t.spacing == src.spacing else
               f" (this table: {fl.code(t.spacing)} spacing, so the columns are not like for like)")
            + f"; {fl.sigma_hat} at S = 1000 is {fl.esc(ddpm.short)}'s 3.17.")
        if t.kind == "pndm":
            dpm = papers.published_number("dpm-solver-cifar10-12nfe")
            notes.append(f"Also published on this checkpoint: DPM-Solver, FID {dpm['fid']:.2f} at "
                         f"{int(dpm['nfe'])} NFE ({fl.esc(papers.citation('dpm-solver').short)}); "
                         f"PNDM's own table is not transcribed ({fl.esc(papers.citation('pndm').short)}: "
                         f"50-step PNDM beats 1000-step DDIM, see the claims table).")
        notes.append(f"{fl.esc(cite.text)} {fl.esc(ddpm.text)}")
    elif t.context is not None:
        notes.append(
            f"{fl.esc(CONTEXT_COLUMN.capitalize())}: {fl.esc(cite.short)}, {src.where}, CIFAR-10, Inception FID, "
            f"N = {src.n_images:,}, {fl.code(src.spacing)} spacing, Ho et al.'s checkpoint. Not comparable "
            f"with ours ({fl.esc(t.not_comparable)}), so not beside them: comparability is decided from what "
            f"a number is made of (weights, reference set, N, model), not from the data set's name.")
        notes.append(f"{fl.esc(cite.text)} {fl.esc(ddpm.text)}")
    elif papers.is_published_dataset(t.dataset):
        notes.append(f"Published CIFAR-10 numbers ({fl.esc(cite.short)}) are Inception FID; not shown "
                     f"beside {fl.code(t.features)} features, which are not comparable.")
    notes.append(f"{fl.dash} = not measured.")
    return title, " ".join(cap), notes


def render_markdown(t: Layout, preset: str) -> str:
    fl = Flavor(tex=False)
    title, caption, notes = _table_text(t, preset, fl)
    head = f"### {title}\n\n{caption}\n\n"
    if t.cells.empty:
        return head + "_No grid point of this layout was measured._\n"
    cells = _render_cells(t, fl)
    n_steps = t.cells.shape[1]
    table = cells.to_markdown(tablefmt="pipe", disable_numparse=True,
                              colalign=["left"] + ["right"] * n_steps + ["left"] * (cells.shape[1] - n_steps))
    return head + table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def render_latex(t: Layout, preset: str) -> str:
    fl = Flavor(tex=True)
    title, caption, notes = _table_text(t, preset, fl)
    header = f"% {t.stem}.tex: generated by ddbench (pipeline/stages/aggregate.py); needs \\usepackage{{booktabs}}.\n"
    if t.cells.empty:
        return header + f"% {title}: no grid point of this layout was measured.\n"
    cells = _render_cells(t, fl)
    n_steps = t.cells.shape[1]
    cells.columns = [f"S={c}" for c in cells.columns[:n_steps]] + list(cells.columns[n_steps:])
    return header + cells.style.to_latex(
        hrules=True, position="t", position_float="centering",
        column_format="l" + "r" * n_steps + "p{4cm}" * (cells.shape[1] - n_steps),
        caption=f"{title}. {caption} " + " ".join(notes),
        label=f"tab:{t.stem}",
    )


# ---------------------------------------------------------------------------- the model-quality axis

TRAINING_VERDICTS = {
    "improving": "still improving",  # the last model's FID is lower, beyond the paired interval
    "flat": "not separable",  # the paired interval contains 0: no change the data can see
    "worse": "worse",  # the last model's FID is higher, beyond the interval
}


def training_table(g: pd.DataFrame) -> pd.DataFrame:
    """One model_quality_groups group as a table: a row per grid point (sampler setting, steps), a column
    per model (its training steps) with FID [interval], and the change from the second-last to the last
    model, paired over the same seeds (delete-a-block jackknife, `intervals.paired_difference`), read as
    TRAINING_VERDICTS: the stopping rule ("until the best sampler stops improving beyond its
    interval between checkpoints") made explicit for every sampler."""
    steps_trained = sorted(int(s) for s in g["model_train_steps"].unique())
    rows = []
    opts = g["options"] if "options" in g else pd.Series([None] * len(g), index=g.index)
    for (sampler, eta, opt, steps), p in g.assign(options=opts.fillna("")).groupby(
            ["sampler", "eta", "options", "steps"], dropna=False, sort=False):
        by = {int(r.model_train_steps): r for r in p.itertuples()}
        row = {"sampler setting": series_label(sampler, eta, opt or None), "steps S": int(steps),
               "_order": (int(steps), series_sort_key(series_key(sampler, eta, opt or None)))}
        for k in steps_trained:
            r = by.get(k)
            row[f"{k:,} steps"] = "–" if r is None else fid_text(
                Fid(r.fid, r.fid_lo, r.fid_hi, None), Flavor(tex=False))
        last, prev = steps_trained[-1], steps_trained[-2]
        a, b = by.get(last), by.get(prev)
        ra = parse_replicates(a.fid_replicates) if a is not None else None
        rb = parse_replicates(b.fid_replicates) if b is not None else None
        if ra is None or rb is None or ra.shape != rb.shape:
            row[f"Δ {prev:,} → {last:,}"], row["verdict"] = "–", "no paired interval"
        else:
            d, lo, hi, _ = intervals.paired_difference(a.fid, ra, b.fid, rb)
            row[f"Δ {prev:,} → {last:,}"] = f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            row["verdict"] = TRAINING_VERDICTS["improving" if hi < 0 else "worse" if lo > 0 else "flat"]
        rows.append(row)
    return pd.DataFrame(sorted(rows, key=lambda r: r["_order"])).drop(columns="_order")


def render_training_markdown(g: pd.DataFrame, preset: str) -> str:
    table = training_table(g)
    datasets = ", ".join(f"`{d}`" for d in dict.fromkeys(g["dataset"].astype(str)))
    return "\n".join([
        f"### FID vs training of the model: {datasets}, `{g['features'].iloc[0]}` features", "",
        f"FID (lower is better) of the same grid points on models of one data set at several training steps "
        f"(same reference statistics, feature space and seeds), {n_text(g['n_images'])}, {seeds_text(g)}; "
        f"model: {models_text(g)}; ddbench preset `{preset}`; device: {devices_text(g)}. "
        f"{_interval_text(g)}. The last columns: the change from the second-last to the last model, paired "
        f"over the same seeds, with its interval; \"not separable\" means the interval contains 0.", "",
        table.to_markdown(index=False, tablefmt="pipe", disable_numparse=True), ""])
