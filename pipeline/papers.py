"""Published numbers and claims, each with its citation.

The data live beside this module in `reference/` (`papers.yaml` and DDIM Table 1 as
`ddim_table1.csv`), so a change to a published number is a reviewed data change, not
a code change. The loaders return tidy pandas frames and frozen dataclasses in
ddbench's vocabulary (sampler registry names, `steps`, `nfe`, `features`) so that
`pipeline.aggregate` can put the papers' numbers beside ours without translation.
"""
from __future__ import annotations

from pipeline.errors import ReferenceDataError

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

REFERENCE_DIR = Path(__file__).parent / "reference"
PAPERS_YAML = REFERENCE_DIR / "papers.yaml"

# The data set the published numbers are about; ddbench data sets of this name get
# the published columns in their tables.
PUBLISHED_DATASET = "cifar10"

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
    return [Claim(**{f: str(c[f]) for f in ("id", "citation", "where", "statement", "published")})
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
    """Whether published numbers exist for this ddbench data set (and feature space, if given)."""
    return dataset == PUBLISHED_DATASET and (features is None or features == ddim_table1_source().features)
