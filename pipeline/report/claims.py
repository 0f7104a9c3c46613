"""The papers' speed-quality claims, checked on our numbers with paired intervals; claims.{md,tex}.

Each claim of papers.yaml has a rule here (CLAIM_RULES) that turns the series curves of
one (dataset, features, spacing) group (records.series_curves) into pairs "A has lower
FID than B". Every pair is decided by the interval of the paired FID difference
d = FID(A) - FID(B) (pipeline.core.intervals.paired_difference on the delete-a-block jackknife
replicates, which pair because every sampler sees the same seeds):

- pair outcomes (OUTCOMES): *as claimed* (the whole interval below 0), *against* (above 0),
  *inconclusive* (it contains 0), *no interval* (a side has none, e.g. "N = 8 < 10"),
  *not comparable* (not like for like: different N, reference statistics, feature space
  or seeds; the reason is given), *not measured* (the grid lacks the point, or the NFE
  lies outside the other side's measured range: never guessed, never extrapolated);
- one claim on one basis has k pairs with an interval; each interval is taken at the
  Bonferroni level 1 - (1 - FAMILY_LEVEL) / k, so that the chance of any false call in
  the claim stays below 1 - FAMILY_LEVEL = 5% (docs/claims.md);
- verdicts (VERDICTS): *holds* (every compared pair as claimed), *does not hold* (a pair
  against), *inconclusive* (neither; the detail says at which N and, where the difference
  is not zero, roughly which N would settle it: the standard error scales like 1/sqrt(N),
  so N_needed ~ N (half-width / |d|)^2), *not comparable*, *not measured*.

Two bases (BASES): "as claimed", the comparison the paper makes (the step counts it names;
equal NFE for the DPM-Solver claim, which is stated in NFE); "equal NFE", which the papers
did not check: the side the claim names (the *anchor*) stays at its measured point and the
other side is read at the anchor's NFE, measured or linearly interpolated in log(NFE)
between its two nearest measured points. An interpolated value's interval is treated
conservatively: the paired intervals of the anchor against both neighbours are computed,
the difference is interpolated and the wider half-width (and larger standard error) of the
two is kept. The two neighbours must be like for like with each other and with the anchor.

KID is unbiased in N and may be compared across N: a pair that is not comparable only
because of N gets the KID difference as evidence beside it (not as its verdict).

`evaluate_claims(frame)` gives one row per (dataset, features, spacing, claim, basis),
columns CLAIM_COLUMNS (claims.csv); `render_markdown` / `render_latex` give claims.md /
claims.tex.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipeline.core import intervals

from pipeline.report import papers
from pipeline.report.labels import Flavor, SeriesKey, devices_text, models_text, n_text, seeds_text, series_label, sigma_hat_key
from pipeline.report.records import parse_replicates, published_runs, series_curves, table_groups

# Family-wise level of one claim on one basis: each of its k pair intervals is taken at
# 1 - (1 - FAMILY_LEVEL) / k (Bonferroni), so P(any false call) <= 1 - FAMILY_LEVEL.
FAMILY_LEVEL = 0.95

# Step / NFE windows of the claims ("10-100 steps" in DDIM, "~10-20 NFE" for DPM-Solver).
FEW_STEPS = (10, 100)
DPM_NFE = (10, 20)

VERDICTS = ("holds", "does not hold", "inconclusive", "not comparable", "not measured")
OUTCOMES = ("as claimed", "against", "inconclusive", "no interval", "not comparable", "not measured")
BASES = ("as claimed", "equal NFE")
_DECIDED = ("as claimed", "against", "inconclusive", "no interval")  # pairs that were compared

CLAIM_COLUMNS = [
    "dataset", "features", "spacing", "claim_id", "claim", "source", "basis", "verdict", "verdict_detail",
    "as_claimed", "against", "inconclusive", "no_interval", "not_comparable", "not_measured",
    "pair_level", "n_images", "pairs", "published", "reading",
]


# --- rules: a claim -> pairs of points ------------------------------------------------------

DDIM0, DDIM1, FPNDM, SPNDM, DPMPP = ("ddim", 0.0), ("ddim", 1.0), ("f-pndm", None), ("s-pndm", None), ("dpm-solver++", None)
SIGMA = sigma_hat_key()  # DDIM Table 1's sigma-hat: ddpm-large with the official clip_x0 = true


@dataclass(frozen=True)
class Comparison:
    """The claim says `better` has lower FID than `worse`. The anchor (the side at the
    step count the claim names) stays at its measured point; with `at = "nfe"` the claim
    itself is stated at equal NFE, so the other side is read at the anchor's NFE on both
    bases (its `*_steps` is None)."""

    better: SeriesKey
    better_steps: Optional[int]
    worse: SeriesKey
    worse_steps: Optional[int]
    anchor: str  # "better" | "worse"
    at: str = "steps"  # "steps" | "nfe": what the claim holds equal


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


def _rule_fpndm_vs(fpndm_steps: int, ddim_steps: int):
    def rule(c):
        if fpndm_steps not in _steps(c, FPNDM) or DDIM0 not in c:
            return []
        return [Comparison(FPNDM, fpndm_steps, DDIM0, ddim_steps, "better")]
    return rule


def _rule_equal_steps(method: SeriesKey):
    def rule(c):
        return [Comparison(method, s, DDIM0, s, "better") for s in _steps(c, method) if DDIM0 in c]
    return rule


def _rule_dpm(c):
    """Stated at equal NFE: each DPM-Solver++ point at 10-20 NFE against every other series at that NFE."""
    if DPMPP not in c:
        return []
    points = c[DPMPP]
    return [Comparison(DPMPP, s, k, None, "better", at="nfe") for s in points.index
            if DPM_NFE[0] <= points.at[s, "nfe"] <= DPM_NFE[1] for k in c if k != DPMPP]


# claim id (papers.yaml) -> (rule, what the grid needs for it)
CLAIM_RULES: dict[str, tuple[Callable[[dict], list], str]] = {
    "ddim-eta0-beats-eta1": (_rule_eta0_eta1, "ddim at eta 0 at 10-100 steps and ddim at eta 1"),
    "sigma-hat-worst-few-steps": (_rule_sigma_worst, "ddpm-large at 10-100 steps and ddim at some eta"),
    "sigma-hat-best-1000-steps": (_rule_sigma_best, "ddpm-large at 1000 steps and ddim at some eta"),
    "f-pndm-50-beats-ddim-1000": (_rule_fpndm_vs(50, 1000), "f-pndm at 50 steps and ddim at eta 0 (1000 steps)"),
    "pndm-beats-ddim-250-steps": (_rule_fpndm_vs(250, 250), "f-pndm and ddim at eta 0, both at 250 steps"),
    "f-pndm-beats-ddim-equal-steps": (_rule_equal_steps(FPNDM), "f-pndm and ddim at eta 0 at the same steps"),
    "s-pndm-beats-ddim-equal-steps": (_rule_equal_steps(SPNDM), "s-pndm and ddim at eta 0 at the same steps"),
    "dpm-solver-best-10-20-nfe": (_rule_dpm, "dpm-solver++ at 10-20 NFE and another sampler at that NFE"),
}


# --- values: a series read at a step count or at an NFE -------------------------------------

def _opt(v):
    """A provenance cell -> its value, None for NaN/None."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


