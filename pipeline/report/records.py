"""Run records -> the tidy runs frame (runs.csv), and its series curves.

Input: the `record.json` of each sample run and the `fid-<features>.json` of each FID
evaluation (fields in docs/design.md, "Records"), read strictly: a missing file, a
missing required field or a wrong type is a RecordError naming the file and the field.

Output of `tidy`: one row per (dataset, grid point, feature space), columns RUN_COLUMNS
(FID and KID unitless, `wall_s` seconds of pure sampling for `n_images` images, `eta`
NaN for samplers without it, `options` the sampler's other non-default options as text,
"clip_x0=true", '' for none: labels.options_text of the record's `non_default_options`), sorted by
data set (records' order), feature space, spacing, sampler (labels.SAMPLER_ORDER), eta,
options and steps.

Intervals (docs/claims.md): `fid_lo`, `fid_hi`, `kid_lo`, `kid_hi` are the fid record's
`fid_ci` / `kid_ci` (delete-a-block jackknife, level `interval_level`); the replicate
vectors travel as JSON strings in `fid_replicates` / `kid_replicates` (`parse_replicates`)
so that claims can pair two points. Where no interval exists the bounds are NaN and
`interval_note` says why ("N = 8 < 10", or that the record predates intervals).

Comparability with the published CIFAR-10 FIDs (`comparable_to_papers`, and the reasons
against it in `papers_note`) is decided from provenance by `papers.comparability`: the
fid record's Inception weights hash and reference content hash, N, and the sample
record's model; never from the data set's name.

`table_groups` splits the frame into the unit of a table and of a claims check (data
set, feature space, spacing); `series_curves` splits such a group into one curve per
sampler setting.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from pipeline.report import papers
from pipeline.config import SIGMA_HAT_OPTIONS
from pipeline.util.errors import RecordError
from pipeline.util.files import read_json
from pipeline.report.labels import SIGMA_HAT, SeriesKey, options_text, sampler_rank, series_key, series_label

RUN_COLUMNS = [
    "dataset", "sampler", "steps", "nfe", "spacing", "eta", "options", "n_images", "features",
    "fid", "fid_lo", "fid_hi", "kid_mean", "kid_std", "kid_lo", "kid_hi",
    "path_rms", "path_rms_lo", "path_rms_hi", "path_n",
    "wall_s", "images_per_s", "s_per_nfe", "device_name", "precision",
    "comparable_to_papers", "papers_note", "point", "nfe_expected", "seed", "seeds", "batch_size",
    "peak_mem_bytes", "device", "torch", "torch_fidelity", "feature_extractor", "ref_n",
    "ref_stats_id", "ref_content_sha256", "features_weights_sha256", "checkpoint_sha256",
    "model_kind", "model_pretrained", "model_train_steps", "model_shipped_from", "preset",
    "interval_level", "interval_blocks", "interval_method", "interval_note",
    "fid_replicates", "kid_replicates",
]
# What a series curve (series_curves) keeps of each point: values, intervals and the
# provenance that decides whether two points may be compared (N, seeds, reference, features).
CURVE_COLUMNS = ["steps", "nfe", "fid", "fid_lo", "fid_hi", "kid_mean", "kid_std", "kid_lo", "kid_hi",
                 "n_images", "seeds", "features", "ref_stats_id", "interval_level", "interval_blocks",
                 "interval_note", "fid_replicates", "kid_replicates"]
NO_INTERVAL_FIELDS = "the fid record has no interval fields (written before intervals; rerun the fid stage)"

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
# Optional fields, checked when present (older records lack them): field -> type, always nullable.
FID_INTERVAL_FIELDS = {
    "fid_ci": "pair", "fid_replicates": "numbers", "kid_ci": "pair", "kid_replicates": "numbers",
    "interval_blocks": "int", "interval_level": "number", "interval_method": "str", "interval_note": "str",
    "features_weights_sha256": "str", "weights_sha256": "str", "ref_content_sha256": "str",
}
SAMPLE_MODEL_FIELDS = {"model_pretrained": "str", "model_kind": "str", "model_train_steps": "int",
                       "model_shipped_from": "str"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_TYPE_OK = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
    "bool": lambda v: isinstance(v, bool),
    "pair": lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v) and v[0] <= v[1],
    "numbers": lambda v: isinstance(v, list) and len(v) >= 2 and all(_is_number(x) for x in v),
}
_TYPE_TEXT = {"pair": "[lo, hi] with lo <= hi", "numbers": "a list of at least 2 numbers"}


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


def check_optional(path: Path, rec: dict, fields: dict) -> None:
    """Type-check the optional fields a record has (absent and null are fine)."""
    for key, typ in fields.items():
        value = rec.get(key)
        if value is not None and not _TYPE_OK[typ](value):
            raise RecordError(f"{path}: field {key!r} = {value!r}; expected {_TYPE_TEXT.get(typ, typ)} or null")
    blocks, reps = rec.get("interval_blocks"), rec.get("fid_replicates")
    if blocks is not None and reps is not None and len(reps) != blocks:
        raise RecordError(f"{path}: fid_replicates has {len(reps)} values but interval_blocks = {blocks}")


def parse_replicates(value) -> Optional[np.ndarray]:
    """A replicates cell of runs.csv (JSON list as text, or a list) -> float64 [B]; None where there are none."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value):
        return None
    if isinstance(value, str):
        value = json.loads(value)
    return np.asarray(value, dtype=np.float64)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _interval(f: dict) -> dict:
    """The interval columns of one fid record; NaN bounds and a note where there is no interval."""
    if not any(k in f for k in ("fid_ci", "fid_replicates", "interval_note")):
        note = NO_INTERVAL_FIELDS
    elif f.get("fid_ci") is None:
        note = f.get("interval_note") or "the fid record's interval fields are null"
    elif f.get("fid_replicates") is None:
        note = f.get("interval_note") or "the fid record has an interval but no replicates to pair"
    else:
        note = f.get("interval_note")
    fid_ci, kid_ci = f.get("fid_ci") or [None, None], f.get("kid_ci") or [None, None]
    reps = {k: None if f.get(k) is None else json.dumps([float(x) for x in f[k]])
            for k in ("fid_replicates", "kid_replicates")}
    return {
        "fid_lo": _num(fid_ci[0]), "fid_hi": _num(fid_ci[1]), "kid_lo": _num(kid_ci[0]), "kid_hi": _num(kid_ci[1]),
        "interval_level": _num(f.get("interval_level")), "interval_blocks": f.get("interval_blocks"),
        "interval_method": f.get("interval_method"), "interval_note": note, **reps,
    }


