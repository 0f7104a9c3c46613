"""Does a cheap feature space rank samplers and decide claims as the reference one does?

For a data set scored in two feature spaces on the same samples (the classifier beside Inception,
or beside a mixture's exact moments), `agreement(frame, claims)` compares them:

- **rank correlation** of the grid points' FIDs under the two spaces (Spearman's rho), over the
  points that share N and seeds, with a delete-a-block jackknife interval: block b's replicate of
  rho correlates the two spaces' FID replicates that leave out block b of the seeds (the same
  seeds in every point and both spaces, so the resampling unit is the one that makes FID random;
  records.parse_replicates, core/intervals.py). Kendall's tau is given beside it.
- **verdicts**: every claim with a verdict in both spaces (claims.csv, per spacing and basis;
  left out where neither space could measure it), and whether the verdict is the same.
- **reading**: what follows, from those numbers only.

`render_markdown` writes `agreement-<dataset>.md`; the aggregate stage writes one per data set
with two or more feature spaces.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.core import intervals
from pipeline.report.records import parse_replicates

# Reference spaces first: the pair (reference, cheap) reads "how far can the cheap one be trusted"
REFERENCE_ORDER = ("inception", "exact")


def space_pairs(spaces) -> list:
    """(reference, other) pairs of a data set's feature spaces, the reference first (REFERENCE_ORDER)."""
    rank = {s: (REFERENCE_ORDER.index(s) if s in REFERENCE_ORDER else len(REFERENCE_ORDER), s) for s in spaces}
    ordered = sorted(spaces, key=rank.get)
    return list(combinations(ordered, 2))


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


def rank_agreement(g: pd.DataFrame, a: str, b: str) -> Optional[dict]:
    """Spearman's rho (with its jackknife interval) and Kendall's tau of the points' FIDs in spaces
    a and b, over the largest set of points sharing N and seeds; None when fewer than 3 points."""
    wide = {}
    for feat in (a, b):
        rows = g[(g["features"] == feat) & g["fid"].notna()]
        wide[feat] = {(r.point, int(r.n_images), str(r.seeds)): r for r in rows.itertuples()}
    common = sorted(set(wide[a]) & set(wide[b]))
    if not common:
        return None
    by_n = pd.Series([(n, s) for _, n, s in common]).value_counts()
    n_images, seeds = by_n.index[0]
    keys = [k for k in common if (k[1], k[2]) == (n_images, seeds)]
    if len(keys) < 3:
        return None
    fa = np.array([wide[a][k].fid for k in keys], dtype=float)
    fb = np.array([wide[b][k].fid for k in keys], dtype=float)
    rho = float(stats.spearmanr(fa, fb).statistic)
    tau = float(stats.kendalltau(fa, fb).statistic)
    out = {"features": (a, b), "points": [k[0] for k in keys], "n_points": len(keys), "n_images": n_images,
           "seeds": seeds, "rho": rho, "tau": tau, "rho_lo": float("nan"), "rho_hi": float("nan"),
           "note": None, "fid_a": fa, "fid_b": fb}
    ra = [parse_replicates(wide[a][k].fid_replicates) for k in keys]
    rb = [parse_replicates(wide[b][k].fid_replicates) for k in keys]
    if any(r is None for r in ra + rb) or len({len(r) for r in ra + rb}) != 1:
        out["note"] = "no interval: a point has no FID replicates, or the blocks differ"
        return out
    blocks = len(ra[0])
    reps = [float(stats.spearmanr([r[i] for r in ra], [r[i] for r in rb]).statistic) for i in range(blocks)]
    if not all(math.isfinite(x) for x in reps + [rho]):
        out["note"] = "no interval: a replicate's ranks are all tied"
        return out
    lo, hi, _ = intervals.jackknife_interval(rho, reps)
    out.update(rho_lo=_clip(lo), rho_hi=_clip(hi), blocks=blocks)
    return out


def verdict_agreement(claims: pd.DataFrame, dataset: str, a: str, b: str) -> pd.DataFrame:
    """One row per (spacing, claim, basis) decided in both spaces: the two verdicts and whether they agree."""
    c = claims[claims["dataset"] == dataset]
    keys = ["spacing", "claim_id", "basis"]
    va = c[c["features"] == a].set_index(keys)["verdict"]
    vb = c[c["features"] == b].set_index(keys)["verdict"]
    both = pd.concat([va.rename(a), vb.rename(b)], axis=1, join="inner").reset_index()
    undecided = {"not measured", "not comparable"}  # no verdict in either space: nothing to agree on
    both = both[~(both[a].isin(undecided) & both[b].isin(undecided))].reset_index(drop=True)
    both["same"] = both[a] == both[b]
    return both