@dataclass(frozen=True)
class Value:
    """One side of a pair: a measured point, a value interpolated between two measured
    points (`neighbours` = (a, b, w), value = (1 - w) a + w b), or why there is none
    (`status` "not measured" / "not comparable", FID NaN)."""

    series: SeriesKey
    steps: Optional[int]
    nfe: float
    fid: float
    kid_mean: float
    kid_std: float
    n_images: Optional[int]
    how: str  # "measured", "interpolated in log-NFE between a and b NFE", or why it is missing
    status: str = "measured"  # "measured" | "interpolated" | "not measured" | "not comparable"
    seeds: Optional[str] = None
    features: Optional[str] = None
    ref_stats_id: Optional[str] = None
    replicates: Optional[tuple] = None  # FID jackknife replicates [B] of a measured point
    interval_note: Optional[str] = None  # why a measured point has no interval
    neighbours: tuple = ()

    def text(self) -> str:
        where = f"S={self.steps}" if self.status == "measured" else f"{self.nfe:g} NFE"
        fid = "–" if math.isnan(self.fid) else f"{self.fid:.2f}"
        return f"{series_label(*self.series)} {where}: {fid}"

    @property
    def points(self) -> tuple:
        """The measured points behind this value (itself, or its two neighbours)."""
        return tuple(self.neighbours[:2]) if self.neighbours else (self,)