def _row(s: dict, f: dict, preset: str) -> dict:
    fp_s, fp_f = s.get("fingerprint") or {}, f.get("fingerprint") or {}
    n = f["n_images"]
    weights = f.get("features_weights_sha256", f.get("weights_sha256"))
    not_comparable = papers.comparability(
        papers_features=f["comparable_to_papers"], weights_sha256=weights,
        ref_content_sha256=f.get("ref_content_sha256"), n_images=n,
        model_pretrained=s.get("model_pretrained"), model_kind=s.get("model_kind"))
    return {
        "dataset": s["dataset"], "sampler": s["sampler"], "steps": s["steps"], "nfe": s["nfe"],
        "spacing": s["spacing"], "eta": _num(s["eta"]),
        "options": options_text(s.get("non_default_options")),  # records before options: none
        "n_images": n, "features": f["features"],
        "fid": _num(f["fid"]), "kid_mean": _num(f["kid_mean"]), "kid_std": _num(f["kid_std"]),
        **_interval(f),
        # data sets with an exact score: the deterministic points' error against the exact
        # probability-flow endpoint of the same x_T (pipeline/stages/exact_map.py); NaN elsewhere
        "path_rms": _num(s.get("path_rms")), "path_rms_lo": _num(s.get("path_rms_lo")),
        "path_rms_hi": _num(s.get("path_rms_hi")), "path_n": s.get("path_n"),
        "wall_s": float(s["wall_s"]), "images_per_s": float(s["images_per_s"]),
        "s_per_nfe": float(s["s_per_nfe"]), "device_name": s["device_name"],
        # the eps model's arithmetic (records before the field: float32 unless their bf16 flag says not)
        "precision": s.get("precision") or ("bf16 autocast" if s.get("bf16") else "float32"),
        "comparable_to_papers": not not_comparable, "papers_note": "; ".join(not_comparable),
        "point": s["point"], "nfe_expected": s.get("nfe_expected"), "seed": s["seed"],
        "seeds": s.get("seeds") or f"{s['seed']}..{s['seed'] + n - 1}",
        "batch_size": s.get("batch_size"), "peak_mem_bytes": s.get("peak_mem_bytes"),
        "device": s.get("device", fp_s.get("device")), "torch": s["torch"],
        "torch_fidelity": fp_f.get("torch_fidelity"), "feature_extractor": f.get("feature_extractor"),
        "ref_n": f.get("ref_n"), "ref_stats_id": f.get("ref_stats_id"),
        "ref_content_sha256": f.get("ref_content_sha256"), "features_weights_sha256": weights,
        "checkpoint_sha256": s.get("checkpoint_sha256"), "model_kind": s.get("model_kind"),
        "model_pretrained": s.get("model_pretrained"), "model_train_steps": s.get("model_train_steps"),
        "model_shipped_from": s.get("model_shipped_from"), "preset": preset,
    }


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
        check_optional(path, rec, SAMPLE_MODEL_FIELDS)
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
        check_optional(path, rec, FID_INTERVAL_FIELDS)
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
    frame["_s"] = frame["sampler"].map(sampler_rank)
    frame = frame.sort_values(["_d", "features", "spacing", "_s", "sampler", "eta", "options", "steps"], na_position="first")
    return frame.drop(columns=["_d", "_s"]).reset_index(drop=True)


