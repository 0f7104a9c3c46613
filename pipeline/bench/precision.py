"""What bf16 autocast, channels_last and torch.compile buy, and what they change, for one U-Net.

For each mode (fp32 eager; bf16 autocast + channels_last; the same under torch.compile):
- **eps throughput**: image-evaluations/s of the eps model at `--batch`, through the sample
  stage's own eps function (pipeline.stages.sample.model_eps_fn), timed with CUDA events after
  synchronisation on a GPU (perf_counter on the CPU), after untimed warm-up calls;
- **sampling**: DDIM (eta = 0) with `--steps` steps on the same seeds through the sample stage's
  `generate`: images/s, the max and RMS of x_0 - x_0(fp32) over the batch (a bf16 sample is a
  different sample), and the sampler's overhead: wall time minus NFE x the model's own time per call, as a
  share of the wall time;
- **training**: optimiser steps/s of forward + backward + AdamW at `--train-batch`, as the train
  stage runs them (autocast, channels_last, compile);
- **share of peak**: the model's FLOPs per image (torch's FlopCounterMode) x images/s, against
  this device's measured dense matmul rate in the mode's dtype (training: three times the
  forward's FLOPs, for forward + backward);
- **peak memory** of each part (CUDA: max_memory_allocated; CPU: the process's peak RSS).

The weights are the DDPM initialisation re-drawn so that every layer is active (the DDPM init
scales each residual block's last conv by 1e-10), or `--checkpoint`. A mode that cannot run here
(torch.compile without a C++ compiler, say) is a row that says why.

    python -m pipeline.bench precision [--preset ddpm-cifar10] [--batch 500] [--steps 10]
        [--train-batch 128] [--iters 10] [--modes fp32,bf16-cl,bf16-cl-compile] [--device auto]
        [--threads N] [--checkpoint unet.safetensors] [--out DIR]
"""
from __future__ import annotations

import argparse
import math
import resource
import time
import traceback
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.util import files, provenance

MODES = {  # name -> (bf16 autocast, channels_last, torch.compile)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16-cl": (True, True, False),
    "bf16-cl-compile": (True, True, True),
    "fp32-compile": (False, False, True),
}


class Clock:
    """Elapsed seconds of a block of device work: CUDA events after synchronisation on a GPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def time(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def matmul_peak(device: str, bf16: bool, n: int) -> float:
    """Measured dense n x n x n matmul rate (FLOP/s) in float32 or bf16: this device's ceiling."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    a @ b
    reps = 10 if device.startswith("cuda") else 3
    seconds = min(clock.time(lambda: [a @ b for _ in range(reps)]) for _ in range(5))  # the best of five: a ceiling
    return 2 * n ** 3 * reps / seconds


