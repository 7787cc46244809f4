#!/usr/bin/env bash
# One prepared measurement of a GPU machine of the kind users train on (an NVIDIA card with its
# driver, PyTorch and CUDA; no Rust toolchain, no diffusers, no network): hayate's training
# img/s for ddpm_cifar10 at batch 128 on wgpu, vulkan and cuda, in f32 and bf16; PyTorch eager on
# the same UNet (benches/torch_throughput.py) in f32, TF32 and bf16 autocast; sampling on both;
# and whether the backends' losses agree over the run's steps. It writes results.json and a
# table, results.md.
#
#   scripts/gpu-bench.sh --pack [--binary PATH]  here, with the toolchain and the registries:
#       builds the release binary with CUDA (which needs GitHub too, see the README's Features;
#       PACK_FEATURES=vulkan builds it without) and bundles into gpu-bench/ (ignored by git; give it
#       to the machine as a carried path) what that machine lacks: the binary (stripped,
#       xz-compressed), the Vulkan loader and diffusers' wheels. Under 64 MiB with the tree.
#   scripts/gpu-bench.sh [--out DIR]             there, from the repository root; DIR defaults
#       to gpu-bench-out (or $OUT, the device runner's folder that comes back)
#   scripts/gpu-bench.sh --dry-run               here and in CI: bundles the debug binary into
#       a temporary folder and runs every part that needs no GPU on the CPU backend at toy sizes,
#       through the same unpacking, parts and report (PyTorch runs where it is installed)
#
# Each part has its own time limit, so a backend that hangs costs its limit, not the run; a
# part that fails is a row saying why. Sizes: PRESET, BATCH, STEPS (timed steps, after as many
# warm-up steps, so 2 x STEPS steps in the loss comparison), SAMPLE_STEPS, PART_LIMIT (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=run
out="${OUT:-gpu-bench-out}"
bundle=gpu-bench
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) mode=pack ;;
    --dry-run) mode=dry-run ;;
    --out) out="$2"; shift ;;
    --binary) binary="$2"; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu-bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
python="${HAYATE_PYTHON:-python3}"
# The diffusers the comparison was written against, and the Python of the machine's PyTorch.
diffusers_version=0.42.1
wheel_python="${WHEEL_PYTHON:-3.12}"

# Writes $1/hayate.xz, $1/lib (the Vulkan loader) and $1/wheels from `binary`.
pack() {
  local dest="$1" wheels="$2"
  rm -rf "$dest"
  mkdir -p "$dest/lib"
  echo "gpu-bench: packing $binary into $dest"
  strip -o "$dest/hayate" "$binary"
  xz -T0 -"${XZ_LEVEL:-6}" "$dest/hayate"
  # The machine has NVIDIA's Vulkan driver but maybe not the loader that finds it.
  local loader
  loader="$(ls /usr/lib/x86_64-linux-gnu/libvulkan.so.1* 2>/dev/null | head -n1 || true)"
  if [ -z "$loader" ]; then
    echo "gpu-bench: no Vulkan loader here (apt-get install libvulkan1)" >&2
    return 1
  fi
  cp -L "$loader" "$dest/lib/libvulkan.so.1"
  if [ "$wheels" = yes ]; then
    "$python" -m pip download -q "diffusers==$diffusers_version" --only-binary=:all: \
      --python-version "$wheel_python" --implementation cp --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest/wheels"
  fi
  echo "gpu-bench: bundle $(du -sh "$dest" | cut -f1) ($(ls "$dest/wheels" 2>/dev/null | wc -l) wheels)"
}

# Unpacks the bundle into $out/work and points the loaders at it.
unpack() {
  local work="$out/work"
  mkdir -p "$work"
  [ -f "$bundle/hayate.xz" ] || { echo "gpu-bench: no $bundle/hayate.xz (run --pack, carry $bundle)" >&2; exit 1; }
  "$python" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$bundle/hayate.xz" "$work/hayate"
  chmod +x "$work/hayate"
  hayate="$work/hayate"
  export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Containers often carry NVIDIA's Vulkan driver (libGLX_nvidia) without its manifest.
  if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    local glx
    glx="$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia.so.0/ { print $NF; exit }')"
    if [ -n "$glx" ]; then
      printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3"}}\n' \
        "$glx" >"$work/nvidia_icd.json"
      export VK_DRIVER_FILES="$work/nvidia_icd.json" VK_ICD_FILENAMES="$work/nvidia_icd.json"
    fi
  fi
  # burn-cuda compiles kernels with NVRTC, which pip's CUDA packages ship beside PyTorch.
  local nvrtc
  nvrtc="$("$python" - <<'EOF' 2>/dev/null || true
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(f"{r}/nvidia/**/libnvrtc.so*", recursive=True)}
print(":".join(sorted(dirs)))
EOF
)"
  [ -z "$nvrtc" ] || export LD_LIBRARY_PATH="$nvrtc:$LD_LIBRARY_PATH"
  # diffusers from the bundle's wheels, beside the machine's own PyTorch and NumPy.
  if ! "$python" -c 'import diffusers' 2>/dev/null && [ -d "$bundle/wheels" ]; then
    if "$python" -m venv --system-site-packages "$work/venv" 2>"$work/venv.log" &&
      "$work/venv/bin/python" -m pip install -q --no-index --find-links "$bundle/wheels" \
        "diffusers==$diffusers_version" >>"$work/venv.log" 2>&1; then
      python="$work/venv/bin/python"
    else
      echo "gpu-bench: diffusers did not install from $bundle/wheels:" >&2
      tail -n 3 "$work/venv.log" >&2
      echo "exit 1" >"$out/diffusers-install.failed"
    fi
  fi
}

