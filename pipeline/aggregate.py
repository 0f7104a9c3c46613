"""Run records -> tidy frame -> runs.csv, paper-layout tables, the claims check, summary.md.

Input: the `record.json` of each sample run and the `fid-<features>.json` of each FID
evaluation (fields in docs/design.md, "Records"). Output, all written atomically into
one folder (`results/<preset>/tables`):

- `runs.csv`: one tidy row per (dataset, grid point, feature space).
- `ddim_table1-<D>-<F>-<spacing>.{md,tex}`: DDIM Table 1 layout (rows eta and sigma-hat,
  columns steps), and `pndm-<D>-<F>-<spacing>.{md,tex}`: the PNDM layout (rows methods,
  each followed by its NFE row, columns steps). Published CIFAR-10 numbers sit beside ours
  (cells "ours / published") when the data set is `cifar10` and the FID is Inception FID.
- `claims.{md,csv,tex}`: each speed-quality claim of the papers with a verdict on our
  numbers, as the paper compares (given steps) and at equal NFE (which the papers did not).
- `summary.md`: provenance (preset, device, torch, N, seeds) and an index of the files.

Claim verdicts (see `evaluate_claims`):
- A claim is a list of pairwise comparisons "A has lower FID than B".
- A pair is a *tie* when the KID difference is within TIE_SIGMAS combined KID standard
  deviations (sqrt(std_A^2 + std_B^2)) or FID and KID disagree in direction; without KID
  (kid_std null, e.g. the Gaussian's exact Frechet distance) FID alone decides.
- holds: every compared pair as claimed; does not hold: at least one pair against it
  beyond noise; tie: none against, at least one within noise; not measured: the grid
  lacks the points (never guessed, never extrapolated).
- Equal NFE: one side of each pair (the *anchor*, the sampler and step count the claim
  names) stays at its measured point; the other side's FID (and KID) is linearly
  interpolated in log(NFE) between its two nearest measured NFEs, or taken as measured
  when its NFE matches. Outside the other side's measured NFE range the pair is not
  compared.
"""
from __future__ import annotations

from pipeline.errors import RecordError

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from pipeline import papers
from pipeline.files import atomic_path, read_json, write_text

# A pair whose KID means differ by less than this many combined KID standard deviations
# is a tie. KID std is the spread over torch-fidelity's subsets: a conservative noise scale.
TIE_SIGMAS = 1.0

# Step / NFE windows of the claims ("10-100 steps" in DDIM, "~10-20 NFE" for DPM-Solver).
FEW_STEPS = (10, 100)
DPM_NFE = (10, 20)

SIGMA_HAT = "ddpm-large"  # DDIM Table 1's sigma-hat row: DDPM with the larger variance
TABLE1_ETAS = (0.0, 0.2, 0.5, 1.0)
# PNDM layout, rows in this order; ddim is the deterministic eta = 0 sampler of that paper.
PNDM_ROWS = ("ddim", "s-pndm", "f-pndm", "fon", "pndm-prk", "plms", "dpm-solver++", "ddpm")
SAMPLER_ORDER = ("ddim", SIGMA_HAT) + PNDM_ROWS[1:]

VERDICTS = ("holds", "does not hold", "tie", "not measured")
BASES = ("as claimed", "equal NFE")

RUN_COLUMNS = [
    "dataset", "sampler", "steps", "nfe", "spacing", "eta", "n_images", "features",
    "fid", "kid_mean", "kid_std", "wall_s", "images_per_s", "s_per_nfe", "device_name",
    "comparable_to_papers", "point", "nfe_expected", "seed", "seeds", "batch_size",
    "peak_mem_bytes", "device", "torch", "torch_fidelity", "feature_extractor", "ref_n",
    "ref_stats_id", "checkpoint_sha256", "preset",
]

CLAIM_COLUMNS = [
    "dataset", "features", "spacing", "claim_id", "claim", "source", "basis", "verdict",
    "wins", "ties", "losses", "not_compared", "n_images", "pairs", "published",
]



# --- records -> tidy frame ----------------------------------------------------------------

# field -> (type, nullable). Extra fields are ignored; these must be present.
SAMPLE_FIELDS = {
    "dataset": ("str", False), "point": ("str", False), "sampler": ("str", False),
    "steps": ("int", False), "spacing": ("str", False), "eta": ("number", True),
    "nfe": ("int", False), "n_images": ("int", False), "seed": ("int", False),
    "wall_s": ("number", False), "images_per_s": ("number", False), "s_per_nfe": ("number", False),
    "device_name": ("str", False), "torch": ("str", False),
}
FID_FIELDS = {
    "dataset": ("str", False), "point": ("str", False), "features": ("str", False),
    "fid": ("number", True), "kid_mean": ("number", True), "kid_std": ("number", True),
    "n_images": ("int", False), "comparable_to_papers": ("bool", False),
}
_TYPE_OK = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
}


