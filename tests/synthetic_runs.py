"""Synthetic run records for the aggregate-stage tests (records, tables, claims, aggregate).

The records have the fields of docs/design.md, "Records", as the sample and fid stages
write them (with the interval fields of docs/claims.md), with FIDs built from closed forms
and FID jackknife replicates of a small known standard error (SE), so that each claim's
verdict is known in advance:

- `cifar10` (Inception, the provenance of the gpu preset: JPEG reference copy, our own
  model, N = 64, so NOT comparable to the papers): every claim holds as the papers state
  it; at equal NFE S-PNDM (S + 1 evaluations, FID = DDIM's - 0.5) loses to DDIM.
- `mnist` (classifier features): every claim is contradicted.
- `gaussian` (exact features, no KID): only DDIM at eta 0 and 1 exist, so every other
  claim is "not measured".

`replicates(theta, se, B, seed)` builds replicate vectors whose delete-a-block jackknife
standard error is exactly `se`: r_i = theta + c z_i with sum z = 0, sum z^2 = 1 and
c = se sqrt(B / (B - 1)), since se^2 = (B - 1) / B * sum (r_i - mean r)^2.
"""
from __future__ import annotations

import math
import re
import zlib

import numpy as np

from pipeline.core import intervals
from pipeline.config import SIGMA_HAT_OPTIONS, GridPoint
from pipeline.report.labels import SIGMA_HAT
from pipeline.core.samplers import non_default_options
from pipeline.util.files import read_json, write_json

STEPS = (10, 20, 50, 100, 250, 1000)
N = 64
B = 10  # jackknife blocks
SE = 0.01  # FID jackknife standard error of every synthetic point: far below the worlds' differences
KID_STD = 1e-5  # jackknife standard error of KID (KID = FID / 1000 below)

# in papers.STANDARD_FID_WEIGHTS_SHA256 and papers.KNOWN_REFERENCE_SETS
STANDARD_WEIGHTS = "d3afb23b3319641121bd991594f5c606646b344aa136e3a717049979e7e1a467"
JPEG_TRAIN = "5aaf8a2cf2e577ff4dbb15e4f368840fab5aca1812bcc69682005f8dc661d466"
FAKE_CIFAR10_TRAIN = "f0" * 32  # stands in for papers.CIFAR10_TRAIN_NHWC_SHA256 (monkeypatched in tests)
# Provenance of the gpu preset's cifar10 (JPEG copy, own model) and of the papers' setting.
JPEG_OURS = {"fid": {"weights_sha256": STANDARD_WEIGHTS, "ref_content_sha256": JPEG_TRAIN},
             "sample": {"model_kind": "ddbench-unet"}}
PAPERS_SETTING = {"fid": {"features_weights_sha256": STANDARD_WEIGHTS, "ref_content_sha256": FAKE_CIFAR10_TRAIN},
                  "sample": {"model_kind": "diffusers", "model_pretrained": "google/ddpm-cifar10-32"}}


def replicates(theta: float, se: float, blocks: int, seed: int) -> list[float]:
    """B replicate values whose jackknife standard error is exactly `se` (module docstring)."""
    z = np.random.default_rng(seed).standard_normal(blocks)
    z -= z.mean()
    z /= np.sqrt(np.sum(z ** 2))
    return list(theta + se * math.sqrt(blocks / (blocks - 1)) * z)


def interval_fields(fid, kid, *, se=SE, kid_se=KID_STD, blocks=B, seed=0, note=None):
    """The interval fields of a fid record (docs/claims.md); all null with `note` when `note` is given."""
    if note is not None:
        return {"fid_ci": None, "fid_replicates": None, "kid_ci": None, "kid_replicates": None,
                "interval_blocks": None, "interval_level": None, "interval_method": None, "interval_note": note}
    out = {"interval_blocks": blocks, "interval_level": 0.95, "interval_method": "delete-a-block jackknife",
           "interval_note": None}
    for name, theta, s in (("fid", fid, se), ("kid", kid, kid_se)):
        if theta is None or s is None:
            out.update({f"{name}_ci": None, f"{name}_replicates": None})
            continue
        reps = replicates(theta, s, blocks, seed + (name == "kid"))
        lo, hi, _ = intervals.jackknife_interval(theta, np.asarray(reps), 0.95)
        out.update({f"{name}_ci": [float(lo), float(hi)], f"{name}_replicates": reps})
    return out


def base(s):
    return 4.0 + 100.0 / s  # DDIM at eta 0 in the "holds" world


def nfe_of(sampler, s):
    return {"s-pndm": s + 1, "f-pndm": s + 9}.get(sampler, s)  # PNDM paper: S + 1, S + 9