def _missing(key: SeriesKey, steps, nfe: float, why: str, status: str = "not measured") -> Value:
    nan = float("nan")
    return Value(key, steps, nfe, nan, nan, nan, None, why, status)


def _measured(c: dict, key: SeriesKey, steps: int) -> Value:
    if key not in c or steps not in c[key].index:
        return _missing(key, steps, float("nan"), f"{series_label(*key)} not measured at S={steps}")
    r = c[key].loc[steps]
    reps = parse_replicates(r["fid_replicates"])
    return Value(key, int(steps), float(r["nfe"]), float(r["fid"]), float(r["kid_mean"]), float(r["kid_std"]),
                 int(r["n_images"]), "measured", "measured", _opt(r["seeds"]), _opt(r["features"]),
                 _opt(r["ref_stats_id"]), None if reps is None else tuple(float(x) for x in reps),
                 _opt(r["interval_note"]))


def like_for_like(a: Value, b: Value) -> str:
    """Why two values' FIDs may not be compared ("" when they may): same feature space, N,
    reference statistics and seeds (the seeds define the jackknife blocks and the pairing)."""
    if a.features != b.features:
        return f"features {a.features} vs {b.features}"
    if a.n_images != b.n_images:
        return f"N {a.n_images} vs {b.n_images}"
    if a.ref_stats_id is None or b.ref_stats_id is None:
        return "reference statistics not recorded"
    if a.ref_stats_id != b.ref_stats_id:
        return f"reference statistics {a.ref_stats_id} vs {b.ref_stats_id}"
    if a.seeds != b.seeds:
        return f"seeds {a.seeds} vs {b.seeds}; the pairing needs the same seeds"
    return ""


def value_at_nfe(c: dict, key: SeriesKey, nfe: float) -> Value:
    """FID/KID of a series at `nfe`: measured if a point has that NFE, else linear in log(NFE)
    between the nearest measured NFEs below and above (which must be like for like: equal N,
    reference and seeds); NaN with the reason outside them or when they differ."""
    if key not in c:
        return _missing(key, None, nfe, f"{series_label(*key)} not measured")
    curve = c[key].sort_values("nfe")
    exact = curve[curve["nfe"] == nfe]
    if not exact.empty:
        return _measured(c, key, int(exact.index[0]))
    lo, hi = curve[curve["nfe"] < nfe], curve[curve["nfe"] > nfe]
    if lo.empty or hi.empty:
        return _missing(key, None, nfe, f"{nfe:g} NFE is outside {series_label(*key)}'s measured NFE "
                                         f"{curve['nfe'].min():g}-{curve['nfe'].max():g}")
    a, b = _measured(c, key, int(lo.index[-1])), _measured(c, key, int(hi.index[0]))
    between = f"between {a.nfe:g} and {b.nfe:g} NFE"
    why = like_for_like(a, b)
    if why:
        return _missing(key, None, nfe, f"no interpolation {between}: {why}", "not comparable")
    w = (math.log(nfe) - math.log(a.nfe)) / (math.log(b.nfe) - math.log(a.nfe))

    def mix(x, y):
        return (1 - w) * x + w * y

    # KID std: the larger of the two (conservative, as for the FID interval).
    return Value(key, None, nfe, mix(a.fid, b.fid), mix(a.kid_mean, b.kid_mean), max(a.kid_std, b.kid_std),
                 a.n_images, f"interpolated in log-NFE {between}", "interpolated", a.seeds, a.features,
                 a.ref_stats_id, None, a.interval_note or b.interval_note, (a, b, w))


