"""Published numbers and claims, each with its citation.

The data live beside this module in `reference/` (`papers.yaml` and DDIM Table 1 as
`ddim_table1.csv`), so a change to a published number is a reviewed data change, not
a code change. The loaders return tidy pandas frames and frozen dataclasses in
ddbench's vocabulary (sampler registry names, `steps`, `nfe`, `features`) so that
`pipeline.stages.aggregate` can put the papers' numbers beside ours without translation.

`comparability(...)` decides from provenance whether one of our FIDs is comparable to the
published CIFAR-10 FIDs (standard FID Inception weights, the exact CIFAR-10 training set as
reference, N = 50,000, the papers' checkpoint) and names what differs (docs/claims.md).
"""
from __future__ import annotations

from pipeline.util.errors import ReferenceDataError

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

REFERENCE_DIR = Path(__file__).parent / "reference"
PAPERS_YAML = REFERENCE_DIR / "papers.yaml"

# The data set the published numbers are about. The name only decides where published
# numbers are shown as *context*; whether ours are *comparable* to them is decided from
# provenance (`comparability`), never from this name.
PUBLISHED_DATASET = "cifar10"

# --- what a published CIFAR-10 FID is made of (DDIM Table 1, DDPM, DPM-Solver) -----------------
# A FID of ours is comparable to the published ones only when it is made of the same things:
# the standard FID Inception weights, reference statistics of the exact CIFAR-10 training set,
# N = 50,000 generated images (papers.yaml ddim_table1.n_images), and the papers' checkpoint.

# sha256 of Inception weight files that hold the standard FID Inception-v3 (TensorFlow's
# inception-2015-12-05 graph, 2048-d pool features), as read from the fid record's
# `features_weights_sha256` (or, in records written before it existed, `weights_sha256`).
STANDARD_FID_WEIGHTS_SHA256 = {
    # torch-fidelity state dict converted from NVIDIA's TorchScript inception-2015-12-05;
    # checked layer by layer against it in shared/data/README.md ("FID Inception weights").
    "d3afb23b3319641121bd991594f5c606646b344aa136e3a717049979e7e1a467":
        "weights-inception-2015-12-05-6726825d-converted.pth",
}
# torch-fidelity's own file, weights-inception-2015-12-05-6726825d.pth: torch.hub names a
# downloadable file <name>-<first 8 hex digits of its sha256>.<ext>, so only this prefix is known.
STANDARD_FID_WEIGHTS_SHA256_PREFIXES = {"6726825d": "torch-fidelity's weights-inception-2015-12-05-6726825d.pth"}

# sha256 of the 50,000 CIFAR-10 training images as one uint8 array [50000, 32, 32, 3] (NHWC,
# C-contiguous) in the original order (data_batch_1 .. data_batch_5, each row of a batch's
# `data` reshaped to [3, 32, 32] and transposed to [32, 32, 3]), as the fid record's
# `ref_content_sha256` states it for the images its reference statistics were computed from.
# Not known here (the original batches are not available whole, see
# shared/data/README.md), so None: no reference set is recognised as the papers' until the
# value is filled in from the original files. It can only ever match the exact set.
CIFAR10_TRAIN_NHWC_SHA256: Optional[str] = None

# Reference sets known NOT to be the papers', by the same content hash: named in the reason.
KNOWN_REFERENCE_SETS = {
    # shared/data/cifar10/cifar10-jpeg-q75.tar.xz, train split decoded (Pillow 13.0.0) in original order
    "5aaf8a2cf2e577ff4dbb15e4f368840fab5aca1812bcc69682005f8dc661d466": "JPEG copy",
}

# The checkpoint the papers sampled: Ho et al. 2020's CIFAR-10 EMA model, as imported by
# model.pretrained (presets/paper.yaml); read from the sample record's `model_pretrained`.
PAPERS_MODEL = "google/ddpm-cifar10-32"

FID_COLUMNS = ["dataset", "sampler", "eta", "steps", "nfe", "spacing", "features", "n_images",
               "reference_set", "fid", "citation", "where", "row"]