HOLDS = {  # (sampler, eta) -> FID(S)
    ("ddim", 0.0): base,
    ("ddim", 0.2): lambda s: base(s) * 1.2,
    ("ddim", 0.5): lambda s: base(s) * 1.5,
    ("ddim", 1.0): lambda s: base(s) * 2.0,
    ("ddpm-large", None): lambda s: 6 * base(s) if s <= 100 else 3.0,
    ("s-pndm", None): lambda s: base(s) - 0.5,
    ("f-pndm", None): lambda s: 3.0 + 10.0 / s,
    ("dpm-solver++", None): lambda s: 2.5 + 5.0 / s,
}
FAILS = {
    ("ddim", 0.0): lambda s: base(s) * 2.0,
    ("ddim", 0.2): lambda s: base(s) * 1.8,
    ("ddim", 0.5): lambda s: base(s) * 1.5,
    ("ddim", 1.0): base,
    ("ddpm-large", None): lambda s: 1.0 if s <= 100 else 100.0,
    ("s-pndm", None): lambda s: 200.0,
    ("f-pndm", None): lambda s: 200.0,
    ("dpm-solver++", None): lambda s: 300.0,
}
SPARSE = {("ddim", 0.0): lambda s: 1.0, ("ddim", 1.0): lambda s: 2.0}
SERIES_STEPS = {"s-pndm": (10, 20, 50, 100), "f-pndm": (10, 20, 50, 100, 250), "dpm-solver++": (10, 20)}


def write_point(root, dataset, features, sampler, eta, steps, fid, *, kid=None, kid_std=KID_STD,
                spacing="uniform", comparable=False, n=N, se=SE, blocks=B, no_interval=None,
                provenance=None, ref_stats_id="test"):
    """A sample record.json and its fid-<features>.json, as the sample and fid stages write them.

    comparable: the fid record's feature-space flag (Inception); provenance: extra fields of
    the fid and sample records (JPEG_OURS, PAPERS_SETTING); no_interval: the interval_note of
    a record whose interval fields are null.
    """
    # sigma-hat is run as published, clamping x_0 (config.SIGMA_HAT_OPTIONS), as the grid runs it
    grid_point = GridPoint(sampler, steps, spacing, eta, options=tuple(SIGMA_HAT_OPTIONS.items())
                           if sampler == SIGMA_HAT else ())
    point = grid_point.name
    folder = root / dataset / point
    nfe = nfe_of(sampler, steps)
    wall = 0.001 * nfe * n
    provenance = provenance or {}
    sample = {
        "dataset": dataset, "point": point, "sampler": sampler, "steps": steps, "spacing": spacing,
        "eta": eta, "options": dict(grid_point.options),
        "non_default_options": non_default_options(sampler, dict(grid_point.options)),  # as the sample stage writes it
        "nfe": nfe, "nfe_expected": nfe, "n_images": n,
        "seed": 0, "seeds": f"0..{n - 1}",
        "batch_size": 32, "wall_s": wall, "images_per_s": n / wall, "s_per_nfe": wall / nfe,
        "peak_mem_bytes": 0, "device": "cpu", "device_name": "CPU (test, 2 cores)", "torch": "2.x-test",
        "checkpoint_sha256": "ab" * 32, "data_manifest_sha256": "cd" * 32,
        "fingerprint": {"python": "3.11", "torch": "2.x-test", "torch_fidelity": "0.3-test"},
        "an_extra_field": "ignored", **provenance.get("sample", {}),
    }
    kid_mean = fid / 1000 if kid is None else kid
    seed = zlib.crc32(f"{dataset}/{point}/{features}".encode())
    fidrec = {
        "dataset": dataset, "point": point, "features": features, "fid": fid,
        "kid_mean": kid_mean, "kid_std": kid_std, "n_images": n, "ref_n": 5000,
        "ref_stats_id": ref_stats_id, "feature_extractor": features, "comparable_to_papers": comparable,
        "fingerprint": {"torch_fidelity": "0.3-test"},
        **interval_fields(fid, kid_mean, se=se, kid_se=kid_std, blocks=blocks, seed=seed, note=no_interval),
        **provenance.get("fid", {}),
    }
    write_json(folder / "record.json", sample)
    write_json(folder / f"fid-{features}.json", fidrec)
    return folder / "record.json", folder / f"fid-{features}.json"


def write_world(root, dataset, features, world, **kw):
    recs = []
    for (sampler, eta), f in world.items():
        for s in SERIES_STEPS.get(sampler, STEPS):
            recs.append(write_point(root, dataset, features, sampler, eta, s, f(s), **kw))
    return recs


def write_all(root):
    """The three worlds above; returns [(record.json, fid-<features>.json)] in write order."""
    recs = write_world(root, "cifar10", "inception", HOLDS, comparable=True, provenance=JPEG_OURS)
    recs += write_world(root, "mnist", "classifier", FAILS)
    sparse = [write_point(root, "gaussian", "exact", sm, eta, s, SPARSE[(sm, eta)](s), kid_std=None)
              for (sm, eta) in SPARSE for s in (10, 20)]
    for _, fid_path in sparse:  # the Gaussian's exact Frechet distance has no KID
        rec = read_json(fid_path)
        write_json(fid_path, {**rec, "kid_mean": None, "kid_std": None, "kid_ci": None, "kid_replicates": None})
    return recs + sparse


def md_table(text):
    """The pipe table of a Markdown file -> (header cells, {row label: cells}); checks it is well formed."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    widths = {ln.count("|") for ln in lines}
    assert len(widths) == 1, "every table line has the same number of cells"
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[1]), "second line is the header separator"
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    rows = [(r[0], r[1:]) for r in split[2:]]
    return split[0], rows