def published_runs() -> pd.DataFrame:
    """DDIM Table 1 (papers.ddim_table1) in the columns of our runs' curves: no KID, no
    interval and no seeds were published; the reference statistics are the paper's."""
    t = papers.ddim_table1()
    nan = float("nan")
    # its sigma-hat row is the official sampler, which clamps x_0 (config.SIGMA_HAT_OPTIONS)
    options = [options_text(SIGMA_HAT_OPTIONS) if s == SIGMA_HAT else "" for s in t["sampler"]]
    return t.assign(options=options, fid_lo=nan, fid_hi=nan, kid_mean=nan, kid_std=nan, kid_lo=nan, kid_hi=nan,
                    seeds=None, ref_stats_id="published: " + t["reference_set"], interval_level=nan,
                    interval_blocks=None, interval_note="no interval published", fid_replicates=None,
                    kid_replicates=None)


# --- groups and series ------------------------------------------------------------------------

def table_groups(frame: pd.DataFrame):
    """(dataset, features, spacing) -> its runs, in the frame's order: one table, one claims check."""
    return frame.groupby(["dataset", "features", "spacing"], sort=False)


def series_curves(g: pd.DataFrame) -> dict[SeriesKey, pd.DataFrame]:
    """Series -> its points sorted by steps (index steps; the other CURVE_COLUMNS as columns,
    NaN/None where the frame lacks one, e.g. intervals in a published table)."""
    out = {}
    opts = g["options"] if "options" in g else [None] * len(g)
    keys = [series_key(s, e, o) for s, e, o in zip(g["sampler"], g["eta"], opts)]
    for key in dict.fromkeys(keys):
        mask = [k == key for k in keys]
        sub = g.loc[mask].reindex(columns=CURVE_COLUMNS)
        if sub["steps"].duplicated().any():
            dup = sub["steps"][sub["steps"].duplicated()].tolist()
            raise RecordError(f"{series_label(*key)}: more than one record at steps {dup} "
                              f"for one dataset, feature space and spacing")
        out[key] = sub.set_index("steps").sort_index()
    return out


def model_quality_groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The runs that put several models of one data set side by side (entries with `data_of`, e.g. the
    cpu preset's training snapshots): rows of trained U-Nets grouped by reference statistics, feature
    space, N and seeds -- so every FID in a group is comparable, and pairs over the same seeds -- with at
    least two training steps, keeping the grid points measured on at least two of the models. Named by
    the first data set's name."""
    if "model_train_steps" not in frame:
        return []
    d = frame.dropna(subset=["model_train_steps", "fid"])
    groups = []
    for _, g in d.groupby(["features", "ref_stats_id", "n_images", "seeds"], sort=False):
        if g["model_train_steps"].nunique() < 2:
            continue
        g = g[g.groupby("point")["model_train_steps"].transform("nunique") >= 2]
        if not g.empty:
            groups.append((str(g["dataset"].iloc[0]), g))
    return groups