def read_record(path: Path, fields: dict, kind: str) -> dict:
    """Read one JSON record and check its required fields; errors name the file and the field."""
    try:
        rec = read_json(path)
    except FileNotFoundError:
        raise RecordError(f"{path}: {kind} record not found") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: {kind} record is not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path}: {kind} record is not a JSON object")
    missing = [k for k in fields if k not in rec]
    if missing:
        raise RecordError(f"{path}: {kind} record lacks required field(s) {', '.join(missing)} "
                          f"(record fields: docs/design.md, Records)")
    for key, (typ, nullable) in fields.items():
        value = rec[key]
        if value is None and nullable:
            continue
        if not _TYPE_OK[typ](value):
            raise RecordError(f"{path}: field {key!r} = {value!r}; expected {typ}{' or null' if nullable else ''}")
    return rec


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _row(s: dict, f: dict, preset: str) -> dict:
    fp_s, fp_f = s.get("fingerprint") or {}, f.get("fingerprint") or {}
    n = f["n_images"]
    return {
        "dataset": s["dataset"], "sampler": s["sampler"], "steps": s["steps"], "nfe": s["nfe"],
        "spacing": s["spacing"], "eta": _num(s["eta"]), "n_images": n, "features": f["features"],
        "fid": _num(f["fid"]), "kid_mean": _num(f["kid_mean"]), "kid_std": _num(f["kid_std"]),
        "wall_s": float(s["wall_s"]), "images_per_s": float(s["images_per_s"]),
        "s_per_nfe": float(s["s_per_nfe"]), "device_name": s["device_name"],
        "comparable_to_papers": f["comparable_to_papers"], "point": s["point"],
        "nfe_expected": s.get("nfe_expected"), "seed": s["seed"],
        "seeds": s.get("seeds") or f"{s['seed']}..{s['seed'] + n - 1}",
        "batch_size": s.get("batch_size"), "peak_mem_bytes": s.get("peak_mem_bytes"),
        "device": s.get("device", fp_s.get("device")), "torch": s["torch"],
        "torch_fidelity": fp_f.get("torch_fidelity"), "feature_extractor": f.get("feature_extractor"),
        "ref_n": f.get("ref_n"), "ref_stats_id": f.get("ref_stats_id"),
        "checkpoint_sha256": s.get("checkpoint_sha256"), "preset": preset,
    }


def _sampler_rank(name: str) -> int:
    return SAMPLER_ORDER.index(name) if name in SAMPLER_ORDER else len(SAMPLER_ORDER)


def tidy(sample_records: Sequence[Path], fid_records: Sequence[Path], *, preset: str) -> pd.DataFrame:
    """One row per (dataset, point, features): the sample record joined with its FID record.

    Strict: every FID record needs its sample record (same dataset and point), every sample
    record at least one FID record, no duplicates, and equal `n_images` in both.
    """
    if not fid_records:
        raise RecordError("aggregate: no fid-*.json records given")
    samples: dict[tuple, tuple[Path, dict]] = {}
    for path in map(Path, sample_records):
        rec = read_record(path, SAMPLE_FIELDS, "sample")
        if rec["sampler"] == "ddim" and rec["eta"] is None:
            raise RecordError(f"{path}: sampler 'ddim' needs a numeric 'eta', got null")
        key = (rec["dataset"], rec["point"])
        if key in samples:
            raise RecordError(f"{path}: second sample record for dataset {key[0]!r} point {key[1]!r} "
                              f"(first: {samples[key][0]})")
        samples[key] = (path, rec)
    rows, seen, with_fid = [], {}, set()
    for path in map(Path, fid_records):
        rec = read_record(path, FID_FIELDS, "fid")
        key = (rec["dataset"], rec["point"])
        if key not in samples:
            raise RecordError(f"{path}: no sample record for dataset {key[0]!r} point {key[1]!r} "
                              f"among the {len(samples)} sample records given")
        full = key + (rec["features"],)
        if full in seen:
            raise RecordError(f"{path}: second fid record for {full} (first: {seen[full]})")
        seen[full] = path
        s_path, s = samples[key]
        if rec["n_images"] != s["n_images"]:
            raise RecordError(f"{path}: n_images = {rec['n_images']} but its sample record {s_path} "
                              f"has n_images = {s['n_images']} (stale record?)")
        rows.append(_row(s, rec, preset))
        with_fid.add(key)
    lacking = [str(p) for k, (p, _) in samples.items() if k not in with_fid]
    if lacking:
        raise RecordError(f"{lacking[0]}: sample record has no fid-*.json among the fid records given "
                          f"({len(lacking)} sample record(s) without FID)")
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    datasets = list(dict.fromkeys(frame["dataset"]))  # order of the records (the config's order)
    frame["_d"] = frame["dataset"].map(datasets.index)
    frame["_s"] = frame["sampler"].map(_sampler_rank)
    frame = frame.sort_values(["_d", "features", "spacing", "_s", "sampler", "eta", "steps"], na_position="first")
    return frame.drop(columns=["_d", "_s"]).reset_index(drop=True)


# --- series, labels, formatting ------------------------------------------------------------

SeriesKey = tuple  # (sampler, eta or None)


def series_key(sampler: str, eta) -> SeriesKey:
    eta = None if eta is None or (isinstance(eta, float) and math.isnan(eta)) else round(float(eta), 6)
    return (sampler, eta)