@dataclass(frozen=True)
class Citation:
    key: str
    short: str  # "Song et al. 2021"
    authors: str
    title: str
    venue: str
    arxiv: str

    @property
    def text(self) -> str:
        """Full reference, e.g. for a caption footnote."""
        return f"{self.authors}. {self.title}. {self.venue}. arXiv:{self.arxiv}."


@dataclass(frozen=True)
class Claim:
    """A speed-quality statement of a paper that ddbench checks on its own numbers."""

    id: str
    citation: str  # key into citations()
    where: str  # "Table 1", "Abstract"
    statement: str
    published: str  # the paper's own evidence, quoted or paraphrased
    reading: str = ""  # how ddbench reads the paper's words where they allow more than one reading


@dataclass(frozen=True)
class TableSource:
    """Provenance of a transcribed table (DDIM Table 1)."""

    citation: str
    where: str
    dataset: str
    features: str
    n_images: int
    reference_set: str
    spacing: str
    model: str
    note: str



@functools.lru_cache(maxsize=1)
def _yaml() -> dict:
    import yaml

    with open(PAPERS_YAML, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    for section in ("citations", "ddim_table1", "numbers", "claims"):
        if section not in data:
            raise ReferenceDataError(f"{PAPERS_YAML}: missing section {section!r}")
    keys = set(data["citations"])
    used = [data["ddim_table1"]["citation"]] + [n["citation"] for n in data["numbers"]]
    used += [c["citation"] for c in data["claims"]]
    unknown = sorted(set(used) - keys)
    if unknown:
        raise ReferenceDataError(f"{PAPERS_YAML}: unknown citation key(s) {unknown}; known: {sorted(keys)}")
    ids = [c["id"] for c in data["claims"]]
    if len(ids) != len(set(ids)):
        raise ReferenceDataError(f"{PAPERS_YAML}: duplicate claim ids in {ids}")
    return data


def citations() -> dict[str, Citation]:
    """Citation key -> Citation."""
    return {k: Citation(key=k, **{f: str(v[f]) for f in ("short", "authors", "title", "venue", "arxiv")})
            for k, v in _yaml()["citations"].items()}


def citation(key: str) -> Citation:
    table = citations()
    if key not in table:
        raise KeyError(f"unknown citation {key!r}; known: {sorted(table)}")
    return table[key]


def claims() -> list[Claim]:
    """The claims in paper order (DDIM, PNDM, DPM-Solver)."""
    return [Claim(**{f: str(c[f]) for f in ("id", "citation", "where", "statement", "published")},
                  reading=str(c.get("reading") or ""))
            for c in _yaml()["claims"]]


def ddim_table1_source() -> TableSource:
    t = _yaml()["ddim_table1"]
    return TableSource(**{f: t[f] for f in TableSource.__dataclass_fields__})


def ddim_table1() -> pd.DataFrame:
    """DDIM Table 1 (CIFAR-10), tidy: one row per (table row, steps).

    Columns: FID_COLUMNS. `row` is the paper's row label ("eta=0.0", ..., "sigma-hat");
    `sampler`/`eta` are ddbench's names for it (ddim with eta, or ddpm-large with eta NaN);
    `nfe` equals `steps` (one model evaluation per step for both samplers).
    """
    meta = _yaml()["ddim_table1"]
    raw = pd.read_csv(REFERENCE_DIR / meta["file"])
    rows = meta["rows"]
    unknown = sorted(set(raw["row"]) - set(rows))
    if unknown:
        raise ReferenceDataError(f"{meta['file']}: rows {unknown} have no sampler mapping in papers.yaml")
    out = pd.DataFrame({
        "dataset": raw["dataset"],
        "sampler": raw["row"].map(lambda r: rows[r]["sampler"]),
        "eta": raw["row"].map(lambda r: rows[r]["eta"]).astype(float),
        "steps": raw["steps"].astype(int),
        "nfe": raw["steps"].astype(int),
        "spacing": meta["spacing"],
        "features": meta["features"],
        "n_images": int(meta["n_images"]),
        "reference_set": meta["reference_set"],
        "fid": raw["fid"].astype(float),
        "citation": meta["citation"],
        "where": meta["where"],
        "row": raw["row"],
    })
    return out[FID_COLUMNS]


def published_fids() -> pd.DataFrame:
    """Every published FID ddbench knows: DDIM Table 1 plus the single numbers of papers.yaml.

    Same columns as ddim_table1(); `steps` is <NA> where a paper gives only NFE,
    `n_images` is <NA> where the entry does not state it.
    """
    singles = []
    for n in _yaml()["numbers"]:
        singles.append({
            "dataset": n["dataset"], "sampler": n["sampler"], "eta": n.get("eta"),
            "steps": n.get("steps"), "nfe": n["nfe"], "spacing": n.get("spacing"),
            "features": n["features"], "n_images": n.get("n_images"),
            "reference_set": n["reference_set"], "fid": float(n["fid"]),
            "citation": n["citation"], "where": n["where"], "row": n["id"],
        })
    out = pd.concat([ddim_table1(), pd.DataFrame(singles, columns=FID_COLUMNS)], ignore_index=True)
    out["eta"] = out["eta"].astype(float)
    for col in ("steps", "nfe", "n_images"):
        out[col] = out[col].astype("Int64")
    return out


def published_number(number_id: str) -> pd.Series:
    """One entry of papers.yaml `numbers` by id, e.g. "dpm-solver-cifar10-12nfe"."""
    table = published_fids()
    hit = table[table["row"] == number_id]
    if hit.empty:
        known = [n["id"] for n in _yaml()["numbers"]]
        raise KeyError(f"unknown published number {number_id!r}; known: {known}")
    return hit.iloc[0]


def is_published_dataset(dataset: str, features: Optional[str] = None) -> bool:
    """Whether published numbers exist for a data set of this name (and feature space, if given): where
    they are relevant as context. Whether ours are comparable to them is `comparability`'s decision."""
    return dataset == PUBLISHED_DATASET and (features is None or features == ddim_table1_source().features)


# --- comparability of our FIDs with the published ones ------------------------------------------

def is_standard_fid_weights(sha256: Optional[str]) -> bool:
    """Whether a weights file (by sha256) is the standard FID Inception (STANDARD_FID_WEIGHTS_SHA256)."""
    if not sha256:
        return False
    return (sha256 in STANDARD_FID_WEIGHTS_SHA256
            or any(sha256.startswith(p) for p in STANDARD_FID_WEIGHTS_SHA256_PREFIXES))


def comparability(*, papers_features: bool, weights_sha256: Optional[str], ref_content_sha256: Optional[str],
                  n_images: int, model_pretrained: Optional[str], model_kind: Optional[str]) -> list[str]:
    """Why a FID of ours is NOT comparable to the published CIFAR-10 FIDs; [] when it is.

    papers_features: the fid record's `comparable_to_papers` (the feature space is Inception);
    weights_sha256 / ref_content_sha256: the fid record's hashes (None when not recorded);
    n_images: N of the point; model_pretrained / model_kind: the sample record's model provenance.
    Reasons, in this order: features, weights, reference, model, N, e.g.
    ["reference: JPEG copy", "model: ours", "N = 5,000"].
    """
    out = []
    if not papers_features:
        out.append("features: not Inception")
    elif not weights_sha256:
        out.append("Inception weights: sha256 not recorded")
    elif not is_standard_fid_weights(weights_sha256):
        out.append(f"Inception weights: sha256 {weights_sha256[:12]}… is not the standard FID Inception")
    if not ref_content_sha256:
        out.append("reference: content hash not recorded")
    elif ref_content_sha256 in KNOWN_REFERENCE_SETS:
        out.append(f"reference: {KNOWN_REFERENCE_SETS[ref_content_sha256]}")
    elif CIFAR10_TRAIN_NHWC_SHA256 is None or ref_content_sha256 != CIFAR10_TRAIN_NHWC_SHA256:
        out.append("reference: not the exact CIFAR-10 training set"
                   + (" (its hash is not known here)" if CIFAR10_TRAIN_NHWC_SHA256 is None else ""))
    if model_pretrained != PAPERS_MODEL:
        out.append(f"model: {model_pretrained}" if model_pretrained else
                   "model: an exact score (no network)" if model_kind == "exact" else
                   "model: imported, its id not recorded" if model_kind == "diffusers" else "model: ours")
    n_papers = int(ddim_table1_source().n_images)
    if int(n_images) != n_papers:
        out.append(f"N = {int(n_images):,}")
    return out
