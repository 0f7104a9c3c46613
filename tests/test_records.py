"""records: sample and fid records -> the tidy runs frame, strictly; series curves of a group."""
from __future__ import annotations

import math
import re

import pytest

from pipeline.report import records
from pipeline.util.errors import RecordError
from pipeline.util.files import read_json, write_json
from synthetic_runs import HOLDS, STEPS, write_all, write_point


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    recs = write_all(tmp_path_factory.mktemp("runs"))
    return records.tidy([r[0] for r in recs], [r[1] for r in recs], preset="test"), len(recs)


def test_tidy_one_row_per_point_and_features(written):
    frame, n = written
    assert len(frame) == n and list(frame.columns) == records.RUN_COLUMNS
    row = frame[(frame.dataset == "cifar10") & (frame.sampler == "f-pndm") & (frame.steps == 50)].iloc[0]
    assert row.nfe == 59 and row.fid == pytest.approx(HOLDS[("f-pndm", None)](50))
    assert row.s_per_nfe == pytest.approx(row.wall_s / row.nfe)
    assert frame.loc[frame.sampler == "f-pndm", "eta"].isna().all()
    assert frame.loc[frame.dataset == "gaussian", "kid_std"].isna().all(), "null KID stays missing, never 0"
    assert (frame.preset == "test").all() and (frame.seeds == "0..63").all()


def test_tidy_sorts_datasets_as_given_then_samplers_in_table_order(written):
    frame, _ = written
    assert list(dict.fromkeys(frame.dataset)) == ["cifar10", "mnist", "gaussian"]
    samplers = list(dict.fromkeys(frame[frame.dataset == "cifar10"].sampler))
    assert samplers == ["ddim", "ddpm-large", "s-pndm", "f-pndm", "dpm-solver++"]
    ddim = frame[(frame.dataset == "cifar10") & (frame.sampler == "ddim")]
    assert list(ddim.eta) == sorted(ddim.eta) and list(ddim[ddim.eta == 0].steps) == list(STEPS)


def test_series_curves_one_curve_per_sampler_setting(written):
    frame, _ = written
    groups = dict(iter(records.table_groups(frame)))
    curves = records.series_curves(groups[("cifar10", "inception", "uniform")])
    assert ("ddim", 0.0) in curves and ("f-pndm", None) in curves
    assert list(curves[("f-pndm", None)].index) == [10, 20, 50, 100, 250]
    assert list(curves[("f-pndm", None)]["nfe"]) == [19, 29, 59, 109, 259]


def test_missing_required_field_names_the_file_and_field(tmp_path):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0)
    data = read_json(rec)
    del data["nfe"]
    write_json(rec, data)
    with pytest.raises(RecordError, match=rf"{re.escape(str(rec))}.*nfe"):
        records.tidy([rec], [fid], preset="test")


def test_fid_record_without_its_sample_record_is_an_error(tmp_path):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0)
    _, other = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 20, 4.0)
    with pytest.raises(RecordError, match="no sample record"):
        records.tidy([rec], [fid, other], preset="test")


def test_wrong_type_and_stale_n_images_are_errors(tmp_path):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0)
    write_json(fid, {**read_json(fid), "n_images": 32})
    with pytest.raises(RecordError, match="n_images = 32"):
        records.tidy([rec], [fid], preset="test")
    write_json(rec, {**read_json(rec), "steps": "10"})
    with pytest.raises(RecordError, match=r"field 'steps' = '10'; expected int"):
        records.tidy([rec], [fid], preset="test")


def test_intervals_and_their_replicates_travel_in_the_frame(tmp_path):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0)
    frame = records.tidy([rec], [fid], preset="test")
    data = read_json(fid)
    row = frame.iloc[0]
    assert (row.fid_lo, row.fid_hi) == tuple(data["fid_ci"]) and (row.kid_lo, row.kid_hi) == tuple(data["kid_ci"])
    assert list(records.parse_replicates(row.fid_replicates)) == data["fid_replicates"]
    assert row.interval_blocks == data["interval_blocks"] and row.interval_level == 0.95
    assert records.parse_replicates(float("nan")) is None


def test_null_interval_fields_keep_their_reason(tmp_path):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0, n=8, no_interval="N = 8 < 10")
    row = records.tidy([rec], [fid], preset="test").iloc[0]
    assert math.isnan(row.fid_lo) and math.isnan(row.fid_hi) and row.interval_note == "N = 8 < 10"
    assert row.fid_replicates is None


@pytest.mark.parametrize("field, value, expected", [
    ("fid_ci", [2.0, 1.0], r"field 'fid_ci' = \[2.0, 1.0\]; expected \[lo, hi\] with lo <= hi or null"),
    ("fid_replicates", "1,2", r"field 'fid_replicates' = '1,2'; expected a list of at least 2 numbers"),
    ("fid_replicates", [1.0, 2.0, 3.0], r"fid_replicates has 3 values but interval_blocks = 10"),
])
def test_malformed_interval_fields_are_errors(tmp_path, field, value, expected):
    rec, fid = write_point(tmp_path, "mnist", "classifier", "ddim", 0.0, 10, 5.0)
    write_json(fid, {**read_json(fid), field: value})
    with pytest.raises(RecordError, match=rf"{re.escape(str(fid))}: {expected}"):
        records.tidy([rec], [fid], preset="test")


def test_comparable_to_papers_is_decided_by_provenance(written):
    frame, _ = written
    # the fid record's flag says "Inception features"; the rest of the provenance says no
    cifar = frame[frame.dataset == "cifar10"]
    assert not cifar.comparable_to_papers.any()
    assert set(cifar.papers_note) == {"reference: JPEG copy; model: ours; N = 64"}
    mnist = frame[frame.dataset == "mnist"].papers_note.iloc[0]
    assert mnist.startswith("features: not Inception; reference: content hash not recorded")


def test_settings_that_differ_in_an_option_are_two_series(tmp_path):
    """The sigma-hat row as run (clip_x0 = true) and the same sampler without clamping never merge."""
    rec, fid = write_point(tmp_path / "a", "mnist", "classifier", "ddpm-large", None, 10, 5.0)
    sample, fidrec = read_json(rec), read_json(fid)
    assert sample["options"] == {"clip_x0": True} and sample["non_default_options"] == {"clip_x0": True}
    sample.update(point="ddpm-large-s10-uniform", options={"clip_x0": False}, non_default_options={})
    fidrec.update(point="ddpm-large-s10-uniform", fid=7.0)
    write_json(tmp_path / "b" / "record.json", sample)
    write_json(tmp_path / "b" / "fid.json", fidrec)
    frame = records.tidy([rec, tmp_path / "b" / "record.json"], [fid, tmp_path / "b" / "fid.json"], preset="test")
    assert list(frame.options) == ["", "clip_x0=true"] and list(frame.fid) == [7.0, 5.0]
    curves = records.series_curves(frame)
    assert set(curves) == {("ddpm-large", None), ("ddpm-large", None, "clip_x0=true")}