def agreement(frame: pd.DataFrame, claims: pd.DataFrame) -> dict:
    """{dataset: [(rank agreement or None, verdicts frame), ...] per space pair} for data sets with two or more spaces."""
    out = {}
    for dataset, g in frame.groupby("dataset", sort=False):
        spaces = list(dict.fromkeys(g["features"]))
        if len(spaces) < 2:
            continue
        out[dataset] = [(a, b, rank_agreement(g, a, b), verdict_agreement(claims, dataset, a, b))
                        for a, b in space_pairs(spaces)]
    return out


def reading(a: str, b: str, ranks: Optional[dict], verdicts: pd.DataFrame) -> str:
    """What the numbers say, in a sentence or two (no judgement beyond them)."""
    parts = []
    if ranks is None:
        parts.append(f"Fewer than three points share N and seeds in `{a}` and `{b}`: no rank correlation.")
    elif not math.isfinite(ranks["rho_lo"]):
        parts.append(f"Spearman's rho is {ranks['rho']:.2f} over {ranks['n_points']} points ({ranks['note']}).")
    elif ranks["rho_lo"] >= 0.9:
        parts.append(f"`{b}` ranks these {ranks['n_points']} points as `{a}` does (rho {ranks['rho']:.2f}, "
                     f"interval [{ranks['rho_lo']:.2f}, {ranks['rho_hi']:.2f}], above 0.9).")
    elif ranks["rho_lo"] > 0:
        parts.append(f"`{b}` and `{a}` rank these {ranks['n_points']} points alike but not interchangeably "
                     f"(rho {ranks['rho']:.2f}, interval [{ranks['rho_lo']:.2f}, {ranks['rho_hi']:.2f}]).")
    else:
        parts.append(f"The data cannot tell whether `{b}` ranks these points as `{a}` does (rho {ranks['rho']:.2f}, "
                     f"interval [{ranks['rho_lo']:.2f}, {ranks['rho_hi']:.2f}] reaches 0).")
    if verdicts.empty:
        parts.append("No claim was decided in both spaces.")
    else:
        same = int(verdicts["same"].sum())
        parts.append(f"{same} of {len(verdicts)} claim verdicts are the same in both spaces"
                     + ("." if same == len(verdicts) else
                        f"; where they differ, a verdict from `{b}` alone is not `{a}`'s."))
    return " ".join(parts)


def render_markdown(dataset: str, pairs: list, preset: str) -> str:
    lines = [f"# Feature-space agreement: `{dataset}`", "",
             f"ddbench preset `{preset}`. The same samples scored in each feature space; regenerated by "
             "`python -m pipeline aggregate`, do not edit. Rank correlation: Spearman's rho of the points' FIDs "
             "with a delete-a-block jackknife interval over the seed blocks (95%), Kendall's tau beside it.", ""]
    for a, b, ranks, verdicts in pairs:
        lines += [f"## `{b}` against `{a}`", ""]
        if ranks is not None:
            interval = (f"[{ranks['rho_lo']:.3f}, {ranks['rho_hi']:.3f}]" if math.isfinite(ranks["rho_lo"])
                        else f"({ranks['note']})")
            lines += [f"| points | N | seeds | Spearman rho | interval | Kendall tau |", "|--:|--:|:--|--:|:--|--:|",
                      f"| {ranks['n_points']} | {ranks['n_images']:,} | {ranks['seeds']} | {ranks['rho']:.3f} | "
                      f"{interval} | {ranks['tau']:.3f} |", ""]
            order = np.argsort(ranks["fid_a"], kind="stable")
            lines += [f"| point | FID `{a}` | rank | FID `{b}` | rank |", "|:--|--:|--:|--:|--:|"]
            rank_b = stats.rankdata(ranks["fid_b"])
            rank_a = stats.rankdata(ranks["fid_a"])
            for i in order:
                lines.append(f"| `{ranks['points'][i]}` | {ranks['fid_a'][i]:.4g} | {rank_a[i]:g} | "
                             f"{ranks['fid_b'][i]:.4g} | {rank_b[i]:g} |")
            lines.append("")
        if not verdicts.empty:
            v = verdicts.rename(columns={"claim_id": "claim", a: f"verdict `{a}`", b: f"verdict `{b}`"})
            v["same"] = v["same"].map({True: "yes", False: "**no**"})
            lines += [v.to_markdown(index=False, tablefmt="pipe"), ""]
        lines += [f"**What follows.** {reading(a, b, ranks, verdicts)}", ""]
    return "\n".join(lines)