# run_part NAME COMMAND...: runs it under the part limit, its output to $out/NAME.log.
run_part() {
  local name="$1"
  shift
  local started=$SECONDS
  echo "gpu-bench: $name ..."
  if timeout "$PART_LIMIT" "$@" >"$out/$name.log" 2>&1; then
    echo "gpu-bench: $name done in $((SECONDS - started)) s"
  else
    local rc=$?
    echo "gpu-bench: $name failed (exit $rc after $((SECONDS - started)) s); last lines:"
    tail -n 5 "$out/$name.log" | sed 's/^/    /'
    echo "exit $rc" >"$out/$name.failed"
  fi
}

if [ "$mode" = pack ]; then
  if [ -z "$binary" ]; then
    # burn-cuda's build downloads an LLVM bundle from GitHub (see the README's Features); where
    # GitHub is out of reach, PACK_FEATURES=vulkan packs a binary without CUDA (its part then
    # fails, saying so). With `vulkan` built in, the wgpu part compiles SPIR-V on Vulkan too.
    cargo build --release -p hayate --features "${PACK_FEATURES-cuda,vulkan}"
    binary="${CARGO_TARGET_DIR:-target}/release/hayate"
  fi
  pack "$bundle" yes
  exit 0
fi

if [ "$mode" = dry-run ]; then
  binary="${binary:-${CARGO_TARGET_DIR:-target}/debug/hayate}"
  [ -x "$binary" ] || { echo "gpu-bench: no binary at $binary (cargo build -p hayate)" >&2; exit 1; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  bundle="$tmp/bundle"
  out="$tmp/out"
  # The debug binary is large: compress it fast. The wheels need the registry (CI has it),
  # and are this Python's, so that they install here as they would there.
  wheel_python="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  XZ_LEVEL=0 pack "$bundle" yes
  backends=(cpu)
  preset="${PRESET:-tiny}" batch="${BATCH:-2}" steps="${STEPS:-2}" sample_steps="${SAMPLE_STEPS:-2}"
  torch_device=cpu
  PART_LIMIT="${PART_LIMIT:-300}"
else
  backends=(cuda vulkan wgpu)
  preset="${PRESET:-ddpm_cifar10}" batch="${BATCH:-128}" steps="${STEPS:-25}" sample_steps="${SAMPLE_STEPS:-10}"
  torch_device=cuda
  PART_LIMIT="${PART_LIMIT:-75}"
fi
mkdir -p "$out"
unpack
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  >"$out/gpu.txt" 2>/dev/null || echo "no NVIDIA GPU (nvidia-smi)" >"$out/gpu.txt"
echo "gpu-bench: $(cat "$out/gpu.txt"); $preset, batch $batch, $steps timed steps after $steps warm-up"

for backend in "${backends[@]}"; do
  for precision in f32 bf16; do
    run_part "hayate-$backend-$precision" "$hayate" bench throughput --preset "$preset" \
      --batch "$batch" --steps "$steps" --sample-steps "$sample_steps" --backend "$backend" \
      --precision "$precision" --no-torch --out "$out/hayate-$backend-$precision.json"
  done
done
if "$python" -c 'import torch, diffusers' 2>"$out/torch-import.log"; then
  for precision in f32 tf32 bf16; do
    [ "$torch_device" = cuda ] || [ "$precision" != tf32 ] || continue
    run_part "torch-$precision" "$python" benches/torch_throughput.py --preset "$preset" \
      --batch "$batch" --steps "$steps" --sample-steps "$sample_steps" --device "$torch_device" \
      --precision "$precision"
    # Its one JSON line is the last line of its output.
    [ -f "$out/torch-$precision.failed" ] || tail -n 1 "$out/torch-$precision.log" >"$out/torch-$precision.json"
  done
else
  echo "gpu-bench: PyTorch part not run: $(tail -n 1 "$out/torch-import.log")"
fi
"$python" scripts/gpu_bench_report.py "$out" --preset "$preset" --batch "$batch"
if [ "$mode" = dry-run ]; then
  # Every part that ran here must have produced its figures.
  ls "$out"/*.failed >/dev/null 2>&1 && { echo "gpu-bench --dry-run: a part failed" >&2; exit 1; }
  echo "gpu-bench --dry-run: every part ran"
fi