def series_label(sampler: str, eta=None) -> str:
    """Plain-text name of a sampler setting: "ddim η=0", "f-pndm" (figures, claims)."""
    _, eta = series_key(sampler, eta)
    return sampler if eta is None else f"{sampler} η={eta:g}"


def _curves(g: pd.DataFrame) -> dict[SeriesKey, pd.DataFrame]:
    """Series -> its points sorted by steps (index steps; columns nfe, fid, kid_mean, kid_std, n_images)."""
    out = {}
    keys = [series_key(s, e) for s, e in zip(g["sampler"], g["eta"])]
    for key in dict.fromkeys(keys):
        mask = [k == key for k in keys]
        sub = g.loc[mask, ["steps", "nfe", "fid", "kid_mean", "kid_std", "n_images"]]
        if sub["steps"].duplicated().any():
            dup = sub["steps"][sub["steps"].duplicated()].tolist()
            raise RecordError(f"{series_label(*key)}: more than one record at steps {dup} "
                              f"for one dataset, feature space and spacing")
        out[key] = sub.set_index("steps").sort_index()
    return out


class _Flavor:
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
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
        return "".join(repl.get(c, c) for c in s)

    def code(self, s: str) -> str:
        return rf"\texttt{{{self.esc(s)}}}" if self.tex else f"`{s}`"

    def num(self, x, digits: int = 2) -> str:
        return self.dash if x is None or pd.isna(x) else f"{x:.{digits}f}"

    def integer(self, x) -> str:
        return self.dash if x is None or pd.isna(x) else f"{int(x)}"


def _n_text(n: pd.Series) -> str:
    vals = sorted(set(int(v) for v in n))
    if not vals:
        return "N = –"
    if len(vals) == 1:
        return f"N = {vals[0]:,} images per point"
    return f"N = {vals[0]:,}–{vals[-1]:,} images per point (varies; see runs.csv)"


def _seeds_text(g: pd.DataFrame) -> str:
    seeds = sorted(set(g["seeds"].astype(str)))
    return "seeds " + (seeds[0] if len(seeds) == 1 else f"{seeds[0]} ... {seeds[-1]} (varies)")


def _devices(g: pd.DataFrame) -> str:
    return "; ".join(sorted(set(g["device_name"].astype(str))))


# --- paper layouts -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """A results table in a paper's layout: `cells` has row keys as index and steps as columns."""

    kind: str  # "ddim_table1" | "pndm"
    dataset: str
    features: str
    spacing: str
    cells: pd.DataFrame  # objects: (ours, paper) FID tuples or NFE ints; see _render
    row_kinds: list  # per row: ("fid", SeriesKey) or ("nfe", SeriesKey)
    with_paper: bool
    group: pd.DataFrame  # the runs behind the table

    @property
    def stem(self) -> str:
        return f"{self.kind}-{self.dataset}-{self.features}-{self.spacing}"


def _paper_runs() -> pd.DataFrame:
    """DDIM Table 1 in the columns of our runs (no KID was published)."""
    return papers.ddim_table1().assign(kid_mean=float("nan"), kid_std=float("nan"))


def _paper_frame(g: pd.DataFrame, dataset: str) -> Optional[pd.DataFrame]:
    """Published DDIM Table 1 when our numbers are comparable (cifar10, Inception FID), else None."""
    if not (papers.is_published_dataset(dataset) and bool(g["comparable_to_papers"].all())):
        return None
    return _paper_runs()


def _value(curves: dict, key: SeriesKey, steps: int, column: str = "fid") -> float:
    c = curves.get(key)
    return float("nan") if c is None or steps not in c.index else float(c.at[steps, column])


def ddim_table1_layout(g: pd.DataFrame, dataset: str, features: str, spacing: str) -> Layout:
    """Rows eta (DDIM Eq. 16) and sigma-hat, columns steps; published numbers beside ours where they exist."""
    curves = _curves(g)
    paper = _paper_frame(g, dataset)
    pcurves = _curves(paper) if paper is not None else {}
    etas = sorted(set(TABLE1_ETAS) | {k[1] for k in curves if k[0] == "ddim"})
    rows = [("ddim", e) for e in etas] + [(SIGMA_HAT, None)]
    rows = [r for r in rows if r in curves or r in pcurves]
    steps = sorted({s for r in rows for s in (list(curves[r].index) if r in curves else [])}
                   | {s for r in rows for s in (list(pcurves[r].index) if r in pcurves else [])})
    cells = pd.DataFrame(
        [[(_value(curves, r, s), _value(pcurves, r, s)) for s in steps] for r in rows],
        index=range(len(rows)), columns=steps, dtype=object)
    return Layout("ddim_table1", dataset, features, spacing, cells, [("fid", r) for r in rows],
                  paper is not None, g)


