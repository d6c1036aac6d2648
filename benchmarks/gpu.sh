#!/usr/bin/env bash
# The GPU benchmark run: one call of the device tool, from the repository root, on a machine
# with torch, timm, onnx and the CPU build of onnxruntime but no open_clip and no network.
# How to call it, and where its files go: benchmarks/README.md, "GPU run".
#
#   bash benchmarks/gpu.sh [all|torch|stage|carried]
#
#   all      (default) keep any carried onnxruntime-gpu piece, install what is carried, then
#            part 1 and part 2
#   torch    part 1 only
#   stage    only keep the carried onnxruntime-gpu piece (.xfer0 ... .xfer4) for a later call
#   carried  install what is carried, then part 2 only
#
# Part 1 needs nothing carried: images/s of torch verification (fp32 and fp16 autocast, batch
# 1, 32, 256) and image-steps/s of advx's PGD (bf16 autocast, batch 128, 10 steps) on timm's
# ViT-B/32, ViT-B/16 and ResNet-50 (random init: speed does not depend on the weights), each
# with its share of the GPU's bf16 peak -> $OUT/throughput-gpu-torch.json.
# Part 2 measures what the carried packages allow -> $OUT/throughput-gpu-carried.json: ONNX fp16
# verification of the same models (onnxruntime-gpu assembled from the five pieces), the
# suite's open_clip towers and torchattacks' PGD (wheels in .whl/), and, with
# ADVX_BENCH_E2E=1, end-to-end hardening (ADVX_BENCH_E2E_IMAGES tiles, default 1000).
# Cases that cannot run are listed under "skipped" with the reason. Each file is rewritten after
# every row, so a run stopped at its time limit still returns the rows it finished.
#
# ADVX_BENCH_QUICK=1: tiny sizes and two of the models (a smoke run, not figures).
# ADVX_BENCH_DEVICE=cpu: run on the CPU (to try the script without a GPU).
# PYTHON: the interpreter (default python3).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/advx-gpu-out}
SITE=/tmp/site      # carried packages; kept while the machine stays warm
ORTW=/tmp/ortw      # onnxruntime-gpu pieces, gathered over several calls
SHIM=/tmp/advx-shim # the advx package laid out as pyproject.toml installs it
ORT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
mode=${1:-all}
mkdir -p "$OUT" "$SITE" "$ORTW"