# --- pairs and verdicts ---------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """`better` vs `worse` with the interval of d = FID(better) - FID(worse) (the claim: d < 0)."""

    better: Value
    worse: Value
    outcome: str  # one of OUTCOMES
    reason: str = ""  # why not compared / no interval
    diff: float = float("nan")
    lo: float = float("nan")
    hi: float = float("nan")
    se: float = float("nan")
    level: float = float("nan")
    kid: str = ""  # KID evidence where FID is not comparable across N

    @property
    def n_needed(self) -> Optional[float]:
        """Roughly the N at which this inconclusive pair's interval would exclude 0 (se ~ 1/sqrt(N))."""
        if self.outcome != "inconclusive" or self.diff == 0 or self.better.n_images is None:
            return None
        return self.better.n_images * ((self.hi - self.lo) / 2 / abs(self.diff)) ** 2


def _no_interval(v: Value) -> str:
    """Why a value has no usable replicates ("" when all its points have them)."""
    for p in v.points:
        if p.replicates is None:
            return p.interval_note or "no replicates in the record"
    return ""


def prejudge(better: Value, worse: Value) -> Optional[Pair]:
    """The pair's outcome when it needs no interval (not measured, not comparable, no
    interval), else None: the pair is compared."""
    for v in (better, worse):
        if v.status in ("not measured", "not comparable"):
            return Pair(better, worse, v.status, v.how)
    why = like_for_like(better, worse)
    if why:
        return Pair(better, worse, "not comparable", why)
    missing = _no_interval(better) or _no_interval(worse)
    if missing:
        return Pair(better, worse, "no interval", missing)
    return None


def _paired(x: Value, y: Value, level: float) -> tuple:
    """(d, lo, hi, se) of FID(x) - FID(y) for two measured points."""
    return intervals.paired_difference(x.fid, np.asarray(x.replicates), y.fid, np.asarray(y.replicates), level=level)


def decide(better: Value, worse: Value, level: float) -> Pair:
    """The interval of d = FID(better) - FID(worse) at `level`, and the pair's outcome.

    One side may be interpolated (weight w between neighbours a and b): d is interpolated
    the same way from the paired differences against a and against b, and the wider of
    their two half-widths (and the larger standard error) is kept: sd((1-w) X + w Y) <=
    max(sd X, sd Y), so the interval is conservative for the interpolated value.
    """
    early = prejudge(better, worse)
    if early is not None:
        return early
    try:
        if worse.neighbours or better.neighbours:
            a, b, w = (worse if worse.neighbours else better).neighbours
            parts = [_paired(better, n, level) if worse.neighbours else _paired(n, worse, level) for n in (a, b)]
            d = (1 - w) * parts[0][0] + w * parts[1][0]
            half = max((p[2] - p[1]) / 2 for p in parts)
            lo, hi, se = d - half, d + half, max(p[3] for p in parts)
        else:
            d, lo, hi, se = _paired(better, worse, level)
    except ValueError as e:  # replicates of different B: not pairable
        return Pair(better, worse, "not comparable", f"replicates not pairable: {e}")
    outcome = "as claimed" if hi < 0 else "against" if lo > 0 else "inconclusive"
    return Pair(better, worse, outcome, "", float(d), float(lo), float(hi), float(se), level)


def kid_evidence(better: Value, worse: Value, level: float) -> str:
    """KID difference (better - worse) with an unpaired interval at `level`: KID is unbiased,
    so it may be compared across N. Unpaired (se = sqrt(se_a^2 + se_b^2)) because blocks of
    different N do not pair; shared seeds correlate the two, so this is conservative."""
    k = [better.kid_mean, better.kid_std, worse.kid_mean, worse.kid_std]
    if any(math.isnan(x) for x in k):
        return ""
    d = better.kid_mean - worse.kid_mean
    half = norm.ppf(1 - (1 - level) / 2) * math.hypot(better.kid_std, worse.kid_std)
    side = "as claimed" if d + half < 0 else "against" if d - half > 0 else "inconclusive"
    return (f"KID (unbiased, so comparable across N): Δ {d:+.4g} [{d - half:+.4g}, {d + half:+.4g}], {side}")


