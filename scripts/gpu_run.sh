#!/usr/bin/env bash
# The GPU run in one command, for a machine lent for minutes (docs/running.md, "A GPU for minutes"):
#
#   scripts/gpu_run.sh            on the GPU machine: the `gpu-quick` preset, inside GPU_RUN_BUDGET_S
#                                 seconds of wall time (default 550)
#   scripts/gpu_run.sh --smoke    the same code path on a CPU at tiny sizes (`gpu-smoke` preset,
#                                 a few minutes; tests/test_gpu_run.py runs it in CI)
#
# Steps: install what the machine lacks from the carried wheels (.carry/wheels, made by
# scripts/make_carry.py) into a scratch folder; check the carried data (.carry/data: MNIST, and
# CIFAR-10 when it fitted, else the run is MNIST and the Gaussian only and says so); measure
# fp32 against bf16 autocast + channels_last (+ torch.compile) on the 35.7M-parameter DDPM
# CIFAR-10 U-Net, and fp32 against bf16 on the shipped (trained) MNIST model (python -m
# pipeline.bench precision); run every job of the preset's DAG under
# a deadline (python -m pipeline run-all), score what a stopped grid finished, and table and
# plot what is there (aggregate/figures --partial). Everything comes back in $OUT (at most 8
# files): gpu_run.log, env.txt, precision.{json,md} (and trained/precision.{json,md}, the same on
# the shipped MNIST model), jobs.md and results.tar.gz (results/<preset>/, the logs and the
# models' records), ready to be unpacked and committed.
#
# It never stops at the first failure: each step's failure is logged and the next step runs, and
# the exit status is that of the pipeline run (0: every job done). Environment: OUT (default
# build/gpu-run-out), PYTHON (default python3, else python), GPU_RUN_BUDGET_S, CARRY (default .carry).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=gpu
case "${1:-}" in
  --smoke) mode=smoke ;;
  "") ;;
  *) echo "usage: scripts/gpu_run.sh [--smoke]" >&2; exit 2 ;;
esac
start=$(date +%s)
budget=${GPU_RUN_BUDGET_S:-550}
carry=${CARRY:-.carry}
OUT=${OUT:-build/gpu-run-out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
exec > >(tee "$OUT/gpu_run.log") 2>&1
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "gpu_run [$(elapsed) s]: $*"; }

if [ "$mode" = gpu ]; then preset=gpu-quick; else preset=gpu-smoke; fi
say "mode $mode, preset $preset, budget ${budget} s, output $OUT"