def pndm_layout(g: pd.DataFrame, dataset: str, features: str, spacing: str) -> Layout:
    """Rows methods (ddim at eta = 0, the PNDM family, DPM-Solver++, DDPM, then any other
    sampler measured), each followed by its NFE row; columns steps."""
    curves = _curves(g)
    paper = _paper_frame(g, dataset)
    pcurves = _curves(paper) if paper is not None else {}
    canonical = [series_key(s, 0.0 if s == "ddim" else None) for s in PNDM_ROWS]
    others = [k for k in curves if k not in canonical and k[0] not in ("ddim", SIGMA_HAT)]
    rows = [k for k in canonical if k in curves or k in pcurves] + others
    steps = sorted({s for r in rows if r in curves for s in curves[r].index}
                   | {s for r in rows if r in pcurves for s in pcurves[r].index})
    data, kinds = [], []
    for r in rows:
        data.append([(_value(curves, r, s), _value(pcurves, r, s)) for s in steps])
        kinds.append(("fid", r))
        data.append([_value(curves, r, s, "nfe") for s in steps])
        kinds.append(("nfe", r))
    cells = pd.DataFrame(data, index=range(len(data)), columns=steps, dtype=object)
    return Layout("pndm", dataset, features, spacing, cells, kinds, paper is not None, g)


def _row_label(kind: str, key: SeriesKey, layout: str, fl: _Flavor) -> str:
    sampler, eta = key
    if kind == "nfe":
        return fl.nfe_row
    if layout == "ddim_table1":
        return fl.sigma_hat if sampler == SIGMA_HAT else f"{fl.eta} = {eta:.1f}"
    name = fl.esc(sampler)
    return name if eta is None else f"{name} ({fl.eta} = {eta:g})"


def _render_cells(t: Layout, fl: _Flavor) -> pd.DataFrame:
    """Strings for each cell: "ours / paper" (FID rows with published numbers), "ours", or NFE."""
    out = []
    for (kind, key), (_, row) in zip(t.row_kinds, t.cells.iterrows()):
        if kind == "nfe":
            out.append([fl.integer(v) for v in row])
        elif t.with_paper and any(not pd.isna(p) for _, p in row):
            out.append([f"{fl.num(o)} / {fl.num(p)}" for o, p in row])
        else:
            out.append([fl.num(o) for o, _ in row])
    labels = [_row_label(k, key, t.kind, fl) for k, key in t.row_kinds]
    return pd.DataFrame(out, index=labels, columns=[str(s) for s in t.cells.columns])