def pair_level(k: int) -> float:
    """Bonferroni: the level of each of k pair intervals of one claim."""
    return 1 - (1 - FAMILY_LEVEL) / max(k, 1)


def decide_all(values: Sequence[tuple]) -> tuple[list[Pair], float]:
    """Decide every (better, worse) of one claim on one basis at the Bonferroni level of its
    k compared pairs; returns the pairs and that level."""
    early = [prejudge(b, w) for b, w in values]
    level = pair_level(sum(e is None for e in early))
    pairs = []
    for (b, w), e in zip(values, early):
        if e is None:
            pairs.append(decide(b, w, level))
        elif (e.outcome == "not comparable" and e.reason.startswith("N ") and b.features == w.features
              and b.ref_stats_id is not None and b.ref_stats_id == w.ref_stats_id):
            pairs.append(Pair(b, w, e.outcome, e.reason, kid=kid_evidence(b, w, level)))
        else:
            pairs.append(e)
    return pairs, level


def _round_up(x: float) -> int:
    """Up to two significant digits: 12,345 -> 13,000."""
    mag = 10 ** max(int(math.floor(math.log10(x))) - 1, 0)
    return int(math.ceil(x / mag) * mag)


def _n_range(pairs) -> str:
    ns = sorted({p.better.n_images for p in pairs if p.better.n_images is not None})
    return "–" if not ns else f"{ns[0]:,}" if len(ns) == 1 else f"{ns[0]:,}–{ns[-1]:,}"


def verdict_of(pairs: Sequence[Pair], needs: str = "") -> tuple[str, str]:
    """(verdict, detail) of one claim on one basis from its pairs (VERDICTS; module docstring)."""
    by = {o: [p for p in pairs if p.outcome == o] for o in OUTCOMES}
    compared = [p for p in pairs if p.outcome in _DECIDED]
    uncompared = []
    for o in ("not comparable", "not measured"):
        if by[o]:
            reasons = "; ".join(dict.fromkeys(p.reason for p in by[o]))
            uncompared.append(f"{len(by[o])} pair{'s' * (len(by[o]) > 1)} {o}: {reasons}")
    tail = f" ({'; '.join(uncompared)})" if uncompared else ""
    if by["against"]:
        return "does not hold", "does not hold" + tail
    if compared and len(by["as claimed"]) == len(compared):
        return "holds", "holds" + tail
    if compared:
        parts = []
        if by["inconclusive"]:
            text = f"inconclusive at N = {_n_range(by['inconclusive'])}"
            need = [p.n_needed for p in by["inconclusive"]]
            if all(n is not None for n in need):
                text += f" (about N = {_round_up(max(need)):,} would settle it)"
            parts.append(text)
        if by["no interval"]:
            notes = "; ".join(dict.fromkeys(p.reason for p in by["no interval"]))
            parts.append(("inconclusive: " if not parts else "") + f"no interval: {notes}")
        return "inconclusive", "; ".join(parts) + tail
    if by["not comparable"]:
        reasons = "; ".join(dict.fromkeys(p.reason for p in by["not comparable"]))
        return "not comparable", f"not comparable ({reasons})"
    if by["not measured"]:
        return "not measured", "not measured (" + "; ".join(dict.fromkeys(p.reason for p in by["not measured"])) + ")"
    return "not measured", f"not measured (needs {needs})" if needs else "not measured"


_MARK = {"as claimed": "✓", "against": "✗", "inconclusive": "≈", "no interval": "?", "not comparable": "≠",
         "not measured": "–"}