def flops_per_image(model, cfg, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops() / 2


def build(preset: str, checkpoint: str | None, device: str):
    from pipeline.core.unet import build_unet, unet_config

    if checkpoint:
        from pipeline.stages import checkpoint as ck

        model, sidecar = ck.load_checkpoint(checkpoint, device)
        from pipeline.core.unet import UNetConfig

        return model.eval(), UNetConfig.from_dict(sidecar["unet"]), f"checkpoint {checkpoint}"
    cfg = unet_config(preset)
    torch.manual_seed(0)
    model = build_unet(cfg)
    with torch.no_grad():  # every layer active: re-draw the weights the DDPM init scales by 1e-10
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.xavier_uniform_(m.weight)
    return model.to(device).eval(), cfg, "DDPM init, every conv/linear weight re-drawn Xavier-uniform (seed 0)"


def measure(mode: str, preset: str, checkpoint, device: str, batch: int, steps: int, train_batch: int,
            iters: int, warmup: int, reference: dict) -> dict:
    from pipeline.config import DiffusionConfig, GridPoint
    from pipeline.stages.sample import generate, model_eps_fn

    bf16, channels_last, compiled = MODES[mode]
    model, cfg, weights = build(preset, checkpoint, device)
    row = {"mode": mode, "bf16": bf16, "channels_last": channels_last, "compile": compiled,
           "params": sum(p.numel() for p in model.parameters()), "weights": weights}
    net = torch.compile(model) if compiled else model
    eps_fn = model_eps_fn(net, device, bf16=bf16, channels_last=channels_last)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    clock = Clock(device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, *shape, generator=gen).to(device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)

    # eps throughput (the first calls compile, when compiling: timed apart)
    with torch.inference_mode():
        row["first_call_s"] = round(clock.time(lambda: eps_fn(x, t)), 3)
        for _ in range(warmup):
            eps_fn(x, t)
        reset_peak(device)
        seconds = clock.time(lambda: [eps_fn(x, t) for _ in range(iters)])
    row["eps_img_per_s"] = round(batch * iters / seconds, 1)
    row["eps_s_per_call"] = seconds / iters
    row["eps_peak_mem_mib"] = round(peak_bytes(device) / 2**20, 1)

    # sampling: DDIM eta = 0 on fixed seeds, the sample stage's own loop
    diffusion = DiffusionConfig(T=1000, schedule="linear", beta_start=1e-4, beta_end=0.02, cosine_s=0.008)
    point = GridPoint.parse(f"ddim-s{steps}-uniform-eta0")
    if compiled:  # the sampler's own calls may compile again (other timesteps, no grad mode): untimed
        generate(eps_fn, point, diffusion.noise_schedule(), list(range(batch)), shape, batch, device, where=f"bench {mode}")
    reset_peak(device)
    x0, nfe, wall = generate(eps_fn, point, diffusion.noise_schedule(), list(range(batch)), shape, batch, device,
                             where=f"bench {mode}")
    row["sample_nfe"] = nfe
    row["sample_wall_s"] = round(wall, 4)
    row["sample_img_per_s"] = round(batch / wall, 1)
    overhead = wall - nfe * row["eps_s_per_call"]
    row["sampler_overhead_share"] = round(overhead / wall, 4)
    row["sample_peak_mem_mib"] = round(peak_bytes(device) / 2**20, 1)
    if "x0" in reference:
        d = x0 - reference["x0"]
        row["max_abs_x0_diff_vs_fp32"] = float(d.abs().max())
        row["rms_x0_diff_vs_fp32"] = float(d.pow(2).mean().sqrt())  # the typical pixel, beside the worst one
    elif mode == "fp32":
        reference["x0"] = x0
        row["max_abs_x0_diff_vs_fp32"] = row["rms_x0_diff_vs_fp32"] = 0.0

    # training: forward + backward + AdamW, as the train stage runs them
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    xt = torch.randn(train_batch, *shape, generator=gen).to(device)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    tt = torch.randint(0, 1000, (train_batch,), generator=gen).to(device)
    target = torch.randn(train_batch, *shape, generator=gen).to(device)
    fwd = net

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            pred = fwd(xt, tt)
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    row["train_first_step_s"] = round(clock.time(step), 3)
    for _ in range(warmup):
        step()
    reset_peak(device)
    seconds = clock.time(lambda: [step() for _ in range(iters)])
    row["train_img_per_s"] = round(train_batch * iters / seconds, 1)
    row["train_peak_mem_mib"] = round(peak_bytes(device) / 2**20, 1)
    model.eval()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ddpm-cifar10", help="U-Net preset (pipeline/core/unet_presets.py)")
    p.add_argument("--checkpoint", default=None, help="a ddbench unet.safetensors instead of --preset's re-drawn init")
    p.add_argument("--batch", type=int, default=None, help="images per eps call and per sampling batch (default: 500 on CUDA, 16 on the CPU)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of the sampling measurement (default 10)")
    p.add_argument("--train-batch", type=int, default=None, help="images per training step (default: 128 on CUDA, 8 on the CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls / steps (default: 10 on CUDA, 2 on the CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--modes", default="fp32,bf16-cl,bf16-cl-compile", help=f"comma-separated, from {list(MODES)}")
    p.add_argument("--matmul-n", type=int, default=None, help="side of the peak-rate matmul (default: 8192 on CUDA, 2048 on the CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="folder for precision.json and precision.md")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"--modes: unknown {unknown}; known: {list(MODES)}")
    if "fp32" in modes:
        modes.remove("fp32")
    modes.insert(0, "fp32")  # the reference every other mode's x_0 is compared with
    device = provenance.resolve_device(a.device)
    cuda = device.startswith("cuda")
    if a.threads:
        torch.set_num_threads(a.threads)
    batch, train_batch = a.batch or (500 if cuda else 16), a.train_batch or (128 if cuda else 8)
    iters, n = a.iters or (10 if cuda else 2), a.matmul_n or (8192 if cuda else 2048)
    if min(batch, train_batch, iters, a.steps) < 1:
        p.error("--batch, --train-batch, --iters and --steps must be >= 1")

    peaks = {bf16: matmul_peak(device, bf16, n) for bf16 in (False, True)}
    model, cfg, _ = build(a.preset, a.checkpoint, device)
    gflop = flops_per_image(model, cfg, device) / 1e9
    del model
    fp = provenance.fingerprint(device)
    rows, reference = [], {}

    def write() -> None:  # after every mode: a run stopped by a timeout keeps the modes it finished
        if "eps_img_per_s" in rows[0]:
            for row in rows[1:]:
                if "eps_img_per_s" in row:
                    row["eps_speedup_vs_fp32"] = round(row["eps_img_per_s"] / rows[0]["eps_img_per_s"], 3)
                    row["train_speedup_vs_fp32"] = round(row["train_img_per_s"] / rows[0]["train_img_per_s"], 3)
        head = (f"U-Net `{a.preset if not a.checkpoint else a.checkpoint}` ({rows[0].get('params', 0):,} parameters, "
                f"{gflop:.2f} GFLOP per image) on {fp['device_name']}, torch {torch.__version__}"
                + (f", CUDA {fp.get('cuda')}" if cuda else f", {torch.get_num_threads()} CPU threads")
                + f": eps batch {batch}, DDIM {a.steps} steps on seeds 0..{batch - 1}, training batch {train_batch}, "
                  f"{iters} timed calls after {a.warmup} warm-up; matmul peak {n}^3: fp32 {peaks[False] / 1e12:.2f}, "
                  f"bf16 {peaks[True] / 1e12:.2f} TFLOP/s (measured)")
        cols = ["mode", "eps_img_per_s", "eps_speedup_vs_fp32", "eps_share_of_matmul_peak", "sample_img_per_s",
                "sampler_overhead_share", "max_abs_x0_diff_vs_fp32", "rms_x0_diff_vs_fp32", "train_img_per_s", "train_speedup_vs_fp32",
                "train_share_of_matmul_peak", "eps_peak_mem_mib", "train_peak_mem_mib", "first_call_s", "skipped"]
        frame = pd.DataFrame(rows)
        table = frame[[c for c in cols if c in frame]].to_markdown(index=False)
        print(f"{head}\n{table}", flush=True)
        if a.out:
            files.write_json(f"{a.out}/precision.json", {
                "summary": head, "device": device, "fingerprint": fp, "batch": batch, "steps": a.steps,
                "train_batch": train_batch, "iters": iters, "warmup": a.warmup, "matmul_n": n,
                "matmul_peak_flops": {"fp32": peaks[False], "bf16": peaks[True]}, "modes_asked": modes,
                "rows": [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))} for r in rows]})
            files.write_text(f"{a.out}/precision.md", f"{head}\n\n{table}\n")

    for mode in modes:
        t0 = time.perf_counter()
        try:
            row = measure(mode, a.preset, a.checkpoint, device, batch, a.steps, train_batch, iters, a.warmup, reference)
        except Exception as e:  # noqa: BLE001 - a mode that cannot run here is a row saying why
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            print(f"precision: mode {mode} did not run: {type(e).__name__}: {reason}")
            if mode == "fp32":
                traceback.print_exc()
                return 1
            rows.append({"mode": mode, "skipped": f"{type(e).__name__}: {reason}"})
            write()
            continue
        peak = peaks[MODES[mode][0]]
        row["gflop_per_image"] = round(gflop, 3)
        row["eps_share_of_matmul_peak"] = round(gflop * 1e9 * row["eps_img_per_s"] / peak, 4)
        row["train_share_of_matmul_peak"] = round(3 * gflop * 1e9 * row["train_img_per_s"] / peak, 4)
        row["matmul_peak_tflops"] = round(peak / 1e12, 3)
        row["mode_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
