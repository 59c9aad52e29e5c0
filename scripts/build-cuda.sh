#!/usr/bin/env bash
# Builds lstmd with `--features cuda` on a machine with no GPU and no CUDA
# toolkit: nvcc, the headers and the libraries to link against come from
# NVIDIA's Python wheels, installed into .cuda-venv/ inside the repo. Then it
# packs what scripts/gpu-check.sh needs on a GPU machine into gpu-bundle/:
# stripped binaries (lstmd, lstmd-check, the two benchmarks), libcudart,
# the golden fixtures and gpu-check.sh itself.
#
#   scripts/build-cuda.sh            venv (once), build, bundle (gpu-bundle/
#                                    and gpu-bundle.tar.xz); prints timings
#   scripts/build-cuda.sh --env      prints the build environment as `export`
#                                    lines: eval "$(scripts/build-cuda.sh --env)"
#                                    then e.g. cargo clippy --features cuda
#
# CUDA 13.0 on purpose: its PTX loads on every CUDA 13 driver (a newer nvcc
# writes PTX that an older 13.x driver refuses), and cudarc 0.19 knows it.
# CUDA_COMPUTE_CAP (default 90: H100/H200) is the GPU the kernels are built
# for; with no GPU here nothing can detect it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

venv=.cuda-venv
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
)
stamp="$venv/.wheels"

setup_venv() {
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${wheels[*]}" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${wheels[@]}"
    echo "${wheels[*]}" >"$stamp"
  fi
  cuda_home=$(echo "$repo/$venv"/lib/python3*/site-packages/nvidia/cu13)
  [ -x "$cuda_home/bin/nvcc" ] || { echo "build-cuda: no nvcc in $cuda_home" >&2; exit 1; }
  # The wheels ship versioned sonames only; the linker wants the plain names.
  for lib in cublas cublasLt curand nvrtc cudart; do
    ln -sf "$(basename "$(echo "$cuda_home"/lib/lib$lib.so.[0-9]*)")" "$cuda_home/lib/lib$lib.so"
  done
  # libcuda.so is the driver's, absent without a GPU. Link against a stub
  # with the same soname (as the toolkit's lib/stubs does); the GPU
  # machine's driver provides the real one at run time. Every entry point
  # of cuda.h answers CUDA_ERROR_NO_DEVICE (100), so a CUDA build run here
  # with the stub on LD_LIBRARY_PATH behaves as on a machine with no GPU.
  stubs=$cuda_home/lib/stubs
  if [ ! -f "$stubs/libcuda.so.1" ]; then
    mkdir -p "$stubs"
    grep -oh '\bcu[A-Z][A-Za-z0-9_]*\b' "$cuda_home/include/cuda.h" | sort -u |
      sed 's/.*/int &(void) { return 100; }/' >"$stubs/libcuda.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda.c"
    ln -sf libcuda.so "$stubs/libcuda.so.1"
  fi
}

print_env() {
  cat <<EOF
export CUDA_HOME='$cuda_home' CUDA_PATH='$cuda_home' CUDA_ROOT='$cuda_home'
export PATH='$cuda_home/bin':"\$PATH"
export LD_LIBRARY_PATH='$cuda_home/lib':"\${LD_LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'
# nvcc jobs at once (cudaforge would take RAYON_NUM_THREADS, often 1 here).
export CUDAFORGE_THREADS='${CUDAFORGE_THREADS:-$(nproc)}'
export CARGO_TARGET_DIR='$repo/target/cuda'
EOF
}

setup_venv
if [ "${1:-}" = "--env" ]; then
  print_env
  exit 0
fi
eval "$(print_env)"

start=$(date +%s)
cargo build --release --locked --features cuda --bin lstmd --bin lstmd-check
# The benchmarks' executables: cargo names them with a hash; ask it which.
benches=$(cargo bench --locked --features cuda --no-run --bench train --bench predict \
  --message-format=json-render-diagnostics |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])')
built=$(date +%s)
echo "build-cuda: cargo build (release, --features cuda) took $((built - start)) s"

# The bundle: what gpu-check.sh needs on a machine with no Rust toolchain.
bundle=gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/fixtures"
for bin in lstmd lstmd-check; do
  strip -o "$bundle/bin/$bin" "$CARGO_TARGET_DIR/release/$bin"
done
while read -r name exe; do
  strip -o "$bundle/bin/bench-$name" "$exe"
done <<<"$benches"
cp "$(echo "$cuda_home"/lib/libcudart.so.[0-9]*)" "$bundle/lib/"
cp -r tests/fixtures/golden "$bundle/fixtures/"
cp scripts/gpu-check.sh "$bundle/"
du -sh --apparent-size "$bundle"/bin/* "$bundle/lib"
# Each binary carries candle's CUDA kernels (~45 MB of PTX and cubins);
# xz with a 64 MiB window stores the copies once.
packed=$(date +%s)
tar -cf - "$bundle" | xz -9 -T1 >"$bundle.tar.xz"
echo "build-cuda: bundle $bundle/ is $(du -sh --apparent-size "$bundle" | cut -f1)," \
  "$bundle.tar.xz $(du -sh --apparent-size "$bundle.tar.xz" | cut -f1) (packed in $(($(date +%s) - packed)) s)"
echo "build-cuda: on the GPU machine: scripts/gpu-check.sh (unpacks $bundle.tar.xz), or $bundle/gpu-check.sh"