stage() {  # keep the onnxruntime-gpu pieces carried in this call
  local d
  for d in "$ROOT"/.xfer0 "$ROOT"/.xfer1 "$ROOT"/.xfer2 "$ROOT"/.xfer3 "$ROOT"/.xfer4; do
    [ -d "$d" ] && cp "$d"/* "$ORTW"/ && echo "kept $(ls "$d")"
  done
  echo "onnxruntime-gpu pieces so far: $(ls "$ORTW" | grep -c '^ort\.part0') of 5"
}

install() {  # onnxruntime-gpu once all five pieces are here; the wheels of .whl/
  local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
             --target "$SITE")
  if [ "$(ls "$ORTW" | grep -c '^ort\.part0')" = 5 ] && [ ! -e "$ORTW/installed" ]; then
    cat "$ORTW"/ort.part0* > "$ORTW/$ORT_WHEEL" && "${pip[@]}" "$ORTW/$ORT_WHEEL" \
      && touch "$ORTW/installed" && echo "installed $ORT_WHEEL"
  fi
  if compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
    "${pip[@]}" "$ROOT"/.whl/*.whl && echo "installed $(ls "$ROOT"/.whl | tr '\n' ' ')"
  fi
}

shim() {  # advx is not pip-installed there: link its folders where Python looks for them
  mkdir -p "$SHIM/advx"
  ln -sfn "$ROOT/advx/__init__.py" "$SHIM/advx/__init__.py"
  local sub
  for sub in bench:advx/bench engine:engine export:export cli:cli; do
    ln -sfn "$ROOT/${sub#*:}" "$SHIM/advx/${sub%%:*}"
  done
  export PYTHONPATH="$SHIM:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export ADVX_CACHE_DIR=/tmp/advx-cache PYTHONUNBUFFERED=1
}

measure() {  # $1: torch | carried. -P: the repository's own advx/ must not shadow the shim
  "$PY" -P - "$1" "$OUT/throughput-gpu-$1.json" "$ROOT" <<'PYTHON'
import dataclasses
import importlib.util
import json
import os
import platform
import subprocess
import sys

import torch

part, path, root = sys.argv[1:4]
try:
    from advx import bench
except Exception as e:  # report it in the file, so that the call still returns something
    with open(path, "w") as f:
        json.dump({"part": part, "error": f"import advx.bench: {e!r}"}, f, indent=1)
    raise
device = os.environ.get("ADVX_BENCH_DEVICE", "cuda")
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device (ADVX_BENCH_DEVICE=cpu to run on the CPU)")
quick = os.environ.get("ADVX_BENCH_QUICK") == "1"
sizes = bench.default_sizes(device, quick=quick)
towers = bench.TIMM_TOWERS[::2] if quick else bench.TIMM_TOWERS  # quick: ViT-B/32, ResNet-50
skipped: list[dict] = []


def ort_on_gpu() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return "CUDAExecutionProvider" in ort.get_available_providers()


if part == "torch":
    cases = bench.verify_cases(device, towers, sizes, backends=bench.TORCH_BACKENDS)
    cases += bench.attack_cases(device, towers, sizes)
else:
    cases = []
    onnx = "onnx-fp16" if device == "cuda" else "onnx-fp32"
    if device == "cpu" or ort_on_gpu():
        cases += bench.verify_cases(device, towers, sizes, backends=(onnx,))
    else:
        skipped.append({"case": f"verify {onnx} on the timm models",
                        "reason": "onnxruntime has no CUDA execution provider here"})
    # the suite's own matrix: open_clip towers (skipped, with the reason, without open_clip)
    cases += bench.verify_cases(device, None, sizes) + bench.attack_cases(device, None, sizes)
    if os.environ.get("ADVX_BENCH_E2E") == "1":
        n = int(os.environ.get("ADVX_BENCH_E2E_IMAGES", sizes.e2e_images))
        cases += bench.e2e_cases(device, sizes=dataclasses.replace(sizes, e2e_images=n))


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


commit = git("rev-parse", "HEAD")  # None where the copy has no .git
dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
meta = {"part": part, "device": device, "commit": commit, "dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "sizes": dataclasses.asdict(sizes)}
rows: list = []


def save() -> None:
    with open(path, "w") as f:
        json.dump({**meta, "rows": [r.to_dict() for r in rows], "skipped": skipped}, f, indent=1)


def on_row(row) -> None:
    rows.append(row)
    save()
    rate = row.images_per_s if row.name == "verify" else row.image_steps_per_s
    peak = "" if row.flop_fraction is None else f" ({row.flop_fraction:.1%} of bf16 peak)"
    print(f"{row.name} {row.model} {row.backend} b{row.batch}: {rate:,.1f}/s{peak}")


def on_skip(case, reason: str) -> None:
    skipped.append({"case": str(case), "reason": reason})
    save()
    print(f"skipped {case}: {reason}")


save()
with bench.ModelCache() as cache:
    for case in cases:  # one case failing (a missing weights package, out of memory) skips it
        try:
            bench.run_cases([case], sizes, cache, on_row, on_skip)
        except Exception as e:
            on_skip(case, f"failed: {e!r}")
if rows:
    print(bench.format_table(rows))
print(f"{len(rows)} rows, {len(skipped)} skipped -> {path}")
PYTHON
}

case "$mode" in
  stage) stage ;;
  torch) shim && measure torch ;;
  carried) stage; install; shim && measure carried ;;
  all) stage; install; shim; measure torch; measure carried ;;
  *) echo "usage: bash benchmarks/gpu.sh [all|torch|stage|carried]" >&2; exit 2 ;;
esac
