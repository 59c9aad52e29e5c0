#!/usr/bin/env bash
# The CUDA checks, on an NVIDIA GPU machine that has a driver and a PyTorch
# install (whose wheels carry cuBLAS, cuRAND and NVRTC) but no Rust and no
# network. It runs the binaries that scripts/build-cuda.sh packed into
# gpu-bundle/ or gpu-bundle.tar.xz at the repo root (or the bundle this
# script sits in):
#   1. the PyTorch golden fixtures on the GPU, to 1e-4;
#   2. `lstmd serve --device cuda` at a GPU that does not exist must exit at
#      start with a clear message, never SERVING;
#   3. a short training job on `--device cuda` (through the gRPC API);
#   4. that model's predictions from a CUDA server and from a CPU server on
#      the same data, to 1e-4;
#   5. the training and predict benchmarks, GPU beside CPU, as tables.
# Exits non-zero on the first failure.
#
# Environment: GPU_CHECK_DEVICE (default cuda; `cpu` runs the same steps
# with no GPU, to test this script), GPU_CHECK_BUNDLE (the bundle dir),
# BENCH_SECONDS (per benchmark figure, default 0.5), GPU_CHECK_BENCH=0
# skips the benchmarks, PYTHON (to find the CUDA libraries; default python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${GPU_CHECK_BUNDLE:-}" ]; then
  bundle=$GPU_CHECK_BUNDLE
elif [ -x "$here/bin/lstmd" ]; then
  bundle=$here
else
  # In the repo: the bundle build-cuda.sh made, unpacked if it came packed.
  bundle=$here/../gpu-bundle
  if [ ! -x "$bundle/bin/lstmd" ] && [ -f "$bundle.tar.xz" ]; then
    (cd "$here/.." && { tar -xJf gpu-bundle.tar.xz 2>/dev/null ||
      "${PYTHON:-python3}" -c 'import tarfile; tarfile.open("gpu-bundle.tar.xz").extractall()'; })
  fi
fi
[ -x "$bundle/bin/lstmd" ] || { echo "gpu-check: no bundle at $bundle (run scripts/build-cuda.sh)" >&2; exit 1; }
bundle=$(cd "$bundle" && pwd)
device=${GPU_CHECK_DEVICE:-cuda}
export BENCH_SECONDS=${BENCH_SECONDS:-0.5}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
lstmd=$bundle/bin/lstmd
check=$bundle/bin/lstmd-check

step() { printf '\n== %s\n' "$*"; }
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

# The CUDA libraries: the driver's libcuda from the system; cuBLAS, cuRAND
# and NVRTC from the nvidia-* wheels beside PyTorch; libcudart from the
# bundle (PyTorch need not carry the one we linked).
libs=$bundle/lib
py=${PYTHON:-python3}
if site=$("$py" -c 'import nvidia, os; print(os.pathsep.join(nvidia.__path__))' 2>/dev/null); then
  IFS=: read -r -a roots <<<"$site"
  for root in "${roots[@]}"; do
    for dir in "$root"/*/lib; do
      [ -d "$dir" ] && libs=$libs:$dir
    done
  done
fi
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step "binaries and libraries"
echo "bundle: $bundle"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if missing=$(ldd "$lstmd" | grep 'not found'); then
  echo "$missing" >&2
  fail "libraries the binary needs are missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
fi
ldd "$lstmd" | grep -E 'libcu|libnvrtc' || true

step "golden fixtures on $device (logits, loss, gradients vs PyTorch, 1e-4)"
"$check" golden --device "$device" --fixtures "$bundle/fixtures/golden" || fail "golden fixtures on $device"

work=$(mktemp -d)
server=
stop_server() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

# Starts `lstmd serve` on a free port with the shared data dir; sets addr.
serve() {
  local dev=$1
  addr=127.0.0.1:$((20000 + RANDOM % 20000))
  "$lstmd" serve --listen "$addr" --data-dir "$work/data" --device "$dev" --workers 1 \
    >>"$work/server-$dev.log" 2>&1 &
  server=$!
  if ! "$check" wait --addr "$addr" --seconds 120; then
    tail -20 "$work/server-$dev.log" >&2
    fail "lstmd serve --device $dev did not come up"
  fi
}

step "a device that cannot be used fails at start"
bad=cuda:99
[ "$device" = cpu ] && bad=cuda
set +e
timeout 60 "$lstmd" serve --listen 127.0.0.1:0 --data-dir "$work/bad" --device "$bad" >"$work/bad.log" 2>&1
rc=$?
set -e
cat "$work/bad.log"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "lstmd serve --device $bad did not fail at start (exit $rc)"
grep -q "cannot be used\|needs a binary built with" "$work/bad.log" || fail "no clear message for --device $bad"

step "training on --device $device"
serve "$device"
"$check" train --addr "$addr" --model gpu-check --epochs 3 || fail "training on $device"
"$check" predict --addr "$addr" --model gpu-check --out "$work/$device.json" || fail "predict on $device"
stop_server

step "predictions: CPU server vs $device server, same model"
serve cpu
"$check" predict --addr "$addr" --model gpu-check --against "$work/$device.json" ||
  fail "CPU and $device predictions differ"
stop_server

if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
  devices=cpu
  [ "$device" != cpu ] && devices=cpu,$device
  step "training and inference benchmark ($devices; BENCH_SECONDS=$BENCH_SECONDS)"
  BENCH_DEVICES=$devices "$bundle/bin/bench-train" || fail "training benchmark"
  step "predict benchmark ($devices)"
  BENCH_DEVICES=$devices "$bundle/bin/bench-predict" || fail "predict benchmark"
fi

echo
echo "gpu-check passed on $device"
