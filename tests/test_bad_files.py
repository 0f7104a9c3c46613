"""User-visible file faults end in one line that names the file and the fix, and leave nothing
half-written: a truncated or corrupt .npz, and a full disk."""
import errno
import os

import numpy as np
import pytest

from pipeline.stages import fid
from pipeline.util import files
from pipeline.util.errors import DDBenchError, FIDError


@pytest.fixture
def samples_npz(tmp_path):
    path = tmp_path / "samples.npz"
    np.savez(path, samples=np.zeros((8, 1, 4, 4), np.uint8), seeds=np.arange(8))
    return path


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_samples_file_is_one_error_naming_it_and_the_fix(samples_npz, damage):
    data = samples_npz.read_bytes()
    samples_npz.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 10, "empty": b""}[damage])
    with pytest.raises(FIDError) as e:
        fid._load_samples(samples_npz)
    msg = str(e.value)
    assert str(samples_npz) in msg and "rerun the sample stage" in msg and "\n" not in msg


def test_an_intact_samples_file_reads_back(samples_npz):
    x, seeds = fid._load_samples(samples_npz)
    assert x.shape == (8, 1, 4, 4) and seeds.tolist() == list(range(8))


def test_a_full_disk_is_one_error_naming_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "record.json"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DDBenchError, match=rf"^{target}: no space left on its disk .* set run.build_dir"):
        files.write_bytes(target, b"{}")
    assert list((tmp_path / "out").iterdir()) == []


def test_other_write_errors_are_not_disguised(tmp_path, monkeypatch):
    def denied(fd):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "fsync", denied)
    with pytest.raises(PermissionError):
        files.write_bytes(tmp_path / "x.bin", b"1")
