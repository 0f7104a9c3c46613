"""Synthetic run records for the aggregate-stage tests (records, tables, claims, aggregate).

The records have the fields of docs/design.md, "Records", as the sample and fid stages
write them, with FIDs built from closed forms so that each claim's verdict is known in
advance:

- `cifar10` (Inception, comparable to the papers): every claim holds as the papers
  state it; at equal NFE S-PNDM (S + 1 evaluations, FID = DDIM's - 0.5) loses to DDIM.
- `mnist` (classifier features): every claim is contradicted.
- `gaussian` (exact features, no KID): only DDIM at eta 0 and 1 exist, so every other
  claim is "not measured".
"""
from __future__ import annotations

import re

from pipeline.config import GridPoint
from pipeline.files import read_json, write_json

STEPS = (10, 20, 50, 100, 250, 1000)
N = 64
KID_STD = 1e-5  # tiny: decisions by FID (KID = FID / 1000 below)


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
SERIES_STEPS = {"s-pndm": (10, 20, 50, 100), "f-pndm": (10, 20, 50, 100), "dpm-solver++": (10, 20)}


def write_point(root, dataset, features, sampler, eta, steps, fid, *, kid=None, kid_std=KID_STD,
                spacing="uniform", comparable=False):
    """A sample record.json and its fid-<features>.json, as the sample and fid stages write them."""
    point = GridPoint(sampler, steps, spacing, eta).name
    folder = root / dataset / point
    nfe = nfe_of(sampler, steps)
    wall = 0.001 * nfe * N
    sample = {
        "dataset": dataset, "point": point, "sampler": sampler, "steps": steps, "spacing": spacing,
        "eta": eta, "nfe": nfe, "nfe_expected": nfe, "n_images": N, "seed": 0, "seeds": f"0..{N - 1}",
        "batch_size": 32, "wall_s": wall, "images_per_s": N / wall, "s_per_nfe": wall / nfe,
        "peak_mem_bytes": 0, "device": "cpu", "device_name": "CPU (test, 2 cores)", "torch": "2.x-test",
        "checkpoint_sha256": "ab" * 32, "data_manifest_sha256": "cd" * 32,
        "fingerprint": {"python": "3.11", "torch": "2.x-test", "torch_fidelity": "0.3-test"},
        "an_extra_field": "ignored",
    }
    fidrec = {
        "dataset": dataset, "point": point, "features": features, "fid": fid,
        "kid_mean": fid / 1000 if kid is None else kid, "kid_std": kid_std, "n_images": N, "ref_n": 5000,
        "ref_stats_id": "test", "feature_extractor": features, "comparable_to_papers": comparable,
        "fingerprint": {"torch_fidelity": "0.3-test"},
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
    recs = write_world(root, "cifar10", "inception", HOLDS, comparable=True)
    recs += write_world(root, "mnist", "classifier", FAILS)
    sparse = [write_point(root, "gaussian", "exact", sm, eta, s, SPARSE[(sm, eta)](s), kid_std=None)
              for (sm, eta) in SPARSE for s in (10, 20)]
    for _, fid_path in sparse:  # the Gaussian's exact Frechet distance has no KID
        rec = read_json(fid_path)
        write_json(fid_path, {**rec, "kid_mean": None, "kid_std": None})
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
