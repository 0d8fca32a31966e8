#!/usr/bin/env bash
# A CUDA 13.0 build root on a machine without a GPU or a CUDA install: the toolkit's PyPI
# wheels (nvcc, headers, cudart; pinned: a newer nvcc writes PTX the 580 driver refuses) and
# link-time stubs for libcuda / cuBLAS / cuBLASLt / cuRAND / NVRTC generated from the function
# list of the cudarc version candle pins (no registry ships stubs). Prints the root (CUDA_HOME).
#
#   CU=$(bash gpu/setup.sh)       # ~10 s warm, ~1 min cold (105 MB of wheels)
#   source gpu/env.sh "$CU"       # PATH, CUDA_HOME, CUDARC_CUDA_VERSION, CUDA_COMPUTE_CAP, target dir
#
# Stubs are for linking only; `stubs/sonames/` links the runtime sonames to them so a CUDA
# binary starts on this machine (its `--device auto` then falls back to the CPU). Never copy
# them to a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
CU_ROOT=${CU_ROOT:-$HOME/.cache/distill-cu13}
CU=$CU_ROOT/nvidia/cu13
if [ ! -x "$CU/bin/nvcc" ]; then
  python3 -m pip install -q --no-compile --disable-pip-version-check --root-user-action=ignore --target "$CU_ROOT" \
    "cuda-toolkit[nvcc,nvvm,crt,cccl,cudart]==13.0.2" >&2
fi
ln -sf libcudart.so.13 "$CU/lib/libcudart.so"
cargo fetch --locked >&2
CUDARC=$(cargo metadata --format-version 1 --locked --features cuda 2>/dev/null |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc"))')
SYS=$(dirname "$CUDARC")/src
STUBS=$CU/lib/stubs
mkdir -p "$STUBS/sonames"
stub() { # sys module, symbol prefix, soname, library name
  grep -ohE "^\s+fn $2[A-Za-z0-9_]*\(" "$SYS/$1/sys/mod.rs" | sed -E 's/^\s+fn //; s/\($//' | sort -u |
    awk '{print "int "$1"(void){return 100;}"}' > "$STUBS/$4.c"
  cc -shared -fPIC -Wl,-soname,"$3" -o "$STUBS/lib$4.so" "$STUBS/$4.c"
  ln -sf "../lib$4.so" "$STUBS/sonames/$3"
}
stub driver cu libcuda.so.1 cuda
stub cublas cublas libcublas.so.13 cublas
stub cublaslt cublasLt libcublasLt.so.13 cublasLt
stub curand curand libcurand.so.10 curand
stub nvrtc nvrtc libnvrtc.so.13 nvrtc
echo "$CU"