def pair_text(p: Pair) -> str:
    extra = [v.how for v in (p.better, p.worse) if v.status == "interpolated"]
    head = f"{_MARK[p.outcome]} {p.better.text()} vs {p.worse.text()}"
    if p.outcome in ("as claimed", "against", "inconclusive"):
        head += f", Δ {p.diff:+.2f} [{p.lo:+.2f}, {p.hi:+.2f}]"
    elif p.outcome == "no interval":
        head += f": no interval: {p.reason}"
    else:
        head += f": {p.outcome} ({p.reason})"
        extra = []
    if p.kid:
        extra.append(p.kid)
    return head + (f" ({'; '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class ClaimResult:
    claim_id: str
    basis: str
    verdict: str
    detail: str
    pairs: tuple  # Pair
    level: float  # of each pair interval (Bonferroni)

    def count(self, outcome: str) -> int:
        return sum(p.outcome == outcome for p in self.pairs)

    @property
    def n_images(self) -> str:
        n = sorted({v.n_images for p in self.pairs for v in (p.better, p.worse) if v.n_images is not None})
        return "" if not n else (str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}")

    def pair_texts(self) -> list[str]:
        return [pair_text(p) for p in self.pairs]

    def short(self, needs: str) -> str:
        """One cell of claims.md: all pairs when few, else counts and the weakest pair (the
        compared pair whose interval reaches furthest against the claim)."""
        if not self.pairs:
            return f"needs {needs}"
        texts = self.pair_texts()
        if len(texts) <= 3:
            return "; ".join(texts)
        counts = ", ".join(f"{self.count(o)} {_MARK[o]}" for o in OUTCOMES if self.count(o))
        ranked = [(p.hi, t) for p, t in zip(self.pairs, texts) if not math.isnan(p.hi)]
        weakest = max(ranked)[1] if ranked else texts[0]
        return f"{len(texts)} pairs: {counts}; weakest: {weakest}"


def _sides(cmp: Comparison, curves: dict, basis: str) -> tuple[Value, Value]:
    """The two values of a comparison on a basis: the anchor measured, the other side at the
    anchor's NFE (equal-NFE basis, or a claim stated in NFE) or at its own steps."""
    better, worse = (cmp.better, cmp.better_steps), (cmp.worse, cmp.worse_steps)
    (anchor_key, anchor_steps), (other_key, other_steps) = (better, worse) if cmp.anchor == "better" else (worse, better)
    anchor = _measured(curves, anchor_key, anchor_steps)
    if basis == "equal NFE" or cmp.at == "nfe":
        other = (value_at_nfe(curves, other_key, anchor.nfe) if not math.isnan(anchor.nfe)
                 else _missing(other_key, None, float("nan"), anchor.how))
    else:
        other = _measured(curves, other_key, other_steps)
    return (anchor, other) if cmp.anchor == "better" else (other, anchor)


def evaluate_claim(claim_id: str, curves: dict, bases: Sequence[str] = BASES) -> dict[str, ClaimResult]:
    """The bases (default both) of one claim on one (dataset, features, spacing) group."""
    rule, needs = CLAIM_RULES[claim_id]
    comps = rule(curves)
    out = {}
    for basis in bases:
        values = [_sides(cmp, curves, basis) for cmp in comps]
        if basis == "as claimed":
            # A paper's comparison needs the points it names; a pair we lack is not a result.
            values = [(b, w) for (b, w), cmp in zip(values, comps)
                      if cmp.at == "nfe" or not any(v.status == "not measured" for v in (b, w))]
        pairs, level = decide_all(values)
        verdict, detail = verdict_of(pairs, needs)
        out[basis] = ClaimResult(claim_id, basis, verdict, detail, tuple(pairs), level)
    return out


def point_estimates(claim_id: str, curves: dict) -> tuple[int, int]:
    """(pairs as claimed, pairs compared) on FID point estimates alone, as claimed: for
    published tables, which give no interval. Not a verdict."""
    rule, _ = CLAIM_RULES[claim_id]
    n = agree = 0
    for cmp in rule(curves):
        b, w = _sides(cmp, curves, "as claimed")
        if math.isnan(b.fid) or math.isnan(w.fid) or like_for_like(b, w):
            continue
        n += 1
        agree += b.fid < w.fid
    return agree, n


def _published_evidence(claim: papers.Claim) -> str:
    """The paper's own words, plus the direction of its own numbers (DDIM Table 1) where our rule applies."""
    agree, n = point_estimates(claim.id, series_curves(published_runs()))
    if n == 0:
        return claim.published
    src = papers.ddim_table1_source()
    return (f"{claim.published} On {papers.citation(src.citation).short} {src.where} "
            f"(CIFAR-10, {src.spacing} spacing), point estimates only (no interval published): "
            f"{agree} of {n} pairs as claimed.")


def evaluate_claims(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, features, spacing, claim, basis); columns CLAIM_COLUMNS."""
    rows = []
    claims = papers.claims()
    unknown = [c.id for c in claims if c.id not in CLAIM_RULES]
    if unknown:
        raise papers.ReferenceDataError(f"claims {unknown} in papers.yaml have no rule in pipeline/report/claims.py")
    published = {c.id: _published_evidence(c) for c in claims}
    for (dataset, features, spacing), g in table_groups(frame):
        curves = series_curves(g)
        for claim in claims:
            cite = papers.citation(claim.citation)
            for basis, res in evaluate_claim(claim.id, curves).items():
                rows.append({
                    "dataset": dataset, "features": features, "spacing": spacing, "claim_id": claim.id,
                    "claim": claim.statement, "source": f"{cite.short}, {claim.where}", "basis": basis,
                    "verdict": res.verdict, "verdict_detail": res.detail,
                    **{o.replace(" ", "_"): res.count(o) for o in OUTCOMES},
                    "pair_level": res.level if res.count("as claimed") + res.count("against")
                    + res.count("inconclusive") else float("nan"),
                    "n_images": res.n_images, "pairs": " | ".join(res.pair_texts()),
                    "published": published[claim.id], "reading": claim.reading,
                    "_short": res.short(CLAIM_RULES[claim.id][1]),
                })
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS + ["_short"])


# --- claims.md and claims.tex ---------------------------------------------------------------

METHOD = [
    "- **as claimed**: the comparison the paper makes (the step counts it names; the DPM-Solver claim is "
    "stated in model evaluations, so it is judged at equal NFE). **equal NFE**: the same comparison at equal "
    "model evaluations, which the papers did not make: the sampler and step count the claim names stay at "
    "their measured point; the other side's FID is read at that NFE, measured or linearly interpolated in "
    "log(NFE) between its two nearest measured NFEs (labelled *interpolated*), never extrapolated. The "
    "interpolated side's interval is the wider of the anchor's paired intervals against the two neighbours.",
    "- Each pair is decided by the interval of the paired FID difference Δ = FID(claimed better) − "
    "FID(claimed worse), from the delete-a-block jackknife replicates of both points (same seeds, same "
    f"blocks). A claim with k compared pairs takes each interval at the Bonferroni level 1 − "
    f"{1 - FAMILY_LEVEL:g}/k, so that all its pairs together make a false call with at most "
    f"{1 - FAMILY_LEVEL:.0%} probability.",
    "- Verdicts: **holds** (every compared pair's interval below 0), **does not hold** (one above 0), "
    "**inconclusive at N = …** (neither; *about N = …* is where the intervals would roughly exclude 0, "
    "from se ∝ 1/√N, given only when Δ ≠ 0), **not comparable** (no pair is like for like: FIDs are "
    "compared only at equal N, reference statistics, feature space and seeds), **not measured** (the grid "
    "lacks the points; never guessed).",
    "- Pairs: ✓ as claimed, ✗ against, ≈ inconclusive, ? no interval (the reason, e.g. N too small), "
    "≠ not comparable (the reason), – not measured. A pair that is not comparable only because of N shows "
    "the KID difference beside it: KID is unbiased, so it may be compared across N (evidence, not the "
    "verdict). With more than three pairs the cell gives the counts and the weakest pair (the interval "
    "reaching furthest against the claim). Method: docs/claims.md.",
]


def _group_runs(frame, dataset, features, spacing):
    return frame[(frame["dataset"] == dataset) & (frame["features"] == features) & (frame["spacing"] == spacing)]


def render_markdown(claims: pd.DataFrame, frame: pd.DataFrame, preset: str) -> str:
    lines = [
        f"# Claims of the papers, checked on our numbers (preset `{preset}`)", "",
        "Generated by `python -m pipeline aggregate`; numbers in `runs.csv`, every pair in `claims.csv`.", "",
        *METHOD, "",
        "## The claims", "",
    ]
    ref = claims.drop_duplicates("claim_id")[["claim_id", "claim", "source", "published", "reading"]]
    ref.columns = ["id", "claim", "source", "published evidence", "how ddbench reads it"]
    lines += [ref.to_markdown(index=False, tablefmt="pipe", disable_numparse=True), ""]
    for (dataset, features, spacing), g in claims.groupby(["dataset", "features", "spacing"], sort=False):
        runs = _group_runs(frame, dataset, features, spacing)
        lines += [f"## `{dataset}`, `{features}` features, `{spacing}` spacing", "",
                  f"{n_text(runs['n_images'])}, {seeds_text(runs)}; model: {models_text(runs)}; "
                  f"device: {devices_text(runs)}.", ""]
        wide = (g.pivot(index="claim_id", columns="basis", values=["verdict_detail", "_short"])
                .loc[list(dict.fromkeys(g["claim_id"]))])
        table = pd.DataFrame({
            "claim": wide.index,
            "as claimed": wide[("verdict_detail", "as claimed")].map(lambda v: f"**{v}**"),
            "equal NFE": wide[("verdict_detail", "equal NFE")].map(lambda v: f"**{v}**"),
            "our numbers (as claimed)": wide[("_short", "as claimed")],
            "our numbers (equal NFE)": wide[("_short", "equal NFE")],
        })
        lines += [table.to_markdown(index=False, tablefmt="pipe", disable_numparse=True), ""]
    return "\n".join(lines)


def render_latex(claims: pd.DataFrame, frame: pd.DataFrame, preset: str) -> str:
    fl = Flavor(tex=True)
    parts = ["% claims.tex: generated by ddbench (pipeline/stages/aggregate.py); needs \\usepackage{booktabs}.\n"]
    for (dataset, features, spacing), g in claims.groupby(["dataset", "features", "spacing"], sort=False):
        runs = _group_runs(frame, dataset, features, spacing)
        first = g[g["basis"] == BASES[0]].set_index("claim_id")
        second = g[g["basis"] == BASES[1]].set_index("claim_id")
        table = pd.DataFrame({
            "Claim": [fl.esc(s) for s in first["claim"]],
            "Source": [fl.esc(s) for s in first["source"]],
            "As claimed": [fl.esc(s) for s in first["verdict_detail"]],
            "Equal NFE": [fl.esc(s) for s in second.loc[first.index, "verdict_detail"]],
        })
        caption = (f"Claims checked on our numbers: {fl.code(dataset)}, {fl.code(features)} features, "
                   f"{fl.code(spacing)} spacing, {fl.esc(n_text(runs['n_images']))}, preset {fl.code(preset)}. "
                   f"Each pair is decided by the interval of the paired FID difference (delete-a-block "
                   f"jackknife), at the Bonferroni level 1 - {1 - FAMILY_LEVEL:g}/k for a claim with k pairs; "
                   f"FIDs are compared only at equal N, reference statistics and feature space. Equal NFE: "
                   f"the other side's FID interpolated linearly in log(NFE) between measured points, with the "
                   f"wider of the two neighbours' paired intervals.")
        parts.append(table.style.hide(axis="index").to_latex(
            hrules=True, position="t", position_float="centering", column_format="p{5cm}p{2.5cm}p{3.5cm}p{3.5cm}",
            caption=caption, label=f"tab:claims-{dataset}-{features}-{spacing}"))
    return "\n".join(parts)