def _table_text(t: Layout, preset: str, fl: _Flavor) -> tuple[str, str, list[str]]:
    """Title, caption and notes of a layout, in the flavour's spelling."""
    src = papers.ddim_table1_source()
    cite = papers.citation(src.citation)
    ddpm = papers.citation("ddpm")
    name = "DDIM Table 1 layout" if t.kind == "ddim_table1" else "PNDM layout"
    title = (f"{name}: {fl.code(t.dataset)}, {fl.code(t.features)} features, "
             f"{fl.code(t.spacing)} spacing")
    g = t.group
    cap = [f"FID (lower is better) with {fl.code(t.features)} features, {_n_text(g['n_images'])}, "
           f"{fl.esc(_seeds_text(g))}; ddbench preset {fl.code(preset)}; device: {fl.esc(_devices(g))}."]
    if t.kind == "ddim_table1":
        cap.append(f"Rows: DDIM with {fl.eta} ({fl.esc(cite.short)}, Eq. 16; sampler {fl.code('ddim')}) and "
                   f"{fl.sigma_hat}, DDPM's larger variance (sampler {fl.code(SIGMA_HAT)}); columns: steps S.")
    else:
        cap.append(f"Rows: methods ({fl.code('ddim')} at {fl.eta} = 0), each followed by its counted "
                   f"number of model evaluations (NFE); columns: steps S.")
    notes = []
    if t.with_paper:
        notes.append(
            f"Cells: ours / published, in rows with published numbers. Published: {fl.esc(cite.short)}, {src.where}, CIFAR-10, Inception FID, "
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
    elif papers.is_published_dataset(t.dataset):
        notes.append(f"Published CIFAR-10 numbers ({fl.esc(cite.short)}) are Inception FID; not shown "
                     f"beside {fl.code(t.features)} features, which are not comparable.")
    notes.append(f"{fl.dash} = not measured.")
    return title, " ".join(cap), notes


def render_markdown(t: Layout, preset: str) -> str:
    fl = _Flavor(tex=False)
    title, caption, notes = _table_text(t, preset, fl)
    head = f"### {title}\n\n{caption}\n\n"
    if t.cells.empty:
        return head + "_No grid point of this layout was measured._\n"
    table = _render_cells(t, fl).to_markdown(tablefmt="pipe", disable_numparse=True,
                                             colalign=["left"] + ["right"] * t.cells.shape[1])
    return head + table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def render_latex(t: Layout, preset: str) -> str:
    fl = _Flavor(tex=True)
    title, caption, notes = _table_text(t, preset, fl)
    header = f"% {t.stem}.tex: generated by ddbench (pipeline/aggregate.py); needs \\usepackage{{booktabs}}.\n"
    if t.cells.empty:
        return header + f"% {title}: no grid point of this layout was measured.\n"
    cells = _render_cells(t, fl)
    cells.columns = [f"S={c}" for c in cells.columns]
    return header + cells.style.to_latex(
        hrules=True, position="t", position_float="centering",
        column_format="l" + "r" * cells.shape[1],
        caption=f"{title}. {caption} " + " ".join(notes),
        label=f"tab:{t.stem}",
    )


# --- claims ---------------------------------------------------------------------------------

DDIM0, DDIM1, FPNDM, SPNDM, DPMPP = ("ddim", 0.0), ("ddim", 1.0), ("f-pndm", None), ("s-pndm", None), ("dpm-solver++", None)
SIGMA = (SIGMA_HAT, None)


@dataclass(frozen=True)
class Comparison:
    """The claim says `better` has lower FID than `worse`. The anchor (the side at the
    step count the claim names) stays at its measured point at equal NFE."""

    better: SeriesKey
    better_steps: int
    worse: SeriesKey
    worse_steps: int
    anchor: str  # "better" | "worse"


@dataclass(frozen=True)
class Value:
    series: SeriesKey
    steps: Optional[int]
    nfe: float
    fid: float
    kid_mean: float
    kid_std: float
    n_images: Optional[int]
    how: str  # "measured", "interpolated in log-NFE between a and b", or why it is missing

    def text(self) -> str:
        where = f"S={self.steps}" if self.how == "measured" else f"{self.nfe:g} NFE"
        return f"{series_label(*self.series)} {where}: {self.fid:.2f}"


def _steps(c: dict, key: SeriesKey) -> list[int]:
    return list(c[key].index) if key in c else []


def _ddim_rows(c: dict) -> list[SeriesKey]:
    return [k for k in c if k[0] == "ddim"]


def _rule_eta0_eta1(c):
    return [Comparison(DDIM0, s, DDIM1, s, "better") for s in _steps(c, DDIM0)
            if FEW_STEPS[0] <= s <= FEW_STEPS[1] and DDIM1 in c]


def _rule_sigma_worst(c):
    return [Comparison(k, s, SIGMA, s, "worse") for s in _steps(c, SIGMA)
            if FEW_STEPS[0] <= s <= FEW_STEPS[1] for k in _ddim_rows(c)]


def _rule_sigma_best(c):
    return [Comparison(SIGMA, 1000, k, 1000, "better") for k in _ddim_rows(c) if 1000 in _steps(c, SIGMA)]


def _rule_fpndm_vs(ddim_steps: int):
    def rule(c):
        return [Comparison(FPNDM, 50, DDIM0, ddim_steps, "better")] if 50 in _steps(c, FPNDM) and DDIM0 in c else []
    return rule


def _rule_equal_steps(method: SeriesKey):
    def rule(c):
        return [Comparison(method, s, DDIM0, s, "better") for s in _steps(c, method) if DDIM0 in c]
    return rule


def _rule_dpm(c):
    if DPMPP not in c:
        return []
    points = c[DPMPP]
    return [Comparison(DPMPP, s, k, s, "better") for s in points.index
            if DPM_NFE[0] <= points.at[s, "nfe"] <= DPM_NFE[1] for k in c if k != DPMPP]


# claim id (papers.yaml) -> (rule, what the grid needs for it)
CLAIM_RULES: dict[str, tuple[Callable[[dict], list], str]] = {
    "ddim-eta0-beats-eta1": (_rule_eta0_eta1, "ddim at eta 0 at 10-100 steps and ddim at eta 1"),
    "sigma-hat-worst-few-steps": (_rule_sigma_worst, "ddpm-large at 10-100 steps and ddim at some eta"),
    "sigma-hat-best-1000-steps": (_rule_sigma_best, "ddpm-large at 1000 steps and ddim at some eta"),
    "f-pndm-50-beats-ddim-1000": (_rule_fpndm_vs(1000), "f-pndm at 50 steps and ddim at eta 0 (1000 steps)"),
    "f-pndm-50-beats-ddim-250": (_rule_fpndm_vs(250), "f-pndm at 50 steps and ddim at eta 0 (250 steps)"),
    "f-pndm-beats-ddim-equal-steps": (_rule_equal_steps(FPNDM), "f-pndm and ddim at eta 0 at the same steps"),
    "s-pndm-beats-ddim-equal-steps": (_rule_equal_steps(SPNDM), "s-pndm and ddim at eta 0 at the same steps"),
    "dpm-solver-best-10-20-nfe": (_rule_dpm, "dpm-solver++ at 10-20 NFE and another sampler"),
}


def _measured(c: dict, key: SeriesKey, steps: int) -> Value:
    if key not in c or steps not in c[key].index:
        return Value(key, steps, float("nan"), float("nan"), float("nan"), float("nan"), None,
                     f"{series_label(*key)} not measured at S={steps}")
    r = c[key].loc[steps]
    return Value(key, steps, float(r["nfe"]), float(r["fid"]), float(r["kid_mean"]), float(r["kid_std"]),
                 int(r["n_images"]), "measured")


def value_at_nfe(c: dict, key: SeriesKey, nfe: float) -> Value:
    """FID/KID of a series at `nfe`: measured if a point has that NFE, else linear in log(NFE)
    between the nearest measured NFEs below and above; NaN (with the reason) outside them."""
    curve = c[key].sort_values("nfe")
    exact = curve[curve["nfe"] == nfe]
    if not exact.empty:
        return _measured(c, key, int(exact.index[0]))
    lo, hi = curve[curve["nfe"] < nfe], curve[curve["nfe"] > nfe]
    if lo.empty or hi.empty:
        return Value(key, None, nfe, float("nan"), float("nan"), float("nan"), None,
                     f"{nfe:g} NFE is outside {series_label(*key)}'s measured NFE "
                     f"{curve['nfe'].min():g}-{curve['nfe'].max():g}")
    a, b = lo.iloc[-1], hi.iloc[0]
    w = (math.log(nfe) - math.log(a["nfe"])) / (math.log(b["nfe"]) - math.log(a["nfe"]))

    def mix(col):
        return (1 - w) * float(a[col]) + w * float(b[col])

    return Value(key, None, nfe, mix("fid"), mix("kid_mean"), mix("kid_std"),
                 int(min(a["n_images"], b["n_images"])),
                 f"interpolated in log-NFE between {a['nfe']:g} and {b['nfe']:g} NFE")


def judge(better: Value, worse: Value, tie_sigmas: float = TIE_SIGMAS) -> str:
    """"win" if `better` has lower FID beyond noise, "loss" if higher beyond noise, "tie",
    or "not compared" when either FID is missing."""
    if math.isnan(better.fid) or math.isnan(worse.fid):
        return "not compared"
    if better.fid == worse.fid:
        return "tie"
    direction = 1 if better.fid < worse.fid else -1
    kid = [better.kid_mean, better.kid_std, worse.kid_mean, worse.kid_std]
    if not any(math.isnan(v) for v in kid):
        # KID difference in the FID's direction, in units of the combined KID std.
        gap = direction * (worse.kid_mean - better.kid_mean)
        if gap <= tie_sigmas * math.hypot(better.kid_std, worse.kid_std):
            return "tie"
    return "win" if direction == 1 else "loss"


def verdict(outcomes: Sequence[str]) -> str:
    compared = [o for o in outcomes if o != "not compared"]
    if not compared:
        return "not measured"
    if "loss" in compared:
        return "does not hold"
    return "holds" if all(o == "win" for o in compared) else "tie"


_MARK = {"win": "✓", "loss": "✗", "tie": "≈", "not compared": "–"}


@dataclass(frozen=True)
class ClaimResult:
    claim_id: str
    basis: str
    verdict: str
    outcomes: tuple
    pairs: tuple  # (better Value, worse Value, outcome)

    def count(self, outcome: str) -> int:
        return sum(o == outcome for o in self.outcomes)

    @property
    def n_images(self) -> str:
        n = sorted({v.n_images for b, w, _ in self.pairs for v in (b, w) if v.n_images is not None})
        return "" if not n else (str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}")

    def pair_texts(self) -> list[str]:
        out = []
        for b, w, o in self.pairs:
            extra = "; ".join(v.how for v in (b, w) if v.how != "measured")
            out.append(f"{_MARK[o]} {b.text()} vs {w.text()}" + (f" ({extra})" if extra else ""))
        return out

    def short(self, needs: str) -> str:
        """One cell of claims.md: all pairs when few, else counts and the weakest pair."""
        if self.verdict == "not measured" and not self.pairs:
            return f"needs {needs}"
        texts = self.pair_texts()
        if len(texts) <= 3:
            return "; ".join(texts)
        counts = ", ".join(f"{self.count(o)} {_MARK[o]}" for o in _MARK if self.count(o))
        compared = [(w.fid - b.fid, t) for (b, w, o), t in zip(self.pairs, texts) if o != "not compared"]
        weakest = min(compared)[1] if compared else texts[0]
        return f"{len(texts)} pairs: {counts}; weakest: {weakest}"


def evaluate_claim(claim_id: str, curves: dict) -> dict[str, ClaimResult]:
    """Both bases of one claim on one (dataset, features, spacing) group."""
    rule, _ = CLAIM_RULES[claim_id]
    comps = rule(curves)
    out = {}
    for basis in BASES:
        pairs = []
        for cmp in comps:
            b = _measured(curves, cmp.better, cmp.better_steps)
            w = _measured(curves, cmp.worse, cmp.worse_steps)
            if basis == "equal NFE":
                # Keep the anchor at its measured point; read the other side at the anchor's NFE.
                if cmp.anchor == "better":
                    w = value_at_nfe(curves, cmp.worse, b.nfe) if not math.isnan(b.nfe) else w
                else:
                    b = value_at_nfe(curves, cmp.better, w.nfe) if not math.isnan(w.nfe) else b
            pairs.append((b, w, judge(b, w)))
        if basis == "as claimed":
            # A paper's comparison needs both points measured; a pair we lack is not a result.
            pairs = [p for p in pairs if "not measured" not in p[0].how + p[1].how]
        outcomes = tuple(o for _, _, o in pairs)
        out[basis] = ClaimResult(claim_id, basis, verdict(outcomes), outcomes, tuple(pairs))
    return out


def _published_evidence(claim: papers.Claim) -> str:
    """The paper's own words, plus the verdict of our rule on DDIM Table 1 where it applies."""
    res = evaluate_claim(claim.id, _curves(_paper_runs()))["as claimed"]
    if res.verdict == "not measured":
        return claim.published
    src = papers.ddim_table1_source()
    return (f"{claim.published} Checked on {papers.citation(src.citation).short} {src.where} "
            f"(CIFAR-10, {src.spacing} spacing): {res.verdict}.")


def evaluate_claims(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, features, spacing, claim, basis); columns CLAIM_COLUMNS."""
    rows = []
    claims = papers.claims()
    unknown = [c.id for c in claims if c.id not in CLAIM_RULES]
    if unknown:
        raise papers.ReferenceDataError(f"claims {unknown} in papers.yaml have no rule in pipeline/aggregate.py")
    published = {c.id: _published_evidence(c) for c in claims}
    for (dataset, features, spacing), g in _groups(frame):
        curves = _curves(g)
        for claim in claims:
            cite = papers.citation(claim.citation)
            for basis, res in evaluate_claim(claim.id, curves).items():
                rows.append({
                    "dataset": dataset, "features": features, "spacing": spacing, "claim_id": claim.id,
                    "claim": claim.statement, "source": f"{cite.short}, {claim.where}", "basis": basis,
                    "verdict": res.verdict, "wins": res.count("win"), "ties": res.count("tie"),
                    "losses": res.count("loss"), "not_compared": res.count("not compared"),
                    "n_images": res.n_images, "pairs": " | ".join(res.pair_texts()),
                    "published": published[claim.id],
                    "_short": res.short(CLAIM_RULES[claim.id][1]),
                })
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS + ["_short"])


def _claims_markdown(claims: pd.DataFrame, frame: pd.DataFrame, preset: str) -> str:
    lines = [
        f"# Claims of the papers, checked on our numbers (preset `{preset}`)", "",
        "Generated by `python -m pipeline aggregate`; numbers in `runs.csv`, every pair in `claims.csv`.", "",
        "- **as claimed**: the comparison the paper makes (the step counts it names). "
        "**equal NFE**: the same comparison at equal model evaluations, which the papers did not make: "
        "the sampler and step count the claim names stay at their measured point; the other side's FID "
        "is read at that NFE, measured or linearly interpolated in log(NFE) between its two nearest "
        "measured NFEs (labelled *interpolated*), never extrapolated.",
        f"- Verdicts: **holds** (every pair as claimed), **does not hold** (a pair against it beyond noise), "
        f"**tie** (none against, some within noise: KID difference under {TIE_SIGMAS:g} combined KID std, "
        f"or FID and KID disagree), **not measured** (the grid lacks the points; never guessed). "
        f"Without KID (kid_std null) FID alone decides.",
        "- Pairs: ✓ as claimed, ✗ against, ≈ within noise, – not comparable (outside the measured NFE "
        "range). With more than three pairs the cell gives the counts and the weakest pair (smallest "
        "FID margin in the claim's favour).", "",
        "## The claims", "",
    ]
    ref = claims.drop_duplicates("claim_id")[["claim_id", "claim", "source", "published"]]
    ref.columns = ["id", "claim", "source", "published evidence"]
    lines += [ref.to_markdown(index=False, tablefmt="pipe", disable_numparse=True), ""]
    for (dataset, features, spacing), g in claims.groupby(["dataset", "features", "spacing"], sort=False):
        runs = frame[(frame["dataset"] == dataset) & (frame["features"] == features) & (frame["spacing"] == spacing)]
        lines += [f"## `{dataset}`, `{features}` features, `{spacing}` spacing", "",
                  f"{_n_text(runs['n_images'])}, {_seeds_text(runs)}; device: {_devices(runs)}.", ""]
        wide = g.pivot(index="claim_id", columns="basis", values=["verdict", "_short"]).loc[list(dict.fromkeys(g["claim_id"]))]
        table = pd.DataFrame({
            "claim": wide.index,
            "as claimed": wide[("verdict", "as claimed")].map(lambda v: f"**{v}**"),
            "equal NFE": wide[("verdict", "equal NFE")].map(lambda v: f"**{v}**"),
            "our numbers (as claimed)": wide[("_short", "as claimed")],
            "our numbers (equal NFE)": wide[("_short", "equal NFE")],
        })
        lines += [table.to_markdown(index=False, tablefmt="pipe", disable_numparse=True), ""]
    return "\n".join(lines)


def _claims_latex(claims: pd.DataFrame, frame: pd.DataFrame, preset: str) -> str:
    fl = _Flavor(tex=True)
    parts = ["% claims.tex: generated by ddbench (pipeline/aggregate.py); needs \\usepackage{booktabs}.\n"]
    for (dataset, features, spacing), g in claims.groupby(["dataset", "features", "spacing"], sort=False):
        runs = frame[(frame["dataset"] == dataset) & (frame["features"] == features) & (frame["spacing"] == spacing)]
        first = g[g["basis"] == BASES[0]].set_index("claim_id")
        second = g[g["basis"] == BASES[1]].set_index("claim_id")
        table = pd.DataFrame({
            "Claim": [fl.esc(s) for s in first["claim"]],
            "Source": [fl.esc(s) for s in first["source"]],
            "As claimed": list(first["verdict"]),
            "Equal NFE": list(second.loc[first.index, "verdict"]),
        })
        caption = (f"Claims checked on our numbers: {fl.code(dataset)}, {fl.code(features)} features, "
                   f"{fl.code(spacing)} spacing, {fl.esc(_n_text(runs['n_images']))}, preset {fl.code(preset)}. "
                   f"Equal NFE: the other side's FID interpolated linearly in log(NFE) between measured points; "
                   f"tie: KID difference within {TIE_SIGMAS:g} combined KID std.")
        parts.append(table.style.hide(axis="index").to_latex(
            hrules=True, position="t", position_float="centering", column_format="p{6.5cm}p{3cm}ll",
            caption=caption, label=f"tab:claims-{dataset}-{features}-{spacing}"))
    return "\n".join(parts)


# --- summary and driver ---------------------------------------------------------------------

def _groups(frame: pd.DataFrame):
    return frame.groupby(["dataset", "features", "spacing"], sort=False)


def _summary(frame: pd.DataFrame, claims: pd.DataFrame, written: list[Path], preset: str,
             n_sample: int, n_fid: int) -> str:
    def uniq(s):
        vals = sorted({str(v) for v in s if v is not None and not (isinstance(v, float) and math.isnan(v))})
        return ", ".join(vals) if vals else "–"

    prov = []
    for (dataset, features), g in frame.groupby(["dataset", "features"], sort=False):
        prov.append({
            "dataset": dataset, "features": features, "points": len(g),
            "N": uniq(g["n_images"]), "seeds": uniq(g["seeds"]), "spacings": uniq(g["spacing"]),
            "device": uniq(g["device_name"]), "torch": uniq(g["torch"]),
            "torch-fidelity": uniq(g["torch_fidelity"]), "reference N": uniq(g["ref_n"]),
            "comparable to papers": "yes" if g["comparable_to_papers"].all() else "no",
            "checkpoint sha256": uniq(str(v)[:12] for v in g["checkpoint_sha256"] if v),
        })
    counts = (claims.groupby(["dataset", "features", "spacing", "basis"], sort=False)["verdict"]
              .value_counts().unstack(fill_value=0).reindex(columns=list(VERDICTS), fill_value=0).reset_index())
    files = "\n".join(f"- [`{p.name}`]({p.name})" for p in sorted(written, key=lambda p: p.name))
    cites = "\n".join(f"- {c.text}" for c in papers.citations().values())
    return "\n".join([
        f"# ddbench results: preset `{preset}`", "",
        f"Generated by `python -m pipeline aggregate` from {n_sample} sample records and {n_fid} FID records; "
        "regenerated by the pipeline, do not edit.", "",
        "## Provenance", "",
        pd.DataFrame(prov).to_markdown(index=False, tablefmt="pipe", disable_numparse=True), "",
        "FID and KID: lower is better. N is the number of generated images per grid point; image k starts "
        "from the noise drawn with seed + k, so every sampler sees the same seeds. Wall-clock is pure "
        "sampling time on the device above (warm-up excluded).", "",
        "## Claims at a glance", "",
        counts.to_markdown(index=False, tablefmt="pipe", disable_numparse=True), "",
        "Details and method (equal-NFE interpolation, noise rule): [`claims.md`](claims.md).", "",
        "## Files", "", files, "",
        "## Published numbers cited", "", cites, "",
    ])


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def run(sample_records: list[Path], fid_records: list[Path], out_dir: Path, *, preset: str) -> pd.DataFrame:
    """Aggregate run records into `out_dir` (files in the module docstring); returns the tidy frame."""
    out_dir = Path(out_dir)
    frame = tidy(sample_records, fid_records, preset=preset)
    written = []
    path = out_dir / "runs.csv"
    _write_csv(path, frame)
    written.append(path)
    for (dataset, features, spacing), g in _groups(frame):
        for make in (ddim_table1_layout, pndm_layout):
            t = make(g, dataset, features, spacing)
            for suffix, render in ((".md", render_markdown), (".tex", render_latex)):
                path = out_dir / f"{t.stem}{suffix}"
                write_text(path, render(t, preset))
                written.append(path)
    claims = evaluate_claims(frame)
    for name, text in (("claims.md", _claims_markdown(claims, frame, preset)),
                       ("claims.tex", _claims_latex(claims, frame, preset))):
        write_text(out_dir / name, text)
        written.append(out_dir / name)
    _write_csv(out_dir / "claims.csv", claims[CLAIM_COLUMNS])
    written.append(out_dir / "claims.csv")
    write_text(out_dir / "summary.md",
               _summary(frame, claims, written, preset, len(sample_records), len(fid_records)))
    return frame
