"""Seaborn figures from runs.csv, and sample mosaics from samples.npz; PNG and PDF.

Per dataset and feature space (one facet per spacing when there are several):
- `fid_vs_steps-<D>-<F>`: FID against sampling steps S, one line per sampler setting.
- `fid_vs_nfe-<D>-<F>`: FID against counted model evaluations (NFE): the fair cost axis
  (F-PNDM spends S + 9, S-PNDM S + 1).
- `fid_vs_wall-<D>-<F>`: FID against wall-clock seconds per image on the run's device.
Both axes are logarithmic (FID only when every value is positive). Every point carries its
FID interval as an error bar (runs.csv `fid_lo`/`fid_hi`, delete-a-block jackknife); a point
without one has no bar, and stderr says how many.

Across data sets that share their data (`data_of`): `fid_vs_training-<D>-<F>`, FID against the
model's training steps, one line per grid point measured on at least two of the models, for
runs with the same reference statistics, feature space and N (the model-quality axis).

Per dataset with uint8 samples: `mosaic-<D>`, rows sampler settings, columns steps, each
cell the first k images, i.e. the same seeds seed..seed+k-1 in every cell, so that a
difference between cells is the sampler's, not the noise's. Float samples (the Gaussian
data set) have no picture and get no mosaic.

The curves read the tidy frame only (never the records); every file is written to a
temporary path and renamed (pipeline.util.files.atomic_path).
"""
from __future__ import annotations

import math
import sys
import zipfile
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipeline.report.labels import n_text, series_key, series_label, series_sort_key, sorted_series  # noqa: E402
from pipeline.report.records import model_quality_groups  # noqa: E402
from pipeline.util.files import atomic_path  # noqa: E402
from pipeline.core.images import tile  # noqa: E402

RUNS_COLUMNS = ("dataset", "features", "point", "sampler", "eta", "spacing", "steps", "nfe", "fid", "fid_lo", "fid_hi",
                "wall_s", "n_images", "seed", "device_name")

# figure name -> (x column, x label)
CURVES = {
    "fid_vs_steps": ("steps", "sampling steps S"),
    "fid_vs_nfe": ("nfe", "model evaluations (NFE)"),
    "fid_vs_wall": ("s_per_image", "wall-clock seconds per image"),
}
SAMPLE_KEY = "samples"  # the array of samples.npz that pipeline/stages/sample.py writes: [N, C, H, W]
MOSAIC_COLUMNS = 4  # images per row inside one mosaic cell


