"""records: sample and fid records -> the tidy runs frame, strictly; series curves of a group."""
from __future__ import annotations

import re

import pytest

from pipeline import records
from pipeline.errors import RecordError
from pipeline.files import read_json, write_json
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
    assert list(curves[("f-pndm", None)].index) == [10, 20, 50, 100]
    assert list(curves[("f-pndm", None)]["nfe"]) == [19, 29, 59, 109]


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
