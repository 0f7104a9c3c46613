"""Benchmarks: `python -m pipeline.bench <name> [args]` runs `pipeline.bench.<name>.main(args)`.

    samplers  accuracy vs NFE on the exact Gaussian, and per-step sampler overhead (CPU)
    train     training throughput (pipeline/bench/train.py)
    fid       feature extraction / FID cost (pipeline/bench/fid.py)
    gmm       exact Gaussian-mixture eps call vs one tiny U-Net call (pipeline/bench/gmm.py)
    precision fp32 vs bf16 autocast, channels_last and torch.compile: eps, sampling and training
              throughput, x_0 differences, sampler overhead, share of the matmul peak (pipeline/bench/precision.py)
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("samplers", "train", "fid", "gmm", "precision")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m pipeline.bench {{{','.join(BENCHMARKS)}}} [args...]\n\n{__doc__.strip()}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"error: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"pipeline.bench.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"pipeline.bench.{name}":
            raise  # a dependency of the benchmark is missing: show the real error
        print(f"error: benchmark {name!r} is not available: module pipeline.bench.{name} does not exist", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)