# 1. what the machine lacks, from the carried wheels (pip --target: nothing of the system changes)
missing=$("$PY" - <<'EOF'
import importlib.util
mods = {"torch_fidelity": "torch-fidelity", "jsonschema": "jsonschema", "referencing": "referencing",
        "rpds": "rpds-py", "jsonschema_specifications": "jsonschema-specifications"}
print(" ".join(d for m, d in mods.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if compgen -G "$carry/wheels/*.whl" >/dev/null; then
    site=${TMPDIR:-/tmp}/ddbench-site
    say "installing from $carry/wheels (missing: $missing)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$carry"/wheels/*.whl \
      || say "pip install from $carry/wheels failed"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    say "missing $missing and no wheels in $carry/wheels: run scripts/make_carry.py and carry $carry"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 2. the data
sets=()
if [ "$mode" = gpu ]; then
  if [ ! -f "$carry/data/MNIST/raw/train-images-idx3-ubyte.gz" ]; then
    say "no MNIST in $carry/data: run scripts/make_carry.py and carry $carry"; exit 2
  fi
  if [ ! -f "$carry/data/cifar10-train-jpeg-q75.tar.xz" ]; then
    say "CIFAR-10 was not carried (it did not fit the 64 MiB): this run is MNIST and the Gaussian only"
    sets=(--set "run.datasets=[gaussian, mnist]")
  fi
else
  "$PY" - <<'EOF' || { say "could not write the synthetic image folder"; exit 2; }
# 200 smooth random 3x32x32 JPEGs in CIFAR-10's train/<class>/<k>.jpg layout, 20 per class
import io, tarfile
from pathlib import Path
import numpy as np
from PIL import Image

out = Path("build/gpu-smoke/cifar10-like.tar.xz")
if not out.exists():
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        for c in range(10):
            base = rng.uniform(0, 255, 3)
            for k in range(20):
                low = rng.normal(0, 40, (4, 4, 3)) + base
                img = np.kron(low, np.ones((8, 8, 1))).clip(0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=75)
                info = tarfile.TarInfo(f"train/class{c}/{k:04d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    tmp.replace(out)
EOF
fi
pipeline=("$PY" -m pipeline --preset "$preset" "${sets[@]}")

# 3. the machine
{
  echo "date: $(date -u +%FT%TZ)"
  "$PY" -c "import torch, platform; print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|torch-fidelity|numpy|pandas|jsonschema|safetensors) '
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 4. precision and compile on the DDPM CIFAR-10 U-Net (random weights; the timings are the point)
if [ "$mode" = gpu ]; then
  bench=(--preset ddpm-cifar10 --batch 500 --train-batch 128 --iters 10 --steps 10 --modes fp32,bf16-cl,bf16-cl-compile)
  bench_s=100
else
  bench=(--preset tiny --batch 8 --train-batch 4 --iters 1 --warmup 1 --steps 3 --matmul-n 256 --modes fp32,bf16-cl)
  bench_s=240
fi
say "bench precision ${bench[*]}"
timeout "$bench_s" "$PY" -m pipeline.bench precision "${bench[@]}" --out "$OUT" || say "bench precision: exit $? (see above)"
# ... and on a trained network (the shipped MNIST model), where |x_0 - x_0(fp32)| means what it says
if [ "$mode" = gpu ]; then trained=(--batch 1000 --train-batch 256 --iters 10 --steps 20); bench_s=40
else trained=(--batch 8 --train-batch 4 --iters 1 --warmup 1 --steps 3 --matmul-n 256); bench_s=120; fi
say "bench precision on models/mnist-cpu/unet.safetensors"
timeout "$bench_s" "$PY" -m pipeline.bench precision --checkpoint models/mnist-cpu/unet.safetensors "${trained[@]}" \
  --modes fp32,bf16-cl --out "$OUT/trained" || say "bench precision (trained): exit $? (see above)"

# 5. the pipeline under a deadline, then what a stopped grid finished
left=$(( budget - $(elapsed) - 45 ))
[ "$left" -lt 30 ] && left=30
say "run-all with ${left} s left"
"${pipeline[@]}" run-all --deadline-s "$left" --score-partial-s 20 --report "$OUT/jobs.md"
rc=$?
say "run-all: exit $rc"

# 6. tables and figures of whatever finished
if [ "$mode" = gpu ]; then results=results/$preset build=build/$preset
else results=build/gpu-smoke/results/$preset build=build/gpu-smoke/$preset; fi   # run.results_dir|build_dir + preset
"${pipeline[@]}" aggregate --partial --out "$results" || say "aggregate --partial failed"
"${pipeline[@]}" figures --partial --out "$results/figures" || say "figures --partial failed"

# 7. pack what comes back (the models' records and loss curves, not their weights)
extra=$(ls "$build"/models/*/unet.json "$build"/models/*/loss.csv "$build"/models/*/classifier.json 2>/dev/null)
pack=()
for path in "$results" "logs/$preset" $extra; do [ -e "$path" ] && pack+=("$path"); done
if [ ${#pack[@]} -gt 0 ]; then tar czf "$OUT/results.tar.gz" "${pack[@]}" || say "packing results failed"
else say "nothing to pack: no results, logs or model records"; fi
say "done: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
