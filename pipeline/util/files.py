"""Atomic file output, JSON records and file hashes.

Every stage writes through these helpers, so an interrupted job never leaves a
half-written output behind: data goes to a temporary file in the target folder,
is flushed, and is renamed over the target (rename is atomic on POSIX).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the target's suffix, so libraries that pick a format
    from the extension (numpy, PIL, matplotlib, safetensors) behave as for the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A job killed mid-write (SIGKILL skips the cleanup below) leaves its temporary
    # file; the rerun of the same job, the only writer of `path`, removes it first.
    for stale in path.parent.glob(f".{path.stem}.*.tmp{path.suffix}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600 files; give outputs the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        from pipeline.util.errors import DDBenchError

        raise DDBenchError(f"{path}: no space left on its disk to write {len(data):,} bytes; free space there or "
                           "set run.build_dir (and run.results_dir) to a larger disk, then rerun") from None


def load_npz(path: str | os.PathLike, *, error: type, fix: str) -> dict:
    """Every array of an .npz file; a missing, truncated or corrupt file raises `error` naming the
    file and `fix` (what remakes it), never a raw zipfile or numpy traceback."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise error(f"{path}: does not exist; {fix}") from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise error(f"{path}: not a readable .npz file (truncated or corrupt: {type(e).__name__}); {fix}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Make records strict JSON: NaN/inf become null (JSON has no NaN), paths become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def write_json(path: str | os.PathLike, record: dict) -> None:
    write_text(path, json.dumps(_jsonable(record), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