def load_runs(runs_csv: Path) -> pd.DataFrame:
    frame = pd.read_csv(runs_csv)
    missing = [c for c in RUNS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{runs_csv}: missing column(s) {missing}; expected the runs.csv of `pipeline aggregate`")
    return frame


def _say(message: str) -> None:
    """A note on stderr, as the other stages print theirs (the CLI's --log copies it)."""
    print(f"figures: {message}", file=sys.stderr)


def _save(fig, stem: Path) -> list[Path]:
    """PNG and PDF beside each other; metadata without dates so reruns give the same bytes."""
    out = []
    for ext, kw in ((".png", {"dpi": 150, "metadata": {"Software": None}}),
                    (".pdf", {"metadata": {"CreationDate": None, "Creator": None, "Producer": None}})):
        path = stem.parent / f"{stem.name}{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, bbox_inches="tight", **kw)
        out.append(path)
    return out


def _plain_log_ticks(axis, at=None) -> None:
    """Log axis labelled 1, 2, 3, 5, 10, ... (or at the measured values `at`), not 10^k."""
    if at is not None:
        axis.set_major_locator(ticker.FixedLocator(sorted(set(float(v) for v in at))))
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _level_text(d: pd.DataFrame) -> str:
    levels = sorted({float(v) for v in d["interval_level"].dropna()}) if "interval_level" in d else []
    return "/".join(f"{v:.0%}" for v in levels) if levels else "95%"


def _interval_bars(grid, d: pd.DataFrame, x: str, facet, palette: dict, stem: Path) -> None:
    """Vertical error bars [fid_lo, fid_hi] in each series' colour; points without an interval get
    none, and the count is said on stderr (the table cells say why)."""
    axes = grid.axes_dict if facet else {None: grid.ax}
    for col, ax in axes.items():
        sub = d if facet is None else d[d[facet] == col]
        for label, s in sub.groupby("sampler setting", sort=False):
            s = s.dropna(subset=["fid_lo", "fid_hi"])
            if not s.empty:
                ax.errorbar(s[x], s["fid"], yerr=[s["fid"] - s["fid_lo"], s["fid_hi"] - s["fid"]], fmt="none",
                            ecolor=palette[label], elinewidth=1.0, capsize=2.5, alpha=0.8, zorder=1)
    missing = int(d[["fid_lo", "fid_hi"]].isna().any(axis=1).sum())
    if missing:
        _say(f"{stem.name}: {missing} point(s) without an interval, drawn without error bars")


def curve_figure(g: pd.DataFrame, name: str, stem: Path) -> list[Path]:
    """One FID curve figure (CURVES[name]) of one dataset and feature space."""
    x, xlabel = CURVES[name]
    d = g.dropna(subset=["fid"]).copy()
    if d.empty:
        _say(f"{stem.name}: no finite FID, no figure")
        return []
    opts = d["options"] if "options" in d else [None] * len(d)  # non-default options (runs.csv before them: none)
    d["sampler setting"] = [series_label(s, e, o) for s, e, o in zip(d["sampler"], d["eta"], opts)]
    d["s_per_image"] = d["wall_s"] / d["n_images"]
    order = [series_label(*k) for k in sorted_series(series_key(s, e, o) for s, e, o in zip(d["sampler"], d["eta"], opts))]
    facet = "spacing" if d["spacing"].nunique() > 1 else None
    palette = dict(zip(order, sns.color_palette("tab10" if len(order) <= 10 else "husl", len(order))))
    grid = sns.relplot(
        data=d, x=x, y="fid", hue="sampler setting", hue_order=order, style="sampler setting",
        style_order=order, markers=True, dashes=False, kind="line", errorbar=None, col=facet,
        height=3.4, aspect=1.35, palette=palette,
    )
    log_y = bool((d["fid"] > 0).all())
    grid.set(xscale="log", yscale="log" if log_y else "linear")
    _interval_bars(grid, d, x, facet, palette, stem)
    for ax in grid.axes.flat:
        _plain_log_ticks(ax.xaxis, d[x] if name == "fid_vs_steps" else None)
        if log_y:
            _plain_log_ticks(ax.yaxis)
    grid.set_axis_labels(xlabel, "FID (log scale)" if log_y else "FID")
    dataset, features = d["dataset"].iloc[0], d["features"].iloc[0]
    title = f"{dataset}: FID ({features} features, {n_text(d['n_images'], per_point=False)}) vs {xlabel}"
    if facet:
        grid.set_titles(col_template="{col_name} spacing")
    else:
        title += f", {d['spacing'].iloc[0]} spacing"
    title += f"\nbars: {_level_text(d)} interval (jackknife over seed blocks)"
    if name == "fid_vs_wall":
        title += "\n" + "; ".join(sorted(set(d["device_name"].astype(str))))
    grid.figure.suptitle(title, y=1.0, va="bottom", fontsize=10)
    try:
        return _save(grid.figure, stem)
    finally:
        plt.close(grid.figure)


def model_quality_figure(g: pd.DataFrame, stem: Path) -> list[Path]:
    """FID against the model's training steps, one line per grid point (sampler setting and steps):
    how each sampler's quality moves as the same network trains longer (the model-quality axis;
    the practitioner's claim that stochastic sampling forgives model error and deterministic does not)."""
    d = g.copy()
    opts = d["options"] if "options" in d else [None] * len(d)
    d["setting"] = [series_label(s, e, o) for s, e, o in zip(d["sampler"], d["eta"], opts)]
    d["point setting"] = [f"{lab}, S = {int(s)}" for lab, s in zip(d["setting"], d["steps"])]
    keys = sorted(set(zip(d["sampler"], d["eta"], opts, d["steps"])),
                  key=lambda k: (int(k[3]), series_sort_key(series_key(*k[:3]))))
    order = list(dict.fromkeys(f"{series_label(*k[:3])}, S = {int(k[3])}" for k in keys))
    palette = dict(zip(order, sns.color_palette("tab10" if len(order) <= 10 else "husl", len(order))))
    d["training steps"] = d["model_train_steps"].astype(int)
    grid = sns.relplot(data=d, x="training steps", y="fid", hue="point setting", hue_order=order,
                       style="point setting", style_order=order, markers=True, dashes=False, kind="line",
                       errorbar=None, height=3.6, aspect=1.5, palette=palette)
    log_y = bool((d["fid"] > 0).all())
    grid.set(xscale="log", yscale="log" if log_y else "linear")
    ax = grid.axes.flat[0]
    for label, part in d.groupby("point setting", sort=False):
        if part[["fid_lo", "fid_hi"]].notna().all().all():
            ax.errorbar(part["training steps"], part["fid"],
                        yerr=[part["fid"] - part["fid_lo"], part["fid_hi"] - part["fid"]],
                        fmt="none", ecolor=palette[label], elinewidth=1, capsize=2)
    _plain_log_ticks(ax.xaxis, d["training steps"])
    if log_y:
        _plain_log_ticks(ax.yaxis)
    grid.set_axis_labels("training steps of the model (EMA weights)", "FID (log scale)" if log_y else "FID")
    features = d["features"].iloc[0]
    datasets = ", ".join(dict.fromkeys(d["dataset"].astype(str)))
    grid.figure.suptitle(f"FID ({features} features, {n_text(d['n_images'], per_point=False)}, same reference) "
                         f"vs training of the model\n{datasets}\nbars: {_level_text(d)} interval "
                         f"(jackknife over seed blocks)", y=1.0, va="bottom", fontsize=10)
    try:
        return _save(grid.figure, stem)
    finally:
        plt.close(grid.figure)


def read_first_images(npz_path: Path, k: int) -> np.ndarray:
    """The first k images of a samples.npz ([k, C, H, W], stored dtype), reading only those bytes."""
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"{npz_path}: samples not found; run the sample stage first")
    with zipfile.ZipFile(npz_path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        if SAMPLE_KEY not in names:
            raise ValueError(f"{npz_path}: no array {SAMPLE_KEY!r} among {names}; expected the samples.npz "
                             f"of the sample stage")
        with z.open(f"{SAMPLE_KEY}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # rare header versions: read it all
                shape, fortran, dtype = None, True, None
            if not fortran and dtype is not None and not dtype.hasobject:
                count = min(k, shape[0])
                item = int(np.prod(shape[1:], dtype=np.int64))
                buf = f.read(count * item * dtype.itemsize)
                return np.frombuffer(buf, dtype=dtype).reshape((count,) + tuple(shape[1:]))
    with np.load(npz_path, allow_pickle=False) as z:
        return np.ascontiguousarray(z[SAMPLE_KEY][:k])


EXACT_ROW = "exact ODE map"


def exact_mosaic_row(endpoints_npz: Path, steps_list, first_timestep, seed: int, k: int) -> dict:
    """{steps: uint8 images [k, C, H, W]}: the exact-map stage's endpoints (pipeline/stages/exact_map.py) from
    each step count's first timestep `first_timestep(steps)`, first k seeds, rounded like the samples;
    {} when they cannot line up with the samples (other seeds)."""
    with np.load(endpoints_npz, allow_pickle=False) as z:
        seeds = z["seeds"]
        if not len(seeds) or int(seeds[0]) != seed:
            return {}
        out = {}
        for steps in sorted(set(steps_list)):
            key = f"t{first_timestep(steps)}"
            if key in z.files:
                out[steps] = np.clip(np.round((z[key][:k] + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return out


def mosaic_figure(dataset: str, points: dict[str, Path], frame: pd.DataFrame, k: int, stem: Path,
                  exact: Optional[dict] = None) -> list[Path]:
    """Rows sampler settings, columns steps; each cell the first k samples of that grid point.
    `exact` {steps: uint8 images}: a first row with the exact probability-flow endpoints of the same
    seeds from each column's first timestep, what the deterministic samplers below approximate."""
    runs = frame[frame["dataset"] == dataset].drop_duplicates("point").set_index("point")
    unknown = sorted(set(points) - set(runs.index))
    if unknown:
        raise ValueError(f"mosaic {dataset}: point(s) {unknown} are not in runs.csv")
    images = {p: read_first_images(path, k) for p, path in points.items()}
    not_uint8 = sorted(p for p, a in images.items() if a.dtype != np.uint8)
    if not_uint8:
        _say(f"mosaic {dataset}: samples are {images[not_uint8[0]].dtype}, not uint8 images; no mosaic")
        return []
    bad = sorted(p for p, a in images.items() if a.ndim != 4 or a.shape[1] not in (1, 3))
    if bad:
        raise ValueError(f"mosaic {dataset}: samples of {bad} are not [N, C, H, W] with C 1 or 3")
    seeds = sorted(set(int(runs.at[p, "seed"]) for p in points))
    if len(seeds) != 1:
        raise ValueError(f"mosaic {dataset}: grid points start from different seeds {seeds}; "
                         f"a mosaic compares samplers on the same seeds")
    sub = runs.loc[list(points)]
    several = sub["spacing"].nunique() > 1
    label, sort_key = {}, {}
    for p, r in sub.iterrows():
        key = series_key(r["sampler"], r["eta"], r.get("options"))
        label[p] = series_label(*key) + (f" ({r['spacing']})" if several else "")
        sort_key[label[p]] = series_sort_key(key) + (r["spacing"],)
    rows = sorted(sort_key, key=sort_key.get)
    cols = sorted(set(int(s) for s in sub["steps"]))
    cell = {(label[p], int(sub.at[p, "steps"])): images[p] for p in points}
    if exact:
        rows = [EXACT_ROW] + rows
        cell.update({(EXACT_ROW, int(s)): np.asarray(a)[:k] for s, a in exact.items() if int(s) in cols})
    first = next(iter(images.values()))
    n_img = min(len(a) for a in images.values())
    h, w = first.shape[2], first.shape[3]
    per_row = min(n_img, MOSAIC_COLUMNS)
    aspect = (math.ceil(n_img / per_row) * h) / (per_row * w)
    cw = 0.45 * per_row
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(cw * len(cols) + 1.6, cw * aspect * len(rows) + 0.8),
                             squeeze=False)
    for i, r in enumerate(rows):
        for j, s in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if (r, s) in cell:
                ax.imshow(tile(cell[(r, s)][:n_img], MOSAIC_COLUMNS), cmap="gray" if first.shape[1] == 1 else None,
                          vmin=0, vmax=255, interpolation="nearest")
            if i == 0:
                ax.set_title(f"S = {s}", fontsize=9)
            if j == 0:
                ax.set_ylabel(r, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{dataset}: the first {n_img} samples (seeds {seeds[0]}..{seeds[0] + n_img - 1}) "
                 f"of each sampler and step count", fontsize=10)
    try:
        return _save(fig, stem)
    finally:
        plt.close(fig)


def run(runs_csv: Path, mosaic_samples: dict[tuple[str, str], Path], out_dir: Path, *,
        mosaic_seeds: int = 8, mosaic_exact: Optional[dict] = None) -> list[Path]:
    """All figures into out_dir; `mosaic_samples` maps (dataset, point) -> samples.npz. Returns the files written."""
    out_dir = Path(out_dir)
    frame = load_runs(Path(runs_csv))
    written: list[Path] = []
    with sns.axes_style("whitegrid"):
        for (dataset, features), g in frame.groupby(["dataset", "features"], sort=False):
            for name in CURVES:
                written += curve_figure(g, name, out_dir / f"{name}-{dataset}-{features}")
        for dataset, g in model_quality_groups(frame):
            written += model_quality_figure(g, out_dir / f"fid_vs_training-{dataset}-{g['features'].iloc[0]}")
    by_dataset: dict[str, dict[str, Path]] = {}
    for (dataset, point), path in mosaic_samples.items():
        by_dataset.setdefault(dataset, {})[point] = Path(path)
    for dataset, points in by_dataset.items():
        written += mosaic_figure(dataset, points, frame, mosaic_seeds, out_dir / f"mosaic-{dataset}",
                                 (mosaic_exact or {}).get(dataset))
    return written
