#!/usr/bin/env python3
"""Build the folder that travels to a lent GPU machine beside the working tree (`.carry/`), and
check it against the 64 MiB that may travel in all.

    python scripts/make_carry.py [--out .carry] [--shared ../shared/data] [--limit-mib 64]
                                 [--no-cifar10] [--no-wheels]

What it holds (scripts/gpu_run.sh reads it there):
- `wheels/`: the Python 3.12 x86-64 wheels of what the GPU machine lacks (torch-fidelity and
  jsonschema with its dependencies), at the versions constraints.txt pins, from the registry
  (`pip download`; kept between builds);
- `data/MNIST/raw/`: the four md5-checked MNIST .gz files (torchvision checks them again there);
- `data/cifar10-train-jpeg-q75.tar.xz`: CIFAR-10's 50,000 training images as JPEG q75 (the lossy
  copy, repacked without its test split), only when it fits: the script says when it does not,
  and the GPU run is then MNIST (and the Gaussian) only. The FID Inception weights (96 MB) never fit.

What travels is the working tree (tracked files and untracked ones git does not ignore) plus this
folder. The script prints each part's size against the limit and exits 2, naming the sizes, when
even the MNIST-only carry does not fit; `.carry/` is git-ignored, so it travels only when a
device call names it in `carry`.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the GPU machine's Python 3.12 lacks of the pipeline's dependencies (its image has torch,
# torchvision, numpy, scipy, pandas, seaborn, matplotlib, safetensors, pyyaml, tqdm, pillow,
# jinja2, tabulate, attrs): the distribution names as constraints.txt spells them.
WHEELS = ("torch_fidelity", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
MNIST_FILES = {  # torchvision's MNIST.resources md5s
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_JPEG = "cifar10/cifar10-jpeg-q75.tar.xz"
CIFAR10_TRAIN = "cifar10-train-jpeg-q75.tar.xz"
MIB = 2 ** 20


class CarryError(Exception):
    pass


def pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        key, _, version = line.partition("==")
        if key.strip().lower().replace("_", "-") == name.lower().replace("_", "-") and version:
            return version.strip()
    raise CarryError(f"constraints.txt pins no version of {name}")


def download_wheels(out: Path) -> list:
    """The pinned wheels in out/ (pip download, only those not there yet)."""
    out.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("-")[0].lower().replace("_", "-") for p in out.glob("*.whl")}
    need = [f"{n}=={pinned(n)}" for n in WHEELS if n.lower().replace("_", "-") not in have]
    if need:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "-d", str(out)]
        cmd += [x for p in PLATFORMS for x in ("--platform", p)] + need
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise CarryError(f"pip download {' '.join(need)} failed (the registry must be reachable):\n{r.stderr.strip()}")
    return sorted(out.glob("*.whl"))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def copy_mnist(shared: Path, out: Path) -> None:
    src = shared / "MNIST" / "raw"
    dst = out / "MNIST" / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for name, want in MNIST_FILES.items():
        if not (src / name).is_file():
            raise CarryError(f"--shared: {src / name} does not exist; point --shared at the folder that holds MNIST/raw/")
        if md5(src / name) != want:
            raise CarryError(f"--shared: {src / name} has md5 {md5(src / name)}, torchvision expects {want}")
        if not (dst / name).is_file() or md5(dst / name) != want:
            shutil.copyfile(src / name, dst / name)


def repack_cifar10_train(shared: Path, dst: Path) -> None:
    """The JPEG copy's train/<class>/*.jpg alone, as .tar.xz (written beside, then moved)."""
    src = shared / CIFAR10_JPEG
    if not src.is_file():
        raise CarryError(f"--shared: {src} does not exist")
    tmp = dst.with_name(dst.name + ".tmp")
    with tarfile.open(src, "r:xz") as tin, tarfile.open(tmp, "w:xz", preset=6) as tout:
        for m in tin:
            if m.isfile() and m.name.lstrip("./").startswith("train/"):
                tout.addfile(m, io.BytesIO(tin.extractfile(m).read()))
    tmp.replace(dst)


def working_tree_bytes(root: Path = REPO) -> int:
    """What a device call sends besides the carry: tracked files and untracked ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/make_carry.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / ".carry"), help="the carry folder (default: .carry)")
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="the offline data (default: ../shared/data)")
    p.add_argument("--limit-mib", type=float, default=64.0, help="what may travel in all, MiB (default 64)")
    p.add_argument("--no-cifar10", action="store_true", help="leave CIFAR-10 out (the GPU run is then MNIST only)")
    p.add_argument("--no-wheels", action="store_true", help="leave the wheels out (a machine that has the packages)")
    a = p.parse_args(argv)
    out, shared, limit = Path(a.out), Path(a.shared), int(a.limit_mib * MIB)
    try:
        wheels = [] if a.no_wheels else download_wheels(out / "wheels")
        copy_mnist(shared, out / "data")
        tree = working_tree_bytes()
        cifar = out / "data" / CIFAR10_TRAIN
        base = tree + folder_bytes(out) - (cifar.stat().st_size if cifar.exists() else 0)
        if base > limit:
            raise CarryError(f"the working tree ({tree / MIB:.1f} MiB) and the MNIST-only carry "
                             f"({(base - tree) / MIB:.1f} MiB) come to {base / MIB:.1f} MiB, over the "
                             f"{limit / MIB:.0f} MiB limit: commit less (or move large files out of git)")
        verdict = "left out (--no-cifar10)"
        if not a.no_cifar10:
            if not cifar.exists():
                repack_cifar10_train(shared, cifar)
            if base + cifar.stat().st_size <= limit:
                verdict = "included"
            else:
                size = cifar.stat().st_size
                cifar.unlink()
                verdict = (f"left out: {size / MIB:.1f} MiB would bring the total to {(base + size) / MIB:.1f} MiB, "
                           f"over the limit; the GPU run is MNIST and the Gaussian only")
    except CarryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = tree + folder_bytes(out)
    print(f"carry: {out}")
    print(f"  working tree        {tree / MIB:7.1f} MiB")
    print(f"  wheels ({len(wheels)})          {folder_bytes(out / 'wheels') / MIB:7.1f} MiB  "
          + " ".join(w.name.split("-")[0] for w in wheels))
    print(f"  MNIST               {folder_bytes(out / 'data' / 'MNIST') / MIB:7.1f} MiB")
    print(f"  CIFAR-10 train JPEG {(cifar.stat().st_size if cifar.exists() else 0) / MIB:7.1f} MiB  {verdict}")
    print(f"  total               {total / MIB:7.1f} MiB of {limit / MIB:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
